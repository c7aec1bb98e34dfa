/* `lorahost schedulers`: list scheduler plugins, their aliases and config
 * keys, and the sampler names users know; with a NAME, print the timesteps
 * and sigmas that scheduler produces for --steps N. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lorahost/lorahost.h"

#define MAX_OVERRIDES 64

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost schedulers [--plugin-dir DIR]... [--json]\n"
            "       lorahost schedulers [NAME] --steps N [--set KEY=VALUE]... [--json]\n"
            "                           [--model DIR | --scheduler-config scheduler_config.json]\n"
            "\n"
            "NAME is a plugin id (ddim), an alias or an A1111 sampler name (\"DPM++ 2M\n"
            "Karras\"); without NAME, the model's own scheduler class. --model DIR reads\n"
            "DIR/scheduler/scheduler_config.json (a diffusers model directory), as\n"
            "generation does. --set KEY=VALUE sets a scheduler config key (diffusers names, e.g.\n"
            "--set beta_schedule=scaled_linear); --set section.key=value and --config FILE\n"
            "work as for every command ([scheduler] holds scheduler keys).\n");
}

static void print_list(const lh_registry *reg, int json) {
    json_t *root = json ? json_object() : NULL, *plugins = json ? json_array() : NULL;
    if (!json) printf("%-22s %-8s %s\n", "SCHEDULER", "VERSION", "CONFIG KEYS");
    for (size_t i = 0; i < lh_registry_count(reg); i++) {
        const char *path;
        const lh_plugin_info *info = lh_registry_get(reg, i, &path);
        if (info->kind != LH_PLUGIN_SCHEDULER) continue;
        const lh_scheduler_desc *d = (const lh_scheduler_desc *)info;
        if (json) {
            json_t *keys = json_array(), *aliases = json_array();
            for (const char *const *k = d->config_keys; k && *k; k++)
                json_array_append_new(keys, json_string(*k));
            for (const char *const *a = info->aliases; a && *a; a++)
                json_array_append_new(aliases, json_string(*a));
            json_array_append_new(plugins, json_pack("{s:s, s:s, s:s, s:o, s:o}", "id", info->id,
                                                     "version", info->version, "path", path,
                                                     "aliases", aliases, "config_keys", keys));
            continue;
        }
        printf("%-22s %-8s", info->id, info->version);
        for (const char *const *k = d->config_keys; k && *k; k++) printf(" %s", *k);
        printf("\n");
        if (info->summary) printf("    %s\n", info->summary);
        if (info->aliases && info->aliases[0]) {
            printf("    aliases:");
            for (const char *const *a = info->aliases; *a; a++) printf(" \"%s\"", *a);
            printf("\n");
        }
    }
    json_t *names = json ? json_array() : NULL;
    if (!json) printf("\nSampler names (A1111 / ComfyUI):\n");
    const lh_sampler_name *sn;
    for (size_t i = 0; (sn = lh_sampler_name_at(i)); i++) {
        int loaded = lh_registry_find(reg, LH_PLUGIN_SCHEDULER, sn->plugin) != NULL;
        if (json) {
            json_array_append_new(names, json_pack("{s:s, s:s, s:s, s:b}", "name", sn->name,
                                                   "plugin", sn->plugin, "overrides",
                                                   sn->overrides, "available", loaded));
            continue;
        }
        printf("  %-22s %s%s%s%s\n", sn->name, sn->plugin, sn->overrides[0] ? " + " : "",
               sn->overrides, loaded ? "" : "  (plugin not loaded)");
    }
    if (json) {
        json_object_set_new(root, "schedulers", plugins);
        json_object_set_new(root, "sampler_names", names);
        json_dumpf(root, stdout, JSON_INDENT(2));
        printf("\n");
        json_decref(root);
    }
}

static int print_schedule(lh_scheduler *s, int steps, int json) {
    const double *ts, *sig;
    int32_t n = lh_scheduler_timesteps(s, &ts), ns = lh_scheduler_sigmas(s, &sig);
    double init = lh_scheduler_init_noise_sigma(s);
    if (json) {
        json_t *jt = json_array(), *js = json_array();
        for (int32_t i = 0; i < n; i++) json_array_append_new(jt, json_real(ts[i]));
        for (int32_t i = 0; i < ns; i++) json_array_append_new(js, json_real(sig[i]));
        json_t *root = json_pack("{s:s, s:s, s:i, s:f, s:o, s:o}", "name", lh_scheduler_name(s),
                                 "plugin", lh_scheduler_id(s), "steps", steps, "init_noise_sigma",
                                 init, "timesteps", jt, "sigmas", js);
        json_dumpf(root, stdout, JSON_INDENT(2));
        printf("\n");
        json_decref(root);
        return 0;
    }
    printf("scheduler %s (plugin %s), %d steps, init_noise_sigma %.9g\n", lh_scheduler_name(s),
           lh_scheduler_id(s), steps, init);
    printf("%5s %14s %14s\n", "i", "timestep", ns ? "sigma" : "");
    for (int32_t i = 0; i < n || i < ns; i++) {
        printf("%5d", i);
        if (i < n) printf(" %14.6f", ts[i]); else printf(" %14s", "");
        if (i < ns) printf(" %14.8f", sig[i]);
        printf("\n");
    }
    return 0;
}

static int run(lh_settings *settings, int argc, char **argv, const char **overrides,
               size_t n_overrides) {
    const char *dirs[16], *name = NULL, *config_json = NULL;
    char model_json[4096];
    size_t n_dirs = 0;
    int json = 0;
    long steps = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--plugin-dir") && i + 1 < argc && n_dirs < 16) {
            dirs[n_dirs++] = argv[++i];
        } else if (!strcmp(argv[i], "--scheduler-config") && i + 1 < argc) {
            config_json = argv[++i];
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            snprintf(model_json, sizeof model_json, "%s/scheduler/scheduler_config.json",
                     argv[++i]);
            config_json = model_json;
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            char *end;
            steps = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i]) {
                fprintf(stderr, "lorahost schedulers: --steps: expected an integer, got '%s'\n",
                        argv[i]);
                return 2;
            }
        } else if (argv[i][0] != '-' && !name) {
            name = argv[i];
        } else {
            fprintf(stderr, "lorahost schedulers: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    lh_error err = {0};
    const char *const *cfg_dirs;
    size_t n_cfg;
    if (lh_settings_get_list(&cfg_dirs, &n_cfg, settings, "plugins.dirs", &err) != LH_OK) {
        fprintf(stderr, "lorahost schedulers: %s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < n_cfg && n_dirs < 16; i++) dirs[n_dirs++] = cfg_dirs[i];
    lh_registry *reg;
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, dirs, n_dirs, 1, 1, &err) != LH_OK) {
        fprintf(stderr, "lorahost schedulers: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (!name && !config_json) {
        if (steps >= 0) {
            fprintf(stderr, "lorahost schedulers: --steps needs a scheduler NAME\n");
            rc = 2;
        } else {
            print_list(reg, json);
        }
    } else {
        lh_scheduler_opts o = {name, config_json, settings, overrides, n_overrides, NULL, NULL};
        lh_scheduler *s = NULL;
        if (steps < 0) steps = 30;
        if (steps > 100000) {
            fprintf(stderr, "lorahost schedulers: --steps %ld is out of range\n", steps);
            rc = 1;
        } else if (lh_scheduler_open(&s, reg, &o, &err) != LH_OK ||
                   lh_scheduler_set_timesteps(s, (int32_t)steps, &err) != LH_OK) {
            fprintf(stderr, "lorahost schedulers: %s\n", err.msg);
            rc = 1;
        } else {
            rc = print_schedule(s, (int)steps, json);
        }
        lh_scheduler_close(s);
    }
    lh_registry_destroy(reg);
    return rc;
}

int lh_cmd_schedulers(int argc, char **argv) {
    /* `--set KEY=VALUE` without a section is a scheduler key: take it here;
     * the rest (--config, --set section.key=value) goes to the settings. */
    const char *overrides[MAX_OVERRIDES];
    size_t n_overrides = lh_take_scheduler_sets(&argc, argv, overrides, MAX_OVERRIDES);
    lh_error err = {0};
    lh_settings *settings = NULL;
    if (lh_settings_create(&settings, &err) != LH_OK) {
        fprintf(stderr, "lorahost schedulers: %s\n", err.msg);
        return 1;
    }
    lh_status st = lh_settings_apply_args(settings, &argc, argv, &err);
    if (st != LH_OK) {
        fprintf(stderr, "lorahost schedulers: %s\n", err.msg);
        lh_settings_destroy(settings);
        return st == LH_ERR_INVALID ? 2 : 1;
    }
    int rc = run(settings, argc, argv, overrides, n_overrides);
    lh_settings_destroy(settings);
    return rc;
}
