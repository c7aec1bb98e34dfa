/* Adapter suite: LoRA files in every format on the tiny SD 1.x / 2.x models
 * against diffusers + peft (tests/fixtures/adapters/, written by
 * tests/golden/adapters.py): text-encoder and U-Net outputs after
 * load_lora_weights, set_adapters([A, B], [0.7, 0.4]), per-component and
 * per-block weights, fuse/unfuse and PEFT DoRA, in runtime and merged mode,
 * within relative L2 1e-4; the same LoRA from kohya, kohya-with-metadata,
 * old-diffusers and attention-processor files; LyCORIS LoHa/LoKr/LoCon/
 * Tucker/DoRA/full deltas against float64 formulas; a 3-step pipeline run
 * with adapters; merge/unmerge 1000 times restoring every base weight bit
 * for bit; a switch re-applying only the layers it changes; bad files
 * refused with the model still usable; models from directories and from
 * single-file checkpoints; LDM-named keys; key parsing and prompt tags. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "adapter_keys.h"
#include "adapter_prompt.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "test_util.h"
#include "pipeline.h"

#define TOL 1e-4

static char g_src[4096], g_dir[4200], g_tmp[64];
static lh_backend *g_be;
static lh_registry *g_reg;

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    snprintf(g_dir, sizeof g_dir, "%s/tests/fixtures/adapters", g_src);
    char msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_error err = {0};
    ck_assert_msg(lh_registry_create(&g_reg, &err) == LH_OK &&
                      lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_test_adapters_XXXXXX");
    ck_assert(mkdtemp(g_tmp) != NULL);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    lh_registry_destroy(g_reg);
    lh_backend_destroy(g_be);
}

/* ---- Fixtures ---- */

typedef struct fixture {
    lh_model *m;
    lh_st_file *ref;
    int32_t *ids;
    float *x, *t, *ctx;
    int64_t b, n_ctx, hidden, h, w, c_out;
} fixture;

static float *ref_f32(const lh_st_file *ref, const char *name, size_t *numel) {
    const lh_st_tensor *t = lh_st_find(ref, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, ref, name, &err) == LH_OK, "%s", err.msg);
    if (numel) *numel = (size_t)t->numel;
    return v;
}

static void fixture_open(fixture *f, const char *model, const char *expected) {
    memset(f, 0, sizeof *f);
    char path[4400];
    lh_error err = {0};
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s", g_src, model);
    ck_assert_msg(lh_model_open(&f->m, g_be, path, &err) == LH_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/%s", g_dir, expected);
    ck_assert_msg(lh_st_open(&f->ref, path, &err) == LH_OK, "%s", err.msg);
    const lh_st_tensor *ids = lh_st_find(f->ref, "ids"), *x = lh_st_find(f->ref, "x");
    const lh_st_tensor *ctx = lh_st_find(f->ref, "context");
    ck_assert(ids && ids->dtype == LH_DTYPE_I32 && x && ctx);
    f->b = ids->shape[0];
    f->n_ctx = ids->shape[1];
    f->ids = malloc((size_t)ids->numel * sizeof *f->ids);
    memcpy(f->ids, ids->data, (size_t)ids->numel * sizeof *f->ids);
    f->x = ref_f32(f->ref, "x", NULL);
    f->t = ref_f32(f->ref, "t", NULL);
    f->ctx = ref_f32(f->ref, "context", NULL);
    f->hidden = ctx->shape[2];
    f->h = x->shape[2];
    f->w = x->shape[3];
    f->c_out = lh_unet_get_config(f->m->unet)->out_channels;
}

static void fixture_close(fixture *f) {
    lh_model_close(f->m);
    lh_st_close(f->ref);
    free(f->ids);
    free(f->x);
    free(f->t);
    free(f->ctx);
}

static lh_adapter *load(lh_model *m, const char *file) {
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", g_dir, file);
    lh_error err = {0};
    lh_adapter *a = NULL;
    ck_assert_msg(lh_adapter_load(&a, m, g_reg, path, NULL, &err) == LH_OK, "%s: %s", file,
                  err.msg);
    return a;
}

/* The text encoder's and U-Net's outputs compared with "<scenario>.te" and
 * "<scenario>.unet" (either may be skipped with NULL). */
static void check_outputs(const fixture *f, const char *scenario, const char *what, int te,
                          int unet) {
    lh_error err = {0};
    char key[128];
    if (te) {
        size_t n = (size_t)(f->b * f->n_ctx * f->hidden);
        float *got = malloc(n * sizeof *got);
        ck_assert_msg(lh_clip_encode(f->m->clip, got, f->ids, f->b, f->n_ctx, 0, &err) == LH_OK,
                      "%s", err.msg);
        snprintf(key, sizeof key, "%s.te", scenario);
        size_t nw;
        float *want = ref_f32(f->ref, key, &nw);
        ck_assert_uint_eq(nw, n);
        double e = rel_l2(got, want, n);
        ck_assert_msg(e < TOL, "%s: %s text encoder rel L2 %g", what, scenario, e);
        free(got);
        free(want);
    }
    if (unet) {
        size_t n = (size_t)(f->b * f->c_out * f->h * f->w);
        float *got = malloc(n * sizeof *got);
        ck_assert_msg(lh_unet_forward(f->m->unet, got, f->x, f->t, f->ctx, f->b, f->h, f->w,
                                      f->n_ctx, &err) == LH_OK,
                      "%s", err.msg);
        snprintf(key, sizeof key, "%s.unet", scenario);
        size_t nw;
        float *want = ref_f32(f->ref, key, &nw);
        ck_assert_uint_eq(nw, n);
        double e = rel_l2(got, want, n);
        ck_assert_msg(e < TOL, "%s: %s U-Net rel L2 %g", what, scenario, e);
        free(got);
        free(want);
    }
}

static void set(lh_model *m, lh_adapter **a, const lh_adapter_weights *w, size_t n,
                lh_adapter_mode mode) {
    lh_error err = {0};
    ck_assert_msg(lh_adapter_set_ex(m, a, w, n, mode, &err) == LH_OK, "%s", err.msg);
}

static void set_scales(lh_model *m, lh_adapter **a, const double *s, size_t n,
                       lh_adapter_mode mode) {
    lh_adapter_weights w[4];
    for (size_t i = 0; i < n; i++) lh_adapter_weights_init(&w[i], s[i]);
    set(m, a, w, n, mode);
}

static const lh_adapter_mode MODES[] = {LH_ADAPTER_RUNTIME, LH_ADAPTER_MERGED};
static const char *const MODE_NAMES[] = {"runtime", "merged"};

/* ---- Against diffusers ---- */

START_TEST(test_sd1_single_lora_every_format) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    check_outputs(&f, "base", "no adapter", 1, 1);
    static const char *const A_FILES[] = {"sd1_A_peft.safetensors", "sd1_A_kohya.safetensors"};
    static const char *const B_FILES[] = {"sd1_B_peft.safetensors",
                                          "sd1_B_kohya_meta.safetensors",
                                          "sd1_B_olddiff.safetensors"};
    double one = 1.0;
    for (int mode = 0; mode < 2; mode++) {
        for (size_t i = 0; i < 2; i++) {
            lh_adapter *a = load(f.m, A_FILES[i]);
            set_scales(f.m, &a, &one, 1, MODES[mode]);
            char what[128];
            snprintf(what, sizeof what, "%s %s", A_FILES[i], MODE_NAMES[mode]);
            check_outputs(&f, "A", what, 1, 1);
            lh_adapter_unload(a);
            check_outputs(&f, "base", "after unload", 1, 1);
        }
        for (size_t i = 0; i < 3; i++) {
            lh_adapter *a = load(f.m, B_FILES[i]);
            set_scales(f.m, &a, &one, 1, MODES[mode]);
            char what[128];
            snprintf(what, sizeof what, "%s %s", B_FILES[i], MODE_NAMES[mode]);
            check_outputs(&f, "B", what, 1, 1);
            lh_adapter_unload(a);
        }
        /* attention processors: the U-Net half of B only */
        lh_adapter *a = load(f.m, "sd1_B_attnprocs.safetensors");
        set_scales(f.m, &a, &one, 1, MODES[mode]);
        check_outputs(&f, "B", "sd1_B_attnprocs", 0, 1);
        lh_adapter_unload(a);
    }
    fixture_close(&f);
}
END_TEST

/* What `lorahost train` exported (kohya and PEFT form, U-Net LoRA + LoCon
 * and text-encoder LoRA) gives what diffusers' load_lora_weights makes of
 * the same files (tests/golden/train_export.py). */
START_TEST(test_trained_exports_match_diffusers) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "trained_expected.safetensors");
    check_outputs(&f, "base", "no adapter", 1, 1);
    static const char *const FORMS[] = {"kohya", "peft"};
    double one = 1.0;
    for (int mode = 0; mode < 2; mode++)
        for (int i = 0; i < 2; i++) {
            char file[64], what[96];
            snprintf(file, sizeof file, "trained_%s.safetensors", FORMS[i]);
            lh_adapter *a = load(f.m, file);
            const lh_adapter_report *r = lh_adapter_get_report(a);
            ck_assert_msg(r->layers_unet == 60 && r->layers_te == 12 && r->n_unmatched == 0,
                          "%s: %d U-Net, %d text-encoder layers, %zu unmatched", file,
                          r->layers_unet, r->layers_te, r->n_unmatched);
            set_scales(f.m, &a, &one, 1, MODES[mode]);
            snprintf(what, sizeof what, "%s %s", file, MODE_NAMES[mode]);
            check_outputs(&f, FORMS[i], what, 1, 1);
            lh_adapter_unload(a);
        }
    fixture_close(&f);
}
END_TEST

/* The same files on the model loaded from its single-file checkpoint (LDM
 * keys), in both modes. */
START_TEST(test_single_file_model) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_model_close(f.m);
    char path[4400], tok[4400], cfg[4400];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny.safetensors", g_src);
    snprintf(cfg, sizeof cfg, "%s/tests/fixtures/models/sd1_tiny", g_src);
    snprintf(tok, sizeof tok, "%s/tokenizer", cfg);
    lh_model_opts o = {tok, cfg};
    lh_error err = {0};
    ck_assert_msg(lh_model_open_single_file(&f.m, g_be, path, &o, &err) == LH_OK, "%s", err.msg);
    check_outputs(&f, "base", "single file", 1, 1);
    lh_adapter *ab[2] = {load(f.m, "sd1_A_kohya.safetensors"), load(f.m, "sd1_B_olddiff.safetensors")};
    const double s[2] = {0.7, 0.4};
    for (int mode = 0; mode < 2; mode++) {
        set_scales(f.m, ab, s, 2, MODES[mode]);
        check_outputs(&f, "AB", MODE_NAMES[mode], 1, 1);
    }
    lh_adapter_unload(ab[0]);
    lh_adapter_unload(ab[1]);
    check_outputs(&f, "base", "single file after unload", 1, 1);
    fixture_close(&f);
}
END_TEST

/* A PEFT save_pretrained directory: base_model.model.<module> keys, alpha
 * from adapter_config.json beside the file (A's U-Net half, alpha 8). */
START_TEST(test_peft_directory) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    char path[4400];
    snprintf(path, sizeof path, "%s/sd1_A_peft.safetensors", g_dir);
    lh_st_file *src = NULL;
    lh_st_writer *w = NULL;
    lh_error err = {0};
    ck_assert(lh_st_open(&src, path, &err) == LH_OK && lh_st_writer_create(&w, &err) == LH_OK);
    for (size_t i = 0; i < lh_st_count(src); i++) {
        const lh_st_tensor *t = lh_st_get(src, i);
        if (strncmp(t->name, "unet.", 5)) continue;
        char name[512];
        snprintf(name, sizeof name, "base_model.model.%s", t->name + 5);
        ck_assert(lh_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &err) == LH_OK);
    }
    char dir[256];
    snprintf(dir, sizeof dir, "%s/peft", g_tmp);
    ck_assert(mkdir(dir, 0755) == 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ck_assert_msg(lh_st_save(w, path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    lh_st_close(src);
    double one = 1.0;
    lh_adapter *a = NULL;
    /* without its config: alpha = rank, not A */
    ck_assert_msg(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(lh_adapter_get_report(a)->alpha_source, "none (alpha = rank)");
    lh_adapter_unload(a);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    FILE *fp = fopen(cfg, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"alpha_pattern\": {}}", fp);
    fclose(fp);
    ck_assert_msg(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(lh_adapter_get_report(a)->alpha_source, "PEFT config");
    ck_assert_str_eq(lh_adapter_get_report(a)->format, "peft");
    set_scales(f.m, &a, &one, 1, LH_ADAPTER_RUNTIME);
    check_outputs(&f, "A", "PEFT directory", 0, 1);
    lh_adapter_unload(a);
    fp = fopen(cfg, "w");
    fputs("{\"lora_alpha\": -1}", fp);
    fclose(fp);
    ck_assert(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) == LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "adapter_config.json lora_alpha is -1"), "%s", err.msg);
    fp = fopen(cfg, "w");
    fputs("{\"lora_alpha\": ", fp);
    fclose(fp);
    ck_assert(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) == LH_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "adapter_config.json:1"), "%s", err.msg);
    fixture_close(&f);
}
END_TEST

START_TEST(test_sd1_two_adapters_and_weights) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *ab[2] = {load(f.m, "sd1_A_peft.safetensors"), load(f.m, "sd1_B_peft.safetensors")};
    const double s[2] = {0.7, 0.4};
    for (int mode = 0; mode < 2; mode++) {
        set_scales(f.m, ab, s, 2, MODES[mode]);
        check_outputs(&f, "AB", MODE_NAMES[mode], 1, 1);
        /* fuse_lora's weights are the merged ones */
        check_outputs(&f, "fusedAB", MODE_NAMES[mode], 1, 1);
        lh_adapter_weights w;
        lh_adapter_weights_init(&w, 1.0);
        w.unet = 0.5;
        w.text_encoder = 1.3;
        set(f.m, ab, &w, 1, MODES[mode]);
        check_outputs(&f, "split", MODE_NAMES[mode], 1, 1);
        lh_adapter_weights_init(&w, 1.0);
        for (int i = 0; i < LH_ADAPTER_MAX_BLOCKS; i++) {
            w.down[i] = 0.3;
            w.up[i] = 0.6;
        }
        w.mid = 0.8;
        set(f.m, ab, &w, 1, MODES[mode]);
        check_outputs(&f, "blocks", MODE_NAMES[mode], 1, 1);
        set(f.m, NULL, NULL, 0, MODES[mode]);
        check_outputs(&f, "unfused", MODE_NAMES[mode], 1, 1);
    }
    lh_adapter_unload(ab[0]);
    lh_adapter_unload(ab[1]);
    fixture_close(&f);
}
END_TEST

START_TEST(test_sd1_peft_dora) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *d = load(f.m, "sd1_D_peft_dora.safetensors");
    double one = 1.0;
    for (int mode = 0; mode < 2; mode++) {
        set_scales(f.m, &d, &one, 1, MODES[mode]);
        check_outputs(&f, "D", MODE_NAMES[mode], 0, 1);
    }
    lh_adapter_unload(d);
    check_outputs(&f, "base", "after DoRA", 0, 1);
    fixture_close(&f);
}
END_TEST

START_TEST(test_sd2_lora) {
    fixture f;
    fixture_open(&f, "sd2_tiny", "sd2_expected.safetensors");
    check_outputs(&f, "base", "no adapter", 1, 1);
    static const char *const FILES[] = {"sd2_C_peft.safetensors", "sd2_C_kohya.safetensors"};
    double one = 1.0;
    for (int mode = 0; mode < 2; mode++)
        for (size_t i = 0; i < 2; i++) {
            lh_adapter *a = load(f.m, FILES[i]);
            set_scales(f.m, &a, &one, 1, MODES[mode]);
            check_outputs(&f, "C", FILES[i], 1, 1);
            lh_adapter_unload(a);
        }
    fixture_close(&f);
}
END_TEST

/* diffusers' pipeline, 3 steps with CFG, with A and with A + B. */
START_TEST(test_sd1_pipeline_with_adapters) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    json_t *pl = json_loads(lh_st_meta_find(f.ref, "pipeline"), 0, NULL);
    ck_assert(pl != NULL);
    float *noise = ref_f32(f.ref, "noise", NULL);
    lh_adapter *ab[2] = {load(f.m, "sd1_A_kohya.safetensors"), load(f.m, "sd1_B_peft.safetensors")};
    static const struct {
        const char *scenario;
        size_t n;
        double s[2];
    } CASES[] = {{"base", 0, {0}}, {"A", 1, {1.0}}, {"AB", 2, {0.7, 0.4}}};
    for (int mode = 0; mode < 2; mode++)
        for (size_t c = 0; c < 3; c++) {
            set_scales(f.m, ab, CASES[c].s, CASES[c].n, MODES[mode]);
            lh_gen_params p;
            lh_gen_params_init(&p);
            p.prompt = json_string_value(json_object_get(pl, "prompt"));
            p.negative_prompt = json_string_value(json_object_get(pl, "negative_prompt"));
            p.steps = (int32_t)json_integer_value(json_object_get(pl, "steps"));
            p.cfg_scale = json_number_value(json_object_get(pl, "cfg"));
            p.width = json_integer_value(json_object_get(pl, "width"));
            p.height = json_integer_value(json_object_get(pl, "height"));
            p.init_noise = noise;
            p.skip_decode = 1;
            lh_gen_result r = {0};
            lh_error err = {0};
            ck_assert_msg(lh_pipeline_txt2img(f.m, g_reg, &p, &r, &err) == LH_OK, "%s", err.msg);
            char key[64];
            snprintf(key, sizeof key, "%s.latents", CASES[c].scenario);
            size_t n;
            float *want = ref_f32(f.ref, key, &n);
            double e = rel_l2(r.latents, want, n);
            ck_assert_msg(e < TOL, "pipeline %s %s: latents rel L2 %g", CASES[c].scenario,
                          MODE_NAMES[mode], e);
            free(want);
            lh_gen_result_free(&r);
        }
    lh_adapter_unload(ab[0]);
    lh_adapter_unload(ab[1]);
    free(noise);
    json_decref(pl);
    fixture_close(&f);
}
END_TEST

/* ---- LyCORIS kinds against float64 formulas ---- */

START_TEST(test_lycoris_deltas) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *a = load(f.m, "sd1_lycoris.safetensors");
    const lh_adapter_report *r = lh_adapter_get_report(a);
    ck_assert_uint_eq(r->n_unmatched, 0);
    char path[4400];
    snprintf(path, sizeof path, "%s/sd1_lycoris_expected.safetensors", g_dir);
    lh_st_file *exp = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&exp, path, &err) == LH_OK, "%s", err.msg);
    json_t *layers = json_loads(lh_st_meta_find(exp, "layers"), 0, NULL);
    double mult = atof(lh_st_meta_find(exp, "multiplier"));
    ck_assert(json_object_size(layers) >= 10);
    const char *name;
    json_t *info;
    json_object_foreach(layers, name, info) {
        char key[300];
        snprintf(key, sizeof key, "%s.delta", name);
        size_t n, nb = 0;
        float *want = ref_f32(exp, key, &n), *want_b = NULL;
        snprintf(key, sizeof key, "%s.bias_delta", name);
        if (lh_st_find(exp, key)) want_b = ref_f32(exp, key, &nb);
        float *got = malloc(n * sizeof *got), *got_b = malloc((nb ? nb : 1) * sizeof *got_b);
        lh_layer_part part = strncmp(name, "text_model.", 11) ? LH_LAYER_UNET : LH_LAYER_TE;
        ck_assert_msg(lh_adapter_layer_delta(a, part, name, mult, got, n, want_b ? got_b : NULL,
                                             &err) == LH_OK,
                      "%s", err.msg);
        double e = rel_l2(got, want, n);
        ck_assert_msg(e < 1e-5, "%s (%s): delta rel L2 %g", name,
                      json_string_value(json_object_get(info, "kind")), e);
        if (want_b) {
            e = rel_l2(got_b, want_b, nb);
            ck_assert_msg(e < 1e-6, "%s: bias delta rel L2 %g", name, e);
        }
        free(want);
        free(want_b);
        free(got);
        free(got_b);
    }
    /* runtime forward == merged weights for every kind, through both networks */
    size_t nt = (size_t)(f.b * f.n_ctx * f.hidden), nu = (size_t)(f.b * f.c_out * f.h * f.w);
    float *te[2], *un[2];
    for (int mode = 0; mode < 2; mode++) {
        set_scales(f.m, &a, &mult, 1, MODES[mode]);
        te[mode] = malloc(nt * sizeof(float));
        un[mode] = malloc(nu * sizeof(float));
        ck_assert(lh_clip_encode(f.m->clip, te[mode], f.ids, f.b, f.n_ctx, 0, &err) == LH_OK);
        ck_assert(lh_unet_forward(f.m->unet, un[mode], f.x, f.t, f.ctx, f.b, f.h, f.w, f.n_ctx,
                                  &err) == LH_OK);
    }
    ck_assert_msg(rel_l2(te[0], te[1], nt) < 1e-5, "te runtime vs merged %g",
                  rel_l2(te[0], te[1], nt));
    ck_assert_msg(rel_l2(un[0], un[1], nu) < 1e-5, "unet runtime vs merged %g",
                  rel_l2(un[0], un[1], nu));
    for (int mode = 0; mode < 2; mode++) {
        free(te[mode]);
        free(un[mode]);
    }
    json_decref(layers);
    lh_st_close(exp);
    lh_adapter_unload(a);
    fixture_close(&f);
}
END_TEST

/* ---- Hot switching ---- */

static float **snapshot(lh_adapt *ad) {
    float **s = calloc(ad->layers.n, sizeof *s);
    for (size_t i = 0; i < ad->layers.n; i++) {
        const lh_layer *l = &ad->layers.v[i];
        size_t n = lh_layer_numel(l) + (l->b ? (size_t)l->shape[0] : 0);
        s[i] = malloc(n * sizeof(float));
        memcpy(s[i], l->w, lh_layer_numel(l) * sizeof(float));
        if (l->b) memcpy(s[i] + lh_layer_numel(l), l->b, (size_t)l->shape[0] * sizeof(float));
    }
    return s;
}

static int same_bits(lh_adapt *ad, float **s) {
    for (size_t i = 0; i < ad->layers.n; i++) {
        const lh_layer *l = &ad->layers.v[i];
        if (memcmp(s[i], l->w, lh_layer_numel(l) * sizeof(float))) return 0;
        if (l->b && memcmp(s[i] + lh_layer_numel(l), l->b, (size_t)l->shape[0] * sizeof(float)))
            return 0;
    }
    return 1;
}

START_TEST(test_merge_unmerge_1000_times_bit_exact) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *a[3] = {load(f.m, "sd1_A_kohya.safetensors"), load(f.m, "sd1_B_peft.safetensors"),
                        load(f.m, "sd1_lycoris.safetensors")};
    float **base = snapshot(f.m->adapt);
    const double s[3] = {0.7, 0.4, 0.9};
    for (int i = 0; i < 1000; i++) {
        /* a different set and scale each time, then back to none */
        double si[3] = {s[0] + 1e-3 * i, s[1], s[2] - 1e-3 * i};
        set_scales(f.m, a, si, (size_t)(1 + i % 3), LH_ADAPTER_MERGED);
        ck_assert_msg(!same_bits(f.m->adapt, base), "iteration %d: merge changed nothing", i);
        set(f.m, NULL, NULL, 0, LH_ADAPTER_MERGED);
        ck_assert_msg(same_bits(f.m->adapt, base), "iteration %d: base weights drifted", i);
    }
    /* a merged set, then runtime mode: the weights are the base again */
    set_scales(f.m, a, s, 3, LH_ADAPTER_MERGED);
    set_scales(f.m, a, s, 3, LH_ADAPTER_RUNTIME);
    ck_assert(same_bits(f.m->adapt, base));
    for (size_t i = 0; i < f.m->adapt->layers.n; i++) free(base[i]);
    free(base);
    for (int i = 0; i < 3; i++) lh_adapter_unload(a[i]);
    fixture_close(&f);
}
END_TEST

static size_t layers_of(const lh_adapter *a) {
    return (size_t)(a->report.layers_unet + a->report.layers_te);
}

START_TEST(test_switch_touches_only_changed_layers) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *ab[2] = {load(f.m, "sd1_A_peft.safetensors"), load(f.m, "sd1_B_peft.safetensors")};
    lh_adapt *ad = f.m->adapt;
    for (int mode = 0; mode < 2; mode++) {
        double s[2] = {1.0, 0.5};
        set_scales(f.m, ab, s, 1, MODES[mode]);
        size_t before = ad->n_layer_updates;
        set_scales(f.m, ab, s, 1, MODES[mode]); /* the same set: nothing to do */
        ck_assert_uint_eq(ad->n_layer_updates, before);
        set_scales(f.m, ab, s, 2, MODES[mode]); /* adding B: only B's layers */
        ck_assert_uint_eq(ad->n_layer_updates, before + layers_of(ab[1]));
        before = ad->n_layer_updates;
        s[1] = 0.25; /* rescaling B: only B's layers */
        set_scales(f.m, ab, s, 2, MODES[mode]);
        ck_assert_uint_eq(ad->n_layer_updates, before + layers_of(ab[1]));
        set(f.m, NULL, NULL, 0, MODES[mode]);
    }
    lh_adapter_unload(ab[0]);
    lh_adapter_unload(ab[1]);
    fixture_close(&f);
}
END_TEST

/* ---- Bad input ---- */

static void write_file(const char *path, const char *const *names, const int64_t (*shapes)[4],
                       const int *ndims, float *const *data, int n, const char *meta_key,
                       const char *meta_value) {
    lh_st_writer *w = NULL;
    lh_error err = {0};
    ck_assert(lh_st_writer_create(&w, &err) == LH_OK);
    for (int i = 0; i < n; i++)
        ck_assert_msg(lh_st_writer_add(w, names[i], LH_DTYPE_F32, ndims[i], shapes[i], data[i],
                                       &err) == LH_OK,
                      "%s", err.msg);
    if (meta_key) ck_assert(lh_st_writer_add_meta(w, meta_key, meta_value, &err) == LH_OK);
    ck_assert_msg(lh_st_save(w, path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
}

/* A kohya LoRA on the tiny U-Net's first attn1.to_q with the given down/up
 * shapes, element 3 of lora_down set to `fill`, and (extra_key) a key that
 * matches no layer. */
static lh_status try_lora(fixture *f, const char *tag, const int64_t down[2],
                          const int64_t up[2], float fill, float alpha, int extra_key,
                          lh_adapter_policy policy, lh_error *err) {
    static const char *const K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    char names[4][160];
    snprintf(names[0], sizeof names[0], "%s.lora_down.weight", K);
    snprintf(names[1], sizeof names[1], "%s.lora_up.weight", K);
    snprintf(names[2], sizeof names[2], "%s.alpha", K);
    snprintf(names[3], sizeof names[3], "lora_unet_no_such_layer.lora_down.weight");
    const char *np[4] = {names[0], names[1], names[2], names[3]};
    int64_t shapes[4][4] = {{down[0], down[1]}, {up[0], up[1]}, {0}, {1, 1}};
    int nd[4] = {2, 2, 0, 2};
    static float buf[2][4096];
    for (int i = 0; i < 4096; i++) buf[0][i] = buf[1][i] = 0.01f * (float)(i % 7);
    buf[0][3] = fill;
    float one = 1.0f;
    float *data[4] = {buf[0], buf[1], &alpha, &one};
    char path[256];
    snprintf(path, sizeof path, "%s/%s.safetensors", g_tmp, tag);
    write_file(path, np, (const int64_t(*)[4])shapes, nd, data, extra_key ? 4 : 3, NULL, NULL);
    lh_adapter *a = NULL;
    lh_adapter_load_opts o = {.policy = policy};
    lh_status st = lh_adapter_load(&a, f->m, g_reg, path, &o, err);
    if (st == LH_OK) {
        ck_assert(a != NULL);
        lh_adapter_unload(a);
    } else {
        ck_assert(a == NULL);
    }
    return st;
}

/* kohya alphas from metadata: ss_network_alpha for linears, ss_network_args'
 * conv_alpha for 3x3 convs, the same deltas as per-module .alpha tensors. */
START_TEST(test_kohya_metadata_alphas) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    static const char *const LIN = "lora_unet_down_blocks_0_attentions_0_proj_out";
    static const char *const CONV = "lora_unet_down_blocks_0_resnets_0_conv1";
    char names[6][128];
    snprintf(names[0], sizeof names[0], "%s.lora_down.weight", LIN);
    snprintf(names[1], sizeof names[1], "%s.lora_up.weight", LIN);
    snprintf(names[2], sizeof names[2], "%s.lora_down.weight", CONV);
    snprintf(names[3], sizeof names[3], "%s.lora_up.weight", CONV);
    snprintf(names[4], sizeof names[4], "%s.alpha", LIN);
    snprintf(names[5], sizeof names[5], "%s.alpha", CONV);
    const char *np[6] = {names[0], names[1], names[2], names[3], names[4], names[5]};
    int64_t shapes[6][4] = {{2, 8}, {8, 2}, {2, 8, 3, 3}, {8, 2, 1, 1}, {0}, {0}};
    int nd[6] = {2, 2, 4, 4, 0, 0};
    static float v[4][144];
    for (int i = 0; i < 144; i++)
        for (int j = 0; j < 4; j++) v[j][i] = 0.01f * (float)((i * (j + 3)) % 11) - 0.05f;
    float a_lin = 16.0f, a_conv = 2.0f;
    float *data[6] = {v[0], v[1], v[2], v[3], &a_lin, &a_conv};
    char p1[256], p2[256];
    snprintf(p1, sizeof p1, "%s/tensors.safetensors", g_tmp);
    snprintf(p2, sizeof p2, "%s/meta.safetensors", g_tmp);
    write_file(p1, np, (const int64_t(*)[4])shapes, nd, data, 6, NULL, NULL);
    lh_st_writer *w = NULL;
    lh_error err = {0};
    ck_assert(lh_st_writer_create(&w, &err) == LH_OK);
    for (int i = 0; i < 4; i++)
        ck_assert(lh_st_writer_add(w, np[i], LH_DTYPE_F32, nd[i], shapes[i], data[i], &err) ==
                  LH_OK);
    ck_assert(lh_st_writer_add_meta(w, "ss_network_alpha", "16.0", &err) == LH_OK);
    ck_assert(lh_st_writer_add_meta(w, "ss_network_args",
                                    "{\"conv_dim\": \"2\", \"conv_alpha\": \"2\"}", &err) == LH_OK);
    ck_assert(lh_st_save(w, p2, &err) == LH_OK);
    lh_st_writer_destroy(w);
    lh_adapter *a = NULL, *b = NULL;
    ck_assert_msg(lh_adapter_load(&a, f.m, g_reg, p1, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_adapter_load(&b, f.m, g_reg, p2, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(lh_adapter_get_report(b)->alpha_source, "ss_network_alpha");
    static const char *const LAYERS[2] = {"down_blocks.0.attentions.0.proj_out",
                                          "down_blocks.0.resnets.0.conv1"};
    for (int l = 0; l < 2; l++) {
        size_t n = l ? 8 * 8 * 9 : 64;
        float da[576], db[576];
        ck_assert(lh_adapter_layer_delta(a, LH_LAYER_UNET, LAYERS[l], 0.9, da, n, NULL, &err) ==
                  LH_OK);
        ck_assert(lh_adapter_layer_delta(b, LH_LAYER_UNET, LAYERS[l], 0.9, db, n, NULL, &err) ==
                  LH_OK);
        ck_assert_msg(!memcmp(da, db, n * sizeof *da), "%s: metadata alpha differs", LAYERS[l]);
        double norm = 0;
        for (size_t i = 0; i < n; i++) norm += fabs(da[i]);
        ck_assert(norm > 0);
    }
    lh_adapter_unload(a);
    lh_adapter_unload(b);
    fixture_close(&f);
}
END_TEST

START_TEST(test_bad_files_refused_model_usable) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapt *ad;
    lh_error err = {0};
    ck_assert(lh_adapt_get(&ad, f.m, &err) == LH_OK);
    int64_t li = lh_layers_find(&ad->layers, LH_LAYER_UNET,
                                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    ck_assert(li >= 0);
    int64_t out = ad->layers.v[li].shape[0], in = ad->layers.v[li].shape[1];
    const int64_t down[2] = {4, in}, up[2] = {out, 4};
    /* the good one loads */
    ck_assert_msg(try_lora(&f, "good", down, up, 0.1f, 4.0f, 0, LH_ADAPTER_WARN, &err) == LH_OK,
                  "%s", err.msg);
    /* shape mismatch: names the layer and both shapes */
    const int64_t bad_down[2] = {4, in + 1};
    ck_assert(try_lora(&f, "shape", bad_down, up, 0.1f, 4.0f, 0, LH_ADAPTER_WARN, &err) != LH_OK);
    char want[64];
    snprintf(want, sizeof want, "%lld", (long long)(in + 1));
    ck_assert_msg(strstr(err.msg, "attn1.to_q") && strstr(err.msg, want), "%s", err.msg);
    /* ranks that disagree */
    const int64_t up3[2] = {out, 3};
    ck_assert(try_lora(&f, "rank", down, up3, 0.1f, 4.0f, 0, LH_ADAPTER_WARN, &err) != LH_OK);
    ck_assert_msg(strstr(err.msg, "rank") || strstr(err.msg, "3"), "%s", err.msg);
    /* NaN and Inf */
    ck_assert(try_lora(&f, "nan", down, up, NAN, 4.0f, 0, LH_ADAPTER_WARN, &err) ==
              LH_ERR_NUMERIC);
    ck_assert_msg(strstr(err.msg, "lora_down") && strstr(err.msg, "NaN"), "%s", err.msg);
    ck_assert(try_lora(&f, "inf", down, up, INFINITY, 4.0f, 0, LH_ADAPTER_WARN, &err) ==
              LH_ERR_NUMERIC);
    /* alpha <= 0 */
    ck_assert(try_lora(&f, "alpha", down, up, 0.1f, 0.0f, 0, LH_ADAPTER_WARN, &err) ==
              LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "alpha"), "%s", err.msg);
    ck_assert(try_lora(&f, "alpha", down, up, 0.1f, -2.0f, 0, LH_ADAPTER_WARN, &err) ==
              LH_ERR_INVALID);
    /* an unmatched key: warn loads, strict refuses naming it */
    ck_assert(try_lora(&f, "extra", down, up, 0.1f, 4.0f, 1, LH_ADAPTER_WARN, &err) == LH_OK);
    ck_assert(try_lora(&f, "extra", down, up, 0.1f, 4.0f, 1, LH_ADAPTER_STRICT, &err) ==
              LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "no_such_layer"), "%s", err.msg);
    /* a file of something else entirely */
    char path[256];
    snprintf(path, sizeof path, "%s/unknown.safetensors", g_tmp);
    const char *names[1] = {"model.diffusion_model.input_blocks.0.0.weight"};
    int64_t shapes[1][4] = {{2, 2}};
    int nd[1] = {2};
    float v[4] = {1, 2, 3, 4};
    float *data[1] = {v};
    write_file(path, names, (const int64_t(*)[4])shapes, nd, data, 1, NULL, NULL);
    lh_adapter *a = NULL;
    ck_assert(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) == LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "unknown.safetensors") && strstr(err.msg, "matches"), "%s",
                  err.msg);
    /* not a safetensors file at all */
    snprintf(path, sizeof path, "%s/garbage.safetensors", g_tmp);
    FILE *fp = fopen(path, "wb");
    fputs("this is not a LoRA", fp);
    fclose(fp);
    ck_assert(lh_adapter_load(&a, f.m, g_reg, path, NULL, &err) != LH_OK);
    ck_assert_msg(strstr(err.msg, "garbage.safetensors"), "%s", err.msg);
    /* the model is as it was */
    check_outputs(&f, "base", "after refused files", 1, 1);
    /* set() refuses adapters of another model and non-finite scales */
    fixture g;
    fixture_open(&g, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *other = load(g.m, "sd1_B_peft.safetensors");
    double one = 1.0, nan_ = NAN;
    ck_assert(lh_adapter_set(f.m, &other, &one, 1, &err) == LH_ERR_INVALID);
    lh_adapter *b = load(f.m, "sd1_B_peft.safetensors");
    ck_assert(lh_adapter_set(f.m, &b, &nan_, 1, &err) == LH_ERR_INVALID);
    lh_adapter_unload(b);
    lh_adapter_unload(other);
    fixture_close(&g);
    check_outputs(&f, "base", "after refused sets", 1, 1);
    fixture_close(&f);
}
END_TEST

/* An adapter outliving its model, and unloading an active one. */
START_TEST(test_lifetimes) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapter *a = load(f.m, "sd1_A_peft.safetensors");
    double one = 1.0;
    set_scales(f.m, &a, &one, 1, LH_ADAPTER_MERGED);
    lh_adapter_unload(a); /* active: the layers go back */
    check_outputs(&f, "base", "after unloading the active adapter", 1, 1);
    a = load(f.m, "sd1_A_peft.safetensors");
    set_scales(f.m, &a, &one, 1, LH_ADAPTER_RUNTIME);
    lh_model_close(f.m);
    f.m = NULL;
    lh_adapter_unload(a); /* after its model: frees only itself */
    fixture_close(&f);
}
END_TEST

/* ---- Keys and tags ---- */

START_TEST(test_key_families) {
    static const struct {
        const char *key;
        lh_akey_status st;
        lh_akey_family fam;
        lh_layer_part part;
        const char *module, *suffix;
    } K[] = {
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", LH_AKEY_OK,
         LH_AKEY_KOHYA, LH_LAYER_UNET, "down_blocks_0_attentions_0_proj_in", "lora_down.weight"},
        {"lora_te_text_model_encoder_layers_3_mlp_fc2.alpha", LH_AKEY_OK, LH_AKEY_KOHYA,
         LH_LAYER_TE, "text_model_encoder_layers_3_mlp_fc2", "alpha"},
        {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.hada_w1_a", LH_AKEY_OK,
         LH_AKEY_KOHYA, LH_LAYER_TE, "text_model_encoder_layers_0_self_attn_q_proj", "hada_w1_a"},
        {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
         LH_AKEY_OTHER_MODEL, 0, 0, "", ""},
        {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", LH_AKEY_OK,
         LH_AKEY_PEFT, LH_LAYER_UNET, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_down.weight"},
        {"unet.conv_in.lora_B.default.weight", LH_AKEY_OK, LH_AKEY_PEFT, LH_LAYER_UNET, "conv_in",
         "lora_up.weight"},
        {"text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_magnitude_vector",
         LH_AKEY_OK, LH_AKEY_PEFT, LH_LAYER_TE, "text_model.encoder.layers.0.self_attn.k_proj",
         "lora_magnitude_vector"},
        {"text_encoder.encoder.layers.1.mlp.fc1.lora_A.weight", LH_AKEY_OK, LH_AKEY_PEFT,
         LH_LAYER_TE, "text_model.encoder.layers.1.mlp.fc1", "lora_down.weight"},
        {"base_model.model.down_blocks.1.attentions.0.proj_out.lora_B.weight", LH_AKEY_OK,
         LH_AKEY_PEFT, LH_LAYER_UNET, "down_blocks.1.attentions.0.proj_out", "lora_up.weight"},
        {"down_blocks.0.attentions.1.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
         LH_AKEY_OK, LH_AKEY_OLD, LH_LAYER_UNET,
         "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0", "lora_up.weight"},
        {"text_encoder.text_model.encoder.layers.2.self_attn.to_v_lora.down.weight", LH_AKEY_OK,
         LH_AKEY_OLD, LH_LAYER_TE, "text_model.encoder.layers.2.self_attn.v_proj",
         "lora_down.weight"},
        {"text_encoder.text_model.encoder.layers.2.self_attn.q_proj.lora_linear_layer.up.weight",
         LH_AKEY_OK, LH_AKEY_OLD, LH_LAYER_TE, "text_model.encoder.layers.2.self_attn.q_proj",
         "lora_up.weight"},
        {"unet.up_blocks.1.resnets.0.conv1.lora.down.weight", LH_AKEY_OK, LH_AKEY_PEFT,
         LH_LAYER_UNET, "up_blocks.1.resnets.0.conv1", "lora_down.weight"},
        {"text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight", LH_AKEY_OTHER_MODEL,
         0, 0, "", ""},
        {"emb_params", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {"", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {"lora_unet_.alpha", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {"unet.lora_A.weight", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {"unet.x.lora_A.a.b.weight", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {".lora_mid.weight", LH_AKEY_UNKNOWN, 0, 0, "", ""},
        {"unet.down_blocks..lora_A.weight", LH_AKEY_UNKNOWN, 0, 0, "", ""},
    };
    for (size_t i = 0; i < sizeof K / sizeof K[0]; i++) {
        lh_akey k;
        lh_akey_status st = lh_akey_parse(&k, K[i].key);
        ck_assert_msg(st == K[i].st, "%s: status %d", K[i].key, (int)st);
        if (st != LH_AKEY_OK) continue;
        ck_assert_msg(k.family == K[i].fam && k.part == K[i].part, "%s: family %d part %d",
                      K[i].key, (int)k.family, (int)k.part);
        ck_assert_str_eq(k.module, K[i].module);
        ck_assert_str_eq(k.suffix, K[i].suffix);
    }
}
END_TEST

/* kohya names built on LDM module names (files made from single-file
 * checkpoints, e.g. by ComfyUI) find the same layers. */
START_TEST(test_ldm_spelling) {
    fixture f;
    fixture_open(&f, "sd1_tiny", "sd1_expected.safetensors");
    lh_adapt *ad;
    lh_error err = {0};
    ck_assert(lh_adapt_get(&ad, f.m, &err) == LH_OK);
    static const char *const PAIRS[][2] = {
        {"input_blocks_0_0", "conv_in"},
        {"time_embed_0", "time_embedding.linear_1"},
        {"input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"},
        {"input_blocks_1_0_emb_layers_1", "down_blocks.0.resnets.0.time_emb_proj"},
        {"input_blocks_1_1_proj_in", "down_blocks.0.attentions.0.proj_in"},
        {"input_blocks_2_1_transformer_blocks_0_attn2_to_k",
         "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k"},
        {"input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"},
        {"input_blocks_4_0_skip_connection", "down_blocks.1.resnets.0.conv_shortcut"},
        {"middle_block_1_transformer_blocks_0_ff_net_2",
         "mid_block.attentions.0.transformer_blocks.0.ff.net.2"},
        {"middle_block_2_out_layers_3", "mid_block.resnets.1.conv2"},
        {"output_blocks_2_1_conv", "up_blocks.0.upsamplers.0.conv"},
        {"output_blocks_5_1_proj_out", "up_blocks.1.attentions.2.proj_out"},
        {"out_2", "conv_out"},
    };
    for (size_t i = 0; i < sizeof PAIRS / sizeof PAIRS[0]; i++) {
        int64_t li = lh_layers_find_kohya(&ad->layers, LH_LAYER_UNET, PAIRS[i][0]);
        ck_assert_msg(li >= 0, "%s: no layer", PAIRS[i][0]);
        ck_assert_str_eq(ad->layers.v[li].name, PAIRS[i][1]);
    }
    fixture_close(&f);
}
END_TEST

START_TEST(test_prompt_tags) {
    char *clean;
    lh_adapter_ref *refs;
    size_t n;
    lh_error err = {0};
    ck_assert(lh_prompt_adapters(&clean, &refs, &n,
                                 "a cat <lora:style:0.8>, oil <lyco:detail> paint "
                                 "<lora:two:0.5:1.5><lora:named:unet=0.25:te=2>",
                                 &err) == LH_OK);
    ck_assert_str_eq(clean, "a cat , oil  paint ");
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(refs[0].name, "style");
    ck_assert(refs[0].te == 0.8 && refs[0].unet == 0.8);
    ck_assert_str_eq(refs[1].name, "detail");
    ck_assert(refs[1].te == 1.0 && refs[1].unet == 1.0);
    ck_assert(refs[2].te == 0.5 && refs[2].unet == 1.5);
    ck_assert(refs[3].te == 2.0 && refs[3].unet == 0.25);
    free(clean);
    free(refs);
    static const char *const BAD[] = {"x <lora:a:big>", "x <lora::1>",     "x <lora:a:0.5",
                                      "<lora:a:nan>",   "<lora:a:1:2:3>", "<lora:a:lbw=1>",
                                      "<lora:a:te=>"};
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        ck_assert_msg(lh_prompt_adapters(&clean, &refs, &n, BAD[i], &err) == LH_ERR_INVALID, "%s",
                      BAD[i]);
        ck_assert(clean == NULL && refs == NULL && n == 0 && err.msg[0]);
    }
    lh_adapter_ref r;
    ck_assert(lh_adapter_ref_parse(&r, "dir/a:b.safetensors:0.25", &err) == LH_OK);
    ck_assert_str_eq(r.name, "dir/a:b.safetensors");
    ck_assert(r.te == 0.25 && r.unet == 0.25);
    ck_assert(lh_adapter_ref_parse(&r, "c:/x.safetensors", &err) == LH_OK);
    ck_assert_str_eq(r.name, "c:/x.safetensors");
    ck_assert(r.te == 1.0 && r.unet == 1.0);
    ck_assert(lh_adapter_ref_parse(&r, ":0.5", &err) == LH_ERR_INVALID);
    /* names resolve in the configured directories, never outside them */
    char out[4096];
    const char *dirs[] = {"/nonexistent", g_dir};
    ck_assert(lh_adapter_resolve(out, sizeof out, "sd1_A_peft", dirs, 2, &err) == LH_OK);
    ck_assert(strstr(out, "tests/fixtures/adapters/sd1_A_peft.safetensors") != NULL);
    ck_assert(lh_adapter_resolve(out, sizeof out, "../adapters/sd1_A_peft", dirs, 2, &err) ==
              LH_ERR_NOT_FOUND);
    ck_assert(lh_adapter_resolve(out, sizeof out, "nope", dirs, 2, &err) == LH_ERR_NOT_FOUND);
    ck_assert(strstr(err.msg, "nope") && strstr(err.msg, "/nonexistent"));
    /* a bare name below a directory, found once; twice is ambiguous */
    char sub[300], file[400];
    snprintf(sub, sizeof sub, "%s/styles", g_tmp);
    ck_assert(mkdir(sub, 0755) == 0);
    snprintf(sub, sizeof sub, "%s/styles/oil", g_tmp);
    ck_assert(mkdir(sub, 0755) == 0);
    snprintf(file, sizeof file, "%s/paint.safetensors", sub);
    FILE *fp = fopen(file, "w");
    ck_assert(fp != NULL);
    fclose(fp);
    const char *tmp_dirs[] = {g_tmp};
    ck_assert_msg(lh_adapter_resolve(out, sizeof out, "paint", tmp_dirs, 1, &err) == LH_OK, "%s",
                  err.msg);
    ck_assert_str_eq(out, file);
    snprintf(file, sizeof file, "%s/styles/paint", g_tmp);
    fp = fopen(file, "w");
    fclose(fp);
    ck_assert(lh_adapter_resolve(out, sizeof out, "paint", tmp_dirs, 1, &err) == LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "ambiguous"), "%s", err.msg);
    ck_assert(lh_adapter_resolve(out, sizeof out, "oil/paint", tmp_dirs, 1, &err) ==
              LH_ERR_NOT_FOUND);
    ck_assert(lh_adapter_resolve(out, sizeof out, "styles/oil/paint", tmp_dirs, 1, &err) == LH_OK);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("adapters");
    TCase *tc = tcase_create("adapters");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_key_families);
    tcase_add_test(tc, test_prompt_tags);
    tcase_add_test(tc, test_ldm_spelling);
    tcase_add_test(tc, test_sd1_single_lora_every_format);
    tcase_add_test(tc, test_trained_exports_match_diffusers);
    tcase_add_test(tc, test_sd1_two_adapters_and_weights);
    tcase_add_test(tc, test_single_file_model);
    tcase_add_test(tc, test_peft_directory);
    tcase_add_test(tc, test_sd1_peft_dora);
    tcase_add_test(tc, test_sd2_lora);
    tcase_add_test(tc, test_sd1_pipeline_with_adapters);
    tcase_add_test(tc, test_lycoris_deltas);
    tcase_add_test(tc, test_merge_unmerge_1000_times_bit_exact);
    tcase_add_test(tc, test_switch_touches_only_changed_layers);
    tcase_add_test(tc, test_kohya_metadata_alphas);
    tcase_add_test(tc, test_bad_files_refused_model_usable);
    tcase_add_test(tc, test_lifetimes);
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
