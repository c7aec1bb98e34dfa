/* Private to the cpu backend (kernels/cpu/): its state, the op entry points
 * the table in backend.c points at, size checks, a vectorisable exp, and
 * the scratch-size functions the tests use to bound memory. */
#ifndef LH_KERNELS_CPU_H
#define LH_KERNELS_CPU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../backend.h"

typedef struct lh_cpu {
    int threads;  /* OpenMP threads every parallel region uses (>= 1) */
    lh_dtype act; /* activation precision (set_precision): F32, F16 or BF16 */
} lh_cpu;

static inline int lh__cpu_threads(const lh_backend *be) {
    return ((const lh_cpu *)be->impl)->threads;
}

/* Function multiversioning for the hot loops of ops we write ourselves
 * (attention, exp-based activations, norms): one binary runs the AVX2/FMA or
 * AVX-512 clone where the CPU has it, baseline x86-64 elsewhere. OpenBLAS
 * does its own dispatch. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(LH_NO_CLONES)
#define LH_HOT __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#define LH_X86_DISPATCH 1 /* kernels with per-ISA register blocking pick at run time */
#else
#define LH_HOT
#define LH_X86_DISPATCH 0
#endif

/* Elementwise loops smaller than this run on the calling thread. */
#define LH_CPU_PAR_MIN 32768

/* ---- Size checks ---- */

/* *out = a * b; 0 on int64 overflow or a negative factor. */
static inline int lh__mul2(int64_t *out, int64_t a, int64_t b) {
    if (a < 0 || b < 0) return 0;
    return !__builtin_mul_overflow(a, b, out);
}
static inline int lh__mul3(int64_t *out, int64_t a, int64_t b, int64_t c) {
    int64_t t;
    return lh__mul2(&t, a, b) && lh__mul2(out, t, c);
}
static inline int lh__mul4(int64_t *out, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t t;
    return lh__mul3(&t, a, b, c) && lh__mul2(out, t, d);
}
/* Element count n of float32 also addressable in bytes. */
static inline int lh__bytes_ok(int64_t n) {
    return n >= 0 && (uint64_t)n <= (uint64_t)(SIZE_MAX / sizeof(float)) &&
           (uint64_t)n <= (uint64_t)(INT64_MAX / (int64_t)sizeof(float));
}

/* ---- Vectorisable exp ----
 * exp(x) for x in [-87, 88] with Cody-Waite range reduction and a degree-7
 * Taylor polynomial on |r| <= ln2/2 (truncation < 5e-9 relative; the result
 * is within a few ulp of expf). x < -87 gives 0, x > 88 gives exp(88), NaN
 * gives exp(-87): this is for softmax and sigmoid, not a general expf.
 * Branch-free, so loops calling it vectorise. */
static inline float lh__expf(float x) {
    float xc = x > -87.0f ? x : -87.0f;
    xc = xc < 88.0f ? xc : 88.0f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest */
    float n = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - n * 0.693359375f;  /* ln2 high part, exact in n * hi */
    r = r - n * -2.12194440e-4f;      /* ln2 low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    return x < -87.0f ? 0.0f : y;
}

/* ---- Op entry points (one file each; see backend.h for contracts) ---- */

lh_status lh__cpu_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a,
                       int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                       int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c);
lh_status lh__cpu_linear(lh_backend *be, float *out, const float *x, const float *w,
                         const float *bias, int64_t rows, int64_t n_in, int64_t n_out);
lh_status lh__cpu_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                         const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                         int64_t c_out, int64_t kh, int64_t kw, int stride, int pad);
lh_status lh__cpu_group_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                             const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups,
                             float eps, int silu);
lh_status lh__cpu_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                             const float *beta, int64_t rows, int64_t cols, float eps);
lh_status lh__cpu_attention(lh_backend *be, float *out, float *lse, const float *q,
                            const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                            int64_t nk, int64_t d, float scale, int causal);
lh_status lh__cpu_silu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f);
lh_status lh__cpu_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cpu_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cpu_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta,
                        const float *b, int64_t n);
lh_status lh__cpu_add_channel_bias(lh_backend *be, float *out, const float *x, const float *bias,
                                   int64_t outer, int64_t c, int64_t inner);
lh_status lh__cpu_upsample_nearest2x(lh_backend *be, float *out, const float *x, int64_t n,
                                     int64_t c, int64_t h, int64_t w);
lh_status lh__cpu_concat_channels(lh_backend *be, float *out, const float *a, const float *b,
                                  int64_t n, int64_t ca, int64_t cb, int64_t hw);
lh_status lh__cpu_transpose_c_hw(lh_backend *be, float *out, const float *x, int64_t n,
                                 int64_t c, int64_t hw);
lh_status lh__cpu_timestep_embedding(lh_backend *be, float *out, const float *timesteps,
                                     int64_t n, int64_t dim, int flip_sin_to_cos,
                                     float downscale_freq_shift, float max_period);

/* ---- For tests: scratch sizes and kernel choice ---- */

/* ---- Backward (backend.h) ---- */
lh_status lh__cpu_linear_backward(lh_backend *be, float *dx, float *dw, float *db, const float *dy,
                                  const float *x, const float *w, int64_t rows, int64_t n_in,
                                  int64_t n_out);
lh_status lh__cpu_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db,
                                  const float *dy, const float *x, const float *w, int64_t n,
                                  int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                                  int64_t kw, int stride, int pad);
lh_status lh__cpu_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                      const float *dy, const float *x, const float *gamma,
                                      const float *beta, int64_t n, int64_t c, int64_t hw,
                                      int64_t groups, float eps, int silu);
lh_status lh__cpu_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                      const float *dy, const float *x, const float *gamma,
                                      int64_t rows, int64_t cols, float eps);
lh_status lh__cpu_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                     const float *dout, const float *out, const float *lse,
                                     const float *q, const float *k, const float *v, int64_t b,
                                     int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale,
                                     int causal);
lh_status lh__cpu_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n);
lh_status lh__cpu_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n);
lh_status lh__cpu_quick_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                      int64_t n);
lh_status lh__cpu_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                 int64_t rows, int64_t f);
lh_status lh__cpu_channel_bias_backward(lh_backend *be, float *dbias, const float *dy,
                                        int64_t outer, int64_t c, int64_t inner);
lh_status lh__cpu_upsample_nearest2x_backward(lh_backend *be, float *dx, const float *dy,
                                              int64_t n, int64_t c, int64_t h, int64_t w);
lh_status lh__cpu_split_channels(lh_backend *be, float *a, float *b, const float *x, int64_t n,
                                 int64_t ca, int64_t cb, int64_t hw);

/* ---- Mixed precision (precision.c) ----
 * set_precision, round and count_nonfinite, and lh__cpu_r_<op>: <op> followed
 * by rounding what it writes to the activation precision. The table points
 * at the lh__cpu_r_ fronts; tests call the bare ops. */
lh_status lh__cpu_set_precision(lh_backend *be, lh_dtype act);
lh_status lh__cpu_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype);
lh_status lh__cpu_cast(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                       lh_dtype src_dtype, int64_t n);
lh_status lh__cpu_count_nonfinite(lh_backend *be, int64_t *count, const float *x, int64_t n);

/* ---- Training updates (train_ops.c) ---- */
lh_status lh__cpu_scale(lh_backend *be, float *x, int64_t n, float s);
lh_status lh__cpu_dropout(lh_backend *be, float *out, const float *x, int64_t n, uint64_t seed,
                          double p);
lh_status lh__cpu_dropout_backward(lh_backend *be, float *dx, const float *dxd, int64_t n,
                                   uint64_t seed, double p);
lh_status lh__cpu_scale_by(lh_backend *be, float *x, int64_t n, const float *s);
lh_status lh__cpu_sum_squares(lh_backend *be, double *out, const float *x, int64_t n);
lh_status lh__cpu_step_check(lh_backend *be, float *coef, int64_t *found, const double *sq,
                             int64_t n, const int64_t *counts, int64_t nc, float max_norm);
lh_status lh__cpu_mse_backward(lh_backend *be, float *dpred, double *sq, const float *pred,
                               const float *target, const double *coef, int64_t rows,
                               int64_t cols);
lh_status lh__cpu_adamw(lh_backend *be, float *param, float *exp_avg, float *exp_avg_sq,
                        const float *grad, int64_t n, const lh_adamw_coef *coef,
                        const int64_t *skip);
lh_status lh__cpu_copy(lh_backend *be, void *dst, const void *src, size_t bytes);
lh_status lh__cpu_r_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c);
lh_status lh__cpu_r_linear(lh_backend *be, float *out, const float *x, const float *w, const float *bias, int64_t rows, int64_t n_in, int64_t n_out);
lh_status lh__cpu_r_conv2d(lh_backend *be, float *out, const float *x, const float *w, const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride, int pad);
lh_status lh__cpu_r_group_norm(lh_backend *be, float *out, const float *x, const float *gamma, const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups, float eps, int silu);
lh_status lh__cpu_r_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma, const float *beta, int64_t rows, int64_t cols, float eps);
lh_status lh__cpu_r_attention(lh_backend *be, float *out, float *lse, const float *q, const float *k, const float *v, int64_t b, int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale, int causal);
lh_status lh__cpu_r_silu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_r_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_r_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cpu_r_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f);
lh_status lh__cpu_r_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cpu_r_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cpu_r_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta, const float *b, int64_t n);
lh_status lh__cpu_r_add_channel_bias(lh_backend *be, float *out, const float *x, const float *bias, int64_t outer, int64_t c, int64_t inner);
lh_status lh__cpu_r_timestep_embedding(lh_backend *be, float *out, const float *timesteps, int64_t n, int64_t dim, int flip_sin_to_cos, float downscale_freq_shift, float max_period);
lh_status lh__cpu_r_linear_backward(lh_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int64_t rows, int64_t n_in, int64_t n_out);
lh_status lh__cpu_r_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride, int pad);
lh_status lh__cpu_r_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *gamma, const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups, float eps, int silu);
lh_status lh__cpu_r_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *gamma, int64_t rows, int64_t cols, float eps);
lh_status lh__cpu_r_attention_backward(lh_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse, const float *q, const float *k, const float *v, int64_t b, int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale, int causal);
lh_status lh__cpu_r_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x, int64_t n);
lh_status lh__cpu_r_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x, int64_t n);
lh_status lh__cpu_r_quick_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x, int64_t n);
lh_status lh__cpu_r_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x, int64_t rows, int64_t f);
lh_status lh__cpu_r_channel_bias_backward(lh_backend *be, float *dbias, const float *dy, int64_t outer, int64_t c, int64_t inner);
lh_status lh__cpu_r_upsample_nearest2x_backward(lh_backend *be, float *dx, const float *dy, int64_t n, int64_t c, int64_t h, int64_t w);

/* Attention: per-thread tiles only, independent of nq and nk. */
size_t lh__cpu_attention_scratch_bytes(int64_t d, int threads);
/* Attention micro-kernels to use from now on (process-wide; LH_CPU_ISA_AUTO
 * picks the best the CPU has). LH_ERR_UNSUPPORTED if the CPU lacks it. */
enum { LH_CPU_ISA_AUTO, LH_CPU_ISA_GENERIC, LH_CPU_ISA_AVX2, LH_CPU_ISA_AVX512, LH_CPU_ISA_COUNT };
lh_status lh__cpu_attention_force_isa(int isa);
/* Conv2d: output pixels per tile and input channels per im2col chunk for
 * n images of hw_out output pixels on `threads`, and the op's scratch. */
void lh__cpu_conv2d_plan(int64_t *tile_pixels, int64_t *chunk_channels, int64_t n, int64_t c_in,
                         int64_t kh, int64_t kw, int64_t hw_out, int threads);
size_t lh__cpu_conv2d_scratch_bytes(int64_t n, int64_t c_in, int64_t kh, int64_t kw,
                                    int64_t hw_out, int threads);

#endif
