/* Trainer math suite: train/optim.c, train/lr_schedule.c and train/noise.c
 * against torch 2.15 / diffusers 0.42.1 (tests/fixtures/train_math/{adamw,lr_schedule,noise}.json,
 * written by tests/golden/train_math.py), plus argument errors.
 * Tolerances (see the defines below for what was measured): bit-identical
 * (0 ulp) for lr schedules (doubles), betas and alphas_cumprod, AdamW's
 * exp_avg/exp_avg_sq, the noise offset and the AdamW step count; within a
 * few ulp where torch takes a float32 sqrt (AdamW params, SNR, min-SNR
 * weights) or sums in another order (clip_grad_norm_); add_noise and
 * get_velocity within 3e-7 of |x0| + |noise| (they cancel).
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lr_schedule.h"
#include "noise.h"
#include "optim.h"
#include "../kernels/backend.h"

static json_t *load(const char *name) {
    const char *src = getenv("LH_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/train_math/%s", src ? src : "../..", name);
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    ck_assert_msg(doc, "%s: %s", path, je.text);
    return doc;
}

static double num(const json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_number(v), "fixture key %s missing", key);
    return json_number_value(v);
}

/* A float array from the fixture (malloc'd, length checked). */
static float *floats(const json_t *arr, size_t want) {
    ck_assert_msg(json_is_array(arr) && json_array_size(arr) == want,
                  "array of %zu expected, got %zu", want, json_array_size(arr));
    float *out = malloc((want ? want : 1) * sizeof *out);
    ck_assert(out);
    for (size_t i = 0; i < want; i++)
        out[i] = (float)json_number_value(json_array_get(arr, i));
    return out;
}

/* Distance in units in the last place between two finite floats. */
static int64_t ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return llabs((long long)ia - (long long)ib);
}

static void assert_close(const char *what, const float *got, const float *want, size_t n,
                         int64_t max_ulps) {
    int64_t worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t d = ulps(got[i], want[i]);
        if (d > worst) worst = d, at = i;
    }
    ck_assert_msg(worst <= max_ulps, "%s: [%zu] = %.9g, reference %.9g (%lld ulp, allowed %lld)",
                  what, at, got[at], want[at], (long long)worst, (long long)max_ulps);
}

/* |got - want| <= rel * scale[i] for every element (scale: the magnitudes of
 * the terms that were summed, so cancellation does not inflate the bound). */
static void assert_within(const char *what, const float *got, const float *want, const float *scale,
                          size_t n, double rel) {
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)got[i] - want[i]) / scale[i];
        if (r > worst) worst = r, at = i;
    }
    ck_assert_msg(worst <= rel,
                  "%s: [%zu] = %.9g, reference %.9g (error %.3g of the terms' size, "
                  "allowed %.3g)",
                  what, at, got[at], want[at], worst, rel);
}

/* ---- AdamW and clipping ---- */

/* torch's CPU float32 sqrt (MKL VML in the reference build) is not correctly
 * rounded: about 1 value in 5 is 1 ulp away from IEEE sqrtf, which we use.
 * AdamW's denominator takes that sqrt, so parameters may differ in their
 * last bits; exp_avg and exp_avg_sq involve no sqrt and match exactly. */
#define ADAMW_PARAM_ULPS 4  /* measured: 1 */
#define SQRT_TERMS_REL 3e-7 /* of |x0| + |noise|; measured 1.2e-7 */
#define SNR_ULPS 4          /* measured: snr 2, weights 1 */
/* clip_grad_norm_: we sum squares in double, torch in float32 lanes. */
#define CLIP_ULPS 4 /* measured: norm 1, clipped grads 2 */

START_TEST(test_adamw_defaults) {
    json_t *doc = load("adamw.json");
    json_t *d = json_object_get(doc, "defaults");
    lh_adamw_opts o;
    lh_adamw_opts_default(&o);
    ck_assert(o.lr == num(d, "lr") && o.eps == num(d, "eps") &&
              o.weight_decay == num(d, "weight_decay"));
    json_t *betas = json_object_get(d, "betas");
    ck_assert(o.beta1 == json_number_value(json_array_get(betas, 0)));
    ck_assert(o.beta2 == json_number_value(json_array_get(betas, 1)));
    json_decref(doc);
}
END_TEST

/* One AdamW update: lh_adamw_step (_i 0) or the cpu backend's adamw op
 * with lh_adamw_coef_make's coefficients (_i 1, what the trainer runs). */
static lh_status adamw_by(int how, float *p, float *m, float *v, int64_t *step, const float *g,
                          int64_t n, double lr, const lh_adamw_opts *o, lh_error *err) {
    if (how == 0) return lh_adamw_step(p, m, v, step, g, n, lr, o, err);
    static lh_backend *be;
    char msg[256];
    if (!be) ck_assert_msg(lh_backend_cpu_create(&be, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    lh_adamw_coef c;
    lh_status st = lh_adamw_coef_make(&c, step, lr, o, err);
    return st == LH_OK ? be->ops->adamw(be, p, m, v, g, n, &c, NULL) : st;
}

START_TEST(test_adamw_matches_torch) {
    json_t *doc = load("adamw.json");
    json_t *cases = json_object_get(doc, "cases");
    ck_assert(json_array_size(cases) > 0);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *k = json_array_get(cases, c);
        size_t n = (size_t)num(k, "n"), steps = (size_t)num(k, "steps");
        lh_adamw_opts o;
        lh_adamw_opts_default(&o);
        o.weight_decay = num(k, "weight_decay");
        o.lr = num(k, "base_lr");
        lh_lr_schedule sched;
        lh_error err = {0};
        ck_assert_msg(lh_lr_schedule_init(&sched, json_string_value(json_object_get(k, "schedule")),
                                          o.lr, 3, (int64_t)steps, &err) == LH_OK,
                      "%s", err.msg);
        float *p = floats(json_object_get(k, "param0"), n);
        float *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
        int64_t step = 0;
        for (size_t s = 0; s < steps; s++) {
            double lr = lh_lr_schedule_lr(&sched, (int64_t)s);
            double want_lr = json_number_value(json_array_get(json_object_get(k, "lr"), s));
            ck_assert_msg(lr == want_lr, "case %zu step %zu: lr %.17g, torch %.17g", c, s, lr,
                          want_lr);
            float *g = floats(json_array_get(json_object_get(k, "grads"), s), n);
            ck_assert_msg(adamw_by(_i, p, m, v, &step, g, (int64_t)n, lr, &o, &err) == LH_OK,
                          "%s", err.msg);
            float *want = floats(json_array_get(json_object_get(k, "param_after"), s), n);
            char what[96];
            snprintf(what, sizeof what, "adamw (%s) case %zu param after step %zu",
                     _i ? "backend op" : "lh_adamw_step", c, s + 1);
            assert_close(what, p, want, n, ADAMW_PARAM_ULPS);
            free(g);
            free(want);
        }
        ck_assert(step == (int64_t)num(k, "step"));
        float *wm = floats(json_object_get(k, "exp_avg"), n);
        float *wv = floats(json_object_get(k, "exp_avg_sq"), n);
        assert_close("exp_avg", m, wm, n, 0);
        assert_close("exp_avg_sq", v, wv, n, 0);
        free(wm), free(wv), free(p), free(m), free(v);
    }
    json_decref(doc);
}
END_TEST

START_TEST(test_clip_grad_norm_matches_torch) {
    json_t *doc = load("adamw.json");
    json_t *clips = json_object_get(doc, "clip");
    ck_assert(json_array_size(clips) > 0);
    for (size_t c = 0; c < json_array_size(clips); c++) {
        json_t *k = json_array_get(clips, c);
        json_t *sizes_j = json_object_get(k, "sizes");
        size_t count = json_array_size(sizes_j);
        float *grads[8];
        int64_t sizes[8];
        ck_assert(count <= 8);
        for (size_t i = 0; i < count; i++) {
            sizes[i] = json_integer_value(json_array_get(sizes_j, i));
            grads[i] = floats(json_array_get(json_object_get(k, "grads"), i), (size_t)sizes[i]);
        }
        float total = -1.0f;
        lh_error err = {0};
        ck_assert_msg(lh_clip_grad_norm(&total, grads, sizes, (int64_t)count, num(k, "max_norm"),
                                        &err) == LH_OK,
                      "%s", err.msg);
        float want_total = (float)num(k, "total_norm");
        ck_assert_msg(ulps(total, want_total) <= CLIP_ULPS,
                      "clip case %zu: total norm %.9g, torch %.9g", c, total, want_total);
        for (size_t i = 0; i < count; i++) {
            float *want =
                floats(json_array_get(json_object_get(k, "clipped"), i), (size_t)sizes[i]);
            assert_close("clipped grad", grads[i], want, (size_t)sizes[i], CLIP_ULPS);
            free(want);
            free(grads[i]);
        }
    }
    json_decref(doc);
}
END_TEST

/* The backend ops the trainer updates with (kernels/cpu, the reference of
 * the cuda ones; adamw is test_adamw_matches_torch's second run):
 * sum_squares + step_check + scale_by as the trainer clips, against torch's
 * clip_grad_norm_, and step_check's overflow verdict, which makes adamw
 * skip; mse_backward's gradient against finite differences of the loss it
 * sums. */
START_TEST(test_backend_update_ops) {
    lh_backend *be = NULL;
    char msg[256];
    ck_assert_msg(lh_backend_cpu_create(&be, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    json_t *doc = load("adamw.json");
    json_t *clips = json_object_get(doc, "clip");
    int clipped = 0;
    for (size_t c = 0; c < json_array_size(clips); c++) {
        json_t *k = json_array_get(clips, c);
        json_t *sizes_j = json_object_get(k, "sizes");
        size_t count = json_array_size(sizes_j);
        float *grads[8], coef = 0.0f;
        double sq[8];
        int64_t found = -1;
        ck_assert(count <= 8);
        for (size_t i = 0; i < count; i++) {
            int64_t sz = json_integer_value(json_array_get(sizes_j, i));
            grads[i] = floats(json_array_get(json_object_get(k, "grads"), i), (size_t)sz);
            ck_assert_int_eq(be->ops->sum_squares(be, &sq[i], grads[i], sz), LH_OK);
        }
        ck_assert_int_eq(be->ops->step_check(be, &coef, &found, sq, (int64_t)count, NULL, 0,
                                             (float)num(k, "max_norm")),
                         LH_OK);
        ck_assert_int_eq(found, 0);
        clipped += coef < 1.0f;
        for (size_t i = 0; i < count; i++) {
            int64_t sz = json_integer_value(json_array_get(sizes_j, i));
            ck_assert_int_eq(be->ops->scale_by(be, grads[i], sz, &coef), LH_OK);
            float *want = floats(json_array_get(json_object_get(k, "clipped"), i), (size_t)sz);
            assert_close("clipped grad (ops)", grads[i], want, (size_t)sz, CLIP_ULPS);
            free(want);
            free(grads[i]);
        }
    }
    ck_assert_msg(clipped > 0, "no clip case of adamw.json clips");
    /* a non-finite sum, or a count from the U-Net's checks: found, coef 1,
     * and adamw then changes nothing */
    double sq3[3] = {1.0, INFINITY, 4.0};
    int64_t counts[2] = {0, 0}, found = -1;
    float kclip = 0.0f;
    for (int k = 0; k < 3; k++) {
        sq3[1] = k == 0 ? INFINITY : k == 1 ? NAN : 9.0;
        counts[1] = k == 2 ? 5 : 0;
        ck_assert_int_eq(be->ops->step_check(be, &kclip, &found, sq3, 3, counts, 2, 0.5f), LH_OK);
        ck_assert_int_eq(found, 1);
        ck_assert(kclip == 1.0f);
    }
    counts[1] = 0;
    ck_assert_int_eq(be->ops->step_check(be, &kclip, &found, sq3, 3, counts, 2, 0.5f), LH_OK);
    ck_assert_int_eq(found, 0); /* sqrt(1 + 9 + 4): clipped to 0.5 */
    ck_assert_msg(fabsf(kclip - 0.5f / (float)sqrt(14.0)) <= 1e-7f, "coef %.9g", (double)kclip);
    float p[4] = {1, 2, 3, 4}, m1[4] = {0}, m2[4] = {0}, g[4] = {1, 1, 1, 1};
    lh_adamw_opts ao;
    lh_adamw_opts_default(&ao);
    lh_adamw_coef ac;
    int64_t step = 0, skip = 1;
    ck_assert_int_eq(lh_adamw_coef_make(&ac, &step, 1e-3, &ao, NULL), LH_OK);
    ck_assert_int_eq(be->ops->adamw(be, p, m1, m2, g, 4, &ac, &skip), LH_OK);
    ck_assert(p[0] == 1 && p[3] == 4 && m1[0] == 0 && m2[0] == 0);
    skip = 0;
    ck_assert_int_eq(be->ops->adamw(be, p, m1, m2, g, 4, &ac, &skip), LH_OK);
    ck_assert(p[0] < 1 && m1[0] > 0 && m2[0] > 0);
    json_decref(doc);
    /* L = sum_r coef_r / 2 * sq_r, so dL/dpred = coef_r * (pred - target) */
    enum { R = 3, C = 5 };
    float pred[R * C], target[R * C], dpred[R * C];
    double coef[R] = {0.5, 2.0, 0.125}, sqv[R];
    for (int i = 0; i < R * C; i++) {
        pred[i] = (float)sin(1.3 * i + 0.2);
        target[i] = (float)cos(0.7 * i);
    }
    ck_assert_int_eq(be->ops->mse_backward(be, dpred, sqv, pred, target, coef, R, C), LH_OK);
    double worst = 0.0;
    for (int i = 0; i < R * C; i += 4) {
        double l[2];
        float keep = pred[i], tmp[R * C];
        for (int s = 0; s < 2; s++) {
            pred[i] = keep + (s ? 1e-2f : -1e-2f);
            ck_assert_int_eq(be->ops->mse_backward(be, tmp, sqv, pred, target, coef, R, C), LH_OK);
            l[s] = 0.0;
            for (int r = 0; r < R; r++) l[s] += coef[r] / 2 * sqv[r];
        }
        double h = (double)(keep + 1e-2f) - (double)(keep - 1e-2f);
        pred[i] = keep;
        double fd = (l[1] - l[0]) / h;
        worst = fmax(worst, fabs(fd - dpred[i]) / fmax(fabs(fd), 1e-3));
    }
    printf("mse_backward against finite differences: worst relative error %.2e\n", worst);
    ck_assert_msg(worst < 1e-6, "mse_backward: finite differences differ by %g", worst);
    ck_assert_int_eq(be->ops->mse_backward(be, dpred, NULL, pred, target, coef, R, C),
                     LH_ERR_INVALID);
    lh_backend_destroy(be);
}
END_TEST

START_TEST(test_optim_errors) {
    lh_adamw_opts o;
    lh_adamw_opts_default(&o);
    float p[2] = {0}, m[2] = {0}, v[2] = {0}, g[2] = {1, 2};
    int64_t step = 0;
    lh_error err = {0};
    ck_assert_int_eq(lh_adamw_step(p, m, v, &step, g, -1, 1e-3, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "n = -1"), "%s", err.msg);
    ck_assert_int_eq(lh_adamw_step(p, m, NULL, &step, g, 2, 1e-3, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "exp_avg_sq"), "%s", err.msg);
    ck_assert_int_eq(lh_adamw_step(p, m, v, &step, g, 2, -1.0, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "learning rate"), "%s", err.msg);
    o.beta2 = 1.0;
    ck_assert_int_eq(lh_adamw_step(p, m, v, &step, g, 2, 1e-3, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "betas"), "%s", err.msg);
    ck_assert(step == 0); /* a refused step changes nothing */
    ck_assert_int_eq(lh_adamw_step(p, m, v, &step, g, 2, 1e-3, NULL, &err), LH_ERR_INVALID);
    lh_adamw_opts_default(&o);
    ck_assert_int_eq(lh_adamw_step(NULL, NULL, NULL, &step, NULL, 0, 1e-3, &o, &err), LH_OK);
    float *gs[1] = {g};
    int64_t sizes[1] = {-3};
    ck_assert_int_eq(lh_clip_grad_norm(NULL, gs, sizes, 1, 1.0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "sizes[0]"), "%s", err.msg);
    ck_assert_int_eq(lh_clip_grad_norm(NULL, NULL, NULL, 1, 1.0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_clip_grad_norm(NULL, gs, sizes, -1, 1.0, &err), LH_ERR_INVALID);
    sizes[0] = 2;
    ck_assert_int_eq(lh_clip_grad_norm(NULL, gs, sizes, 1, -1.0, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "max_norm"), "%s", err.msg);
}
END_TEST

/* ---- LR schedules ---- */

START_TEST(test_lr_schedules_match_diffusers) {
    json_t *doc = load("lr_schedule.json");
    json_t *rows = json_object_get(doc, "schedules");
    ck_assert(json_array_size(rows) >= 12);
    for (size_t r = 0; r < json_array_size(rows); r++) {
        json_t *k = json_array_get(rows, r);
        const char *name = json_string_value(json_object_get(k, "name"));
        lh_lr_schedule s;
        lh_error err = {0};
        ck_assert_msg(lh_lr_schedule_init(&s, name, num(k, "base_lr"), (int64_t)num(k, "warmup"),
                                          (int64_t)num(k, "total"), &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_str_eq(lh_lr_kind_name(s.kind), name);
        if (s.kind == LH_LR_COSINE_WITH_RESTARTS) s.num_cycles = num(k, "num_cycles");
        if (s.kind == LH_LR_POLYNOMIAL) s.power = num(k, "power"), s.lr_end = num(k, "lr_end");
        ck_assert_int_eq(lh_lr_schedule_check(&s, &err), LH_OK);
        json_t *lrs = json_object_get(k, "lr");
        ck_assert(json_array_size(lrs) > 0);
        for (size_t i = 0; i < json_array_size(lrs); i++) {
            double want = json_number_value(json_array_get(lrs, i)), got = lh_lr_schedule_lr(&s, i);
            ck_assert_msg(got == want, "%s (warmup %lld): step %zu lr %.17g, diffusers %.17g", name,
                          (long long)s.warmup_steps, i, got, want);
        }
    }
    json_decref(doc);
}
END_TEST

START_TEST(test_lr_schedule_errors) {
    lh_lr_schedule s;
    lh_error err = {0};
    ck_assert_int_eq(lh_lr_schedule_init(&s, "cosine_annealing", 1e-4, 10, 100, &err),
                     LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "unknown name 'cosine_annealing'") &&
                      strstr(err.msg, "polynomial"),
                  "%s", err.msg);
    ck_assert_int_eq(lh_lr_schedule_init(&s, NULL, 1e-4, 10, 100, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_lr_schedule_init(NULL, "linear", 1e-4, 10, 100, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_lr_schedule_init(&s, "linear", 1e-4, -1, 100, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "warmup -1"), "%s", err.msg);
    ck_assert_int_eq(lh_lr_schedule_init(&s, "polynomial", 1e-8, 10, 100, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "lr_end"), "%s", err.msg);
    ck_assert_int_eq(lh_lr_schedule_init(&s, "polynomial", 1e-4, 10, 10, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_lr_schedule_init(&s, "linear", NAN, 10, 100, &err), LH_ERR_INVALID);
    ck_assert(lh_lr_kind_name(LH_LR_COUNT) == NULL);
}
END_TEST

/* ---- Noise ---- */

START_TEST(test_alphas_cumprod_match_ddpm) {
    json_t *doc = load("noise.json");
    json_t *rows = json_object_get(doc, "schedules");
    ck_assert(json_array_size(rows) >= 4);
    for (size_t r = 0; r < json_array_size(rows); r++) {
        json_t *k = json_array_get(rows, r);
        lh_noise_config cfg;
        lh_noise_config_default(&cfg);
        lh_error err = {0};
        ck_assert_int_eq(
            lh_beta_schedule_parse(&cfg.beta_schedule,
                                   json_string_value(json_object_get(k, "beta_schedule")), &err),
            LH_OK);
        cfg.beta_start = num(k, "beta_start");
        cfg.beta_end = num(k, "beta_end");
        cfg.num_train_timesteps = (int64_t)num(k, "num_train_timesteps");
        size_t n = (size_t)cfg.num_train_timesteps;
        float *betas = malloc(n * sizeof *betas), *ac = malloc(n * sizeof *ac);
        ck_assert_msg(lh_noise_alphas_cumprod(betas, ac, &cfg, &err) == LH_OK, "%s", err.msg);
        float *wb = floats(json_object_get(k, "betas"), n),
              *wac = floats(json_object_get(k, "alphas_cumprod"), n);
        char what[96];
        snprintf(what, sizeof what, "%s betas",
                 json_string_value(json_object_get(k, "beta_schedule")));
        assert_close(what, betas, wb, n, 0);
        snprintf(what, sizeof what, "%s alphas_cumprod",
                 json_string_value(json_object_get(k, "beta_schedule")));
        assert_close(what, ac, wac, n, 0);
        free(betas), free(ac), free(wb), free(wac);
    }
    json_decref(doc);
}
END_TEST

START_TEST(test_forward_process_matches_diffusers) {
    json_t *doc = load("noise.json");
    json_t *shape = json_object_get(doc, "shape");
    int64_t B = json_integer_value(json_array_get(shape, 0)),
            C = json_integer_value(json_array_get(shape, 1));
    int64_t HW =
        json_integer_value(json_array_get(shape, 2)) * json_integer_value(json_array_get(shape, 3));
    size_t total = (size_t)(B * C * HW), N = (size_t)(C * HW);
    lh_noise_config cfg = {1000, 0.00085, 0.012, LH_BETA_SCALED_LINEAR, LH_NOISE_PRED_EPSILON};
    float betas[1000], ac[1000];
    lh_error err = {0};
    ck_assert_int_eq(lh_noise_alphas_cumprod(betas, ac, &cfg, &err), LH_OK);
    float *x0 = floats(json_object_get(doc, "x0"), total),
          *noise = floats(json_object_get(doc, "noise"), total);
    float *tf = floats(json_object_get(doc, "timesteps"), (size_t)B);
    int64_t t[16];
    for (int64_t i = 0; i < B; i++)
        t[i] = (int64_t)tf[i];
    float *out = malloc(total * sizeof *out);

    ck_assert_int_eq(lh_noise_add(out, x0, noise, t, ac, B, (int64_t)N, 1000, &err), LH_OK);
    float *want = floats(json_object_get(doc, "noisy"), total);
    float *scale = malloc(total * sizeof *scale);
    for (size_t i = 0; i < total; i++)
        scale[i] = fabsf(x0[i]) + fabsf(noise[i]);
    assert_within("add_noise", out, want, scale, total, SQRT_TERMS_REL);
    free(want);
    ck_assert_int_eq(lh_noise_velocity(out, x0, noise, t, ac, B, (int64_t)N, 1000, &err), LH_OK);
    want = floats(json_object_get(doc, "velocity"), total);
    assert_within("get_velocity", out, want, scale, total, SQRT_TERMS_REL);
    free(scale);
    free(want);

    float snr[16], w[16];
    ck_assert_int_eq(lh_noise_snr(snr, t, ac, B, 1000, &err), LH_OK);
    want = floats(json_object_get(doc, "snr"), (size_t)B);
    assert_close("compute_snr", snr, want, (size_t)B, SNR_ULPS);
    free(want);
    double gamma = num(doc, "snr_gamma");
    ck_assert_int_eq(lh_noise_min_snr_weights(w, snr, B, gamma, LH_NOISE_PRED_EPSILON, &err),
                     LH_OK);
    want = floats(json_object_get(doc, "weights_epsilon"), (size_t)B);
    assert_close("min-SNR weights (epsilon)", w, want, (size_t)B, SNR_ULPS);
    free(want);
    ck_assert_int_eq(lh_noise_min_snr_weights(w, snr, B, gamma, LH_NOISE_PRED_V_PREDICTION, &err),
                     LH_OK);
    want = floats(json_object_get(doc, "weights_v_prediction"), (size_t)B);
    assert_close("min-SNR weights (v_prediction)", w, want, (size_t)B, SNR_ULPS);
    free(want);

    float *randn = floats(json_object_get(doc, "offset_randn"), (size_t)(B * C));
    memcpy(out, noise, total * sizeof *out);
    ck_assert_int_eq(lh_noise_apply_offset(out, randn, num(doc, "noise_offset"), B, C, HW, &err),
                     LH_OK);
    want = floats(json_object_get(doc, "noise_with_offset"), total);
    assert_close("noise offset", out, want, total, 0);
    free(want), free(randn), free(out), free(x0), free(noise), free(tf);
    json_decref(doc);
}
END_TEST

START_TEST(test_noise_errors) {
    lh_noise_config cfg;
    lh_noise_config_default(&cfg);
    lh_error err = {0};
    lh_beta_schedule bs;
    ck_assert_int_eq(lh_beta_schedule_parse(&bs, "cosine", &err), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "'cosine'") && strstr(err.msg, "squaredcos_cap_v2"), "%s",
                  err.msg);
    lh_noise_pred pred;
    ck_assert_int_eq(lh_noise_pred_parse(&pred, "v-prediction", &err), LH_ERR_CONFIG);
    ck_assert_int_eq(lh_noise_pred_parse(&pred, "v_prediction", &err), LH_OK);
    ck_assert(pred == LH_NOISE_PRED_V_PREDICTION);
    float betas[4], ac[4];
    cfg.num_train_timesteps = 4;
    cfg.beta_end = 0.00001;
    ck_assert_int_eq(lh_noise_alphas_cumprod(betas, ac, &cfg, &err), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "beta_start"), "%s", err.msg);
    cfg.beta_end = 0.02;
    cfg.num_train_timesteps = 1;
    ck_assert_int_eq(lh_noise_alphas_cumprod(betas, ac, &cfg, &err), LH_ERR_CONFIG);
    cfg.num_train_timesteps = 4;
    ck_assert_int_eq(lh_noise_alphas_cumprod(NULL, ac, &cfg, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_noise_alphas_cumprod(betas, ac, &cfg, &err), LH_OK);
    float x[2] = {1, 2}, e[2] = {3, 4}, y[2];
    int64_t t[1] = {4};
    ck_assert_int_eq(lh_noise_add(y, x, e, t, ac, 1, 2, 4, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "timesteps[0] = 4 outside 0..3"), "%s", err.msg);
    t[0] = 3;
    ck_assert_int_eq(lh_noise_add(y, x, e, t, ac, 1, -2, 4, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_noise_velocity(y, NULL, e, t, ac, 1, 2, 4, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_noise_snr(y, t, NULL, 1, 4, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "alphas_cumprod"), "%s", err.msg);
    ck_assert_int_eq(lh_noise_min_snr_weights(y, x, -1, 5.0, LH_NOISE_PRED_EPSILON, &err),
                     LH_ERR_INVALID);
    ck_assert_int_eq(lh_noise_min_snr_weights(y, x, 1, 0.0, LH_NOISE_PRED_EPSILON, &err),
                     LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "snr_gamma"), "%s", err.msg);
    ck_assert_int_eq(lh_noise_apply_offset(y, NULL, 0.1, 1, 1, 2, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_noise_apply_offset(y, x, 0.1, 1, -1, 2, &err), LH_ERR_INVALID);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train_math");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, test_adamw_defaults);
    tcase_add_loop_test(tc, test_adamw_matches_torch, 0, 2);
    tcase_add_test(tc, test_clip_grad_norm_matches_torch);
    tcase_add_test(tc, test_optim_errors);
    tcase_add_test(tc, test_backend_update_ops);
    suite_add_tcase(s, tc);
    tc = tcase_create("lr_schedule");
    tcase_add_test(tc, test_lr_schedules_match_diffusers);
    tcase_add_test(tc, test_lr_schedule_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("noise");
    tcase_add_test(tc, test_alphas_cumprod_match_ddpm);
    tcase_add_test(tc, test_forward_process_matches_diffusers);
    tcase_add_test(tc, test_noise_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
