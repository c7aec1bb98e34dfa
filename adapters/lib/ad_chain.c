/* Adapter plugins: runtime forward and backward of a chain of linear or
 * convolution stages (LoRA's down [-> mid] -> up, or one dense delta).
 * Everything runs on the host's gemm, conv2d and conv2d_backward, where the
 * host keeps the tensors (a device's memory during training on one). */
#include "ad_common.h"

#include <stddef.h>

/* dst [numel(t)] += t */
static lh_status add_tensor(const lh_ad_base *b, float *dst, const lh_tensor *t, char *err,
                            size_t err_size) {
    float *v = NULL;
    lh_status st = lh_ad_read(b, &v, t, err, err_size);
    for (int64_t i = 0, n = b->host->tensor_numel(t); st == LH_OK && i < n; i++) dst[i] += v[i];
    b->host->free(v);
    return st;
}

/* ---- Stages ---- */

/* shape [form.ndim] = the output shape of stage s on input `in`, checked. */
static lh_status out_shape(const lh_ad_base *b, int64_t *shape, const lh_tensor *in,
                           const lh_ad_stage *s, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    int nd = h->tensor_ndim(in);
    int64_t cin = h->tensor_dim(s->w, 1);
    shape[1] = h->tensor_dim(s->w, 0);
    if (b->form.ndim == 2) {
        if (nd < 1 || h->tensor_dim(in, nd - 1) != cin)
            return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE,
                              "input's last axis is %lld, expected %lld",
                              nd < 1 ? -1LL : (long long)h->tensor_dim(in, nd - 1), (long long)cin);
        shape[0] = h->tensor_numel(in) / cin;
        return LH_OK;
    }
    int64_t ih = h->tensor_dim(in, 2) + 2 * s->pad, iw = h->tensor_dim(in, 3) + 2 * s->pad;
    int64_t kh = h->tensor_dim(s->w, 2), kw = h->tensor_dim(s->w, 3);
    if (nd != 4 || h->tensor_dim(in, 1) != cin || ih < kh || iw < kw)
        return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE,
                          "input must be [n, %lld, h, w] with h, w >= %lld - 2 * %d",
                          (long long)cin, (long long)kh, s->pad);
    shape[0] = h->tensor_dim(in, 0);
    shape[2] = (ih - kh) / s->stride + 1;
    shape[3] = (iw - kw) / s->stride + 1;
    return LH_OK;
}

/* *out = a new F32 tensor for the output of stage s on input `in`. */
static lh_status new_output(const lh_ad_base *b, lh_tensor **out, const lh_tensor *in,
                            const lh_ad_stage *s, char *err, size_t err_size) {
    int64_t shape[4];
    lh_status st = out_shape(b, shape, in, s, err, err_size);
    if (st != LH_OK) return st;
    *out = b->host->tensor_new(LH_DTYPE_F32, b->form.ndim, shape);
    return *out ? LH_OK : lh_ad_host_fail(b, err, err_size, LH_ERR_NOMEM, "activation");
}

/* out = stage s applied to in (conv: plus bias). */
static lh_status run_stage(const lh_ad_base *b, lh_tensor *out, const lh_tensor *in,
                           const lh_ad_stage *s, const lh_tensor *bias) {
    if (b->form.ndim == 2) return b->host->gemm(out, in, s->w, 0, 1, 1.0, 0.0);
    return b->host->conv2d(out, in, s->w, bias, s->stride, s->stride, s->pad, s->pad, 1, 1, 1);
}

/* hs[k] = output of stages 0..k, k < n. */
static lh_status acts(const lh_ad_base *b, lh_tensor **hs, const lh_tensor *x,
                      const lh_ad_stage *st, int n, char *err, size_t err_size) {
    const lh_tensor *cur = x;
    for (int k = 0; k < n; k++) {
        lh_status s = new_output(b, &hs[k], cur, &st[k], err, err_size);
        if (s != LH_OK) return s;
        if ((s = run_stage(b, hs[k], cur, &st[k], NULL)) != LH_OK)
            return lh_ad_host_fail(b, err, err_size, s, "adapter stage");
        cur = hs[k];
    }
    return LH_OK;
}

static void free_all(const lh_ad_base *b, lh_tensor **ts, int n) {
    for (int k = 0; k < n; k++) b->host->tensor_free(ts[k]);
}

/* ---- Forward ---- */

/* y += a * (in @ w^T + bias): the bias through a GEMM with a column of ones. */
static lh_status linear_last(const lh_ad_base *b, lh_tensor *y, const lh_tensor *in,
                             const lh_ad_stage *s, double a, const lh_tensor *bias) {
    const lh_host_api *h = b->host;
    lh_status st = h->gemm(y, in, s->w, 0, 1, a, 1.0);
    if (st != LH_OK || !bias) return st;
    int64_t shape[2] = {h->tensor_numel(in) / h->tensor_dim(s->w, 1), 1};
    lh_tensor *ones = h->tensor_new(LH_DTYPE_F32, 2, shape);
    st = ones ? h->tensor_fill(ones, 1.0) : LH_ERR_NOMEM;
    if (st == LH_OK) st = h->gemm(y, ones, bias, 0, 0, a, 1.0);
    h->tensor_free(ones);
    return st;
}

lh_status lh_ad_forward(const lh_ad_base *b, lh_tensor *y, const lh_tensor *x,
                        const lh_ad_stage *st, int n, double a, const lh_tensor *bias, char *err,
                        size_t err_size) {
    lh_tensor *hs[LH_AD_MAX_STAGES] = {0};
    lh_status s = acts(b, hs, x, st, n - 1, err, err_size);
    const lh_tensor *in = n > 1 ? hs[n - 2] : x;
    if (s == LH_OK && b->form.ndim == 2) {
        if ((s = linear_last(b, y, in, &st[n - 1], a, bias)) != LH_OK)
            s = lh_ad_host_fail(b, err, err_size, s, "adapter forward");
    } else if (s == LH_OK &&
               (s = new_output(b, &hs[n - 1], in, &st[n - 1], err, err_size)) == LH_OK) {
        s = run_stage(b, hs[n - 1], in, &st[n - 1], bias);
        if (s == LH_OK) s = b->host->tensor_axpby(y, 1.0, y, a, hs[n - 1]);
        if (s != LH_OK) s = lh_ad_host_fail(b, err, err_size, s, "adapter forward");
    }
    free_all(b, hs, n);
    return s;
}

/* ---- Backward ---- */

/* One linear stage backward: gt (or gw) += a * g^T in; *gin = g @ w (k > 0)
 * or dx += a * g @ w. */
static lh_status linear_stage_back(const lh_ad_base *b, float *gw, lh_tensor *gt, lh_tensor **gin,
                                   lh_tensor *dx, const lh_tensor *g, const lh_tensor *in,
                                   const lh_ad_stage *s, double a, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    const int64_t wshape[2] = {h->tensor_dim(s->w, 0), h->tensor_dim(s->w, 1)};
    lh_status st = LH_OK;
    if (gt) {
        if ((st = h->gemm(gt, g, in, 1, 0, a, 1.0)) != LH_OK)
            return lh_ad_host_fail(b, err, err_size, st, "weight gradient");
    } else if (gw) {
        lh_tensor *t = h->tensor_new(LH_DTYPE_F32, 2, wshape);
        st = t ? h->gemm(t, g, in, 1, 0, a, 0.0) : LH_ERR_NOMEM;
        if (st == LH_OK)
            st = add_tensor(b, gw, t, err, err_size);
        else
            st = lh_ad_host_fail(b, err, err_size, st, "weight gradient");
        h->tensor_free(t);
    }
    if (st != LH_OK) return st;
    if (gin) {
        const int64_t shape[2] = {h->tensor_numel(in) / wshape[1], wshape[1]};
        *gin = h->tensor_new(LH_DTYPE_F32, 2, shape);
        st = *gin ? h->gemm(*gin, g, s->w, 0, 0, 1.0, 0.0) : LH_ERR_NOMEM;
    } else if (dx) {
        st = h->gemm(dx, g, s->w, 0, 0, a, 1.0);
    }
    return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "input gradient");
}

static lh_status linear_backward(const lh_ad_base *b, float *const *gw, lh_tensor *const *gt,
                                 lh_tensor *dx, const lh_tensor *dy, lh_tensor *const *hs,
                                 const lh_tensor *x, const lh_ad_stage *st, int n, double a,
                                 char *err, size_t err_size) {
    lh_tensor *gs[LH_AD_MAX_STAGES] = {0}; /* gs[k] = dL/d(input of stage k), k > 0 */
    lh_status s = LH_OK;
    for (int k = n - 1; s == LH_OK && k >= 0; k--)
        s = linear_stage_back(b, gw ? gw[k] : NULL, gt ? gt[k] : NULL, k ? &gs[k] : NULL, dx,
                              k == n - 1 ? dy : gs[k + 1], k ? hs[k - 1] : x, &st[k], a, err,
                              err_size);
    free_all(b, gs, n);
    return s;
}

/* Conv chains: each stage's gradients by the host's conv2d_backward; the
 * weight gradient accumulates into gt[k] (a tensor shaped like the stage's
 * weight, where it lives) or gw[k] (host floats), scaled by a; the
 * gradient flowing down stays unscaled until dx += a * it. */
static lh_status conv_backward(const lh_ad_base *b, float *const *gw, lh_tensor *const *gt,
                               lh_tensor *dx, const lh_tensor *dy, lh_tensor *const *hs,
                               const lh_tensor *x, const lh_ad_stage *st, int n, double a,
                               char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    if (h->size <= offsetof(lh_host_api, conv2d_backward) || !h->conv2d_backward)
        return lh_ad_fail(b, err, err_size, LH_ERR_UNSUPPORTED,
                          "the host has no conv2d_backward: convolution adapters cannot train");
    const lh_tensor *g = dy; /* dL/d(output of stage k) */
    lh_tensor *own = NULL;   /* g, when this function made it */
    lh_status s = LH_OK;
    for (int k = n - 1; s == LH_OK && k >= 0; k--) {
        const lh_tensor *in = k ? hs[k - 1] : x;
        lh_tensor *gin = NULL, *tmp = NULL, *acc = gt && gt[k] ? gt[k] : NULL;
        if ((k > 0 || dx) && !(gin = h->tensor_new_like(in))) s = LH_ERR_NOMEM;
        if (s == LH_OK && !acc && gw && gw[k] && !(acc = tmp = h->tensor_new_like(st[k].w)))
            s = LH_ERR_NOMEM;
        if (s == LH_OK && (gin || acc))
            s = h->conv2d_backward(gin, acc, g, in, st[k].w, st[k].stride, st[k].pad, a);
        if (s != LH_OK) s = lh_ad_host_fail(b, err, err_size, s, "conv gradient");
        if (s == LH_OK && tmp) s = add_tensor(b, gw[k], tmp, err, err_size);
        h->tensor_free(tmp);
        h->tensor_free(own);
        own = gin;
        g = gin;
    }
    if (s == LH_OK && dx && (s = h->tensor_axpby(dx, 1.0, dx, a, g)) != LH_OK)
        s = lh_ad_host_fail(b, err, err_size, s, "input gradient");
    h->tensor_free(own);
    return s;
}

/* dy must have the chain's output shape and dx x's (conv works on raw arrays). */
static lh_status check_grads(const lh_ad_base *b, const lh_tensor *dx, const lh_tensor *dy,
                             const lh_tensor *x, const lh_tensor *in, const lh_ad_stage *s,
                             char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    int64_t shape[4] = {1, 1, 1, 1};
    lh_status st = out_shape(b, shape, in, s, err, err_size);
    int64_t want = shape[0] * shape[1] * shape[2] * shape[3];
    if (st == LH_OK && h->tensor_numel(dy) != want)
        return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE, "dy has %lld elements, expected %lld",
                          (long long)h->tensor_numel(dy), (long long)want);
    if (st == LH_OK && dx && h->tensor_numel(dx) != h->tensor_numel(x))
        return lh_ad_fail(b, err, err_size, LH_ERR_SHAPE, "dx has %lld elements, x %lld",
                          (long long)h->tensor_numel(dx), (long long)h->tensor_numel(x));
    return st;
}

lh_status lh_ad_backward(const lh_ad_base *b, float *const *gw, lh_tensor *const *gt,
                         lh_tensor *dx, const lh_tensor *dy, const lh_tensor *x,
                         const lh_ad_stage *st, int n, double a, char *err, size_t err_size) {
    lh_tensor *hs[LH_AD_MAX_STAGES] = {0};
    lh_status s = acts(b, hs, x, st, n - 1, err, err_size);
    if (s == LH_OK) s = check_grads(b, dx, dy, x, n > 1 ? hs[n - 2] : x, &st[n - 1], err, err_size);
    if (s == LH_OK && b->form.ndim == 2)
        s = linear_backward(b, gw, gt, dx, dy, hs, x, st, n, a, err, err_size);
    else if (s == LH_OK)
        s = conv_backward(b, gw, gt, dx, dy, hs, x, st, n, a, err, err_size);
    free_all(b, hs, n);
    return s;
}
