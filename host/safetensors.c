/* .safetensors reader: maps a file, validates every rule of the format (see
 * docs/formats.md) and hands out zero-copy tensor views and the metadata. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"
#include "lorahost/lorahost.h"

typedef struct lh_st_meta {
    const char *key, *value;
} lh_st_meta;

struct lh_st_file {
    char *name;               /* for messages */
    const unsigned char *buf; /* the whole file image */
    size_t len;
    void *map; /* our mapping when opened from a path, else NULL */
    size_t header_len;
    lh_st_tensor *tensors; /* ascending data offset */
    size_t n_tensors;
    const lh_st_tensor **by_name; /* sorted by name, for lh_st_find */
    lh_st_meta *meta;             /* sorted by key */
    size_t n_meta;
    char *strings; /* one block holding every name, key and value */
};

/* safetensors dtypes that are valid but that lorahost cannot hold. */
static const char *const UNSUPPORTED_DTYPES[] = {
    "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
};

static const char *const TENSOR_FIELDS[] = {"dtype", "shape", "data_offsets"};

/* lh_error_set, but control characters (from names in the file or jansson's
 * excerpt of the header) become '?', so that every message is one line. */
__attribute__((format(printf, 3, 4))) static lh_status fail(lh_error *err, lh_status code,
                                                            const char *fmt, ...) {
    if (!err) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    err->code = code;
    return code;
}

/* ---- Header fields ---- */

/* A shape entry or offset: an integer in 0..2^48. */
static lh_status get_dim(uint64_t *out, const json_t *v, const char *file, const char *tensor,
                         const char *field, size_t i, lh_error *err) {
    if (json_is_real(v))
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': %s[%zu] is %g, not an integer", file,
                    tensor, field, i, json_real_value(v));
    if (!json_is_integer(v))
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': %s[%zu] is not an integer", file, tensor,
                    field, i);
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': %s[%zu] is negative (%lld)", file, tensor,
                    field, i, (long long)x);
    if ((unsigned long long)x > LH_ST_MAX_DIM_VALUE)
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': %s[%zu] is %lld, more than 2^48", file,
                    tensor, field, i, (long long)x);
    *out = (uint64_t)x;
    return LH_OK;
}

static lh_status get_dtype(lh_dtype *out, const json_t *v, const char *file, const char *tensor,
                           lh_error *err) {
    if (!json_is_string(v))
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", file, tensor);
    const char *s = json_string_value(v);
    if (lh_dtype_from_name(out, s) == 0) return LH_OK;
    for (size_t i = 0; i < sizeof UNSUPPORTED_DTYPES / sizeof *UNSUPPORTED_DTYPES; i++)
        if (!strcmp(s, UNSUPPORTED_DTYPES[i]))
            return fail(err, LH_ERR_UNSUPPORTED,
                        "%s: tensor '%s': dtype '%s' is not supported by lorahost", file, tensor,
                        s);
    return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", file, tensor, s);
}

/* Fill t (all but data) from one header entry {dtype, shape, data_offsets}. */
static lh_status parse_entry(lh_st_tensor *t, const char *name, const json_t *entry,
                             const char *file, lh_error *err) {
    lh_status rc;
    if (!json_is_object(entry))
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': entry is not an object", file, name);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)entry, key, v) {
        size_t k = 0;
        while (k < 3 && strcmp(key, TENSOR_FIELDS[k])) k++;
        if (k == 3)
            return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': unknown field '%s'", file, name, key);
    }
    for (size_t k = 0; k < 3; k++)
        if (!json_object_get(entry, TENSOR_FIELDS[k]))
            return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': missing field '%s'", file, name,
                        TENSOR_FIELDS[k]);

    if ((rc = get_dtype(&t->dtype, json_object_get(entry, "dtype"), file, name, err))) return rc;

    const json_t *shape = json_object_get(entry, "shape");
    if (!json_is_array(shape))
        return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': shape is not an array", file, name);
    size_t ndim = json_array_size(shape);
    if (ndim > LH_MAX_DIMS)
        return fail(err, LH_ERR_UNSUPPORTED,
                    "%s: tensor '%s': shape has %zu dimensions, more than the %d lorahost "
                    "supports",
                    file, name, ndim, LH_MAX_DIMS);
    uint64_t numel = 1;
    int overflow = 0;
    t->ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if ((rc = get_dim(&d, json_array_get(shape, i), file, name, "shape", i, err))) return rc;
        t->shape[i] = (int64_t)d;
        overflow |= __builtin_mul_overflow(numel, d, &numel);
    }
    uint64_t nbytes;
    if (overflow || numel > INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)lh_dtype_size(t->dtype), &nbytes))
        return fail(err, LH_ERR_OVERFLOW,
                    "%s: tensor '%s': shape is too large (element count or byte size "
                    "overflows 64 bits)",
                    file, name);
    t->numel = (int64_t)numel;

    const json_t *offs = json_object_get(entry, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return fail(err, LH_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets is not an array of 2 integers", file, name);
    if ((rc = get_dim(&t->begin, json_array_get(offs, 0), file, name, "data_offsets", 0, err)) ||
        (rc = get_dim(&t->end, json_array_get(offs, 1), file, name, "data_offsets", 1, err)))
        return rc;
    if (t->begin > t->end)
        return fail(err, LH_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets [%llu, %llu] begin is after end", file, name,
                    (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end - t->begin != nbytes)
        return fail(err, LH_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s "
                    "with %llu elements needs %llu",
                    file, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)(t->end - t->begin), lh_dtype_name(t->dtype),
                    (unsigned long long)numel, (unsigned long long)nbytes);
    return LH_OK;
}

/* ---- Ordering ---- */

static int cmp_offsets(const void *a, const void *b) {
    const lh_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_names(const void *a, const void *b) {
    return strcmp((*(const lh_st_tensor *const *)a)->name, (*(const lh_st_tensor *const *)b)->name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const lh_st_meta *)a)->key, ((const lh_st_meta *)b)->key);
}

/* The tensors, sorted by offset, must tile [0, data_len) exactly. */
static lh_status check_layout(const lh_st_file *f, size_t data_len, lh_error *err) {
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const lh_st_tensor *t = &f->tensors[i];
        if (t->begin != pos) {
            if (i == 0)
                return fail(err, LH_ERR_FORMAT,
                            "%s: tensor '%s': first tensor starts at byte %llu, not 0", f->name,
                            t->name, (unsigned long long)t->begin);
            const char *prev = f->tensors[i - 1].name;
            if (t->begin > pos)
                return fail(err, LH_ERR_FORMAT,
                            "%s: tensor '%s': gap of %llu bytes after tensor '%s'", f->name,
                            t->name, (unsigned long long)(t->begin - pos), prev);
            return fail(err, LH_ERR_FORMAT, "%s: tensor '%s': overlaps tensor '%s'", f->name,
                        t->name, prev);
        }
        pos = t->end;
    }
    if (pos < data_len)
        return fail(err, LH_ERR_FORMAT,
                    "%s: trailing bytes: data section is %zu bytes but tensors end at %llu",
                    f->name, data_len, (unsigned long long)pos);
    if (pos > data_len)
        return fail(err, LH_ERR_FORMAT,
                    "%s: truncated: data section is %zu bytes but tensors end at %llu", f->name,
                    data_len, (unsigned long long)pos);
    return LH_OK;
}

/* ---- Building the file object ---- */

static char *put_string(char **cursor, const char *s, size_t n) {
    char *p = *cursor;
    memcpy(p, s, n);
    p[n] = '\0';
    *cursor += n + 1;
    return p;
}

/* Count tensors and metadata and size the string block; checks __metadata__. */
static lh_status survey(const json_t *root, size_t *n_tensors, size_t *n_meta, size_t *strbytes,
                        const char *file, lh_error *err) {
    const char *key;
    const json_t *v;
    *n_tensors = *n_meta = *strbytes = 0;
    json_object_foreach((json_t *)root, key, v) {
        if (strcmp(key, "__metadata__")) {
            (*n_tensors)++;
            *strbytes += strlen(key) + 1;
            continue;
        }
        if (!json_is_object(v))
            return fail(err, LH_ERR_FORMAT, "%s: __metadata__ is not an object", file);
        const char *mkey;
        const json_t *mv;
        json_object_foreach((json_t *)v, mkey, mv) {
            if (!json_is_string(mv))
                return fail(err, LH_ERR_FORMAT,
                            "%s: __metadata__ value for key '%s' is not a string", file, mkey);
            (*n_meta)++;
            *strbytes += strlen(mkey) + json_string_length(mv) + 2;
        }
    }
    return LH_OK;
}

static lh_status build(lh_st_file *f, const json_t *root, lh_error *err) {
    size_t n_tensors, n_meta, strbytes;
    lh_status rc = survey(root, &n_tensors, &n_meta, &strbytes, f->name, err);
    if (rc) return rc;
    f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
    f->by_name = calloc(n_tensors ? n_tensors : 1, sizeof *f->by_name);
    f->meta = calloc(n_meta ? n_meta : 1, sizeof *f->meta);
    f->strings = malloc(strbytes ? strbytes : 1);
    if (!f->tensors || !f->by_name || !f->meta || !f->strings)
        return fail(err, LH_ERR_NOMEM, "%s: out of memory for %zu tensors", f->name, n_tensors);

    char *cursor = f->strings;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            const char *mkey;
            const json_t *mv;
            json_object_foreach((json_t *)v, mkey, mv) {
                lh_st_meta *m = &f->meta[f->n_meta++];
                m->key = put_string(&cursor, mkey, strlen(mkey));
                m->value = put_string(&cursor, json_string_value(mv), json_string_length(mv));
            }
            continue;
        }
        lh_st_tensor *t = &f->tensors[f->n_tensors++];
        t->name = put_string(&cursor, key, strlen(key));
        if ((rc = parse_entry(t, t->name, v, f->name, err))) return rc;
    }

    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_offsets);
    qsort(f->meta, f->n_meta, sizeof *f->meta, cmp_meta);
    size_t data_start = 8 + f->header_len;
    if ((rc = check_layout(f, f->len - data_start, err))) return rc;
    for (size_t i = 0; i < f->n_tensors; i++) {
        f->tensors[i].data = f->buf + data_start + f->tensors[i].begin;
        f->by_name[i] = &f->tensors[i];
    }
    qsort(f->by_name, f->n_tensors, sizeof *f->by_name, cmp_names);
    return LH_OK;
}

/* The JSON header: UTF-8, valid JSON, an object, unique keys. */
static lh_status load_header(json_t **out, const lh_st_file *f, lh_error *err) {
    const char *h = (const char *)f->buf + 8;
    size_t bad = lh__utf8_check(h, f->header_len);
    if (bad != f->header_len)
        return fail(err, LH_ERR_FORMAT,
                    "%s: header is not valid UTF-8 (bad byte 0x%02x at file offset %zu)", f->name,
                    (unsigned char)h[bad], 8 + bad);
    json_error_t je;
    json_t *root = json_loadb(h, f->header_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_duplicate_key)
            return fail(err, LH_ERR_FORMAT,
                        "%s: header has a duplicate key (tensor names and metadata keys must "
                        "be unique): %s",
                        f->name, je.text);
        return fail(err, LH_ERR_FORMAT,
                    "%s: header is not valid JSON: %s at line %d column %d (file "
                    "offset %zu)",
                    f->name, je.text, je.line, je.column, 8 + (size_t)je.position);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, LH_ERR_FORMAT, "%s: header is not a JSON object", f->name);
    }
    *out = root;
    return LH_OK;
}

/* Check the 8-byte length prefix and store the header length. */
static lh_status check_prefix(lh_st_file *f, lh_error *err) {
    if (f->len < 8)
        return fail(err, LH_ERR_FORMAT,
                    "%s: file is %zu bytes, shorter than the 8-byte header length", f->name,
                    f->len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->buf[i];
    if (n == 0) return fail(err, LH_ERR_FORMAT, "%s: header length is 0", f->name);
    if (n > LH_ST_MAX_HEADER)
        return fail(err, LH_ERR_FORMAT, "%s: header length %llu is over the %u-byte limit", f->name,
                    (unsigned long long)n, LH_ST_MAX_HEADER);
    if (n > f->len - 8)
        return fail(err, LH_ERR_FORMAT,
                    "%s: header length %llu runs past the end of the file (%zu bytes)", f->name,
                    (unsigned long long)n, f->len);
    f->header_len = (size_t)n;
    return LH_OK;
}

/* ---- Public API ---- */

void lh_st_close(lh_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->len);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f->name);
    free(f);
}

/* Parse into a new file object that already owns `map` (may be NULL). */
static lh_status parse(lh_st_file **out, const void *buf, size_t len, void *map, const char *name,
                       lh_error *err) {
    *out = NULL;
    lh_st_file *f = calloc(1, sizeof *f);
    if (f) f->name = strdup(name ? name : "<memory>");
    if (!f || !f->name) {
        free(f);
        if (map) munmap(map, len);
        return fail(err, LH_ERR_NOMEM, "%s: out of memory", name ? name : "<memory>");
    }
    f->buf = buf;
    f->len = len;
    f->map = map;
    json_t *root = NULL;
    lh_status rc = check_prefix(f, err);
    if (!rc) rc = load_header(&root, f, err);
    if (!rc) rc = build(f, root, err);
    json_decref(root);
    if (rc) {
        lh_st_close(f);
        return rc;
    }
    *out = f;
    return LH_OK;
}

lh_status lh_st_parse(lh_st_file **out, const void *buf, size_t len, const char *name,
                      lh_error *err) {
    return parse(out, buf, len, NULL, name, err);
}

lh_status lh_st_open(lh_st_file **out, const char *path, lh_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO, "%s: cannot open: %s",
                    path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, LH_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, LH_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return fail(err, LH_ERR_OVERFLOW, "%s: file too large to map", path);
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return fail(err, LH_ERR_IO, "%s: cannot map %zu bytes: %s", path, len, strerror(e));
        }
    }
    close(fd);
    return parse(out, map ? map : "", len, map, path, err);
}

const char *lh_st_name(const lh_st_file *f) { return f->name; }
size_t lh_st_size(const lh_st_file *f) { return f->len; }
size_t lh_st_header_size(const lh_st_file *f) { return f->header_len; }
size_t lh_st_count(const lh_st_file *f) { return f->n_tensors; }

const lh_st_tensor *lh_st_get(const lh_st_file *f, size_t index) {
    return index < f->n_tensors ? &f->tensors[index] : NULL;
}

const lh_st_tensor *lh_st_find(const lh_st_file *f, const char *name) {
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->by_name[mid]->name);
        if (c == 0) return f->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t lh_st_meta_count(const lh_st_file *f) { return f->n_meta; }

const char *lh_st_meta_key(const lh_st_file *f, size_t index) {
    return index < f->n_meta ? f->meta[index].key : NULL;
}

const char *lh_st_meta_value(const lh_st_file *f, size_t index) {
    return index < f->n_meta ? f->meta[index].value : NULL;
}

const char *lh_st_meta_find(const lh_st_file *f, const char *key) {
    lh_st_meta probe = {key, NULL};
    const lh_st_meta *m = bsearch(&probe, f->meta, f->n_meta, sizeof *f->meta, cmp_meta);
    return m ? m->value : NULL;
}

lh_status lh_st_read_f32(float *dst, size_t n, const lh_st_file *f, const char *name,
                         lh_error *err) {
    const lh_st_tensor *t = lh_st_find(f, name);
    if (!t) return fail(err, LH_ERR_NOT_FOUND, "%s: no tensor '%s'", f->name, name);
    if ((uint64_t)t->numel != n)
        return fail(err, LH_ERR_SHAPE, "%s: tensor '%s' has %lld elements, the buffer holds %zu",
                    f->name, name, (long long)t->numel, n);
    return lh_convert(dst, LH_DTYPE_F32, t->data, t->dtype, n);
}
