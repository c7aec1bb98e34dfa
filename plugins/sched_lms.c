/* LMS scheduler plugin (diffusers LMSDiscreteScheduler): linear multistep
 * in sigma over the last `order` derivatives (a step argument in diffusers,
 * a config key here). The coefficients, integrals of the Lagrange basis that
 * diffusers takes with scipy's quad, are computed exactly: the basis is a
 * polynomial, expanded and integrated term by term. */
#include <string.h>

#include "lib/ksigma.h"
#include "lib/sched_predict.h"

#define MAX_ORDER 8

typedef struct lms {
    ksigma k; /* first: the shared callbacks take this state */
    int order;
    int n_hist;                    /* derivatives kept, newest last */
    lh_tensor *hist[MAX_ORDER];    /* allocated on first use */
    lh_tensor *x0, *tmp, *acc;     /* scratch */
} lms;

/* No rescale_betas_zero_snr: LMSDiscreteScheduler has none. */
static const char *const KEYS[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "timestep_spacing", "steps_offset", "use_karras_sigmas",
    "use_exponential_sigmas", "order", NULL};
static const char *const ALIASES[] = {"LMS", NULL};

static void destroy(void *p) {
    lms *s = p;
    if (!s) return;
    const lh_host_api *h = s->k.b.host;
    for (int i = 0; i < MAX_ORDER; i++) h->tensor_free(s->hist[i]);
    h->tensor_free(s->x0);
    h->tensor_free(s->tmp);
    h->tensor_free(s->acc);
    ksigma_free(&s->k);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    lms *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LINSPACE};
    int64_t order = 4;
    lh_status st = ksigma_init(&s->k, host, "lms", cfg, &defaults, KSIGMA_HAS_SIGMA_KIND, err,
                               err_size);
    if (st == LH_OK) st = host->config_int(cfg, "order", 4, &order, err, err_size);
    if (st == LH_OK && (order < 1 || order > MAX_ORDER))
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "lms: order must be in 1..%d, got %lld",
                        MAX_ORDER, (long long)order);
    s->order = (int)order;
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    lms *s = p;
    s->n_hist = 0;
    return ksigma_set_timesteps(&s->k, n, err, err_size);
}

/* Integral from sig[t] to sig[t+1] of the Lagrange basis polynomial of node
 * sig[t-j] over the nodes sig[t], ..., sig[t-order+1]. In u = tau - sig[t]
 * the basis is prod_{k != j} (u - r_k) / (sig[t-j] - sig[t-k]) with
 * r_k = sig[t-k] - sig[t]; expand it and integrate each power of u. */
static double lms_coefficient(const double *sig, int32_t t, int order, int j) {
    double poly[MAX_ORDER] = {1.0}; /* coefficients of u^0, u^1, ... */
    double denom = 1.0;
    int deg = 0;
    for (int k = 0; k < order; k++) {
        if (k == j) continue;
        double r = sig[t - k] - sig[t];
        for (int p = deg + 1; p > 0; p--) poly[p] = poly[p - 1] - r * poly[p];
        poly[0] *= -r;
        deg++;
        denom *= sig[t - j] - sig[t - k];
    }
    double h = sig[t + 1] - sig[t], hp = h, sum = 0.0;
    for (int p = 0; p <= deg; p++, hp *= h) sum += poly[p] * hp / (p + 1);
    return sum / denom;
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    (void)rng;
    lms *s = p;
    ksigma *k = &s->k;
    const sched_base *b = &k->b;
    const lh_host_api *h = b->host;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->tmp, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->acc, sample, err, err_size);
    float sigma = (float)k->sig[index];
    if (st == LH_OK)
        st = sched_sigma_x0(b, s->x0, s->tmp, model_output, sample, sigma, err, err_size);
    if (st != LH_OK) return st;

    /* the new derivative goes last; past `order` the oldest slot is reused */
    if (s->n_hist == s->order) {
        lh_tensor *oldest = s->hist[0];
        memmove(s->hist, s->hist + 1, (size_t)(s->order - 1) * sizeof s->hist[0]);
        s->hist[s->order - 1] = oldest;
        s->n_hist--;
    }
    lh_tensor **d_new = &s->hist[s->n_hist];
    st = sched_scratch(b, d_new, sample, err, err_size);
    if (st == LH_OK) st = sched_sigma_derivative(b, *d_new, sample, s->x0, sigma, err, err_size);
    if (st != LH_OK) return st;
    s->n_hist++;

    /* prev = sample + sum_j c_j d[newest - j], summed like diffusers (float32
     * coefficients, left to right); the order grows with the step index,
     * and only as many terms as derivatives are kept are used */
    int order = index + 1 < s->order ? index + 1 : s->order;
    int terms = order < s->n_hist ? order : s->n_hist;
    for (int j = 0; j < terms && st == LH_OK; j++) {
        float c = (float)lms_coefficient(k->sig, index, order, j);
        const lh_tensor *d = s->hist[s->n_hist - 1 - j];
        st = h->tensor_axpby(j ? s->tmp : s->acc, c, d, 0.0, NULL);
        if (st == LH_OK && j) st = h->tensor_axpby(s->acc, 1.0, s->acc, 1.0, s->tmp);
    }
    if (st == LH_OK) st = h->tensor_axpby(prev, 1.0, sample, 1.0, s->acc);
    if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
    k->cur = index + 1;
    return LH_OK;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "lms", "1.0.0",
                           "LMS (diffusers LMSDiscreteScheduler), linear multistep in sigma",
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
