/* AdamW and gradient-norm clipping on float32 parameters, as torch does them
 * on the CPU: torch.optim.AdamW(foreach=False) (the single-tensor path) and
 * torch.nn.utils.clip_grad_norm_. Host-private (train/);
 * LH_API only so the test suite can link them, as in host/adapter.h. */
#ifndef LH_TRAIN_OPTIM_H
#define LH_TRAIN_OPTIM_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "lorahost/lorahost.h"

/* Hyperparameters; lh_adamw_opts_default() gives torch's defaults
 * (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2). The lr of a
 * step is an argument of lh_adamw_step (it comes from the schedule). */
typedef struct lh_adamw_opts {
    double lr;
    double beta1, beta2;
    double eps;
    double weight_decay;
} lh_adamw_opts;

LH_API void lh_adamw_opts_default(lh_adamw_opts *out);

/* One AdamW update of one parameter tensor, in torch's order and float32
 * rounding (torch 2.x's AVX2 CPU kernels; exp_avg and exp_avg_sq
 * match bit for bit, param to a few ulp because torch's float32 sqrt is not
 * correctly rounded, see tests/test_train_math.c):
 *   step += 1
 *   p *= 1 - lr*wd
 *   m  = lerp(m, g, 1 - beta1)
 *   v  = fma((1 - beta2)*g, g, v*beta2)
 *   p += -(lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * exp_avg, exp_avg_sq and *step are torch's state["exp_avg"],
 * state["exp_avg_sq"] and state["step"] (zeros and 0 before the first step);
 * the caller keeps them and saves them in checkpoints. Errors: NULL buffers,
 * n < 0, lr, betas or eps out of range (LH_ERR_INVALID). */
LH_API lh_status lh_adamw_step(float *param,      // [n] updated in place
                               float *exp_avg,    // [n] first moment, updated
                               float *exp_avg_sq, // [n] second moment, updated
                               int64_t *step,     // this tensor's step count, incremented
                               const float *grad, // [n]
                               int64_t n, double lr, const lh_adamw_opts *opts, lh_error *err);

/* The checks of lh_adamw_step, then *step += 1 and the step's float32
 * coefficients for a backend's adamw op (lh_adamw_step is this followed by
 * kernels/adamw.h's loop). */
LH_API lh_status lh_adamw_coef_make(lh_adamw_coef *out, int64_t *step, double lr,
                                    const lh_adamw_opts *opts, lh_error *err);

/* torch.nn.utils.clip_grad_norm_(params, max_norm) with norm_type 2:
 * total = ||(||g_0||, ..., ||g_{count-1}||)||, coef = min(max_norm /
 * (total + 1e-6), 1), every gradient multiplied by coef (also when coef is 1,
 * as torch does). *total_norm (may be NULL) gets the norm before clipping,
 * float32 like torch's returned tensor. Sums run in double, so the norm may
 * differ from torch's float32 reduction in its last bit. */
LH_API lh_status lh_clip_grad_norm(float *total_norm,    // out, may be NULL
                                   float *const *grads,  // [count] pointers, each [sizes[i]]
                                   const int64_t *sizes, // [count]
                                   int64_t count, double max_norm, lh_error *err);

#endif
