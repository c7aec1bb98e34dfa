/* Attention on the tensor cores, for F16/BF16 activations
 * (LORAHOST_CUDA_ATTENTION=auto, the default): flash style as attention.cu's
 * float32 kernels, with the products as 16x16x16 WMMA products in the
 * activation's half type and float32 accumulation.
 *
 * Under F16/BF16 activations every op's output is already rounded to the
 * half type, so converting Q, K, V and dO to it loses nothing; what differs
 * from the float32 kernels is that P (and in the backward dS) is rounded to
 * the half type before the products that take it (as PyTorch's flash
 * attention does), and the summation order. Row maxima, sums, lse and D
 * stay float32.
 *
 * Forward: a block of TC_WARPS warps owns TC_M = 16 TC_WARPS query rows of
 * one (batch, head): warp w the rows 16 w .. 16 w + 15. It walks the keys
 * in tiles of TC_N through shared memory (K and V converted to the half
 * type, zero past the tile and past d). Per tile a warp
 *   1. S = Q K^T (its 16 rows x TC_N keys, float32, into shared memory);
 *   2. online softmax: lanes 2r and 2r + 1 own row r, half the keys each:
 *      m_new = max(m, scale S), corr = exp(m - m_new), P = exp(scale S -
 *      m_new) (half type, into shared memory), l = l corr + sum P;
 *   3. O *= corr row by row (O: float32 in shared memory);
 *   4. O += P V (the accumulators loaded from O and stored back).
 * At the end out = O / l and lse = m + log l.
 *
 * Backward (FlashAttention-2's): with lse and D = rowsum(dO * O) from
 * attention.cu, P = exp(scale S - lse), dP = dO V^T, dS = P (dP - D), and
 *   dQ = scale dS K   (one kernel over query rows, walking key tiles),
 *   dK = scale dS^T Q, dV = P^T dO   (one over key rows, walking query
 *                                     tiles, S^T = K Q^T computed as such),
 * accumulated in float32 in shared memory; no atomics.
 *
 * Head dims are padded to a multiple of 16 with zeros. A shape whose
 * shared memory exceeds the device's opt-in limit (or d > TC_D_MAX) is
 * LH_ERR_UNSUPPORTED: the caller runs the float32 kernels. */
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
static_assert(TC_M == TC_N, "the backward's tiles of queries and keys share one size");
#define FULL_MASK 0xffffffffu

#define TC_D_MAX 256

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
                           float scale, int causal, int64_t n_tiles, unsigned blocks);

/* ---- Backward ---- */

/* The backward kernels' shared memory: the block's own rows (Q and dO for
 * dQ, K and V for dK/dV) and the tile walked (K and V, or Q and dO), lse
 * and D of the tile's queries (dK/dV), and per warp: S (then dP) float32,
 * P (dK/dV) and dS in the half type, and one (dQ) or two (dK, dV) float32
 * accumulators. */
typedef struct tc_bwd_layout {
    int dp, ldh, lds, ldp, ldo;
    size_t own0, own1, walk0, walk1, rows, s, p, ds, acc0, acc1, bytes;
} tc_bwd_layout;

static tc_bwd_layout tc_bwd_layout_for(int d, int dkv) {
    tc_bwd_layout L;
    L.dp = (d + 15) / 16 * 16;
    L.ldh = L.dp + 8;
    L.lds = TC_N + 4;
    L.ldp = TC_N + 8;
    L.ldo = L.dp + 4;
    size_t off = 0, tile = (size_t)TC_M * L.ldh * 2; /* TC_M == TC_N */
    L.own0 = off, off = align128(off + tile);
    L.own1 = off, off = align128(off + tile);
    L.walk0 = off, off = align128(off + tile);
    L.walk1 = off, off = align128(off + tile);
    L.rows = off, off = align128(off + (size_t)2 * TC_N * 4);
    L.s = off, off = align128(off + (size_t)TC_WARPS * 16 * L.lds * 4);
    L.p = off; /* P: dk/dv only (dq keeps it in registers) */
    if (dkv) off = align128(off + (size_t)TC_WARPS * 16 * L.ldp * 2);
    L.ds = off, off = align128(off + (size_t)TC_WARPS * 16 * L.ldp * 2);
    L.acc0 = off, off = align128(off + (size_t)TC_WARPS * 16 * L.ldo * 4);
    L.acc1 = off;
    if (dkv) off = align128(off + (size_t)TC_WARPS * 16 * L.ldo * 4);
    L.bytes = off;
    return L;
}

/* c [16, TC_N] (float32, ldm lds) = a [16, dp] b^T, a and b^T's rows in
 * shared memory (b [TC_N, dp] row by row: a col-major B). One warp. */
template <typename T>
__device__ __forceinline__ void warp_abt(float *c, int lds, const T *a, const T *b, int ldh,
                                         int dp) {
    for (int nt = 0; nt < TC_N / 16; nt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kt = 0; kt < dp / 16; kt++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, a + kt * 16, ldh);
            wmma::load_matrix_sync(fb, b + nt * 16 * ldh + kt * 16, ldh);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(c + nt * 16, acc, lds, wmma::mem_row_major);
    }
}

/* acc [16, dp] (float32, ldm ldo) += a [16, TC_N] (ldm ldp) b [TC_N, dp]
 * (row by row, ldm ldh). One warp. */
template <typename T>
__device__ __forceinline__ void warp_acc_ab(float *acc, int ldo, const T *a, int ldp, const T *b,
                                            int ldh, int dp) {
    for (int nt = 0; nt < dp / 16; nt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::load_matrix_sync(c, acc + nt * 16, ldo, wmma::mem_row_major);
        for (int kt = 0; kt < TC_N / 16; kt++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, a + kt * 16, ldp);
            wmma::load_matrix_sync(fb, b + kt * 16 * ldh + nt * 16, ldh);
            wmma::mma_sync(c, fa, fb, c);
        }
        wmma::store_matrix_sync(acc + nt * 16, c, ldo, wmma::mem_row_major);
    }
}

/* dq: block t owns queries [i0, i0 + TC_M) of (batch, head) t / n_tiles,
 * warp w the 16 from i0 + 16 w; lanes 2r, 2r + 1 row r, half the keys each. */
template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
    attn_tc_dq_kernel(float *dq, const float *dout, const float *lse, const float *dd,
                      const float *q, const float *k, const float *v, int64_t heads, int64_t nq,
                      int64_t nk, int d, float scale, int causal, int64_t n_tiles,
                      tc_bwd_layout L) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    T *qs = (T *)(tc_smem + L.own0), *dos = (T *)(tc_smem + L.own1);
    T *ks = (T *)(tc_smem + L.walk0), *vs = (T *)(tc_smem + L.walk1);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = (float *)(tc_smem + L.s) + warp * 16 * L.lds;
    T *dsw = (T *)(tc_smem + L.ds) + warp * 16 * L.ldp;
    float *accw = (float *)(tc_smem + L.acc0) + warp * 16 * L.ldo;
    const int64_t bh = blockIdx.x / n_tiles, i0 = blockIdx.x % n_tiles * TC_M;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int qrows = (int)(nq - i0 < TC_M ? nq - i0 : TC_M), dp = L.dp, ldh = L.ldh;
    const float *kb = k + bi * nk * hd + h * d, *vb = v + bi * nk * hd + h * d;

    load_tile<T>(qs, ldh, q + (bi * nq + i0) * hd + h * d, hd, qrows, TC_M, d, dp);
    load_tile<T>(dos, ldh, dout + (bi * nq + i0) * hd + h * d, hd, qrows, TC_M, d, dp);
    for (int e = lane; e < 16 * dp; e += 32) {
        int r = e / dp;
        accw[r * L.ldo + (e - r * dp)] = 0.0f;
    }
    const int rme = lane >> 1, side = lane & 1;
    const int64_t qme = i0 + warp * 16 + rme;
    const int qok = qme < nq;
    const float lme = qok ? lse[bh * nq + qme] : 0.0f, dme = qok ? dd[bh * nq + qme] : 0.0f;
    const T *qw = qs + warp * 16 * ldh, *dow = dos + warp * 16 * ldh;

    const int64_t key_end = causal && i0 + qrows < nk ? i0 + qrows : nk;
    for (int64_t j0 = 0; j0 < key_end; j0 += TC_N) {
        const int kv = (int)(key_end - j0 < TC_N ? key_end - j0 : TC_N);
        __syncthreads(); /* the previous tile is consumed (and Q, dO are loaded) */
        load_tile<T>(ks, ldh, kb + j0 * hd, hd, kv, TC_N, d, dp);
        load_tile<T>(vs, ldh, vb + j0 * hd, hd, kv, TC_N, d, dp);
        __syncthreads();
        warp_abt<T>(sw, L.lds, qw, ks, ldh, dp); /* S = Q K^T */
        __syncwarp();
        float p[32];
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = side * 32 + c;
            int vis = qok && col < kv && !(causal && j0 + col > qme);
            p[c] = vis ? expf(sw[rme * L.lds + col] * scale - lme) : 0.0f;
        }
        __syncwarp();
        warp_abt<T>(sw, L.lds, dow, vs, ldh, dp); /* dP = dO V^T */
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = side * 32 + c;
            dsw[rme * L.ldp + col] = to_half<T>(p[c] * (sw[rme * L.lds + col] - dme));
        }
        __syncwarp();
        warp_acc_ab<T>(accw, L.ldo, dsw, L.ldp, ks, ldh, dp); /* dQ += dS K */
        __syncwarp();
    }
    for (int e = lane; e < 16 * d; e += 32) {
        int r = e / d, c = e - r * d;
        int64_t qi = i0 + warp * 16 + r;
        if (qi < nq) dq[(bi * nq + qi) * hd + h * d + c] = accw[r * L.ldo + c] * scale;
    }
}

/* dk, dv: block t owns keys [j0, j0 + TC_N) of (batch, head) t / n_tiles,
 * warp w the 16 from j0 + 16 w; lanes 2r, 2r + 1 key r, half the queries. */
template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
    attn_tc_dkv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                       const float *dd, const float *q, const float *k, const float *v,
                       int64_t heads, int64_t nq, int64_t nk, int d, float scale, int causal,
                       int64_t n_tiles, tc_bwd_layout L) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    T *ks = (T *)(tc_smem + L.own0), *vs = (T *)(tc_smem + L.own1);
    T *qs = (T *)(tc_smem + L.walk0), *dos = (T *)(tc_smem + L.walk1);
    float *lse_s = (float *)(tc_smem + L.rows), *dd_s = lse_s + TC_N;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = (float *)(tc_smem + L.s) + warp * 16 * L.lds;
    T *pw = (T *)(tc_smem + L.p) + warp * 16 * L.ldp;
    T *dsw = (T *)(tc_smem + L.ds) + warp * 16 * L.ldp;
    float *dkw = (float *)(tc_smem + L.acc0) + warp * 16 * L.ldo;
    float *dvw = (float *)(tc_smem + L.acc1) + warp * 16 * L.ldo;
    const int64_t bh = blockIdx.x / n_tiles, j0 = blockIdx.x % n_tiles * TC_N;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int krows = (int)(nk - j0 < TC_N ? nk - j0 : TC_N), dp = L.dp, ldh = L.ldh;
    const float *qb = q + bi * nq * hd + h * d, *ob = dout + bi * nq * hd + h * d;

    load_tile<T>(ks, ldh, k + (bi * nk + j0) * hd + h * d, hd, krows, TC_N, d, dp);
    load_tile<T>(vs, ldh, v + (bi * nk + j0) * hd + h * d, hd, krows, TC_N, d, dp);
    for (int e = lane; e < 16 * dp; e += 32) {
        int r = e / dp, c = e - r * dp;
        dkw[r * L.ldo + c] = 0.0f;
        dvw[r * L.ldo + c] = 0.0f;
    }
    __syncwarp(); /* the epilogue reads other lanes' zeros when no query tile runs */
    const int rme = lane >> 1, side = lane & 1;
    const int64_t kme = j0 + warp * 16 + rme;
    const T *kw = ks + warp * 16 * ldh, *vw = vs + warp * 16 * ldh;

    /* causal: key j is seen by queries i >= j, so query tiles before j0 see none */
    for (int64_t i0 = causal ? j0 : 0; i0 < nq; i0 += TC_M) {
        const int qv = (int)(nq - i0 < TC_M ? nq - i0 : TC_M);
        __syncthreads(); /* the previous tile is consumed (and K, V are loaded) */
        load_tile<T>(qs, ldh, qb + i0 * hd, hd, qv, TC_M, d, dp);
        load_tile<T>(dos, ldh, ob + i0 * hd, hd, qv, TC_M, d, dp);
        for (int e = threadIdx.x; e < TC_M; e += TC_THREADS) {
            lse_s[e] = e < qv ? lse[bh * nq + i0 + e] : 0.0f;
            dd_s[e] = e < qv ? dd[bh * nq + i0 + e] : 0.0f;
        }
        __syncthreads();
        warp_abt<T>(sw, L.lds, kw, qs, ldh, dp); /* S^T = K Q^T */
        __syncwarp();
        float p[32];
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = side * 32 + c;
            int vis = kme < nk && col < qv && !(causal && kme > i0 + col);
            p[c] = vis ? expf(sw[rme * L.lds + col] * scale - lse_s[col]) : 0.0f;
            pw[rme * L.ldp + col] = to_half<T>(p[c]);
        }
        __syncwarp();
        warp_abt<T>(sw, L.lds, vw, dos, ldh, dp); /* dP^T = V dO^T */
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = side * 32 + c;
            dsw[rme * L.ldp + col] = to_half<T>(p[c] * (sw[rme * L.lds + col] - dd_s[col]));
        }
        __syncwarp();
        warp_acc_ab<T>(dvw, L.ldo, pw, L.ldp, dos, ldh, dp);  /* dV += P^T dO */
        warp_acc_ab<T>(dkw, L.ldo, dsw, L.ldp, qs, ldh, dp); /* dK += dS^T Q */
        __syncwarp();
    }
    for (int e = lane; e < 16 * d; e += 32) {
        int r = e / d, c = e - r * d;
        int64_t kj = j0 + warp * 16 + r;
        if (kj >= nk) continue;
        if (dk) dk[(bi * nk + kj) * hd + h * d + c] = dkw[r * L.ldo + c] * scale;
        if (dv) dv[(bi * nk + kj) * hd + h * d + c] = dvw[r * L.ldo + c];
    }
}

/* Opt a kernel in to `bytes` of dynamic shared memory: LH_ERR_UNSUPPORTED
 * past the device's limit. */
static lh_status tc_smem_optin(lh_backend *be, const void *fn, size_t bytes) {
    int limit = 0;
    if (cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               lh__cuda(be)->device) != cudaSuccess) {
        cudaGetLastError();
        return LH_ERR_UNSUPPORTED;
    }
    if (bytes > (size_t)limit) return LH_ERR_UNSUPPORTED;
    if (bytes <= 48 * 1024) return LH_OK;
    return lh__cuda_check(be, cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   (int)bytes),
                          "attention (tensor cores): shared memory opt-in");
}

template <typename T>
static lh_status tc_launch(lh_backend *be, float *out, float *lse, const float *q, const float *k,
                           const float *v, int64_t heads, int64_t nq, int64_t nk, int d,
                           float scale, int causal, int64_t n_tiles, unsigned blocks) {
    tc_layout L = tc_layout_for(d);
    lh_status s = tc_smem_optin(be, (const void *)attn_tc_kernel<T>, L.bytes);
    if (s != LH_OK) return s;
    attn_tc_kernel<T><<<blocks, TC_THREADS, L.bytes, lh__cuda(be)->stream>>>(
        out, lse, q, k, v, heads, nq, nk, d, scale, causal, n_tiles, L);
    return lh__cuda_launched(be, "attention (tensor cores)");
}

/* The backward kernels that fit the device's shared memory; each one run
 * sets its outputs' pointers to NULL (what is left, the caller computes). */
template <typename T>
static lh_status tc_backward(lh_backend *be, float **dq, float **dk, float **dv,
                             const float *dout, const float *lse, const float *dd, const float *q,
                             const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                             int64_t nk, int d, float scale, int causal) {
    cudaStream_t st = lh__cuda(be)->stream;
    tc_bwd_layout Lq = tc_bwd_layout_for(d, 0), Lkv = tc_bwd_layout_for(d, 1);
    int64_t qt = (nq + TC_M - 1) / TC_M, kt = (nk + TC_N - 1) / TC_N, qb, kb;
    if (!lh__cu_mul2(&qb, b * heads, qt) || !lh__cu_mul2(&kb, b * heads, kt) || qb > INT32_MAX ||
        kb > INT32_MAX || qb == 0 || kb == 0)
        return LH_OK; /* all left to the float32 kernels */
    lh_status s;
    if (*dq && (s = tc_smem_optin(be, (const void *)attn_tc_dq_kernel<T>, Lq.bytes)) !=
                   LH_ERR_UNSUPPORTED) {
        if (s != LH_OK) return s;
        attn_tc_dq_kernel<T><<<(unsigned)qb, TC_THREADS, Lq.bytes, st>>>(
            *dq, dout, lse, dd, q, k, v, heads, nq, nk, d, scale, causal, qt, Lq);
        if ((s = lh__cuda_launched(be, "attention_backward (tensor cores, dq)")) != LH_OK) return s;
        *dq = NULL;
    }
    if ((*dk || *dv) && (s = tc_smem_optin(be, (const void *)attn_tc_dkv_kernel<T>,
                                           Lkv.bytes)) != LH_ERR_UNSUPPORTED) {
        if (s != LH_OK) return s;
        attn_tc_dkv_kernel<T><<<(unsigned)kb, TC_THREADS, Lkv.bytes, st>>>(
            *dk, *dv, dout, lse, dd, q, k, v, heads, nq, nk, d, scale, causal, kt, Lkv);
        if ((s = lh__cuda_launched(be, "attention_backward (tensor cores, dk, dv)")) != LH_OK)
            return s;
        *dk = *dv = NULL;
    }
    return LH_OK;
}

extern "C" lh_status lh__cuda_attention_tc_backward(lh_backend *be, float **dq, float **dk,
                                                    float **dv, const float *dout,
                                                    const float *lse, const float *dd,
                                                    const float *q, const float *k,
                                                    const float *v, int64_t b, int64_t heads,
                                                    int64_t nq, int64_t nk, int64_t d,
                                                    float scale, int causal, lh_dtype act) {
    if (d < 1 || d > TC_D_MAX || (act != LH_DTYPE_F16 && act != LH_DTYPE_BF16)) return LH_OK;
    return act == LH_DTYPE_F16
               ? tc_backward<__half>(be, dq, dk, dv, dout, lse, dd, q, k, v, b, heads, nq, nk,
                                     (int)d, scale, causal)
               : tc_backward<__nv_bfloat16>(be, dq, dk, dv, dout, lse, dd, q, k, v, b, heads,
                                            nq, nk, (int)d, scale, causal);
}

extern "C" lh_status lh__cuda_attention_tc(lh_backend *be, float *out, float *lse, const float *q,
                                           const float *k, const float *v, int64_t b,
                                           int64_t heads, int64_t nq, int64_t nk, int64_t d,
                                           float scale, int causal, lh_dtype act) {
    if (d < 1 || d > TC_D_MAX || (act != LH_DTYPE_F16 && act != LH_DTYPE_BF16))
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
