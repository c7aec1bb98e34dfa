/* UniPC scheduler plugin (diffusers UniPCMultistepScheduler): a multistep
 * predictor (UniP) with a corrector (UniC) that reuses the model output of
 * the next step, B(h) variants bh1 and bh2, orders 1 to 3. */
#include <math.h>

#include "lib/sched_multistep.h"

typedef struct unipc {
    ms_sched ms;
    int bh2;                          /* solver_type bh2 (else bh1) */
    int predict_x0;
    unsigned char no_corrector[MS_MAX_STEPS]; /* disable_corrector, by step index */
    int this_order;                   /* order of the last predictor */
    int have_last;
    lh_tensor *last;                  /* sample the last predictor started from */
    lh_tensor *corrected;             /* scratch */
} unipc;

static const char *const KEYS[] = {SCHED_BASE_KEYS, MS_KEYS, "predict_x0", "disable_corrector",
                                   "final_sigmas_type", "sigma_min", "sigma_max", NULL};
static const char *const ALIASES[] = {"UniPC", NULL};
/* The other classes' solver types map to bh2, as in diffusers. */
static const char *const SOLVER_TYPES[] = {"bh1", "bh2", "midpoint", "heun", "logrho", NULL};
static const char *const FINAL_SIGMAS[] = {"zero", "sigma_min", NULL};

static void destroy(void *p) {
    unipc *s = p;
    if (!s) return;
    const lh_host_api *h = s->ms.b.host;
    h->tensor_free(s->last);
    h->tensor_free(s->corrected);
    ms_free(&s->ms);
    h->free(s);
}

static lh_status read_config(unipc *s, const lh_config *cfg, char *err, size_t err_size) {
    ms_sched *ms = &s->ms;
    const lh_host_api *h = ms->b.host;
    int solver, final_type;
    double off[MS_MAX_STEPS];
    size_t n_off = 0;
    lh_status st = sched_enum(h, cfg, "unipc", "solver_type", SOLVER_TYPES, 1, &solver, err,
                              err_size);
    if (st == LH_OK)
        st = sched_enum(h, cfg, "unipc", "final_sigmas_type", FINAL_SIGMAS, 0, &final_type, err,
                        err_size);
    if (st == LH_OK) st = h->config_bool(cfg, "predict_x0", 1, &s->predict_x0, err, err_size);
    if (st == LH_OK)
        st = h->config_doubles(cfg, "disable_corrector", off, MS_MAX_STEPS, &n_off, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "sigma_min", NAN, &ms->sigma_min, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "sigma_max", NAN, &ms->sigma_max, err, err_size);
    if (st != LH_OK) return st;
    s->bh2 = solver != 0;
    /* step indices; other values can never match a step */
    for (size_t i = 0; i < n_off; i++)
        if (off[i] >= 0 && off[i] < MS_MAX_STEPS && off[i] == floor(off[i]))
            s->no_corrector[(int)off[i]] = 1;
    if (!(isnan(ms->sigma_min) || ms->sigma_min > 0) ||
        !(isnan(ms->sigma_max) || ms->sigma_max > 0))
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "unipc: sigma_min and sigma_max must be > 0, got %g and %g",
                          ms->sigma_min, ms->sigma_max);
    if (final_type == 0 && !ms->lower_order_final)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "unipc: lower_order_final = false needs final_sigmas_type 'sigma_min' "
                          "(with 'zero' the last multistep update divides by a zero step ratio)");
    if (final_type == 0 && !s->predict_x0)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "unipc: predict_x0 = false needs final_sigmas_type 'sigma_min' (the "
                          "noise-prediction update is undefined at sigma 0)");
    ms->final_sigma = final_type == 0                ? MS_FINAL_ZERO
                      : ms->kind == MS_SIGMAS_TRAIN ? MS_FINAL_TRAIN_MIN
                                                     : MS_FINAL_REPEAT;
    ms->round_timesteps = 1;
    return LH_OK;
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    unipc *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    lh_status st = ms_init(&s->ms, host, "unipc", cfg, 1, err, err_size);
    if (st == LH_OK) st = read_config(s, cfg, err, err_size);
    return sched_finish_create(out, s, st, destroy);
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    unipc *s = p;
    s->have_last = 0;
    return ms_schedule(&s->ms, n, err, err_size);
}

/* ---- Step ---- */

/* x = a \ b for a small system, by Gaussian elimination with partial pivoting. */
static void solve(int n, double a[MS_MAX_ORDER][MS_MAX_ORDER], double *b, double *x) {
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r][c]) > fabs(a[piv][c])) piv = r;
        for (int k = 0; k < n; k++) {
            double t = a[c][k];
            a[c][k] = a[piv][k];
            a[piv][k] = t;
        }
        double t = b[c];
        b[c] = b[piv];
        b[piv] = t;
        for (int r = c + 1; r < n; r++) {
            double f = a[r][c] / a[c][c];
            for (int k = c; k < n; k++) a[r][k] -= f * a[c][k];
            b[r] -= f * b[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double acc = b[r];
        for (int k = r + 1; k < n; k++) acc -= a[r][k] * x[k];
        x[r] = acc / a[r][r];
    }
}

/* One UniP (predictor) or UniC (corrector) update of order p from the sample
 * x at sigma index i0 to sigma index i0 + 1, as coefficients:
 *   x_t = cx x + sum_k cm[k] m[k] + ct model_t
 * diffusers: x_t = A x - c hphi_1 m0 - c B(h) (sum_k rho_k D_k [+ rho_p (model_t - m0)])
 * with D_k = (m[k] - m0) / r_k, r_k = (lambda(i0 - k) - lambda(i0)) / h, and
 * (A, c) = (sigma_t / sigma_s0, alpha_t) for x0 prediction, else
 * (alpha_t / alpha_s0, sigma_t). The scalars are float32 like diffusers'. */
static void bh_coefs(const unipc *s, int32_t i0, int p, int corrector, double *cx, double *cm,
                     double *ct) {
    const double *sig = s->ms.sigmas;
    float at, st_, as0, ss0;
    ms_alpha_sigma((float)sig[i0 + 1], &at, &st_);
    ms_alpha_sigma((float)sig[i0], &as0, &ss0);
    float l0 = ms_lambda((float)sig[i0]);
    float h = ms_lambda((float)sig[i0 + 1]) - l0;
    float rk[MS_MAX_ORDER];
    for (int k = 1; k < p; k++) rk[k - 1] = (ms_lambda((float)sig[i0 - k]) - l0) / h;
    rk[p - 1] = 1.0f;

    float hh = s->predict_x0 ? -h : h;
    float hphi1 = expm1f(hh), hphik = hphi1 / hh - 1.0f;
    float bh = s->bh2 ? expm1f(hh) : hh;
    double r[MS_MAX_ORDER][MS_MAX_ORDER], b[MS_MAX_ORDER];
    float pw[MS_MAX_ORDER] = {1.0f, 1.0f, 1.0f}; /* rk^j */
    int fact = 1;
    for (int j = 0; j < p; j++) {
        for (int k = 0; k < p; k++) {
            r[j][k] = pw[k];
            pw[k] *= rk[k];
        }
        b[j] = hphik * (float)fact / bh;
        fact *= j + 2;
        hphik = hphik / hh - (float)(1.0 / fact);
    }
    /* rho for D_1..D_{p-1} (and model_t for the corrector) */
    double rho[MS_MAX_ORDER];
    int n_rho = corrector ? p : p - 1;
    if (n_rho == 1) rho[0] = 0.5;
    else if (n_rho > 1) solve(n_rho, r, b, rho);

    float a = s->predict_x0 ? st_ / ss0 : at / as0, c = s->predict_x0 ? at : st_;
    float cb = c * bh;
    *cx = a;
    cm[0] = -(double)(c * hphi1);
    for (int k = 1; k < p; k++) {
        double d = (double)cb * rho[k - 1] / rk[k - 1];
        cm[k] = -d;
        cm[0] += d;
    }
    *ct = 0.0;
    if (corrector) {
        *ct = -(double)cb * rho[p - 1];
        cm[0] -= *ct;
    }
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    unipc *s = p;
    ms_sched *ms = &s->ms;
    const lh_host_api *h = ms->b.host;
    lh_status st = ms_begin_step(ms, index, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(&ms->b, &s->last, sample, err, err_size);
    if (st == LH_OK) st = sched_scratch(&ms->b, &s->corrected, sample, err, err_size);
    if (st != LH_OK) return st;
    lh_tensor *conv = ms->m[ms->order];
    float sigma = (float)ms->sigmas[index];
    st = s->predict_x0 ? ms_to_x0(ms, conv, model_output, sample, sigma, err, err_size)
                       : ms_to_eps(ms, conv, model_output, sample, sigma, err, err_size);
    if (st != LH_OK) return st;

    const lh_tensor *xs[MS_MAX_ORDER + 2];
    double coef[MS_MAX_ORDER + 2], ct;
    const lh_tensor *x = sample;
    if (index > 0 && !s->no_corrector[index - 1] && s->have_last) {
        int po = s->this_order;
        bh_coefs(s, index - 1, po, 1, &coef[0], &coef[1], &ct);
        xs[0] = s->last;
        for (int k = 0; k < po; k++) xs[k + 1] = ms->m[k];
        xs[po + 1] = conv;
        coef[po + 1] = ct;
        st = h->tensor_lincomb(s->corrected, po + 2, coef, xs);
        if (st != LH_OK) return sched_host_fail(&ms->b, st, "corrector", err, err_size);
        x = s->corrected;
    }
    ms_push(ms);

    int order = ms->order;
    if (ms->lower_order_final && ms->n - index < order) order = ms->n - index;
    if (order > ms->lower_order_nums + 1) order = ms->lower_order_nums + 1;
    s->this_order = order;
    st = h->tensor_copy(s->last, x);
    if (st != LH_OK) return sched_host_fail(&ms->b, st, "step", err, err_size);
    s->have_last = 1;
    bh_coefs(s, index, order, 0, &coef[0], &coef[1], &ct);
    xs[0] = s->last;
    for (int k = 0; k < order; k++) xs[k + 1] = ms->m[k];
    st = h->tensor_lincomb(prev, order + 1, coef, xs);
    if (st != LH_OK) return sched_host_fail(&ms->b, st, "predictor", err, err_size);
    ms_end_step(ms, index);
    return LH_OK;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "unipc", "1.0.0",
                           "UniPC predictor-corrector (diffusers UniPCMultistepScheduler)",
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
