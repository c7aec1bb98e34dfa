/* The trainer's crash-safe checkpoint store: safetensors files written
 * atomically, a manifest with size and CRC-32 as the commit point, keep the
 * last K, and a load that falls back past corrupt files. Design and file
 * formats: checkpoint.h. */
#include "checkpoint.h"

#include "file_atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define CKPT_PREFIX "checkpoint-"
#define CKPT_SUFFIX ".safetensors"
#define MANIFEST_FORMAT "lorahost-checkpoints"
#define MANIFEST_VERSION 1
#define MANIFEST_MAX_BYTES (16u << 20)

typedef struct ckpt_entry {
    int64_t step;
    uint64_t size;
    uint32_t crc;
} ckpt_entry;

struct lh_ckpt {
    lh_st_file *file;
    int64_t step;
    char *path;
    char *warnings;
};

/* A growable string; on allocation failure it keeps what it had. */
typedef struct ckpt_text {
    char *p;
    size_t len;
} ckpt_text;

static void text_addf(ckpt_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_addf(ckpt_text *t, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t k = strlen(line);
    char *p = realloc(t->p, t->len + k + 2);
    if (!p) return;
    t->p = p;
    if (t->len) t->p[t->len++] = '\n';
    memcpy(t->p + t->len, line, k + 1);
    t->len += k;
}

/* ---- CRC-32 (zlib's) ---- */

static uint32_t g_crc_table[256];
static pthread_once_t g_crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        g_crc_table[i] = c;
    }
}

uint32_t lh_crc32(uint32_t crc, const void *buf, size_t n) {
    pthread_once(&g_crc_once, crc_init);
    const unsigned char *p = buf;
    crc = ~crc;
    while (n--) crc = g_crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* Size and CRC-32 of the file at path. */
static lh_status file_crc(const char *path, uint64_t *size, uint32_t *crc, lh_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lh_error_set(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO,
                            "%s: cannot open: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        close(fd);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    uint32_t c = 0;
    uint64_t total = 0;
    lh_status rc = LH_OK;
    for (;;) {
        ssize_t k = read(fd, buf, CHUNK);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            rc = lh_error_set(err, LH_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
        if (k == 0) break;
        c = lh_crc32(c, buf, (size_t)k);
        total += (uint64_t)k;
    }
    free(buf);
    close(fd);
    *size = total;
    *crc = c;
    return rc;
}

/* ---- Names and paths ---- */

static char *path_join(const char *dir, const char *name) {
    char *p;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static char *ckpt_path(const char *dir, int64_t step) {
    char *p;
    return asprintf(&p, "%s/" CKPT_PREFIX "%08lld" CKPT_SUFFIX, dir, (long long)step) < 0 ? NULL
                                                                                          : p;
}

/* The step of a canonical checkpoint file name, or -1. */
static int64_t name_step(const char *name) {
    size_t np = strlen(CKPT_PREFIX), ns = strlen(CKPT_SUFFIX), n = strlen(name);
    if (n < np + 8 + ns || strncmp(name, CKPT_PREFIX, np) || strcmp(name + n - ns, CKPT_SUFFIX))
        return -1;
    int64_t step = 0;
    for (size_t i = np; i < n - ns; i++) {
        if (name[i] < '0' || name[i] > '9' || step > (INT64_MAX - 9) / 10) return -1;
        step = step * 10 + (name[i] - '0');
    }
    char canon[64];
    snprintf(canon, sizeof canon, CKPT_PREFIX "%08lld" CKPT_SUFFIX, (long long)step);
    return strcmp(canon, name) ? -1 : step;
}

/* A temporary file of ours: "<checkpoint name or manifest>.tmp.<anything>". */
static int is_tmp_name(const char *name) {
    return (!strncmp(name, CKPT_PREFIX, strlen(CKPT_PREFIX)) ||
            !strncmp(name, LH_CKPT_MANIFEST, strlen(LH_CKPT_MANIFEST))) &&
           strstr(name, ".tmp.") != NULL;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Steps of the checkpoint files in dir, ascending (malloc'd). A missing
 * directory is an empty list. */
static lh_status scan_steps(int64_t **out, size_t *n_out, const char *dir, lh_error *err) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return LH_OK;
        return lh_error_set(err, LH_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    }
    int64_t *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = name_step(e->d_name);
        if (s < 0) continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 16;
            int64_t *p = reallocarray(steps, c, sizeof *p);
            if (!p) {
                free(steps);
                closedir(d);
                return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
            }
            steps = p;
            cap = c;
        }
        steps[n++] = s;
    }
    closedir(d);
    if (n) qsort(steps, n, sizeof *steps, cmp_i64);
    *out = steps;
    *n_out = n;
    return LH_OK;
}

/* Remove what a killed writer left: our *.tmp.* files. */
static void remove_tmp_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_tmp_name(e->d_name)) continue;
        char *p = path_join(dir, e->d_name);
        if (p && unlink(p) == 0)
            lh_log(LH_LOG_INFO, "checkpoint", "removed '%s', left by an interrupted write", p);
        free(p);
    }
    closedir(d);
}

/* ---- The manifest ---- */

/* Parse dir's manifest into entries (ascending steps, malloc'd).
 * LH_ERR_NOT_FOUND if there is none, LH_ERR_FORMAT (message in err) if it is
 * not a valid manifest. */
static lh_status manifest_load(ckpt_entry **out, size_t *n_out, const char *dir, lh_error *err) {
    *out = NULL;
    *n_out = 0;
    char *path = path_join(dir, LH_CKPT_MANIFEST);
    if (!path) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        lh_status rc = errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO;
        lh_error_set(err, rc, "%s: %s", path, strerror(errno));
        free(path);
        return rc;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MANIFEST_MAX_BYTES) {
        lh_error_set(err, LH_ERR_FORMAT, "%s: not a regular file of at most %u bytes", path,
                     MANIFEST_MAX_BYTES);
        free(path);
        return LH_ERR_FORMAT;
    }
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    ckpt_entry *es = NULL;
    lh_status rc = LH_OK;
#define BAD(...)                                                                                   \
    do {                                                                                           \
        rc = lh_error_set(err, LH_ERR_FORMAT, __VA_ARGS__);                                        \
        goto done;                                                                                 \
    } while (0)
    if (!root) BAD("%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(root)) BAD("%s: not a JSON object", path);
    json_t *fmt = json_object_get(root, "format"), *ver = json_object_get(root, "version");
    json_t *list = json_object_get(root, "checkpoints");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), MANIFEST_FORMAT))
        BAD("%s: \"format\" is not \"%s\"", path, MANIFEST_FORMAT);
    if (!json_is_integer(ver) || json_integer_value(ver) != MANIFEST_VERSION)
        BAD("%s: \"version\" is not %d", path, MANIFEST_VERSION);
    if (!json_is_array(list)) BAD("%s: \"checkpoints\" is not an array", path);
    size_t n = json_array_size(list);
    es = calloc(n ? n : 1, sizeof *es);
    if (!es) {
        rc = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(list, i);
        json_t *file = json_object_get(e, "file"), *step = json_object_get(e, "step");
        json_t *size = json_object_get(e, "size"), *crc = json_object_get(e, "crc32");
        if (!json_is_object(e) || !json_is_string(file) || !json_is_integer(step) ||
            !json_is_integer(size) || !json_is_string(crc))
            BAD("%s: checkpoints[%zu] needs \"file\", \"step\", \"size\" and \"crc32\"", path, i);
        int64_t s = name_step(json_string_value(file));
        if (s < 0 || s != json_integer_value(step))
            BAD("%s: checkpoints[%zu]: file '%s' is not the name for step %lld", path, i,
                json_string_value(file), (long long)json_integer_value(step));
        if (i > 0 && s <= es[i - 1].step)
            BAD("%s: checkpoints[%zu]: step %lld does not follow step %lld", path, i, (long long)s,
                (long long)es[i - 1].step);
        if (json_integer_value(size) < 0)
            BAD("%s: checkpoints[%zu]: negative size", path, i);
        const char *h = json_string_value(crc);
        char *end;
        unsigned long v = strtoul(h, &end, 16);
        if (strlen(h) != 8 || *end || strspn(h, "0123456789abcdef") != 8)
            BAD("%s: checkpoints[%zu]: crc32 '%s' is not 8 lower-case hex digits", path, i, h);
        es[i] = (ckpt_entry){s, (uint64_t)json_integer_value(size), (uint32_t)v};
    }
#undef BAD
    *out = es;
    *n_out = n;
    es = NULL;
done:
    free(es);
    json_decref(root);
    free(path);
    return rc;
}

static lh_status manifest_write(const char *dir, const ckpt_entry *es, size_t n, lh_error *err) {
    json_t *root = json_object(), *list = json_array();
    char *text = NULL;
    lh_status rc = LH_OK;
    int bad = !root || !list;
    if (!bad) {
        bad |= json_object_set_new(root, "format", json_string(MANIFEST_FORMAT));
        bad |= json_object_set_new(root, "version", json_integer(MANIFEST_VERSION));
        bad |= json_object_set(root, "checkpoints", list);
    }
    for (size_t i = 0; i < n && !bad; i++) {
        char name[64], crc[16];
        snprintf(name, sizeof name, CKPT_PREFIX "%08lld" CKPT_SUFFIX, (long long)es[i].step);
        snprintf(crc, sizeof crc, "%08" PRIx32, es[i].crc);
        json_t *e = json_object();
        bad |= !e;
        if (e) {
            bad |= json_object_set_new(e, "file", json_string(name));
            bad |= json_object_set_new(e, "step", json_integer(es[i].step));
            bad |= json_object_set_new(e, "size", json_integer((json_int_t)es[i].size));
            bad |= json_object_set_new(e, "crc32", json_string(crc));
            bad |= json_array_append_new(list, e);
        }
    }
    if (!bad) bad = !(text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER));
    if (bad) rc = lh_error_set(err, LH_ERR_NOMEM, "%s/%s: out of memory", dir, LH_CKPT_MANIFEST);
    else {
        size_t len = strlen(text);
        char *t = realloc(text, len + 2);
        if (t) {
            text = t;
            text[len++] = '\n';
            text[len] = '\0';
        }
        char *path = path_join(dir, LH_CKPT_MANIFEST);
        rc = path ? lh_write_file_atomic(path, text, len, err)
                  : lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
        free(path);
    }
    free(text);
    json_decref(list);
    json_decref(root);
    return rc;
}

/* ---- Validation ---- */

/* Open the checkpoint for `step`; with `want` also check size and CRC. On
 * failure `why` says what is wrong (one line). */
static lh_status validate(lh_st_file **out, const char *path, int64_t step,
                          const ckpt_entry *want, lh_error *why) {
    *out = NULL;
    lh_status rc;
    if (want) {
        uint64_t size;
        uint32_t crc;
        if ((rc = file_crc(path, &size, &crc, why))) return rc;
        if (size != want->size)
            return lh_error_set(why, LH_ERR_FORMAT,
                                "%s: %llu bytes, the manifest says %llu (truncated or replaced)",
                                path, (unsigned long long)size, (unsigned long long)want->size);
        if (crc != want->crc)
            return lh_error_set(why, LH_ERR_FORMAT,
                                "%s: CRC-32 %08" PRIx32 ", the manifest says %08" PRIx32, path,
                                crc, want->crc);
    }
    lh_st_file *f;
    if ((rc = lh_st_open(&f, path, why))) return rc;
    const char *s = lh_st_meta_find(f, LH_CKPT_STEP_KEY);
    char want_s[32];
    snprintf(want_s, sizeof want_s, "%lld", (long long)step);
    if (!s || strcmp(s, want_s)) {
        lh_error_set(why, LH_ERR_FORMAT, "%s: metadata \"%s\" is '%s', expected %s", path,
                     LH_CKPT_STEP_KEY, s ? s : "(missing)", want_s);
        lh_st_close(f); /* s points into f */
        return LH_ERR_FORMAT;
    }
    *out = f;
    return LH_OK;
}

/* ---- Loading ---- */

static int contains(const int64_t *xs, size_t n, int64_t x) {
    for (size_t i = 0; i < n; i++)
        if (xs[i] == x) return 1;
    return 0;
}

static void warn(ckpt_text *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(ckpt_text *w, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    lh_log(LH_LOG_WARN, "checkpoint", "%s", line);
    text_addf(w, "%s", line);
}

lh_status lh_ckpt_open_latest(lh_ckpt **out, const char *dir, lh_error *err) {
    *out = NULL;
    ckpt_text w = {0};
    ckpt_entry *es = NULL;
    size_t n = 0, n_bad = 0, n_scan = 0;
    int64_t *bad = NULL, *scan = NULL;
    lh_st_file *f = NULL;
    char *path = NULL;
    int64_t step = -1;
    lh_error e = {0}, me = {0};
    lh_status mrc = manifest_load(&es, &n, dir, &me), rc = mrc;
    if (mrc == LH_ERR_NOMEM) {
        e = me;
        goto fail_err;
    }
    int manifest_ok = mrc == LH_OK;

    if ((rc = scan_steps(&scan, &n_scan, dir, err))) goto fail;
    if (n && !(bad = calloc(n, sizeof *bad))) goto nomem;
    for (size_t i = n; i-- > 0 && !f;) {
        free(path);
        if (!(path = ckpt_path(dir, es[i].step))) goto nomem;
        if ((rc = validate(&f, path, es[i].step, &es[i], &e)) == LH_OK) step = es[i].step;
        else if (rc == LH_ERR_NOMEM) goto fail_err;
        else {
            bad[n_bad++] = es[i].step;
            warn(&w, "checkpoint %s is unusable (%s)%s", path, e.msg,
                 i > 0 ? "; falling back to the previous one" : "");
        }
    }
    if (!f && n_scan) {
        /* No good manifest entry: parse what is on disk, newest first. */
        if (!manifest_ok && mrc != LH_ERR_NOT_FOUND)
            warn(&w, "manifest unusable (%s); scanning %s for checkpoint files, checked by "
                     "parsing only (no CRC)",
                 me.msg, dir);
        else if (!manifest_ok)
            warn(&w, "no manifest %s/%s; scanning %s for checkpoint files, checked by parsing "
                     "only (no CRC)",
                 dir, LH_CKPT_MANIFEST, dir);
        else if (n_bad < n_scan)
            warn(&w, "no checkpoint listed in %s/%s is usable; scanning %s for other checkpoint "
                     "files, checked by parsing only (no CRC)",
                 dir, LH_CKPT_MANIFEST, dir);
        for (size_t i = n_scan; i-- > 0 && !f;) {
            if (contains(bad, n_bad, scan[i])) continue;
            free(path);
            if (!(path = ckpt_path(dir, scan[i]))) goto nomem;
            rc = validate(&f, path, scan[i], NULL, &e);
            if (rc == LH_OK) step = scan[i];
            else if (rc == LH_ERR_NOMEM) goto fail_err;
            else warn(&w, "checkpoint %s is unusable (%s); trying an older one", path, e.msg);
        }
    } else if (!f && !manifest_ok && mrc != LH_ERR_NOT_FOUND) {
        warn(&w, "manifest unusable (%s) and %s holds no checkpoint files", me.msg, dir);
    }
    if (!f) {
        rc = lh_error_set(err, LH_ERR_NOT_FOUND, "%s: no usable checkpoint%s%s", dir,
                          w.len ? ": " : "", w.len ? w.p : "");
        goto fail;
    }
    lh_ckpt *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->file = f;
    c->step = step;
    c->path = path;
    c->warnings = w.p ? w.p : strdup("");
    if (!c->warnings) {
        free(c);
        goto nomem;
    }
    *out = c;
    free(es);
    free(bad);
    free(scan);
    return LH_OK;
nomem:
    rc = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
    goto fail;
fail_err:
    rc = lh_error_set(err, e.code, "%s", e.msg);
fail:
    lh_st_close(f);
    free(path);
    free(w.p);
    free(es);
    free(bad);
    free(scan);
    return rc;
}

void lh_ckpt_close(lh_ckpt *c) {
    if (!c) return;
    lh_st_close(c->file);
    free(c->path);
    free(c->warnings);
    free(c);
}

int64_t lh_ckpt_step(const lh_ckpt *c) { return c->step; }
const char *lh_ckpt_path(const lh_ckpt *c) { return c->path; }
const char *lh_ckpt_warnings(const lh_ckpt *c) { return c->warnings; }
const lh_st_file *lh_ckpt_file(const lh_ckpt *c) { return c->file; }

const char *lh_ckpt_meta_find(const lh_ckpt *c, const char *key) {
    return lh_st_meta_find(c->file, key);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

lh_status lh_ckpt_read(void *dst, const lh_ckpt *c, const char *name, lh_dtype dtype, int ndim,
                       const int64_t *shape, lh_error *err) {
    const lh_st_tensor *t = lh_st_find(c->file, name);
    if (!t)
        return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: no tensor '%s'", c->path, name);
    int same = t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[256], want[256];
        shape_str(got, sizeof got, t->ndim, t->shape);
        shape_str(want, sizeof want, ndim, shape);
        return lh_error_set(err, LH_ERR_SHAPE, "%s: tensor '%s' is %s %s, expected %s %s",
                            c->path, name, lh_dtype_name(t->dtype), got, lh_dtype_name(dtype),
                            want);
    }
    if (t->end > t->begin) memcpy(dst, t->data, (size_t)(t->end - t->begin));
    return LH_OK;
}

/* ---- Saving ---- */

/* The entries the store holds now: the manifest's, or, if it is missing or
 * corrupt, every checkpoint file that parses (size and CRC taken now). */
static lh_status current_entries(ckpt_entry **out, size_t *n_out, const char *dir, lh_error *err) {
    lh_error e = {0};
    lh_status rc = manifest_load(out, n_out, dir, &e);
    if (rc == LH_ERR_NOMEM) return lh_error_set(err, rc, "%s", e.msg);
    if (rc == LH_OK) {
        /* Drop entries whose file is gone or has the wrong size (a stat
         * each; CRCs are checked when loading). */
        size_t k = 0;
        for (size_t i = 0; i < *n_out; i++) {
            char *path = ckpt_path(dir, (*out)[i].step);
            struct stat st;
            const char *why = NULL;
            if (path && stat(path, &st) != 0) why = strerror(errno);
            else if (path && (uint64_t)st.st_size != (*out)[i].size) why = "wrong size";
            if (why)
                lh_log(LH_LOG_WARN, "checkpoint", "dropping %s from the manifest: %s", path, why);
            else
                (*out)[k++] = (*out)[i];
            free(path);
        }
        *n_out = k;
        return LH_OK;
    }
    int64_t *steps;
    size_t n;
    if ((rc = scan_steps(&steps, &n, dir, err))) return rc;
    if (n == 0) {
        free(steps);
        return LH_OK;
    }
    lh_log(LH_LOG_WARN, "checkpoint", "%s; rebuilding it from the checkpoint files in %s",
           e.msg, dir);
    ckpt_entry *es = calloc(n, sizeof *es);
    size_t k = 0;
    if (!es) {
        free(steps);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
    }
    for (size_t i = 0; i < n; i++) {
        char *path = ckpt_path(dir, steps[i]);
        lh_st_file *f = NULL;
        if (path && validate(&f, path, steps[i], NULL, &e) == LH_OK &&
            file_crc(path, &es[k].size, &es[k].crc, &e) == LH_OK) {
            es[k++].step = steps[i];
        } else {
            lh_log(LH_LOG_WARN, "checkpoint", "leaving out %s: %s", path ? path : dir, e.msg);
        }
        lh_st_close(f);
        free(path);
    }
    free(steps);
    *out = es;
    *n_out = k;
    return LH_OK;
}

/* Delete checkpoint files in dir that es does not list. */
static void remove_unlisted(const char *dir, const ckpt_entry *es, size_t n) {
    int64_t *steps;
    size_t n_steps;
    if (scan_steps(&steps, &n_steps, dir, NULL)) return;
    for (size_t i = 0; i < n_steps; i++) {
        int listed = 0;
        for (size_t j = 0; j < n && !listed; j++) listed = es[j].step == steps[i];
        if (listed) continue;
        char *path = ckpt_path(dir, steps[i]);
        if (path && unlink(path) != 0 && errno != ENOENT)
            lh_log(LH_LOG_WARN, "checkpoint", "%s: cannot remove: %s", path, strerror(errno));
        free(path);
    }
    free(steps);
}

lh_status lh_ckpt_save(const char *dir, int64_t step, int keep_last,
                       const lh_ckpt_tensor *tensors, size_t n_tensors,
                       const lh_ckpt_meta *meta, size_t n_meta, lh_error *err) {
    if (step < 0 || keep_last < 1)
        return lh_error_set(err, LH_ERR_INVALID, "%s: checkpoint step %lld / keep_last %d: need "
                            "step >= 0 and keep_last >= 1", dir, (long long)step, keep_last);
    for (size_t i = 0; i < n_meta; i++)
        if (meta[i].key && !strcmp(meta[i].key, LH_CKPT_STEP_KEY))
            return lh_error_set(err, LH_ERR_INVALID,
                                "%s: checkpoint metadata key '%s' is reserved", dir,
                                LH_CKPT_STEP_KEY);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return lh_error_set(err, LH_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    remove_tmp_files(dir);

    ckpt_entry *es = NULL;
    size_t n = 0;
    lh_st_writer *wr = NULL;
    char *path = NULL;
    lh_status rc = current_entries(&es, &n, dir, err);
    if (rc) return rc;
    /* A run resumed from an earlier checkpoint: its later ones are void. */
    size_t keep = 0;
    while (keep < n && es[keep].step < step) keep++;
    if (keep < n) {
        n = keep;
        if ((rc = manifest_write(dir, es, n, err))) goto done;
    }

    if (!(path = ckpt_path(dir, step))) {
        rc = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    char step_s[32];
    snprintf(step_s, sizeof step_s, "%lld", (long long)step);
    if ((rc = lh_st_writer_create(&wr, err)) ||
        (rc = lh_st_writer_add_meta(wr, LH_CKPT_STEP_KEY, step_s, err)))
        goto done;
    for (size_t i = 0; i < n_meta; i++)
        if ((rc = lh_st_writer_add_meta(wr, meta[i].key, meta[i].value, err))) goto prefix;
    for (size_t i = 0; i < n_tensors; i++) {
        const lh_ckpt_tensor *t = &tensors[i];
        if ((rc = lh_st_writer_add(wr, t->name, t->dtype, t->ndim, t->shape, t->data, err)))
            goto prefix;
    }
    if ((rc = lh_st_save(wr, path, err))) goto done;

    ckpt_entry *grown = reallocarray(es, n + 1, sizeof *es);
    if (!grown) {
        rc = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    es = grown;
    es[n].step = step;
    if ((rc = file_crc(path, &es[n].size, &es[n].crc, err))) goto done;
    n++;
    size_t first = n > (size_t)keep_last ? n - (size_t)keep_last : 0;
    if ((rc = manifest_write(dir, es + first, n - first, err))) goto done;
    remove_unlisted(dir, es + first, n - first);
    goto done;
prefix:
    lh_error_prefix(err, "%s", path);
done:
    lh_st_writer_destroy(wr);
    free(path);
    free(es);
    return rc;
}
