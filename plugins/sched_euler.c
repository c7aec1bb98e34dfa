/* Euler scheduler plugin (diffusers EulerDiscreteScheduler), Karras et al.
 * (2022) Algorithm 2: deterministic unless s_churn > 0, when each step in
 * [s_tmin, s_tmax] first adds noise from the host's generator. The step
 * arguments s_churn, s_tmin, s_tmax and s_noise are config keys here. */
#include <math.h>

#include "lib/ksigma.h"
#include "lib/sched_predict.h"

typedef struct euler {
    ksigma k; /* first: the shared callbacks take this state */
    double s_churn, s_tmin, s_tmax, s_noise;
    lh_tensor *x0, *deriv, *tmp, *noise, *churned; /* scratch */
} euler;

static const char *const KEYS[] = {
    SCHED_BASE_KEYS, "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas",
    "sigma_min", "sigma_max", "timestep_type", "final_sigmas_type", "s_churn", "s_tmin",
    "s_tmax", "s_noise", NULL};
static const char *const ALIASES[] = {"Euler", NULL};
static const char *const INTERPOLATIONS[] = {"linear", "log_linear", NULL};
static const char *const TIMESTEP_TYPES[] = {"discrete", "continuous", NULL};
static const char *const FINAL_SIGMAS[] = {"zero", "sigma_min", NULL};

static void destroy(void *p) {
    euler *s = p;
    if (!s) return;
    const lh_host_api *h = s->k.b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->deriv);
    h->tensor_free(s->tmp);
    h->tensor_free(s->noise);
    h->tensor_free(s->churned);
    ksigma_free(&s->k);
    h->free(s);
}

/* Read the Euler-only keys into the schedule options and the churn settings. */
static lh_status read_keys(euler *s, const lh_config *cfg, char *err, size_t err_size) {
    const lh_host_api *h = s->k.b.host;
    ksigma_opts *o = &s->k.opts;
    int interp, ttype, final;
    lh_status st = sched_enum(h, cfg, "euler", "interpolation_type", INTERPOLATIONS, 0, &interp,
                              err, err_size);
    if (st == LH_OK)
        st = sched_enum(h, cfg, "euler", "timestep_type", TIMESTEP_TYPES, 0, &ttype, err,
                        err_size);
    if (st == LH_OK)
        st = sched_enum(h, cfg, "euler", "final_sigmas_type", FINAL_SIGMAS, 0, &final, err,
                        err_size);
    if (st == LH_OK) st = h->config_double(cfg, "sigma_min", NAN, &o->sigma_min, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "sigma_max", NAN, &o->sigma_max, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "s_churn", 0.0, &s->s_churn, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "s_tmin", 0.0, &s->s_tmin, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "s_tmax", INFINITY, &s->s_tmax, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "s_noise", 1.0, &s->s_noise, err, err_size);
    if (st != LH_OK) return st;
    o->log_linear = interp == 1;
    o->continuous = ttype == 1;
    o->final_sigma_min = final == 1;
    if (o->sigma_min <= 0.0)
        return sched_fail(err, err_size, LH_ERR_CONFIG, "euler: sigma_min must be > 0, got %g",
                          o->sigma_min);
    if (o->sigma_max <= 0.0)
        return sched_fail(err, err_size, LH_ERR_CONFIG, "euler: sigma_max must be > 0, got %g",
                          o->sigma_max);
    if (s->s_churn < 0.0)
        return sched_fail(err, err_size, LH_ERR_CONFIG, "euler: s_churn must be >= 0, got %g",
                          s->s_churn);
    return LH_OK;
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    euler *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LINSPACE};
    lh_status st = ksigma_init(&s->k, host, "euler", cfg, &defaults,
                               KSIGMA_HAS_ZSNR | KSIGMA_HAS_SIGMA_KIND, err, err_size);
    if (st == LH_OK) st = read_keys(s, cfg, err, err_size);
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    euler *s = p;
    return ksigma_set_timesteps(&s->k, n, err, err_size);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    euler *s = p;
    ksigma *k = &s->k;
    const sched_base *b = &k->b;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->deriv, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->tmp, sample, err, err_size);
    if (st != LH_OK) return st;

    /* churn: raise the noise level to sigma_hat = sigma (1 + gamma); torch
     * compares and multiplies the float32 sigma with float32 constants */
    float sigma = (float)k->sig[index];
    double gamma = 0.0;
    if ((float)s->s_tmin <= sigma && sigma <= (float)s->s_tmax) {
        gamma = s->s_churn / (k->n_sig - 1);
        if (gamma > M_SQRT2 - 1.0) gamma = M_SQRT2 - 1.0;
    }
    float sigma_hat = sigma * (float)(gamma + 1.0);
    if (gamma > 0.0) {
        st = sched_draw_noise(b, &s->noise, sample, rng, "s_churn > 0", err, err_size);
        if (st == LH_OK) st = sched_scratch(b, &s->churned, sample, err, err_size);
        if (st != LH_OK) return st;
        st = b->host->tensor_axpby(s->noise, (float)s->s_noise, s->noise, 0.0, NULL);
        if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
        float extra = sqrtf(sigma_hat * sigma_hat - sigma * sigma);
        st = sched_add_scaled(b, s->churned, s->tmp, sample, s->noise, extra, err, err_size);
        if (st != LH_OK) return st;
        sample = s->churned;
    }

    /* v-prediction scales with sigma, the others with sigma_hat (as diffusers) */
    float dt = (float)k->sig[index + 1] - sigma_hat;
    float x0_sigma = b->prediction_type == SCHED_PRED_V ? sigma : sigma_hat;
    st = sched_sigma_x0(b, s->x0, s->tmp, model_output, sample, x0_sigma, err, err_size);
    if (st == LH_OK)
        st = sched_sigma_derivative(b, s->deriv, sample, s->x0, sigma_hat, err, err_size);
    if (st == LH_OK) st = sched_add_scaled(b, prev, s->tmp, sample, s->deriv, dt, err, err_size);
    if (st == LH_OK) k->cur = index + 1;
    return st;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "euler", "1.0.0",
                           "Euler (diffusers EulerDiscreteScheduler), optional churn noise",
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
