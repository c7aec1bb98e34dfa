/* Scheduler suite: every scheduler plugin reproduces diffusers step for step.
 * For each fixture tests/fixtures/schedulers/<id>.safetensors (written by
 * tests/golden/schedulers.py) and each recorded case, the plugin runs a whole
 * trajectory on its own outputs (errors must not accumulate) and every
 * timestep, sigma, scaled input, step output and add_noise result is compared
 * with diffusers: relative L2 <= 1e-5 per step. LH_SCHED_FIXTURES=DIR reads
 * the fixtures from DIR instead; plugins come from LORAHOST_PLUGIN_PATH too. */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_api.h"
#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "plugin_config.h"
#include "rng.h"

#define TOL_STEP 1e-5
#define TOL_SCHEDULE 1e-6
#define MAX_FILES 64

static char g_files[MAX_FILES][4096];
static int g_n_files;
static lh_registry *g_reg;

/* ---- Helpers ---- */

static double rel_l2(const float *got, const float *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-6);
}

/* The fixed "model" of tests/golden/schedulers.py, in the same float32 ops. */
static void model(float *out, const float *x, const float *base, int64_t n, double t) {
    double tn = t / 1000.0;
    float a = (float)(0.6 * cos(M_PI / 2 * tn));
    float b = (float)(0.4 * sin(M_PI / 2 * tn) + 0.1);
    for (int64_t i = 0; i < n; i++) {
        float xa = x[i] * a, bb = base[i] * b;
        out[i] = xa + bb;
    }
}

static float *read_all(const lh_st_file *f, const char *name, int64_t *numel) {
    const lh_st_tensor *t = lh_st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *v);
    lh_error err = {0};
    ck_assert(v);
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, f, name, &err) == LH_OK, "%s", err.msg);
    if (numel) *numel = t->numel;
    return v;
}

static double *read_f64(const lh_st_file *f, const char *name, int64_t *n) {
    const lh_st_tensor *t = lh_st_find(f, name);
    if (!t) return NULL;
    double *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *v);
    ck_assert(v);
    ck_assert_int_eq(lh_convert(v, LH_DTYPE_F64, t->data, t->dtype, (size_t)t->numel), LH_OK);
    *n = t->numel;
    return v;
}

/* ---- One case ---- */

static void run_case(const lh_st_file *f, const char *plugin, json_t *c, const float *base,
                     const float *sample0, const float *add_in, int64_t numel) {
    const char *name = json_string_value(json_object_get(c, "name"));
    int steps = (int)json_integer_value(json_object_get(c, "steps"));
    char key[512];
    lh_error err = {0};
    char msg[1024] = "";

    lh_config *cfg = lh_config_create(plugin, &err);
    char *cfg_text = json_dumps(json_object_get(c, "config"), JSON_COMPACT);
    ck_assert_msg(lh_config_set_json(cfg, cfg_text, name, &err) == LH_OK, "%s: %s", name, err.msg);
    free(cfg_text);
    lh_instance *inst = NULL;
    ck_assert_msg(lh_instance_create(&inst, g_reg, LH_PLUGIN_SCHEDULER, plugin, cfg, &err) == LH_OK,
                  "%s: %s", name, err.msg);
    const lh_scheduler_desc *d = (const lh_scheduler_desc *)lh_instance_info(inst);
    void *s = lh_instance_state(inst);
    ck_assert_msg(d->set_timesteps(s, steps, msg, sizeof msg) == LH_OK, "%s: %s", name, msg);

    /* schedule */
    int64_t n_ts, n_sig = 0;
    snprintf(key, sizeof key, "%s.timesteps", name);
    double *want_ts = read_f64(f, key, &n_ts);
    const double *ts;
    int32_t got_n = d->timesteps(s, &ts);
    ck_assert_msg(got_n == n_ts, "%s: %d timesteps, diffusers has %lld", name, got_n,
                  (long long)n_ts);
    for (int64_t i = 0; i < n_ts; i++)
        ck_assert_msg(fabs(ts[i] - want_ts[i]) <= TOL_SCHEDULE * fmax(1.0, fabs(want_ts[i])),
                      "%s: timestep %lld is %.9g, diffusers %.9g", name, (long long)i, ts[i],
                      want_ts[i]);
    snprintf(key, sizeof key, "%s.sigmas", name);
    double *want_sig = read_f64(f, key, &n_sig);
    if (want_sig) {
        const double *sig = NULL;
        int32_t got_sig = d->sigmas ? d->sigmas(s, &sig) : 0;
        ck_assert_msg(got_sig == n_sig, "%s: %d sigmas, diffusers has %lld", name, got_sig,
                      (long long)n_sig);
        for (int64_t i = 0; i < n_sig; i++)
            ck_assert_msg(fabs(sig[i] - want_sig[i]) <= TOL_SCHEDULE * fmax(1.0, fabs(want_sig[i])),
                          "%s: sigma %lld is %.9g, diffusers %.9g", name, (long long)i, sig[i],
                          want_sig[i]);
    }
    double init_sigma = d->init_noise_sigma(s);
    double want_init = json_real_value(json_object_get(c, "init_noise_sigma"));
    ck_assert_msg(fabs(init_sigma - want_init) <= TOL_SCHEDULE * fmax(1.0, want_init),
                  "%s: init_noise_sigma %.9g, diffusers %.9g", name, init_sigma, want_init);

    /* trajectory, on our own outputs */
    int64_t n_noise = json_integer_value(json_object_get(c, "n_noise"));
    lh_rng *rng;
    if (n_noise > 0) {
        snprintf(key, sizeof key, "%s.noise", name);
        int64_t nn;
        float *noise = read_all(f, key, &nn);
        rng = lh_rng_create_replay(noise, nn, &err);
        free(noise);
    } else {
        rng = lh_rng_create(0, &err);
    }
    ck_assert(rng);
    snprintf(key, sizeof key, "%s.scaled", name);
    float *want_scaled = read_all(f, key, NULL);
    snprintf(key, sizeof key, "%s.prev", name);
    float *want_prev = read_all(f, key, NULL);

    const lh_host_api *h = lh_host_api_get();
    int64_t shape[1] = {numel};
    lh_tensor *x = h->tensor_new(LH_DTYPE_F32, 1, shape), *xin = h->tensor_new_like(x);
    lh_tensor *out = h->tensor_new_like(x), *prev = h->tensor_new_like(x);
    float *buf = malloc((size_t)numel * sizeof *buf), *obuf = malloc((size_t)numel * sizeof *obuf);
    ck_assert(x && xin && out && prev && buf && obuf);
    float fs = (float)init_sigma;
    for (int64_t i = 0; i < numel; i++) buf[i] = sample0[i] * fs;
    h->tensor_write(x, buf, numel);
    for (int32_t i = 0; i < got_n; i++) {
        ck_assert_msg(d->scale_model_input(s, xin, x, i, msg, sizeof msg) == LH_OK, "%s: %s", name,
                      msg);
        h->tensor_read(xin, buf, numel);
        double e = rel_l2(buf, want_scaled + i * numel, numel);
        ck_assert_msg(e <= TOL_STEP, "%s: scale_model_input at step %d: rel L2 %.3g", name, i, e);
        model(obuf, buf, base, numel, ts[i]);
        h->tensor_write(out, obuf, numel);
        ck_assert_msg(d->step(s, prev, out, i, x, rng, msg, sizeof msg) == LH_OK, "%s: step %d: %s",
                      name, i, msg);
        h->tensor_read(prev, buf, numel);
        e = rel_l2(buf, want_prev + i * numel, numel);
        ck_assert_msg(e <= TOL_STEP, "%s: step %d of %d (t = %g): rel L2 %.3g", name, i, got_n,
                      ts[i], e);
        h->tensor_copy(x, prev);
    }

    /* add_noise */
    snprintf(key, sizeof key, "%s.add_noise", name);
    float *want_add = read_all(f, key, NULL);
    json_t *add_ts = json_object_get(c, "add_noise_timesteps");
    lh_tensor *orig = h->tensor_new_like(x), *noise = h->tensor_new_like(x);
    h->tensor_write(orig, sample0, numel);
    h->tensor_write(noise, add_in, numel);
    for (size_t k = 0; k < json_array_size(add_ts); k++) {
        double t = json_number_value(json_array_get(add_ts, k));
        ck_assert_msg(d->add_noise(s, out, orig, noise, t, msg, sizeof msg) == LH_OK, "%s: %s",
                      name, msg);
        h->tensor_read(out, buf, numel);
        double e = rel_l2(buf, want_add + k * numel, numel);
        ck_assert_msg(e <= TOL_STEP, "%s: add_noise at t = %g: rel L2 %.3g", name, t, e);
    }

    h->tensor_free(orig);
    h->tensor_free(noise);
    h->tensor_free(x);
    h->tensor_free(xin);
    h->tensor_free(out);
    h->tensor_free(prev);
    free(buf);
    free(obuf);
    free(want_add);
    free(want_scaled);
    free(want_prev);
    free(want_ts);
    free(want_sig);
    lh_rng_destroy(rng);
    lh_instance_destroy(inst);
    lh_config_destroy(cfg);
}

START_TEST(test_fixture) {
    lh_st_file *f = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, g_files[_i], &err) == LH_OK, "%s", err.msg);
    const char *plugin = lh_st_meta_find(f, "plugin");
    ck_assert(plugin);
    json_error_t jerr;
    json_t *cases = json_loads(lh_st_meta_find(f, "cases"), 0, &jerr);
    ck_assert_msg(json_is_array(cases), "%s: cases metadata: %s", g_files[_i], jerr.text);
    int64_t numel;
    float *base = read_all(f, "base", &numel);
    float *sample0 = read_all(f, "sample0", NULL);
    float *add_in = read_all(f, "add_noise_input", NULL);
    for (size_t i = 0; i < json_array_size(cases); i++)
        run_case(f, plugin, json_array_get(cases, i), base, sample0, add_in, numel);
    printf("%s: %zu cases match diffusers\n", plugin, json_array_size(cases));
    free(base);
    free(sample0);
    free(add_in);
    json_decref(cases);
    lh_st_close(f);
}
END_TEST

static int cmp_path(const void *a, const void *b) { return strcmp(a, b); }

static void find_fixtures(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/schedulers",
             getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..");
    if (getenv("LH_SCHED_FIXTURES")) snprintf(dir, sizeof dir, "%s", getenv("LH_SCHED_FIXTURES"));
    /* LH_SCHED_ONLY=id1,id2 limits the run to those fixtures */
    const char *only = getenv("LH_SCHED_ONLY");
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) && g_n_files < MAX_FILES) {
        size_t len = strlen(de->d_name);
        char id[256];
        snprintf(id, sizeof id, ",%.*s,", (int)(len > 12 ? len - 12 : 0), de->d_name);
        char list[1024];
        snprintf(list, sizeof list, ",%s,", only ? only : "");
        if (only && !strstr(list, id)) continue;
        if (len > 12 && !strcmp(de->d_name + len - 12, ".safetensors"))
            snprintf(g_files[g_n_files++], sizeof g_files[0], "%s/%s", dir, de->d_name);
    }
    closedir(d);
    qsort(g_files, (size_t)g_n_files, sizeof g_files[0], cmp_path);
}

int main(void) {
    find_fixtures();
    lh_error err = {0};
    if (lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) != LH_OK) {
        fprintf(stderr, "registry: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("schedulers");
    TCase *tc = tcase_create("diffusers");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_fixture, 0, g_n_files);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    int ran = srunner_ntests_run(sr);
    srunner_free(sr);
    lh_registry_destroy(g_reg);
    if (ran == 0) {
        fprintf(stderr, "no scheduler fixtures found\n");
        return EXIT_FAILURE;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
