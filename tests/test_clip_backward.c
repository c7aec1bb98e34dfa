/* CLIP text encoder backward suite: lh_clip_encode_backward on the tiny SD 1.x
 * model with runtime PEFT LoRA adapters against torch autograd in float64
 * (tests/fixtures/gradients/, written by tests/golden/gradients.py): the loss
 * sum(out * dy) and d loss / d every text-encoder LoRA tensor within relative
 * L2 1e-4; gradients accumulate across calls until zeroed; the forward output
 * matches lh_clip_encode; the embedding gradient is finite and non-zero.
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "clip.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "test_util.h"
#include "tensor.h"

#define TOL 1e-4      /* relative L2 of each gradient, float32 against float64 */
#define LOSS_TOL 1e-5 /* relative error of the loss */
#define PREFIX "te.grad."

static char g_src[4096];
static lh_backend *g_be;
static lh_registry *g_reg;

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    char msg[512] = "";
    ck_assert_msg(lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_error err = {0};
    ck_assert_msg(lh_registry_create(&g_reg, &err) == LH_OK &&
                      lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
}

static void teardown(void) {
    lh_registry_destroy(g_reg);
    lh_backend_destroy(g_be);
}

/* ---- Fixture ---- */

typedef struct fixture {
    lh_model *m;
    lh_adapter *a;
    lh_st_file *ref;
    int32_t *ids;
    float *dy;      /* host [b, n, hidden] */
    float *dev_dy;  /* backend copy */
    float *dev_out, *dev_demb;
    int64_t b, n, hidden;
    size_t count;   /* b * n * hidden */
    double loss;
} fixture;

static void fixture_open(fixture *f) {
    memset(f, 0, sizeof *f);
    char path[4400];
    lh_error err = {0};
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny", g_src);
    ck_assert_msg(lh_model_open(&f->m, g_be, path, &err) == LH_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/gradients/sd1_grads.safetensors", g_src);
    ck_assert_msg(lh_st_open(&f->ref, path, &err) == LH_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/gradients/sd1_lora.safetensors", g_src);
    ck_assert_msg(lh_adapter_load(&f->a, f->m, g_reg, path, NULL, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_adapter_grads_enable(f->a, &err) == LH_OK, "%s", err.msg);
    lh_adapter_weights w;
    lh_adapter_weights_init(&w, 1.0);
    ck_assert_msg(lh_adapter_set_ex(f->m, &f->a, &w, 1, LH_ADAPTER_RUNTIME, &err) == LH_OK, "%s",
                  err.msg);

    const lh_st_tensor *ids = lh_st_find(f->ref, "te.ids"), *dy = lh_st_find(f->ref, "te.dy");
    const lh_st_tensor *loss = lh_st_find(f->ref, "te.loss");
    ck_assert(ids && ids->dtype == LH_DTYPE_I32 && ids->ndim == 2);
    ck_assert(dy && dy->ndim == 3 && loss && loss->dtype == LH_DTYPE_F64 && loss->numel == 1);
    f->b = ids->shape[0];
    f->n = ids->shape[1];
    f->hidden = lh_clip_hidden_size(f->m->clip);
    ck_assert(dy->shape[0] == f->b && dy->shape[1] == f->n && dy->shape[2] == f->hidden);
    f->count = (size_t)(f->b * f->n * f->hidden);
    f->ids = malloc((size_t)ids->numel * sizeof *f->ids);
    f->dy = malloc(f->count * sizeof *f->dy);
    ck_assert(f->ids && f->dy);
    memcpy(f->ids, ids->data, (size_t)ids->numel * sizeof *f->ids);
    memcpy(&f->loss, loss->data, sizeof f->loss);
    ck_assert_msg(lh_st_read_f32(f->dy, f->count, f->ref, "te.dy", &err) == LH_OK, "%s", err.msg);
    const size_t bytes = f->count * sizeof(float);
    f->dev_dy = g_be->ops->alloc(g_be, bytes);
    f->dev_out = g_be->ops->alloc(g_be, bytes);
    f->dev_demb = g_be->ops->alloc(g_be, bytes);
    ck_assert(f->dev_dy && f->dev_out && f->dev_demb);
    ck_assert(g_be->ops->upload(g_be, f->dev_dy, f->dy, bytes) == LH_OK);
}

static void fixture_close(fixture *f) {
    g_be->ops->free(g_be, f->dev_dy);
    g_be->ops->free(g_be, f->dev_out);
    g_be->ops->free(g_be, f->dev_demb);
    lh_adapter_unload(f->a);
    lh_model_close(f->m);
    lh_st_close(f->ref);
    free(f->ids);
    free(f->dy);
}

static void backward(fixture *f, float *out, float *d_emb) {
    lh_error err = {0};
    ck_assert_msg(lh_clip_encode_backward(f->m->clip, out, d_emb, f->dev_dy, f->ids, f->b, f->n,
                                          0, &err) == LH_OK,
                  "%s", err.msg);
}

static float *download(const float *dev, size_t count) {
    float *host = malloc(count * sizeof *host);
    ck_assert(host);
    ck_assert(g_be->ops->download(g_be, host, dev, count * sizeof *host) == LH_OK);
    return host;
}

/* Every "te.grad.<key>" of the fixture against lh_adapter_grad(a, key) times
 * `factor` (the number of backward calls since the gradients were zeroed).
 * Returns the largest relative L2. */
static double check_grads(const fixture *f, double factor) {
    size_t n_keys = 0, n_compared = 0;
    double worst = 0, norm2 = 0;
    for (size_t i = 0; i < lh_st_count(f->ref); i++) {
        const lh_st_tensor *t = lh_st_get(f->ref, i);
        if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0) continue;
        n_keys++;
        const char *key = t->name + strlen(PREFIX);
        const lh_tensor *g = lh_adapter_grad(f->a, key);
        ck_assert_msg(g != NULL, "no gradient for %s", key);
        ck_assert_msg(g->numel == t->numel && g->dtype == LH_DTYPE_F32,
                      "%s: %lld elements, want %lld", key, (long long)g->numel,
                      (long long)t->numel);
        float *want = malloc((size_t)t->numel * sizeof *want);
        ck_assert(want);
        lh_error err = {0};
        ck_assert_msg(lh_st_read_f32(want, (size_t)t->numel, f->ref, t->name, &err) == LH_OK,
                      "%s", err.msg);
        for (int64_t j = 0; j < t->numel; j++) want[j] = (float)(want[j] * factor);
        const float *got = g->data;
        double r = rel_l2(got, want, (size_t)t->numel);
        ck_assert_msg(r < TOL, "%s: relative L2 %g (x%g)", key, r, factor);
        for (int64_t j = 0; j < t->numel; j++) norm2 += (double)got[j] * got[j];
        worst = fmax(worst, r);
        n_compared++;
        free(want);
    }
    ck_assert_msg(n_keys > 0 && n_compared == n_keys, "compared %zu of %zu te.grad keys",
                  n_compared, n_keys);
    /* 6 LoRA-adapted linears x 2 tensors per encoder layer */
    const int64_t layers = lh_clip_get_config(f->m->clip)->num_hidden_layers;
    ck_assert_msg(n_keys == (size_t)(layers * 12), "%zu te.grad keys, want %lld", n_keys,
                  (long long)(layers * 12));
    ck_assert_msg(norm2 > 0, "every gradient is zero");
    return worst;
}

/* ---- Tests ---- */

START_TEST(test_lora_grads_match_autograd) {
    fixture f;
    fixture_open(&f);
    backward(&f, f.dev_out, f.dev_demb);

    float *out = download(f.dev_out, f.count);
    double loss = 0;
    for (size_t i = 0; i < f.count; i++) loss += (double)out[i] * f.dy[i];
    ck_assert_msg(fabs(loss - f.loss) <= LOSS_TOL * fabs(f.loss), "loss %.10g, want %.10g", loss,
                  f.loss);
    double worst = check_grads(&f, 1.0);
    fprintf(stderr, "text encoder LoRA gradients: max relative L2 %.3g\n", worst);

    /* the training forward is the inference forward */
    lh_error err = {0};
    float *dev_ref = g_be->ops->alloc(g_be, f.count * sizeof(float));
    ck_assert(dev_ref);
    ck_assert_msg(lh_clip_encode(f.m->clip, dev_ref, f.ids, f.b, f.n, 0, &err) == LH_OK, "%s",
                  err.msg);
    float *ref = download(dev_ref, f.count);
    ck_assert_msg(rel_l2(out, ref, f.count) < 1e-6, "backward's out vs lh_clip_encode: %g",
                  rel_l2(out, ref, f.count));

    /* the embedding gradient */
    float *demb = download(f.dev_demb, f.count);
    double d2 = 0;
    for (size_t i = 0; i < f.count; i++) {
        ck_assert_msg(isfinite(demb[i]), "d_emb[%zu] = %g", i, (double)demb[i]);
        d2 += (double)demb[i] * demb[i];
    }
    ck_assert_msg(d2 > 0, "d_emb is all zero");

    g_be->ops->free(g_be, dev_ref);
    free(ref);
    free(demb);
    free(out);
    fixture_close(&f);
}
END_TEST

START_TEST(test_grads_accumulate_until_zeroed) {
    fixture f;
    fixture_open(&f);
    backward(&f, NULL, NULL); /* out and d_emb not wanted */
    backward(&f, NULL, NULL);
    check_grads(&f, 2.0);
    lh_adapter_grads_zero(f.a);
    backward(&f, NULL, f.dev_demb);
    check_grads(&f, 1.0);
    fixture_close(&f);
}
END_TEST

START_TEST(test_bad_arguments) {
    fixture f;
    fixture_open(&f);
    lh_error err = {0};
    lh_clip *c = f.m->clip;
    ck_assert(lh_clip_encode_backward(c, NULL, NULL, NULL, f.ids, f.b, f.n, 0, &err) ==
              LH_ERR_INVALID);
    ck_assert(lh_clip_encode_backward(c, NULL, NULL, f.dev_dy, f.ids, f.b, f.n, 99, &err) ==
              LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "clip_skip") != NULL, "%s", err.msg);
    ck_assert(lh_clip_encode_backward(c, NULL, NULL, f.dev_dy, f.ids, f.b, 1000, 0, &err) ==
              LH_ERR_INVALID);
    int32_t bad = f.ids[3];
    f.ids[3] = -1;
    ck_assert(lh_clip_encode_backward(c, NULL, NULL, f.dev_dy, f.ids, f.b, f.n, 0, &err) ==
              LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "token id") != NULL, "%s", err.msg);
    f.ids[3] = bad;
    /* a failed call leaves nothing accumulated */
    double zero_check = 0;
    for (size_t i = 0; i < lh_st_count(f.ref); i++) {
        const lh_st_tensor *t = lh_st_get(f.ref, i);
        if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0) continue;
        const lh_tensor *g = lh_adapter_grad(f.a, t->name + strlen(PREFIX));
        ck_assert(g != NULL);
        for (int64_t j = 0; j < g->numel; j++) zero_check += fabs(((const float *)g->data)[j]);
    }
    ck_assert(zero_check == 0);
    fixture_close(&f);
}
END_TEST

static Suite *clip_backward_suite(void) {
    Suite *s = suite_create("clip_backward");
    TCase *tc = tcase_create("lora");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_lora_grads_match_autograd);
    tcase_add_test(tc, test_grads_accumulate_until_zeroed);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(clip_backward_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
