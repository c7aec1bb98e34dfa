/* Tensor ops behind the host-services table: elementwise ops, GEMM and
 * conv2d on host tensors, computed in float32 (accumulated in double)
 * whatever the storage type, the F32 GEMMs and convolutions by the cpu
 * backend; on device tensors, by their backend's ops. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "../kernels/backend.h"
#include "tensor.h"

/* ---- The compute backend for float32 tensors ----
 * Host tensors live in host memory, so the cpu backend's GEMM and conv2d
 * (OpenBLAS) serve them when every operand is F32; other dtypes take the
 * reference loops below. Created on first use, kept for the process. */

static lh_backend *g_backend;
static pthread_once_t g_backend_once = PTHREAD_ONCE_INIT;

static void backend_init(void) {
    char msg[256];
    if (lh_backend_cpu_create(&g_backend, 0, msg, sizeof msg) != LH_OK) g_backend = NULL;
}

static lh_backend *f32_backend(void) {
    pthread_once(&g_backend_once, backend_init);
    return g_backend;
}

/* Where an op on output `out` runs: its device, or the cpu backend. */
static lh_backend *op_backend(const lh_tensor *out) { return out->be ? out->be : f32_backend(); }

static int all_f32(const lh_tensor *a, const lh_tensor *b, const lh_tensor *c,
                   const lh_tensor *d) {
    return a->dtype == LH_DTYPE_F32 && b->dtype == LH_DTYPE_F32 && c->dtype == LH_DTYPE_F32 &&
           (!d || d->dtype == LH_DTYPE_F32);
}

/* ---- Checks ---- */

static int is_float_dtype(lh_dtype dt) {
    return dt == LH_DTYPE_F32 || dt == LH_DTYPE_F16 || dt == LH_DTYPE_BF16 ||
           dt == LH_DTYPE_F64;
}

static lh_status check_float(const lh_tensor *t, const char *what, lh_error *err) {
    if (!t || !t->data)
        return lh_error_set(err, LH_ERR_INVALID, "%s: tensor is NULL", what);
    if (!is_float_dtype(t->dtype))
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: dtype %d is not a floating-point type", what, (int)t->dtype);
    return LH_OK;
}

static lh_status check_same_numel(const lh_tensor *out, const lh_tensor *x, const char *op,
                                  lh_error *err) {
    lh_status st = check_float(out, op, err);
    if (st == LH_OK) st = check_float(x, op, err);
    if (st != LH_OK) return st;
    if (out->numel != x->numel)
        return lh_error_set(err, LH_ERR_SHAPE, "%s: %lld elements in output, %lld in input", op,
                            (long long)out->numel, (long long)x->numel);
    return LH_OK;
}

/* ---- Elementwise ---- */

lh_status lh_op_copy(lh_tensor *out, const lh_tensor *x, lh_error *err) {
    lh_status st = check_same_numel(out, x, "copy", err);
    if (st != LH_OK) return st;
    if (out->be) { /* x on the same device (host_api.c sees to it) */
        if (out->data == x->data) return LH_OK;
        st = out->be->ops->copy(out->be, out->data, x->data, (size_t)out->numel * sizeof(float));
        return st == LH_OK ? st
                           : lh_error_set(err, st, "copy: the %s backend failed",
                                          out->be->ops->name);
    }
    for (int64_t i = 0; i < out->numel; i++) lh_tensor_set(out, i, lh_tensor_get(x, i));
    return LH_OK;
}

lh_status lh_op_fill(lh_tensor *out, double value, lh_error *err) {
    lh_status st = check_float(out, "fill", err);
    if (st != LH_OK) return st;
    if (out->be) {
        if (value != 0.0)
            return lh_error_set(err, LH_ERR_UNSUPPORTED, "fill: device tensors take 0 only");
        st = out->be->ops->memset0(out->be, out->data, (size_t)out->numel * sizeof(float));
        return st == LH_OK ? st
                           : lh_error_set(err, st, "fill: the %s backend failed",
                                          out->be->ops->name);
    }
    for (int64_t i = 0; i < out->numel; i++) lh_tensor_set(out, i, (float)value);
    return LH_OK;
}

lh_status lh_op_axpby(lh_tensor *out, double a, const lh_tensor *x, double b,
                      const lh_tensor *y, lh_error *err) {
    lh_status st = check_same_numel(out, x, "axpby", err);
    if (st == LH_OK && y) st = check_same_numel(out, y, "axpby", err);
    if (st != LH_OK) return st;
    if (out->be) { /* on the device; without y, out = a x as a copy and a scale (0 * Inf is NaN) */
        lh_backend *be = out->be;
        if (out->numel == 0) return LH_OK;
        if (y)
            st = be->ops->axpby(be, out->data, (float)a, x->data, (float)b, y->data, out->numel);
        else if (out->data != x->data)
            st = be->ops->copy(be, out->data, x->data, (size_t)out->numel * sizeof(float));
        if (st == LH_OK && !y)
            st = be->ops->scale(be, out->data, out->numel, (float)a);
        return st == LH_OK ? st
                           : lh_error_set(err, st, "axpby: the %s backend failed",
                                          be->ops->name);
    }
    if (all_f32(out, x, out, y)) { /* the same arithmetic without the dtype switch */
        float *o = out->data;
        const float *xv = x->data, *yv = y ? y->data : NULL;
        if (yv)
            for (int64_t i = 0; i < out->numel; i++) o[i] = (float)(a * xv[i] + b * yv[i]);
        else
            for (int64_t i = 0; i < out->numel; i++) o[i] = (float)(a * xv[i]);
        return LH_OK;
    }
    for (int64_t i = 0; i < out->numel; i++) {
        double v = a * lh_tensor_get(x, i);
        if (y) v += b * lh_tensor_get(y, i);
        lh_tensor_set(out, i, (float)v);
    }
    return LH_OK;
}

lh_status lh_op_lincomb(lh_tensor *out, int n, const double *coef, const lh_tensor *const *xs,
                        lh_error *err) {
    if (n < 1 || !coef || !xs)
        return lh_error_set(err, LH_ERR_INVALID, "lincomb: needs at least one term");
    for (int k = 0; k < n; k++) {
        lh_status st = check_same_numel(out, xs[k], "lincomb", err);
        if (st != LH_OK) return st;
    }
    for (int64_t i = 0; i < out->numel; i++) {
        double v = 0.0;
        for (int k = 0; k < n; k++) v += coef[k] * lh_tensor_get(xs[k], i);
        lh_tensor_set(out, i, (float)v);
    }
    return LH_OK;
}

lh_status lh_op_mul(lh_tensor *out, const lh_tensor *x, const lh_tensor *y, lh_error *err) {
    lh_status st = check_same_numel(out, x, "mul", err);
    if (st == LH_OK) st = check_same_numel(out, y, "mul", err);
    if (st != LH_OK) return st;
    if (out->be) { /* x and y on the same device, F32 (host_api.c sees to it) */
        if (out->numel == 0) return LH_OK;
        st = out->be->ops->mul(out->be, out->data, x->data, y->data, out->numel);
        return st == LH_OK ? st
                           : lh_error_set(err, st, "mul: the %s backend failed",
                                          out->be->ops->name);
    }
    for (int64_t i = 0; i < out->numel; i++)
        lh_tensor_set(out, i, lh_tensor_get(x, i) * lh_tensor_get(y, i));
    return LH_OK;
}

lh_status lh_op_clamp(lh_tensor *out, const lh_tensor *x, double lo, double hi, lh_error *err) {
    lh_status st = check_same_numel(out, x, "clamp", err);
    if (st != LH_OK) return st;
    if (!(lo <= hi))
        return lh_error_set(err, LH_ERR_INVALID, "clamp: lower bound %g above upper %g", lo, hi);
    for (int64_t i = 0; i < out->numel; i++) {
        float v = lh_tensor_get(x, i);
        lh_tensor_set(out, i, v < lo ? (float)lo : v > hi ? (float)hi : v);
    }
    return LH_OK;
}

/* ---- GEMM ---- */

/* View t as a matrix: all axes but the last folded into rows. */
static void as_matrix(const lh_tensor *t, int64_t *rows, int64_t *cols) {
    *cols = t->ndim ? t->shape[t->ndim - 1] : 1;
    *rows = *cols ? t->numel / *cols : 0;
}

lh_status lh_op_gemm(lh_tensor *out, const lh_tensor *a, const lh_tensor *b, int trans_a,
                     int trans_b, double alpha, double beta, lh_error *err) {
    lh_status st = check_float(out, "gemm", err);
    if (st == LH_OK) st = check_float(a, "gemm", err);
    if (st == LH_OK) st = check_float(b, "gemm", err);
    if (st != LH_OK) return st;
    int64_t ar, ac, br, bc, orows, ocols;
    as_matrix(a, &ar, &ac);
    as_matrix(b, &br, &bc);
    as_matrix(out, &orows, &ocols);
    int64_t m = trans_a ? ac : ar, k = trans_a ? ar : ac;
    int64_t kb = trans_b ? bc : br, n = trans_b ? br : bc;
    if (k != kb || orows != m || ocols != n)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "gemm: op(a) is [%lld, %lld], op(b) is [%lld, %lld], out is "
                            "[%lld, %lld]",
                            (long long)m, (long long)k, (long long)kb, (long long)n,
                            (long long)orows, (long long)ocols);
    lh_backend *be = all_f32(out, a, b, NULL) ? op_backend(out) : NULL;
    if (be) {
        if (m == 0 || n == 0) return LH_OK;
        if (k == 0) /* out = beta out; beta 0 writes zeros whatever out held */
            return beta == 0.0 ? lh_op_fill(out, 0.0, err)
                               : lh_op_axpby(out, beta, out, 0.0, NULL, err);
        st = be->ops->gemm(be, out->data, a->data, b->data, trans_a, trans_b, m, n, k,
                           (float)alpha, (float)beta, 1, 0, 0, 0);
        if (st != LH_OK) return lh_error_set(err, st, "gemm: the %s backend failed", be->ops->name);
        return LH_OK;
    }
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++) {
                float av = lh_tensor_get(a, trans_a ? p * ac + i : i * ac + p);
                float bv = lh_tensor_get(b, trans_b ? j * bc + p : p * bc + j);
                acc += (double)av * bv;
            }
            double prev = beta != 0.0 ? beta * lh_tensor_get(out, i * n + j) : 0.0;
            lh_tensor_set(out, i * n + j, (float)(alpha * acc + prev));
        }
    }
    return LH_OK;
}

/* ---- Convolution ---- */

lh_status lh_op_conv2d(lh_tensor *out, const lh_tensor *x, const lh_tensor *w,
                       const lh_tensor *bias, int stride_h, int stride_w, int pad_h, int pad_w,
                       int dil_h, int dil_w, int groups, lh_error *err) {
    lh_status st = check_float(out, "conv2d", err);
    if (st == LH_OK) st = check_float(x, "conv2d", err);
    if (st == LH_OK) st = check_float(w, "conv2d", err);
    if (st == LH_OK && bias) st = check_float(bias, "conv2d bias", err);
    if (st != LH_OK) return st;
    if (x->ndim != 4 || w->ndim != 4 || out->ndim != 4)
        return lh_error_set(err, LH_ERR_SHAPE, "conv2d: x, w and out must be 4-D");
    if (stride_h < 1 || stride_w < 1 || dil_h < 1 || dil_w < 1 || pad_h < 0 || pad_w < 0 ||
        groups < 1)
        return lh_error_set(err, LH_ERR_INVALID, "conv2d: stride, dilation and groups must be "
                                                 ">= 1 and padding >= 0");
    int64_t nb = x->shape[0], cin = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t cout = w->shape[0], cpg = w->shape[1], kh = w->shape[2], kw = w->shape[3];
    if (cin % groups || cout % groups || cpg != cin / groups)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "conv2d: weight [%lld, %lld, %lld, %lld] does not fit %lld input "
                            "channels in %d groups",
                            (long long)cout, (long long)cpg, (long long)kh, (long long)kw,
                            (long long)cin, groups);
    int64_t ho = (h + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1;
    int64_t wo = (wd + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1;
    if (out->shape[0] != nb || out->shape[1] != cout || out->shape[2] != ho ||
        out->shape[3] != wo)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "conv2d: out is [%lld, %lld, %lld, %lld], expected [%lld, %lld, "
                            "%lld, %lld]",
                            (long long)out->shape[0], (long long)out->shape[1],
                            (long long)out->shape[2], (long long)out->shape[3], (long long)nb,
                            (long long)cout, (long long)ho, (long long)wo);
    if (bias && bias->numel != cout)
        return lh_error_set(err, LH_ERR_SHAPE, "conv2d: bias has %lld elements, expected %lld",
                            (long long)bias->numel, (long long)cout);
    lh_backend *be = all_f32(out, x, w, bias) && groups == 1 && dil_h == 1 && dil_w == 1 &&
                             stride_h == stride_w && pad_h == pad_w
                         ? op_backend(out)
                         : NULL;
    if (be) {
        if (out->numel == 0) return LH_OK;
        st = be->ops->conv2d(be, out->data, x->data, w->data, bias ? bias->data : NULL, nb, cin,
                             h, wd, cout, kh, kw, stride_h, pad_h);
        if (st != LH_OK)
            return lh_error_set(err, st, "conv2d: the %s backend failed", be->ops->name);
        return LH_OK;
    }
    int64_t opg = cout / groups;
    for (int64_t n = 0; n < nb; n++)
        for (int64_t co = 0; co < cout; co++) {
            int64_t g = co / opg;
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    double acc = bias ? lh_tensor_get(bias, co) : 0.0;
                    for (int64_t ci = 0; ci < cpg; ci++)
                        for (int64_t ky = 0; ky < kh; ky++) {
                            int64_t iy = oy * stride_h - pad_h + ky * dil_h;
                            if (iy < 0 || iy >= h) continue;
                            for (int64_t kx = 0; kx < kw; kx++) {
                                int64_t ix = ox * stride_w - pad_w + kx * dil_w;
                                if (ix < 0 || ix >= wd) continue;
                                int64_t xi = ((n * cin + g * cpg + ci) * h + iy) * wd + ix;
                                int64_t wi = ((co * cpg + ci) * kh + ky) * kw + kx;
                                acc += (double)lh_tensor_get(x, xi) * lh_tensor_get(w, wi);
                            }
                        }
                    lh_tensor_set(out, ((n * cout + co) * ho + oy) * wo + ox, (float)acc);
                }
        }
    return LH_OK;
}

lh_status lh_op_conv2d_backward(lh_tensor *dx, lh_tensor *dw, const lh_tensor *dy,
                                const lh_tensor *x, const lh_tensor *w, int stride, int pad,
                                double dw_scale, lh_error *err) {
    if (!dy || !x || !w || (!dx && !dw))
        return lh_error_set(err, LH_ERR_INVALID, "conv2d_backward: a NULL tensor");
    const lh_tensor *ts[5] = {dx, dw, dy, x, w};
    for (int i = 0; i < 5; i++)
        if (ts[i] && (ts[i]->dtype != LH_DTYPE_F32 || ts[i]->ndim != 4))
            return lh_error_set(err, LH_ERR_UNSUPPORTED, "conv2d_backward: tensors must be 4-D F32");
    if (stride < 1 || pad < 0)
        return lh_error_set(err, LH_ERR_INVALID, "conv2d_backward: stride %d, padding %d", stride,
                            pad);
    int64_t n = x->shape[0], cin = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
    if (w->shape[1] != cin || h + 2 * pad < kh || wd + 2 * pad < kw || dy->shape[0] != n ||
        dy->shape[1] != cout || dy->shape[2] != ho || dy->shape[3] != wo ||
        (dx && dx->numel != x->numel) || (dw && dw->numel != w->numel))
        return lh_error_set(err, LH_ERR_SHAPE, "conv2d_backward: dy [%lld, %lld, %lld, %lld] "
                            "does not fit x [%lld, %lld, %lld, %lld] and w [%lld, %lld, %lld, "
                            "%lld], or dx/dw are not shaped like them",
                            (long long)dy->shape[0], (long long)dy->shape[1],
                            (long long)dy->shape[2], (long long)dy->shape[3], (long long)n,
                            (long long)cin, (long long)h, (long long)wd, (long long)cout,
                            (long long)w->shape[1], (long long)kh, (long long)kw);
    lh_backend *be = op_backend(dx ? dx : dw);
    lh_status st = LH_OK;
    if (dx) /* dL/dx: written */
        st = be->ops->conv2d_backward(be, dx->data, NULL, NULL, dy->data, x->data, w->data, n, cin,
                                      h, wd, cout, kh, kw, stride, pad);
    if (st == LH_OK && dw && dw_scale == 1.0) {
        st = be->ops->conv2d_backward(be, NULL, dw->data, NULL, dy->data, x->data, w->data, n,
                                      cin, h, wd, cout, kh, kw, stride, pad);
    } else if (st == LH_OK && dw) { /* on dy scaled by dw_scale */
        size_t bytes = (size_t)dy->numel * sizeof(float);
        float *sdy = be->ops->alloc(be, bytes ? bytes : 1);
        st = sdy ? be->ops->copy(be, sdy, dy->data, bytes) : LH_ERR_NOMEM;
        if (st == LH_OK) st = be->ops->scale(be, sdy, dy->numel, (float)dw_scale);
        if (st == LH_OK)
            st = be->ops->conv2d_backward(be, NULL, dw->data, NULL, sdy, x->data, w->data, n,
                                          cin, h, wd, cout, kh, kw, stride, pad);
        if (sdy) be->ops->free(be, sdy);
    }
    return st == LH_OK ? st
                       : lh_error_set(err, st, "conv2d_backward: the %s backend failed",
                                      be->ops->name);
}
