/* DPM-Solver multistep scheduler plugin (diffusers DPMSolverMultistepScheduler):
 * DPM-Solver++ and DPM-Solver, ODE and SDE forms, orders 1 to 3, midpoint or
 * Heun second-order terms. SDE forms take one noise draw per step. */
#include <math.h>
#include <string.h>

#include "lib/sched_multistep.h"

typedef enum dpm_algo {
    DPM_PLUSPLUS = 0,  /* data prediction (DPM-Solver++) */
    DPM_SOLVER,        /* noise prediction */
    DPM_SDE_PLUSPLUS,
    DPM_SDE_SOLVER,
    DPM_ALGO_COUNT
} dpm_algo;

typedef struct dpm {
    ms_sched ms;
    dpm_algo algo;
    int heun;             /* solver_type heun (else midpoint) */
    int euler_at_final;
    lh_tensor *noise;     /* scratch */
} dpm;

static const char *const KEYS[] = {SCHED_BASE_KEYS, MS_KEYS, "algorithm_type", "euler_at_final",
                                   "use_lu_lambdas", "final_sigmas_type", "lambda_min_clipped",
                                   "variance_type", NULL};
static const char *const ALIASES[] = {"DPM++ 2M", NULL};
/* "deis" and the other classes' solver types are accepted as diffusers
 * does: they map to dpmsolver++ and midpoint. */
static const char *const ALGORITHMS[] = {"dpmsolver++", "dpmsolver", "sde-dpmsolver++",
                                         "sde-dpmsolver", "deis", NULL};
static const char *const SOLVER_TYPES[] = {"midpoint", "heun", "logrho", "bh1", "bh2", NULL};
static const char *const FINAL_SIGMAS[] = {"zero", "sigma_min", NULL};

static void destroy(void *p) {
    dpm *s = p;
    if (!s) return;
    const lh_host_api *h = s->ms.b.host;
    h->tensor_free(s->noise);
    ms_free(&s->ms);
    h->free(s);
}

static int is_sde(const dpm *s) { return s->algo == DPM_SDE_PLUSPLUS || s->algo == DPM_SDE_SOLVER; }

/* Training timesteps left after clipping lambda(t) below lambda_min_clipped
 * (float32 comparisons, like diffusers' torch.searchsorted). */
static int64_t unclipped_timesteps(const sched_base *b, double lambda_min_clipped) {
    float clip = (float)lambda_min_clipped;
    int64_t below = 0;
    for (int64_t t = 0; t < b->num_train_timesteps; t++) {
        float a = b->alphas_cumprod[t];
        if (logf(sqrtf(a)) - logf(sqrtf(1.0f - a)) < clip) below++;
    }
    return b->num_train_timesteps - below;
}

static lh_status read_config(dpm *s, const lh_config *cfg, char *err, size_t err_size) {
    ms_sched *ms = &s->ms;
    const lh_host_api *h = ms->b.host;
    int algo, solver, final_type, lu;
    double lambda_min_clipped;
    lh_status st = sched_enum(h, cfg, "dpmsolver_multistep", "algorithm_type", ALGORITHMS, 0,
                              &algo, err, err_size);
    if (st == LH_OK)
        st = sched_enum(h, cfg, "dpmsolver_multistep", "solver_type", SOLVER_TYPES, 0, &solver,
                        err, err_size);
    if (st == LH_OK)
        st = sched_enum(h, cfg, "dpmsolver_multistep", "final_sigmas_type", FINAL_SIGMAS, 0,
                        &final_type, err, err_size);
    if (st == LH_OK)
        st = h->config_bool(cfg, "euler_at_final", 0, &s->euler_at_final, err, err_size);
    if (st == LH_OK) st = h->config_bool(cfg, "use_lu_lambdas", 0, &lu, err, err_size);
    if (st == LH_OK)
        st = h->config_double(cfg, "lambda_min_clipped", -INFINITY, &lambda_min_clipped, err,
                              err_size);
    if (st != LH_OK) return st;
    const char *variance = h->config_string(cfg, "variance_type");
    if (variance)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "dpmsolver_multistep: variance_type '%s' is not supported (models "
                          "with learned variance)",
                          variance);
    s->algo = algo == 4 ? DPM_PLUSPLUS : (dpm_algo)algo;
    s->heun = solver == 1;
    if (final_type == 0 && (s->algo == DPM_SOLVER || s->algo == DPM_SDE_SOLVER))
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "dpmsolver_multistep: final_sigmas_type 'zero' is not supported for "
                          "algorithm_type '%s'; use 'sigma_min'",
                          ALGORITHMS[algo]);
    if (s->algo == DPM_SDE_SOLVER && ms->order == 3)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "dpmsolver_multistep: algorithm_type 'sde-dpmsolver' has no third-order "
                          "solver; use solver_order 1 or 2");
    ms->final_sigma = final_type == 0 ? MS_FINAL_ZERO : MS_FINAL_TRAIN_MIN;
    if (lu && ms->kind != MS_SIGMAS_KARRAS) ms->kind = MS_SIGMAS_LU;
    const char *schedule = h->config_string(cfg, "beta_schedule");
    ms->round_timesteps = !(schedule && !strcmp(schedule, "squaredcos_cap_v2"));
    ms->last_timestep = unclipped_timesteps(&ms->b, lambda_min_clipped);
    if (ms->last_timestep < 2)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "dpmsolver_multistep: lambda_min_clipped %g leaves %lld training "
                          "timesteps (need 2)",
                          lambda_min_clipped, (long long)ms->last_timestep);
    return LH_OK;
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    dpm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    lh_status st = ms_init(&s->ms, host, "dpmsolver_multistep", cfg, 1, err, err_size);
    if (st == LH_OK) st = read_config(s, cfg, err, err_size);
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    dpm *s = p;
    return ms_schedule(&s->ms, n, err, err_size);
}

/* ---- Step ---- */

/* The update as coefficients of sample, m[0..order-1] and noise, from
 * diffusers' float32 formulas: x_t = cs*sample + c0*D0 + c1*D1 + c2*D2 +
 * cz*noise with D0 = m0, D1 and D2 the scaled differences of the history. */
static void update_coefs(const dpm *s, int32_t index, int order, double *cs, double *cm,
                         double *cz) {
    const double *sig = s->ms.sigmas;
    float at, st_, as0, ss0;
    ms_alpha_sigma((float)sig[index + 1], &at, &st_);
    ms_alpha_sigma((float)sig[index], &as0, &ss0);
    float h = ms_lambda((float)sig[index + 1]) - ms_lambda((float)sig[index]);
    float em = expf(-h), ep = expf(h), e2 = expf(-2.0f * h);
    float c0, c1 = 0.0f, c2 = 0.0f, cn = 0.0f, cx;
    switch (s->algo) {
    case DPM_PLUSPLUS:
        cx = st_ / ss0;
        c0 = -(at * (em - 1.0f));
        if (order == 2 && !s->heun) c1 = -(0.5f * (at * (em - 1.0f)));
        else c1 = at * ((em - 1.0f) / h + 1.0f);
        c2 = -(at * ((em - 1.0f + h) / (h * h) - 0.5f));
        break;
    case DPM_SOLVER:
        cx = at / as0;
        c0 = -(st_ * (ep - 1.0f));
        if (order == 2 && !s->heun) c1 = -(0.5f * (st_ * (ep - 1.0f)));
        else c1 = -(st_ * ((ep - 1.0f) / h - 1.0f));
        c2 = -(st_ * ((ep - 1.0f - h) / (h * h) - 0.5f));
        break;
    case DPM_SDE_PLUSPLUS:
        cx = st_ / ss0 * em;
        c0 = at * (1.0f - e2);
        if (order == 2 && !s->heun) c1 = 0.5f * (at * (1.0f - e2));
        else c1 = at * ((1.0f - e2) / (-2.0f * h) + 1.0f);
        c2 = at * ((1.0f - e2 - 2.0f * h) / ((2.0f * h) * (2.0f * h)) - 0.5f);
        cn = st_ * sqrtf(1.0f - e2);
        break;
    default: /* sde-dpmsolver */
        cx = at / as0;
        c0 = -(2.0f * (st_ * (ep - 1.0f)));
        if (!s->heun) c1 = -(st_ * (ep - 1.0f));
        else c1 = -(2.0f * (st_ * ((ep - 1.0f) / h - 1.0f)));
        cn = st_ * sqrtf(expf(2.0f * h) - 1.0f);
        break;
    }
    *cs = cx;
    *cz = cn;
    cm[0] = c0;
    if (order == 1) return;
    /* D1 = (m0 - m1) / r0 (order 2); order 3 extrapolates with m2 */
    float h0 = ms_lambda((float)sig[index]) - ms_lambda((float)sig[index - 1]);
    float r0 = h0 / h, a0 = 1.0f / r0;
    if (order == 2) {
        cm[0] += (double)c1 * a0;
        cm[1] = -(double)c1 * a0;
        return;
    }
    float h1 = ms_lambda((float)sig[index - 1]) - ms_lambda((float)sig[index - 2]);
    float r1 = h1 / h, a1 = 1.0f / r1;
    float q = r0 / (r0 + r1), pr = 1.0f / (r0 + r1);
    /* D1 = (1 + q) D1_0 - q D1_1, D2 = pr (D1_0 - D1_1) with
     * D1_0 = a0 (m0 - m1), D1_1 = a1 (m1 - m2) */
    double u = (double)c1 * (1.0 + q) + (double)c2 * pr, w = (double)c1 * q + (double)c2 * pr;
    cm[0] += u * a0;
    cm[1] = -u * a0 - w * a1;
    cm[2] = w * a1;
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    dpm *s = p;
    ms_sched *ms = &s->ms;
    const lh_host_api *h = ms->b.host;
    lh_status st = ms_begin_step(ms, index, sample, err, err_size);
    if (st != LH_OK) return st;
    int32_t n = ms->n;
    int final = index == n - 1 && (s->euler_at_final || (ms->lower_order_final && n < 15) ||
                                   ms->final_sigma == MS_FINAL_ZERO);
    int second = index == n - 2 && ms->lower_order_final && n < 15;
    float sigma = (float)ms->sigmas[index];
    if (s->algo == DPM_PLUSPLUS || s->algo == DPM_SDE_PLUSPLUS)
        st = ms_to_x0(ms, ms->m[ms->order], model_output, sample, sigma, err, err_size);
    else
        st = ms_to_eps(ms, ms->m[ms->order], model_output, sample, sigma, err, err_size);
    if (st != LH_OK) return st;
    ms_push(ms);

    const lh_tensor *xs[MS_MAX_ORDER + 2] = {sample};
    double coef[MS_MAX_ORDER + 2], cz;
    int order = ms->order == 1 || ms->lower_order_nums < 1 || final ? 1
                : ms->order == 2 || ms->lower_order_nums < 2 || second ? 2
                                                                     : 3;
    update_coefs(s, index, order, &coef[0], &coef[1], &cz);
    for (int k = 0; k < order; k++) xs[k + 1] = ms->m[k];
    int terms = order + 1;
    if (is_sde(s)) {
        st = sched_draw_noise(&ms->b, &s->noise, sample, rng, "the SDE solver", err, err_size);
        if (st != LH_OK) return st;
        xs[terms] = s->noise;
        coef[terms++] = cz;
    }
    st = h->tensor_lincomb(prev, terms, coef, xs);
    if (st != LH_OK) return sched_host_fail(&ms->b, st, "step", err, err_size);
    ms_end_step(ms, index);
    return LH_OK;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "dpmsolver_multistep",
                           "1.0.0",
                           "DPM-Solver(++) multistep (diffusers DPMSolverMultistepScheduler), "
                           "ODE and SDE forms",
                           ALIASES),
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
