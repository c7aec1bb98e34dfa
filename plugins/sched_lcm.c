/* LCM scheduler plugin (diffusers LCMScheduler): latent consistency model
 * sampling. Each step maps the sample to its consistency-model estimate and,
 * except after the last, re-noises it to the next timestep with noise from
 * the host's generator. */
#include <math.h>

#include "lib/sched_alphabar.h"
#include "lib/sched_predict.h"

typedef struct lcm {
    alphabar_sched ab; /* first: the shared callbacks take this state */
    int64_t original_steps;
    sched_clip clip;
    double timestep_scaling;
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
    const lh_host_api *h = s->ab.b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->noise);
    sched_base_free(&s->ab.b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    lcm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.00085, 0.012, "scaled_linear",
                                            SCHED_SPACING_LEADING};
    int set_alpha_to_one;
    sched_base *b = &s->ab.b;
    lh_status st = sched_base_init(b, host, "lcm", cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = host->config_int(cfg, "original_inference_steps", 50, &s->original_steps, err,
                              err_size);
    if (st == LH_OK) st = sched_clip_read(b, cfg, 0, &s->clip, err, err_size);
    /* diffusers keeps set_alpha_to_one, but LCM's step never looks past the
     * last timestep, so its final alpha is never used */
    if (st == LH_OK)
        st = host->config_bool(cfg, "set_alpha_to_one", 1, &set_alpha_to_one, err, err_size);
    if (st == LH_OK)
        st = host->config_double(cfg, "timestep_scaling", 10.0, &s->timestep_scaling, err,
                                 err_size);
    if (st == LH_OK && (s->original_steps < 1 || s->original_steps > b->num_train_timesteps))
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "lcm: original_inference_steps must be in 1..%lld "
                        "(num_train_timesteps), got %lld",
                        (long long)b->num_train_timesteps, (long long)s->original_steps);
    if (st == LH_OK && !(s->timestep_scaling >= 0.0 && isfinite(s->timestep_scaling)))
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "lcm: timestep_scaling must be finite and >= 0, got %g",
                        s->timestep_scaling);
    return sched_finish_create(out, s, st, destroy);
}

/* n timesteps picked evenly from the distillation schedule: original_steps
 * timesteps k - 1, 2k - 1, ... with k = num_train_timesteps / original_steps.
 * (LCM ignores timestep_spacing and steps_offset, as diffusers does.) */
static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    lcm *s = p;
    int64_t orig = s->original_steps;
    int64_t limit = orig < ALPHABAR_MAX_STEPS ? orig : ALPHABAR_MAX_STEPS;
    s->ab.n = 0;
    if (n > orig)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "lcm: %d steps exceed original_inference_steps (%lld)", n,
                          (long long)orig);
    lh_status st = sched_check_steps(&s->ab.b, n, limit, err, err_size);
    if (st != LH_OK) return st;
    int64_t k = s->ab.b.num_train_timesteps / orig;
    double stride = (double)orig / n; /* np.linspace(0, orig, n, endpoint=False) */
    for (int32_t i = 0; i < n; i++) {
        int64_t j = (int64_t)floor(i * stride); /* index into the descending schedule */
        s->ab.ts[i] = (double)((orig - j) * k - 1);
    }
    s->ab.n = n;
    return LH_OK;
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    lcm *s = p;
    const sched_base *b = &s->ab.b;
    const lh_host_api *h = b->host;
    lh_status st = sched_check_index(b, "step index", index, s->ab.n, err, err_size);
    if (st != LH_OK) return st;
    int last = index == s->ab.n - 1;
    int64_t t = (int64_t)s->ab.ts[index];
    int64_t t_prev = last ? t : (int64_t)s->ab.ts[index + 1];
    float a_t = b->alphas_cumprod[t], a_prev = b->alphas_cumprod[t_prev];
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);

    /* boundary-condition scalings of the consistency model (sigma_data 0.5),
     * float32 like diffusers' tensor timestep */
    float scaled = (float)t * (float)s->timestep_scaling;
    float c_skip = 0.25f / (scaled * scaled + 0.25f);
    float c_out = scaled / sqrtf(scaled * scaled + 0.25f);

    st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_predict_x0(b, s->x0, model_output, sample, sa, sb, err, err_size);
    if (st == LH_OK) st = sched_clip_apply(b, &s->clip, s->x0, err, err_size);
    if (st != LH_OK) return st;
    /* the denoised estimate */
    st = h->tensor_axpby(prev, c_out, s->x0, c_skip, sample);
    if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
    if (last) return LH_OK;

    st = sched_draw_noise(b, &s->noise, sample, rng, "step", err, err_size);
    if (st != LH_OK) return st;
    st = h->tensor_axpby(prev, sqrtf(a_prev), prev, sqrtf(1.0f - a_prev), s->noise);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "lcm", "1.0.0",
                           "LCM (diffusers LCMScheduler), latent consistency sampling", ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
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
