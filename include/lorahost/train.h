/* Training: the pieces shared by every trainer. So far the fp16 loss scaler
 * (dynamic loss scaling with torch.amp.GradScaler's rules and defaults).
 *
 *   lh_loss_scaler s;
 *   lh_loss_scaler_init(&s, LH_DTYPE_F16);
 *   for each step:
 *       backward with the loss multiplied by s.scale (lh_unet_train_opts.loss_scale)
 *       found = non-finite gradients after multiplying them by 1 / s.scale
 *       if (lh_loss_scaler_update(&s, found)) optimizer step; else skip it */
#ifndef LORAHOST_TRAIN_H
#define LORAHOST_TRAIN_H

#include <stdint.h>

#include "lorahost/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_loss_scaler {
    float scale;          /* multiply the loss by this; divide the gradients by it */
    float growth_factor;  /* x2 ... */
    int growth_interval;  /* ... after this many clean steps in a row */
    float backoff_factor; /* x0.5 on a step with Inf/NaN gradients, which is skipped */
    int enabled;          /* 0: scale stays 1 (fp32, bf16); overflowing steps are still skipped */
    int clean;            /* clean steps since the last growth or overflow */
    int64_t steps, skipped;
} lh_loss_scaler;

/* F16: enabled, scale 65536, growth 2 every 2000 clean steps, backoff 0.5
 * (GradScaler's defaults). F32 / BF16: disabled (bf16 has fp32's range). */
LH_API void lh_loss_scaler_init(lh_loss_scaler *s, lh_dtype precision);

/* After a step's backward: found_inf non-zero if any gradient was NaN or
 * Inf. Returns 1 if the optimizer step should be applied, 0 if it must be
 * skipped; updates the scale for the next step. */
LH_API int lh_loss_scaler_update(lh_loss_scaler *s, int found_inf);

#ifdef __cplusplus
}
#endif

#endif
