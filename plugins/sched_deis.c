/* DEIS scheduler plugin (diffusers DEISMultistepScheduler): the log-rho
 * multistep exponential integrator of orders 1 to 3 over the noise
 * prediction, with rho = sigma_t / alpha_t. */
#include <math.h>

#include "lib/sched_multistep.h"

typedef struct deis {
    ms_sched ms;
    lh_tensor *x0; /* scratch */
} deis;

static const char *const KEYS[] = {SCHED_BASE_KEYS, MS_KEYS, "algorithm_type", NULL};
static const char *const ALIASES[] = {"DEIS", NULL};
/* diffusers maps the other classes' values to deis / logrho. */
static const char *const ALGORITHMS[] = {"deis", "dpmsolver", "dpmsolver++", NULL};
static const char *const SOLVER_TYPES[] = {"logrho", "midpoint", "heun", "bh1", "bh2", NULL};

static void destroy(void *p) {
    deis *s = p;
    if (!s) return;
    const lh_host_api *h = s->ms.b.host;
    h->tensor_free(s->x0);
    ms_free(&s->ms);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    deis *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    int algo, solver;
    lh_status st = ms_init(&s->ms, host, "deis", cfg, 0, err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, "deis", "algorithm_type", ALGORITHMS, 0, &algo, err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, "deis", "solver_type", SOLVER_TYPES, 0, &solver, err, err_size);
    s->ms.final_sigma = s->ms.kind == MS_SIGMAS_TRAIN ? MS_FINAL_TRAIN_MIN : MS_FINAL_REPEAT;
    s->ms.round_timesteps = 1;
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    deis *s = p;
    return ms_schedule(&s->ms, n, err, err_size);
}

/* ---- Step ---- */

/* Integral of the Lagrange basis polynomial in log rho through b (against
 * c), as diffusers' second-order ind_fn: float32 with numpy's log, since
 * the differences of these integrals cancel most of their digits. */
static float ind2(float t, float b, float c) {
    float lt = ms_np_logf(t), lb = ms_np_logf(b), lc = ms_np_logf(c);
    return t * (-lc + lt - 1.0f) / (lb - lc);
}

/* The same through b (against c and d), diffusers' third-order ind_fn. */
static float ind3(float t, float b, float c, float d) {
    float lt = ms_np_logf(t), lb = ms_np_logf(b), lc = ms_np_logf(c), ld = ms_np_logf(d);
    float num = t * (lc * (ld - lt + 1.0f) - ld * lt + ld + lt * lt - 2.0f * lt + 2.0f);
    return num / ((lb - lc) * (lb - ld));
}

/* x_t = cx sample + sum_k cm[k] m[k] for an update of the given order. */
static void update_coefs(const deis *s, int32_t index, int order, double *cx, double *cm) {
    const double *sig = s->ms.sigmas;
    float at, st_, a[MS_MAX_ORDER], sg[MS_MAX_ORDER], rho[MS_MAX_ORDER];
    ms_alpha_sigma((float)sig[index + 1], &at, &st_);
    for (int k = 0; k < order; k++) {
        ms_alpha_sigma((float)sig[index - k], &a[k], &sg[k]);
        rho[k] = sg[k] / a[k];
    }
    *cx = at / a[0];
    if (order == 1) {
        float h = ms_lambda((float)sig[index + 1]) - ms_lambda((float)sig[index]);
        cm[0] = -(double)(st_ * (expf(h) - 1.0f));
        return;
    }
    float rt = st_ / at;
    if (order == 2) {
        cm[0] = (double)at * (ind2(rt, rho[0], rho[1]) - ind2(rho[0], rho[0], rho[1]));
        cm[1] = (double)at * (ind2(rt, rho[1], rho[0]) - ind2(rho[0], rho[1], rho[0]));
        return;
    }
    cm[0] = (double)at * (ind3(rt, rho[0], rho[1], rho[2]) - ind3(rho[0], rho[0], rho[1], rho[2]));
    cm[1] = (double)at * (ind3(rt, rho[1], rho[2], rho[0]) - ind3(rho[0], rho[1], rho[2], rho[0]));
    cm[2] = (double)at * (ind3(rt, rho[2], rho[0], rho[1]) - ind3(rho[0], rho[2], rho[0], rho[1]));
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    deis *s = p;
    ms_sched *ms = &s->ms;
    const lh_host_api *h = ms->b.host;
    lh_status st = ms_begin_step(ms, index, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(&ms->b, &s->x0, sample, err, err_size);
    if (st != LH_OK) return st;
    int32_t n = ms->n;
    int final = index == n - 1 && ms->lower_order_final && n < 15;
    int second = index == n - 2 && ms->lower_order_final && n < 15;

    /* the noise DEIS integrates: eps = (sample - alpha x0) / sigma */
    float sigma = (float)ms->sigmas[index], a, sg;
    ms_alpha_sigma(sigma, &a, &sg);
    st = ms_to_x0(ms, s->x0, model_output, sample, sigma, err, err_size);
    if (st != LH_OK) return st;
    st = h->tensor_axpby(ms->m[ms->order], 1.0 / sg, sample, -(double)a / sg, s->x0);
    if (st != LH_OK) return sched_host_fail(&ms->b, st, "predicted noise", err, err_size);
    ms_push(ms);

    int order = ms->order == 1 || ms->lower_order_nums < 1 || final ? 1
                : ms->order == 2 || ms->lower_order_nums < 2 || second ? 2
                                                                     : 3;
    const lh_tensor *xs[MS_MAX_ORDER + 1] = {sample};
    double coef[MS_MAX_ORDER + 1];
    update_coefs(s, index, order, &coef[0], &coef[1]);
    for (int k = 0; k < order; k++) xs[k + 1] = ms->m[k];
    st = h->tensor_lincomb(prev, order + 1, coef, xs);
    if (st != LH_OK) return sched_host_fail(&ms->b, st, "step", err, err_size);
    ms_end_step(ms, index);
    return LH_OK;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "deis", "1.0.0",
                           "DEIS log-rho multistep (diffusers DEISMultistepScheduler)", ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = ms_set_begin_index,
    .timesteps = ms_timesteps,
    .sigmas = ms_sigmas,
    .init_noise_sigma = sched_unit_init_noise_sigma,
    .scale_model_input = sched_identity_scale_model_input,
    .step = step,
    .add_noise = ms_add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
