/* Shared scheduler-plugin code: the common diffusers config keys and
 * checks, the beta schedules, computed with the same float32/double mix as
 * diffusers (torch.linspace in float32, cumprod accumulated in double),
 * timestep spacing and the sigma schedules. */
#include "sched_common.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_TRAIN_TIMESTEPS 100000

lh_status sched_fail(char *err, size_t err_size, lh_status code, const char *fmt, ...) {
    if (err && err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

lh_status sched_host_fail(const sched_base *b, lh_status st, const char *what, char *err,
                          size_t err_size) {
    return sched_fail(err, err_size, st, "%s: %s: %s", b->id, what, b->host->last_error());
}

lh_status sched_enum(const lh_host_api *host, const lh_config *cfg, const char *id,
                     const char *key, const char *const *choices, int fallback, int *out,
                     char *err, size_t err_size) {
    const char *v = host->config_string(cfg, key);
    *out = fallback;
    if (!v) return LH_OK;
    char allowed[256] = "";
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(v, choices[i])) {
            *out = i;
            return LH_OK;
        }
        size_t len = strlen(allowed);
        snprintf(allowed + len, sizeof allowed - len, "%s%s", i ? ", " : "", choices[i]);
    }
    return sched_fail(err, err_size, LH_ERR_CONFIG, "%s: %s: unknown value '%s' (one of: %s)", id,
                      key, v, allowed);
}

lh_status sched_check_steps(const sched_base *b, int32_t n, int64_t limit, char *err,
                            size_t err_size) {
    if (n < 1)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: steps must be at least 1, got %d",
                          b->id, n);
    if (n > limit)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: %d steps exceed what the schedule allows (%lld; "
                          "num_train_timesteps = %lld)",
                          b->id, n, (long long)limit, (long long)b->num_train_timesteps);
    return LH_OK;
}

void sched_linspace(double *out, double start, double stop, int32_t n) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    double step = (stop - start) / (n - 1);
    for (int32_t i = 0; i < n; i++) out[i] = start + i * step;
    out[n - 1] = stop;
}

lh_status sched_scratch(const sched_base *b, lh_tensor **t, const lh_tensor *like, char *err,
                        size_t err_size) {
    if (*t && b->host->tensor_numel(*t) == b->host->tensor_numel(like)) return LH_OK;
    if (*t) b->host->tensor_free(*t);
    *t = b->host->tensor_new_like(like);
    return *t ? LH_OK : sched_host_fail(b, LH_ERR_NOMEM, "scratch tensor", err, err_size);
}

lh_status sched_keep(const sched_base *b, lh_tensor **slot, const lh_tensor *x, char *err,
                     size_t err_size) {
    lh_status st = sched_scratch(b, slot, x, err, err_size);
    if (st == LH_OK) st = b->host->tensor_copy(*slot, x);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

lh_status sched_draw_noise(const sched_base *b, lh_tensor **noise, const lh_tensor *like,
                           lh_rng *rng, const char *what, char *err, size_t err_size) {
    if (!rng)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: %s needs a random generator",
                          b->id, what);
    lh_status st = sched_scratch(b, noise, like, err, err_size);
    if (st != LH_OK) return st;
    st = b->host->tensor_randn(*noise, rng);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

/* ---- Plugin create ---- */

lh_status sched_read_sigma_kind(const sched_base *b, const lh_config *cfg, int *karras,
                                int *exponential, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st = h->config_bool(cfg, "use_karras_sigmas", 0, karras, err, err_size);
    if (st == LH_OK)
        st = h->config_bool(cfg, "use_exponential_sigmas", 0, exponential, err, err_size);
    if (st == LH_OK && *karras && *exponential)
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "%s: use_karras_sigmas and use_exponential_sigmas exclude each other",
                        b->id);
    return st;
}

lh_status sched_read_zero_snr(const sched_base *b, const lh_config *cfg, int allowed, int *on,
                              char *err, size_t err_size) {
    lh_status st = b->host->config_bool(cfg, "rescale_betas_zero_snr", 0, on, err, err_size);
    if (st == LH_OK && *on && !allowed)
        st = sched_fail(err, err_size, LH_ERR_CONFIG,
                        "%s: rescale_betas_zero_snr is not an option of this diffusers scheduler",
                        b->id);
    return st;
}

lh_status sched_refuse_sample_prediction(const sched_base *b, char *err, size_t err_size) {
    if (b->prediction_type != SCHED_PRED_SAMPLE) return LH_OK;
    return sched_fail(err, err_size, LH_ERR_CONFIG,
                      "%s: prediction_type 'sample' is not supported (one of: epsilon, "
                      "v_prediction)",
                      b->id);
}

lh_status sched_finish_create(void **out, void *state, lh_status st, void (*destroy)(void *)) {
    if (st != LH_OK) {
        destroy(state);
        return st;
    }
    *out = state;
    return LH_OK;
}

/* ---- Steps ---- */

lh_status sched_check_index(const sched_base *b, const char *what, int32_t index, int32_t count,
                            char *err, size_t err_size) {
    if (index < 0 || index >= count)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: %s %d outside 0..%d", b->id, what,
                          index, count - 1);
    return LH_OK;
}

double sched_unit_init_noise_sigma(void *state) { return 1.0; }

lh_status sched_identity_scale_model_input(void *state, lh_tensor *out, const lh_tensor *sample,
                                           int32_t index, char *err, size_t err_size) {
    const sched_base *b = state;
    lh_status st = b->host->tensor_copy(out, sample);
    return st == LH_OK ? st : sched_host_fail(b, st, "scale_model_input", err, err_size);
}

/* ---- Beta schedules ---- */

void sched_linspace_f32(float *out, float start, float end, int64_t n) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int64_t half = n / 2;
    for (int64_t i = 0; i < n; i++)
        out[i] = i < half ? (float)((double)start + (double)step * (double)i)
                          : (float)((double)end - (double)step * (double)(n - i - 1));
}

static double alpha_bar_cosine(double t) {
    double c = cos((t + 0.008) / 1.008 * M_PI / 2.0);
    return c * c;
}

/* Zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 like torch. */
static void rescale_zero_terminal_snr(float *betas, int64_t n) {
    double acc = 1.0;
    float *sq = betas; /* reuse: betas -> sqrt(alpha_bar) -> betas */
    for (int64_t i = 0; i < n; i++) {
        acc *= (double)(1.0f - betas[i]);
        sq[i] = sqrtf((float)acc);
    }
    float s0 = sq[0], st = sq[n - 1];
    float scale = s0 / (s0 - st);
    float prev_bar = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = (sq[i] - st) * scale;
        float bar = v * v;
        float alpha = i == 0 ? bar : bar / prev_bar;
        prev_bar = bar;
        betas[i] = 1.0f - alpha;
    }
}

static const char *const BETA_SCHEDULES[] = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                             NULL};
static const char *const PREDICTIONS[] = {"epsilon", "v_prediction", "sample", NULL};
static const char *const SPACINGS[] = {"leading", "trailing", "linspace", NULL};

lh_status sched_base_init(sched_base *b, const lh_host_api *host, const char *id,
                          const lh_config *cfg, const sched_defaults *d, char *err,
                          size_t err_size) {
    memset(b, 0, sizeof *b);
    b->host = host;
    b->id = id;
    double beta_start, beta_end;
    int schedule, pred, spacing, rescale;
    lh_status st = host->config_int(cfg, "num_train_timesteps", 1000, &b->num_train_timesteps,
                                    err, err_size);
    if (st == LH_OK) st = host->config_double(cfg, "beta_start", d->beta_start, &beta_start, err, err_size);
    if (st == LH_OK) st = host->config_double(cfg, "beta_end", d->beta_end, &beta_end, err, err_size);
    int def_schedule = 0;
    for (int i = 0; BETA_SCHEDULES[i]; i++)
        if (!strcmp(BETA_SCHEDULES[i], d->beta_schedule)) def_schedule = i;
    if (st == LH_OK)
        st = sched_enum(host, cfg, id, "beta_schedule", BETA_SCHEDULES, def_schedule, &schedule,
                        err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, id, "prediction_type", PREDICTIONS, SCHED_PRED_EPSILON, &pred,
                        err, err_size);
    if (st == LH_OK)
        st = sched_enum(host, cfg, id, "timestep_spacing", SPACINGS, (int)d->spacing, &spacing,
                        err, err_size);
    if (st == LH_OK) st = host->config_int(cfg, "steps_offset", 0, &b->steps_offset, err, err_size);
    if (st == LH_OK) st = host->config_bool(cfg, "rescale_betas_zero_snr", 0, &rescale, err, err_size);
    if (st != LH_OK) return st;
    b->prediction_type = (sched_pred)pred;
    b->spacing = (sched_spacing)spacing;
    if (b->num_train_timesteps < 2 || b->num_train_timesteps > MAX_TRAIN_TIMESTEPS)
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "%s: num_train_timesteps must be in 2..%d, got %lld", id,
                          MAX_TRAIN_TIMESTEPS, (long long)b->num_train_timesteps);
    if (b->steps_offset < 0 || b->steps_offset >= b->num_train_timesteps)
        return sched_fail(err, err_size, LH_ERR_CONFIG, "%s: steps_offset %lld outside 0..%lld",
                          id, (long long)b->steps_offset, (long long)b->num_train_timesteps - 1);

    int64_t n = b->num_train_timesteps;
    b->betas = host->calloc((size_t)n, sizeof *b->betas);
    b->alphas_cumprod = host->calloc((size_t)n, sizeof *b->alphas_cumprod);
    if (!b->betas || !b->alphas_cumprod) {
        sched_base_free(b);
        return sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", id);
    }
    size_t n_trained = 0;
    st = host->config_doubles(cfg, "trained_betas", NULL, 0, &n_trained, err, err_size);
    if (n_trained > 0) {
        if ((int64_t)n_trained != n) {
            sched_base_free(b);
            return sched_fail(err, err_size, LH_ERR_CONFIG,
                              "%s: trained_betas has %zu values, num_train_timesteps is %lld", id,
                              n_trained, (long long)n);
        }
        double *tb = host->calloc(n_trained, sizeof *tb);
        if (!tb) {
            sched_base_free(b);
            return sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", id);
        }
        st = host->config_doubles(cfg, "trained_betas", tb, n_trained, &n_trained, err, err_size);
        for (size_t i = 0; st == LH_OK && i < n_trained; i++) {
            if (!(tb[i] > 0.0 && tb[i] < 1.0))
                st = sched_fail(err, err_size, LH_ERR_CONFIG,
                                "%s: trained_betas[%zu] = %g is outside (0, 1)", id, i, tb[i]);
            b->betas[i] = (float)tb[i];
        }
        host->free(tb);
    } else if (st == LH_OK) {
        if (!(beta_start > 0.0 && beta_end < 1.0 && beta_end >= beta_start))
            st = sched_fail(err, err_size, LH_ERR_CONFIG,
                            "%s: need 0 < beta_start <= beta_end < 1, got beta_start = %g, "
                            "beta_end = %g",
                            id, beta_start, beta_end);
        else if (schedule == 0)
            sched_linspace_f32(b->betas, (float)beta_start, (float)beta_end, n);
        else if (schedule == 1) {
            sched_linspace_f32(b->betas, (float)sqrt(beta_start), (float)sqrt(beta_end), n);
            for (int64_t i = 0; i < n; i++) b->betas[i] *= b->betas[i];
        } else {
            for (int64_t i = 0; i < n; i++) {
                double v = 1.0 - alpha_bar_cosine((double)(i + 1) / n) / alpha_bar_cosine((double)i / n);
                b->betas[i] = (float)(v < 0.999 ? v : 0.999);
            }
        }
    }
    if (st != LH_OK) {
        sched_base_free(b);
        return st;
    }
    if (rescale) {
        rescale_zero_terminal_snr(b->betas, n);
        /* 0/0 where sqrt(alphas_cumprod) stops falling before the end
         * (betas that round to 0 in float32, or a product that underflows) */
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(b->betas[i])) {
                sched_base_free(b);
                return sched_fail(err, err_size, LH_ERR_CONFIG,
                                  "%s: rescale_betas_zero_snr: this beta schedule cannot be "
                                  "rescaled (float32 alphas_cumprod reaches its last value "
                                  "before the last timestep)", id);
            }
    }
    double acc = 1.0;
    for (int64_t i = 0; i < n; i++) {
        acc *= (double)(1.0f - b->betas[i]);
        b->alphas_cumprod[i] = (float)acc;
    }
    return LH_OK;
}

void sched_base_free(sched_base *b) {
    if (!b->host) return;
    b->host->free(b->betas);
    b->host->free(b->alphas_cumprod);
    b->betas = b->alphas_cumprod = NULL;
}

/* ---- Timesteps ---- */

void sched_spaced_timesteps(const sched_base *b, double *out, int32_t n, int integer) {
    int64_t train = b->num_train_timesteps;
    if (b->spacing == SCHED_SPACING_LINSPACE) {
        /* np.linspace(0, train - 1, n)[::-1], rounded */
        sched_linspace(out, 0.0, (double)(train - 1), n);
        for (int32_t i = 0; i < n / 2; i++) {
            double tmp = out[i];
            out[i] = out[n - 1 - i];
            out[n - 1 - i] = tmp;
        }
        for (int32_t i = 0; i < n; i++)
            out[i] = integer ? nearbyint(out[i]) : (double)(float)out[i];
    } else if (b->spacing == SCHED_SPACING_LEADING) {
        int64_t ratio = train / n;
        for (int32_t i = 0; i < n; i++)
            out[i] = (double)((int64_t)(n - 1 - i) * ratio + b->steps_offset);
    } else {
        double ratio = (double)train / n;
        for (int32_t i = 0; i < n; i++) out[i] = nearbyint((double)train - i * ratio) - 1.0;
    }
}

int32_t sched_find_timestep(const double *ts, int32_t n, double timestep, double rel_tol) {
    int32_t found = -1, count = 0;
    double tol = rel_tol * fmax(1.0, fabs(timestep));
    for (int32_t i = 0; i < n && count < 2; i++)
        if (fabs(ts[i] - timestep) <= tol) {
            found = i;
            count++;
        }
    return found;
}

/* ---- Sigma schedules ---- */

void sched_train_sigmas(const sched_base *b, double *out) {
    for (int64_t i = 0; i < b->num_train_timesteps; i++) {
        float a = b->alphas_cumprod[i];
        float r = (1.0f - a) / a;
        out[i] = (double)sqrtf(r);
    }
}

double sched_interp(double x, const double *fp, int64_t n) {
    if (x <= 0.0) return fp[0];
    if (x >= (double)(n - 1)) return fp[n - 1];
    int64_t lo = (int64_t)floor(x);
    double w = x - (double)lo;
    return fp[lo] + w * (fp[lo + 1] - fp[lo]);
}

double sched_sigma_to_t(double sigma, const double *log_sigmas, int64_t n) {
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    /* low = last index whose log sigma <= ls, clipped to n - 2 */
    int64_t low = 0;
    for (int64_t i = 0; i < n; i++)
        if (ls - log_sigmas[i] >= 0) low = i;
    if (low > n - 2) low = n - 2;
    double lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = (lo - ls) / (lo - hi);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1.0 - w) * (double)low + w * (double)(low + 1);
}

void sched_karras_sigmas(double *out, int32_t n, double sigma_min, double sigma_max) {
    const double rho = 7.0;
    double ramp[1024];
    double min_inv = pow(sigma_min, 1.0 / rho), max_inv = pow(sigma_max, 1.0 / rho);
    for (int32_t i = 0; i < n; i++) {
        double r = n == 1 ? 0.0 : (double)i / (n - 1);
        if (n <= 1024) {
            sched_linspace(ramp, 0.0, 1.0, n);
            r = ramp[i];
        }
        out[i] = pow(max_inv + r * (min_inv - max_inv), rho);
    }
}

void sched_exponential_sigmas(double *out, int32_t n, double sigma_min, double sigma_max) {
    sched_linspace(out, log(sigma_max), log(sigma_min), n);
    for (int32_t i = 0; i < n; i++) out[i] = exp(out[i]);
}

double sched_sigma_init_noise(const sched_base *b, float max_sigma) {
    return b->spacing == SCHED_SPACING_LEADING ? sqrtf(max_sigma * max_sigma + 1.0f) : max_sigma;
}
