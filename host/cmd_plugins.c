/* `lorahost plugins`: list the plugins the registry finds (id, kind,
 * version, path) and the files it refused, with the reason. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lorahost/lorahost.h"

#define MAX_DIRS 64

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost plugins [--config FILE] [--set K=V]... [--plugin-dir DIR]...\n"
            "                        [--no-builtin] [--json]\n"
            "\n"
            "Lists plugins from the --plugin-dir directories, then [plugins] dirs of the\n"
            "configuration, then $%s (':'-separated),\n"
            "then the built-in directory (%s). When two plugins claim the same kind\n"
            "and id, the first one found wins. Refused files are listed with the reason.\n",
            LH_PLUGIN_PATH_ENV, lh_registry_builtin_dir());
}

/* The config keys of a scheduler or safety checker, or NULL. */
static const char *const *config_keys(const lh_plugin_info *info) {
    if (info->kind == LH_PLUGIN_SCHEDULER) return ((const lh_scheduler_desc *)info)->config_keys;
    if (info->kind == LH_PLUGIN_SAFETY) return ((const lh_safety_desc *)info)->config_keys;
    return NULL;
}

static void print_list(const char *label, const char *const *items) {
    if (!items || !items[0]) return;
    printf("    %s:", label);
    for (const char *const *a = items; *a; a++) printf(" %s", *a);
    printf("\n");
}

static int print_json(const lh_registry *reg) {
    json_t *root = json_object(), *list = json_array(), *refused = json_array();
    if (!root || !list || !refused) return 1;
    for (size_t i = 0; i < lh_registry_count(reg); i++) {
        const char *path;
        const lh_plugin_info *info = lh_registry_get(reg, i, &path);
        json_t *aliases = json_array(), *keys = json_array();
        for (const char *const *a = info->aliases; a && *a; a++)
            json_array_append_new(aliases, json_string(*a));
        for (const char *const *k = config_keys(info); k && *k; k++)
            json_array_append_new(keys, json_string(*k));
        json_array_append_new(
            list, json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:o}", "id", info->id, "kind",
                            lh_plugin_kind_name(info->kind), "version",
                            info->version ? info->version : "", "summary",
                            info->summary ? info->summary : "", "path", path, "aliases",
                            aliases, "config_keys", keys));
    }
    for (size_t i = 0; i < lh_registry_diagnostic_count(reg); i++)
        json_array_append_new(refused, json_string(lh_registry_diagnostic(reg, i)));
    json_object_set_new(root, "plugins", list);
    json_object_set_new(root, "refused", refused);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    json_decref(root);
    if (!text) return 1;
    printf("%s\n", text);
    free(text);
    return 0;
}

static int run(lh_settings *settings, int argc, char **argv) {
    const char *dirs[MAX_DIRS];
    size_t n_dirs = 0;
    int json = 0, builtin = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--no-builtin")) {
            builtin = 0;
        } else if (!strcmp(argv[i], "--plugin-dir") && i + 1 < argc && n_dirs < MAX_DIRS) {
            dirs[n_dirs++] = argv[++i];
        } else {
            fprintf(stderr, "lorahost plugins: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    const char *const *cfg_dirs;
    size_t n_cfg;
    lh_error err = {0};
    if (lh_settings_get_list(&cfg_dirs, &n_cfg, settings, "plugins.dirs", &err) != LH_OK) {
        fprintf(stderr, "lorahost plugins: %s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < n_cfg && n_dirs < MAX_DIRS; i++) dirs[n_dirs++] = cfg_dirs[i];
    lh_registry *reg;
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, dirs, n_dirs, 1, builtin, &err) != LH_OK) {
        fprintf(stderr, "lorahost plugins: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (json) {
        rc = print_json(reg);
    } else {
        printf("%-24s %-10s %-10s %s\n", "ID", "KIND", "VERSION", "PATH");
        for (size_t i = 0; i < lh_registry_count(reg); i++) {
            const char *path;
            const lh_plugin_info *info = lh_registry_get(reg, i, &path);
            printf("%-24s %-10s %-10s %s\n", info->id, lh_plugin_kind_name(info->kind),
                   info->version ? info->version : "-", path);
            if (info->summary) printf("    %s\n", info->summary);
            print_list("aliases", info->aliases);
            print_list("config keys", config_keys(info));
        }
        printf("%zu plugin(s)", lh_registry_count(reg));
        if (lh_registry_diagnostic_count(reg))
            printf(", %zu refused:", lh_registry_diagnostic_count(reg));
        printf("\n");
        for (size_t i = 0; i < lh_registry_diagnostic_count(reg); i++)
            printf("  refused: %s\n", lh_registry_diagnostic(reg, i));
    }
    lh_registry_destroy(reg);
    return rc;
}

int lh_cmd_plugins(int argc, char **argv) {
    lh_error err = {0};
    lh_settings *settings = NULL;
    if (lh_settings_create(&settings, &err) != LH_OK) {
        fprintf(stderr, "lorahost plugins: %s\n", err.msg);
        return 1;
    }
    lh_status st = lh_settings_apply_args(settings, &argc, argv, &err);
    if (st != LH_OK) {
        fprintf(stderr, "lorahost plugins: %s\n", err.msg);
        lh_settings_destroy(settings);
        return st == LH_ERR_INVALID ? 2 : 1;
    }
    int rc = run(settings, argc, argv);
    lh_settings_destroy(settings);
    return rc;
}
