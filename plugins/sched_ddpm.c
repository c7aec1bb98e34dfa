/* DDPM scheduler plugin (diffusers DDPMScheduler): ancestral sampling with the
 * fixed variance types; the posterior noise comes from the host's generator.
 * The learned variance types need a model output with twice the channels and
 * are refused. */
#include <math.h>

#include "lib/sched_alphabar.h"
#include "lib/sched_predict.h"

typedef enum ddpm_variance {
    DDPM_VAR_FIXED_SMALL = 0,
    DDPM_VAR_FIXED_SMALL_LOG,
    DDPM_VAR_FIXED_LARGE,
    DDPM_VAR_FIXED_LARGE_LOG,
    DDPM_VAR_LEARNED,
    DDPM_VAR_LEARNED_RANGE,
    DDPM_VAR_COUNT
} ddpm_variance;

typedef struct ddpm {
    alphabar_sched ab; /* first: the shared callbacks take this state */
    ddpm_variance variance;
    sched_clip clip;
    lh_tensor *x0, *noise; /* scratch */
} ddpm;

static const char *const KEYS[] = {SCHED_BASE_KEYS, "variance_type", "clip_sample",
                                   "clip_sample_range", NULL};
static const char *const ALIASES[] = {"DDPM", NULL};
static const char *const VARIANCES[] = {"fixed_small", "fixed_small_log", "fixed_large",
                                        "fixed_large_log", "learned", "learned_range", NULL};

static void destroy(void *p) {
    ddpm *s = p;
    if (!s) return;
    const lh_host_api *h = s->ab.b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->noise);
    sched_base_free(&s->ab.b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    ddpm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    int variance = DDPM_VAR_FIXED_SMALL;
    lh_status st = sched_base_init(&s->ab.b, host, "ddpm", cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, "ddpm", "variance_type", VARIANCES, DDPM_VAR_FIXED_SMALL,
                        &variance, err, err_size);
    if (st == LH_OK) st = sched_clip_read(&s->ab.b, cfg, 1, &s->clip, err, err_size);
    if (st == LH_OK && variance == DDPM_VAR_FIXED_LARGE_LOG)
        /* diffusers' step takes the square root of this (negative) log variance */
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "ddpm: variance_type 'fixed_large_log' is not supported: diffusers' "
                        "DDPMScheduler.step turns it into NaN noise");
    if (st == LH_OK && (variance == DDPM_VAR_LEARNED || variance == DDPM_VAR_LEARNED_RANGE))
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "ddpm: variance_type '%s' is not supported: it needs a model that "
                        "predicts its variance in extra output channels",
                        VARIANCES[variance]);
    s->variance = (ddpm_variance)variance;
    return sched_finish_create(out, s, st, destroy);
}

/* Standard deviation of the posterior noise (float32, like diffusers). */
static float posterior_std(const ddpm *s, float a_t, float a_prev) {
    float beta = 1.0f - a_t / a_prev;
    float var = (1.0f - a_prev) / (1.0f - a_t) * beta;
    if (var < 1e-20f) var = 1e-20f;
    switch (s->variance) {
    case DDPM_VAR_FIXED_SMALL_LOG: return expf(0.5f * logf(var));
    case DDPM_VAR_FIXED_LARGE: return sqrtf(beta);
    default: return sqrtf(var); /* fixed_small */
    }
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    ddpm *s = p;
    const sched_base *b = &s->ab.b;
    const lh_host_api *h = b->host;
    lh_status st = sched_check_index(b, "step index", index, s->ab.n, err, err_size);
    if (st != LH_OK) return st;
    int64_t t = (int64_t)s->ab.ts[index];
    float a_t = b->alphas_cumprod[t];
    float a_prev = index + 1 < s->ab.n ? b->alphas_cumprod[(int64_t)s->ab.ts[index + 1]] : 1.0f;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float alpha = a_t / a_prev, beta = 1.0f - alpha;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_predict_x0(b, s->x0, model_output, sample, sa, sb, err, err_size);
    if (st == LH_OK) st = sched_clip_apply(b, &s->clip, s->x0, err, err_size);
    if (st != LH_OK) return st;
    /* posterior mean: coefficients of x0 and x_t (Ho et al. 2020, eq. 7) */
    float c_x0 = sqrtf(a_prev) * beta / b_t;
    float c_xt = sqrtf(alpha) * b_prev / b_t;
    st = h->tensor_axpby(prev, c_x0, s->x0, c_xt, sample);
    if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
    if (t == 0) return LH_OK;

    st = sched_draw_noise(b, &s->noise, sample, rng, "step", err, err_size);
    if (st != LH_OK) return st;
    st = h->tensor_axpby(prev, 1.0, prev, posterior_std(s, a_t, a_prev), s->noise);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "ddpm", "1.0.0",
                           "DDPM (diffusers DDPMScheduler), ancestral sampling", ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = alphabar_set_timesteps,
    .set_begin_index = alphabar_set_begin_index,
    .timesteps = alphabar_timesteps,
    .init_noise_sigma = sched_unit_init_noise_sigma,
    .scale_model_input = sched_identity_scale_model_input,
    .step = step,
    .add_noise = alphabar_add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
