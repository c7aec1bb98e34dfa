/* Plugin instance configuration: an ordered key/value list with "used"
 * marks. Keys come from diffusers JSON configs, INI sections and per-call
 * settings; plugins read them through the host-services getters. */
#include "plugin_config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct lh_config_item {
    char *key, *value, *origin;
    int used; /* mutable through const: reading marks the key */
} lh_config_item;

struct lh_config {
    char *owner;
    lh_config_item *items;
    size_t n, cap;
};

lh_config *lh_config_create(const char *owner, lh_error *err) {
    lh_config *c = calloc(1, sizeof *c);
    if (c) c->owner = strdup(owner ? owner : "plugin");
    if (!c || !c->owner) {
        free(c);
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for a plugin configuration");
        return NULL;
    }
    return c;
}

void lh_config_destroy(lh_config *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->items[i].key);
        free(c->items[i].value);
        free(c->items[i].origin);
    }
    free(c->items);
    free(c->owner);
    free(c);
}

static lh_config_item *find(const lh_config *c, const char *key) {
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->items[i].key, key)) return &c->items[i];
    return NULL;
}

lh_status lh_config_set(lh_config *c, const char *key, const char *value, const char *origin,
                        lh_error *err) {
    if (!key || !*key || !value)
        return lh_error_set(err, LH_ERR_INVALID, "%s: empty configuration key or value",
                            c->owner);
    char *v = strdup(value), *o = strdup(origin ? origin : "");
    if (!v || !o) goto nomem;
    lh_config_item *it = find(c, key);
    if (!it) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            lh_config_item *items = realloc(c->items, cap * sizeof *items);
            if (!items) goto nomem;
            c->items = items;
            c->cap = cap;
        }
        it = &c->items[c->n];
        memset(it, 0, sizeof *it);
        it->key = strdup(key);
        if (!it->key) goto nomem;
        c->n++;
    }
    free(it->value);
    free(it->origin);
    it->value = v;
    it->origin = o;
    return LH_OK;
nomem:
    free(v);
    free(o);
    return lh_error_set(err, LH_ERR_NOMEM, "out of memory for configuration key '%s'", key);
}

lh_status lh_config_set_json(lh_config *c, const char *json_text, const char *origin,
                             lh_error *err) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lh_error_set(err, LH_ERR_FORMAT, "%s:%d:%d: %s", origin, jerr.line, jerr.column,
                            jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return lh_error_set(err, LH_ERR_FORMAT, "%s: expected a JSON object", origin);
    }
    lh_status st = LH_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        char buf[64], *dumped = NULL;
        const char *text = buf;
        if (json_is_null(val)) continue;
        if (json_is_string(val)) {
            text = json_string_value(val);
        } else if (json_is_integer(val)) {
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
        } else if (json_is_real(val)) {
            snprintf(buf, sizeof buf, "%.17g", json_real_value(val));
        } else if (json_is_boolean(val)) {
            text = json_is_true(val) ? "true" : "false";
        } else {
            dumped = json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY);
            if (!dumped) {
                st = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", origin);
                break;
            }
            text = dumped;
        }
        st = lh_config_set(c, key, text, origin, err);
        free(dumped);
        if (st != LH_OK) break;
    }
    json_decref(root);
    return st;
}

const char *lh_config_first_unused(const lh_config *c) {
    for (size_t i = 0; i < c->n; i++)
        if (!c->items[i].used && c->items[i].key[0] != '_') return c->items[i].key;
    return NULL;
}

size_t lh_config_count(const lh_config *c) { return c ? c->n : 0; }

const char *lh_config_key_at(const lh_config *c, size_t i) {
    return c && i < c->n ? c->items[i].key : NULL;
}

lh_status lh_config_check_used(const lh_config *c, lh_error *err) {
    for (size_t i = 0; i < c->n; i++) {
        const lh_config_item *it = &c->items[i];
        if (!it->used && it->key[0] != '_')
            return lh_error_set(err, LH_ERR_CONFIG, "%s%sunknown key '%s' for plugin '%s'",
                                it->origin[0] ? it->origin : "", it->origin[0] ? ": " : "",
                                it->key, c->owner);
    }
    return LH_OK;
}

/* ---- Typed getters (host services) ---- */

static lh_config_item *lookup(const lh_config *c, const char *key) {
    if (!c || !key) return NULL;
    lh_config_item *it = find(c, key);
    if (it) it->used = 1;
    return it;
}

static lh_status bad_value(const lh_config *c, const lh_config_item *it, const char *want,
                           char *err, size_t err_size) {
    if (err && err_size)
        snprintf(err, err_size, "%s%s%s: %s: expected %s, got '%s'", it->origin,
                 it->origin[0] ? ": " : "", c->owner, it->key, want, it->value);
    return LH_ERR_CONFIG;
}

const char *lh_config_string(const lh_config *c, const char *key) {
    lh_config_item *it = lookup(c, key);
    return it ? it->value : NULL;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s) return -1; /* no number (a blank value is not 0) */
    while (isspace((unsigned char)*end)) end++;
    if (*end || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

lh_status lh_config_double(const lh_config *c, const char *key, double fallback, double *out,
                           char *err, size_t err_size) {
    lh_config_item *it = lookup(c, key);
    *out = fallback;
    if (!it) return LH_OK;
    double v;
    if (parse_double(it->value, &v) || !isfinite(v))
        return bad_value(c, it, "a finite number", err, err_size);
    *out = v;
    return LH_OK;
}

lh_status lh_config_int(const lh_config *c, const char *key, int64_t fallback, int64_t *out,
                        char *err, size_t err_size) {
    lh_config_item *it = lookup(c, key);
    *out = fallback;
    if (!it) return LH_OK;
    char *end;
    errno = 0;
    long long v = strtoll(it->value, &end, 10);
    if (end == it->value || *end || errno == ERANGE)
        return bad_value(c, it, "an integer", err, err_size);
    *out = v;
    return LH_OK;
}

lh_status lh_config_bool(const lh_config *c, const char *key, int fallback, int *out, char *err,
                         size_t err_size) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    lh_config_item *it = lookup(c, key);
    *out = fallback;
    if (!it) return LH_OK;
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(it->value, yes[i])) return *out = 1, LH_OK;
        if (!strcasecmp(it->value, no[i])) return *out = 0, LH_OK;
    }
    return bad_value(c, it, "true or false", err, err_size);
}

lh_status lh_config_doubles(const lh_config *c, const char *key, double *out, size_t cap,
                            size_t *count, char *err, size_t err_size) {
    lh_config_item *it = lookup(c, key);
    *count = 0;
    if (!it) return LH_OK;
    /* "[a, b, c]" (JSON) or "a,b,c" */
    const char *p = it->value;
    while (isspace((unsigned char)*p)) p++;
    int bracket = *p == '[';
    if (bracket) p++;
    size_t n = 0;
    for (;;) {
        while (isspace((unsigned char)*p)) p++;
        if (bracket && *p == ']' && n == 0) { p++; break; }
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno == ERANGE || !isfinite(v))
            return bad_value(c, it, "a list of finite numbers", err, err_size);
        if (n < cap) out[n] = v;
        n++;
        p = end;
        while (isspace((unsigned char)*p)) p++;
        if (*p == ',') { p++; continue; }
        if (bracket && *p == ']') { p++; break; }
        if (!bracket && !*p) break;
        return bad_value(c, it, "a list of finite numbers", err, err_size);
    }
    while (isspace((unsigned char)*p)) p++;
    if (*p) return bad_value(c, it, "a list of finite numbers", err, err_size);
    *count = n;
    if (n > cap) {
        if (err && err_size)
            snprintf(err, err_size, "%s: %s: %zu values, at most %zu allowed", c->owner, it->key,
                     n, cap);
        return LH_ERR_CONFIG;
    }
    return LH_OK;
}
