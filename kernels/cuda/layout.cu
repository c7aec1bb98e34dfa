/* Data movement on the device: nearest-neighbour 2x upsampling and its
 * backward (2x2 block sums), channel concatenation and split, and the
 * [n, c, hw] -> [n, hw, c] transpose (32x32 tiles through shared memory).
 * Argument checks and status codes are kernels/cpu/layout.c's and
 * backward_dense.c's. */
#include "cuda.h"
#include "op_checks.h"

#define LAYOUT_BLOCK 256
#define TR_TILE 32
#define TR_ROWS 8 /* a 32 x 8 block moves a 32 x 32 tile */

/* ---- Upsampling ---- */

/* out [rows, 2, 2w] from x [rows, w] (rows = n c h): one thread per output. */
__global__ void upsample_kernel(float *out, const float *x, int64_t total, int64_t w) {
    LH_CU_FOR(i, total) {
        int64_t ow = 2 * w, orow = i / ow, col = i - orow * ow; /* output row of 2 rows h */
        out[i] = x[(orow >> 1) * w + (col >> 1)];
    }
}

/* dx [rows, w] = sum of each 2x2 block of dy [rows, 2, 2w], summed as the cpu's. */
__global__ void upsample_bw_kernel(float *dx, const float *dy, int64_t total, int64_t w) {
    LH_CU_FOR(i, total) {
        int64_t r = i / w, k = i - r * w;
        const float *top = dy + r * 4 * w, *bot = top + 2 * w;
        dx[i] = (top[2 * k] + top[2 * k + 1]) + (bot[2 * k] + bot[2 * k + 1]);
    }
}

extern "C" lh_status lh__cuda_upsample_nearest2x(lh_backend *be, float *out, /* [n, c, 2h, 2w] */
                                                 const float *x,             /* [n, c, h, w] */
                                                 int64_t n, int64_t c, int64_t h, int64_t w) {
    int64_t rows, total;
    if (n < 0 || c < 0 || h < 0 || w < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul3(&rows, n, c, h) || !lh__cu_mul3(&total, rows, w, 4) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
    upsample_kernel<<<lh__cuda_grid(total, LAYOUT_BLOCK), LAYOUT_BLOCK, 0,
                      lh__cuda(be)->stream>>>(out, x, total, w);
    return lh__cuda_launched(be, "upsample_nearest2x");
}

extern "C" lh_status lh__cuda_upsample_nearest2x_backward(lh_backend *be,
                                                          float *dx,       /* [n, c, h, w] */
                                                          const float *dy, /* [n, c, 2h, 2w] */
                                                          int64_t n, int64_t c, int64_t h,
                                                          int64_t w) {
    int64_t rows, total;
    if (n < 0 || c < 0 || h < 0 || w < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul3(&rows, n, c, h) || !lh__cu_mul3(&total, rows, w, 4) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!dx || !dy) return LH_ERR_INVALID;
    upsample_bw_kernel<<<lh__cuda_grid(rows * w, LAYOUT_BLOCK), LAYOUT_BLOCK, 0,
                         lh__cuda(be)->stream>>>(dx, dy, rows * w, w);
    return lh__cuda_launched(be, "upsample_nearest2x_backward");
}

/* ---- Channel concatenation ---- */

/* out [n, ca + cb, hw] = [a | b]; with `split`, the reverse (a or b may be
 * NULL: that part is skipped). One thread per element of out / x. */
__global__ void channels_kernel(float *x, float *a, float *b, int64_t total, int64_t ca,
                                int64_t cb, int64_t hw, int split) {
    const int64_t c = ca + cb, img_size = c * hw;
    LH_CU_FOR(i, total) {
        int64_t img = i / img_size, rest = i - img * img_size, ch = rest / hw,
                p = rest - ch * hw;
        float *part = ch < ca ? (a ? a + (img * ca + ch) * hw + p : NULL)
                              : (b ? b + (img * cb + ch - ca) * hw + p : NULL);
        if (!part) continue;
        if (split) *part = x[i];
        else x[i] = *part;
    }
}

extern "C" lh_status lh__cuda_concat_channels(lh_backend *be, float *out, /* [n, ca + cb, hw] */
                                              const float *a,             /* [n, ca, hw] */
                                              const float *b,             /* [n, cb, hw] */
                                              int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    int64_t planes, total;
    if (n < 0 || ca < 0 || cb < 0 || hw < 0 || ca > INT64_MAX - cb) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&planes, n, ca + cb) || !lh__cu_mul2(&total, planes, hw) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || (ca > 0 && !a) || (cb > 0 && !b)) return LH_ERR_INVALID;
    /* inputs are only read: the const casts do not write through them */
    channels_kernel<<<lh__cuda_grid(total, LAYOUT_BLOCK), LAYOUT_BLOCK, 0,
                      lh__cuda(be)->stream>>>(out, (float *)a, (float *)b, total, ca, cb, hw, 0);
    return lh__cuda_launched(be, "concat_channels");
}

extern "C" lh_status lh__cuda_split_channels(lh_backend *be, float *a, /* [n, ca, hw] or NULL */
                                             float *b,                 /* [n, cb, hw] or NULL */
                                             const float *x,           /* [n, ca + cb, hw] */
                                             int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    int64_t planes, total;
    if (n < 0 || ca < 0 || cb < 0 || hw < 0 || ca > INT64_MAX - cb) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&planes, n, ca + cb) || !lh__cu_mul2(&total, planes, hw) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0 || (!a && !b)) return LH_OK;
    if (!x) return LH_ERR_INVALID;
    channels_kernel<<<lh__cuda_grid(total, LAYOUT_BLOCK), LAYOUT_BLOCK, 0,
                      lh__cuda(be)->stream>>>((float *)x, a, b, total, ca, cb, hw, 1);
    return lh__cuda_launched(be, "split_channels");
}

/* ---- Transpose ---- */

/* out [n, hw, c] = x [n, c, hw] transposed per image. A block (32 x 8
 * threads) moves one 32 x 32 tile: reads rows of x coalesced along hw,
 * writes rows of out coalesced along c; the +1 column keeps the shared
 * tile free of bank conflicts. Blocks walk the tiles grid-stride. */
__global__ void transpose_kernel(float *out, const float *x, int64_t c, int64_t hw,
                                 int64_t tiles_c, int64_t tiles_p, int64_t tiles) {
    __shared__ float tile[TR_TILE][TR_TILE + 1];
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        int64_t img = t / (tiles_c * tiles_p), r = t - img * tiles_c * tiles_p;
        int64_t c0 = r / tiles_p * TR_TILE, p0 = r % tiles_p * TR_TILE;
        const float *src = x + img * c * hw;
        float *dst = out + img * c * hw;
        for (int y = threadIdx.y; y < TR_TILE; y += TR_ROWS) {
            int64_t ch = c0 + y, p = p0 + threadIdx.x;
            if (ch < c && p < hw) tile[y][threadIdx.x] = src[ch * hw + p];
        }
        __syncthreads();
        for (int y = threadIdx.y; y < TR_TILE; y += TR_ROWS) {
            int64_t p = p0 + y, ch = c0 + threadIdx.x;
            if (ch < c && p < hw) dst[p * c + ch] = tile[threadIdx.x][y];
        }
        __syncthreads(); /* the tile is read before the next one overwrites it */
    }
}

extern "C" lh_status lh__cuda_transpose_c_hw(lh_backend *be, float *out, /* [n, hw, c] */
                                             const float *x,             /* [n, c, hw] */
                                             int64_t n, int64_t c, int64_t hw) {
    int64_t total;
    if (n < 0 || c < 0 || hw < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul3(&total, n, c, hw) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || out == x) return LH_ERR_INVALID;
    int64_t tc = (c + TR_TILE - 1) / TR_TILE, tp = (hw + TR_TILE - 1) / TR_TILE;
    int64_t tiles = n * tc * tp;
    unsigned g = tiles > 65535LL * 8 ? 65535u * 8 : (unsigned)tiles;
    transpose_kernel<<<g, dim3(TR_TILE, TR_ROWS), 0, lh__cuda(be)->stream>>>(out, x, c, hw, tc,
                                                                            tp, tiles);
    return lh__cuda_launched(be, "transpose_c_hw");
}
