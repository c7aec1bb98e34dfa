/* The host-services table (lh_host_api): logging, memory, configuration
 * lookup, tensors, RNG and math for plugins. Errors of the tensor services
 * are kept per thread and read back with last_error(). */
#include "host_api.h"

#include <stdarg.h>
#include <stdlib.h>

#include "error.h"
#include "log.h"
#include "plugin_config.h"
#include "rng.h"
#include "lorahost/safetensors.h"
#include "tensor.h"

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

/* ---- Tensors ---- */

static lh_tensor *svc_tensor_new(lh_dtype dtype, int ndim, const int64_t *shape) {
    lh_tensor *t = lh_tensor_create(dtype, ndim, shape, &t_last);
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
    for (int64_t i = 0; i < n; i++) dst[i] = lh_tensor_get(t, i);
    return keep(LH_OK);
}
static lh_status svc_tensor_write(lh_tensor *t, const float *src, int64_t n) {
    lh_status st = check_count(t, n, "tensor_write");
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < n; i++) lh_tensor_set(t, i, src[i]);
    return keep(LH_OK);
}

static lh_status svc_copy(lh_tensor *out, const lh_tensor *x) {
    return keep(lh_op_copy(out, x, &t_last));
}
static lh_status svc_fill(lh_tensor *out, double v) { return keep(lh_op_fill(out, v, &t_last)); }
static lh_status svc_axpby(lh_tensor *out, double a, const lh_tensor *x, double b,
                           const lh_tensor *y) {
    return keep(lh_op_axpby(out, a, x, b, y, &t_last));
}
static lh_status svc_lincomb(lh_tensor *out, int n, const double *coef,
                             const lh_tensor *const *xs) {
    return keep(lh_op_lincomb(out, n, coef, xs, &t_last));
}
static lh_status svc_mul(lh_tensor *out, const lh_tensor *x, const lh_tensor *y) {
    return keep(lh_op_mul(out, x, y, &t_last));
}
static lh_status svc_clamp(lh_tensor *out, const lh_tensor *x, double lo, double hi) {
    return keep(lh_op_clamp(out, x, lo, hi, &t_last));
}
static lh_status svc_randn(lh_tensor *out, lh_rng *rng) {
    if (!out || !rng)
        return lh_error_set(&t_last, LH_ERR_INVALID, "tensor_randn: NULL tensor or generator");
    if (out->dtype == LH_DTYPE_F32) return keep(lh_rng_randn(rng, out->data, out->numel, &t_last));
    size_t bytes;
    if (lh_mul_size((size_t)out->numel, sizeof(float), &bytes))
        return lh_error_set(&t_last, LH_ERR_OVERFLOW, "tensor_randn: size overflow");
    float *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return lh_error_set(&t_last, LH_ERR_NOMEM, "tensor_randn: out of memory");
    lh_status st = lh_rng_randn(rng, tmp, out->numel, &t_last);
    if (st == LH_OK)
        for (int64_t i = 0; i < out->numel; i++) lh_tensor_set(out, i, tmp[i]);
    free(tmp);
    return keep(st);
}
static lh_status svc_gemm(lh_tensor *out, const lh_tensor *a, const lh_tensor *b, int ta, int tb,
                          double alpha, double beta) {
    return keep(lh_op_gemm(out, a, b, ta, tb, alpha, beta, &t_last));
}
static lh_status svc_conv2d(lh_tensor *out, const lh_tensor *x, const lh_tensor *w,
                            const lh_tensor *bias, int sh, int sw, int ph, int pw, int dh, int dw,
                            int groups) {
    return keep(lh_op_conv2d(out, x, w, bias, sh, sw, ph, pw, dh, dw, groups, &t_last));
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
};

const lh_host_api *lh_host_api_get(void) { return &HOST_API; }
