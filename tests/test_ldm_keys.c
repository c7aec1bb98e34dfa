/* Single-file (LDM / A1111) checkpoints: detection, every mapped tensor equal
 * (bitwise) to the diffusers folder's, the same outputs as the folder models
 * on the recorded references, and refusals. Fixtures from
 * tests/golden/single_file.py (sd1_tiny.safetensors, sd2_tiny.safetensors). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ldm_keys.h"
#include "lorahost/safetensors.h"

#define TOL 1e-4 /* relative L2, as test_unet / test_clip / test_vae */
#define SEQ 77

static char g_src[4096];
static lh_backend *g_be;

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    char msg[256] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "cpu backend: %s",
                  msg);
}

static void teardown(void) { lh_backend_destroy(g_be); }

/* ---- Helpers ---- */

static lh_st_file *open_fixture(const char *rel) {
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s", g_src, rel);
    lh_st_file *f = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, path, &err) == LH_OK, "%s", err.msg);
    return f;
}

static lh_ldm_info detect_ok(const lh_st_file *f) {
    lh_ldm_info info;
    lh_error err = {0};
    ck_assert_msg(lh_ldm_detect(f, &info, &err) == LH_OK, "%s", err.msg);
    return info;
}

static float *read_all(const lh_st_file *f, const char *name, size_t *n) {
    const lh_st_tensor *t = lh_st_find(f, name);
    ck_assert_msg(t != NULL, "reference tensor %s missing", name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    ck_assert_ptr_nonnull(v);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, f, name, &err) == LH_OK, "%s", err.msg);
    *n = (size_t)t->numel;
    return v;
}

static float *upload(const float *h, size_t n) {
    float *p = g_be->ops->alloc(g_be, n * sizeof(float));
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(g_be->ops->upload(g_be, p, h, n * sizeof(float)), LH_OK);
    return p;
}

static float *download_free(float *dev, size_t n) {
    float *h = malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(g_be->ops->download(g_be, h, dev, n * sizeof(float)), LH_OK);
    g_be->ops->free(g_be, dev);
    return h;
}

static double rel_l2(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every tensor of the diffusers file `dir_file` (keys less `strip`) is found
 * through the view with the same dtype, shape and bytes; returns how many
 * distinct file tensors the view used. */
static size_t check_bitwise(const lh_st_file *single, const lh_ldm_info *info, lh_ldm_part part,
                            const char *dir_file, const char *strip) {
    lh_st_file *d = open_fixture(dir_file);
    lh_ldm_map *map = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_ldm_map_create(&map, single, info, part, &err) == LH_OK, "%s", err.msg);
    const lh_wsource *src = lh_ldm_map_source(map);
    size_t n = lh_st_count(d), n_used = 0;
    char **used = calloc(n, sizeof *used);
    ck_assert_ptr_nonnull(used);
    for (size_t i = 0; i < n; i++) {
        const lh_st_tensor *want = lh_st_get(d, i);
        const char *key = want->name;
        if (strncmp(key, strip, strlen(strip)) == 0) key += strlen(strip);
        const lh_st_tensor *got = lh_wsource_find(src, key);
        ck_assert_msg(got != NULL, "%s: '%s' not found in the single file", dir_file, key);
        ck_assert_int_eq(got->dtype, want->dtype);
        ck_assert_msg(got->ndim == want->ndim, "%s: ndim %d vs %d", key, got->ndim, want->ndim);
        for (int k = 0; k < want->ndim; k++) ck_assert_int_eq(got->shape[k], want->shape[k]);
        ck_assert_int_eq(got->numel, want->numel);
        ck_assert_int_eq(got->end - got->begin, want->end - want->begin);
        ck_assert_msg(memcmp(got->data, want->data, want->end - want->begin) == 0,
                      "%s: bytes differ", key);
        char fk[512];
        ck_assert_int_eq(lh_ldm_file_key(fk, sizeof fk, info, part, key), 0);
        used[i] = strdup(fk);
    }
    qsort(used, n, sizeof *used, cmp_str);
    for (size_t i = 0; i < n; i++) n_used += i == 0 || strcmp(used[i], used[i - 1]) != 0;
    for (size_t i = 0; i < n; i++) free(used[i]);
    free(used);
    lh_ldm_map_destroy(map);
    lh_st_close(d);
    return n_used;
}

static size_t count_prefix(const lh_st_file *f, const char *prefix) {
    size_t c = 0;
    for (size_t i = 0; i < lh_st_count(f); i++)
        c += strncmp(lh_st_get(f, i)->name, prefix, strlen(prefix)) == 0;
    return c;
}

/* ---- Detection ---- */

static void check_unet_cfg(const lh_unet_config *got, const char *variant) {
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/unet/config.json", g_src, variant);
    lh_unet_config want;
    lh_error err = {0};
    ck_assert_msg(lh_unet_config_read(&want, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(got->in_channels, want.in_channels);
    ck_assert_int_eq(got->out_channels, want.out_channels);
    ck_assert_int_eq(got->n_blocks, want.n_blocks);
    for (int i = 0; i < want.n_blocks; i++) {
        ck_assert_int_eq(got->block_out_channels[i], want.block_out_channels[i]);
        ck_assert_int_eq(got->layers_per_block[i], want.layers_per_block[i]);
        ck_assert_int_eq(got->down_cross[i], want.down_cross[i]);
        ck_assert_int_eq(got->up_cross[i], want.up_cross[i]);
    }
    ck_assert_int_eq(got->cross_attention_dim, want.cross_attention_dim);
    ck_assert_int_eq(got->use_linear_projection, want.use_linear_projection);
    ck_assert_int_eq(got->flip_sin_to_cos, want.flip_sin_to_cos);
    ck_assert(got->freq_shift == want.freq_shift);
}

static void check_clip_cfg(const lh_clip_config *got, const char *variant) {
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/text_encoder/config.json", g_src,
             variant);
    lh_clip_config want;
    lh_error err = {0};
    ck_assert_msg(lh_clip_config_read(&want, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(got->vocab_size, want.vocab_size);
    ck_assert_int_eq(got->hidden_size, want.hidden_size);
    ck_assert_int_eq(got->intermediate_size, want.intermediate_size);
    ck_assert_int_eq(got->num_hidden_layers, want.num_hidden_layers);
    ck_assert_int_eq(got->max_position_embeddings, want.max_position_embeddings);
    ck_assert_int_eq(got->hidden_act, want.hidden_act);
}

static void check_vae_cfg(const lh_vae_config *got) {
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny/vae/config.json", g_src);
    lh_vae_config want;
    lh_error err = {0};
    ck_assert_msg(lh_vae_config_read(&want, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(got->in_channels, want.in_channels);
    ck_assert_int_eq(got->out_channels, want.out_channels);
    ck_assert_int_eq(got->latent_channels, want.latent_channels);
    ck_assert_int_eq(got->n_blocks, want.n_blocks);
    for (int i = 0; i < want.n_blocks; i++)
        ck_assert_int_eq(got->block_out_channels[i], want.block_out_channels[i]);
    ck_assert_int_eq(got->layers_per_block, want.layers_per_block);
    ck_assert_int_eq(got->mid_block_add_attention, want.mid_block_add_attention);
    ck_assert_float_eq(got->scaling_factor, want.scaling_factor);
}

START_TEST(test_detect_sd1) {
    lh_st_file *f = open_fixture("sd1_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    ck_assert_int_eq(info.arch, LH_LDM_ARCH_SD1);
    for (int p = 0; p < LH_LDM_PART_COUNT; p++) ck_assert(info.has[p]);
    ck_assert_int_eq(info.prediction, LH_LDM_PRED_EPSILON);
    ck_assert_str_eq(info.clip_prefix, "cond_stage_model.transformer.text_model.");
    ck_assert_str_eq(info.vae_prefix, "first_stage_model.");
    check_unet_cfg(&info.unet, "sd1_tiny");
    check_clip_cfg(&info.clip, "sd1_tiny");
    check_vae_cfg(&info.vae);
    ck_assert_int_eq(info.unet.heads[0], 8); /* SD 1.x default: not in the weights */
    ck_assert_int_eq(info.unet.norm_num_groups, 32);
    ck_assert_int_eq(info.vae.sample_size, 512);
    lh_st_close(f);
}
END_TEST

START_TEST(test_detect_sd2) {
    lh_st_file *f = open_fixture("sd2_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    ck_assert_int_eq(info.arch, LH_LDM_ARCH_SD2);
    for (int p = 0; p < LH_LDM_PART_COUNT; p++) ck_assert(info.has[p]);
    ck_assert_int_eq(info.prediction, LH_LDM_PRED_UNKNOWN);
    ck_assert_str_eq(info.clip_prefix, "cond_stage_model.model.");
    ck_assert_int_eq(info.clip_open_layers, 4); /* the last block is not used */
    check_unet_cfg(&info.unet, "sd2_tiny");
    check_clip_cfg(&info.clip, "sd2_tiny");
    check_vae_cfg(&info.vae);
    ck_assert_int_eq(info.vae.sample_size, 768);
    ck_assert_int_eq(info.unet.heads[1], 1); /* channels / 64, at least 1 */
    lh_st_close(f);
}
END_TEST

/* ---- Every tensor, bitwise ---- */

START_TEST(test_tensors_sd1) {
    lh_st_file *f = open_fixture("sd1_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    size_t u = check_bitwise(f, &info, LH_LDM_PART_UNET,
                             "sd1_tiny/unet/diffusion_pytorch_model.safetensors", "");
    ck_assert_uint_eq(u, count_prefix(f, "model.diffusion_model."));
    size_t v = check_bitwise(f, &info, LH_LDM_PART_VAE,
                             "sd1_tiny/vae/diffusion_pytorch_model.safetensors", "");
    ck_assert_uint_eq(v, count_prefix(f, "first_stage_model."));
    size_t c = check_bitwise(f, &info, LH_LDM_PART_CLIP, "sd1_tiny/text_encoder/model.safetensors",
                             "text_model.");
    /* all but embeddings.position_ids (I64 buffer) */
    ck_assert_uint_eq(c + 1, count_prefix(f, "cond_stage_model."));
    lh_st_close(f);
}
END_TEST

START_TEST(test_tensors_sd2) {
    lh_st_file *f = open_fixture("sd2_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    size_t u = check_bitwise(f, &info, LH_LDM_PART_UNET,
                             "sd2_tiny/unet/diffusion_pytorch_model.safetensors", "");
    ck_assert_uint_eq(u, count_prefix(f, "model.diffusion_model."));
    size_t c = check_bitwise(f, &info, LH_LDM_PART_CLIP, "sd2_tiny/text_encoder/model.safetensors",
                             "text_model.");
    /* all but text_projection and the 12 tensors of the last resblock */
    ck_assert_uint_eq(c + 1 + 12, count_prefix(f, "cond_stage_model."));
    lh_st_close(f);
}
END_TEST

/* ---- Same outputs as the folders ---- */

static void unet_case(const char *variant, const char *name) {
    lh_st_file *f = open_fixture(strcmp(variant, "sd1_tiny") ? "sd2_tiny.safetensors"
                                                             : "sd1_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    /* heads and norm_num_groups are not in the weights: the folder's config,
     * as diffusers' from_single_file(config=...) */
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/unet/config.json", g_src, variant);
    lh_error err = {0};
    ck_assert_msg(lh_unet_config_read(&info.unet, path, &err) == LH_OK, "%s", err.msg);
    lh_unet *m = NULL;
    ck_assert_msg(lh_ldm_load_unet(&m, g_be, f, &info, &err) == LH_OK, "%s", err.msg);
    lh_st_close(f); /* the model owns its weights */

    lh_st_file *ref = open_fixture("unet_reference.safetensors");
    char key[64];
    size_t nx, nt, nc, no;
    snprintf(key, sizeof key, "%s.x", name);
    const lh_st_tensor *xt = lh_st_find(ref, key);
    float *x = read_all(ref, key, &nx);
    snprintf(key, sizeof key, "%s.t", name);
    float *t = read_all(ref, key, &nt);
    snprintf(key, sizeof key, "%s.ctx", name);
    const lh_st_tensor *ct = lh_st_find(ref, key);
    float *ctx = read_all(ref, key, &nc);
    snprintf(key, sizeof key, "%s.out", name);
    float *want = read_all(ref, key, &no);
    float *dx = upload(x, nx), *dctx = upload(ctx, nc), *dout = upload(want, no);
    ck_assert_msg(lh_unet_forward(m, dout, dx, t, dctx, xt->shape[0], xt->shape[2], xt->shape[3],
                                  ct->shape[1], &err) == LH_OK,
                  "%s", err.msg);
    float *got = download_free(dout, no);
    double e = rel_l2(got, want, no);
    printf("single-file unet %s: rel L2 %.3g\n", name, e);
    ck_assert_msg(e < TOL, "%s: rel L2 %g", name, e);
    g_be->ops->free(g_be, dx);
    g_be->ops->free(g_be, dctx);
    free(x);
    free(t);
    free(ctx);
    free(want);
    free(got);
    lh_st_close(ref);
    lh_unet_free(m);
}

START_TEST(test_unet_outputs) {
    unet_case("sd1_tiny", "sd1");
    unet_case("sd2_tiny", "sd2");
}
END_TEST

static void clip_case(const char *variant, const char *file) {
    lh_st_file *f = open_fixture(file);
    lh_ldm_info info = detect_ok(f);
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/text_encoder/config.json", g_src,
             variant);
    lh_error err = {0};
    ck_assert_msg(lh_clip_config_read(&info.clip, path, &err) == LH_OK, "%s", err.msg);
    lh_clip *m = NULL;
    ck_assert_msg(lh_ldm_load_clip(&m, g_be, f, &info, &err) == LH_OK, "%s", err.msg);
    lh_st_close(f);
    lh_st_file *ref = open_fixture("clip_reference.safetensors");
    char key[64];
    snprintf(key, sizeof key, "%s.ids", variant);
    const lh_st_tensor *it = lh_st_find(ref, key);
    ck_assert(it && it->dtype == LH_DTYPE_I32 && it->numel == 2 * SEQ);
    int32_t ids[2 * SEQ];
    memcpy(ids, it->data, sizeof ids);
    const int64_t hidden = info.clip.hidden_size;
    size_t n = (size_t)(2 * SEQ * hidden);
    for (int k = 0; k <= info.clip.num_hidden_layers; k++) {
        float *dev = g_be->ops->alloc(g_be, n * sizeof(float));
        ck_assert_ptr_nonnull(dev);
        ck_assert_msg(lh_clip_encode(m, dev, ids, 2, SEQ, k, &err) == LH_OK, "%s", err.msg);
        float *got = download_free(dev, n);
        size_t nr;
        snprintf(key, sizeof key, "%s.clip_skip%d", variant, k);
        float *want = read_all(ref, key, &nr);
        ck_assert_uint_eq(nr, n);
        double e = rel_l2(got, want, n);
        printf("single-file clip %s clip_skip=%d: rel L2 %.3g\n", variant, k, e);
        ck_assert_msg(e <= TOL, "%s clip_skip=%d: rel L2 %g", variant, k, e);
        free(got);
        free(want);
    }
    lh_st_close(ref);
    lh_clip_free(m);
}

START_TEST(test_clip_outputs) {
    clip_case("sd1_tiny", "sd1_tiny.safetensors");
    clip_case("sd2_tiny", "sd2_tiny.safetensors");
}
END_TEST

START_TEST(test_vae_outputs) {
    const char *files[] = {"sd1_tiny.safetensors", "sd2_tiny.safetensors"};
    for (int fi = 0; fi < 2; fi++) {
        lh_st_file *f = open_fixture(files[fi]);
        lh_ldm_info info = detect_ok(f);
        char path[4400];
        snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny/vae/config.json", g_src);
        lh_error err = {0};
        ck_assert_msg(lh_vae_config_read(&info.vae, path, &err) == LH_OK, "%s", err.msg);
        lh_vae *m = NULL;
        ck_assert_msg(lh_ldm_load_vae(&m, g_be, f, &info, &err) == LH_OK, "%s", err.msg);
        lh_st_close(f);
        lh_st_file *ref = open_fixture("vae_reference.safetensors");
        size_t nl, ni, nimg, nm;
        const lh_st_tensor *lt = lh_st_find(ref, "decode_latents");
        const lh_st_tensor *imt = lh_st_find(ref, "encode_image");
        ck_assert(lt && imt);
        float *lat = read_all(ref, "decode_latents", &nl), *want = read_all(ref, "decode_image", &ni);
        float *dl = upload(lat, nl), *dimg = upload(want, ni);
        ck_assert_msg(lh_vae_decode(m, dimg, dl, lt->shape[0], lt->shape[2], lt->shape[3], 0,
                                    &err) == LH_OK,
                      "%s", err.msg);
        float *got = download_free(dimg, ni);
        double e = rel_l2(got, want, ni);
        printf("single-file vae decode (%s): rel L2 %.3g\n", files[fi], e);
        ck_assert_msg(e < TOL, "decode rel L2 %g", e);
        /* encode exercises the encoder half and the squeezed attention */
        float *img = read_all(ref, "encode_image", &nimg), *mean_ref = read_all(ref, "encode_mean", &nm);
        float *dimg2 = upload(img, nimg), *dmean = upload(mean_ref, nm);
        ck_assert_msg(lh_vae_encode(m, dmean, NULL, dimg2, imt->shape[0], imt->shape[2],
                                    imt->shape[3], &err) == LH_OK,
                      "%s", err.msg);
        float *mean = download_free(dmean, nm);
        double em = rel_l2(mean, mean_ref, nm);
        printf("single-file vae encode (%s): mean rel L2 %.3g\n", files[fi], em);
        ck_assert_msg(em < TOL, "encode mean rel L2 %g", em);
        g_be->ops->free(g_be, dl);
        g_be->ops->free(g_be, dimg2);
        free(lat);
        free(want);
        free(got);
        free(img);
        free(mean_ref);
        free(mean);
        lh_st_close(ref);
        lh_vae_free(m);
    }
}
END_TEST

/* ---- Refusals and errors ---- */

/* A file of `src`'s tensors less `drop` (may be NULL), plus `extra` tensors
 * (F32, shapes given) written to a temporary path; returns it opened. */
typedef struct extra_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
} extra_tensor;

static char g_path[128];

static lh_st_file *make_file(const lh_st_file *src, const char *drop, const extra_tensor *extra,
                             int n_extra) {
    lh_st_writer *w = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    for (size_t i = 0; src && i < lh_st_count(src); i++) {
        const lh_st_tensor *t = lh_st_get(src, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        ck_assert_msg(lh_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err) ==
                          LH_OK,
                      "%s", err.msg);
    }
    static float zeros[4096];
    for (int i = 0; i < n_extra; i++) {
        int64_t n = 1;
        for (int d = 0; d < extra[i].ndim; d++) n *= extra[i].shape[d];
        ck_assert(n <= 4096);
        ck_assert_int_eq(lh_st_writer_add(w, extra[i].name, LH_DTYPE_F32, extra[i].ndim,
                                          extra[i].shape, zeros, &err),
                         LH_OK);
    }
    snprintf(g_path, sizeof g_path, "/tmp/lh_test_ldm_%d.safetensors", (int)getpid());
    ck_assert_msg(lh_st_save(w, g_path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    lh_st_file *f = NULL;
    ck_assert_msg(lh_st_open(&f, g_path, &err) == LH_OK, "%s", err.msg);
    return f;
}

static void close_file(lh_st_file *f) {
    lh_st_close(f);
    unlink(g_path);
}

static void expect_detect_error(lh_st_file *f, lh_status code, const char *a, const char *b) {
    lh_ldm_info info;
    lh_error err = {0};
    ck_assert_int_eq(lh_ldm_detect(f, &info, &err), code);
    printf("refused: %s\n", err.msg);
    ck_assert_msg(strstr(err.msg, a) != NULL, "'%s' not in: %s", a, err.msg);
    ck_assert_msg(!b || strstr(err.msg, b) != NULL, "'%s' not in: %s", b, err.msg);
}

START_TEST(test_refuse_sdxl) {
    const extra_tensor x[] = {
        {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", 1, {8}},
        {"model.diffusion_model.input_blocks.0.0.weight", 4, {8, 4, 3, 3}},
    };
    lh_st_file *f = make_file(NULL, NULL, x, 2);
    expect_detect_error(f, LH_ERR_UNSUPPORTED, "SDXL", "conditioner.embedders");
    close_file(f);
    const extra_tensor y[] = {
        {"model.diffusion_model.label_emb.0.0.weight", 2, {8, 8}},
        {"model.diffusion_model.input_blocks.0.0.weight", 4, {8, 4, 3, 3}},
    };
    f = make_file(NULL, NULL, y, 2);
    expect_detect_error(f, LH_ERR_UNSUPPORTED, "label_emb", NULL);
    close_file(f);
}
END_TEST

START_TEST(test_refuse_inpainting) {
    lh_st_file *sd1 = open_fixture("sd1_tiny.safetensors");
    const extra_tensor x[] = {{"model.diffusion_model.input_blocks.0.0.weight", 4, {8, 9, 3, 3}}};
    lh_st_file *f = make_file(sd1, "model.diffusion_model.input_blocks.0.0.weight", x, 1);
    expect_detect_error(f, LH_ERR_UNSUPPORTED, "inpainting", "9 input channels");
    close_file(f);
    lh_st_close(sd1);
}
END_TEST

START_TEST(test_unknown_layout) {
    const extra_tensor x[] = {
        {"foo.bar.weight", 1, {4}},
        {"foo.bar.bias", 1, {4}},
        {"baz", 1, {4}},
    };
    lh_st_file *f = make_file(NULL, NULL, x, 3);
    expect_detect_error(f, LH_ERR_FORMAT, "not a Stable Diffusion single-file", "foo.bar.* (2)");
    expect_detect_error(f, LH_ERR_FORMAT, "baz (1)", NULL);
    close_file(f);
    /* a diffusers component file gets a hint */
    lh_st_file *d = open_fixture("sd1_tiny/unet/diffusion_pytorch_model.safetensors");
    f = make_file(d, NULL, NULL, 0);
    expect_detect_error(f, LH_ERR_FORMAT, "diffusers names", "down_blocks.0.* (");
    close_file(f);
    lh_st_close(d);
}
END_TEST

static void expect_missing(const char *file, const char *drop, lh_ldm_part part) {
    lh_st_file *src = open_fixture(file);
    ck_assert_msg(lh_st_find(src, drop) != NULL, "%s has no %s", file, drop);
    lh_st_file *f = make_file(src, drop, NULL, 0);
    lh_ldm_info info = detect_ok(f);
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/%s/config.json", g_src,
             strstr(file, "sd2") ? "sd2_tiny" : "sd1_tiny",
             part == LH_LDM_PART_UNET ? "unet" : part == LH_LDM_PART_VAE ? "vae" : "text_encoder");
    lh_error err = {0};
    lh_status st;
    if (part == LH_LDM_PART_UNET) {
        ck_assert_int_eq(lh_unet_config_read(&info.unet, path, &err), LH_OK);
        lh_unet *m = NULL;
        st = lh_ldm_load_unet(&m, g_be, f, &info, &err);
        ck_assert_ptr_null(m);
    } else if (part == LH_LDM_PART_VAE) {
        ck_assert_int_eq(lh_vae_config_read(&info.vae, path, &err), LH_OK);
        lh_vae *m = NULL;
        st = lh_ldm_load_vae(&m, g_be, f, &info, &err);
        ck_assert_ptr_null(m);
    } else {
        ck_assert_int_eq(lh_clip_config_read(&info.clip, path, &err), LH_OK);
        lh_clip *m = NULL;
        st = lh_ldm_load_clip(&m, g_be, f, &info, &err);
        ck_assert_ptr_null(m);
    }
    printf("missing: %s\n", err.msg);
    ck_assert_int_eq(st, LH_ERR_NOT_FOUND);
    char quoted[300];
    snprintf(quoted, sizeof quoted, "'%s'", drop);
    ck_assert_msg(strstr(err.msg, quoted) != NULL, "%s not in: %s", quoted, err.msg);
    close_file(f);
    lh_st_close(src);
}

START_TEST(test_missing_tensor) {
    expect_missing("sd1_tiny.safetensors", "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
                   LH_LDM_PART_UNET);
    expect_missing("sd1_tiny.safetensors", "model.diffusion_model.output_blocks.2.1.conv.bias",
                   LH_LDM_PART_UNET);
    expect_missing("sd1_tiny.safetensors", "first_stage_model.decoder.up.0.block.0.nin_shortcut.bias",
                   LH_LDM_PART_VAE);
    expect_missing("sd1_tiny.safetensors", "first_stage_model.encoder.mid.attn_1.k.weight",
                   LH_LDM_PART_VAE);
    expect_missing("sd1_tiny.safetensors",
                   "cond_stage_model.transformer.text_model.encoder.layers.2.mlp.fc2.bias",
                   LH_LDM_PART_CLIP);
    expect_missing("sd2_tiny.safetensors",
                   "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
                   LH_LDM_PART_CLIP);
}
END_TEST

START_TEST(test_missing_part_and_bad_qkv) {
    lh_st_file *sd2 = open_fixture("sd2_tiny.safetensors");
    lh_ldm_info info = detect_ok(sd2);
    info.has[LH_LDM_PART_VAE] = 0;
    lh_vae *v = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_ldm_load_vae(&v, g_be, sd2, &info, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "no VAE"));
    /* a fused q/k/v that does not split in three: reported with its own shape */
    const char *key = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias";
    const extra_tensor x[] = {{key, 1, {100}}};
    lh_st_file *f = make_file(sd2, key, x, 1);
    info = detect_ok(f);
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd2_tiny/text_encoder/config.json", g_src);
    ck_assert_int_eq(lh_clip_config_read(&info.clip, path, &err), LH_OK);
    lh_clip *c = NULL;
    ck_assert_int_eq(lh_ldm_load_clip(&c, g_be, f, &info, &err), LH_ERR_SHAPE);
    printf("bad qkv: %s\n", err.msg);
    ck_assert_ptr_nonnull(strstr(err.msg, key));
    ck_assert_ptr_nonnull(strstr(err.msg, "[100]"));
    close_file(f);
    lh_st_close(sd2);
}
END_TEST

START_TEST(test_file_keys) {
    lh_st_file *f = open_fixture("sd1_tiny.safetensors");
    lh_ldm_info info = detect_ok(f);
    static const struct {
        lh_ldm_part part;
        const char *diffusers, *ldm;
    } CASES[] = {
        /* layers_per_block 2: down block 1 starts at input_blocks.4 */
        {LH_LDM_PART_UNET, "down_blocks.1.resnets.1.conv2.weight",
         "model.diffusion_model.input_blocks.5.0.out_layers.3.weight"},
        {LH_LDM_PART_UNET, "down_blocks.0.downsamplers.0.conv.bias",
         "model.diffusion_model.input_blocks.3.0.op.bias"},
        {LH_LDM_PART_UNET, "mid_block.resnets.1.time_emb_proj.weight",
         "model.diffusion_model.middle_block.2.emb_layers.1.weight"},
        /* up block 0 is UpBlock2D: its upsampler is output_blocks.2.1 */
        {LH_LDM_PART_UNET, "up_blocks.0.upsamplers.0.conv.weight",
         "model.diffusion_model.output_blocks.2.1.conv.weight"},
        {LH_LDM_PART_UNET, "up_blocks.1.attentions.2.proj_out.bias",
         "model.diffusion_model.output_blocks.5.1.proj_out.bias"},
        {LH_LDM_PART_UNET, "time_embedding.linear_2.bias", "model.diffusion_model.time_embed.2.bias"},
        {LH_LDM_PART_VAE, "decoder.up_blocks.0.resnets.1.conv_shortcut.weight",
         "first_stage_model.decoder.up.3.block.1.nin_shortcut.weight"},
        {LH_LDM_PART_VAE, "encoder.mid_block.attentions.0.to_out.0.weight",
         "first_stage_model.encoder.mid.attn_1.proj_out.weight"},
        {LH_LDM_PART_VAE, "quant_conv.bias", "first_stage_model.quant_conv.bias"},
    };
    char buf[512];
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) {
        ck_assert_int_eq(lh_ldm_file_key(buf, sizeof buf, &info, CASES[i].part, CASES[i].diffusers),
                         0);
        ck_assert_str_eq(buf, CASES[i].ldm);
    }
    /* names outside the model */
    ck_assert_int_eq(lh_ldm_file_key(buf, sizeof buf, &info, LH_LDM_PART_UNET,
                                     "down_blocks.7.resnets.0.norm1.weight"),
                     -1);
    ck_assert_int_eq(lh_ldm_file_key(buf, sizeof buf, &info, LH_LDM_PART_UNET,
                                     "up_blocks.1.upsamplers.0.conv.weight"),
                     -1);
    lh_st_close(f);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("ldm_keys");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_detect_sd1);
    tcase_add_test(tc, test_detect_sd2);
    tcase_add_test(tc, test_tensors_sd1);
    tcase_add_test(tc, test_tensors_sd2);
    tcase_add_test(tc, test_unet_outputs);
    tcase_add_test(tc, test_clip_outputs);
    tcase_add_test(tc, test_vae_outputs);
    tcase_add_test(tc, test_refuse_sdxl);
    tcase_add_test(tc, test_refuse_inpainting);
    tcase_add_test(tc, test_unknown_layout);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_missing_part_and_bad_qkv);
    tcase_add_test(tc, test_file_keys);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
