/* Pointwise activations: SiLU, GELU (erf form), quick GELU (CLIP) and
 * diffusers' GEGLU. All are branch-free around the vectorisable lh__expf
 * (GELU through an erfc fit, so the negative tail keeps its relative
 * accuracy). Work is split into chunks across threads; each chunk is a
 * multiversioned loop. */
#include "cpu.h"

#define ACT_CHUNK 16384

LH_HOT static void silu_run(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + lh__expf(-x[i]));
}

LH_HOT static void quick_gelu_run(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + lh__expf(-1.702f * x[i]));
}

/* gelu(x) = x Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2, with erfc from the
 * Chebyshev fit of Numerical Recipes' erfcc (fractional error < 1.2e-7 for
 * z >= 0): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2). Branch-free,
 * so the loops vectorise; relative error < 6e-6 for |x| <= 8 against
 * float64, set by the float rounding of z^2 in the far tail. */
static inline float gelu1(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float e = t * lh__expf(p - z * z); /* erfc(|x| / sqrt(2)) */
    return x * (x >= 0.0f ? 1.0f - 0.5f * e : 0.5f * e);
}

LH_HOT static void gelu_run(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gelu1(x[i]);
}

LH_HOT static void geglu_row(float *out, const float *hidden, const float *gate, int64_t f) {
    for (int64_t j = 0; j < f; j++) out[j] = hidden[j] * gelu1(gate[j]);
}

typedef void (*act_fn)(float *out, const float *x, int64_t n);

static lh_status pointwise(lh_backend *be, act_fn fn, float *out, const float *x, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
    int64_t chunks = (n + ACT_CHUNK - 1) / ACT_CHUNK;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t i0 = ch * ACT_CHUNK, len = n - i0 < ACT_CHUNK ? n - i0 : ACT_CHUNK;
        fn(out + i0, x + i0, len);
    }
    return LH_OK;
}

lh_status lh__cpu_silu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, silu_run, out, x, n);
}

lh_status lh__cpu_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, gelu_run, out, x, n);
}

lh_status lh__cpu_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, quick_gelu_run, out, x, n);
}

lh_status lh__cpu_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f) {
    int64_t total;
    if (rows < 0 || f < 0) return LH_ERR_INVALID;
    if (!lh__mul3(&total, rows, f, 2) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) geglu_row(out + r * f, x + r * 2 * f, x + r * 2 * f + f, f);
    return LH_OK;
}
