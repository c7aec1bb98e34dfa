/* Mixed precision on the cpu backend: set_precision, round, count_nonfinite
 * and the rounding front of every op in the table. With activations set to
 * F16 or BF16, each op computes as in float32 (GEMM accumulation, norm
 * statistics, softmax) and then rounds what it WRITES as an activation or
 * an activation gradient to that type, storing the rounded value in
 * float32; accumulated parameter gradients (dw, db, dgamma, dbeta) stay
 * float32, as master weights and their gradients are. F16 overflows to
 * +-Inf exactly as a half store does, which is what loss scaling watches. */
#include "cpu.h"

#include <immintrin.h>

#include "lorahost/safetensors.h"

/* ---- Rounding ---- */

/* float32 -> bfloat16 -> float32, round to nearest even; NaN stays NaN. */
static inline float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    if ((u & 0x7F800000u) == 0x7F800000u) r = u | ((u & 0x007FFFFFu) ? 0x00400000u : 0u);
    float y;
    memcpy(&y, &r, sizeof y);
    return y;
}

#if LH_X86_DISPATCH
/* F16C: 8 lanes per instruction, the same round-to-nearest-even as lh_f32_to_f16. */
__attribute__((target("avx,f16c"))) static void round_f16_f16c(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) x[i] = lh_f16_to_f32(lh_f32_to_f16(x[i]));
}
static int have_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3"); /* AVX2 + FMA + F16C */
}
#else
static void round_f16_f16c(float *x, int64_t n) { (void)x, (void)n; }
static int have_f16c(void) { return 0; }
#endif

static void round_range(float *x, int64_t n, lh_dtype dtype, int f16c) {
    if (dtype == LH_DTYPE_BF16) {
        for (int64_t i = 0; i < n; i++) x[i] = round_bf16(x[i]);
    } else if (f16c) {
        round_f16_f16c(x, n);
    } else {
        for (int64_t i = 0; i < n; i++) x[i] = lh_f16_to_f32(lh_f32_to_f16(x[i]));
    }
}

lh_status lh__cpu_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype) {
    if (n < 0) return LH_ERR_INVALID;
    if (dtype == LH_DTYPE_F32 || n == 0) return LH_OK;
    if (dtype != LH_DTYPE_F16 && dtype != LH_DTYPE_BF16) return LH_ERR_UNSUPPORTED;
    if (!x) return LH_ERR_INVALID;
    int nt = lh__cpu_threads(be), f16c = have_f16c();
    const int64_t chunk = 16384;
    int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        round_range(x + lo, len, dtype, f16c);
    }
    return LH_OK;
}

static int half_type(lh_dtype t) { return t == LH_DTYPE_F16 || t == LH_DTYPE_BF16; }

lh_status lh__cpu_cast(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                       lh_dtype src_dtype, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (n == 0) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    int nt = lh__cpu_threads(be);
    if (dst_dtype == src_dtype && (dst_dtype == LH_DTYPE_F32 || half_type(dst_dtype))) {
        memmove(dst, src, (size_t)n * (dst_dtype == LH_DTYPE_F32 ? 4 : 2));
        return LH_OK;
    }
    if (dst_dtype == LH_DTYPE_F32 && half_type(src_dtype)) {
        const uint16_t *h = src;
        float *f = dst;
        int bf = src_dtype == LH_DTYPE_BF16;
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) f[i] = bf ? lh_bf16_to_f32(h[i]) : lh_f16_to_f32(h[i]);
        return LH_OK;
    }
    if (src_dtype == LH_DTYPE_F32 && half_type(dst_dtype)) {
        const float *f = src;
        uint16_t *h = dst;
        int bf = dst_dtype == LH_DTYPE_BF16;
#pragma omp parallel for num_threads(nt) schedule(static) if (n > LH_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) h[i] = bf ? lh_f32_to_bf16(f[i]) : lh_f32_to_f16(f[i]);
        return LH_OK;
    }
    return LH_ERR_UNSUPPORTED;
}

lh_status lh__cpu_count_nonfinite(lh_backend *be, int64_t *count, const float *x, int64_t n) {
    if (!count || n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    int nt = lh__cpu_threads(be);
    int64_t bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : bad) if (n > LH_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        bad += (u & 0x7F800000u) == 0x7F800000u;
    }
    *count = bad;
    return LH_OK;
}

lh_status lh__cpu_set_precision(lh_backend *be, lh_dtype act) {
    if (act != LH_DTYPE_F32 && act != LH_DTYPE_F16 && act != LH_DTYPE_BF16)
        return LH_ERR_UNSUPPORTED;
    ((lh_cpu *)be->impl)->act = act;
    return LH_OK;
}

/* ---- The rounding front of each op ---- */

static lh_dtype act(const lh_backend *be) { return ((const lh_cpu *)be->impl)->act; }

/* Round out [n] after a successful op when activations are half. n is
 * unsigned: callers multiply sizes before knowing the op accepted them (a
 * refused op's product may wrap; it is then not used). */
static lh_status after(lh_backend *be, lh_status st, float *out, uint64_t n) {
    if (st != LH_OK || !out || act(be) == LH_DTYPE_F32) return st;
    return lh__cpu_round(be, out, (int64_t)n, act(be));
}

lh_status lh__cpu_r_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a,
                         int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                         int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
    lh_status st = lh__cpu_gemm(be, c, a, b, trans_a, trans_b, m, n, k, alpha, beta, batch,
                                stride_a, stride_b, stride_c);
    for (int64_t i = 0; i < batch && st == LH_OK && act(be) != LH_DTYPE_F32; i++)
        st = after(be, st, c + i * stride_c, (uint64_t)m * n);
    return st;
}

lh_status lh__cpu_r_linear(lh_backend *be, float *out, const float *x, const float *w,
                           const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    return after(be, lh__cpu_linear(be, out, x, w, bias, rows, n_in, n_out), out,
                 (uint64_t)rows * n_out);
}

lh_status lh__cpu_r_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                           const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                           int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    lh_status st = lh__cpu_conv2d(be, out, x, w, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st != LH_OK) return st; /* the sizes below are valid only for an accepted op */
    int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
    return after(be, st, out, (uint64_t)n * c_out * ho * wo);
}

lh_status lh__cpu_r_group_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                               const float *beta, int64_t n, int64_t c, int64_t hw,
                               int64_t groups, float eps, int silu) {
    return after(be, lh__cpu_group_norm(be, out, x, gamma, beta, n, c, hw, groups, eps, silu),
                 out, (uint64_t)n * c * hw);
}

lh_status lh__cpu_r_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                               const float *beta, int64_t rows, int64_t cols, float eps) {
    return after(be, lh__cpu_layer_norm(be, out, x, gamma, beta, rows, cols, eps), out,
                 (uint64_t)rows * cols);
}

/* lse is float32 statistics for the backward: never rounded. */
lh_status lh__cpu_r_attention(lh_backend *be, float *out, float *lse, const float *q,
                              const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                              int64_t nk, int64_t d, float scale, int causal) {
    return after(be,
                 lh__cpu_attention(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal),
                 out, (uint64_t)b * nq * heads * d);
}

lh_status lh__cpu_r_silu(lh_backend *be, float *out, const float *x, int64_t n) {
    return after(be, lh__cpu_silu(be, out, x, n), out, n);
}

lh_status lh__cpu_r_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return after(be, lh__cpu_gelu(be, out, x, n), out, n);
}

lh_status lh__cpu_r_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return after(be, lh__cpu_quick_gelu(be, out, x, n), out, n);
}

lh_status lh__cpu_r_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f) {
    return after(be, lh__cpu_geglu(be, out, x, rows, f), out, (uint64_t)rows * f);
}

lh_status lh__cpu_r_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    return after(be, lh__cpu_add(be, out, a, b, n), out, n);
}

lh_status lh__cpu_r_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    return after(be, lh__cpu_mul(be, out, a, b, n), out, n);
}

lh_status lh__cpu_r_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta,
                          const float *b, int64_t n) {
    return after(be, lh__cpu_axpby(be, out, alpha, a, beta, b, n), out, n);
}

lh_status lh__cpu_r_add_channel_bias(lh_backend *be, float *out, const float *x,
                                     const float *bias, int64_t outer, int64_t c, int64_t inner) {
    return after(be, lh__cpu_add_channel_bias(be, out, x, bias, outer, c, inner), out,
                 (uint64_t)outer * c * inner);
}

lh_status lh__cpu_r_timestep_embedding(lh_backend *be, float *out, const float *timesteps,
                                       int64_t n, int64_t dim, int flip_sin_to_cos,
                                       float downscale_freq_shift, float max_period) {
    return after(be, lh__cpu_timestep_embedding(be, out, timesteps, n, dim, flip_sin_to_cos,
                                                downscale_freq_shift, max_period),
                 out, (uint64_t)n * dim);
}

/* Layout ops (upsample, concat, transpose, split) only move values that
 * are already rounded: they need no front. */

lh_status lh__cpu_r_linear_backward(lh_backend *be, float *dx, float *dw, float *db,
                                    const float *dy, const float *x, const float *w, int64_t rows,
                                    int64_t n_in, int64_t n_out) {
    return after(be, lh__cpu_linear_backward(be, dx, dw, db, dy, x, w, rows, n_in, n_out), dx,
                 (uint64_t)rows * n_in);
}

lh_status lh__cpu_r_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db,
                                    const float *dy, const float *x, const float *w, int64_t n,
                                    int64_t c_in, int64_t h, int64_t wd, int64_t c_out,
                                    int64_t kh, int64_t kw, int stride, int pad) {
    return after(be, lh__cpu_conv2d_backward(be, dx, dw, db, dy, x, w, n, c_in, h, wd, c_out, kh,
                                             kw, stride, pad),
                 dx, (uint64_t)n * c_in * h * wd);
}

lh_status lh__cpu_r_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                        const float *dy, const float *x, const float *gamma,
                                        const float *beta, int64_t n, int64_t c, int64_t hw,
                                        int64_t groups, float eps, int silu) {
    return after(be, lh__cpu_group_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, beta, n, c,
                                                 hw, groups, eps, silu),
                 dx, (uint64_t)n * c * hw);
}

lh_status lh__cpu_r_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                        const float *dy, const float *x, const float *gamma,
                                        int64_t rows, int64_t cols, float eps) {
    return after(be, lh__cpu_layer_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, rows, cols,
                                                 eps),
                 dx, (uint64_t)rows * cols);
}

lh_status lh__cpu_r_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                       const float *dout, const float *out, const float *lse,
                                       const float *q, const float *k, const float *v, int64_t b,
                                       int64_t heads, int64_t nq, int64_t nk, int64_t d,
                                       float scale, int causal) {
    lh_status st = lh__cpu_attention_backward(be, dq, dk, dv, dout, out, lse, q, k, v, b, heads,
                                              nq, nk, d, scale, causal);
    st = after(be, st, dq, (uint64_t)b * nq * heads * d);
    st = after(be, st, dk, (uint64_t)b * nk * heads * d);
    return after(be, st, dv, (uint64_t)b * nk * heads * d);
}

lh_status lh__cpu_r_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                  int64_t n) {
    return after(be, lh__cpu_silu_backward(be, dx, dy, x, n), dx, n);
}

lh_status lh__cpu_r_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                  int64_t n) {
    return after(be, lh__cpu_gelu_backward(be, dx, dy, x, n), dx, n);
}

lh_status lh__cpu_r_quick_gelu_backward(lh_backend *be, float *dx, const float *dy,
                                        const float *x, int64_t n) {
    return after(be, lh__cpu_quick_gelu_backward(be, dx, dy, x, n), dx, n);
}

lh_status lh__cpu_r_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                   int64_t rows, int64_t f) {
    return after(be, lh__cpu_geglu_backward(be, dx, dy, x, rows, f), dx,
                 (uint64_t)rows * 2 * f);
}

lh_status lh__cpu_r_channel_bias_backward(lh_backend *be, float *dbias, const float *dy,
                                          int64_t outer, int64_t c, int64_t inner) {
    return after(be, lh__cpu_channel_bias_backward(be, dbias, dy, outer, c, inner), dbias,
                 (uint64_t)outer * c);
}

lh_status lh__cpu_r_upsample_nearest2x_backward(lh_backend *be, float *dx, const float *dy,
                                                int64_t n, int64_t c, int64_t h, int64_t w) {
    return after(be, lh__cpu_upsample_nearest2x_backward(be, dx, dy, n, c, h, w), dx,
                 (uint64_t)n * c * h * w);
}
