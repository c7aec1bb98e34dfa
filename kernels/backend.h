/* The compute backend interface: one table of function pointers per backend
 * (cpu, cuda), in the spirit of ggml's backends and llm.c's explicit kernels.
 * Every op takes its outputs first, then inputs, then weights, then sizes;
 * pointers are backend memory (host RAM for cpu, device memory for cuda).
 * Activations are float32; weights are float32 in backend memory (the cpu
 * backend widens f16/bf16 at upload; other backends may keep half storage
 * through `upload_weights`). kernels/cpu/ holds the reference C code every
 * other backend is tested against, op by op. */
#ifndef LH_KERNELS_BACKEND_H
#define LH_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "lorahost/plugin.h"

typedef struct lh_backend lh_backend;

/* One AdamW step's float32 coefficients (torch.optim.AdamW's single-tensor
 * path): see kernels/adamw.h and lh_adamw_coef_make in train/optim.h. */
typedef struct lh_adamw_coef {
    float decay;    /* 1 - lr * weight_decay */
    float w1;       /* 1 - beta1 */
    float b2, c2;   /* beta2, 1 - beta2 */
    float bc2s;     /* sqrt(1 - beta2^step) */
    float eps;
    float neg_step; /* -lr / (1 - beta1^step) */
    int decoupled;  /* weight_decay != 0 */
} lh_adamw_coef;

typedef struct lh_backend_ops {
    const char *name; /* "cpu", "cuda" */

    /* Frees the backend and everything it owns (lh_backend_destroy calls it). */
    void (*destroy)(lh_backend *be);

    /* ---- Memory ---- */
    /* NULL on failure. Memory is not zeroed. */
    void *(*alloc)(lh_backend *be, size_t bytes);
    void (*free)(lh_backend *be, void *ptr);
    lh_status (*upload)(lh_backend *be, void *dst, const void *src, size_t bytes);
    lh_status (*download)(lh_backend *be, void *dst, const void *src, size_t bytes);
    lh_status (*memset0)(lh_backend *be, void *dst, size_t bytes);
    /* n weights of `src_dtype` (F32, F16, BF16) from host memory to float32
     * backend memory. */
    lh_status (*upload_weights)(lh_backend *be, float *dst, const void *src, lh_dtype src_dtype,
                                size_t n);
    lh_status (*sync)(lh_backend *be);

    /* ---- Dense algebra (row-major) ---- */
    /* For b in [0, batch): C_b = alpha * op(A_b) op(B_b) + beta * C_b with
     * op(A_b) [M, K], op(B_b) [K, N], C_b [M, N]; X_b = X + b * stride_x. */
    lh_status (*gemm)(lh_backend *be, float *c, const float *a, const float *b, int trans_a,
                      int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                      int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c);
    /* torch.nn.Linear: out = x w^T + bias. */
    lh_status (*linear)(lh_backend *be, float *out,  /* [rows, n_out] */
                        const float *x,              /* [rows, n_in] */
                        const float *w,              /* [n_out, n_in] */
                        const float *bias,           /* [n_out] or NULL */
                        int64_t rows, int64_t n_in, int64_t n_out);

    /* Optional (NULL: the caller widens w with `cast` and calls linear):
     * linear with w held in wdt, a half type (F16 or BF16) that must be the
     * activation precision (set_precision; else LH_ERR_INVALID). The same
     * numbers as linear on w widened to float32; a device multiplies the
     * half weights as they are, with no float32 copy. */
    lh_status (*linear_hw)(lh_backend *be, float *out, /* [rows, n_out] */
                           const float *x,             /* [rows, n_in] */
                           const void *w, lh_dtype wdt, /* [n_out, n_in] */
                           const float *bias,           /* [n_out] or NULL */
                           int64_t rows, int64_t n_in, int64_t n_out);

    /* ---- Convolution (NCHW, groups = 1, square stride/pad, dilation 1) ---- */
    lh_status (*conv2d)(lh_backend *be, float *out, /* [n, c_out, h_out, w_out] */
                        const float *x,             /* [n, c_in, h, w] */
                        const float *w,             /* [c_out, c_in, kh, kw] */
                        const float *bias,          /* [c_out] or NULL */
                        int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out,
                        int64_t kh, int64_t kw, int stride, int pad);
    /* Optional, as linear_hw: conv2d with w held in wdt, the activation
     * precision (F16/BF16). A device convolves half tensors (float32
     * accumulation) and rounds its output to wdt before adding the bias,
     * as torch's half convolutions do: within the half tolerance of conv2d
     * on w widened, not its bits. LH_ERR_UNSUPPORTED, before anything runs,
     * where it cannot (no algorithm for the shape, or turned off): the
     * caller then widens w and calls conv2d. */
    lh_status (*conv2d_hw)(lh_backend *be, float *out, const float *x, const void *w,
                           lh_dtype wdt, const float *bias, int64_t n, int64_t c_in, int64_t h,
                           int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride,
                           int pad);

    /* ---- Normalisation (statistics in float32, two-pass) ---- */
    /* torch.nn.GroupNorm over [n, c, hw], then SiLU if `silu`. */
    lh_status (*group_norm)(lh_backend *be, float *out, /* [n, c, hw] */
                            const float *x,             /* [n, c, hw] */
                            const float *gamma, const float *beta, /* [c] */
                            int64_t n, int64_t c, int64_t hw, int64_t groups, float eps,
                            int silu);
    /* torch.nn.LayerNorm over the last axis. */
    lh_status (*layer_norm)(lh_backend *be, float *out, /* [rows, cols] */
                            const float *x,             /* [rows, cols] */
                            const float *gamma, const float *beta, /* [cols] */
                            int64_t rows, int64_t cols, float eps);

    /* ---- Attention ----
     * Scaled dot-product attention with heads interleaved in the last axis,
     * as linear projections produce them: q [b, nq, heads * d], k and v
     * [b, nk, heads * d], out [b, nq, heads * d]. softmax(scale q k^T) v per
     * head; `causal` masks key j > query i (CLIP's text encoder). Never
     * materialises a full [heads, nq, nk] matrix for large sizes. `lse`,
     * when not NULL, receives each row's float32 logsumexp, log sum_j
     * exp(scale q.k_j) over the keys the query sees, at ((batch * heads) +
     * head) * nq + query: what attention_backward needs (NULL costs nothing). */
    lh_status (*attention)(lh_backend *be, float *out, /* [b, nq, heads * d] */
                           float *lse,                 /* [b, heads, nq] or NULL */
                           const float *q, const float *k, const float *v, int64_t b,
                           int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale,
                           int causal);

    /* ---- Elementwise ---- */
    lh_status (*silu)(lh_backend *be, float *out, const float *x, int64_t n);
    lh_status (*gelu)(lh_backend *be, float *out, const float *x, int64_t n);       /* erf form */
    lh_status (*quick_gelu)(lh_backend *be, float *out, const float *x, int64_t n); /* x*sigmoid(1.702x) */
    /* diffusers GEGLU: x [rows, 2f] = [hidden | gate] -> out [rows, f] = hidden * gelu(gate). */
    lh_status (*geglu)(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f);
    /* out = a + b (out may alias a or b). */
    lh_status (*add)(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
    /* out = a * b elementwise (out may alias a or b). */
    lh_status (*mul)(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
    /* out = alpha * a + beta * b. */
    lh_status (*axpby)(lh_backend *be, float *out, float alpha, const float *a, float beta,
                       const float *b, int64_t n);
    /* (out may alias x.) out[i, j, :] = x[i, j, :] + bias[i, j]: adds bias [outer, c] broadcast
     * over `inner` elements: out[(o * c + j) * inner + k] += bias[o * c + j]
     * (time embeddings into NCHW: outer = n, c = channels, inner = h * w). */
    lh_status (*add_channel_bias)(lh_backend *be, float *out, const float *x, const float *bias,
                                  int64_t outer, int64_t c, int64_t inner);

    /* ---- Layout ---- */
    /* Nearest-neighbour 2x upsampling of [n, c, h, w] to [n, c, 2h, 2w]. */
    lh_status (*upsample_nearest2x)(lh_backend *be, float *out, const float *x, int64_t n,
                                    int64_t c, int64_t h, int64_t w);
    /* Concatenate along channels: [n, ca, hw] and [n, cb, hw] -> [n, ca + cb, hw]. */
    lh_status (*concat_channels)(lh_backend *be, float *out, const float *a, const float *b,
                                 int64_t n, int64_t ca, int64_t cb, int64_t hw);
    /* [n, c, hw] <-> [n, hw, c]. */
    lh_status (*transpose_c_hw)(lh_backend *be, float *out, const float *x, int64_t n, int64_t c,
                                int64_t hw);

    /* ---- Diffusion helpers ---- */
    /* diffusers get_timestep_embedding: out [n, dim] from timesteps [n] (host
     * memory), exponent = -ln(max_period) * i / (half - shift). */
    lh_status (*timestep_embedding)(lh_backend *be, float *out, const float *timesteps,
                                    int64_t n, int64_t dim, int flip_sin_to_cos,
                                    float downscale_freq_shift, float max_period);

    /* ---- Backward (training) ----
     * Each op takes the gradient of its forward's output (dy) and what the
     * forward read, and gives the gradients of its inputs. Input gradients
     * (dx, dq, ...) are WRITTEN; parameter gradients (dw, db, dgamma,
     * dbeta) are ACCUMULATED (+=) so a frozen weight simply passes NULL and
     * costs nothing. Any output pointer may be NULL (not wanted). Statistics
     * and softmax are recomputed from the inputs in float32, two-pass, as
     * the forwards do; memory stays bounded as in the forwards. */
    /* linear: dx [rows, n_in] = dy w; dw [n_out, n_in] += dy^T x; db [n_out] += sum_rows dy. */
    lh_status (*linear_backward)(lh_backend *be, float *dx, float *dw, float *db,
                                 const float *dy, /* [rows, n_out] */
                                 const float *x,  /* [rows, n_in] (for dw) */
                                 const float *w,  /* [n_out, n_in] (for dx) */
                                 int64_t rows, int64_t n_in, int64_t n_out);
    /* Optional, as linear_hw: linear_backward's dx and db with w held in
     * wdt (the activation precision); no dw: a half-held weight is frozen. */
    lh_status (*linear_backward_hw)(lh_backend *be, float *dx, float *db,
                                    const float *dy,              /* [rows, n_out] */
                                    const void *w, lh_dtype wdt,  /* [n_out, n_in] */
                                    int64_t rows, int64_t n_in, int64_t n_out);
    /* conv2d (as the forward: groups 1, square stride/pad): dx [n, c_in, h, w],
     * dw [c_out, c_in, kh, kw] +=, db [c_out] +=. */
    lh_status (*conv2d_backward)(lh_backend *be, float *dx, float *dw, float *db,
                                 const float *dy, /* [n, c_out, h_out, w_out] */
                                 const float *x,  /* [n, c_in, h, w] (for dw) */
                                 const float *w,  /* [c_out, c_in, kh, kw] (for dx) */
                                 int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out,
                                 int64_t kh, int64_t kw, int stride, int pad);
    /* Optional, as conv2d_hw: conv2d_backward's dx and db with w held in
     * wdt; no dw (a half-held weight is frozen). */
    lh_status (*conv2d_backward_hw)(lh_backend *be, float *dx, float *db, const float *dy,
                                    const void *w, lh_dtype wdt, int64_t n, int64_t c_in,
                                    int64_t h, int64_t wd, int64_t c_out, int64_t kh, int64_t kw,
                                    int stride, int pad);
    /* group_norm (+ SiLU if `silu`): dx [n, c, hw], dgamma/dbeta [c] +=. */
    lh_status (*group_norm_backward)(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                     const float *dy, const float *x, const float *gamma,
                                     const float *beta, int64_t n, int64_t c, int64_t hw,
                                     int64_t groups, float eps, int silu);
    /* layer_norm over the last axis: dx [rows, cols], dgamma/dbeta [cols] +=. */
    lh_status (*layer_norm_backward)(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                     const float *dy, const float *x, const float *gamma,
                                     int64_t rows, int64_t cols, float eps);
    /* attention (layout and masking as the forward; `out` is the forward's
     * output): dq [b, nq, heads*d], dk and dv [b, nk, heads*d]. `lse`, the
     * forward's row logsumexp [b, heads, nq], spares recomputing it; NULL
     * recomputes it. */
    lh_status (*attention_backward)(lh_backend *be, float *dq, float *dk, float *dv,
                                    const float *dout, const float *out,
                                    const float *lse, /* [b, heads, nq] or NULL */
                                    const float *q, const float *k, const float *v, int64_t b,
                                    int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale,
                                    int causal);
    /* Elementwise activations: dx = dy * f'(x). dx may alias dy. */
    lh_status (*silu_backward)(lh_backend *be, float *dx, const float *dy, const float *x,
                               int64_t n);
    lh_status (*gelu_backward)(lh_backend *be, float *dx, const float *dy, const float *x,
                               int64_t n);
    lh_status (*quick_gelu_backward)(lh_backend *be, float *dx, const float *dy, const float *x,
                                     int64_t n);
    /* GEGLU: dx [rows, 2f] from dy [rows, f] and x [rows, 2f]. */
    lh_status (*geglu_backward)(lh_backend *be, float *dx, const float *dy, const float *x,
                                int64_t rows, int64_t f);
    /* add_channel_bias: dbias [outer, c] (WRITTEN) = sum over `inner` of dy. */
    lh_status (*channel_bias_backward)(lh_backend *be, float *dbias, const float *dy,
                                       int64_t outer, int64_t c, int64_t inner);
    /* upsample_nearest2x: dx [n, c, h, w] = sum of each 2x2 block of dy [n, c, 2h, 2w]. */
    lh_status (*upsample_nearest2x_backward)(lh_backend *be, float *dx, const float *dy,
                                             int64_t n, int64_t c, int64_t h, int64_t w);
    /* concat_channels' backward: split x [n, ca + cb, hw] into a [n, ca, hw]
     * and b [n, cb, hw] (either may be NULL). */
    lh_status (*split_channels)(lh_backend *be, float *a, float *b, const float *x, int64_t n,
                                int64_t ca, int64_t cb, int64_t hw);

    /* ---- Mixed precision ----
     * set_precision: from now on every op's activations and activation
     * gradients (what it WRITES) are in `act`: F32 (the default), F16 (IEEE
     * half: a value past 65504 becomes +-Inf) or BF16. Ops still compute in
     * float32 inside (GEMM accumulation, norm statistics, softmax) from
     * inputs that are already rounded; accumulated parameter gradients stay
     * float32. The cpu backend keeps the rounded values in float32 buffers,
     * so only the numbers change, not the memory. */
    lh_status (*set_precision)(lh_backend *be, lh_dtype act);
    /* x [n] rounded in place to dtype (F16, BF16; F32 leaves it). */
    lh_status (*round)(lh_backend *be, float *x, int64_t n, lh_dtype dtype);
    /* n values of src_dtype at src into dst_dtype at dst (both backend
     * memory, not overlapping): F32 -> F16/BF16 rounds to nearest even as
     * `round` does (exact for values already rounded to that type), F16/BF16
     * -> F32 widens exactly, a type to itself copies. Base weights held in a
     * half type are widened so before the op that reads them. */
    lh_status (*cast)(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                      lh_dtype src_dtype, int64_t n);
    /* *count (host memory) = how many of x [n] are NaN or +-Inf. */
    lh_status (*count_nonfinite)(lh_backend *be, int64_t *count, const float *x, int64_t n);
    /* The same count into backend memory (one int64), without waiting for
     * it: many checks, one download. */
    lh_status (*count_nonfinite_into)(lh_backend *be, int64_t *count, const float *x, int64_t n);

    /* ---- Training updates (float32 parameters and gradients; no rounding
     * to the activation precision) ---- */
    /* x [n] *= s. */
    lh_status (*scale)(lh_backend *be, float *x, int64_t n, float s);
    /* x [n] *= *s, s one float in backend memory (step_check's coef). */
    lh_status (*scale_by)(lh_backend *be, float *x, int64_t n, const float *s);
    /* *out (backend memory, one double) = sum of x[i]^2, summed in double:
     * the gradient-norm clip's input and, non-finite, the overflow check. */
    lh_status (*sum_squares)(lh_backend *be, double *out, const float *x, int64_t n);
    /* The weighted mse loss's gradient, row by row: d = pred - target in
     * double, dpred = (float)(coef[r] * d), sq[r] = sum over the row of d^2
     * (backend memory, double). coef is host memory. */
    lh_status (*mse_backward)(lh_backend *be, float *dpred, /* [rows, cols] */
                              double *sq,                   /* [rows] */
                              const float *pred, const float *target, /* [rows, cols] */
                              const double *coef,                     /* [rows], host */
                              int64_t rows, int64_t cols);
    /* The optimizer step's go/no-go and gradient clip, from sum_squares'
     * sums, without the host: *found (backend, one int64) = 1 when any of
     * sq [n] is non-finite or any of counts [nc] (count_nonfinite_into's
     * counts, may be NULL when nc is 0) is non-zero, else 0; *coef
     * (backend, one float) = torch's clip_grad_norm_ multiplier
     * min(1, max_norm / (total + 1e-6)) in float32, total = the float32
     * 2-norm of the tensors' float32 norms sqrt(sq[i]) (summed in double in
     * index order); 1 when max_norm <= 0 or *found. */
    lh_status (*step_check)(lh_backend *be, float *coef, int64_t *found, const double *sq,
                            int64_t n, const int64_t *counts, int64_t nc, float max_norm);
    /* One AdamW update with the step's coefficients (lh_adamw_coef_make in
     * train/optim.h); the arithmetic of kernels/adamw.h. Nothing changes
     * when skip (backend, one int64; NULL: never) is non-zero: step_check's
     * found, so a skipped step needs no host decision. */
    lh_status (*adamw)(lh_backend *be, float *param, float *exp_avg, float *exp_avg_sq, /* [n] */
                       const float *grad,                                           /* [n] */
                       int64_t n, const lh_adamw_coef *coef, const int64_t *skip);
    /* dst = src, `bytes` of backend memory to backend memory (the ranges do
     * not overlap), without waiting for it. */
    lh_status (*copy)(lh_backend *be, void *dst, const void *src, size_t bytes);
    /* LoRA dropout on an adapter's input, float32 (not rounded to the
     * activation precision): out [n] = x * mask / (1 - p), the mask of
     * kernels/dropout.h for `seed`; 0 <= p < 1; out may be x. */
    lh_status (*dropout)(lh_backend *be, float *out, const float *x, int64_t n, uint64_t seed,
                         double p);
    /* Its backward: dx [n] += mask * dxd / (1 - p), the same mask. */
    lh_status (*dropout_backward)(lh_backend *be, float *dx, const float *dxd, int64_t n,
                                  uint64_t seed, double p);

    /* ---- Graphs (NULL in a backend without them: the cpu one) ----
     * graph_begin: the ops that follow are recorded, not run, until
     * graph_end, which ends the recording whatever happened and makes
     * *graph from it. Ops that wait for the device or read host memory
     * (upload, download, sync, timestep_embedding, count_nonfinite) fail
     * while recording; a caller whose recorded ops failed frees the graph
     * (if one was made) and runs the ops directly. graph_launch runs the
     * recorded ops again, on the pointers and sizes they were given and
     * whatever those buffers hold then; memory the recorded ops allocated
     * (or freed) stays theirs until graph_free, but buffers allocated
     * before graph_begin must outlive the graph. graph_begin may refuse
     * (LORAHOST_CUDA_GRAPHS=0 on cuda). */
    lh_status (*graph_begin)(lh_backend *be);
    lh_status (*graph_end)(lh_backend *be, void **graph);
    lh_status (*graph_launch)(lh_backend *be, void *graph);
    void (*graph_free)(lh_backend *be, void *graph);
} lh_backend_ops;

struct lh_backend {
    const lh_backend_ops *ops;
    void *impl; /* backend-private state */
};

/* The table's layout: a separately built backend module (the cuda one)
 * exports lh_backend_<name>_abi() returning this, and the loader refuses a
 * module whose value differs (a stale build read through a changed table
 * would call the wrong ops). Bump the version when an op's signature or
 * the order of the table changes. */
#define LH_BACKEND_ABI_VERSION 5u
static inline uint32_t lh_backend_abi(void) {
    return LH_BACKEND_ABI_VERSION << 16 | (uint32_t)sizeof(lh_backend_ops);
}

/* The cpu backend (OpenBLAS GEMM, OpenMP across `threads`, 0 = all cores). */
LH_API lh_status lh_backend_cpu_create(lh_backend **out, int threads, char *err,
                                       size_t err_size);
LH_API void lh_backend_destroy(lh_backend *be);

#endif
