/* Elementwise arithmetic: add, axpby and the per-channel bias add used for
 * time embeddings. Outputs may alias inputs element for element. */
#include "cpu.h"

#define EW_CHUNK 32768

LH_HOT static void add_run(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

LH_HOT static void mul_run(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

LH_HOT static void axpby_run(float *out, float alpha, const float *a, float beta, const float *b,
                             int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = alpha * a[i] + beta * b[i];
}

static lh_status check_n(int64_t n, const void *p, const void *q, const void *r) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n > 0 && (!p || !q || !r)) return LH_ERR_INVALID;
    return LH_OK;
}

/* out = run(a, b) chunk by chunk across the threads. */
static lh_status binary(lh_backend *be, void (*run)(float *, const float *, const float *, int64_t),
                        float *out, const float *a, const float *b, int64_t n) {
    lh_status st = check_n(n, out, a, b);
    if (st != LH_OK || n == 0) return st;
    int64_t chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t i0 = ch * EW_CHUNK;
        run(out + i0, a + i0, b + i0, n - i0 < EW_CHUNK ? n - i0 : EW_CHUNK);
    }
    return LH_OK;
}

lh_status lh__cpu_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    return binary(be, add_run, out, a, b, n);
}

lh_status lh__cpu_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    return binary(be, mul_run, out, a, b, n);
}

lh_status lh__cpu_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta,
                        const float *b, int64_t n) {
    lh_status st = check_n(n, out, a, b);
    if (st != LH_OK || n == 0) return st;
    int64_t chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t i0 = ch * EW_CHUNK;
        axpby_run(out + i0, alpha, a + i0, beta, b + i0, n - i0 < EW_CHUNK ? n - i0 : EW_CHUNK);
    }
    return LH_OK;
}

LH_HOT static void bias_run(float *out, const float *x, float bias, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] + bias;
}

lh_status lh__cpu_add_channel_bias(lh_backend *be, float *out, const float *x, const float *bias,
                                   int64_t outer, int64_t c, int64_t inner) {
    int64_t rows, total;
    if (outer < 0 || c < 0 || inner < 0) return LH_ERR_INVALID;
    if (!lh__mul2(&rows, outer, c) || !lh__mul2(&total, rows, inner) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !bias) return LH_ERR_INVALID;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) bias_run(out + r * inner, x + r * inner, bias[r], inner);
    return LH_OK;
}
