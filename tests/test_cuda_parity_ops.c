/* CUDA parity: attention (forward and backward), the elementwise ops and
 * activation backwards, the layout ops, the timestep embedding and the
 * training updates (scale, sum_squares, mse_backward, adamw, copy) of the
 * cuda backend against the cpu backend, on random inputs at Stable
 * Diffusion 1.5 and CLIP shapes and at odd sizes; argument errors give the
 * cpu's status codes; F16/BF16 activations agree at TOL_HALF. Skips (77)
 * without the module or a device. Run: ctest -R cuda_parity_ops. */
#include "cuda_parity.h"
#include "optim.h"

/* ---- Helpers ---- */

/* A pair of buffers holding the same values: g on the cuda backend, c on the cpu. */
typedef struct pair {
    float *g, *c;
    int64_t n;
} pair;

static pair pair_of(const float *host, int64_t n) {
    pair p = {on(g_gpu, host, n), on(g_cpu, host, n), n};
    return p;
}

static pair pair_rand(int64_t n, uint64_t seed, float lo, float hi) {
    float *h = rand_host(n, seed, lo, hi);
    pair p = pair_of(h, n);
    free(h);
    return p;
}

static void pair_free(pair *p) {
    g_gpu->ops->free(g_gpu, p->g);
    g_cpu->ops->free(g_cpu, p->c);
    p->g = p->c = NULL;
}

static void expect_pair(const char *what, pair p, double tol) {
    expect_close_dev(what, p.g, p.c, p.n, tol);
}

/* The largest magnitude of the cpu side of p. */
static double pair_scale(pair p) {
    float *h = back(g_cpu, p.c, p.n);
    double m = 0;
    for (int64_t i = 0; i < p.n; i++)
        if (fabs((double)h[i]) > m) m = fabs((double)h[i]);
    free(h);
    return m;
}

/* dk against the larger of its own scale and dv's: over one key the
 * softmax has no gradient and dk cancels to zero (the cpu's exactly, a
 * half-type product's to rounding noise, 6e-8 under the emulator) */
static void expect_dk(const char *what, pair dk, pair dv, double tol) {
    float *g = back(g_gpu, dk.g, dk.n), *c = back(g_cpu, dk.c, dk.n);
    double dvs = pair_scale(dv);
    expect_close_floor(what, g, c, dk.n, tol, dvs > 1e-6 ? dvs : 1e-6);
    free(g);
    free(c);
}

/* ---- Attention ---- */

typedef struct att_shape {
    int64_t b, heads, nq, nk, d;
    int causal;
} att_shape;

/* The half type q, k and v are rounded to first (F32: none): under F16/BF16
 * activations every op's output is, so the inputs an attention sees are. */
static lh_dtype g_att_inputs = LH_DTYPE_F32;

/* Forward with and without lse, then the backward: with the forward's lse,
 * with NULL lse, and with some outputs NULL (those left untouched). Both
 * backwards read the cpu's out and lse, so only the op itself differs. */
static void att_case(att_shape s, int backward, double tol) {
    /* under compute-sanitizer (bench/gpu/run.sh sets LH_PARITY_SMALL=1) the
     * SD 1.5 sizes would take many minutes: the odd shapes cover every tail */
    const char *small = getenv("LH_PARITY_SMALL");
    if (small && small[0] == '1' && s.nq * s.nk > 160 * 160) {
        printf("attention b%lld h%lld nq%lld nk%lld d%lld: skipped (LH_PARITY_SMALL)\n",
               (long long)s.b, (long long)s.heads, (long long)s.nq, (long long)s.nk,
               (long long)s.d);
        return;
    }
    const int64_t qn = s.b * s.nq * s.heads * s.d, kn = s.b * s.nk * s.heads * s.d;
    const int64_t ln = s.b * s.heads * s.nq;
    const float scale = 1.0f / sqrtf((float)s.d);
    const lh_backend_ops *G = g_gpu->ops, *C = g_cpu->ops;
    char what[160];
    uint64_t seed = (uint64_t)(s.nq * 131 + s.nk * 7 + s.d + s.causal);
    pair q = pair_rand(qn, seed + 1, -1.0f, 1.0f), k = pair_rand(kn, seed + 2, -1.0f, 1.0f);
    pair v = pair_rand(kn, seed + 3, -1.0f, 1.0f);
    pair out = pair_of(NULL, qn), lse = pair_of(NULL, ln);
    if (g_att_inputs != LH_DTYPE_F32) {
        pair *in[3] = {&q, &k, &v};
        for (int i = 0; i < 3; i++) {
            int64_t n = i ? kn : qn;
            ck_assert_int_eq(G->round(g_gpu, in[i]->g, n, g_att_inputs), LH_OK);
            ck_assert_int_eq(C->round(g_cpu, in[i]->c, n, g_att_inputs), LH_OK);
        }
    }
#define SHAPE "b%lld h%lld nq%lld nk%lld d%lld%s"
#define SHAPE_ARGS (long long)s.b, (long long)s.heads, (long long)s.nq, (long long)s.nk, \
                   (long long)s.d, s.causal ? " causal" : ""

    /* without lse */
    ck_assert_int_eq(G->attention(g_gpu, out.g, NULL, q.g, k.g, v.g, s.b, s.heads, s.nq, s.nk,
                                  s.d, scale, s.causal),
                     LH_OK);
    ck_assert_int_eq(C->attention(g_cpu, out.c, NULL, q.c, k.c, v.c, s.b, s.heads, s.nq, s.nk,
                                  s.d, scale, s.causal),
                     LH_OK);
    snprintf(what, sizeof what, "attention " SHAPE, SHAPE_ARGS);
    expect_pair(what, out, tol);
    /* with lse */
    ck_assert_int_eq(G->attention(g_gpu, out.g, lse.g, q.g, k.g, v.g, s.b, s.heads, s.nq, s.nk,
                                  s.d, scale, s.causal),
                     LH_OK);
    ck_assert_int_eq(C->attention(g_cpu, out.c, lse.c, q.c, k.c, v.c, s.b, s.heads, s.nq, s.nk,
                                  s.d, scale, s.causal),
                     LH_OK);
    snprintf(what, sizeof what, "attention+lse out " SHAPE, SHAPE_ARGS);
    expect_pair(what, out, tol);
    snprintf(what, sizeof what, "attention lse " SHAPE, SHAPE_ARGS);
    expect_pair(what, lse, tol);

    if (backward) {
        /* the cpu's forward results feed both backwards */
        float *o_h = back(g_cpu, out.c, qn), *l_h = back(g_cpu, lse.c, ln);
        ck_assert_int_eq(G->upload(g_gpu, out.g, o_h, sizeof(float) * (size_t)qn), LH_OK);
        ck_assert_int_eq(G->upload(g_gpu, lse.g, l_h, sizeof(float) * (size_t)ln), LH_OK);
        free(o_h);
        free(l_h);
        pair dout = pair_rand(qn, seed + 4, -1.0f, 1.0f);
        if (g_att_inputs != LH_DTYPE_F32) { /* an output gradient is rounded as any input */
            ck_assert_int_eq(G->round(g_gpu, dout.g, qn, g_att_inputs), LH_OK);
            ck_assert_int_eq(C->round(g_cpu, dout.c, qn, g_att_inputs), LH_OK);
        }
        pair dq = pair_rand(qn, 91, -5, 5), dk = pair_rand(kn, 92, -5, 5);
        pair dv = pair_rand(kn, 93, -5, 5); /* garbage: the op writes them */
        for (int with_lse = 1; with_lse >= 0; with_lse--) {
            ck_assert_int_eq(G->attention_backward(g_gpu, dq.g, dk.g, dv.g, dout.g, out.g,
                                                   with_lse ? lse.g : NULL, q.g, k.g, v.g, s.b,
                                                   s.heads, s.nq, s.nk, s.d, scale, s.causal),
                             LH_OK);
            ck_assert_int_eq(C->attention_backward(g_cpu, dq.c, dk.c, dv.c, dout.c, out.c,
                                                   with_lse ? lse.c : NULL, q.c, k.c, v.c, s.b,
                                                   s.heads, s.nq, s.nk, s.d, scale, s.causal),
                             LH_OK);
            const char *l = with_lse ? "lse" : "NULL lse";
            snprintf(what, sizeof what, "attention_backward dq (%s) " SHAPE, l, SHAPE_ARGS);
            expect_pair(what, dq, tol);
            snprintf(what, sizeof what, "attention_backward dk (%s) " SHAPE, l, SHAPE_ARGS);
            expect_dk(what, dk, dv, tol);
            snprintf(what, sizeof what, "attention_backward dv (%s) " SHAPE, l, SHAPE_ARGS);
            expect_pair(what, dv, tol);
        }
        /* NULL outputs: a sentinel buffer stays as it was */
        float *sent = rand_host(qn > kn ? qn : kn, 94, 7.0f, 8.0f);
        ck_assert_int_eq(G->upload(g_gpu, dk.g, sent, sizeof(float) * (size_t)kn), LH_OK);
        ck_assert_int_eq(G->upload(g_gpu, dq.g, sent, sizeof(float) * (size_t)qn), LH_OK);
        ck_assert_int_eq(G->attention_backward(g_gpu, NULL, NULL, dv.g, dout.g, out.g, lse.g, q.g,
                                               k.g, v.g, s.b, s.heads, s.nq, s.nk, s.d, scale,
                                               s.causal),
                         LH_OK);
        snprintf(what, sizeof what, "attention_backward dv only " SHAPE, SHAPE_ARGS);
        expect_pair(what, dv, tol);
        float *dk_h = back(g_gpu, dk.g, kn), *dq_h = back(g_gpu, dq.g, qn);
        ck_assert_mem_eq(dk_h, sent, sizeof(float) * (size_t)kn);
        ck_assert_mem_eq(dq_h, sent, sizeof(float) * (size_t)qn);
        free(dk_h);
        free(dq_h);
        ck_assert_int_eq(G->attention_backward(g_gpu, dq.g, NULL, NULL, dout.g, out.g, NULL, q.g,
                                               k.g, v.g, s.b, s.heads, s.nq, s.nk, s.d, scale,
                                               s.causal),
                         LH_OK);
        snprintf(what, sizeof what, "attention_backward dq only " SHAPE, SHAPE_ARGS);
        expect_pair(what, dq, tol);
        ck_assert_int_eq(G->attention_backward(g_gpu, NULL, dk.g, NULL, dout.g, out.g, lse.g, q.g,
                                               k.g, v.g, s.b, s.heads, s.nq, s.nk, s.d, scale,
                                               s.causal),
                         LH_OK);
        snprintf(what, sizeof what, "attention_backward dk only " SHAPE, SHAPE_ARGS);
        expect_dk(what, dk, dv, tol);
        free(sent);
        pair_free(&dout);
        pair_free(&dq);
        pair_free(&dk);
        pair_free(&dv);
    }
#undef SHAPE
#undef SHAPE_ARGS
    pair_free(&q);
    pair_free(&k);
    pair_free(&v);
    pair_free(&out);
    pair_free(&lse);
}

/* SD 1.5 at 64x64 latents: self attention over 4096 tokens, cross attention
 * over 77 text tokens, per UNet level (d 40 / 80 / 160 at 4096 / 1024 / 256
 * tokens; 8 heads). */
START_TEST(test_attention_sd15) {
    att_case((att_shape){2, 8, 4096, 4096, 40, 0}, 1, TOL_F32);
    att_case((att_shape){2, 8, 4096, 77, 40, 0}, 1, TOL_F32);
    att_case((att_shape){2, 8, 1024, 1024, 80, 0}, 1, TOL_F32);
    att_case((att_shape){2, 8, 1024, 77, 80, 0}, 1, TOL_F32);
    att_case((att_shape){2, 8, 256, 256, 160, 0}, 1, TOL_F32);
    att_case((att_shape){2, 8, 256, 77, 160, 0}, 1, TOL_F32);
}
END_TEST

/* The SD VAE's mid-block attention: one head of 512 over the latent's
 * pixels (past the flash kernels' head dims: the dense products serve it),
 * at 32x32 and, for a 512x512 image, 64x64 latents; forward only. Then one
 * head whose scores (8200^2 floats) pass the dense path's 256 MiB chunk,
 * which LORAHOST_CUDA_ATTENTION=gemm takes a chunk of query rows at a time. */
START_TEST(test_attention_vae) {
    att_case((att_shape){1, 1, 1024, 1024, 512, 0}, 0, TOL_F32);
    att_case((att_shape){1, 1, 4096, 4096, 512, 0}, 0, TOL_F32);
    att_case((att_shape){1, 1, 8200, 8200, 8, 0}, 0, TOL_F32);
}
END_TEST

/* CLIP's text encoder: causal, 12 heads of 64, 77 tokens. */
START_TEST(test_attention_clip) {
    att_case((att_shape){2, 12, 77, 77, 64, 1}, 1, TOL_F32);
    att_case((att_shape){1, 12, 77, 77, 64, 0}, 1, TOL_F32);
}
END_TEST

/* Sizes off every tile: one query, three keys, d not a multiple of 4 or of
 * 32, nq > nk with the causal mask, the largest head dim. */
START_TEST(test_attention_odd) {
    static const att_shape shapes[] = {
        {1, 1, 1, 3, 8, 0},    {1, 1, 1, 3, 8, 1},     {2, 3, 5, 3, 3, 1},
        {2, 3, 33, 65, 17, 1}, {1, 2, 65, 33, 33, 0},  {1, 2, 65, 33, 33, 1},
        {3, 1, 17, 1, 64, 0},  {1, 4, 100, 129, 96, 1}, {1, 2, 40, 50, 256, 0},
        {1, 1, 47, 47, 1, 1},  {2, 2, 31, 97, 160, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) att_case(shapes[i], 1, TOL_F32);
}
END_TEST

/* nq 0 with keys: dk and dv are zeros (the cpu's), dq untouched. */
START_TEST(test_attention_no_queries) {
    const int64_t kn = 2 * 3 * 8;
    pair k = pair_rand(kn, 5, -1, 1), v = pair_rand(kn, 6, -1, 1), x = pair_rand(8, 7, -1, 1);
    pair dk = pair_rand(kn, 8, -1, 1), dv = pair_rand(kn, 9, -1, 1);
    ck_assert_int_eq(g_gpu->ops->attention_backward(g_gpu, NULL, dk.g, dv.g, x.g, x.g, NULL, x.g,
                                                    k.g, v.g, 2, 1, 0, 3, 8, 0.5f, 0),
                     LH_OK);
    ck_assert_int_eq(g_cpu->ops->attention_backward(g_cpu, NULL, dk.c, dv.c, x.c, x.c, NULL, x.c,
                                                    k.c, v.c, 2, 1, 0, 3, 8, 0.5f, 0),
                     LH_OK);
    expect_pair("attention_backward nq 0 dk", dk, 0);
    expect_pair("attention_backward nq 0 dv", dv, 0);
    pair_free(&k);
    pair_free(&v);
    pair_free(&x);
    pair_free(&dk);
    pair_free(&dv);
}
END_TEST

/* ---- Elementwise ---- */

static const int64_t ew_sizes[] = {1, 7, 1000, (1 << 20) + 3};

typedef lh_status (*act_op)(lh_backend *, float *, const float *, int64_t);
typedef lh_status (*act_bw_op)(lh_backend *, float *, const float *, const float *, int64_t);

static void act_case(const char *name, size_t off, size_t off_bw) {
    for (size_t t = 0; t < sizeof ew_sizes / sizeof ew_sizes[0]; t++) {
        int64_t n = ew_sizes[t];
        char what[96];
        pair x = pair_rand(n, 11 + t, -8.0f, 8.0f), out = pair_of(NULL, n);
        pair dy = pair_rand(n, 21 + t, -2.0f, 2.0f), dx = pair_of(NULL, n);
        act_op fg = *(const act_op *)((const char *)g_gpu->ops + off);
        act_op fc = *(const act_op *)((const char *)g_cpu->ops + off);
        ck_assert_int_eq(fg(g_gpu, out.g, x.g, n), LH_OK);
        ck_assert_int_eq(fc(g_cpu, out.c, x.c, n), LH_OK);
        snprintf(what, sizeof what, "%s n=%lld", name, (long long)n);
        expect_pair(what, out, TOL_F32);
        act_bw_op bg = *(const act_bw_op *)((const char *)g_gpu->ops + off_bw);
        act_bw_op bc = *(const act_bw_op *)((const char *)g_cpu->ops + off_bw);
        ck_assert_int_eq(bg(g_gpu, dx.g, dy.g, x.g, n), LH_OK);
        ck_assert_int_eq(bc(g_cpu, dx.c, dy.c, x.c, n), LH_OK);
        snprintf(what, sizeof what, "%s_backward n=%lld", name, (long long)n);
        expect_pair(what, dx, TOL_F32);
        /* dx aliasing dy */
        ck_assert_int_eq(bg(g_gpu, dy.g, dy.g, x.g, n), LH_OK);
        ck_assert_int_eq(bc(g_cpu, dy.c, dy.c, x.c, n), LH_OK);
        snprintf(what, sizeof what, "%s_backward in place n=%lld", name, (long long)n);
        expect_pair(what, dy, TOL_F32);
        /* out aliasing x */
        ck_assert_int_eq(fg(g_gpu, x.g, x.g, n), LH_OK);
        ck_assert_int_eq(fc(g_cpu, x.c, x.c, n), LH_OK);
        snprintf(what, sizeof what, "%s in place n=%lld", name, (long long)n);
        expect_pair(what, x, TOL_F32);
        pair_free(&x);
        pair_free(&out);
        pair_free(&dy);
        pair_free(&dx);
    }
}

START_TEST(test_activations) {
    act_case("silu", offsetof(lh_backend_ops, silu), offsetof(lh_backend_ops, silu_backward));
    act_case("gelu", offsetof(lh_backend_ops, gelu), offsetof(lh_backend_ops, gelu_backward));
    act_case("quick_gelu", offsetof(lh_backend_ops, quick_gelu),
             offsetof(lh_backend_ops, quick_gelu_backward));
}
END_TEST

START_TEST(test_geglu) {
    static const int64_t shapes[][2] = {{1, 1}, {3, 5}, {2 * 4096, 1280}, {77, 33}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t rows = shapes[t][0], f = shapes[t][1];
        char what[96];
        pair x = pair_rand(rows * 2 * f, 31 + t, -6.0f, 6.0f), out = pair_of(NULL, rows * f);
        pair dy = pair_rand(rows * f, 41 + t, -2.0f, 2.0f), dx = pair_of(NULL, rows * 2 * f);
        ck_assert_int_eq(g_gpu->ops->geglu(g_gpu, out.g, x.g, rows, f), LH_OK);
        ck_assert_int_eq(g_cpu->ops->geglu(g_cpu, out.c, x.c, rows, f), LH_OK);
        snprintf(what, sizeof what, "geglu rows %lld f %lld", (long long)rows, (long long)f);
        expect_pair(what, out, TOL_F32);
        ck_assert_int_eq(g_gpu->ops->geglu_backward(g_gpu, dx.g, dy.g, x.g, rows, f), LH_OK);
        ck_assert_int_eq(g_cpu->ops->geglu_backward(g_cpu, dx.c, dy.c, x.c, rows, f), LH_OK);
        snprintf(what, sizeof what, "geglu_backward rows %lld f %lld", (long long)rows,
                 (long long)f);
        expect_pair(what, dx, TOL_F32);
        pair_free(&x);
        pair_free(&out);
        pair_free(&dy);
        pair_free(&dx);
    }
}
END_TEST

START_TEST(test_add_mul_axpby) {
    for (size_t t = 0; t < sizeof ew_sizes / sizeof ew_sizes[0]; t++) {
        int64_t n = ew_sizes[t];
        char what[96];
        pair a = pair_rand(n, 51 + t, -3, 3), b = pair_rand(n, 61 + t, -3, 3);
        pair out = pair_of(NULL, n);
        ck_assert_int_eq(g_gpu->ops->add(g_gpu, out.g, a.g, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->add(g_cpu, out.c, a.c, b.c, n), LH_OK);
        snprintf(what, sizeof what, "add n=%lld", (long long)n);
        expect_pair(what, out, TOL_F32);
        ck_assert_int_eq(g_gpu->ops->axpby(g_gpu, out.g, 0.7f, a.g, -1.3f, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->axpby(g_cpu, out.c, 0.7f, a.c, -1.3f, b.c, n), LH_OK);
        snprintf(what, sizeof what, "axpby n=%lld", (long long)n);
        expect_pair(what, out, TOL_F32);
        ck_assert_int_eq(g_gpu->ops->mul(g_gpu, out.g, a.g, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->mul(g_cpu, out.c, a.c, b.c, n), LH_OK);
        snprintf(what, sizeof what, "mul n=%lld", (long long)n);
        expect_pair(what, out, TOL_F32);
        /* out aliasing a, then b */
        ck_assert_int_eq(g_gpu->ops->add(g_gpu, a.g, a.g, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->add(g_cpu, a.c, a.c, b.c, n), LH_OK);
        ck_assert_int_eq(g_gpu->ops->add(g_gpu, b.g, a.g, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->add(g_cpu, b.c, a.c, b.c, n), LH_OK);
        ck_assert_int_eq(g_gpu->ops->axpby(g_gpu, a.g, 2.0f, a.g, 0.5f, b.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->axpby(g_cpu, a.c, 2.0f, a.c, 0.5f, b.c, n), LH_OK);
        ck_assert_int_eq(g_gpu->ops->mul(g_gpu, b.g, b.g, a.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->mul(g_cpu, b.c, b.c, a.c, n), LH_OK);
        snprintf(what, sizeof what, "add/axpby/mul in place n=%lld", (long long)n);
        expect_pair(what, a, TOL_F32);
        expect_pair(what, b, TOL_F32);
        pair_free(&a);
        pair_free(&b);
        pair_free(&out);
    }
}
END_TEST

START_TEST(test_channel_bias) {
    static const int64_t shapes[][3] = {{2, 320, 4096}, {1, 3, 1}, {2, 1280, 64}, {3, 5, 7},
                                        {2, 4, 0}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t o = shapes[t][0], c = shapes[t][1], in = shapes[t][2], n = o * c * in;
        char what[96];
        pair x = pair_rand(n, 71 + t, -2, 2), bias = pair_rand(o * c, 81 + t, -1, 1);
        pair out = pair_of(NULL, n), db = pair_rand(o * c, 3, 5, 6);
        ck_assert_int_eq(g_gpu->ops->add_channel_bias(g_gpu, out.g, x.g, bias.g, o, c, in), LH_OK);
        ck_assert_int_eq(g_cpu->ops->add_channel_bias(g_cpu, out.c, x.c, bias.c, o, c, in), LH_OK);
        snprintf(what, sizeof what, "add_channel_bias %lldx%lldx%lld", (long long)o, (long long)c,
                 (long long)in);
        expect_pair(what, out, TOL_F32);
        ck_assert_int_eq(g_gpu->ops->add_channel_bias(g_gpu, x.g, x.g, bias.g, o, c, in), LH_OK);
        ck_assert_int_eq(g_cpu->ops->add_channel_bias(g_cpu, x.c, x.c, bias.c, o, c, in), LH_OK);
        snprintf(what, sizeof what, "add_channel_bias in place %lldx%lldx%lld", (long long)o,
                 (long long)c, (long long)in);
        expect_pair(what, x, TOL_F32);
        ck_assert_int_eq(g_gpu->ops->channel_bias_backward(g_gpu, db.g, x.g, o, c, in), LH_OK);
        ck_assert_int_eq(g_cpu->ops->channel_bias_backward(g_cpu, db.c, x.c, o, c, in), LH_OK);
        snprintf(what, sizeof what, "channel_bias_backward %lldx%lldx%lld", (long long)o,
                 (long long)c, (long long)in);
        expect_pair(what, db, TOL_F32);
        pair_free(&x);
        pair_free(&bias);
        pair_free(&out);
        pair_free(&db);
    }
}
END_TEST

/* Computed on the host with the cpu's formula: equal up to libm's and the
 * compilers' vectorisation (expected bit for bit). */
START_TEST(test_timestep_embedding) {
    static const float ts[] = {0.0f, 1.0f, 20.5f, 500.0f, 999.0f};
    static const int64_t dims[] = {320, 7, 1, 2};
    const int64_t n = sizeof ts / sizeof ts[0];
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++)
        for (int flip = 0; flip <= 1; flip++)
            for (int shift = 0; shift <= 1; shift++) {
                int64_t dim = dims[t];
                if (dim / 2 > 0 && dim / 2 == shift) continue; /* half - shift = 0: invalid */
                char what[96];
                pair out = pair_of(NULL, n * dim);
                ck_assert_int_eq(g_gpu->ops->timestep_embedding(g_gpu, out.g, ts, n, dim, flip,
                                                                (float)shift, 10000.0f),
                                 LH_OK);
                ck_assert_int_eq(g_cpu->ops->timestep_embedding(g_cpu, out.c, ts, n, dim, flip,
                                                                (float)shift, 10000.0f),
                                 LH_OK);
                snprintf(what, sizeof what, "timestep_embedding dim %lld flip %d shift %d",
                         (long long)dim, flip, shift);
                expect_pair(what, out, TOL_F32);
                pair_free(&out);
            }
}
END_TEST

/* ---- Layout ---- */

START_TEST(test_upsample) {
    static const int64_t shapes[][4] = {{2, 3, 5, 7}, {2, 320, 32, 32}, {1, 1, 1, 1}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t n = shapes[t][0], c = shapes[t][1], h = shapes[t][2], w = shapes[t][3];
        int64_t small = n * c * h * w;
        char what[96];
        pair x = pair_rand(small, 101 + t, -1, 1), out = pair_of(NULL, 4 * small);
        pair dy = pair_rand(4 * small, 111 + t, -1, 1), dx = pair_of(NULL, small);
        ck_assert_int_eq(g_gpu->ops->upsample_nearest2x(g_gpu, out.g, x.g, n, c, h, w), LH_OK);
        ck_assert_int_eq(g_cpu->ops->upsample_nearest2x(g_cpu, out.c, x.c, n, c, h, w), LH_OK);
        snprintf(what, sizeof what, "upsample_nearest2x %lldx%lldx%lldx%lld", (long long)n,
                 (long long)c, (long long)h, (long long)w);
        expect_pair(what, out, 0.0);
        ck_assert_int_eq(g_gpu->ops->upsample_nearest2x_backward(g_gpu, dx.g, dy.g, n, c, h, w),
                         LH_OK);
        ck_assert_int_eq(g_cpu->ops->upsample_nearest2x_backward(g_cpu, dx.c, dy.c, n, c, h, w),
                         LH_OK);
        snprintf(what, sizeof what, "upsample_nearest2x_backward %lldx%lldx%lldx%lld",
                 (long long)n, (long long)c, (long long)h, (long long)w);
        expect_pair(what, dx, 0.0);
        pair_free(&x);
        pair_free(&out);
        pair_free(&dy);
        pair_free(&dx);
    }
}
END_TEST

START_TEST(test_concat_split) {
    static const int64_t shapes[][4] = {{2, 3, 5, 17}, {2, 640, 320, 1024}, {1, 0, 4, 9},
                                        {3, 4, 0, 9}, {1, 1, 1, 1}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t n = shapes[t][0], ca = shapes[t][1], cb = shapes[t][2], hw = shapes[t][3];
        int64_t an = n * ca * hw, bn = n * cb * hw, xn = an + bn;
        char what[96];
        pair a = pair_rand(an, 121 + t, -1, 1), b = pair_rand(bn, 131 + t, -1, 1);
        pair x = pair_of(NULL, xn);
        ck_assert_int_eq(g_gpu->ops->concat_channels(g_gpu, x.g, a.g, b.g, n, ca, cb, hw), LH_OK);
        ck_assert_int_eq(g_cpu->ops->concat_channels(g_cpu, x.c, a.c, b.c, n, ca, cb, hw), LH_OK);
        snprintf(what, sizeof what, "concat_channels n%lld %lld+%lld hw%lld", (long long)n,
                 (long long)ca, (long long)cb, (long long)hw);
        expect_pair(what, x, 0.0);
        pair x2 = pair_rand(xn, 141 + t, -1, 1);
        /* split all, then with a NULL, then b NULL: the other keeps its values */
        for (int mode = 0; mode < 3; mode++) {
            ck_assert_int_eq(g_gpu->ops->split_channels(g_gpu, mode == 1 ? NULL : a.g,
                                                        mode == 2 ? NULL : b.g,
                                                        mode ? x2.g : x.g, n, ca, cb, hw),
                             LH_OK);
            ck_assert_int_eq(g_cpu->ops->split_channels(g_cpu, mode == 1 ? NULL : a.c,
                                                        mode == 2 ? NULL : b.c,
                                                        mode ? x2.c : x.c, n, ca, cb, hw),
                             LH_OK);
            snprintf(what, sizeof what, "split_channels mode %d n%lld %lld+%lld hw%lld", mode,
                     (long long)n, (long long)ca, (long long)cb, (long long)hw);
            expect_pair(what, a, 0.0);
            expect_pair(what, b, 0.0);
        }
        pair_free(&a);
        pair_free(&b);
        pair_free(&x);
        pair_free(&x2);
    }
}
END_TEST

START_TEST(test_transpose) {
    static const int64_t shapes[][3] = {{2, 320, 4096}, {2, 33, 47}, {1, 1, 5}, {3, 5, 1},
                                        {1, 1280, 64}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t n = shapes[t][0], c = shapes[t][1], hw = shapes[t][2], total = n * c * hw;
        char what[96];
        pair x = pair_rand(total, 151 + t, -1, 1), out = pair_of(NULL, total);
        ck_assert_int_eq(g_gpu->ops->transpose_c_hw(g_gpu, out.g, x.g, n, c, hw), LH_OK);
        ck_assert_int_eq(g_cpu->ops->transpose_c_hw(g_cpu, out.c, x.c, n, c, hw), LH_OK);
        snprintf(what, sizeof what, "transpose_c_hw %lldx%lldx%lld", (long long)n, (long long)c,
                 (long long)hw);
        expect_pair(what, out, 0.0);
        pair_free(&x);
        pair_free(&out);
    }
}
END_TEST

/* ---- Argument errors: the cpu's status on both ---- */

/* be->ops->fn(be, ...) on the cpu, then on the cuda backend, B the
 * backend's scratch buffer: the same status. */
#define SAME(fn, ...)                                                                      \
    do {                                                                                   \
        lh_backend *be = g_cpu;                                                            \
        float *B = bc;                                                                     \
        lh_status want = be->ops->fn(be, __VA_ARGS__);                                     \
        be = g_gpu;                                                                        \
        B = bg;                                                                            \
        lh_status got = be->ops->fn(be, __VA_ARGS__);                                      \
        (void)B;                                                                           \
        ck_assert_msg(got == want, "%s(%s): cuda %d, cpu %d", #fn, #__VA_ARGS__, (int)got, \
                      (int)want);                                                          \
    } while (0)

START_TEST(test_errors) {
    const int64_t big = INT64_MAX / 2;
    float *bg = on(g_gpu, NULL, 4096), *bc = on(g_cpu, NULL, 4096);
    float t = 1.0f;
    /* attention */
    SAME(attention, B, NULL, B, B, B, -1, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention, B, NULL, B, B, B, 1, 1, 1, 0, 8, 1.0f, 0);
    SAME(attention, B, NULL, B, B, B, 1, 1, 1, 1, 8, NAN, 0);
    SAME(attention, B, NULL, B, B, B, 1, 1, 1, 1, 8, INFINITY, 0);
    SAME(attention, NULL, NULL, B, B, B, 1, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention, B, NULL, B, NULL, B, 1, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention, B, NULL, B, B, B, big, big, 1, 1, 8, 1.0f, 0);
    SAME(attention, NULL, NULL, NULL, NULL, NULL, 0, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention, NULL, NULL, NULL, NULL, NULL, 1, 1, 0, 0, 8, 1.0f, 0);
    SAME(attention_backward, B, B, B, B, B, NULL, B, B, B, 1, 1, 1, 0, 8, 1.0f, 0);
    SAME(attention_backward, B, B, B, NULL, B, NULL, B, B, B, 1, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention_backward, B, B, B, B, B, NULL, B, B, NULL, 1, 1, 1, 1, 8, 1.0f, 0);
    SAME(attention_backward, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 1, 1, 1, 8,
         1.0f, 0);
    SAME(attention_backward, B, B, B, B, B, NULL, B, B, B, 1, -1, 1, 1, 8, 1.0f, 0);
    SAME(attention_backward, B, B, B, B, B, NULL, B, B, B, 1, 1, 1, 1, 8, NAN, 0);
    SAME(attention_backward, B, B, B, B, B, NULL, B, B, B, big, big, 1, 1, 8, 1.0f, 0);
    /* elementwise */
    SAME(silu, B, B, -1);
    SAME(gelu, NULL, B, 4);
    SAME(quick_gelu, B, NULL, 4);
    SAME(silu, NULL, NULL, 0);
    SAME(gelu, B, B, big);
    SAME(geglu, B, B, -1, 4);
    SAME(geglu, B, B, big, big);
    SAME(geglu, NULL, B, 2, 4);
    SAME(add, B, B, NULL, 4);
    SAME(add, B, B, B, -2);
    SAME(axpby, B, 1.0f, NULL, 1.0f, B, 4);
    SAME(add_channel_bias, B, B, NULL, 1, 2, 2);
    SAME(add_channel_bias, B, B, B, 1, -2, 2);
    SAME(add_channel_bias, B, B, B, big, big, 2);
    SAME(timestep_embedding, B, NULL, 1, 8, 0, 1.0f, 10000.0f);
    SAME(timestep_embedding, B, &t, 1, 8, 0, 1.0f, 0.0f);
    SAME(timestep_embedding, B, &t, 1, 8, 0, NAN, 10000.0f);
    SAME(timestep_embedding, B, &t, 1, 8, 0, 4.0f, 10000.0f);
    SAME(timestep_embedding, B, &t, -1, 8, 0, 1.0f, 10000.0f);
    SAME(silu_backward, B, NULL, B, 4);
    SAME(gelu_backward, B, B, B, -4);
    SAME(quick_gelu_backward, NULL, B, B, 4);
    SAME(geglu_backward, B, B, NULL, 2, 2);
    SAME(channel_bias_backward, NULL, B, 2, 2, 2);
    SAME(channel_bias_backward, B, NULL, 2, 2, 2);
    SAME(channel_bias_backward, B, NULL, 2, 2, 0);
    SAME(channel_bias_backward, B, B, big, big, 2);
    /* layout */
    SAME(upsample_nearest2x, B, B, 1, -1, 2, 2);
    SAME(upsample_nearest2x, B, NULL, 1, 1, 2, 2);
    SAME(upsample_nearest2x, B, B, big, 1, 1, 4);
    SAME(upsample_nearest2x_backward, NULL, B, 1, 1, 2, 2);
    SAME(concat_channels, B, NULL, B, 1, 2, 2, 2);
    SAME(concat_channels, B, NULL, B, 1, 0, 2, 2);
    SAME(concat_channels, B, B, B, 1, INT64_MAX, 1, 1);
    SAME(split_channels, B, B, NULL, 1, 2, 2, 2);
    SAME(split_channels, NULL, NULL, NULL, 1, 2, 2, 2);
    SAME(split_channels, B, B, B, big, 2, 2, 4);
    SAME(transpose_c_hw, B, B, 1, 2, 2);
    SAME(transpose_c_hw, NULL, B, 1, 2, 2);
    SAME(transpose_c_hw, B, B, -1, 2, 2);
    /* training updates */
    lh_adamw_coef co = {1, 0.1f, 0.999f, 1e-3f, 1, 1e-8f, -1e-3f, 1};
    double coef[2] = {1, 1};
    SAME(copy, NULL, B, 16);
    SAME(copy, B, NULL, 16);
    SAME(scale, NULL, 4, 2.0f);
    SAME(scale, B, -1, 2.0f);
    SAME(scale, B, big, 2.0f);
    SAME(sum_squares, NULL, B, 4);
    SAME(sum_squares, (double *)B, NULL, 4);
    SAME(sum_squares, (double *)B, B, -4);
    SAME(sum_squares, (double *)B, B, big);
    SAME(mse_backward, B, NULL, B, B, coef, 2, 4);
    SAME(mse_backward, B, (double *)B, B, B, NULL, 2, 4);
    SAME(mse_backward, B, (double *)B, NULL, B, coef, 2, 4);
    SAME(mse_backward, B, (double *)B, B, B, coef, -2, 4);
    SAME(mse_backward, B, (double *)B, B, B, coef, big, big);
    SAME(adamw, B, B, B, B, 4, NULL, NULL);
    SAME(adamw, B, NULL, B, B, 4, &co, NULL);
    SAME(adamw, B, B, B, B, -4, &co, NULL);
    SAME(adamw, B, B, B, B, big, &co, NULL);
    SAME(dropout, B, NULL, 4, 1, 0.5);
    SAME(dropout, B, B, -4, 1, 0.5);
    SAME(dropout, B, B, 4, 1, 1.0);
    SAME(dropout, B, B, 4, 1, NAN);
    SAME(dropout_backward, NULL, B, 4, 1, 0.5);
    SAME(dropout_backward, B, B, 4, 1, -0.1);
    SAME(scale_by, B, 4, NULL);
    SAME(scale_by, NULL, 4, B);
    SAME(scale_by, B, -4, B);
    SAME(step_check, NULL, (int64_t *)B, (double *)B, 4, NULL, 0, 1.0f);
    SAME(step_check, B, NULL, (double *)B, 4, NULL, 0, 1.0f);
    SAME(step_check, B, (int64_t *)B, NULL, 4, NULL, 0, 1.0f);
    SAME(step_check, B, (int64_t *)B, (double *)B, -4, NULL, 0, 1.0f);
    SAME(step_check, B, (int64_t *)B, (double *)B, 4, NULL, 2, 1.0f);
    SAME(step_check, B, (int64_t *)B, (double *)B, 4, NULL, 0, NAN);
    g_gpu->ops->free(g_gpu, bg);
    g_cpu->ops->free(g_cpu, bc);
}
END_TEST

/* ---- Training updates: scale, sum_squares, mse_backward, adamw ---- */

/* The double at backend buffer d. */
static double back_double(lh_backend *be, const double *d) {
    double v = 0.0;
    ck_assert_int_eq(be->ops->download(be, &v, d, sizeof v), LH_OK);
    return v;
}

static void expect_double(const char *what, double got, double want, double tol) {
    double rel = fabs(got - want) / fmax(fabs(want), 1e-300);
    printf("%-48s rel err %.2e (tol %.0e)\n", what, rel, tol);
    PARITY_EXPECT(rel <= tol, "%s: cuda %.17g, cpu %.17g", what, got, want);
}

START_TEST(test_train_ops) {
    char what[96];
    double *sg = g_gpu->ops->alloc(g_gpu, 128 * sizeof(double)); /* up to 128 rows */
    double *sc = g_cpu->ops->alloc(g_cpu, 128 * sizeof(double));
    ck_assert(sg && sc);
    for (size_t t = 0; t < sizeof ew_sizes / sizeof ew_sizes[0]; t++) {
        int64_t n = ew_sizes[t];
        pair x = pair_rand(n, 71 + t, -2, 2);
        ck_assert_int_eq(g_gpu->ops->scale(g_gpu, x.g, n, 0.37f), LH_OK);
        ck_assert_int_eq(g_cpu->ops->scale(g_cpu, x.c, n, 0.37f), LH_OK);
        snprintf(what, sizeof what, "scale n=%lld", (long long)n);
        expect_pair(what, x, 0.0);
        pair y = pair_of(NULL, n);
        ck_assert_int_eq(g_gpu->ops->copy(g_gpu, y.g, x.g, (size_t)n * sizeof(float)), LH_OK);
        ck_assert_int_eq(g_cpu->ops->copy(g_cpu, y.c, x.c, (size_t)n * sizeof(float)), LH_OK);
        snprintf(what, sizeof what, "copy n=%lld", (long long)n);
        expect_pair(what, y, 0.0);
        pair_free(&y);
        /* sums in double: only the order differs */
        ck_assert_int_eq(g_gpu->ops->sum_squares(g_gpu, sg, x.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->sum_squares(g_cpu, sc, x.c, n), LH_OK);
        snprintf(what, sizeof what, "sum_squares n=%lld", (long long)n);
        expect_double(what, back_double(g_gpu, sg), back_double(g_cpu, sc), 1e-12);
        pair_free(&x);
    }
    /* a NaN or an Inf makes the sum non-finite on both (the overflow check) */
    float bad[5] = {1, 2, INFINITY, 3, 4};
    for (int k = 0; k < 2; k++) {
        bad[2] = k ? NAN : INFINITY;
        pair x = pair_of(bad, 5);
        ck_assert_int_eq(g_gpu->ops->sum_squares(g_gpu, sg, x.g, 5), LH_OK);
        ck_assert_int_eq(g_cpu->ops->sum_squares(g_cpu, sc, x.c, 5), LH_OK);
        ck_assert(!isfinite(back_double(g_gpu, sg)) && !isfinite(back_double(g_cpu, sc)));
        /* the count, into device memory (no wait), against the cpu's */
        int64_t want = -1, got = -1, *dc = g_gpu->ops->alloc(g_gpu, sizeof *dc);
        ck_assert_ptr_nonnull(dc);
        ck_assert_int_eq(g_cpu->ops->count_nonfinite(g_cpu, &want, x.c, 5), LH_OK);
        ck_assert_int_eq(g_gpu->ops->count_nonfinite_into(g_gpu, dc, x.g, 5), LH_OK);
        ck_assert_int_eq(g_gpu->ops->download(g_gpu, &got, dc, sizeof got), LH_OK);
        ck_assert_int_eq(got, want);
        ck_assert_int_eq(want, 1);
        g_gpu->ops->free(g_gpu, dc);
        pair_free(&x);
    }
    /* mse_backward at the trainer's shapes: batch rows of 4x64x64 latents, and odd ones */
    /* (more than 64 rows: the cuda backend's coefficients go through memory) */
    static const int64_t shapes[][2] = {{1, 16384}, {4, 16384}, {3, 7}, {2, 1}, {70, 5}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t rows = shapes[t][0], cols = shapes[t][1], n = rows * cols;
        pair pred = pair_rand(n, 81 + t, -3, 3), tgt = pair_rand(n, 91 + t, -3, 3);
        pair d = pair_of(NULL, n);
        double coef[70];
        for (int64_t r = 0; r < rows; r++) coef[r] = (double)(r % 4 + 1) / (double)cols;
        ck_assert_int_eq(g_gpu->ops->mse_backward(g_gpu, d.g, sg, pred.g, tgt.g, coef, rows, cols),
                         LH_OK);
        ck_assert_int_eq(g_cpu->ops->mse_backward(g_cpu, d.c, sc, pred.c, tgt.c, coef, rows, cols),
                         LH_OK);
        snprintf(what, sizeof what, "mse_backward %lldx%lld", (long long)rows, (long long)cols);
        expect_pair(what, d, TOL_F32);
        double hg[70], hc[70];
        ck_assert_int_eq(g_gpu->ops->download(g_gpu, hg, sg, (size_t)rows * sizeof(double)), LH_OK);
        ck_assert_int_eq(g_cpu->ops->download(g_cpu, hc, sc, (size_t)rows * sizeof(double)), LH_OK);
        for (int64_t r = 0; r < rows; r++) {
            snprintf(what, sizeof what, "mse_backward %lldx%lld sq[%lld]", (long long)rows,
                     (long long)cols, (long long)r);
            if (r < 4 || r == rows - 1) expect_double(what, hg[r], hc[r], 1e-12);
            else ck_assert_msg(fabs(hg[r] - hc[r]) <= 1e-12 * fabs(hc[r]), "%s", what);
        }
        pair_free(&pred);
        pair_free(&tgt);
        pair_free(&d);
    }
    /* step_check at the trainer's scale (a few hundred gradients), then
     * scale_by with its multiplier: the same float32 bits on both */
    enum { NT = 300 };
    double *sqg = g_gpu->ops->alloc(g_gpu, NT * sizeof(double));
    double *sqc = g_cpu->ops->alloc(g_cpu, NT * sizeof(double));
    int64_t *cg = g_gpu->ops->alloc(g_gpu, 4 * sizeof(int64_t));
    int64_t *cc = g_cpu->ops->alloc(g_cpu, 4 * sizeof(int64_t));
    int64_t *skip_g = g_gpu->ops->alloc(g_gpu, sizeof(int64_t));
    int64_t *skip_c = g_cpu->ops->alloc(g_cpu, sizeof(int64_t));
    float *kg = g_gpu->ops->alloc(g_gpu, sizeof(float)), *kc = g_cpu->ops->alloc(g_cpu, sizeof(float));
    ck_assert(sqg && sqc && cg && cc && skip_g && skip_c && kg && kc);
    double sq[NT];
    uint32_t lcg = 131;
    for (int i = 0; i < NT; i++) {
        lcg = lcg * 1664525u + 1013904223u;
        sq[i] = (double)(lcg >> 8) * 1e-12 * (i % 7 + 1);
    }
    /* max_norm: clips, does not clip, no clipping; then an Inf sum, then a U-Net count */
    static const float norms[] = {0.05f, 1e3f, 0.0f, 1.0f, 1.0f};
    for (int k = 0; k < 5; k++) {
        int64_t counts[4] = {0, 0, k == 4 ? 3 : 0, 0}, fg = -1, fc = -1;
        double sqk[NT];
        memcpy(sqk, sq, sizeof sq);
        if (k == 3) sqk[NT / 2] = INFINITY;
        ck_assert_int_eq(g_gpu->ops->upload(g_gpu, sqg, sqk, sizeof sqk), LH_OK);
        ck_assert_int_eq(g_cpu->ops->upload(g_cpu, sqc, sqk, sizeof sqk), LH_OK);
        ck_assert_int_eq(g_gpu->ops->upload(g_gpu, cg, counts, sizeof counts), LH_OK);
        ck_assert_int_eq(g_cpu->ops->upload(g_cpu, cc, counts, sizeof counts), LH_OK);
        ck_assert_int_eq(g_gpu->ops->step_check(g_gpu, kg, skip_g, sqg, NT, cg, 4, norms[k]),
                         LH_OK);
        ck_assert_int_eq(g_cpu->ops->step_check(g_cpu, kc, skip_c, sqc, NT, cc, 4, norms[k]),
                         LH_OK);
        float kgh = 0, kch = 0;
        ck_assert_int_eq(g_gpu->ops->download(g_gpu, &kgh, kg, sizeof kgh), LH_OK);
        ck_assert_int_eq(g_cpu->ops->download(g_cpu, &kch, kc, sizeof kch), LH_OK);
        ck_assert_int_eq(g_gpu->ops->download(g_gpu, &fg, skip_g, sizeof fg), LH_OK);
        ck_assert_int_eq(g_cpu->ops->download(g_cpu, &fc, skip_c, sizeof fc), LH_OK);
        printf("step_check max_norm=%g: coef cuda %.9g cpu %.9g, found %lld %lld\n",
               (double)norms[k], (double)kgh, (double)kch, (long long)fg, (long long)fc);
        ck_assert_msg(kgh == kch, "step_check max_norm=%g: coef cuda %.9g, cpu %.9g",
                      (double)norms[k], (double)kgh, (double)kch);
        ck_assert_int_eq(fg, fc);
        ck_assert_int_eq(fc, k >= 3);
        if (k == 0) ck_assert(kch < 1.0f);
        if (k == 1 || k == 2 || k >= 3) ck_assert(kch == 1.0f);
        pair x = pair_rand(4099, 141 + (size_t)k, -2, 2);
        ck_assert_int_eq(g_gpu->ops->scale_by(g_gpu, x.g, 4099, kg), LH_OK);
        ck_assert_int_eq(g_cpu->ops->scale_by(g_cpu, x.c, 4099, kc), LH_OK);
        snprintf(what, sizeof what, "scale_by step_check's coef (max_norm %g)", (double)norms[k]);
        expect_pair(what, x, 0.0);
        pair_free(&x);
    }
    /* LoRA dropout and its backward: the same mask, the same float32 bits */
    for (size_t t = 0; t < sizeof ew_sizes / sizeof ew_sizes[0]; t++) {
        int64_t n = ew_sizes[t];
        double p = t % 2 ? 0.1 : 0.5;
        uint64_t seed = 0x5eed0000u + t;
        pair x = pair_rand(n, 151 + t, -2, 2), y = pair_of(NULL, n);
        ck_assert_int_eq(g_gpu->ops->dropout(g_gpu, y.g, x.g, n, seed, p), LH_OK);
        ck_assert_int_eq(g_cpu->ops->dropout(g_cpu, y.c, x.c, n, seed, p), LH_OK);
        snprintf(what, sizeof what, "dropout n=%lld p=%g", (long long)n, p);
        expect_pair(what, y, 0.0);
        ck_assert_int_eq(g_gpu->ops->dropout_backward(g_gpu, x.g, y.g, n, seed, p), LH_OK);
        ck_assert_int_eq(g_cpu->ops->dropout_backward(g_cpu, x.c, y.c, n, seed, p), LH_OK);
        snprintf(what, sizeof what, "dropout_backward n=%lld p=%g", (long long)n, p);
        expect_pair(what, x, 0.0);
        pair_free(&x);
        pair_free(&y);
    }
    /* skip_* now hold found = 1: adamw's skipped steps below */
    /* adamw: three steps from zero moments, with and without weight decay */
    for (size_t t = 0; t < sizeof ew_sizes / sizeof ew_sizes[0]; t++) {
        int64_t n = ew_sizes[t];
        pair p = pair_rand(n, 101 + t, -1, 1), m = pair_of(NULL, n), v = pair_of(NULL, n);
        lh_adamw_opts o;
        lh_adamw_opts_default(&o);
        o.weight_decay = t % 2 ? 0.0 : 1e-2;
        int64_t step = 0;
        for (int k = 0; k < 3; k++) {
            pair g = pair_rand(n, 111 + 10 * t + (size_t)k, -1e-2f, 1e-2f);
            lh_adamw_coef c;
            ck_assert_int_eq(lh_adamw_coef_make(&c, &step, 1e-3, &o, NULL), LH_OK);
            ck_assert_int_eq(g_gpu->ops->adamw(g_gpu, p.g, m.g, v.g, g.g, n, &c, NULL), LH_OK);
            ck_assert_int_eq(g_cpu->ops->adamw(g_cpu, p.c, m.c, v.c, g.c, n, &c, NULL), LH_OK);
            /* a skipped step (step_check found a NaN/Inf) changes nothing */
            ck_assert_int_eq(g_gpu->ops->adamw(g_gpu, p.g, m.g, v.g, g.g, n, &c, skip_g), LH_OK);
            ck_assert_int_eq(g_cpu->ops->adamw(g_cpu, p.c, m.c, v.c, g.c, n, &c, skip_c), LH_OK);
            pair_free(&g);
        }
        snprintf(what, sizeof what, "adamw param n=%lld wd=%g", (long long)n, o.weight_decay);
        expect_pair(what, p, TOL_F32);
        snprintf(what, sizeof what, "adamw exp_avg n=%lld", (long long)n);
        expect_pair(what, m, TOL_F32);
        snprintf(what, sizeof what, "adamw exp_avg_sq n=%lld", (long long)n);
        expect_pair(what, v, TOL_F32);
        pair_free(&p);
        pair_free(&m);
        pair_free(&v);
    }
    g_gpu->ops->free(g_gpu, sg);
    g_cpu->ops->free(g_cpu, sc);
    g_gpu->ops->free(g_gpu, sqg), g_cpu->ops->free(g_cpu, sqc);
    g_gpu->ops->free(g_gpu, cg), g_cpu->ops->free(g_cpu, cc);
    g_gpu->ops->free(g_gpu, skip_g), g_cpu->ops->free(g_cpu, skip_c);
    g_gpu->ops->free(g_gpu, kg), g_cpu->ops->free(g_cpu, kc);
}
END_TEST

/* ---- Mixed precision: outputs rounded to F16 / BF16 as the cpu's ---- */

/* cast (half weight storage, the training stash): float32 to F16/BF16 and
 * back, bit for bit the cpu's, with values past F16's range, subnormal
 * halves, ties and NaN among them. */
START_TEST(test_cast) {
    static const lh_dtype types[] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    const lh_backend_ops *G = g_gpu->ops, *C = g_cpu->ops;
    const int64_t n = 10007;
    float *h = rand_host(n, 301, -3, 3);
    for (int64_t i = 0; i < n; i += 7) h[i] *= 3e4f;   /* F16 overflows past 65504 */
    for (int64_t i = 3; i < n; i += 11) h[i] *= 1e-6f; /* F16 subnormals, zero */
    h[1] = 1.0f + 0x1p-11f;                             /* an F16 tie: to even */
    h[2] = 1.0f + 0x1p-8f;                              /* a BF16 tie */
    h[4] = NAN;
    pair x = pair_of(h, n), half = pair_of(NULL, n), back = pair_of(NULL, n);
    uint16_t *hg = malloc((size_t)n * 2), *hc = malloc((size_t)n * 2);
    float *fg = malloc((size_t)n * 4), *fc = malloc((size_t)n * 4);
    ck_assert(hg && hc && fg && fc);
    for (size_t t = 0; t < 2; t++) {
        const char *tn = lh_dtype_name(types[t]);
        ck_assert_int_eq(G->cast(g_gpu, half.g, types[t], x.g, LH_DTYPE_F32, n), LH_OK);
        ck_assert_int_eq(C->cast(g_cpu, half.c, types[t], x.c, LH_DTYPE_F32, n), LH_OK);
        ck_assert_int_eq(G->download(g_gpu, hg, half.g, (size_t)n * 2), LH_OK);
        ck_assert_int_eq(C->download(g_cpu, hc, half.c, (size_t)n * 2), LH_OK);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += hg[i] != hc[i] && !(i == 4); /* NaN payloads */
        printf("cast F32 -> %-4s n=%lld: %lld values differ from the cpu\n", tn, (long long)n,
               (long long)bad);
        PARITY_EXPECT(bad == 0, "cast F32 -> %s: %lld values differ", tn, (long long)bad);
        /* back: the device widens the cpu's halves */
        ck_assert_int_eq(G->upload(g_gpu, half.g, hc, (size_t)n * 2), LH_OK);
        ck_assert_int_eq(G->cast(g_gpu, back.g, LH_DTYPE_F32, half.g, types[t], n), LH_OK);
        ck_assert_int_eq(C->cast(g_cpu, back.c, LH_DTYPE_F32, half.c, types[t], n), LH_OK);
        ck_assert_int_eq(G->download(g_gpu, fg, back.g, (size_t)n * 4), LH_OK);
        ck_assert_int_eq(C->download(g_cpu, fc, back.c, (size_t)n * 4), LH_OK);
        bad = 0;
        for (int64_t i = 0; i < n; i++) bad += memcmp(&fg[i], &fc[i], 4) && i != 4;
        PARITY_EXPECT(bad == 0 && isnan(fg[4]), "cast %s -> F32: %lld values differ", tn,
                      (long long)bad);
        /* the round trip is the round op */
        ck_assert_int_eq(C->round(g_cpu, x.c, n, types[t]), LH_OK);
        ck_assert_int_eq(C->download(g_cpu, fg, x.c, (size_t)n * 4), LH_OK);
        bad = 0;
        for (int64_t i = 0; i < n; i++) bad += memcmp(&fg[i], &fc[i], 4) && i != 4;
        PARITY_EXPECT(bad == 0, "cast to %s and back is not round: %lld values", tn,
                      (long long)bad);
        ck_assert_int_eq(C->upload(g_cpu, x.c, h, (size_t)n * 4), LH_OK);
    }
    /* a type to itself copies; others are refused */
    ck_assert_int_eq(G->cast(g_gpu, back.g, LH_DTYPE_F32, x.g, LH_DTYPE_F32, n), LH_OK);
    expect_close_dev("cast F32 -> F32", back.g, x.c, n, 0.0);
    ck_assert_int_eq(G->cast(g_gpu, back.g, LH_DTYPE_F16, x.g, LH_DTYPE_BF16, n),
                     LH_ERR_UNSUPPORTED);
    ck_assert_int_eq(G->cast(g_gpu, back.g, LH_DTYPE_I32, x.g, LH_DTYPE_F32, n),
                     LH_ERR_UNSUPPORTED);
    ck_assert_int_eq(G->cast(g_gpu, back.g, LH_DTYPE_F32, x.g, LH_DTYPE_F32, -1), LH_ERR_INVALID);
    pair_free(&x);
    pair_free(&half);
    pair_free(&back);
    free(h), free(hg), free(hc), free(fg), free(fc);
}
END_TEST

/* Both backends' activation precision. */
static void precision_both(lh_dtype t) {
    ck_assert_int_eq(g_gpu->ops->set_precision(g_gpu, t), LH_OK);
    ck_assert_int_eq(g_cpu->ops->set_precision(g_cpu, t), LH_OK);
}

/* x [n] of both backends rounded to t in place. */
static void pair_round(pair p, lh_dtype t) {
    ck_assert_int_eq(g_gpu->ops->round(g_gpu, p.g, p.n, t), LH_OK);
    ck_assert_int_eq(g_cpu->ops->round(g_cpu, p.c, p.n, t), LH_OK);
}

/* Whether device buffers a and b [n] hold the same bits. */
static int same_dev(const float *a, const float *b, int64_t n) {
    float *ha = back(g_gpu, a, n), *hb = back(g_gpu, b, n);
    int same = memcmp(ha, hb, (size_t)n * sizeof(float)) == 0;
    free(ha), free(hb);
    return same;
}

/* linear_hw and linear_backward_hw (a frozen weight held in the half
 * activation type) against the device's own linear on the same weights
 * widened (the same bits: the contract) and against the cpu's linear. */
static void linear_hw_case(lh_dtype t, int64_t rows, int64_t n_in, int64_t n_out, int has_bias) {
    const lh_backend_ops *G = g_gpu->ops, *C = g_cpu->ops;
    const char *tn = lh_dtype_name(t);
    char what[128];
    uint64_t seed = (uint64_t)(rows * 7 + n_in * 3 + n_out);
    pair x = pair_rand(rows * n_in, seed, -1, 1), w = pair_rand(n_out * n_in, seed + 1, -1, 1);
    pair bias = has_bias ? pair_rand(n_out, seed + 2, -1, 1) : (pair){0};
    pair dy = pair_rand(rows * n_out, seed + 3, -1, 1);
    pair_round(x, t), pair_round(w, t), pair_round(dy, t);
    pair out = pair_of(NULL, rows * n_out), dx = pair_of(NULL, rows * n_in);
    pair db = pair_rand(n_out, seed + 4, -1, 1); /* accumulated into */
    void *wh = G->alloc(g_gpu, (size_t)(n_out * n_in) * 2 + 2);
    float *out2 = G->alloc(g_gpu, sizeof(float) * (size_t)(rows * n_out) + 4);
    float *dx2 = G->alloc(g_gpu, sizeof(float) * (size_t)(rows * n_in) + 4);
    float *db2 = G->alloc(g_gpu, sizeof(float) * (size_t)n_out + 4);
    ck_assert(wh && out2 && dx2 && db2);
    ck_assert_int_eq(G->copy(g_gpu, db2, db.g, sizeof(float) * (size_t)n_out), LH_OK);
    ck_assert_int_eq(G->cast(g_gpu, wh, t, w.g, LH_DTYPE_F32, n_out * n_in), LH_OK);
    ck_assert_int_eq(G->linear_hw(g_gpu, out.g, x.g, wh, t, bias.g, rows, n_in, n_out), LH_OK);
    ck_assert_int_eq(G->linear(g_gpu, out2, x.g, w.g, bias.g, rows, n_in, n_out), LH_OK);
    ck_assert_int_eq(C->linear(g_cpu, out.c, x.c, w.c, bias.c, rows, n_in, n_out), LH_OK);
    snprintf(what, sizeof what, "linear_hw %s %lld x %lld -> %lld%s", tn, (long long)rows,
             (long long)n_in, (long long)n_out, has_bias ? " + bias" : "");
    expect_pair(what, out, TOL_HALF);
    PARITY_EXPECT(same_dev(out.g, out2, rows * n_out), "%s: not the bits of linear on the "
                  "widened weights", what);
    ck_assert_int_eq(G->linear_backward_hw(g_gpu, dx.g, db.g, dy.g, wh, t, rows, n_in, n_out),
                     LH_OK);
    ck_assert_int_eq(G->linear_backward(g_gpu, dx2, NULL, db2, dy.g, NULL, w.g, rows, n_in, n_out),
                     LH_OK);
    ck_assert_int_eq(C->linear_backward(g_cpu, dx.c, NULL, db.c, dy.c, NULL, w.c, rows, n_in, n_out),
                     LH_OK);
    snprintf(what, sizeof what, "linear_backward_hw %s %lld x %lld -> %lld dx", tn,
             (long long)rows, (long long)n_in, (long long)n_out);
    expect_pair(what, dx, TOL_HALF);
    PARITY_EXPECT(same_dev(dx.g, dx2, rows * n_in), "%s: not the bits of linear_backward", what);
    snprintf(what, sizeof what, "linear_backward_hw %s %lld x %lld -> %lld db +=", tn,
             (long long)rows, (long long)n_in, (long long)n_out);
    expect_pair(what, db, TOL_HALF);
    PARITY_EXPECT(same_dev(db.g, db2, n_out), "%s: not the bits of linear_backward", what);
    G->free(g_gpu, wh), G->free(g_gpu, out2), G->free(g_gpu, dx2), G->free(g_gpu, db2);
    pair_free(&x), pair_free(&w), pair_free(&dy), pair_free(&out), pair_free(&dx);
    pair_free(&db);
    if (has_bias) pair_free(&bias);
}


/* conv2d_hw and conv2d_backward_hw (a frozen weight held in the half
 * activation type) against the cpu's conv2d on the weights widened: the
 * device convolves half tensors and rounds before the bias, so within the
 * half tolerance. */
static void conv_hw_case(lh_dtype t, int64_t n, int64_t ci, int64_t h, int64_t wd, int64_t co,
                         int64_t k, int stride, int pad, int has_bias) {
    const lh_backend_ops *G = g_gpu->ops, *C = g_cpu->ops;
    const char *tn = lh_dtype_name(t);
    char what[160];
    int64_t ho = (h + 2 * pad - k) / stride + 1, wo = (wd + 2 * pad - k) / stride + 1;
    int64_t nx = n * ci * h * wd, ny = n * co * ho * wo, nw = co * ci * k * k;
    uint64_t seed = (uint64_t)(n * 5 + ci * 7 + h * 11 + co * 13 + k + stride);
    pair x = pair_rand(nx, seed, -1, 1), w = pair_rand(nw, seed + 1, -0.2f, 0.2f);
    pair bias = has_bias ? pair_rand(co, seed + 2, -1, 1) : (pair){0};
    pair dy = pair_rand(ny, seed + 3, -1, 1), out = pair_of(NULL, ny), dx = pair_of(NULL, nx);
    pair db = pair_rand(co, seed + 4, -1, 1); /* accumulated into */
    pair_round(x, t), pair_round(w, t), pair_round(dy, t);
    void *wh = G->alloc(g_gpu, (size_t)nw * 2 + 2);
    ck_assert_ptr_nonnull(wh);
    ck_assert_int_eq(G->cast(g_gpu, wh, t, w.g, LH_DTYPE_F32, nw), LH_OK);
    lh_status st = G->conv2d_hw(g_gpu, out.g, x.g, wh, t, bias.g, n, ci, h, wd, co, k, k, stride,
                                pad);
    snprintf(what, sizeof what, "conv2d_hw %s n%lld %lld->%lld %lldx%lld k%lld s%d p%d%s", tn,
             (long long)n, (long long)ci, (long long)co, (long long)h, (long long)wd,
             (long long)k, stride, pad, has_bias ? " + bias" : "");
    if (st == LH_ERR_UNSUPPORTED) { /* allowed: the host widens instead */
        printf("%s: unsupported by the device (the host widens)\n", what);
    } else {
        ck_assert_int_eq(st, LH_OK);
        ck_assert_int_eq(C->conv2d(g_cpu, out.c, x.c, w.c, bias.c, n, ci, h, wd, co, k, k, stride,
                                   pad),
                         LH_OK);
        expect_pair(what, out, TOL_HALF);
        ck_assert_int_eq(G->conv2d_backward_hw(g_gpu, dx.g, db.g, dy.g, wh, t, n, ci, h, wd, co, k,
                                               k, stride, pad),
                         LH_OK);
        ck_assert_int_eq(C->conv2d_backward(g_cpu, dx.c, NULL, db.c, dy.c, NULL, w.c, n, ci, h, wd,
                                            co, k, k, stride, pad),
                         LH_OK);
        snprintf(what, sizeof what, "conv2d_backward_hw %s n%lld %lld->%lld %lldx%lld k%lld dx", tn,
                 (long long)n, (long long)ci, (long long)co, (long long)h, (long long)wd,
                 (long long)k);
        expect_pair(what, dx, TOL_HALF);
        snprintf(what, sizeof what, "conv2d_backward_hw %s n%lld %lld->%lld db +=", tn,
                 (long long)n, (long long)ci, (long long)co);
        expect_pair(what, db, TOL_HALF);
    }
    G->free(g_gpu, wh);
    pair_free(&x), pair_free(&w), pair_free(&dy), pair_free(&out), pair_free(&dx);
    pair_free(&db);
    if (has_bias) pair_free(&bias);
}

/* The half-weight ops (a frozen weight held in the F16/BF16 activation
 * type), in both half types, and their refusals. */
START_TEST(test_half_weights) {
    const lh_backend_ops *G = g_gpu->ops;
    if (!G->linear_hw || !G->linear_backward_hw || !G->conv2d_hw || !G->conv2d_backward_hw) {
        printf("half-weight ops: the device backend has none (the host widens)\n");
        return;
    }
    static const lh_dtype types[] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    float d = 0;
    for (size_t i = 0; i < 2; i++) {
        lh_dtype t = types[i];
        precision_both(t);
        linear_hw_case(t, 4096, 320, 1280, 1); /* SD 1.5 feed-forward at 64x64: tensor cores */
        linear_hw_case(t, 154, 768, 320, 0);   /* cross-attention k: tensor cores */
        linear_hw_case(t, 5, 3, 7, 1);         /* small: widened, TF32 */
        conv_hw_case(t, 2, 320, 64, 64, 320, 3, 1, 1, 1); /* SD 1.5 first level at 64x64 */
        conv_hw_case(t, 2, 640, 16, 16, 640, 3, 2, 1, 1); /* a downsample */
        conv_hw_case(t, 2, 640, 32, 32, 320, 1, 1, 0, 1); /* a resnet shortcut */
        conv_hw_case(t, 2, 4, 64, 64, 320, 3, 1, 1, 0);   /* conv_in (no bias) */
        conv_hw_case(t, 3, 5, 7, 9, 6, 3, 2, 1, 1);       /* odd sizes */
        /* a weight type other than the activation type is refused */
        lh_dtype other = t == LH_DTYPE_F16 ? LH_DTYPE_BF16 : LH_DTYPE_F16;
        ck_assert_int_eq(G->linear_hw(g_gpu, &d, &d, &d, other, NULL, 1, 1, 1), LH_ERR_INVALID);
        ck_assert_int_eq(G->linear_backward_hw(g_gpu, &d, NULL, &d, &d, LH_DTYPE_F32, 1, 1, 1),
                         LH_ERR_INVALID);
        ck_assert_int_eq(G->conv2d_hw(g_gpu, &d, &d, &d, other, NULL, 1, 1, 1, 1, 1, 1, 1, 1, 0),
                         LH_ERR_INVALID);
        ck_assert_int_eq(G->conv2d_backward_hw(g_gpu, &d, NULL, &d, &d, LH_DTYPE_F32, 1, 1, 1, 1,
                                               1, 1, 1, 1, 0),
                         LH_ERR_INVALID);
    }
    precision_both(LH_DTYPE_F32); /* float32 activations: no half weights */
    ck_assert_int_eq(G->linear_hw(g_gpu, &d, &d, &d, LH_DTYPE_F16, NULL, 1, 1, 1), LH_ERR_INVALID);
}
END_TEST

START_TEST(test_half_outputs) {
    static const lh_dtype types[] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    for (size_t t = 0; t < 2; t++) {
        precision_both(types[t]);
        const char *tn = types[t] == LH_DTYPE_F16 ? "f16" : "bf16";
        char what[96];
        const int64_t n = 4099;
        pair x = pair_rand(2 * n, 201, -6, 6), out = pair_of(NULL, 2 * n);
        pair dy = pair_rand(2 * n, 202, -2, 2), dx = pair_of(NULL, 2 * n);
        ck_assert_int_eq(g_gpu->ops->silu(g_gpu, out.g, x.g, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->silu(g_cpu, out.c, x.c, n), LH_OK);
        snprintf(what, sizeof what, "silu %s", tn);
        expect_close_dev(what, out.g, out.c, n, TOL_HALF);
        ck_assert_int_eq(g_gpu->ops->geglu(g_gpu, out.g, x.g, 1, n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->geglu(g_cpu, out.c, x.c, 1, n), LH_OK);
        snprintf(what, sizeof what, "geglu %s", tn);
        expect_close_dev(what, out.g, out.c, n, TOL_HALF);
        ck_assert_int_eq(g_gpu->ops->gelu_backward(g_gpu, dx.g, dy.g, x.g, 2 * n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->gelu_backward(g_cpu, dx.c, dy.c, x.c, 2 * n), LH_OK);
        snprintf(what, sizeof what, "gelu_backward %s", tn);
        expect_pair(what, dx, TOL_HALF);
        ck_assert_int_eq(g_gpu->ops->axpby(g_gpu, out.g, 1e3f, x.g, 1e2f, dy.g, 2 * n), LH_OK);
        ck_assert_int_eq(g_cpu->ops->axpby(g_cpu, out.c, 1e3f, x.c, 1e2f, dy.c, 2 * n), LH_OK);
        snprintf(what, sizeof what, "axpby %s", tn);
        expect_pair(what, out, TOL_HALF);
        ck_assert_int_eq(g_gpu->ops->channel_bias_backward(g_gpu, out.g, dy.g, 2, 3, 1000), LH_OK);
        ck_assert_int_eq(g_cpu->ops->channel_bias_backward(g_cpu, out.c, dy.c, 2, 3, 1000), LH_OK);
        snprintf(what, sizeof what, "channel_bias_backward %s", tn);
        expect_close_dev(what, out.g, out.c, 6, TOL_HALF);
        static const float ts[] = {999.0f, 1.0f};
        ck_assert_int_eq(g_gpu->ops->timestep_embedding(g_gpu, out.g, ts, 2, 320, 1, 0.0f,
                                                        10000.0f),
                         LH_OK);
        ck_assert_int_eq(g_cpu->ops->timestep_embedding(g_cpu, out.c, ts, 2, 320, 1, 0.0f,
                                                        10000.0f),
                         LH_OK);
        snprintf(what, sizeof what, "timestep_embedding %s", tn);
        expect_close_dev(what, out.g, out.c, 640, TOL_HALF);
        pair_free(&x);
        pair_free(&out);
        pair_free(&dy);
        pair_free(&dx);
        /* attention, forward and backward, on inputs already in the half
         * type: on the tensor cores (the default) at SD 1.5's shapes and off
         * every tile, and d 256 (where the device's shared memory is short,
         * the float32 kernels) */
        g_att_inputs = types[t];
        att_case((att_shape){1, 2, 77, 77, 40, 0}, 1, TOL_HALF);
        att_case((att_shape){1, 12, 77, 77, 64, 1}, 1, TOL_HALF);
        static const att_shape fwd[] = {
            {1, 8, 4096, 4096, 40, 0}, {2, 8, 4096, 77, 40, 0}, {1, 8, 1024, 1024, 80, 0},
            {2, 8, 256, 256, 160, 0},  {2, 8, 256, 77, 160, 0}, {2, 3, 33, 65, 17, 1},
            {1, 2, 65, 33, 33, 1},     {1, 1, 47, 47, 1, 1},    {3, 1, 17, 1, 64, 0},
            {1, 4, 100, 129, 96, 1},   {1, 2, 40, 50, 256, 0}, {2, 2, 31, 97, 160, 1},
        };
        for (size_t i = 0; i < sizeof fwd / sizeof fwd[0]; i++) /* backward too, but at 4096 */
            att_case(fwd[i], fwd[i].nq * fwd[i].nk <= 1024 * 1024, TOL_HALF);
        g_att_inputs = LH_DTYPE_F32;
        precision_both(LH_DTYPE_F32);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_parity_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_activations);
    tcase_add_test(tc, test_geglu);
    tcase_add_test(tc, test_add_mul_axpby);
    tcase_add_test(tc, test_channel_bias);
    tcase_add_test(tc, test_timestep_embedding);
    tcase_add_test(tc, test_upsample);
    tcase_add_test(tc, test_concat_split);
    tcase_add_test(tc, test_transpose);
    tcase_add_test(tc, test_attention_odd);
    tcase_add_test(tc, test_attention_no_queries);
    tcase_add_test(tc, test_attention_clip);
    tcase_add_test(tc, test_attention_vae);
    tcase_add_test(tc, test_attention_sd15);
    tcase_add_test(tc, test_cast);
    tcase_add_test(tc, test_half_weights);
    tcase_add_test(tc, test_half_outputs);
    tcase_add_test(tc, test_train_ops);
    suite_add_tcase(s, tc);
    return parity_run(s);
}
