/* The loss curve as an SVG beside the checkpoints: every step's loss (thin)
 * and its exponential moving average (thick), step and loss axes. */
#ifndef LH_TRAIN_LOSS_PLOT_H
#define LH_TRAIN_LOSS_PLOT_H

#include <stdint.h>

#include "error.h"

/* The EMA of loss[0..n) with smoothing `beta` (0.9: TensorBoard's 0.9),
 * debiased as TensorBoard does; out may alias loss. */
void lh_loss_smooth(float *out, const float *loss, int64_t n, double beta);

/* Write the plot of loss[0..n) (step i + 1) to path, atomically. */
lh_status lh_loss_plot_svg(const char *path, const float *loss, int64_t n, const char *title,
                           lh_error *err);

#endif
