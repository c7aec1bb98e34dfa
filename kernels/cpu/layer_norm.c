/* torch.nn.LayerNorm over the last axis of [rows, cols]: mean, then biased
 * variance in a second pass, both accumulated in double; eps inside the
 * square root. Rows are split across threads. */
#include "cpu.h"
#include "norm_stats.h"

LH_HOT static void layer_norm_row(float *out, const float *x, const float *gamma,
                                  const float *beta, int64_t cols, float eps) {
    double mean = lh__sum_f32(x, cols) / (double)cols;
    double var = lh__sumsq_dev_f32(x, cols, mean) / (double)cols;
    float rstd = (float)(1.0 / sqrt(var + (double)eps)), mf = (float)mean;
    for (int64_t i = 0; i < cols; i++) out[i] = (x[i] - mf) * rstd * gamma[i] + beta[i];
}

lh_status lh__cpu_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                             const float *beta, int64_t rows, int64_t cols, float eps) {
    int64_t total;
    if (rows < 0 || cols < 0 || !(eps >= 0.0f)) return LH_ERR_INVALID;
    if (!lh__mul2(&total, rows, cols) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !gamma || !beta) return LH_ERR_INVALID;
    int threads = lh__cpu_threads(be);
#pragma omp parallel for num_threads(threads) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        layer_norm_row(out + r * cols, x + r * cols, gamma, beta, cols, eps);
    return LH_OK;
}
