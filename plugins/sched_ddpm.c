/* DDPM scheduler plugin (diffusers DDPMScheduler): ancestral sampling with the
 * fixed variance types; the posterior noise comes from the host's generator.
 * The learned variance types need a model output with twice the channels and
 * are refused. */
#include <math.h>

#include "lib/sched_alphabar.h"

#define MAX_STEPS 1000

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
    sched_base b;
    ddpm_variance variance;
    int clip_sample;
    double clip_sample_range;
    double ts[MAX_STEPS];
    int32_t n;
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
    const lh_host_api *h = s->b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->noise);
    sched_base_free(&s->b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    ddpm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    int variance = DDPM_VAR_FIXED_SMALL;
    lh_status st = sched_base_init(&s->b, host, "ddpm", cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, "ddpm", "variance_type", VARIANCES, DDPM_VAR_FIXED_SMALL,
                        &variance, err, err_size);
    if (st == LH_OK) st = host->config_bool(cfg, "clip_sample", 1, &s->clip_sample, err, err_size);
    if (st == LH_OK)
        st = host->config_double(cfg, "clip_sample_range", 1.0, &s->clip_sample_range, err,
                                 err_size);
    if (st == LH_OK && !(s->clip_sample_range > 0.0))
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "ddpm: clip_sample_range must be > 0");
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
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    s->variance = (ddpm_variance)variance;
    *out = s;
    return LH_OK;
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    ddpm *s = p;
    int64_t train = s->b.num_train_timesteps;
    lh_status st = sched_check_steps(&s->b, n, train < MAX_STEPS ? train : MAX_STEPS, err,
                                     err_size);
    if (st == LH_OK) st = sched_int_timesteps(&s->b, s->ts, n, err, err_size);
    s->n = st == LH_OK ? n : 0;
    return st;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    ddpm *s = p;
    if (k < 0 || k >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddpm: begin index %d outside 0..%d", k,
                          s->n - 1);
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    ddpm *s = p;
    *out = s->ts;
    return s->n;
}

static double init_noise_sigma(void *p) { return 1.0; }

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    ddpm *s = p;
    lh_status st = s->b.host->tensor_copy(out, sample);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "scale_model_input", err, err_size);
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
    const lh_host_api *h = s->b.host;
    if (index < 0 || index >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddpm: step index %d outside 0..%d",
                          index, s->n - 1);
    int64_t t = (int64_t)s->ts[index];
    float a_t = s->b.alphas_cumprod[t];
    float a_prev = index + 1 < s->n ? s->b.alphas_cumprod[(int64_t)s->ts[index + 1]] : 1.0f;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float alpha = a_t / a_prev, beta = 1.0f - alpha;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    lh_status st = sched_scratch(&s->b, &s->x0, sample, err, err_size);
    if (st != LH_OK) return st;

    switch (s->b.prediction_type) {
    case SCHED_PRED_EPSILON:
        st = h->tensor_axpby(s->x0, 1.0 / sa, sample, -(double)sb / sa, model_output);
        break;
    case SCHED_PRED_SAMPLE: st = h->tensor_copy(s->x0, model_output); break;
    default: /* v_prediction */ st = h->tensor_axpby(s->x0, sa, sample, -sb, model_output); break;
    }
    if (st == LH_OK && s->clip_sample)
        st = h->tensor_clamp(s->x0, s->x0, -s->clip_sample_range, s->clip_sample_range);
    /* posterior mean: coefficients of x0 and x_t (Ho et al. 2020, eq. 7) */
    float c_x0 = sqrtf(a_prev) * beta / b_t;
    float c_xt = sqrtf(alpha) * b_prev / b_t;
    if (st == LH_OK) st = h->tensor_axpby(prev, c_x0, s->x0, c_xt, sample);
    if (st != LH_OK) return sched_host_fail(&s->b, st, "step", err, err_size);
    if (t == 0) return LH_OK;

    if (!rng)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddpm: step needs a random generator");
    st = sched_scratch(&s->b, &s->noise, sample, err, err_size);
    if (st != LH_OK) return st;
    st = h->tensor_randn(s->noise, rng);
    if (st == LH_OK) st = h->tensor_axpby(prev, 1.0, prev, posterior_std(s, a_t, a_prev), s->noise);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "step", err, err_size);
}

static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                           double timestep, char *err, size_t err_size) {
    ddpm *s = p;
    return sched_alphabar_add_noise(&s->b, out, x, noise, timestep, err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "ddpm", "1.0.0",
                           "DDPM (diffusers DDPMScheduler), ancestral sampling", ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = set_begin_index,
    .timesteps = timesteps,
    .init_noise_sigma = init_noise_sigma,
    .scale_model_input = scale_model_input,
    .step = step,
    .add_noise = add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
