/* Safety checker "safety_prompt_filter" (alias prompt_filter): refuses prompts that contain a phrase of a
 * configured list, before any compute. Lists are UTF-8 files, one phrase per
 * line, '#' starts a comment line; each has an action and a name:
 *   [safety_prompt_filter]
 *   lists = examples/safety/en.txt:reject:en, examples/safety/zh.txt:reject:zh
 * Matching is on normalised text (plugins/lib/text_norm.h): case folded,
 * full-width made half-width, white space collapsed, spaces between CJK
 * characters ignored; a phrase ending in '*' also matches longer words.
 * Each list is one concept: score 1 if a phrase of it matched, else 0. */
#include <errno.h>
#include <lorahost/plugin.h>
#include <stdio.h>
#include <string.h>

#include "lib/text_norm.h"

#define MAX_LISTS LH_SAFETY_MAX_SCORES
#define MAX_LIST_BYTES ((size_t)64 << 20)
#define NAME_MAX_LEN 63

typedef struct plist {
    char name[NAME_MAX_LEN + 1];
    int action;            /* lh_safety_action */
    char *text;            /* the file, phrases NUL-terminated in place */
    uint32_t *cps;         /* every phrase's normalised code points, back to back */
    size_t *start, *len;   /* per phrase: offset in cps, count */
    const char **phrase;   /* per phrase: the text as written */
    unsigned char *prefix; /* per phrase: 1 if written with a trailing '*' */
    size_t n;
} plist;

typedef struct filter {
    const lh_host_api *host;
    plist lists[MAX_LISTS];
    const char *concepts[MAX_LISTS];
    int n_lists;
} filter;

static const char *const KEYS[] = {"lists", NULL};
static const char *const ACTIONS[LH_SAFETY_ACTION_COUNT] = {"pass", "blur", "black", "reject"};

/* ---- Loading ---- */

static void list_free(const lh_host_api *h, plist *l) {
    h->free(l->text);
    h->free(l->cps);
    h->free(l->start);
    h->free(l->len);
    h->free(l->phrase);
    h->free(l->prefix);
    memset(l, 0, sizeof *l);
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

/* Read `path` into l (name and action already set). */
static lh_status list_load(const lh_host_api *h, plist *l, const char *path, char *err,
                           size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_size, "list '%s': cannot open %s: %s", l->name, path, strerror(errno));
        return LH_ERR_CONFIG;
    }
    size_t cap = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long end = ftell(f);
        if (end >= 0) cap = (size_t)end;
        rewind(f);
    }
    if (cap > MAX_LIST_BYTES) {
        fclose(f);
        snprintf(err, err_size, "list '%s': %s is larger than 64 MiB", l->name, path);
        return LH_ERR_CONFIG;
    }
    l->text = h->alloc(cap + 1);
    size_t got = l->text ? fread(l->text, 1, cap, f) : 0;
    int bad_read = l->text && (got != cap || ferror(f));
    fclose(f);
    if (!l->text) return LH_ERR_NOMEM;
    if (bad_read) {
        snprintf(err, err_size, "list '%s': cannot read %s", l->name, path);
        return LH_ERR_CONFIG;
    }
    l->text[cap] = '\0';
    if (memchr(l->text, '\0', cap)) {
        snprintf(err, err_size, "list '%s': %s: contains a NUL byte (not a text file)", l->name,
                 path);
        return LH_ERR_CONFIG;
    }
    size_t lines = 1;
    for (size_t i = 0; i < cap; i++) lines += l->text[i] == '\n';
    l->cps = h->calloc(cap + 1, sizeof *l->cps);
    l->start = h->calloc(lines, sizeof *l->start);
    l->len = h->calloc(lines, sizeof *l->len);
    l->phrase = h->calloc(lines, sizeof *l->phrase);
    l->prefix = h->calloc(lines, 1);
    if (!l->cps || !l->start || !l->len || !l->phrase || !l->prefix) return LH_ERR_NOMEM;

    char *p = l->text;
    if (!strncmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* a byte-order mark */
    size_t used = 0;
    for (int line = 1; p && *p; line++) {
        char *nl = strchr(p, '\n'), *next = nl ? nl + 1 : NULL;
        if (nl) *nl = '\0';
        long bad = lh_text_utf8_invalid_at(p, strlen(p));
        if (bad >= 0) {
            snprintf(err, err_size, "list '%s': %s:%d: not valid UTF-8 (byte %ld of the line)",
                     l->name, path, line, bad + 1);
            return LH_ERR_CONFIG;
        }
        while (is_blank(*p)) p++;
        size_t n = strlen(p);
        while (n > 0 && is_blank(p[n - 1])) p[--n] = '\0';
        if (n == 0 || p[0] == '#') {
            p = next;
            continue;
        }
        int prefix = n > 1 && p[n - 1] == '*';
        long m = lh_text_normalise(l->cps + used, p, n - (size_t)prefix, NULL);
        if (m > 0) {
            l->start[l->n] = used;
            l->len[l->n] = (size_t)m;
            l->phrase[l->n] = p;
            l->prefix[l->n++] = (unsigned char)prefix;
            used += (size_t)m;
        }
        p = next;
    }
    if (l->n == 0) {
        snprintf(err, err_size, "list '%s': %s has no phrases", l->name, path);
        return LH_ERR_CONFIG;
    }
    return LH_OK;
}

/* One `lists` entry: PATH:ACTION:NAME, or PATH:ACTION (the name is then the
 * file name without directory and extension). */
static lh_status parse_entry(filter *s, char *entry, char *err, size_t err_size) {
    char *last = strrchr(entry, ':');
    if (!last) {
        snprintf(err, err_size,
                 "lists entry '%s': expected PATH:ACTION:NAME (action pass, blur, black or reject)",
                 entry);
        return LH_ERR_CONFIG;
    }
    const char *action = NULL, *name = NULL;
    *last = '\0';
    for (int a = 0; a < LH_SAFETY_ACTION_COUNT; a++)
        if (!strcmp(last + 1, ACTIONS[a])) action = last + 1;
    if (action) {
        name = NULL;
    } else {
        name = last + 1;
        char *mid = strrchr(entry, ':');
        if (!mid) {
            *last = ':';
            snprintf(err, err_size,
                     "lists entry '%s': expected PATH:ACTION:NAME (action pass, blur, black or "
                     "reject)", entry);
            return LH_ERR_CONFIG;
        }
        *mid = '\0';
        action = mid + 1;
    }
    int act = -1;
    for (int a = 0; a < LH_SAFETY_ACTION_COUNT; a++)
        if (!strcmp(action, ACTIONS[a])) act = a;
    const char *path = entry;
    if (act < 0) {
        snprintf(err, err_size,
                 "lists entry for %s: unknown action '%s' (pass, blur, black or reject)", path,
                 action);
        return LH_ERR_CONFIG;
    }
    if (!*path) {
        snprintf(err, err_size, "lists entry ':%s...': the list file path is empty", action);
        return LH_ERR_CONFIG;
    }
    if (s->n_lists == MAX_LISTS) {
        snprintf(err, err_size, "at most %d lists", MAX_LISTS);
        return LH_ERR_CONFIG;
    }
    plist *l = &s->lists[s->n_lists];
    if (name) {
        snprintf(l->name, sizeof l->name, "%s", name);
    } else {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        const char *dot = strrchr(base, '.');
        size_t n = dot && dot > base ? (size_t)(dot - base) : strlen(base);
        snprintf(l->name, sizeof l->name, "%.*s", (int)(n < NAME_MAX_LEN ? n : NAME_MAX_LEN),
                 base);
    }
    if (!l->name[0] || (name && strlen(name) > NAME_MAX_LEN)) {
        snprintf(err, err_size, "lists entry for %s: the name must be 1..%d bytes", path,
                 NAME_MAX_LEN);
        return LH_ERR_CONFIG;
    }
    for (const char *c = l->name; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == '"' || *c == '\\' || *c == ',' || *c == '\'') {
            snprintf(err, err_size, "lists entry for %s: name '%s' has a character not allowed "
                     "(quotes, backslash, comma, control)", path, l->name);
            return LH_ERR_CONFIG;
        }
    for (int i = 0; i < s->n_lists; i++)
        if (!strcmp(s->lists[i].name, l->name)) {
            snprintf(err, err_size, "two lists named '%s'; give each its own name (PATH:ACTION:NAME)",
                     l->name);
            return LH_ERR_CONFIG;
        }
    l->action = act;
    s->n_lists++; /* freed by destroy even if loading fails */
    return list_load(s->host, l, path, err, err_size);
}

static void destroy(void *p) {
    filter *s = p;
    if (!s) return;
    for (int i = 0; i < s->n_lists; i++) list_free(s->host, &s->lists[i]);
    s->host->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    *out = NULL;
    const char *lists = host->config_string(cfg, "lists");
    if (!lists || !*lists) {
        snprintf(err, err_size,
                 "no phrase lists: set [safety_prompt_filter] lists = PATH:ACTION:NAME, ...");
        return LH_ERR_CONFIG;
    }
    filter *s = host->calloc(1, sizeof *s);
    size_t n = strlen(lists);
    char *copy = host->alloc(n + 1);
    if (!s || !copy) {
        host->free(s);
        host->free(copy);
        return LH_ERR_NOMEM;
    }
    s->host = host;
    memcpy(copy, lists, n + 1);
    lh_status st = LH_OK;
    char *save = NULL;
    for (char *e = strtok_r(copy, ",", &save); st == LH_OK && e; e = strtok_r(NULL, ",", &save)) {
        while (is_blank(*e) || *e == '\n') e++;
        size_t k = strlen(e);
        while (k > 0 && (is_blank(e[k - 1]) || e[k - 1] == '\n')) e[--k] = '\0';
        if (k) st = parse_entry(s, e, err, err_size);
    }
    host->free(copy);
    if (st == LH_OK && s->n_lists == 0) {
        snprintf(err, err_size, "no phrase lists in 'lists'");
        st = LH_ERR_CONFIG;
    }
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    for (int i = 0; i < s->n_lists; i++) s->concepts[i] = s->lists[i].name;
    *out = s;
    return LH_OK;
}

/* ---- Checking ---- */

static lh_status check_prompt(void *p, const char *prompt, lh_safety_result *r, char *err,
                              size_t err_size) {
    filter *s = p;
    memset(r, 0, sizeof *r);
    r->n_scores = s->n_lists;
    for (int i = 0; i < s->n_lists; i++) r->concepts[i] = s->concepts[i];
    size_t n = prompt ? strlen(prompt) : 0;
    uint32_t *text = s->host->calloc(n + 1, sizeof *text);
    if (!text) return LH_ERR_NOMEM;
    size_t bad = 0;
    long m = lh_text_normalise(text, prompt ? prompt : "", n, &bad);
    if (m < 0) {
        s->host->free(text);
        snprintf(err, err_size, "prompt: not valid UTF-8 at byte %zu", bad + 1);
        return LH_ERR_INVALID;
    }
    int worst = -1; /* the list whose match decides the action */
    size_t hit[MAX_LISTS];
    for (int i = 0; i < s->n_lists; i++) {
        const plist *l = &s->lists[i];
        for (size_t k = 0; k < l->n; k++)
            if (lh_text_find(text, (size_t)m, l->cps + l->start[k], l->len[k], l->prefix[k]) >= 0) {
                r->scores[i] = 1.0f;
                hit[i] = k;
                break;
            }
        if (r->scores[i] > 0.0f) {
            r->flagged = 1;
            if (worst < 0 || l->action > s->lists[worst].action) worst = i;
        }
    }
    s->host->free(text);
    if (worst < 0) return LH_OK;
    r->action = s->lists[worst].action;
    /* the deciding list first, then the others that matched */
    int len = snprintf(r->reason, sizeof r->reason, "list '%s' matched '%s'",
                       s->lists[worst].name, s->lists[worst].phrase[hit[worst]]);
    for (int i = 0; i < s->n_lists; i++) {
        if (i == worst || r->scores[i] <= 0.0f) continue;
        if (len < 0 || (size_t)len >= sizeof r->reason) break;
        len += snprintf(r->reason + len, sizeof r->reason - (size_t)len, "; list '%s' matched '%s'",
                        s->lists[i].name, s->lists[i].phrase[hit[i]]);
    }
    /* a cut message must still be UTF-8: drop a partial last character */
    size_t k = strlen(r->reason);
    if (k == sizeof r->reason - 1) {
        size_t j = k;
        while (j > 0 && ((unsigned char)r->reason[j - 1] & 0xC0) == 0x80) j--;
        if (j > 0 && (unsigned char)r->reason[j - 1] >= 0xC0) {
            unsigned char lead = (unsigned char)r->reason[j - 1];
            size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
            if (k - (j - 1) < want) r->reason[j - 1] = '\0';
        }
    }
    return LH_OK;
}

static const char *const ALIASES[] = {"prompt_filter", "phrase_filter", NULL};

static const lh_safety_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SAFETY, lh_safety_desc, "safety_prompt_filter", "1.0.0",
                           "refuses prompts containing a phrase of configured lists (any "
                           "language; case, width and spacing normalised)", ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .check_prompt = check_prompt,
    .check_images = NULL,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
