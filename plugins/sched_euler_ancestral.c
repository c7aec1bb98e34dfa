/* Euler ancestral scheduler plugin (diffusers EulerAncestralDiscreteScheduler):
 * an Euler step down to sigma_down, then fresh noise of std sigma_up from the
 * host's generator, drawn on every step (the last one too, as diffusers). */
#include <math.h>

#include "lib/ksigma.h"
#include "lib/sched_predict.h"

typedef struct euler_a {
    ksigma k; /* first: the shared callbacks take this state */
    lh_tensor *x0, *deriv, *tmp, *noise; /* scratch */
} euler_a;

static const char *const KEYS[] = {SCHED_BASE_KEYS, NULL};
static const char *const ALIASES[] = {"Euler a", NULL};

static void destroy(void *p) {
    euler_a *s = p;
    if (!s) return;
    const lh_host_api *h = s->k.b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->deriv);
    h->tensor_free(s->tmp);
    h->tensor_free(s->noise);
    ksigma_free(&s->k);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    euler_a *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LINSPACE};
    lh_status st = ksigma_init(&s->k, host, "euler_ancestral", cfg, &defaults, KSIGMA_HAS_ZSNR,
                               err, err_size);
    if (st == LH_OK) st = sched_refuse_sample_prediction(&s->k.b, err, err_size);
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    euler_a *s = p;
    return ksigma_set_timesteps(&s->k, n, err, err_size);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    euler_a *s = p;
    ksigma *k = &s->k;
    const sched_base *b = &k->b;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->deriv, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->tmp, sample, err, err_size);
    if (st != LH_OK) return st;

    /* sigma_up, sigma_down in float32, in diffusers' order of operations */
    float sigma = (float)k->sig[index], to = (float)k->sig[index + 1];
    float from2 = sigma * sigma, to2 = to * to;
    float sigma_up = sqrtf(to2 * (from2 - to2) / from2);
    float sigma_down = sqrtf(to2 - sigma_up * sigma_up);
    float dt = sigma_down - sigma;

    st = sched_sigma_x0(b, s->x0, s->tmp, model_output, sample, sigma, err, err_size);
    if (st == LH_OK) st = sched_sigma_derivative(b, s->deriv, sample, s->x0, sigma, err, err_size);
    if (st == LH_OK) st = sched_add_scaled(b, prev, s->tmp, sample, s->deriv, dt, err, err_size);
    if (st == LH_OK) st = sched_draw_noise(b, &s->noise, sample, rng, "step", err, err_size);
    if (st != LH_OK) return st;
    st = sched_add_scaled(b, prev, s->tmp, prev, s->noise, sigma_up, err, err_size);
    if (st == LH_OK) k->cur = index + 1;
    return st;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "euler_ancestral", "1.0.0",
                           "Euler ancestral (diffusers EulerAncestralDiscreteScheduler)",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = ksigma_set_begin_index,
    .timesteps = ksigma_timesteps,
    .sigmas = ksigma_sigmas,
    .init_noise_sigma = ksigma_init_noise_sigma,
    .scale_model_input = ksigma_scale_model_input,
    .step = step,
    .add_noise = ksigma_add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
