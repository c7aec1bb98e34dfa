/* What the scheduler plugins make of the model's output: the clean sample x0
 * or the noise epsilon it predicts (following prediction_type), and the
 * clip_sample option that clamps x0. Two parametrisations:
 *   VP (ddim, ddpm, lcm, pndm and the multistep solvers):
 *     sample = alpha x0 + sigma eps;
 *   sigma, k-diffusion style (euler, heun, lms, dpm2 families):
 *     sample = x0 + sigma eps, the model seeing sample / sqrt(sigma^2 + 1).
 * One host operation per torch operation of diffusers, with the same scalar
 * coefficients: the callers round their scalars (float32 or double) as
 * diffusers does and the helpers pass them on unchanged (where sigma is
 * large the steps cancel heavily, and only the same rounding points
 * reproduce diffusers). */
#ifndef LH_SCHED_PREDICT_H
#define LH_SCHED_PREDICT_H

#include "sched_common.h"

/* ---- VP form ---- */

/* out = predicted x0:
 *   epsilon:      sample / alpha - sigma / alpha * model_output
 *   v_prediction: alpha * sample - sigma * model_output
 *   sample:       model_output */
lh_status sched_predict_x0(const sched_base *b, lh_tensor *out, const lh_tensor *model_output,
                           const lh_tensor *sample, double alpha, double sigma, char *err,
                           size_t err_size);
/* out = predicted epsilon:
 *   epsilon:      model_output
 *   v_prediction: alpha * model_output + sigma * sample
 *   sample:       sample / sigma - alpha / sigma * model_output */
lh_status sched_predict_eps(const sched_base *b, lh_tensor *out, const lh_tensor *model_output,
                            const lh_tensor *sample, double alpha, double sigma, char *err,
                            size_t err_size);

/* ---- clip_sample ---- */

typedef struct sched_clip {
    int on;       /* clip_sample */
    double range; /* clip_sample_range, > 0 */
} sched_clip;

/* Read clip_sample (default `default_on`, which differs between diffusers'
 * classes) and clip_sample_range (default 1), and check the range. */
lh_status sched_clip_read(const sched_base *b, const lh_config *cfg, int default_on,
                          sched_clip *c, char *err, size_t err_size);
/* x0 = clamp(x0, -range, range) if clip_sample is on. */
lh_status sched_clip_apply(const sched_base *b, const sched_clip *c, lh_tensor *x0, char *err,
                           size_t err_size);

/* ---- Sigma form ---- */

/* out = sample / sqrt(sigma^2 + 1), the model's input at sigma. */
lh_status sched_sigma_scale_input(const sched_base *b, lh_tensor *out, const lh_tensor *sample,
                                  float sigma, char *err, size_t err_size);
/* x0 = the sample predicted from the model output at noise level sigma
 * (tmp is overwritten):
 *   epsilon:      sample - sigma * model_output
 *   v_prediction: model_output * (-sigma / sqrt(sigma^2 + 1)) + sample / (sigma^2 + 1)
 *   sample:       model_output */
lh_status sched_sigma_x0(const sched_base *b, lh_tensor *x0, lh_tensor *tmp,
                         const lh_tensor *model_output, const lh_tensor *sample, float sigma,
                         char *err, size_t err_size);
/* d = (sample - x0) / sigma, the ODE derivative (the noise x0 leaves). */
lh_status sched_sigma_derivative(const sched_base *b, lh_tensor *d, const lh_tensor *sample,
                                 const lh_tensor *x0, float sigma, char *err, size_t err_size);
/* out = x + (y * c), the product rounded first as torch's x + y * c
 * (out may be x; tmp is overwritten and may be y). */
lh_status sched_add_scaled(const sched_base *b, lh_tensor *out, lh_tensor *tmp,
                           const lh_tensor *x, const lh_tensor *y, float c, char *err,
                           size_t err_size);

#endif
