/* U-Net suite: diffusers UNet2DConditionModel (SD 1.x conv-projection and
 * SD 2.x linear-projection layouts) against the reference outputs recorded by
 * tests/golden/models_unet.py (tests/fixtures/models/unet_reference.safetensors),
 * config.json parsing and refusal of unsupported fields, and load errors
 * (missing and mis-shaped tensors) on the cpu backend. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "unet.h"

#define TOL 1e-4 /* relative L2, float32 */

static char g_tmp[4096]; /* scratch directory under the build tree */

/* ---- Helpers ---- */

typedef struct path_buf {
    char s[4096];
} path_buf;

__attribute__((format(printf, 1, 2))) static path_buf pathf(const char *fmt, ...) {
    path_buf p;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p.s, sizeof p.s, fmt, ap);
    va_end(ap);
    return p;
}

static const char *source_dir(void) {
    return getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..";
}

static const char *build_dir(void) {
    return getenv("LH_BUILD_DIR") ? getenv("LH_BUILD_DIR") : "..";
}

static path_buf model_dir(const char *variant) {
    return pathf("%s/tests/fixtures/models/%s/unet", source_dir(), variant);
}

static lh_backend *cpu_backend(void) {
    lh_backend *be = NULL;
    char msg[256] = "";
    lh_status st = lh_backend_cpu_create(&be, 0, msg, sizeof msg);
    ck_assert_msg(st == LH_OK, "cpu backend: %s", msg);
    return be;
}

/* A host float tensor from the reference file; *n gets its element count. */
static float *ref_tensor(const lh_st_file *f, const char *name, int64_t *shape, int *ndim,
                         size_t *n) {
    const lh_st_tensor *t = lh_st_find(f, name);
    ck_assert_msg(t != NULL, "reference tensor %s missing", name);
    float *buf = malloc((size_t)t->numel * sizeof(float));
    ck_assert_ptr_nonnull(buf);
    lh_error err;
    ck_assert_int_eq(lh_st_read_f32(buf, (size_t)t->numel, f, name, &err), LH_OK);
    if (shape) memcpy(shape, t->shape, sizeof t->shape);
    if (ndim) *ndim = t->ndim;
    *n = (size_t)t->numel;
    return buf;
}

static float *to_backend(lh_backend *be, const float *host, size_t n) {
    float *p = be->ops->alloc(be, n * sizeof(float));
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(be->ops->upload(be, p, host, n * sizeof(float)), LH_OK);
    return p;
}

static double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* Run case `name` of the reference file on the U-Net in `dir` with
 * activations in `prec` (lh_unet_set_precision); returns rel L2. */
static double run_case_prec(const char *dir, const char *name, lh_dtype prec) {
    lh_error err = {0};
    lh_st_file *ref = NULL;
    path_buf rp = pathf("%s/tests/fixtures/models/unet_reference.safetensors", source_dir());
    ck_assert_msg(lh_st_open(&ref, rp.s, &err) == LH_OK, "%s", err.msg);

    int64_t xs[LH_MAX_DIMS], cs[LH_MAX_DIMS];
    int xd, cd;
    size_t nx, nt, nc, no;
    float *x = ref_tensor(ref, pathf("%s.x", name).s, xs, &xd, &nx);
    float *t = ref_tensor(ref, pathf("%s.t", name).s, NULL, NULL, &nt);
    float *ctx = ref_tensor(ref, pathf("%s.ctx", name).s, cs, &cd, &nc);
    float *want = ref_tensor(ref, pathf("%s.out", name).s, NULL, NULL, &no);
    ck_assert_int_eq(xd, 4);
    ck_assert_int_eq(cd, 3);

    lh_backend *be = cpu_backend();
    lh_unet *m = NULL;
    ck_assert_msg(lh_unet_load(&m, be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_unet_set_precision(m, prec, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(cs[2], m->cfg.cross_attention_dim);
    float *dx = to_backend(be, x, nx), *dctx = to_backend(be, ctx, nc);
    float *dout = be->ops->alloc(be, no * sizeof(float));
    ck_assert_ptr_nonnull(dout);
    lh_status st = lh_unet_forward(m, dout, dx, t, dctx, xs[0], xs[2], xs[3], cs[1], &err);
    ck_assert_msg(st == LH_OK, "%s: %s", name, err.msg);
    float *got = malloc(no * sizeof(float));
    ck_assert_ptr_nonnull(got);
    ck_assert_int_eq(be->ops->download(be, got, dout, no * sizeof(float)), LH_OK);
    for (size_t i = 0; i < no; i++) ck_assert_msg(isfinite(got[i]), "%s: out[%zu] = %g", name, i, got[i]);
    double e = rel_l2(got, want, no);
    printf("unet %-9s %s b=%lld %lldx%lld n_ctx=%lld: rel L2 %.3g\n", name,
           lh_dtype_name(prec), (long long)xs[0], (long long)xs[2], (long long)xs[3],
           (long long)cs[1], e);

    be->ops->free(be, dx);
    be->ops->free(be, dctx);
    be->ops->free(be, dout);
    lh_unet_free(m);
    lh_backend_destroy(be);
    free(x);
    free(t);
    free(ctx);
    free(want);
    free(got);
    lh_st_close(ref);
    return e;
}

static double run_case(const char *dir, const char *name) {
    return run_case_prec(dir, name, LH_DTYPE_F32);
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", path, je.text);
    return j;
}

/* A U-Net directory in the scratch area: `variant`'s config with `patch`
 * (a JSON object merged over it; may be NULL) and its weights, optionally
 * without tensor `drop` and with tensor `reshape` stored as shape `shape`. */
static path_buf make_dir(const char *tag, const char *variant, const char *patch,
                         const char *drop, const char *reshape, int ndim, const int64_t *shape) {
    path_buf dir = pathf("%s/%s", g_tmp, tag);
    ck_assert_msg(mkdir(dir.s, 0755) == 0 || errno == EEXIST, "mkdir %s", dir.s);
    path_buf src = model_dir(variant);

    json_t *cfg = load_json(pathf("%s/config.json", src.s).s);
    if (patch) {
        json_error_t je;
        json_t *p = json_loads(patch, 0, &je);
        ck_assert_msg(p != NULL, "patch: %s", je.text);
        ck_assert_int_eq(json_object_update(cfg, p), 0);
        json_decref(p);
    }
    ck_assert_int_eq(json_dump_file(cfg, pathf("%s/config.json", dir.s).s, JSON_INDENT(2)), 0);
    json_decref(cfg);

    lh_error err;
    lh_st_file *f = NULL;
    ck_assert_msg(lh_st_open(&f, pathf("%s/diffusion_pytorch_model.safetensors", src.s).s, &err) ==
                      LH_OK, "%s", err.msg);
    lh_st_writer *wr = NULL;
    ck_assert_int_eq(lh_st_writer_create(&wr, &err), LH_OK);
    float *reshaped = NULL;
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        if (drop && !strcmp(t->name, drop)) continue;
        if (reshape && !strcmp(t->name, reshape)) {
            int64_t n = 1;
            for (int d = 0; d < ndim; d++) n *= shape[d];
            reshaped = calloc((size_t)n, sizeof(float));
            ck_assert_ptr_nonnull(reshaped);
            ck_assert_int_eq(lh_st_writer_add(wr, t->name, LH_DTYPE_F32, ndim, shape, reshaped,
                                              &err), LH_OK);
            continue;
        }
        ck_assert_int_eq(lh_st_writer_add(wr, t->name, t->dtype, t->ndim, t->shape, t->data, &err),
                         LH_OK);
    }
    ck_assert_msg(lh_st_save(wr, pathf("%s/diffusion_pytorch_model.safetensors", dir.s).s, &err) ==
                      LH_OK, "%s", err.msg);
    lh_st_writer_destroy(wr);
    lh_st_close(f);
    free(reshaped);
    return dir;
}

static void remove_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

/* Load `dir` expecting failure `code` with a message containing each of the
 * NULL-terminated strings. */
static void expect_load_error(const char *dir, lh_status code, ...) {
    lh_backend *be = cpu_backend();
    lh_unet *m = NULL;
    lh_error err = {0};
    lh_status st = lh_unet_load(&m, be, dir, &err);
    ck_assert_msg(st == code, "load %s: status %d (%s), want %d", dir, st, err.msg, code);
    ck_assert_ptr_null(m);
    va_list ap;
    va_start(ap, code);
    for (const char *s; (s = va_arg(ap, const char *));)
        ck_assert_msg(strstr(err.msg, s), "message \"%s\" lacks \"%s\"", err.msg, s);
    va_end(ap);
    lh_backend_destroy(be);
}

/* ---- Forward against diffusers ---- */

START_TEST(test_sd1_forward) { ck_assert_double_lt(run_case(model_dir("sd1_tiny").s, "sd1"), TOL); }
END_TEST

START_TEST(test_sd1_odd_size) {
    ck_assert_double_lt(run_case(model_dir("sd1_tiny").s, "sd1_odd"), TOL);
}
END_TEST

/* Half-precision inference (diffusers' torch_dtype=float16 / bfloat16):
 * within 1e-2 of the float32 reference in fp16, and bf16's 8 significant
 * bits within 5e-2; both farther than float32 (half really is on). */
START_TEST(test_sd1_half) {
    double e16 = run_case_prec(model_dir("sd1_tiny").s, "sd1", LH_DTYPE_F16);
    double ebf = run_case_prec(model_dir("sd1_tiny").s, "sd1", LH_DTYPE_BF16);
    ck_assert_msg(e16 < 1e-2 && e16 > 1e-5, "fp16: rel L2 %g", e16);
    ck_assert_msg(ebf < 5e-2 && ebf > 1e-5, "bf16: rel L2 %g", ebf);
    lh_error err = {0};
    lh_unet *m = NULL;
    lh_backend *be = cpu_backend();
    ck_assert_msg(lh_unet_load(&m, be, model_dir("sd1_tiny").s, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_unet_set_precision(m, LH_DTYPE_I64, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_unet_set_precision(m, LH_DTYPE_F16, &err), LH_OK);
    /* the weights are fp16 now: bf16 would need the float32 ones */
    ck_assert_int_eq(lh_unet_set_precision(m, LH_DTYPE_BF16, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "already rounded to F16"), "%s", err.msg);
    ck_assert_int_eq(lh_unet_set_precision(m, LH_DTYPE_F32, &err), LH_OK);
    lh_unet_free(m);
    lh_backend_destroy(be);
}
END_TEST

/* One forward at m's precision and one training step (mse against a fixed
 * target, dL/d(context) out) at `train` on the inputs of reference case
 * sd1; host copies of the output, loss and dL/d(context). */
typedef struct half_run {
    float *out, *dctx, loss;
    size_t no, nc;
} half_run;

static half_run run_fwd_bwd(lh_backend *be, lh_unet *m, const lh_st_file *ref, lh_dtype train,
                            int f32_saved, int ckpt) {
    lh_error err = {0};
    int64_t xs[LH_MAX_DIMS], cs[LH_MAX_DIMS];
    size_t nx, nt;
    half_run h;
    float *x = ref_tensor(ref, "sd1.x", xs, NULL, &nx);
    float *t = ref_tensor(ref, "sd1.t", NULL, NULL, &nt);
    float *ctx = ref_tensor(ref, "sd1.ctx", cs, NULL, &h.nc);
    float *want = ref_tensor(ref, "sd1.out", NULL, NULL, &h.no);
    float *dx = to_backend(be, x, nx), *dc = to_backend(be, ctx, h.nc);
    float *dtarget = to_backend(be, want, h.no);
    float *dout = be->ops->alloc(be, h.no * sizeof(float));
    float *ddc = be->ops->alloc(be, h.nc * sizeof(float));
    ck_assert(dout && ddc);
    ck_assert_msg(lh_unet_forward(m, dout, dx, t, dc, xs[0], xs[2], xs[3], cs[1], &err) == LH_OK,
                  "%s", err.msg);
    h.out = malloc(h.no * sizeof(float));
    h.dctx = malloc(h.nc * sizeof(float));
    ck_assert(h.out && h.dctx);
    ck_assert_int_eq(be->ops->download(be, h.out, dout, h.no * sizeof(float)), LH_OK);
    lh_unet_train_opts o = {.precision = train, .f32_saved = f32_saved, .checkpointing = ckpt};
    lh_unet_mse mse = {be, dtarget};
    ck_assert_msg(lh_unet_train_step(m, &o, lh_unet_mse_loss, &mse, &h.loss, ddc, dx, t, dc,
                                     xs[0], xs[2], xs[3], cs[1], NULL, &err) == LH_OK,
                  "%s", err.msg);
    ck_assert_int_eq(be->ops->download(be, h.dctx, ddc, h.nc * sizeof(float)), LH_OK);
    be->ops->free(be, dx);
    be->ops->free(be, dc);
    be->ops->free(be, dtarget);
    be->ops->free(be, dout);
    be->ops->free(be, ddc);
    free(x);
    free(t);
    free(ctx);
    free(want);
    return h;
}

/* Half storage (lh_unet_set_precision F16/BF16): the linear and conv
 * weights are held in the half type, half the memory, and widened op by
 * op, and a training step keeps its saved activations in it (the stash);
 * the forward, a training step at the same precision and both at F32 give
 * the same bits as float32 storage of the same rounded weights and float32
 * saved activations. */
START_TEST(test_half_storage) {
    const lh_dtype half[] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    lh_error err = {0};
    lh_st_file *ref = NULL;
    path_buf rp = pathf("%s/tests/fixtures/models/unet_reference.safetensors", source_dir());
    ck_assert_msg(lh_st_open(&ref, rp.s, &err) == LH_OK, "%s", err.msg);
    lh_backend *be = cpu_backend();
    for (int k = 0; k < 2; k++) {
        lh_unet *kept = NULL, *m = NULL;
        ck_assert_msg(lh_unet_load(&kept, be, model_dir("sd1_tiny").s, &err) == LH_OK, "%s",
                      err.msg);
        ck_assert_msg(lh_unet_load(&m, be, model_dir("sd1_tiny").s, &err) == LH_OK, "%s",
                      err.msg);
        size_t f32_bytes = m->ws.bytes;
        ck_assert_int_eq(lh_unet_keep_f32_weights(kept, 1, &err), LH_OK);
        ck_assert_msg(lh_unet_set_precision(kept, half[k], &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_unet_set_precision(m, half[k], &err) == LH_OK, "%s", err.msg);
        ck_assert_int_eq(kept->weight_storage, LH_DTYPE_F32);
        ck_assert_int_eq(m->weight_storage, half[k]);
        ck_assert_uint_eq(kept->ws.bytes, f32_bytes);
        /* biases and norms stay float32: a little over half */
        ck_assert_msg(m->ws.bytes < f32_bytes * 52 / 100 && m->ws.bytes > f32_bytes / 2,
                      "%s storage: %zu bytes of %zu", lh_dtype_name(half[k]), m->ws.bytes,
                      f32_bytes);
        for (int pass = 0; pass < 2; pass++) { /* half activations, then float32 */
            lh_dtype act = pass ? LH_DTYPE_F32 : half[k];
            if (pass) {
                ck_assert_int_eq(lh_unet_set_precision(kept, LH_DTYPE_F32, &err), LH_OK);
                ck_assert_int_eq(lh_unet_set_precision(m, LH_DTYPE_F32, &err), LH_OK);
            }
            half_run a = run_fwd_bwd(be, kept, ref, act, 1, 0);
            for (int ckpt = 0; ckpt < 2; ckpt++) { /* checkpointing changes no bit either */
                size_t kept_ws = kept->train_ws_floats;
                if (ckpt) lh_unet_release_workspace(kept), lh_unet_release_workspace(m);
                half_run c = ckpt ? run_fwd_bwd(be, kept, ref, act, 1, 1) : a;
                half_run b = run_fwd_bwd(be, m, ref, act, 0, ckpt);
                ck_assert_msg(!memcmp(a.out, b.out, a.no * sizeof(float)),
                              "%s storage, %s activations: the forward differs",
                              lh_dtype_name(half[k]), lh_dtype_name(act));
                ck_assert_msg(!memcmp(a.dctx, b.dctx, a.nc * sizeof(float)) &&
                                  a.loss == b.loss && !memcmp(a.dctx, c.dctx, a.nc * 4),
                              "%s storage, %s activations, checkpointing %d: the training step "
                              "differs", lh_dtype_name(half[k]), lh_dtype_name(act), ckpt);
                if (!pass) { /* the stash: the step's arena is smaller */
                    printf("unet training arena, %s, checkpointing %d: %zu floats, stash %zu\n",
                           lh_dtype_name(act), ckpt, ckpt ? kept->train_ws_floats : kept_ws,
                           m->train_ws_floats);
                    ck_assert_uint_lt(m->train_ws_floats,
                                      (ckpt ? kept->train_ws_floats : kept_ws) * 95 / 100);
                }
                if (ckpt) free(c.out), free(c.dctx);
                free(b.out), free(b.dctx);
            }
            free(a.out), free(a.dctx);
        }
        /* back to float32 storage (training in full asks for it): the same bits */
        lh_unet_grads *g = NULL;
        ck_assert_msg(lh_unet_grads_create(&g, m, &err) == LH_OK, "%s", err.msg);
        ck_assert_int_eq(m->weight_storage, LH_DTYPE_F32);
        ck_assert_uint_eq(m->ws.bytes, f32_bytes);
        half_run a = run_fwd_bwd(be, kept, ref, LH_DTYPE_F32, 1, 0);
        half_run c = run_fwd_bwd(be, m, ref, LH_DTYPE_F32, 1, 0);
        ck_assert_msg(!memcmp(a.out, c.out, a.no * sizeof(float)) &&
                          !memcmp(a.dctx, c.dctx, a.nc * sizeof(float)),
                      "%s weights widened back: the numbers differ", lh_dtype_name(half[k]));
        free(a.out), free(a.dctx), free(c.out), free(c.dctx);
        lh_unet_grads_free(g);
        lh_unet_free(kept);
        lh_unet_free(m);
    }
    lh_backend_destroy(be);
    lh_st_close(ref);
}
END_TEST

START_TEST(test_sd2_forward) { ck_assert_double_lt(run_case(model_dir("sd2_tiny").s, "sd2"), TOL); }
END_TEST

START_TEST(test_sd2_odd_size) {
    ck_assert_double_lt(run_case(model_dir("sd2_tiny").s, "sd2_odd"), TOL);
}
END_TEST

/* flip_sin_to_cos false, freq_shift 1: the other timestep embedding convention. */
START_TEST(test_sd1_time_options) {
    path_buf dir = make_dir("flip", "sd1_tiny", "{\"flip_sin_to_cos\": false, \"freq_shift\": 1}",
                            NULL, NULL, 0, NULL);
    ck_assert_double_lt(run_case(dir.s, "sd1_flip"), TOL);
}
END_TEST

START_TEST(test_forward_bad_args) {
    lh_backend *be = cpu_backend();
    lh_unet *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_unet_load(&m, be, model_dir("sd1_tiny").s, &err) == LH_OK, "%s", err.msg);
    float *buf = be->ops->alloc(be, 4 * 10 * 10 * sizeof(float));
    ck_assert_ptr_nonnull(buf);
    float t[1] = {10};
    /* 2 blocks: h and w must be even */
    ck_assert_int_eq(lh_unet_forward(m, buf, buf, t, buf, 1, 5, 8, 1, &err), LH_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "5x8"));
    ck_assert_int_eq(lh_unet_forward(m, buf, buf, t, buf, 0, 4, 4, 1, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_unet_forward(m, buf, buf, t, buf, 1, 4, 4, 0, &err), LH_ERR_INVALID);
    t[0] = NAN;
    ck_assert_int_eq(lh_unet_forward(m, buf, buf, t, buf, 1, 4, 4, 1, &err), LH_ERR_NUMERIC);
    ck_assert_int_eq(lh_unet_forward(m, NULL, buf, t, buf, 1, 4, 4, 1, &err), LH_ERR_INVALID);

    /* the workspace grows with the batch and is 0 for sizes forward refuses */
    size_t ws1 = lh_unet_forward_workspace(m, 1, 16, 16, 77);
    size_t ws2 = lh_unet_forward_workspace(m, 2, 16, 16, 77);
    ck_assert_uint_gt(ws1, 0);
    ck_assert_uint_gt(ws2, ws1);
    ck_assert_uint_eq(lh_unet_forward_workspace(m, 1, 15, 16, 77), 0);
    ck_assert_uint_eq(lh_unet_forward_workspace(m, INT64_MAX / 2, 1 << 20, 1 << 20, 77), 0);
    ck_assert_uint_eq(lh_unet_forward_workspace(m, 1, 1 << 30, 1 << 30, 77), 0);
    ck_assert_uint_eq(lh_unet_forward_workspace(m, 1 << 30, 16, 16, INT64_MAX / 4), 0);
    ck_assert_int_eq(lh_unet_forward(m, buf, buf, t, buf, 1 << 30, 1 << 20, 1 << 20, 77, &err),
                     LH_ERR_OVERFLOW);
    be->ops->free(be, buf);
    lh_unet_free(m);
    lh_backend_destroy(be);
}
END_TEST

/* ---- Configuration ---- */

START_TEST(test_config_fixtures) {
    lh_unet_config c;
    lh_error err = {0};
    ck_assert_msg(lh_unet_config_read(&c, pathf("%s/config.json", model_dir("sd1_tiny").s).s,
                                      &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.n_blocks, 2);
    ck_assert_int_eq(c.block_out_channels[0], 8);
    ck_assert_int_eq(c.block_out_channels[1], 16);
    ck_assert_int_eq(c.layers_per_block[1], 2);
    ck_assert_int_eq(c.heads[0], 2);
    ck_assert_int_eq(c.heads[1], 2);
    ck_assert_int_eq(c.down_cross[0], 1);
    ck_assert_int_eq(c.down_cross[1], 0);
    ck_assert_int_eq(c.up_cross[0], 0);
    ck_assert_int_eq(c.up_cross[1], 1);
    ck_assert_int_eq(c.cross_attention_dim, 32);
    ck_assert_int_eq(c.use_linear_projection, 0);

    ck_assert_msg(lh_unet_config_read(&c, pathf("%s/config.json", model_dir("sd2_tiny").s).s,
                                      &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.heads[0], 2);
    ck_assert_int_eq(c.heads[1], 4);
    ck_assert_int_eq(c.use_linear_projection, 1);
    ck_assert_int_eq(c.upcast_attention, 1);
    ck_assert_int_eq(c.cross_attention_dim, 48);
    ck_assert_int_eq(c.norm_num_groups, 8);
}
END_TEST

/* An empty object is diffusers' default model: the SD 1.5 U-Net. */
START_TEST(test_config_defaults) {
    lh_unet_config c;
    lh_error err = {0};
    ck_assert_msg(lh_unet_config_parse(&c, "{}", "defaults", &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.n_blocks, 4);
    ck_assert_int_eq(c.block_out_channels[3], 1280);
    ck_assert_int_eq(c.layers_per_block[0], 2);
    ck_assert_int_eq(c.heads[2], 8);
    ck_assert_int_eq(c.cross_attention_dim, 1280);
    ck_assert_int_eq(c.down_cross[2], 1);
    ck_assert_int_eq(c.down_cross[3], 0);
    ck_assert_int_eq(c.up_cross[0], 0);
    ck_assert_int_eq(c.up_cross[1], 1);
    ck_assert_int_eq(c.norm_num_groups, 32);
    ck_assert_int_eq(c.flip_sin_to_cos, 1);
    ck_assert(fabsf(c.norm_eps - 1e-5f) < 1e-12f);
}
END_TEST

/* The unet/config.json of the SD 1.5 and SD 2.1 releases (older diffusers
 * wrote fewer keys). */
static const char SD15_CONFIG[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.6.0\", "
    "\"act_fn\": \"silu\", \"attention_head_dim\": 8, "
    "\"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false, "
    "\"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\", "
    "\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], "
    "\"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0, "
    "\"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, "
    "\"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64, "
    "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", "
    "\"CrossAttnUpBlock2D\"]}";

static const char SD21_CONFIG[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.10.0.dev0\", "
    "\"act_fn\": \"silu\", \"attention_head_dim\": [5, 10, 20, 20], "
    "\"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false, "
    "\"cross_attention_dim\": 1024, \"down_block_types\": [\"CrossAttnDownBlock2D\", "
    "\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], "
    "\"downsample_padding\": 1, \"dual_cross_attention\": false, \"flip_sin_to_cos\": true, "
    "\"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2, "
    "\"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, "
    "\"num_class_embeds\": null, \"only_cross_attention\": false, \"out_channels\": 4, "
    "\"sample_size\": 96, \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", "
    "\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"], \"upcast_attention\": true, "
    "\"use_linear_projection\": true}";

START_TEST(test_config_releases) {
    lh_unet_config c;
    lh_error err = {0};
    ck_assert_msg(lh_unet_config_parse(&c, SD15_CONFIG, "sd15", &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.cross_attention_dim, 768);
    ck_assert_int_eq(c.heads[3], 8);
    ck_assert_int_eq(c.use_linear_projection, 0);
    ck_assert_msg(lh_unet_config_parse(&c, SD21_CONFIG, "sd21", &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.cross_attention_dim, 1024);
    ck_assert_int_eq(c.heads[0], 5);
    ck_assert_int_eq(c.heads[3], 20);
    ck_assert_int_eq(c.use_linear_projection, 1);
    ck_assert_int_eq(c.upcast_attention, 1);
}
END_TEST

/* Each bad config names its field. */
static const struct {
    const char *json, *field;
    lh_status code;
} BAD_CONFIGS[] = {
    {"{\"class_embed_type\": \"timestep\"}", "class_embed_type", LH_ERR_CONFIG},
    {"{\"addition_embed_type\": \"text_time\"}", "addition_embed_type", LH_ERR_CONFIG},
    {"{\"time_cond_proj_dim\": 256}", "time_cond_proj_dim", LH_ERR_CONFIG},
    {"{\"center_input_sample\": true}", "center_input_sample", LH_ERR_CONFIG},
    {"{\"resnet_time_scale_shift\": \"scale_shift\"}", "resnet_time_scale_shift", LH_ERR_CONFIG},
    {"{\"transformer_layers_per_block\": [1, 2, 10, 1]}", "transformer_layers_per_block",
     LH_ERR_CONFIG},
    {"{\"only_cross_attention\": true}", "only_cross_attention", LH_ERR_CONFIG},
    {"{\"dual_cross_attention\": true}", "dual_cross_attention", LH_ERR_CONFIG},
    {"{\"encoder_hid_dim_type\": \"text_proj\"}", "encoder_hid_dim_type", LH_ERR_CONFIG},
    {"{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}", "mid_block_type", LH_ERR_CONFIG},
    {"{\"_class_name\": \"UNet2DModel\"}", "_class_name", LH_ERR_CONFIG},
    {"{\"layers_per_block\": \"two\"}", "layers_per_block", LH_ERR_CONFIG},
    {"{\"layers_per_block\": [2, 2]}", "layers_per_block", LH_ERR_CONFIG},
    {"{\"block_out_channels\": [320, 640]}", "block_out_channels", LH_ERR_CONFIG},
    {"{\"norm_num_groups\": 7}", "norm_num_groups", LH_ERR_CONFIG},
    {"{\"attention_head_dim\": 7}", "attention_head_dim", LH_ERR_CONFIG},
    {"{\"down_block_types\": [\"CrossAttnDownBlock3D\"], \"up_block_types\": [\"UpBlock2D\"]}",
     "down_block_types", LH_ERR_CONFIG},
    {"{\"up_block_types\": [\"UpBlock2D\"]}", "up_block_types", LH_ERR_CONFIG},
    {"{\"cross_attention_dim\": [768, 768, 1024, 768]}", "cross_attention_dim", LH_ERR_CONFIG},
    {"{\"flip_sin_to_cos\": 1}", "flip_sin_to_cos", LH_ERR_CONFIG},
    {"[1, 2]", "JSON object", LH_ERR_FORMAT},
    {"{\"in_channels\": 4,", "not valid JSON", LH_ERR_FORMAT},
};
#define N_BAD_CONFIGS ((int)(sizeof BAD_CONFIGS / sizeof BAD_CONFIGS[0]))

START_TEST(test_config_refused) {
    lh_unet_config c;
    lh_error err = {0};
    lh_status st = lh_unet_config_parse(&c, BAD_CONFIGS[_i].json, "cfg.json", &err);
    ck_assert_msg(st == BAD_CONFIGS[_i].code, "%s: status %d (%s)", BAD_CONFIGS[_i].json, st,
                  err.msg);
    ck_assert_msg(strstr(err.msg, BAD_CONFIGS[_i].field) && strstr(err.msg, "cfg.json"),
                  "message \"%s\" lacks \"%s\"", err.msg, BAD_CONFIGS[_i].field);
}
END_TEST

/* ---- Load errors ---- */

START_TEST(test_load_missing_tensor) {
    const char *key = "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight";
    path_buf dir = make_dir("missing", "sd1_tiny", NULL, key, NULL, 0, NULL);
    expect_load_error(dir.s, LH_ERR_NOT_FOUND, key, "diffusion_pytorch_model.safetensors", NULL);
}
END_TEST

START_TEST(test_load_misshaped_tensor) {
    const int64_t shape[4] = {16, 8, 3, 3};
    const char *key = "up_blocks.1.resnets.2.conv1.weight"; /* needs [8, 16, 3, 3] */
    path_buf dir = make_dir("misshaped", "sd1_tiny", NULL, NULL, key, 4, shape);
    expect_load_error(dir.s, LH_ERR_SHAPE, key, "[16, 8, 3, 3]", "[8, 16, 3, 3]", NULL);
}
END_TEST

/* SD 2.x weights under an SD 1.x config: proj_in is a linear, not a 1x1 conv. */
START_TEST(test_load_wrong_layout) {
    path_buf dir = make_dir("layout", "sd2_tiny", "{\"use_linear_projection\": false}", NULL, NULL,
                            0, NULL);
    expect_load_error(dir.s, LH_ERR_SHAPE, "down_blocks.0.attentions.0.proj_in.weight",
                      "[16, 16]", "[16, 16, 1, 1]", NULL);
}
END_TEST

START_TEST(test_load_bad_config) {
    path_buf dir = make_dir("badcfg", "sd1_tiny", "{\"norm_num_groups\": 3}", NULL, NULL, 0, NULL);
    expect_load_error(dir.s, LH_ERR_CONFIG, "norm_num_groups", "config.json", NULL);
    dir = make_dir("sdxl", "sd1_tiny", "{\"addition_embed_type\": \"text_time\"}", NULL, NULL, 0,
                   NULL);
    expect_load_error(dir.s, LH_ERR_CONFIG, "addition_embed_type", "text_time", NULL);
}
END_TEST

START_TEST(test_load_no_dir) {
    expect_load_error(pathf("%s/no-such-unet", g_tmp).s, LH_ERR_IO, "config.json", NULL);
}
END_TEST

static Suite *unet_suite(void) {
    Suite *s = suite_create("unet");
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sd1_forward);
    tcase_add_test(tc, test_sd1_odd_size);
    tcase_add_test(tc, test_sd1_half);
    tcase_add_test(tc, test_half_storage);
    tcase_add_test(tc, test_sd2_forward);
    tcase_add_test(tc, test_sd2_odd_size);
    tcase_add_test(tc, test_sd1_time_options);
    tcase_add_test(tc, test_forward_bad_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("config");
    tcase_add_test(tc, test_config_fixtures);
    tcase_add_test(tc, test_config_defaults);
    tcase_add_test(tc, test_config_releases);
    tcase_add_loop_test(tc, test_config_refused, 0, N_BAD_CONFIGS);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_load_missing_tensor);
    tcase_add_test(tc, test_load_misshaped_tensor);
    tcase_add_test(tc, test_load_wrong_layout);
    tcase_add_test(tc, test_load_bad_config);
    tcase_add_test(tc, test_load_no_dir);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s/tests/unet-XXXXXX", build_dir());
    if (!mkdtemp(g_tmp)) {
        fprintf(stderr, "cannot create %s: %s\n", g_tmp, strerror(errno));
        return 1;
    }
    SRunner *sr = srunner_create(unet_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tree(g_tmp);
    return failed ? 1 : 0;
}
