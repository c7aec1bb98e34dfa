/* `lorahost config`: check a config file and --set overrides, then print every
 * setting in effect with where it came from (default, FILE:LINE or --set).
 * Usage: lorahost config [--config FILE] [--set section.key=value ...] [--json] */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lorahost/lorahost.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost config [--config FILE] [--set section.key=value ...] [--json]\n\n"
            "Check the configuration and print every setting in effect with where it came\n"
            "from: default, FILE:LINE or --set. --set overrides the file, whatever the order.\n"
            "Secret settings are shown as ***. Keys are described in docs/config.md.\n\n"
            "  --config FILE   read settings from an INI file\n"
            "  --set K=V       override one setting, e.g. --set generate.steps=20 (repeatable)\n"
            "  --json          print JSON instead of text\n"
            "Exit status: 0 valid, 1 invalid (one-line message on stderr), 2 usage error.\n");
}

static int is_secret(const lh_setting *v) { return (v->def->flags & LH_SETTING_SECRET) != 0; }

static void print_text(const lh_settings *s) {
    char origin[LH_ERROR_MAX];
    const char *section = NULL;
    const lh_setting *v;
    for (size_t i = 0; (v = lh_settings_at(s, i)); i++) {
        if (!section || strcmp(section, v->def->section)) {
            printf("%s[%s]\n", section ? "\n" : "", v->def->section);
            section = v->def->section;
        }
        printf("%s = %s  (%s)\n", v->def->key, is_secret(v) && v->text[0] ? "***" : v->text,
               lh_setting_origin_text(origin, sizeof origin, v));
    }
    const char *key, *open = NULL;
    for (size_t i = 0; (v = lh_settings_open_at(s, i, &section, &key)); i++) {
        if (!open || strcmp(open, section)) printf("\n[%s]\n", open = section);
        printf("%s = %s  (%s)\n", key, v->text, lh_setting_origin_text(origin, sizeof origin, v));
    }
}

/* The value of v as JSON, typed by the schema. */
static json_t *json_value(const lh_settings *s, const lh_setting *v) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", v->def->section, v->def->key);
    switch (v->def->type) {
    case LH_SETTING_INT: {
        int64_t x = 0;
        lh_settings_get_int(&x, s, name, NULL);
        return json_integer((json_int_t)x);
    }
    case LH_SETTING_DOUBLE: {
        double x = 0;
        lh_settings_get_double(&x, s, name, NULL);
        return json_real(x);
    }
    case LH_SETTING_BOOL: {
        int x = 0;
        lh_settings_get_bool(&x, s, name, NULL);
        return json_boolean(x);
    }
    case LH_SETTING_LIST: {
        const char *const *items = NULL;
        size_t n = 0;
        lh_settings_get_list(&items, &n, s, name, NULL);
        json_t *a = json_array();
        for (size_t i = 0; a && i < n; i++)
            if (json_array_append_new(a, json_string(items[i]))) {
                json_decref(a);
                return NULL;
            }
        return a;
    }
    default: return json_string(v->text);
    }
}

/* {"section": {"key": {"value": ..., "origin": "default"|"file"|"--set",
 *  "file": ..., "line": ...}}}; secrets get "value": null, "hidden": true. */
static int print_json(const lh_settings *s) {
    static const char *const ORIGINS[LH_ORIGIN_COUNT] = {"default", "file", "--set"};
    json_t *root = json_object();
    const lh_setting *v;
    int bad = !root;
    for (size_t i = 0; !bad && (v = lh_settings_at(s, i)); i++) {
        /* json_object_set_new releases the new value when it fails */
        json_t *sec = json_object_get(root, v->def->section), *item;
        if (!sec && json_object_set_new(root, v->def->section, sec = json_object())) bad = 1;
        if (bad || json_object_set_new(sec, v->def->key, item = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(item, "value", is_secret(v) ? json_null() : json_value(s, v));
        bad |= json_object_set_new(item, "origin", json_string(ORIGINS[v->origin]));
        if (is_secret(v)) bad |= json_object_set_new(item, "hidden", json_true());
        if (v->origin == LH_ORIGIN_FILE) {
            bad |= json_object_set_new(item, "file", json_string(v->file));
            bad |= json_object_set_new(item, "line", json_integer(v->line));
        }
    }
    const char *section, *key;
    for (size_t i = 0; !bad && (v = lh_settings_open_at(s, i, &section, &key)); i++) {
        json_t *sec = json_object_get(root, section), *item;
        if (!sec && json_object_set_new(root, section, sec = json_object())) bad = 1;
        if (bad || json_object_set_new(sec, key, item = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(item, "value", json_string(v->text));
        bad |= json_object_set_new(item, "origin", json_string(ORIGINS[v->origin]));
        if (v->origin == LH_ORIGIN_FILE) {
            bad |= json_object_set_new(item, "file", json_string(v->file));
            bad |= json_object_set_new(item, "line", json_integer(v->line));
        }
    }
    if (!bad) bad = json_dumpf(root, stdout, JSON_INDENT(2)) != 0 || putchar('\n') == EOF;
    json_decref(root);
    if (bad) fprintf(stderr, "lorahost config: out of memory writing JSON\n");
    return bad;
}

int lh_cmd_config(int argc, char **argv) {
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    lh_settings *s = NULL;
    lh_error err = {0};
    if (lh_settings_create(&s, &err) || lh_settings_apply_args(s, &argc, argv, &err)) {
        int code = err.code == LH_ERR_INVALID ? 2 : 1;
        if (code == 2)
            fprintf(stderr, "lorahost config: %s (see lorahost config --help)\n", err.msg);
        else
            fprintf(stderr, "%s\n", err.msg);
        lh_settings_destroy(s);
        return code;
    }
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json")) {
            fprintf(stderr,
                    "lorahost config: unexpected argument '%s' (see lorahost config --help)\n",
                    argv[i]);
            lh_settings_destroy(s);
            return 2;
        }
        json = 1;
    }
    int rc = 0;
    if (json)
        rc = print_json(s);
    else
        print_text(s);
    lh_settings_destroy(s);
    return rc;
}
