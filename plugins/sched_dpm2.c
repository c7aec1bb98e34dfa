/* DPM2 scheduler plugin (diffusers KDPM2DiscreteScheduler): Karras et al.'s
 * second-order sampler, one step from sigma to the next through a model call
 * at their log-midpoint, so n steps make 2n - 1 interleaved timesteps. */
#include "lib/sched_kdpm2.h"
#include "lib/sched_predict.h"

static const char *const KEYS[] = {KDPM2_KEYS, NULL};
static const char *const ALIASES[] = {"DPM2", NULL};

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    return kdpm2_create(out, host, cfg, "dpm2", 0, err, err_size);
}

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    kdpm2 *k = p;
    lh_status st = kdpm2_check_index(k, index, err, err_size);
    if (st != LH_OK) return st;
    float sigma = k->second_order ? k->interp[index] : k->sigma[index];
    return sched_sigma_scale_input(&k->b, out, sample, sigma, err, err_size);
}

/* First order: an Euler step from sigma to the midpoint. Second order: the
 * derivative at the midpoint carries the first step's sample to the next
 * sigma. */
static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    kdpm2 *k = p;
    lh_status st = kdpm2_check_index(k, index, err, err_size);
    if (st != LH_OK) return st;
    int second = k->second_order;
    float sigma = k->sigma[second ? index - 1 : index];
    float mid = k->interp[second ? index : index + 1];
    float next = k->sigma[second ? index : index + 1];
    float at = second ? mid : sigma; /* where the model output was evaluated */
    float dt = (second ? next : mid) - sigma;
    st = kdpm2_x0(k, model_output, sample, at, err, err_size);
    if (st == LH_OK && !second) st = sched_keep(&k->b, &k->first, sample, err, err_size);
    if (st != LH_OK) return st;

    st = kdpm2_advance(k, prev, second ? k->first : sample, sample, at, dt, err, err_size);
    if (st != LH_OK) return st;
    k->second_order = !second;
    return LH_OK;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "dpm2", "1.0.0",
                           "DPM2 (diffusers KDPM2DiscreteScheduler), 2 model calls per step",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = kdpm2_destroy,
    .set_timesteps = kdpm2_set_timesteps,
    .set_begin_index = kdpm2_set_begin_index,
    .timesteps = kdpm2_timesteps,
    .sigmas = kdpm2_sigmas,
    .init_noise_sigma = kdpm2_init_noise_sigma,
    .scale_model_input = scale_model_input,
    .step = step,
    .add_noise = kdpm2_add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
