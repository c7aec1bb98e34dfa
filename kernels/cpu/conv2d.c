/* 2-D convolution (NCHW, groups 1) as im2col + GEMM, tiled: a task is
 * (image, tile of output pixels, chunk of output channels); its thread
 * walks the input channels in chunks, builds the im2col columns of that
 * chunk and pixel tile in its own scratch ([chunk*kh*kw, tile] floats, at
 * most CONV_TILE_BYTES) and accumulates W[:, chunk] times it into the
 * output with single-threaded cblas_sgemm. Scratch is at most threads *
 * CONV_TILE_BYTES whatever the image and channel counts; tiles of up to
 * CONV_TILE_MAX pixels keep OpenBLAS's packing a small share of the work.
 * A 1x1 stride-1 unpadded conv multiplies the input in place. */
#include "cpu.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>

#define CONV_TILE_BYTES ((int64_t)4 << 20) /* im2col scratch per thread */
#define CONV_TILE_MAX 1024                 /* pixels per tile, at most */
#define CONV_TILE_MIN 256                  /* ... and at least, when splitting for threads */
#define CONV_COUT_MIN 32                   /* smallest output-channel chunk */

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void lh__cpu_conv2d_plan(int64_t *tile_pixels, int64_t *chunk_channels, int64_t n, int64_t c_in,
                         int64_t kh, int64_t kw, int64_t hw_out, int threads) {
    int64_t tp = min64(hw_out, CONV_TILE_MAX), need = cdiv(max64(threads, 1), max64(n, 1));
    while (cdiv(hw_out, tp) < need && tp > CONV_TILE_MIN) /* more tiles for more threads */
        tp = max64(CONV_TILE_MIN, cdiv(tp / 2, 16) * 16);
    tp = max64(tp, 1);
    int64_t per_channel_max = CONV_TILE_BYTES / ((int64_t)sizeof(float) * tp); /* taps x tile */
    int64_t taps;
    *tile_pixels = tp;
    if (!lh__mul2(&taps, kh, kw) || taps < 1 || taps > per_channel_max)
        *chunk_channels = 1;
    else
        *chunk_channels = max64(1, min64(c_in, per_channel_max / taps));
}

size_t lh__cpu_conv2d_scratch_bytes(int64_t n, int64_t c_in, int64_t kh, int64_t kw,
                                    int64_t hw_out, int threads) {
    int64_t tp, cc, per, all;
    lh__cpu_conv2d_plan(&tp, &cc, n, c_in, kh, kw, hw_out, threads);
    if (!lh__mul4(&per, cc, kh, kw, tp) || !lh__mul2(&all, per, threads > 0 ? threads : 1) ||
        !lh__bytes_ok(all))
        return SIZE_MAX;
    return (size_t)all * sizeof(float);
}

/* ---- im2col of one pixel tile ---- */

typedef struct conv_shape {
    int64_t c_in, h, w, kh, kw, oh, ow, k, hw_out;
    int stride, pad;
} conv_shape;

/* col [(ci1 - ci0) kh kw, p1 - p0]: row (ci - ci0, ky, kx), column p - p0 =
 * the input value under kernel tap (ky, kx) for output pixel p, 0 in the
 * padding. */
static void im2col_tile(float *col, const float *x, const conv_shape *s, int64_t ci0,
                        int64_t ci1, int64_t p0, int64_t p1) {
    int64_t pl = p1 - p0;
    for (int64_t ci = ci0; ci < ci1; ci++) {
        const float *src = x + ci * s->h * s->w;
        for (int64_t ky = 0; ky < s->kh; ky++) {
            for (int64_t kx = 0; kx < s->kw; kx++) {
                float *dst = col + (((ci - ci0) * s->kh + ky) * s->kw + kx) * pl;
                int64_t p = p0, oy = p0 / s->ow, ox = p0 % s->ow;
                while (p < p1) {
                    int64_t run = min64(s->ow - ox, p1 - p);
                    int64_t iy = oy * s->stride - s->pad + ky;
                    if (iy < 0 || iy >= s->h) {
                        memset(dst, 0, (size_t)run * sizeof(float));
                    } else if (s->stride == 1) {
                        /* ix = o - pad + kx: o in [lo, hi) reads the row, the rest is padding */
                        int64_t end = ox + run;
                        int64_t lo = min64(max64(s->pad - kx, ox), end);
                        int64_t hi = min64(max64(s->w + s->pad - kx, lo), end);
                        for (int64_t o = ox; o < lo; o++) dst[o - ox] = 0.0f;
                        if (hi > lo)
                            memcpy(dst + (lo - ox), src + iy * s->w + (lo - s->pad + kx),
                                   (size_t)(hi - lo) * sizeof(float));
                        for (int64_t o = hi; o < end; o++) dst[o - ox] = 0.0f;
                    } else {
                        const float *row = src + iy * s->w;
                        for (int64_t o = 0; o < run; o++) {
                            int64_t ix = (ox + o) * s->stride - s->pad + kx;
                            dst[o] = ix >= 0 && ix < s->w ? row[ix] : 0.0f;
                        }
                    }
                    dst += run;
                    p += run;
                    oy++;
                    ox = 0;
                }
            }
        }
    }
}

/* ---- The op ---- */

lh_status lh__cpu_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                         const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                         int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    if (n < 0 || c_in < 0 || h < 0 || wd < 0 || c_out < 0 || kh < 1 || kw < 1 || stride < 1 ||
        pad < 0)
        return LH_ERR_INVALID;
    if (h + 2 * (int64_t)pad < kh || wd + 2 * (int64_t)pad < kw) return LH_ERR_SHAPE;
    conv_shape s = {c_in, h, wd, kh, kw, (h + 2 * (int64_t)pad - kh) / stride + 1,
                    (wd + 2 * (int64_t)pad - kw) / stride + 1, 0, 0, stride, pad};
    int64_t in_img, out_total, taps;
    if (!lh__mul2(&taps, kh, kw) || !lh__mul2(&s.k, c_in, taps) || !lh__mul2(&s.hw_out, s.oh, s.ow) ||
        !lh__mul3(&in_img, c_in, h, wd) || !lh__mul3(&out_total, n, c_out, s.hw_out) ||
        !lh__bytes_ok(out_total))
        return LH_ERR_OVERFLOW;
    if (n == 0 || c_out == 0) return LH_OK;
    if (!out || (in_img > 0 && (!x || !w))) return LH_ERR_INVALID;
    if (s.k > INT_MAX || s.hw_out > INT_MAX || c_out > INT_MAX) return LH_ERR_UNSUPPORTED;

    int threads = lh__cpu_threads(be);
    int direct = kh == 1 && kw == 1 && stride == 1 && pad == 0;
    int64_t tp, chunk;
    lh__cpu_conv2d_plan(&tp, &chunk, n, c_in, kh, kw, s.hw_out, threads);
    if (direct) chunk = c_in; /* no scratch: one product over all channels */
    int64_t n_pt = cdiv(s.hw_out, tp);
    int64_t n_cc = 1;
    if (n * n_pt < threads) /* too few pixel tiles: split output channels too */
        n_cc = max64(1, min64(cdiv(threads, n * n_pt), c_out / CONV_COUT_MIN));
    int64_t tc = cdiv(c_out, n_cc);
    n_cc = cdiv(c_out, tc);
    int64_t tasks = n * n_pt * n_cc;

    /* Each thread allocates its im2col scratch when it takes its first task:
     * no shared state, and glibc keeps blocks of this size cached per
     * thread arena between calls instead of mapping fresh pages. */
    int need_col = !direct && s.k > 0, failed = 0;
    size_t col_bytes = 0;
    if (need_col) {
        int64_t per;
        if (!lh__mul3(&per, chunk, taps, tp) || !lh__bytes_ok(per)) return LH_ERR_OVERFLOW;
        col_bytes = (size_t)per * sizeof(float);
    }

#pragma omp parallel num_threads(threads) if (tasks > 1)
    {
        float *col = NULL;
        int ok = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (need_col && !col && ok && !(col = malloc(col_bytes))) ok = 0;
            if (!ok) continue;
            int64_t img_tile = t / n_cc, cc = t % n_cc;
            int64_t img = img_tile / n_pt, pt = img_tile % n_pt;
            int64_t p0 = pt * tp, p1 = min64(p0 + tp, s.hw_out), pl = p1 - p0;
            int64_t c0 = cc * tc, c1 = min64(c0 + tc, c_out);
            const float *ximg = x ? x + img * in_img : NULL;
            float *o = out + img * c_out * s.hw_out + c0 * s.hw_out + p0;
            float beta = 0.0f;
            if (bias) {
                for (int64_t co = c0; co < c1; co++)
                    for (int64_t p = 0; p < pl; p++) o[(co - c0) * s.hw_out + p] = bias[co];
                beta = 1.0f;
            } else if (s.k == 0) {
                for (int64_t co = c0; co < c1; co++) memset(o + (co - c0) * s.hw_out, 0, (size_t)pl * sizeof(float));
            }
            /* out[c0:c1, p0:p1] (+)= W[c0:c1, channels ci0:ci1] col */
            for (int64_t ci0 = 0; ci0 < c_in; ci0 += chunk) {
                int64_t ci1 = min64(ci0 + chunk, c_in), kc = (ci1 - ci0) * taps;
                const float *bmat = ximg + p0;
                int64_t ldb = s.hw_out;
                if (!direct) {
                    im2col_tile(col, ximg, &s, ci0, ci1, p0, p1);
                    bmat = col;
                    ldb = pl;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(c1 - c0), (int)pl,
                            (int)kc, 1.0f, w + c0 * s.k + ci0 * taps, (int)s.k, bmat, (int)ldb,
                            beta, o, (int)s.hw_out);
                beta = 1.0f;
            }
        }
        free(col);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? LH_ERR_NOMEM : LH_OK;
}
