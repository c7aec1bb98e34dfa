/* U-Net full-parameter gradient suite: lh_unet_backward_full on the tiny SD
 * 1.x model without adapters against torch autograd in float64
 * (tests/fixtures/gradients/sd1_grads.safetensors, "unet.full_*", written by
 * tests/golden/gradients.py): loss = mse(pred, target) within 1e-5 and
 * d loss / d every U-Net parameter within relative L2 1e-4; gradient
 * checkpointing gives bit-identical parameter gradients.
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lorahost/lorahost.h"
#include "model.h"
#include "test_util.h"
#include "unet.h"

#define TOL 1e-4      /* relative L2 of each gradient, float32 against float64 */
#define LOSS_TOL 1e-5 /* relative error of the loss */
#define ZERO_REL 1e-6 /* a reference below this times the largest norm is an exact zero */
#define PREFIX "unet.full_grad."

static char g_src[4096];
static lh_backend *g_be;

#include "backend_test.h"

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    char msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "%s", msg);
}

static void teardown(void) { lh_backend_destroy(g_be); }

/* ---- Fixture ---- */

typedef struct fixture {
    lh_model *m;
    lh_st_file *ref;
    lh_unet_grads *g;
    float *t, *target; /* host */
    float *dev_x, *dev_ctx, *dev_pred, *dev_dout;
    int64_t b, h, w, n_ctx;
    size_t n_out;
} fixture;

static void fixture_open(fixture *f) {
    memset(f, 0, sizeof *f);
    char path[4400];
    lh_error err = {0};
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny", g_src);
    ck_assert_msg(lh_model_open(&f->m, g_be, path, &err) == LH_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/gradients/sd1_grads.safetensors", g_src);
    ck_assert_msg(lh_st_open(&f->ref, path, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_unet_grads_create(&f->g, f->m->unet, &err) == LH_OK, "%s", err.msg);

    const lh_st_tensor *x = lh_st_find(f->ref, "unet.x"), *c = lh_st_find(f->ref, "unet.context");
    ck_assert(x && x->ndim == 4 && c && c->ndim == 3);
    f->b = x->shape[0];
    f->h = x->shape[2];
    f->w = x->shape[3];
    f->n_ctx = c->shape[1];
    const lh_unet_config *cfg = lh_unet_get_config(f->m->unet);
    ck_assert(cfg->in_channels == x->shape[1] && cfg->out_channels == x->shape[1] &&
              cfg->cross_attention_dim == c->shape[2] && c->shape[0] == f->b);
    f->n_out = (size_t)x->numel;
    float *hx = read_host(f->ref, "unet.x", f->n_out);
    float *hctx = read_host(f->ref, "unet.context", (size_t)c->numel);
    f->t = read_host(f->ref, "unet.t", (size_t)f->b);
    f->target = read_host(f->ref, "unet.target", f->n_out);
    f->dev_x = to_dev(hx, f->n_out);
    f->dev_ctx = to_dev(hctx, (size_t)c->numel);
    f->dev_pred = to_dev(NULL, f->n_out);
    f->dev_dout = to_dev(NULL, f->n_out);
    free(hx);
    free(hctx);
}

static void fixture_close(fixture *f) {
    float *dev[] = {f->dev_x, f->dev_ctx, f->dev_pred, f->dev_dout};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_be->ops->free(g_be, dev[i]);
    lh_unet_grads_free(f->g);
    lh_model_close(f->m);
    lh_st_close(f->ref);
    free(f->t);
    free(f->target);
}

static double l2sq(const float *p, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)p[i] * p[i];
    return s;
}

/* A host copy of the gradient of `key` (fails if missing or mis-sized). */
static float *grad_host(const fixture *f, const char *key, size_t want_numel) {
    size_t n = 0;
    const float *g = lh_unet_grad(f->g, key, &n);
    ck_assert_msg(g != NULL, "no gradient for %s", key);
    ck_assert_msg(n == want_numel, "%s: %zu elements, want %zu", key, n, want_numel);
    return download(g, n);
}

static void run_backward(fixture *f, int checkpointing) {
    lh_error err = {0};
    ck_assert(lh_unet_grads_zero(f->g) == LH_OK);
    double t0 = now();
    ck_assert_msg(lh_unet_backward_full(f->m->unet, f->g, NULL, NULL, f->dev_dout, f->dev_x, f->t,
                                        f->dev_ctx, f->b, f->h, f->w, f->n_ctx, checkpointing,
                                        &err) == LH_OK,
                  "%s", err.msg);
    fprintf(stderr, "unet full backward (checkpointing %d): %.3f s\n", checkpointing, now() - t0);
}

/* ---- Tests ---- */

START_TEST(test_full_grads_match_autograd) {
    fixture f;
    fixture_open(&f);
    lh_error err = {0};
    ck_assert_msg(lh_unet_forward(f.m->unet, f.dev_pred, f.dev_x, f.t, f.dev_ctx, f.b, f.h, f.w,
                                  f.n_ctx, &err) == LH_OK,
                  "%s", err.msg);
    float *pred = download(f.dev_pred, f.n_out), *dout = malloc(f.n_out * sizeof *dout);
    ck_assert(dout);
    double loss = 0;
    for (size_t i = 0; i < f.n_out; i++) {
        double d = (double)pred[i] - f.target[i];
        loss += d * d;
        dout[i] = (float)(2.0 * d / (double)f.n_out);
    }
    loss /= (double)f.n_out;
    double want_loss;
    const lh_st_tensor *lt = lh_st_find(f.ref, "unet.full_loss");
    ck_assert(lt && lt->dtype == LH_DTYPE_F64 && lt->numel == 1);
    memcpy(&want_loss, lt->data, sizeof want_loss);
    ck_assert_msg(fabs(loss - want_loss) <= LOSS_TOL * fabs(want_loss), "loss %.10g, want %.10g",
                  loss, want_loss);
    ck_assert(g_be->ops->upload(g_be, f.dev_dout, dout, f.n_out * sizeof *dout) == LH_OK);

    run_backward(&f, 0);
    size_t n_ref = lh_st_count(f.ref), n_keys = 0, n_compared = 0, n_zero = 0;
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n_ref; i++) {
        const lh_st_tensor *t = lh_st_get(f.ref, i);
        if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0) continue;
        float *want = read_host(f.ref, t->name, (size_t)t->numel);
        scale = fmax(scale, sqrt(l2sq(want, (size_t)t->numel)));
        free(want);
    }
    ck_assert(scale > 0);
    float **saved = calloc(n_ref, sizeof *saved);
    ck_assert(saved);
    for (size_t i = 0; i < n_ref; i++) {
        const lh_st_tensor *t = lh_st_get(f.ref, i);
        if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0) continue;
        n_keys++;
        const char *key = t->name + strlen(PREFIX);
        size_t n = (size_t)t->numel; /* proj_in/proj_out: [c, c, 1, 1] there, c*c here */
        float *want = read_host(f.ref, t->name, n), *got = grad_host(&f, key, n);
        double gn = sqrt(l2sq(got, n)), wn = sqrt(l2sq(want, n));
        if (wn < ZERO_REL * scale) {
            ck_assert_msg(gn < ZERO_REL * scale, "%s: norm %g, want 0 (scale %g)", key, gn,
                          scale);
            n_zero++;
        } else {
            double r = rel_l2(got, want, n);
            ck_assert_msg(r < TOL, "%s: relative L2 %g", key, r);
            worst = fmax(worst, r);
        }
        n_compared++;
        saved[i] = got;
        free(want);
    }
    ck_assert_msg(n_keys > 0 && n_compared == n_keys, "compared %zu of %zu keys", n_compared,
                  n_keys);
    ck_assert_msg(n_keys == lh_unet_grads_count(f.g), "%zu reference keys, %zu U-Net parameters",
                  n_keys, lh_unet_grads_count(f.g));
    ck_assert_msg(n_zero < n_keys / 4, "%zu of %zu references are zero", n_zero, n_keys);
    fprintf(stderr, "compared %zu unet.full_grad keys (%zu exact zeros): max relative L2 %.3g\n",
            n_compared, n_zero, worst);

    /* checkpointing: the same parameter gradients, bit for bit */
    run_backward(&f, 1);
    for (size_t i = 0; i < n_ref; i++) {
        if (!saved[i]) continue;
        const lh_st_tensor *t = lh_st_get(f.ref, i);
        float *ck = grad_host(&f, t->name + strlen(PREFIX), (size_t)t->numel);
        ck_assert_msg(memcmp(saved[i], ck, (size_t)t->numel * sizeof(float)) == 0,
                      "%s differs with checkpointing", t->name);
        free(ck);
        free(saved[i]);
    }
    free(saved);
    free(dout);
    free(pred);
    fixture_close(&f);
}
END_TEST

START_TEST(test_grads_api) {
    fixture f;
    fixture_open(&f);
    size_t n = 0;
    ck_assert(lh_unet_grad(f.g, "no.such.weight", &n) == NULL);
    ck_assert(lh_unet_grad(f.g, "conv_in.weight", &n) != NULL && n > 0);
    ck_assert_str_eq(lh_unet_grads_key(f.g, 0), "conv_in.weight");
    ck_assert(lh_unet_grads_key(f.g, lh_unet_grads_count(f.g)) == NULL);
    /* a NULL store is the frozen base of lh_unet_backward */
    lh_error err = {0};
    ck_assert(lh_unet_backward_full(f.m->unet, NULL, NULL, NULL, NULL, f.dev_x, f.t, f.dev_ctx,
                                    f.b, f.h, f.w, f.n_ctx, 0, &err) == LH_ERR_INVALID);
    ck_assert(lh_unet_grads_create(NULL, f.m->unet, &err) == LH_ERR_INVALID);
    fixture_close(&f);
}
END_TEST

static Suite *unet_full_grad_suite(void) {
    Suite *s = suite_create("unet_full_grad");
    TCase *tc = tcase_create("full");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_full_grads_match_autograd);
    tcase_add_test(tc, test_grads_api);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(unet_full_grad_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
