/* A well-behaved test scheduler ("test_linear"): timesteps spaced evenly
 * from `num_train_timesteps`-1 to 0 and an Euler-style update written with
 * host tensor services only. It exercises the ABI, not the mathematics. */
#include <lorahost/plugin.h>
#include <stdio.h>

typedef struct state {
    const lh_host_api *host;
    int64_t train_steps;
    double scale;
    double ts[1000];
    int32_t n, begin;
} state;

static const char *const KEYS[] = {"num_train_timesteps", "scale", NULL};
static const char *const ALIASES[] = {"Test Linear", NULL};

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    if (host->size < sizeof(lh_host_api)) {
        snprintf(err, err_size, "host services table too old");
        return LH_ERR_ABI;
    }
    state *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    s->host = host;
    lh_status st = host->config_int(cfg, "num_train_timesteps", 1000, &s->train_steps, err,
                                    err_size);
    if (st == LH_OK) st = host->config_double(cfg, "scale", 1.0, &s->scale, err, err_size);
    if (st == LH_OK && (s->train_steps < 1 || s->train_steps > 100000)) {
        snprintf(err, err_size, "num_train_timesteps must be in 1..100000");
        st = LH_ERR_CONFIG;
    }
    if (st != LH_OK) {
        host->free(s);
        return st;
    }
    *out = s;
    return LH_OK;
}

static void destroy(void *p) {
    state *s = p;
    if (s) s->host->free(s);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    state *s = p;
    if (n < 1 || n > 1000 || n > s->train_steps) {
        snprintf(err, err_size, "steps must be in 1..%lld, got %d",
                 (long long)(s->train_steps < 1000 ? s->train_steps : 1000), n);
        return LH_ERR_INVALID;
    }
    for (int32_t i = 0; i < n; i++)
        s->ts[i] = n == 1 ? (double)(s->train_steps - 1)
                          : (double)(s->train_steps - 1) * (double)(n - 1 - i) / (n - 1);
    s->n = n;
    s->begin = 0;
    return LH_OK;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    state *s = p;
    if (k < 0 || k >= s->n) {
        snprintf(err, err_size, "begin index %d outside 0..%d", k, s->n - 1);
        return LH_ERR_INVALID;
    }
    s->begin = k;
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    state *s = p;
    *out = s->ts;
    return s->n;
}

static double init_noise_sigma(void *p) { return ((state *)p)->scale; }

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    state *s = p;
    lh_status st = s->host->tensor_axpby(out, 1.0 / s->scale, sample, 0.0, NULL);
    if (st != LH_OK) snprintf(err, err_size, "%s", s->host->last_error());
    return st;
}

/* prev = sample - scale * eps / n */
static lh_status step(void *p, lh_tensor *prev, const lh_tensor *eps, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    state *s = p;
    if (index < 0 || index >= s->n) {
        snprintf(err, err_size, "step index %d outside 0..%d", index, s->n - 1);
        return LH_ERR_INVALID;
    }
    lh_status st = s->host->tensor_axpby(prev, 1.0, sample, -s->scale / s->n, eps);
    if (st != LH_OK) snprintf(err, err_size, "%s", s->host->last_error());
    return st;
}

static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                           double t, char *err, size_t err_size) {
    state *s = p;
    double w = t / (double)s->train_steps;
    const lh_tensor *xs[2] = {x, noise};
    double coef[2] = {1.0 - w, w};
    lh_status st = s->host->tensor_lincomb(out, 2, coef, xs);
    if (st != LH_OK) snprintf(err, err_size, "%s", s->host->last_error());
    return st;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "test_linear", "1.2.3",
                           "test scheduler with a linear update", ALIASES),
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
