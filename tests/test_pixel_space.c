/* Pixel-space models suite: `model init` (lh_model_init) writes a model
 * without a VAE that lh_model_open reads as pixel space; it generates
 * (txt2img, img2img) deterministically for a seed, its "decode" is
 * diffusers' postprocess of the latents themselves; init files are
 * identical for a seed and their values follow PyTorch's default init
 * (bounds exact, means and standard deviations within 6 standard errors);
 * a directory without vae/ whose U-Net takes 4 channels is refused naming
 * the missing file. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "model.h"
#include "model_init.h"
#include "pipeline.h"

static char g_tmp[64], g_unet_cfg[128], g_te_cfg[128], g_model[128];
static lh_backend *g_be;
static lh_registry *g_reg;

/* A very small pixel-space configuration: two levels, 16x16 images work. */
static const char UNET_CFG[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 16, \"in_channels\": 3,"
    " \"out_channels\": 3, \"block_out_channels\": [32, 32], \"layers_per_block\": 1,"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"],"
    " \"attention_head_dim\": 4, \"cross_attention_dim\": 32, \"norm_num_groups\": 8}";
static const char TE_CFG[] =
    "{\"vocab_size\": 49408, \"hidden_size\": 32, \"intermediate_size\": 64,"
    " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"max_position_embeddings\": 77,"
    " \"hidden_act\": \"quick_gelu\"}";

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static lh_status init_model(const char *out, uint64_t seed, lh_dtype dtype, lh_error *err) {
    lh_model_init_opts o = {.unet_config = g_unet_cfg, .text_encoder_config = g_te_cfg,
                            .seed = seed, .dtype = dtype};
    return lh_model_init(out, &o, err);
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ck_assert(fread(buf, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static void gen(lh_model *m, lh_gen_result *r, const uint8_t *init_image, uint64_t seed) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "a red circle";
    p.width = p.height = 16;
    p.steps = 3;
    p.seed = seed;
    p.init_image = init_image;
    p.strength = 0.5;
    lh_error err = {0};
    lh_status st = init_image ? lh_pipeline_img2img(m, g_reg, &p, r, &err)
                              : lh_pipeline_txt2img(m, g_reg, &p, r, &err);
    ck_assert_msg(st == LH_OK, "%s", err.msg);
    ck_assert_int_eq(r->channels, 3);
    ck_assert_int_eq(r->latent_h, 16);
    ck_assert_int_eq(r->latent_w, 16);
}

/* ---- Loading and generating ---- */

START_TEST(opens_as_pixel_space) {
    lh_model *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_model_open(&m, g_be, g_model, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(m->info.pixel_space, 1);
    ck_assert_ptr_null(m->vae);
    ck_assert_int_eq(lh_model_downscale(m), 1);
    ck_assert_str_eq(m->info.scheduler_class, "DDIMScheduler");
    /* a side the U-Net's factor (2) divides but 8 does not is fine */
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.width = 18;
    p.height = 16;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_OK);
    p.width = 17;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "multiple of 2") != NULL, "%s", err.msg);
    lh_model_close(m);
}
END_TEST

START_TEST(txt2img_deterministic_and_decode_formula) {
    lh_model *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_model_open(&m, g_be, g_model, &err) == LH_OK, "%s", err.msg);
    lh_gen_result a, b, c;
    gen(m, &a, NULL, 1);
    gen(m, &b, NULL, 1);
    gen(m, &c, NULL, 2);
    size_t n = 3 * 16 * 16;
    ck_assert(memcmp(a.latents, b.latents, n * sizeof(float)) == 0);
    ck_assert(memcmp(a.images, b.images, n) == 0);
    ck_assert(memcmp(a.latents, c.latents, n * sizeof(float)) != 0);
    /* decode: rgb = round(clamp(x / 2 + 0.5, 0, 1) * 255), HWC from CHW */
    int distinct = 0;
    for (int64_t ch = 0; ch < 3; ch++)
        for (int64_t k = 0; k < 256; k++) {
            float v = a.latents[ch * 256 + k] / 2.0f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            uint8_t want = (uint8_t)nearbyintf(v * 255.0f);
            ck_assert_int_eq(a.images[k * 3 + ch], want);
            distinct += want != a.images[0];
        }
    ck_assert_int_gt(distinct, 0);
    lh_gen_result_free(&a);
    lh_gen_result_free(&b);
    lh_gen_result_free(&c);
    lh_model_close(m);
}
END_TEST

START_TEST(img2img_runs_from_the_image) {
    lh_model *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_model_open(&m, g_be, g_model, &err) == LH_OK, "%s", err.msg);
    uint8_t img[16 * 16 * 3];
    for (int k = 0; k < 16 * 16; k++) {
        img[k * 3] = (uint8_t)(k % 16 * 17);
        img[k * 3 + 1] = (uint8_t)(k / 16 * 17);
        img[k * 3 + 2] = 128;
    }
    lh_gen_result a, b, t;
    gen(m, &a, img, 5);
    gen(m, &b, img, 5);
    gen(m, &t, NULL, 5);
    size_t n = 3 * 16 * 16;
    ck_assert(memcmp(a.latents, b.latents, n * sizeof(float)) == 0);
    ck_assert(memcmp(a.latents, t.latents, n * sizeof(float)) != 0);
    /* strength 0.5 of 3 steps: int(1.5) = 1 step runs, from the noised image */
    ck_assert_int_eq(a.steps_run, 1);
    /* the noised image still shows: the result correlates with the input ramp */
    double sxy = 0, sxx = 0, syy = 0;
    for (int k = 0; k < 256; k++) {
        double x = img[k * 3] / 127.5 - 1 - 0.0, y = a.latents[k];
        sxy += x * y;
        sxx += x * x;
        syy += y * y;
    }
    ck_assert_msg(sxy / sqrt(sxx * syy) > 0.3, "correlation %g", sxy / sqrt(sxx * syy));
    lh_gen_result_free(&a);
    lh_gen_result_free(&b);
    lh_gen_result_free(&t);
    lh_model_close(m);
}
END_TEST

/* ---- Init files ---- */

START_TEST(init_is_deterministic) {
    char a[128], b[128], c[128];
    snprintf(a, sizeof a, "%s/again", g_tmp);
    snprintf(b, sizeof b, "%s/other", g_tmp);
    lh_error err = {0};
    ck_assert_msg(init_model(a, 42, LH_DTYPE_F32, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(init_model(b, 43, LH_DTYPE_F32, &err) == LH_OK, "%s", err.msg);
    static const char *const FILES[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors", "model_index.json",
                                        "unet/config.json", "scheduler/scheduler_config.json"};
    for (size_t i = 0; i < 5; i++) {
        size_t n1, n2, n3;
        char p[256];
        snprintf(p, sizeof p, "%s/%s", g_model, FILES[i]);
        char *x = slurp(p, &n1);
        snprintf(p, sizeof p, "%s/%s", a, FILES[i]);
        char *y = slurp(p, &n2);
        snprintf(p, sizeof p, "%s/%s", b, FILES[i]);
        char *z = slurp(p, &n3);
        ck_assert_msg(n1 == n2 && memcmp(x, y, n1) == 0, "%s differs for the same seed", FILES[i]);
        if (i < 2) ck_assert_msg(n1 == n3 && memcmp(x, z, n1) != 0, "%s: seed ignored", FILES[i]);
        free(x);
        free(y);
        free(z);
    }
    /* an existing directory is refused, nothing written */
    ck_assert_int_eq(init_model(a, 42, LH_DTYPE_F32, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "already exists") != NULL, "%s", err.msg);
    /* F16: the F32 values rounded */
    snprintf(c, sizeof c, "%s/half", g_tmp);
    ck_assert_msg(init_model(c, 42, LH_DTYPE_F16, &err) == LH_OK, "%s", err.msg);
    char p[256];
    lh_st_file *f32, *f16;
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", a);
    ck_assert_msg(lh_st_open(&f32, p, &err) == LH_OK, "%s", err.msg);
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", c);
    ck_assert_msg(lh_st_open(&f16, p, &err) == LH_OK, "%s", err.msg);
    ck_assert_uint_eq(lh_st_count(f32), lh_st_count(f16));
    for (size_t i = 0; i < lh_st_count(f32); i++) {
        const lh_st_tensor *t = lh_st_get(f32, i), *h = lh_st_find(f16, t->name);
        ck_assert_ptr_nonnull(h);
        ck_assert_int_eq(h->dtype, LH_DTYPE_F16);
        for (int64_t k = 0; k < t->numel; k++) {
            float v;
            uint16_t hv;
            memcpy(&v, (const char *)t->data + 4 * k, 4);
            memcpy(&hv, (const char *)h->data + 2 * k, 2);
            ck_assert_uint_eq(hv, lh_f32_to_f16(v));
        }
    }
    lh_st_close(f32);
    lh_st_close(f16);
    /* and the F16 model opens and generates */
    lh_model *m = NULL;
    ck_assert_msg(lh_model_open(&m, g_be, c, &err) == LH_OK, "%s", err.msg);
    lh_gen_result r;
    gen(m, &r, NULL, 1);
    lh_gen_result_free(&r);
    lh_model_close(m);
}
END_TEST

/* Every tensor of `file` against its stated distribution. */
static void check_stats(const char *file, int *n_uniform, int *n_norm, int *n_embed) {
    lh_st_file *f;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, file, &err) == LH_OK, "%s", err.msg);
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        const float *x = t->data;
        ck_assert_int_eq(t->dtype, LH_DTYPE_F32);
        size_t len = strlen(t->name);
        int is_bias = len > 5 && !strcmp(t->name + len - 5, ".bias");
        int embed = strstr(t->name, "token_embedding.weight") ||
                    strstr(t->name, "position_embedding.weight");
        int64_t fan_in = 0;
        if (is_bias) {
            char w[512];
            snprintf(w, sizeof w, "%.*s.weight", (int)len - 5, t->name);
            const lh_st_tensor *wt = lh_st_find(f, w);
            ck_assert_msg(wt != NULL, "%s: no weight", t->name);
            if (wt->ndim >= 2) fan_in = wt->numel / wt->shape[0];
        } else if (t->ndim >= 2) {
            fan_in = t->numel / t->shape[0];
        }
        double n = (double)t->numel, s = 0, ss = 0, mx = 0;
        for (int64_t k = 0; k < t->numel; k++) {
            s += x[k];
            ss += (double)x[k] * x[k];
            mx = fmax(mx, fabs(x[k]));
        }
        double mean = s / n, sd = sqrt(fmax(ss / n - mean * mean, 0));
        if (embed) { /* N(0, 1): se(mean) = 1/sqrt(n), se(sd) = 1/sqrt(2n) */
            ck_assert_msg(fabs(mean) < 6 / sqrt(n), "%s: mean %g", t->name, mean);
            ck_assert_msg(fabs(sd - 1) < 6 / sqrt(2 * n), "%s: sd %g", t->name, sd);
            (*n_embed)++;
        } else if (fan_in == 0) { /* norm: weight 1, bias 0 exactly */
            for (int64_t k = 0; k < t->numel; k++)
                ck_assert_msg(x[k] == (is_bias ? 0.0f : 1.0f), "%s[%lld] = %g", t->name,
                              (long long)k, x[k]);
            (*n_norm)++;
        } else { /* U(-b, b), b = 1/sqrt(fan_in): sd b/sqrt(3); se(sd) ~ 0.45 b/sqrt(n) */
            double b = 1 / sqrt((double)fan_in);
            ck_assert_msg(mx <= b * (1 + 1e-6), "%s: |x| %g > bound %g", t->name, mx, b);
            ck_assert_msg(fabs(mean) < 6 * b / sqrt(3 * n), "%s: mean %g (bound %g)", t->name,
                          mean, b);
            if (n >= 32) {
                ck_assert_msg(fabs(sd - b / sqrt(3)) < 6 * 0.45 * b / sqrt(n),
                              "%s: sd %g, want %g", t->name, sd, b / sqrt(3));
                /* the extremes reach the bound: P(max < b (1 - 20/n)) ~ e^-20 */
                ck_assert_msg(mx > b * (1 - 20 / n), "%s: max %g, bound %g", t->name, mx, b);
            }
            (*n_uniform)++;
        }
    }
    lh_st_close(f);
}

START_TEST(init_statistics) {
    char p[256];
    int nu = 0, nn = 0, ne = 0;
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", g_model);
    check_stats(p, &nu, &nn, &ne);
    ck_assert_int_eq(ne, 0);
    ck_assert_int_gt(nu, 20);
    ck_assert_int_gt(nn, 10);
    snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", g_model);
    nu = nn = ne = 0;
    check_stats(p, &nu, &nn, &ne);
    ck_assert_int_eq(ne, 2);
    ck_assert_int_eq(nu, 12); /* q k v out fc1 fc2, weight and bias */
    ck_assert_int_eq(nn, 6);  /* layer_norm1, layer_norm2, final_layer_norm */
    /* the keys are transformers 4.x's */
    lh_st_file *f;
    lh_error err = {0};
    ck_assert(lh_st_open(&f, p, &err) == LH_OK);
    ck_assert_ptr_nonnull(lh_st_find(f, "text_model.embeddings.token_embedding.weight"));
    ck_assert_ptr_nonnull(lh_st_find(f, "text_model.final_layer_norm.bias"));
    lh_st_close(f);
}
END_TEST

/* ---- Refusals ---- */

START_TEST(latent_unet_without_vae_refused) {
    char dir[128], cmd[512], cfg[256];
    snprintf(dir, sizeof dir, "%s/novae4", g_tmp);
    snprintf(cmd, sizeof cmd, "cp -r %s %s", g_model, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cfg, sizeof cfg, "%s/unet/config.json", dir);
    json_t *j = json_load_file(cfg, 0, NULL);
    ck_assert_ptr_nonnull(j);
    json_object_set_new(j, "in_channels", json_integer(4));
    json_object_set_new(j, "out_channels", json_integer(4));
    ck_assert_int_eq(json_dump_file(j, cfg, 0), 0);
    json_decref(j);
    lh_model_info info;
    lh_error err = {0};
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "vae/config.json") && strstr(err.msg, cfg) &&
                      strstr(err.msg, "in_channels"),
                  "%s", err.msg);
    lh_model *m = NULL;
    ck_assert_int_eq(lh_model_open(&m, g_be, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_null(m);
    /* model_index naming a VAE that is not there: the missing file again */
    snprintf(dir, sizeof dir, "%s/novae_index", g_tmp);
    snprintf(cmd, sizeof cmd, "cp -r %s %s", g_model, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cfg, sizeof cfg, "%s/model_index.json", dir);
    j = json_load_file(cfg, 0, NULL);
    json_object_set_new(j, "vae", json_pack("[s,s]", "diffusers", "AutoencoderKL"));
    ck_assert_int_eq(json_dump_file(j, cfg, 0), 0);
    json_decref(j);
    ck_assert_int_ne(lh_model_detect(&info, dir, &err), LH_OK);
    ck_assert_msg(strstr(err.msg, "vae") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(init_refuses_bad_configs) {
    char out[128], cfg[128];
    lh_error err = {0};
    snprintf(out, sizeof out, "%s/bad", g_tmp);
    snprintf(cfg, sizeof cfg, "%s/unet4.json", g_tmp);
    char text[sizeof UNET_CFG + 8];
    snprintf(text, sizeof text, "%s", UNET_CFG);
    char *at = strstr(text, "\"in_channels\": 3");
    at[15] = '4';
    ck_assert_int_eq(write_text(cfg, text), 0);
    lh_model_init_opts o = {.unet_config = cfg, .text_encoder_config = g_te_cfg};
    ck_assert_int_eq(lh_model_init(out, &o, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "in_channels 4") && strstr(err.msg, cfg), "%s", err.msg);
    /* text encoder width must be the U-Net's cross_attention_dim */
    snprintf(cfg, sizeof cfg, "%s/te48.json", g_tmp);
    ck_assert_int_eq(write_text(cfg, "{\"hidden_size\": 48, \"num_attention_heads\": 4}"), 0);
    o.unet_config = g_unet_cfg;
    o.text_encoder_config = cfg;
    ck_assert_int_eq(lh_model_init(out, &o, &err), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "cross_attention_dim 32"), "%s", err.msg);
    /* bad JSON names the file and line */
    ck_assert_int_eq(write_text(cfg, "{\"hidden_size\": 32,\n"), 0);
    ck_assert_int_eq(lh_model_init(out, &o, &err), LH_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, cfg) != NULL, "%s", err.msg);
    ck_assert_int_ne(access(out, F_OK), 0);
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_test_pixel_XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    snprintf(g_unet_cfg, sizeof g_unet_cfg, "%s/unet.json", g_tmp);
    snprintf(g_te_cfg, sizeof g_te_cfg, "%s/te.json", g_tmp);
    snprintf(g_model, sizeof g_model, "%s/model", g_tmp);
    lh_error err = {0};
    char msg[512] = "";
    if (write_text(g_unet_cfg, UNET_CFG) || write_text(g_te_cfg, TE_CFG) ||
        init_model(g_model, 42, LH_DTYPE_F32, &err) != LH_OK ||
        lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) != LH_OK ||
        lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) != LH_OK) {
        fprintf(stderr, "setup: %s%s\n", err.msg, msg);
        return 1;
    }
    Suite *s = suite_create("pixel_space");
    TCase *tc = tcase_create("pixel_space");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, opens_as_pixel_space);
    tcase_add_test(tc, txt2img_deterministic_and_decode_formula);
    tcase_add_test(tc, img2img_runs_from_the_image);
    tcase_add_test(tc, init_is_deterministic);
    tcase_add_test(tc, init_statistics);
    tcase_add_test(tc, latent_unet_without_vae_refused);
    tcase_add_test(tc, init_refuses_bad_configs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lh_registry_destroy(g_reg);
    lh_backend_destroy(g_be);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? 1 : 0;
}
