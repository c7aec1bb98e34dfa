/* Tensors: the concrete lh_tensor behind the plugin ABI's opaque handle.
 * A tensor lives in host memory (be NULL), where the ops in tensor_ops.c
 * compute on it in float32 (f16/bf16 storage converted), or, float32 only,
 * in the memory of a backend whose memory is not the host's (a device),
 * where tensor_ops.c runs the backend's ops on it. */
#ifndef LH_HOST_TENSOR_H
#define LH_HOST_TENSOR_H

#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

struct lh_tensor {
    lh_dtype dtype;
    int ndim;
    int64_t shape[LH_MAX_DIMS];
    int64_t numel;
    void *data;
    int owns_data;
    struct lh_backend *be; /* NULL: host memory; else data is this backend's (F32) */
};

/* New zero-filled tensor; NULL (with err) on bad shape, overflow or no memory. */
lh_tensor *lh_tensor_create(lh_dtype dtype, int ndim, const int64_t *shape, lh_error *err);
/* A tensor header over memory owned by someone else. */
lh_status lh_tensor_view(lh_tensor *out, void *data, lh_dtype dtype, int ndim,
                         const int64_t *shape, lh_error *err);
/* New zero-filled F32 tensor in be's memory (be NULL: lh_tensor_create). */
lh_tensor *lh_tensor_create_on(struct lh_backend *be, int ndim, const int64_t *shape,
                               lh_error *err);
void lh_tensor_destroy(lh_tensor *t);

/* Element i as float / store float into element i (f32, f16, bf16, f64). */
float lh_tensor_get(const lh_tensor *t, int64_t i);
void lh_tensor_set(lh_tensor *t, int64_t i, float v);

/* ---- Ops used by the host-services table (outputs first) ----
 * Operands are all host tensors, or all in one device's memory (copy,
 * gemm, conv2d with groups 1 and square stride/padding, axpby, fill with 0);
 * host_api.c moves mixed operands to one place first. */
lh_status lh_op_copy(lh_tensor *out, const lh_tensor *x, lh_error *err);
lh_status lh_op_fill(lh_tensor *out, double value, lh_error *err);
lh_status lh_op_axpby(lh_tensor *out, double a, const lh_tensor *x, double b,
                      const lh_tensor *y, lh_error *err);
lh_status lh_op_lincomb(lh_tensor *out, int n, const double *coef, const lh_tensor *const *xs,
                        lh_error *err);
lh_status lh_op_mul(lh_tensor *out, const lh_tensor *x, const lh_tensor *y, lh_error *err);
lh_status lh_op_clamp(lh_tensor *out, const lh_tensor *x, double lo, double hi, lh_error *err);
lh_status lh_op_gemm(lh_tensor *out, // [M, N]
                     const lh_tensor *a, // [M, K] or [K, M] with trans_a
                     const lh_tensor *b, // [K, N] or [N, K] with trans_b
                     int trans_a, int trans_b, double alpha, double beta, lh_error *err);
lh_status lh_op_conv2d(lh_tensor *out,        // [N, Cout, Ho, Wo]
                       const lh_tensor *x,    // [N, Cin, H, W]
                       const lh_tensor *w,    // [Cout, Cin/groups, kh, kw]
                       const lh_tensor *bias, // [Cout] or NULL
                       int stride_h, int stride_w, int pad_h, int pad_w, int dil_h,
                       int dil_w, int groups, lh_error *err);
/* conv2d's gradients (F32, groups 1, dilation 1, square stride/padding):
 * dx (may be NULL) = dL/dx, dw (may be NULL) += dw_scale * dL/dw. */
lh_status lh_op_conv2d_backward(lh_tensor *dx,       // [N, Cin, H, W] or NULL
                                lh_tensor *dw,       // [Cout, Cin, kh, kw] or NULL
                                const lh_tensor *dy, // [N, Cout, Ho, Wo]
                                const lh_tensor *x, const lh_tensor *w, int stride, int pad,
                                double dw_scale, lh_error *err);

#endif
