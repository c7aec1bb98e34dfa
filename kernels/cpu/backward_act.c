/* Backward of the pointwise activations (activations.c): dx = dy * f'(x)
 * for SiLU, GELU (erf form, exact derivative), quick GELU, and diffusers'
 * GEGLU. dx may alias dy for the elementwise ones. Chunked across threads
 * like the forwards; the normal CDF comes from libm's erfcf, accurate in
 * both tails. */
#include "cpu.h"

#define ACT_CHUNK 16384

static inline float sigmoid1(float x) { return 1.0f / (1.0f + lh__expf(-x)); }

/* gelu(x) = x Phi(x); gelu'(x) = Phi(x) + x phi(x). */
static inline float gelu_cdf(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline float gelu_pdf(float x) { return 0.39894228040143268f * expf(-0.5f * x * x); }

LH_HOT static void silu_bw_run(float *dx, const float *dy, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid1(x[i]);
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

LH_HOT static void quick_gelu_bw_run(float *dx, const float *dy, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid1(1.702f * x[i]);
        dx[i] = dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
    }
}

static void gelu_bw_run(float *dx, const float *dy, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * (gelu_cdf(x[i]) + x[i] * gelu_pdf(x[i]));
}

/* One GEGLU row: dhidden = dy gelu(gate), dgate = dy hidden gelu'(gate). */
static void geglu_bw_row(float *dhidden, float *dgate, /* [f] each */
                         const float *dy, const float *hidden, const float *gate, int64_t f) {
    for (int64_t j = 0; j < f; j++) {
        float g = gate[j], cdf = gelu_cdf(g), dyj = dy[j], hj = hidden[j];
        dhidden[j] = dyj * g * cdf;
        dgate[j] = dyj * hj * (cdf + g * gelu_pdf(g));
    }
}

typedef void (*act_bw_fn)(float *dx, const float *dy, const float *x, int64_t n);

static lh_status pointwise_bw(lh_backend *be, act_bw_fn fn, float *dx, const float *dy,
                              const float *x, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    if (!dx || !dy || !x) return LH_ERR_INVALID;
    int64_t chunks = (n + ACT_CHUNK - 1) / ACT_CHUNK;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t i0 = ch * ACT_CHUNK, len = n - i0 < ACT_CHUNK ? n - i0 : ACT_CHUNK;
        fn(dx + i0, dy + i0, x + i0, len);
    }
    return LH_OK;
}

lh_status lh__cpu_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n) {
    return pointwise_bw(be, silu_bw_run, dx, dy, x, n);
}

lh_status lh__cpu_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n) {
    return pointwise_bw(be, gelu_bw_run, dx, dy, x, n);
}

lh_status lh__cpu_quick_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                      int64_t n) {
    return pointwise_bw(be, quick_gelu_bw_run, dx, dy, x, n);
}

lh_status lh__cpu_geglu_backward(lh_backend *be, float *dx, /* [rows, 2f] */
                                 const float *dy,           /* [rows, f] */
                                 const float *x,            /* [rows, 2f] */
                                 int64_t rows, int64_t f) {
    int64_t total;
    if (rows < 0 || f < 0) return LH_ERR_INVALID;
    if (!lh__mul3(&total, rows, f, 2) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!dx || !dy || !x) return LH_ERR_INVALID;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        geglu_bw_row(dx + r * 2 * f, dx + r * 2 * f + f, dy + r * f, x + r * 2 * f,
                     x + r * 2 * f + f, f);
    return LH_OK;
}
