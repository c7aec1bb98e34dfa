/* The KDPM2 schedule (diffusers' KDPM2DiscreteScheduler and its ancestral
 * variant), computed with diffusers' float32/float64 mix: sigmas interpolated
 * in float64, then float32 tensors for midpoints, up/down sigmas and the
 * timesteps of the midpoints. */
#include "sched_kdpm2.h"

#include <math.h>

#include "sched_predict.h"

lh_status kdpm2_create(void **out, const lh_host_api *host, const lh_config *cfg, const char *id,
                       int ancestral, char *err, size_t err_size) {
    kdpm2 *k = host->calloc(1, sizeof *k);
    if (!k) return sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", id);
    static const sched_defaults defaults = {0.00085, 0.012, "linear", SCHED_SPACING_LINSPACE};
    int rescale = 0;
    lh_status st = sched_base_init(&k->b, host, id, cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = sched_read_sigma_kind(&k->b, cfg, &k->karras, &k->exponential, err, err_size);
    if (st == LH_OK) st = sched_read_zero_snr(&k->b, cfg, 0, &rescale, err, err_size);
    if (st == LH_OK) st = sched_refuse_sample_prediction(&k->b, err, err_size);
    k->ancestral = ancestral;
    return sched_finish_create(out, k, st, kdpm2_destroy);
}

void kdpm2_destroy(void *state) {
    kdpm2 *k = state;
    if (!k) return;
    const lh_host_api *h = k->b.host;
    h->tensor_free(k->first);
    h->tensor_free(k->x0);
    h->tensor_free(k->d);
    h->tensor_free(k->noise);
    sched_base_free(&k->b);
    h->free(k);
}

/* ---- Schedule ---- */

/* exp(lerp(log a, log b, 0.5)) as torch evaluates it in float32. */
static float log_midpoint(float a, float b) {
    float la = logf(a), lb = logf(b);
    return expf(lb - (lb - la) * 0.5f);
}

/* diffusers' _sigma_to_t on float32 tensors (the midpoints' timesteps). */
static float sigma_to_t_f32(float sigma, const float *log_sigmas, int64_t n) {
    float ls = logf(sigma > 1e-10f ? sigma : 1e-10f);
    int64_t low = 0;
    for (int64_t i = 0; i < n; i++)
        if (ls - log_sigmas[i] >= 0.0f) low = i;
    if (low > n - 2) low = n - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    float w = (lo - ls) / (lo - hi);
    w = w < 0.0f ? 0.0f : w > 1.0f ? 1.0f : w;
    return (1.0f - w) * (float)low + w * (float)(low + 1);
}

/* Per-step sigmas of the n steps and their midpoints (float32, n + 1 each,
 * sig[n] = 0), ancestral up/down sigmas, and the step timesteps t[n]. */
typedef struct kdpm2_steps {
    float sig[KDPM2_MAX_STEPS + 1], mid[KDPM2_MAX_STEPS + 1];
    float up[KDPM2_MAX_STEPS + 1], down[KDPM2_MAX_STEPS + 1];
    double t[KDPM2_MAX_STEPS];
} kdpm2_steps;

static void step_sigmas(const kdpm2 *k, kdpm2_steps *st, int32_t n, const double *train_sigmas,
                        const double *log_sigmas) {
    int64_t train = k->b.num_train_timesteps;
    double s[KDPM2_MAX_STEPS];
    sched_spaced_timesteps(&k->b, st->t, n, 0);
    for (int32_t i = 0; i < n; i++) s[i] = sched_interp(st->t[i], train_sigmas, train);
    if (k->karras || k->exponential) {
        double lo = s[n - 1], hi = s[0];
        if (k->karras)
            sched_karras_sigmas(s, n, lo, hi);
        else
            sched_exponential_sigmas(s, n, lo, hi);
        for (int32_t i = 0; i < n; i++) {
            st->t[i] = sched_sigma_to_t(s[i], log_sigmas, train);
            if (k->karras) st->t[i] = nearbyint(st->t[i]);
        }
    }
    for (int32_t i = 0; i < n; i++) st->sig[i] = (float)s[i];
    st->sig[n] = 0.0f;
    st->mid[0] = st->up[n] = st->down[n] = 0.0f; /* unused (NaN or 0 in diffusers) */
    if (!k->ancestral) {
        /* midpoint between each sigma and the one before it */
        for (int32_t i = 1; i <= n; i++) st->mid[i] = log_midpoint(st->sig[i], st->sig[i - 1]);
        return;
    }
    /* ancestral: the step to sig[i + 1] splits into a deterministic part down
     * to sigma_down and fresh noise of sigma_up; midpoints toward sigma_down */
    for (int32_t i = 0; i < n; i++) {
        float s2 = st->sig[i] * st->sig[i], next = st->sig[i + 1], n2 = next * next;
        st->up[i] = sqrtf(n2 * (s2 - n2) / s2);
        st->down[i] = sqrtf(n2 - st->up[i] * st->up[i]);
        st->mid[i] = i < n - 1 ? log_midpoint(st->sig[i], st->down[i]) : 0.0f;
    }
    st->mid[n] = 0.0f;
}

lh_status kdpm2_set_timesteps(void *state, int32_t n, char *err, size_t err_size) {
    kdpm2 *k = state;
    const lh_host_api *h = k->b.host;
    int64_t train = k->b.num_train_timesteps;
    k->n = 0;
    k->second_order = 0;
    lh_status st = sched_check_steps(&k->b, n, train < KDPM2_MAX_STEPS ? train : KDPM2_MAX_STEPS,
                                     err, err_size);
    if (st != LH_OK) return st;
    double *train_sigmas = h->calloc((size_t)train, sizeof *train_sigmas);
    double *log_sigmas = h->calloc((size_t)train, sizeof *log_sigmas);
    float *log_sigmas_f = h->calloc((size_t)train, sizeof *log_sigmas_f);
    kdpm2_steps *steps = h->calloc(1, sizeof *steps);
    if (!train_sigmas || !log_sigmas || !log_sigmas_f || !steps) {
        st = sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", k->b.id);
        goto done;
    }
    sched_train_sigmas(&k->b, train_sigmas);
    for (int64_t i = 0; i < train; i++) {
        log_sigmas_f[i] = logf((float)train_sigmas[i]);
        log_sigmas[i] = log_sigmas_f[i];
    }
    step_sigmas(k, steps, n, train_sigmas, log_sigmas);

    /* diffusers' self.sigmas etc.: [v0, v1, v1, v2, v2, ..., vn, vn, vn] */
    k->max_sigma = 0.0f;
    for (int32_t e = 0; e < 2 * n + 2; e++) {
        int32_t i = e == 0 ? 0 : (e + 1) / 2 < n ? (e + 1) / 2 : n;
        k->sigma[e] = steps->sig[i];
        k->interp[e] = steps->mid[i];
        k->up[e] = steps->up[i];
        k->down[e] = steps->down[i];
        k->sigmas_out[e] = steps->sig[i];
        if (steps->sig[i] > k->max_sigma) k->max_sigma = steps->sig[i];
    }
    /* model calls: t0, then for each later step j the midpoint call of the
     * step before it and then t[j]; that midpoint is mid[j] (between sig[j - 1]
     * and sig[j]), for the ancestral variant mid[j - 1] (toward its down sigma) */
    k->ts[0] = steps->t[0];
    for (int32_t j = 1; j < n; j++) {
        float mid = k->ancestral ? steps->mid[j - 1] : steps->mid[j];
        k->ts[2 * j - 1] = sigma_to_t_f32(mid, log_sigmas_f, train);
        k->ts[2 * j] = steps->t[j];
    }
    k->n = n;
done:
    h->free(train_sigmas);
    h->free(log_sigmas);
    h->free(log_sigmas_f);
    h->free(steps);
    return st;
}

lh_status kdpm2_set_begin_index(void *state, int32_t k, char *err, size_t err_size) {
    kdpm2 *s = state;
    lh_status st = sched_check_index(&s->b, "begin index", k, 2 * s->n - 1, err, err_size);
    if (st == LH_OK) s->second_order = 0;
    return st;
}

int32_t kdpm2_timesteps(void *state, const double **out) {
    kdpm2 *k = state;
    *out = k->ts;
    return k->n ? 2 * k->n - 1 : 0;
}

int32_t kdpm2_sigmas(void *state, const double **out) {
    kdpm2 *k = state;
    *out = k->sigmas_out;
    return k->n ? 2 * k->n + 2 : 0;
}

double kdpm2_init_noise_sigma(void *state) {
    kdpm2 *k = state;
    return sched_sigma_init_noise(&k->b, k->max_sigma);
}

/* ---- Step helpers ---- */

lh_status kdpm2_check_index(const kdpm2 *k, int32_t index, char *err, size_t err_size) {
    lh_status st = sched_check_index(&k->b, "step index", index, 2 * k->n - 1, err, err_size);
    if (st != LH_OK) return st;
    if (k->second_order && index == 0)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: a correction step cannot come first (steps out of order)",
                          k->b.id);
    return LH_OK;
}

lh_status kdpm2_x0(kdpm2 *k, const lh_tensor *model_output, const lh_tensor *sample, float sigma,
                   char *err, size_t err_size) {
    lh_status st = sched_scratch(&k->b, &k->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(&k->b, &k->d, sample, err, err_size);
    if (st != LH_OK) return st;
    return sched_sigma_x0(&k->b, k->x0, k->d, model_output, sample, sigma, err, err_size);
}

lh_status kdpm2_advance(kdpm2 *k, lh_tensor *prev, const lh_tensor *base, const lh_tensor *sample,
                        float sigma, float dt, char *err, size_t err_size) {
    lh_status st = sched_sigma_derivative(&k->b, k->d, sample, k->x0, sigma, err, err_size);
    if (st != LH_OK) return st;
    return sched_add_scaled(&k->b, prev, k->d, base, k->d, dt, err, err_size);
}

lh_status kdpm2_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                          const lh_tensor *noise, double timestep, char *err, size_t err_size) {
    kdpm2 *k = state;
    int32_t found = sched_find_timestep(k->ts, k->n ? 2 * k->n - 1 : 0, timestep, 1e-6);
    if (found < 0)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: add_noise timestep %g is not in the schedule", k->b.id, timestep);
    lh_status st = k->b.host->tensor_axpby(out, 1.0, original, k->sigma[found], noise);
    return st == LH_OK ? st : sched_host_fail(&k->b, st, "add_noise", err, err_size);
}
