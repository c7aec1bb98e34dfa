/* Noise math of diffusers' training scripts (train_text_to_image_lora.py):
 * DDPMScheduler betas and alphas_cumprod, add_noise, get_velocity,
 * training_utils.compute_snr, min-SNR-gamma loss weights and the noise
 * offset, all in float32 as torch computes them. Host-private (train/);
 * LH_API only so the test suite can link them, as in host/adapter.h. */
#ifndef LH_TRAIN_NOISE_H
#define LH_TRAIN_NOISE_H

#include <stdint.h>

#include "lorahost/lorahost.h"

typedef enum lh_beta_schedule {
    LH_BETA_LINEAR,
    LH_BETA_SCALED_LINEAR,
    LH_BETA_SQUAREDCOS_CAP_V2,
    LH_BETA_COUNT
} lh_beta_schedule;

typedef enum lh_noise_pred {
    LH_NOISE_PRED_EPSILON,
    LH_NOISE_PRED_V_PREDICTION,
    LH_NOISE_PRED_SAMPLE,
    LH_NOISE_PRED_COUNT
} lh_noise_pred;

/* The keys of a model's scheduler_config.json that training uses. */
typedef struct lh_noise_config {
    int64_t num_train_timesteps; /* 1000 */
    double beta_start;           /* 0.0001 (DDPMScheduler's default) */
    double beta_end;             /* 0.02 */
    lh_beta_schedule beta_schedule;
    lh_noise_pred prediction_type;
} lh_noise_config;

/* DDPMScheduler's defaults (linear 0.0001..0.02, 1000 steps, epsilon). */
LH_API void lh_noise_config_default(lh_noise_config *out);

/* Names as in scheduler_config.json; unknown names are LH_ERR_CONFIG with
 * the name and the accepted values in the message. */
LH_API lh_status lh_beta_schedule_parse(lh_beta_schedule *out, const char *name, lh_error *err);
LH_API lh_status lh_noise_pred_parse(lh_noise_pred *out, const char *name, lh_error *err);

/* betas (float32 like DDPMScheduler.betas) and alphas_cumprod =
 * torch.cumprod(1 - betas) (float32 values, torch's CPU cumprod accumulates
 * in double). Both [cfg->num_train_timesteps], caller-allocated. */
LH_API lh_status lh_noise_alphas_cumprod(float *betas,          // [T]
                                         float *alphas_cumprod, // [T]
                                         const lh_noise_config *cfg, lh_error *err);

/* DDPMScheduler.add_noise: noisy[b] = sqrt(ac[t_b]) * x0[b] + sqrt(1 - ac[t_b]) * noise[b].
 * Errors: NULL, b or n < 0, a timestep outside 0..T-1. */
LH_API lh_status lh_noise_add(float *noisy,                // [B, N] (N = C*H*W)
                              const float *x0,             // [B, N]
                              const float *noise,          // [B, N]
                              const int64_t *timesteps,    // [B]
                              const float *alphas_cumprod, // [T]
                              int64_t b, int64_t n, int64_t t_count, lh_error *err);

/* DDPMScheduler.get_velocity: v = sqrt(ac) * noise - sqrt(1 - ac) * x0. */
LH_API lh_status lh_noise_velocity(float *velocity,             // [B, N]
                                   const float *x0,             // [B, N]
                                   const float *noise,          // [B, N]
                                   const int64_t *timesteps,    // [B]
                                   const float *alphas_cumprod, // [T]
                                   int64_t b, int64_t n, int64_t t_count, lh_error *err);

/* training_utils.compute_snr: snr = (sqrt(ac) / sqrt(1 - ac))^2. */
LH_API lh_status lh_noise_snr(float *snr,                  // [B]
                              const int64_t *timesteps,    // [B]
                              const float *alphas_cumprod, // [T]
                              int64_t b, int64_t t_count, lh_error *err);

/* Min-SNR-gamma weights as the script computes them:
 * w = min(snr, gamma) / snr for epsilon, / (snr + 1) for v_prediction, and
 * min(snr, gamma) unchanged for sample (the script leaves it so). */
LH_API lh_status lh_noise_min_snr_weights(float *weights,   // [B]
                                          const float *snr, // [B]
                                          int64_t b, double gamma, lh_noise_pred pred,
                                          lh_error *err);

/* Noise offset: noise += offset * randn[b, c] over each channel's h*w values
 * (noise += noise_offset * torch.randn(B, C, 1, 1)); randn from the caller's
 * generator, drawn after the noise as the script does. */
LH_API lh_status lh_noise_apply_offset(float *noise,       // [B, C, HW] updated
                                       const float *randn, // [B, C]
                                       double offset, int64_t b, int64_t c, int64_t hw,
                                       lh_error *err);

#endif
