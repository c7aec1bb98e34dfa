/* cpu backend suite: every op of kernels/cpu/ against a naive float64
 * reference written here, on random inputs (fixed seeds) with odd sizes,
 * through the backend's own memory calls. Tolerance is relative L2 error
 * <= 1e-5 unless a test says otherwise; layout ops must be exact. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../kernels/backend.h"
#include "../kernels/cpu/cpu.h"
#include "lorahost/safetensors.h"

#define TOL 1e-5

/* ---- Backends: all cores, and odd thread counts for the tiling paths ---- */

static lh_backend *g_be[3];
static const int g_threads[3] = {0, 3, 1};
#define N_BE 3

#include "kernel_test.h"

static double *dvec(int64_t n) { return xmalloc((size_t)n * sizeof(double)); }

/* ---- Backend memory ---- */

static float *dev_up(lh_backend *be, const float *h, int64_t n) {
    float *d = be->ops->alloc(be, (size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(be->ops->upload(be, d, h, (size_t)n * sizeof(float)), LH_OK);
    return d;
}

/* Output buffer filled with NaN, so a value the op forgets to write shows. */
static float *dev_nan(lh_backend *be, int64_t n) {
    float *h = xmalloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = NAN;
    float *d = dev_up(be, h, n);
    free(h);
    return d;
}

static float *down(lh_backend *be, const float *d, int64_t n) {
    float *h = xmalloc((size_t)n * sizeof *h);
    ck_assert_int_eq(be->ops->download(be, h, d, (size_t)n * sizeof(float)), LH_OK);
    return h;
}

static void dfree(lh_backend *be, float *d) { be->ops->free(be, d); }

/* ---- Comparison ---- */

/* sqrt(sum (got - ref)^2 / sum ref^2); NaN if any value is NaN. */
static double rel_l2(const float *got, const double *ref, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (isnan(num)) return NAN;
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

#define CHECK_REL(got, ref, n, tol, ...)                                                       \
    do {                                                                                       \
        double e_ = rel_l2((got), (ref), (n));                                                 \
        char w_[200];                                                                          \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                  \
        ck_assert_msg(e_ <= (tol), "%s: relative L2 error %.3g > %.1g", w_, e_, (double)(tol)); \
    } while (0)

/* ---- Memory ---- */

START_TEST(test_memory) {
    lh_backend *be = g_be[0];
    ck_assert_str_eq(be->ops->name, "cpu");
    float src[5] = {1, -2, 3.5f, 1e30f, -0.0f};
    float *d = be->ops->alloc(be, sizeof src);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq((uintptr_t)d % 64, 0);
    ck_assert_int_eq(be->ops->upload(be, d, src, sizeof src), LH_OK);
    float back[5];
    ck_assert_int_eq(be->ops->download(be, back, d, sizeof src), LH_OK);
    ck_assert_mem_eq(back, src, sizeof src);
    ck_assert_int_eq(be->ops->memset0(be, d, sizeof src), LH_OK);
    ck_assert_int_eq(be->ops->download(be, back, d, sizeof src), LH_OK);
    for (int i = 0; i < 5; i++) ck_assert_float_eq(back[i], 0.0f);
    ck_assert_int_eq(be->ops->sync(be), LH_OK);
    be->ops->free(be, d);
    void *z = be->ops->alloc(be, 0);
    ck_assert_ptr_nonnull(z);
    be->ops->free(be, z);
    be->ops->free(be, NULL);
    ck_assert_ptr_null(be->ops->alloc(be, SIZE_MAX));
}
END_TEST

START_TEST(test_create_errors) {
    lh_backend *be = (lh_backend *)1;
    char err[128];
    ck_assert_int_eq(lh_backend_cpu_create(&be, -1, err, sizeof err), LH_ERR_INVALID);
    ck_assert_ptr_null(be);
    ck_assert_msg(strstr(err, "threads") != NULL, "message: %s", err);
    lh_backend_destroy(NULL);
}
END_TEST

START_TEST(test_upload_weights) {
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        const uint16_t h16[6] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000};
        const float w16[6] = {1.0f, -2.0f, 65504.0f, 5.9604645e-8f, INFINITY, -0.0f};
        const uint16_t hb[4] = {0x3F80, 0xC040, 0x4049, 0xFF80};
        const float wb[4] = {1.0f, -3.0f, 3.140625f, -INFINITY};
        float *d = be->ops->alloc(be, 6 * sizeof(float)), got[6];
        ck_assert_ptr_nonnull(d);
        ck_assert_int_eq(be->ops->upload_weights(be, d, h16, LH_DTYPE_F16, 6), LH_OK);
        ck_assert_int_eq(be->ops->download(be, got, d, sizeof got), LH_OK);
        ck_assert_mem_eq(got, w16, sizeof w16);
        ck_assert_int_eq(be->ops->upload_weights(be, d, hb, LH_DTYPE_BF16, 4), LH_OK);
        ck_assert_int_eq(be->ops->download(be, got, d, 4 * sizeof(float)), LH_OK);
        ck_assert_mem_eq(got, wb, sizeof wb);
        ck_assert_int_eq(be->ops->upload_weights(be, d, w16, LH_DTYPE_F32, 6), LH_OK);
        ck_assert_int_eq(be->ops->download(be, got, d, sizeof got), LH_OK);
        ck_assert_mem_eq(got, w16, sizeof w16);
        ck_assert_int_eq(be->ops->upload_weights(be, d, h16, LH_DTYPE_I8, 6), LH_ERR_UNSUPPORTED);
        dfree(be, d);

        /* every f16 and bf16 bit pattern, on the parallel path */
        int64_t n = 65536;
        uint16_t *bits = xmalloc((size_t)n * sizeof *bits);
        for (int64_t i = 0; i < n; i++) bits[i] = (uint16_t)i;
        float *dw = be->ops->alloc(be, (size_t)n * sizeof(float));
        ck_assert_ptr_nonnull(dw);
        for (int dt = 0; dt < 2; dt++) {
            ck_assert_int_eq(be->ops->upload_weights(be, dw, bits, dt ? LH_DTYPE_BF16 : LH_DTYPE_F16, (size_t)n),
                             LH_OK);
            float *h = down(be, dw, n);
            for (int64_t i = 0; i < n; i++) {
                float want = dt ? lh_bf16_to_f32(bits[i]) : lh_f16_to_f32(bits[i]);
                ck_assert_msg(memcmp(&h[i], &want, sizeof want) == 0 || (isnan(h[i]) && isnan(want)),
                              "dtype %d bits 0x%04x: %g != %g", dt, (unsigned)i, h[i], want);
            }
            free(h);
        }
        dfree(be, dw);
        free(bits);
    }
}
END_TEST

/* ---- GEMM and Linear ---- */

static void ref_gemm(double *c, const float *a, const float *b, const float *c0, int ta, int tb,
                     int64_t m, int64_t n, int64_t k, double alpha, double beta) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0.0;
            for (int64_t p = 0; p < k; p++) {
                double av = ta ? a[p * m + i] : a[i * k + p];
                double bv = tb ? b[j * k + p] : b[p * n + j];
                s += av * bv;
            }
            c[i * n + j] = alpha * s + (beta != 0.0 ? beta * c0[i * n + j] : 0.0);
        }
}

START_TEST(test_gemm) {
    static const int64_t sizes[][3] = {{1, 1, 1},  {3, 7, 5},     {7, 33, 1},   {33, 7, 65},
                                       {1, 300, 40}, {130, 67, 257}, {257, 3, 129}, {5, 9, 0}};
    seed(1);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            int64_t m = sizes[si][0], n = sizes[si][1], k = sizes[si][2];
            for (int combo = 0; combo < 8; combo++) {
                int ta = combo & 1, tb = (combo >> 1) & 1, shared_b = (combo >> 2) & 1;
                float alpha = 0.75f, beta = si % 2 ? -0.5f : 0.0f;
                int64_t batch = 3;
                int64_t sa = m * k + 5, sb = shared_b ? 0 : k * n + 3, sc = m * n + 7;
                int64_t na = sa * batch, nb = shared_b ? k * n + 1 : sb * batch, nc = sc * batch;
                float *a = rand_f(na, 1, 0), *b = rand_f(nb, 1, 0), *c0 = rand_f(nc, 1, 0);
                if (beta == 0.0f) /* C must not be read */
                    for (int64_t i = 0; i < nc; i++)
                        if (i % sc < m * n) c0[i] = NAN;
                float *da = dev_up(be, a, na), *db = dev_up(be, b, nb), *dc = dev_up(be, c0, nc);
                ck_assert_int_eq(be->ops->gemm(be, dc, da, db, ta, tb, m, n, k, alpha, beta, batch,
                                               sa, sb, sc),
                                 LH_OK);
                float *got = down(be, dc, nc);
                double *ref = dvec(m * n);
                for (int64_t e = 0; e < batch; e++) {
                    ref_gemm(ref, a + e * sa, b + e * sb, c0 + e * sc, ta, tb, m, n, k, alpha, beta);
                    CHECK_REL(got + e * sc, ref, m * n, TOL,
                              "gemm threads=%d m=%lld n=%lld k=%lld ta=%d tb=%d sb=%lld batch %lld",
                              g_threads[bi], (long long)m, (long long)n, (long long)k, ta, tb,
                              (long long)sb, (long long)e);
                    for (int64_t i = m * n; i < sc; i++) /* the gaps between matrices */
                        ck_assert(memcmp(&got[e * sc + i], &c0[e * sc + i], sizeof(float)) == 0);
                }
                free(ref);
                free(got);
                free(a);
                free(b);
                free(c0);
                dfree(be, da);
                dfree(be, db);
                dfree(be, dc);
            }
        }
    }
}
END_TEST

START_TEST(test_gemm_errors) {
    lh_backend *be = g_be[0];
    float x[4] = {0};
    ck_assert_int_eq(be->ops->gemm(be, x, x, x, 0, 0, -1, 1, 1, 1, 0, 1, 0, 0, 0), LH_ERR_INVALID);
    ck_assert_int_eq(be->ops->gemm(be, x, x, x, 0, 0, 1, 1, 1, 1, 0, 1, -1, 0, 0), LH_ERR_INVALID);
    ck_assert_int_eq(be->ops->gemm(be, NULL, x, x, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0), LH_ERR_INVALID);
    ck_assert_int_eq(be->ops->gemm(be, NULL, NULL, NULL, 0, 0, 0, 5, 5, 1, 0, 1, 0, 0, 0), LH_OK);
    ck_assert_int_eq(be->ops->linear(be, x, x, x, NULL, 1, -2, 1), LH_ERR_INVALID);
}
END_TEST

START_TEST(test_linear) {
    static const int64_t sizes[][3] = {{1, 1, 1},    {7, 33, 65},  {300, 129, 33},
                                       {77, 768, 320}, {3, 5, 700}, {2, 0, 4}};
    seed(2);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            int64_t rows = sizes[si][0], n_in = sizes[si][1], n_out = sizes[si][2];
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                float *x = rand_f(rows * n_in, 1, 0), *w = rand_f(n_out * n_in, 0.2, 0);
                float *bias = rand_f(n_out, 1, 0);
                float *dx = dev_up(be, x, rows * n_in), *dw = dev_up(be, w, n_out * n_in);
                float *db = dev_up(be, bias, n_out), *dout = dev_nan(be, rows * n_out);
                ck_assert_int_eq(be->ops->linear(be, dout, dx, dw, with_bias ? db : NULL, rows,
                                                 n_in, n_out),
                                 LH_OK);
                float *got = down(be, dout, rows * n_out);
                double *ref = dvec(rows * n_out);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t o = 0; o < n_out; o++) {
                        double s = with_bias ? bias[o] : 0.0;
                        for (int64_t i = 0; i < n_in; i++) s += (double)x[r * n_in + i] * w[o * n_in + i];
                        ref[r * n_out + o] = s;
                    }
                CHECK_REL(got, ref, rows * n_out, TOL, "linear threads=%d %lldx%lld->%lld bias=%d",
                          g_threads[bi], (long long)rows, (long long)n_in, (long long)n_out,
                          with_bias);
                free(got);
                free(ref);
                free(x);
                free(w);
                free(bias);
                dfree(be, dx);
                dfree(be, dw);
                dfree(be, db);
                dfree(be, dout);
            }
        }
    }
}
END_TEST

/* ---- Conv2d ---- */

typedef struct conv_case {
    int64_t n, c_in, h, w, c_out, kh, kw;
    int stride, pad, bias;
} conv_case;

static void ref_conv(double *out, const float *x, const float *w, const float *bias,
                     const conv_case *cc, int64_t oh, int64_t ow) {
    for (int64_t img = 0; img < cc->n; img++)
        for (int64_t co = 0; co < cc->c_out; co++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    double s = bias ? bias[co] : 0.0;
                    for (int64_t ci = 0; ci < cc->c_in; ci++)
                        for (int64_t ky = 0; ky < cc->kh; ky++)
                            for (int64_t kx = 0; kx < cc->kw; kx++) {
                                int64_t iy = oy * cc->stride - cc->pad + ky;
                                int64_t ix = ox * cc->stride - cc->pad + kx;
                                if (iy < 0 || iy >= cc->h || ix < 0 || ix >= cc->w) continue;
                                s += (double)x[((img * cc->c_in + ci) * cc->h + iy) * cc->w + ix] *
                                     w[((co * cc->c_in + ci) * cc->kh + ky) * cc->kw + kx];
                            }
                    out[((img * cc->c_out + co) * oh + oy) * ow + ox] = s;
                }
}

START_TEST(test_conv2d) {
    static const conv_case cases[] = {
        {1, 1, 1, 1, 1, 1, 1, 1, 0, 1},    /* scalar */
        {2, 3, 7, 5, 4, 3, 3, 1, 1, 1},    /* 3x3 pad 1, h != w */
        {2, 5, 9, 13, 7, 3, 3, 2, 1, 1},   /* stride 2 pad 1 (Downsample2D) */
        {1, 4, 8, 6, 3, 3, 3, 1, 0, 0},    /* pad 0, no bias */
        {1, 2, 4, 4, 3, 3, 3, 2, 0, 1},    /* stride 2 pad 0 */
        {2, 33, 10, 12, 17, 1, 1, 1, 0, 1}, /* 1x1 in place */
        {1, 6, 11, 7, 5, 1, 1, 2, 0, 1},   /* 1x1 stride 2 */
        {1, 3, 5, 5, 2, 5, 5, 1, 2, 1},    /* 5x5 pad 2 */
        {1, 7, 1, 9, 3, 1, 3, 1, 1, 0},    /* 1x3, one row */
        {2, 16, 3, 3, 96, 3, 3, 1, 1, 1},  /* few pixels: output channels split */
        {1, 64, 48, 50, 40, 3, 3, 1, 1, 1}, /* several pixel tiles */
        {1, 130, 33, 33, 8, 3, 3, 1, 1, 1}, /* several pixel tiles and channel chunks */
        {2, 40, 50, 45, 6, 1, 1, 1, 0, 0},  /* 1x1 in place, several pixel tiles */
    };
    /* the last cases must cover several pixel tiles and channel chunks */
    int64_t tp, chunk;
    lh__cpu_conv2d_plan(&tp, &chunk, 1, 64, 3, 3, 48 * 50, 1);
    ck_assert_int_lt(tp, 48 * 50);
    lh__cpu_conv2d_plan(&tp, &chunk, 1, 130, 3, 3, 33 * 33, 1);
    ck_assert_int_lt(tp, 33 * 33);
    ck_assert_int_lt(chunk, 130);
    seed(3);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const conv_case *cc = &cases[ci];
            int64_t oh = (cc->h + 2 * cc->pad - cc->kh) / cc->stride + 1;
            int64_t ow = (cc->w + 2 * cc->pad - cc->kw) / cc->stride + 1;
            int64_t nx = cc->n * cc->c_in * cc->h * cc->w, nw = cc->c_out * cc->c_in * cc->kh * cc->kw;
            int64_t no = cc->n * cc->c_out * oh * ow;
            float *x = rand_f(nx, 1, 0), *w = rand_f(nw, 0.3, 0), *bias = rand_f(cc->c_out, 1, 0);
            float *dx = dev_up(be, x, nx), *dw = dev_up(be, w, nw), *db = dev_up(be, bias, cc->c_out);
            float *dout = dev_nan(be, no);
            ck_assert_int_eq(be->ops->conv2d(be, dout, dx, dw, cc->bias ? db : NULL, cc->n, cc->c_in,
                                             cc->h, cc->w, cc->c_out, cc->kh, cc->kw, cc->stride,
                                             cc->pad),
                             LH_OK);
            float *got = down(be, dout, no);
            double *ref = dvec(no);
            ref_conv(ref, x, w, cc->bias ? bias : NULL, cc, oh, ow);
            CHECK_REL(got, ref, no, TOL, "conv2d threads=%d case %zu", g_threads[bi], ci);
            free(got);
            free(ref);
            free(x);
            free(w);
            free(bias);
            dfree(be, dx);
            dfree(be, dw);
            dfree(be, db);
            dfree(be, dout);
        }
    }
}
END_TEST

START_TEST(test_conv2d_bounds) {
    lh_backend *be = g_be[0];
    float x[16] = {0};
    ck_assert_int_eq(be->ops->conv2d(be, x, x, x, NULL, 1, 1, 2, 2, 1, 3, 3, 1, 0), LH_ERR_SHAPE);
    ck_assert_int_eq(be->ops->conv2d(be, x, x, x, NULL, 1, 1, 2, 2, 1, 1, 1, 0, 0), LH_ERR_INVALID);
    ck_assert_int_eq(be->ops->conv2d(be, x, x, x, NULL, 1, 1, 2, 2, 1, 1, 1, 1, -1), LH_ERR_INVALID);
    /* im2col scratch stays bounded for the largest Stable Diffusion convs:
     * SD 1.5 UNet 320->320 3x3 at 64x64 and the VAE decoder at 512x512
     * (512 and 128 channels) and 1024x1024: 4 MiB a thread */
    const size_t cap = (size_t)16 * (4u << 20);
    ck_assert_uint_le(lh__cpu_conv2d_scratch_bytes(2, 320, 3, 3, 64 * 64, 16), cap);
    ck_assert_uint_le(lh__cpu_conv2d_scratch_bytes(1, 512, 3, 3, 512 * 512, 16), cap);
    ck_assert_uint_le(lh__cpu_conv2d_scratch_bytes(1, 128, 3, 3, 1024 * 1024, 16), cap);
    ck_assert_uint_le(lh__cpu_conv2d_scratch_bytes(1, 2560, 3, 3, 8 * 8, 16), cap);
}
END_TEST

/* ---- Normalisation ---- */

static double silu_d(double y) { return y / (1.0 + exp(-y)); }

START_TEST(test_group_norm) {
    static const int64_t cases[][4] = {/* n, c, hw, groups */
                                       {1, 1, 1, 1},   {2, 12, 33, 3},  {2, 6, 35, 6},
                                       {1, 32, 1, 32}, {2, 64, 153, 32}, {1, 20, 7, 4},
                                       {3, 96, 1000, 32}};
    seed(4);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            int64_t n = cases[ci][0], c = cases[ci][1], hw = cases[ci][2], g = cases[ci][3];
            int64_t total = n * c * hw, cg = c / g;
            for (int silu = 0; silu < 2; silu++) {
                /* an offset mean stresses the two-pass variance */
                float *x = rand_f(total, 2, ci % 2 ? 30.0 : 0.0);
                float *gamma = rand_f(c, 1, 1), *beta = rand_f(c, 1, 0);
                float eps = silu ? 1e-6f : 1e-5f;
                float *dx = dev_up(be, x, total), *dg = dev_up(be, gamma, c), *dbeta = dev_up(be, beta, c);
                float *dout = dev_nan(be, total);
                ck_assert_int_eq(be->ops->group_norm(be, dout, dx, dg, dbeta, n, c, hw, g, eps, silu),
                                 LH_OK);
                float *got = down(be, dout, total);
                double *ref = dvec(total);
                for (int64_t img = 0; img < n; img++)
                    for (int64_t gi = 0; gi < g; gi++) {
                        const float *xs = x + (img * c + gi * cg) * hw;
                        double mean = 0, var = 0;
                        for (int64_t i = 0; i < cg * hw; i++) mean += xs[i];
                        mean /= (double)(cg * hw);
                        for (int64_t i = 0; i < cg * hw; i++) var += (xs[i] - mean) * (xs[i] - mean);
                        var /= (double)(cg * hw);
                        for (int64_t i = 0; i < cg * hw; i++) {
                            int64_t ch = gi * cg + i / hw;
                            double y = (xs[i] - mean) / sqrt(var + eps) * gamma[ch] + beta[ch];
                            ref[(img * c + gi * cg) * hw + i] = silu ? silu_d(y) : y;
                        }
                    }
                CHECK_REL(got, ref, total, TOL, "group_norm threads=%d case %zu silu=%d",
                          g_threads[bi], ci, silu);
                free(got);
                free(ref);
                free(x);
                free(gamma);
                free(beta);
                dfree(be, dx);
                dfree(be, dg);
                dfree(be, dbeta);
                dfree(be, dout);
            }
        }
    }
    float z[4] = {0};
    ck_assert_int_eq(g_be[0]->ops->group_norm(g_be[0], z, z, z, z, 1, 4, 1, 3, 1e-5f, 0),
                     LH_ERR_INVALID);
}
END_TEST

START_TEST(test_layer_norm) {
    static const int64_t cases[][2] = {{1, 1}, {7, 33}, {77, 768}, {3, 5}, {1000, 320}, {2, 1281}};
    seed(5);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            int64_t rows = cases[ci][0], cols = cases[ci][1], total = rows * cols;
            float *x = rand_f(total, 3, ci % 2 ? -50.0 : 0.5);
            float *gamma = rand_f(cols, 1, 1), *beta = rand_f(cols, 1, 0);
            float eps = 1e-5f;
            float *dx = dev_up(be, x, total), *dg = dev_up(be, gamma, cols), *dbeta = dev_up(be, beta, cols);
            float *dout = dev_nan(be, total);
            ck_assert_int_eq(be->ops->layer_norm(be, dout, dx, dg, dbeta, rows, cols, eps), LH_OK);
            float *got = down(be, dout, total);
            double *ref = dvec(total);
            for (int64_t r = 0; r < rows; r++) {
                const float *xs = x + r * cols;
                double mean = 0, var = 0;
                for (int64_t i = 0; i < cols; i++) mean += xs[i];
                mean /= (double)cols;
                for (int64_t i = 0; i < cols; i++) var += (xs[i] - mean) * (xs[i] - mean);
                var /= (double)cols;
                for (int64_t i = 0; i < cols; i++)
                    ref[r * cols + i] = (xs[i] - mean) / sqrt(var + eps) * gamma[i] + beta[i];
            }
            CHECK_REL(got, ref, total, TOL, "layer_norm threads=%d %lldx%lld", g_threads[bi],
                      (long long)rows, (long long)cols);
            free(got);
            free(ref);
            free(x);
            free(gamma);
            free(beta);
            dfree(be, dx);
            dfree(be, dg);
            dfree(be, dbeta);
            dfree(be, dout);
        }
    }
}
END_TEST

/* ---- Attention ---- */

/* Reference output row i of (batch bi, head h): o [d]; returns the row's
 * logsumexp, log sum_j exp(scale q_i.k_j) over the keys it sees. */
static double ref_attention_row(double *o, const float *q, const float *k, const float *v,
                              int64_t heads, int64_t nq, int64_t nk, int64_t d, double scale,
                              int causal, int64_t bi, int64_t h, int64_t i) {
    int64_t hd = heads * d, last = causal && i < nk - 1 ? i : nk - 1;
    double *s = dvec(nk), mx = -INFINITY, sum = 0.0;
    const float *qr = q + (bi * nq + i) * hd + h * d;
    for (int64_t j = 0; j <= last; j++) {
        const float *kr = k + (bi * nk + j) * hd + h * d;
        double dot = 0.0;
        for (int64_t c = 0; c < d; c++) dot += (double)qr[c] * kr[c];
        s[j] = dot * scale;
        if (s[j] > mx) mx = s[j];
    }
    for (int64_t j = 0; j <= last; j++) sum += (s[j] = exp(s[j] - mx));
    for (int64_t c = 0; c < d; c++) o[c] = 0.0;
    for (int64_t j = 0; j <= last; j++) {
        const float *vr = v + (bi * nk + j) * hd + h * d;
        for (int64_t c = 0; c < d; c++) o[c] += s[j] / sum * vr[c];
    }
    free(s);
    return mx + log(sum);
}

/* Runs attention and compares rows i = 0, row_step, 2 row_step, ... and the
 * last row of every (batch, head), output and logsumexp, with the
 * reference. q is drawn with amplitude q_amp: larger makes the softmax
 * peakier. */
static void check_attention(lh_backend *be, const char *tag, int64_t b, int64_t heads, int64_t nq,
                            int64_t nk, int64_t d, int causal, int64_t row_step, double q_amp) {
    int64_t nqe = b * nq * heads * d, nke = b * nk * heads * d;
    float *q = rand_f(nqe, q_amp, 0), *k = rand_f(nke, 1, 0), *v = rand_f(nke, 1, 0);
    float *dq = dev_up(be, q, nqe), *dk = dev_up(be, k, nke), *dv = dev_up(be, v, nke);
    float *dout = dev_nan(be, nqe), *dlse = dev_nan(be, b * heads * nq);
    double scale = 1.0 / sqrt((double)d);
    ck_assert_int_eq(be->ops->attention(be, dout, dlse, dq, dk, dv, b, heads, nq, nk, d, (float)scale,
                                        causal),
                     LH_OK);
    float *got = down(be, dout, nqe), *got_lse = down(be, dlse, b * heads * nq);
    int64_t rows_per = (nq - 1) / row_step + 2, cap = b * heads * rows_per * d, n = 0, nl = 0;
    double *ref = dvec(cap), *ref_lse = dvec(b * heads * rows_per);
    float *sel = xmalloc((size_t)cap * sizeof *sel), *sel_lse = xmalloc((size_t)(b * heads * rows_per) * sizeof *sel_lse);
    for (int64_t bi = 0; bi < b; bi++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < nq; i = i == nq - 1 ? nq : (i + row_step < nq ? i + row_step : nq - 1)) {
                ref_lse[nl] = ref_attention_row(ref + n, q, k, v, heads, nq, nk, d, scale, causal, bi, h, i);
                sel_lse[nl++] = got_lse[(bi * heads + h) * nq + i];
                memcpy(sel + n, got + (bi * nq + i) * heads * d + h * d, (size_t)d * sizeof(float));
                n += d;
            }
    CHECK_REL(sel, ref, n, TOL, "attention %s b=%lld heads=%lld nq=%lld nk=%lld d=%lld causal=%d", tag,
              (long long)b, (long long)heads, (long long)nq, (long long)nk, (long long)d, causal);
    CHECK_REL(sel_lse, ref_lse, nl, TOL, "attention lse %s b=%lld heads=%lld nq=%lld nk=%lld d=%lld causal=%d",
              tag, (long long)b, (long long)heads, (long long)nq, (long long)nk, (long long)d, causal);
    for (int64_t i = 0; i < nqe; i++) ck_assert_msg(isfinite(got[i]), "attention %s: out[%lld] not finite", tag, (long long)i);
    for (int64_t i = 0; i < b * heads * nq; i++)
        ck_assert_msg(isfinite(got_lse[i]), "attention %s: lse[%lld] not finite", tag, (long long)i);
    free(sel);
    free(sel_lse);
    free(ref);
    free(ref_lse);
    free(got);
    free(got_lse);
    free(q);
    free(k);
    free(v);
    dfree(be, dq);
    dfree(be, dk);
    dfree(be, dv);
    dfree(be, dout);
    dfree(be, dlse);
}

START_TEST(test_attention) {
    static const int64_t cases[][6] = {/* b, heads, nq, nk, d, causal */
                                       {1, 1, 1, 1, 1, 0},    {2, 3, 7, 33, 5, 0},
                                       {2, 2, 33, 7, 40, 0},  {1, 2, 77, 77, 64, 1},
                                       {2, 1, 100, 77, 40, 0}, {1, 2, 65, 130, 16, 1},
                                       {1, 2, 130, 65, 16, 1}, {2, 8, 77, 77, 40, 0},
                                       {1, 1, 200, 300, 160, 0}, {1, 2, 129, 257, 80, 1},
                                       {1, 3, 1, 300, 7, 1},  {1, 1, 300, 1, 3, 0},
                                       {2, 2, 70, 133, 20, 1}, {1, 1, 64, 128, 8, 0}};
    seed(6);
    /* every micro-kernel instantiation this CPU can run, then the default */
    static const char *const isa_name[] = {"auto", "generic", "avx2", "avx512"};
    for (int isa = LH_CPU_ISA_COUNT - 1; isa >= LH_CPU_ISA_AUTO; isa--) {
        if (lh__cpu_attention_force_isa(isa) != LH_OK) continue;
        for (int bi = 0; bi < N_BE; bi++) {
            if (isa != LH_CPU_ISA_AUTO && bi > 0) continue; /* one backend per forced ISA */
            char tag[48];
            snprintf(tag, sizeof tag, "isa=%s threads=%d", isa_name[isa], g_threads[bi]);
            for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
                const int64_t *c = cases[ci];
                check_attention(g_be[bi], tag, c[0], c[1], c[2], c[3], c[4], (int)c[5], 1, 1.0);
                /* peaky softmax: the running max moves between key tiles */
                check_attention(g_be[bi], tag, c[0], c[1], c[2], c[3], c[4], (int)c[5], 1, 8.0);
            }
        }
    }
    float z[4] = {0};
    ck_assert_int_eq(g_be[0]->ops->attention(g_be[0], z, NULL, z, z, z, 1, 1, 1, 0, 1, 1.0f, 0), LH_ERR_INVALID);
    ck_assert_int_eq(g_be[0]->ops->attention(g_be[0], z, NULL, z, z, z, 1, -1, 1, 1, 1, 1.0f, 0), LH_ERR_INVALID);
}
END_TEST

START_TEST(test_attention_4096) {
    seed(7);
    /* SD 1.5's 64x64 self-attention length; every 17th query row checked */
    check_attention(g_be[0], "4096", 1, 2, 4096, 4096, 40, 0, 17, 2.0);
    check_attention(g_be[0], "4096", 1, 2, 4096, 4096, 40, 1, 17, 2.0);
}
END_TEST

START_TEST(test_attention_threads_agree) {
    /* a task is one thread's whole computation: results do not depend on
     * the thread count, bit for bit */
    int64_t b = 2, heads = 3, nq = 150, nk = 200, d = 24, ne = b * nq * heads * d, nke = b * nk * heads * d;
    seed(8);
    float *q = rand_f(ne, 2, 0), *k = rand_f(nke, 1, 0), *v = rand_f(nke, 1, 0);
    float *out[N_BE];
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        float *dq = dev_up(be, q, ne), *dk = dev_up(be, k, nke), *dv = dev_up(be, v, nke), *dout = dev_nan(be, ne);
        ck_assert_int_eq(be->ops->attention(be, dout, NULL, dq, dk, dv, b, heads, nq, nk, d, 0.2f, 1), LH_OK);
        out[bi] = down(be, dout, ne);
        dfree(be, dq);
        dfree(be, dk);
        dfree(be, dv);
        dfree(be, dout);
    }
    ck_assert_mem_eq(out[0], out[1], (size_t)ne * sizeof(float));
    ck_assert_mem_eq(out[0], out[2], (size_t)ne * sizeof(float));
    for (int bi = 0; bi < N_BE; bi++) free(out[bi]);
    free(q);
    free(k);
    free(v);
}
END_TEST

static long max_rss_kib(void) {
    struct rusage ru;
    ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_maxrss;
}

/* 1024x1024 image latents: 16384-token self-attention in bounded memory.
 * A full score matrix would be 8 * 16384^2 floats = 8 GiB; the op's scratch
 * is a few tiles per thread and the process's peak RSS must not grow by
 * more than 64 MiB while it runs. Sampled query rows are checked. */
START_TEST(test_attention_16384) {
    lh_backend *be = g_be[0];
    int64_t b = 1, heads = 8, n = 16384, d = 40, ne = b * n * heads * d;
#ifndef __OPTIMIZE__
    heads = 1; /* unoptimised (sanitizer) builds: one head, same length */
    ne = b * n * heads * d;
#endif
    size_t scratch = lh__cpu_attention_scratch_bytes(d, 64);
    ck_assert_uint_le(scratch, (size_t)64 * 256 * 1024); /* < 256 KiB a thread */
    seed(9);
    float *q = rand_f(ne, 2, 0), *k = rand_f(ne, 1, 0), *v = rand_f(ne, 1, 0);
    float *out = xmalloc((size_t)ne * sizeof *out);
    memset(out, 0, (size_t)ne * sizeof *out); /* touch all pages before measuring */
    double scale = 1.0 / sqrt((double)d);
    long before = max_rss_kib();
    ck_assert_int_eq(be->ops->attention(be, out, NULL, q, k, v, b, heads, n, n, d, (float)scale, 0), LH_OK);
    long grew = max_rss_kib() - before;
    ck_assert_msg(grew < 64 * 1024, "peak RSS grew by %ld KiB during attention", grew);
    static const int64_t rows[] = {0, 1, 63, 64, 127, 4097, 8191, 12345, 16320, 16383};
    int64_t nr = (int64_t)(sizeof rows / sizeof rows[0]), m = 0;
    double *ref = dvec(nr * heads * d);
    float *sel = xmalloc((size_t)(nr * heads * d) * sizeof *sel);
    for (int64_t r = 0; r < nr; r++)
        for (int64_t h = 0; h < heads; h++) {
            ref_attention_row(ref + m, q, k, v, heads, n, n, d, scale, 0, 0, h, rows[r]);
            memcpy(sel + m, out + rows[r] * heads * d + h * d, (size_t)d * sizeof(float));
            m += d;
        }
    CHECK_REL(sel, ref, m, TOL, "attention 16384 tokens, %lld heads", (long long)heads);
    free(sel);
    free(ref);
    free(q);
    free(k);
    free(v);
    free(out);
}
END_TEST

/* ---- Activations ---- */

static double gelu_d(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double quick_gelu_d(double x) { return x / (1.0 + exp(-1.702 * x)); }

/* n >= 4014: [-20, 20] in steps of 0.01, special values, then random
 * values in [-6, 6); smaller n: random values only */
static float *act_inputs(int64_t n) {
    static const float special[] = {0.0f, -0.0f, 1e-3f, -1e-3f, 1e-30f, 87.0f, -87.0f, 88.5f,
                                    -88.5f, 100.0f, -100.0f, 1e4f, -1e4f};
    int64_t ns = (int64_t)(sizeof special / sizeof special[0]);
    float *x = rand_f(n, 6, 0);
    if (n < 4001 + ns) return x;
    for (int64_t i = 0; i < 4001; i++) x[i] = (float)(-20.0 + 40.0 * (double)i / 4000.0);
    for (int64_t i = 0; i < ns; i++) x[4001 + i] = special[i];
    return x;
}

START_TEST(test_activations) {
    typedef lh_status (*op_fn)(lh_backend *, float *, const float *, int64_t);
    seed(10);
    static const int64_t sizes[] = {1, 7, 5000, 100003};
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (int op = 0; op < 3; op++) {
            op_fn fn = op == 0 ? be->ops->silu : op == 1 ? be->ops->gelu : be->ops->quick_gelu;
            const char *name = op == 0 ? "silu" : op == 1 ? "gelu" : "quick_gelu";
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                int64_t n = sizes[si];
                float *x = act_inputs(n);
                float *dx = dev_up(be, x, n), *dout = dev_nan(be, n);
                ck_assert_int_eq(fn(be, dout, dx, n), LH_OK);
                float *got = down(be, dout, n);
                double *ref = dvec(n);
                for (int64_t i = 0; i < n; i++)
                    ref[i] = op == 0 ? silu_d(x[i]) : op == 1 ? gelu_d(x[i]) : quick_gelu_d(x[i]);
                CHECK_REL(got, ref, n, TOL, "%s threads=%d n=%lld", name, g_threads[bi], (long long)n);
                /* elementwise too, for |x| <= 8 (further out the float
                 * rounding of the argument dominates the tiny tail values) */
                for (int64_t i = 0; i < n; i++)
                    if (fabsf(x[i]) <= 8.0f)
                        ck_assert_msg(fabs(got[i] - ref[i]) <= 1e-5 * fabs(ref[i]) + 1e-30,
                                      "%s(%.9g) = %.9g, want %.9g", name, x[i], got[i], ref[i]);
                free(got);
                free(ref);
                free(x);
                dfree(be, dx);
                dfree(be, dout);
            }
        }
        /* aliasing: in place */
        float x1[3] = {-1, 0, 2}, *d = dev_up(be, x1, 3);
        ck_assert_int_eq(be->ops->silu(be, d, d, 3), LH_OK);
        float *got = down(be, d, 3);
        ck_assert(fabs(got[2] - silu_d(2.0)) < 1e-6 && fabs(got[0] - silu_d(-1.0)) < 1e-6);
        free(got);
        dfree(be, d);
    }
}
END_TEST

START_TEST(test_geglu) {
    static const int64_t cases[][2] = {{1, 1}, {3, 33}, {65, 640}, {7, 1280}};
    seed(11);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            int64_t rows = cases[ci][0], f = cases[ci][1];
            float *x = rand_f(rows * 2 * f, 4, 0);
            float *dx = dev_up(be, x, rows * 2 * f), *dout = dev_nan(be, rows * f);
            ck_assert_int_eq(be->ops->geglu(be, dout, dx, rows, f), LH_OK);
            float *got = down(be, dout, rows * f);
            double *ref = dvec(rows * f);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < f; j++)
                    ref[r * f + j] = (double)x[r * 2 * f + j] * gelu_d(x[r * 2 * f + f + j]);
            CHECK_REL(got, ref, rows * f, TOL, "geglu threads=%d %lldx%lld", g_threads[bi],
                      (long long)rows, (long long)f);
            free(got);
            free(ref);
            free(x);
            dfree(be, dx);
            dfree(be, dout);
        }
    }
}
END_TEST

/* ---- Elementwise ---- */

START_TEST(test_elementwise) {
    static const int64_t sizes[] = {1, 33, 100003};
    seed(12);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            int64_t n = sizes[si];
            float *a = rand_f(n, 3, 0), *b = rand_f(n, 3, 1);
            double *ref = dvec(n);
            float *da = dev_up(be, a, n), *db = dev_up(be, b, n), *dout = dev_nan(be, n);
            /* add */
            ck_assert_int_eq(be->ops->add(be, dout, da, db, n), LH_OK);
            float *got = down(be, dout, n);
            for (int64_t i = 0; i < n; i++) ref[i] = (double)a[i] + b[i];
            CHECK_REL(got, ref, n, 1e-7, "add n=%lld", (long long)n);
            free(got);
            /* add in place: out = a */
            ck_assert_int_eq(be->ops->add(be, da, da, db, n), LH_OK);
            got = down(be, da, n);
            CHECK_REL(got, ref, n, 1e-7, "add in place n=%lld", (long long)n);
            free(got);
            ck_assert_int_eq(be->ops->upload(be, da, a, (size_t)n * sizeof(float)), LH_OK);
            /* mul, then in place: out = b */
            ck_assert_int_eq(be->ops->mul(be, dout, da, db, n), LH_OK);
            got = down(be, dout, n);
            for (int64_t i = 0; i < n; i++) ref[i] = (double)a[i] * b[i];
            CHECK_REL(got, ref, n, 1e-7, "mul n=%lld", (long long)n);
            free(got);
            ck_assert_int_eq(be->ops->mul(be, db, da, db, n), LH_OK);
            got = down(be, db, n);
            CHECK_REL(got, ref, n, 1e-7, "mul in place n=%lld", (long long)n);
            free(got);
            ck_assert_int_eq(be->ops->upload(be, db, b, (size_t)n * sizeof(float)), LH_OK);
            /* axpby, out = b */
            ck_assert_int_eq(be->ops->axpby(be, db, 0.3f, da, -1.7f, db, n), LH_OK);
            got = down(be, db, n);
            for (int64_t i = 0; i < n; i++) ref[i] = (double)0.3f * a[i] + (double)-1.7f * b[i];
            CHECK_REL(got, ref, n, 1e-6, "axpby n=%lld", (long long)n);
            free(got);
            free(a);
            free(b);
            free(ref);
            dfree(be, da);
            dfree(be, db);
            dfree(be, dout);
        }
        /* add_channel_bias: time embedding into NCHW */
        static const int64_t bc[][3] = {{1, 1, 1}, {2, 7, 33}, {2, 320, 4096}, {3, 5, 1}};
        for (size_t ci = 0; ci < sizeof bc / sizeof bc[0]; ci++) {
            int64_t outer = bc[ci][0], c = bc[ci][1], inner = bc[ci][2], total = outer * c * inner;
            float *x = rand_f(total, 1, 0), *bias = rand_f(outer * c, 2, 0);
            float *dx = dev_up(be, x, total), *dbias = dev_up(be, bias, outer * c), *dout = dev_nan(be, total);
            ck_assert_int_eq(be->ops->add_channel_bias(be, dout, dx, dbias, outer, c, inner), LH_OK);
            float *got = down(be, dout, total);
            double *ref = dvec(total);
            for (int64_t i = 0; i < total; i++) ref[i] = (double)x[i] + bias[i / inner];
            CHECK_REL(got, ref, total, 1e-7, "add_channel_bias %lldx%lldx%lld", (long long)outer,
                      (long long)c, (long long)inner);
            /* in place */
            ck_assert_int_eq(be->ops->add_channel_bias(be, dx, dx, dbias, outer, c, inner), LH_OK);
            free(got);
            got = down(be, dx, total);
            CHECK_REL(got, ref, total, 1e-7, "add_channel_bias in place");
            free(got);
            free(ref);
            free(x);
            free(bias);
            dfree(be, dx);
            dfree(be, dbias);
            dfree(be, dout);
        }
    }
}
END_TEST

/* ---- Layout (exact) ---- */

START_TEST(test_layout) {
    seed(13);
    for (int bi = 0; bi < N_BE; bi++) {
        lh_backend *be = g_be[bi];
        static const int64_t us[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 4, 64, 33}, {2, 16, 40, 48}};
        for (size_t ci = 0; ci < sizeof us / sizeof us[0]; ci++) {
            int64_t n = us[ci][0], c = us[ci][1], h = us[ci][2], w = us[ci][3], ni = n * c * h * w;
            float *x = rand_f(ni, 1, 0), *dx = dev_up(be, x, ni), *dout = dev_nan(be, 4 * ni);
            ck_assert_int_eq(be->ops->upsample_nearest2x(be, dout, dx, n, c, h, w), LH_OK);
            float *got = down(be, dout, 4 * ni);
            for (int64_t p = 0; p < n * c; p++)
                for (int64_t y = 0; y < 2 * h; y++)
                    for (int64_t xx = 0; xx < 2 * w; xx++)
                        ck_assert(got[(p * 2 * h + y) * 2 * w + xx] == x[(p * h + y / 2) * w + xx / 2]);
            free(got);
            free(x);
            dfree(be, dx);
            dfree(be, dout);
        }
        static const int64_t cc[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {2, 320, 640, 64}, {1, 0, 4, 9}};
        for (size_t ci = 0; ci < sizeof cc / sizeof cc[0]; ci++) {
            int64_t n = cc[ci][0], ca = cc[ci][1], cb = cc[ci][2], hw = cc[ci][3];
            int64_t na = n * ca * hw, nb = n * cb * hw;
            float *a = rand_f(na, 1, 0), *b = rand_f(nb, 1, 0);
            float *da = dev_up(be, a, na), *db = dev_up(be, b, nb), *dout = dev_nan(be, na + nb);
            ck_assert_int_eq(be->ops->concat_channels(be, dout, da, db, n, ca, cb, hw), LH_OK);
            float *got = down(be, dout, na + nb);
            for (int64_t img = 0; img < n; img++)
                for (int64_t ch = 0; ch < ca + cb; ch++)
                    for (int64_t p = 0; p < hw; p++) {
                        float want = ch < ca ? a[(img * ca + ch) * hw + p] : b[(img * cb + ch - ca) * hw + p];
                        ck_assert(got[(img * (ca + cb) + ch) * hw + p] == want);
                    }
            free(got);
            free(a);
            free(b);
            dfree(be, da);
            dfree(be, db);
            dfree(be, dout);
        }
        static const int64_t tc[][3] = {{1, 1, 1}, {2, 3, 7}, {2, 33, 65}, {1, 320, 4096}, {3, 5, 1}};
        for (size_t ci = 0; ci < sizeof tc / sizeof tc[0]; ci++) {
            int64_t n = tc[ci][0], c = tc[ci][1], hw = tc[ci][2], ne = n * c * hw;
            float *x = rand_f(ne, 1, 0), *dx = dev_up(be, x, ne), *dt = dev_nan(be, ne), *dback = dev_nan(be, ne);
            ck_assert_int_eq(be->ops->transpose_c_hw(be, dt, dx, n, c, hw), LH_OK);
            float *got = down(be, dt, ne);
            for (int64_t img = 0; img < n; img++)
                for (int64_t ch = 0; ch < c; ch++)
                    for (int64_t p = 0; p < hw; p++)
                        ck_assert(got[(img * hw + p) * c + ch] == x[(img * c + ch) * hw + p]);
            /* and back: [n, hw, c] -> [n, c, hw] is the same op with c and hw swapped */
            ck_assert_int_eq(be->ops->transpose_c_hw(be, dback, dt, n, hw, c), LH_OK);
            float *back = down(be, dback, ne);
            ck_assert_mem_eq(back, x, (size_t)ne * sizeof(float));
            free(back);
            free(got);
            free(x);
            dfree(be, dx);
            dfree(be, dt);
            dfree(be, dback);
        }
    }
}
END_TEST

/* ---- Timestep embedding ---- */

/* diffusers' arithmetic with its float32 roundings (the exponent, the
 * frequency and the argument are float32 tensors there), sin and cos in
 * double. */
static void ref_timestep(double *out, const float *t, int64_t n, int64_t dim, int flip, float shift,
                         float max_period) {
    int64_t half = dim / 2;
    float neg_log = (float)(-log((double)max_period));
    float denom = (float)((double)half - (double)shift);
    for (int64_t r = 0; r < n; r++) {
        for (int64_t i = 0; i < half; i++) {
            float e = (neg_log * (float)i) / denom;
            float arg = t[r] * (float)exp((double)e);
            out[r * dim + (flip ? half : 0) + i] = sin((double)arg);
            out[r * dim + (flip ? 0 : half) + i] = cos((double)arg);
        }
        if (dim % 2) out[r * dim + dim - 1] = 0.0;
    }
}

START_TEST(test_timestep_embedding) {
    static const float ts[] = {0.0f, 1.0f, 999.0f, 500.5f, 37.25f};
    static const struct { int64_t dim; int flip; float shift, max_period; } cases[] = {
        {320, 1, 0.0f, 10000.0f}, /* SD 1.5 UNet */
        {7, 0, 1.0f, 10000.0f},   /* odd: zero pad; diffusers' default shift */
        {8, 1, 1.0f, 10000.0f},  {256, 0, 0.5f, 1000.0f}, {1, 1, 0.0f, 10000.0f},
        {1280, 1, 0.0f, 10000.0f}};
    lh_backend *be = g_be[0];
    int64_t n = 5;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t dim = cases[ci].dim;
        float *dout = dev_nan(be, n * dim);
        ck_assert_int_eq(be->ops->timestep_embedding(be, dout, ts, n, dim, cases[ci].flip,
                                                     cases[ci].shift, cases[ci].max_period),
                         LH_OK);
        float *got = down(be, dout, n * dim);
        double *ref = dvec(n * dim);
        ref_timestep(ref, ts, n, dim, cases[ci].flip, cases[ci].shift, cases[ci].max_period);
        CHECK_REL(got, ref, n * dim, 1e-6, "timestep_embedding dim=%lld flip=%d shift=%g",
                  (long long)dim, cases[ci].flip, (double)cases[ci].shift);
        if (dim % 2)
            for (int64_t r = 0; r < n; r++) ck_assert(got[r * dim + dim - 1] == 0.0f);
        free(got);
        free(ref);
        dfree(be, dout);
    }
    /* spot values from diffusers 0.42.1 / torch 2.15 (CPU):
     * get_timestep_embedding(torch.tensor([0., 1., 999., 500.5]), 320,
     *     flip_sin_to_cos=True, downscale_freq_shift=0)[i, j] */
    static const struct { int64_t i, j; double v; } spot[] = {
        {2, 0, 0.9996498227119446},  {2, 1, 0.8026775121688843}, {2, 159, 0.9944063425064087},
        {2, 160, -0.02646075189113617}, {2, 161, 0.5964133143424988},
        {3, 5, -0.09811200946569443}, {3, 319, 0.05299081653356552}, {1, 170, 0.5331684350967407}};
    float *dout = dev_nan(be, 4 * 320);
    ck_assert_int_eq(be->ops->timestep_embedding(be, dout, ts, 4, 320, 1, 0.0f, 10000.0f), LH_OK);
    float *got = down(be, dout, 4 * 320);
    for (size_t s = 0; s < sizeof spot / sizeof spot[0]; s++)
        ck_assert_msg(fabs(got[spot[s].i * 320 + spot[s].j] - spot[s].v) <= 1e-6,
                      "[%lld, %lld] = %.9g, diffusers %.9g", (long long)spot[s].i,
                      (long long)spot[s].j, got[spot[s].i * 320 + spot[s].j], spot[s].v);
    free(got);
    dfree(be, dout);
    float z[2];
    /* half - shift = 0 divides by zero */
    ck_assert_int_eq(be->ops->timestep_embedding(be, z, ts, 1, 2, 0, 1.0f, 10000.0f), LH_ERR_INVALID);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels_cpu");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, backends_up, backends_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_memory);
    tcase_add_test(tc, test_create_errors);
    tcase_add_test(tc, test_upload_weights);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_gemm_errors);
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_conv2d);
    tcase_add_test(tc, test_conv2d_bounds);
    tcase_add_test(tc, test_group_norm);
    tcase_add_test(tc, test_layer_norm);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_attention_4096);
    tcase_add_test(tc, test_attention_threads_agree);
    tcase_add_test(tc, test_activations);
    tcase_add_test(tc, test_geglu);
    tcase_add_test(tc, test_elementwise);
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_timestep_embedding);
    suite_add_tcase(s, tc);
    TCase *big = tcase_create("large");
    tcase_add_checked_fixture(big, backends_up, backends_down);
    tcase_set_timeout(big, 900);
    tcase_add_test(big, test_attention_16384);
    suite_add_tcase(s, big);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
