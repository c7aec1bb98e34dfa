/* Trainer suite: lh_train_run on datasets of six near-identical red images:
 * on the tiny SD 1.x model the smoothed loss goes down; on a small
 * pixel-space model (lh_model_init, v-prediction) the trained adapter moves
 * generated images' colours to the training images'. (Exact resume,
 * checkpoints, export and bad input are tests/cli_train.sh's.)
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dataset.h"
#include "fake_device.h"
#include "lorahost/adapters.h"
#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "model.h"
#include "model_init.h"
#include "pipeline.h"
#include "png.h"
#include "trainer.h"

typedef struct losses {
    float v[1000];
    int64_t n;
} losses;

static void keep(void *user, const lh_train_progress *p) {
    losses *l = user;
    if (p->step >= 1 && p->step <= 1000 && (!p->event || strncmp(p->event, "resumed", 7)))
        l->v[p->step - 1] = p->loss, l->n = p->step;
}

static double mean(const float *v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    return s / (double)n;
}

/* Six red 40x36 PNGs with captions ("a red picture number <i>", or empty
 * with captions = 0) in dir/imgs, imported at 32 into dir/data.h5. */
static void red_dataset(const char *dir, double mean_rgb[3], int captions) {
    char path[4200];
    snprintf(path, sizeof path, "%s/imgs", dir);
    ck_assert(mkdir(path, 0755) == 0);
    lh_error err = {0};
    uint8_t rgb[40 * 36 * 3];
    double sum[3] = {0, 0, 0};
    for (int i = 0; i < 6; i++) {
        for (int p = 0; p < 40 * 36; p++) {
            rgb[3 * p] = (uint8_t)(200 + (p * 7 + i * 13) % 40);
            rgb[3 * p + 1] = 40;
            rgb[3 * p + 2] = (uint8_t)(60 + 10 * i);
            for (int c = 0; c < 3; c++) sum[c] += rgb[3 * p + c];
        }
        snprintf(path, sizeof path, "%s/imgs/red%d.png", dir, i);
        ck_assert_msg(lh_png_write(path, rgb, 40, 36, NULL, NULL, &err) == LH_OK, "%s", err.msg);
        snprintf(path, sizeof path, "%s/imgs/red%d.txt", dir, i);
        FILE *f = fopen(path, "w");
        ck_assert(f);
        if (captions) fprintf(f, "a red picture number %d", i);
        fclose(f);
    }
    for (int c = 0; c < 3; c++) mean_rgb[c] = sum[c] / (6.0 * 40 * 36);
    char imgs[4200], data[4200];
    snprintf(imgs, sizeof imgs, "%s/imgs", dir);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    lh_dataset_import_opts io = {.resolution = 32, .crop = LH_DATASET_CROP_CENTER};
    ck_assert_msg(lh_dataset_import(imgs, data, &io, NULL, NULL, NULL, &err) == LH_OK, "%s",
                  err.msg);
}

/* The plugin registry with the built-in plugins. */
static lh_registry *registry(void) {
    lh_error err = {0};
    lh_registry *reg = NULL;
    ck_assert_msg(lh_registry_create(&reg, &err) == LH_OK &&
                      lh_registry_scan(reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    return reg;
}

static void remove_tree(const char *dir) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert(system(cmd) == 0);
}

/* A scratch directory holding the red dataset (captioned) for the tiny SD
 * 1.x model: the paths lh_train_opts needs, out under dir. */
typedef struct workdir {
    char dir[32], model[4200], data[4200], out[4200];
    double mean_rgb[3];
} workdir;

static void workdir_make(workdir *w) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(w->dir, sizeof w->dir, "/tmp/lh-trainer-XXXXXX");
    ck_assert(mkdtemp(w->dir));
    snprintf(w->model, sizeof w->model, "%s/tests/fixtures/models/sd1_tiny", src ? src : "../..");
    red_dataset(w->dir, w->mean_rgb, 1);
    snprintf(w->data, sizeof w->data, "%s/data.h5", w->dir);
    snprintf(w->out, sizeof w->out, "%s/out", w->dir);
}

START_TEST(test_loss_goes_down) {
    workdir w;
    workdir_make(&w);
    lh_error err = {0};
    lh_registry *reg = registry();
    lh_train_opts o;
    lh_train_opts_default(&o);
    static const char *const targets[] = {"to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                          "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                                          "conv2"};
    for (int i = 0; i < 10; i++) o.targets[i] = targets[i];
    o.n_targets = 10;
    o.model = w.model;
    o.dataset = w.data;
    o.output_dir = w.out;
    o.threads = 1;
    o.steps = 300;
    o.batch_size = 2;
    o.lr = 1e-2;
    o.rank = 8;
    o.alpha = 8;
    o.seed = 1;
    o.save_every = 0;
    losses *l = calloc(1, sizeof *l);
    ck_assert(l);
    float smoothed = 0;
    ck_assert_msg(lh_train_run(&o, reg, keep, l, &smoothed, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(l->n, 300);
    double first = mean(l->v, 50), last = mean(l->v + 250, 50);
    fprintf(stderr, "loss: first 50 steps %.4f, last 50 %.4f, smoothed end %.4f\n", first, last,
            (double)smoothed);
    ck_assert_msg(last < first - 0.015, "loss did not go down: %.4f -> %.4f", first, last);
    free(l);
    lh_registry_destroy(reg);
    remove_tree(w.dir);
}
END_TEST

/* Caption dropout 1 trains on the empty caption: the losses equal, bit for
 * bit, those of the same images captioned "" (the other random draws do not
 * move), and differ from training on the captions. */
START_TEST(test_caption_dropout) {
    const char *src = getenv("LH_SOURCE_DIR");
    char with[] = "/tmp/lh-trainer-XXXXXX", without[] = "/tmp/lh-trainer-XXXXXX", model[4200];
    ck_assert(mkdtemp(with) && mkdtemp(without));
    snprintf(model, sizeof model, "%s/tests/fixtures/models/sd1_tiny", src ? src : "../..");
    double want[3];
    red_dataset(with, want, 1);
    red_dataset(without, want, 0);
    lh_error err = {0};
    lh_registry *reg = registry();
    losses *l[3];
    const char *dirs[3] = {with, without, with};
    const double rate[3] = {1.0, 0.0, 0.0};
    for (int k = 0; k < 3; k++) {
        char data[4200], out[4200];
        snprintf(data, sizeof data, "%s/data.h5", dirs[k]);
        snprintf(out, sizeof out, "%s/out%d", dirs[k], k);
        lh_train_opts o;
        lh_train_opts_default(&o);
        o.model = model;
        o.dataset = data;
        o.output_dir = out;
        o.threads = 1;
        o.steps = 4;
        o.batch_size = 2;
        o.lr = 1e-2;
        o.seed = 3;
        o.save_every = 0;
        o.caption_dropout = rate[k];
        l[k] = calloc(1, sizeof *l[k]);
        ck_assert(l[k]);
        float smoothed = 0;
        ck_assert_msg(lh_train_run(&o, reg, keep, l[k], &smoothed, &err) == LH_OK, "%s",
                      err.msg);
        ck_assert_int_eq(l[k]->n, 4);
    }
    for (int i = 0; i < 4; i++) {
        fprintf(stderr, "step %d: dropout 1 %.9g, empty captions %.9g, captions %.9g\n", i + 1,
                (double)l[0]->v[i], (double)l[1]->v[i], (double)l[2]->v[i]);
        ck_assert_msg(l[0]->v[i] == l[1]->v[i], "step %d: %.9g vs %.9g", i + 1,
                      (double)l[0]->v[i], (double)l[1]->v[i]);
    }
    ck_assert_msg(l[2]->v[0] != l[1]->v[0], "the captions did not change the loss");
    for (int k = 0; k < 3; k++) free(l[k]);
    lh_registry_destroy(reg);
    remove_tree(with);
    remove_tree(without);
}
END_TEST

/* Mean distance (RGB, 0..255) between the mean colour of txt2img images for
 * seeds 1..3 and `want`, with the adapter at `lora` (NULL: none). */
static double colour_distance(const char *model, const char *lora, const double want[3],
                              lh_registry *reg) {
    lh_backend *be = NULL;
    char msg[256];
    ck_assert(lh_backend_cpu_create(&be, 1, msg, sizeof msg) == LH_OK);
    lh_model *m = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_model_open(&m, be, model, &err) == LH_OK, "%s", err.msg);
    lh_adapter *a = NULL;
    if (lora) {
        ck_assert_msg(lh_adapter_load(&a, m, reg, lora, NULL, &err) == LH_OK, "%s", err.msg);
        double one = 1.0;
        ck_assert_msg(lh_adapter_set(m, &a, &one, 1, &err) == LH_OK, "%s", err.msg);
    }
    double d = 0;
    for (int s = 1; s <= 3; s++) {
        lh_gen_params p;
        lh_gen_params_init(&p);
        p.prompt = "a red picture number 1";
        p.steps = 20;
        p.width = p.height = 32;
        p.seed = (uint64_t)s;
        lh_gen_result r;
        ck_assert_msg(lh_pipeline_txt2img(m, reg, &p, &r, &err) == LH_OK, "%s", err.msg);
        double mean[3] = {0, 0, 0}, e = 0;
        for (int64_t i = 0; i < r.width * r.height; i++)
            for (int c = 0; c < 3; c++) mean[c] += r.images[3 * i + c];
        for (int c = 0; c < 3; c++) {
            mean[c] /= (double)(r.width * r.height);
            e += (mean[c] - want[c]) * (mean[c] - want[c]);
        }
        d += sqrt(e) / 3.0;
        lh_gen_result_free(&r);
    }
    lh_adapter_unload(a);
    lh_model_close(m);
    lh_backend_destroy(be);
    return d;
}

/* The proof: after a short run the adapter moves generated images
 * toward the training data (their mean colour), on a small pixel-space
 * model where colours are measurable. */
START_TEST(test_adapter_moves_colours) {
    const char *src = getenv("LH_SOURCE_DIR");
    char dir[] = "/tmp/lh-trainer-XXXXXX", unet_cfg[4200], model[4200], te_cfg[4200];
    ck_assert(mkdtemp(dir));
    double want[3];
    red_dataset(dir, want, 1);
    /* a small U-Net (16/32 channels) over the example text encoder */
    snprintf(unet_cfg, sizeof unet_cfg, "%s/unet.json", dir);
    FILE *f = fopen(unet_cfg, "w");
    ck_assert(f);
    fprintf(f, "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 32, "
               "\"in_channels\": 3, \"out_channels\": 3, \"block_out_channels\": [16, 32], "
               "\"layers_per_block\": 1, \"down_block_types\": [\"DownBlock2D\", "
               "\"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\", "
               "\"UpBlock2D\"], \"attention_head_dim\": 4, \"cross_attention_dim\": 32, "
               "\"norm_num_groups\": 8}\n");
    fclose(f);
    snprintf(te_cfg, sizeof te_cfg, "%s/examples/model/text_encoder_config.json",
             src ? src : "../..");
    snprintf(model, sizeof model, "%s/model", dir);
    lh_model_init_opts mo = {.unet_config = unet_cfg, .text_encoder_config = te_cfg, .seed = 0};
    lh_error err = {0};
    ck_assert_msg(lh_model_init(model, &mo, &err) == LH_OK, "%s", err.msg);
    lh_registry *reg = registry();
    double before = colour_distance(model, NULL, want, reg);

    char data[4200], out[4200], lora[4300];
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    lh_train_opts o;
    lh_train_opts_default(&o);
    static const char *const targets[] = {"to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
                                          "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                                          "conv_in", "conv_out", "time_emb_proj"};
    for (int i = 0; i < 13; i++) o.targets[i] = targets[i];
    o.n_targets = 13;
    o.model = model;
    o.dataset = data;
    o.output_dir = out;
    o.threads = 0;
    o.steps = 150;
    o.batch_size = 4;
    o.lr = 3e-3;
    o.rank = 8;
    o.alpha = 8;
    o.seed = 0;
    o.save_every = 0;
    float smoothed = 0;
    ck_assert_msg(lh_train_run(&o, reg, NULL, NULL, &smoothed, &err) == LH_OK, "%s", err.msg);
    snprintf(lora, sizeof lora, "%s/lora.safetensors", out);
    double after = colour_distance(model, lora, want, reg);
    fprintf(stderr, "mean colour distance to the training images: %.1f without the adapter, "
            "%.1f with it (smoothed loss %.4f)\n", before, after, (double)smoothed);
    ck_assert_msg(after < 0.35 * before, "the adapter did not move the colours: %.1f -> %.1f",
                  before, after);
    lh_registry_destroy(reg);
    remove_tree(dir);
}
END_TEST

/* A checkpoint whose parameters hold a NaN (written through the store, so
 * it is well-formed) is refused on resume with a message naming it. */
START_TEST(test_resume_refuses_nan) {
    workdir w;
    workdir_make(&w);
    char ck[4300];
    snprintf(ck, sizeof ck, "%s/checkpoints", w.out);
    lh_error err = {0};
    lh_registry *reg = registry();
    lh_train_opts o;
    lh_train_opts_default(&o);
    o.model = w.model;
    o.dataset = w.data;
    o.output_dir = w.out;
    o.threads = 1;
    o.steps = 2;
    o.save_every = 0;
    o.seed = 3;
    ck_assert_msg(lh_train_run(&o, reg, NULL, NULL, NULL, &err) == LH_OK, "%s", err.msg);
    /* rewrite the newest checkpoint with param/...[0] = NaN */
    lh_ckpt *c = NULL;
    ck_assert_msg(lh_ckpt_open_latest(&c, ck, &err) == LH_OK, "%s", err.msg);
    const lh_st_file *f = lh_ckpt_file(c);
    size_t n = lh_st_count(f);
    lh_ckpt_tensor *ts = calloc(n, sizeof *ts);
    void **bufs = calloc(n, sizeof *bufs);
    ck_assert(ts && bufs);
    int poisoned = 0;
    for (size_t i = 0; i < n; i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        bufs[i] = malloc((size_t)t->numel * lh_dtype_size(t->dtype) + 1);
        ck_assert(bufs[i]);
        ck_assert_msg(lh_ckpt_read(bufs[i], c, t->name, t->dtype, t->ndim, t->shape, &err) == LH_OK,
                      "%s", err.msg);
        if (!poisoned && !strncmp(t->name, "param/", 6) && t->dtype == LH_DTYPE_F32 && t->numel) {
            ((float *)bufs[i])[0] = NAN;
            poisoned = 1;
        }
        ts[i] = (lh_ckpt_tensor){t->name, t->dtype, t->ndim, {0}, bufs[i]};
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
    }
    ck_assert(poisoned);
    static const char *const keys[] = {"fingerprint", "scaler_scale", "scaler_clean",
                                       "scaler_skipped", "scaler_steps"};
    lh_ckpt_meta meta[5];
    for (int k = 0; k < 5; k++) {
        meta[k] = (lh_ckpt_meta){keys[k], lh_ckpt_meta_find(c, keys[k])};
        ck_assert_ptr_nonnull(meta[k].value);
    }
    ck_assert_msg(lh_ckpt_save(ck, lh_ckpt_step(c), 10, ts, n, meta, 5, &err) == LH_OK, "%s",
                  err.msg);
    lh_ckpt_close(c);
    for (size_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(ts);
    o.steps = 4;
    o.resume = 1;
    lh_status st = lh_train_run(&o, reg, NULL, NULL, NULL, &err);
    ck_assert_msg(st == LH_ERR_NUMERIC, "status %d: %s", (int)st, err.msg);
    ck_assert_msg(strstr(err.msg, "NaN/Inf") && strstr(err.msg, "checkpoint-"), "%s", err.msg);
    lh_registry_destroy(reg);
    remove_tree(w.dir);
}
END_TEST

/* Per optimizer step the host waits for the device once (the loss rows and
 * the overflow verdict in one download), with cached latents and text: on
 * the poison device, which counts the downloads and syncs a GPU would wait
 * for, in fp32 with clipping, in fp16 with loss scaling and with LoRA
 * dropout, with gradient accumulation. */
typedef struct waits {
    lh_backend *be;
    size_t at[8];
    int n;
    int64_t skipped;
    float scale;
} waits;

static void count_waits(void *user, const lh_train_progress *p) {
    waits *w = user;
    if (p->step >= 1 && p->step <= 8) w->at[p->step - 1] = fake_device_waits(w->be), w->n = (int)p->step;
    w->skipped = p->skipped;
    w->scale = p->loss_scale;
}

/* w's dataset with cached latents and text (made on the cpu backend). */
static void cache_dataset(const workdir *w) {
    lh_error err = {0};
    char msg[256];
    lh_backend *cpu = NULL;
    ck_assert_msg(lh_backend_cpu_create(&cpu, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_model *m = NULL;
    ck_assert_msg(lh_model_open(&m, cpu, w->model, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_dataset_cache(w->data, m, w->model, NULL, NULL, &err) == LH_OK, "%s", err.msg);
    lh_model_close(m);
    lh_backend_destroy(cpu);
}

/* Options for a run of w on the device dev, clipping at 1, no saves but the last. */
static void device_opts(lh_train_opts *o, const workdir *w, lh_backend *dev, int64_t steps) {
    lh_train_opts_default(o);
    o->model = w->model;
    o->dataset = w->data;
    o->output_dir = w->out;
    o->backend = dev;
    o->threads = 1;
    o->steps = steps;
    o->max_grad_norm = 1.0;
    o->save_every = 0;
}

START_TEST(test_one_wait_per_step) {
    workdir w;
    workdir_make(&w);
    cache_dataset(&w);
    lh_error err = {0};
    char msg[256];
    lh_backend *dev = NULL;
    ck_assert_msg(fake_device_create(&dev, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_registry *reg = registry();
    static const char *const runs[] = {"fp32", "fp16", "dropout", "loha", "te"};
    for (int k = 0; k < 5; k++) {
        lh_train_opts o;
        device_opts(&o, &w, dev, 5);
        o.batch_size = 2;
        o.grad_accum = 2;
        o.precision = k == 1 ? LH_DTYPE_F16 : LH_DTYPE_F32;
        o.dropout = k == 2 ? 0.25 : 0.0;
        o.adapter = k == 3 ? "loha" : "lora";
        o.train_text_encoder = k == 4;
        o.seed = 5;
        waits c = {.be = dev};
        ck_assert_msg(lh_train_run(&o, reg, count_waits, &c, NULL, &err) == LH_OK, "%s", err.msg);
        ck_assert_int_eq(c.n, 5);
        ck_assert_int_eq(c.skipped, 0);
        /* steps 2..4 (step 5 also writes the checkpoint and the export) */
        fprintf(stderr, "%s: waits after each step:", runs[k]);
        for (int i = 0; i < 5; i++) fprintf(stderr, " %zu", c.at[i]);
        fprintf(stderr, "\n");
        for (int i = 1; i < 4; i++)
            ck_assert_msg(c.at[i] - c.at[i - 1] == 1, "%s: step %d waited %zu times for the device",
                          runs[k], i + 1, c.at[i] - c.at[i - 1]);
        remove_tree(w.out);
    }
    lh_registry_destroy(reg);
    lh_backend_destroy(dev);
    remove_tree(w.dir);
}
END_TEST

/* An fp16 step whose loss gradient overflows (loss weights of 1e30: dL/d(out)
 * times the loss scale is past 65504) is skipped on the device: AdamW does
 * nothing (every adam_step of the checkpoint is 0), the scale halves each
 * step, and the host reads back only to say where (3 waits a step: the
 * step's, then the sums and the U-Net's counts for the warning). */
START_TEST(test_overflow_skipped_on_device) {
    workdir w;
    workdir_make(&w);
    cache_dataset(&w);
    hid_t f = H5Fopen(w.data, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert(f >= 0);
    hsize_t n = 6;
    float big[6] = {1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f};
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(f, "/weights", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert(d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, big) >= 0);
    H5Dclose(d), H5Sclose(sp), H5Fclose(f);
    lh_error err = {0};
    char msg[256];
    lh_backend *dev = NULL;
    ck_assert_msg(fake_device_create(&dev, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_registry *reg = registry();
    lh_train_opts o;
    device_opts(&o, &w, dev, 3);
    o.precision = LH_DTYPE_F16;
    o.seed = 9;
    waits c = {.be = dev};
    ck_assert_msg(lh_train_run(&o, reg, count_waits, &c, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(c.n, 3);
    ck_assert_int_eq(c.skipped, 3);
    ck_assert_msg(c.scale == 8192.0f, "loss scale %g after three overflows", (double)c.scale);
    ck_assert_msg(c.at[1] - c.at[0] == 3, "a skipped step waited %zu times", c.at[1] - c.at[0]);
    char ck[4300];
    snprintf(ck, sizeof ck, "%s/checkpoints", w.out);
    lh_ckpt *cp = NULL;
    ck_assert_msg(lh_ckpt_open_latest(&cp, ck, &err) == LH_OK, "%s", err.msg);
    const lh_st_file *sf = lh_ckpt_file(cp);
    int found = 0;
    for (size_t i = 0; i < lh_st_count(sf); i++) {
        const lh_st_tensor *t = lh_st_get(sf, i);
        if (strcmp(t->name, "adam_step")) continue;
        int64_t *steps = calloc((size_t)t->numel + 1, sizeof *steps);
        ck_assert(steps);
        ck_assert_msg(lh_ckpt_read(steps, cp, t->name, t->dtype, t->ndim, t->shape, &err) == LH_OK,
                      "%s", err.msg);
        for (int64_t k = 0; k < t->numel; k++) ck_assert_int_eq(steps[k], 0);
        free(steps);
        found = 1;
    }
    ck_assert(found);
    lh_ckpt_close(cp);
    lh_registry_destroy(reg);
    lh_backend_destroy(dev);
    remove_tree(w.dir);
}
END_TEST

/* model.vae_dtype in training: auto is the mixed precision on a device and
 * f32 on the cpu; a name is taken as it is, anything else refused naming
 * it; and it is what encodes the images: an f16 VAE's latents move the
 * first loss a little (float32 activations vs fp16 ones), not a lot, and
 * the device's auto run is the cpu's f16 one, bit for bit. */
START_TEST(test_vae_dtype) {
    char msg[256];
    lh_backend *cpu = NULL, *dev = NULL;
    ck_assert_msg(lh_backend_cpu_create(&cpu, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    ck_assert_msg(fake_device_create(&dev, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_train_opts o;
    lh_train_opts_default(&o);
    ck_assert_str_eq(o.vae_dtype, "auto");
    const lh_dtype prec[3] = {LH_DTYPE_F32, LH_DTYPE_F16, LH_DTYPE_BF16};
    const char *const on_dev[3] = {"f32", "f16", "bf16"};
    for (int k = 0; k < 3; k++) {
        o.precision = prec[k];
        o.vae_dtype = k == 2 ? NULL : "auto"; /* NULL is auto */
        ck_assert_str_eq(lh_train_vae_dtype(&o, cpu), "f32");
        ck_assert_str_eq(lh_train_vae_dtype(&o, dev), on_dev[k]);
        o.vae_dtype = "bf16";
        ck_assert_str_eq(lh_train_vae_dtype(&o, cpu), "bf16");
        ck_assert_str_eq(lh_train_vae_dtype(&o, dev), "bf16");
    }
    o.vae_dtype = "fp16"; /* mixed_precision's spelling, not vae_dtype's */
    ck_assert_ptr_null(lh_train_vae_dtype(&o, dev));

    /* fp16 training on the cpu with an f32 and an f16 VAE, and on the fake
     * device (the cpu's arithmetic) with auto: that one is the f16 run */
    workdir w;
    workdir_make(&w);
    lh_error err = {0};
    lh_registry *reg = registry();
    const char *const vd[3] = {"f32", "f16", "auto"};
    lh_backend *on[3] = {cpu, cpu, dev};
    losses *l[3];
    for (int k = 0; k < 3; k++) {
        lh_train_opts_default(&o);
        o.model = w.model;
        o.dataset = w.data;
        o.output_dir = w.out;
        o.backend = on[k];
        o.steps = 2;
        o.batch_size = 2;
        o.seed = 9;
        o.save_every = 0;
        o.precision = LH_DTYPE_F16;
        o.vae_dtype = vd[k];
        l[k] = calloc(1, sizeof *l[k]);
        ck_assert(l[k]);
        ck_assert_msg(lh_train_run(&o, reg, keep, l[k], NULL, &err) == LH_OK, "%s", err.msg);
        ck_assert_int_eq(l[k]->n, 2);
        remove_tree(w.out);
    }
    double d = fabs((double)l[1]->v[0] - l[0]->v[0]) / fabs((double)l[0]->v[0]);
    fprintf(stderr, "first loss: f32 VAE %.9g, f16 VAE %.9g (rel %.2e), device auto %.9g\n",
            (double)l[0]->v[0], (double)l[1]->v[0], d, (double)l[2]->v[0]);
    ck_assert_msg(d > 0 && d < 1e-2, "an f16 VAE moved the first loss by %.3e", d);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(l[2]->v[i] == l[1]->v[i], "step %d: the device's auto VAE gave %.9g, the "
                      "cpu's f16 one %.9g", i + 1, (double)l[2]->v[i], (double)l[1]->v[i]);
    o.vae_dtype = "f8";
    ck_assert_int_eq(lh_train_run(&o, reg, keep, l[0], NULL, &err), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "vae_dtype") && strstr(err.msg, "'f8'"), "%s", err.msg);
    for (int k = 0; k < 3; k++) free(l[k]);
    lh_registry_destroy(reg);
    lh_backend_destroy(dev);
    lh_backend_destroy(cpu);
    remove_tree(w.dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("trainer");
    TCase *tc = tcase_create("tiny");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_loss_goes_down);
    tcase_add_test(tc, test_adapter_moves_colours);
    tcase_add_test(tc, test_resume_refuses_nan);
    tcase_add_test(tc, test_one_wait_per_step);
    tcase_add_test(tc, test_overflow_skipped_on_device);
    tcase_add_test(tc, test_vae_dtype);
    suite_add_tcase(s, tc);
    TCase *tc_cap = tcase_create("caption_dropout");
    tcase_set_timeout(tc_cap, 300);
    tcase_add_test(tc_cap, test_caption_dropout);
    suite_add_tcase(s, tc_cap);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
