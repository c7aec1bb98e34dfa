/* LCM scheduler plugin (diffusers LCMScheduler): latent consistency model
 * sampling. Each step maps the sample to its consistency-model estimate and,
 * except after the last, re-noises it to the next timestep with noise from
 * the host's generator. */
#include <math.h>

#include "lib/sched_alphabar.h"

#define MAX_STEPS 1000

typedef struct lcm {
    sched_base b;
    int64_t original_steps;
    int clip_sample;
    double clip_sample_range, timestep_scaling;
    double ts[MAX_STEPS];
    int32_t n;
    lh_tensor *x0, *noise; /* scratch */
} lcm;

static const char *const KEYS[] = {SCHED_BASE_KEYS,    "original_inference_steps",
                                   "clip_sample",      "clip_sample_range",
                                   "set_alpha_to_one", "timestep_scaling",
                                   NULL};
static const char *const ALIASES[] = {"LCM", NULL};

static void destroy(void *p) {
    lcm *s = p;
    if (!s) return;
    const lh_host_api *h = s->b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->noise);
    sched_base_free(&s->b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    lcm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.00085, 0.012, "scaled_linear",
                                            SCHED_SPACING_LEADING};
    int set_alpha_to_one;
    lh_status st = sched_base_init(&s->b, host, "lcm", cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = host->config_int(cfg, "original_inference_steps", 50, &s->original_steps, err,
                              err_size);
    if (st == LH_OK) st = host->config_bool(cfg, "clip_sample", 0, &s->clip_sample, err, err_size);
    if (st == LH_OK)
        st = host->config_double(cfg, "clip_sample_range", 1.0, &s->clip_sample_range, err,
                                 err_size);
    /* diffusers keeps set_alpha_to_one, but LCM's step never looks past the
     * last timestep, so its final alpha is never used */
    if (st == LH_OK)
        st = host->config_bool(cfg, "set_alpha_to_one", 1, &set_alpha_to_one, err, err_size);
    if (st == LH_OK)
        st = host->config_double(cfg, "timestep_scaling", 10.0, &s->timestep_scaling, err,
                                 err_size);
    if (st == LH_OK && (s->original_steps < 1 || s->original_steps > s->b.num_train_timesteps))
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "lcm: original_inference_steps must be in 1..%lld "
                        "(num_train_timesteps), got %lld",
                        (long long)s->b.num_train_timesteps, (long long)s->original_steps);
    if (st == LH_OK && !(s->clip_sample_range > 0.0))
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "lcm: clip_sample_range must be > 0");
    if (st == LH_OK && !(s->timestep_scaling >= 0.0 && isfinite(s->timestep_scaling)))
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "lcm: timestep_scaling must be finite and >= 0, got %g",
                        s->timestep_scaling);
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    *out = s;
    return LH_OK;
}

/* n timesteps picked evenly from the distillation schedule: original_steps
 * timesteps k - 1, 2k - 1, ... with k = num_train_timesteps / original_steps.
 * (LCM ignores timestep_spacing and steps_offset, as diffusers does.) */
static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    lcm *s = p;
    int64_t orig = s->original_steps;
    int64_t limit = orig < MAX_STEPS ? orig : MAX_STEPS;
    s->n = 0;
    if (n > orig)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "lcm: %d steps exceed original_inference_steps (%lld)", n,
                          (long long)orig);
    lh_status st = sched_check_steps(&s->b, n, limit, err, err_size);
    if (st != LH_OK) return st;
    int64_t k = s->b.num_train_timesteps / orig;
    double stride = (double)orig / n; /* np.linspace(0, orig, n, endpoint=False) */
    for (int32_t i = 0; i < n; i++) {
        int64_t j = (int64_t)floor(i * stride); /* index into the descending schedule */
        s->ts[i] = (double)((orig - j) * k - 1);
    }
    s->n = n;
    return LH_OK;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    lcm *s = p;
    if (k < 0 || k >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "lcm: begin index %d outside 0..%d", k,
                          s->n - 1);
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    lcm *s = p;
    *out = s->ts;
    return s->n;
}

static double init_noise_sigma(void *p) { return 1.0; }

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    lcm *s = p;
    lh_status st = s->b.host->tensor_copy(out, sample);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "scale_model_input", err, err_size);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    lcm *s = p;
    const lh_host_api *h = s->b.host;
    if (index < 0 || index >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "lcm: step index %d outside 0..%d",
                          index, s->n - 1);
    int last = index == s->n - 1;
    int64_t t = (int64_t)s->ts[index];
    int64_t t_prev = last ? t : (int64_t)s->ts[index + 1];
    float a_t = s->b.alphas_cumprod[t], a_prev = s->b.alphas_cumprod[t_prev];
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);

    /* boundary-condition scalings of the consistency model (sigma_data 0.5),
     * float32 like diffusers' tensor timestep */
    float scaled = (float)t * (float)s->timestep_scaling;
    float c_skip = 0.25f / (scaled * scaled + 0.25f);
    float c_out = scaled / sqrtf(scaled * scaled + 0.25f);

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
    /* the denoised estimate */
    if (st == LH_OK) st = h->tensor_axpby(prev, c_out, s->x0, c_skip, sample);
    if (st != LH_OK) return sched_host_fail(&s->b, st, "step", err, err_size);
    if (last) return LH_OK;

    if (!rng)
        return sched_fail(err, err_size, LH_ERR_INVALID, "lcm: step needs a random generator");
    st = sched_scratch(&s->b, &s->noise, sample, err, err_size);
    if (st != LH_OK) return st;
    st = h->tensor_randn(s->noise, rng);
    if (st == LH_OK)
        st = h->tensor_axpby(prev, sqrtf(a_prev), prev, sqrtf(1.0f - a_prev), s->noise);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "step", err, err_size);
}

static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                           double timestep, char *err, size_t err_size) {
    lcm *s = p;
    return sched_alphabar_add_noise(&s->b, out, x, noise, timestep, err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "lcm", "1.0.0",
                           "LCM (diffusers LCMScheduler), latent consistency sampling", ALIASES),
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
