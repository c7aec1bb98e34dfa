/* Shared code of the multistep solver plugins: diffusers' set_timesteps of
 * DPMSolverMultistep, UniPCMultistep and DEISMultistep (numpy float64
 * schedule, float32 sigmas), their VP float32 scalar math, the model-output
 * history and add_noise. */
#include "sched_multistep.h"

#include <math.h>

#include "sched_predict.h"

/* Keys whose feature is not offered: they must stay false. */
static const struct {
    const char *key, *why;
} UNSUPPORTED[] = {
    {"thresholding", "dynamic thresholding needs per-sample quantiles, which the host's tensor "
                     "services do not offer"},
    {"use_beta_sigmas", "beta sigmas are not implemented"},
    {"use_flow_sigmas", "flow-matching sigmas are not implemented"},
    {"use_dynamic_shifting", "dynamic shifting is not implemented"},
};
/* Keys that only matter with one of those features. */
static const char *const INERT_NUMBERS[] = {"dynamic_thresholding_ratio", "sample_max_value",
                                            "flow_shift", NULL};

static lh_status read_common(ms_sched *s, const lh_config *cfg, int zero_snr, char *err,
                             size_t err_size) {
    const lh_host_api *h = s->b.host;
    const char *id = s->b.id;
    int64_t order;
    int karras, exponential, rescale, flag;
    double unused;
    lh_status st = h->config_int(cfg, "solver_order", 2, &order, err, err_size);
    if (st == LH_OK)
        st = h->config_bool(cfg, "lower_order_final", 1, &s->lower_order_final, err, err_size);
    if (st == LH_OK) st = sched_read_sigma_kind(&s->b, cfg, &karras, &exponential, err, err_size);
    if (st == LH_OK) st = sched_read_zero_snr(&s->b, cfg, zero_snr, &rescale, err, err_size);
    for (size_t i = 0; st == LH_OK && i < sizeof UNSUPPORTED / sizeof UNSUPPORTED[0]; i++) {
        st = h->config_bool(cfg, UNSUPPORTED[i].key, 0, &flag, err, err_size);
        if (st == LH_OK && flag)
            st = sched_fail(err, err_size, LH_ERR_CONFIG, "%s: %s = true is not supported: %s", id,
                            UNSUPPORTED[i].key, UNSUPPORTED[i].why);
    }
    for (int i = 0; st == LH_OK && INERT_NUMBERS[i]; i++)
        st = h->config_double(cfg, INERT_NUMBERS[i], 0.0, &unused, err, err_size);
    if (st != LH_OK) return st;
    (void)h->config_string(cfg, "time_shift_type");

    if (order < 1 || order > MS_MAX_ORDER)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "%s: solver_order must be 1, 2 or 3, got %lld", id, (long long)order);
    s->order = (int)order;
    s->kind = karras ? MS_SIGMAS_KARRAS : exponential ? MS_SIGMAS_EXPONENTIAL : MS_SIGMAS_TRAIN;
    /* diffusers keeps the last alpha_bar just above zero so the first sigma is finite */
    if (rescale) s->b.alphas_cumprod[s->b.num_train_timesteps - 1] = 0x1p-24f;
    return LH_OK;
}

lh_status ms_init(ms_sched *s, const lh_host_api *host, const char *id, const lh_config *cfg,
                  int zero_snr, char *err, size_t err_size) {
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LINSPACE};
    lh_status st = sched_base_init(&s->b, host, id, cfg, &defaults, err, err_size);
    if (st == LH_OK) st = read_common(s, cfg, zero_snr, err, err_size);
    if (st != LH_OK) return st;
    int64_t n = s->b.num_train_timesteps;
    s->sigma_min = s->sigma_max = NAN;
    s->last_timestep = n;
    s->begin = s->next = -1;
    s->train_sigmas = host->calloc((size_t)n, sizeof *s->train_sigmas);
    s->train_log_sigmas = host->calloc((size_t)n, sizeof *s->train_log_sigmas);
    if (!s->train_sigmas || !s->train_log_sigmas)
        return sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", id);
    sched_train_sigmas(&s->b, s->train_sigmas);
    for (int64_t i = 0; i < n; i++)
        s->train_log_sigmas[i] = ms_np_logf((float)s->train_sigmas[i]);
    return LH_OK;
}

void ms_free(ms_sched *s) {
    const lh_host_api *h = s->b.host;
    if (!h) return;
    for (int k = 0; k <= MS_MAX_ORDER; k++) h->tensor_free(s->m[k]);
    h->free(s->train_sigmas);
    h->free(s->train_log_sigmas);
    sched_base_free(&s->b);
}

/* ---- Schedule ---- */

/* Timesteps of the configured spacing, as these classes compute them: n + 1
 * points with the last dropped. Returns the count (trailing spacing over a
 * clipped range gives fewer). */
static int32_t spaced_timesteps(const ms_sched *s, double *out, int32_t n) {
    int64_t last = s->last_timestep, train = s->b.num_train_timesteps;
    if (s->b.spacing == SCHED_SPACING_LINSPACE) {
        double lin[MS_MAX_STEPS + 1];
        sched_linspace(lin, 0.0, (double)(last - 1), n + 1);
        for (int32_t i = 0; i < n; i++) out[i] = nearbyint(lin[n - i]);
        return n;
    }
    if (s->b.spacing == SCHED_SPACING_LEADING) {
        int64_t ratio = last / (n + 1);
        for (int32_t i = 0; i < n; i++) out[i] = (double)((n - i) * ratio + s->b.steps_offset);
        return n;
    }
    /* trailing: numpy.arange(last, 0, -train / n), rounded, minus one; the
     * count is the exact ceil(last * n / train) */
    double ratio = (double)train / n, delta = ((double)last - ratio) - (double)last;
    int32_t count = (int32_t)((last * n + train - 1) / train);
    for (int32_t i = 0; i < count; i++) out[i] = nearbyint((double)last + i * delta) - 1.0;
    return count;
}

lh_status ms_schedule(ms_sched *s, int32_t n, char *err, size_t err_size) {
    int64_t train = s->b.num_train_timesteps, limit = MS_MAX_STEPS;
    if (s->kind == MS_SIGMAS_TRAIN) {
        /* beyond this, spaced timesteps repeat */
        int64_t cap = s->b.spacing == SCHED_SPACING_TRAILING ? train : s->last_timestep - 1;
        if (cap < limit) limit = cap;
    }
    lh_status st = sched_check_steps(&s->b, n, limit, err, err_size);
    if (st != LH_OK) return st;

    const double *sig = s->train_sigmas, *log_sig = s->train_log_sigmas;
    double smin = isnan(s->sigma_min) ? sig[0] : s->sigma_min;
    double smax = isnan(s->sigma_max) ? sig[train - 1] : s->sigma_max;
    double v[MS_MAX_STEPS];
    int32_t count = n;
    switch (s->kind) {
    case MS_SIGMAS_TRAIN:
        count = spaced_timesteps(s, s->ts, n);
        for (int32_t i = 0; i < count; i++) v[i] = sched_interp(s->ts[i], sig, train);
        break;
    case MS_SIGMAS_KARRAS:
        sched_karras_sigmas(v, n, smin, smax);
        break;
    case MS_SIGMAS_EXPONENTIAL:
        sched_exponential_sigmas(v, n, smin, smax);
        break;
    default: { /* lu: log sigmas evenly spaced over the training range */
        double ramp[MS_MAX_STEPS], lo = log_sig[0], hi = log_sig[train - 1];
        sched_linspace(ramp, 0.0, 1.0, n);
        for (int32_t i = 0; i < n; i++) v[i] = exp(hi + ramp[i] * (lo - hi));
        break;
    }
    }
    if (s->kind != MS_SIGMAS_TRAIN) {
        int rounded = s->kind != MS_SIGMAS_EXPONENTIAL && s->round_timesteps;
        for (int32_t i = 0; i < n; i++) {
            double t = sched_sigma_to_t(v[i], log_sig, train);
            s->ts[i] = rounded ? nearbyint(t) : trunc(t);
        }
    }
    double final = s->final_sigma == MS_FINAL_ZERO       ? 0.0
                   : s->final_sigma == MS_FINAL_TRAIN_MIN ? sig[0]
                                                          : v[count - 1];
    for (int32_t i = 0; i < count; i++) s->sigmas[i] = (float)v[i];
    s->sigmas[count] = (float)final;
    s->n = count;
    s->begin = s->next = -1;
    s->lower_order_nums = 0;
    return LH_OK;
}

/* ---- Steps ---- */

lh_status ms_begin_step(ms_sched *s, int32_t index, const lh_tensor *sample, char *err,
                        size_t err_size) {
    if (s->n == 0)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: set_timesteps was not called",
                          s->b.id);
    lh_status st = sched_check_index(&s->b, "step index", index, s->n, err, err_size);
    if (st != LH_OK) return st;
    int32_t expect = s->next >= 0 ? s->next : s->begin;
    if (expect >= 0 && index != expect)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: step index %d out of order (expected %d): a multistep solver "
                          "steps through its timesteps in sequence",
                          s->b.id, index, expect);
    for (int k = 0; k <= s->order && st == LH_OK; k++)
        st = sched_scratch(&s->b, &s->m[k], sample, err, err_size);
    return st;
}

void ms_push(ms_sched *s) {
    lh_tensor *newest = s->m[s->order];
    for (int k = s->order; k > 0; k--) s->m[k] = s->m[k - 1];
    s->m[0] = newest;
}

void ms_end_step(ms_sched *s, int32_t index) {
    if (s->lower_order_nums < s->order) s->lower_order_nums++;
    s->next = index + 1;
}

void ms_alpha_sigma(float sigma, float *alpha, float *sigma_t) {
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha;
}

float ms_lambda(float sigma) {
    float a, st;
    ms_alpha_sigma(sigma, &a, &st);
    return logf(a) - logf(st);
}

float ms_np_logf(float x) {
    static const float p[6] = {0.0f,           0x1p+0f,        0x1.0e6c38p+1f,
                               0x1.7ae152p+0f, 0x1.860666p-2f, 0x1.a8579ap-6f};
    static const float q[6] = {0x1p+0f,        0x1.4e6c38p+1f, 0x1.39fc1ap+1f,
                               0x1.f915c8p-1f, 0x1.3cb7e6p-3f, 0x1.8107bep-8f};
    if (!(x > 0.0f) || isinf(x)) return logf(x);
    /* x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = P(m - 1) / Q(m - 1) */
    int e;
    float m = frexpf(x, &e), fe = (float)e;
    if (m <= 0x1.6a09e6p-1f) {
        m += m;
        fe -= 1.0f;
    }
    m -= 1.0f;
    float num = p[5], den = q[5];
    for (int i = 4; i >= 0; i--) {
        num = fmaf(num, m, p[i]);
        den = fmaf(den, m, q[i]);
    }
    return fmaf(fe, 0x1.62e430p-1f /* ln 2 */, num / den);
}

lh_status ms_to_x0(const ms_sched *s, lh_tensor *out, const lh_tensor *model_output,
                   const lh_tensor *sample, float sigma, char *err, size_t err_size) {
    float a, st;
    ms_alpha_sigma(sigma, &a, &st);
    return sched_predict_x0(&s->b, out, model_output, sample, a, st, err, err_size);
}

lh_status ms_to_eps(const ms_sched *s, lh_tensor *out, const lh_tensor *model_output,
                    const lh_tensor *sample, float sigma, char *err, size_t err_size) {
    float a, st;
    ms_alpha_sigma(sigma, &a, &st);
    return sched_predict_eps(&s->b, out, model_output, sample, a, st, err, err_size);
}

/* ---- Descriptor functions ---- */

lh_status ms_set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    ms_sched *s = p;
    lh_status st = sched_check_index(&s->b, "begin index", k, s->n, err, err_size);
    if (st == LH_OK) s->begin = k;
    return st;
}

int32_t ms_timesteps(void *p, const double **out) {
    ms_sched *s = p;
    *out = s->ts;
    return s->n;
}

int32_t ms_sigmas(void *p, const double **out) {
    ms_sched *s = p;
    *out = s->sigmas;
    return s->n ? s->n + 1 : 0;
}

/* diffusers' add_noise: the sigma at the current step when a begin index is
 * set, else at the timestep's place in the schedule (the second of
 * repeated timesteps, the last sigma for an unknown timestep). */
lh_status ms_add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                       double timestep, char *err, size_t err_size) {
    ms_sched *s = p;
    if (s->n == 0)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: add_noise needs set_timesteps first", s->b.id);
    int32_t idx;
    if (s->begin >= 0) {
        idx = s->next >= 0 ? s->next : s->begin;
    } else {
        idx = sched_find_timestep(s->ts, s->n, timestep, 0.0);
        if (idx < 0) idx = s->n - 1;
    }
    float a, st;
    ms_alpha_sigma((float)s->sigmas[idx], &a, &st);
    lh_status rc = s->b.host->tensor_axpby(out, a, x, st, noise);
    return rc == LH_OK ? rc : sched_host_fail(&s->b, rc, "add_noise", err, err_size);
}
