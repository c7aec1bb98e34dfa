/* Plugin registry suite: the good test plugins load and run through the
 * host services; each deliberately broken plugin is refused with a message
 * naming the path and the values at fault, and the host carries on. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "host_api.h"
#include "plugin_config.h"

static char g_dir[4096];

static const char *plugin_path(const char *name) {
    static char path[4096 + 64];
    snprintf(path, sizeof path, "%s/%s.so", g_dir, name);
    return path;
}

static lh_registry *new_registry(void) {
    lh_registry *r = NULL;
    ck_assert_int_eq(lh_registry_create(&r, NULL), LH_OK);
    return r;
}

/* Load `name`, expect `code` and every substring in `want` (NULL-terminated). */
static void expect_refused(const char *name, lh_status code, const char *const *want) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path(name), &err), code);
    ck_assert_msg(strstr(err.msg, plugin_path(name)) != NULL, "path missing in: %s", err.msg);
    for (const char *const *w = want; *w; w++)
        ck_assert_msg(strstr(err.msg, *w) != NULL, "'%s' missing in: %s", *w, err.msg);
    ck_assert_uint_eq(lh_registry_count(r), 0);
    /* the host carries on: a good plugin still loads into the same registry */
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    ck_assert_uint_eq(lh_registry_count(r), 1);
    lh_registry_destroy(r);
}

START_TEST(test_good_plugin_loads) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    ck_assert_uint_eq(lh_registry_count(r), 1);
    const char *path;
    const lh_plugin_info *info = lh_registry_get(r, 0, &path);
    ck_assert_str_eq(info->id, "test_linear");
    ck_assert_str_eq(info->version, "1.2.3");
    ck_assert_uint_eq(info->kind, LH_PLUGIN_SCHEDULER);
    ck_assert_str_eq(path, plugin_path("good_sched"));
    ck_assert_ptr_eq(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "test_linear"), info);
    ck_assert_ptr_eq(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "test linear"), info);
    ck_assert_ptr_null(lh_registry_find(r, LH_PLUGIN_SAFETY, "test_linear"));
    ck_assert_ptr_null(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "nope"));
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_abi_mismatch) {
    expect_refused("bad_abi", LH_ERR_ABI,
                   (const char *const[]){"ABI version 999", "host has 1", NULL});
}
END_TEST

START_TEST(test_size_too_small) {
    char need[32];
    snprintf(need, sizeof need, "at least %zu", offsetof(lh_scheduler_desc, reserved));
    expect_refused("bad_size", LH_ERR_ABI, (const char *const[]){"size 40", need, NULL});
}
END_TEST

START_TEST(test_missing_entry) {
    expect_refused("bad_no_entry", LH_ERR_PLUGIN,
                   (const char *const[]){"missing entry symbol lorahost_plugin_entry", NULL});
}
END_TEST

START_TEST(test_dlopen_failure) {
    expect_refused("bad_undefined", LH_ERR_PLUGIN,
                   (const char *const[]){"dlopen failed", "lh_symbol_that_does_not_exist", NULL});
}
END_TEST

START_TEST(test_bad_id_missing_fn_empty) {
    expect_refused("bad_id", LH_ERR_PLUGIN, (const char *const[]){"invalid id 'Bad-Id'", NULL});
    expect_refused("bad_missing_fn", LH_ERR_PLUGIN,
                   (const char *const[]){"scheduler 'broken' has no step function", NULL});
    expect_refused("bad_empty", LH_ERR_PLUGIN,
                   (const char *const[]){"returned no descriptors", NULL});
}
END_TEST

START_TEST(test_not_a_shared_object) {
    char dir[] = "/tmp/lh_plugins_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/fake.so", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("this is not an ELF file\n", f);
    fclose(f);
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, path, &err), LH_ERR_PLUGIN);
    ck_assert_ptr_nonnull(strstr(err.msg, "dlopen failed"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    lh_registry_destroy(r);
    unlink(path);
    rmdir(dir);
}
END_TEST

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

START_TEST(test_world_writable_refused) {
    char dir[] = "/tmp/lh_plugins_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/ww.so", dir);
    copy_file(plugin_path("good_sched"), path);
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(chmod(path, 0666), 0);
    ck_assert_int_eq(lh_registry_load_file(r, path, &err), LH_ERR_PLUGIN);
    ck_assert_ptr_nonnull(strstr(err.msg, "world-writable (mode 666)"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    /* a world-writable directory without the sticky bit is refused too */
    ck_assert_int_eq(chmod(path, 0644), 0);
    ck_assert_int_eq(chmod(dir, 0777), 0);
    ck_assert_int_eq(lh_registry_load_file(r, path, &err), LH_ERR_PLUGIN);
    ck_assert_ptr_nonnull(strstr(err.msg, "directory"));
    ck_assert_int_eq(chmod(dir, 0755), 0);
    ck_assert_int_eq(lh_registry_load_file(r, path, &err), LH_OK);
    lh_registry_destroy(r);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_duplicate_first_wins) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("dup_sched"), &err), LH_ERR_PLUGIN);
    ck_assert_ptr_nonnull(strstr(err.msg, "duplicate scheduler id 'test_linear'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "first one found wins"));
    char first[4200];
    snprintf(first, sizeof first, "already loaded from %s", plugin_path("good_sched"));
    ck_assert_ptr_nonnull(strstr(err.msg, first));
    const char *path;
    lh_registry_get(r, 0, &path);
    ck_assert_str_eq(path, plugin_path("good_sched"));
    ck_assert_uint_eq(lh_registry_count(r), 1);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_scan_directory_carries_on) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    const char *dirs[] = {g_dir, "/nonexistent/lorahost/plugins"};
    ck_assert_int_eq(lh_registry_scan(r, dirs, 2, 0, 0, &err), LH_OK);
    /* test_linear (from dup_sched.so, first in name order), test_words and
     * bad_create's "broken", which only fails at create */
    ck_assert_uint_eq(lh_registry_count(r), 3);
    ck_assert_ptr_nonnull(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "test_linear"));
    ck_assert_ptr_nonnull(lh_registry_find(r, LH_PLUGIN_SAFETY, "test_words"));
    /* 7 broken files, good_sched.so as a duplicate, and the missing dir */
    ck_assert_uint_eq(lh_registry_diagnostic_count(r), 9);
    int saw_dup = 0, saw_dir = 0;
    for (size_t i = 0; i < lh_registry_diagnostic_count(r); i++) {
        const char *d = lh_registry_diagnostic(r, i);
        saw_dup |= strstr(d, "good_sched.so: duplicate") != NULL;
        saw_dir |= strstr(d, "/nonexistent/lorahost/plugins: cannot open") != NULL;
    }
    ck_assert(saw_dup && saw_dir);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_env_path) {
    char env[4200];
    snprintf(env, sizeof env, "/nonexistent-a:%s", g_dir);
    setenv(LH_PLUGIN_PATH_ENV, env, 1);
    lh_registry *r = new_registry();
    ck_assert_int_eq(lh_registry_scan(r, NULL, 0, 1, 0, NULL), LH_OK);
    ck_assert_ptr_nonnull(lh_registry_find(r, LH_PLUGIN_SAFETY, "test_words"));
    lh_registry_destroy(r);
    unsetenv(LH_PLUGIN_PATH_ENV);
}
END_TEST

START_TEST(test_failing_create_unloads) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("bad_create"), &err), LH_OK);
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    lh_instance *inst = NULL;
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SCHEDULER, "broken", NULL, &err),
                     LH_ERR_NOT_FOUND);
    ck_assert_ptr_null(inst);
    ck_assert_ptr_nonnull(strstr(err.msg, "model file weights.bin is missing"));
    ck_assert_ptr_nonnull(strstr(err.msg, "plugin unloaded"));
    ck_assert_ptr_nonnull(strstr(err.msg, plugin_path("bad_create")));
    ck_assert_ptr_null(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "broken"));
    ck_assert_uint_eq(lh_registry_count(r), 1);
    /* the host carries on with the other plugin */
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SCHEDULER, "test_linear", NULL, &err),
                     LH_OK);
    lh_instance_destroy(inst);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_instance_config_keys) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    lh_config *cfg = lh_config_create("test_linear", &err);
    ck_assert_int_eq(lh_config_set_json(cfg,
                                        "{\"num_train_timesteps\": 100, \"bogus\": 1, "
                                        "\"_class_name\": \"X\", \"trained_betas\": null}",
                                        "scheduler_config.json", &err),
                     LH_OK);
    lh_instance *inst = NULL;
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SCHEDULER, "test_linear", cfg, &err),
                     LH_ERR_CONFIG);
    ck_assert_str_eq(err.msg, "scheduler_config.json: unknown key 'bogus' for plugin 'test_linear'");
    lh_config_destroy(cfg);

    cfg = lh_config_create("test_linear", &err);
    ck_assert_int_eq(lh_config_set(cfg, "scale", "abc", "--set", &err), LH_OK);
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SCHEDULER, "test_linear", cfg, &err),
                     LH_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "scale: expected a finite number, got 'abc'"));
    /* a config error is the user's, not the plugin's: it stays loaded */
    ck_assert_ptr_nonnull(lh_registry_find(r, LH_PLUGIN_SCHEDULER, "test_linear"));
    lh_config_destroy(cfg);
    lh_registry_destroy(r);
}
END_TEST

/* Drive the test scheduler through its descriptor with host tensors. */
START_TEST(test_scheduler_runs_through_host_services) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_sched"), &err), LH_OK);
    lh_config *cfg = lh_config_create("test_linear", &err);
    ck_assert_int_eq(lh_config_set(cfg, "num_train_timesteps", "101", "test", &err), LH_OK);
    ck_assert_int_eq(lh_config_set(cfg, "scale", "2", "test", &err), LH_OK);
    lh_instance *inst = NULL;
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SCHEDULER, "test linear", cfg, &err),
                     LH_OK);
    const lh_scheduler_desc *d = (const lh_scheduler_desc *)lh_instance_info(inst);
    void *s = lh_instance_state(inst);
    char msg[256];
    ck_assert_int_eq(d->set_timesteps(s, 0, msg, sizeof msg), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msg, "steps must be in 1..101, got 0"));
    ck_assert_int_eq(d->set_timesteps(s, 5, msg, sizeof msg), LH_OK);
    const double *ts;
    ck_assert_int_eq(d->timesteps(s, &ts), 5);
    ck_assert_double_eq_tol(ts[0], 100.0, 1e-12);
    ck_assert_double_eq_tol(ts[1], 75.0, 1e-12);
    ck_assert_double_eq_tol(ts[4], 0.0, 1e-12);
    ck_assert_double_eq_tol(d->init_noise_sigma(s), 2.0, 1e-12);

    const lh_host_api *h = lh_host_api_get();
    int64_t shape[4] = {1, 2, 3, 5};
    lh_tensor *x = h->tensor_new(LH_DTYPE_F32, 4, shape);
    lh_tensor *eps = h->tensor_new_like(x), *out = h->tensor_new_like(x);
    float xv[30], ev[30], ov[30];
    for (int i = 0; i < 30; i++) xv[i] = 0.1f * i - 1.0f, ev[i] = 0.05f * (i % 7) - 0.2f;
    ck_assert_int_eq(h->tensor_write(x, xv, 30), LH_OK);
    ck_assert_int_eq(h->tensor_write(eps, ev, 30), LH_OK);
    ck_assert_int_eq(d->scale_model_input(s, out, x, 0, msg, sizeof msg), LH_OK);
    ck_assert_int_eq(h->tensor_read(out, ov, 30), LH_OK);
    for (int i = 0; i < 30; i++) ck_assert_float_eq_tol(ov[i], xv[i] / 2.0f, 1e-7f);
    ck_assert_int_eq(d->step(s, out, eps, 1, x, NULL, msg, sizeof msg), LH_OK);
    ck_assert_int_eq(h->tensor_read(out, ov, 30), LH_OK);
    for (int i = 0; i < 30; i++) ck_assert_float_eq_tol(ov[i], xv[i] - 2.0f * ev[i] / 5.0f, 1e-6f);
    /* a host error reaches the plugin's message through last_error() */
    int64_t small[1] = {3};
    lh_tensor *bad = h->tensor_new(LH_DTYPE_F32, 1, small);
    ck_assert_int_eq(d->step(s, bad, eps, 1, x, NULL, msg, sizeof msg), LH_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(msg, "axpby: 3 elements in output, 30 in input"));
    h->tensor_free(bad);
    h->tensor_free(x);
    h->tensor_free(eps);
    h->tensor_free(out);
    lh_instance_destroy(inst);
    lh_config_destroy(cfg);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_safety_plugin) {
    lh_registry *r = new_registry();
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_load_file(r, plugin_path("good_safety"), &err), LH_OK);
    lh_config *cfg = lh_config_create("test_words", &err);
    ck_assert_int_eq(lh_config_set(cfg, "word", "badger", "test", &err), LH_OK);
    lh_instance *inst = NULL;
    ck_assert_int_eq(lh_instance_create(&inst, r, LH_PLUGIN_SAFETY, "test_words", cfg, &err),
                     LH_OK);
    const lh_safety_desc *d = (const lh_safety_desc *)lh_instance_info(inst);
    lh_safety_result res;
    char msg[256];
    ck_assert_int_eq(d->check_prompt(lh_instance_state(inst), "a honey badger", &res, msg,
                                     sizeof msg),
                     LH_OK);
    ck_assert_int_eq(res.flagged, 1);
    ck_assert_int_eq(res.action, LH_SAFETY_REJECT);
    ck_assert_str_eq(res.reason, "prompt contains 'badger'");
    ck_assert_int_eq(d->check_prompt(lh_instance_state(inst), "a cat", &res, msg, sizeof msg),
                     LH_OK);
    ck_assert_int_eq(res.flagged, 0);
    lh_instance_destroy(inst);
    lh_config_destroy(cfg);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_config_doubles) {
    lh_config *cfg = lh_config_create("p", NULL);
    double v[4];
    size_t n;
    char msg[256];
    lh_config_set(cfg, "a", "[0.1, 0.2,0.3]", "", NULL);
    lh_config_set(cfg, "b", "1,2", "", NULL);
    lh_config_set(cfg, "c", "[1, x]", "f.json", NULL);
    lh_config_set(cfg, "d", "[1,2,3,4,5]", "", NULL);
    lh_config_set(cfg, "e", "[]", "", NULL);
    ck_assert_int_eq(lh_config_doubles(cfg, "a", v, 4, &n, msg, sizeof msg), LH_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_double_eq_tol(v[2], 0.3, 1e-15);
    ck_assert_int_eq(lh_config_doubles(cfg, "b", v, 4, &n, msg, sizeof msg), LH_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(lh_config_doubles(cfg, "c", v, 4, &n, msg, sizeof msg), LH_ERR_CONFIG);
    ck_assert_str_eq(msg, "f.json: p: c: expected a list of finite numbers, got '[1, x]'");
    ck_assert_int_eq(lh_config_doubles(cfg, "d", v, 4, &n, msg, sizeof msg), LH_ERR_CONFIG);
    ck_assert_uint_eq(n, 5);
    ck_assert_int_eq(lh_config_doubles(cfg, "e", v, 4, &n, msg, sizeof msg), LH_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(lh_config_doubles(cfg, "missing", v, 4, &n, msg, sizeof msg), LH_OK);
    ck_assert_uint_eq(n, 0);
    lh_config_destroy(cfg);
}
END_TEST

int main(void) {
    const char *build = getenv("LH_BUILD_DIR");
    snprintf(g_dir, sizeof g_dir, "%s/tests/plugins", build ? build : "..");
    Suite *s = suite_create("plugins");
    TCase *tc = tcase_create("registry");
    tcase_add_test(tc, test_good_plugin_loads);
    tcase_add_test(tc, test_abi_mismatch);
    tcase_add_test(tc, test_size_too_small);
    tcase_add_test(tc, test_missing_entry);
    tcase_add_test(tc, test_dlopen_failure);
    tcase_add_test(tc, test_bad_id_missing_fn_empty);
    tcase_add_test(tc, test_not_a_shared_object);
    tcase_add_test(tc, test_world_writable_refused);
    tcase_add_test(tc, test_duplicate_first_wins);
    tcase_add_test(tc, test_scan_directory_carries_on);
    tcase_add_test(tc, test_env_path);
    tcase_add_test(tc, test_failing_create_unloads);
    tcase_add_test(tc, test_instance_config_keys);
    tcase_add_test(tc, test_scheduler_runs_through_host_services);
    tcase_add_test(tc, test_safety_plugin);
    tcase_add_test(tc, test_config_doubles);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
