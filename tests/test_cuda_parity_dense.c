/* Parity of the cuda backend's dense ops with the cpu backend (the
 * reference): gemm, linear, conv2d, group_norm, layer_norm and their
 * backwards on random inputs at small, odd and SD 1.5-like sizes; fp32 at
 * TOL_F32, TF32 (LORAHOST_CUDA_TF32=1) at TOL_TF32, F16 activations at
 * TOL_HALF; argument errors return the cpu's status. Run: ctest -R
 * cuda_parity_dense (skipped, 77, without the module or a device). */
#include "cuda_parity.h"

/* ---- Buffers on both backends ---- */

/* The same values on the cpu and the cuda backend. */
typedef struct pair {
    float *cpu, *gpu;
    int64_t n;
} pair;

static const pair none = {NULL, NULL, 0};
static uint64_t g_seed = 1;

/* Uniform in [lo, hi), the same on both backends. */
static pair both(int64_t n, float lo, float hi) {
    float *h = rand_host(n, g_seed++, lo, hi);
    pair p = {on(g_cpu, h, n), on(g_gpu, h, n), n};
    free(h);
    return p;
}

/* A written output: junk that both backends must overwrite. */
static pair junk(int64_t n) { return both(n, 1e3f, 2e3f); }

static void drop(pair *p) {
    if (p->cpu) g_cpu->ops->free(g_cpu, p->cpu);
    if (p->gpu) g_gpu->ops->free(g_gpu, p->gpu);
    *p = none;
}

static void check(const char *what, const pair *p, double tol) {
    ck_assert_int_eq(g_gpu->ops->sync(g_gpu), LH_OK);
    expect_close_dev(what, p->gpu, p->cpu, p->n, tol);
}

/* `call` on each backend in turn, with BE the backend and B(p) its buffer
 * of pair p; each must return `want`. */
#define BE be_
#define B(p) (be_ == g_cpu ? (p).cpu : (p).gpu)
#define EXPECT_BOTH(want, call)                                                                  \
    do {                                                                                         \
        for (int side_ = 0; side_ < 2; side_++) {                                                \
            lh_backend *be_ = side_ ? g_gpu : g_cpu;                                             \
            lh_status st_ = (call);                                                              \
            ck_assert_msg(st_ == (want), "%s backend: %s returned %d, want %d",                  \
                          side_ ? "cuda" : "cpu", #call, (int)st_, (int)(want));                 \
        }                                                                                        \
    } while (0)
#define ON_BOTH(call) EXPECT_BOTH(LH_OK, call)

static void setup_f32(void) {
    ck_assert_int_eq(g_cpu->ops->set_precision(g_cpu, LH_DTYPE_F32), LH_OK);
    ck_assert_int_eq(g_gpu->ops->set_precision(g_gpu, LH_DTYPE_F32), LH_OK);
}

/* ---- GEMM and linear ---- */

/* Batched C = alpha op(A) op(B) + beta C; `pad` floats between batch
 * entries (left untouched); bcast_b: every entry shares one B (stride 0). */
static void gemm_case(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                      int64_t batch, int64_t pad, int bcast_b) {
    int64_t sa = m * k + pad, sb = bcast_b ? 0 : k * n + pad, sc = m * n + pad;
    pair a = both(sa * (batch - 1) + m * k, -1.0f, 1.0f);
    pair b = both(sb * (batch - 1) + k * n, -1.0f, 1.0f);
    pair c = both(sc * (batch - 1) + m * n, -1.0f, 1.0f);
    ON_BOTH(BE->ops->gemm(BE, B(c), B(a), B(b), ta, tb, m, n, k, alpha, beta, batch, sa, sb, sc));
    char what[96];
    snprintf(what, sizeof what, "gemm t%d%d %lldx%lldx%lld batch %lld a %g b %g%s", ta, tb,
             (long long)m, (long long)n, (long long)k, (long long)batch, (double)alpha,
             (double)beta, bcast_b ? " shared B" : "");
    check(what, &c, TOL_F32);
    drop(&a);
    drop(&b);
    drop(&c);
}

START_TEST(test_gemm) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 37, 53, 29, 1.5f, 0.0f, 3, 7, 0);
            gemm_case(ta, tb, 37, 53, 29, -0.75f, 1.0f, 3, 0, 0);
            gemm_case(ta, tb, 64, 40, 77, 1.0f, 0.5f, 3, 5, 1);
        }
    gemm_case(0, 1, 1024, 320, 320, 1.0f, 0.0f, 2, 0, 0); /* attention-sized */
    gemm_case(1, 0, 320, 320, 1024, 0.125f, 1.0f, 1, 0, 0);
    gemm_case(0, 0, 5, 6, 0, 1.0f, 0.5f, 2, 3, 0); /* k = 0: C = beta C */
    gemm_case(1, 1, 8, 9, 10, 0.0f, 2.0f, 2, 3, 0); /* alpha = 0 */
    gemm_case(0, 0, 1, 1, 1, 2.0f, 0.0f, 1, 0, 0);
}
END_TEST

static void linear_case(int64_t rows, int64_t n_in, int64_t n_out, int has_bias) {
    pair x = both(rows * n_in, -1.0f, 1.0f), w = both(n_out * n_in, -1.0f, 1.0f);
    pair bias = has_bias ? both(n_out, -1.0f, 1.0f) : none, out = junk(rows * n_out);
    ON_BOTH(BE->ops->linear(BE, B(out), B(x), B(w), B(bias), rows, n_in, n_out));
    char what[96];
    snprintf(what, sizeof what, "linear %lld x %lld -> %lld%s", (long long)rows, (long long)n_in,
             (long long)n_out, has_bias ? " + bias" : "");
    check(what, &out, TOL_F32);
    drop(&x);
    drop(&w);
    drop(&bias);
    drop(&out);
}

START_TEST(test_linear) {
    linear_case(4096, 320, 1280, 1); /* SD 1.5 feed-forward at 64x64 */
    linear_case(77, 768, 768, 0);    /* CLIP projection */
    linear_case(5, 3, 7, 1);
    linear_case(6, 0, 4, 1); /* no inputs: out = bias */
    linear_case(6, 0, 4, 0); /* ... or 0 */
}
END_TEST

/* want: 1 dx, 2 dw, 4 db. dw and db start from nonzero values (accumulated). */
static void linear_backward_case(int64_t rows, int64_t n_in, int64_t n_out, int want) {
    pair dy = both(rows * n_out, -1.0f, 1.0f), x = both(rows * n_in, -1.0f, 1.0f);
    pair w = both(n_out * n_in, -1.0f, 1.0f);
    pair dx = want & 1 ? junk(rows * n_in) : none;
    pair dw = want & 2 ? both(n_out * n_in, -1.0f, 1.0f) : none;
    pair db = want & 4 ? both(n_out, -1.0f, 1.0f) : none;
    ON_BOTH(BE->ops->linear_backward(BE, B(dx), B(dw), B(db), B(dy), B(x), B(w), rows, n_in,
                                     n_out));
    char what[96];
    snprintf(what, sizeof what, "linear_backward %lld x %lld -> %lld: ", (long long)rows,
             (long long)n_in, (long long)n_out);
    size_t at = strlen(what);
    if (want & 1) {
        snprintf(what + at, sizeof what - at, "dx");
        check(what, &dx, TOL_F32);
    }
    if (want & 2) {
        snprintf(what + at, sizeof what - at, "dw +=");
        check(what, &dw, TOL_F32);
    }
    if (want & 4) {
        snprintf(what + at, sizeof what - at, "db +=");
        check(what, &db, TOL_F32);
    }
    drop(&dy);
    drop(&x);
    drop(&w);
    drop(&dx);
    drop(&dw);
    drop(&db);
}

START_TEST(test_linear_backward) {
    linear_backward_case(4096, 320, 1280, 7);
    linear_backward_case(77, 768, 3072, 7);
    linear_backward_case(5, 3, 7, 7);
    linear_backward_case(300, 40, 24, 1); /* dx only */
    linear_backward_case(300, 40, 24, 6); /* parameters only */
    linear_backward_case(3000, 8, 5, 4);  /* db over several row chunks */
}
END_TEST

/* ---- Convolution ---- */

typedef struct conv_shape {
    int64_t n, c_in, h, w, c_out, kh, kw;
    int stride, pad, bias;
} conv_shape;

static const conv_shape conv_shapes[] = {
    {2, 320, 32, 32, 320, 3, 3, 1, 1, 1}, /* SD 1.5 resnet conv */
    {2, 320, 32, 32, 640, 1, 1, 1, 0, 1}, /* 1x1 shortcut */
    {2, 128, 32, 32, 128, 3, 3, 2, 1, 1}, /* downsample */
    {1, 4, 64, 64, 320, 3, 3, 1, 1, 1},   /* conv_in */
    {1, 320, 32, 32, 4, 3, 3, 1, 1, 1},   /* conv_out */
    {3, 5, 9, 8, 6, 3, 3, 2, 0, 0},       /* stride 2, last row and column unread */
    {2, 7, 6, 5, 3, 1, 3, 1, 1, 1},       /* 1x3 kernel */
    {2, 3, 5, 5, 4, 1, 1, 2, 0, 1},       /* strided 1x1 */
    {2, 0, 4, 4, 3, 3, 3, 1, 1, 1},       /* no input channels: out = bias */
    {1, 3, 0, 0, 2, 1, 1, 1, 1, 1},       /* empty image, all padding */
};

static void conv_out_size(const conv_shape *s, int64_t *ho, int64_t *wo) {
    *ho = (s->h + 2 * s->pad - s->kh) / s->stride + 1;
    *wo = (s->w + 2 * s->pad - s->kw) / s->stride + 1;
}

static void conv_name(char *what, size_t size, const char *op, const conv_shape *s) {
    snprintf(what, size, "%s n%lld %lld->%lld %lldx%lld k%lldx%lld s%d p%d", op,
             (long long)s->n, (long long)s->c_in, (long long)s->c_out, (long long)s->h,
             (long long)s->w, (long long)s->kh, (long long)s->kw, s->stride, s->pad);
}

START_TEST(test_conv2d) {
    for (size_t i = 0; i < sizeof conv_shapes / sizeof conv_shapes[0]; i++) {
        const conv_shape *s = &conv_shapes[i];
        int64_t ho, wo;
        conv_out_size(s, &ho, &wo);
        pair x = both(s->n * s->c_in * s->h * s->w, -1.0f, 1.0f);
        pair w = both(s->c_out * s->c_in * s->kh * s->kw, -0.5f, 0.5f);
        pair bias = s->bias ? both(s->c_out, -1.0f, 1.0f) : none;
        pair out = junk(s->n * s->c_out * ho * wo);
        ON_BOTH(BE->ops->conv2d(BE, B(out), B(x), B(w), B(bias), s->n, s->c_in, s->h, s->w,
                                s->c_out, s->kh, s->kw, s->stride, s->pad));
        char what[96];
        conv_name(what, sizeof what, "conv2d", s);
        check(what, &out, TOL_F32);
        drop(&x);
        drop(&w);
        drop(&bias);
        drop(&out);
    }
}
END_TEST

/* want: 1 dx, 2 dw, 4 db (dw, db accumulated onto nonzero values). */
static void conv_backward_case(const conv_shape *s, int want) {
    int64_t ho, wo;
    conv_out_size(s, &ho, &wo);
    int64_t nx = s->n * s->c_in * s->h * s->w, nw = s->c_out * s->c_in * s->kh * s->kw;
    pair dy = both(s->n * s->c_out * ho * wo, -1.0f, 1.0f), x = both(nx, -1.0f, 1.0f);
    pair w = both(nw, -0.5f, 0.5f);
    pair dx = want & 1 ? junk(nx) : none;
    pair dw = want & 2 ? both(nw, -1.0f, 1.0f) : none;
    pair db = want & 4 ? both(s->c_out, -1.0f, 1.0f) : none;
    ON_BOTH(BE->ops->conv2d_backward(BE, B(dx), B(dw), B(db), B(dy), B(x), B(w), s->n, s->c_in,
                                     s->h, s->w, s->c_out, s->kh, s->kw, s->stride, s->pad));
    char what[128];
    conv_name(what, sizeof what, "conv2d_backward", s);
    size_t at = strlen(what);
    if (want & 1) {
        snprintf(what + at, sizeof what - at, ": dx");
        check(what, &dx, TOL_F32);
    }
    if (want & 2) {
        snprintf(what + at, sizeof what - at, ": dw +=");
        check(what, &dw, TOL_F32);
    }
    if (want & 4) {
        snprintf(what + at, sizeof what - at, ": db +=");
        check(what, &db, TOL_F32);
    }
    drop(&dy);
    drop(&x);
    drop(&w);
    drop(&dx);
    drop(&dw);
    drop(&db);
}

START_TEST(test_conv2d_backward) {
    /* c_in 0 left out: the cpu reference divides by zero there (conv_plan in
     * kernels/cpu/backward_dense.c: 0 channel chunks) */
    for (size_t i = 0; i < sizeof conv_shapes / sizeof conv_shapes[0]; i++)
        if (conv_shapes[i].c_in > 0) conv_backward_case(&conv_shapes[i], 7);
    conv_backward_case(&conv_shapes[2], 1); /* dx only */
    conv_backward_case(&conv_shapes[2], 6); /* parameters only */
    conv_backward_case(&conv_shapes[5], 2); /* dw only */
}
END_TEST

/* ---- Normalisation ---- */

typedef struct gn_shape {
    int64_t n, c, hw, groups;
    float eps;
} gn_shape;

static const gn_shape gn_shapes[] = {
    {2, 320, 1024, 32, 1e-5f},  /* SD 1.5 UNet at 32x32 */
    {1, 128, 4096, 32, 1e-6f},  /* VAE-like, 4 channels a group */
    {1, 64, 65536, 32, 1e-6f},  /* 131072 values a group */
    {2, 1280, 64, 32, 1e-5f},   /* 40 channels of 8x8 a group */
    {3, 6, 7, 3, 1e-5f},
    {2, 4, 1, 4, 1e-5f},        /* one value a group: xhat 0 */
};

static void gn_name(char *what, size_t size, const char *op, const gn_shape *s, int silu) {
    snprintf(what, size, "%s%s [%lld, %lld, %lld] g%lld", op, silu ? "+silu" : "",
             (long long)s->n, (long long)s->c, (long long)s->hw, (long long)s->groups);
}

/* The forward of shapes s [n]. */
static void group_norm_cases(const gn_shape *shapes, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const gn_shape *s = &shapes[i];
        for (int silu = 0; silu < 2; silu++) {
            int64_t total = s->n * s->c * s->hw;
            pair x = both(total, -2.0f, 3.0f), gamma = both(s->c, 0.5f, 1.5f);
            pair beta = both(s->c, -0.5f, 0.5f), out = junk(total);
            ON_BOTH(BE->ops->group_norm(BE, B(out), B(x), B(gamma), B(beta), s->n, s->c, s->hw,
                                        s->groups, s->eps, silu));
            char what[96];
            gn_name(what, sizeof what, "group_norm", s, silu);
            check(what, &out, TOL_F32);
            drop(&x);
            drop(&gamma);
            drop(&beta);
            drop(&out);
        }
    }
}

START_TEST(test_group_norm) { group_norm_cases(gn_shapes, sizeof gn_shapes / sizeof gn_shapes[0]); }
END_TEST

/* The VAE decoder at 512x512: 32 groups of a million values, which the
 * cuda backend spreads over many blocks a group (forward only; last in the
 * suite, so the other cases draw the inputs they always drew). */
START_TEST(test_group_norm_vae) {
    static const gn_shape big[] = {{1, 128, 512 * 512, 32, 1e-6f}};
    group_norm_cases(big, 1);
}
END_TEST

/* want: 1 dx, 2 dgamma, 4 dbeta (accumulated onto nonzero values). */
static void gn_backward_case(const gn_shape *s, int silu, int want) {
    int64_t total = s->n * s->c * s->hw;
    pair dy = both(total, -1.0f, 1.0f), x = both(total, -2.0f, 3.0f);
    pair gamma = both(s->c, 0.5f, 1.5f), beta = silu ? both(s->c, -0.5f, 0.5f) : none;
    pair dx = want & 1 ? junk(total) : none;
    pair dgamma = want & 2 ? both(s->c, -1.0f, 1.0f) : none;
    pair dbeta = want & 4 ? both(s->c, -1.0f, 1.0f) : none;
    ON_BOTH(BE->ops->group_norm_backward(BE, B(dx), B(dgamma), B(dbeta), B(dy), B(x), B(gamma),
                                         B(beta), s->n, s->c, s->hw, s->groups, s->eps, silu));
    char what[128];
    gn_name(what, sizeof what, "group_norm_backward", s, silu);
    size_t at = strlen(what);
    if (want & 1) {
        snprintf(what + at, sizeof what - at, ": dx");
        check(what, &dx, TOL_F32);
    }
    if (want & 2) {
        snprintf(what + at, sizeof what - at, ": dgamma +=");
        check(what, &dgamma, TOL_F32);
    }
    if (want & 4) {
        snprintf(what + at, sizeof what - at, ": dbeta +=");
        check(what, &dbeta, TOL_F32);
    }
    drop(&dy);
    drop(&x);
    drop(&gamma);
    drop(&beta);
    drop(&dx);
    drop(&dgamma);
    drop(&dbeta);
}

START_TEST(test_group_norm_backward) {
    /* one value a group: dx is rstd (g - g) (0 up to how each compiler contracts), left out */
    for (size_t i = 0; i < sizeof gn_shapes / sizeof gn_shapes[0]; i++) {
        const gn_shape *s = &gn_shapes[i];
        for (int silu = 0; silu < 2; silu++)
            gn_backward_case(s, silu, s->c / s->groups * s->hw == 1 ? 6 : 7);
    }
    gn_backward_case(&gn_shapes[0], 1, 1); /* dx only */
    gn_backward_case(&gn_shapes[0], 1, 6); /* parameters only */
    gn_backward_case(&gn_shapes[4], 0, 2); /* dgamma only */
}
END_TEST

typedef struct ln_shape {
    int64_t rows, cols;
    float eps;
} ln_shape;

static const ln_shape ln_shapes[] = {
    {4096, 320, 1e-5f}, /* SD 1.5 transformer at 64x64 */
    {77, 768, 1e-5f},   /* CLIP */
    {2000, 1280, 1e-5f},
    {5, 1000, 1e-6f},
    {300, 1, 1e-5f}, /* one column: xhat 0 */
};

START_TEST(test_layer_norm) {
    for (size_t i = 0; i < sizeof ln_shapes / sizeof ln_shapes[0]; i++) {
        const ln_shape *s = &ln_shapes[i];
        int64_t total = s->rows * s->cols;
        pair x = both(total, -2.0f, 3.0f), gamma = both(s->cols, 0.5f, 1.5f);
        pair beta = both(s->cols, -0.5f, 0.5f), out = junk(total);
        ON_BOTH(BE->ops->layer_norm(BE, B(out), B(x), B(gamma), B(beta), s->rows, s->cols,
                                    s->eps));
        char what[96];
        snprintf(what, sizeof what, "layer_norm %lld x %lld", (long long)s->rows,
                 (long long)s->cols);
        check(what, &out, TOL_F32);
        drop(&x);
        drop(&gamma);
        drop(&beta);
        drop(&out);
    }
}
END_TEST

/* want: 1 dx, 2 dgamma, 4 dbeta (accumulated onto nonzero values). */
static void ln_backward_case(const ln_shape *s, int want) {
    int64_t total = s->rows * s->cols;
    pair dy = both(total, -1.0f, 1.0f), x = both(total, -2.0f, 3.0f);
    pair gamma = both(s->cols, 0.5f, 1.5f);
    pair dx = want & 1 ? junk(total) : none;
    pair dgamma = want & 2 ? both(s->cols, -1.0f, 1.0f) : none;
    pair dbeta = want & 4 ? both(s->cols, -1.0f, 1.0f) : none;
    ON_BOTH(BE->ops->layer_norm_backward(BE, B(dx), B(dgamma), B(dbeta), B(dy), B(x), B(gamma),
                                         s->rows, s->cols, s->eps));
    char what[96];
    snprintf(what, sizeof what, "layer_norm_backward %lld x %lld", (long long)s->rows,
             (long long)s->cols);
    size_t at = strlen(what);
    if (want & 1) {
        snprintf(what + at, sizeof what - at, ": dx");
        check(what, &dx, TOL_F32);
    }
    if (want & 2) {
        snprintf(what + at, sizeof what - at, ": dgamma +=");
        check(what, &dgamma, TOL_F32);
    }
    if (want & 4) {
        snprintf(what + at, sizeof what - at, ": dbeta +=");
        check(what, &dbeta, TOL_F32);
    }
    drop(&dy);
    drop(&x);
    drop(&gamma);
    drop(&dx);
    drop(&dgamma);
    drop(&dbeta);
}

START_TEST(test_layer_norm_backward) {
    /* one column: dx is rstd (g - g) (0 up to how each compiler contracts), left out */
    for (size_t i = 0; i < sizeof ln_shapes / sizeof ln_shapes[0]; i++)
        ln_backward_case(&ln_shapes[i], ln_shapes[i].cols == 1 ? 6 : 7);
    ln_backward_case(&ln_shapes[1], 1); /* dx only */
    ln_backward_case(&ln_shapes[0], 6); /* parameters only */
    ln_backward_case(&ln_shapes[3], 4); /* dbeta only */
}
END_TEST

/* ---- Argument errors: the cpu's status ---- */

START_TEST(test_errors) {
    const int64_t big = INT64_MAX / 2;
    pair f = both(64, -1.0f, 1.0f), o = both(64, -1.0f, 1.0f);
#define F B(f) /* an input */
#define O B(o) /* an output */
    /* gemm */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, F, F, 0, 0, -1, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, F, F, 0, 0, 2, 2, -2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, F, F, 0, 0, 2, 2, 2, 1, 0, -1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, F, F, 0, 0, 2, 2, 2, 1, 0, 2, -4, 4, 4));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, NULL, F, F, 0, 0, 2, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, NULL, F, 0, 0, 2, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->gemm(BE, O, F, NULL, 0, 0, 2, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_ERR_OVERFLOW, BE->ops->gemm(BE, O, F, F, 0, 0, 2, 2, 2, 1, 0, 4, big, 0, 0));
    EXPECT_BOTH(LH_ERR_UNSUPPORTED,
                BE->ops->gemm(BE, O, F, F, 0, 0, (int64_t)1 << 32, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_OK, BE->ops->gemm(BE, NULL, NULL, NULL, 0, 0, 0, 2, 2, 1, 0, 1, 0, 0, 0));
    EXPECT_BOTH(LH_OK, BE->ops->gemm(BE, O, NULL, NULL, 0, 0, 2, 2, 0, 1, 0, 1, 0, 0, 0));
    /* linear */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear(BE, O, F, F, NULL, -1, 2, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear(BE, NULL, F, F, NULL, 2, 2, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear(BE, O, NULL, F, NULL, 2, 2, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear(BE, O, F, NULL, F, 2, 2, 2));
    EXPECT_BOTH(LH_OK, BE->ops->linear(BE, NULL, NULL, NULL, NULL, 0, 2, 2));
    /* linear_backward */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear_backward(BE, O, NULL, NULL, F, F, F, 2, -2, 2));
    EXPECT_BOTH(LH_ERR_OVERFLOW, BE->ops->linear_backward(BE, O, NULL, NULL, F, F, F, big, big, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear_backward(BE, O, NULL, NULL, NULL, F, F, 2, 2, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear_backward(BE, O, NULL, NULL, F, F, NULL, 2, 2, 2));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->linear_backward(BE, NULL, O, NULL, F, NULL, F, 2, 2, 2));
    EXPECT_BOTH(LH_OK, BE->ops->linear_backward(BE, NULL, NULL, NULL, F, NULL, NULL, 2, 2, 2));
    EXPECT_BOTH(LH_OK, BE->ops->linear_backward(BE, O, O, O, NULL, NULL, NULL, 0, 2, 2));
    /* conv2d */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, F, F, NULL, 1, 1, 4, 4, 1, 0, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, F, F, NULL, 1, 1, 4, 4, 1, 1, 1, 0, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, F, F, NULL, 1, 1, 4, 4, 1, 1, 1, 1, -1));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, F, F, NULL, -1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_SHAPE, BE->ops->conv2d(BE, O, F, F, NULL, 1, 1, 2, 2, 1, 3, 3, 1, 0));
    EXPECT_BOTH(LH_ERR_OVERFLOW, BE->ops->conv2d(BE, O, F, F, NULL, big, 1, 4, 4, big, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, NULL, F, F, NULL, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, NULL, F, NULL, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->conv2d(BE, O, F, NULL, NULL, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_OK, BE->ops->conv2d(BE, NULL, NULL, NULL, NULL, 0, 1, 4, 4, 1, 1, 1, 1, 0));
    /* conv2d_backward */
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->conv2d_backward(BE, O, NULL, NULL, F, F, F, 1, 1, 4, 4, 1, 1, 1, 0, 0));
    EXPECT_BOTH(LH_ERR_SHAPE,
                BE->ops->conv2d_backward(BE, O, NULL, NULL, F, F, F, 1, 1, 2, 2, 1, 3, 3, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->conv2d_backward(BE, O, NULL, NULL, NULL, F, F, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->conv2d_backward(BE, O, NULL, NULL, F, F, NULL, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->conv2d_backward(BE, NULL, O, NULL, F, NULL, F, 1, 1, 4, 4, 1, 1, 1, 1, 0));
    EXPECT_BOTH(LH_OK,
                BE->ops->conv2d_backward(BE, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1, 4, 4, 1, 1,
                                         1, 1, 0));
    /* group_norm */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, F, 1, 4, 4, 0, 1e-5f, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, F, 1, 4, 4, 3, 1e-5f, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, F, 1, 4, -4, 2, 1e-5f, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, F, 1, 4, 4, 2, -1.0f, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, F, 1, 4, 4, 2, NAN, 0));
    EXPECT_BOTH(LH_ERR_OVERFLOW, BE->ops->group_norm(BE, O, F, F, F, big, 4, big, 2, 1e-5f, 0));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, O, F, F, NULL, 1, 4, 4, 2, 1e-5f, 1));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->group_norm(BE, NULL, F, F, F, 1, 4, 4, 2, 1e-5f, 1));
    EXPECT_BOTH(LH_OK, BE->ops->group_norm(BE, NULL, NULL, NULL, NULL, 0, 4, 4, 2, 1e-5f, 1));
    /* group_norm_backward */
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->group_norm_backward(BE, O, NULL, NULL, F, F, F, NULL, 1, 4, 4, 2, 1e-5f,
                                             1));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->group_norm_backward(BE, O, NULL, NULL, NULL, F, F, F, 1, 4, 4, 2, 1e-5f,
                                             0));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->group_norm_backward(BE, O, NULL, NULL, F, F, F, F, 1, 4, 4, 3, 1e-5f, 0));
    EXPECT_BOTH(LH_OK,
                BE->ops->group_norm_backward(BE, O, NULL, NULL, F, F, F, NULL, 1, 4, 4, 2, 1e-5f,
                                             0));
    EXPECT_BOTH(LH_OK,
                BE->ops->group_norm_backward(BE, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 4,
                                             2, 1e-5f, 1));
    /* layer_norm */
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->layer_norm(BE, O, F, F, F, -1, 4, 1e-5f));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->layer_norm(BE, O, F, F, NULL, 2, 4, 1e-5f));
    EXPECT_BOTH(LH_ERR_INVALID, BE->ops->layer_norm(BE, O, F, F, F, 2, 4, -1e-5f));
    EXPECT_BOTH(LH_ERR_OVERFLOW, BE->ops->layer_norm(BE, O, F, F, F, big, big, 1e-5f));
    EXPECT_BOTH(LH_OK, BE->ops->layer_norm(BE, NULL, NULL, NULL, NULL, 0, 4, 1e-5f));
    /* layer_norm_backward */
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->layer_norm_backward(BE, O, NULL, NULL, F, F, NULL, 2, 4, 1e-5f));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->layer_norm_backward(BE, O, NULL, NULL, NULL, F, F, 2, 4, 1e-5f));
    EXPECT_BOTH(LH_ERR_INVALID,
                BE->ops->layer_norm_backward(BE, O, NULL, NULL, F, F, F, 2, -4, 1e-5f));
    EXPECT_BOTH(LH_OK,
                BE->ops->layer_norm_backward(BE, NULL, NULL, NULL, NULL, NULL, NULL, 2, 4, 1e-5f));
    /* nothing above left the device in an error state */
    ck_assert_int_eq(g_gpu->ops->sync(g_gpu), LH_OK);
#undef F
#undef O
    drop(&f);
    drop(&o);
}
END_TEST

/* ---- TF32 ---- */

/* x [n] cut to TF32's 10 mantissa bits. Tensor cores read only those bits
 * of each fp32 input (truncation: a bias near -7e-4 relative on every sum,
 * past TOL_TF32), so the suite feeds values they read exactly; what is left
 * is the layout and the fp32 accumulation order. */
static void tf32_exact(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        u &= ~(uint32_t)0x1fff;
        memcpy(&x[i], &u, sizeof u);
    }
}

/* linear and conv2d on a second cuda backend made with LORAHOST_CUDA_TF32=1. */
START_TEST(test_tf32) {
    if (getenv("LH_PARITY_DEVICE")) { /* checking the suite on the cpu: no TF32 there */
        printf("test_tf32: skipped under LH_PARITY_DEVICE\n");
        return;
    }
    char msg[512] = "";
    lh_backend *tf = NULL;
    setenv("LORAHOST_CUDA_TF32", "1", 1);
    lh_status st = lh_backend_create(&tf, "cuda", 0, msg, sizeof msg);
    unsetenv("LORAHOST_CUDA_TF32");
    ck_assert_msg(st == LH_OK, "cuda backend with TF32: %s", msg);
    /* linear 1024 x 320 -> 1280; conv 3x3 320 -> 320 at 16x16, batch 2 */
    enum { LIN_X, LIN_W, LIN_B, LIN_OUT, CONV_X, CONV_W, CONV_OUT, BUFS };
    const int64_t size[BUFS] = {1024 * 320, 1280 * 320, 1280, 1024 * 1280,
                                2 * 320 * 16 * 16, 320 * 320 * 9, 2 * 320 * 16 * 16};
    float *cpu[BUFS], *gpu[BUFS];
    for (int i = 0; i < BUFS; i++) {
        int out = i == LIN_OUT || i == CONV_OUT;
        float *h = out ? NULL : rand_host(size[i], 500 + (uint64_t)i, -1.0f, 1.0f);
        if (h) tf32_exact(h, size[i]);
        cpu[i] = on(g_cpu, h, size[i]);
        gpu[i] = on(tf, h, size[i]);
        free(h);
    }
    lh_backend *bes[2] = {g_cpu, tf};
    for (int side = 0; side < 2; side++) {
        lh_backend *be = bes[side];
        float **d = side ? gpu : cpu;
        ck_assert_int_eq(be->ops->linear(be, d[LIN_OUT], d[LIN_X], d[LIN_W], d[LIN_B], 1024, 320,
                                         1280),
                         LH_OK);
        ck_assert_int_eq(be->ops->conv2d(be, d[CONV_OUT], d[CONV_X], d[CONV_W], d[LIN_B], 2, 320,
                                         16, 16, 320, 3, 3, 1, 1),
                         LH_OK);
    }
    const char *what[2] = {"linear 1024 x 320 -> 1280 (tf32)",
                           "conv2d n2 320->320 16x16 k3x3 (tf32)"};
    const int outs[2] = {LIN_OUT, CONV_OUT};
    for (int i = 0; i < 2; i++) {
        float *hc = back(g_cpu, cpu[outs[i]], size[outs[i]]);
        float *ht = back(tf, gpu[outs[i]], size[outs[i]]);
        expect_close(what[i], ht, hc, size[outs[i]], TOL_TF32);
        free(hc);
        free(ht);
    }
    for (int i = 0; i < BUFS; i++) {
        g_cpu->ops->free(g_cpu, cpu[i]);
        tf->ops->free(tf, gpu[i]);
    }
    lh_backend_destroy(tf);
}
END_TEST

/* ---- F16 activations ---- */

/* The cuda output holds values exactly representable in half (the cpu
 * backend's rounding leaves them unchanged) and is within TOL_HALF of the
 * cpu's. */
static void check_half(const char *what, const pair *p) {
    ck_assert_int_eq(g_gpu->ops->sync(g_gpu), LH_OK);
    float *g = back(g_gpu, p->gpu, p->n);
    float *r = on(g_cpu, g, p->n);
    ck_assert_int_eq(g_cpu->ops->round(g_cpu, r, p->n, LH_DTYPE_F16), LH_OK);
    float *rh = back(g_cpu, r, p->n);
    for (int64_t i = 0; i < p->n; i++)
        ck_assert_msg(memcmp(&rh[i], &g[i], sizeof(float)) == 0,
                      "%s[%lld] = %.9g is not a half value (%.9g)", what, (long long)i,
                      (double)g[i], (double)rh[i]);
    g_cpu->ops->free(g_cpu, r);
    free(rh);
    free(g);
    expect_close_dev(what, p->gpu, p->cpu, p->n, TOL_HALF);
}

START_TEST(test_f16) {
    ck_assert_int_eq(g_cpu->ops->set_precision(g_cpu, LH_DTYPE_F16), LH_OK);
    ck_assert_int_eq(g_gpu->ops->set_precision(g_gpu, LH_DTYPE_F16), LH_OK);
    {
        /* inputs already in F16, as every op's are under F16 activations
         * (the U-Net rounds its own inputs): a device's half GEMMs read
         * exactly what the cpu's float32 ones do */
        pair x = both(77 * 768, -1.0f, 1.0f), w = both(768 * 768, -0.1f, 0.1f);
        pair bias = both(768, -1.0f, 1.0f), out = junk(77 * 768), dy = both(77 * 768, -1.0f, 1.0f);
        ON_BOTH(BE->ops->round(BE, B(x), 77 * 768, LH_DTYPE_F16));
        ON_BOTH(BE->ops->round(BE, B(w), 768 * 768, LH_DTYPE_F16));
        ON_BOTH(BE->ops->round(BE, B(dy), 77 * 768, LH_DTYPE_F16));
        ON_BOTH(BE->ops->linear(BE, B(out), B(x), B(w), B(bias), 77, 768, 768));
        check_half("f16 linear 77 x 768 -> 768", &out);
        pair dx = junk(77 * 768), dw = both(768 * 768, -1.0f, 1.0f);
        ON_BOTH(BE->ops->linear_backward(BE, B(dx), B(dw), NULL, B(dy), B(x), B(w), 77, 768,
                                         768));
        check_half("f16 linear_backward: dx", &dx);
        check("f16 linear_backward: dw += (float32)", &dw, TOL_F32);
        pair c = both(3 * 37 * 53, -1.0f, 1.0f);
        ON_BOTH(BE->ops->gemm(BE, B(c), B(x), B(w), 0, 1, 37, 53, 29, 1.0f, 1.0f, 3, 37 * 29,
                              53 * 29, 37 * 53));
        check_half("f16 gemm batch 3", &c);
        drop(&x);
        drop(&w);
        drop(&bias);
        drop(&out);
        drop(&dx);
        drop(&dw);
        drop(&dy);
        drop(&c);
    }
    {
        pair x = both(2 * 64 * 16 * 16, -1.0f, 1.0f), w = both(64 * 64 * 9, -0.2f, 0.2f);
        pair bias = both(64, -1.0f, 1.0f), out = junk(2 * 64 * 16 * 16);
        ON_BOTH(BE->ops->round(BE, B(x), 2 * 64 * 16 * 16, LH_DTYPE_F16));
        ON_BOTH(BE->ops->round(BE, B(w), 64 * 64 * 9, LH_DTYPE_F16));
        ON_BOTH(BE->ops->conv2d(BE, B(out), B(x), B(w), B(bias), 2, 64, 16, 16, 64, 3, 3, 1, 1));
        check_half("f16 conv2d n2 64->64 16x16 k3x3", &out);
        pair dx = junk(2 * 64 * 16 * 16);
        ON_BOTH(BE->ops->conv2d_backward(BE, B(dx), NULL, NULL, B(out), B(x), B(w), 2, 64, 16, 16,
                                         64, 3, 3, 1, 1));
        check_half("f16 conv2d_backward: dx", &dx);
        drop(&x);
        drop(&w);
        drop(&bias);
        drop(&out);
        drop(&dx);
    }
    {
        pair x = both(2 * 320 * 256, -2.0f, 3.0f), gamma = both(320, 0.5f, 1.5f);
        pair beta = both(320, -0.5f, 0.5f), out = junk(2 * 320 * 256);
        ON_BOTH(BE->ops->group_norm(BE, B(out), B(x), B(gamma), B(beta), 2, 320, 256, 32, 1e-5f,
                                    1));
        check_half("f16 group_norm+silu [2, 320, 256]", &out);
        pair dx = junk(2 * 320 * 256);
        ON_BOTH(BE->ops->group_norm_backward(BE, B(dx), NULL, NULL, B(out), B(x), B(gamma),
                                             B(beta), 2, 320, 256, 32, 1e-5f, 1));
        check_half("f16 group_norm_backward+silu: dx", &dx);
        pair lo = junk(77 * 768);
        ON_BOTH(BE->ops->layer_norm(BE, B(lo), B(x), B(gamma), B(beta), 77, 320, 1e-5f));
        lo.n = 77 * 320;
        check_half("f16 layer_norm 77 x 320", &lo);
        drop(&x);
        drop(&gamma);
        drop(&beta);
        drop(&out);
        drop(&dx);
        drop(&lo);
    }
    setup_f32();
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_parity_dense");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup_f32, NULL);
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_linear_backward);
    tcase_add_test(tc, test_conv2d);
    tcase_add_test(tc, test_conv2d_backward);
    tcase_add_test(tc, test_group_norm);
    tcase_add_test(tc, test_group_norm_backward);
    tcase_add_test(tc, test_layer_norm);
    tcase_add_test(tc, test_layer_norm_backward);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_tf32);
    tcase_add_test(tc, test_f16);
    tcase_add_test(tc, test_group_norm_vae);
    suite_add_tcase(s, tc);
    return parity_run(s);
}
