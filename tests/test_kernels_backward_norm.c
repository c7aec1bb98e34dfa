/* cpu backend suite for the backward of group norm (+ SiLU), layer norm and
 * attention: each gradient against (a) a plain float64 reference written
 * here and (b) central finite differences of a float64 forward with loss
 * L = sum(w * f(inputs)), w random. Tolerance: relative L2 <= 1e-5 for the
 * float32 kernels; the float64 reference meets finite differences to 1e-6.
 * Run: cmake --build build --target test_kernels_backward_norm &&
 * build/tests/test_kernels_backward_norm (about 2 s; 15 s under ASan). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#include "../kernels/cpu/cpu.h"

#define TOL 1e-5
#define TOL_REF 1e-6 /* float64 reference against finite differences (their own error ~1e-7) */
#define FD_H 1e-5    /* finite-difference step */
#define FD_MAX 24    /* coordinates checked per tensor when it is larger than FD_ALL */
#define FD_ALL 400

/* ---- Backends: all cores, and an odd thread count ---- */

static lh_backend *g_be[2];
static const int g_threads[2] = {0, 3};
#define N_BE 2

#include "kernel_test.h"

static float *nan_f(int64_t n) {
    float *p = xmalloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static float *copy_f(const float *x, int64_t n) {
    float *p = xmalloc((size_t)n * sizeof *p);
    memcpy(p, x, (size_t)n * sizeof *p);
    return p;
}

static double *widen(const float *x, int64_t n) {
    double *p = xmalloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = x[i];
    return p;
}

static double *zeros64(int64_t n) {
    double *p = xmalloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = 0.0;
    return p;
}

/* ---- Comparison ---- */

/* sqrt(sum (got - ref)^2 / sum ref^2) over idx (or all n when idx is NULL);
 * NaN if any value is NaN. */
static double rel_l2_at(const float *got, const double *ref, const int64_t *idx, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t t = 0; t < n; t++) {
        int64_t i = idx ? idx[t] : t;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (isnan(num)) return NAN;
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double rel_l2_64(const double *got, const double *ref, const int64_t *idx, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t t = 0; t < n; t++) {
        double d = got[idx[t]] - ref[idx[t]];
        num += d * d;
        den += ref[idx[t]] * ref[idx[t]];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

#define CHECK_ERR(e, tol, ...)                                                                 \
    do {                                                                                       \
        double e_ = (e);                                                                       \
        char w_[200];                                                                          \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                  \
        ck_assert_msg(e_ <= (tol), "%s: relative L2 error %.3g > %.1g", w_, e_, (double)(tol)); \
    } while (0)

/* ---- Finite differences ---- */

/* Coordinates to check: all of [0, n) when n <= FD_ALL, else FD_MAX random
 * ones. Returns how many. */
static int64_t pick(int64_t *idx, int64_t n) {
    if (n <= FD_ALL) {
        for (int64_t i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    for (int64_t t = 0; t < FD_MAX; t++) idx[t] = (int64_t)((urand() + 1.0) * 0.5 * (double)n) % n;
    return FD_MAX;
}

typedef double (*loss_fn)(const void *ctx, int64_t at); /* `at`: the coordinate perturbed */

/* g[idx[t]] = dL/dp[idx[t]] by central differences. */
static void fd_grad(double *g, double *p, const int64_t *idx, int64_t nidx, loss_fn loss,
                    const void *ctx) {
    for (int64_t t = 0; t < nidx; t++) {
        int64_t i = idx[t];
        double keep = p[i];
        p[i] = keep + FD_H;
        double lp = loss(ctx, i);
        p[i] = keep - FD_H;
        double lm = loss(ctx, i);
        p[i] = keep;
        g[i] = (lp - lm) / (2.0 * FD_H);
    }
}

/* Checks a float32 kernel gradient `got` [n] and the float64 reference `ref`
 * against finite differences of `loss` in the parameter p [n]. */
static void check_fd(const float *got, const double *ref, double *p, int64_t n, loss_fn loss,
                     const void *ctx, const char *what) {
    int64_t *idx = xmalloc((size_t)(n > FD_ALL ? FD_MAX : n) * sizeof *idx);
    double *g = zeros64(n);
    int64_t nidx = pick(idx, n);
    fd_grad(g, p, idx, nidx, loss, ctx);
    CHECK_ERR(rel_l2_64(ref, g, idx, nidx), TOL_REF, "%s: reference vs finite differences", what);
    CHECK_ERR(rel_l2_at(got, g, idx, nidx), TOL, "%s: kernel vs finite differences", what);
    free(idx);
    free(g);
}

/* ---- Group norm: float64 forward and backward ---- */

typedef struct gn_case {
    double *x, *gamma, *beta, *w, *y; /* y: forward scratch [n, c, hw] */
    int64_t n, c, hw, groups;
    double eps;
    int silu;
} gn_case;

static double sigmoid64(double y) { return 1.0 / (1.0 + exp(-y)); }

static void gn_forward64(const gn_case *g) {
    int64_t cg = g->c / g->groups, len = cg * g->hw;
    for (int64_t t = 0; t < g->n * g->groups; t++) {
        const double *x = g->x + t * len;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < len; i++) mean += x[i];
        mean /= (double)len;
        for (int64_t i = 0; i < len; i++) var += (x[i] - mean) * (x[i] - mean);
        double rstd = 1.0 / sqrt(var / (double)len + g->eps);
        for (int64_t i = 0; i < len; i++) {
            int64_t ch = (t % g->groups) * cg + i / g->hw;
            double y = (x[i] - mean) * rstd * g->gamma[ch] + g->beta[ch];
            g->y[t * len + i] = g->silu ? y * sigmoid64(y) : y;
        }
    }
}

static double gn_loss(const void *ctx, int64_t at) {
    const gn_case *g = ctx;
    (void)at;
    gn_forward64(g);
    double l = 0.0;
    for (int64_t i = 0; i < g->n * g->c * g->hw; i++) l += g->w[i] * g->y[i];
    return l;
}

/* dx [n, c, hw] written; dgamma, dbeta [c] accumulated. */
static void gn_backward64(double *dx, double *dgamma, double *dbeta, const gn_case *g) {
    int64_t cg = g->c / g->groups, len = cg * g->hw;
    double *gy = xmalloc((size_t)len * sizeof *gy), *xh = xmalloc((size_t)len * sizeof *xh);
    for (int64_t t = 0; t < g->n * g->groups; t++) {
        const double *x = g->x + t * len, *dy = g->w + t * len;
        double mean = 0.0, var = 0.0, m1 = 0.0, m2 = 0.0;
        for (int64_t i = 0; i < len; i++) mean += x[i];
        mean /= (double)len;
        for (int64_t i = 0; i < len; i++) var += (x[i] - mean) * (x[i] - mean);
        double rstd = 1.0 / sqrt(var / (double)len + g->eps);
        for (int64_t i = 0; i < len; i++) {
            int64_t ch = (t % g->groups) * cg + i / g->hw;
            xh[i] = (x[i] - mean) * rstd;
            double y = xh[i] * g->gamma[ch] + g->beta[ch], s = sigmoid64(y);
            gy[i] = g->silu ? dy[i] * s * (1.0 + y * (1.0 - s)) : dy[i];
            dgamma[ch] += gy[i] * xh[i];
            dbeta[ch] += gy[i];
            m1 += gy[i] * g->gamma[ch];
            m2 += gy[i] * g->gamma[ch] * xh[i];
        }
        for (int64_t i = 0; i < len; i++) {
            int64_t ch = (t % g->groups) * cg + i / g->hw;
            dx[t * len + i] = rstd * (gy[i] * g->gamma[ch] - m1 / len - xh[i] * m2 / len);
        }
    }
    free(gy);
    free(xh);
}

/* ---- Group norm tests ---- */

static void check_group_norm(lh_backend *be, int64_t n, int64_t c, int64_t hw, int64_t groups,
                             int silu, const char *tag) {
    int64_t total = n * c * hw;
    float eps = 1e-5f;
    float *x = rand_f(total, 1.5, 0.3), *gamma = rand_f(c, 1.0, 0.5), *beta = rand_f(c, 1.0, 0.0);
    float *dy = rand_f(total, 1.0, 0.0), *dx = nan_f(total);
    float *dgamma = rand_f(c, 1.0, 0.0), *dbeta = rand_f(c, 1.0, 0.0); /* accumulated into */
    float *dgamma0 = copy_f(dgamma, c), *dbeta0 = copy_f(dbeta, c);
    ck_assert_int_eq(be->ops->group_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, beta, n, c,
                                                  hw, groups, eps, silu),
                     LH_OK);
    for (int64_t i = 0; i < c; i++) dgamma[i] -= dgamma0[i], dbeta[i] -= dbeta0[i];

    gn_case g = {widen(x, total), widen(gamma, c), widen(beta, c), widen(dy, total),
                 zeros64(total), n, c, hw, groups, (double)eps, silu};
    double *rdx = zeros64(total), *rdg = zeros64(c), *rdb = zeros64(c);
    gn_backward64(rdx, rdg, rdb, &g);
    char what[160];
    snprintf(what, sizeof what, "group_norm %s n=%lld c=%lld hw=%lld groups=%lld silu=%d", tag,
             (long long)n, (long long)c, (long long)hw, (long long)groups, silu);
    CHECK_ERR(rel_l2_at(dx, rdx, NULL, total), TOL, "%s dx vs reference", what);
    /* dgamma/dbeta started from random values (they accumulate): what was
     * added is compared, and taking the start back off in float32 costs up
     * to an ulp of it, hence 2 * TOL */
    CHECK_ERR(rel_l2_at(dgamma, rdg, NULL, c), 2 * TOL, "%s dgamma vs reference", what);
    CHECK_ERR(rel_l2_at(dbeta, rdb, NULL, c), 2 * TOL, "%s dbeta vs reference", what);
    check_fd(dx, rdx, g.x, total, gn_loss, &g, "group_norm dx");
    check_fd(dgamma, rdg, g.gamma, c, gn_loss, &g, "group_norm dgamma");
    check_fd(dbeta, rdb, g.beta, c, gn_loss, &g, "group_norm dbeta");

    /* each output alone (the others NULL) gives the same values */
    float *dx1 = nan_f(total), *dg1 = copy_f(dgamma0, c), *db1 = copy_f(dbeta0, c);
    ck_assert_int_eq(be->ops->group_norm_backward(be, dx1, NULL, NULL, dy, x, gamma, beta, n, c,
                                                  hw, groups, eps, silu),
                     LH_OK);
    ck_assert_int_eq(be->ops->group_norm_backward(be, NULL, dg1, NULL, dy, x, gamma, beta, n, c,
                                                  hw, groups, eps, silu),
                     LH_OK);
    ck_assert_int_eq(be->ops->group_norm_backward(be, NULL, NULL, db1, dy, x, gamma, beta, n, c,
                                                  hw, groups, eps, silu),
                     LH_OK);
    for (int64_t i = 0; i < c; i++) dg1[i] -= dgamma0[i], db1[i] -= dbeta0[i];
    ck_assert_mem_eq(dx1, dx, (size_t)total * sizeof(float));
    ck_assert_mem_eq(dg1, dgamma, (size_t)c * sizeof(float));
    ck_assert_mem_eq(db1, dbeta, (size_t)c * sizeof(float));

    float *to_free[] = {x, gamma, beta, dy, dx, dgamma, dbeta, dgamma0, dbeta0, dx1, dg1, db1};
    for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; i++) free(to_free[i]);
    double *to_free64[] = {g.x, g.gamma, g.beta, g.w, g.y, rdx, rdg, rdb};
    for (size_t i = 0; i < sizeof to_free64 / sizeof to_free64[0]; i++) free(to_free64[i]);
}

START_TEST(test_group_norm_backward) {
    static const int64_t cases[][5] = {/* n, c, hw, groups, silu */
                                       {2, 6, 17, 3, 0}, {2, 6, 17, 3, 1},  {1, 5, 33, 1, 0},
                                       {1, 5, 33, 1, 1}, {3, 8, 1, 2, 1},   {2, 9, 1, 3, 0},
                                       {1, 1, 3, 1, 1},  {2, 64, 600, 32, 1}, {1, 32, 2000, 1, 0}};
    seed(11);
    for (int bi = 0; bi < N_BE; bi++) {
        char tag[32];
        snprintf(tag, sizeof tag, "threads=%d", g_threads[bi]);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int64_t *k = cases[ci];
            check_group_norm(g_be[bi], k[0], k[1], k[2], k[3], (int)k[4], tag);
        }
    }
}
END_TEST

/* ---- Layer norm: float64 forward and backward ---- */

typedef struct ln_case {
    double *x, *gamma, *beta, *w;
    int64_t rows, cols;
    double eps;
} ln_case;

/* sum of w * layer_norm(x) over rows [r0, r1). */
static double ln_loss_rows(const ln_case *g, int64_t r0, int64_t r1) {
    double l = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        const double *x = g->x + r * g->cols;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < g->cols; i++) mean += x[i];
        mean /= (double)g->cols;
        for (int64_t i = 0; i < g->cols; i++) var += (x[i] - mean) * (x[i] - mean);
        double rstd = 1.0 / sqrt(var / (double)g->cols + g->eps);
        for (int64_t i = 0; i < g->cols; i++)
            l += g->w[r * g->cols + i] * ((x[i] - mean) * rstd * g->gamma[i] + g->beta[i]);
    }
    return l;
}

static double ln_loss_x(const void *ctx, int64_t at) { /* x[at] moves: only its row changes */
    const ln_case *g = ctx;
    return ln_loss_rows(g, at / g->cols, at / g->cols + 1);
}

static double ln_loss_all(const void *ctx, int64_t at) {
    const ln_case *g = ctx;
    (void)at;
    return ln_loss_rows(g, 0, g->rows);
}

static void ln_backward64(double *dx, double *dgamma, double *dbeta, const ln_case *g) {
    for (int64_t r = 0; r < g->rows; r++) {
        const double *x = g->x + r * g->cols, *dy = g->w + r * g->cols;
        double mean = 0.0, var = 0.0, m1 = 0.0, m2 = 0.0;
        for (int64_t i = 0; i < g->cols; i++) mean += x[i];
        mean /= (double)g->cols;
        for (int64_t i = 0; i < g->cols; i++) var += (x[i] - mean) * (x[i] - mean);
        double rstd = 1.0 / sqrt(var / (double)g->cols + g->eps);
        for (int64_t i = 0; i < g->cols; i++) {
            double xh = (x[i] - mean) * rstd;
            dgamma[i] += dy[i] * xh;
            dbeta[i] += dy[i];
            m1 += dy[i] * g->gamma[i];
            m2 += dy[i] * g->gamma[i] * xh;
        }
        for (int64_t i = 0; i < g->cols; i++) {
            double xh = (x[i] - mean) * rstd;
            dx[r * g->cols + i] = rstd * (dy[i] * g->gamma[i] - (m1 + xh * m2) / g->cols);
        }
    }
}

static void check_layer_norm(lh_backend *be, int64_t rows, int64_t cols, const char *tag) {
    int64_t total = rows * cols;
    float eps = 1e-5f;
    float *x = rand_f(total, 2.0, -0.4), *gamma = rand_f(cols, 1.0, 0.5);
    float *dy = rand_f(total, 1.0, 0.0), *dx = nan_f(total);
    float *dgamma = rand_f(cols, 1.0, 0.0), *dbeta = rand_f(cols, 1.0, 0.0);
    float *dgamma0 = copy_f(dgamma, cols), *dbeta0 = copy_f(dbeta, cols);
    ck_assert_int_eq(be->ops->layer_norm_backward(be, dx, dgamma, dbeta, dy, x, gamma, rows, cols,
                                                  eps),
                     LH_OK);
    for (int64_t i = 0; i < cols; i++) dgamma[i] -= dgamma0[i], dbeta[i] -= dbeta0[i];

    ln_case g = {widen(x, total), widen(gamma, cols), zeros64(cols), widen(dy, total), rows, cols,
                 (double)eps};
    for (int64_t i = 0; i < cols; i++) g.beta[i] = urand(); /* no gradient effect, but present */
    double *rdx = zeros64(total), *rdg = zeros64(cols), *rdb = zeros64(cols);
    ln_backward64(rdx, rdg, rdb, &g);
    char what[160];
    snprintf(what, sizeof what, "layer_norm %s %lldx%lld", tag, (long long)rows, (long long)cols);
    CHECK_ERR(rel_l2_at(dx, rdx, NULL, total), TOL, "%s dx vs reference", what);
    CHECK_ERR(rel_l2_at(dgamma, rdg, NULL, cols), 2 * TOL, "%s dgamma vs reference", what);
    CHECK_ERR(rel_l2_at(dbeta, rdb, NULL, cols), 2 * TOL, "%s dbeta vs reference", what);
    check_fd(dx, rdx, g.x, total, ln_loss_x, &g, "layer_norm dx");
    check_fd(dgamma, rdg, g.gamma, cols, ln_loss_all, &g, "layer_norm dgamma");
    check_fd(dbeta, rdb, g.beta, cols, ln_loss_all, &g, "layer_norm dbeta");

    float *dx1 = nan_f(total), *dg1 = copy_f(dgamma0, cols);
    ck_assert_int_eq(be->ops->layer_norm_backward(be, dx1, NULL, NULL, dy, x, gamma, rows, cols, eps),
                     LH_OK);
    ck_assert_int_eq(be->ops->layer_norm_backward(be, NULL, dg1, NULL, dy, x, gamma, rows, cols, eps),
                     LH_OK);
    for (int64_t i = 0; i < cols; i++) dg1[i] -= dgamma0[i];
    ck_assert_mem_eq(dx1, dx, (size_t)total * sizeof(float));
    ck_assert_mem_eq(dg1, dgamma, (size_t)cols * sizeof(float));

    float *to_free[] = {x, gamma, dy, dx, dgamma, dbeta, dgamma0, dbeta0, dx1, dg1};
    for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; i++) free(to_free[i]);
    double *to_free64[] = {g.x, g.gamma, g.beta, g.w, rdx, rdg, rdb};
    for (size_t i = 0; i < sizeof to_free64 / sizeof to_free64[0]; i++) free(to_free64[i]);
}

START_TEST(test_layer_norm_backward) {
    static const int64_t cases[][2] = {{1, 3}, {5, 7}, {7, 77}, {3, 320}, {300, 600}, {2, 1024}};
    seed(12);
    for (int bi = 0; bi < N_BE; bi++) {
        char tag[32];
        snprintf(tag, sizeof tag, "threads=%d", g_threads[bi]);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
            check_layer_norm(g_be[bi], cases[ci][0], cases[ci][1], tag);
    }
}
END_TEST

/* ---- Attention: float64 forward and backward ---- */

typedef struct att_case {
    double *q, *k, *v, *w; /* w: dout */
    int64_t b, heads, nq, nk, d;
    double scale;
    int causal;
} att_case;

/* Probabilities of query row i of (batch bi, head h): p [nk] (0 where masked). */
static void att_probs64(double *p, const att_case *a, int64_t bi, int64_t h, int64_t i) {
    int64_t hd = a->heads * a->d;
    const double *qi = a->q + (bi * a->nq + i) * hd + h * a->d;
    double mx = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j < a->nk; j++) {
        const double *kj = a->k + (bi * a->nk + j) * hd + h * a->d;
        double s = 0.0;
        for (int64_t c = 0; c < a->d; c++) s += qi[c] * kj[c];
        p[j] = a->causal && j > i ? -INFINITY : s * a->scale;
        mx = p[j] > mx ? p[j] : mx;
    }
    for (int64_t j = 0; j < a->nk; j++) sum += p[j] = exp(p[j] - mx);
    for (int64_t j = 0; j < a->nk; j++) p[j] /= sum;
}

/* Loss over the query rows of the head the coordinate `at` (of q, k or v:
 * all have heads * d columns) lies in: rows [r0, r1) of that head. */
static double att_loss_head(const att_case *a, int64_t bi, int64_t h, int64_t r0, int64_t r1) {
    int64_t hd = a->heads * a->d;
    double *p = xmalloc((size_t)a->nk * sizeof *p);
    long double l = 0.0L; /* a sum of up to millions of terms: keep its rounding below FD's */
    for (int64_t i = r0; i < r1; i++) {
        att_probs64(p, a, bi, h, i);
        const double *wi = a->w + (bi * a->nq + i) * hd + h * a->d;
        for (int64_t j = 0; j < a->nk; j++) {
            const double *vj = a->v + (bi * a->nk + j) * hd + h * a->d;
            double t = 0.0;
            for (int64_t c = 0; c < a->d; c++) t += wi[c] * vj[c];
            l += (long double)(p[j] * t);
        }
    }
    free(p);
    return (double)l;
}

static double att_loss_q(const void *ctx, int64_t at) { /* q[at] moves one query row */
    const att_case *a = ctx;
    int64_t hd = a->heads * a->d, row = at / hd, h = at % hd / a->d;
    return att_loss_head(a, row / a->nq, h, row % a->nq, row % a->nq + 1);
}

static double att_loss_kv(const void *ctx, int64_t at) { /* k or v[at] moves its head */
    const att_case *a = ctx;
    int64_t hd = a->heads * a->d, row = at / hd, h = at % hd / a->d;
    return att_loss_head(a, row / a->nk, h, 0, a->nq);
}

/* The textbook backward with the full [nq, nk] P per head. */
static void att_backward64(double *dq, double *dk, double *dv, const att_case *a) {
    int64_t hd = a->heads * a->d, nq = a->nq, nk = a->nk, d = a->d;
    double *p = xmalloc((size_t)(nq * nk) * sizeof *p), *dp = xmalloc((size_t)nk * sizeof *dp);
    for (int64_t i = 0; i < a->b * nk * hd; i++) dk[i] = dv[i] = 0.0;
    for (int64_t bi = 0; bi < a->b; bi++)
        for (int64_t h = 0; h < a->heads; h++) {
            for (int64_t i = 0; i < nq; i++) att_probs64(p + i * nk, a, bi, h, i);
            for (int64_t i = 0; i < nq; i++) {
                const double *doi = a->w + (bi * nq + i) * hd + h * d;
                double *dqi = dq + (bi * nq + i) * hd + h * d, dd = 0.0;
                for (int64_t j = 0; j < nk; j++) {
                    const double *vj = a->v + (bi * nk + j) * hd + h * d;
                    double *dvj = dv + (bi * nk + j) * hd + h * d;
                    dp[j] = 0.0;
                    for (int64_t c = 0; c < d; c++) {
                        dp[j] += doi[c] * vj[c];
                        dvj[c] += p[i * nk + j] * doi[c];
                    }
                    dd += p[i * nk + j] * dp[j];
                }
                for (int64_t c = 0; c < d; c++) dqi[c] = 0.0;
                const double *qi = a->q + (bi * nq + i) * hd + h * d;
                for (int64_t j = 0; j < nk; j++) {
                    double ds = p[i * nk + j] * (dp[j] - dd) * a->scale;
                    const double *kj = a->k + (bi * nk + j) * hd + h * d;
                    double *dkj = dk + (bi * nk + j) * hd + h * d;
                    for (int64_t c = 0; c < d; c++) {
                        dqi[c] += ds * kj[c];
                        dkj[c] += ds * qi[c];
                    }
                }
            }
        }
    free(p);
    free(dp);
}

/* ---- Attention tests ---- */

static void check_attention(lh_backend *be, int64_t b, int64_t heads, int64_t nq, int64_t nk,
                            int64_t d, int causal, const char *tag) {
    int64_t qn = b * nq * heads * d, kn = b * nk * heads * d;
    float scale = (float)(1.0 / sqrt((double)d));
    float *q = rand_f(qn, 2.0, 0.0), *k = rand_f(kn, 1.5, 0.0), *v = rand_f(kn, 1.0, 0.2);
    float *dout = rand_f(qn, 1.0, 0.0), *out = nan_f(qn);
    float *dq = nan_f(qn), *dk = nan_f(kn), *dv = nan_f(kn), *lse = nan_f(b * heads * nq);
    ck_assert_int_eq(be->ops->attention(be, out, lse, q, k, v, b, heads, nq, nk, d, scale, causal),
                     LH_OK);
    ck_assert_int_eq(be->ops->attention_backward(be, dq, dk, dv, dout, out, NULL, q, k, v, b, heads,
                                                 nq, nk, d, scale, causal),
                     LH_OK);

    att_case a = {widen(q, qn), widen(k, kn), widen(v, kn), widen(dout, qn), b, heads, nq, nk, d,
                  (double)scale, causal};
    double *rdq = zeros64(qn), *rdk = zeros64(kn), *rdv = zeros64(kn);
    att_backward64(rdq, rdk, rdv, &a);
    char what[200];
    snprintf(what, sizeof what, "attention %s b=%lld heads=%lld nq=%lld nk=%lld d=%lld causal=%d",
             tag, (long long)b, (long long)heads, (long long)nq, (long long)nk, (long long)d, causal);
    CHECK_ERR(rel_l2_at(dq, rdq, NULL, qn), TOL, "%s dq vs reference", what);
    CHECK_ERR(rel_l2_at(dk, rdk, NULL, kn), TOL, "%s dk vs reference", what);
    CHECK_ERR(rel_l2_at(dv, rdv, NULL, kn), TOL, "%s dv vs reference", what);
    check_fd(dq, rdq, a.q, qn, att_loss_q, &a, what);
    check_fd(dk, rdk, a.k, kn, att_loss_kv, &a, what);
    check_fd(dv, rdv, a.v, kn, att_loss_kv, &a, what);

    /* the forward's row logsumexp in place of the backward's own pass: that
     * pass does the forward's arithmetic, so the gradients agree bit for bit */
    float *with[3] = {nan_f(qn), nan_f(kn), nan_f(kn)};
    ck_assert_int_eq(be->ops->attention_backward(be, with[0], with[1], with[2], dout, out, lse, q, k,
                                                 v, b, heads, nq, nk, d, scale, causal),
                     LH_OK);
    ck_assert_msg(!memcmp(with[0], dq, (size_t)qn * sizeof(float)), "%s: dq with lse differs", what);
    ck_assert_msg(!memcmp(with[1], dk, (size_t)kn * sizeof(float)), "%s: dk with lse differs", what);
    ck_assert_msg(!memcmp(with[2], dv, (size_t)kn * sizeof(float)), "%s: dv with lse differs", what);

    /* each output alone (the others NULL) gives the same values, written over NaN */
    float *one[3] = {nan_f(qn), nan_f(kn), nan_f(kn)};
    for (int o = 0; o < 3; o++)
        ck_assert_int_eq(be->ops->attention_backward(be, o == 0 ? one[0] : NULL,
                                                     o == 1 ? one[1] : NULL, o == 2 ? one[2] : NULL,
                                                     dout, out, NULL, q, k, v, b, heads, nq, nk, d,
                                                     scale, causal),
                         LH_OK);
    ck_assert_mem_eq(one[0], dq, (size_t)qn * sizeof(float));
    ck_assert_mem_eq(one[1], dk, (size_t)kn * sizeof(float));
    ck_assert_mem_eq(one[2], dv, (size_t)kn * sizeof(float));

    float *to_free[] = {q, k, v, dout, out, dq, dk, dv, lse, one[0], one[1], one[2],
                        with[0], with[1], with[2]};
    for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; i++) free(to_free[i]);
    double *to_free64[] = {a.q, a.k, a.v, a.w, rdq, rdk, rdv};
    for (size_t i = 0; i < sizeof to_free64 / sizeof to_free64[0]; i++) free(to_free64[i]);
}

START_TEST(test_attention_backward) {
    static const int64_t cases[][6] = {/* b, heads, nq, nk, d, causal */
                                       {1, 1, 1, 1, 1, 0},     {1, 1, 3, 5, 8, 1},
                                       {2, 3, 300, 77, 8, 0},  {1, 2, 300, 77, 40, 1},
                                       {1, 2, 257, 257, 64, 1}, {1, 1, 257, 257, 64, 0},
                                       {2, 2, 70, 133, 16, 1}, {1, 3, 64, 128, 24, 0}};
    seed(13);
    for (int bi = 0; bi < N_BE; bi++) {
        char tag[32];
        snprintf(tag, sizeof tag, "threads=%d", g_threads[bi]);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int64_t *c = cases[ci];
            if (bi > 0 && c[2] * c[3] > 20000) continue; /* the large ones once */
            check_attention(g_be[bi], c[0], c[1], c[2], c[3], c[4], (int)c[5], tag);
        }
    }
}
END_TEST

START_TEST(test_attention_backward_threads_agree) {
    /* a task is one (batch, head): results do not depend on the thread count */
    int64_t b = 2, heads = 3, nq = 150, nk = 100, d = 24, qn = b * nq * heads * d, kn = b * nk * heads * d;
    seed(14);
    float *q = rand_f(qn, 2, 0), *k = rand_f(kn, 1, 0), *v = rand_f(kn, 1, 0), *dout = rand_f(qn, 1, 0);
    float *out = nan_f(qn), *g[N_BE][3];
    ck_assert_int_eq(g_be[0]->ops->attention(g_be[0], out, NULL, q, k, v, b, heads, nq, nk, d, 0.2f, 1), LH_OK);
    for (int bi = 0; bi < N_BE; bi++) {
        g[bi][0] = nan_f(qn), g[bi][1] = nan_f(kn), g[bi][2] = nan_f(kn);
        ck_assert_int_eq(g_be[bi]->ops->attention_backward(g_be[bi], g[bi][0], g[bi][1], g[bi][2],
                                                           dout, out, NULL, q, k, v, b, heads, nq, nk,
                                                           d, 0.2f, 1),
                         LH_OK);
    }
    ck_assert_mem_eq(g[0][0], g[1][0], (size_t)qn * sizeof(float));
    ck_assert_mem_eq(g[0][1], g[1][1], (size_t)kn * sizeof(float));
    ck_assert_mem_eq(g[0][2], g[1][2], (size_t)kn * sizeof(float));
    for (int bi = 0; bi < N_BE; bi++)
        for (int o = 0; o < 3; o++) free(g[bi][o]);
    float *to_free[] = {q, k, v, dout, out};
    for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; i++) free(to_free[i]);
}
END_TEST

/* ---- Sizes and arguments refused; empty sizes ---- */

START_TEST(test_backward_errors) {
    lh_backend *be = g_be[0];
    const lh_backend_ops *o = be->ops;
    float z[8] = {0}, one[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    int64_t big = INT64_MAX / 2;
    /* group norm */
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, -1, 4, 1, 1, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, 1, 4, 1, 3, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, 1, 4, 1, 0, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, 1, 4, 1, 1, -1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, 1, 4, 1, 1, NAN, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, z, big, 4, 4, 1, 1e-5f, 0), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, NULL, z, one, z, 1, 4, 1, 1, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, NULL, one, z, 1, 4, 1, 1, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, NULL, z, 1, 4, 1, 1, 1e-5f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, NULL, 1, 4, 1, 1, 1e-5f, 1), LH_ERR_INVALID);
    ck_assert_int_eq(o->group_norm_backward(be, z, z, z, z, z, one, NULL, 1, 4, 1, 1, 1e-5f, 0), LH_OK);
    ck_assert_int_eq(o->group_norm_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 1, 1, 1e-5f, 0), LH_OK);
    ck_assert_int_eq(o->group_norm_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 4, 1, 1, 1e-5f, 0), LH_OK);
    /* layer norm */
    ck_assert_int_eq(o->layer_norm_backward(be, z, z, z, z, z, one, 1, -4, 1e-5f), LH_ERR_INVALID);
    ck_assert_int_eq(o->layer_norm_backward(be, z, z, z, z, z, one, 1, 4, -1.0f), LH_ERR_INVALID);
    ck_assert_int_eq(o->layer_norm_backward(be, z, z, z, z, z, one, big, 4, 1e-5f), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->layer_norm_backward(be, z, z, z, NULL, z, one, 1, 4, 1e-5f), LH_ERR_INVALID);
    ck_assert_int_eq(o->layer_norm_backward(be, z, z, z, z, z, NULL, 1, 4, 1e-5f), LH_ERR_INVALID);
    ck_assert_int_eq(o->layer_norm_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, 0, 4, 1e-5f), LH_OK);
    /* attention */
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, z, NULL, z, z, z, 1, -1, 1, 1, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, z, NULL, z, z, z, 1, 1, 1, 1, 1, NAN, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, z, NULL, z, z, z, 1, 1, 1, 0, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, z, NULL, z, z, z, big, 4, 1, 1, 4, 1.0f, 0), LH_ERR_OVERFLOW);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, NULL, NULL, z, z, z, 1, 1, 1, 1, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, NULL, z, NULL, z, z, z, 1, 1, 1, 1, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, z, z, z, z, z, NULL, z, NULL, z, 1, 1, 1, 1, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(o->attention_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 1, 1, 1, 1, 1.0f, 0), LH_OK);
    /* no queries: dk and dv are zero */
    float dk[8], dv[8];
    for (int i = 0; i < 8; i++) dk[i] = dv[i] = NAN;
    ck_assert_int_eq(o->attention_backward(be, NULL, dk, dv, z, z, NULL, z, one, one, 1, 2, 0, 2, 2, 1.0f, 1), LH_OK);
    for (int i = 0; i < 8; i++) {
        ck_assert_float_eq(dk[i], 0.0f);
        ck_assert_float_eq(dv[i], 0.0f);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels_backward_norm");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, backends_up, backends_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_group_norm_backward);
    tcase_add_test(tc, test_layer_norm_backward);
    tcase_add_test(tc, test_attention_backward);
    tcase_add_test(tc, test_attention_backward_threads_agree);
    tcase_add_test(tc, test_backward_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
