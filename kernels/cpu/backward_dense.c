/* Backward of the dense ops: linear (gemm.c), conv2d (conv2d.c), the
 * per-channel bias add (elementwise.c), nearest 2x upsampling and channel
 * concatenation (layout.c). Conv2d works on im2col tiles as its forward
 * does, with single-threaded cblas_sgemm inside OpenMP tasks: dw += dy col^T
 * per (input-channel chunk, output-channel chunk) and dx = col2im(W^T dy)
 * per (image, input-channel chunk), so no two threads write the same
 * gradient and each thread's scratch is one im2col tile (conv2d's bound). */
#include "cpu.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>

#define SUM_COLS 64      /* columns of dy per task in linear's bias gradient */
#define CONV_COUT_MIN 32 /* smallest output-channel chunk of a dw task */

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- Linear ---- */

/* db [n_out] += column sums of dy [rows, n_out]; a block of columns per task. */
static void colsum_add(lh_backend *be, float *db, const float *dy, int64_t rows, int64_t n_out) {
    int64_t blocks = cdiv(n_out, SUM_COLS);
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (rows * n_out > LH_CPU_PAR_MIN)
    for (int64_t bk = 0; bk < blocks; bk++) {
        int64_t j0 = bk * SUM_COLS, nj = min64(SUM_COLS, n_out - j0);
        float acc[SUM_COLS] = {0};
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < nj; j++) acc[j] += dy[r * n_out + j0 + j];
        for (int64_t j = 0; j < nj; j++) db[j0 + j] += acc[j];
    }
}

lh_status lh__cpu_linear_backward(lh_backend *be, float *dx, /* [rows, n_in] */
                                  float *dw,                 /* [n_out, n_in] += */
                                  float *db,                 /* [n_out] += */
                                  const float *dy,           /* [rows, n_out] */
                                  const float *x,            /* [rows, n_in] */
                                  const float *w,            /* [n_out, n_in] */
                                  int64_t rows, int64_t n_in, int64_t n_out) {
    int64_t t;
    if (rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    if (!lh__mul2(&t, rows, n_in) || !lh__bytes_ok(t) || !lh__mul2(&t, rows, n_out) ||
        !lh__bytes_ok(t) || !lh__mul2(&t, n_out, n_in) || !lh__bytes_ok(t))
        return LH_ERR_OVERFLOW;
    if (rows == 0) return LH_OK; /* dx is empty; dw and db gain nothing */
    if ((n_out > 0 && !dy) || (dx && n_in > 0 && n_out > 0 && !w) || (dw && t > 0 && !x))
        return LH_ERR_INVALID;
    lh_status st = LH_OK;
    if (dx) st = lh__cpu_gemm(be, dx, dy, w, 0, 0, rows, n_in, n_out, 1.0f, 0.0f, 1, 0, 0, 0);
    if (st == LH_OK && dw)
        st = lh__cpu_gemm(be, dw, dy, x, 1, 0, n_out, n_in, rows, 1.0f, 1.0f, 1, 0, 0, 0);
    if (st == LH_OK && db && n_out > 0) colsum_add(be, db, dy, rows, n_out);
    return st;
}

/* ---- Conv2d: im2col and its adjoint ---- */

typedef struct conv_job {
    int64_t n, c_in, h, w, c_out, kh, kw, oh, ow, taps, k, hw_out;
    int stride, pad, direct; /* direct: 1x1, stride 1, no padding (no im2col) */
    int64_t tp, chunk, n_ci; /* pixels per tile; input channels per chunk, chunks */
    int64_t tc, n_co;        /* output channels per dw task, their count */
    float *dx, *dw;
    const float *dy, *x, *w_;
} conv_job;

/* Columns o in [*lo, *hi) of the output run [ox, ox + run) whose tap kx
 * reads inside the row: 0 <= (ox + o) stride - pad + kx < w. */
static void tap_span(int64_t *lo, int64_t *hi, const conv_job *j, int64_t ox, int64_t run,
                     int64_t kx) {
    int64_t a = j->pad - kx, b = j->w - 1 + j->pad - kx; /* a <= q stride <= b */
    int64_t qlo = a <= 0 ? 0 : cdiv(a, j->stride), qend = b < 0 ? 0 : b / j->stride + 1;
    *lo = min64(max64(qlo - ox, 0), run);
    *hi = max64(min64(qend - ox, run), *lo);
}

/* col [(ci1 - ci0) taps, p1 - p0]: row (ci - ci0, ky, kx), column p - p0 =
 * the input under that tap for output pixel p, 0 in the padding. */
static void im2col(float *col, const float *x, /* [c_in, h, w] */
                   const conv_job *j, int64_t ci0, int64_t ci1, int64_t p0, int64_t p1) {
    int64_t pl = p1 - p0;
    for (int64_t r = 0; r < (ci1 - ci0) * j->taps; r++) {
        int64_t ci = ci0 + r / j->taps, ky = r % j->taps / j->kw, kx = r % j->kw;
        float *dst = col + r * pl;
        for (int64_t p = p0; p < p1;) {
            int64_t oy = p / j->ow, ox = p % j->ow, run = min64(j->ow - ox, p1 - p), lo, hi;
            int64_t iy = oy * j->stride - j->pad + ky;
            tap_span(&lo, &hi, j, ox, run, kx);
            if (iy < 0 || iy >= j->h) lo = hi = run;
            const float *src = x + (ci * j->h + (iy < 0 || iy >= j->h ? 0 : iy)) * j->w;
            for (int64_t o = 0; o < lo; o++) dst[o] = 0.0f;
            if (j->stride == 1 && hi > lo)
                memcpy(dst + lo, src + ox + lo - j->pad + kx, (size_t)(hi - lo) * sizeof(float));
            else
                for (int64_t o = lo; o < hi; o++) dst[o] = src[(ox + o) * j->stride - j->pad + kx];
            for (int64_t o = hi; o < run; o++) dst[o] = 0.0f;
            dst += run;
            p += run;
        }
    }
}

/* The adjoint of im2col: dx [ci0:ci1] += each column value at the input it was read from. */
static void col2im_add(float *dx, /* [c_in, h, w] */
                       const float *col, const conv_job *j, int64_t ci0, int64_t ci1, int64_t p0,
                       int64_t p1) {
    int64_t pl = p1 - p0;
    for (int64_t r = 0; r < (ci1 - ci0) * j->taps; r++) {
        int64_t ci = ci0 + r / j->taps, ky = r % j->taps / j->kw, kx = r % j->kw;
        const float *src = col + r * pl;
        for (int64_t p = p0; p < p1;) {
            int64_t oy = p / j->ow, ox = p % j->ow, run = min64(j->ow - ox, p1 - p), lo, hi;
            int64_t iy = oy * j->stride - j->pad + ky;
            if (iy >= 0 && iy < j->h) {
                float *dst = dx + (ci * j->h + iy) * j->w;
                tap_span(&lo, &hi, j, ox, run, kx);
                if (j->stride == 1 && hi > lo) {
                    float *d = dst + ox + lo - j->pad + kx; /* contiguous: vectorises */
                    for (int64_t o = 0; o < hi - lo; o++) d[o] += src[lo + o];
                } else {
                    for (int64_t o = lo; o < hi; o++)
                        dst[(ox + o) * j->stride - j->pad + kx] += src[o];
                }
            }
            src += run;
            p += run;
        }
    }
}

/* ---- Conv2d: tasks ---- */

/* Task t = (image, input-channel chunk): dx[img, ci0:ci1] = col2im(W[:, ci0:ci1]^T dy[img]). */
static void conv_dx_task(const conv_job *j, float *col, int64_t t) {
    int64_t img = t / j->n_ci, ci0 = t % j->n_ci * j->chunk, ci1 = min64(ci0 + j->chunk, j->c_in);
    int64_t plane = j->h * j->w, kc = (ci1 - ci0) * j->taps;
    float *dx = j->dx + img * j->c_in * plane;
    const float *dy = j->dy + img * j->c_out * j->hw_out;
    if (!j->direct) memset(dx + ci0 * plane, 0, (size_t)((ci1 - ci0) * plane) * sizeof(float));
    for (int64_t p0 = 0; p0 < j->hw_out; p0 += j->tp) {
        int64_t p1 = min64(p0 + j->tp, j->hw_out), pl = p1 - p0;
        float *c = j->direct ? dx + ci0 * plane + p0 : col;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kc, (int)pl, (int)j->c_out, 1.0f,
                    j->w_ + ci0 * j->taps, (int)j->k, dy + p0, (int)j->hw_out, 0.0f, c,
                    (int)(j->direct ? j->hw_out : pl));
        if (!j->direct) col2im_add(dx, col, j, ci0, ci1, p0, p1);
    }
}

/* Task t = (input-channel chunk, output-channel chunk): dw[c0:c1, ci0:ci1]
 * += sum over images and pixel tiles of dy[img, c0:c1, tile] col^T. */
static void conv_dw_task(const conv_job *j, float *col, int64_t t) {
    int64_t ci0 = t / j->n_co * j->chunk, ci1 = min64(ci0 + j->chunk, j->c_in);
    int64_t c0 = t % j->n_co * j->tc, c1 = min64(c0 + j->tc, j->c_out), kc = (ci1 - ci0) * j->taps;
    for (int64_t img = 0; img < j->n; img++) {
        const float *x = j->x + img * j->c_in * j->h * j->w;
        const float *dy = j->dy + (img * j->c_out + c0) * j->hw_out;
        for (int64_t p0 = 0; p0 < j->hw_out; p0 += j->tp) {
            int64_t p1 = min64(p0 + j->tp, j->hw_out), pl = p1 - p0;
            const float *b = x + ci0 * j->hw_out + p0;
            if (!j->direct) {
                im2col(col, x, j, ci0, ci1, p0, p1);
                b = col;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(c1 - c0), (int)kc, (int)pl,
                        1.0f, dy + p0, (int)j->hw_out, b, (int)(j->direct ? j->hw_out : pl), 1.0f,
                        j->dw + c0 * j->k + ci0 * j->taps, (int)j->k);
        }
    }
}

typedef void (*conv_task_fn)(const conv_job *j, float *col, int64_t t);

/* Runs tasks [0, tasks) over the threads; each thread allocates its im2col
 * tile when it takes its first task. */
static lh_status conv_run(lh_backend *be, const conv_job *j, conv_task_fn fn, int64_t tasks) {
    int64_t per;
    if (!lh__mul3(&per, j->chunk, j->taps, j->tp) || !lh__bytes_ok(per)) return LH_ERR_OVERFLOW;
    size_t col_bytes = (size_t)per * sizeof(float);
    int failed = 0;
#pragma omp parallel num_threads(lh__cpu_threads(be)) if (tasks > 1)
    {
        float *col = NULL;
        int ok = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (!j->direct && !col && ok && !(col = malloc(col_bytes))) ok = 0;
            if (ok) fn(j, col, t);
        }
        free(col);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? LH_ERR_NOMEM : LH_OK;
}

/* Tile and chunk sizes: conv2d's plan for one thread, channel chunks cut
 * further so that their count is a multiple of the threads. */
static void conv_plan(conv_job *j, int threads) {
    lh__cpu_conv2d_plan(&j->tp, &j->chunk, 1, j->c_in, j->kh, j->kw, j->hw_out, 1);
    if (j->direct) j->tp = j->hw_out;
    int64_t chunks = cdiv(cdiv(j->c_in, max64(j->chunk, 1)), threads) * threads;
    j->chunk = max64(1, cdiv(j->c_in, chunks));
    j->n_ci = cdiv(j->c_in, j->chunk);
    j->n_co = 1;
    if (j->n_ci < threads)
        j->n_co = max64(1, min64(cdiv(threads, max64(j->n_ci, 1)), j->c_out / CONV_COUT_MIN));
    j->tc = max64(1, cdiv(j->c_out, j->n_co));
    j->n_co = cdiv(j->c_out, j->tc);
}

/* db [c_out] += sum over images and pixels of dy [n, c_out, hw_out]. */
static void conv_db(lh_backend *be, float *db, const float *dy, int64_t n, int64_t c_out,
                    int64_t hw_out) {
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (n * c_out * hw_out > LH_CPU_PAR_MIN)
    for (int64_t co = 0; co < c_out; co++) {
        double acc = 0.0;
        for (int64_t img = 0; img < n; img++)
            for (int64_t p = 0; p < hw_out; p++) acc += dy[(img * c_out + co) * hw_out + p];
        db[co] += (float)acc;
    }
}

lh_status lh__cpu_conv2d_backward(lh_backend *be, float *dx, /* [n, c_in, h, w] */
                                  float *dw,                 /* [c_out, c_in, kh, kw] += */
                                  float *db,                 /* [c_out] += */
                                  const float *dy,           /* [n, c_out, h_out, w_out] */
                                  const float *x,            /* [n, c_in, h, w] */
                                  const float *w,            /* [c_out, c_in, kh, kw] */
                                  int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out,
                                  int64_t kh, int64_t kw, int stride, int pad) {
    if (n < 0 || c_in < 0 || h < 0 || wd < 0 || c_out < 0 || kh < 1 || kw < 1 || stride < 1 ||
        pad < 0)
        return LH_ERR_INVALID;
    if (h + 2 * (int64_t)pad < kh || wd + 2 * (int64_t)pad < kw) return LH_ERR_SHAPE;
    conv_job j = {.n = n, .c_in = c_in, .h = h, .w = wd, .c_out = c_out, .kh = kh, .kw = kw,
                  .oh = (h + 2 * (int64_t)pad - kh) / stride + 1,
                  .ow = (wd + 2 * (int64_t)pad - kw) / stride + 1, .stride = stride, .pad = pad,
                  .direct = kh == 1 && kw == 1 && stride == 1 && pad == 0,
                  .dx = dx, .dw = dw, .dy = dy, .x = x, .w_ = w};
    int64_t in_total, out_total, w_total;
    if (!lh__mul2(&j.taps, kh, kw) || !lh__mul2(&j.k, c_in, j.taps) ||
        !lh__mul2(&j.hw_out, j.oh, j.ow) || !lh__mul4(&in_total, n, c_in, h, wd) ||
        !lh__bytes_ok(in_total) || !lh__mul3(&out_total, n, c_out, j.hw_out) ||
        !lh__bytes_ok(out_total) || !lh__mul2(&w_total, c_out, j.k) || !lh__bytes_ok(w_total))
        return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    if ((out_total > 0 && !dy) || (dx && in_total > 0 && c_out > 0 && !w) ||
        (dw && w_total > 0 && !x))
        return LH_ERR_INVALID;
    if (j.k > INT_MAX || j.hw_out > INT_MAX || c_out > INT_MAX) return LH_ERR_UNSUPPORTED;
    int threads = lh__cpu_threads(be);
    conv_plan(&j, threads);
    lh_status st = LH_OK;
    if (db) conv_db(be, db, dy, n, c_out, j.hw_out);
    if (dx && in_total > 0 && c_out == 0) memset(dx, 0, (size_t)in_total * sizeof(float));
    else if (dx && in_total > 0) st = conv_run(be, &j, conv_dx_task, n * j.n_ci);
    if (st == LH_OK && dw && w_total > 0) st = conv_run(be, &j, conv_dw_task, j.n_ci * j.n_co);
    return st;
}

/* ---- Bias, upsampling, concatenation ---- */

lh_status lh__cpu_channel_bias_backward(lh_backend *be, float *dbias, /* [outer, c] */
                                        const float *dy, /* [outer, c, inner] */
                                        int64_t outer, int64_t c, int64_t inner) {
    int64_t rows, total;
    if (outer < 0 || c < 0 || inner < 0) return LH_ERR_INVALID;
    if (!lh__mul2(&rows, outer, c) || !lh__mul2(&total, rows, inner) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (rows == 0) return LH_OK;
    if (!dbias || (total > 0 && !dy)) return LH_ERR_INVALID;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int64_t k = 0; k < inner; k++) acc += dy[r * inner + k];
        dbias[r] = (float)acc;
    }
    return LH_OK;
}

lh_status lh__cpu_upsample_nearest2x_backward(lh_backend *be, float *dx, /* [n, c, h, w] */
                                              const float *dy, /* [n, c, 2h, 2w] */
                                              int64_t n, int64_t c, int64_t h, int64_t w) {
    int64_t rows, total;
    if (n < 0 || c < 0 || h < 0 || w < 0) return LH_ERR_INVALID;
    if (!lh__mul3(&rows, n, c, h) || !lh__mul3(&total, rows, w, 4) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!dx || !dy) return LH_ERR_INVALID;
    /* input row r (of n*c*h) gathers output rows 2r and 2r+1 of width 2w */
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *top = dy + r * 4 * w, *bot = top + 2 * w;
        for (int64_t k = 0; k < w; k++)
            dx[r * w + k] = (top[2 * k] + top[2 * k + 1]) + (bot[2 * k] + bot[2 * k + 1]);
    }
    return LH_OK;
}

lh_status lh__cpu_split_channels(lh_backend *be, float *a, /* [n, ca, hw] or NULL */
                                 float *b,                 /* [n, cb, hw] or NULL */
                                 const float *x,           /* [n, ca + cb, hw] */
                                 int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    int64_t planes, total;
    if (n < 0 || ca < 0 || cb < 0 || hw < 0 || ca > INT64_MAX - cb) return LH_ERR_INVALID;
    if (!lh__mul2(&planes, n, ca + cb) || !lh__mul2(&total, planes, hw) || !lh__bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0 || (!a && !b)) return LH_OK;
    if (!x) return LH_ERR_INVALID;
    int64_t c = ca + cb;
#pragma omp parallel for num_threads(lh__cpu_threads(be)) schedule(static) if (total > LH_CPU_PAR_MIN)
    for (int64_t p = 0; p < planes; p++) {
        int64_t img = p / c, ch = p % c;
        float *dst = ch < ca ? (a ? a + (img * ca + ch) * hw : NULL)
                             : (b ? b + (img * cb + ch - ca) * hw : NULL);
        if (dst) memcpy(dst, x + p * hw, (size_t)hw * sizeof(float));
    }
    return LH_OK;
}
