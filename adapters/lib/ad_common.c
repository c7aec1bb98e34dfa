/* Adapter plugins: messages, recognising a tensor group, checking and
 * loading its tensors into F32 copies, and host-array helpers. */
#include "ad_common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- Messages ---- */

lh_status lh_ad_fail(const lh_ad_base *b, char *err, size_t err_size, lh_status st, const char *fmt,
                     ...) {
    if (!err || err_size == 0) return st;
    int n = snprintf(err, err_size, "layer %s: ", b->name ? b->name : "?");
    if (n < 0 || (size_t)n >= err_size) return st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, err_size - (size_t)n, fmt, ap);
    va_end(ap);
    return st;
}

lh_status lh_ad_host_fail(const lh_ad_base *b, char *err, size_t err_size, lh_status st,
                          const char *what) {
    const char *why = b->host->last_error();
    return lh_ad_fail(b, err, err_size, st, "%s: %s", what, why && *why ? why : "failed");
}

/* "[a, b, c]" */
static const char *shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* ---- Recognising ---- */

int lh_ad_claims(const lh_adapter_layer *layer, const char *const *known) {
    if (!layer || layer->n_tensors < 1 || !layer->tensors) return 0;
    for (int32_t i = 0; i < layer->n_tensors; i++) {
        const char *s = layer->tensors[i].suffix;
        const char *const *k = known;
        while (*k && (!s || strcmp(*k, s) != 0)) k++;
        if (!*k) return 0;
    }
    return 1;
}

int lh_ad_index(const lh_adapter_layer *layer, const char *suffix) {
    for (int32_t i = 0; i < layer->n_tensors; i++)
        if (layer->tensors[i].suffix && !strcmp(layer->tensors[i].suffix, suffix)) return i;
    return -1;
}

/* ---- The base layer ---- */

static char *copy_name(const lh_host_api *host, const char *name) {
    const char *s = name ? name : "?";
    size_t n = strlen(s) + 1;
    char *p = host->alloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static lh_status form_init(lh_ad_base *b, const lh_adapter_layer *layer, char *err,
                           size_t err_size) {
    lh_ad_form *f = &b->form;
    const int64_t *s = layer->base_shape;
    int conv = layer->base_ndim == 4;
    if (layer->base_ndim != 2 && !conv)
        return lh_ad_fail(b, err, err_size, LH_ERR_UNSUPPORTED,
                          "base weight has %d axes; adapters apply to linear (2) or conv (4)",
                          layer->base_ndim);
    *f = (lh_ad_form){layer->base_ndim,         s[0], s[1], conv ? s[2] : 1,
                      conv ? s[3] : 1,          0,    0,    conv ? layer->stride : 1,
                      conv ? layer->padding : 0};
    char buf[96];
    if (f->out < 1 || f->in < 1 || f->kh < 1 || f->kw < 1 ||
        __builtin_mul_overflow(f->kh, f->kw, &f->k) ||
        __builtin_mul_overflow(f->out, f->in, &f->numel) ||
        __builtin_mul_overflow(f->numel, f->k, &f->numel))
        return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE, "base weight shape %s is invalid",
                          shape_str(buf, sizeof buf, layer->base_ndim, s));
    if (f->stride < 1 || f->pad < 0)
        return lh_ad_fail(b, err, err_size, LH_ERR_INVALID, "stride %d / padding %d invalid",
                          f->stride, f->pad);
    return LH_OK;
}

lh_status lh_ad_create(void **out, size_t size, const lh_host_api *host,
                       const lh_adapter_layer *layer, char *err, size_t err_size,
                       lh_status (*init)(const lh_ad_ctx *c), void (*destroy)(void *state)) {
    lh_ad_base *b = host->calloc(1, size);
    if (b) b->host = host;
    if (b) b->name = copy_name(host, layer->name);
    if (!b || !b->name) {
        snprintf(err, err_size, "layer %s: out of memory", layer->name ? layer->name : "?");
        if (b) destroy(b);
        return LH_ERR_NOMEM;
    }
    lh_ad_ctx c = {b, layer, err, err_size};
    lh_status st = form_init(b, layer, err, err_size);
    if (st == LH_OK) st = init(&c);
    if (st != LH_OK) {
        destroy(b);
        return st;
    }
    *out = b;
    return LH_OK;
}

void lh_ad_base_free(lh_ad_base *b) {
    b->host->free(b->name);
    b->name = NULL;
}

lh_tensor *lh_ad_grad(lh_tensor *const *grads, int gi) {
    return grads && gi >= 0 ? grads[gi] : NULL;
}

/* ---- Tensors of the group ---- */

int64_t lh_ad_dim(const lh_ad_ctx *c, const char *suffix, int axis) {
    int i = lh_ad_index(c->layer, suffix);
    return i < 0 ? -1 : c->b->host->tensor_dim(c->layer->tensors[i].tensor, axis);
}

static int tensor_shape(const lh_ad_ctx *c, const char *suffix, int64_t *shape) {
    const lh_tensor *t = c->layer->tensors[lh_ad_index(c->layer, suffix)].tensor;
    int n = c->b->host->tensor_ndim(t);
    if (n < 0 || n > LH_MAX_DIMS) n = 0;
    for (int i = 0; i < n; i++) shape[i] = c->b->host->tensor_dim(t, i);
    return n;
}

lh_status lh_ad_require(const lh_ad_ctx *c, const char *const *names) {
    for (; *names; names++)
        if (lh_ad_index(c->layer, *names) < 0)
            return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_NOT_FOUND, "%s is missing", *names);
    return LH_OK;
}

lh_status lh_ad_rank(const lh_ad_ctx *c, int64_t *rank, const char *a, int a_axis, const char *b,
                     int b_axis) {
    lh_status st = lh_ad_require(c, (const char *const[]){a, b, NULL});
    if (st != LH_OK) return st;
    *rank = lh_ad_dim(c, a, a_axis);
    int64_t rb = lh_ad_dim(c, b, b_axis);
    if (*rank >= 1 && *rank == rb) return LH_OK;
    int64_t sa[LH_MAX_DIMS], sb[LH_MAX_DIMS];
    int na = tensor_shape(c, a, sa), nb = tensor_shape(c, b, sb);
    char ba[96], bb[96];
    return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                      "ranks disagree: %s %s has rank %lld but %s %s has rank %lld", a,
                      shape_str(ba, sizeof ba, na, sa), (long long)*rank, b,
                      shape_str(bb, sizeof bb, nb, sb), (long long)rb);
}

/* Number of axes once trailing axes of size 1 are dropped. */
static int squeezed(int ndim, const int64_t *shape) {
    while (ndim > 0 && shape[ndim - 1] == 1) ndim--;
    return ndim;
}

static lh_status check_shape(const lh_ad_ctx *c, const char *suffix, int ndim,
                             const int64_t *want) {
    int64_t have[LH_MAX_DIMS];
    int n = tensor_shape(c, suffix, have);
    int nh = squeezed(n, have), nw = squeezed(ndim, want);
    int same = nh == nw;
    for (int i = 0; same && i < nh; i++) same = have[i] == want[i];
    if (same) return LH_OK;
    char bh[96], bw[96], bb[96];
    return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                      "%s is %s, expected %s for base weight %s", suffix,
                      shape_str(bh, sizeof bh, n, have), shape_str(bw, sizeof bw, ndim, want),
                      shape_str(bb, sizeof bb, c->layer->base_ndim, c->layer->base_shape));
}

lh_status lh_ad_finite(const lh_ad_ctx *c, const float *v, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_NUMERIC,
                              "%s holds %g at element %lld", what, (double)v[i], (long long)i);
    return LH_OK;
}

lh_status lh_ad_load(const lh_ad_ctx *c, lh_tensor **out, const char *suffix, int ndim,
                     const int64_t *shape) {
    lh_status st = lh_ad_require(c, (const char *const[]){suffix, NULL});
    if (st == LH_OK) st = check_shape(c, suffix, ndim, shape);
    if (st != LH_OK) return st;
    const lh_host_api *h = c->b->host;
    const lh_tensor *src = c->layer->tensors[lh_ad_index(c->layer, suffix)].tensor;
    float *v = NULL;
    st = lh_ad_read(c->b, &v, src, c->err, c->err_size);
    if (st == LH_OK) st = lh_ad_finite(c, v, h->tensor_numel(src), suffix);
    if (st == LH_OK) {
        *out = h->tensor_new(LH_DTYPE_F32, ndim, shape);
        st = *out ? h->tensor_write(*out, v, h->tensor_numel(src)) : LH_ERR_NOMEM;
        if (st != LH_OK) st = lh_ad_host_fail(c->b, c->err, c->err_size, st, suffix);
    }
    h->free(v);
    return st;
}

lh_status lh_ad_alpha(const lh_ad_ctx *c, int64_t rank, double *ratio) {
    double alpha = c->layer->alpha;
    if (isnan(alpha)) alpha = (double)rank;
    if (!isfinite(alpha) || alpha <= 0)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_INVALID,
                          "alpha %g must be finite and > 0", alpha);
    *ratio = alpha / (double)rank;
    return LH_OK;
}

/* ---- Host arrays ---- */

lh_status lh_ad_zeros(const lh_ad_base *b, float **out, int64_t n, char *err, size_t err_size) {
    *out = n >= 0 ? b->host->calloc((size_t)(n ? n : 1), sizeof(float)) : NULL;
    if (!*out)
        return lh_ad_fail(b, err, err_size, LH_ERR_NOMEM, "out of memory for %lld floats",
                          (long long)n);
    return LH_OK;
}

lh_status lh_ad_read(const lh_ad_base *b, float **out, const lh_tensor *t, char *err,
                     size_t err_size) {
    int64_t n = b->host->tensor_numel(t);
    lh_status st = lh_ad_zeros(b, out, n, err, err_size);
    if (st != LH_OK) return st;
    st = b->host->tensor_read(t, *out, n);
    if (st == LH_OK) return LH_OK;
    b->host->free(*out);
    *out = NULL;
    return lh_ad_host_fail(b, err, err_size, st, "tensor_read");
}

lh_status lh_ad_add(const lh_ad_base *b, lh_tensor *t, const float *v, int64_t n, double a,
                    char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    if (h->tensor_numel(t) != n)
        return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE,
                          "output tensor has %lld elements, expected %lld",
                          (long long)h->tensor_numel(t), (long long)n);
    lh_tensor *tmp = h->tensor_new(LH_DTYPE_F32, 1, &n);
    lh_status st = tmp ? h->tensor_write(tmp, v, n) : LH_ERR_NOMEM;
    if (st == LH_OK) st = h->tensor_axpby(t, 1.0, t, a, tmp);
    h->tensor_free(tmp);
    return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "accumulate");
}
