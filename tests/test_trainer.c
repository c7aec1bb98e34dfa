/* Trainer suite: lh_train_run on the tiny SD 1.x model and a dataset of
 * six near-identical red images: the smoothed loss goes down. (Exact resume,
 * checkpoints, export and bad input are tests/cli_train.sh's.)
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "lorahost/lorahost.h"
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

START_TEST(test_loss_goes_down) {
    const char *src = getenv("LH_SOURCE_DIR");
    char dir[] = "/tmp/lh-trainer-XXXXXX", path[4200], model[4200];
    ck_assert(mkdtemp(dir));
    snprintf(model, sizeof model, "%s/tests/fixtures/models/sd1_tiny", src ? src : "../..");
    snprintf(path, sizeof path, "%s/imgs", dir);
    ck_assert(mkdir(path, 0755) == 0);
    lh_error err = {0};
    uint8_t rgb[40 * 36 * 3];
    for (int i = 0; i < 6; i++) { /* red with a little texture */
        for (int p = 0; p < 40 * 36; p++) {
            rgb[3 * p] = (uint8_t)(200 + (p * 7 + i * 13) % 40);
            rgb[3 * p + 1] = 40;
            rgb[3 * p + 2] = (uint8_t)(60 + 10 * i);
        }
        snprintf(path, sizeof path, "%s/imgs/red%d.png", dir, i);
        ck_assert_msg(lh_png_write(path, rgb, 40, 36, NULL, NULL, &err) == LH_OK, "%s", err.msg);
        snprintf(path, sizeof path, "%s/imgs/red%d.txt", dir, i);
        FILE *f = fopen(path, "w");
        ck_assert(f);
        fprintf(f, "a red picture number %d", i);
        fclose(f);
    }
    char imgs[4200], data[4200], out[4200];
    snprintf(imgs, sizeof imgs, "%s/imgs", dir);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    lh_dataset_import_opts io = {.resolution = 32, .crop = LH_DATASET_CROP_CENTER};
    ck_assert_msg(lh_dataset_import(imgs, data, &io, NULL, NULL, NULL, &err) == LH_OK, "%s",
                  err.msg);
    lh_registry *reg = NULL;
    ck_assert_msg(lh_registry_create(&reg, &err) == LH_OK &&
                      lh_registry_scan(reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    lh_train_opts o;
    lh_train_opts_default(&o);
    static const char *const targets[] = {"to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                          "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                                          "conv2"};
    for (int i = 0; i < 10; i++) o.targets[i] = targets[i];
    o.n_targets = 10;
    o.model = model;
    o.dataset = data;
    o.output_dir = out;
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
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert(system(cmd) == 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("trainer");
    TCase *tc = tcase_create("tiny");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_loss_goes_down);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
