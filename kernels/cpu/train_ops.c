/* Training updates on the cpu backend: scale, scale_by, sum_squares,
 * mse_backward, step_check, adamw, copy and LoRA dropout (see backend.h). Plain loops: sums in double in index order, the
 * same order as the host code they replace, so results do not depend on the
 * thread count. */
#include <math.h>
#include <string.h>

#include "../adamw.h"
#include "../dropout.h"
#include "cpu.h"

lh_status lh__cpu_scale(lh_backend *be, float *x, int64_t n, float s) {
    if (n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    int nt = lh__cpu_threads(be);
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
    return LH_OK;
}

lh_status lh__cpu_scale_by(lh_backend *be, float *x, int64_t n, const float *s) {
    if (!s) return LH_ERR_INVALID;
    return lh__cpu_scale(be, x, n, *s);
}

lh_status lh__cpu_sum_squares(lh_backend *be, double *out, const float *x, int64_t n) {
    (void)be;
    if (!out || n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    *out = s;
    return LH_OK;
}

lh_status lh__cpu_mse_backward(lh_backend *be, float *dpred, double *sq, const float *pred,
                               const float *target, const double *coef, int64_t rows,
                               int64_t cols) {
    (void)be;
    if (rows < 0 || cols < 0) return LH_ERR_INVALID;
    if (rows > 0 && (!sq || !coef || (cols > 0 && (!dpred || !pred || !target))))
        return LH_ERR_INVALID;
    int64_t total;
    if (!lh__mul2(&total, rows, cols) || !lh__bytes_ok(total) || rows > 65535LL * 32768)
        return LH_ERR_OVERFLOW; /* the row limit: the cuda backend's grid */
    for (int64_t r = 0; r < rows; r++) {
        double s = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            int64_t e = r * cols + j;
            double d = (double)pred[e] - (double)target[e];
            s += d * d;
            dpred[e] = (float)(coef[r] * d);
        }
        sq[r] = s;
    }
    return LH_OK;
}

lh_status lh__cpu_step_check(lh_backend *be, float *coef, int64_t *found, const double *sq,
                             int64_t n, const int64_t *counts, int64_t nc, float max_norm) {
    (void)be;
    if (!coef || !found || n < 0 || nc < 0 || (n > 0 && !sq) || (nc > 0 && !counts) ||
        isnan(max_norm))
        return LH_ERR_INVALID;
    int64_t bad = 0;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(sq[i])) bad = 1;
        double norm = (double)(float)sqrt(sq[i]); /* torch: each tensor's norm a float32 */
        sum += norm * norm;
    }
    for (int64_t i = 0; i < nc; i++)
        if (counts[i] != 0) bad = 1;
    float c = 1.0f;
    if (!bad && max_norm > 0.0f) {
        float total = (float)sqrt(sum);
        float k = max_norm / (total + 1e-6f);
        if (k < 1.0f) c = k; /* torch clamps the multiplier to 1 */
    }
    *coef = c;
    *found = bad;
    return LH_OK;
}

lh_status lh__cpu_adamw(lh_backend *be, float *param, float *exp_avg, float *exp_avg_sq,
                        const float *grad, int64_t n, const lh_adamw_coef *coef,
                        const int64_t *skip) {
    if (!coef || n < 0 || (n > 0 && (!param || !exp_avg || !exp_avg_sq || !grad)))
        return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (skip && *skip) return LH_OK;
    int nt = lh__cpu_threads(be);
    const int64_t chunk = 16384;
    int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        lh_adamw_apply(param + lo, exp_avg + lo, exp_avg_sq + lo, grad + lo, len, coef);
    }
    return LH_OK;
}

lh_status lh__cpu_dropout(lh_backend *be, float *out, const float *x, int64_t n, uint64_t seed,
                          double p) {
    if (n < 0 || (n > 0 && (!out || !x)) || !(p >= 0.0 && p < 1.0)) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    float keep = (float)(1.0 / (1.0 - p));
    int nt = lh__cpu_threads(be);
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = lh_dropout_kept(seed, i, p) ? x[i] * keep : 0.0f;
    return LH_OK;
}

lh_status lh__cpu_dropout_backward(lh_backend *be, float *dx, const float *dxd, int64_t n,
                                   uint64_t seed, double p) {
    if (n < 0 || (n > 0 && (!dx || !dxd)) || !(p >= 0.0 && p < 1.0)) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    float keep = (float)(1.0 / (1.0 - p));
    int nt = lh__cpu_threads(be);
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        if (lh_dropout_kept(seed, i, p)) dx[i] += keep * dxd[i];
    return LH_OK;
}

lh_status lh__cpu_copy(lh_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && (!dst || !src)) return LH_ERR_INVALID;
    if (bytes) memmove(dst, src, bytes);
    return LH_OK;
}
