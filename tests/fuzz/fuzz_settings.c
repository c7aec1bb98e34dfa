/* libFuzzer target for the INI settings loader: the input as a config file
 * through lh_settings_load (a file that loads must load again to the same
 * values), then each of its lines as a `--set` override (applied in full or
 * not at all), with the values in effect checked against the schema through
 * every getter.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lorahost/lorahost.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

enum { MAX_OVERRIDES = 16 }; /* lines tried as --set, to keep each run short */

/* ---- The config file: one per process, in a private temp dir ---- */

static char g_dir[512], g_path[600];

static void remove_temp(void) {
    unlink(g_path);
    rmdir(g_dir);
}

static void write_input(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/lh-fuzz-settings-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        CHECK(mkdtemp(g_dir) != NULL);
        snprintf(g_path, sizeof g_path, "%s/config.ini", g_dir);
        atexit(remove_temp);
    }
    FILE *f = fopen(g_path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, size, f) == size);
    CHECK(fclose(f) == 0);
}

/* ---- Independent checks ---- */

static int valid_utf8(const char *str) {
    const uint8_t *s = (const uint8_t *)str;
    for (size_t i = 0; s[i];) {
        uint32_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len) return 0;
        c &= len == 1 ? 0x7f : 0xff >> (len + 1);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0; /* also stops at the NUL */
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

static int blank(char c) { return c && strchr(" \t\r\n\f\v", c) != NULL; }

static int trimmed(const char *s) { return !*s || (!blank(s[0]) && !blank(s[strlen(s) - 1])); }

/* A failed call: a one-line message for the same code. */
static void check_error(lh_status st, const lh_error *err) {
    CHECK(st < 0 && err->code == st && err->msg[0] && !strchr(err->msg, '\n'));
}

/* One key's value against its schema row, through its getters (all of them
 * if `all`: the getters of other types must refuse it). */
static void check_value(const lh_settings *s, const lh_setting_def *d, const lh_setting *v,
                        int all) {
    char name[128];
    lh_error err = {0};
    snprintf(name, sizeof name, "%s.%s", d->section, d->key);
    const lh_setting *got = NULL;
    const char *text = NULL;
    CHECK(lh_settings_get(&got, s, name, &err) == LH_OK && got == v && v->def == d);
    CHECK(lh_settings_get_string(&text, s, name, &err) == LH_OK && text == v->text);
    CHECK(text && valid_utf8(text) && trimmed(text));
    CHECK(v->origin >= 0 && v->origin < LH_ORIGIN_COUNT);
    if (v->origin == LH_ORIGIN_DEFAULT) CHECK(!strcmp(text, d->def));
    if (v->origin == LH_ORIGIN_FILE) CHECK(v->file && !strcmp(v->file, g_path) && v->line >= 1);
    if (v->origin == LH_ORIGIN_SET) CHECK(!v->file && v->line == 0);

    int64_t i = 0;
    double x = 0;
    int b = 0, e = 0;
    const char *const *items = NULL;
    size_t n = 0;
    lh_status want_int = d->type == LH_SETTING_INT ? LH_OK : LH_ERR_INVALID;
    lh_status want_double = d->type == LH_SETTING_DOUBLE ? LH_OK : LH_ERR_INVALID;
    lh_status want_bool = d->type == LH_SETTING_BOOL ? LH_OK : LH_ERR_INVALID;
    lh_status want_enum = d->type == LH_SETTING_ENUM ? LH_OK : LH_ERR_INVALID;
    lh_status want_list = d->type == LH_SETTING_LIST ? LH_OK : LH_ERR_INVALID;
    if (all || !want_int) CHECK(lh_settings_get_int(&i, s, name, &err) == want_int);
    if (all || !want_double) CHECK(lh_settings_get_double(&x, s, name, &err) == want_double);
    if (all || !want_bool) CHECK(lh_settings_get_bool(&b, s, name, &err) == want_bool);
    if (all || !want_enum) CHECK(lh_settings_get_enum(&e, s, name, &err) == want_enum);
    if (all || !want_list) CHECK(lh_settings_get_list(&items, &n, s, name, &err) == want_list);

    switch (d->type) {
    case LH_SETTING_STRING: break;
    case LH_SETTING_INT: {
        char *end;
        errno = 0;
        CHECK(strtoll(text, &end, 10) == i && !*end && !errno);
        CHECK(i >= d->min && i <= d->max && (d->step <= 1 || i % d->step == 0));
        break;
    }
    case LH_SETTING_DOUBLE: {
        char *end;
        CHECK(strtod(text, &end) == x && !*end);
        CHECK(isfinite(x) && x >= d->dmin && x <= d->dmax);
        break;
    }
    case LH_SETTING_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};
        int is_yes = 0, is_no = 0;
        for (int k = 0; k < 4; k++) {
            is_yes |= !strcasecmp(text, yes[k]);
            is_no |= !strcasecmp(text, no[k]);
        }
        CHECK(is_yes != is_no && b == is_yes);
        break;
    }
    case LH_SETTING_ENUM: {
        int count = 0;
        while (d->choices[count]) count++;
        CHECK(e >= 0 && e < count && !strcmp(d->choices[e], text));
        break;
    }
    case LH_SETTING_LIST: {
        size_t commas = 0;
        for (const char *p = text; *p; p++) commas += *p == ',';
        CHECK(items && n <= commas + 1 && items[n] == NULL);
        for (size_t k = 0; k < n; k++)
            CHECK(items[k][0] && trimmed(items[k]) && !strchr(items[k], ',') &&
                  strstr(text, items[k]));
        break;
    }
    default: CHECK(0);
    }
}

/* Everything a caller can read from s. */
static void check_settings(const lh_settings *s, int all) {
    size_t n = lh_settings_schema_size();
    for (size_t k = 0; k < n; k++) {
        const lh_setting *v = lh_settings_at(s, k);
        CHECK(v != NULL);
        check_value(s, lh_settings_schema(k), v, all);
    }
    CHECK(lh_settings_at(s, n) == NULL && lh_settings_schema(n) == NULL);
    lh_error err = {0};
    const lh_setting *v = NULL;
    CHECK(lh_settings_get(&v, s, "generate.nosuchkey", &err) == LH_ERR_CONFIG);

    for (size_t k = 0; k < lh_settings_open_count(s); k++) {
        const char *section = NULL, *key = NULL;
        v = lh_settings_open_at(s, k, &section, &key);
        CHECK(v && !v->def && v->text && section && key && !strcmp(section, "scheduler"));
        CHECK(key[0] && strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(key));
        CHECK(valid_utf8(v->text) && trimmed(v->text));
        for (size_t j = 0; j < k; j++) { /* each key once */
            const char *other = NULL;
            lh_settings_open_at(s, j, NULL, &other);
            CHECK(strcmp(other, key) != 0);
        }
    }
    CHECK(lh_settings_open_at(s, lh_settings_open_count(s), NULL, NULL) == NULL);
}

/* ---- Snapshots: what an override or a reload may or may not change ---- */

/* Every value with its origin line (or -origin) and, for open keys, the key,
 * as one string: "line:len:key=value;" per key. Free with free(). */
static char *snap_take(const lh_settings *s) {
    size_t n = lh_settings_schema_size(), n_open = lh_settings_open_count(s), size = 1;
    for (size_t pass = 0; pass < 2; pass++) {
        char *buf = pass ? malloc(size) : NULL, *p = buf;
        CHECK(!pass || buf);
        for (size_t k = 0; k < n + n_open; k++) {
            const char *key = "";
            const lh_setting *v = k < n ? lh_settings_at(s, k)
                                        : lh_settings_open_at(s, k - n, NULL, &key);
            int line = v->origin == LH_ORIGIN_FILE ? v->line : -(int)v->origin;
            size_t len = strlen(key) + strlen(v->text) + 48;
            if (pass)
                p += snprintf(p, len, "%d:%zu:%s=%s;", line, strlen(v->text), key, v->text);
            else
                size += len;
        }
        if (pass) {
            *p = '\0';
            return buf;
        }
    }
    return NULL;
}

/* ---- Overrides ---- */

/* After a good override "section.key=value": that key holds the value. */
static void check_override_applied(const lh_settings *s, const char *line) {
    const char *eq = strchr(line, '='), *dot = strchr(line, '.');
    CHECK(eq && dot && dot < eq);
    char *name = strndup(line, (size_t)(eq - line)), *value = strdup(eq + 1);
    CHECK(name && value);
    char *vb = value, *ve = value + strlen(value);
    while (blank(*vb)) vb++;
    while (ve > vb && blank(ve[-1])) *--ve = '\0';
    const lh_setting *v = NULL;
    lh_error err = {0};
    if (!strncmp(name, "scheduler.", 10)) {
        for (size_t k = 0; k < lh_settings_open_count(s); k++) {
            const char *key = NULL;
            const lh_setting *o = lh_settings_open_at(s, k, NULL, &key);
            if (!strcmp(key, name + 10)) v = o;
        }
        CHECK(v != NULL && valid_utf8(v->text));
    } else {
        CHECK(lh_settings_get(&v, s, name, &err) == LH_OK);
        check_value(s, v->def, v, 0);
    }
    CHECK(v->origin == LH_ORIGIN_SET && !strcmp(v->text, vb));
    free(name);
    free(value);
}

/* Each line of the input as `--set LINE`: applied in full, or not at all
 * (the whole of s is checked once at the end, to keep runs fast). */
static void try_overrides(lh_settings *s, const uint8_t *data, size_t size) {
    size_t start = 0;
    for (int count = 0; start < size && count < MAX_OVERRIDES; count++) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t len = nl ? (size_t)(nl - data) - start : size - start;
        char *line = strndup((const char *)data + start, len); /* up to a NUL in it */
        CHECK(line != NULL);
        char *before = snap_take(s);
        lh_error err = {0};
        lh_status st = lh_settings_set_override(s, line, &err);
        if (st == LH_OK) {
            check_override_applied(s, line);
        } else {
            check_error(st, &err);
            CHECK(st == LH_ERR_CONFIG && !strncmp(err.msg, "--set ", 6));
            char *after = snap_take(s);
            CHECK(!strcmp(before, after));
            free(after);
        }
        free(before);
        free(line);
        start += len + 1;
    }
    check_settings(s, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_input(data, size);
    lh_settings *s = NULL;
    lh_error err = {0};
    CHECK(lh_settings_create(&s, &err) == LH_OK && s);
    static int defaults_checked;
    if (!defaults_checked) { /* the same every run */
        check_settings(s, 1);
        defaults_checked = 1;
    }

    lh_status st = lh_settings_load(s, g_path, &err);
    if (st == LH_OK) {
        check_settings(s, 1);
        char *first = snap_take(s);
        CHECK(lh_settings_load(s, g_path, &err) == LH_OK); /* keys may repeat across files */
        char *again = snap_take(s);
        CHECK(!strcmp(first, again));
        free(first);
        free(again);
    } else {
        check_error(st, &err);
        CHECK(st == LH_ERR_CONFIG);
        size_t n = strlen(g_path);
        CHECK(!strncmp(err.msg, g_path, n) && err.msg[n] == ':');
        /* a failed load may leave part of the file: start the overrides afresh */
        lh_settings_destroy(s);
        CHECK(lh_settings_create(&s, &err) == LH_OK && s);
    }
    try_overrides(s, data, size);
    lh_settings_destroy(s);
    return 0;
}
