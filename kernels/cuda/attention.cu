/* Scaled dot-product attention on the device, forward and backward, flash
 * style: never a [heads, nq, nk] matrix, float32 throughout (layout,
 * masking and lse as kernels/backend.h and kernels/cpu/attention.c).
 *
 * The shape of every kernel: a block of ATT_WARPS warps owns ATT_ROWS rows
 * (queries, or keys for dK/dV) and walks the other side in tiles of 32
 * through shared memory. Each warp owns ATT_R of the block's rows; a lane
 * owns one of the tile's 32 columns for the dot products (d-long, float4
 * reads from shared memory: its column's row, and the warp's rows as
 * broadcasts), then the tile's values are broadcast lane to lane (shuffles)
 * into the row accumulators, where a lane owns head dims lane + 32 cc, cc <
 * NC (NC = ceil(d / 32), a template argument: d <= 32 * ATT_NC_MAX).
 * Shared rows are padded to a multiple of 4 floats with zeros, and to an
 * odd number of float4s so the lanes' float4 reads of 8 rows hit distinct
 * banks.
 *
 *   forward:  per query row, online softmax (running max m and a per-lane
 *             partial sum l, rescaled by exp(m_old - m_new)), out = acc / l,
 *             lse = m + log l.
 * Every accumulator sums a tile's 32 terms apart, then adds that to its
 * running value: the float32 error grows with 32 + tiles, not with nk.
 *   backward: D = rowsum(dO * O) (one warp per row, float64 sum as the
 *             cpu's); lse, when not given, from the forward kernel with no
 *             output; then one kernel over query rows for dQ and one over
 *             key rows for dK and dV: no atomics, deterministic. */
#include <math.h>
#include <stdio.h>

#include "cuda.h"
#include "op_checks.h"

#define ATT_WARPS 4
#define ATT_R 4                        /* rows per warp */
#define ATT_ROWS (ATT_WARPS * ATT_R)   /* rows per block */
#define ATT_TILE 32                    /* columns per tile: one per lane */
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_NC_MAX 8                   /* d <= 256 */
#define FULL_MASK 0xffffffffu

/* ---- Shared-memory tiles ---- */

/* Row stride in floats for head dim d: a multiple of 4 that is an odd
 * number of float4s, so 8 lanes reading float4s of 8 consecutive rows use
 * all 32 banks once. */
static int att_stride(int64_t d) {
    int dp = (int)((d + 3) / 4 * 4);
    return (dp / 4) % 2 ? dp : dp + 4;
}

/* dst [rows, stride] = mul * src rows [0, valid) (ld apart, d wide), zero
 * elsewhere (columns d.. stride, rows valid.. rows). The whole block calls it. */
__device__ __forceinline__ void load_rows(float *dst, int stride, const float *src, int64_t ld,
                                          int valid, int rows, int d, float mul) {
    for (int e = threadIdx.x; e < rows * stride; e += blockDim.x) {
        int r = e / stride, c = e - r * stride;
        dst[e] = r < valid && c < d ? src[r * ld + c] * mul : 0.0f;
    }
}

/* sum over the float4s of two shared rows */
__device__ __forceinline__ float dot4(const float4 &a, const float4 &b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o));
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    return x;
}

/* ---- Forward ---- */

/* Block t: (batch, head) t / n_tiles, queries [i0, i0 + ATT_ROWS), i0 =
 * (t % n_tiles) ATT_ROWS. Shared: qs [ATT_ROWS, stride] (scale q), ks and vs
 * [ATT_TILE, stride]. out NULL: only lse (the backward's recompute). */
template <int NC>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                    int64_t heads, int64_t nq, int64_t nk, int d, int stride, float scale,
                    int causal, int64_t n_tiles) {
    extern __shared__ float4 att_smem[];
    float *qs = (float *)att_smem, *ks = qs + ATT_ROWS * stride, *vs = ks + ATT_TILE * stride;
    const int64_t bh = blockIdx.x / n_tiles, i0 = blockIdx.x % n_tiles * ATT_ROWS;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int lane = threadIdx.x & 31, r0 = (threadIdx.x >> 5) * ATT_R;
    const int qrows = (int)(nq - i0 < ATT_ROWS ? nq - i0 : ATT_ROWS);
    const float *kb = k + bi * nk * hd + h * d, *vb = v + bi * nk * hd + h * d;

    load_rows(qs, stride, q + (bi * nq + i0) * hd + h * d, hd, qrows, ATT_ROWS, d, scale);

    float m[ATT_R], l[ATT_R], acc[ATT_R][NC];
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[r][cc] = 0.0f;
    }

    /* causal: query i sees keys j <= i, so keys past the block's last query end it */
    const int64_t key_end = causal && i0 + qrows < nk ? i0 + qrows : nk;
    for (int64_t j0 = 0; j0 < key_end; j0 += ATT_TILE) {
        const int kv = (int)(key_end - j0 < ATT_TILE ? key_end - j0 : ATT_TILE);
        __syncthreads(); /* the previous tile is consumed */
        load_rows(ks, stride, kb + j0 * hd, hd, kv, ATT_TILE, d, 1.0f);
        if (out) load_rows(vs, stride, vb + j0 * hd, hd, kv, ATT_TILE, d, 1.0f);
        __syncthreads();

        /* lane's key j0 + lane against the warp's rows */
        float s[ATT_R];
#pragma unroll
        for (int r = 0; r < ATT_R; r++) s[r] = 0.0f;
        const float4 *kr = (const float4 *)(ks + lane * stride);
        for (int c4 = 0; c4 < (d + 3) / 4; c4++) { /* padding is zero */
            float4 kk = kr[c4];
#pragma unroll
            for (int r = 0; r < ATT_R; r++)
                s[r] = dot4(((const float4 *)(qs + (r0 + r) * stride))[c4], kk, s[r]);
        }

        const int64_t key = j0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            if (lane >= kv || (causal && key > i0 + r0 + r)) s[r] = -INFINITY;
            float m_new = fmaxf(m[r], warp_max(s[r]));
            float base = m_new == -INFINITY ? 0.0f : m_new; /* all masked so far */
            float p = expf(s[r] - base), corr = expf(m[r] - base); /* -inf gives 0 */
            l[r] = l[r] * corr + p;
            m[r] = m_new;
            s[r] = p;
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[r][cc] *= corr;
        }
        if (!out) continue;

        /* acc[r][cc] += sum_j p[r][j] v[j][lane + 32 cc], summed per tile first */
        float t[ATT_R][NC];
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) t[r][cc] = 0.0f;
        for (int j = 0; j < kv; j++) {
            float vj[NC];
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                int c = lane + 32 * cc;
                vj[cc] = c < d ? vs[j * stride + c] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                float pj = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int cc = 0; cc < NC; cc++) t[r][cc] = fmaf(pj, vj[cc], t[r][cc]);
            }
        }
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[r][cc] += t[r][cc];
    }

#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        float lt = warp_sum(l[r]); /* key 0 is never masked: lt > 0 */
        int64_t qi = i0 + r0 + r;
        if (qi >= nq) continue;
        if (out) {
            float inv = 1.0f / lt;
            float *o = out + (bi * nq + qi) * hd + h * d;
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                int c = lane + 32 * cc;
                if (c < d) o[c] = acc[r][cc] * inv;
            }
        }
        if (lse && lane == 0) lse[bh * nq + qi] = m[r] + logf(lt);
    }
}

/* ---- Backward ---- */

/* dd [b, heads, nq] = rowsum(dout * out) over each (batch, query, head)'s d
 * values: one warp per row, float64 partial sums. */
__global__ void attn_rowdot_kernel(float *dd, const float *dout, const float *out,
                                   int64_t heads, int64_t nq, int64_t d, int64_t rows) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
         row += warps) {
        const float *o = out + row * d, *g = dout + row * d; /* row = (bi nq + i) heads + h */
        double acc = 0.0;
        for (int64_t c = lane; c < d; c += 32) acc += (double)g[c] * o[c];
        for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, s);
        if (lane == 0) {
            int64_t h = row % heads, bq = row / heads, i = bq % nq, bi = bq / nq;
            dd[(bi * heads + h) * nq + i] = (float)acc;
        }
    }
}

/* dQ: block t as the forward's, over query rows. Shared: qs, dos
 * [ATT_ROWS, stride]; ks, vs [ATT_TILE, stride]. Per key tile, lane j:
 * P = exp(scale q.k_j - lse), dP = dO.v_j, dS = P (dP - D); then dq +=
 * dS_j k_j over the tile; dq = scale acc at the end. */
template <int NC>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_kernel(float *dq, const float *dout, const float *lse, const float *dd,
                       const float *q, const float *k, const float *v, int64_t heads,
                       int64_t nq, int64_t nk, int d, int stride, float scale, int causal,
                       int64_t n_tiles) {
    extern __shared__ float4 att_smem[];
    float *qs = (float *)att_smem, *dos = qs + ATT_ROWS * stride;
    float *ks = dos + ATT_ROWS * stride, *vs = ks + ATT_TILE * stride;
    const int64_t bh = blockIdx.x / n_tiles, i0 = blockIdx.x % n_tiles * ATT_ROWS;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int lane = threadIdx.x & 31, r0 = (threadIdx.x >> 5) * ATT_R;
    const int qrows = (int)(nq - i0 < ATT_ROWS ? nq - i0 : ATT_ROWS);
    const int64_t qoff = (bi * nq + i0) * hd + h * d;
    const float *kb = k + bi * nk * hd + h * d, *vb = v + bi * nk * hd + h * d;

    load_rows(qs, stride, q + qoff, hd, qrows, ATT_ROWS, d, 1.0f);
    load_rows(dos, stride, dout + qoff, hd, qrows, ATT_ROWS, d, 1.0f);

    float lr[ATT_R], dr[ATT_R], acc[ATT_R][NC];
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int64_t qi = i0 + r0 + r;
        lr[r] = qi < nq ? lse[bh * nq + qi] : 0.0f;
        dr[r] = qi < nq ? dd[bh * nq + qi] : 0.0f;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[r][cc] = 0.0f;
    }

    const int64_t key_end = causal && i0 + qrows < nk ? i0 + qrows : nk;
    for (int64_t j0 = 0; j0 < key_end; j0 += ATT_TILE) {
        const int kv = (int)(key_end - j0 < ATT_TILE ? key_end - j0 : ATT_TILE);
        __syncthreads();
        load_rows(ks, stride, kb + j0 * hd, hd, kv, ATT_TILE, d, 1.0f);
        load_rows(vs, stride, vb + j0 * hd, hd, kv, ATT_TILE, d, 1.0f);
        __syncthreads();

        float s[ATT_R], dp[ATT_R];
#pragma unroll
        for (int r = 0; r < ATT_R; r++) s[r] = dp[r] = 0.0f;
        const float4 *kr = (const float4 *)(ks + lane * stride);
        const float4 *vr = (const float4 *)(vs + lane * stride);
        for (int c4 = 0; c4 < (d + 3) / 4; c4++) { /* padding is zero */
            float4 kk = kr[c4], vv = vr[c4];
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                s[r] = dot4(((const float4 *)(qs + (r0 + r) * stride))[c4], kk, s[r]);
                dp[r] = dot4(((const float4 *)(dos + (r0 + r) * stride))[c4], vv, dp[r]);
            }
        }
        const int64_t key = j0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            int vis = lane < kv && i0 + r0 + r < nq && !(causal && key > i0 + r0 + r);
            float p = vis ? expf(s[r] * scale - lr[r]) : 0.0f;
            s[r] = p * (dp[r] - dr[r]); /* dS / scale */
        }
        float t[ATT_R][NC]; /* the tile's sum first */
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) t[r][cc] = 0.0f;
        for (int j = 0; j < kv; j++) {
            float kj[NC];
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                int c = lane + 32 * cc;
                kj[cc] = c < d ? ks[j * stride + c] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                float g = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int cc = 0; cc < NC; cc++) t[r][cc] = fmaf(g, kj[cc], t[r][cc]);
            }
        }
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[r][cc] += t[r][cc];
    }

#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int64_t qi = i0 + r0 + r;
        if (qi >= nq) continue;
        float *o = dq + (bi * nq + qi) * hd + h * d;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int c = lane + 32 * cc;
            if (c < d) o[c] = acc[r][cc] * scale;
        }
    }
}

/* dK and dV: block t over key rows: (batch, head) t / n_tiles, keys [j0,
 * j0 + ATT_ROWS). Shared: ks, vs [ATT_ROWS, stride]; qs, dos [ATT_TILE,
 * stride], lse and D of the query tile [ATT_TILE] each. Per query tile,
 * lane i: P = exp(scale q_i.k - lse_i), dP = dO_i.v, dS = P (dP - D_i);
 * dv += P_i dO_i, dk += dS_i q_i over the tile; dk = scale acc at the end.
 * Either output may be NULL (not written). */
template <int NC>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                        const float *dd, const float *q, const float *k, const float *v,
                        int64_t heads, int64_t nq, int64_t nk, int d, int stride, float scale,
                        int causal, int64_t n_tiles) {
    extern __shared__ float4 att_smem[];
    float *ks = (float *)att_smem, *vs = ks + ATT_ROWS * stride;
    float *qs = vs + ATT_ROWS * stride, *dos = qs + ATT_TILE * stride;
    float *lt = dos + ATT_TILE * stride, *dt = lt + ATT_TILE;
    const int64_t bh = blockIdx.x / n_tiles, j0 = blockIdx.x % n_tiles * ATT_ROWS;
    const int64_t bi = bh / heads, h = bh % heads, hd = heads * d;
    const int lane = threadIdx.x & 31, r0 = (threadIdx.x >> 5) * ATT_R;
    const int krows = (int)(nk - j0 < ATT_ROWS ? nk - j0 : ATT_ROWS);
    const int64_t koff = (bi * nk + j0) * hd + h * d;
    const float *qb = q + bi * nq * hd + h * d, *gb = dout + bi * nq * hd + h * d;

    load_rows(ks, stride, k + koff, hd, krows, ATT_ROWS, d, 1.0f);
    load_rows(vs, stride, v + koff, hd, krows, ATT_ROWS, d, 1.0f);

    float adk[ATT_R][NC], adv[ATT_R][NC];
#pragma unroll
    for (int r = 0; r < ATT_R; r++)
#pragma unroll
        for (int cc = 0; cc < NC; cc++) adk[r][cc] = adv[r][cc] = 0.0f;

    /* causal: queries before j0 see none of these keys */
    for (int64_t i0 = causal ? j0 / ATT_TILE * ATT_TILE : 0; i0 < nq; i0 += ATT_TILE) {
        const int qr = (int)(nq - i0 < ATT_TILE ? nq - i0 : ATT_TILE);
        __syncthreads();
        load_rows(qs, stride, qb + i0 * hd, hd, qr, ATT_TILE, d, 1.0f);
        load_rows(dos, stride, gb + i0 * hd, hd, qr, ATT_TILE, d, 1.0f);
        if (threadIdx.x < ATT_TILE) {
            int i = threadIdx.x;
            lt[i] = i < qr ? lse[bh * nq + i0 + i] : 0.0f;
            dt[i] = i < qr ? dd[bh * nq + i0 + i] : 0.0f;
        }
        __syncthreads();

        float s[ATT_R], dp[ATT_R];
#pragma unroll
        for (int r = 0; r < ATT_R; r++) s[r] = dp[r] = 0.0f;
        const float4 *qr4 = (const float4 *)(qs + lane * stride);
        const float4 *gr4 = (const float4 *)(dos + lane * stride);
        for (int c4 = 0; c4 < (d + 3) / 4; c4++) { /* padding is zero */
            float4 qq = qr4[c4], gg = gr4[c4];
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                s[r] = dot4(qq, ((const float4 *)(ks + (r0 + r) * stride))[c4], s[r]);
                dp[r] = dot4(gg, ((const float4 *)(vs + (r0 + r) * stride))[c4], dp[r]);
            }
        }
        const int64_t qi = i0 + lane;
        float ds[ATT_R];
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            int vis = lane < qr && j0 + r0 + r < nk && !(causal && j0 + r0 + r > qi);
            float p = vis ? expf(s[r] * scale - lt[lane]) : 0.0f;
            ds[r] = p * (dp[r] - dt[lane]); /* dS / scale */
            s[r] = p;
        }
        float tk[ATT_R][NC], tv[ATT_R][NC]; /* the tile's sums first */
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) tk[r][cc] = tv[r][cc] = 0.0f;
        for (int j = 0; j < qr; j++) {
            float qj[NC], gj[NC];
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                int c = lane + 32 * cc;
                qj[cc] = c < d ? qs[j * stride + c] : 0.0f;
                gj[cc] = c < d ? dos[j * stride + c] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                float pj = __shfl_sync(FULL_MASK, s[r], j), sj = __shfl_sync(FULL_MASK, ds[r], j);
#pragma unroll
                for (int cc = 0; cc < NC; cc++) {
                    tv[r][cc] = fmaf(pj, gj[cc], tv[r][cc]);
                    tk[r][cc] = fmaf(sj, qj[cc], tk[r][cc]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < ATT_R; r++)
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                adv[r][cc] += tv[r][cc];
                adk[r][cc] += tk[r][cc];
            }
    }

#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int64_t kj = j0 + r0 + r;
        if (kj >= nk) continue;
        int64_t at = (bi * nk + kj) * hd + h * d;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int c = lane + 32 * cc;
            if (c >= d) continue;
            if (dk) dk[at + c] = adk[r][cc] * scale;
            if (dv) dv[at + c] = adv[r][cc];
        }
    }
}

/* ---- Launch ---- */

typedef enum { ATT_FWD, ATT_BWD_DQ, ATT_BWD_DKV } att_kernel_kind;

/* Dynamic shared bytes of a kernel for row stride `stride`. */
static size_t att_smem_bytes(att_kernel_kind kind, int stride) {
    size_t rows = kind == ATT_FWD ? ATT_ROWS + 2 * ATT_TILE : 2 * ATT_ROWS + 2 * ATT_TILE;
    return rows * (size_t)stride * sizeof(float) +
           (kind == ATT_BWD_DKV ? 2 * ATT_TILE * sizeof(float) : 0);
}

typedef struct att_launch {
    float *out, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *lse_in, *dd;
    int64_t heads, nq, nk, n_tiles;
    int d, stride, causal;
    float scale;
} att_launch;

template <int NC>
static lh_status att_launch_nc(lh_backend *be, att_kernel_kind kind, const att_launch *a,
                               unsigned blocks) {
    cudaStream_t st = lh__cuda(be)->stream;
    size_t smem = att_smem_bytes(kind, a->stride);
    const void *fn = kind == ATT_FWD      ? (const void *)attn_fwd_kernel<NC>
                     : kind == ATT_BWD_DQ ? (const void *)attn_bwd_dq_kernel<NC>
                                          : (const void *)attn_bwd_dkv_kernel<NC>;
    /* past 48 KB a kernel must opt in (sm_80: 163 KB, sm_90: 227 KB) */
    if (smem > 48 * 1024) {
        lh_status s = lh__cuda_check(
            be, cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
            "attention: shared memory opt-in");
        if (s != LH_OK) return s;
    }
    if (kind == ATT_FWD)
        attn_fwd_kernel<NC><<<blocks, ATT_THREADS, smem, st>>>(
            a->out, a->lse, a->q, a->k, a->v, a->heads, a->nq, a->nk, a->d, a->stride, a->scale,
            a->causal, a->n_tiles);
    else if (kind == ATT_BWD_DQ)
        attn_bwd_dq_kernel<NC><<<blocks, ATT_THREADS, smem, st>>>(
            a->dq, a->dout, a->lse_in, a->dd, a->q, a->k, a->v, a->heads, a->nq, a->nk, a->d,
            a->stride, a->scale, a->causal, a->n_tiles);
    else
        attn_bwd_dkv_kernel<NC><<<blocks, ATT_THREADS, smem, st>>>(
            a->dk, a->dv, a->dout, a->lse_in, a->dd, a->q, a->k, a->v, a->heads, a->nq, a->nk,
            a->d, a->stride, a->scale, a->causal, a->n_tiles);
    return lh__cuda_launched(be, kind == ATT_FWD      ? "attention"
                                 : kind == ATT_BWD_DQ ? "attention_backward (dq)"
                                                      : "attention_backward (dk, dv)");
}

/* One kernel over `rows` rows (queries or keys) of every (batch, head). */
static lh_status att_run(lh_backend *be, att_kernel_kind kind, att_launch *a, int64_t bh,
                         int64_t rows) {
    a->n_tiles = (rows + ATT_ROWS - 1) / ATT_ROWS;
    int64_t blocks;
    if (!lh__cu_mul2(&blocks, bh, a->n_tiles) || blocks > INT32_MAX)
        return lh__cuda_fail(be, "attention", "too many blocks"), LH_ERR_UNSUPPORTED;
    if (blocks == 0) return LH_OK;
    switch ((a->d + 31) / 32) {
    case 1: return att_launch_nc<1>(be, kind, a, (unsigned)blocks);
    case 2: return att_launch_nc<2>(be, kind, a, (unsigned)blocks);
    case 3: return att_launch_nc<3>(be, kind, a, (unsigned)blocks);
    case 4: return att_launch_nc<4>(be, kind, a, (unsigned)blocks);
    case 5: return att_launch_nc<5>(be, kind, a, (unsigned)blocks);
    case 6: return att_launch_nc<6>(be, kind, a, (unsigned)blocks);
    case 7: return att_launch_nc<7>(be, kind, a, (unsigned)blocks);
    case 8: return att_launch_nc<8>(be, kind, a, (unsigned)blocks);
    default: return LH_ERR_UNSUPPORTED; /* checked by the callers */
    }
}

/* d past the kernels' register tiles */
static lh_status att_d_unsupported(lh_backend *be, int64_t d) {
    char msg[96];
    snprintf(msg, sizeof msg, "head dim %lld > %d not supported", (long long)d,
             32 * ATT_NC_MAX);
    lh__cuda_fail(be, "attention", msg);
    return LH_ERR_UNSUPPORTED;
}

/* ---- The ops ---- */

extern "C" lh_status lh__cuda_attention(lh_backend *be, float *out, /* [b, nq, heads * d] */
                                        float *lse,                 /* [b, heads, nq] or NULL */
                                        const float *q,             /* [b, nq, heads * d] */
                                        const float *k, const float *v, /* [b, nk, heads * d] */
                                        int64_t b, int64_t heads, int64_t nq, int64_t nk,
                                        int64_t d, float scale, int causal) {
    int64_t qn, kn;
    if (b < 0 || heads < 0 || nq < 0 || nk < 0 || d < 0 || !isfinite(scale)) return LH_ERR_INVALID;
    if (!lh__cu_mul4(&qn, b, nq, heads, d) || !lh__cu_mul4(&kn, b, nk, heads, d) ||
        !lh__cu_bytes_ok(qn) || !lh__cu_bytes_ok(kn))
        return LH_ERR_OVERFLOW;
    if (qn == 0) return LH_OK;
    if (nk == 0) return LH_ERR_INVALID; /* softmax over no keys */
    if (!out || !q || !k || !v) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    lh_status st = LH_ERR_UNSUPPORTED;
    if (cu->att_mode == LH_CUDA_ATT_GEMM)
        st = lh__cuda_attention_gemm(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal);
    else if (cu->att_mode == LH_CUDA_ATT_AUTO)
        st = lh__cuda_attention_tc(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal,
                                   cu->act);
    if (st != LH_ERR_UNSUPPORTED) return st;
    if (d > 32 * ATT_NC_MAX) { /* past the register tiles (the VAE's one head of 512) */
        st = lh__cuda_attention_gemm(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal);
        return st == LH_ERR_UNSUPPORTED ? att_d_unsupported(be, d) : st;
    }
    att_launch a = {};
    a.out = out, a.lse = lse, a.q = q, a.k = k, a.v = v;
    a.heads = heads, a.nq = nq, a.nk = nk, a.d = (int)d, a.stride = att_stride(d);
    a.causal = causal != 0, a.scale = scale;
    return att_run(be, ATT_FWD, &a, b * heads, nq);
}

extern "C" lh_status lh__cuda_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                                 const float *dout, /* [b, nq, heads * d] */
                                                 const float *out,  /* [b, nq, heads * d] */
                                                 const float *lse,  /* [b, heads, nq] or NULL */
                                                 const float *q, const float *k, const float *v,
                                                 int64_t b, int64_t heads, int64_t nq,
                                                 int64_t nk, int64_t d, float scale,
                                                 int causal) {
    int64_t qn, kn;
    if (b < 0 || heads < 0 || nq < 0 || nk < 0 || d < 0 || !isfinite(scale)) return LH_ERR_INVALID;
    if (!lh__cu_mul4(&qn, b, nq, heads, d) || !lh__cu_mul4(&kn, b, nk, heads, d) ||
        !lh__cu_bytes_ok(qn) || !lh__cu_bytes_ok(kn) || d > ((int64_t)1 << 40) ||
        nq > ((int64_t)1 << 40))
        return LH_ERR_OVERFLOW;
    if ((qn == 0 && kn == 0) || (!dq && !dk && !dv)) return LH_OK;
    if (qn > 0 && nk == 0) return LH_ERR_INVALID; /* softmax over no keys */
    if (!dout || !out || !q || !k || !v) return LH_ERR_INVALID;
    if (d > 32 * ATT_NC_MAX) return att_d_unsupported(be, d);

    /* scratch: D [b, heads, nq], then the row logsumexp unless given */
    int64_t rows = b * heads * nq; /* <= qn: d > 0 here */
    float *dd = NULL, *lse_s = NULL;
    lh_status st;
    if (rows > 0) {
        void *scr = NULL;
        st = lh__cuda_scratch(be, (size_t)rows * (lse ? 1 : 2) * sizeof(float), &scr);
        if (st != LH_OK) return st;
        dd = (float *)scr;
        lse_s = lse ? NULL : dd + rows;
    }
    att_launch a = {};
    a.q = q, a.k = k, a.v = v, a.dout = dout, a.dd = dd;
    a.lse_in = lse ? lse : lse_s;
    a.heads = heads, a.nq = nq, a.nk = nk, a.d = (int)d, a.stride = att_stride(d);
    a.causal = causal != 0, a.scale = scale;
    if (rows > 0) {
        const int per_block = 8; /* warps of 256 threads */
        int64_t g = (rows + per_block - 1) / per_block;
        attn_rowdot_kernel<<<g > 65535LL * 8 ? 65535u * 8 : (unsigned)g, 32 * per_block, 0,
                             lh__cuda(be)->stream>>>(dd, dout, out, heads, nq, d, rows);
        if ((st = lh__cuda_launched(be, "attention_backward (D)")) != LH_OK) return st;
        if (!lse) {
            a.out = NULL, a.lse = lse_s; /* the forward, lse only */
            if ((st = att_run(be, ATT_FWD, &a, b * heads, nq)) != LH_OK) return st;
        }
    }
    lh_cuda *cu = lh__cuda(be);
    if (cu->att_mode == LH_CUDA_ATT_AUTO && rows > 0) { /* leaves to us what it does not do */
        st = lh__cuda_attention_tc_backward(be, &dq, &dk, &dv, dout, a.lse_in, dd, q, k, v, b,
                                            heads, nq, nk, d, scale, causal, cu->act);
        if (st != LH_OK) return st;
    }
    if (dq) {
        a.dq = dq;
        if ((st = att_run(be, ATT_BWD_DQ, &a, b * heads, nq)) != LH_OK) return st;
    }
    if (dk || dv) {
        a.dk = dk, a.dv = dv;
        if ((st = att_run(be, ATT_BWD_DKV, &a, b * heads, nk)) != LH_OK) return st;
    }
    return LH_OK;
}
