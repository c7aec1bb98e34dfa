/* Data movement: nearest-neighbour 2x upsampling, channel concatenation
 * and the [n, c, hw] -> [n, hw, c] transpose (blocked 32x32). */
#include "cpu.h"

lh_status lh__cpu_upsample_nearest2x(lh_backend *be, float *out, const float *x, int64_t n,
                                     int64_t c, int64_t h, int64_t w) {
    int64_t rows, total;
    if (n < 0 || c < 0 || h < 0 || w < 0) return LH_ERR_INVALID;
    if (!lh__mul3(&rows, n, c, h) || !lh__mul3(&total, rows, w, 4) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
    /* input row r (of n*c*h) becomes output rows 2r and 2r+1 of width 2w */
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *src = x + r * w;
        float *dst = out + r * 4 * w;
        for (int64_t j = 0; j < w; j++) dst[2 * j] = dst[2 * j + 1] = src[j];
        memcpy(dst + 2 * w, dst, (size_t)(2 * w) * sizeof(float));
    }
    return LH_OK;
}

lh_status lh__cpu_concat_channels(lh_backend *be, float *out, const float *a, const float *b,
                                  int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    int64_t planes, total;
    if (n < 0 || ca < 0 || cb < 0 || hw < 0 || ca > INT64_MAX - cb) return LH_ERR_INVALID;
    if (!lh__mul2(&planes, n, ca + cb) || !lh__mul2(&total, planes, hw) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || (ca > 0 && !a) || (cb > 0 && !b)) return LH_ERR_INVALID;
    int64_t c = ca + cb;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t p = 0; p < planes; p++) {
        int64_t img = p / c, ch = p % c;
        const float *src = ch < ca ? a + (img * ca + ch) * hw : b + (img * cb + ch - ca) * hw;
        memcpy(out + p * hw, src, (size_t)hw * sizeof(float));
    }
    return LH_OK;
}

#define TR_BLOCK 32

lh_status lh__cpu_transpose_c_hw(lh_backend *be, float *out, const float *x, int64_t n,
                                 int64_t c, int64_t hw) {
    int64_t total;
    if (n < 0 || c < 0 || hw < 0) return LH_ERR_INVALID;
    if (!lh__mul3(&total, n, c, hw) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || out == x) return LH_ERR_INVALID;
    int64_t bc = (c + TR_BLOCK - 1) / TR_BLOCK, bp = (hw + TR_BLOCK - 1) / TR_BLOCK;
    int64_t tiles = n * bc * bp;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t img = t / (bc * bp), r = t % (bc * bp);
        int64_t c0 = r / bp * TR_BLOCK, p0 = r % bp * TR_BLOCK;
        int64_t c1 = c0 + TR_BLOCK < c ? c0 + TR_BLOCK : c;
        int64_t p1 = p0 + TR_BLOCK < hw ? p0 + TR_BLOCK : hw;
        const float *src = x + img * c * hw;
        float *dst = out + img * c * hw;
        for (int64_t p = p0; p < p1; p++)
            for (int64_t ch = c0; ch < c1; ch++) dst[p * c + ch] = src[ch * hw + p];
    }
    return LH_OK;
}
