/* VAE suite: lorahost's AutoencoderKL (tiny SD-layout model from
 * tests/golden/models_vae.py) matches diffusers for encode (mean, clamped
 * logvar), posterior sampling, whole and tiled decode and a model without
 * mid-block attention; deprecated attention key names load; tiled decoding
 * needs the same backend memory whatever the image size; bad files, configs
 * and arguments fail with messages that name the tensor, field or size.
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "vae.h"

#define TOL 1e-4 /* relative L2, float32 against diffusers float32 */

static lh_backend *g_be;
static lh_st_file *g_ref;
static char g_src[4096];
static char g_dir[4200]; /* the fixture vae/ directory */
static char g_tmp[64];   /* a scratch directory per test */

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    snprintf(g_dir, sizeof g_dir, "%s/tests/fixtures/models/sd1_tiny/vae", g_src);
    char path[4300], msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "cpu backend: %s",
                  msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/models/vae_reference.safetensors", g_src);
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&g_ref, path, &err) == LH_OK, "%s", err.msg);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_test_vae_XXXXXX");
    ck_assert(mkdtemp(g_tmp) != NULL);
}

static void teardown(void) {
    char path[128];
    const char *names[] = {"config.json", "diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", g_tmp, names[i]);
        unlink(path);
    }
    rmdir(g_tmp);
    lh_st_close(g_ref);
    lh_backend_destroy(g_be);
}

/* ---- Helpers ---- */

/* A fixture tensor: host copy, and its shape in *shape (4-D). */
static float *ref(const char *name, int64_t *shape) {
    const lh_st_tensor *t = lh_st_find(g_ref, name);
    ck_assert_msg(t != NULL && t->ndim == 4, "fixture tensor %s", name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    lh_error err = {0};
    ck_assert(v);
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, g_ref, name, &err) == LH_OK, "%s", err.msg);
    if (shape) memcpy(shape, t->shape, 4 * sizeof *shape);
    return v;
}

static size_t numel(const int64_t *s) { return (size_t)(s[0] * s[1] * s[2] * s[3]); }

static float *dev_alloc(size_t n) {
    float *p = g_be->ops->alloc(g_be, n * sizeof(float));
    ck_assert(p);
    return p;
}

static float *upload(const float *host, size_t n) {
    float *p = dev_alloc(n);
    ck_assert_int_eq(g_be->ops->upload(g_be, p, host, n * sizeof(float)), LH_OK);
    return p;
}

static float *download(const float *dev, size_t n) {
    float *h = malloc(n * sizeof *h);
    ck_assert(h);
    ck_assert_int_eq(g_be->ops->download(g_be, h, dev, n * sizeof(float)), LH_OK);
    return h;
}

static double rel_l2(const float *got, const float *want, size_t n, size_t stride, size_t run) {
    /* Elements [k * stride, k * stride + run) for every k; stride == run: all. */
    double num = 0, den = 0;
    for (size_t base = 0; base < n; base += stride)
        for (size_t i = base; i < base + run && i < n; i++) {
            double d = (double)got[i] - want[i];
            num += d * d;
            den += (double)want[i] * want[i];
        }
    return sqrt(num / den);
}

static lh_vae *load_fixture(void) {
    lh_vae *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_vae_load(&m, g_be, g_dir, &err) == LH_OK, "%s", err.msg);
    return m;
}

/* Decode fixture latents `in` and compare with fixture image `want`. */
static double decode_vs(lh_vae *m, const char *in, const char *want, int tiled) {
    int64_t ls[4], is[4];
    float *lat = ref(in, ls), *img_ref = ref(want, is);
    int64_t ds = lh_vae_downscale(m);
    ck_assert(is[2] == ls[2] * ds && is[3] == ls[3] * ds);
    float *d_lat = upload(lat, numel(ls)), *d_img = dev_alloc(numel(is));
    lh_error err = {0};
    ck_assert_msg(lh_vae_decode(m, d_img, d_lat, ls[0], ls[2], ls[3], tiled, &err) == LH_OK, "%s",
                  err.msg);
    float *img = download(d_img, numel(is));
    double e = rel_l2(img, img_ref, numel(is), numel(is), numel(is));
    for (size_t i = 0; i < numel(is); i++) ck_assert(isfinite(img[i]));
    g_be->ops->free(g_be, d_lat);
    g_be->ops->free(g_be, d_img);
    free(lat);
    free(img_ref);
    free(img);
    return e;
}

/* Copy the fixture config to g_tmp/config.json with `key` set to `value`
 * (stolen; NULL removes the key). Returns the path. */
static const char *config_with(const char *key, json_t *value) {
    static char path[128];
    char src[4300];
    snprintf(src, sizeof src, "%s/config.json", g_dir);
    json_error_t je;
    json_t *root = json_load_file(src, 0, &je);
    ck_assert_msg(root != NULL, "%s: %s", src, je.text);
    if (key && value) json_object_set_new(root, key, value);
    else if (key) json_object_del(root, key);
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    ck_assert_int_eq(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
    return path;
}

/* Edits for a copy of the fixture weights. */
typedef struct weights_edit {
    const char *drop;    /* leave this tensor out */
    const char *reshape; /* give this tensor `shape` (zeros) */
    int ndim;
    int64_t shape[4];
    int deprecated_attn; /* to_q/to_k/to_v/to_out.0 -> query/key/value/proj_attn */
} weights_edit;

/* Write the edited weights to g_tmp/diffusion_pytorch_model.safetensors. */
static void write_weights(const weights_edit *e) {
    static const char *const NEW[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const OLD[] = {".query.", ".key.", ".value.", ".proj_attn."};
    char src[4300], dst[128];
    snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", g_dir);
    snprintf(dst, sizeof dst, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    lh_error err = {0};
    lh_st_file *f = NULL;
    lh_st_writer *w = NULL;
    ck_assert_msg(lh_st_open(&f, src, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    static float zeros[4096];
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        if (e->drop && strcmp(t->name, e->drop) == 0) continue;
        char name[512];
        snprintf(name, sizeof name, "%s", t->name);
        for (int k = 0; e->deprecated_attn && k < 4; k++) {
            char *at = strstr(name, NEW[k]);
            if (!at || !strstr(name, ".attentions.0.")) continue;
            char tail[512];
            snprintf(tail, sizeof tail, "%s", at + strlen(NEW[k]));
            snprintf(at, sizeof name - (size_t)(at - name), "%s%s", OLD[k], tail);
        }
        if (e->reshape && strcmp(t->name, e->reshape) == 0) {
            ck_assert_int_eq(
                lh_st_writer_add(w, name, LH_DTYPE_F32, e->ndim, e->shape, zeros, &err), LH_OK);
            continue;
        }
        ck_assert_msg(lh_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &err) ==
                          LH_OK,
                      "%s", err.msg);
    }
    ck_assert_msg(lh_st_save(w, dst, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    lh_st_close(f);
}

/* Load g_tmp (config and edited weights); returns the status, model in *out. */
static lh_status load_tmp(lh_vae **out, const weights_edit *e, lh_error *err) {
    config_with(NULL, NULL);
    write_weights(e);
    return lh_vae_load(out, g_be, g_tmp, err);
}

/* ---- Forward against diffusers ---- */

START_TEST(test_config) {
    lh_vae *m = load_fixture();
    const lh_vae_config *c = lh_vae_get_config(m);
    ck_assert_int_eq(c->n_blocks, 4);
    ck_assert_int_eq(c->block_out_channels[0], 8);
    ck_assert_int_eq(c->block_out_channels[3], 16);
    ck_assert_int_eq(c->latent_channels, 4);
    ck_assert_int_eq(c->layers_per_block, 1);
    ck_assert_int_eq(c->norm_num_groups, 8);
    ck_assert_int_eq(c->sample_size, 32);
    ck_assert_int_eq(c->mid_block_add_attention, 1);
    ck_assert_float_eq(lh_vae_scaling_factor(m), 0.18215f);
    ck_assert_int_eq(lh_vae_downscale(m), 8);
    lh_vae_free(m);
}
END_TEST

START_TEST(test_encode) {
    lh_vae *m = load_fixture();
    int64_t is[4], ms[4];
    float *img = ref("encode_image", is), *mean_ref = ref("encode_mean", ms);
    float *logvar_ref = ref("encode_logvar", NULL);
    size_t n = numel(ms);
    float *d_img = upload(img, numel(is)), *d_mean = dev_alloc(n), *d_logvar = dev_alloc(n);
    lh_error err = {0};
    ck_assert_msg(lh_vae_encode(m, d_mean, d_logvar, d_img, is[0], is[2], is[3], &err) == LH_OK,
                  "%s", err.msg);
    float *mean = download(d_mean, n), *logvar = download(d_logvar, n);
    double e_mean = rel_l2(mean, mean_ref, n, n, n), e_logvar = rel_l2(logvar, logvar_ref, n, n, n);
    printf("vae encode [%lld, 3, %lld, %lld]: mean rel L2 %.3g, logvar rel L2 %.3g\n",
           (long long)is[0], (long long)is[2], (long long)is[3], e_mean, e_logvar);
    ck_assert_msg(e_mean < TOL, "mean rel L2 %g", e_mean);
    ck_assert_msg(e_logvar < TOL, "logvar rel L2 %g", e_logvar);
    /* The clamps are hit: both bounds appear exactly. */
    int hi = 0, lo = 0;
    for (size_t i = 0; i < n; i++) {
        hi += logvar[i] == 20.0f;
        lo += logvar[i] == -30.0f;
    }
    ck_assert_msg(hi > 0 && lo > 0, "clamped logvar: %d at 20, %d at -30", hi, lo);

    /* logvar NULL: the mean alone, the same numbers. */
    ck_assert_int_eq(g_be->ops->memset0(g_be, d_mean, n * sizeof(float)), LH_OK);
    ck_assert_msg(lh_vae_encode(m, d_mean, NULL, d_img, is[0], is[2], is[3], &err) == LH_OK, "%s",
                  err.msg);
    float *mean2 = download(d_mean, n);
    ck_assert_int_eq(memcmp(mean, mean2, n * sizeof *mean), 0);

    /* Sampling: scaling_factor * (mean + exp(logvar / 2) * noise), checked per
     * latent channel (the clamped channel at std e^10 would dominate). */
    float *noise = ref("sample_noise", NULL), *lat_ref = ref("sample_latents", NULL);
    float *d_noise = upload(noise, n), *d_lat = dev_alloc(n);
    ck_assert_msg(lh_vae_sample_latents(m, d_lat, d_mean, d_logvar, d_noise, (int64_t)n, &err) ==
                      LH_OK,
                  "%s", err.msg);
    float *lat = download(d_lat, n);
    size_t plane = (size_t)(ms[2] * ms[3]);
    for (int64_t ch = 0; ch < ms[1]; ch++) {
        double e = rel_l2(lat + ch * plane, lat_ref + ch * plane, n - (size_t)ch * plane,
                          (size_t)ms[1] * plane, plane);
        printf("vae sample: latent channel %lld rel L2 %.3g\n", (long long)ch, e);
        ck_assert_msg(e < TOL, "sample channel %lld rel L2 %g", (long long)ch, e);
    }
    /* No noise: the mode, scaled; in place over the mean. */
    ck_assert_int_eq(lh_vae_sample_latents(m, d_mean, d_mean, NULL, NULL, (int64_t)n, &err), LH_OK);
    float *mode = download(d_mean, n);
    for (size_t i = 0; i < n; i++) ck_assert_float_eq(mode[i], mean[i] * 0.18215f);
    ck_assert_int_eq(lh_vae_sample_latents(m, d_lat, d_mean, NULL, d_noise, (int64_t)n, &err),
                     LH_ERR_INVALID);

    g_be->ops->free(g_be, d_img);
    g_be->ops->free(g_be, d_mean);
    g_be->ops->free(g_be, d_logvar);
    g_be->ops->free(g_be, d_noise);
    g_be->ops->free(g_be, d_lat);
    free(img);
    free(mean_ref);
    free(logvar_ref);
    free(mean);
    free(logvar);
    free(mean2);
    free(noise);
    free(lat_ref);
    free(lat);
    free(mode);
    lh_vae_free(m);
}
END_TEST

START_TEST(test_decode) {
    lh_vae *m = load_fixture();
    double e = decode_vs(m, "decode_latents", "decode_image", 0);
    printf("vae decode [2, 4, 4, 6] -> [2, 3, 32, 48]: rel L2 %.3g\n", e);
    ck_assert_msg(e < TOL, "decode rel L2 %g", e);
    /* Tiling on but latents within one tile: the whole decode, as diffusers. */
    lh_error err = {0};
    ck_assert_msg(lh_vae_set_tiling(m, 64, 0.25, &err) == LH_OK, "%s", err.msg);
    double e2 = decode_vs(m, "decode_latents", "decode_image", 1);
    ck_assert_msg(e2 == e, "tiling with one tile changed the result: %g vs %g", e2, e);
    lh_vae_free(m);
    /* half precision (lh_vae_set_precision): weights rounded once and every
     * op's output rounded, so within a few of the half type's steps of
     * float32; then float32 activations on those weights (the fp16
     * fallback's decode) closer still; another half type is refused */
    static const lh_dtype half[2] = {LH_DTYPE_F16, LH_DTYPE_BF16};
    static const double tol[2] = {5e-3, 3e-2};
    for (int k = 0; k < 2; k++) {
        m = load_fixture();
        ck_assert_msg(lh_vae_set_precision(m, half[k], &err) == LH_OK, "%s", err.msg);
        ck_assert_int_eq(lh_vae_precision(m), half[k]);
        double eh = decode_vs(m, "decode_latents", "decode_image", 0);
        printf("vae decode, %s activations: rel L2 %.3g (tol %g)\n", lh_dtype_name(half[k]), eh,
               tol[k]);
        ck_assert_msg(eh < tol[k] && eh > e, "%s decode rel L2 %g", lh_dtype_name(half[k]), eh);
        ck_assert_int_eq(lh_vae_set_precision(m, half[1 - k], &err), LH_ERR_INVALID);
        ck_assert_msg(strstr(err.msg, "already rounded"), "%s", err.msg);
        ck_assert_msg(lh_vae_set_precision(m, LH_DTYPE_F32, &err) == LH_OK, "%s", err.msg);
        double e32 = decode_vs(m, "decode_latents", "decode_image", 0);
        ck_assert_msg(e32 < eh, "%s weights, float32 activations: rel L2 %g",
                      lh_dtype_name(half[k]), e32);
        lh_vae_free(m);
    }
}
END_TEST

START_TEST(test_decode_tiled) {
    lh_vae *m = load_fixture();
    double e = decode_vs(m, "tiled_latents", "tiled_image", 1);
    printf("vae tiled decode [1, 4, 6, 8] -> [1, 3, 48, 64], 2 x 3 tiles of 32 px: rel L2 %.3g\n",
           e);
    ck_assert_msg(e < TOL, "tiled decode rel L2 %g", e);
    /* Untiled differs from the tiled reference: the tiles really were used. */
    double whole = decode_vs(m, "tiled_latents", "tiled_image", 0);
    ck_assert_msg(whole > 1e-3, "whole decode equals the tiled one (%g)", whole);

    /* A batch of two (the reference twice) blends each image like the one. */
    int64_t ls[4], is[4];
    float *lat = ref("tiled_latents", ls), *img_ref = ref("tiled_image", is);
    size_t nl = numel(ls), ni = numel(is);
    float *lat2 = malloc(2 * nl * sizeof *lat2);
    ck_assert(lat2);
    memcpy(lat2, lat, nl * sizeof *lat);
    memcpy(lat2 + nl, lat, nl * sizeof *lat);
    float *d_lat = upload(lat2, 2 * nl), *d_img = dev_alloc(2 * ni);
    lh_error err = {0};
    ck_assert_msg(lh_vae_decode(m, d_img, d_lat, 2, ls[2], ls[3], 1, &err) == LH_OK, "%s", err.msg);
    float *img = download(d_img, 2 * ni);
    for (int k = 0; k < 2; k++) {
        double ek = rel_l2(img + k * ni, img_ref, ni, ni, ni);
        ck_assert_msg(ek < TOL, "tiled decode, batch item %d: rel L2 %g", k, ek);
    }
    g_be->ops->free(g_be, d_lat);
    g_be->ops->free(g_be, d_img);
    free(lat);
    free(lat2);
    free(img_ref);
    free(img);
    lh_vae_free(m);
}
END_TEST

START_TEST(test_tiled_memory_bounded) {
    lh_vae *m = load_fixture();
    /* 32-pixel tiles: the backend workspace does not grow with the image. */
    size_t t64 = lh_vae_decode_workspace(m, 1, 64, 64, 1);
    size_t t128 = lh_vae_decode_workspace(m, 1, 128, 128, 1);
    size_t whole = lh_vae_decode_workspace(m, 1, 128, 128, 0);
    printf("vae decode workspace, 1024 x 1024: %zu bytes tiled, %zu whole\n", t128, whole);
    ck_assert(t64 > 0 && t64 == t128);
    ck_assert(whole > 50 * t128);
    ck_assert_int_eq(lh_vae_decode_workspace(m, 0, 8, 8, 1), 0);

    /* A 256 x 256 tiled decode (10 x 10 tiles) runs and is finite. */
    const int64_t lh = 32, lw = 32, n_lat = 4 * lh * lw, n_img = 3 * lh * lw * 64;
    float *lat = malloc((size_t)n_lat * sizeof *lat);
    ck_assert(lat);
    for (int64_t i = 0; i < n_lat; i++) lat[i] = (float)sin(0.37 * (double)i);
    float *d_lat = upload(lat, (size_t)n_lat), *d_img = dev_alloc((size_t)n_img);
    lh_error err = {0};
    ck_assert_msg(lh_vae_decode(m, d_img, d_lat, 1, lh, lw, 1, &err) == LH_OK, "%s", err.msg);
    float *img = download(d_img, (size_t)n_img);
    double ss = 0;
    for (int64_t i = 0; i < n_img; i++) {
        ck_assert(isfinite(img[i]));
        ss += (double)img[i] * img[i];
    }
    ck_assert(ss > 0);
    g_be->ops->free(g_be, d_lat);
    g_be->ops->free(g_be, d_img);
    free(lat);
    free(img);
    lh_vae_free(m);
}
END_TEST

START_TEST(test_no_mid_attention) {
    /* The same weights with mid_block_add_attention false: attention tensors
     * are not needed (diffusers ignores them too). */
    lh_vae_config cfg;
    lh_error err = {0};
    const char *path = config_with("mid_block_add_attention", json_false());
    ck_assert_msg(lh_vae_config_read(&cfg, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(cfg.mid_block_add_attention, 0);
    char wpath[4300];
    snprintf(wpath, sizeof wpath, "%s/diffusion_pytorch_model.safetensors", g_dir);
    lh_st_file *f = NULL;
    ck_assert_msg(lh_st_open(&f, wpath, &err) == LH_OK, "%s", err.msg);
    lh_vae *m = NULL;
    ck_assert_msg(lh_vae_load_st(&m, g_be, &cfg, f, "", &err) == LH_OK, "%s", err.msg);
    lh_st_close(f);
    double e = decode_vs(m, "decode_latents", "noattn_image", 0);
    printf("vae decode without mid-block attention: rel L2 %.3g\n", e);
    ck_assert_msg(e < TOL, "no-attention decode rel L2 %g", e);
    lh_vae_free(m);
}
END_TEST

START_TEST(test_deprecated_attention_names) {
    /* query/key/value/proj_attn (diffusers < 0.14 files) load as to_q/... */
    weights_edit e = {.deprecated_attn = 1};
    lh_vae *m = NULL;
    lh_error err = {0};
    ck_assert_msg(load_tmp(&m, &e, &err) == LH_OK, "%s", err.msg);
    double d = decode_vs(m, "decode_latents", "decode_image", 0);
    ck_assert_msg(d < TOL, "deprecated names: rel L2 %g", d);
    lh_vae_free(m);
}
END_TEST

/* ---- Errors ---- */

START_TEST(test_missing_tensor) {
    const char *key = "decoder.up_blocks.1.resnets.0.conv1.weight";
    weights_edit e = {.drop = key};
    lh_vae *m = NULL;
    lh_error err = {0};
    ck_assert_int_eq(load_tmp(&m, &e, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err.msg, key) && strstr(err.msg, "[16, 16, 3, 3]"), "%s", err.msg);
    /* The directory without weights: the message names the file. */
    char path[128];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    unlink(path);
    ck_assert_int_ne(lh_vae_load(&m, g_be, g_tmp, &err), LH_OK);
    ck_assert_msg(strstr(err.msg, "diffusion_pytorch_model.safetensors"), "%s", err.msg);
}
END_TEST

START_TEST(test_misshaped_tensor) {
    const char *key = "encoder.mid_block.attentions.0.to_k.weight";
    weights_edit e = {.reshape = key, .ndim = 2, .shape = {16, 8}};
    lh_vae *m = NULL;
    lh_error err = {0};
    ck_assert_int_eq(load_tmp(&m, &e, &err), LH_ERR_SHAPE);
    ck_assert_msg(strstr(err.msg, key) && strstr(err.msg, "[16, 8]") && strstr(err.msg, "[16, 16]"),
                  "%s", err.msg);
    const char *key2 = "quant_conv.weight";
    weights_edit e2 = {.reshape = key2, .ndim = 4, .shape = {8, 8, 3, 3}};
    ck_assert_int_eq(load_tmp(&m, &e2, &err), LH_ERR_SHAPE);
    ck_assert_msg(strstr(err.msg, key2) && strstr(err.msg, "[8, 8, 3, 3]") &&
                      strstr(err.msg, "[8, 8, 1, 1]"),
                  "%s", err.msg);
}
END_TEST

/* One bad config: the field, its new value, the status and a word of the message. */
static void bad_config(const char *field, json_t *value, lh_status want, const char *name) {
    lh_vae_config cfg;
    lh_error err = {0};
    const char *path = config_with(field, value);
    lh_status st = lh_vae_config_read(&cfg, path, &err);
    ck_assert_msg(st == want, "%s: status %d, want %d (%s)", field, st, want, err.msg);
    ck_assert_msg(strstr(err.msg, name) != NULL, "%s: message lacks '%s': %s", field, name,
                  err.msg);
}

START_TEST(test_bad_config) {
    bad_config("norm_num_groups", json_integer(3), LH_ERR_CONFIG, "'norm_num_groups'");
    bad_config("norm_num_groups", json_string("8"), LH_ERR_CONFIG, "'norm_num_groups'");
    bad_config("layers_per_block", json_integer(0), LH_ERR_CONFIG, "'layers_per_block'");
    bad_config("latent_channels", json_real(4.5), LH_ERR_CONFIG, "'latent_channels'");
    bad_config("block_out_channels", json_string("8,16"), LH_ERR_CONFIG, "'block_out_channels'");
    bad_config("block_out_channels", json_pack("[i, i, s, i]", 8, 16, "x", 16), LH_ERR_CONFIG,
               "'block_out_channels[2]'");
    bad_config("block_out_channels", json_pack("[i, i, i, i]", 8, 16, 0, 16), LH_ERR_CONFIG,
               "'block_out_channels[2]'");
    bad_config("down_block_types",
               json_pack("[s, s, s, s]", "DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                         "DownEncoderBlock2D", "DownEncoderBlock2D"),
               LH_ERR_UNSUPPORTED, "'down_block_types[1]'");
    bad_config("up_block_types", json_pack("[s, s]", "UpDecoderBlock2D", "UpDecoderBlock2D"),
               LH_ERR_CONFIG, "'up_block_types'");
    bad_config("act_fn", json_string("gelu"), LH_ERR_UNSUPPORTED, "'act_fn'");
    bad_config("scaling_factor", json_real(-0.5), LH_ERR_CONFIG, "'scaling_factor'");
    bad_config("scaling_factor", json_string("0.18215"), LH_ERR_CONFIG, "'scaling_factor'");
    bad_config("sample_size", json_integer(0), LH_ERR_CONFIG, "'sample_size'");
    bad_config("mid_block_add_attention", json_string("yes"), LH_ERR_CONFIG,
               "'mid_block_add_attention'");
    bad_config("use_quant_conv", json_false(), LH_ERR_UNSUPPORTED, "'use_quant_conv'");
    bad_config("use_post_quant_conv", json_false(), LH_ERR_UNSUPPORTED, "'use_post_quant_conv'");
    bad_config("shift_factor", json_real(0.1159), LH_ERR_UNSUPPORTED, "'shift_factor'");
    bad_config("latents_mean", json_pack("[f, f, f, f]", 0.1, 0.2, 0.3, 0.4), LH_ERR_UNSUPPORTED,
               "'latents_mean'");
    bad_config("_class_name", json_string("AutoencoderTiny"), LH_ERR_UNSUPPORTED, "'_class_name'");

    /* Not JSON, not an object, no file. */
    lh_vae_config cfg;
    lh_error err = {0};
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fputs("{\"in_channels\": 3,", f);
    fclose(f);
    ck_assert_int_eq(lh_vae_config_read(&cfg, path, &err), LH_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "config.json"), "%s", err.msg);
    f = fopen(path, "w");
    ck_assert(f);
    fputs("[1, 2]", f);
    fclose(f);
    ck_assert_int_eq(lh_vae_config_read(&cfg, path, &err), LH_ERR_FORMAT);
    unlink(path);
    ck_assert_int_eq(lh_vae_config_read(&cfg, path, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, path), "%s", err.msg);

    /* Absent fields take AutoencoderKL's defaults. */
    f = fopen(path, "w");
    ck_assert(f);
    fputs("{\"_class_name\": \"AutoencoderKL\"}", f);
    fclose(f);
    ck_assert_msg(lh_vae_config_read(&cfg, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(cfg.n_blocks, 1);
    ck_assert_int_eq(cfg.block_out_channels[0], 64);
    ck_assert_int_eq(cfg.norm_num_groups, 32);
    ck_assert_int_eq(cfg.latent_channels, 4);
    ck_assert_float_eq(cfg.scaling_factor, 0.18215f);

    /* A caller's config is checked too. */
    cfg.norm_num_groups = 5;
    lh_vae *m = NULL;
    char wpath[4300];
    snprintf(wpath, sizeof wpath, "%s/diffusion_pytorch_model.safetensors", g_dir);
    lh_st_file *wf = NULL;
    ck_assert_msg(lh_st_open(&wf, wpath, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_vae_load_st(&m, g_be, &cfg, wf, "", &err), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "'norm_num_groups'"), "%s", err.msg);
    lh_st_close(wf);
}
END_TEST

START_TEST(test_bad_arguments) {
    lh_vae *m = load_fixture();
    lh_error err = {0};
    float *d = dev_alloc(3 * 32 * 48);
    /* Image sides must be multiples of 8. */
    ck_assert_int_eq(lh_vae_encode(m, d, NULL, d, 1, 30, 48, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "30") && strstr(err.msg, "multiples of 8"), "%s", err.msg);
    ck_assert_int_eq(lh_vae_encode(m, d, NULL, d, 0, 32, 48, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_vae_decode(m, d, d, 1, 0, 4, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_vae_decode(m, d, d, 1, (int64_t)1 << 40, 4, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_vae_sample_latents(m, d, d, NULL, NULL, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_vae_set_precision(m, LH_DTYPE_F64, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "F64"), "%s", err.msg);
    ck_assert_int_eq(lh_vae_precision(m), LH_DTYPE_F32);
    /* Tiling: tile a multiple of 8, overlap in [0, 1). */
    ck_assert_int_eq(lh_vae_set_tiling(m, 12, 0.25, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "12"), "%s", err.msg);
    ck_assert_int_eq(lh_vae_set_tiling(m, 32, 1.0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_vae_set_tiling(m, 32, NAN, &err), LH_ERR_INVALID);
    /* Tiles whose stride and crop disagree (5-latent tiles, stride 3, crop 30
     * px) would not give a [48, 64] image: refused, not silently resized. */
    ck_assert_int_eq(lh_vae_set_tiling(m, 40, 0.25, &err), LH_OK);
    ck_assert_int_eq(lh_vae_decode(m, d, d, 1, 6, 8, 1, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "tiles of 40"), "%s", err.msg);
    g_be->ops->free(g_be, d);
    lh_vae_free(m);
}
END_TEST

static Suite *vae_suite(void) {
    Suite *s = suite_create("vae");
    TCase *tc = tcase_create("forward");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_encode);
    tcase_add_test(tc, test_decode);
    tcase_add_test(tc, test_decode_tiled);
    tcase_add_test(tc, test_tiled_memory_bounded);
    tcase_add_test(tc, test_no_mid_attention);
    tcase_add_test(tc, test_deprecated_attention_names);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_misshaped_tensor);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(vae_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
