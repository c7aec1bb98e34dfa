/* Noise math of diffusers' train_text_to_image_lora.py in torch's float32
 * order: every torch op on a float32 tensor is one float rounding here, and
 * Python scalars are rounded to float where they meet a tensor. But
 * torch's CPU float32 sqrt (MKL VML in the reference build) is not correctly
 * rounded, so values that pass through sqrtf may differ from it by an ulp.
 * Beta schedules follow DDPMScheduler (the same construction as
 * plugins/lib/sched_common.c, which lives plugin-side). */
#include <math.h>
#include <string.h>

#include "error.h"
#include "noise.h"

#define MAX_TRAIN_TIMESTEPS 100000

static const char *const BETA_NAMES[LH_BETA_COUNT] = {"linear", "scaled_linear",
                                                      "squaredcos_cap_v2"};
static const char *const PRED_NAMES[LH_NOISE_PRED_COUNT] = {"epsilon", "v_prediction", "sample"};

void lh_noise_config_default(lh_noise_config *out) {
    out->num_train_timesteps = 1000;
    out->beta_start = 0.0001;
    out->beta_end = 0.02;
    out->beta_schedule = LH_BETA_LINEAR;
    out->prediction_type = LH_NOISE_PRED_EPSILON;
}

lh_status lh_beta_schedule_parse(lh_beta_schedule *out, const char *name, lh_error *err) {
    for (int i = 0; name && i < LH_BETA_COUNT; i++)
        if (!strcmp(name, BETA_NAMES[i])) {
            *out = (lh_beta_schedule)i;
            return LH_OK;
        }
    return lh_error_set(err, LH_ERR_CONFIG,
                        "beta_schedule: unknown value '%s' (expected linear, scaled_linear or "
                        "squaredcos_cap_v2)",
                        name ? name : "(null)");
}

lh_status lh_noise_pred_parse(lh_noise_pred *out, const char *name, lh_error *err) {
    for (int i = 0; name && i < LH_NOISE_PRED_COUNT; i++)
        if (!strcmp(name, PRED_NAMES[i])) {
            *out = (lh_noise_pred)i;
            return LH_OK;
        }
    return lh_error_set(err, LH_ERR_CONFIG,
                        "prediction_type: unknown value '%s' (expected epsilon, v_prediction or "
                        "sample)",
                        name ? name : "(null)");
}

/* ---- Beta schedules ---- */

/* torch.linspace(start, end, n, dtype=float32): a float32 step, each value
 * computed in double from the nearer end and rounded once. */
static void linspace_f32(float *out, float start, float end, int64_t n) {
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

lh_status lh_noise_alphas_cumprod(float *betas, float *alphas_cumprod, const lh_noise_config *cfg,
                                  lh_error *err) {
    if (!betas || !alphas_cumprod || !cfg)
        return lh_error_set(err, LH_ERR_INVALID, "noise schedule: NULL %s",
                            !cfg     ? "config"
                            : !betas ? "betas"
                                     : "alphas_cumprod");
    int64_t n = cfg->num_train_timesteps;
    if (n < 2 || n > MAX_TRAIN_TIMESTEPS)
        return lh_error_set(err, LH_ERR_CONFIG, "num_train_timesteps must be in 2..%d, got %lld",
                            MAX_TRAIN_TIMESTEPS, (long long)n);
    if ((unsigned)cfg->beta_schedule >= LH_BETA_COUNT)
        return lh_error_set(err, LH_ERR_CONFIG, "beta_schedule %d out of range",
                            (int)cfg->beta_schedule);
    double b0 = cfg->beta_start, b1 = cfg->beta_end;
    if (cfg->beta_schedule != LH_BETA_SQUAREDCOS_CAP_V2 && !(b0 > 0.0 && b1 < 1.0 && b1 >= b0))
        return lh_error_set(err, LH_ERR_CONFIG,
                            "need 0 < beta_start <= beta_end < 1, got beta_start = %g, "
                            "beta_end = %g",
                            b0, b1);
    if (cfg->beta_schedule == LH_BETA_LINEAR) {
        linspace_f32(betas, (float)b0, (float)b1, n);
    } else if (cfg->beta_schedule == LH_BETA_SCALED_LINEAR) {
        linspace_f32(betas, (float)sqrt(b0), (float)sqrt(b1), n);
        for (int64_t i = 0; i < n; i++)
            betas[i] *= betas[i];
    } else {
        for (int64_t i = 0; i < n; i++) {
            double v =
                1.0 - alpha_bar_cosine((double)(i + 1) / n) / alpha_bar_cosine((double)i / n);
            betas[i] = (float)(v < 0.999 ? v : 0.999);
        }
    }
    double acc = 1.0;
    for (int64_t i = 0; i < n; i++) {
        acc *= (double)(1.0f - betas[i]);
        alphas_cumprod[i] = (float)acc;
    }
    return LH_OK;
}

/* ---- Forward process ---- */

static lh_status check_batch(const char *what, const void *a, const void *b, const void *c,
                             const int64_t *timesteps, const float *ac, int64_t nb, int64_t n,
                             int64_t t_count, lh_error *err) {
    if (nb < 0 || n < 0 || t_count < 0)
        return lh_error_set(err, LH_ERR_INVALID, "%s: negative size (b %lld, n %lld, T %lld)", what,
                            (long long)nb, (long long)n, (long long)t_count);
    if (nb == 0) return LH_OK;
    if (!a || !b || !c || !timesteps || !ac)
        return lh_error_set(err, LH_ERR_INVALID, "%s: NULL %s", what,
                            !timesteps ? "timesteps"
                            : !ac      ? "alphas_cumprod"
                                       : "buffer");
    for (int64_t i = 0; i < nb; i++)
        if (timesteps[i] < 0 || timesteps[i] >= t_count)
            return lh_error_set(err, LH_ERR_INVALID, "%s: timesteps[%lld] = %lld outside 0..%lld",
                                what, (long long)i, (long long)timesteps[i],
                                (long long)t_count - 1);
    return LH_OK;
}

lh_status lh_noise_add(float *noisy, const float *x0, const float *noise, const int64_t *timesteps,
                       const float *alphas_cumprod, int64_t b, int64_t n, int64_t t_count,
                       lh_error *err) {
    lh_status st =
        check_batch("add_noise", noisy, x0, noise, timesteps, alphas_cumprod, b, n, t_count, err);
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < b; i++) {
        float ac = alphas_cumprod[timesteps[i]];
        float sa = sqrtf(ac), so = sqrtf(1.0f - ac);
        const float *x = x0 + i * n, *e = noise + i * n;
        float *y = noisy + i * n;
        for (int64_t j = 0; j < n; j++) {
            float p = sa * x[j], q = so * e[j];
            y[j] = p + q;
        }
    }
    return LH_OK;
}

lh_status lh_noise_velocity(float *velocity, const float *x0, const float *noise,
                            const int64_t *timesteps, const float *alphas_cumprod, int64_t b,
                            int64_t n, int64_t t_count, lh_error *err) {
    lh_status st = check_batch("get_velocity", velocity, x0, noise, timesteps, alphas_cumprod, b, n,
                               t_count, err);
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < b; i++) {
        float ac = alphas_cumprod[timesteps[i]];
        float sa = sqrtf(ac), so = sqrtf(1.0f - ac);
        const float *x = x0 + i * n, *e = noise + i * n;
        float *v = velocity + i * n;
        for (int64_t j = 0; j < n; j++) {
            float p = sa * e[j], q = so * x[j];
            v[j] = p - q;
        }
    }
    return LH_OK;
}

lh_status lh_noise_snr(float *snr, const int64_t *timesteps, const float *alphas_cumprod, int64_t b,
                       int64_t t_count, lh_error *err) {
    lh_status st =
        check_batch("compute_snr", snr, snr, snr, timesteps, alphas_cumprod, b, 0, t_count, err);
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < b; i++) {
        float ac = alphas_cumprod[timesteps[i]];
        float r = sqrtf(ac) / sqrtf(1.0f - ac); /* (alpha / sigma) ** 2 */
        snr[i] = r * r;
    }
    return LH_OK;
}

lh_status lh_noise_min_snr_weights(float *weights, const float *snr, int64_t b, double gamma,
                                   lh_noise_pred pred, lh_error *err) {
    if (b < 0)
        return lh_error_set(err, LH_ERR_INVALID, "min_snr_weights: b = %lld is negative",
                            (long long)b);
    if (b > 0 && (!weights || !snr))
        return lh_error_set(err, LH_ERR_INVALID, "min_snr_weights: NULL %s",
                            weights ? "snr" : "weights");
    if (!(gamma > 0.0) || !isfinite(gamma))
        return lh_error_set(err, LH_ERR_INVALID, "min_snr_weights: snr_gamma must be > 0, got %g",
                            gamma);
    if ((unsigned)pred >= LH_NOISE_PRED_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "min_snr_weights: prediction type %d out of range",
                            (int)pred);
    const float g = (float)gamma; /* args.snr_gamma * torch.ones_like(timesteps) */
    for (int64_t i = 0; i < b; i++) {
        float s = snr[i];
        float m = isnan(s) ? s : (s < g ? s : g); /* torch.min propagates NaN */
        if (pred == LH_NOISE_PRED_EPSILON)
            m = m / s;
        else if (pred == LH_NOISE_PRED_V_PREDICTION)
            m = m / (s + 1.0f);
        weights[i] = m;
    }
    return LH_OK;
}

lh_status lh_noise_apply_offset(float *noise, const float *randn, double offset, int64_t b,
                                int64_t c, int64_t hw, lh_error *err) {
    if (b < 0 || c < 0 || hw < 0)
        return lh_error_set(err, LH_ERR_INVALID,
                            "noise_offset: negative size (b %lld, c %lld, hw %lld)", (long long)b,
                            (long long)c, (long long)hw);
    size_t bc, total;
    if (lh_mul_size((size_t)b, (size_t)c, &bc) || lh_mul_size(bc, (size_t)hw, &total))
        return lh_error_set(err, LH_ERR_OVERFLOW, "noise_offset: size overflow");
    if (total > 0 && (!noise || !randn))
        return lh_error_set(err, LH_ERR_INVALID, "noise_offset: NULL %s",
                            noise ? "randn" : "noise");
    const float o = (float)offset;
    for (size_t k = 0; k < bc; k++) {
        float add = o * randn[k]; /* noise_offset * randn(B, C, 1, 1) */
        float *row = noise + k * (size_t)hw;
        for (int64_t j = 0; j < hw; j++)
            row[j] = row[j] + add;
    }
    return LH_OK;
}
