/* Private to the cuda backend (kernels/cuda/): its state, the op entry
 * points the table in backend.cu points at, error checks and launch
 * helpers. The backend is a module of its own (lh_backend_cuda.so), loaded
 * by host/backend_load.c only when asked for, so lorahost runs where the
 * CUDA libraries are absent. Every op matches kernels/cpu/, the reference,
 * within the parity suite's tolerances (tests/test_cuda_parity_*.c). */
#ifndef LH_KERNELS_CUDA_H
#define LH_KERNELS_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdint.h>

#include "../backend.h"

#define LH_CUDA_CONV_CACHE 256

/* A cuDNN algorithm chosen once per convolution shape (and direction). */
typedef struct lh_cuda_conv_algo {
    int64_t key[10]; /* n, c_in, h, w, c_out, kh, kw, stride, pad, direction */
    int algo;
    size_t workspace;
} lh_cuda_conv_algo;

/* A device allocation; freed ones are kept for reuse by an allocation of
 * the same (rounded) size, so a denoising loop that allocates the same
 * activations every step calls cudaMalloc only in its first step. */
typedef struct lh_cuda_block {
    void *ptr;
    size_t bytes;
    int used;
    int held;     /* graphs whose recording allocated or freed it: not reused until 0 */
    unsigned rec; /* the last recording that counted it in held */
} lh_cuda_block;

/* A workspace outgrown while graphs recorded on it were alive. */
typedef struct lh_cuda_retired {
    void *ptr;
    int refs; /* live graphs recorded on it */
} lh_cuda_retired;

/* Pinned staging for small uploads: LH_CUDA_STAGE_SLOTS slots of
 * LH_CUDA_STAGE_BYTES, taken in turn; a slot is written again only after
 * the copy out of it ran (its event). */
#define LH_CUDA_STAGE_SLOTS 8
#define LH_CUDA_STAGE_BYTES ((size_t)1 << 20)

/* cuBLAS's own workspace (cublasSetWorkspace), so a recorded GEMM never
 * makes cuBLAS allocate: 32 MiB, what cuBLAS takes on Hopper. */
#define LH_CUDA_BLAS_WORKSPACE ((size_t)32 << 20)

/* LORAHOST_CUDA_ATTENTION: which kernel runs the attention forward */
enum {
    LH_CUDA_ATT_AUTO,  /* "auto" (default): tensor cores under F16/BF16, else flash */
    LH_CUDA_ATT_FLASH, /* "flash": attention.cu's float32 kernel always */
    LH_CUDA_ATT_GEMM   /* "gemm": cuBLAS products around a softmax (attention_gemm.cu) */
};

/* LH_CUDA_PROFILE=1 (profile.cu): the ops the table times, and those
 * after which the host has waited for the device. */
#define LH_CUDA_PROF_TIMED(X)                                                                      \
    X(memset0) X(gemm) X(linear) X(linear_hw) X(conv2d) X(conv2d_hw) X(group_norm) X(layer_norm)   \
    X(attention) X(silu) X(gelu) X(quick_gelu) X(geglu) X(add) X(mul) X(axpby) X(add_channel_bias) \
    X(upsample_nearest2x) X(concat_channels) X(transpose_c_hw) X(timestep_embedding)               \
    X(linear_backward) X(linear_backward_hw) X(conv2d_backward) X(conv2d_backward_hw)              \
    X(group_norm_backward) X(layer_norm_backward) X(attention_backward) X(silu_backward)           \
    X(gelu_backward) X(quick_gelu_backward) X(geglu_backward) X(channel_bias_backward)             \
    X(upsample_nearest2x_backward) X(split_channels) X(round) X(cast) X(count_nonfinite_into)      \
    X(scale) X(scale_by) X(sum_squares) X(mse_backward) X(step_check) X(adamw) X(copy) X(dropout)  \
    X(dropout_backward)
#define LH_CUDA_PROF_WAITS(X) X(upload) X(upload_weights) X(download) X(sync) X(count_nonfinite)

enum {
#define LH_CUDA_PROF_ENUM(name) LH_CUDA_PROF_##name,
    LH_CUDA_PROF_TIMED(LH_CUDA_PROF_ENUM)
#undef LH_CUDA_PROF_ENUM
    LH_CUDA_PROF_N,
    /* parts of the ops above, timed inside them */
    LH_CUDA_PROF_IN_CAST = LH_CUDA_PROF_N, /* operand casts to / from the half type */
    LH_CUDA_PROF_IN_WIDEN,                 /* half convolution outputs widened */
    LH_CUDA_PROF_IN_ROUND,                 /* rounding passes after ops */
    LH_CUDA_PROF_CATS
};

typedef struct lh_cuda_prof lh_cuda_prof;

typedef struct lh_cuda {
    int device;
    lh_cuda_block *blocks;
    size_t n_blocks, cap_blocks;
    size_t bytes_used, bytes_peak, bytes_held; /* in use, its peak, held from CUDA */
    cudaStream_t stream; /* every op runs on this one stream */
    cublasHandle_t cublas;
    cudnnHandle_t cudnn;
    lh_dtype act;        /* activation precision (set_precision) */
    int tf32;            /* GEMMs and convolutions may use TF32 (LORAHOST_CUDA_TF32=1) */
    int att_mode;        /* the attention forward: LH_CUDA_ATT_* (LORAHOST_CUDA_ATTENTION) */
    int conv_one_image;  /* LH_CUDA_CONV_ONE_IMAGE=1: cuDNN gets one image a call (tests) */
    int half_conv;       /* conv2d_hw convolves half tensors (LORAHOST_CUDA_HALF_CONV, default 1) */
    void *workspace;     /* cuDNN / scratch; grows; given back when cudaMalloc runs out */
    size_t workspace_bytes;
    int workspace_refs;  /* live graphs recorded on the workspace */
    lh_cuda_retired *retired; /* outgrown workspaces live graphs still use */
    size_t n_retired;
    void *blas_workspace; /* LH_CUDA_BLAS_WORKSPACE bytes */
    unsigned char *stage; /* pinned, LH_CUDA_STAGE_SLOTS * LH_CUDA_STAGE_BYTES; NULL: none */
    cudaEvent_t stage_done[LH_CUDA_STAGE_SLOTS];
    int stage_pending[LH_CUDA_STAGE_SLOTS], stage_next;
    /* graphs (graph.cu) */
    int graphs_off;   /* LORAHOST_CUDA_GRAPHS=0 */
    int recording;    /* between graph_begin and graph_end */
    unsigned rec_serial; /* the current (or last) recording */
    void **rec_blocks; /* what alloc handed out or free took back while recording */
    size_t n_rec, cap_rec;
    lh_cuda_conv_algo conv[LH_CUDA_CONV_CACHE];
    int n_conv;
    lh_cuda_prof *prof;  /* LH_CUDA_PROFILE=1; NULL: off */
    char last_error[256];
} lh_cuda;

static inline lh_cuda *lh__cuda(const lh_backend *be) { return (lh_cuda *)be->impl; }

#ifdef __cplusplus
extern "C" {
#endif

/* Record what failed (the backend's last error) and return LH_ERR_BACKEND. */
lh_status lh__cuda_fail(lh_backend *be, const char *what, const char *detail);
lh_status lh__cuda_check(lh_backend *be, cudaError_t e, const char *what);
lh_status lh__cuda_check_blas(lh_backend *be, cublasStatus_t s, const char *what);
lh_status lh__cuda_check_dnn(lh_backend *be, cudnnStatus_t s, const char *what);
/* The kernel launch just made on the stream. */
lh_status lh__cuda_launched(lh_backend *be, const char *what);
/* Scratch of at least `bytes` (valid until the next call). */
lh_status lh__cuda_scratch(lh_backend *be, size_t bytes, void **out);
/* LH_ERR_BACKEND naming `what` while a graph is being recorded (an op the
 * recording cannot hold: one that waits for the device or reads host
 * memory), else LH_OK. */
lh_status lh__cuda_not_recording(lh_backend *be, const char *what);
/* dst (device) = src (host), `bytes`, queued without waiting for the
 * device: through a pinned staging slot when it fits one; src may be freed
 * on return. */
lh_status lh__cuda_upload_async(lh_backend *be, void *dst, const void *src, size_t bytes);
/* One graph fewer holds the blocks at ptrs (a graph's, freed). */
void lh__cuda_unhold(lh_cuda *cu, void *const *ptrs, size_t n);
/* A graph recorded on workspace ws (may be NULL) was freed: ws is freed
 * when it was retired and no other graph uses it. */
void lh__cuda_workspace_unref(lh_cuda *cu, void *ws);
/* The graph ops of the table (graph.cu). */
lh_status lh__cuda_graph_begin(lh_backend *be);
lh_status lh__cuda_graph_end(lh_backend *be, void **graph);
lh_status lh__cuda_graph_launch(lh_backend *be, void *graph);
void lh__cuda_graph_free(lh_backend *be, void *graph);
/* The cast op (kernels/backend.h): n values of src_dtype into dst_dtype,
 * both device memory, queued on the stream; the half conversions of the
 * GEMM and convolution operands go through it too. */
lh_status lh__cuda_cast(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                        lh_dtype src_dtype, int64_t n);

/* LH_CUDA_PROFILE=1 (profile.cu): the device time of each op of the
 * table, summed by op and printed to stderr by lh__cuda_prof_finish. NULL
 * *out when it cannot be set up (said on stderr): the backend runs
 * untimed. */
void lh__cuda_prof_create(lh_cuda *cu, lh_cuda_prof **out);
/* Around an op: begin says whether it is timed (end must follow then,
 * with the op's status: only a successful op is counted). */
int lh__cuda_prof_begin(lh_backend *be);
void lh__cuda_prof_end(lh_backend *be, int op, lh_status st);
/* Before an op that waits for the device: the batch ends. */
void lh__cuda_prof_waited(lh_backend *be);
/* Around a part of the timed op (LH_CUDA_PROF_IN_*): begin gives a slot
 * (0: not timed), end takes it back with the part's status. */
int lh__cuda_prof_inner_begin(lh_backend *be);
void lh__cuda_prof_inner_end(lh_backend *be, int slot, int cat, lh_status st);
/* lh__cuda_cast inside an op (the GEMMs' and convolutions' operands),
 * timed as LH_CUDA_PROF_IN_CAST under LH_CUDA_PROFILE. */
lh_status lh__cuda_cast_in(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                           lh_dtype src_dtype, int64_t n);
/* The table of times so far (waits for the device), then frees it all. */
void lh__cuda_prof_finish(lh_cuda *cu);

/* Round out [n] to the activation precision after a successful op. */
lh_status lh__cuda_after(lh_backend *be, lh_status st, float *out, uint64_t n);

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
/* v as the activation precision `act` (an lh_dtype) holds it: what
 * lh__cuda_after's pass would leave, fused into an op's own store (F16 and
 * BF16 round to nearest even, F16 overflows to +-Inf; F32 keeps v). */
static __device__ __forceinline__ float lh__cu_act(float v, int act) {
    return act == LH_DTYPE_F16    ? __half2float(__float2half_rn(v))
           : act == LH_DTYPE_BF16 ? __bfloat162float(__float2bfloat16_rn(v))
                                  : v;
}
#endif

/* Grid size for n elements at `block` threads, capped for grid-stride loops. */
static inline unsigned lh__cuda_grid(int64_t n, int block) {
    int64_t g = (n + block - 1) / block;
    if (g < 1) g = 1;
    if (g > 65535LL * 8) g = 65535LL * 8;
    return (unsigned)g;
}

/* ---- Ops (the table's entries; signatures as in kernels/backend.h) ---- */
lh_status lh__cuda_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a,
                        int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                        int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c);
lh_status lh__cuda_linear(lh_backend *be, float *out, const float *x, const float *w,
                          const float *bias, int64_t rows, int64_t n_in, int64_t n_out);
lh_status lh__cuda_linear_backward(lh_backend *be, float *dx, float *dw, float *db,
                                   const float *dy, const float *x, const float *w, int64_t rows,
                                   int64_t n_in, int64_t n_out);
lh_status lh__cuda_linear_hw(lh_backend *be, float *out, const float *x, const void *w,
                             lh_dtype wdt, const float *bias, int64_t rows, int64_t n_in,
                             int64_t n_out);
lh_status lh__cuda_linear_backward_hw(lh_backend *be, float *dx, float *db, const float *dy,
                                      const void *w, lh_dtype wdt, int64_t rows, int64_t n_in,
                                      int64_t n_out);
lh_status lh__cuda_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                          const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                          int64_t c_out, int64_t kh, int64_t kw, int stride, int pad);
lh_status lh__cuda_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db,
                                   const float *dy, const float *x, const float *w, int64_t n,
                                   int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                                   int64_t kw, int stride, int pad);
lh_status lh__cuda_conv2d_hw(lh_backend *be, float *out, const float *x, const void *w,
                             lh_dtype wdt, const float *bias, int64_t n, int64_t c_in, int64_t h,
                             int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride,
                             int pad);
lh_status lh__cuda_conv2d_backward_hw(lh_backend *be, float *dx, float *db, const float *dy,
                                      const void *w, lh_dtype wdt, int64_t n, int64_t c_in,
                                      int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                                      int64_t kw, int stride, int pad);
lh_status lh__cuda_group_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                              const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups,
                              float eps, int silu);
lh_status lh__cuda_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                              const float *beta, int64_t rows, int64_t cols, float eps);
lh_status lh__cuda_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                       const float *dy, const float *x, const float *gamma,
                                       const float *beta, int64_t n, int64_t c, int64_t hw,
                                       int64_t groups, float eps, int silu);
lh_status lh__cuda_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                       const float *dy, const float *x, const float *gamma,
                                       int64_t rows, int64_t cols, float eps);
/* The attention forward as two batched cuBLAS products around a softmax
 * kernel (attention_gemm.cu); LH_ERR_UNSUPPORTED for what it does not take
 * (the caller then runs the flash kernel). */
/* attention_tc.cu. The forward: LH_ERR_UNSUPPORTED when act, d or the
 * device's shared memory do not suit it (the caller runs attention.cu's
 * kernel). The backward takes lse and D = rowsum(dO * O) [b, heads, nq]
 * from the caller and sets *dq, and *dk and *dv, to NULL for what it
 * computed; the caller computes the rest. */
lh_status lh__cuda_attention_tc(lh_backend *be, float *out, float *lse, const float *q,
                                const float *k, const float *v, int64_t b, int64_t heads,
                                int64_t nq, int64_t nk, int64_t d, float scale, int causal,
                                lh_dtype act);
lh_status lh__cuda_attention_tc_backward(lh_backend *be, float **dq, float **dk, float **dv,
                                         const float *dout, const float *lse, const float *dd,
                                         const float *q, const float *k, const float *v,
                                         int64_t b, int64_t heads, int64_t nq, int64_t nk,
                                         int64_t d, float scale, int causal, lh_dtype act);
lh_status lh__cuda_attention_gemm(lh_backend *be, float *out, float *lse, const float *q,
                                  const float *k, const float *v, int64_t b, int64_t heads,
                                  int64_t nq, int64_t nk, int64_t d, float scale, int causal);
lh_status lh__cuda_attention(lh_backend *be, float *out, float *lse, const float *q,
                             const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                             int64_t nk, int64_t d, float scale, int causal);
lh_status lh__cuda_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                      const float *dout, const float *out, const float *lse,
                                      const float *q, const float *k, const float *v, int64_t b,
                                      int64_t heads, int64_t nq, int64_t nk, int64_t d,
                                      float scale, int causal);
lh_status lh__cuda_silu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cuda_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cuda_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n);
lh_status lh__cuda_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f);
lh_status lh__cuda_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cuda_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n);
lh_status lh__cuda_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta,
                         const float *b, int64_t n);
lh_status lh__cuda_add_channel_bias(lh_backend *be, float *out, const float *x, const float *bias,
                                    int64_t outer, int64_t c, int64_t inner);
lh_status lh__cuda_timestep_embedding(lh_backend *be, float *out, const float *timesteps,
                                      int64_t n, int64_t dim, int flip_sin_to_cos,
                                      float downscale_freq_shift, float max_period);
lh_status lh__cuda_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                 int64_t n);
lh_status lh__cuda_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                 int64_t n);
lh_status lh__cuda_quick_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                       int64_t n);
lh_status lh__cuda_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                  int64_t rows, int64_t f);
lh_status lh__cuda_channel_bias_backward(lh_backend *be, float *dbias, const float *dy,
                                         int64_t outer, int64_t c, int64_t inner);
lh_status lh__cuda_upsample_nearest2x(lh_backend *be, float *out, const float *x, int64_t n,
                                      int64_t c, int64_t h, int64_t w);
lh_status lh__cuda_upsample_nearest2x_backward(lh_backend *be, float *dx, const float *dy,
                                               int64_t n, int64_t c, int64_t h, int64_t w);
lh_status lh__cuda_concat_channels(lh_backend *be, float *out, const float *a, const float *b,
                                   int64_t n, int64_t ca, int64_t cb, int64_t hw);
lh_status lh__cuda_split_channels(lh_backend *be, float *a, float *b, const float *x, int64_t n,
                                  int64_t ca, int64_t cb, int64_t hw);
lh_status lh__cuda_transpose_c_hw(lh_backend *be, float *out, const float *x, int64_t n,
                                  int64_t c, int64_t hw);
lh_status lh__cuda_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype);
lh_status lh__cuda_count_nonfinite(lh_backend *be, int64_t *count, const float *x, int64_t n);
/* Training updates (train_ops.cu) */
lh_status lh__cuda_scale(lh_backend *be, float *x, int64_t n, float s);
lh_status lh__cuda_dropout(lh_backend *be, float *out, const float *x, int64_t n, uint64_t seed,
                           double p);
lh_status lh__cuda_dropout_backward(lh_backend *be, float *dx, const float *dxd, int64_t n,
                                    uint64_t seed, double p);
lh_status lh__cuda_scale_by(lh_backend *be, float *x, int64_t n, const float *s);
lh_status lh__cuda_sum_squares(lh_backend *be, double *out, const float *x, int64_t n);
lh_status lh__cuda_step_check(lh_backend *be, float *coef, int64_t *found, const double *sq,
                              int64_t n, const int64_t *counts, int64_t nc, float max_norm);
lh_status lh__cuda_mse_backward(lh_backend *be, float *dpred, double *sq, const float *pred,
                                const float *target, const double *coef, int64_t rows,
                                int64_t cols);
lh_status lh__cuda_adamw(lh_backend *be, float *param, float *exp_avg, float *exp_avg_sq,
                         const float *grad, int64_t n, const lh_adamw_coef *coef,
                         const int64_t *skip);
lh_status lh__cuda_copy(lh_backend *be, void *dst, const void *src, size_t bytes);

/* The module's entry point (dlsym'd by host/backend_load.c): the cuda
 * backend on `device`. Fails (nothing left allocated) with a message when
 * there is no device or a library call fails. */
__attribute__((visibility("default"))) lh_status lh_backend_cuda_create(lh_backend **out,
                                                                        int device, char *err,
                                                                        size_t err_size);
/* lh_backend_abi() as this module was built: the loader refuses a module
 * built against another backend table. */
__attribute__((visibility("default"))) uint32_t lh_backend_cuda_abi(void);

#ifdef __cplusplus
}
#endif

#endif
