/* sched_tcd: diffusers' TCDScheduler (Trajectory Consistency Distillation,
 * "strategic stochastic sampling") as an out-of-tree lorahost scheduler plugin.
 * Self-contained: it sees only <lorahost/plugin.h> and the C library. Build:
 *   cmake -S . -B build -DCMAKE_PREFIX_PATH=<lorahost prefix> && cmake --build build
 * The guide that walks through this file is docs/writing-a-scheduler.md. */
#include <lorahost/plugin.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define TCD_MAX_TRAIN_TIMESTEPS 100000
#define TCD_PI 3.14159265358979323846 /* math.pi; M_PI is not ISO C */

typedef enum tcd_pred {
    TCD_PRED_EPSILON = 0,
    TCD_PRED_V,
    TCD_PRED_SAMPLE,
    TCD_PRED_COUNT
} tcd_pred;

typedef enum tcd_schedule {
    TCD_BETA_LINEAR = 0,
    TCD_BETA_SCALED_LINEAR,
    TCD_BETA_SQUAREDCOS_CAP_V2,
    TCD_BETA_COUNT
} tcd_schedule;

typedef struct tcd {
    const lh_host_api *host;
    int64_t num_train_timesteps;
    int64_t original_inference_steps;
    tcd_pred prediction_type;
    double eta;            /* gamma in the paper: 0 deterministic, 1 fully stochastic */
    float *alphas_cumprod; /* [num_train_timesteps], float32 as diffusers keeps it */
    double *ts;            /* [original_inference_steps]; the first n are in use */
    int32_t n;             /* steps of the current schedule; 0 before set_timesteps */
    lh_tensor *x0, *eps, *noise; /* scratch, shaped like the sample */
} tcd;

/* Every key TCDScheduler.__init__ accepts, plus `eta` (a step() argument in
 * diffusers, a config key here). A model's scheduler_config.json may carry
 * any of them, so the plugin reads them all. */
static const char *const KEYS[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "original_inference_steps", "clip_sample", "clip_sample_range", "set_alpha_to_one",
    "steps_offset", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
    "sample_max_value", "timestep_spacing", "timestep_scaling", "rescale_betas_zero_snr",
    "eta", NULL};
static const char *const ALIASES[] = {"TCD", "TCDScheduler", NULL};

static const char *const BETA_SCHEDULES[] = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                             NULL};
static const char *const PREDICTIONS[] = {"epsilon", "v_prediction", "sample", NULL};
static const char *const SPACINGS[] = {"leading", "trailing", "linspace", NULL};

/* ---- Small helpers ---- */

static lh_status fail(char *err, size_t err_size, lh_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static lh_status fail(char *err, size_t err_size, lh_status code, const char *fmt, ...) {
    if (err && err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* A host service failed: pass its message on to the caller. */
static lh_status host_fail(const tcd *s, lh_status st, const char *what, char *err,
                           size_t err_size) {
    return fail(err, err_size, st, "tcd: %s: %s", what, s->host->last_error());
}

/* An enum-valued key: *out = index of its value in `choices`, or `fallback`. */
static lh_status read_enum(const lh_host_api *host, const lh_config *cfg, const char *key,
                           const char *const *choices, int fallback, int *out, char *err,
                           size_t err_size) {
    const char *v = host->config_string(cfg, key);
    *out = fallback;
    if (!v) return LH_OK;
    for (int i = 0; choices[i]; i++)
        if (!strcmp(v, choices[i])) {
            *out = i;
            return LH_OK;
        }
    char allowed[256] = "";
    for (int i = 0; choices[i]; i++) {
        size_t len = strlen(allowed);
        snprintf(allowed + len, sizeof allowed - len, "%s%s", i ? ", " : "", choices[i]);
    }
    return fail(err, err_size, LH_ERR_CONFIG, "tcd: %s: unknown value '%s' (one of: %s)", key, v,
                allowed);
}

/* Make *t a tensor shaped like `like` (allocated on first use). */
static lh_status scratch(const tcd *s, lh_tensor **t, const lh_tensor *like, char *err,
                         size_t err_size) {
    const lh_host_api *h = s->host;
    if (*t && h->tensor_numel(*t) == h->tensor_numel(like)) return LH_OK;
    h->tensor_free(*t);
    *t = h->tensor_new_like(like);
    return *t ? LH_OK : host_fail(s, LH_ERR_NOMEM, "scratch tensor", err, err_size);
}

/* ---- Beta schedules, with diffusers' float32/double mix ---- */

/* torch.linspace(start, end, n, dtype=float32): float32 step, filled from
 * both ends towards the middle. */
static void linspace_f32(float *out, /* [n] */ float start, float end, int64_t n) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int64_t half = n / 2;
    for (int64_t i = 0; i < n; i++)
        out[i] = i < half ? start + step * (float)i : end - step * (float)(n - 1 - i);
}

/* betas_for_alpha_bar(n, "cosine"): in double, as Python does, then float32. */
static double alpha_bar_cosine(double t) {
    double c = cos((t + 0.008) / 1.008 * TCD_PI / 2.0);
    return c * c;
}

static void cosine_betas(float *betas, /* [n] */ int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double t1 = (double)i / (double)n, t2 = (double)(i + 1) / (double)n;
        double b = 1.0 - alpha_bar_cosine(t2) / alpha_bar_cosine(t1);
        betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

/* rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1) in torch's
 * float32 ops; torch's cumprod accumulates float32 in double on the CPU. */
static void rescale_zero_terminal_snr(float *betas, /* [n], rewritten */ int64_t n) {
    double acc = 1.0;
    for (int64_t i = 0; i < n; i++) {
        acc *= (double)(1.0f - betas[i]);
        betas[i] = sqrtf((float)acc); /* betas now holds sqrt(alphas_cumprod) */
    }
    float first = betas[0], last = betas[n - 1];
    float scale = first / (first - last);
    float prev_bar = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = (betas[i] - last) * scale;
        float bar = v * v;
        float alpha = i == 0 ? bar : bar / prev_bar;
        prev_bar = bar;
        betas[i] = 1.0f - alpha;
    }
}

/* Fill s->alphas_cumprod from the beta keys. `betas` is scratch of n floats. */
static lh_status build_alphas(tcd *s, float *betas, const lh_config *cfg, char *err,
                              size_t err_size) {
    const lh_host_api *h = s->host;
    int64_t n = s->num_train_timesteps;
    double beta_start, beta_end;
    int schedule, rescale;
    lh_status st = h->config_double(cfg, "beta_start", 0.00085, &beta_start, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "beta_end", 0.012, &beta_end, err, err_size);
    if (st == LH_OK)
        st = read_enum(h, cfg, "beta_schedule", BETA_SCHEDULES, TCD_BETA_SCALED_LINEAR,
                       &schedule, err, err_size);
    if (st == LH_OK)
        st = h->config_bool(cfg, "rescale_betas_zero_snr", 0, &rescale, err, err_size);
    if (st != LH_OK) return st;

    /* trained_betas, if given, replaces the schedule (JSON null = not given) */
    double *trained = h->calloc((size_t)n, sizeof *trained);
    if (!trained) return fail(err, err_size, LH_ERR_NOMEM, "tcd: out of memory");
    size_t n_trained = 0;
    st = h->config_doubles(cfg, "trained_betas", trained, (size_t)n, &n_trained, err, err_size);
    if ((st == LH_OK || n_trained > (size_t)n) && n_trained > 0 && n_trained != (size_t)n)
        st = fail(err, err_size, LH_ERR_CONFIG,
                  "tcd: trained_betas has %zu values, num_train_timesteps is %lld", n_trained,
                  (long long)n);
    for (size_t i = 0; st == LH_OK && i < n_trained; i++) {
        if (!(trained[i] > 0.0 && trained[i] < 1.0))
            st = fail(err, err_size, LH_ERR_CONFIG,
                      "tcd: trained_betas[%zu] = %g is outside (0, 1)", i, trained[i]);
        betas[i] = (float)trained[i];
    }
    h->free(trained);
    if (st != LH_OK) return st;

    if (n_trained == 0) {
        if (schedule != TCD_BETA_SQUAREDCOS_CAP_V2 &&
            !(beta_start > 0.0 && beta_start <= beta_end && beta_end < 1.0))
            return fail(err, err_size, LH_ERR_CONFIG,
                        "tcd: need 0 < beta_start <= beta_end < 1, got beta_start = %g, "
                        "beta_end = %g",
                        beta_start, beta_end);
        if (schedule == TCD_BETA_LINEAR) {
            linspace_f32(betas, (float)beta_start, (float)beta_end, n);
        } else if (schedule == TCD_BETA_SCALED_LINEAR) {
            linspace_f32(betas, (float)sqrt(beta_start), (float)sqrt(beta_end), n);
            for (int64_t i = 0; i < n; i++) betas[i] *= betas[i];
        } else {
            cosine_betas(betas, n);
        }
    }
    if (rescale) rescale_zero_terminal_snr(betas, n);

    /* alphas = 1 - betas (float32); cumprod accumulated in double, stored float32 */
    double acc = 1.0;
    for (int64_t i = 0; i < n; i++) {
        acc *= (double)(1.0f - betas[i]);
        s->alphas_cumprod[i] = (float)acc;
    }
    return LH_OK;
}

/* ---- Create and destroy ---- */

static void destroy(void *p) {
    tcd *s = p;
    if (!s) return;
    const lh_host_api *h = s->host;
    h->tensor_free(s->x0);
    h->tensor_free(s->eps);
    h->tensor_free(s->noise);
    h->free(s->alphas_cumprod);
    h->free(s->ts);
    h->free(s);
}

/* Read every key (the host rejects keys nobody read), check the values. */
static lh_status read_config(tcd *s, const lh_config *cfg, char *err, size_t err_size) {
    const lh_host_api *h = s->host;
    int pred, spacing, clip_sample, set_alpha_to_one, thresholding;
    int64_t steps_offset;
    double clip_sample_range, dyn_ratio, sample_max_value, timestep_scaling;
    lh_status st = h->config_int(cfg, "num_train_timesteps", 1000, &s->num_train_timesteps, err,
                                 err_size);
    if (st == LH_OK)
        st = h->config_int(cfg, "original_inference_steps", 50, &s->original_inference_steps,
                           err, err_size);
    if (st == LH_OK)
        st = read_enum(h, cfg, "prediction_type", PREDICTIONS, TCD_PRED_EPSILON, &pred, err,
                       err_size);
    if (st == LH_OK) st = h->config_double(cfg, "eta", 0.3, &s->eta, err, err_size);
    /* Accepted for compatibility with TCD configs. diffusers' TCDScheduler
     * stores them but its set_timesteps and step never use them, so neither
     * does this plugin (that is what keeps the two identical). */
    if (st == LH_OK) st = h->config_bool(cfg, "clip_sample", 0, &clip_sample, err, err_size);
    if (st == LH_OK)
        st = h->config_double(cfg, "clip_sample_range", 1.0, &clip_sample_range, err, err_size);
    if (st == LH_OK)
        st = h->config_bool(cfg, "set_alpha_to_one", 1, &set_alpha_to_one, err, err_size);
    if (st == LH_OK) st = h->config_int(cfg, "steps_offset", 0, &steps_offset, err, err_size);
    if (st == LH_OK)
        st = read_enum(h, cfg, "timestep_spacing", SPACINGS, 0, &spacing, err, err_size);
    if (st == LH_OK)
        st = h->config_double(cfg, "timestep_scaling", 10.0, &timestep_scaling, err, err_size);
    if (st == LH_OK) st = h->config_bool(cfg, "thresholding", 0, &thresholding, err, err_size);
    if (st == LH_OK)
        st = h->config_double(cfg, "dynamic_thresholding_ratio", 0.995, &dyn_ratio, err, err_size);
    if (st == LH_OK)
        st = h->config_double(cfg, "sample_max_value", 1.0, &sample_max_value, err, err_size);
    if (st != LH_OK) return st;

    s->prediction_type = (tcd_pred)pred;
    int64_t n = s->num_train_timesteps;
    if (n < 2 || n > TCD_MAX_TRAIN_TIMESTEPS)
        return fail(err, err_size, LH_ERR_CONFIG,
                    "tcd: num_train_timesteps must be in 2..%d, got %lld",
                    TCD_MAX_TRAIN_TIMESTEPS, (long long)n);
    if (s->original_inference_steps < 1 || s->original_inference_steps > n)
        return fail(err, err_size, LH_ERR_CONFIG,
                    "tcd: original_inference_steps must be in 1..num_train_timesteps (%lld), "
                    "got %lld",
                    (long long)n, (long long)s->original_inference_steps);
    if (!(s->eta >= 0.0 && s->eta <= 1.0))
        return fail(err, err_size, LH_ERR_CONFIG, "tcd: eta (gamma) must be in 0..1, got %g",
                    s->eta);
    if (thresholding)
        return fail(err, err_size, LH_ERR_CONFIG,
                    "tcd: thresholding = true is not supported (dynamic thresholding suits "
                    "pixel-space models; diffusers' TCDScheduler never applies it either); "
                    "set thresholding = false");
    if (!(clip_sample_range > 0.0))
        return fail(err, err_size, LH_ERR_CONFIG, "tcd: clip_sample_range must be > 0, got %g",
                    clip_sample_range);
    if (steps_offset < 0 || steps_offset >= n)
        return fail(err, err_size, LH_ERR_CONFIG, "tcd: steps_offset %lld outside 0..%lld",
                    (long long)steps_offset, (long long)n - 1);
    if (!(timestep_scaling > 0.0))
        return fail(err, err_size, LH_ERR_CONFIG, "tcd: timestep_scaling must be > 0, got %g",
                    timestep_scaling);
    if (!(dyn_ratio > 0.0 && dyn_ratio <= 1.0))
        return fail(err, err_size, LH_ERR_CONFIG,
                    "tcd: dynamic_thresholding_ratio must be in (0, 1], got %g", dyn_ratio);
    if (!(sample_max_value > 0.0))
        return fail(err, err_size, LH_ERR_CONFIG, "tcd: sample_max_value must be > 0, got %g",
                    sample_max_value);
    if (clip_sample)
        h->log(LH_LOG_WARN, "tcd",
               "clip_sample = true has no effect: diffusers' TCDScheduler does not clip");
    return LH_OK;
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    tcd *s = host->calloc(1, sizeof *s);
    if (!s) return fail(err, err_size, LH_ERR_NOMEM, "tcd: out of memory");
    s->host = host;
    float *betas = NULL;
    lh_status st = read_config(s, cfg, err, err_size);
    if (st == LH_OK) {
        size_t n = (size_t)s->num_train_timesteps;
        betas = host->calloc(n, sizeof *betas);
        s->alphas_cumprod = host->calloc(n, sizeof *s->alphas_cumprod);
        s->ts = host->calloc((size_t)s->original_inference_steps, sizeof *s->ts);
        if (!betas || !s->alphas_cumprod || !s->ts)
            st = fail(err, err_size, LH_ERR_NOMEM, "tcd: out of memory");
    }
    if (st == LH_OK) st = build_alphas(s, betas, cfg, err, err_size);
    host->free(betas);
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    *out = s;
    return LH_OK;
}

/* ---- The schedule ---- */

/* TCDScheduler.set_timesteps(n): the distillation schedule is every k-th
 * training step, k = num_train_timesteps // original_inference_steps; the n
 * inference timesteps are picked from it, largest first, at indices
 * floor(numpy.linspace(0, original_inference_steps, n, endpoint=False)). */
static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    tcd *s = p;
    int64_t orig = s->original_inference_steps;
    if (n < 1) return fail(err, err_size, LH_ERR_INVALID, "tcd: steps must be >= 1, got %d", n);
    if (n > orig)
        return fail(err, err_size, LH_ERR_INVALID,
                    "tcd: %d steps exceed original_inference_steps (%lld): TCD picks its "
                    "timesteps from that schedule; raise original_inference_steps or use "
                    "fewer steps",
                    n, (long long)orig);
    int64_t k = s->num_train_timesteps / orig;
    double stride = (double)orig / (double)n; /* numpy.linspace's step, in double */
    for (int32_t i = 0; i < n; i++) {
        int64_t j = (int64_t)floor((double)i * stride); /* index into the reversed schedule */
        s->ts[i] = (double)((orig - j) * k - 1);
    }
    s->n = n;
    return LH_OK;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    tcd *s = p;
    if (k < 0 || k >= s->n)
        return fail(err, err_size, LH_ERR_INVALID, "tcd: begin index %d outside 0..%d", k,
                    s->n - 1);
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    tcd *s = p;
    *out = s->ts;
    return s->n;
}

static int32_t sigmas(void *p, const double **out) {
    *out = NULL;
    return 0; /* TCD works on timesteps and alphas_cumprod, it has no sigmas */
}

static double init_noise_sigma(void *p) { return 1.0; }

/* ---- Denoising ---- */

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    tcd *s = p;
    lh_status st = s->host->tensor_copy(out, sample); /* TCD does not scale its input */
    return st == LH_OK ? st : host_fail(s, st, "scale_model_input", err, err_size);
}

/* TCDScheduler.step: predict x0 and eps at t, jump to the noised sample at
 * s = floor((1 - eta) * t_prev), then (eta > 0, not the last step) forward-
 * diffuse from s back up to t_prev with fresh noise. Scalars are float32,
 * as diffusers computes them from its float32 alphas_cumprod. */
static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    tcd *s = p;
    const lh_host_api *h = s->host;
    if (index < 0 || index >= s->n)
        return fail(err, err_size, LH_ERR_INVALID,
                    "tcd: step index %d outside 0..%d (call set_timesteps first)", index,
                    s->n - 1);
    int64_t t = (int64_t)s->ts[index];
    int64_t t_prev = index + 1 < s->n ? (int64_t)s->ts[index + 1] : 0;
    /* torch: (1 - eta) * long tensor -> float32 product, then floor */
    float s_f = (float)(1.0 - s->eta) * (float)t_prev;
    int64_t t_s = (int64_t)floorf(s_f);

    float a_t = s->alphas_cumprod[t], b_t = 1.0f - a_t;
    float a_prev = s->alphas_cumprod[t_prev];
    float a_s = s->alphas_cumprod[t_s], b_s = 1.0f - a_s;
    double sa_t = sqrtf(a_t), sb_t = sqrtf(b_t), sa_s = sqrtf(a_s), sb_s = sqrtf(b_s);

    lh_status st = scratch(s, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = scratch(s, &s->eps, sample, err, err_size);
    if (st != LH_OK) return st;

    /* predicted original sample x0 and noise eps */
    switch (s->prediction_type) {
    case TCD_PRED_EPSILON:
        st = h->tensor_axpby(s->x0, 1.0 / sa_t, sample, -sb_t / sa_t, model_output);
        if (st == LH_OK) st = h->tensor_copy(s->eps, model_output);
        break;
    case TCD_PRED_SAMPLE:
        st = h->tensor_copy(s->x0, model_output);
        if (st == LH_OK) st = h->tensor_axpby(s->eps, 1.0 / sb_t, sample, -sa_t / sb_t, s->x0);
        break;
    default: /* v_prediction */
        st = h->tensor_axpby(s->x0, sa_t, sample, -sb_t, model_output);
        if (st == LH_OK) st = h->tensor_axpby(s->eps, sa_t, model_output, sb_t, sample);
        break;
    }
    /* the predicted noised sample x_s */
    if (st == LH_OK) st = h->tensor_axpby(prev, sa_s, s->x0, sb_s, s->eps);
    if (st != LH_OK) return host_fail(s, st, "step", err, err_size);

    /* no noise on the last step (so none for one-step sampling) or for eta = 0 */
    if (s->eta > 0.0 && index != s->n - 1) {
        if (!rng)
            return fail(err, err_size, LH_ERR_INVALID,
                        "tcd: eta > 0 needs a random generator (got none at step %d)", index);
        float ratio = a_prev / a_s;
        st = scratch(s, &s->noise, sample, err, err_size);
        if (st != LH_OK) return st;
        st = h->tensor_randn(s->noise, rng); /* one draw, as diffusers' randn_tensor */
        if (st == LH_OK)
            st = h->tensor_axpby(prev, sqrtf(ratio), prev, sqrtf(1.0f - ratio), s->noise);
        if (st != LH_OK) return host_fail(s, st, "step", err, err_size);
    }
    return LH_OK;
}

/* DDPM's forward process: out = sqrt(a_t) x + sqrt(1 - a_t) noise. */
static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *original,
                           const lh_tensor *noise, double timestep, char *err, size_t err_size) {
    tcd *s = p;
    if (!(timestep >= 0.0 && timestep < (double)s->num_train_timesteps) ||
        timestep != floor(timestep))
        return fail(err, err_size, LH_ERR_INVALID,
                    "tcd: add_noise timestep %g is not an integer in 0..%lld", timestep,
                    (long long)s->num_train_timesteps - 1);
    float a = s->alphas_cumprod[(int64_t)timestep];
    lh_status st = s->host->tensor_axpby(out, sqrtf(a), original, sqrtf(1.0f - a), noise);
    return st == LH_OK ? st : host_fail(s, st, "add_noise", err, err_size);
}

/* ---- The descriptor and the one exported symbol ---- */

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "tcd", "1.0.0",
                           "TCD (diffusers TCDScheduler), eta = gamma for stochastic sampling",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = set_begin_index,
    .timesteps = timesteps,
    .sigmas = sigmas,
    .init_noise_sigma = init_noise_sigma,
    .scale_model_input = scale_model_input,
    .step = step,
    .add_noise = add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
