/* Dynamic loss scaling for fp16 training, with torch.amp.GradScaler's
 * update rule: an overflowing step is skipped and the scale backs off at
 * once; the scale grows after `growth_interval` clean steps in a row, and
 * the count restarts after each growth or overflow. */
#include <math.h>

#include "lorahost/train.h"

void lh_loss_scaler_init(lh_loss_scaler *s, lh_dtype precision) {
    s->enabled = precision == LH_DTYPE_F16;
    s->scale = s->enabled ? 65536.0f : 1.0f;
    s->growth_factor = 2.0f;
    s->growth_interval = 2000;
    s->backoff_factor = 0.5f;
    s->clean = 0;
    s->steps = 0;
    s->skipped = 0;
}

int lh_loss_scaler_update(lh_loss_scaler *s, int found_inf) {
    s->steps++;
    if (found_inf) {
        s->skipped++;
        s->clean = 0;
        if (s->enabled) s->scale *= s->backoff_factor;
        return 0;
    }
    if (s->enabled && ++s->clean >= s->growth_interval) {
        float grown = s->scale * s->growth_factor;
        if (isfinite(grown)) s->scale = grown; /* GradScaler keeps a finite scale */
        s->clean = 0;
    }
    return 1;
}
