/* CLIP text encoder suite: lorahost's forward pass on the tiny SD 1.x (F16,
 * "text_model.*" keys, quick_gelu) and SD 2.x (BF16, unprefixed keys, gelu)
 * text encoders matches transformers/diffusers (fixtures from
 * tests/golden/models_clip.py) for clip_skip 0..num_hidden_layers, and bad
 * files and arguments fail with messages that name the tensor or field.
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clip.h"
#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"

#define SEQ 77
#define TOL 1e-4 /* relative L2, float32 against a float64 reference */

static lh_backend *g_be;
static lh_st_file *g_ref;
static char g_src[4096];

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    char path[4200], msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "cpu backend: %s",
                  msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/models/clip_reference.safetensors", g_src);
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&g_ref, path, &err) == LH_OK, "%s", err.msg);
}

static void teardown(void) {
    lh_st_close(g_ref);
    lh_backend_destroy(g_be);
}

static void component_dir(char *out, size_t size, const char *variant) {
    snprintf(out, size, "%s/tests/fixtures/models/%s/text_encoder", g_src, variant);
}

/* The fixture's token ids [2, 77] for `variant`. */
static void ref_ids(int32_t *ids, const char *variant) {
    char key[128];
    snprintf(key, sizeof key, "%s.ids", variant);
    const lh_st_tensor *t = lh_st_find(g_ref, key);
    ck_assert_msg(t && t->dtype == LH_DTYPE_I32 && t->numel == 2 * SEQ, "fixture tensor %s", key);
    memcpy(ids, t->data, sizeof(int32_t) * 2 * SEQ);
}

/* Encode on the backend and return a host copy of [b, n, hidden]. */
static float *encode(lh_clip *m, const int32_t *ids, int64_t b, int64_t n, int clip_skip) {
    size_t count = (size_t)(b * n * lh_clip_hidden_size(m));
    float *dev = g_be->ops->alloc(g_be, count * sizeof(float));
    float *host = malloc(count * sizeof(float));
    ck_assert(dev && host);
    lh_error err = {0};
    ck_assert_msg(lh_clip_encode(m, dev, ids, b, n, clip_skip, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(g_be->ops->download(g_be, host, dev, count * sizeof(float)), LH_OK);
    g_be->ops->free(g_be, dev);
    return host;
}

static double rel_l2(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num / den);
}

/* Sequence rows [i, 0..n) of a [2, 77, hidden] reference. */
static double rel_l2_rows(const float *got, const float *ref, int64_t hidden, int64_t i,
                          int64_t n) {
    return rel_l2(got, ref + i * SEQ * hidden, (size_t)(n * hidden));
}

static float *ref_out(const char *variant, int clip_skip, int64_t hidden) {
    char key[128];
    snprintf(key, sizeof key, "%s.clip_skip%d", variant, clip_skip);
    size_t n = (size_t)(2 * SEQ * hidden);
    float *ref = malloc(n * sizeof *ref);
    ck_assert(ref);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(ref, n, g_ref, key, &err) == LH_OK, "%s", err.msg);
    return ref;
}

/* ---- Matches the reference ---- */

static void check_variant(const char *variant, const char *dir, int64_t hidden, int n_layers,
                          lh_clip_act act) {
    lh_error err = {0};
    lh_clip *m = NULL;
    ck_assert_msg(lh_clip_load(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_clip_hidden_size(m), hidden);
    ck_assert_int_eq(lh_clip_get_config(m)->num_hidden_layers, n_layers);
    ck_assert_int_eq(lh_clip_get_config(m)->hidden_act, act);
    int32_t ids[2 * SEQ];
    ref_ids(ids, variant);
    for (int k = 0; k <= n_layers; k++) {
        float *got = encode(m, ids, 2, SEQ, k), *ref = ref_out(variant, k, hidden);
        double e = rel_l2(got, ref, (size_t)(2 * SEQ * hidden));
        printf("%s (%s) clip_skip=%d: rel L2 %.3g\n", variant, dir, k, e);
        ck_assert_msg(e <= TOL, "%s clip_skip=%d: rel L2 %g > %g", variant, k, e, TOL);
        free(got);
        free(ref);
    }
    lh_clip_free(m);
}

START_TEST(test_sd1_f16_prefixed) {
    char dir[4200];
    component_dir(dir, sizeof dir, "sd1_tiny");
    check_variant("sd1_tiny", dir, 32, 3, LH_CLIP_ACT_QUICK_GELU);
}
END_TEST

START_TEST(test_sd2_bf16_unprefixed) {
    char dir[4200];
    component_dir(dir, sizeof dir, "sd2_tiny");
    check_variant("sd2_tiny", dir, 48, 3, LH_CLIP_ACT_GELU);
}
END_TEST

/* Causal: a prefix of the ids gives the prefix of the output; one sequence
 * alone gives its row of the batch. */
START_TEST(test_prefix_and_single_sequence) {
    const char *variants[2] = {"sd1_tiny", "sd2_tiny"};
    for (int vi = 0; vi < 2; vi++) {
        char dir[4200];
        component_dir(dir, sizeof dir, variants[vi]);
        lh_error err = {0};
        lh_clip *m = NULL;
        ck_assert_msg(lh_clip_load(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
        int64_t hidden = lh_clip_hidden_size(m);
        int32_t ids[2 * SEQ], short_ids[2 * 20];
        ref_ids(ids, variants[vi]);
        for (int i = 0; i < 2; i++) memcpy(short_ids + i * 20, ids + i * SEQ, 20 * sizeof(int32_t));
        for (int k = 0; k <= 2; k++) {
            float *ref = ref_out(variants[vi], k, hidden);
            float *got = encode(m, short_ids, 2, 20, k);
            for (int i = 0; i < 2; i++) {
                double e = rel_l2_rows(got + i * 20 * hidden, ref, hidden, i, 20);
                ck_assert_msg(e <= TOL, "%s n=20 seq %d clip_skip=%d: rel L2 %g", variants[vi], i,
                              k, e);
            }
            free(got);
            got = encode(m, ids + SEQ, 1, SEQ, k);
            double e = rel_l2_rows(got, ref, hidden, 1, SEQ);
            ck_assert_msg(e <= TOL, "%s b=1 clip_skip=%d: rel L2 %g", variants[vi], k, e);
            free(got);
            free(ref);
        }
        lh_clip_free(m);
    }
}
END_TEST

/* ---- Rewritten copies of the fixture (F32, renamed, broken) ---- */

typedef struct copy_opts {
    lh_dtype dtype;         /* element type written */
    const char *rename_from; /* key prefix replaced by rename_to */
    const char *rename_to;
    const char *drop;      /* key left out */
    const char *reshape;   /* key written as [rows - 1, cols] */
    const char *nan_key;   /* key whose first element becomes NaN */
    const char *config;    /* config.json text; NULL copies the source's */
} copy_opts;

static char g_tmp[256];

static void make_tmp(void) {
    const char *t = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/lh_test_clip_XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(g_tmp));
}

static void remove_tmp(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", g_tmp);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", g_tmp);
    unlink(p);
    rmdir(g_tmp);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char *buf = malloc(1 << 16);
    ck_assert(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Write a copy of variant's text encoder into g_tmp, changed as `o` says. */
static void write_copy(const char *variant, const copy_opts *o) {
    char src[4200], path[4300];
    component_dir(src, sizeof src, variant);
    snprintf(path, sizeof path, "%s/config.json", src);
    char *cfg = o->config ? NULL : read_text(path);
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    fputs(o->config ? o->config : cfg, f);
    fclose(f);
    free(cfg);

    lh_error err = {0};
    lh_st_file *in = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    ck_assert_msg(lh_st_open(&in, path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer *w = NULL;
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    size_t count = lh_st_count(in);
    void **bufs = calloc(count, sizeof *bufs);
    ck_assert(bufs);
    for (size_t i = 0; i < count; i++) {
        const lh_st_tensor *t = lh_st_get(in, i);
        if (o->drop && strcmp(t->name, o->drop) == 0) continue;
        int64_t shape[LH_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        size_t n = (size_t)t->numel;
        if (o->reshape && strcmp(t->name, o->reshape) == 0) {
            n -= (size_t)shape[1];
            shape[0] -= 1;
        }
        bufs[i] = malloc(n * lh_dtype_size(o->dtype) + 1);
        ck_assert(bufs[i]);
        ck_assert_int_eq(lh_convert(bufs[i], o->dtype, t->data, t->dtype, n), LH_OK);
        if (o->nan_key && strcmp(t->name, o->nan_key) == 0) {
            float nan_f = NAN;
            ck_assert_int_eq(lh_convert(bufs[i], o->dtype, &nan_f, LH_DTYPE_F32, 1), LH_OK);
        }
        char name[512];
        size_t from = o->rename_from ? strlen(o->rename_from) : 0;
        if (from && strncmp(t->name, o->rename_from, from) == 0)
            snprintf(name, sizeof name, "%s%s", o->rename_to, t->name + from);
        else
            snprintf(name, sizeof name, "%s", t->name);
        ck_assert_msg(lh_st_writer_add(w, name, o->dtype, t->ndim, shape, bufs[i], &err) == LH_OK,
                      "%s", err.msg);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", g_tmp);
    ck_assert_msg(lh_st_save(w, path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    for (size_t i = 0; i < count; i++) free(bufs[i]);
    free(bufs);
    lh_st_close(in);
}

/* Load the copy in g_tmp expecting failure `code` with all of `needles` in
 * the message. */
static void expect_load_error(lh_status code, const char *const *needles, int n_needles) {
    lh_error err = {0};
    lh_clip *m = NULL;
    lh_status st = lh_clip_load(&m, g_be, g_tmp, &err);
    ck_assert_ptr_null(m);
    ck_assert_msg(st == code, "status %d (%s), expected %d", st, err.msg, code);
    for (int i = 0; i < n_needles; i++)
        ck_assert_msg(strstr(err.msg, needles[i]) != NULL, "'%s' not in message: %s", needles[i],
                      err.msg);
}

/* F32 weights, and the SD 1.x encoder under transformers 5.x names: same output. */
START_TEST(test_f32_and_renamed_copy) {
    make_tmp();
    copy_opts o = {.dtype = LH_DTYPE_F32, .rename_from = "text_model.", .rename_to = ""};
    write_copy("sd1_tiny", &o);
    check_variant("sd1_tiny", g_tmp, 32, 3, LH_CLIP_ACT_QUICK_GELU);
    /* a half-renamed file: the embeddings under the Hub names, the layers
     * without the prefix; the layers are then missing under the Hub names */
    copy_opts o2 = {.dtype = LH_DTYPE_F32,
                    .rename_from = "embeddings",
                    .rename_to = "text_model.embeddings"};
    write_copy("sd2_tiny", &o2);
    const char *needles[] = {"text_model.encoder.layers.0.layer_norm1.weight", "missing"};
    expect_load_error(LH_ERR_NOT_FOUND, needles, 2);
    remove_tmp();
}
END_TEST

START_TEST(test_missing_tensor) {
    make_tmp();
    copy_opts o = {.dtype = LH_DTYPE_F16, .drop = "text_model.encoder.layers.1.mlp.fc2.weight"};
    write_copy("sd1_tiny", &o);
    const char *needles[] = {"text_model.encoder.layers.1.mlp.fc2.weight", "[32, 128]",
                             "model.safetensors"};
    expect_load_error(LH_ERR_NOT_FOUND, needles, 3);
    copy_opts o2 = {.dtype = LH_DTYPE_F16, .drop = "text_model.final_layer_norm.bias"};
    write_copy("sd1_tiny", &o2);
    const char *needles2[] = {"text_model.final_layer_norm.bias"};
    expect_load_error(LH_ERR_NOT_FOUND, needles2, 1);
    copy_opts o3 = {.dtype = LH_DTYPE_F16, .drop = "text_model.embeddings.token_embedding.weight"};
    write_copy("sd1_tiny", &o3);
    const char *needles3[] = {"text_model.embeddings.token_embedding.weight", "[1000, 32]"};
    expect_load_error(LH_ERR_NOT_FOUND, needles3, 2);
    remove_tmp();
}
END_TEST

START_TEST(test_misshaped_tensor) {
    make_tmp();
    copy_opts o = {.dtype = LH_DTYPE_BF16, .reshape = "encoder.layers.2.self_attn.k_proj.weight"};
    write_copy("sd2_tiny", &o);
    const char *needles[] = {"encoder.layers.2.self_attn.k_proj.weight", "[47, 48]", "[48, 48]"};
    expect_load_error(LH_ERR_SHAPE, needles, 3);
    /* config and weights disagree: hidden_size 64 for a 48-wide file */
    o = (copy_opts){.dtype = LH_DTYPE_BF16,
                    .config = "{\"hidden_size\": 64, \"intermediate_size\": 192, "
                              "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
                              "\"vocab_size\": 1000}"};
    write_copy("sd2_tiny", &o);
    const char *needles2[] = {"embeddings.token_embedding.weight", "[1000, 48]", "[1000, 64]"};
    expect_load_error(LH_ERR_SHAPE, needles2, 3);
    remove_tmp();
}
END_TEST

START_TEST(test_nan_weight) {
    make_tmp();
    copy_opts o = {.dtype = LH_DTYPE_F32, .nan_key = "text_model.encoder.layers.0.mlp.fc1.bias"};
    write_copy("sd1_tiny", &o);
    const char *needles[] = {"text_model.encoder.layers.0.mlp.fc1.bias", "NaN"};
    expect_load_error(LH_ERR_NUMERIC, needles, 2);
    remove_tmp();
}
END_TEST

START_TEST(test_bad_config) {
    static const struct {
        const char *json;
        lh_status code;
        const char *field;
    } cases[] = {
        {"{\"hidden_act\": \"relu\", \"hidden_size\": 32}", LH_ERR_UNSUPPORTED, "'hidden_act'"},
        {"{\"hidden_act\": 3}", LH_ERR_CONFIG, "'hidden_act'"},
        {"{\"hidden_size\": \"32\"}", LH_ERR_CONFIG, "'hidden_size'"},
        {"{\"hidden_size\": 32.5}", LH_ERR_CONFIG, "'hidden_size'"},
        {"{\"num_hidden_layers\": 0}", LH_ERR_CONFIG, "'num_hidden_layers'"},
        {"{\"vocab_size\": -5}", LH_ERR_CONFIG, "'vocab_size'"},
        {"{\"intermediate_size\": 99999999999}", LH_ERR_CONFIG, "'intermediate_size'"},
        {"{\"max_position_embeddings\": null}", LH_ERR_CONFIG, "'max_position_embeddings'"},
        {"{\"hidden_size\": 32, \"num_attention_heads\": 5}", LH_ERR_CONFIG,
         "'num_attention_heads'"},
        {"{\"layer_norm_eps\": -1e-5}", LH_ERR_CONFIG, "'layer_norm_eps'"},
        {"{\"layer_norm_eps\": \"1e-5\"}", LH_ERR_CONFIG, "'layer_norm_eps'"},
        {"{\"model_type\": \"clip_vision_model\"}", LH_ERR_CONFIG, "'model_type'"},
        {"[1, 2]", LH_ERR_FORMAT, "config.json"},
        {"{\"hidden_size\": 32,", LH_ERR_FORMAT, "config.json"},
    };
    make_tmp();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        copy_opts o = {.dtype = LH_DTYPE_F16, .config = cases[i].json};
        write_copy("sd1_tiny", &o);
        const char *needles[] = {cases[i].field, "config.json"};
        expect_load_error(cases[i].code, needles, 2);
    }
    /* no config.json at all */
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", g_tmp);
    unlink(p);
    const char *needles[] = {"config.json"};
    expect_load_error(LH_ERR_NOT_FOUND, needles, 1);
    remove_tmp();
}
END_TEST

/* A config saved with only non-default values reads CLIPTextConfig's defaults. */
START_TEST(test_config_defaults) {
    make_tmp();
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", g_tmp);
    FILE *f = fopen(p, "wb");
    ck_assert(f);
    fputs("{\"architectures\": [\"CLIPTextModel\"], \"hidden_size\": 768, \"projection_dim\": 768, "
          "\"intermediate_size\": 3072, \"num_attention_heads\": 12}",
          f);
    fclose(f);
    lh_clip_config c;
    lh_error err = {0};
    ck_assert_msg(lh_clip_config_read(&c, p, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.vocab_size, 49408);
    ck_assert_int_eq(c.hidden_size, 768);
    ck_assert_int_eq(c.intermediate_size, 3072);
    ck_assert_int_eq(c.num_hidden_layers, 12);
    ck_assert_int_eq(c.num_attention_heads, 12);
    ck_assert_int_eq(c.max_position_embeddings, 77);
    ck_assert_int_eq(c.hidden_act, LH_CLIP_ACT_QUICK_GELU);
    ck_assert(fabsf(c.layer_norm_eps - 1e-5f) < 1e-12f);
    unlink(p);
    remove_tmp();
}
END_TEST

START_TEST(test_bad_encode_arguments) {
    char dir[4200];
    component_dir(dir, sizeof dir, "sd1_tiny");
    lh_error err = {0};
    lh_clip *m = NULL;
    ck_assert_msg(lh_clip_load(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
    float *dev = g_be->ops->alloc(g_be, 2 * 78 * 32 * sizeof(float));
    ck_assert_ptr_nonnull(dev);
    int32_t ids[2 * 78] = {0};
    ids[SEQ + 5] = 1000;
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, SEQ, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "1000") && strstr(err.msg, "[1, 5]") &&
                      strstr(err.msg, "vocab_size"),
                  "%s", err.msg);
    ids[SEQ + 5] = -1;
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, SEQ, 0, &err), LH_ERR_INVALID);
    ids[SEQ + 5] = 999;
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, SEQ, 4, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "clip_skip 4"), "%s", err.msg);
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, SEQ, -1, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, 78, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "max_position_embeddings"), "%s", err.msg);
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, 0, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 0, SEQ, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_clip_encode(m, dev, NULL, 2, SEQ, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_clip_encode(m, dev, ids, 2, SEQ, 3, &err), LH_OK); /* = num_hidden_layers */
    g_be->ops->free(g_be, dev);
    lh_clip_free(m);
}
END_TEST

static Suite *clip_suite(void) {
    Suite *s = suite_create("clip");
    TCase *tc = tcase_create("forward");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sd1_f16_prefixed);
    tcase_add_test(tc, test_sd2_bf16_unprefixed);
    tcase_add_test(tc, test_prefix_and_single_sequence);
    tcase_add_test(tc, test_f32_and_renamed_copy);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_misshaped_tensor);
    tcase_add_test(tc, test_nan_weight);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_config_defaults);
    tcase_add_test(tc, test_bad_encode_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(clip_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
