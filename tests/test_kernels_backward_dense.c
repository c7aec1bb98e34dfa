/* cpu backend suite for the dense and activation backward ops
 * (kernels/cpu/backward_dense.c, backward_act.c). Each op is checked twice
 * on random inputs (fixed seeds): a float64 analytic backward written here
 * against central finite differences of a float64 forward (loss L =
 * sum(g * forward), relative L2 <= 1e-6), and the backend's float32 result
 * against that analytic backward (relative L2 <= 1e-5). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#include "../kernels/cpu/cpu.h"

#define TOL 1e-5    /* float32 backend against the float64 analytic backward */
#define FD_TOL 1e-6 /* float64 analytic backward against finite differences */
#define FD_H 1e-5

/* ---- Backends: all cores, and odd thread counts for the tiling paths ---- */

static lh_backend *g_be[3];
static const int g_threads[3] = {0, 3, 1};
#define N_BE 3

#include "kernel_test.h"

/* n float32 values uniform in [-amp, amp), with their float64 copy in *d. */
static float *rand_fd(double **d, int64_t n, double amp) {
    float *p = xmalloc((size_t)n * sizeof *p);
    *d = xmalloc((size_t)n * sizeof **d);
    for (int64_t i = 0; i < n; i++) (*d)[i] = p[i] = (float)(amp * urand());
    return p;
}

/* Frees every argument. */
#define FREE_ALL(...)                                                                              \
    do {                                                                                           \
        void *p_[] = {__VA_ARGS__};                                                                \
        for (size_t i_ = 0; i_ < sizeof p_ / sizeof *p_; i_++) free(p_[i_]);                       \
    } while (0)

static double *dzeros(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

static float *nans(int64_t n) {
    float *p = xmalloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* ---- Comparison ---- */

static double rel_l2d(const double *got, const double *ref, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    if (isnan(num)) return NAN;
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double rel_l2(const float *got, const double *ref, int64_t n) {
    double *g = xmalloc((size_t)(n ? n : 1) * sizeof *g);
    for (int64_t i = 0; i < n; i++) g[i] = got[i];
    double e = rel_l2d(g, ref, n);
    free(g);
    return e;
}

#define CHECK_ERR(e, tol, ...)                                                                     \
    do {                                                                                           \
        double e_ = (e);                                                                           \
        char w_[200];                                                                              \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                      \
        ck_assert_msg(e_ <= (tol), "%s: relative L2 error %.3g > %.1g", w_, e_, (double)(tol));    \
    } while (0)
#define CHECK_REL(got, ref, n, ...) CHECK_ERR(rel_l2((got), (ref), (n)), TOL, __VA_ARGS__)

/* ---- Finite differences ---- */

/* grad [n] = dL/dparam by central differences, L = loss(ctx) reading param. */
static void fd_grad(double *grad, double *param, int64_t n, double (*loss)(const void *),
                    const void *ctx) {
    for (int64_t i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + FD_H;
        double lp = loss(ctx);
        param[i] = keep - FD_H;
        double lm = loss(ctx);
        param[i] = keep;
        grad[i] = (lp - lm) / (2.0 * FD_H);
    }
}

static void check_fd(double *param, int64_t n, const double *analytic, double (*loss)(const void *),
                     const void *ctx, const char *what) {
    double *fd = dzeros(n);
    fd_grad(fd, param, n, loss, ctx);
    CHECK_ERR(rel_l2d(analytic, fd, n), FD_TOL, "%s: analytic vs finite differences", what);
    free(fd);
}

/* ---- Linear ---- */

typedef struct lin_ctx {
    double *x, *w, *b, *g; /* [rows, n_in], [n_out, n_in], [n_out], [rows, n_out] */
    int64_t rows, n_in, n_out;
} lin_ctx;

static double lin_loss(const void *p) {
    const lin_ctx *c = p;
    double l = 0.0;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t o = 0; o < c->n_out; o++) {
            double y = c->b[o];
            for (int64_t i = 0; i < c->n_in; i++)
                y += c->x[r * c->n_in + i] * c->w[o * c->n_in + i];
            l += c->g[r * c->n_out + o] * y;
        }
    return l;
}

/* dx = g w, dw = g^T x, db = column sums of g. */
static void lin_ref(double *dx, double *dw, double *db, const lin_ctx *c) {
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t o = 0; o < c->n_out; o++) {
            double gv = c->g[r * c->n_out + o];
            db[o] += gv;
            for (int64_t i = 0; i < c->n_in; i++) {
                dx[r * c->n_in + i] += gv * c->w[o * c->n_in + i];
                dw[o * c->n_in + i] += gv * c->x[r * c->n_in + i];
            }
        }
}

static void linear_case(int64_t rows, int64_t n_in, int64_t n_out, int fd) {
    lin_ctx c = {.rows = rows, .n_in = n_in, .n_out = n_out};
    seed((uint64_t)(rows * 1000003 + n_in * 1009 + n_out));
    float *x = rand_fd(&c.x, rows * n_in, 1.0), *w = rand_fd(&c.w, n_out * n_in, 0.5);
    float *b = rand_fd(&c.b, n_out, 0.5), *g = rand_fd(&c.g, rows * n_out, 1.0);
    double *dw0, *db0;
    float *dw_init = rand_fd(&dw0, n_out * n_in, 1.0), *db_init = rand_fd(&db0, n_out, 1.0);
    double *rdx = dzeros(rows * n_in), *rdw = dzeros(n_out * n_in), *rdb = dzeros(n_out);
    lin_ref(rdx, rdw, rdb, &c);
    if (fd) {
        check_fd(c.x, rows * n_in, rdx, lin_loss, &c, "linear dx");
        check_fd(c.w, n_out * n_in, rdw, lin_loss, &c, "linear dw");
        check_fd(c.b, n_out, rdb, lin_loss, &c, "linear db");
    }
    for (int64_t i = 0; i < n_out * n_in; i++) rdw[i] += dw0[i]; /* accumulated */
    for (int64_t i = 0; i < n_out; i++) rdb[i] += db0[i];
    float *dx = nans(rows * n_in), *dw = xmalloc((size_t)(n_out * n_in) * sizeof *dw);
    float *db = xmalloc((size_t)n_out * sizeof *db);
    for (int i = 0; i < N_BE; i++) {
        lh_backend *be = g_be[i];
        memcpy(dw, dw_init, (size_t)(n_out * n_in) * sizeof *dw);
        memcpy(db, db_init, (size_t)n_out * sizeof *db);
        ck_assert_int_eq(be->ops->linear_backward(be, dx, dw, db, g, x, w, rows, n_in, n_out),
                         LH_OK);
        CHECK_REL(dx, rdx, rows * n_in, "linear %lld %lld %lld dx, %d threads", (long long)rows,
                  (long long)n_in, (long long)n_out, g_threads[i]);
        CHECK_REL(dw, rdw, n_out * n_in, "linear dw += (%lld rows)", (long long)rows);
        CHECK_REL(db, rdb, n_out, "linear db += (%lld rows)", (long long)rows);
        /* NULL outputs are skipped: only dw, then only dx */
        memcpy(dw, dw_init, (size_t)(n_out * n_in) * sizeof *dw);
        ck_assert_int_eq(
            be->ops->linear_backward(be, NULL, dw, NULL, g, x, NULL, rows, n_in, n_out), LH_OK);
        CHECK_REL(dw, rdw, n_out * n_in, "linear dw alone");
        float *dx2 = nans(rows * n_in);
        ck_assert_int_eq(
            be->ops->linear_backward(be, dx2, NULL, NULL, g, NULL, w, rows, n_in, n_out), LH_OK);
        CHECK_REL(dx2, rdx, rows * n_in, "linear dx alone");
        free(dx2);
    }
    FREE_ALL(x, w, b, g, dw_init, db_init, dx, dw, db, c.x, c.w, c.b, c.g, dw0, db0, rdx, rdw, rdb);
}

START_TEST(test_linear_backward) {
    linear_case(1, 7, 5, 1);
    linear_case(6, 9, 4, 1);
    linear_case(13, 33, 17, 0);
    linear_case(67, 130, 90, 0);
    linear_case(1, 300, 257, 0);
}
END_TEST

/* ---- Conv2d ---- */

typedef struct conv_ctx {
    double *x, *w, *b, *g; /* [n, ci, h, wd], [co, ci, kh, kw], [co], [n, co, oh, ow] */
    int64_t n, ci, h, wd, co, kh, kw, oh, ow;
    int stride, pad;
} conv_ctx;

/* Runs BODY for every (output element yi, input xi, weight wi) triple of the forward sum. */
#define CONV_FOR_EACH(c, BODY)                                                                     \
    for (int64_t im = 0; im < (c)->n; im++)                                                        \
        for (int64_t o = 0; o < (c)->co; o++)                                                      \
            for (int64_t oy = 0; oy < (c)->oh; oy++)                                               \
                for (int64_t ox = 0; ox < (c)->ow; ox++) {                                         \
                    int64_t yi = ((im * (c)->co + o) * (c)->oh + oy) * (c)->ow + ox;               \
                    for (int64_t i = 0; i < (c)->ci; i++)                                          \
                        for (int64_t ky = 0; ky < (c)->kh; ky++)                                   \
                            for (int64_t kx = 0; kx < (c)->kw; kx++) {                             \
                                int64_t iy = oy * (c)->stride - (c)->pad + ky;                     \
                                int64_t ix = ox * (c)->stride - (c)->pad + kx;                     \
                                if (iy < 0 || iy >= (c)->h || ix < 0 || ix >= (c)->wd) continue;   \
                                int64_t xi = ((im * (c)->ci + i) * (c)->h + iy) * (c)->wd + ix;    \
                                int64_t wi = ((o * (c)->ci + i) * (c)->kh + ky) * (c)->kw + kx;    \
                                BODY;                                                              \
                            }                                                                      \
                }

static double conv_loss(const void *p) {
    const conv_ctx *c = p;
    double l = 0.0;
    for (int64_t im = 0; im < c->n; im++)
        for (int64_t o = 0; o < c->co; o++)
            for (int64_t q = 0; q < c->oh * c->ow; q++)
                l += c->g[(im * c->co + o) * c->oh * c->ow + q] * c->b[o];
    CONV_FOR_EACH(c, l += c->g[yi] * c->x[xi] * c->w[wi]);
    return l;
}

static void conv_ref(double *dx, double *dw, double *db, const conv_ctx *c) {
    for (int64_t im = 0; im < c->n; im++)
        for (int64_t o = 0; o < c->co; o++)
            for (int64_t q = 0; q < c->oh * c->ow; q++)
                db[o] += c->g[(im * c->co + o) * c->oh * c->ow + q];
    CONV_FOR_EACH(c, {
        dx[xi] += c->g[yi] * c->w[wi];
        dw[wi] += c->g[yi] * c->x[xi];
    });
}

static void conv_case(int64_t n, int64_t ci, int64_t h, int64_t wd, int64_t co, int64_t kh,
                      int64_t kw, int stride, int pad, int fd) {
    conv_ctx c = {.n = n,
                  .ci = ci,
                  .h = h,
                  .wd = wd,
                  .co = co,
                  .kh = kh,
                  .kw = kw,
                  .oh = (h + 2 * pad - kh) / stride + 1,
                  .ow = (wd + 2 * pad - kw) / stride + 1,
                  .stride = stride,
                  .pad = pad};
    int64_t nx = n * ci * h * wd, nw = co * ci * kh * kw, ny = n * co * c.oh * c.ow;
    seed((uint64_t)(nx * 31 + nw * 7 + ny + stride * 3 + pad));
    float *x = rand_fd(&c.x, nx, 1.0), *w = rand_fd(&c.w, nw, 0.5), *b = rand_fd(&c.b, co, 0.5);
    float *g = rand_fd(&c.g, ny, 1.0);
    double *dw0, *db0;
    float *dw_init = rand_fd(&dw0, nw, 1.0), *db_init = rand_fd(&db0, co, 1.0);
    double *rdx = dzeros(nx), *rdw = dzeros(nw), *rdb = dzeros(co);
    conv_ref(rdx, rdw, rdb, &c);
    if (fd) {
        check_fd(c.x, nx, rdx, conv_loss, &c, "conv2d dx");
        check_fd(c.w, nw, rdw, conv_loss, &c, "conv2d dw");
        check_fd(c.b, co, rdb, conv_loss, &c, "conv2d db");
    }
    for (int64_t i = 0; i < nw; i++) rdw[i] += dw0[i];
    for (int64_t i = 0; i < co; i++) rdb[i] += db0[i];
    float *dx = nans(nx), *dw = xmalloc((size_t)nw * sizeof *dw),
          *db = xmalloc((size_t)co * sizeof *db);
    for (int i = 0; i < N_BE; i++) {
        lh_backend *be = g_be[i];
        memcpy(dw, dw_init, (size_t)nw * sizeof *dw);
        memcpy(db, db_init, (size_t)co * sizeof *db);
        ck_assert_int_eq(be->ops->conv2d_backward(be, dx, dw, db, g, x, w, n, ci, h, wd, co, kh, kw,
                                                  stride, pad),
                         LH_OK);
        char what[120];
        snprintf(what, sizeof what,
                 "conv %lldx%lldx%lldx%lld -> %lld k%lldx%lld s%d p%d, %d threads", (long long)n,
                 (long long)ci, (long long)h, (long long)wd, (long long)co, (long long)kh,
                 (long long)kw, stride, pad, g_threads[i]);
        CHECK_REL(dx, rdx, nx, "%s dx", what);
        CHECK_REL(dw, rdw, nw, "%s dw +=", what);
        CHECK_REL(db, rdb, co, "%s db +=", what);
        /* NULL outputs are skipped: dw alone */
        memcpy(dw, dw_init, (size_t)nw * sizeof *dw);
        ck_assert_int_eq(be->ops->conv2d_backward(be, NULL, dw, NULL, g, x, NULL, n, ci, h, wd, co,
                                                  kh, kw, stride, pad),
                         LH_OK);
        CHECK_REL(dw, rdw, nw, "%s dw alone", what);
    }
    FREE_ALL(x, w, b, g, dw_init, db_init, dx, dw, db, c.x, c.w, c.b, c.g, dw0, db0, rdx, rdw, rdb);
}

START_TEST(test_conv2d_backward) {
    conv_case(2, 3, 7, 5, 4, 3, 3, 2, 1, 1); /* stride 2, pad 1, odd sizes */
    conv_case(1, 4, 5, 6, 3, 3, 3, 1, 1, 1);
    conv_case(2, 5, 6, 7, 3, 1, 1, 1, 0, 1); /* 1x1: no im2col */
    conv_case(1, 3, 6, 5, 2, 3, 2, 1, 0, 1); /* non-square kernel, no padding */
    conv_case(1, 2, 5, 5, 3, 1, 1, 2, 1, 1); /* 1x1 strided and padded */
    conv_case(2, 37, 19, 23, 45, 3, 3, 1, 1, 0);
    conv_case(2, 40, 17, 17, 33, 3, 3, 2, 1, 0);
    conv_case(2, 64, 24, 24, 48, 1, 1, 1, 0, 0);
    conv_case(1, 5, 41, 40, 6, 3, 3, 1, 1, 0); /* several pixel tiles */
    conv_case(1, 2, 9, 9, 70, 4, 4, 2, 0, 0);  /* output channels split across threads */
}
END_TEST

/* ---- Activations ---- */

typedef struct act_ctx {
    double *x, *g;
    int64_t n, rows, f; /* elementwise: n; GEGLU: x [rows, 2f], g [rows, f] */
    int kind;
} act_ctx;

enum { ACT_SILU, ACT_GELU, ACT_QUICK, ACT_COUNT };

static double sig(double v) { return 1.0 / (1.0 + exp(-v)); }
static double act_f(int kind, double v) {
    return kind == ACT_SILU   ? v * sig(v)
           : kind == ACT_GELU ? 0.5 * v * erfc(-v / sqrt(2.0))
                              : v * sig(1.702 * v);
}
static double act_df(int kind, double v) {
    if (kind == ACT_SILU) return sig(v) * (1.0 + v * (1.0 - sig(v)));
    if (kind == ACT_GELU)
        return 0.5 * erfc(-v / sqrt(2.0)) + v * exp(-0.5 * v * v) / sqrt(2.0 * M_PI);
    double s = sig(1.702 * v);
    return s + 1.702 * v * s * (1.0 - s);
}

static double act_loss(const void *p) {
    const act_ctx *c = p;
    double l = 0.0;
    for (int64_t i = 0; i < c->n; i++) l += c->g[i] * act_f(c->kind, c->x[i]);
    return l;
}

START_TEST(test_activation_backward) {
    static const char *names[ACT_COUNT] = {"silu", "gelu", "quick_gelu"};
    for (int kind = 0; kind < ACT_COUNT; kind++) {
        for (int big = 0; big < 2; big++) {
            int64_t n = big ? 100003 : 301;
            act_ctx c = {.n = n, .kind = kind};
            seed((uint64_t)(17 + kind * 5 + big));
            float *x = rand_fd(&c.x, n, 7.0), *g = rand_fd(&c.g, n, 1.0);
            double *ref = dzeros(n);
            for (int64_t i = 0; i < n; i++) ref[i] = c.g[i] * act_df(kind, c.x[i]);
            if (!big) check_fd(c.x, n, ref, act_loss, &c, names[kind]);
            float *dx = nans(n), *alias = xmalloc((size_t)n * sizeof *alias);
            for (int i = 0; i < N_BE; i++) {
                lh_backend *be = g_be[i];
                lh_status (*fn)(lh_backend *, float *, const float *, const float *, int64_t) =
                    kind == ACT_SILU   ? be->ops->silu_backward
                    : kind == ACT_GELU ? be->ops->gelu_backward
                                       : be->ops->quick_gelu_backward;
                ck_assert_int_eq(fn(be, dx, g, x, n), LH_OK);
                CHECK_REL(dx, ref, n, "%s backward n %lld, %d threads", names[kind], (long long)n,
                          g_threads[i]);
                memcpy(alias, g, (size_t)n * sizeof *alias); /* dx aliasing dy */
                ck_assert_int_eq(fn(be, alias, alias, x, n), LH_OK);
                ck_assert_mem_eq(alias, dx, (size_t)n * sizeof *dx);
            }
            FREE_ALL(x, g, c.x, c.g, ref, dx, alias);
        }
    }
}
END_TEST

static double geglu_loss(const void *p) {
    const act_ctx *c = p;
    double l = 0.0;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t j = 0; j < c->f; j++)
            l += c->g[r * c->f + j] * c->x[r * 2 * c->f + j] *
                 act_f(ACT_GELU, c->x[r * 2 * c->f + c->f + j]);
    return l;
}

static void geglu_case(int64_t rows, int64_t f, int fd) {
    act_ctx c = {.rows = rows, .f = f};
    seed((uint64_t)(rows * 131 + f));
    float *x = rand_fd(&c.x, rows * 2 * f, 5.0), *g = rand_fd(&c.g, rows * f, 1.0);
    double *ref = dzeros(rows * 2 * f);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < f; j++) {
            double gv = c.g[r * f + j], hid = c.x[r * 2 * f + j], gate = c.x[r * 2 * f + f + j];
            ref[r * 2 * f + j] = gv * act_f(ACT_GELU, gate);
            ref[r * 2 * f + f + j] = gv * hid * act_df(ACT_GELU, gate);
        }
    if (fd) check_fd(c.x, rows * 2 * f, ref, geglu_loss, &c, "geglu");
    float *dx = nans(rows * 2 * f);
    for (int i = 0; i < N_BE; i++) {
        ck_assert_int_eq(g_be[i]->ops->geglu_backward(g_be[i], dx, g, x, rows, f), LH_OK);
        CHECK_REL(dx, ref, rows * 2 * f, "geglu backward %lld x %lld, %d threads", (long long)rows,
                  (long long)f, g_threads[i]);
    }
    FREE_ALL(x, g, c.x, c.g, ref, dx);
}

START_TEST(test_geglu_backward) {
    geglu_case(1, 7, 1);
    geglu_case(5, 13, 1);
    geglu_case(77, 640, 0);
}
END_TEST

/* ---- Bias, upsampling, split ---- */

typedef struct lay_ctx {
    double *x, *b, *g;
    int64_t n, c, h, w, ca,
        cb; /* bias: outer n, c, inner h; upsample: n c h w; split: n ca cb, hw h */
} lay_ctx;

static double bias_loss(const void *p) { /* out = x + bias broadcast over inner */
    const lay_ctx *c = p;
    double l = 0.0;
    for (int64_t r = 0; r < c->n * c->c; r++)
        for (int64_t k = 0; k < c->h; k++) l += c->g[r * c->h + k] * (c->x[r * c->h + k] + c->b[r]);
    return l;
}

START_TEST(test_channel_bias_backward) {
    static const int64_t shapes[][3] = {{1, 5, 1}, {2, 7, 13}, {3, 64, 1024}};
    for (size_t s = 0; s < 3; s++) {
        lay_ctx c = {.n = shapes[s][0], .c = shapes[s][1], .h = shapes[s][2]};
        int64_t rows = c.n * c.c, total = rows * c.h;
        seed(100 + s);
        float *g = rand_fd(&c.g, total, 1.0), *xf = rand_fd(&c.x, total, 1.0),
              *bf = rand_fd(&c.b, rows, 1.0);
        double *ref = dzeros(rows);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < c.h; k++) ref[r] += c.g[r * c.h + k];
        if (s < 2) check_fd(c.b, rows, ref, bias_loss, &c, "channel bias");
        float *db = xmalloc((size_t)rows * sizeof *db);
        for (int i = 0; i < N_BE; i++) {
            for (int64_t r = 0; r < rows; r++) db[r] = 1e3f; /* written, not accumulated */
            ck_assert_int_eq(g_be[i]->ops->channel_bias_backward(g_be[i], db, g, c.n, c.c, c.h),
                             LH_OK);
            CHECK_REL(db, ref, rows, "channel bias backward %zu, %d threads", s, g_threads[i]);
        }
        FREE_ALL(g, xf, bf, c.g, c.x, c.b, ref, db);
    }
}
END_TEST

static double up_loss(const void *p) {
    const lay_ctx *c = p;
    double l = 0.0;
    for (int64_t r = 0; r < c->n * c->c * 2 * c->h; r++)
        for (int64_t k = 0; k < 2 * c->w; k++)
            l += c->g[r * 2 * c->w + k] * c->x[(r / 2) * c->w + k / 2];
    return l;
}

START_TEST(test_upsample_backward) {
    static const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 3}, {2, 33, 32, 31}};
    for (size_t s = 0; s < 3; s++) {
        lay_ctx c = {.n = shapes[s][0], .c = shapes[s][1], .h = shapes[s][2], .w = shapes[s][3]};
        int64_t nx = c.n * c.c * c.h * c.w;
        seed(200 + s);
        float *g = rand_fd(&c.g, 4 * nx, 1.0), *xf = rand_fd(&c.x, nx, 1.0);
        double *ref = dzeros(nx);
        for (int64_t r = 0; r < c.n * c.c * 2 * c.h; r++)
            for (int64_t k = 0; k < 2 * c.w; k++)
                ref[(r / 2) * c.w + k / 2] += c.g[r * 2 * c.w + k];
        if (s < 2) check_fd(c.x, nx, ref, up_loss, &c, "upsample");
        float *dx = nans(nx);
        for (int i = 0; i < N_BE; i++) {
            ck_assert_int_eq(
                g_be[i]->ops->upsample_nearest2x_backward(g_be[i], dx, g, c.n, c.c, c.h, c.w),
                LH_OK);
            CHECK_REL(dx, ref, nx, "upsample backward %zu, %d threads", s, g_threads[i]);
        }
        FREE_ALL(g, xf, c.g, c.x, ref, dx);
    }
}
END_TEST

static double concat_loss(const void *p) { /* x = a, b = b, out = concat(a, b) */
    const lay_ctx *c = p;
    int64_t hw = c->h, ct = c->ca + c->cb;
    double l = 0.0;
    for (int64_t im = 0; im < c->n; im++)
        for (int64_t ch = 0; ch < ct; ch++)
            for (int64_t k = 0; k < hw; k++) {
                double v = ch < c->ca ? c->x[(im * c->ca + ch) * hw + k]
                                      : c->b[(im * c->cb + ch - c->ca) * hw + k];
                l += c->g[(im * ct + ch) * hw + k] * v;
            }
    return l;
}

START_TEST(test_split_channels) {
    static const int64_t shapes[][4] = {{1, 1, 2, 1}, {2, 3, 4, 5}, {2, 640, 320, 64}};
    for (size_t s = 0; s < 3; s++) {
        lay_ctx c = {.n = shapes[s][0], .ca = shapes[s][1], .cb = shapes[s][2], .h = shapes[s][3]};
        int64_t hw = c.h, na = c.n * c.ca * hw, nb = c.n * c.cb * hw, ct = c.ca + c.cb;
        seed(300 + s);
        float *g = rand_fd(&c.g, na + nb, 1.0), *af = rand_fd(&c.x, na, 1.0),
              *bf = rand_fd(&c.b, nb, 1.0);
        double *ra = dzeros(na), *rb = dzeros(nb);
        for (int64_t im = 0; im < c.n; im++)
            for (int64_t ch = 0; ch < ct; ch++)
                for (int64_t k = 0; k < hw; k++) {
                    double v = c.g[(im * ct + ch) * hw + k];
                    if (ch < c.ca)
                        ra[(im * c.ca + ch) * hw + k] = v;
                    else
                        rb[(im * c.cb + ch - c.ca) * hw + k] = v;
                }
        if (s < 2) {
            check_fd(c.x, na, ra, concat_loss, &c, "split a");
            check_fd(c.b, nb, rb, concat_loss, &c, "split b");
        }
        float *a = nans(na), *b = nans(nb);
        for (int i = 0; i < N_BE; i++) {
            lh_backend *be = g_be[i];
            ck_assert_int_eq(be->ops->split_channels(be, a, b, g, c.n, c.ca, c.cb, hw), LH_OK);
            ck_assert(rel_l2(a, ra, na) == 0.0 && rel_l2(b, rb, nb) == 0.0); /* exact */
            float *b2 = nans(nb);
            ck_assert_int_eq(be->ops->split_channels(be, NULL, b2, g, c.n, c.ca, c.cb, hw), LH_OK);
            ck_assert(rel_l2(b2, rb, nb) == 0.0);
            ck_assert_int_eq(be->ops->split_channels(be, a, NULL, g, c.n, c.ca, c.cb, hw), LH_OK);
            ck_assert(rel_l2(a, ra, na) == 0.0);
            free(b2);
        }
        FREE_ALL(g, af, bf, c.g, c.x, c.b, ra, rb, a, b);
    }
}
END_TEST

/* ---- Bad arguments ---- */

START_TEST(test_backward_errors) {
    lh_backend *be = g_be[0];
    const lh_backend_ops *o = be->ops;
    float f[64] = {0}, out[64];
    const int64_t big = INT64_MAX / 2;
    /* linear */
    ck_assert_int_eq(o->linear_backward(be, out, out, out, f, f, f, -1, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->linear_backward(be, out, out, out, f, f, f, 2, -1, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->linear_backward(be, out, out, out, f, f, f, big, 4, 2), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->linear_backward(be, out, out, out, NULL, f, f, 2, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->linear_backward(be, out, NULL, NULL, f, f, NULL, 2, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->linear_backward(be, NULL, out, NULL, f, NULL, f, 2, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->linear_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, 0, 5, 5), LH_OK);
    /* conv2d */
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, 1, 1, 3, 3, 1, 3, 3, 0, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, 1, 1, 3, 3, 1, 3, 3, 1, -1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, -1, 1, 3, 3, 1, 3, 3, 1, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, 1, 1, 3, 3, 1, 0, 3, 1, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, 1, 1, 1, 1, 1, 3, 3, 1, 0),
                     LH_ERR_SHAPE);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, f, f, f, big, big, 3, 3, 1, 3, 3, 1, 1),
                     LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->conv2d_backward(be, out, out, out, NULL, f, f, 1, 1, 3, 3, 1, 3, 3, 1, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, out, NULL, NULL, f, f, NULL, 1, 1, 3, 3, 1, 3, 3, 1, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(o->conv2d_backward(be, NULL, out, NULL, f, NULL, f, 1, 1, 3, 3, 1, 3, 3, 1, 1),
                     LH_ERR_INVALID);
    ck_assert_int_eq(
        o->conv2d_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1, 3, 3, 1, 3, 3, 1, 1),
        LH_OK);
    /* c_out 0: dx is written with zeros */
    for (int i = 0; i < 9; i++) out[i] = NAN;
    ck_assert_int_eq(o->conv2d_backward(be, out, NULL, NULL, f, f, f, 1, 1, 3, 3, 0, 3, 3, 1, 1),
                     LH_OK);
    for (int i = 0; i < 9; i++) ck_assert(out[i] == 0.0f);
    /* activations */
    ck_assert_int_eq(o->silu_backward(be, out, f, f, -1), LH_ERR_INVALID);
    ck_assert_int_eq(o->gelu_backward(be, out, f, f, INT64_MAX), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->quick_gelu_backward(be, out, NULL, f, 4), LH_ERR_INVALID);
    ck_assert_int_eq(o->silu_backward(be, NULL, f, f, 4), LH_ERR_INVALID);
    ck_assert_int_eq(o->gelu_backward(be, NULL, NULL, NULL, 0), LH_OK);
    ck_assert_int_eq(o->geglu_backward(be, out, f, f, -1, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->geglu_backward(be, out, f, f, big, 4), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->geglu_backward(be, out, f, NULL, 2, 2), LH_ERR_INVALID);
    /* layout */
    ck_assert_int_eq(o->channel_bias_backward(be, out, f, 1, -1, 1), LH_ERR_INVALID);
    ck_assert_int_eq(o->channel_bias_backward(be, out, f, big, big, 1), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->channel_bias_backward(be, NULL, f, 1, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->channel_bias_backward(be, out, NULL, 1, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->upsample_nearest2x_backward(be, out, f, 1, 1, -1, 1), LH_ERR_INVALID);
    ck_assert_int_eq(o->upsample_nearest2x_backward(be, out, f, big, 1, 1, 4), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->upsample_nearest2x_backward(be, out, NULL, 1, 1, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->split_channels(be, out, out, f, 1, -1, 1, 1), LH_ERR_INVALID);
    ck_assert_int_eq(o->split_channels(be, out, out, f, 1, INT64_MAX, 1, 1), LH_ERR_INVALID);
    ck_assert_int_eq(o->split_channels(be, out, out, f, big, 2, 2, 4), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->split_channels(be, out, out, NULL, 1, 2, 2, 2), LH_ERR_INVALID);
    ck_assert_int_eq(o->split_channels(be, NULL, NULL, NULL, 1, 2, 2, 2), LH_OK);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels_backward_dense");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, backends_up, backends_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_linear_backward);
    tcase_add_test(tc, test_conv2d_backward);
    tcase_add_test(tc, test_activation_backward);
    tcase_add_test(tc, test_geglu_backward);
    tcase_add_test(tc, test_channel_bias_backward);
    tcase_add_test(tc, test_upsample_backward);
    tcase_add_test(tc, test_split_channels);
    tcase_add_test(tc, test_backward_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
