/* .safetensors writer: collects tensors and metadata, then writes the file
 * atomically with the exact bytes Python's safetensors produces. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "error.h"

typedef struct lh_st_wtensor {
    char *name;
    lh_dtype dtype;
    int ndim;
    int64_t shape[LH_MAX_DIMS];
    size_t nbytes;
    const void *data;
} lh_st_wtensor;

typedef struct lh_st_wmeta {
    char *key, *value;
} lh_st_wmeta;

struct lh_st_writer {
    lh_st_wtensor *tensors;
    size_t n_tensors, cap_tensors;
    lh_st_wmeta *meta;
    size_t n_meta, cap_meta;
};

/* Position of each dtype in the Rust crate's Dtype enum; files list the
 * highest first. */
static const int SAFETENSORS_ORDER[LH_DTYPE_COUNT] = {
    [LH_DTYPE_BOOL] = 0,    [LH_DTYPE_U8] = 1,   [LH_DTYPE_I8] = 2,   [LH_DTYPE_F8_E5M2] = 3,
    [LH_DTYPE_F8_E4M3] = 4, [LH_DTYPE_I16] = 5,  [LH_DTYPE_U16] = 6,  [LH_DTYPE_F16] = 7,
    [LH_DTYPE_BF16] = 8,    [LH_DTYPE_I32] = 9,  [LH_DTYPE_U32] = 10, [LH_DTYPE_F32] = 11,
    [LH_DTYPE_F64] = 12,    [LH_DTYPE_I64] = 13, [LH_DTYPE_U64] = 14,
};

/* ---- Building the list ---- */

lh_status lh_st_writer_create(lh_st_writer **out, lh_error *err) {
    *out = calloc(1, sizeof **out);
    return *out ? LH_OK : lh_error_set(err, LH_ERR_NOMEM, "safetensors writer: out of memory");
}

void lh_st_writer_destroy(lh_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->tensors);
    free(w->meta);
    free(w);
}

/* Make room for one more element in a growable array. */
static int grow(void **items, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 0;
    size_t new_cap = *cap ? *cap * 2 : 16;
    void *p = reallocarray(*items, new_cap, size);
    if (!p) return -1;
    *items = p;
    *cap = new_cap;
    return 0;
}

static lh_status check_text(const char *what, const char *s, lh_error *err) {
    size_t n = strlen(s);
    if (lh__utf8_check(s, n) != n)
        return lh_error_set(err, LH_ERR_INVALID, "safetensors writer: %s is not valid UTF-8", what);
    return LH_OK;
}

lh_status lh_st_writer_add(lh_st_writer *w, const char *name, lh_dtype dtype, int ndim,
                           const int64_t *shape, const void *data, lh_error *err) {
    lh_status rc;
    if (!name || !*name || !strcmp(name, "__metadata__"))
        return lh_error_set(err, LH_ERR_INVALID, "safetensors writer: invalid tensor name '%s'",
                            name ? name : "(null)");
    if ((rc = check_text("tensor name", name, err))) return rc;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return lh_error_set(err, LH_ERR_INVALID,
                                "safetensors writer: duplicate tensor name '%s'", name);
    if ((unsigned)dtype >= LH_DTYPE_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "safetensors writer: tensor '%s': bad dtype %d",
                            name, (int)dtype);
    if (ndim < 0 || ndim > LH_MAX_DIMS || (ndim > 0 && !shape))
        return lh_error_set(err, LH_ERR_INVALID,
                            "safetensors writer: tensor '%s': ndim %d is not in 0..%d", name, ndim,
                            LH_MAX_DIMS);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > LH_ST_MAX_DIM_VALUE)
            return lh_error_set(err, LH_ERR_INVALID,
                                "safetensors writer: tensor '%s': shape[%d] = %lld is not in "
                                "0..2^48",
                                name, i, (long long)shape[i]);
        if (lh_mul_size(numel, (size_t)shape[i], &numel))
            return lh_error_set(err, LH_ERR_OVERFLOW,
                                "safetensors writer: tensor '%s': element count overflows", name);
    }
    size_t nbytes;
    if (lh_mul_size(numel, lh_dtype_size(dtype), &nbytes))
        return lh_error_set(err, LH_ERR_OVERFLOW,
                            "safetensors writer: tensor '%s': byte size overflows", name);
    if (nbytes > 0 && !data)
        return lh_error_set(err, LH_ERR_INVALID, "safetensors writer: tensor '%s': data is NULL",
                            name);
    if (grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors))
        return lh_error_set(err, LH_ERR_NOMEM, "safetensors writer: out of memory");
    lh_st_wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return lh_error_set(err, LH_ERR_NOMEM, "safetensors writer: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nbytes;
    t->data = data;
    w->n_tensors++;
    return LH_OK;
}

lh_status lh_st_writer_add_meta(lh_st_writer *w, const char *key, const char *value,
                                lh_error *err) {
    lh_status rc;
    if (!key || !value)
        return lh_error_set(err, LH_ERR_INVALID, "safetensors writer: NULL metadata key or value");
    if ((rc = check_text("metadata key", key, err)) ||
        (rc = check_text("metadata value", value, err)))
        return rc;
    for (size_t i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[i].key, key))
            return lh_error_set(err, LH_ERR_INVALID,
                                "safetensors writer: duplicate metadata key '%s'", key);
    if (grow((void **)&w->meta, &w->cap_meta, w->n_meta, sizeof *w->meta))
        return lh_error_set(err, LH_ERR_NOMEM, "safetensors writer: out of memory");
    lh_st_wmeta *m = &w->meta[w->n_meta];
    m->key = strdup(key);
    m->value = strdup(value);
    if (!m->key || !m->value) {
        free(m->key);
        free(m->value);
        return lh_error_set(err, LH_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->n_meta++;
    return LH_OK;
}

/* ---- The header, byte for byte as serde_json writes it ---- */

typedef struct lh_st_text {
    char *p;
    size_t len, cap;
    int oom;
} lh_st_text;

static void put(lh_st_text *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(lh_st_text *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64(lh_st_text *b, uint64_t x) {
    char num[24];
    put(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)x));
}

/* A JSON string: escapes ", \ and control characters; the rest is raw UTF-8. */
static void put_string(lh_st_text *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[7] = {'\\', 0};
        size_t n = 2;
        switch (*p) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (*p >= 0x20) {
                put(b, (const char *)p, 1);
                continue;
            }
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            n = 6;
        }
        put(b, esc, n);
    }
    put(b, "\"", 1);
}

static int cmp_layout(const void *a, const void *b) {
    const lh_st_wtensor *x = *(const lh_st_wtensor *const *)a,
                        *y = *(const lh_st_wtensor *const *)b;
    int rx = SAFETENSORS_ORDER[x->dtype], ry = SAFETENSORS_ORDER[y->dtype];
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const lh_st_wmeta *)a)->key, ((const lh_st_wmeta *)b)->key);
}

/* Header text (padded) and the tensors in file order. */
static lh_status make_header(lh_st_text *h, const lh_st_wtensor **order, lh_st_wmeta *meta,
                             const lh_st_writer *w, const char *path, lh_error *err) {
    for (size_t i = 0; i < w->n_tensors; i++) order[i] = &w->tensors[i];
    qsort(order, w->n_tensors, sizeof *order, cmp_layout);
    if (w->n_meta) memcpy(meta, w->meta, w->n_meta * sizeof *meta);
    qsort(meta, w->n_meta, sizeof *meta, cmp_meta);

    puts_(h, "{");
    if (w->n_meta) {
        puts_(h, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i) puts_(h, ",");
            put_string(h, meta[i].key);
            puts_(h, ":");
            put_string(h, meta[i].value);
        }
        puts_(h, w->n_tensors ? "}," : "}");
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const lh_st_wtensor *t = order[i];
        if (i) puts_(h, ",");
        put_string(h, t->name);
        puts_(h, ":{\"dtype\":\"");
        puts_(h, lh_dtype_name(t->dtype));
        puts_(h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) puts_(h, ",");
            put_u64(h, (uint64_t)t->shape[d]);
        }
        puts_(h, "],\"data_offsets\":[");
        put_u64(h, offset);
        puts_(h, ",");
        if (__builtin_add_overflow(offset, t->nbytes, &offset))
            return lh_error_set(err, LH_ERR_OVERFLOW, "%s: total tensor size overflows", path);
        put_u64(h, offset);
        puts_(h, "]}");
    }
    puts_(h, "}");
    while (h->len % 8) puts_(h, " ");
    if (h->oom) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory for the header", path);
    if (h->len > LH_ST_MAX_HEADER)
        return lh_error_set(err, LH_ERR_INVALID, "%s: header would be %zu bytes, over the %u limit",
                            path, h->len, LH_ST_MAX_HEADER);
    return LH_OK;
}

/* ---- Atomic file writing ---- */

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Write prefix, header and data to a new file at tmp and fsync it; on
 * failure remove it again. */
static lh_status write_tmp(const char *tmp, const lh_st_text *h, const lh_st_wtensor *const *order,
                           size_t n, lh_error *err) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) return lh_error_set(err, LH_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)h->len >> (8 * i));
    int bad = write_all(fd, prefix, 8) || write_all(fd, h->p, h->len);
    for (size_t i = 0; i < n && !bad; i++) bad = write_all(fd, order[i]->data, order[i]->nbytes);
    if (!bad) bad = fsync(fd);
    int e = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(tmp);
        return lh_error_set(err, LH_ERR_IO, "%s: cannot write: %s", tmp, strerror(e));
    }
    return LH_OK;
}

/* fsync the directory that holds path, so the rename is durable. */
static lh_status sync_dir(const char *path, lh_error *err) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    lh_status rc = LH_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        rc = lh_error_set(err, LH_ERR_IO, "%s: cannot sync directory '%s': %s", path, dir,
                          strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

lh_status lh_st_save(const lh_st_writer *w, const char *path, lh_error *err) {
    lh_st_text h = {0};
    const lh_st_wtensor **order = calloc(w->n_tensors ? w->n_tensors : 1, sizeof *order);
    lh_st_wmeta *meta = calloc(w->n_meta ? w->n_meta : 1, sizeof *meta);
    char *tmp = NULL;
    lh_status rc;
    if (!order || !meta || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        tmp = NULL;
        rc = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if ((rc = make_header(&h, order, meta, w, path, err))) goto done;
    if ((rc = write_tmp(tmp, &h, order, w->n_tensors, err))) goto done;
    if (rename(tmp, path) != 0) {
        rc = lh_error_set(err, LH_ERR_IO, "%s: cannot rename '%s' over it: %s", path, tmp,
                          strerror(errno));
        unlink(tmp);
        goto done;
    }
    rc = sync_dir(path, err);
done:
    free(order);
    free(meta);
    free(tmp);
    free(h.p);
    return rc;
}
