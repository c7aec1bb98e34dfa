/* Tensors: creation (host, or a device's memory), views and per-element
 * access in float32 for the storage types the host computes with (f32,
 * f16, bf16, f64; host tensors only). */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"

#include "lorahost/safetensors.h"

lh_status lh_tensor_view(lh_tensor *out, void *data, lh_dtype dtype, int ndim,
                         const int64_t *shape, lh_error *err) {
    if (ndim < 0 || ndim > LH_MAX_DIMS)
        return lh_error_set(err, LH_ERR_INVALID, "tensor rank %d outside 0..%d", ndim,
                            LH_MAX_DIMS);
    if (lh_dtype_size(dtype) == 0)
        return lh_error_set(err, LH_ERR_INVALID, "tensor dtype %d unknown", (int)dtype);
    memset(out, 0, sizeof *out);
    out->dtype = dtype;
    out->ndim = ndim;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return lh_error_set(err, LH_ERR_INVALID, "tensor dim %d is negative (%lld)", i,
                                (long long)shape[i]);
        if (__builtin_mul_overflow(numel, shape[i], &numel))
            return lh_error_set(err, LH_ERR_OVERFLOW, "tensor shape product overflows");
        out->shape[i] = shape[i];
    }
    out->numel = numel;
    out->data = data;
    return LH_OK;
}

lh_tensor *lh_tensor_create(lh_dtype dtype, int ndim, const int64_t *shape, lh_error *err) {
    lh_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for a tensor header");
        return NULL;
    }
    if (lh_tensor_view(t, NULL, dtype, ndim, shape, err) != LH_OK) {
        free(t);
        return NULL;
    }
    size_t bytes;
    if (lh_mul_size((size_t)t->numel, lh_dtype_size(dtype), &bytes)) {
        lh_error_set(err, LH_ERR_OVERFLOW, "tensor of %lld elements overflows size_t",
                     (long long)t->numel);
        free(t);
        return NULL;
    }
    t->data = calloc(bytes ? bytes : 1, 1);
    if (!t->data) {
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for a tensor of %zu bytes", bytes);
        free(t);
        return NULL;
    }
    t->owns_data = 1;
    return t;
}

lh_tensor *lh_tensor_create_on(lh_backend *be, int ndim, const int64_t *shape, lh_error *err) {
    if (!be) return lh_tensor_create(LH_DTYPE_F32, ndim, shape, err);
    lh_tensor *t = malloc(sizeof *t);
    if (!t) {
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for a tensor");
        return NULL;
    }
    size_t bytes;
    if (lh_tensor_view(t, NULL, LH_DTYPE_F32, ndim, shape, err) != LH_OK) {
        free(t);
        return NULL;
    }
    if (lh_mul_size((size_t)t->numel, sizeof(float), &bytes)) {
        lh_error_set(err, LH_ERR_OVERFLOW, "tensor of %lld elements overflows size_t",
                     (long long)t->numel);
        free(t);
        return NULL;
    }
    t->data = be->ops->alloc(be, bytes ? bytes : 1);
    lh_status st = t->data ? be->ops->memset0(be, t->data, bytes) : LH_ERR_NOMEM;
    if (st != LH_OK) {
        lh_error_set(err, st, "%s: no memory for a tensor of %zu bytes", be->ops->name, bytes);
        if (t->data) be->ops->free(be, t->data);
        free(t);
        return NULL;
    }
    t->owns_data = 1;
    t->be = be;
    return t;
}

void lh_tensor_destroy(lh_tensor *t) {
    if (!t) return;
    if (t->owns_data && t->be) t->be->ops->free(t->be, t->data);
    else if (t->owns_data) free(t->data);
    free(t);
}

float lh_tensor_get(const lh_tensor *t, int64_t i) {
    switch (t->dtype) {
    case LH_DTYPE_F32: return ((const float *)t->data)[i];
    case LH_DTYPE_F16: return lh_f16_to_f32(((const uint16_t *)t->data)[i]);
    case LH_DTYPE_BF16: return lh_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case LH_DTYPE_F64: return (float)((const double *)t->data)[i];
    default: return 0.0f;
    }
}

void lh_tensor_set(lh_tensor *t, int64_t i, float v) {
    switch (t->dtype) {
    case LH_DTYPE_F32: ((float *)t->data)[i] = v; break;
    case LH_DTYPE_F16: ((uint16_t *)t->data)[i] = lh_f32_to_f16(v); break;
    case LH_DTYPE_BF16: ((uint16_t *)t->data)[i] = lh_f32_to_bf16(v); break;
    case LH_DTYPE_F64: ((double *)t->data)[i] = v; break;
    default: break;
    }
}
