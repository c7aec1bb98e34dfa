/* Heun scheduler plugin (diffusers HeunDiscreteScheduler): Karras et al.
 * (2022) Algorithm 1 without churn. Its timesteps interleave: t0, t1, t1,
 * t2, t2, ...; each interior timestep is visited twice, first for an Euler
 * step, then for the trapezoidal correction of that step. */
#include <math.h>

#include "lib/ksigma.h"
#include "lib/sched_predict.h"

typedef struct heun {
    ksigma k; /* first: the shared callbacks take this state */
    sched_clip clip;
    int have_first;                        /* an Euler step waits for its correction */
    float dt;                              /* of that Euler step */
    lh_tensor *first_deriv, *first_sample; /* its derivative and start */
    lh_tensor *x0, *deriv, *tmp;           /* scratch */
} heun;

/* No rescale_betas_zero_snr: HeunDiscreteScheduler has none. */
static const char *const KEYS[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "timestep_spacing", "steps_offset", "use_karras_sigmas",
    "use_exponential_sigmas", "clip_sample", "clip_sample_range", NULL};
static const char *const ALIASES[] = {"Heun", NULL};

static void destroy(void *p) {
    heun *s = p;
    if (!s) return;
    const lh_host_api *h = s->k.b.host;
    h->tensor_free(s->first_deriv);
    h->tensor_free(s->first_sample);
    h->tensor_free(s->x0);
    h->tensor_free(s->deriv);
    h->tensor_free(s->tmp);
    ksigma_free(&s->k);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    heun *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.00085, 0.012, "linear", SCHED_SPACING_LINSPACE};
    lh_status st = ksigma_init(&s->k, host, "heun", cfg, &defaults, KSIGMA_HAS_SIGMA_KIND, err,
                               err_size);
    if (st == LH_OK) st = sched_clip_read(&s->k.b, cfg, 0, &s->clip, err, err_size);
    return sched_finish_create(out, s, st, destroy);
}

/* n sigma steps become 2n - 1 model evaluations:
 * timesteps t0, t1, t1, ..., t[n-1], t[n-1] and sigmas s0, s1, s1, ..., s[n-1], s[n-1], 0. */
static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    heun *s = p;
    ksigma *k = &s->k;
    lh_status st = ksigma_set_timesteps(k, n, err, err_size);
    if (st != LH_OK) return st;
    /* spread in place from the back: slot 2i - 1 >= i never overwrites an unread entry */
    k->sig[2 * n - 1] = k->sig[n];
    for (int32_t i = n - 1; i >= 1; i--) {
        k->ts[2 * i] = k->ts[2 * i - 1] = k->ts[i];
        k->sig[2 * i] = k->sig[2 * i - 1] = k->sig[i];
    }
    k->n_ts = 2 * n - 1;
    k->n_sig = 2 * n;
    s->have_first = 0;
    return LH_OK;
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    (void)rng;
    heun *s = p;
    ksigma *k = &s->k;
    const sched_base *b = &k->b;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->x0, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->deriv, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->tmp, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(b, &s->first_deriv, sample, err, err_size);
    /* both evaluations of a pair predict at sigma[index]: the Euler step's
     * start, then (the sigmas repeat) its end */
    float sigma = (float)k->sig[index];
    if (st == LH_OK)
        st = sched_sigma_x0(b, s->x0, s->tmp, model_output, sample, sigma, err, err_size);
    if (st == LH_OK) st = sched_clip_apply(b, &s->clip, s->x0, err, err_size);
    if (st == LH_OK) st = sched_sigma_derivative(b, s->deriv, sample, s->x0, sigma, err, err_size);
    if (st != LH_OK) return st;

    if (!s->have_first) {
        /* Euler step to the next sigma; keep its start and slope for the correction */
        s->dt = (float)k->sig[index + 1] - sigma;
        lh_tensor *t = s->first_deriv;
        s->first_deriv = s->deriv;
        s->deriv = t;
        st = sched_keep(b, &s->first_sample, sample, err, err_size);
        if (st != LH_OK) return st;
        st = sched_add_scaled(b, prev, s->tmp, sample, s->first_deriv, s->dt, err, err_size);
        s->have_first = 1;
    } else {
        /* trapezoid: the mean of both slopes, from the Euler step's start */
        st = b->host->tensor_axpby(s->deriv, 0.5, s->first_deriv, 0.5, s->deriv);
        if (st != LH_OK) return sched_host_fail(b, st, "step", err, err_size);
        st = sched_add_scaled(b, prev, s->tmp, s->first_sample, s->deriv, s->dt, err, err_size);
        s->have_first = 0;
    }
    if (st == LH_OK) k->cur = index + 1;
    return st;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "heun", "1.0.0",
                           "Heun (diffusers HeunDiscreteScheduler), two evaluations per step",
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
