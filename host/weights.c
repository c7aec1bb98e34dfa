/* Weight upload with shape and value checks (see weights.h). */
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lh_wstore_init(lh_wstore *ws, lh_backend *be) {
    memset(ws, 0, sizeof *ws);
    ws->be = be;
}

void lh_wstore_free(lh_wstore *ws) {
    for (size_t i = 0; i < ws->n; i++) ws->be->ops->free(ws->be, ws->ptrs[i]);
    free(ws->ptrs);
    free(ws->floats);
    free(ws->types);
    ws->ptrs = NULL;
    ws->floats = NULL;
    ws->types = NULL;
    ws->n = ws->cap = 0;
}

static lh_status track(lh_wstore *ws, void *p, size_t n_floats, lh_error *err) {
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 64;
        void **q = realloc(ws->ptrs, cap * sizeof *q);
        if (q) ws->ptrs = q;
        size_t *f = q ? realloc(ws->floats, cap * sizeof *f) : NULL;
        if (f) ws->floats = f;
        lh_dtype *t = f ? realloc(ws->types, cap * sizeof *t) : NULL;
        if (t) ws->types = t;
        if (!q || !f || !t) {
            ws->be->ops->free(ws->be, p);
            return lh_error_set(err, LH_ERR_NOMEM, "out of memory tracking weights");
        }
        ws->cap = cap;
    }
    ws->floats[ws->n] = n_floats;
    ws->types[ws->n] = LH_DTYPE_F32;
    ws->ptrs[ws->n++] = p;
    return LH_OK;
}

static int half_type(lh_dtype t) { return t == LH_DTYPE_F16 || t == LH_DTYPE_BF16; }
static size_t type_size(lh_dtype t) { return t == LH_DTYPE_F32 ? 4 : 2; }

lh_dtype lh_wstore_type(const lh_wstore *ws, const void *w) {
    for (size_t i = 0; i < ws->n; i++)
        if (ws->ptrs[i] == w) return ws->types[i];
    return LH_DTYPE_F32;
}

lh_status lh_wstore_retype(lh_wstore *ws, float **w, size_t n, lh_dtype dtype, lh_error *err) {
    size_t i = 0;
    while (i < ws->n && ws->ptrs[i] != *w) i++;
    if (i == ws->n || ws->floats[i] != n || (dtype != LH_DTYPE_F32 && !half_type(dtype)) ||
        n > (size_t)INT64_MAX / 4)
        return lh_error_set(err, LH_ERR_INTERNAL, "weights: cannot hold a buffer of %zu values "
                            "in %s", n, lh_dtype_name(dtype));
    lh_dtype from = ws->types[i];
    if (from == dtype) return LH_OK;
    lh_backend *be = ws->be;
    if (!be->ops->cast)
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "weights: the %s backend cannot hold "
                            "weights in %s", be->ops->name, lh_dtype_name(dtype));
    int via = half_type(from) && half_type(dtype); /* F16 <-> BF16: through float32 */
    void *to = be->ops->alloc(be, n ? n * type_size(dtype) : 4);
    void *mid = via ? be->ops->alloc(be, n ? n * 4 : 4) : NULL;
    lh_status st = to && (!via || mid) ? LH_OK : LH_ERR_NOMEM;
    if (st == LH_OK && via) st = be->ops->cast(be, mid, LH_DTYPE_F32, *w, from, (int64_t)n);
    if (st == LH_OK)
        st = be->ops->cast(be, to, dtype, via ? mid : *w, via ? LH_DTYPE_F32 : from, (int64_t)n);
    be->ops->free(be, mid);
    if (st != LH_OK) {
        be->ops->free(be, to);
        return lh_error_set(err, st, "weights: holding %zu values in %s failed", n,
                            lh_dtype_name(dtype));
    }
    be->ops->free(be, *w);
    ws->ptrs[i] = to;
    ws->types[i] = dtype;
    ws->bytes = ws->bytes - n * type_size(from) + n * type_size(dtype);
    *w = to;
    return LH_OK;
}

lh_status lh_wstore_round(lh_wstore *ws, lh_dtype dtype, lh_error *err) {
    for (size_t i = 0; i < ws->n; i++) {
        if (ws->types[i] != LH_DTYPE_F32) continue; /* a half type holds its rounding */
        lh_status st = ws->be->ops->round(ws->be, ws->ptrs[i], (int64_t)ws->floats[i], dtype);
        if (st != LH_OK)
            return lh_error_set(err, st, "rounding the weights to %s failed", lh_dtype_name(dtype));
    }
    return LH_OK;
}

static void shape_text(char *out, size_t size, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(out, size, "[");
    for (int i = 0; i < ndim && len < size; i++)
        len += (size_t)snprintf(out + len, size - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < size) snprintf(out + len, size - len, "]");
}

/* The first non-finite element of a float tensor, or -1. */
static int64_t first_non_finite(const lh_st_tensor *t) {
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        if (t->dtype == LH_DTYPE_F32) memcpy(&v, (const char *)t->data + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            v = t->dtype == LH_DTYPE_F16 ? lh_f16_to_f32(h) : lh_bf16_to_f32(h);
        }
        if (!isfinite(v)) return i;
    }
    return -1;
}

/* ---- Sources ---- */

static const lh_st_tensor *file_find(void *ctx, const char *key) {
    return lh_st_find((const lh_st_file *)ctx, key);
}

lh_wsource lh_wsource_file(const lh_st_file *f) {
    lh_wsource s = {lh_st_name(f), file_find, NULL, (void *)(uintptr_t)f, lh_st_count(f), NULL};
    return s;
}

/* 'key' for a file's own keys; 'file key' (as 'key') for a mapped source. */
static void key_text(char *out, size_t size, const lh_wsource *src, const char *key) {
    char fk[256] = "";
    if (src->file_key) src->file_key(src->ctx, key, fk, sizeof fk);
    if (fk[0] && strcmp(fk, key) != 0) snprintf(out, size, "'%s' (as '%s')", fk, key);
    else snprintf(out, size, "'%s'", key);
}

/* ---- Loading ---- */

lh_status lh_wstore_load(float **out, lh_wstore *ws, const lh_st_file *f, const char *key,
                         int ndim, const int64_t *shape, lh_error *err) {
    lh_wsource src = lh_wsource_file(f);
    return lh_wstore_load_src(out, ws, &src, key, ndim, shape, err);
}

lh_status lh_wstore_load_src(float **out, lh_wstore *ws, const lh_wsource *src, const char *key,
                             int ndim, const int64_t *shape, lh_error *err) {
    *out = NULL;
    const lh_st_tensor *t =
        src->make ? src->make(src->ctx, key, ndim, shape) : lh_wsource_find(src, key);
    char want[128], got[128], kt[600];
    shape_text(want, sizeof want, ndim, shape);
    key_text(kt, sizeof kt, src, key);
    if (!t)
        return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: tensor %s %s is missing", src->name, kt,
                            want);
    shape_text(got, sizeof got, t->ndim, t->shape);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same)
        return lh_error_set(err, LH_ERR_SHAPE, "%s: tensor %s has shape %s, the model needs %s",
                            src->name, kt, got, want);
    if (t->dtype != LH_DTYPE_F32 && t->dtype != LH_DTYPE_F16 && t->dtype != LH_DTYPE_BF16)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: tensor %s is %s; weights must be F32, F16 or BF16", src->name, kt,
                            lh_dtype_name(t->dtype));
    int64_t bad = first_non_finite(t);
    if (bad >= 0)
        return lh_error_set(err, LH_ERR_NUMERIC, "%s: tensor %s has a NaN or Inf at element %lld",
                            src->name, kt, (long long)bad);
    size_t n = (size_t)t->numel;
    /* as the file holds it (hold_half), or float32 */
    lh_dtype keep = ws->hold_half && ndim >= 2 && half_type(t->dtype) ? t->dtype : LH_DTYPE_F32;
    size_t bytes = n * type_size(keep);
    float *p = ws->be->ops->alloc(ws->be, bytes ? bytes : 4);
    if (!p)
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of backend memory for %s (%zu bytes)",
                            src->name, kt, bytes);
    lh_status st = keep == LH_DTYPE_F32 ? ws->be->ops->upload_weights(ws->be, p, t->data,
                                                                       t->dtype, n)
                                        : ws->be->ops->upload(ws->be, p, t->data, bytes);
    if (st != LH_OK) {
        ws->be->ops->free(ws->be, p);
        return lh_error_set(err, st, "%s: uploading %s failed", src->name, kt);
    }
    st = track(ws, p, n, err);
    if (st != LH_OK) return st;
    ws->types[ws->n - 1] = keep;
    ws->bytes += bytes;
    *out = p;
    return LH_OK;
}

lh_status lh_wstore_alloc(float **out, lh_wstore *ws, size_t n_floats, lh_error *err) {
    *out = NULL;
    float *p = ws->be->ops->alloc(ws->be, (n_floats ? n_floats : 1) * sizeof(float));
    if (!p) return lh_error_set(err, LH_ERR_NOMEM, "out of backend memory (%zu floats)", n_floats);
    lh_status st = ws->be->ops->memset0(ws->be, p, n_floats * sizeof(float));
    if (st == LH_OK) st = track(ws, p, n_floats, err);
    if (st != LH_OK) return st;
    ws->bytes += n_floats * sizeof(float);
    *out = p;
    return LH_OK;
}
