/* The host-services table (lh_host_api): logging, memory, configuration
 * lookup, tensors, RNG and math for plugins, on host tensors or on the
 * device tensors of a bound backend. Errors of the tensor services are kept
 * per thread and read back with last_error(). */
#include "host_api.h"

#include <stdarg.h>
#include <stdlib.h>

#include "error.h"
#include "log.h"
#include "plugin_config.h"
#include "rng.h"
#include "lorahost/safetensors.h"
#include "tensor.h"
#include "../kernels/backend.h"

static _Thread_local lh_error t_last;

/* Record the outcome of a service call for last_error(). */
static lh_status keep(lh_status st) {
    if (st == LH_OK) lh_error_clear(&t_last);
    return st;
}

static const char *svc_last_error(void) { return t_last.msg; }

__attribute__((format(printf, 3, 4))) static void svc_log(lh_log_level level, const char *source,
                                                         const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lh_logv(level, source, fmt, ap);
    va_end(ap);
}

static void *svc_alloc(size_t size) { return malloc(size ? size : 1); }
static void *svc_calloc(size_t count, size_t size) {
    size_t total;
    if (lh_mul_size(count, size, &total)) return NULL;
    return calloc(total ? total : 1, 1);
}
static void svc_free(void *p) { free(p); }

/* ---- Where tensors live ----
 * While an adapter on a device backend is created, run or differentiated,
 * the host binds that backend to the thread (lh_host_api_bind): tensor_new
 * then makes F32 tensors in its memory, and copy, gemm, conv2d (groups 1,
 * square stride and padding), conv2d_backward, axpby, mul (F32 operands
 * there) and fill with 0 run there. Every other op, and any op whose
 * operands live in different places, runs on host copies: slower, never
 * wrong. */

static _Thread_local lh_backend *t_bound;

lh_backend *lh_host_api_bind(lh_backend *be) {
    lh_backend *prev = t_bound;
    t_bound = be;
    return prev;
}

static int on_device(const lh_tensor *t) { return t && t->be; }

/* A host F32-readable copy of device tensor t; t itself when it is a host
 * tensor (or NULL, or *st already failed). */
static lh_tensor *host_copy(const lh_tensor *t, lh_status *st) {
    if (*st != LH_OK || !on_device(t)) return (lh_tensor *)t;
    lh_tensor *h = lh_tensor_create(LH_DTYPE_F32, t->ndim, t->shape, &t_last);
    if (!h) {
        *st = t_last.code;
        return NULL;
    }
    *st = t->be->ops->download(t->be, h->data, t->data, (size_t)t->numel * sizeof(float));
    if (*st != LH_OK) lh_error_set(&t_last, *st, "%s: download failed", t->be->ops->name);
    return h;
}

/* A copy of t in be's memory (float32 values); t itself when it is there. */
static lh_tensor *device_copy(lh_backend *be, const lh_tensor *t, lh_status *st) {
    if (*st != LH_OK || !t || t->be == be) return (lh_tensor *)t;
    lh_tensor *h = host_copy(t, st), *f = h;
    if (*st == LH_OK && h->dtype != LH_DTYPE_F32) { /* widen */
        f = lh_tensor_create(LH_DTYPE_F32, h->ndim, h->shape, &t_last);
        if (!f) *st = t_last.code;
        for (int64_t i = 0; f && i < h->numel; i++) ((float *)f->data)[i] = lh_tensor_get(h, i);
    }
    lh_tensor *d = *st == LH_OK ? lh_tensor_create_on(be, t->ndim, t->shape, &t_last) : NULL;
    if (*st == LH_OK && !d) *st = t_last.code;
    if (d && (*st = be->ops->upload(be, d->data, f->data, (size_t)t->numel * sizeof(float))) !=
                 LH_OK)
        lh_error_set(&t_last, *st, "%s: upload failed", be->ops->name);
    if (f != h) lh_tensor_destroy(f);
    if (h != t) lh_tensor_destroy(h);
    return d;
}

/* Free copy c of t (nothing when c is t). */
static void drop(lh_tensor *c, const lh_tensor *t) {
    if (c != t) lh_tensor_destroy(c);
}

/* After an op wrote host copy c of out: c's values into out, c freed. */
static lh_status write_back(lh_tensor *out, lh_tensor *c, lh_status st) {
    if (c == out) return st;
    if (st == LH_OK && c) {
        st = out->be->ops->upload(out->be, out->data, c->data, (size_t)out->numel * sizeof(float));
        if (st != LH_OK) lh_error_set(&t_last, st, "%s: upload failed", out->be->ops->name);
    }
    lh_tensor_destroy(c);
    return st;
}

/* ---- Tensors ---- */

static lh_tensor *svc_tensor_new(lh_dtype dtype, int ndim, const int64_t *shape) {
    lh_tensor *t = t_bound && dtype == LH_DTYPE_F32 ? lh_tensor_create_on(t_bound, ndim, shape, &t_last)
                                                     : lh_tensor_create(dtype, ndim, shape, &t_last);
    if (t) lh_error_clear(&t_last);
    return t;
}
static lh_tensor *svc_tensor_new_like(const lh_tensor *t) {
    if (!t) {
        lh_error_set(&t_last, LH_ERR_INVALID, "tensor_new_like: NULL tensor");
        return NULL;
    }
    return svc_tensor_new(t->dtype, t->ndim, t->shape);
}
static void svc_tensor_free(lh_tensor *t) { lh_tensor_destroy(t); }
static int svc_tensor_ndim(const lh_tensor *t) { return t ? t->ndim : -1; }
static int64_t svc_tensor_dim(const lh_tensor *t, int axis) {
    return t && axis >= 0 && axis < t->ndim ? t->shape[axis] : -1;
}
static int64_t svc_tensor_numel(const lh_tensor *t) { return t ? t->numel : -1; }
static lh_dtype svc_tensor_dtype(const lh_tensor *t) { return t ? t->dtype : LH_DTYPE_COUNT; }

static lh_status check_count(const lh_tensor *t, int64_t n, const char *what) {
    if (!t || n != t->numel)
        return lh_error_set(&t_last, LH_ERR_SHAPE, "%s: %lld values for a tensor of %lld", what,
                            (long long)n, t ? (long long)t->numel : 0LL);
    return LH_OK;
}
static lh_status svc_tensor_read(const lh_tensor *t, float *dst, int64_t n) {
    lh_status st = check_count(t, n, "tensor_read");
    if (st != LH_OK) return st;
    if (on_device(t)) {
        st = t->be->ops->download(t->be, dst, t->data, (size_t)n * sizeof *dst);
        if (st != LH_OK) lh_error_set(&t_last, st, "tensor_read: %s download failed", t->be->ops->name);
        return keep(st);
    }
    for (int64_t i = 0; i < n; i++) dst[i] = lh_tensor_get(t, i);
    return keep(LH_OK);
}
static lh_status svc_tensor_write(lh_tensor *t, const float *src, int64_t n) {
    lh_status st = check_count(t, n, "tensor_write");
    if (st != LH_OK) return st;
    if (on_device(t)) {
        st = t->be->ops->upload(t->be, t->data, src, (size_t)n * sizeof *src);
        if (st != LH_OK) lh_error_set(&t_last, st, "tensor_write: %s upload failed", t->be->ops->name);
        return keep(st);
    }
    for (int64_t i = 0; i < n; i++) lh_tensor_set(t, i, src[i]);
    return keep(LH_OK);
}

/* The ops that run on host copies when a device is involved. */
static lh_status svc_copy(lh_tensor *out, const lh_tensor *x) {
    if (!on_device(out) && !on_device(x)) return keep(lh_op_copy(out, x, &t_last));
    if (on_device(out) && x && x->be == out->be && x->dtype == LH_DTYPE_F32)
        return keep(lh_op_copy(out, x, &t_last));
    lh_status st = LH_OK;
    lh_tensor *o = host_copy(out, &st), *xc = host_copy(x, &st);
    if (st == LH_OK) st = lh_op_copy(o, xc, &t_last);
    drop(xc, x);
    return keep(write_back(out, o, st));
}
static lh_status svc_fill(lh_tensor *out, double v) {
    if (!on_device(out) || v == 0.0) return keep(lh_op_fill(out, v, &t_last));
    lh_status st = LH_OK;
    lh_tensor *o = host_copy(out, &st);
    if (st == LH_OK) st = lh_op_fill(o, v, &t_last);
    return keep(write_back(out, o, st));
}
static lh_status svc_lincomb(lh_tensor *out, int n, const double *coef,
                             const lh_tensor *const *xs) {
    int dev = on_device(out);
    for (int k = 0; xs && k < n; k++) dev |= on_device(xs[k]);
    if (!dev || n < 1 || !xs) return keep(lh_op_lincomb(out, n, coef, xs, &t_last));
    lh_status st = LH_OK;
    lh_tensor **hs = calloc((size_t)n, sizeof *hs);
    if (!hs) return keep(lh_error_set(&t_last, LH_ERR_NOMEM, "lincomb: out of memory"));
    for (int k = 0; k < n; k++) hs[k] = host_copy(xs[k], &st);
    lh_tensor *o = host_copy(out, &st);
    if (st == LH_OK) st = lh_op_lincomb(o, n, coef, (const lh_tensor *const *)hs, &t_last);
    for (int k = 0; k < n; k++) drop(hs[k], xs[k]);
    free(hs);
    return keep(write_back(out, o, st));
}
static lh_status svc_mul(lh_tensor *out, const lh_tensor *x, const lh_tensor *y) {
    if (!on_device(out) && !on_device(x) && !on_device(y)) return keep(lh_op_mul(out, x, y, &t_last));
    if (on_device(out) && x && y && x->be == out->be && y->be == out->be &&
        x->dtype == LH_DTYPE_F32 && y->dtype == LH_DTYPE_F32)
        return keep(lh_op_mul(out, x, y, &t_last));
    lh_status st = LH_OK;
    lh_tensor *o = host_copy(out, &st), *xc = host_copy(x, &st), *yc = host_copy(y, &st);
    if (st == LH_OK) st = lh_op_mul(o, xc, yc, &t_last);
    drop(xc, x);
    drop(yc, y);
    return keep(write_back(out, o, st));
}
static lh_status svc_clamp(lh_tensor *out, const lh_tensor *x, double lo, double hi) {
    if (!on_device(out) && !on_device(x)) return keep(lh_op_clamp(out, x, lo, hi, &t_last));
    lh_status st = LH_OK;
    lh_tensor *o = host_copy(out, &st), *xc = host_copy(x, &st);
    if (st == LH_OK) st = lh_op_clamp(o, xc, lo, hi, &t_last);
    drop(xc, x);
    return keep(write_back(out, o, st));
}
static lh_status randn_host(lh_tensor *out, lh_rng *rng) {
    if (out->dtype == LH_DTYPE_F32) return lh_rng_randn(rng, out->data, out->numel, &t_last);
    size_t bytes;
    if (lh_mul_size((size_t)out->numel, sizeof(float), &bytes))
        return lh_error_set(&t_last, LH_ERR_OVERFLOW, "tensor_randn: size overflow");
    float *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return lh_error_set(&t_last, LH_ERR_NOMEM, "tensor_randn: out of memory");
    lh_status st = lh_rng_randn(rng, tmp, out->numel, &t_last);
    if (st == LH_OK)
        for (int64_t i = 0; i < out->numel; i++) lh_tensor_set(out, i, tmp[i]);
    free(tmp);
    return st;
}
static lh_status svc_randn(lh_tensor *out, lh_rng *rng) {
    if (!out || !rng)
        return lh_error_set(&t_last, LH_ERR_INVALID, "tensor_randn: NULL tensor or generator");
    lh_status st = LH_OK;
    lh_tensor *o = host_copy(out, &st);
    if (st == LH_OK) st = randn_host(o, rng);
    return keep(write_back(out, o, st));
}

/* The ops a device runs: its operands are brought to where out lives. */
static lh_status svc_axpby(lh_tensor *out, double a, const lh_tensor *x, double b,
                           const lh_tensor *y) {
    if (!on_device(out) && !on_device(x) && !on_device(y))
        return keep(lh_op_axpby(out, a, x, b, y, &t_last));
    lh_status st = LH_OK;
    lh_tensor *xc, *yc;
    if (on_device(out)) {
        xc = device_copy(out->be, x, &st);
        yc = device_copy(out->be, y, &st);
    } else {
        xc = host_copy(x, &st);
        yc = host_copy(y, &st);
    }
    if (st == LH_OK) st = lh_op_axpby(out, a, xc, b, yc, &t_last);
    drop(xc, x);
    drop(yc, y);
    return keep(st);
}
static lh_status svc_gemm(lh_tensor *out, const lh_tensor *a, const lh_tensor *b, int ta, int tb,
                          double alpha, double beta) {
    if (!on_device(out) && !on_device(a) && !on_device(b))
        return keep(lh_op_gemm(out, a, b, ta, tb, alpha, beta, &t_last));
    lh_status st = LH_OK;
    lh_tensor *ac, *bc;
    if (on_device(out)) {
        ac = device_copy(out->be, a, &st);
        bc = device_copy(out->be, b, &st);
    } else {
        ac = host_copy(a, &st);
        bc = host_copy(b, &st);
    }
    if (st == LH_OK) st = lh_op_gemm(out, ac, bc, ta, tb, alpha, beta, &t_last);
    drop(ac, a);
    drop(bc, b);
    return keep(st);
}
static lh_status svc_conv2d(lh_tensor *out, const lh_tensor *x, const lh_tensor *w,
                            const lh_tensor *bias, int sh, int sw, int ph, int pw, int dh, int dw,
                            int groups) {
    if (!on_device(out) && !on_device(x) && !on_device(w) && !on_device(bias))
        return keep(lh_op_conv2d(out, x, w, bias, sh, sw, ph, pw, dh, dw, groups, &t_last));
    lh_status st = LH_OK;
    int dev = on_device(out) && groups == 1 && dh == 1 && dw == 1 && sh == sw && ph == pw;
    lh_tensor *o = dev ? out : host_copy(out, &st), *xc, *wc, *bc;
    if (dev) {
        xc = device_copy(out->be, x, &st);
        wc = device_copy(out->be, w, &st);
        bc = device_copy(out->be, bias, &st);
    } else {
        xc = host_copy(x, &st);
        wc = host_copy(w, &st);
        bc = host_copy(bias, &st);
    }
    if (st == LH_OK) st = lh_op_conv2d(o, xc, wc, bc, sh, sw, ph, pw, dh, dw, groups, &t_last);
    drop(xc, x);
    drop(wc, w);
    drop(bc, bias);
    return keep(on_device(out) ? write_back(out, o, st) : st);
}

static lh_status svc_conv2d_backward(lh_tensor *dx, lh_tensor *dw, const lh_tensor *dy,
                                     const lh_tensor *x, const lh_tensor *w, int stride, int pad,
                                     double dw_scale) {
    lh_tensor *out = dx ? dx : dw;
    lh_backend *be = on_device(out) ? out->be : NULL;
    if (!be && !on_device(dx) && !on_device(dw) && !on_device(dy) && !on_device(x) &&
        !on_device(w))
        return keep(lh_op_conv2d_backward(dx, dw, dy, x, w, stride, pad, dw_scale, &t_last));
    /* everything where the first output lives; an output elsewhere gets a copy */
    lh_status st = LH_OK;
    lh_tensor *dxc = be ? device_copy(be, dx, &st) : host_copy(dx, &st);
    lh_tensor *dwc = be ? device_copy(be, dw, &st) : host_copy(dw, &st);
    lh_tensor *dyc = be ? device_copy(be, dy, &st) : host_copy(dy, &st);
    lh_tensor *xc = be ? device_copy(be, x, &st) : host_copy(x, &st);
    lh_tensor *wc = be ? device_copy(be, w, &st) : host_copy(w, &st);
    if (st == LH_OK) st = lh_op_conv2d_backward(dxc, dwc, dyc, xc, wc, stride, pad, dw_scale, &t_last);
    /* results back into outputs that live elsewhere */
    lh_tensor *outs[2] = {dx, dw}, *copies[2] = {dxc, dwc};
    for (int i = 0; i < 2; i++) {
        if (!outs[i] || copies[i] == outs[i]) continue;
        lh_tensor *h = host_copy(copies[i], &st); /* the copy's values on the host */
        if (st == LH_OK && outs[i]->be) {
            st = outs[i]->be->ops->upload(outs[i]->be, outs[i]->data, h->data,
                                          (size_t)outs[i]->numel * sizeof(float));
        } else if (st == LH_OK) {
            for (int64_t k = 0; k < outs[i]->numel; k++)
                lh_tensor_set(outs[i], k, ((float *)h->data)[k]);
        }
        drop(h, copies[i]);
        lh_tensor_destroy(copies[i]);
    }
    drop(dyc, dy);
    drop(xc, x);
    drop(wc, w);
    return keep(st);
}

static lh_tensor *svc_tensor_reshape(const lh_tensor *t, int ndim, const int64_t *shape) {
    if (!t) {
        keep(lh_error_set(&t_last, LH_ERR_INVALID, "tensor_reshape: NULL tensor"));
        return NULL;
    }
    lh_tensor *v = malloc(sizeof *v);
    if (!v) {
        keep(lh_error_set(&t_last, LH_ERR_NOMEM, "tensor_reshape: out of memory"));
        return NULL;
    }
    lh_status st = lh_tensor_view(v, t->data, t->dtype, ndim, shape, &t_last);
    v->be = t->be;
    if (st == LH_OK && v->numel != t->numel)
        st = lh_error_set(&t_last, LH_ERR_SHAPE,
                          "tensor_reshape: %lld elements cannot be viewed as %lld",
                          (long long)t->numel, (long long)v->numel);
    if (st != LH_OK) {
        keep(st);
        free(v);
        return NULL;
    }
    return v;
}

/* ---- .safetensors files ---- */

static lh_tensor_file *svc_tensor_file_open(const char *path) {
    lh_st_file *f = NULL;
    if (!path) {
        keep(lh_error_set(&t_last, LH_ERR_INVALID, "tensor_file_open: NULL path"));
        return NULL;
    }
    if (keep(lh_st_open(&f, path, &t_last)) != LH_OK) return NULL;
    return (lh_tensor_file *)f;
}
static lh_tensor *svc_tensor_file_get(const lh_tensor_file *file, const char *name) {
    const lh_st_file *f = (const lh_st_file *)file;
    if (!f || !name) {
        keep(lh_error_set(&t_last, LH_ERR_INVALID, "tensor_file_get: NULL file or name"));
        return NULL;
    }
    const lh_st_tensor *st = lh_st_find(f, name);
    if (!st) {
        keep(lh_error_set(&t_last, LH_ERR_NOT_FOUND, "%s: no tensor '%s'", lh_st_name(f), name));
        return NULL;
    }
    lh_tensor *t = lh_tensor_create(LH_DTYPE_F32, st->ndim, st->shape, &t_last);
    if (!t) return NULL;
    if (keep(lh_st_read_f32(t->data, (size_t)t->numel, f, name, &t_last)) != LH_OK) {
        lh_tensor_destroy(t);
        return NULL;
    }
    return t;
}
static void svc_tensor_file_close(lh_tensor_file *file) { lh_st_close((lh_st_file *)file); }

static const lh_host_api HOST_API = {
    .abi_version = LH_PLUGIN_ABI_VERSION,
    .size = sizeof(lh_host_api),
    .log = svc_log,
    .alloc = svc_alloc,
    .calloc = svc_calloc,
    .free = svc_free,
    .last_error = svc_last_error,
    .config_string = lh_config_string,
    .config_double = lh_config_double,
    .config_int = lh_config_int,
    .config_bool = lh_config_bool,
    .config_doubles = lh_config_doubles,
    .tensor_new = svc_tensor_new,
    .tensor_new_like = svc_tensor_new_like,
    .tensor_free = svc_tensor_free,
    .tensor_ndim = svc_tensor_ndim,
    .tensor_dim = svc_tensor_dim,
    .tensor_numel = svc_tensor_numel,
    .tensor_dtype = svc_tensor_dtype,
    .tensor_read = svc_tensor_read,
    .tensor_write = svc_tensor_write,
    .tensor_copy = svc_copy,
    .tensor_fill = svc_fill,
    .tensor_axpby = svc_axpby,
    .tensor_lincomb = svc_lincomb,
    .tensor_mul = svc_mul,
    .tensor_clamp = svc_clamp,
    .tensor_randn = svc_randn,
    .gemm = svc_gemm,
    .conv2d = svc_conv2d,
    .tensor_reshape = svc_tensor_reshape,
    .tensor_file_open = svc_tensor_file_open,
    .tensor_file_get = svc_tensor_file_get,
    .tensor_file_close = svc_tensor_file_close,
    .conv2d_backward = svc_conv2d_backward,
};

const lh_host_api *lh_host_api_get(void) { return &HOST_API; }
