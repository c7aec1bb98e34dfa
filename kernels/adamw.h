/* The AdamW update of one float32 element, in torch's order and roundings
 * (torch.optim.AdamW, single-tensor path, its AVX2 CPU kernels): shared by
 * the cpu backend's op and lh_adamw_step; the cuda kernel writes the same
 * steps with round-to-nearest intrinsics (no contraction). */
#ifndef LH_KERNELS_ADAMW_H
#define LH_KERNELS_ADAMW_H

#include <math.h>

#include "backend.h"

/* at::lerp with a scalar weight as ATen's vectorized CPU kernel computes it:
 * fma(w, end - self, self) for |w| < 0.5, else fma(w - 1, end - self, end). */
static inline float lh_lerp_f32(float self, float end, float w) {
    return fabsf(w) < 0.5f ? fmaf(w, end - self, self) : fmaf(w - 1.0f, end - self, end);
}

/* param, exp_avg, exp_avg_sq [n] updated in place from grad [n]. */
static inline void lh_adamw_apply(float *param, float *exp_avg, float *exp_avg_sq,
                                  const float *grad, int64_t n, const lh_adamw_coef *c) {
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i];
        if (c->decoupled) p = p * c->decay;          /* param.mul_(1 - lr*wd) */
        float m = lh_lerp_f32(exp_avg[i], g, c->w1); /* exp_avg.lerp_(grad, 1 - beta1) */
        float v = exp_avg_sq[i] * c->b2;             /* exp_avg_sq.mul_(beta2) */
        v = fmaf(c->c2 * g, g, v);                   /* .addcmul_(grad, grad, 1 - beta2) */
        float denom = sqrtf(v) / c->bc2s;            /* exp_avg_sq.sqrt() / bc2_sqrt */
        denom = denom + c->eps;                      /* .add_(eps) */
        p = p + c->neg_step * m / denom;             /* param.addcdiv_(m, denom, -step_size) */
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p;
    }
}

#endif
