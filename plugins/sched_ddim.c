/* DDIM scheduler plugin (diffusers DDIMScheduler): deterministic for eta = 0,
 * stochastic for eta > 0 with noise from the host's generator. Config keys
 * are diffusers'; `eta` (a step argument in diffusers) is a config key here. */
#include <math.h>
#include <stdio.h>

#include "lib/sched_common.h"

#define MAX_STEPS 1000

typedef struct ddim {
    sched_base b;
    int clip_sample, set_alpha_to_one;
    double clip_sample_range, eta;
    double final_alpha_cumprod;
    double ts[MAX_STEPS];
    int32_t n;
    lh_tensor *x0, *eps, *noise; /* scratch */
} ddim;

static const char *const KEYS[] = {SCHED_BASE_KEYS, "clip_sample", "clip_sample_range",
                                   "set_alpha_to_one", "eta", NULL};
static const char *const ALIASES[] = {"DDIM", NULL};

static void destroy(void *p) {
    ddim *s = p;
    if (!s) return;
    const lh_host_api *h = s->b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->eps);
    h->tensor_free(s->noise);
    sched_base_free(&s->b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    ddim *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    lh_status st = sched_base_init(&s->b, host, "ddim", cfg, &defaults, err, err_size);
    if (st == LH_OK) st = host->config_bool(cfg, "clip_sample", 1, &s->clip_sample, err, err_size);
    if (st == LH_OK)
        st = host->config_double(cfg, "clip_sample_range", 1.0, &s->clip_sample_range, err, err_size);
    if (st == LH_OK)
        st = host->config_bool(cfg, "set_alpha_to_one", 1, &s->set_alpha_to_one, err, err_size);
    if (st == LH_OK) st = host->config_double(cfg, "eta", 0.0, &s->eta, err, err_size);
    if (st == LH_OK && s->eta < 0.0)
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "ddim: eta must be >= 0, got %g", s->eta);
    if (st == LH_OK && s->clip_sample_range <= 0.0)
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "ddim: clip_sample_range must be > 0");
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    s->final_alpha_cumprod = s->set_alpha_to_one ? 1.0 : sched_alpha_bar(&s->b, 0);
    *out = s;
    return LH_OK;
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    ddim *s = p;
    int64_t train = s->b.num_train_timesteps;
    int64_t limit = train < MAX_STEPS ? train : MAX_STEPS;
    lh_status st = sched_check_steps(&s->b, n, limit, err, err_size);
    if (st != LH_OK) return st;
    if (s->b.spacing == SCHED_SPACING_LINSPACE) {
        double lin[MAX_STEPS];
        sched_linspace(lin, 0.0, (double)(train - 1), n);
        for (int32_t i = 0; i < n; i++) s->ts[i] = nearbyint(lin[n - 1 - i]);
    } else if (s->b.spacing == SCHED_SPACING_LEADING) {
        int64_t ratio = train / n;
        for (int32_t i = 0; i < n; i++)
            s->ts[i] = (double)((int64_t)(n - 1 - i) * ratio + s->b.steps_offset);
    } else {
        double ratio = (double)train / n;
        for (int32_t i = 0; i < n; i++) s->ts[i] = nearbyint((double)train - i * ratio) - 1.0;
    }
    for (int32_t i = 0; i < n; i++)
        if (s->ts[i] < 0 || s->ts[i] >= (double)train)
            return sched_fail(err, err_size, LH_ERR_INVALID,
                              "ddim: timestep %g outside 0..%lld (check steps_offset)", s->ts[i],
                              (long long)train - 1);
    s->n = n;
    return LH_OK;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    ddim *s = p;
    if (k < 0 || k >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddim: begin index %d outside 0..%d", k,
                          s->n - 1);
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    ddim *s = p;
    *out = s->ts;
    return s->n;
}

static double init_noise_sigma(void *p) { return 1.0; }

static lh_status scale_model_input(void *p, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    ddim *s = p;
    lh_status st = s->b.host->tensor_copy(out, sample);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "scale_model_input", err, err_size);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    ddim *s = p;
    const lh_host_api *h = s->b.host;
    if (index < 0 || index >= s->n)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddim: step index %d outside 0..%d",
                          index, s->n - 1);
    int64_t t = (int64_t)s->ts[index];
    int64_t t_prev = t - s->b.num_train_timesteps / s->n;
    double a_t = sched_alpha_bar(&s->b, t);
    double a_prev = t_prev >= 0 ? sched_alpha_bar(&s->b, t_prev) : s->final_alpha_cumprod;
    double beta_t = 1.0 - a_t;
    double sa = sqrt(a_t), sb = sqrt(beta_t);
    lh_status st = sched_scratch(&s->b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(&s->b, &s->eps, sample, err, err_size);
    if (st != LH_OK) return st;

    /* predicted x0 and epsilon */
    switch (s->b.prediction_type) {
    case SCHED_PRED_EPSILON:
        st = h->tensor_axpby(s->x0, 1.0 / sa, sample, -sb / sa, model_output);
        if (st == LH_OK) st = h->tensor_copy(s->eps, model_output);
        break;
    case SCHED_PRED_SAMPLE:
        st = h->tensor_copy(s->x0, model_output);
        if (st == LH_OK) st = h->tensor_axpby(s->eps, 1.0 / sb, sample, -sa / sb, model_output);
        break;
    default: /* v_prediction */
        st = h->tensor_axpby(s->x0, sa, sample, -sb, model_output);
        if (st == LH_OK) st = h->tensor_axpby(s->eps, sa, model_output, sb, sample);
        break;
    }
    if (st == LH_OK && s->clip_sample)
        st = h->tensor_clamp(s->x0, s->x0, -s->clip_sample_range, s->clip_sample_range);
    if (st != LH_OK) return sched_host_fail(&s->b, st, "step", err, err_size);

    double variance = ((1.0 - a_prev) / beta_t) * (1.0 - a_t / a_prev);
    double std_dev = s->eta * sqrt(variance);
    double dir = 1.0 - a_prev - std_dev * std_dev;
    dir = dir > 0.0 ? sqrt(dir) : 0.0;
    st = h->tensor_axpby(prev, sqrt(a_prev), s->x0, dir, s->eps);
    if (st == LH_OK && s->eta > 0.0) {
        if (!rng)
            return sched_fail(err, err_size, LH_ERR_INVALID,
                              "ddim: eta > 0 needs a random generator");
        st = sched_scratch(&s->b, &s->noise, sample, err, err_size);
        if (st == LH_OK) st = h->tensor_randn(s->noise, rng);
        if (st == LH_OK) st = h->tensor_axpby(prev, 1.0, prev, std_dev, s->noise);
    }
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "step", err, err_size);
}

static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                           double timestep, char *err, size_t err_size) {
    ddim *s = p;
    int64_t t = (int64_t)timestep;
    if (t < 0 || t >= s->b.num_train_timesteps)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddim: timestep %g outside 0..%lld",
                          timestep, (long long)s->b.num_train_timesteps - 1);
    double a = sched_alpha_bar(&s->b, t);
    lh_status st = s->b.host->tensor_axpby(out, sqrt(a), x, sqrt(1.0 - a), noise);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "add_noise", err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "ddim", "1.0.0",
                           "DDIM (diffusers DDIMScheduler), eta for stochastic sampling",
                           ALIASES),
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
