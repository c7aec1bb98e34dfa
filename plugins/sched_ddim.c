/* DDIM scheduler plugin (diffusers DDIMScheduler): deterministic for eta = 0,
 * stochastic for eta > 0 with noise from the host's generator. Config keys
 * are diffusers'; `eta` (a step argument in diffusers) is a config key here. */
#include <math.h>
#include <stdio.h>

#include "lib/sched_alphabar.h"
#include "lib/sched_predict.h"

typedef struct ddim {
    alphabar_sched ab; /* first: the shared callbacks take this state */
    sched_clip clip;
    int set_alpha_to_one;
    double eta;
    double final_alpha_cumprod;
    lh_tensor *x0, *eps, *noise; /* scratch */
} ddim;

static const char *const KEYS[] = {SCHED_BASE_KEYS, "clip_sample", "clip_sample_range",
                                   "set_alpha_to_one", "eta", NULL};
static const char *const ALIASES[] = {"DDIM", NULL};

static void destroy(void *p) {
    ddim *s = p;
    if (!s) return;
    const lh_host_api *h = s->ab.b.host;
    h->tensor_free(s->x0);
    h->tensor_free(s->eps);
    h->tensor_free(s->noise);
    sched_base_free(&s->ab.b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    ddim *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    sched_base *b = &s->ab.b;
    lh_status st = sched_base_init(b, host, "ddim", cfg, &defaults, err, err_size);
    if (st == LH_OK) st = sched_clip_read(b, cfg, 1, &s->clip, err, err_size);
    if (st == LH_OK)
        st = host->config_bool(cfg, "set_alpha_to_one", 1, &s->set_alpha_to_one, err, err_size);
    if (st == LH_OK) st = host->config_double(cfg, "eta", 0.0, &s->eta, err, err_size);
    if (st == LH_OK && s->eta < 0.0)
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "ddim: eta must be >= 0, got %g", s->eta);
    if (st == LH_OK) s->final_alpha_cumprod = s->set_alpha_to_one ? 1.0 : sched_alpha_bar(b, 0);
    return sched_finish_create(out, s, st, destroy);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    ddim *s = p;
    const sched_base *b = &s->ab.b;
    const lh_host_api *h = b->host;
    lh_status st = sched_check_index(b, "step index", index, s->ab.n, err, err_size);
    if (st != LH_OK) return st;
    int64_t t = (int64_t)s->ab.ts[index];
    int64_t t_prev = t - b->num_train_timesteps / s->ab.n;
    double a_t = sched_alpha_bar(b, t);
    double a_prev = t_prev >= 0 ? sched_alpha_bar(b, t_prev) : s->final_alpha_cumprod;
    double beta_t = 1.0 - a_t;
    double sa = sqrt(a_t), sb = sqrt(beta_t);
    st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->eps, sample, err, err_size);
    /* predicted x0 and epsilon */
    if (st == LH_OK) st = sched_predict_x0(b, s->x0, model_output, sample, sa, sb, err, err_size);
    if (st == LH_OK) st = sched_predict_eps(b, s->eps, model_output, sample, sa, sb, err, err_size);
    if (st == LH_OK) st = sched_clip_apply(b, &s->clip, s->x0, err, err_size);
    if (st != LH_OK) return st;

    double variance = ((1.0 - a_prev) / beta_t) * (1.0 - a_t / a_prev);
    double std_dev = s->eta * sqrt(variance);
    double dir = 1.0 - a_prev - std_dev * std_dev;
    dir = dir > 0.0 ? sqrt(dir) : 0.0;
    st = h->tensor_axpby(prev, sqrt(a_prev), s->x0, dir, s->eps);
    if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
    if (s->eta > 0.0) {
        st = sched_draw_noise(b, &s->noise, sample, rng, "eta > 0", err, err_size);
        if (st != LH_OK) return st;
        st = h->tensor_axpby(prev, 1.0, prev, std_dev, s->noise);
    }
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

static lh_status add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                           double timestep, char *err, size_t err_size) {
    ddim *s = p;
    const sched_base *b = &s->ab.b;
    int64_t t = (int64_t)timestep;
    if (t < 0 || t >= b->num_train_timesteps)
        return sched_fail(err, err_size, LH_ERR_INVALID, "ddim: timestep %g outside 0..%lld",
                          timestep, (long long)b->num_train_timesteps - 1);
    double a = sched_alpha_bar(b, t);
    lh_status st = b->host->tensor_axpby(out, sqrt(a), x, sqrt(1.0 - a), noise);
    return st == LH_OK ? st : sched_host_fail(b, st, "add_noise", err, err_size);
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "ddim", "1.0.0",
                           "DDIM (diffusers DDIMScheduler), eta for stochastic sampling",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = alphabar_set_timesteps,
    .set_begin_index = alphabar_set_begin_index,
    .timesteps = alphabar_timesteps,
    .init_noise_sigma = sched_unit_init_noise_sigma,
    .scale_model_input = sched_identity_scale_model_input,
    .step = step,
    .add_noise = add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
