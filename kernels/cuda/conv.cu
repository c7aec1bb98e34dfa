/* 2-D convolution (NCHW float32, groups 1, square stride/pad, dilation 1)
 * and its backward on cuDNN's legacy convolution API. The algorithm of each
 * shape and direction comes from cuDNN's heuristics (the _v7 queries: no
 * trial runs, so no buffer is written while choosing) once, and is cached in
 * lh_cuda.conv[]. FP32 math (CUDNN_FMA_MATH: cuDNN's default math would
 * allow TF32 on sm_80+) unless lh_cuda.tf32 or half activations
 * (conv_tf32); no FFT or Winograd transform
 * while another algorithm serves. Bias and its gradient are our kernels;
 * the bias gradient is a per-channel sum in double, no atomics. cuDNN's
 * tensors hold fewer than 2^31 elements: a batch whose input or output
 * would not is convolved a chunk of images at a time (the VAE decoding 8
 * images at 1024x1024: [8, 256, 1024, 1024] is 2^31).
 *
 * conv2d_hw / conv2d_backward_hw (a frozen weight held in the F16/BF16
 * activation type): the activations, already rounded to that type, are
 * converted to it in scratch and cuDNN convolves half tensors with
 * float32 accumulation on the tensor cores, as PyTorch's fp16 convolutions
 * do; its half output is widened with the bias added and rounded once
 * more (torch adds the bias in half too). LORAHOST_CUDA_HALF_CONV=0, or
 * cuDNN without an algorithm for the half shape, answers
 * LH_ERR_UNSUPPORTED before anything runs, and the caller widens the
 * weight and calls conv2d instead. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits.h>
#include <string.h>

#include "block_reduce.cuh"
#include "cuda.h"
#include "op_checks.h"

enum { CONV_FWD, CONV_BWD_DATA, CONV_BWD_FILTER };

/* Whether TF32 tensor-core math may run: asked for (LORAHOST_CUDA_TF32), or
 * activations in F16/BF16, whose values (10 and 7 mantissa bits, within
 * float32's exponent range) TF32 holds exactly, so the math changes no
 * rounded input and still accumulates in float32. */
static int conv_tf32(const lh_cuda *cu) {
    return cu->tf32 || cu->act == LH_DTYPE_F16 || cu->act == LH_DTYPE_BF16;
}

/* Algorithms asking for more workspace are taken only when no other fits. */
#define CONV_WS_PREFER ((size_t)1 << 30)

/* ---- Kernels ---- */

/* out [n, c, hw] = bias[ch] (0 without bias) if `set`, else out += bias[ch];
 * stored in the activation precision act (lh__cu_act). */
static __global__ void conv_bias(float *out, const float *bias, int64_t c, int64_t hw,
                                 int64_t total, int set, int act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = bias ? bias[i / hw % c] : 0.0f;
        out[i] = lh__cu_act(set ? v : out[i] + v, act);
    }
}

/* db [c] += sum over images and pixels of dy [n, c, hw]; one block per channel. */
static __global__ void conv_bias_grad(float *db, const float *dy, int64_t n, int64_t c,
                                      int64_t hw) {
    __shared__ double shm[32];
    int64_t co = blockIdx.x, len = n * hw;
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
        acc += (double)dy[(i / hw * c + co) * hw + i % hw];
    acc = lh__block_sum(acc, shm);
    if (threadIdx.x == 0) db[co] += (float)acc;
}

/* out [n, c, hw] = act(y + bias[ch]) (bias NULL: act(y)), y the half
 * output of a convolution. */
template <typename T>
static __global__ void conv_from_half(float *out, const T *y, const float *bias, int64_t c,
                                      int64_t hw, int64_t total, int act) {
    LH_CU_FOR(i, total) {
        float v = (float)y[i];
        out[i] = lh__cu_act(bias ? v + bias[i / hw % c] : v, act);
    }
}

/* Images per cuDNN call: the most whose input (in_img elements each) and
 * output (out_img each) stay within INT_MAX elements, at most n; 0 when
 * one image is already too big. */
static int64_t conv_chunk(const lh_cuda *cu, int64_t n, int64_t in_img, int64_t out_img) {
    int64_t per = in_img > out_img ? in_img : out_img;
    int64_t nb = per > 0 ? INT_MAX / per : n;
    if (cu->conv_one_image && nb > 1) nb = 1; /* the parity suite's check of the chunking */
    return nb < n ? nb : n;
}

/* ---- Descriptors ---- */

typedef struct conv_descs {
    cudnnTensorDescriptor_t x, y; /* [n, c_in, h, w], [n, c_out, ho, wo] */
    cudnnFilterDescriptor_t w;    /* [c_out, c_in, kh, kw] */
    cudnnConvolutionDescriptor_t conv;
} conv_descs;

static void descs_destroy(conv_descs *d) {
    if (d->x) cudnnDestroyTensorDescriptor(d->x);
    if (d->y) cudnnDestroyTensorDescriptor(d->y);
    if (d->w) cudnnDestroyFilterDescriptor(d->w);
    if (d->conv) cudnnDestroyConvolutionDescriptor(d->conv);
    memset(d, 0, sizeof *d);
}

/* s = {n, c_in, h, w, c_out, kh, kw, stride, pad}, each within int. On
 * failure everything made so far is destroyed. */
static lh_status descs_create(lh_backend *be, conv_descs *d, const int64_t *s, int64_t ho,
                              int64_t wo, cudnnDataType_t dt) {
    memset(d, 0, sizeof *d);
    lh_status st;
    cudnnMathType_t math = dt != CUDNN_DATA_FLOAT        ? CUDNN_TENSOR_OP_MATH
                           : conv_tf32(lh__cuda(be)) ? CUDNN_DEFAULT_MATH
                                                     : CUDNN_FMA_MATH;
    if ((st = lh__cuda_check_dnn(be, cudnnCreateTensorDescriptor(&d->x), "conv2d: descriptor")) ||
        (st = lh__cuda_check_dnn(be, cudnnCreateTensorDescriptor(&d->y), "conv2d: descriptor")) ||
        (st = lh__cuda_check_dnn(be, cudnnCreateFilterDescriptor(&d->w), "conv2d: descriptor")) ||
        (st = lh__cuda_check_dnn(be, cudnnCreateConvolutionDescriptor(&d->conv),
                                 "conv2d: descriptor")) ||
        (st = lh__cuda_check_dnn(be,
                                 cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, dt,
                                                            (int)s[0], (int)s[1],
                                                            (int)s[2], (int)s[3]),
                                 "conv2d: input descriptor")) ||
        (st = lh__cuda_check_dnn(be,
                                 cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, dt,
                                                            (int)s[0], (int)s[4],
                                                            (int)ho, (int)wo),
                                 "conv2d: output descriptor")) ||
        (st = lh__cuda_check_dnn(be,
                                 cudnnSetFilter4dDescriptor(d->w, dt, CUDNN_TENSOR_NCHW,
                                                            (int)s[4],
                                                            (int)s[1], (int)s[5], (int)s[6]),
                                 "conv2d: filter descriptor")) ||
        (st = lh__cuda_check_dnn(be,
                                 cudnnSetConvolution2dDescriptor(
                                     d->conv, (int)s[8], (int)s[8], (int)s[7], (int)s[7], 1, 1,
                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                                 "conv2d: convolution descriptor")) ||
        (st = lh__cuda_check_dnn(be, cudnnSetConvolutionMathType(d->conv, math),
                                 "conv2d: math type")))
        descs_destroy(d);
    return st;
}

/* ---- Algorithm choice ---- */

/* FFT and Winograd transforms round more than a direct product (and under
 * TF32 they would cut transformed values, not the inputs): they come last,
 * so that FP32 results stay within the parity suite's 1e-5 of the cpu's
 * im2col GEMM. */
static int exact_algo(cudnnConvolutionFwdAlgo_t a) {
    return a != CUDNN_CONVOLUTION_FWD_ALGO_FFT && a != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING &&
           a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD &&
           a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
static int exact_algo(cudnnConvolutionBwdDataAlgo_t a) {
    return a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT &&
           a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING &&
           a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD &&
           a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
static int exact_algo(cudnnConvolutionBwdFilterAlgo_t a) {
    return a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT &&
           a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING &&
           a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

/* Index of the heuristics' first (best ranked) usable result: successful;
 * not a tensor-op result when TF32 is off (FMA or default math: the
 * descriptor is set to FMA math either way); an exact algorithm;
 * deterministic; workspace within CONV_WS_PREFER. The wishes are dropped
 * from the last when no result has them all; -1 if none succeeded. */
template <typename P> static int pick_algo(const P *perf, int got, int tf32) {
    for (int need = 4; need >= 0; need--) {
        for (int i = 0; i < got; i++) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
            if (need > 0 && !tf32 && perf[i].mathType != CUDNN_FMA_MATH &&
                perf[i].mathType != CUDNN_DEFAULT_MATH)
                continue;
            if (need > 1 && !exact_algo(perf[i].algo)) continue;
            if (need > 2 && perf[i].memory > CONV_WS_PREFER) continue;
            if (need > 3 && perf[i].determinism != CUDNN_DETERMINISTIC) continue;
            return i;
        }
    }
    return -1;
}

/* The cached (algorithm, math type, workspace) for shape s and direction
 * `dir`, asking cuDNN's heuristics on a miss. The math type rides in the
 * cache entry's algo field (algo + 256 * math). */
static lh_status conv_algo(lh_backend *be, const conv_descs *d, const int64_t *s, int dir,
                           cudnnDataType_t dt, int *algo, cudnnMathType_t *math,
                           size_t *workspace) {
    lh_cuda *cu = lh__cuda(be);
    int64_t key[10];
    memcpy(key, s, 9 * sizeof(int64_t));
    /* half tensors: any math (tensor ops); float32: FMA unless TF32 */
    int any_math = dt != CUDNN_DATA_FLOAT || conv_tf32(cu);
    key[9] = dir + 4 * conv_tf32(cu) + 8 * (int64_t)dt;
    int cached = cu->n_conv < LH_CUDA_CONV_CACHE ? cu->n_conv : LH_CUDA_CONV_CACHE;
    for (int i = 0; i < cached; i++) {
        if (memcmp(cu->conv[i].key, key, sizeof key) == 0) {
            if (cu->conv[i].algo < 0) return LH_ERR_UNSUPPORTED; /* no half algorithm */
            *algo = cu->conv[i].algo % 256;
            *math = (cudnnMathType_t)(cu->conv[i].algo / 256);
            *workspace = cu->conv[i].workspace;
            return LH_OK;
        }
    }
    lh_status st = LH_OK;
    int got = 0, at = -1;
    size_t ws = 0;
    if (dir == CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        st = lh__cuda_check_dnn(be,
                                cudnnGetConvolutionForwardAlgorithm_v7(
                                    cu->cudnn, d->x, d->w, d->conv, d->y,
                                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf),
                                "conv2d: cudnnGetConvolutionForwardAlgorithm_v7");
        if (st == LH_OK && (at = pick_algo(perf, got, any_math)) >= 0) {
            *algo = (int)perf[at].algo;
            *math = any_math ? perf[at].mathType : CUDNN_FMA_MATH;
            st = lh__cuda_check_dnn(be, cudnnSetConvolutionMathType(d->conv, *math),
                                    "conv2d: math type");
            if (st == LH_OK)
                st = lh__cuda_check_dnn(be,
                                        cudnnGetConvolutionForwardWorkspaceSize(
                                            cu->cudnn, d->x, d->w, d->conv, d->y,
                                            perf[at].algo, &ws),
                                        "conv2d: cudnnGetConvolutionForwardWorkspaceSize");
        }
    } else if (dir == CONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        st = lh__cuda_check_dnn(be,
                                cudnnGetConvolutionBackwardDataAlgorithm_v7(
                                    cu->cudnn, d->w, d->y, d->conv, d->x,
                                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, perf),
                                "conv2d_backward: cudnnGetConvolutionBackwardDataAlgorithm_v7");
        if (st == LH_OK && (at = pick_algo(perf, got, any_math)) >= 0) {
            *algo = (int)perf[at].algo;
            *math = any_math ? perf[at].mathType : CUDNN_FMA_MATH;
            st = lh__cuda_check_dnn(be, cudnnSetConvolutionMathType(d->conv, *math),
                                    "conv2d_backward: math type");
            if (st == LH_OK)
                st = lh__cuda_check_dnn(
                    be,
                    cudnnGetConvolutionBackwardDataWorkspaceSize(cu->cudnn, d->w, d->y, d->conv,
                                                                 d->x, perf[at].algo, &ws),
                    "conv2d_backward: cudnnGetConvolutionBackwardDataWorkspaceSize");
        }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        st = lh__cuda_check_dnn(be,
                                cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                                    cu->cudnn, d->x, d->y, d->conv, d->w,
                                    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, perf),
                                "conv2d_backward: cudnnGetConvolutionBackwardFilterAlgorithm_v7");
        if (st == LH_OK && (at = pick_algo(perf, got, any_math)) >= 0) {
            *algo = (int)perf[at].algo;
            *math = any_math ? perf[at].mathType : CUDNN_FMA_MATH;
            st = lh__cuda_check_dnn(be, cudnnSetConvolutionMathType(d->conv, *math),
                                    "conv2d_backward: math type");
            if (st == LH_OK)
                st = lh__cuda_check_dnn(
                    be,
                    cudnnGetConvolutionBackwardFilterWorkspaceSize(cu->cudnn, d->x, d->y, d->conv,
                                                                   d->w, perf[at].algo, &ws),
                    "conv2d_backward: cudnnGetConvolutionBackwardFilterWorkspaceSize");
        }
    }
    /* half tensors cuDNN refuses or has no algorithm for: the caller widens
     * (remembered, so later calls of the shape do not ask again) */
    int refused = dt != CUDNN_DATA_FLOAT && (st != LH_OK || at < 0);
    if (st != LH_OK && !refused) return st;
    if (at < 0 && !refused)
        return lh__cuda_fail(be, "conv2d", "cuDNN offers no algorithm for this shape");
    int slot = cu->n_conv % LH_CUDA_CONV_CACHE; /* full: overwrite round robin */
    memcpy(cu->conv[slot].key, key, sizeof key);
    cu->conv[slot].algo = refused ? -1 : *algo + 256 * (int)*math;
    if (++cu->n_conv >= 2 * LH_CUDA_CONV_CACHE) cu->n_conv -= LH_CUDA_CONV_CACHE;
    if (refused) return LH_ERR_UNSUPPORTED;
    cu->conv[slot].workspace = ws;
    *workspace = ws;
    return LH_OK;
}

/* Descriptors' math type and the workspace for direction `dir`, in scratch
 * after `extra` bytes (the half tensors' room) that *base points at. */
static lh_status conv_prepare(lh_backend *be, const conv_descs *d, const int64_t *s, int dir,
                              cudnnDataType_t dt, size_t extra, int *algo, void **base,
                              void **ws, size_t *ws_bytes) {
    cudnnMathType_t math;
    lh_status st = conv_algo(be, d, s, dir, dt, algo, &math, ws_bytes);
    if (st == LH_OK)
        st = lh__cuda_check_dnn(be, cudnnSetConvolutionMathType(d->conv, math),
                                "conv2d: math type");
    void *b = NULL;
    if (st == LH_OK) st = lh__cuda_scratch(be, extra + *ws_bytes, &b);
    if (st == LH_OK) {
        *base = b;
        *ws = (char *)b + extra;
    }
    return st;
}

/* A half convolution's cuDNN status: cuDNN's "not supported" (on the first
 * chunk, before anything but scratch was written) answers
 * LH_ERR_UNSUPPORTED, so that the caller widens; others fail. */
static lh_status half_run(lh_backend *be, cudnnStatus_t s, int first, const char *what) {
#if CUDNN_MAJOR >= 9
    int unsupported = s == CUDNN_STATUS_NOT_SUPPORTED || s / 1000 == CUDNN_STATUS_NOT_SUPPORTED / 1000;
#else
    int unsupported = s == CUDNN_STATUS_NOT_SUPPORTED;
#endif
    if (s != CUDNN_STATUS_SUCCESS && first && unsupported) return LH_ERR_UNSUPPORTED;
    return lh__cuda_check_dnn(be, s, what);
}

/* One chunk of a half convolution: descriptors, algorithm, and scratch
 * with `room` bytes (its half tensors) before cuDNN's workspace. A refusal
 * on the first chunk answers LH_ERR_UNSUPPORTED (the caller widens); on a
 * later one, after earlier chunks ran, it fails. On success the caller
 * destroys k->d. */
typedef struct half_chunk {
    conv_descs d;
    int algo;
    void *base, *ws; /* scratch: the half tensors, cuDNN's workspace */
    size_t ws_bytes;
} half_chunk;

static lh_status half_chunk_open(lh_backend *be, half_chunk *k, const int64_t *s, int64_t ho,
                                 int64_t wo, cudnnDataType_t dt, int dir, size_t room, int first,
                                 const char *op) {
    memset(k, 0, sizeof *k);
    lh_status st = descs_create(be, &k->d, s, ho, wo, dt);
    if (st != LH_OK) return first ? LH_ERR_UNSUPPORTED : st; /* cuDNN refuses the half tensors */
    st = conv_prepare(be, &k->d, s, dir, dt, room, &k->algo, &k->base, &k->ws, &k->ws_bytes);
    if (st == LH_ERR_UNSUPPORTED && !first) /* earlier chunks ran: no way back */
        st = lh__cuda_fail(be, op, "cuDNN offers no half algorithm for the last chunk");
    if (st != LH_OK) descs_destroy(&k->d);
    return st;
}

/* Bytes of n half values, rounded up to 256 (the next part's alignment). */
static size_t half_room(int64_t n) { return ((size_t)n * 2 + 255) / 256 * 256; }

/* The cuDNN type of the half activation type, or FLOAT when a weight held
 * in wdt cannot be convolved as it is (LH_ERR_UNSUPPORTED then). */
static cudnnDataType_t half_dnn(const lh_cuda *cu, lh_dtype wdt) {
    if (!cu->half_conv || wdt != cu->act) return CUDNN_DATA_FLOAT;
    return wdt == LH_DTYPE_F16 ? CUDNN_DATA_HALF
           : wdt == LH_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16
                                  : CUDNN_DATA_FLOAT;
}

/* out [n, c, hw] = act(y + bias) from the half y of type dt (timed as
 * LH_CUDA_PROF_IN_WIDEN under LH_CUDA_PROFILE). */
static lh_status from_half_dt(lh_backend *be, cudnnDataType_t dt, float *out, const void *y,
                              const float *bias, int64_t c, int64_t hw, int64_t total, int act,
                              const char *what) {
    cudaStream_t st = lh__cuda(be)->stream;
    int slot = lh__cuda_prof_inner_begin(be);
    if (dt == CUDNN_DATA_HALF)
        conv_from_half<__half><<<lh__cuda_grid(total, 256), 256, 0, st>>>(
            out, (const __half *)y, bias, c, hw, total, act);
    else
        conv_from_half<__nv_bfloat16><<<lh__cuda_grid(total, 256), 256, 0, st>>>(
            out, (const __nv_bfloat16 *)y, bias, c, hw, total, act);
    lh_status s = lh__cuda_launched(be, what);
    lh__cuda_prof_inner_end(be, slot, LH_CUDA_PROF_IN_WIDEN, s);
    return s;
}

/* ---- Argument checks ---- */

/* A convolution's sizes (s as descs_create's, in int64). */
typedef struct conv_dims {
    int64_t ho, wo, k, hw_out, in_img, in_total, out_total, w_total;
} conv_dims;

/* The checks every direction shares: LH_OK with the output size, or the
 * status to answer. */
static lh_status dims_common(conv_dims *d, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                             int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    memset(d, 0, sizeof *d);
    if (n < 0 || c_in < 0 || h < 0 || wd < 0 || c_out < 0 || kh < 1 || kw < 1 || stride < 1 ||
        pad < 0)
        return LH_ERR_INVALID;
    if (h + 2 * (int64_t)pad < kh || wd + 2 * (int64_t)pad < kw) return LH_ERR_SHAPE;
    d->ho = (h + 2 * (int64_t)pad - kh) / stride + 1;
    d->wo = (wd + 2 * (int64_t)pad - kw) / stride + 1;
    int64_t taps;
    if (!lh__cu_mul2(&taps, kh, kw) || !lh__cu_mul2(&d->k, c_in, taps) ||
        !lh__cu_mul2(&d->hw_out, d->ho, d->wo))
        return LH_ERR_OVERFLOW;
    return LH_OK;
}

/* The forward's: the input per image, the output in total. */
static lh_status dims_fwd(conv_dims *d, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                          int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    lh_status st = dims_common(d, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st != LH_OK) return st;
    if (!lh__cu_mul3(&d->in_img, c_in, h, wd) || !lh__cu_mul3(&d->out_total, n, c_out, d->hw_out) ||
        !lh__cu_bytes_ok(d->out_total))
        return LH_ERR_OVERFLOW;
    return LH_OK;
}

/* The backward's: input, output and weight in total. */
static lh_status dims_bwd(conv_dims *d, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                          int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    lh_status st = dims_common(d, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st != LH_OK) return st;
    if (!lh__cu_mul4(&d->in_total, n, c_in, h, wd) || !lh__cu_bytes_ok(d->in_total) ||
        !lh__cu_mul3(&d->out_total, n, c_out, d->hw_out) || !lh__cu_bytes_ok(d->out_total) ||
        !lh__cu_mul2(&d->w_total, c_out, d->k) || !lh__cu_bytes_ok(d->w_total))
        return LH_ERR_OVERFLOW;
    return LH_OK;
}

/* Whether cuDNN's int arguments hold the sizes. */
static int dims_int(const conv_dims *d, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                    int64_t c_out, int64_t kh, int64_t kw) {
    return d->k <= INT_MAX && d->hw_out <= INT_MAX && c_out <= INT_MAX && n <= INT_MAX &&
           c_in <= INT_MAX && h <= INT_MAX && wd <= INT_MAX && kh <= INT_MAX && kw <= INT_MAX &&
           d->ho <= INT_MAX && d->wo <= INT_MAX;
}

/* ---- Ops ---- */

extern "C" lh_status lh__cuda_conv2d(lh_backend *be, float *out, /* [n, c_out, h_out, w_out] */
                                     const float *x,             /* [n, c_in, h, w] */
                                     const float *w,             /* [c_out, c_in, kh, kw] */
                                     const float *bias,          /* [c_out] or NULL */
                                     int64_t n, int64_t c_in, int64_t h, int64_t wd,
                                     int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    conv_dims dm;
    lh_status st0 = dims_fwd(&dm, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st0 != LH_OK) return st0;
    const int64_t ho = dm.ho, wo = dm.wo, hw_out = dm.hw_out, in_img = dm.in_img;
    const int64_t out_total = dm.out_total;
    if (n == 0 || c_out == 0) return LH_OK;
    if (!out || (in_img > 0 && (!x || !w))) return LH_ERR_INVALID;
    if (!dims_int(&dm, n, c_in, h, wd, c_out, kh, kw)) return LH_ERR_UNSUPPORTED; /* cuDNN int */
    cudaStream_t stream = lh__cuda(be)->stream;
    if (in_img == 0) { /* nothing to convolve: out = bias (or 0) */
        conv_bias<<<lh__cuda_grid(out_total, 256), 256, 0, stream>>>(out, bias, c_out, hw_out,
                                                                     out_total, 1,
                                                                     lh__cuda(be)->act);
        return lh__cuda_launched(be, "conv2d: bias");
    }
    int64_t out_img = c_out * hw_out, nb = conv_chunk(lh__cuda(be), n, in_img, out_img);
    if (nb < 1) return lh__cuda_fail(be, "conv2d", "one image has 2^31 or more elements");
    lh_status st = LH_OK;
    for (int64_t i0 = 0; st == LH_OK && i0 < n; i0 += nb) {
        const int64_t s[9] = {n - i0 < nb ? n - i0 : nb, c_in, h, wd, c_out, kh, kw, stride, pad};
        conv_descs d;
        if ((st = descs_create(be, &d, s, ho, wo, CUDNN_DATA_FLOAT)) != LH_OK) return st;
        int algo = 0;
        void *ws = NULL, *base = NULL;
        size_t ws_bytes = 0;
        const float one = 1.0f, zero = 0.0f;
        st = conv_prepare(be, &d, s, CONV_FWD, CUDNN_DATA_FLOAT, 0, &algo, &base, &ws, &ws_bytes);
        if (st == LH_OK)
            st = lh__cuda_check_dnn(
                be,
                cudnnConvolutionForward(lh__cuda(be)->cudnn, &one, d.x, x + i0 * in_img, d.w, w,
                                        d.conv, (cudnnConvolutionFwdAlgo_t)algo, ws, ws_bytes,
                                        &zero, d.y, out + i0 * out_img),
                "conv2d: cudnnConvolutionForward");
        descs_destroy(&d);
    }
    if (st == LH_OK && bias) {
        conv_bias<<<lh__cuda_grid(out_total, 256), 256, 0, stream>>>(out, bias, c_out, hw_out,
                                                                     out_total, 0,
                                                                     lh__cuda(be)->act);
        st = lh__cuda_launched(be, "conv2d: bias");
    }
    return st;
}

extern "C" lh_status lh__cuda_conv2d_backward(lh_backend *be, float *dx, /* [n, c_in, h, w] */
                                              float *dw,       /* [c_out, c_in, kh, kw] += */
                                              float *db,       /* [c_out] += */
                                              const float *dy, /* [n, c_out, h_out, w_out] */
                                              const float *x,  /* [n, c_in, h, w] */
                                              const float *w,  /* [c_out, c_in, kh, kw] */
                                              int64_t n, int64_t c_in, int64_t h, int64_t wd,
                                              int64_t c_out, int64_t kh, int64_t kw, int stride,
                                              int pad) {
    conv_dims dm;
    lh_status st0 = dims_bwd(&dm, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st0 != LH_OK) return st0;
    const int64_t ho = dm.ho, wo = dm.wo, hw_out = dm.hw_out, in_total = dm.in_total;
    const int64_t out_total = dm.out_total, w_total = dm.w_total;
    if (n == 0) return LH_OK;
    if ((out_total > 0 && !dy) || (dx && in_total > 0 && c_out > 0 && !w) ||
        (dw && w_total > 0 && !x))
        return LH_ERR_INVALID;
    if (!dims_int(&dm, n, c_in, h, wd, c_out, kh, kw)) return LH_ERR_UNSUPPORTED; /* cuDNN int */
    lh_cuda *cu = lh__cuda(be);
    lh_status st = LH_OK;
    if (db && c_out > 0) {
        conv_bias_grad<<<(unsigned)c_out, 256, 0, cu->stream>>>(db, dy, n, c_out, hw_out);
        if ((st = lh__cuda_launched(be, "conv2d_backward: bias")) != LH_OK) return st;
    }
    int want_dx = dx && in_total > 0, want_dw = dw && w_total > 0 && in_total > 0;
    if (want_dx && c_out == 0) /* no output channel reads the input */
        return lh__cuda_check(be,
                              cudaMemsetAsync(dx, 0, (size_t)in_total * sizeof(float), cu->stream),
                              "conv2d_backward: dx");
    if (!want_dx && !want_dw) return LH_OK;
    int64_t in_img = in_total / n, out_img = c_out * hw_out;
    int64_t nb = conv_chunk(cu, n, in_img, out_img);
    if (nb < 1) return lh__cuda_fail(be, "conv2d_backward", "one image has 2^31 or more elements");
    for (int64_t i0 = 0; st == LH_OK && i0 < n; i0 += nb) {
        const int64_t s[9] = {n - i0 < nb ? n - i0 : nb, c_in, h, wd, c_out, kh, kw, stride, pad};
        const float *dyc = dy + i0 * out_img, *xc = x ? x + i0 * in_img : NULL;
        conv_descs d;
        if ((st = descs_create(be, &d, s, ho, wo, CUDNN_DATA_FLOAT)) != LH_OK) return st;
        int algo = 0;
        void *ws = NULL, *base = NULL;
        size_t ws_bytes = 0;
        const float one = 1.0f, zero = 0.0f;
        if (want_dx) { /* dx = W^T dy (written) */
            st = conv_prepare(be, &d, s, CONV_BWD_DATA, CUDNN_DATA_FLOAT, 0, &algo, &base, &ws,
                              &ws_bytes);
            if (st == LH_OK)
                st = lh__cuda_check_dnn(
                    be,
                    cudnnConvolutionBackwardData(cu->cudnn, &one, d.w, w, d.y, dyc, d.conv,
                                                 (cudnnConvolutionBwdDataAlgo_t)algo, ws,
                                                 ws_bytes, &zero, d.x, dx + i0 * in_img),
                    "conv2d_backward: cudnnConvolutionBackwardData");
        }
        if (st == LH_OK && want_dw) { /* dw += dy x^T (beta 1), chunk after chunk */
            st = conv_prepare(be, &d, s, CONV_BWD_FILTER, CUDNN_DATA_FLOAT, 0, &algo, &base, &ws,
                              &ws_bytes);
            if (st == LH_OK)
                st = lh__cuda_check_dnn(
                    be,
                    cudnnConvolutionBackwardFilter(cu->cudnn, &one, d.x, xc, d.y, dyc, d.conv,
                                                   (cudnnConvolutionBwdFilterAlgo_t)algo, ws,
                                                   ws_bytes, &one, d.w, dw),
                    "conv2d_backward: cudnnConvolutionBackwardFilter");
        }
        descs_destroy(&d);
    }
    return st;
}

extern "C" lh_status lh__cuda_conv2d_hw(lh_backend *be, float *out, /* [n, c_out, h_out, w_out] */
                                        const float *x,             /* [n, c_in, h, w] */
                                        const void *w, lh_dtype wdt, /* [c_out, c_in, kh, kw] */
                                        const float *bias,           /* [c_out] or NULL */
                                        int64_t n, int64_t c_in, int64_t h, int64_t wd,
                                        int64_t c_out, int64_t kh, int64_t kw, int stride,
                                        int pad) {
    lh_cuda *cu = lh__cuda(be);
    if ((wdt != LH_DTYPE_F16 && wdt != LH_DTYPE_BF16) || wdt != cu->act) return LH_ERR_INVALID;
    conv_dims dm;
    lh_status st0 = dims_fwd(&dm, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st0 != LH_OK) return st0;
    const int64_t ho = dm.ho, wo = dm.wo, hw_out = dm.hw_out, in_img = dm.in_img;
    if (n == 0 || c_out == 0) return LH_OK;
    if (!out || (in_img > 0 && (!x || !w))) return LH_ERR_INVALID;
    cudnnDataType_t dt = half_dnn(cu, wdt);
    if (dt == CUDNN_DATA_FLOAT) return LH_ERR_UNSUPPORTED; /* LORAHOST_CUDA_HALF_CONV=0 */
    if (in_img == 0) /* out = bias: no weight read */
        return lh__cuda_conv2d(be, out, x, NULL, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (!dims_int(&dm, n, c_in, h, wd, c_out, kh, kw)) return LH_ERR_UNSUPPORTED; /* cuDNN int */
    int64_t out_img = c_out * hw_out, nb = conv_chunk(cu, n, in_img, out_img);
    if (nb < 1) return lh__cuda_fail(be, "conv2d", "one image has 2^31 or more elements");
    lh_status st = LH_OK;
    for (int64_t i0 = 0; st == LH_OK && i0 < n; i0 += nb) {
        int64_t nc = n - i0 < nb ? n - i0 : nb;
        const int64_t s[9] = {nc, c_in, h, wd, c_out, kh, kw, stride, pad};
        size_t xr = half_room(nc * in_img);
        half_chunk k;
        st = half_chunk_open(be, &k, s, ho, wo, dt, CONV_FWD, xr + half_room(nc * out_img), i0 == 0,
                             "conv2d");
        if (st != LH_OK) break;
        const float one = 1.0f, zero = 0.0f;
        st = lh__cuda_cast_in(be, k.base, wdt, x + i0 * in_img, LH_DTYPE_F32, nc * in_img);
        if (st == LH_OK)
            st = half_run(be,
                          cudnnConvolutionForward(cu->cudnn, &one, k.d.x, k.base, k.d.w, w,
                                                  k.d.conv, (cudnnConvolutionFwdAlgo_t)k.algo,
                                                  k.ws, k.ws_bytes, &zero, k.d.y,
                                                  (char *)k.base + xr),
                          i0 == 0, "conv2d (half): cudnnConvolutionForward");
        if (st == LH_OK)
            st = from_half_dt(be, dt, out + i0 * out_img, (char *)k.base + xr, bias, c_out,
                              hw_out, nc * out_img, cu->act, "conv2d (half): output");
        descs_destroy(&k.d);
    }
    return st;
}

extern "C" lh_status lh__cuda_conv2d_backward_hw(lh_backend *be, float *dx, /* [n, c_in, h, w] */
                                                 float *db,       /* [c_out] += */
                                                 const float *dy, /* [n, c_out, h_out, w_out] */
                                                 const void *w, lh_dtype wdt, /* [c_out, c_in, kh, kw] */
                                                 int64_t n, int64_t c_in, int64_t h, int64_t wd,
                                                 int64_t c_out, int64_t kh, int64_t kw,
                                                 int stride, int pad) {
    lh_cuda *cu = lh__cuda(be);
    if ((wdt != LH_DTYPE_F16 && wdt != LH_DTYPE_BF16) || wdt != cu->act) return LH_ERR_INVALID;
    conv_dims dm;
    lh_status st0 = dims_bwd(&dm, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    if (st0 != LH_OK) return st0;
    const int64_t ho = dm.ho, wo = dm.wo, hw_out = dm.hw_out, in_total = dm.in_total;
    if (n == 0) return LH_OK;
    if ((dm.out_total > 0 && !dy) || (dx && in_total > 0 && c_out > 0 && !w))
        return LH_ERR_INVALID;
    cudnnDataType_t dt = half_dnn(cu, wdt);
    if (dt == CUDNN_DATA_FLOAT) return LH_ERR_UNSUPPORTED; /* LORAHOST_CUDA_HALF_CONV=0 */
    if (!dx || in_total == 0 || c_out == 0) /* no product with the weight */
        return lh__cuda_conv2d_backward(be, dx, NULL, db, dy, NULL, NULL, n, c_in, h, wd, c_out,
                                        kh, kw, stride, pad);
    if (!dims_int(&dm, n, c_in, h, wd, c_out, kh, kw)) return LH_ERR_UNSUPPORTED; /* cuDNN int */
    int64_t in_img = in_total / n, out_img = c_out * hw_out;
    int64_t nb = conv_chunk(cu, n, in_img, out_img);
    if (nb < 1) return lh__cuda_fail(be, "conv2d_backward", "one image has 2^31 or more elements");
    lh_status st = LH_OK;
    for (int64_t i0 = 0; st == LH_OK && i0 < n; i0 += nb) {
        int64_t nc = n - i0 < nb ? n - i0 : nb;
        const int64_t s[9] = {nc, c_in, h, wd, c_out, kh, kw, stride, pad};
        size_t yr = half_room(nc * out_img);
        half_chunk k;
        st = half_chunk_open(be, &k, s, ho, wo, dt, CONV_BWD_DATA, yr + half_room(nc * in_img),
                             i0 == 0, "conv2d_backward");
        if (st != LH_OK) break;
        const float one = 1.0f, zero = 0.0f;
        st = lh__cuda_cast_in(be, k.base, wdt, dy + i0 * out_img, LH_DTYPE_F32, nc * out_img);
        if (st == LH_OK) /* dx = W^T dy (written) */
            st = half_run(be,
                          cudnnConvolutionBackwardData(cu->cudnn, &one, k.d.w, w, k.d.y, k.base,
                                                       k.d.conv,
                                                       (cudnnConvolutionBwdDataAlgo_t)k.algo, k.ws,
                                                       k.ws_bytes, &zero, k.d.x,
                                                       (char *)k.base + yr),
                          i0 == 0, "conv2d_backward (half): cudnnConvolutionBackwardData");
        if (st == LH_OK && i0 == 0 && db) { /* once the half path is sure */
            conv_bias_grad<<<(unsigned)c_out, 256, 0, cu->stream>>>(db, dy, n, c_out, hw_out);
            st = lh__cuda_launched(be, "conv2d_backward: bias");
        }
        if (st == LH_OK)
            st = from_half_dt(be, dt, dx + i0 * in_img, (char *)k.base + yr, NULL, c_in, h * wd,
                              nc * in_img, cu->act, "conv2d_backward (half): dx");
        descs_destroy(&k.d);
    }
    return st;
}
