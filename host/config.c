/* Settings in effect: schema defaults, then an INI file, then --set overrides.
 * Every value is validated when it is set and remembered with its origin, so
 * a bad config fails at start-up with "file:line: key: what was expected". */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "error.h"
#include "nearest.h"
#include "lorahost/config.h"

typedef struct lh__value {
    char *text;    /* as written, trimmed */
    int64_t i;     /* INT; BOOL (0 or 1); ENUM (index in choices) */
    double d;      /* DOUBLE */
    char **items;  /* LIST: NULL-terminated; one allocation holding the strings */
    size_t n_items;
} lh__value;

typedef struct lh__entry {
    lh_setting view;
    lh__value v;
    size_t load; /* which lh_settings_load set it (1-based), 0 if none */
} lh__entry;

/* A key of an open section: free-form, validated by the plugin it goes to. */
typedef struct lh__open {
    char *key, *value;
    lh_setting view; /* def is NULL */
    const char *section;
    size_t load;
} lh__open;

struct lh_settings {
    lh__entry *entries; /* one per schema key, in schema order */
    char **files;       /* paths given to lh_settings_load; origins point here */
    size_t n_files;
    lh__open *open;     /* keys of open sections, in the order first set */
    size_t n_open, cap_open;
    char **checker_sections; /* [safety_<id>] names met so far (open sections) */
    size_t n_checker_sections;
};

/* Sections whose keys belong to a plugin: [scheduler] holds the chosen
 * scheduler's config keys (diffusers names), checked when it is created. */
static const char *const OPEN_SECTIONS[] = {"scheduler", NULL};
/* [safety_*] sections hold the keys of a safety checker (docs/safety.md),
 * checked when the checker is created. */
#define CHECKER_PREFIX "safety_"

static const char *const TYPE_NAMES[LH_SETTING_TYPE_COUNT] = {
    "string", "integer", "number", "boolean", "enum", "list"};

/* ---- Text helpers ---- */

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static char *trim(char *s) {
    while (is_blank(*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && is_blank(s[n - 1])) s[--n] = '\0';
    return s;
}

/* s cut to at most 60 bytes, at a character boundary, for messages. */
#define CLIP_SIZE 64
static const char *clip(char out[CLIP_SIZE], const char *s) {
    size_t n = strlen(s);
    if (n < CLIP_SIZE) return s;
    n = CLIP_SIZE - 4;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    memcpy(out, s, n);
    memcpy(out + n, "...", 4);
    return out;
}

/* Offset of the first byte of s that is not well-formed UTF-8, or -1. */
static long utf8_invalid_at(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int more;
        uint32_t c, min;
        if (*p < 0x80) {
            p++;
            continue;
        } else if ((*p & 0xE0) == 0xC0) {
            more = 1, c = *p & 0x1F, min = 0x80;
        } else if ((*p & 0xF0) == 0xE0) {
            more = 2, c = *p & 0x0F, min = 0x800;
        } else if ((*p & 0xF8) == 0xF0) {
            more = 3, c = *p & 0x07, min = 0x10000;
        } else {
            return (long)(p - (const unsigned char *)s);
        }
        for (int k = 1; k <= more; k++) {
            if ((p[k] & 0xC0) != 0x80) return (long)(p - (const unsigned char *)s);
            c = c << 6 | (p[k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return (long)(p - (const unsigned char *)s);
        p += more + 1;
    }
    return -1;
}


/* A [safety_<id>] section's name, kept in s (one pointer per name), or NULL
 * if name is not one or out of memory. */
static const char *checker_section(lh_settings *s, const char *name) {
    size_t k = strlen(CHECKER_PREFIX);
    if (strncmp(name, CHECKER_PREFIX, k) || !name[k]) return NULL;
    for (const char *p = name + k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return NULL;
    for (size_t i = 0; i < s->n_checker_sections; i++)
        if (!strcmp(s->checker_sections[i], name)) return s->checker_sections[i];
    char **p = realloc(s->checker_sections, (s->n_checker_sections + 1) * sizeof *p);
    if (!p) return NULL;
    s->checker_sections = p;
    if (!(p[s->n_checker_sections] = strdup(name))) return NULL;
    return p[s->n_checker_sections++];
}

/* The schema's spelling of section `name`, or NULL. */
static const char *find_section(lh_settings *s, const char *name) {
    for (size_t i = 0; OPEN_SECTIONS[i]; i++)
        if (!strcmp(OPEN_SECTIONS[i], name)) return OPEN_SECTIONS[i];
    const char *checker = checker_section(s, name);
    if (checker) return checker;
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        if (!strcmp(lh_settings_schema(i)->section, name)) return lh_settings_schema(i)->section;
    return NULL;
}

static lh_status unknown_section(lh_error *err, const char *where, const char *name) {
    lh_nearest n = {0};
    char c[CLIP_SIZE];
    for (size_t i = 0; OPEN_SECTIONS[i]; i++) lh_nearest_consider(&n, name, OPEN_SECTIONS[i]);
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        lh_nearest_consider(&n, name, lh_settings_schema(i)->section);
    if (n.name)
        return lh_error_set(err, LH_ERR_CONFIG, "%s: unknown section [%s]; did you mean [%s]?",
                            where, clip(c, name), n.name);
    return lh_error_set(err, LH_ERR_CONFIG, "%s: unknown section [%s]", where, clip(c, name));
}

static lh_status unknown_key(lh_error *err, const char *where, const char *section,
                             const char *key) {
    lh_nearest n = {0};
    char c[CLIP_SIZE];
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        if (!strcmp(lh_settings_schema(i)->section, section))
            lh_nearest_consider(&n, key, lh_settings_schema(i)->key);
    if (n.name)
        return lh_error_set(err, LH_ERR_CONFIG, "%s: unknown key '%s' in [%s]; did you mean '%s'?",
                            where, clip(c, key), section, n.name);
    return lh_error_set(err, LH_ERR_CONFIG, "%s: unknown key '%s' in [%s]", where, clip(c, key),
                        section);
}

/* The first section that has `key`, or NULL. */
static const char *section_of(const char *key) {
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        if (!strcmp(lh_settings_schema(i)->key, key)) return lh_settings_schema(i)->section;
    return NULL;
}

/* ---- Values ---- */

static const char *const BOOL_WORDS[] = {"false", "true", "no", "yes", "off", "on", "0", "1"};

/* "an integer in 1..1000", "one of cpu, cuda", ... */
static void describe(char *out, size_t size, const lh_setting_def *d) {
    switch (d->type) {
    case LH_SETTING_INT: {
        char kind[48] = "an integer";
        if (d->step > 1) snprintf(kind, sizeof kind, "a multiple of %lld", (long long)d->step);
        if (d->max == INT64_MAX)
            snprintf(out, size, "%s >= %lld", kind, (long long)d->min);
        else
            snprintf(out, size, "%s in %lld..%lld", kind, (long long)d->min, (long long)d->max);
        break;
    }
    case LH_SETTING_DOUBLE: snprintf(out, size, "a number in %g..%g", d->dmin, d->dmax); break;
    case LH_SETTING_BOOL: snprintf(out, size, "true, false, yes, no, on, off, 1 or 0"); break;
    case LH_SETTING_ENUM: {
        size_t len = (size_t)snprintf(out, size, "one of");
        for (size_t i = 0; d->choices[i] && len < size; i++)
            len += (size_t)snprintf(out + len, size - len, "%s %s", i ? "," : "", d->choices[i]);
        break;
    }
    default: snprintf(out, size, "%s", TYPE_NAMES[d->type]); break;
    }
}

/* Split a comma-separated list; blanks around items and empty items dropped. */
static lh_status split_list(lh__value *v, const char *text) {
    size_t len = strlen(text), n = 1;
    for (const char *p = text; *p; p++) n += *p == ',';
    size_t head = (n + 1) * sizeof(char *), total;
    if (lh_add_size(head, len + 1, &total)) return LH_ERR_OVERFLOW;
    char **items = malloc(total);
    if (!items) return LH_ERR_NOMEM;
    char *buf = (char *)items + head;
    memcpy(buf, text, len + 1);
    v->n_items = 0;
    for (char *item = buf, *next; item; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = '\0';
        item = trim(item);
        if (*item) items[v->n_items++] = item;
    }
    items[v->n_items] = NULL;
    v->items = items;
    return LH_OK;
}

static void value_free(lh__value *v) {
    free(v->text);
    free(v->items);
    memset(v, 0, sizeof *v);
}

/* Parse and check text for key d into out. On LH_ERR_CONFIG `why` says what
 * was expected and what was given. */
static lh_status value_parse(lh__value *out, const lh_setting_def *d, const char *text,
                             char *why, size_t why_size) {
    lh__value v = {0};
    char want[160], c[CLIP_SIZE];
    long bad = utf8_invalid_at(text);
    if (bad >= 0) {
        snprintf(why, why_size, "not valid UTF-8 at byte %ld", bad + 1);
        return LH_ERR_CONFIG;
    }
    int ok = 1;
    char *end = NULL;
    switch (d->type) {
    case LH_SETTING_STRING: break;
    case LH_SETTING_INT: {
        errno = 0;
        long long x = strtoll(text, &end, 10);
        ok = *text && !*end && !errno && x >= d->min && x <= d->max &&
             (d->step <= 1 || x % d->step == 0);
        v.i = x;
        break;
    }
    case LH_SETTING_DOUBLE:
        v.d = strtod(text, &end);
        ok = *text && !*end && isfinite(v.d) && v.d >= d->dmin && v.d <= d->dmax;
        break;
    case LH_SETTING_BOOL:
        ok = 0;
        for (size_t i = 0; i < sizeof BOOL_WORDS / sizeof BOOL_WORDS[0] && !ok; i++)
            if (!strcasecmp(text, BOOL_WORDS[i])) ok = 1, v.i = (int64_t)(i % 2);
        break;
    case LH_SETTING_ENUM:
        ok = 0;
        for (size_t i = 0; d->choices[i] && !ok; i++)
            if (!strcmp(text, d->choices[i])) ok = 1, v.i = (int64_t)i;
        break;
    case LH_SETTING_LIST: {
        lh_status st = split_list(&v, text);
        if (st) return st;
        break;
    }
    default: return LH_ERR_INTERNAL;
    }
    if (!ok) {
        describe(want, sizeof want, d);
        snprintf(why, why_size, "expected %s, got '%s'", want, clip(c, text));
        return LH_ERR_CONFIG;
    }
    v.text = strdup(text);
    if (!v.text) {
        value_free(&v);
        return LH_ERR_NOMEM;
    }
    *out = v;
    return LH_OK;
}

/* Replace e's value; on failure e is unchanged and `why` says why. */
static lh_status entry_set(lh__entry *e, const char *text, char *why, size_t why_size) {
    lh__value v;
    lh_status st = value_parse(&v, e->view.def, text, why, why_size);
    if (st == LH_ERR_NOMEM || st == LH_ERR_OVERFLOW) snprintf(why, why_size, "out of memory");
    if (st) return st;
    value_free(&e->v);
    e->v = v;
    e->view.text = v.text;
    return LH_OK;
}

/* The entry for section and key, or NULL. */
static lh__entry *entry_find(const lh_settings *s, const char *section, const char *key) {
    for (size_t i = 0; i < lh_settings_schema_size(); i++) {
        const lh_setting_def *d = lh_settings_schema(i);
        if (!strcmp(d->section, section) && !strcmp(d->key, key)) return &s->entries[i];
    }
    return NULL;
}

/* ---- Open sections ---- */

static int is_open_section(const lh_settings *s, const char *section) {
    for (size_t i = 0; OPEN_SECTIONS[i]; i++)
        if (section == OPEN_SECTIONS[i]) return 1;
    for (size_t i = 0; i < s->n_checker_sections; i++)
        if (section == s->checker_sections[i]) return 1;
    return 0;
}

/* Set key of open section to value; `where` and origin as for schema keys. */
static lh_status open_set(lh_settings *s, const char *section, const char *key,
                          const char *value, lh_error *err, const char *where) {
    char c[CLIP_SIZE];
    for (const char *p = key; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: key '%s' in [%s] must be lower-case letters, digits and '_'",
                                where, clip(c, key), section);
    long bad = utf8_invalid_at(value); /* the plugin reads it as text, like any value */
    if (bad >= 0)
        return lh_error_set(err, LH_ERR_CONFIG, "%s: %s.%s: not valid UTF-8 at byte %ld", where,
                            section, key, bad + 1);
    lh__open *o = NULL;
    for (size_t i = 0; i < s->n_open; i++)
        if (s->open[i].section == section && !strcmp(s->open[i].key, key)) o = &s->open[i];
    char *v = strdup(value);
    if (!v) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", where);
    if (!o) {
        if (s->n_open == s->cap_open) {
            size_t cap = s->cap_open ? 2 * s->cap_open : 8;
            lh__open *p = realloc(s->open, cap * sizeof *p);
            if (!p) {
                free(v);
                return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", where);
            }
            s->open = p;
            s->cap_open = cap;
        }
        o = &s->open[s->n_open];
        memset(o, 0, sizeof *o);
        if (!(o->key = strdup(key))) {
            free(v);
            return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", where);
        }
        o->section = section;
        s->n_open++;
    }
    free(o->value);
    o->value = v;
    o->view.text = v;
    return LH_OK;
}

size_t lh_settings_open_count(const lh_settings *s) { return s->n_open; }

const lh_setting *lh_settings_open_at(const lh_settings *s, size_t index, const char **section,
                                      const char **key) {
    if (index >= s->n_open) return NULL;
    if (section) *section = s->open[index].section;
    if (key) *key = s->open[index].key;
    return &s->open[index].view;
}

/* ---- The settings object ---- */

lh_status lh_settings_create(lh_settings **out, lh_error *err) {
    *out = NULL;
    size_t n = lh_settings_schema_size();
    lh_settings *s = calloc(1, sizeof *s);
    if (s) s->entries = calloc(n, sizeof *s->entries);
    if (!s || !s->entries) {
        free(s);
        return lh_error_set(err, LH_ERR_NOMEM, "settings: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        lh__entry *e = &s->entries[i];
        char why[LH_ERROR_MAX / 2];
        e->view.def = lh_settings_schema(i);
        lh_status st = entry_set(e, e->view.def->def, why, sizeof why);
        if (st) {
            lh_settings_destroy(s);
            return lh_error_set(err, st == LH_ERR_CONFIG ? LH_ERR_INTERNAL : st,
                                "default of %s.%s: %s", e->view.def->section, e->view.def->key,
                                why);
        }
    }
    *out = s;
    return LH_OK;
}

void lh_settings_destroy(lh_settings *s) {
    if (!s) return;
    for (size_t i = 0; i < lh_settings_schema_size(); i++) value_free(&s->entries[i].v);
    for (size_t i = 0; i < s->n_open; i++) {
        free(s->open[i].key);
        free(s->open[i].value);
    }
    free(s->open);
    for (size_t i = 0; i < s->n_checker_sections; i++) free(s->checker_sections[i]);
    free(s->checker_sections);
    for (size_t i = 0; i < s->n_files; i++) free(s->files[i]);
    free(s->entries);
    free(s->files);
    free(s);
}

/* ---- INI files ----
 * inih parses the file, but through our own line reader (ini_read). The
 * Debian 12 build of inih (r55) cuts lines at 200 bytes (a long prompt would
 * be truncated and its tail read as the next line), joins indented lines onto
 * the previous value, strips "; comments" from values and gives handlers no
 * line numbers. (Its run-time switches for these are process-wide and not in
 * upstream inih, so they are left alone.) So the reader reads whole lines
 * itself, counts them, drops the BOM, CR and surrounding blanks (no line is
 * ever indented, so none is a continuation), and hands inih short lines only:
 *   blank or comment line -> an empty line
 *   [ name ]              -> "[name]", checked here: inih ignores what follows
 *                            the ']' and does not tell the handler of headers
 *   key = value           -> "key=", with the value kept verbatim in lh__ini
 * The handler for a line runs before the next read, so it can use the line
 * number and value that the reader kept. Lines inih would take differently
 * from the format in docs/config.md are reported by the reader. Parsing stops
 * at the first error: the reader then returns NULL. */

typedef struct lh__ini {
    lh_settings *s;
    const char *path;    /* owned by s->files */
    size_t load;         /* this load's number */
    FILE *f;
    char *buf;           /* the current line, as read */
    size_t cap;
    int line;            /* its number, 1-based */
    char where[LH_ERROR_MAX / 2]; /* "path:line" */
    const char *section; /* the schema's spelling; NULL before the first header */
    const char *value;   /* of the current key line, trimmed, in buf */
    lh_error *err;
    lh_status st;        /* the first error */
} lh__ini;

/* Apply "key = value" from the current line in section (NULL: none yet). */
static lh_status ini_pair(lh__ini *ini, const char *section, const char *key, const char *value) {
    lh_error *err = ini->err;
    const char *where = ini->where;
    char c[CLIP_SIZE], why[LH_ERROR_MAX / 2];
    if (!*key) return lh_error_set(err, LH_ERR_CONFIG, "%s: missing key before '='", where);
    if (!section) {
        const char *sec = section_of(key);
        if (sec)
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: key '%s' comes before any [section]; did you mean to put "
                                "it under [%s]?", where, clip(c, key), sec);
        return lh_error_set(err, LH_ERR_CONFIG, "%s: key '%s' comes before any [section]",
                            where, clip(c, key));
    }
    if (is_open_section(ini->s, section)) {
        for (size_t i = 0; i < ini->s->n_open; i++) {
            lh__open *o = &ini->s->open[i];
            if (o->section == section && !strcmp(o->key, key) && o->load == ini->load)
                return lh_error_set(err, LH_ERR_CONFIG,
                                    "%s: duplicate key '%s' in [%s] (first set on line %d)", where,
                                    key, section, o->view.line);
        }
        lh_status st = open_set(ini->s, section, key, value, err, where);
        if (st) return st;
        for (size_t i = 0; i < ini->s->n_open; i++) {
            lh__open *o = &ini->s->open[i];
            if (o->section == section && !strcmp(o->key, key)) {
                o->view.origin = LH_ORIGIN_FILE;
                o->view.file = ini->path;
                o->view.line = ini->line;
                o->load = ini->load;
            }
        }
        return LH_OK;
    }
    lh__entry *e = entry_find(ini->s, section, key);
    if (!e) return unknown_key(err, where, section, key);
    if (e->load == ini->load)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: duplicate key '%s' in [%s] (first set on line %d)", where, key,
                            section, e->view.line);
    lh_status st = entry_set(e, value, why, sizeof why);
    if (st) return lh_error_set(err, st, "%s: %s.%s: %s", where, section, key, why);
    e->view.origin = LH_ORIGIN_FILE;
    e->view.file = ini->path;
    e->view.line = ini->line;
    e->load = ini->load;
    return LH_OK;
}

/* inih's handler for a key line: section is "" or what ini_read made of the
 * last header, value is "" (the real one is in ini->value). 0 on error. */
static int ini_on_pair(void *user, const char *section, const char *name, const char *value) {
    lh__ini *ini = user;
    (void)value;
    if (!name) return 1; /* a header, in builds that report them; ini_read checked it */
    ini->st = ini_pair(ini, find_section(ini->s, section), name, ini->value);
    return ini->st == LH_OK;
}

/* Check the header p ("[...]", trimmed) and make it the current section. */
static lh_status ini_header(lh__ini *ini, char *p) {
    char c[CLIP_SIZE];
    size_t n = strlen(p);
    if (p[n - 1] != ']')
        return lh_error_set(ini->err, LH_ERR_CONFIG, "%s: section header '%s' has no closing ']'",
                            ini->where, clip(c, p));
    p[n - 1] = '\0';
    char *name = trim(p + 1);
    if (!*name)
        return lh_error_set(ini->err, LH_ERR_CONFIG, "%s: empty section name []", ini->where);
    ini->section = find_section(ini->s, name);
    return ini->section ? LH_OK : unknown_section(ini->err, ini->where, name);
}

/* inih's reader (fgets-like): read the next line of the file and put into str
 * (num bytes) the line for inih; see above. NULL at the end or on an error. */
static char *ini_read(char *str, int num, void *stream) {
    lh__ini *ini = stream;
    if (ini->st) return NULL;
    errno = 0;
    ssize_t len = getline(&ini->buf, &ini->cap, ini->f);
    if (len < 0) {
        if (errno || ferror(ini->f)) /* not the end of the file */
            ini->st = lh_error_set(ini->err, LH_ERR_IO, "cannot read config file '%s': %s",
                                   ini->path, strerror(errno ? errno : EIO));
        return NULL;
    }
    char *p = ini->buf, c[CLIP_SIZE];
    ini->line++;
    snprintf(ini->where, sizeof ini->where, "%s:%d", ini->path, ini->line);
    if (strlen(p) != (size_t)len) {
        ini->st = lh_error_set(ini->err, LH_ERR_CONFIG, "%s: line contains a NUL byte", ini->where);
        return NULL;
    }
    if (ini->line == 1 && !strncmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* UTF-8 byte-order mark */
    p = trim(p);

    int n;
    if (!*p || *p == ';' || *p == '#') {
        n = snprintf(str, (size_t)num, "\n");
    } else if (*p == '[') {
        ini->st = ini_header(ini, p);
        n = snprintf(str, (size_t)num, "[%s]\n", ini->section ? ini->section : "");
    } else {
        char *eq = strchr(p, '=');
        if (!eq) {
            /* inih would take "key: value" and report other such lines
             * without a message. */
            ini->st = lh_error_set(ini->err, LH_ERR_CONFIG,
                                   "%s: expected 'key = value', '[section]' or a comment, got "
                                   "'%s'", ini->where, clip(c, p));
            return NULL;
        }
        *eq = '\0';
        char *key = trim(p);
        ini->value = trim(eq + 1);
        n = snprintf(str, (size_t)num, "%s=\n", key);
        if (strpbrk(key, ":;#") || n >= num) {
            /* inih would cut this key short (at ':' or ';', or at its line
             * limit). No schema key looks like that, so the key is refused
             * here, with the handler's message. */
            ini->st = ini_pair(ini, ini->section, key, ini->value);
            n = snprintf(str, (size_t)num, "\n");
        }
    }
    if (!ini->st && (n < 0 || n >= num))
        ini->st = lh_error_set(ini->err, LH_ERR_INTERNAL, "%s: line does not fit inih's buffer",
                               ini->where);
    return ini->st ? NULL : str;
}

lh_status lh_settings_load(lh_settings *s, const char *path, lh_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return lh_error_set(err, LH_ERR_IO, "cannot read config file '%s': %s", path,
                            strerror(errno));
    char **files = realloc(s->files, (s->n_files + 1) * sizeof *files);
    char *copy = strdup(path);
    if (files) s->files = files;
    if (!files || !copy) {
        free(copy);
        fclose(f);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    s->files[s->n_files++] = copy;
    lh__ini ini = {.s = s, .path = copy, .load = s->n_files, .f = f, .err = err};

    int rc = ini_parse_stream(ini_read, &ini, ini_on_pair, &ini);
    if (!ini.st && rc == -2)
        ini.st = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    else if (!ini.st && rc) /* a line inih refused that ini_read let through */
        ini.st = lh_error_set(err, LH_ERR_CONFIG, "%s:%d: syntax error", path, rc);
    free(ini.buf);
    fclose(f);
    return ini.st;
}

/* ---- Overrides ---- */

lh_status lh_settings_set_override(lh_settings *s, const char *assignment, lh_error *err) {
    char where[LH_ERROR_MAX / 2], c[CLIP_SIZE], why[LH_ERROR_MAX / 2];
    snprintf(where, sizeof where, "--set %s", clip(c, assignment));
    char *copy = strdup(assignment);
    if (!copy) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", where);
    lh_status st = LH_OK;
    char *eq = strchr(copy, '=');
    if (eq) *eq = '\0';
    char *dot = strchr(copy, '.');
    if (!eq || !dot) {
        const char *sec = eq ? section_of(copy) : NULL;
        if (sec)
            st = lh_error_set(err, LH_ERR_CONFIG,
                              "%s: expected section.key=value; did you mean '%s.%s'?", where, sec,
                              clip(c, copy));
        else
            st = lh_error_set(err, LH_ERR_CONFIG, "%s: expected section.key=value", where);
        free(copy);
        return st;
    }
    *dot = '\0';
    const char *section = find_section(s, copy), *key = dot + 1;
    lh__entry *e = section ? entry_find(s, section, key) : NULL;
    if (section && is_open_section(s, section)) {
        st = *key ? open_set(s, section, key, trim(eq + 1), err, where)
                  : lh_error_set(err, LH_ERR_CONFIG, "%s: missing key after '%s.'", where, section);
        for (size_t i = 0; st == LH_OK && i < s->n_open; i++)
            if (s->open[i].section == section && !strcmp(s->open[i].key, key)) {
                s->open[i].view.origin = LH_ORIGIN_SET;
                s->open[i].view.file = NULL;
                s->open[i].view.line = 0;
            }
    } else if (!section)
        st = unknown_section(err, where, copy);
    else if (!e)
        st = unknown_key(err, where, section, key);
    else if ((st = entry_set(e, trim(eq + 1), why, sizeof why)))
        lh_error_set(err, st, "%s: %s", where, why);
    else {
        e->view.origin = LH_ORIGIN_SET;
        e->view.file = NULL;
        e->view.line = 0;
    }
    free(copy);
    return st;
}

typedef enum lh__arg { LH__ARG_OTHER, LH__ARG_CONFIG, LH__ARG_SET, LH__ARG_END } lh__arg;

/* What argv[i] is; for our options *value is the argument (NULL if missing)
 * and *width the argv slots taken. */
static lh__arg arg_kind(int argc, char **argv, int i, const char **value, int *width) {
    static const char *const NAMES[] = {"--config", "--set"};
    *value = NULL;
    *width = 1;
    if (!strcmp(argv[i], "--")) return LH__ARG_END;
    for (int k = 0; k < 2; k++) {
        size_t n = strlen(NAMES[k]);
        if (strncmp(argv[i], NAMES[k], n)) continue;
        if (argv[i][n] == '=') {
            *value = argv[i] + n + 1;
        } else if (argv[i][n] == '\0') {
            *width = i + 1 < argc ? 2 : 1;
            *value = i + 1 < argc ? argv[i + 1] : NULL;
        } else {
            continue;
        }
        if (*value && !**value) *value = NULL;
        return k == 0 ? LH__ARG_CONFIG : LH__ARG_SET;
    }
    return LH__ARG_OTHER;
}

lh_status lh_settings_apply_args(lh_settings *s, int *argc, char **argv, lh_error *err) {
    const char *config = NULL, *value;
    int i, j, w;
    lh__arg k;
    for (i = 1; i < *argc && (k = arg_kind(*argc, argv, i, &value, &w)) != LH__ARG_END; i += w) {
        if (k != LH__ARG_OTHER && !value)
            return lh_error_set(err, LH_ERR_INVALID, "%s needs %s", argv[i],
                                k == LH__ARG_CONFIG ? "a file name" : "section.key=value");
        if (k == LH__ARG_CONFIG && config)
            return lh_error_set(err, LH_ERR_INVALID, "--config given twice ('%s' and '%s')",
                                config, value);
        if (k == LH__ARG_CONFIG) config = value;
    }
    lh_status st = config ? lh_settings_load(s, config, err) : LH_OK;
    for (i = 1; !st && i < *argc && (k = arg_kind(*argc, argv, i, &value, &w)) != LH__ARG_END;
         i += w)
        if (k == LH__ARG_SET) st = lh_settings_set_override(s, value, err);
    if (st) return st;
    for (i = j = 1; i < *argc; i += w) {
        k = arg_kind(*argc, argv, i, &value, &w);
        if (k == LH__ARG_END) {
            while (i < *argc) argv[j++] = argv[i++];
            break;
        }
        if (k == LH__ARG_OTHER) argv[j++] = argv[i];
    }
    argv[j] = NULL;
    *argc = j;
    return LH_OK;
}

/* ---- Getters ---- */

/* The entry for "section.key"; want < 0 accepts any type. */
static lh_status lookup(const lh__entry **out, const lh_settings *s, const char *name, int want,
                        lh_error *err) {
    const lh_setting_def *d = lh_settings_find(name);
    if (!d) return lh_error_set(err, LH_ERR_CONFIG, "unknown setting '%s'", name);
    if (want >= 0 && d->type != (lh_setting_type)want)
        return lh_error_set(err, LH_ERR_INVALID, "%s is of type %s, not %s", name,
                            TYPE_NAMES[d->type], TYPE_NAMES[want]);
    *out = &s->entries[d - lh_settings_schema(0)];
    return LH_OK;
}

lh_status lh_settings_get_string(const char **out, const lh_settings *s, const char *name,
                                 lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, -1, err);
    if (!st) *out = e->v.text;
    return st;
}

lh_status lh_settings_get_int(int64_t *out, const lh_settings *s, const char *name,
                              lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, LH_SETTING_INT, err);
    if (!st) *out = e->v.i;
    return st;
}

lh_status lh_settings_get_double(double *out, const lh_settings *s, const char *name,
                                 lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, LH_SETTING_DOUBLE, err);
    if (!st) *out = e->v.d;
    return st;
}

lh_status lh_settings_get_bool(int *out, const lh_settings *s, const char *name, lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, LH_SETTING_BOOL, err);
    if (!st) *out = (int)e->v.i;
    return st;
}

lh_status lh_settings_get_enum(int *out, const lh_settings *s, const char *name, lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, LH_SETTING_ENUM, err);
    if (!st) *out = (int)e->v.i;
    return st;
}

lh_status lh_settings_get_list(const char *const **items, size_t *count, const lh_settings *s,
                               const char *name, lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, LH_SETTING_LIST, err);
    if (!st) {
        *items = (const char *const *)e->v.items;
        *count = e->v.n_items;
    }
    return st;
}

/* ---- Origins ---- */

lh_status lh_settings_get(const lh_setting **out, const lh_settings *s, const char *name,
                          lh_error *err) {
    const lh__entry *e = NULL;
    lh_status st = lookup(&e, s, name, -1, err);
    if (!st) *out = &e->view;
    return st;
}

const lh_setting *lh_settings_at(const lh_settings *s, size_t index) {
    return index < lh_settings_schema_size() ? &s->entries[index].view : NULL;
}

char *lh_setting_origin_text(char *out, size_t size, const lh_setting *v) {
    if (v->origin == LH_ORIGIN_FILE)
        snprintf(out, size, "%s:%d", v->file, v->line);
    else
        snprintf(out, size, "%s", v->origin == LH_ORIGIN_SET ? "--set" : "default");
    return out;
}
