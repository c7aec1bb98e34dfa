/* The cuda backend: its ops table, memory (a caching allocator over
 * cudaMalloc: no cudaMalloc once a loop has run a step), uploads (f16 and
 * bf16 weights widened on the device), mixed-precision rounding, the
 * non-finite count, error reporting, and lh_backend_cuda_create. One
 * stream per backend: ops queue on it; download and sync wait for it. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

/* ---- Errors ---- */

extern "C" lh_status lh__cuda_fail(lh_backend *be, const char *what, const char *detail) {
    if (be && be->impl)
        snprintf(lh__cuda(be)->last_error, sizeof lh__cuda(be)->last_error, "%s: %s", what,
                 detail);
    return LH_ERR_BACKEND;
}

extern "C" lh_status lh__cuda_check(lh_backend *be, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return LH_OK;
    return e == cudaErrorMemoryAllocation ? (lh__cuda_fail(be, what, cudaGetErrorString(e)),
                                             LH_ERR_NOMEM)
                                          : lh__cuda_fail(be, what, cudaGetErrorString(e));
}

extern "C" lh_status lh__cuda_check_blas(lh_backend *be, cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return LH_OK;
    char d[32];
    snprintf(d, sizeof d, "cuBLAS status %d", (int)s);
    return lh__cuda_fail(be, what, d);
}

extern "C" lh_status lh__cuda_check_dnn(lh_backend *be, cudnnStatus_t s, const char *what) {
    if (s == CUDNN_STATUS_SUCCESS) return LH_OK;
    return lh__cuda_fail(be, what, cudnnGetErrorString(s));
}

extern "C" lh_status lh__cuda_launched(lh_backend *be, const char *what) {
    return lh__cuda_check(be, cudaGetLastError(), what);
}

extern "C" lh_status lh__cuda_not_recording(lh_backend *be, const char *what) {
    return lh__cuda(be)->recording ? lh__cuda_fail(be, what, "cannot be part of a graph") : LH_OK;
}

extern "C" void lh__cuda_workspace_unref(lh_cuda *cu, void *ws) {
    if (!ws) return;
    if (ws == cu->workspace) {
        cu->workspace_refs--;
        return;
    }
    for (size_t i = 0; i < cu->n_retired; i++)
        if (cu->retired[i].ptr == ws) {
            if (--cu->retired[i].refs == 0) {
                cudaFree(ws);
                cu->retired[i] = cu->retired[--cu->n_retired];
            }
            return;
        }
}

static void release_cached(lh_cuda *cu);

extern "C" lh_status lh__cuda_scratch(lh_backend *be, size_t bytes, void **out) {
    lh_cuda *cu = lh__cuda(be);
    if (bytes > cu->workspace_bytes) {
        lh_status st = lh__cuda_not_recording(be, "scratch: growing it");
        /* the stream may still use the old one */
        if (st == LH_OK) st = lh__cuda_check(be, cudaStreamSynchronize(cu->stream), "scratch");
        if (st != LH_OK) return st;
        if (cu->workspace_refs) { /* graphs' kernels point into it */
            lh_cuda_retired *r = (lh_cuda_retired *)realloc(
                cu->retired, (cu->n_retired + 1) * sizeof *r);
            if (!r) return LH_ERR_NOMEM;
            cu->retired = r;
            cu->retired[cu->n_retired++] = (lh_cuda_retired){cu->workspace, cu->workspace_refs};
            cu->workspace_refs = 0;
        } else {
            cudaFree(cu->workspace);
        }
        cu->workspace = NULL;
        cu->workspace_bytes = 0;
        size_t want = bytes + bytes / 4;
        if (cudaMalloc(&cu->workspace, want) != cudaSuccess) {
            cudaGetLastError();
            release_cached(cu); /* then once more, exactly what is asked */
            want = bytes;
            if ((st = lh__cuda_check(be, cudaMalloc(&cu->workspace, want), "scratch")) != LH_OK) {
                cu->workspace = NULL;
                return st;
            }
        }
        cu->workspace_bytes = want;
    }
    *out = cu->workspace;
    return LH_OK;
}

/* ---- Memory ---- */

/* Give the cached (unused, not held) blocks back to CUDA, and the scratch
 * workspace when no graph was recorded on it (it grows again on demand:
 * scratch is valid only until the next call); not while a graph is
 * recorded (the wait would end the recording). */
static void release_cached(lh_cuda *cu) {
    if (cu->recording) return;
    cudaStreamSynchronize(cu->stream);
    if (cu->workspace && !cu->workspace_refs) {
        cudaFree(cu->workspace);
        cu->workspace = NULL;
        cu->workspace_bytes = 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < cu->n_blocks; i++) {
        if (cu->blocks[i].used || cu->blocks[i].held) {
            cu->blocks[k++] = cu->blocks[i];
            continue;
        }
        cudaFree(cu->blocks[i].ptr);
        cu->bytes_held -= cu->blocks[i].bytes;
    }
    cu->n_blocks = k;
}

/* While a graph is recorded, block b becomes also the graph's: held (no
 * other allocation takes it) until graph_free. 0 when out of memory. */
static int hold_for_recording(lh_cuda *cu, lh_cuda_block *b) {
    if (!cu->recording || b->rec == cu->rec_serial) return 1;
    if (cu->n_rec == cu->cap_rec) {
        size_t cap = cu->cap_rec ? cu->cap_rec * 2 : 64;
        void **r = (void **)realloc(cu->rec_blocks, cap * sizeof *r);
        if (!r) return 0;
        cu->rec_blocks = r;
        cu->cap_rec = cap;
    }
    cu->rec_blocks[cu->n_rec++] = b->ptr;
    b->held++;
    b->rec = cu->rec_serial;
    return 1;
}

extern "C" void lh__cuda_unhold(lh_cuda *cu, void *const *ptrs, size_t n) {
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < cu->n_blocks; i++)
            if (cu->blocks[i].ptr == ptrs[k]) {
                if (cu->blocks[i].held > 0) cu->blocks[i].held--;
                break;
            }
}

static void *cuda_alloc(lh_backend *be, size_t bytes) {
    lh_cuda *cu = lh__cuda(be);
    if (bytes > SIZE_MAX - 511) return NULL;
    size_t want = bytes ? (bytes + 511) & ~(size_t)511 : 512;
    /* a freed block of this size: the stream orders its old users first */
    for (size_t i = cu->n_blocks; i-- > 0;)
        if (!cu->blocks[i].used && !cu->blocks[i].held && cu->blocks[i].bytes == want) {
            if (!hold_for_recording(cu, &cu->blocks[i])) return NULL;
            cu->blocks[i].used = 1;
            cu->bytes_used += want;
            if (cu->bytes_used > cu->bytes_peak) cu->bytes_peak = cu->bytes_used;
            return cu->blocks[i].ptr;
        }
    if (cu->n_blocks == cu->cap_blocks) {
        size_t cap = cu->cap_blocks ? cu->cap_blocks * 2 : 256;
        lh_cuda_block *b = (lh_cuda_block *)realloc(cu->blocks, cap * sizeof *b);
        if (!b) return NULL;
        cu->blocks = b;
        cu->cap_blocks = cap;
    }
    void *p = NULL;
    if (cudaMalloc(&p, want) != cudaSuccess) {
        cudaGetLastError();
        release_cached(cu); /* then once more */
        if (cudaMalloc(&p, want) != cudaSuccess) {
            cudaGetLastError(); /* clear it: the caller sees NULL */
            lh__cuda_fail(be, "alloc", "cudaMalloc failed (out of device memory)");
            return NULL;
        }
    }
    cu->blocks[cu->n_blocks++] = (lh_cuda_block){p, want, 1, 0, 0};
    if (!hold_for_recording(cu, &cu->blocks[cu->n_blocks - 1])) {
        cu->blocks[cu->n_blocks - 1].used = 0; /* cached for later */
        cu->bytes_held += want;
        return NULL;
    }
    cu->bytes_held += want;
    cu->bytes_used += want;
    if (cu->bytes_used > cu->bytes_peak) cu->bytes_peak = cu->bytes_used;
    return p;
}

static void cuda_free(lh_backend *be, void *ptr) {
    if (!ptr) return;
    lh_cuda *cu = lh__cuda(be);
    for (size_t i = cu->n_blocks; i-- > 0;)
        if (cu->blocks[i].ptr == ptr && cu->blocks[i].used) {
            /* a block freed while recording may be what recorded kernels
             * use: held (or, out of memory for that, never reused) */
            if (!hold_for_recording(cu, &cu->blocks[i])) return;
            cu->blocks[i].used = 0; /* kept for reuse */
            cu->bytes_used -= cu->blocks[i].bytes;
            return;
        }
}

/* A pageable source makes the driver wait for the stream before copying
 * (a hidden host wait); a small one goes through the next pinned slot
 * instead, which waits only if that slot's last copy has not run yet. */
extern "C" lh_status lh__cuda_upload_async(lh_backend *be, void *dst, const void *src,
                                           size_t bytes) {
    if (!bytes) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    lh_status st = lh__cuda_not_recording(be, "upload");
    if (st != LH_OK) return st;
    if (!cu->stage || bytes > LH_CUDA_STAGE_BYTES)
        return lh__cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
                                                  cu->stream),
                              "upload");
    int k = cu->stage_next;
    cu->stage_next = (k + 1) % LH_CUDA_STAGE_SLOTS;
    if (cu->stage_pending[k] &&
        (st = lh__cuda_check(be, cudaEventSynchronize(cu->stage_done[k]), "upload")) != LH_OK)
        return st;
    cu->stage_pending[k] = 0;
    unsigned char *slot = cu->stage + (size_t)k * LH_CUDA_STAGE_BYTES;
    memcpy(slot, src, bytes);
    st = lh__cuda_check(be, cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, cu->stream),
                        "upload");
    if (st != LH_OK) return st;
    if (cudaEventRecord(cu->stage_done[k], cu->stream) != cudaSuccess) {
        cudaGetLastError(); /* no event to wait for: the copy must be done before reuse */
        return lh__cuda_check(be, cudaStreamSynchronize(cu->stream), "upload");
    }
    cu->stage_pending[k] = 1;
    return LH_OK;
}

/* The pinned slots; without them (pinned memory refused) uploads stay pageable. */
static void stage_create(lh_cuda *cu) {
    void *p = NULL;
    if (cudaMallocHost(&p, LH_CUDA_STAGE_SLOTS * LH_CUDA_STAGE_BYTES) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    for (int k = 0; k < LH_CUDA_STAGE_SLOTS; k++)
        if (cudaEventCreateWithFlags(&cu->stage_done[k], cudaEventDisableTiming) != cudaSuccess) {
            cudaGetLastError();
            while (k-- > 0) cudaEventDestroy(cu->stage_done[k]);
            cudaFreeHost(p);
            return;
        }
    cu->stage = (unsigned char *)p;
}

static lh_status cuda_upload(lh_backend *be, void *dst, const void *src, size_t bytes) {
    return lh__cuda_upload_async(be, dst, src, bytes);
}

static lh_status cuda_download(lh_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    lh_status st = lh__cuda_not_recording(be, "download");
    if (st != LH_OK) return st;
    st = lh__cuda_check(
        be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream), "download");
    if (st == LH_OK) st = lh__cuda_check(be, cudaStreamSynchronize(cu->stream), "download");
    return st;
}

static lh_status cuda_memset0(lh_backend *be, void *dst, size_t bytes) {
    if (!bytes) return LH_OK;
    if (!dst) return LH_ERR_INVALID;
    return lh__cuda_check(be, cudaMemsetAsync(dst, 0, bytes, lh__cuda(be)->stream), "memset0");
}

/* One value from S to D: halves widen exactly; float32 narrows to nearest
 * even (F16 overflows to +-Inf as a half store does). */
static __device__ float convert(float *, __half x) { return __half2float(x); }
static __device__ float convert(float *, __nv_bfloat16 x) { return __bfloat162float(x); }
static __device__ __half convert(__half *, float x) { return __float2half_rn(x); }
static __device__ __nv_bfloat16 convert(__nv_bfloat16 *, float x) { return __float2bfloat16_rn(x); }

template <typename D, typename S> __global__ void convert_kernel(D *dst, const S *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = convert((D *)nullptr, src[i]);
}

static lh_status cuda_upload_weights(lh_backend *be, float *dst, const void *src,
                                     lh_dtype src_dtype, size_t n) {
    if (!n) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    if (n > SIZE_MAX / sizeof(float)) return LH_ERR_OVERFLOW;
    if (src_dtype == LH_DTYPE_F32) return cuda_upload(be, dst, src, n * sizeof(float));
    if (src_dtype != LH_DTYPE_F16 && src_dtype != LH_DTYPE_BF16) return LH_ERR_UNSUPPORTED;
    lh_cuda *cu = lh__cuda(be);
    void *half = NULL;
    lh_status st = lh__cuda_scratch(be, n * 2, &half);
    if (st == LH_OK) st = cuda_upload(be, half, src, n * 2);
    if (st != LH_OK) return st;
    if (src_dtype == LH_DTYPE_F16)
        convert_kernel<<<lh__cuda_grid((int64_t)n, 256), 256, 0, cu->stream>>>(
            dst, (const __half *)half, (int64_t)n);
    else
        convert_kernel<<<lh__cuda_grid((int64_t)n, 256), 256, 0, cu->stream>>>(
            dst, (const __nv_bfloat16 *)half, (int64_t)n);
    return lh__cuda_launched(be, "upload_weights");
}

static lh_status cuda_sync(lh_backend *be) {
    lh_status st = lh__cuda_not_recording(be, "sync");
    return st != LH_OK ? st
                       : lh__cuda_check(be, cudaStreamSynchronize(lh__cuda(be)->stream), "sync");
}

/* ---- Mixed precision ---- */

/* Round to nearest even through the hardware conversions; F16 overflows to
 * +-Inf as a half store does; NaN stays NaN. */
__global__ void round_f16(float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __half2float(__float2half_rn(x[i]));
}

__global__ void round_bf16(float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

extern "C" lh_status lh__cuda_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype) {
    if (n < 0) return LH_ERR_INVALID;
    if (!n || dtype == LH_DTYPE_F32) return LH_OK;
    if (!x) return LH_ERR_INVALID;
    cudaStream_t s = lh__cuda(be)->stream;
    if (dtype == LH_DTYPE_F16) round_f16<<<lh__cuda_grid(n, 256), 256, 0, s>>>(x, n);
    else if (dtype == LH_DTYPE_BF16) round_bf16<<<lh__cuda_grid(n, 256), 256, 0, s>>>(x, n);
    else return LH_ERR_UNSUPPORTED;
    return lh__cuda_launched(be, "round");
}

static int half_type(lh_dtype t) { return t == LH_DTYPE_F16 || t == LH_DTYPE_BF16; }

extern "C" lh_status lh__cuda_cast(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                                   lh_dtype src_dtype, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (!n) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    cudaStream_t s = lh__cuda(be)->stream;
    unsigned grid = lh__cuda_grid(n, 256);
    if (dst_dtype == src_dtype && (dst_dtype == LH_DTYPE_F32 || half_type(dst_dtype))) {
        size_t bytes = (size_t)n * (dst_dtype == LH_DTYPE_F32 ? 4 : 2);
        return lh__cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s),
                              "cast");
    }
    if (dst_dtype == LH_DTYPE_F32 && src_dtype == LH_DTYPE_F16)
        convert_kernel<<<grid, 256, 0, s>>>((float *)dst, (const __half *)src, n);
    else if (dst_dtype == LH_DTYPE_F32 && src_dtype == LH_DTYPE_BF16)
        convert_kernel<<<grid, 256, 0, s>>>((float *)dst, (const __nv_bfloat16 *)src, n);
    else if (src_dtype == LH_DTYPE_F32 && dst_dtype == LH_DTYPE_F16)
        convert_kernel<<<grid, 256, 0, s>>>((__half *)dst, (const float *)src, n);
    else if (src_dtype == LH_DTYPE_F32 && dst_dtype == LH_DTYPE_BF16)
        convert_kernel<<<grid, 256, 0, s>>>((__nv_bfloat16 *)dst, (const float *)src, n);
    else
        return LH_ERR_UNSUPPORTED;
    return lh__cuda_launched(be, "cast");
}

static lh_status cuda_set_precision(lh_backend *be, lh_dtype act) {
    if (act != LH_DTYPE_F32 && act != LH_DTYPE_F16 && act != LH_DTYPE_BF16)
        return LH_ERR_UNSUPPORTED;
    lh__cuda(be)->act = act;
    return LH_OK;
}

extern "C" lh_status lh__cuda_after(lh_backend *be, lh_status st, float *out, uint64_t n) {
    if (st != LH_OK || !out || lh__cuda(be)->act == LH_DTYPE_F32) return st;
    int slot = lh__cuda_prof_inner_begin(be);
    st = lh__cuda_round(be, out, (int64_t)n, lh__cuda(be)->act);
    lh__cuda_prof_inner_end(be, slot, LH_CUDA_PROF_IN_ROUND, st);
    return st;
}

extern "C" lh_status lh__cuda_cast_in(lh_backend *be, void *dst, lh_dtype dst_dtype,
                                      const void *src, lh_dtype src_dtype, int64_t n) {
    int slot = lh__cuda_prof_inner_begin(be);
    lh_status st = lh__cuda_cast(be, dst, dst_dtype, src, src_dtype, n);
    lh__cuda_prof_inner_end(be, slot, LH_CUDA_PROF_IN_CAST, st);
    return st;
}

__global__ void count_nonfinite_kernel(unsigned long long *count, const float *x, int64_t n) {
    unsigned long long mine = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        mine += !isfinite(x[i]);
    /* warp sum, then one atomic per warp */
    for (int o = 16; o > 0; o >>= 1) mine += __shfl_down_sync(0xffffffffu, mine, o);
    if ((threadIdx.x & 31) == 0 && mine) atomicAdd(count, mine);
}

extern "C" lh_status lh__cuda_count_nonfinite(lh_backend *be, int64_t *count, const float *x,
                                              int64_t n) {
    if (!count || n < 0 || (n && !x)) return LH_ERR_INVALID;
    *count = 0;
    if (!n) return LH_OK;
    lh_cuda *cu = lh__cuda(be);
    void *d = NULL;
    /* it waits for its result: refused before queueing anything into a recording */
    lh_status st = lh__cuda_not_recording(be, "count_nonfinite");
    if (st == LH_OK) st = lh__cuda_scratch(be, sizeof(unsigned long long), &d);
    if (st == LH_OK) st = cuda_memset0(be, d, sizeof(unsigned long long));
    if (st != LH_OK) return st;
    count_nonfinite_kernel<<<lh__cuda_grid(n, 256) > 1024 ? 1024 : lh__cuda_grid(n, 256), 256, 0,
                             cu->stream>>>((unsigned long long *)d, x, n);
    if ((st = lh__cuda_launched(be, "count_nonfinite")) != LH_OK) return st;
    unsigned long long c = 0;
    if ((st = cuda_download(be, &c, d, sizeof c)) != LH_OK) return st;
    *count = (int64_t)c;
    return LH_OK;
}

extern "C" lh_status lh__cuda_count_nonfinite_into(lh_backend *be, int64_t *count,
                                                   const float *x, int64_t n) {
    if (!count || n < 0 || (n && !x)) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    lh_status st = cuda_memset0(be, count, sizeof *count);
    if (st != LH_OK || !n) return st;
    count_nonfinite_kernel<<<lh__cuda_grid(n, 256) > 1024 ? 1024 : lh__cuda_grid(n, 256), 256, 0,
                             cu->stream>>>((unsigned long long *)count, x, n);
    return lh__cuda_launched(be, "count_nonfinite_into");
}

/* ---- Rounding fronts: ops that write activations ----
 * The elementwise ops and the norms round in their own stores (lh__cu_act);
 * the products, convolutions and attention get the pass after them. */

static lh_status r_gemm(lh_backend *be, float *c, const float *a, const float *b, int ta, int tb,
                        int64_t m, int64_t n, int64_t k, float alpha, float beta, int64_t batch,
                        int64_t sa, int64_t sb, int64_t sc) {
    lh_status st = lh__cuda_gemm(be, c, a, b, ta, tb, m, n, k, alpha, beta, batch, sa, sb, sc);
    for (int64_t i = 0; i < batch && st == LH_OK && lh__cuda(be)->act != LH_DTYPE_F32; i++)
        st = lh__cuda_after(be, st, c + i * sc, (uint64_t)m * n);
    return st;
}

static lh_status r_linear(lh_backend *be, float *out, const float *x, const float *w,
                          const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    lh_status st = lh__cuda_linear(be, out, x, w, bias, rows, n_in, n_out);
    if (st != LH_OK || bias) return st; /* the bias kernel stored it rounded */
    return lh__cuda_after(be, st, out, (uint64_t)rows * n_out);
}

static lh_status r_linear_hw(lh_backend *be, float *out, const float *x, const void *w,
                             lh_dtype wdt, const float *bias, int64_t rows, int64_t n_in,
                             int64_t n_out) {
    lh_status st = lh__cuda_linear_hw(be, out, x, w, wdt, bias, rows, n_in, n_out);
    if (st != LH_OK || bias) return st; /* the bias kernel stored it rounded */
    return lh__cuda_after(be, st, out, (uint64_t)rows * n_out);
}

static lh_status r_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                          const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                          int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    lh_status st = lh__cuda_conv2d(be, out, x, w, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    /* with a bias (or no input) the bias kernel stored it rounded */
    if (st != LH_OK || bias || c_in == 0 || h == 0 || wd == 0) return st;
    int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
    return lh__cuda_after(be, st, out, (uint64_t)n * c_out * ho * wo);
}

static lh_status r_attention(lh_backend *be, float *out, float *lse, const float *q,
                             const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                             int64_t nk, int64_t d, float scale, int causal) {
    return lh__cuda_after(
        be, lh__cuda_attention(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal), out,
        (uint64_t)b * nq * heads * d);
}

static lh_status r_timestep_embedding(lh_backend *be, float *out, const float *timesteps,
                                      int64_t n, int64_t dim, int flip, float shift,
                                      float max_period) {
    return lh__cuda_after(be,
                          lh__cuda_timestep_embedding(be, out, timesteps, n, dim, flip, shift,
                                                      max_period),
                          out, (uint64_t)n * dim);
}

static lh_status r_linear_backward(lh_backend *be, float *dx, float *dw, float *db,
                                   const float *dy, const float *x, const float *w, int64_t rows,
                                   int64_t n_in, int64_t n_out) {
    return lh__cuda_after(be,
                          lh__cuda_linear_backward(be, dx, dw, db, dy, x, w, rows, n_in, n_out),
                          dx, (uint64_t)rows * n_in);
}

static lh_status r_linear_backward_hw(lh_backend *be, float *dx, float *db, const float *dy,
                                      const void *w, lh_dtype wdt, int64_t rows, int64_t n_in,
                                      int64_t n_out) {
    return lh__cuda_after(be, lh__cuda_linear_backward_hw(be, dx, db, dy, w, wdt, rows, n_in, n_out),
                          dx, (uint64_t)rows * n_in);
}

static lh_status r_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db,
                                   const float *dy, const float *x, const float *w, int64_t n,
                                   int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                                   int64_t kw, int stride, int pad) {
    return lh__cuda_after(be,
                          lh__cuda_conv2d_backward(be, dx, dw, db, dy, x, w, n, c_in, h, wd,
                                                   c_out, kh, kw, stride, pad),
                          dx, (uint64_t)n * c_in * h * wd);
}

static lh_status r_group_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                       const float *dy, const float *x, const float *gamma,
                                       const float *beta, int64_t n, int64_t c, int64_t hw,
                                       int64_t groups, float eps, int silu) {
    return lh__cuda_after(be,
                          lh__cuda_group_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, beta,
                                                       n, c, hw, groups, eps, silu),
                          dx, (uint64_t)n * c * hw);
}

static lh_status r_layer_norm_backward(lh_backend *be, float *dx, float *dgamma, float *dbeta,
                                       const float *dy, const float *x, const float *gamma,
                                       int64_t rows, int64_t cols, float eps) {
    return lh__cuda_after(be,
                          lh__cuda_layer_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, rows,
                                                       cols, eps),
                          dx, (uint64_t)rows * cols);
}

static lh_status r_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                      const float *dout, const float *out, const float *lse,
                                      const float *q, const float *k, const float *v, int64_t b,
                                      int64_t heads, int64_t nq, int64_t nk, int64_t d,
                                      float scale, int causal) {
    lh_status st = lh__cuda_attention_backward(be, dq, dk, dv, dout, out, lse, q, k, v, b, heads,
                                               nq, nk, d, scale, causal);
    st = lh__cuda_after(be, st, dq, (uint64_t)b * nq * heads * d);
    st = lh__cuda_after(be, st, dk, (uint64_t)b * nk * heads * d);
    return lh__cuda_after(be, st, dv, (uint64_t)b * nk * heads * d);
}

static lh_status r_silu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                 int64_t n) {
    return lh__cuda_after(be, lh__cuda_silu_backward(be, dx, dy, x, n), dx, (uint64_t)n);
}

static lh_status r_gelu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                 int64_t n) {
    return lh__cuda_after(be, lh__cuda_gelu_backward(be, dx, dy, x, n), dx, (uint64_t)n);
}

static lh_status r_quick_gelu_backward(lh_backend *be, float *dx, const float *dy,
                                       const float *x, int64_t n) {
    return lh__cuda_after(be, lh__cuda_quick_gelu_backward(be, dx, dy, x, n), dx, (uint64_t)n);
}

static lh_status r_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                  int64_t rows, int64_t f) {
    return lh__cuda_after(be, lh__cuda_geglu_backward(be, dx, dy, x, rows, f), dx,
                          (uint64_t)rows * 2 * f);
}

static lh_status r_channel_bias_backward(lh_backend *be, float *dbias, const float *dy,
                                         int64_t outer, int64_t c, int64_t inner) {
    return lh__cuda_after(be, lh__cuda_channel_bias_backward(be, dbias, dy, outer, c, inner),
                          dbias, (uint64_t)outer * c);
}

static lh_status r_upsample_backward(lh_backend *be, float *dx, const float *dy, int64_t n,
                                     int64_t c, int64_t h, int64_t w) {
    return lh__cuda_after(be, lh__cuda_upsample_nearest2x_backward(be, dx, dy, n, c, h, w), dx,
                          (uint64_t)n * c * h * w);
}

/* ---- The table ---- */

static void cuda_destroy(lh_backend *be);

static constexpr lh_backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .destroy = */ cuda_destroy,
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .memset0 = */ cuda_memset0,
    /* .upload_weights = */ cuda_upload_weights,
    /* .sync = */ cuda_sync,
    /* .gemm = */ r_gemm,
    /* .linear = */ r_linear,
    /* .linear_hw = */ r_linear_hw,
    /* .conv2d = */ r_conv2d,
    /* .conv2d_hw = */ lh__cuda_conv2d_hw, /* rounds in its own output pass */
    /* .group_norm = */ lh__cuda_group_norm,
    /* .layer_norm = */ lh__cuda_layer_norm,
    /* .attention = */ r_attention,
    /* .silu = */ lh__cuda_silu,
    /* .gelu = */ lh__cuda_gelu,
    /* .quick_gelu = */ lh__cuda_quick_gelu,
    /* .geglu = */ lh__cuda_geglu,
    /* .add = */ lh__cuda_add,
    /* .mul = */ lh__cuda_mul,
    /* .axpby = */ lh__cuda_axpby,
    /* .add_channel_bias = */ lh__cuda_add_channel_bias,
    /* .upsample_nearest2x = */ lh__cuda_upsample_nearest2x,
    /* .concat_channels = */ lh__cuda_concat_channels,
    /* .transpose_c_hw = */ lh__cuda_transpose_c_hw,
    /* .timestep_embedding = */ r_timestep_embedding,
    /* .linear_backward = */ r_linear_backward,
    /* .linear_backward_hw = */ r_linear_backward_hw,
    /* .conv2d_backward = */ r_conv2d_backward,
    /* .conv2d_backward_hw = */ lh__cuda_conv2d_backward_hw,
    /* .group_norm_backward = */ r_group_norm_backward,
    /* .layer_norm_backward = */ r_layer_norm_backward,
    /* .attention_backward = */ r_attention_backward,
    /* .silu_backward = */ r_silu_backward,
    /* .gelu_backward = */ r_gelu_backward,
    /* .quick_gelu_backward = */ r_quick_gelu_backward,
    /* .geglu_backward = */ r_geglu_backward,
    /* .channel_bias_backward = */ r_channel_bias_backward,
    /* .upsample_nearest2x_backward = */ r_upsample_backward,
    /* .split_channels = */ lh__cuda_split_channels,
    /* .set_precision = */ cuda_set_precision,
    /* .round = */ lh__cuda_round,
    /* .cast = */ lh__cuda_cast,
    /* .count_nonfinite = */ lh__cuda_count_nonfinite,
    /* .count_nonfinite_into = */ lh__cuda_count_nonfinite_into,
    /* .scale = */ lh__cuda_scale,
    /* .scale_by = */ lh__cuda_scale_by,
    /* .sum_squares = */ lh__cuda_sum_squares,
    /* .mse_backward = */ lh__cuda_mse_backward,
    /* .step_check = */ lh__cuda_step_check,
    /* .adamw = */ lh__cuda_adamw,
    /* .copy = */ lh__cuda_copy,
    /* .dropout = */ lh__cuda_dropout,
    /* .dropout_backward = */ lh__cuda_dropout_backward,
    /* .graph_begin = */ lh__cuda_graph_begin,
    /* .graph_end = */ lh__cuda_graph_end,
    /* .graph_launch = */ lh__cuda_graph_launch,
    /* .graph_free = */ lh__cuda_graph_free,
};

/* ---- LH_CUDA_PROFILE=1: the same table, each op timed (profile.cu) ---- */

template <int K, typename F, F f> struct lh_timed;
template <int K, typename... A, lh_status (*f)(lh_backend *, A...)>
struct lh_timed<K, lh_status (*)(lh_backend *, A...), f> {
    static lh_status call(lh_backend *be, A... a) {
        int timed = lh__cuda_prof_begin(be);
        lh_status st = f(be, a...);
        if (timed) lh__cuda_prof_end(be, K, st);
        return st;
    }
};

/* an op that waits for the device ends the profile's batch first */
template <typename F, F f> struct lh_waits;
template <typename... A, lh_status (*f)(lh_backend *, A...)>
struct lh_waits<lh_status (*)(lh_backend *, A...), f> {
    static lh_status call(lh_backend *be, A... a) {
        lh__cuda_prof_waited(be);
        return f(be, a...);
    }
};

static constexpr lh_backend_ops profiled(lh_backend_ops o) {
#define LH_TIMED(name) o.name = lh_timed<LH_CUDA_PROF_##name, decltype(o.name), cuda_ops.name>::call;
    LH_CUDA_PROF_TIMED(LH_TIMED)
#undef LH_TIMED
#define LH_WAITS(name) o.name = lh_waits<decltype(o.name), cuda_ops.name>::call;
    LH_CUDA_PROF_WAITS(LH_WAITS)
#undef LH_WAITS
    return o;
}

static constexpr lh_backend_ops cuda_ops_profiled = profiled(cuda_ops);

/* ---- Create / destroy ---- */

static void release(lh_cuda *cu) {
    if (cu->stream) cudaStreamSynchronize(cu->stream);
    lh__cuda_prof_finish(cu);
    if (getenv("LH_CUDA_STATS"))
        fprintf(stderr, "cuda backend: peak device memory in use %.1f MiB, held %.1f MiB\n",
                (double)cu->bytes_peak / 1048576.0, (double)cu->bytes_held / 1048576.0);
    for (size_t i = 0; i < cu->n_blocks; i++) cudaFree(cu->blocks[i].ptr);
    free(cu->blocks);
    free(cu->rec_blocks);
    cudaFree(cu->workspace);
    for (size_t i = 0; i < cu->n_retired; i++) cudaFree(cu->retired[i].ptr);
    free(cu->retired);
    cudaFree(cu->blas_workspace);
    if (cu->stage) {
        cudaFreeHost(cu->stage);
        for (int k = 0; k < LH_CUDA_STAGE_SLOTS; k++) cudaEventDestroy(cu->stage_done[k]);
    }
    if (cu->cudnn) cudnnDestroy(cu->cudnn);
    if (cu->cublas) cublasDestroy(cu->cublas);
    if (cu->stream) cudaStreamDestroy(cu->stream);
    free(cu);
}

static void cuda_destroy(lh_backend *be) {
    release(lh__cuda(be));
    free(be);
}

static lh_status create_fail(char *err, size_t size, lh_status code, const char *what,
                             const char *detail) {
    if (err && size) snprintf(err, size, "cuda backend: %s%s%s", what, detail ? ": " : "",
                              detail ? detail : "");
    return code;
}

extern "C" uint32_t lh_backend_cuda_abi(void) { return lh_backend_abi(); }

extern "C" lh_status lh_backend_cuda_create(lh_backend **out, int device, char *err,
                                            size_t err_size) {
    if (!out) return create_fail(err, err_size, LH_ERR_INVALID, "NULL output pointer", NULL);
    *out = NULL;
    const char *att = getenv("LORAHOST_CUDA_ATTENTION"); /* auto (default), flash or gemm */
    if (att && *att && strcmp(att, "auto") && strcmp(att, "gemm") && strcmp(att, "flash"))
        return create_fail(err, err_size, LH_ERR_CONFIG,
                           "LORAHOST_CUDA_ATTENTION must be auto, flash or gemm, not", att);
    const char *graphs = getenv("LORAHOST_CUDA_GRAPHS"); /* "0": no graphs; "1" (default) */
    if (graphs && *graphs && strcmp(graphs, "0") && strcmp(graphs, "1"))
        return create_fail(err, err_size, LH_ERR_CONFIG, "LORAHOST_CUDA_GRAPHS must be 0 or 1, not",
                           graphs);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return create_fail(err, err_size, LH_ERR_UNSUPPORTED, "no CUDA device",
                           e != cudaSuccess ? cudaGetErrorString(e) : NULL);
    if (device < 0 || device >= count) {
        char d[64];
        snprintf(d, sizeof d, "device %d asked, %d present", device, count);
        return create_fail(err, err_size, LH_ERR_INVALID, "no such device", d);
    }
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        return create_fail(err, err_size, LH_ERR_BACKEND, "cudaSetDevice", cudaGetErrorString(e));
    lh_cuda *cu = (lh_cuda *)calloc(1, sizeof *cu);
    lh_backend *be = (lh_backend *)calloc(1, sizeof *be);
    if (!cu || !be) {
        free(cu);
        free(be);
        return create_fail(err, err_size, LH_ERR_NOMEM, "out of memory", NULL);
    }
    cu->device = device;
    cu->act = LH_DTYPE_F32;
    const char *tf32 = getenv("LORAHOST_CUDA_TF32"); /* "1": TF32 GEMMs and convolutions */
    cu->tf32 = tf32 && tf32[0] == '1' && tf32[1] == '\0';
    cu->att_mode = !att || !*att || !strcmp(att, "auto") ? LH_CUDA_ATT_AUTO
                   : !strcmp(att, "flash")               ? LH_CUDA_ATT_FLASH
                                                         : LH_CUDA_ATT_GEMM;
    const char *one = getenv("LH_CUDA_CONV_ONE_IMAGE"); /* "1": the chunked path always */
    cu->conv_one_image = one && !strcmp(one, "1");
    const char *hc = getenv("LORAHOST_CUDA_HALF_CONV"); /* "0": half-held weights widened */
    cu->half_conv = !(hc && !strcmp(hc, "0"));
    cu->graphs_off = graphs && !strcmp(graphs, "0");
    const char *what = NULL, *detail = NULL;
    cublasStatus_t bs;
    cudnnStatus_t ds;
    if ((e = cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        what = "cudaStreamCreate";
        detail = cudaGetErrorString(e);
    } else if ((bs = cublasCreate(&cu->cublas)) != CUBLAS_STATUS_SUCCESS ||
               (bs = cublasSetStream(cu->cublas, cu->stream)) != CUBLAS_STATUS_SUCCESS ||
               (bs = cublasSetMathMode(cu->cublas, CUBLAS_DEFAULT_MATH)) !=
                   CUBLAS_STATUS_SUCCESS) {
        what = "cuBLAS";
        detail = cublasGetStatusString(bs);
    } else if ((e = cudaMalloc(&cu->blas_workspace, LH_CUDA_BLAS_WORKSPACE)) != cudaSuccess) {
        what = "cuBLAS workspace";
        detail = cudaGetErrorString(e);
    } else if ((bs = cublasSetWorkspace(cu->cublas, cu->blas_workspace,
                                        LH_CUDA_BLAS_WORKSPACE)) != CUBLAS_STATUS_SUCCESS) {
        what = "cuBLAS workspace";
        detail = cublasGetStatusString(bs);
    } else if ((ds = cudnnCreate(&cu->cudnn)) != CUDNN_STATUS_SUCCESS ||
               (ds = cudnnSetStream(cu->cudnn, cu->stream)) != CUDNN_STATUS_SUCCESS) {
        what = "cuDNN";
        detail = cudnnGetErrorString(ds);
    }
    if (!what) stage_create(cu);
    if (what) {
        release(cu);
        free(be);
        return create_fail(err, err_size, LH_ERR_BACKEND, what, detail);
    }
    const char *prof = getenv("LH_CUDA_PROFILE"); /* "1": time every op (profile.cu) */
    if (prof && !strcmp(prof, "1")) lh__cuda_prof_create(cu, &cu->prof);
    cu->graphs_off |= cu->prof != NULL; /* each op queued as it runs */
    be->ops = cu->prof ? &cuda_ops_profiled : &cuda_ops;
    be->impl = cu;
    *out = be;
    return LH_OK;
}
