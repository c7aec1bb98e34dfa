/* AdamW (torch.optim.AdamW, single-tensor path) and clip_grad_norm_, with
 * torch's float32 operation order: each torch op below is one rounding here,
 * and where torch's AVX2 kernels fuse (lerp, addcmul) we call fmaf as they do.
 * Scalars are Python doubles in torch and rounded to float when they meet
 * a float32 tensor; the same casts appear below. */
#include <math.h>

#include "../kernels/adamw.h"
#include "error.h"
#include "optim.h"

void lh_adamw_opts_default(lh_adamw_opts *out) {
    out->lr = 1e-3;
    out->beta1 = 0.9;
    out->beta2 = 0.999;
    out->eps = 1e-8;
    out->weight_decay = 1e-2;
}

lh_status lh_adamw_coef_make(lh_adamw_coef *out, int64_t *step, double lr,
                             const lh_adamw_opts *opts, lh_error *err) {
    if (!opts || !step || !out)
        return lh_error_set(err, LH_ERR_INVALID, "adamw: %s is NULL",
                            !opts ? "opts" : !step ? "step" : "coef");
    if (!(lr >= 0.0) || !isfinite(lr))
        return lh_error_set(err, LH_ERR_INVALID, "adamw: invalid learning rate %g", lr);
    if (!(opts->eps >= 0.0))
        return lh_error_set(err, LH_ERR_INVALID, "adamw: invalid eps %g", opts->eps);
    if (!(opts->beta1 >= 0.0 && opts->beta1 < 1.0) || !(opts->beta2 >= 0.0 && opts->beta2 < 1.0))
        return lh_error_set(err, LH_ERR_INVALID, "adamw: betas (%g, %g) must lie in [0, 1)",
                            opts->beta1, opts->beta2);
    if (!(opts->weight_decay >= 0.0))
        return lh_error_set(err, LH_ERR_INVALID, "adamw: invalid weight_decay %g",
                            opts->weight_decay);

    *step += 1;
    /* torch keeps step in a float32 tensor and reads it back as a Python float */
    double t = (double)(float)*step;
    double bc1 = 1.0 - pow(opts->beta1, t);
    double bc2 = 1.0 - pow(opts->beta2, t);
    out->decay = (float)(1.0 - lr * opts->weight_decay);
    out->w1 = (float)(1.0 - opts->beta1);
    out->b2 = (float)opts->beta2;
    out->c2 = (float)(1.0 - opts->beta2);
    out->bc2s = (float)sqrt(bc2); /* Python's bc2 ** 0.5 */
    out->eps = (float)opts->eps;
    out->neg_step = (float)(-(lr / bc1));
    out->decoupled = opts->weight_decay != 0.0;
    return LH_OK;
}

lh_status lh_adamw_step(float *param, float *exp_avg, float *exp_avg_sq, int64_t *step,
                        const float *grad, int64_t n, double lr, const lh_adamw_opts *opts,
                        lh_error *err) {
    if (n < 0)
        return lh_error_set(err, LH_ERR_INVALID, "adamw: n = %lld is negative", (long long)n);
    if (n > 0 && (!param || !exp_avg || !exp_avg_sq || !grad))
        return lh_error_set(err, LH_ERR_INVALID, "adamw: %s buffer is NULL",
                            !param        ? "param"
                            : !exp_avg    ? "exp_avg"
                            : !exp_avg_sq ? "exp_avg_sq"
                                          : "grad");
    lh_adamw_coef c;
    lh_status st = lh_adamw_coef_make(&c, step, lr, opts, err);
    if (st == LH_OK) lh_adamw_apply(param, exp_avg, exp_avg_sq, grad, n, &c);
    return st;
}

lh_status lh_clip_grad_norm(float *total_norm, float *const *grads, const int64_t *sizes,
                            int64_t count, double max_norm, lh_error *err) {
    if (count < 0)
        return lh_error_set(err, LH_ERR_INVALID, "clip_grad_norm: count = %lld is negative",
                            (long long)count);
    if (count > 0 && (!grads || !sizes))
        return lh_error_set(err, LH_ERR_INVALID, "clip_grad_norm: %s is NULL",
                            grads ? "sizes" : "grads");
    if (!(max_norm >= 0.0))
        return lh_error_set(err, LH_ERR_INVALID, "clip_grad_norm: invalid max_norm %g", max_norm);
    double sum = 0.0;
    for (int64_t k = 0; k < count; k++) {
        if (sizes[k] < 0)
            return lh_error_set(err, LH_ERR_INVALID,
                                "clip_grad_norm: sizes[%lld] = %lld is negative", (long long)k,
                                (long long)sizes[k]);
        if (sizes[k] > 0 && !grads[k])
            return lh_error_set(err, LH_ERR_INVALID, "clip_grad_norm: grads[%lld] is NULL",
                                (long long)k);
        double s = 0.0;
        for (int64_t i = 0; i < sizes[k]; i++)
            s += (double)grads[k][i] * grads[k][i];
        double norm = (double)(float)sqrt(s); /* each tensor's norm is a float32 */
        sum += norm * norm;
    }
    float total = (float)sqrt(sum);
    if (total_norm) *total_norm = total;
    float coef = (float)max_norm / (total + (float)1e-6);
    if (coef > 1.0f) coef = 1.0f;
    for (int64_t k = 0; k < count; k++)
        for (int64_t i = 0; i < sizes[k]; i++)
            grads[k][i] *= coef;
    return LH_OK;
}
