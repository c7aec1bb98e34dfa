/* Backward of torch.nn.GroupNorm (optionally fused with SiLU) and of
 * torch.nn.LayerNorm. Statistics are recomputed as the forwards do (mean,
 * then biased variance, accumulated in double); with xhat = (x - mean) rstd
 * and g the gradient at xhat (dy gamma, times SiLU' of the norm's output
 * when fused): dx = rstd (g - mean(g) - xhat mean(g xhat)). */
#include "cpu.h"
#include "norm_stats.h"

#include <stdlib.h>

/* dy * silu'(y) if `silu`, else dy. */
static inline float silu_chain(float dy, float y, int silu) {
    if (!silu) return dy;
    float s = 1.0f / (1.0f + lh__expf(-y));
    return dy * s * (1.0f + y * (1.0f - s));
}

/* ---- Group norm ---- */

/* One group: `cg` channels of `hw` values from channel c0. Writes dx (if
 * wanted) and the group's per-channel sums sb[ch] = sum dy', sg[ch] = sum
 * dy' xhat, where dy' is dy through the SiLU. */
LH_HOT static void group_norm_back_one(float *dx,              /* [cg, hw] or NULL */
                                       double *sb, double *sg, /* [cg] */
                                       const float *dy, const float *x, /* [cg, hw] */
                                       const float *gamma, const float *beta, /* [c] */
                                       int64_t c0, int64_t cg, int64_t hw, float eps, int silu) {
    int64_t len = cg * hw;
    double sum = 0.0, sq = 0.0;
    for (int64_t ch = 0; ch < cg; ch++) sum += lh__sum_f32(x + ch * hw, hw);
    double mean = sum / (double)len;
    for (int64_t ch = 0; ch < cg; ch++) sq += lh__sumsq_dev_f32(x + ch * hw, hw, mean);
    float rstd = (float)(1.0 / sqrt(sq / (double)len + (double)eps)), mf = (float)mean;
    double m1 = 0.0, m2 = 0.0; /* sums of g and g xhat over the group */
    for (int64_t ch = 0; ch < cg; ch++) {
        const float *xs = x + ch * hw, *ds = dy + ch * hw;
        float a = gamma[c0 + ch], b = silu ? beta[c0 + ch] : 0.0f;
        double s1 = 0.0, s2 = 0.0;
        for (int64_t i = 0; i < hw; i++) {
            float xh = (xs[i] - mf) * rstd, gy = silu_chain(ds[i], xh * a + b, silu);
            s1 += gy;
            s2 += gy * xh;
        }
        sb[ch] = s1;
        sg[ch] = s2;
        m1 += s1 * a;
        m2 += s2 * a;
    }
    if (!dx) return;
    float k1 = (float)(m1 / (double)len), k2 = (float)(m2 / (double)len);
    for (int64_t ch = 0; ch < cg; ch++) {
        const float *xs = x + ch * hw, *ds = dy + ch * hw;
        float *os = dx + ch * hw;
        float a = gamma[c0 + ch], b = silu ? beta[c0 + ch] : 0.0f;
        for (int64_t i = 0; i < hw; i++) {
            float xh = (xs[i] - mf) * rstd, gy = silu_chain(ds[i], xh * a + b, silu);
            os[i] = rstd * (gy * a - k1 - xh * k2);
        }
    }
}

/* dgamma [c] += sum over images of sg [n, c]; dbeta likewise from sb. */
static void reduce_params(float *dgamma, float *dbeta, const double *sg, const double *sb,
                          int64_t n, int64_t c) {
    for (int64_t ch = 0; ch < c; ch++) {
        double g = 0.0, b = 0.0;
        for (int64_t img = 0; img < n; img++) {
            g += sg[img * c + ch];
            b += sb[img * c + ch];
        }
        if (dgamma) dgamma[ch] += (float)g;
        if (dbeta) dbeta[ch] += (float)b;
    }
}

lh_status lh__cpu_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                      const float *dy, const float *x, const float *gamma,
                                      const float *beta, int64_t n, int64_t c, int64_t hw,
                                      int64_t groups, float eps, int silu) {
    int64_t total, nc2;
    if (n < 0 || c < 0 || hw < 0 || groups < 1 || c % groups != 0 || !(eps >= 0.0f))
        return LH_ERR_INVALID;
    if (!lh__mul3(&total, n, c, hw) || !lh__bytes_ok(total) || !lh__mul3(&nc2, n, c, 4) ||
        !lh__bytes_ok(nc2))
        return LH_ERR_OVERFLOW;
    if (total == 0 || (!dx && !dgamma && !dbeta)) return LH_OK;
    if (!dy || !x || !gamma || (silu && !beta)) return LH_ERR_INVALID;
    double *sb = malloc((size_t)(2 * n * c) * sizeof(double)), *sg = sb + n * c;
    if (!sb) return LH_ERR_NOMEM;
    int64_t cg = c / groups, tasks = n * groups;
    int threads = lh__cpu_threads(be);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (total > LH_CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t img = t / groups, g = t % groups, ch0 = img * c + g * cg, off = ch0 * hw;
        group_norm_back_one(dx ? dx + off : NULL, sb + ch0, sg + ch0, dy + off, x + off, gamma,
                            beta, g * cg, cg, hw, eps, silu != 0);
    }
    reduce_params(dgamma, dbeta, sg, sb, n, c);
    free(sb);
    return LH_OK;
}

/* ---- Layer norm ---- */

#define LN_COL_CHUNK 256 /* columns per task of the dgamma/dbeta pass */

/* One row: its mean and rstd, and dx (if wanted). */
LH_HOT static void layer_norm_back_row(float *dx,                   /* [cols] or NULL */
                                       float *mean_out, float *rstd_out,
                                       const float *dy, const float *x, /* [cols] */
                                       const float *gamma,          /* [cols] */
                                       int64_t cols, float eps) {
    double mean = lh__sum_f32(x, cols) / (double)cols;
    double var = lh__sumsq_dev_f32(x, cols, mean) / (double)cols;
    float rstd = (float)(1.0 / sqrt(var + (double)eps)), mf = (float)mean;
    *mean_out = mf;
    *rstd_out = rstd;
    if (!dx) return;
    double m1 = 0.0, m2 = 0.0;
    for (int64_t i = 0; i < cols; i++) {
        float g = dy[i] * gamma[i];
        m1 += g;
        m2 += g * ((x[i] - mf) * rstd);
    }
    float k1 = (float)(m1 / (double)cols), k2 = (float)(m2 / (double)cols);
    for (int64_t i = 0; i < cols; i++) {
        float xh = (x[i] - mf) * rstd;
        dx[i] = rstd * (dy[i] * gamma[i] - k1 - xh * k2);
    }
}

/* Columns [c0, c0 + nc) of dgamma += sum_rows dy xhat, dbeta += sum_rows dy. */
LH_HOT static void layer_norm_back_params(float *dgamma, float *dbeta, /* [cols] or NULL */
                                          const float *dy, const float *x, /* [rows, cols] */
                                          const float *mean, const float *rstd, /* [rows] */
                                          int64_t rows, int64_t cols, int64_t c0, int64_t nc) {
    double g[LN_COL_CHUNK] = {0}, b[LN_COL_CHUNK] = {0};
    for (int64_t r = 0; r < rows; r++) {
        const float *xs = x + r * cols + c0, *ds = dy + r * cols + c0;
        float mf = mean[r], rs = rstd[r];
        for (int64_t i = 0; i < nc; i++) {
            g[i] += ds[i] * ((xs[i] - mf) * rs);
            b[i] += ds[i];
        }
    }
    for (int64_t i = 0; i < nc; i++) {
        if (dgamma) dgamma[c0 + i] += (float)g[i];
        if (dbeta) dbeta[c0 + i] += (float)b[i];
    }
}

lh_status lh__cpu_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                      const float *dy, const float *x, const float *gamma,
                                      int64_t rows, int64_t cols, float eps) {
    int64_t total;
    if (rows < 0 || cols < 0 || !(eps >= 0.0f)) return LH_ERR_INVALID;
    if (!lh__mul2(&total, rows, cols) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0 || (!dx && !dgamma && !dbeta)) return LH_OK;
    if (!dy || !x || !gamma) return LH_ERR_INVALID;
    float *mean = malloc((size_t)(2 * rows) * sizeof(float)), *rstd = mean + rows;
    if (!mean) return LH_ERR_NOMEM;
    int threads = lh__cpu_threads(be);
#pragma omp parallel for num_threads(threads) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        layer_norm_back_row(dx ? dx + r * cols : NULL, mean + r, rstd + r, dy + r * cols,
                            x + r * cols, gamma, cols, eps);
    if (dgamma || dbeta) {
        int64_t chunks = (cols + LN_COL_CHUNK - 1) / LN_COL_CHUNK;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (total > LH_CPU_PAR_MIN)
        for (int64_t t = 0; t < chunks; t++) {
            int64_t c0 = t * LN_COL_CHUNK, nc = cols - c0 < LN_COL_CHUNK ? cols - c0 : LN_COL_CHUNK;
            layer_norm_back_params(dgamma, dbeta, dy, x, mean, rstd, rows, cols, c0, nc);
        }
    }
    free(mean);
    return LH_OK;
}
