/* CUDA parity, whole components: the text encoder, the U-Net, the VAE
 * decoder and encoder of the tiny SD 1.x test model, and a whole txt2img,
 * each on the cuda backend against the cpu backend on the same inputs.
 * fp32 components at 1e-5 relative (each is many ops deep, so the bound
 * is on the output's largest magnitude); the whole generation compares the
 * final latents at 1e-4 (20 scheduler steps feed rounding back) and the
 * decoded images within 1/255; the same with a LoRA, runtime and merged.
 * The U-Net's repeated calls run through a CUDA graph (recorded on the
 * second call of a shape): its outputs on new inputs, and that runtime
 * adapters switched on and off leave the graph as it was. Skips (77)
 * without the module or a device; run with CK_FORK=no. */
#include "cuda_parity.h"
#include "lorahost/adapters.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"
#include "clip.h"
#include "unet.h"
#include "vae.h"
#include "layers.h"
#include "lorahost/safetensors.h"

static lh_model *g_mc, *g_mg;
static lh_registry *g_reg;

static void open_models(void) {
    char path[1024];
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny", src ? src : "../..");
    lh_error err = {0};
    ck_assert_msg(lh_model_open(&g_mc, g_cpu, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_model_open(&g_mg, g_gpu, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_registry_create(&g_reg, &err) == LH_OK &&
                      lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
}

static void close_models(void) {
    lh_model_close(g_mg);
    lh_model_close(g_mc);
    lh_registry_destroy(g_reg);
    g_mc = g_mg = NULL;
    g_reg = NULL;
}

START_TEST(test_text_encoder) {
    open_models();
    enum { B = 2, N = 77 };
    int32_t ids[B * N];
    /* ids below the tiny model's vocabulary (1000): a start, words, padding */
    for (int i = 0; i < B * N; i++) ids[i] = i % N == 0 ? 998 : i % N < 9 ? 3 + (37 * i) % 900 : 999;
    int64_t d = lh_clip_hidden_size(g_mc->clip), n = (int64_t)B * N * d;
    for (int skip = 0; skip < 2; skip++) {
        float *oc = on(g_cpu, NULL, n), *og = on(g_gpu, NULL, n);
        lh_error err = {0};
        ck_assert_msg(lh_clip_encode(g_mc->clip, oc, ids, B, N, skip, &err) == LH_OK, "%s",
                      err.msg);
        ck_assert_msg(lh_clip_encode(g_mg->clip, og, ids, B, N, skip, &err) == LH_OK, "%s",
                      err.msg);
        expect_close_dev(skip ? "text encoder (clip_skip 1)" : "text encoder", og, oc, n,
                         TOL_F32);
        g_cpu->ops->free(g_cpu, oc);
        g_gpu->ops->free(g_gpu, og);
    }
    close_models();
}
END_TEST

static const char *f16_copy(char *dir, size_t size, const char *component, const char *file);

/* An F16 text encoder on the device: its linear weights held in F16 from
 * loading on, widened op by op; the cpu widened the same values at upload,
 * so the encoding and its backward (d_emb) are the cpu's. */
START_TEST(test_text_encoder_f16_file) {
    char dir[1100];
    f16_copy(dir, sizeof dir, "text_encoder", "model.safetensors");
    lh_error err = {0};
    lh_clip *cc = NULL, *cg = NULL;
    ck_assert_msg(lh_clip_load(&cc, g_cpu, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_clip_load(&cg, g_gpu, dir, &err) == LH_OK, "%s", err.msg);
    float *w, *bias;
    lh_clip_linear(cg, 0, 4, &w, &bias);
    ck_assert_int_eq(lh_clip_weight_type(cg, w), LH_DTYPE_F16);
    lh_clip_linear(cc, 0, 4, &w, &bias);
    ck_assert_int_eq(lh_clip_weight_type(cc, w), LH_DTYPE_F32);
    enum { B = 2, N = 77 };
    int32_t ids[B * N];
    for (int i = 0; i < B * N; i++) ids[i] = i % N == 0 ? 998 : i % N < 9 ? 3 + (37 * i) % 900 : 999;
    int64_t n = (int64_t)B * N * lh_clip_hidden_size(cc);
    float *dh = rand_host(n, 77, -1, 1);
    float *oc = on(g_cpu, NULL, n), *og = on(g_gpu, NULL, n), *dc = on(g_cpu, dh, n),
          *dg = on(g_gpu, dh, n), *ec = on(g_cpu, NULL, n), *eg = on(g_gpu, NULL, n);
    ck_assert_msg(lh_clip_encode(cc, oc, ids, B, N, 0, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_clip_encode(cg, og, ids, B, N, 0, &err) == LH_OK, "%s", err.msg);
    expect_close_dev("text encoder, F16 file held in F16", og, oc, n, TOL_F32);
    ck_assert_msg(lh_clip_encode_backward(cc, NULL, ec, dc, ids, B, N, 0, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_msg(lh_clip_encode_backward(cg, NULL, eg, dg, ids, B, N, 0, &err) == LH_OK, "%s",
                  err.msg);
    expect_close_dev("text encoder backward d_emb, F16 file held in F16", eg, ec, n, TOL_F32);
    float *bc[] = {oc, dc, ec}, *bg[] = {og, dg, eg};
    for (int i = 0; i < 3; i++) {
        g_cpu->ops->free(g_cpu, bc[i]);
        g_gpu->ops->free(g_gpu, bg[i]);
    }
    free(dh);
    lh_clip_free(cc);
    lh_clip_free(cg);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_unet) {
    open_models();
    const lh_unet_config *cfg = lh_unet_get_config(g_mc->unet);
    int64_t b = 2, h = 16, w = 16, n_ctx = 77, dctx = cfg->cross_attention_dim;
    int64_t nx = b * cfg->in_channels * h * w, no = b * cfg->out_channels * h * w,
            nc = b * n_ctx * dctx;
    float *x = rand_host(nx, 1, -2, 2), *ctx = rand_host(nc, 2, -1, 1);
    const float ts[2] = {999, 1};
    float *xc = on(g_cpu, x, nx), *xg = on(g_gpu, x, nx), *cc = on(g_cpu, ctx, nc),
          *cg = on(g_gpu, ctx, nc), *oc = on(g_cpu, NULL, no), *og = on(g_gpu, NULL, no);
    lh_error err = {0};
    ck_assert_msg(lh_unet_forward(g_mc->unet, oc, xc, ts, cc, b, h, w, n_ctx, &err) == LH_OK,
                  "%s", err.msg);
    ck_assert_msg(lh_unet_forward(g_mg->unet, og, xg, ts, cg, b, h, w, n_ctx, &err) == LH_OK,
                  "%s", err.msg);
    expect_close_dev("U-Net forward 2x4x16x16, 77 tokens", og, oc, no, TOL_F32);
    /* later calls of the same shape: the second records a graph, the rest
     * launch it, each on new inputs (the timestep table, x and context
     * change; out is another buffer each time) */
    for (int k = 0; k < 3; k++) {
        float *x2 = rand_host(nx, 10 + (uint64_t)k, -2, 2), *c2 = rand_host(nc, 20 + (uint64_t)k, -1, 1);
        const float ts2[2] = {(float)(100 * k + 7), (float)(900 - 250 * k)};
        float *x2c = on(g_cpu, x2, nx), *x2g = on(g_gpu, x2, nx), *c2c = on(g_cpu, c2, nc),
              *c2g = on(g_gpu, c2, nc), *o2c = on(g_cpu, NULL, no), *o2g = on(g_gpu, NULL, no);
        ck_assert_msg(lh_unet_forward(g_mc->unet, o2c, x2c, ts2, c2c, b, h, w, n_ctx, &err) ==
                          LH_OK, "%s", err.msg);
        ck_assert_msg(lh_unet_forward(g_mg->unet, o2g, x2g, ts2, c2g, b, h, w, n_ctx, &err) ==
                          LH_OK, "%s", err.msg);
        char what[64];
        snprintf(what, sizeof what, "U-Net forward, call %d of the shape", k + 2);
        expect_close_dev(what, o2g, o2c, no, TOL_F32);
        float *bc[] = {x2c, c2c, o2c}, *bg[] = {x2g, c2g, o2g};
        for (int i = 0; i < 3; i++) {
            g_cpu->ops->free(g_cpu, bc[i]);
            g_gpu->ops->free(g_gpu, bg[i]);
        }
        free(x2);
        free(c2);
    }
    /* a backend with graphs recorded one (state 2) */
    if (parity_graphs())
        PARITY_EXPECT(g_mg->unet->graph.state == 2 && g_mg->unet->graph.graph,
                      "U-Net forward: no graph after 4 calls (state %d)",
                      g_mg->unet->graph.state);
    /* half-precision inference (lh_unet_set_precision): fp16, then bf16 on
     * fresh weights (fp16 rounded them) */
    static const lh_dtype half[2] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        if (k) {
            close_models();
            open_models();
        }
        ck_assert_msg(lh_unet_set_precision(g_mc->unet, half[k], &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_unet_set_precision(g_mg->unet, half[k], &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_unet_forward(g_mc->unet, oc, xc, ts, cc, b, h, w, n_ctx, &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_msg(lh_unet_forward(g_mg->unet, og, xg, ts, cg, b, h, w, n_ctx, &err) == LH_OK,
                      "%s", err.msg);
        char what[96];
        snprintf(what, sizeof what, "U-Net forward %s activations", lh_dtype_name(half[k]));
        expect_close_dev(what, og, oc, no, TOL_MODEL(half[k]));
        /* the next call of the shape records a graph; where the recording
         * fails (the poison device can make it) the call runs op by op, on
         * its own context, not the one the last call left rounded */
        int fail = !strcmp(g_gpu->ops->name, "poison");
        if (fail) setenv("LH_FAKE_GRAPH_FAIL", "1", 1);
        float *c3 = rand_host(nc, 30 + (uint64_t)k, -4, 4);
        float *c3c = on(g_cpu, c3, nc), *c3g = on(g_gpu, c3, nc);
        ck_assert_msg(lh_unet_forward(g_mc->unet, oc, xc, ts, c3c, b, h, w, n_ctx, &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_msg(lh_unet_forward(g_mg->unet, og, xg, ts, c3g, b, h, w, n_ctx, &err) == LH_OK,
                      "%s", err.msg);
        if (fail) unsetenv("LH_FAKE_GRAPH_FAIL");
        snprintf(what, sizeof what, "U-Net forward %s activations, new context%s",
                 lh_dtype_name(half[k]), fail ? ", recording failed" : "");
        expect_close_dev(what, og, oc, no, TOL_MODEL(half[k]));
        g_cpu->ops->free(g_cpu, c3c);
        g_gpu->ops->free(g_gpu, c3g);
        free(c3);
    }
    float *bufs_c[] = {xc, cc, oc}, *bufs_g[] = {xg, cg, og};
    for (int i = 0; i < 3; i++) {
        g_cpu->ops->free(g_cpu, bufs_c[i]);
        g_gpu->ops->free(g_gpu, bufs_g[i]);
    }
    free(x);
    free(ctx);
    close_models();
}
END_TEST

/* A component of the tiny model (`component`, its weights in `file`) with
 * every tensor in F16 (as most SD checkpoints ship), in a new directory
 * under the build tree; its path. */
static const char *f16_copy(char *dir, size_t size, const char *component, const char *file) {
    const char *src = getenv("LH_SOURCE_DIR"), *bld = getenv("LH_BUILD_DIR");
    snprintf(dir, size, "%s/tests/%s-f16-XXXXXX", bld ? bld : "..", component);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char from[1024], to[1200], cmd[2600];
    snprintf(from, sizeof from, "%s/tests/fixtures/models/sd1_tiny/%s", src ? src : "../..",
             component);
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", from, dir);
    ck_assert_int_eq(system(cmd), 0);
    lh_error err = {0};
    lh_st_file *f = NULL;
    snprintf(to, sizeof to, "%s/%s", from, file);
    ck_assert_msg(lh_st_open(&f, to, &err) == LH_OK, "%s", err.msg);
    lh_st_writer *wr = NULL;
    ck_assert_int_eq(lh_st_writer_create(&wr, &err), LH_OK);
    uint16_t **bufs = calloc(lh_st_count(f), sizeof *bufs); /* borrowed until the save */
    ck_assert_ptr_nonnull(bufs);
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        ck_assert(t->dtype == LH_DTYPE_F32 || t->dtype == LH_DTYPE_F16);
        uint16_t *h = bufs[i] = malloc((size_t)t->numel * 2 + 2);
        ck_assert_ptr_nonnull(h);
        for (int64_t j = 0; j < t->numel; j++) {
            float v;
            if (t->dtype == LH_DTYPE_F16)
                memcpy(&h[j], (const char *)t->data + 2 * j, 2);
            else {
                memcpy(&v, (const char *)t->data + 4 * j, 4);
                h[j] = lh_f32_to_f16(v);
            }
        }
        ck_assert_int_eq(lh_st_writer_add(wr, t->name, LH_DTYPE_F16, t->ndim, t->shape, h, &err),
                         LH_OK);
    }
    snprintf(to, sizeof to, "%s/%s", dir, file);
    ck_assert_msg(lh_st_save(wr, to, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(wr);
    for (size_t i = 0; i < lh_st_count(f); i++) free(bufs[i]);
    free(bufs);
    lh_st_close(f);
    return dir;
}

/* An F16 file on the device: its matrices are held in F16 from loading on
 * (no float32 copy), widened op by op; float32 activations give the cpu's
 * numbers (which widened the same values at upload), bf16 rounds them
 * again from there, and float32 storage can be asked for afterwards. */
START_TEST(test_unet_f16_file) {
    char dir[1100];
    f16_copy(dir, sizeof dir, "unet", "diffusion_pytorch_model.safetensors");
    lh_error err = {0};
    lh_unet *uc = NULL, *ug = NULL;
    ck_assert_msg(lh_unet_load(&uc, g_cpu, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_unet_load(&ug, g_gpu, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(uc->weight_storage, LH_DTYPE_F32);
    ck_assert_int_eq(ug->weight_storage, LH_DTYPE_F16);
    size_t f32_bytes = uc->ws.bytes;
    ck_assert_msg(ug->ws.bytes < f32_bytes * 52 / 100, "held in F16: %zu bytes of %zu",
                  ug->ws.bytes, f32_bytes);
    const lh_unet_config *cfg = lh_unet_get_config(uc);
    int64_t b = 2, h = 16, w = 16, n_ctx = 77;
    int64_t nx = b * cfg->in_channels * h * w, no = b * cfg->out_channels * h * w,
            nc = b * n_ctx * cfg->cross_attention_dim;
    float *x = rand_host(nx, 41, -2, 2), *ctx = rand_host(nc, 42, -1, 1);
    const float ts[2] = {801, 17};
    float *xc = on(g_cpu, x, nx), *xg = on(g_gpu, x, nx), *cc = on(g_cpu, ctx, nc),
          *cg = on(g_gpu, ctx, nc), *oc = on(g_cpu, NULL, no), *og = on(g_gpu, NULL, no);
    static const struct {
        lh_dtype prec;
        int keep_f32;
        const char *what;
    } steps[] = {{LH_DTYPE_F32, 0, "U-Net forward, F16 file held in F16, F32 activations"},
                 {LH_DTYPE_F32, 0, "U-Net forward, F16 file held in F16, again (graph)"},
                 {LH_DTYPE_BF16, 0, "U-Net forward, F16 file rounded to BF16"},
                 {LH_DTYPE_BF16, 1, "U-Net forward, BF16 weights held in float32"}};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        if (steps[k].keep_f32) {
            ck_assert_int_eq(lh_unet_keep_f32_weights(ug, 1, &err), LH_OK);
            ck_assert_int_eq(ug->weight_storage, LH_DTYPE_F32);
            ck_assert_uint_eq(ug->ws.bytes, f32_bytes);
        }
        ck_assert_msg(lh_unet_set_precision(uc, steps[k].prec, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_unet_set_precision(ug, steps[k].prec, &err) == LH_OK, "%s", err.msg);
        if (steps[k].prec == LH_DTYPE_BF16 && !steps[k].keep_f32)
            ck_assert_int_eq(ug->weight_storage, LH_DTYPE_BF16);
        ck_assert_msg(lh_unet_forward(uc, oc, xc, ts, cc, b, h, w, n_ctx, &err) == LH_OK, "%s",
                      err.msg);
        ck_assert_msg(lh_unet_forward(ug, og, xg, ts, cg, b, h, w, n_ctx, &err) == LH_OK, "%s",
                      err.msg);
        expect_close_dev(steps[k].what, og, oc, no, TOL_MODEL(steps[k].prec));
    }
    float *bc[] = {xc, cc, oc}, *bg[] = {xg, cg, og};
    for (int i = 0; i < 3; i++) {
        g_cpu->ops->free(g_cpu, bc[i]);
        g_gpu->ops->free(g_gpu, bg[i]);
    }
    free(x);
    free(ctx);
    lh_unet_free(uc);
    lh_unet_free(ug);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_vae) {
    open_models();
    int64_t b = 1, lh = 8, lw = 8, nl = b * 4 * lh * lw, ni = b * 3 * lh * 8 * lw * 8;
    float *lat = rand_host(nl, 3, -3, 3);
    float *lc = on(g_cpu, lat, nl), *lg = on(g_gpu, lat, nl), *ic = on(g_cpu, NULL, ni),
          *ig = on(g_gpu, NULL, ni);
    lh_error err = {0};
    ck_assert_msg(lh_vae_decode(g_mc->vae, ic, lc, b, lh, lw, 0, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_vae_decode(g_mg->vae, ig, lg, b, lh, lw, 0, &err) == LH_OK, "%s", err.msg);
    expect_close_dev("VAE decode 8x8 latents", ig, ic, ni, TOL_F32);
    /* half-precision decodes (model.vae_dtype), then float32 activations on
     * the bf16-rounded weights */
    static const lh_dtype half[3] = {LH_DTYPE_F16, LH_DTYPE_BF16, LH_DTYPE_F32};
    for (int k = 0; k < 3; k++) {
        lh_dtype dt = half[k];
        if (k == 1) { /* the weights take one half type: fresh ones */
            close_models();
            open_models();
        }
        ck_assert_msg(lh_vae_set_precision(g_mc->vae, dt, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_vae_set_precision(g_mg->vae, dt, &err) == LH_OK, "%s", err.msg);
        /* a device with conv2d_hw holds the convolution weights in the half
         * type (and keeps them so for float32 activations, widened op by op) */
        size_t bc = lh_vae_weight_bytes(g_mc->vae), bg = lh_vae_weight_bytes(g_mg->vae);
        printf("VAE weights %s: %zu bytes on the device, %zu on the cpu\n", lh_dtype_name(dt), bg,
               bc);
        if (g_gpu->ops->conv2d_hw)
            ck_assert_msg(bg < bc * 3 / 4, "VAE %s: %zu bytes, cpu %zu", lh_dtype_name(dt), bg, bc);
        ck_assert_msg(lh_vae_decode(g_mc->vae, ic, lc, b, lh, lw, 0, &err) == LH_OK, "%s",
                      err.msg);
        ck_assert_msg(lh_vae_decode(g_mg->vae, ig, lg, b, lh, lw, 0, &err) == LH_OK, "%s",
                      err.msg);
        char what[64];
        snprintf(what, sizeof what, "VAE decode %s activations", lh_dtype_name(dt));
        expect_close_dev(what, ig, ic, ni, TOL_MODEL(dt));
    }
    /* the encoder on the decoded image */
    float *mc = on(g_cpu, NULL, nl), *mg = on(g_gpu, NULL, nl), *vc = on(g_cpu, NULL, nl),
          *vg = on(g_gpu, NULL, nl);
    ck_assert_msg(lh_vae_encode(g_mc->vae, mc, vc, ic, b, lh * 8, lw * 8, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_msg(lh_vae_encode(g_mg->vae, mg, vg, ig, b, lh * 8, lw * 8,
                                &err) == LH_OK,
                  "%s", err.msg);
    expect_close_dev("VAE encode mean", mg, mc, nl, TOL_F32);
    expect_close_dev("VAE encode logvar", vg, vc, nl, TOL_F32);
    float *bufs_c[] = {lc, ic, mc, vc}, *bufs_g[] = {lg, ig, mg, vg};
    for (int i = 0; i < 4; i++) {
        g_cpu->ops->free(g_cpu, bufs_c[i]);
        g_gpu->ops->free(g_gpu, bufs_g[i]);
    }
    free(lat);
    close_models();
}
END_TEST

/* An F16 VAE file on the device: its convolution weights held in F16 from
 * loading on (widened op by op for float32 activations: the cpu's
 * numbers, which widened the same values at upload), then F16 activations
 * with them as they are. */
START_TEST(test_vae_f16_file) {
    char dir[1100];
    f16_copy(dir, sizeof dir, "vae", "diffusion_pytorch_model.safetensors");
    lh_error err = {0};
    lh_vae *vc = NULL, *vg = NULL;
    ck_assert_msg(lh_vae_load(&vc, g_cpu, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_vae_load(&vg, g_gpu, dir, &err) == LH_OK, "%s", err.msg);
    size_t bc = lh_vae_weight_bytes(vc), bg = lh_vae_weight_bytes(vg);
    printf("VAE F16 file: %zu bytes of weights on the device, %zu on the cpu\n", bg, bc);
    ck_assert_msg(bg < bc * 3 / 4, "F16 file held in F16: %zu bytes, cpu %zu", bg, bc);
    int64_t b = 1, lh = 8, lw = 8, nl = b * 4 * lh * lw, ni = b * 3 * lh * 8 * lw * 8;
    float *lat = rand_host(nl, 5, -3, 3);
    float *lc = on(g_cpu, lat, nl), *lg = on(g_gpu, lat, nl), *ic = on(g_cpu, NULL, ni),
          *ig = on(g_gpu, NULL, ni);
    for (int k = 0; k < 2; k++) {
        lh_dtype dt = k ? LH_DTYPE_F16 : LH_DTYPE_F32;
        ck_assert_msg(lh_vae_set_precision(vc, dt, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_vae_set_precision(vg, dt, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_vae_decode(vc, ic, lc, b, lh, lw, 0, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_vae_decode(vg, ig, lg, b, lh, lw, 0, &err) == LH_OK, "%s", err.msg);
        expect_close_dev(k ? "VAE decode, F16 file held in F16, F16 activations"
                           : "VAE decode, F16 file held in F16, F32 activations",
                         ig, ic, ni, k ? TOL_HALF : TOL_F32);
    }
    float *bc_[] = {lc, ic}, *bg_[] = {lg, ig};
    for (int i = 0; i < 2; i++) {
        g_cpu->ops->free(g_cpu, bc_[i]);
        g_gpu->ops->free(g_gpu, bg_[i]);
    }
    free(lat);
    lh_vae_free(vc);
    lh_vae_free(vg);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A whole txt2img (tokenizer, text encoder, 20 U-Net steps with CFG, the
 * scheduler plugin, the VAE) on each backend. */
START_TEST(test_txt2img) {
    open_models();
    static const char *const SCHED[] = {"ddim", "euler_ancestral"};
    for (int k = 0; k < 2; k++) {
        lh_gen_params p;
        lh_gen_params_init(&p);
        p.prompt = "a red cube on a table";
        p.steps = 20;
        p.width = p.height = 64;
        p.seed = 42;
        p.scheduler = SCHED[k];
        lh_gen_result rc, rg;
        lh_error err = {0};
        ck_assert_msg(lh_pipeline_txt2img(g_mc, g_reg, &p, &rc, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_pipeline_txt2img(g_mg, g_reg, &p, &rg, &err) == LH_OK, "%s", err.msg);
        int64_t nl = rc.batch * rc.channels * rc.latent_h * rc.latent_w;
        char what[96];
        snprintf(what, sizeof what, "txt2img latents, 20 steps %s", SCHED[k]);
        expect_close(what, rg.latents, rc.latents, nl, 1e-4);
        int worst = 0;
        for (int64_t i = 0; i < rc.width * rc.height * 3; i++) {
            int d = abs((int)rg.images[i] - (int)rc.images[i]);
            if (d > worst) worst = d;
        }
        printf("%-48s worst pixel difference %d / 255\n", what, worst);
        PARITY_EXPECT(worst <= 1, "%s: pixels differ by %d", what, worst);
        lh_gen_result_free(&rc);
        lh_gen_result_free(&rg);
    }
    close_models();
}
END_TEST

/* One 64x64 ddim txt2img on each model; the latents compared at tol. */
static void txt2img_tol(const char *what, int steps, uint64_t seed, double tol) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "a red cube on a table";
    p.steps = steps;
    p.width = p.height = 64;
    p.seed = seed;
    p.scheduler = "ddim";
    lh_gen_result rc, rg;
    lh_error err = {0};
    ck_assert_msg(lh_pipeline_txt2img(g_mc, g_reg, &p, &rc, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_pipeline_txt2img(g_mg, g_reg, &p, &rg, &err) == LH_OK, "%s", err.msg);
    expect_close(what, rg.latents, rc.latents, rc.batch * rc.channels * rc.latent_h * rc.latent_w,
                 tol);
    lh_gen_result_free(&rc);
    lh_gen_result_free(&rg);
}

static void txt2img_both(const char *what, int steps, uint64_t seed) {
    txt2img_tol(what, steps, seed, 1e-4);
}

/* The raw bytes (in its storage type) of U-Net layer `name` on the device model. */
static void *layer_bytes(const char *name, size_t *bytes) {
    const lh_layers *t = g_mg->unet->adapt;
    ck_assert_ptr_nonnull(t);
    int64_t i = lh_layers_find(t, LH_LAYER_UNET, name);
    ck_assert_msg(i >= 0, "no layer %s", name);
    const lh_layer *l = &t->v[i];
    *bytes = lh_layer_numel(l) * (l->wdt == LH_DTYPE_F32 ? 4 : 2);
    void *h = malloc(*bytes);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(g_gpu->ops->download(g_gpu, h, l->w, *bytes), LH_OK);
    return h;
}

/* A LoRA (kohya file of the test fixtures) at scale 0.8, in runtime and
 * in merged mode, through a whole txt2img on each backend. */
START_TEST(test_txt2img_lora) {
    open_models();
    char path[1024];
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/adapters/sd1_A_kohya.safetensors",
             src ? src : "../..");
    lh_adapter *ac = NULL, *ag = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_adapter_load(&ac, g_mc, g_reg, path, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_adapter_load(&ag, g_mg, g_reg, path, NULL, &err) == LH_OK, "%s", err.msg);
    /* the fixture's text encoder is an F16 file, which the device holds in
     * F16: a LoRA merged there is stored rounded to it. In float32 storage
     * both backends add it in float32 */
    ck_assert_msg(lh_model_set_weight_storage(g_mc, "f32", &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_model_set_weight_storage(g_mg, "f32", &err) == LH_OK, "%s", err.msg);
    for (int merged = 0; merged < 2; merged++) {
        lh_adapter_weights w;
        lh_adapter_weights_init(&w, 0.8);
        lh_adapter_mode mode = merged ? LH_ADAPTER_MERGED : LH_ADAPTER_RUNTIME;
        ck_assert_msg(lh_adapter_set_ex(g_mc, &ac, &w, 1, mode, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_adapter_set_ex(g_mg, &ag, &w, 1, mode, &err) == LH_OK, "%s", err.msg);
        txt2img_both(merged ? "txt2img latents, LoRA merged" : "txt2img latents, LoRA runtime",
                     10, 7);
    }
    /* the merged run recorded the U-Net's graph; runtime adapters run op by
     * op beside it, and once they are gone the same graph serves again */
    int graphs = parity_graphs();
    void *graph = g_mg->unet->graph.graph;
    if (graphs) PARITY_EXPECT(graph != NULL, "txt2img with a merged LoRA: no U-Net graph");
    for (int on_ = 1; on_ >= 0; on_--) {
        lh_adapter_weights w;
        lh_adapter_weights_init(&w, 0.5);
        ck_assert_msg(lh_adapter_set_ex(g_mc, &ac, &w, on_, LH_ADAPTER_RUNTIME, &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_msg(lh_adapter_set_ex(g_mg, &ag, &w, on_, LH_ADAPTER_RUNTIME, &err) == LH_OK,
                      "%s", err.msg);
        txt2img_both(on_ ? "txt2img latents, LoRA runtime 0.5" : "txt2img latents, LoRA removed",
                     4, 8);
        if (graphs)
            PARITY_EXPECT(g_mg->unet->graph.graph == graph,
                          "the U-Net graph was recorded again (LoRA %s)", on_ ? "on" : "off");
    }
    /* fp16 with the LoRA on at run time: the U-Net's weights go to half
     * storage under it (the layer table follows them), then the LoRA merged
     * into the half weights and taken out again, restoring their bits */
    lh_adapter_weights w;
    lh_adapter_weights_init(&w, 0.8);
    ck_assert_msg(lh_adapter_set_ex(g_mc, &ac, &w, 1, LH_ADAPTER_RUNTIME, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_msg(lh_adapter_set_ex(g_mg, &ag, &w, 1, LH_ADAPTER_RUNTIME, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_msg(lh_model_set_weight_storage(g_mc, "auto", &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_model_set_weight_storage(g_mg, "auto", &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_unet_set_precision(g_mc->unet, LH_DTYPE_F16, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_unet_set_precision(g_mg->unet, LH_DTYPE_F16, &err) == LH_OK, "%s", err.msg);
    const lh_layers *t = g_mg->unet->adapt;
    int64_t ci = lh_layers_find(t, LH_LAYER_UNET, "conv_in");
    ck_assert(ci >= 0);
    ck_assert_int_eq(g_mg->unet->weight_storage, LH_DTYPE_F16);
    ck_assert_msg(t->v[ci].w == g_mg->unet->conv_in_w && t->v[ci].wdt == LH_DTYPE_F16,
                  "the layer table does not follow the U-Net's half storage");
    const char *probe = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    size_t nb0, nb1;
    void *before = layer_bytes(probe, &nb0);
    txt2img_tol("txt2img latents fp16, half weights, LoRA runtime", 4, 9, TOL_HALF);
    ck_assert_msg(lh_adapter_set_ex(g_mc, &ac, &w, 1, LH_ADAPTER_MERGED, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_msg(lh_adapter_set_ex(g_mg, &ag, &w, 1, LH_ADAPTER_MERGED, &err) == LH_OK, "%s",
                  err.msg);
    void *merged = layer_bytes(probe, &nb1);
    ck_assert_msg(nb0 == nb1 && memcmp(before, merged, nb0), "the merge left %s unchanged",
                  probe);
    txt2img_tol("txt2img latents fp16, half weights, LoRA merged", 4, 9, TOL_HALF);
    ck_assert_msg(lh_adapter_set(g_mc, NULL, NULL, 0, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_adapter_set(g_mg, NULL, NULL, 0, &err) == LH_OK, "%s", err.msg);
    void *after = layer_bytes(probe, &nb1);
    PARITY_EXPECT(nb0 == nb1 && !memcmp(before, after, nb0),
                  "taking the merged LoRA out did not restore %s's half weights", probe);
    free(before);
    free(merged);
    free(after);
    lh_adapter_unload(ac);
    lh_adapter_unload(ag);
    close_models();
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_parity_model");
    TCase *tc = tcase_create("sd1_tiny");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_text_encoder);
    tcase_add_test(tc, test_text_encoder_f16_file);
    tcase_add_test(tc, test_unet);
    tcase_add_test(tc, test_unet_f16_file);
    tcase_add_test(tc, test_vae);
    tcase_add_test(tc, test_vae_f16_file);
    tcase_add_test(tc, test_txt2img);
    tcase_add_test(tc, test_txt2img_lora);
    suite_add_tcase(s, tc);
    return parity_run(s);
}
