/* Generation pipeline suite: txt2img and img2img on the tiny SD 1.x model
 * directory reproduce diffusers' StableDiffusionPipeline /
 * StableDiffusionImg2ImgPipeline (tests/fixtures/pipeline_reference.safetensors,
 * written by tests/golden/pipeline.py): final latents within relative L2
 * 1e-5 after 20 steps with CFG 7.5 (measured: 1e-9 .. 1.1e-6 on x86-64 with
 * OpenBLAS), decoded images within 1 per channel (measured: identical; a
 * value at x.5 may round either way under other BLAS builds). The same for
 * the tiny SD 2.x directory with v-prediction (pipeline_sd2_reference).
 * The single-file checkpoints sd1_tiny.safetensors / sd2_tiny.safetensors
 * (with the tiny tokenizer and configs) give bit-identical latents and
 * images to their directories, case for case.
 * Also: model detection and its errors, parameter checks, PNG I/O. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "model.h"
#include "pipeline.h"
#include "png.h"

#define TOL_LATENTS 1e-5
#define MAX_CASES 32

static char g_src[4096], g_model[4200], g_ref_path[4200];
static lh_backend *g_be;
static lh_registry *g_reg;
static lh_st_file *g_ref, *g_ref2; /* SD 1.x and SD 2.x references */
static json_t *g_cases, *g_cases2;
static char g_tmp[64];

static double rel_l2(const float *got, const float *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-12);
}

static float *ref_f32(const lh_st_file *ref, const char *name, int64_t *numel) {
    const lh_st_tensor *t = lh_st_find(ref, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, ref, name, &err) == LH_OK, "%s", err.msg);
    if (numel) *numel = t->numel;
    return v;
}

static const uint8_t *ref_u8(const lh_st_file *ref, const char *name, int64_t *numel) {
    const lh_st_tensor *t = lh_st_find(ref, name);
    ck_assert_msg(t != NULL && t->dtype == LH_DTYPE_U8, "fixture tensor %s missing", name);
    *numel = t->numel;
    return t->data;
}

static void run(const char *cmd) { ck_assert_msg(system(cmd) == 0, "%s", cmd); }

static json_t *ref_cases(lh_st_file **ref, const char *path) {
    lh_error err = {0};
    ck_assert_msg(lh_st_open(ref, path, &err) == LH_OK, "%s", err.msg);
    const char *cases = lh_st_meta_find(*ref, "cases");
    ck_assert(cases != NULL);
    json_t *j = json_loads(cases, 0, NULL);
    ck_assert(json_is_array(j));
    return j;
}

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    snprintf(g_model, sizeof g_model, "%s/tests/fixtures/models/sd1_tiny", g_src);
    snprintf(g_ref_path, sizeof g_ref_path, "%s/tests/fixtures/pipeline_reference.safetensors",
             g_src);
    char msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_error err = {0};
    ck_assert_msg(lh_registry_create(&g_reg, &err) == LH_OK &&
                      lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    g_cases = ref_cases(&g_ref, g_ref_path);
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/fixtures/pipeline_sd2_reference.safetensors", g_src);
    g_cases2 = ref_cases(&g_ref2, path);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_test_pipeline_XXXXXX");
    ck_assert(mkdtemp(g_tmp) != NULL);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    json_decref(g_cases);
    json_decref(g_cases2);
    lh_st_close(g_ref);
    lh_st_close(g_ref2);
    lh_registry_destroy(g_reg);
    lh_backend_destroy(g_be);
}

/* ---- Against diffusers ---- */

/* Run case c of `ref` on m (scheduler overrides `ov`, may be NULL). */
static void run_case(lh_gen_result *r, lh_model *m, const lh_st_file *ref, json_t *c,
                     const char *const *ov, size_t n_ov) {
    const char *name = json_string_value(json_object_get(c, "name"));
    lh_error err = {0};
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = json_string_value(json_object_get(c, "prompt"));
    p.negative_prompt = json_string_value(json_object_get(c, "negative_prompt"));
    p.steps = (int32_t)json_integer_value(json_object_get(c, "steps"));
    p.cfg_scale = json_number_value(json_object_get(c, "cfg_scale"));
    p.width = json_integer_value(json_object_get(c, "width"));
    p.height = json_integer_value(json_object_get(c, "height"));
    p.batch_size = json_integer_value(json_object_get(c, "batch_size"));
    p.scheduler = json_string_value(json_object_get(c, "scheduler"));
    p.overrides = ov;
    p.n_overrides = n_ov;
    json_t *seed = json_object_get(c, "seed");
    char key[128];
    float *noise = NULL;
    if (json_is_integer(seed)) {
        p.seed = (uint64_t)json_integer_value(seed);
    } else {
        snprintf(key, sizeof key, "%s.noise", name);
        noise = ref_f32(ref, key, NULL);
        p.init_noise = noise;
    }
    p.skip_decode = !json_is_true(json_object_get(c, "image"));
    json_t *strength = json_object_get(c, "strength");
    int64_t n_init;
    lh_status st;
    if (json_is_number(strength)) {
        p.strength = json_number_value(strength);
        p.init_image = ref_u8(ref, "init_image", &n_init);
        ck_assert_int_eq(n_init, p.width * p.height * 3);
        st = lh_pipeline_img2img(m, g_reg, &p, r, &err);
    } else {
        st = lh_pipeline_txt2img(m, g_reg, &p, r, &err);
    }
    ck_assert_msg(st == LH_OK, "%s: %s", name, err.msg);
    free(noise);
}

/* r against case c of `ref`: latents within TOL_LATENTS, images within 1. */
static void check_case(const lh_gen_result *r, const lh_st_file *ref, json_t *c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    char key[128];
    int64_t n;
    snprintf(key, sizeof key, "%s.latents", name);
    float *want = ref_f32(ref, key, &n);
    ck_assert_int_eq(n, r->batch * r->channels * r->latent_h * r->latent_w);
    double e = rel_l2(r->latents, want, n);
    ck_assert_msg(e <= TOL_LATENTS, "%s: latents relative L2 %.3g > %g", name, e, TOL_LATENTS);
    free(want);
    if (json_is_true(json_object_get(c, "image"))) {
        int64_t ni;
        snprintf(key, sizeof key, "%s.image", name);
        const uint8_t *img = ref_u8(ref, key, &ni);
        ck_assert_int_eq(ni, r->batch * r->height * r->width * 3);
        int worst = 0;
        for (int64_t i = 0; i < ni; i++) {
            int d = abs((int)r->images[i] - (int)img[i]);
            if (d > worst) worst = d;
        }
        ck_assert_msg(worst <= 1, "%s: image differs by %d > 1", name, worst);
    }
}

START_TEST(test_reference_case) {
    ck_assert_int_lt(_i, (int)json_array_size(g_cases));
    json_t *c = json_array_get(g_cases, (size_t)_i);
    lh_error err = {0};
    lh_model *m;
    ck_assert_msg(lh_model_open(&m, g_be, g_model, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(m->info.arch, LH_MODEL_ARCH_SD1);
    lh_gen_result r;
    run_case(&r, m, g_ref, c, NULL, 0);
    check_case(&r, g_ref, c);
    lh_gen_result_free(&r);
    lh_model_close(m);
}
END_TEST

START_TEST(test_sd2_reference_case) {
    ck_assert_int_lt(_i, (int)json_array_size(g_cases2));
    json_t *c = json_array_get(g_cases2, (size_t)_i);
    char dir[4300];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/sd2_tiny", g_src);
    lh_error err = {0};
    lh_model *m;
    ck_assert_msg(lh_model_open(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(m->info.arch, LH_MODEL_ARCH_SD2);
    ck_assert_str_eq(m->info.prediction_type, "v_prediction");
    ck_assert_str_eq(m->info.scheduler_class, "DDIMScheduler");
    ck_assert_int_eq(m->pad_id, 0);
    lh_gen_result r;
    run_case(&r, m, g_ref2, c, NULL, 0);
    check_case(&r, g_ref2, c);
    lh_gen_result_free(&r);
    lh_model_close(m);
}
END_TEST

/* ---- Single-file checkpoints ---- */

/* A copy of src with metadata key=value (the tensors are rewritten as they are). */
static void copy_with_meta(const char *dst, const char *src, const char *key, const char *value) {
    lh_st_file *f;
    lh_st_writer *w;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, src, &err) == LH_OK, "%s", err.msg);
    ck_assert(lh_st_writer_create(&w, &err) == LH_OK);
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        ck_assert_msg(lh_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err) ==
                          LH_OK,
                      "%s", err.msg);
    }
    ck_assert(lh_st_writer_add_meta(w, key, value, &err) == LH_OK);
    ck_assert_msg(lh_st_save(w, dst, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    lh_st_close(f);
}

/* Case _i of a reference through the directory and through the single file
 * (the directory's tokenizer and configs, the file's built-in scheduler
 * config): bit-identical latents and images, and both match diffusers. */
static void single_file_case(int i, const char *variant, const char *file, lh_st_file *ref,
                             json_t *cases, const char *const *ov, size_t n_ov) {
    ck_assert_int_lt(i, (int)json_array_size(cases));
    json_t *c = json_array_get(cases, (size_t)i);
    char dir[4300], tok[4400];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", g_src, variant);
    snprintf(tok, sizeof tok, "%s/tokenizer", dir);
    lh_model_opts o = {tok, dir};
    lh_error err = {0};
    lh_model *md, *mf;
    ck_assert_msg(lh_model_open(&md, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_model_open_single_file(&mf, g_be, file, &o, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(mf->info.arch, md->info.arch);
    ck_assert_int_eq(mf->info.single_file, 1);
    ck_assert_int_eq(mf->pad_id, md->pad_id);
    lh_gen_result rd, rf;
    run_case(&rd, md, ref, c, NULL, 0);
    run_case(&rf, mf, ref, c, ov, n_ov);
    const char *name = json_string_value(json_object_get(c, "name"));
    int64_t n = rd.batch * rd.channels * rd.latent_h * rd.latent_w;
    ck_assert_int_eq(n, rf.batch * rf.channels * rf.latent_h * rf.latent_w);
    ck_assert_msg(!memcmp(rd.latents, rf.latents, sizeof(float) * (size_t)n),
                  "%s: single-file latents differ from the directory's (rel L2 %.3g)", name,
                  rel_l2(rf.latents, rd.latents, n));
    ck_assert_int_eq(!rd.images, !rf.images);
    if (rd.images)
        ck_assert_msg(!memcmp(rd.images, rf.images, (size_t)(rd.batch * rd.height * rd.width * 3)),
                      "%s: single-file image differs", name);
    check_case(&rf, ref, c);
    lh_gen_result_free(&rd);
    lh_gen_result_free(&rf);
    lh_model_close(md);
    lh_model_close(mf);
}

START_TEST(test_single_file_sd1_case) {
    char file[4300];
    snprintf(file, sizeof file, "%s/tests/fixtures/models/sd1_tiny.safetensors", g_src);
    single_file_case(_i, "sd1_tiny", file, g_ref, g_cases, NULL, 0);
}
END_TEST

/* SD 2.x: the file says nothing of v-prediction: the override says it. */
START_TEST(test_single_file_sd2_case) {
    char file[4300];
    snprintf(file, sizeof file, "%s/tests/fixtures/models/sd2_tiny.safetensors", g_src);
    const char *ov[] = {"prediction_type=v_prediction"};
    single_file_case(_i, "sd2_tiny", file, g_ref2, g_cases2, ov, 1);
}
END_TEST

/* ... or its metadata does (modelspec.prediction_type "v"). */
START_TEST(test_single_file_sd2_metadata) {
    char file[4300], src[4300];
    snprintf(src, sizeof src, "%s/tests/fixtures/models/sd2_tiny.safetensors", g_src);
    snprintf(file, sizeof file, "%s/sd2_v.safetensors", g_tmp);
    copy_with_meta(file, src, "modelspec.prediction_type", "v");
    lh_model_info info;
    lh_error err = {0};
    ck_assert_msg(lh_model_detect(&info, file, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(info.prediction_type, "v_prediction");
    ck_assert_int_eq(info.prediction_guessed, 0);
    ck_assert_str_eq(info.name, "sd2_v");
    single_file_case(0, "sd2_tiny", file, g_ref2, g_cases2, NULL, 0);
}
END_TEST

START_TEST(test_single_file_detect) {
    char file[4300], dir[4300], cmd[16384];
    lh_model_info info;
    lh_error err = {0};
    /* SD 1.x: PNDM defaults, the shipped tokenizer */
    snprintf(file, sizeof file, "%s/tests/fixtures/models/sd1_tiny.safetensors", g_src);
    ck_assert_msg(lh_model_detect(&info, file, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(info.arch, LH_MODEL_ARCH_SD1);
    ck_assert_int_eq(info.single_file, 1);
    ck_assert_str_eq(info.name, "sd1_tiny");
    ck_assert_str_eq(info.scheduler_config, "");
    ck_assert_str_eq(info.scheduler_class, "PNDMScheduler");
    ck_assert_str_eq(info.prediction_type, "epsilon");
    ck_assert_int_eq(info.prediction_guessed, 0);
    ck_assert_str_eq(info.pad_token, "<|endoftext|>");
    ck_assert_str_eq(info.tokenizer, lh_model_tokenizer_dir());
    ck_assert_int_eq(info.cross_attention_dim, 32);
    json_t *j = json_loads(info.scheduler_json, 0, NULL);
    ck_assert_msg(j != NULL, "%s", info.scheduler_json);
    ck_assert_str_eq(json_string_value(json_object_get(j, "beta_schedule")), "scaled_linear");
    ck_assert_double_eq_tol(json_real_value(json_object_get(j, "beta_start")), 0.00085, 1e-12);
    ck_assert_double_eq_tol(json_real_value(json_object_get(j, "beta_end")), 0.012, 1e-12);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "steps_offset")), 1);
    json_decref(j);
    /* the shipped vocabulary: the real one, too big for the tiny encoder */
    snprintf(cmd, sizeof cmd, "%s/vocab.json", lh_model_tokenizer_dir());
    struct stat sb;
    ck_assert_msg(stat(cmd, &sb) == 0 && sb.st_size > 900000, "%s", cmd);
    lh_model *m = (lh_model *)1;
    ck_assert_int_eq(lh_model_open(&m, g_be, file, &err), LH_ERR_SHAPE);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err.msg, "49408 tokens") && strstr(err.msg, "--tokenizer"), "%s",
                  err.msg);
    /* without the directory's configs the tiny U-Net's groups do not fit */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/sd1_tiny/tokenizer", g_src);
    lh_model_opts o = {dir, NULL};
    ck_assert_int_ne(lh_model_open_single_file(&m, g_be, file, &o, &err), LH_OK);
    ck_assert_msg(strstr(err.msg, "--model-config"), "%s", err.msg);
    /* a tokenizer directory without vocab.json */
    o.tokenizer = g_tmp;
    ck_assert_int_eq(lh_model_detect_single_file(&info, file, &o, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "has no vocab.json"), "%s", err.msg);
    o.tokenizer = NULL;
    o.config = "/nonexistent";
    ck_assert_int_eq(lh_model_detect_single_file(&info, file, &o, &err), LH_ERR_NOT_FOUND);
    /* SD 2.x: DDIM, pad "!", epsilon assumed without metadata */
    snprintf(file, sizeof file, "%s/tests/fixtures/models/sd2_tiny.safetensors", g_src);
    ck_assert_msg(lh_model_detect(&info, file, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(info.arch, LH_MODEL_ARCH_SD2);
    ck_assert_str_eq(info.scheduler_class, "DDIMScheduler");
    ck_assert_str_eq(info.prediction_type, "epsilon");
    ck_assert_int_eq(info.prediction_guessed, 1);
    ck_assert_str_eq(info.pad_token, "!");
    ck_assert_int_eq(info.cross_attention_dim, 48);
    /* SDXL is refused with ldm_keys' message */
    snprintf(file, sizeof file, "%s/xl.safetensors", g_tmp);
    {
        lh_st_writer *w;
        float one = 1;
        int64_t shape[1] = {1};
        ck_assert(lh_st_writer_create(&w, &err) == LH_OK);
        ck_assert(lh_st_writer_add(w, "conditioner.embedders.0.transformer.text_model.x",
                                   LH_DTYPE_F32, 1, shape, &one, &err) == LH_OK);
        ck_assert(lh_st_save(w, file, &err) == LH_OK);
        lh_st_writer_destroy(w);
    }
    ck_assert_int_eq(lh_model_detect(&info, file, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "SDXL"), "%s", err.msg);
    /* a diffusers component file is not a checkpoint */
    snprintf(file, sizeof file, "%s/unet/diffusion_pytorch_model.safetensors", g_model);
    ck_assert_int_eq(lh_model_open(&m, g_be, file, &err), LH_ERR_FORMAT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err.msg, "diffusers names"), "%s", err.msg);
}
END_TEST

/* ---- Model directories ---- */

/* A model directory in g_tmp/<name> whose components are links to `from`
 * (a component NULL in `skip` is left out). */
static void make_model(char *dir, size_t size, const char *name, const char *unet_from,
                       const char *te_from, const char *skip) {
    snprintf(dir, size, "%s/%s", g_tmp, name);
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/scheduler %s/tokenizer && cp %s/model_index.json %s/ && "
             "cp %s/scheduler/scheduler_config.json %s/scheduler/ && "
             "cp %s/tokenizer/vocab.json %s/tokenizer/vocab.json && "
             "cp %s/tokenizer/merges.txt %s/tokenizer/merges.txt && "
             "ln -s %s %s/unet && ln -s %s %s/text_encoder && ln -s %s/vae %s/vae",
             dir, dir, g_model, dir, g_model, dir, g_model, dir, g_model, dir, unet_from, dir,
             te_from, dir, g_model, dir);
    run(cmd);
    if (skip) {
        snprintf(cmd, sizeof cmd, "rm -rf %s/%s", dir, skip);
        run(cmd);
    }
}

START_TEST(test_detect_sd1) {
    lh_model_info info;
    lh_error err = {0};
    ck_assert_msg(lh_model_detect(&info, g_model, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(info.arch, LH_MODEL_ARCH_SD1);
    ck_assert_str_eq(info.name, "sd1_tiny");
    ck_assert_str_eq(info.scheduler_class, "PNDMScheduler");
    ck_assert_str_eq(info.prediction_type, "epsilon");
    ck_assert_str_eq(info.pad_token, "<|endoftext|>");
    ck_assert_int_eq(info.cross_attention_dim, 32);
}
END_TEST

/* SD 2.x: linear projections, pad "!" from the tokenizer config, v-prediction
 * from the scheduler config; it loads and generates (no reference: smoke). */
START_TEST(test_detect_sd2) {
    char dir[4300], te[4300], unet[4300], cmd[16384];
    snprintf(unet, sizeof unet, "%s/tests/fixtures/models/sd2_tiny/unet", g_src);
    snprintf(te, sizeof te, "%s/tests/fixtures/models/sd2_tiny/text_encoder", g_src);
    make_model(dir, sizeof dir, "sd2", unet, te, NULL);
    snprintf(cmd, sizeof cmd,
             "echo '{\"pad_token\": {\"content\": \"!\", \"special\": true}}' > "
             "%s/tokenizer/special_tokens_map.json && "
             "sed -i 's/\"num_train_timesteps\"/\"prediction_type\": \"v_prediction\", "
             "\"num_train_timesteps\"/' %s/scheduler/scheduler_config.json",
             dir, dir);
    run(cmd);
    lh_error err = {0};
    lh_model *m;
    ck_assert_msg(lh_model_open(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(m->info.arch, LH_MODEL_ARCH_SD2);
    ck_assert_str_eq(m->info.pad_token, "!");
    ck_assert_int_eq(m->pad_id, 0);
    ck_assert_str_eq(m->info.prediction_type, "v_prediction");
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "a cat!";
    p.steps = 2;
    p.width = p.height = 32;
    p.scheduler = "Euler a";
    lh_gen_result r;
    ck_assert_msg(lh_pipeline_txt2img(m, g_reg, &p, &r, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(r.scheduler_id, "euler_ancestral");
    for (int64_t i = 0; i < 2 * 4 * 4 * 4 / 2; i++) ck_assert(isfinite(r.latents[i]));
    ck_assert(r.images != NULL);
    lh_gen_result_free(&r);
    lh_model_close(m);
}
END_TEST

START_TEST(test_detect_errors) {
    char dir[4300], unet[4300], te[4300], cmd[16384];
    lh_model_info info;
    lh_error err = {0};
    snprintf(unet, sizeof unet, "%s/unet", g_model);
    snprintf(te, sizeof te, "%s/text_encoder", g_model);
    /* a missing component is named */
    make_model(dir, sizeof dir, "novae", unet, te, "vae");
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "component 'vae' is missing"), "%s", err.msg);
    make_model(dir, sizeof dir, "nosched", unet, te, "scheduler");
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "component 'scheduler' is missing"), "%s", err.msg);
    make_model(dir, sizeof dir, "notok", unet, te, "tokenizer/merges.txt");
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "merges.txt"), "%s", err.msg);
    make_model(dir, sizeof dir, "noindex", unet, te, "model_index.json");
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "model_index.json"), "%s", err.msg);
    /* SDXL is recognised and refused */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/xlunet && sed 's/\"addition_embed_type\": null/\"addition_embed_type\": "
             "\"text_time\"/' %s/config.json > %s/xlunet/config.json",
             g_tmp, unet, g_tmp);
    run(cmd);
    snprintf(unet, sizeof unet, "%s/xlunet", g_tmp);
    make_model(dir, sizeof dir, "xl", unet, te, NULL);
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "SDXL"), "%s", err.msg);
    /* an inpainting U-Net is an unknown architecture */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/inunet && sed 's/\"in_channels\": 4/\"in_channels\": 9/' "
             "%s/unet/config.json > %s/inunet/config.json",
             g_tmp, g_model, g_tmp);
    run(cmd);
    snprintf(unet, sizeof unet, "%s/inunet", g_tmp);
    make_model(dir, sizeof dir, "inpaint", unet, te, NULL);
    ck_assert_int_eq(lh_model_detect(&info, dir, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "unknown architecture"), "%s", err.msg);
    ck_assert_int_eq(lh_model_detect(&info, "/nonexistent/model", &err), LH_ERR_NOT_FOUND);
}
END_TEST

/* ---- Parameters ---- */

START_TEST(test_params) {
    lh_error err = {0};
    lh_model *m;
    ck_assert_msg(lh_model_open(&m, g_be, g_model, &err) == LH_OK, "%s", err.msg);
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "x";
    p.width = p.height = 32;
    p.steps = 2;
    lh_gen_result r;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_OK);
    p.width = 36;
    ck_assert_int_eq(lh_pipeline_txt2img(m, g_reg, &p, &r, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "width must be a multiple of 8"), "%s", err.msg);
    ck_assert_ptr_null(r.latents);
    p.width = 40; /* a multiple of 8 but not of 16 (VAE 8 x U-Net 2) */
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "multiple of 16"), "%s", err.msg);
    p.width = 32;
    p.steps = 0;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "steps must be in 1..1000, got 0"), "%s", err.msg);
    p.steps = 1001;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    p.steps = 2;
    p.cfg_scale = NAN;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    p.cfg_scale = 7.5;
    p.prompt = "caf\xc3";
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "prompt is not valid UTF-8 (byte 3)"), "%s", err.msg);
    p.prompt = "x";
    p.negative_prompt = "\xed\xa0\x80"; /* a surrogate */
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "negative prompt"), "%s", err.msg);
    p.negative_prompt = NULL;
    p.batch_size = 0;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 0, &err), LH_ERR_INVALID);
    p.batch_size = 1;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 1, &err), LH_ERR_INVALID); /* no image */
    uint8_t img[32 * 32 * 3] = {0};
    p.init_image = img;
    p.strength = 0.4; /* int(2 * 0.4) = 0 steps */
    ck_assert_int_eq(lh_pipeline_img2img(m, g_reg, &p, &r, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "leaves no step to run"), "%s", err.msg);
    p.strength = 1.5;
    ck_assert_int_eq(lh_pipeline_check(m, &p, 1, &err), LH_ERR_INVALID);
    p.strength = 0.5;
    p.scheduler = "no such sampler";
    ck_assert_int_ne(lh_pipeline_txt2img(m, g_reg, &p, &r, &err), LH_OK);
    ck_assert_msg(strstr(err.msg, "no such sampler"), "%s", err.msg);
    /* a prompt of 17 windows is refused */
    size_t big = 17 * 76 * 2 + 1;
    char *longp = malloc(big);
    for (size_t i = 0; i + 2 < big; i += 2) memcpy(longp + i, "a ", 2);
    longp[big - 1] = 0;
    p.scheduler = NULL;
    p.prompt = longp;
    ck_assert_int_eq(lh_pipeline_txt2img(m, g_reg, &p, &r, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "prompt is too long"), "%s", err.msg);
    free(longp);
    lh_model_close(m);
}
END_TEST

/* A copy of the tiny model (links) whose VAE's conv_in layers are scaled
 * (decoder 1e4, encoder 1.2e5): the weights still fit fp16, their outputs
 * do not (float32 holds them). */
static void hot_vae_model(char *dir, size_t size) {
    snprintf(dir, size, "%s/hot", g_tmp);
    char path[4400], target[4400], vae[4400];
    ck_assert(mkdir(dir, 0755) == 0);
    static const char *const links[] = {"model_index.json", "scheduler", "text_encoder",
                                        "tokenizer", "unet"};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, links[i]);
        snprintf(target, sizeof target, "%s/%s", g_model, links[i]);
        ck_assert(symlink(target, path) == 0);
    }
    snprintf(vae, sizeof vae, "%s/vae", dir);
    ck_assert(mkdir(vae, 0755) == 0);
    snprintf(path, sizeof path, "%s/config.json", vae);
    snprintf(target, sizeof target, "%s/vae/config.json", g_model);
    ck_assert(symlink(target, path) == 0);
    lh_error err = {0};
    lh_st_file *f = NULL;
    snprintf(target, sizeof target, "%s/vae/diffusion_pytorch_model.safetensors", g_model);
    ck_assert_msg(lh_st_open(&f, target, &err) == LH_OK, "%s", err.msg);
    lh_st_writer *w = NULL;
    ck_assert(lh_st_writer_create(&w, &err) == LH_OK);
    size_t n = lh_st_count(f);
    float **vals = calloc(n, sizeof *vals);
    for (size_t i = 0; i < n; i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        vals[i] = malloc((size_t)(numel ? numel : 1) * sizeof(float));
        ck_assert(lh_st_read_f32(vals[i], (size_t)numel, f, t->name, &err) == LH_OK);
        float scale = !strncmp(t->name, "decoder.conv_in.", 16)   ? 1e4f
                      : !strncmp(t->name, "encoder.conv_in.", 16) ? 1.2e5f
                                                                  : 1.0f;
        for (int64_t k = 0; k < numel; k++) vals[i][k] *= scale;
        ck_assert(lh_st_writer_add(w, t->name, LH_DTYPE_F32, t->ndim, t->shape, vals[i], &err) ==
                  LH_OK);
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", vae);
    ck_assert_msg(lh_st_save(w, path, &err) == LH_OK, "%s", err.msg);
    lh_st_writer_destroy(w);
    for (size_t i = 0; i < n; i++) free(vals[i]);
    free(vals);
    lh_st_close(f);
}

/* model.vae_dtype: auto is f32 on the cpu, the names are checked, the
 * weights take one half type; a decoder that overflows fp16 (NaN/Inf
 * pixels) is run again in float32, which the VAE then keeps: the image is
 * the one of float32 activations on the same weights. */
START_TEST(test_vae_dtype) {
    lh_error err = {0};
    lh_model *m, *m32;
    char dir[4300];
    hot_vae_model(dir, sizeof dir);
    ck_assert_msg(lh_model_open(&m, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_model_open(&m32, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_model_set_vae_dtype(m, "auto", &err), LH_OK);
    ck_assert_int_eq(lh_vae_precision(m->vae), LH_DTYPE_F32);
    ck_assert_int_eq(lh_model_set_vae_dtype(m, "f8", &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "model.vae_dtype") && strstr(err.msg, "f8"), "%s", err.msg);
    ck_assert_int_eq(lh_model_set_vae_dtype(m, "f16", &err), LH_OK);
    ck_assert_int_eq(lh_vae_precision(m->vae), LH_DTYPE_F16);
    ck_assert_int_eq(lh_model_set_vae_dtype(m, "bf16", &err), LH_ERR_INVALID); /* weights f16 */
    ck_assert_msg(strstr(err.msg, "already rounded to F16"), "%s", err.msg);
    /* the reference: the same f16-rounded weights, float32 activations */
    ck_assert_int_eq(lh_model_set_vae_dtype(m32, "f16", &err), LH_OK);
    ck_assert_int_eq(lh_model_set_vae_dtype(m32, "f32", &err), LH_OK);
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "x";
    p.width = p.height = 32;
    p.steps = 2;
    lh_gen_result r, r32;
    ck_assert_msg(lh_pipeline_txt2img(m, g_reg, &p, &r, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_pipeline_txt2img(m32, g_reg, &p, &r32, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_vae_precision(m->vae) == LH_DTYPE_F32, "the fp16 decode was kept (%s)",
                  lh_dtype_name(lh_vae_precision(m->vae)));
    size_t bytes = (size_t)(r.batch * r.height * r.width * 3);
    ck_assert(!memcmp(r.images, r32.images, bytes));
    uint8_t lo = 255, hi = 0; /* a picture, not NaN's black */
    for (size_t i = 0; i < bytes; i++) {
        lo = r.images[i] < lo ? r.images[i] : lo;
        hi = r.images[i] > hi ? r.images[i] : hi;
    }
    ck_assert_msg(hi > lo, "the float32 decode is flat (%d)", lo);
    /* the encoder likewise (img2img, training without cached latents) */
    lh_model *me;
    ck_assert_msg(lh_model_open(&me, g_be, dir, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_model_set_vae_dtype(me, "f16", &err), LH_OK);
    const int64_t n_img = 3 * 32 * 32, n_lat = 4 * 4 * 4;
    float img[3 * 32 * 32], lat[2][4 * 4 * 4];
    for (int64_t i = 0; i < n_img; i++) img[i] = (float)((i * 37 % 255) / 127.5 - 1.0);
    float *d_img = g_be->ops->alloc(g_be, sizeof img), *d_lat = g_be->ops->alloc(g_be, sizeof lat);
    ck_assert(d_img && d_lat && g_be->ops->upload(g_be, d_img, img, sizeof img) == LH_OK);
    lh_model *enc[2] = {me, m32};
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(lh_vae_encode(enc[k]->vae, d_lat, NULL, d_img, 1, 32, 32, &err) == LH_OK,
                      "%s", err.msg);
        ck_assert(g_be->ops->download(g_be, lat[k], d_lat, sizeof lat[k]) == LH_OK);
    }
    ck_assert_msg(lh_vae_precision(me->vae) == LH_DTYPE_F32, "the fp16 encode was kept");
    for (int64_t i = 0; i < n_lat; i++) ck_assert(isfinite(lat[0][i]));
    ck_assert(!memcmp(lat[0], lat[1], sizeof lat[0]));
    g_be->ops->free(g_be, d_img);
    g_be->ops->free(g_be, d_lat);
    lh_model_close(me);
    lh_gen_result_free(&r);
    lh_gen_result_free(&r32);
    lh_model_close(m);
    lh_model_close(m32);
}
END_TEST

START_TEST(test_parameters_text) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "a cat";
    p.negative_prompt = "dog";
    p.seed = 42;
    char *s = lh_pipeline_parameters_text(&p, "DPM++ 2M Karras", "sd15", 0);
    ck_assert_str_eq(s, "a cat\nNegative prompt: dog\nSteps: 30, Sampler: DPM++ 2M Karras, CFG "
                        "scale: 7.5, Seed: 42, Size: 512x512, Model: sd15");
    free(s);
    p.negative_prompt = "";
    p.strength = 0.6;
    s = lh_pipeline_parameters_text(&p, "ddim", "m", 1);
    ck_assert_str_eq(s, "a cat\nSteps: 30, Sampler: ddim, CFG scale: 7.5, Seed: 42, Size: "
                        "512x512, Model: m, Denoising strength: 0.6");
    free(s);
}
END_TEST

/* ---- PNG ---- */

static void write_raw_png(const char *path, int color, int depth, const void *img, size_t n) {
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    FILE *f = fopen(path, "wb");
    ck_assert(ctx && f);
    spng_set_png_file(ctx, f);
    struct spng_ihdr ihdr = {3, 2, (uint8_t)depth, (uint8_t)color, 0, 0, 0};
    ck_assert_int_eq(spng_set_ihdr(ctx, &ihdr), 0);
    ck_assert_int_eq(spng_encode_image(ctx, img, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE), 0);
    spng_ctx_free(ctx);
    fclose(f);
}

START_TEST(test_png) {
    char path[256];
    lh_error err = {0};
    uint8_t rgb[2 * 3 * 3];
    for (int i = 0; i < 18; i++) rgb[i] = (uint8_t)(i * 14);
    snprintf(path, sizeof path, "%s/a.png", g_tmp);
    const char *params = "caf\xc3\xa9 \xe2\x98\x95\nSteps: 2, Sampler: ddim";
    ck_assert_msg(lh_png_write(path, rgb, 3, 2, "parameters", params, &err) == LH_OK, "%s",
                  err.msg);
    uint8_t *got;
    int64_t w, h;
    ck_assert_msg(lh_png_read(path, &got, &w, &h, &err) == LH_OK, "%s", err.msg);
    ck_assert(w == 3 && h == 2 && !memcmp(got, rgb, 18));
    free(got);
    char *text;
    ck_assert_msg(lh_png_read_text(path, "parameters", &text, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(text, params);
    free(text);
    ck_assert_int_eq(lh_png_read_text(path, "nope", &text, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(lh_png_write(path, rgb, 3, 2, "parameters", "ascii", &err) == LH_OK, "%s",
                  err.msg); /* overwrite: tEXt */
    ck_assert_msg(lh_png_read_text(path, "parameters", &text, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(text, "ascii");
    free(text);
    /* gray 16-bit, gray 8-bit and RGBA come back as RGB8 */
    uint16_t g16[6];
    for (int i = 0; i < 6; i++) {
        g16[i] = (uint16_t)(i * 10000); /* SPNG_FMT_PNG takes host-endian samples */
    }
    write_raw_png(path, SPNG_COLOR_TYPE_GRAYSCALE, 16, g16, sizeof g16);
    ck_assert_msg(lh_png_read(path, &got, &w, &h, &err) == LH_OK, "%s", err.msg);
    for (int i = 0; i < 6; i++) {
        int want = (int)((i * 10000) >> 8);
        ck_assert_int_le(abs(got[i * 3] - want), 1);
        ck_assert(got[i * 3] == got[i * 3 + 1] && got[i * 3] == got[i * 3 + 2]);
    }
    free(got);
    uint8_t g8[6] = {0, 50, 100, 150, 200, 250}, rgba[24];
    write_raw_png(path, SPNG_COLOR_TYPE_GRAYSCALE, 8, g8, sizeof g8);
    ck_assert_msg(lh_png_read(path, &got, &w, &h, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(got[3 * 5 + 1], 250);
    free(got);
    for (int i = 0; i < 24; i++) rgba[i] = (uint8_t)(i * 10);
    write_raw_png(path, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 8, rgba, sizeof rgba);
    ck_assert_msg(lh_png_read(path, &got, &w, &h, &err) == LH_OK, "%s", err.msg);
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(got[i * 3 + c], rgba[i * 4 + c]);
    free(got);
    /* unreadable files */
    ck_assert_int_eq(lh_png_read("/nonexistent.png", &got, &w, &h, &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "/nonexistent.png: cannot open"), "%s", err.msg);
    snprintf(path, sizeof path, "%s/b.png", g_tmp);
    FILE *f = fopen(path, "wb");
    fputs("GIF89a not a png", f);
    fclose(f);
    ck_assert_int_eq(lh_png_read(path, &got, &w, &h, &err), LH_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "not a PNG file"), "%s", err.msg);
    /* truncated */
    char a[256], cmd[600];
    snprintf(a, sizeof a, "%s/a.png", g_tmp);
    snprintf(cmd, sizeof cmd, "head -c 60 %s > %s", a, path);
    run(cmd);
    ck_assert_int_eq(lh_png_read(path, &got, &w, &h, &err), LH_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "unreadable PNG"), "%s", err.msg);
    ck_assert_ptr_null(got);
    /* write into a missing directory: error, nothing left behind */
    snprintf(path, sizeof path, "%s/no/dir.png", g_tmp);
    ck_assert_int_eq(lh_png_write(path, rgb, 3, 2, NULL, NULL, &err), LH_ERR_IO);
}
END_TEST

static Suite *pipeline_suite(int n_cases, int n_cases2) {
    Suite *s = suite_create("pipeline");
    TCase *tc = tcase_create("reference");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_reference_case, 0, n_cases);
    tcase_add_loop_test(tc, test_sd2_reference_case, 0, n_cases2);
    suite_add_tcase(s, tc);
    tc = tcase_create("single_file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_single_file_sd1_case, 0, n_cases);
    tcase_add_loop_test(tc, test_single_file_sd2_case, 0, n_cases2);
    tcase_add_test(tc, test_single_file_sd2_metadata);
    tcase_add_test(tc, test_single_file_detect);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_detect_sd1);
    tcase_add_test(tc, test_detect_sd2);
    tcase_add_test(tc, test_detect_errors);
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_vae_dtype);
    tcase_add_test(tc, test_parameters_text);
    tcase_add_test(tc, test_png);
    suite_add_tcase(s, tc);
    return s;
}

/* The number of cases in a reference file, or -1. */
static int count_cases(const char *file) {
    const char *src = getenv("LH_SOURCE_DIR");
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", src ? src : "../..", file);
    lh_st_file *f;
    lh_error err = {0};
    if (lh_st_open(&f, path, &err) != LH_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    json_t *cases = json_loads(lh_st_meta_find(f, "cases"), 0, NULL);
    int n = cases ? (int)json_array_size(cases) : 0;
    json_decref(cases);
    lh_st_close(f);
    if (n < 1 || n > MAX_CASES) {
        fprintf(stderr, "%s: bad case list\n", path);
        return -1;
    }
    return n;
}

int main(void) {
    /* the number of cases, read once outside the fixtures */
    int n = count_cases("pipeline_reference.safetensors");
    int n2 = count_cases("pipeline_sd2_reference.safetensors");
    if (n < 0 || n2 < 0) return 1;
    SRunner *sr = srunner_create(pipeline_suite(n, n2));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
