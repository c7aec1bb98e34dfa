/* The attention forward on the tensor cores, for F16/BF16 activations
 * (LORAHOST_CUDA_ATTENTION=auto, the default): flash style as
 * attention.cu's float32 kernel, with Q K^T and P V as 16x16x16 WMMA
 * products in the activation's half type and float32 accumulation.
 *
 * Under F16/BF16 activations every op's output is already rounded to the
 * half type, so converting Q, K and V to it loses nothing; what differs
 * from the float32 kernel is P, rounded to the half type before P V (as
 * PyTorch's flash attention does), and the summation order. The row sums
 * l and the running maxima stay float32 and unrounded.
 *
 * A block of TC_WARPS warps owns TC_M = 16 TC_WARPS query rows of one
 * (batch, head): warp w the rows 16 w .. 16 w + 15. It walks the keys in
 * tiles of TC_N through shared memory (K and V converted to the half type,
 * zero past the tile and past d). Per tile a warp
 *   1. S = Q K^T (its 16 rows x TC_N keys, float32, into shared memory);
 *   2. online softmax: lanes 2r and 2r + 1 own row r, half the keys each:
 *      m_new = max(m, scale S), corr = exp(m - m_new), P = exp(scale S -
 *      m_new) (half type, into shared memory), l = l corr + sum P;
 *   3. O *= corr row by row (O: float32 in shared memory);
 *   4. O += P V (the accumulators loaded from O and stored back).
 * At the end out = O / l and lse = m + log l. Head dims are padded to a
 * multiple of 16 with zeros; d <= TC_D_MAX (the shared memory of sm_80). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <mma.h>

#include "cuda.h"
#include "op_checks.h"

using namespace nvcuda;

#define TC_WARPS 4
#define TC_M (16 * TC_WARPS) /* query rows per block */
#define TC_N 64              /* keys per tile */
#define TC_THREADS (32 * TC_WARPS)
#define FULL_MASK 0xffffffffu

/* Shared memory: byte offsets of each region (128-byte aligned) and the
 * leading dimensions, chosen so every WMMA pointer is 32-byte aligned and
 * every ldm a multiple of 8 halves / 4 floats. */
typedef struct tc_layout {
    int dp;  /* d padded to a multiple of 16 */
    int ldh; /* Q, K, V rows: dp + 8 halves */
    int lds; /* S rows: TC_N + 4 floats */
    int ldp; /* P rows: TC_N + 8 halves */
    int ldo; /* O rows: dp + 4 floats */
    size_t q, k, v, s, p, o, row, bytes;
} tc_layout;

static size_t align128(size_t x) { return (x + 127) & ~(size_t)127; }

static tc_layout tc_layout_for(int d) {
    tc_layout L;
    L.dp = (d + 15) / 16 * 16;
    L.ldh = L.dp + 8;
    L.lds = TC_N + 4;
    L.ldp = TC_N + 8;
    L.ldo = L.dp + 4;
    size_t off = 0;
    L.q = off, off = align128(off + (size_t)TC_M * L.ldh * 2);
    L.k = off, off = align128(off + (size_t)TC_N * L.ldh * 2);
    L.v = off, off = align128(off + (size_t)TC_N * L.ldh * 2);
    L.s = off, off = align128(off + (size_t)TC_WARPS * 16 * L.lds * 4);
    L.p = off, off = align128(off + (size_t)TC_WARPS * 16 * L.ldp * 2);
    L.o = off, off = align128(off + (size_t)TC_WARPS * 16 * L.ldo * 4);
    L.row = off, off = align128(off + (size_t)TC_WARPS * 3 * 16 * 4); /* corr, l, m */
    L.bytes = off;
    return L;
}

template <typename T> __device__ __forceinline__ T to_half(float x);
template <> __device__ __forceinline__ __half to_half<__half>(float x) {
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 to_half<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/* dst [rows, ldh] = src rows [0, valid) (ld apart, d wide) in T, zero
 * elsewhere up to dp columns. The whole block calls it. */
template <typename T>
__device__ __forceinline__ void load_tile(T *dst, int ldh, const float *src, int64_t ld,
                                          int valid, int rows, int d, int dp) {
    for (int e = threadIdx.x; e < rows * dp; e += TC_THREADS) {
        int r = e / dp, c = e - r * dp;
        dst[r * ldh + c] = to_half<T>(r < valid && c < d ? src[r * ld + c] : 0.0f);
    }
}

template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
    attn_tc_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                   int64_t heads, int64_t nq, int64_t nk, int d, float scale, int causal,
                   int64_t n_tiles, tc_layout L) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    T *qs = (T *)(tc_smem + L.q), *ks = (T *)(tc_smem + L.k), *vs = (T *)(tc_smem + L.v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = (float *)(tc_smem + L.s) + warp * 16 * L.lds;
    T *pw = (T *)(tc_smem + L.p) + warp * 16 * L.ldp;
    float *ow = (float *)(tc_smem + L.o) + warp * 16 * L.ldo;
    float *corr_w = (float *)(tc_smem + L.row) + warp * 48, *l_w = corr_w + 16, *m_w = l_w + 16;
    const int64_t bh = blockIdx.x / n_tiles, i0 = blockIdx.x % n_tiles * TC_M;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int qrows = (int)(nq - i0 < TC_M ? nq - i0 : TC_M), dp = L.dp, ldh = L.ldh;
    const float *kb = k + bi * nk * hd + h * d, *vb = v + bi * nk * hd + h * d;

    load_tile<T>(qs, ldh, q + (bi * nq + i0) * hd + h * d, hd, qrows, TC_M, d, dp);
    for (int e = lane; e < 16 * dp; e += 32) {
        int r = e / dp;
        ow[r * L.ldo + (e - r * dp)] = 0.0f;
    }
    const int rme = lane >> 1, side = lane & 1; /* this lane's row, and half of the keys */
    const int64_t qme = i0 + warp * 16 + rme;
    float m = -INFINITY, l = 0.0f;

    /* causal: query i sees keys j <= i, so keys past the block's last query end it */
    const int64_t key_end = causal && i0 + qrows < nk ? i0 + qrows : nk;
    for (int64_t j0 = 0; j0 < key_end; j0 += TC_N) {
        const int kv = (int)(key_end - j0 < TC_N ? key_end - j0 : TC_N);
        __syncthreads(); /* the previous tile is consumed (and Q is loaded) */
        load_tile<T>(ks, ldh, kb + j0 * hd, hd, kv, TC_N, d, dp);
        load_tile<T>(vs, ldh, vb + j0 * hd, hd, kv, TC_N, d, dp);
        __syncthreads();

        /* 1. S = Q K^T: K's rows are the columns of a col-major B */
        for (int nt = 0; nt < TC_N / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kt = 0; kt < dp / 16; kt++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                wmma::load_matrix_sync(a, qs + warp * 16 * ldh + kt * 16, ldh);
                wmma::load_matrix_sync(b, ks + nt * 16 * ldh + kt * 16, ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(sw + nt * 16, acc, L.lds, wmma::mem_row_major);
        }
        __syncwarp();

        /* 2. online softmax of row rme over keys side * 32 .. side * 32 + 31 */
        float s[32], mx = -INFINITY;
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = side * 32 + c;
            float x = sw[rme * L.lds + col] * scale;
            if (col >= kv || (causal && j0 + col > qme)) x = -INFINITY;
            s[c] = x;
            mx = fmaxf(mx, x);
        }
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        float m_new = fmaxf(m, mx);
        float base = m_new == -INFINITY ? 0.0f : m_new; /* all masked so far */
        float corr = expf(m - base), ps = 0.0f;         /* -inf gives 0 */
#pragma unroll
        for (int c = 0; c < 32; c++) {
            float p = expf(s[c] - base);
            ps += p;
            pw[rme * L.ldp + side * 32 + c] = to_half<T>(p);
        }
        ps += __shfl_xor_sync(FULL_MASK, ps, 1);
        l = l * corr + ps;
        m = m_new;
        if (side == 0) corr_w[rme] = corr;
        __syncwarp();

        /* 3. O *= corr, row by row */
        for (int e = lane; e < 16 * dp; e += 32) {
            int r = e / dp;
            ow[r * L.ldo + (e - r * dp)] *= corr_w[r];
        }
        __syncwarp();

        /* 4. O += P V: V's rows are the rows of a row-major B */
        for (int nt = 0; nt < dp / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, ow + nt * 16, L.ldo, wmma::mem_row_major);
            for (int kt = 0; kt < TC_N / 16; kt++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(a, pw + kt * 16, L.ldp);
                wmma::load_matrix_sync(b, vs + kt * 16 * ldh + nt * 16, ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(ow + nt * 16, acc, L.ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }

    if (side == 0) l_w[rme] = l, m_w[rme] = m; /* key 0 is never masked: l > 0 */
    __syncwarp();
    for (int e = lane; e < 16 * d; e += 32) {
        int r = e / d, c = e - r * d;
        int64_t qi = i0 + warp * 16 + r;
        if (qi < nq) out[(bi * nq + qi) * hd + h * d + c] = ow[r * L.ldo + c] / l_w[r];
    }
    if (lse && side == 0 && qme < nq) lse[bh * nq + qme] = m_w[rme] + logf(l_w[rme]);
}

template <typename T>
static lh_status tc_launch(lh_backend *be, float *out, float *lse, const float *q, const float *k,
                           const float *v, int64_t heads, int64_t nq, int64_t nk, int d,
                           float scale, int causal, int64_t n_tiles, unsigned blocks) {
    tc_layout L = tc_layout_for(d);
    if (L.bytes > 48 * 1024) { /* past 48 KB a kernel must opt in */
        lh_status s = lh__cuda_check(be, cudaFuncSetAttribute(attn_tc_kernel<T>,
                                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                              (int)L.bytes),
                                     "attention (tensor cores): shared memory opt-in");
        if (s != LH_OK) return s;
    }
    attn_tc_kernel<T><<<blocks, TC_THREADS, L.bytes, lh__cuda(be)->stream>>>(
        out, lse, q, k, v, heads, nq, nk, d, scale, causal, n_tiles, L);
    return lh__cuda_launched(be, "attention (tensor cores)");
}

extern "C" lh_status lh__cuda_attention_tc(lh_backend *be, float *out, float *lse, const float *q,
                                           const float *k, const float *v, int64_t b,
                                           int64_t heads, int64_t nq, int64_t nk, int64_t d,
                                           float scale, int causal, lh_dtype act) {
    if (d < 1 || d > LH_CUDA_ATT_TC_D_MAX || (act != LH_DTYPE_F16 && act != LH_DTYPE_BF16))
        return LH_ERR_UNSUPPORTED; /* the caller runs the float32 kernel */
    int64_t n_tiles = (nq + TC_M - 1) / TC_M, blocks;
    if (!lh__cu_mul2(&blocks, b * heads, n_tiles) || blocks > INT32_MAX)
        return LH_ERR_UNSUPPORTED;
    if (blocks == 0) return LH_OK;
    return act == LH_DTYPE_F16
               ? tc_launch<__half>(be, out, lse, q, k, v, heads, nq, nk, (int)d, scale, causal,
                                   n_tiles, (unsigned)blocks)
               : tc_launch<__nv_bfloat16>(be, out, lse, q, k, v, heads, nq, nk, (int)d, scale,
                                          causal, n_tiles, (unsigned)blocks);
}
