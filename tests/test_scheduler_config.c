/* Scheduler configuration suite: name resolution (plugin ids, aliases,
 * diffusers class names, A1111 names), layering of scheduler_config.json,
 * [scheduler] settings and overrides, and the errors every scheduler plugin
 * gives for bad configuration. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lorahost/lorahost.h"

static lh_registry *g_reg;

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static lh_status open_sched(lh_scheduler **s, const char *name, const char *json,
                            const lh_settings *settings, const char *const *ov, size_t n_ov,
                            lh_error *err) {
    lh_scheduler_opts o = {name, json, settings, ov, n_ov, NULL, NULL};
    return lh_scheduler_open(s, g_reg, &o, err);
}

#define ASSERT_MSG(err, needle)                                                                \
    ck_assert_msg(strstr((err).msg, (needle)) != NULL, "message '%s' lacks '%s'", (err).msg,    \
                  (needle))

START_TEST(test_layers) {
    char path[] = "/tmp/lh_sched_cfg_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    /* SD 1.5's scheduler_config.json (a PNDM config) */
    write_file(path, "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\", "
                     "\"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", "
                     "\"beta_start\": 0.00085, \"num_train_timesteps\": 1000, "
                     "\"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
                     "\"steps_offset\": 1, \"trained_betas\": null, \"clip_sample\": false}");
    lh_error err = {0};
    lh_scheduler *s = NULL;
    /* DDIM from a PNDM config: PNDM-only keys are ignored as from_config does */
    ck_assert_msg(open_sched(&s, "DDIM", path, NULL, NULL, 0, &err) == LH_OK, "%s", err.msg);
    ck_assert_str_eq(lh_scheduler_id(s), "ddim");
    ck_assert_int_eq(lh_scheduler_set_timesteps(s, 4, &err), LH_OK);
    const double *ts;
    ck_assert_int_eq(lh_scheduler_timesteps(s, &ts), 4);
    ck_assert_double_eq(ts[0], 751.0); /* leading spacing + steps_offset 1 */
    ck_assert_double_eq(ts[3], 1.0);
    lh_scheduler_close(s);

    /* [scheduler] settings override the JSON; --set overrides both */
    lh_settings *settings = NULL;
    ck_assert_int_eq(lh_settings_create(&settings, &err), LH_OK);
    ck_assert_int_eq(lh_settings_set_override(settings, "scheduler.steps_offset=0", &err), LH_OK);
    ck_assert_int_eq(lh_settings_set_override(settings, "scheduler.timestep_spacing=trailing", &err),
                     LH_OK);
    ck_assert_int_eq(open_sched(&s, "ddim", path, settings, NULL, 0, &err), LH_OK);
    ck_assert_int_eq(lh_scheduler_set_timesteps(s, 4, &err), LH_OK);
    lh_scheduler_timesteps(s, &ts);
    ck_assert_double_eq(ts[0], 999.0);
    lh_scheduler_close(s);
    const char *ov[] = {"timestep_spacing=linspace"};
    ck_assert_int_eq(open_sched(&s, "ddim", path, settings, ov, 1, &err), LH_OK);
    ck_assert_int_eq(lh_scheduler_set_timesteps(s, 4, &err), LH_OK);
    lh_scheduler_timesteps(s, &ts);
    ck_assert_double_eq(ts[1], 666.0);
    lh_scheduler_close(s);

    /* a key in [scheduler] the plugin does not know is an error, with a hint */
    ck_assert_int_eq(lh_settings_set_override(settings, "scheduler.etaa=0.5", &err), LH_OK);
    ck_assert_int_eq(open_sched(&s, "ddim", path, settings, NULL, 0, &err), LH_ERR_CONFIG);
    ASSERT_MSG(err, "unknown key 'etaa' for plugin 'ddim'; did you mean 'eta'?");
    ASSERT_MSG(err, "--set");
    lh_settings_destroy(settings);

    /* no name: the model's own class */
    ck_assert_int_eq(open_sched(&s, NULL, path, NULL, NULL, 0, &err),
                     lh_registry_find(g_reg, LH_PLUGIN_SCHEDULER, "pndm") ? LH_OK : LH_ERR_NOT_FOUND);
    lh_scheduler_close(s);
    s = NULL;
    write_file(path, "{\"_class_name\": \"FancyNewScheduler\"}");
    ck_assert_int_eq(open_sched(&s, NULL, path, NULL, NULL, 0, &err), LH_ERR_CONFIG);
    ASSERT_MSG(err, "no scheduler plugin for the model's scheduler class 'FancyNewScheduler'");
    write_file(path, "{\"beta_start\": 0.1,");
    ck_assert_int_eq(open_sched(&s, "ddim", path, NULL, NULL, 0, &err), LH_ERR_FORMAT);
    ASSERT_MSG(err, path);
    unlink(path);
    ck_assert_int_eq(open_sched(&s, "ddim", path, NULL, NULL, 0, &err), LH_ERR_IO);
    ASSERT_MSG(err, path);
}
END_TEST

START_TEST(test_names) {
    lh_error err = {0};
    lh_scheduler *s = NULL;
    ck_assert_int_eq(open_sched(&s, "Unknown Sampler", NULL, NULL, NULL, 0, &err),
                     LH_ERR_NOT_FOUND);
    ASSERT_MSG(err, "unknown scheduler 'Unknown Sampler'");
    ck_assert_int_eq(open_sched(&s, "DDIMScheduler", NULL, NULL, NULL, 0, &err), LH_OK);
    ck_assert_str_eq(lh_scheduler_id(s), "ddim");
    lh_scheduler_close(s);
    /* every A1111 name maps to a plugin id the sampler table knows by class */
    const lh_sampler_name *sn;
    for (size_t i = 0; (sn = lh_sampler_name_at(i)); i++) {
        if (!lh_registry_find(g_reg, LH_PLUGIN_SCHEDULER, sn->plugin)) continue;
        ck_assert_msg(open_sched(&s, sn->name, NULL, NULL, NULL, 0, &err) == LH_OK, "%s: %s",
                      sn->name, err.msg);
        ck_assert_str_eq(lh_scheduler_id(s), sn->plugin);
        ck_assert_str_eq(lh_scheduler_name(s), sn->name);
        ck_assert_msg(lh_scheduler_set_timesteps(s, 20, &err) == LH_OK, "%s: %s", sn->name,
                      err.msg);
        lh_scheduler_close(s);
    }
}
END_TEST

/* Bad configuration gets a clear error from every scheduler plugin. */
START_TEST(test_bad_config_every_plugin) {
    int checked = 0;
    for (size_t i = 0; i < lh_registry_count(g_reg); i++) {
        const lh_plugin_info *info = lh_registry_get(g_reg, i, NULL);
        if (info->kind != LH_PLUGIN_SCHEDULER) continue;
        const char *id = info->id;
        lh_error err = {0};
        lh_scheduler *s = NULL;
        char want[256];

        const char *unknown[] = {"no_such_key=1"};
        ck_assert_int_eq(open_sched(&s, id, NULL, NULL, unknown, 1, &err), LH_ERR_CONFIG);
        snprintf(want, sizeof want, "unknown key 'no_such_key' for plugin '%s'", id);
        ASSERT_MSG(err, want);

        const char *betas[] = {"beta_start=0.02", "beta_end=0.001"};
        ck_assert_int_eq(open_sched(&s, id, NULL, NULL, betas, 2, &err), LH_ERR_CONFIG);
        ASSERT_MSG(err, id);
        ASSERT_MSG(err, "beta_end");

        const char *sched[] = {"beta_schedule=cosine"};
        ck_assert_int_eq(open_sched(&s, id, NULL, NULL, sched, 1, &err), LH_ERR_CONFIG);
        ASSERT_MSG(err, "beta_schedule: unknown value 'cosine'");

        ck_assert_msg(open_sched(&s, id, NULL, NULL, NULL, 0, &err) == LH_OK, "%s: %s", id, err.msg);
        ck_assert_int_ne(lh_scheduler_set_timesteps(s, 0, &err), LH_OK);
        ASSERT_MSG(err, id);
        ASSERT_MSG(err, "steps");
        ck_assert_int_ne(lh_scheduler_set_timesteps(s, 1001, &err), LH_OK);
        ASSERT_MSG(err, id);
        ck_assert_msg(lh_scheduler_set_timesteps(s, 25, &err) == LH_OK, "%s: %s", id, err.msg);
        lh_scheduler_close(s);
        checked++;
    }
    ck_assert_int_ge(checked, 1);
    printf("bad configuration refused by %d scheduler plugins\n", checked);
}
END_TEST

int main(void) {
    lh_error err = {0};
    if (lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, NULL, 0, 0, 1, &err) != LH_OK) {
        fprintf(stderr, "registry: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    Suite *su = suite_create("scheduler_config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_layers);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_bad_config_every_plugin);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lh_registry_destroy(g_reg);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
