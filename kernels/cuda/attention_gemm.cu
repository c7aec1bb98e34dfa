/* The attention forward as dense products (LORAHOST_CUDA_ATTENTION=gemm),
 * the alternative to the flash kernel of attention.cu, so that a GPU run
 * can measure which is faster: per image and chunk of heads,
 *   S = scale Q K^T   (cuBLAS, batched over the heads, into scratch)
 *   P = softmax(S)    (one block per row; causal rows see keys j <= i; lse)
 *   O = P V           (cuBLAS, written into out's interleaved heads)
 * Layouts as kernels/backend.h: q/out [b, n, heads * d], so head h of an
 * image is a matrix with leading dimension heads * d, and batches over heads
 * step by d. A chunk's S stays within ATT_GEMM_CHUNK bytes: several heads
 * at once, or, when one head's S is larger, one head's query rows a chunk
 * at a time. It also serves head dims past the flash kernel's 256 (the SD
 * VAE's mid-block attention is one head of 512). Causal attention with
 * nq != nk is LH_ERR_UNSUPPORTED. Float32 products (TF32 when
 * lh_cuda.tf32 or under F16/BF16 activations, as gemm.cu); the softmax in
 * float32 with a fixed reduction order. */
#include <limits.h>
#include <math.h>

#include "block_reduce.cuh"
#include "cuda.h"
#include "op_checks.h"

#define ATT_GEMM_CHUNK ((size_t)256 << 20) /* bytes of S per chunk of heads */
#define SM_BLOCK 256

template <typename T> __device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The maximum of v over the block (blockDim.x a multiple of 32), to every thread. */
__device__ __forceinline__ float block_max(float v, float *shm) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    v = lane < warps ? shm[lane] : -INFINITY;
    return warp_max(v);
}

/* Rows of s [rows, nk] (row r = head hr * nqc + query q0 + r % nqc of a
 * chunk of nqc queries) to softmax in place; lse[lse0 + hr * nq + i] when
 * lse is not NULL. Causal: keys j > i get 0. */
__global__ void softmax_rows(float *s, float *lse, int64_t lse0, int64_t nq, int64_t q0,
                             int64_t nqc, int64_t nk, int causal) {
    __shared__ float shm[32];
    __shared__ double shd[32];
    int64_t r = blockIdx.x, hr = r / nqc, i = q0 + r % nqc;
    int64_t n = causal ? (i + 1 < nk ? i + 1 : nk) : nk;
    float *row = s + r * nk;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, shm);
    double l = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) l += (double)expf(row[j] - m);
    l = lh__block_sum(l, shd);
    float inv = (float)(1.0 / l);
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x)
        row[j] = j < n ? expf(row[j] - m) * inv : 0.0f;
    if (lse && threadIdx.x == 0) lse[lse0 + hr * nq + i] = m + (float)log(l);
}

extern "C" lh_status lh__cuda_attention_gemm(lh_backend *be, float *out, float *lse,
                                             const float *q, const float *k, const float *v,
                                             int64_t b, int64_t heads, int64_t nq, int64_t nk,
                                             int64_t d, float scale, int causal) {
    /* argument checks are lh__cuda_attention's, made before it calls here */
    if (nq < 1 || nk < 1 || d < 1 || (causal && nq != nk)) return LH_ERR_UNSUPPORTED;
    size_t per_row = (size_t)nk * sizeof(float), per_head = (size_t)nq * per_row;
    if (per_row > ATT_GEMM_CHUNK || nq > INT_MAX || nk > INT_MAX || heads * d > INT_MAX)
        return LH_ERR_UNSUPPORTED;
    lh_cuda *cu = lh__cuda(be);
    /* heads per chunk hc, and query rows per chunk qc (all when a head fits) */
    int64_t hc = per_head <= ATT_GEMM_CHUNK ? (int64_t)(ATT_GEMM_CHUNK / per_head) : 1;
    int64_t qc = per_head <= ATT_GEMM_CHUNK ? nq : (int64_t)(ATT_GEMM_CHUNK / per_row);
    if (hc > heads) hc = heads;
    void *sbuf = NULL;
    lh_status st = lh__cuda_scratch(be, (size_t)hc * (size_t)qc * per_row, &sbuf);
    if (st != LH_OK) return st;
    float *s = (float *)sbuf;
    int half_act = cu->act == LH_DTYPE_F16 || cu->act == LH_DTYPE_BF16;
    cublasComputeType_t ct =
        cu->tf32 || half_act ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    int ld = (int)(heads * d);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t bi = 0; st == LH_OK && bi < b; bi++) {
        const float *qb = q + bi * nq * heads * d, *kb = k + bi * nk * heads * d,
                    *vb = v + bi * nk * heads * d;
        float *ob = out + bi * nq * heads * d;
        for (int64_t h0 = 0; st == LH_OK && h0 < heads; h0 += hc) {
            int nh = (int)(heads - h0 < hc ? heads - h0 : hc);
            for (int64_t q0 = 0; st == LH_OK && q0 < nq; q0 += qc) {
                int nqc = (int)(nq - q0 < qc ? nq - q0 : qc);
                const float *qs = qb + q0 * ld + h0 * d;
                float *os = ob + q0 * ld + h0 * d;
                /* column-major: S^T [nk, nqc] = K_h^T Q_h, K_h and Q_h [d, n] with ld */
                st = lh__cuda_check_blas(
                    be,
                    cublasGemmStridedBatchedEx(cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nk, nqc,
                                               (int)d, &scale, kb + h0 * d, CUDA_R_32F, ld,
                                               (long long)d, qs, CUDA_R_32F, ld, (long long)d,
                                               &zero, s, CUDA_R_32F, (int)nk,
                                               (long long)nqc * nk, nh, ct, CUBLAS_GEMM_DEFAULT),
                    "attention: QK^T");
                if (st != LH_OK) break;
                softmax_rows<<<(unsigned)(nh * nqc), SM_BLOCK, 0, cu->stream>>>(
                    s, lse, (bi * heads + h0) * nq, nq, q0, nqc, nk, causal);
                if ((st = lh__cuda_launched(be, "attention: softmax")) != LH_OK) break;
                /* column-major: O_h [d, nqc] (ld) = V_h [d, nk] (ld) P^T [nk, nqc] */
                st = lh__cuda_check_blas(
                    be,
                    cublasGemmStridedBatchedEx(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, nqc,
                                               (int)nk, &one, vb + h0 * d, CUDA_R_32F, ld,
                                               (long long)d, s, CUDA_R_32F, (int)nk,
                                               (long long)nqc * nk, &zero, os, CUDA_R_32F, ld,
                                               (long long)d, nh, ct, CUBLAS_GEMM_DEFAULT),
                    "attention: PV");
            }
        }
    }
    return st;
}
