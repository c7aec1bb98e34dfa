/* Adapter names in prompts and on the command line (see adapter_prompt.h). */
#include "adapter_prompt.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const TAGS[] = {"<lora:", "<lyco:"};

static int parse_scale(double *out, const char *s, size_t len) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    double v = strtod(buf, &end);
    if (*end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* One tag argument: a number (positional) or te=X / unet=X. */
static lh_status parse_arg(lh_adapter_ref *r, int *positional, const char *arg, size_t len,
                           const char *body, size_t body_len, lh_error *err) {
    double v;
    const char *eq = memchr(arg, '=', len);
    size_t key_len = eq ? (size_t)(eq - arg) : 0;
    const char *num = eq ? eq + 1 : arg;
    size_t num_len = len - (eq ? key_len + 1 : 0);
    if (parse_scale(&v, num, num_len))
        return lh_error_set(err, LH_ERR_INVALID,
                            "prompt: adapter tag <lora:%.*s>: '%.*s' is not a multiplier",
                            (int)body_len, body, (int)num_len, num);
    if (!eq) {
        if (*positional == 2)
            return lh_error_set(err, LH_ERR_INVALID,
                                "prompt: adapter tag <lora:%.*s>: at most two multipliers "
                                "(text encoder, U-Net)", (int)body_len, body);
        if (*positional == 0) r->te = v;
        r->unet = v;
        ++*positional;
    } else if (key_len == 2 && !memcmp(arg, "te", 2)) {
        r->te = v;
    } else if (key_len == 4 && !memcmp(arg, "unet", 4)) {
        r->unet = v;
    } else {
        return lh_error_set(err, LH_ERR_INVALID,
                            "prompt: adapter tag <lora:%.*s>: '%.*s' is not supported (te=, "
                            "unet= or a number)", (int)body_len, body, (int)key_len, arg);
    }
    return LH_OK;
}

/* One tag body "NAME[:ARG[:ARG]]" (between "<lora:" and ">"). */
static lh_status parse_tag(lh_adapter_ref *r, const char *body, size_t len, lh_error *err) {
    const char *colon = memchr(body, ':', len);
    size_t name_len = colon ? (size_t)(colon - body) : len;
    r->te = r->unet = 1.0;
    if (name_len == 0 || name_len >= sizeof r->name)
        return lh_error_set(err, LH_ERR_INVALID, "prompt: adapter tag <lora:%.*s> needs a name "
                            "of 1..%d bytes", (int)len, body, LH_ADAPTER_NAME_MAX - 1);
    memcpy(r->name, body, name_len);
    r->name[name_len] = '\0';
    int positional = 0;
    for (const char *a = colon; a; ) {
        const char *start = a + 1, *end = body + len;
        const char *next = memchr(start, ':', (size_t)(end - start));
        lh_status st = parse_arg(r, &positional, start, (size_t)((next ? next : end) - start),
                                 body, len, err);
        if (st != LH_OK) return st;
        a = next;
    }
    return LH_OK;
}

static const char *next_tag(const char *s, size_t *tag_len) {
    const char *best = NULL;
    for (size_t i = 0; i < sizeof TAGS / sizeof TAGS[0]; i++) {
        const char *p = strstr(s, TAGS[i]);
        if (p && (!best || p < best)) best = p;
    }
    *tag_len = 6;
    return best;
}

lh_status lh_prompt_adapters(char **clean, lh_adapter_ref **refs, size_t *n, const char *prompt,
                             lh_error *err) {
    *clean = NULL;
    *refs = NULL;
    *n = 0;
    if (!prompt) prompt = "";
    size_t len = strlen(prompt), cap = 0;
    char *out = malloc(len + 1);
    if (!out) return lh_error_set(err, LH_ERR_NOMEM, "out of memory reading the prompt");
    size_t o = 0, tag_len;
    const char *s = prompt, *t;
    lh_status st = LH_OK;
    while ((t = next_tag(s, &tag_len))) {
        const char *end = strchr(t + tag_len, '>');
        if (!end) {
            st = lh_error_set(err, LH_ERR_INVALID, "prompt: adapter tag '%.40s' has no closing '>'", t);
            break;
        }
        memcpy(out + o, s, (size_t)(t - s));
        o += (size_t)(t - s);
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            lh_adapter_ref *r = realloc(*refs, cap * sizeof *r);
            if (!r) {
                st = lh_error_set(err, LH_ERR_NOMEM, "out of memory reading the prompt");
                break;
            }
            *refs = r;
        }
        st = parse_tag(&(*refs)[*n], t + tag_len, (size_t)(end - t - (ptrdiff_t)tag_len), err);
        if (st != LH_OK) break;
        (*n)++;
        s = end + 1;
    }
    if (st != LH_OK) {
        free(out);
        free(*refs);
        *refs = NULL;
        *n = 0;
        return st;
    }
    strcpy(out + o, s);
    *clean = out;
    return LH_OK;
}

lh_status lh_adapter_ref_parse(lh_adapter_ref *out, const char *arg, lh_error *err) {
    double scale = 1.0;
    const char *colon = strrchr(arg, ':');
    size_t len = strlen(arg);
    if (colon && parse_scale(&scale, colon + 1, strlen(colon + 1)) == 0)
        len = (size_t)(colon - arg);
    else
        scale = 1.0;
    out->te = out->unet = scale;
    if (len == 0 || len >= sizeof out->name)
        return lh_error_set(err, LH_ERR_INVALID, "--lora '%s': needs PATH[:SCALE] with a path of "
                            "1..%d bytes", arg, LH_ADAPTER_NAME_MAX - 1);
    memcpy(out->name, arg, len);
    out->name[len] = '\0';
    return LH_OK;
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

#define SEARCH_DEPTH 8

/* Files called name or name.safetensors under dir's subdirectories (depth
 * first, at most SEARCH_DEPTH deep): the first goes to out, *n counts them,
 * the second to other. */
static void search(const char *dir, const char *name, int depth, char *out, size_t size,
                   char *other, size_t other_size, int *n) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) continue;
        struct stat sb;
        if (stat(path, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) {
            if (depth < SEARCH_DEPTH) search(path, name, depth + 1, out, size, other, other_size, n);
            continue;
        }
        size_t len = strlen(name);
        int hit = !strcmp(e->d_name, name) ||
                  (!strncmp(e->d_name, name, len) && !strcmp(e->d_name + len, ".safetensors"));
        if (!hit || !S_ISREG(sb.st_mode)) continue;
        snprintf(*n ? other : out, *n ? other_size : size, "%s", path);
        ++*n;
    }
    closedir(d);
}

lh_status lh_adapter_resolve(char *out, size_t size, const char *name, const char *const *dirs,
                             size_t n_dirs, lh_error *err) {
    if (is_file(name)) {
        if ((size_t)snprintf(out, size, "%s", name) >= size)
            return lh_error_set(err, LH_ERR_INVALID, "adapter path too long: %s", name);
        return LH_OK;
    }
    if (!strstr(name, "..")) {
        for (size_t i = 0; i < n_dirs; i++) {
            static const char *const EXT[] = {"", ".safetensors"};
            for (size_t e = 0; e < 2; e++)
                if ((size_t)snprintf(out, size, "%s/%s%s", dirs[i], name, EXT[e]) < size &&
                    is_file(out))
                    return LH_OK;
        }
        /* as A1111: a bare name anywhere below a directory, if only once */
        for (size_t i = 0; !strchr(name, '/') && i < n_dirs; i++) {
            char other[4096] = "";
            int n = 0;
            search(dirs[i], name, 1, out, size, other, sizeof other, &n);
            if (n == 1) return LH_OK;
            if (n > 1)
                return lh_error_set(err, LH_ERR_INVALID,
                                    "adapter '%s' is ambiguous: %d files below %s match, e.g. "
                                    "%s and %s; give a path relative to it",
                                    name, n, dirs[i], out, other);
        }
    }
    char where[512] = "";
    size_t len = 0;
    for (size_t i = 0; i < n_dirs && len < sizeof where; i++)
        len += (size_t)snprintf(where + len, sizeof where - len, "%s%s", i ? ", " : "", dirs[i]);
    out[0] = '\0';
    return lh_error_set(err, LH_ERR_NOT_FOUND,
                        "adapter '%s': no such file%s%s%s", name,
                        n_dirs ? " here or in [adapters] dirs (" : " (no [adapters] dirs configured)",
                        where, n_dirs ? ")" : "");
}
