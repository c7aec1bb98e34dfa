/* Adapter plugins: runtime forward and backward of a chain of linear or
 * convolution stages (LoRA's down [-> mid] -> up, or one dense delta).
 * Everything runs on the host's GEMM / conv2d; the conv backward through
 * im2col / col2im on host arrays around the GEMMs. */
#include "ad_common.h"

/* ---- Convolution gradients: im2col and the host's GEMM ---- */

/* dst [numel(t)] += t */
static lh_status add_tensor(const lh_ad_base *b, float *dst, const lh_tensor *t, char *err,
                            size_t err_size) {
    float *v = NULL;
    lh_status st = lh_ad_read(b, &v, t, err, err_size);
    for (int64_t i = 0, n = b->host->tensor_numel(t); st == LH_OK && i < n; i++) dst[i] += v[i];
    b->host->free(v);
    return st;
}


typedef struct conv_dims {
    int64_t n, cin, h, w, cout, kh, kw, ho, wo;
    int64_t stride, pad;
} conv_dims;

/* cols [cin * kh * kw, ho * wo] of one image x [cin, h, w] (zero padding). */
static void im2col(float *cols, const float *x, const conv_dims *c) {
    int64_t p = c->ho * c->wo;
    for (int64_t ci = 0; ci < c->cin; ci++)
        for (int64_t ky = 0; ky < c->kh; ky++)
            for (int64_t kx = 0; kx < c->kw; kx++) {
                float *row = cols + ((ci * c->kh + ky) * c->kw + kx) * p;
                for (int64_t oy = 0; oy < c->ho; oy++) {
                    int64_t iy = oy * c->stride + ky - c->pad;
                    for (int64_t ox = 0; ox < c->wo; ox++) {
                        int64_t ix = ox * c->stride + kx - c->pad;
                        row[oy * c->wo + ox] = iy >= 0 && iy < c->h && ix >= 0 && ix < c->w
                                                   ? x[(ci * c->h + iy) * c->w + ix]
                                                   : 0.0f;
                    }
                }
            }
}

/* dx [cin, h, w] += the columns dcols [cin * kh * kw, ho * wo] put back. */
static void col2im(float *dx, const float *dcols, const conv_dims *c) {
    int64_t p = c->ho * c->wo;
    for (int64_t ci = 0; ci < c->cin; ci++)
        for (int64_t ky = 0; ky < c->kh; ky++)
            for (int64_t kx = 0; kx < c->kw; kx++) {
                const float *row = dcols + ((ci * c->kh + ky) * c->kw + kx) * p;
                for (int64_t oy = 0; oy < c->ho; oy++) {
                    int64_t iy = oy * c->stride + ky - c->pad;
                    if (iy < 0 || iy >= c->h) continue;
                    for (int64_t ox = 0; ox < c->wo; ox++) {
                        int64_t ix = ox * c->stride + kx - c->pad;
                        if (ix >= 0 && ix < c->w) dx[(ci * c->h + iy) * c->w + ix] += row[oy * c->wo + ox];
                    }
                }
            }
}

/* The scratch of one conv stage's gradients: per image, dy [cout, P] and
 * the columns [K, P] (P = ho * wo, K = cin * kh * kw) as host tensors. */
typedef struct conv_scratch {
    lh_tensor *dy, *cols, *wk; /* wk: the weight viewed as [cout, K] */
    float *buf;                /* [K * P] host columns */
} conv_scratch;

static void scratch_free(const lh_ad_base *b, conv_scratch *k) {
    b->host->tensor_free(k->dy);
    b->host->tensor_free(k->cols);
    b->host->tensor_free(k->wk);
    b->host->free(k->buf);
}

/* gw [cout, cin, kh, kw] += a * sum over images of dy_n cols_n^T, and
 * gin [n, cin, h, w] (when not NULL) = sum of col2im(w^T dy_n), both
 * through the host's GEMM. */
static lh_status conv_grads(const lh_ad_base *b, float *gw, float *gin, const float *x,
                            const float *dy, const lh_ad_stage *s, const conv_dims *c, double a,
                            char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    int64_t p = c->ho * c->wo, k = c->cin * c->kh * c->kw;
    const int64_t dshape[2] = {c->cout, p}, cshape[2] = {k, p}, wshape[2] = {c->cout, k};
    conv_scratch sc = {h->tensor_new(LH_DTYPE_F32, 2, dshape), h->tensor_new(LH_DTYPE_F32, 2, cshape),
                       h->tensor_reshape(s->w, 2, wshape), NULL};
    lh_tensor *dw = gw ? h->tensor_new(LH_DTYPE_F32, 2, wshape) : NULL;
    lh_status st = sc.dy && sc.cols && sc.wk && (!gw || dw) ? LH_OK : LH_ERR_NOMEM;
    if (st == LH_OK) st = lh_ad_zeros(b, &sc.buf, k * p, err, err_size);
    else st = lh_ad_host_fail(b, err, err_size, st, "conv gradient scratch");
    for (int64_t i = 0; st == LH_OK && i < c->n; i++) {
        st = h->tensor_write(sc.dy, dy + i * c->cout * p, c->cout * p);
        if (st == LH_OK && gw) {
            im2col(sc.buf, x + i * c->cin * c->h * c->w, c);
            st = h->tensor_write(sc.cols, sc.buf, k * p);
            if (st == LH_OK) st = h->gemm(dw, sc.dy, sc.cols, 0, 1, a, i ? 1.0 : 0.0);
        }
        if (st == LH_OK && gin) {
            st = h->gemm(sc.cols, sc.wk, sc.dy, 1, 0, 1.0, 0.0);
            if (st == LH_OK) st = h->tensor_read(sc.cols, sc.buf, k * p);
            if (st == LH_OK) col2im(gin + i * c->cin * c->h * c->w, sc.buf, c);
        }
        if (st != LH_OK) st = lh_ad_host_fail(b, err, err_size, st, "conv gradient");
    }
    if (st == LH_OK && gw && c->n) st = add_tensor(b, gw, dw, err, err_size);
    h->tensor_free(dw);
    scratch_free(b, &sc);
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

static conv_dims dims_of(const lh_host_api *h, const lh_tensor *in, const lh_ad_stage *s) {
    conv_dims c = {h->tensor_dim(in, 0),
                   h->tensor_dim(in, 1),
                   h->tensor_dim(in, 2),
                   h->tensor_dim(in, 3),
                   h->tensor_dim(s->w, 0),
                   h->tensor_dim(s->w, 2),
                   h->tensor_dim(s->w, 3),
                   0,
                   0,
                   s->stride,
                   s->pad};
    c.ho = (c.h + 2 * c.pad - c.kh) / c.stride + 1;
    c.wo = (c.w + 2 * c.pad - c.kw) / c.stride + 1;
    return c;
}

/* One conv stage backward: gw += a * wgrad; *g becomes dL/d(input) when
 * needed (then the old *g is freed). */
static lh_status conv_stage_back(const lh_ad_base *b, float *gw, float **g, int need_gin,
                                 const lh_tensor *in, const lh_ad_stage *s, double a, char *err,
                                 size_t err_size) {
    conv_dims c = dims_of(b->host, in, s);
    float *v = NULL, *gin = NULL;
    lh_status st = gw ? lh_ad_read(b, &v, in, err, err_size) : LH_OK;
    if (st == LH_OK && need_gin) st = lh_ad_zeros(b, &gin, c.n * c.cin * c.h * c.w, err, err_size);
    if (st == LH_OK && (gw || gin)) st = conv_grads(b, gw, gin, v, *g, s, &c, a, err, err_size);
    b->host->free(v);
    if (st == LH_OK && gin) {
        b->host->free(*g);
        *g = gin;
    } else {
        b->host->free(gin);
    }
    return st;
}

static lh_status conv_backward(const lh_ad_base *b, float *const *gw, lh_tensor *dx,
                               const lh_tensor *dy, lh_tensor *const *hs, const lh_tensor *x,
                               const lh_ad_stage *st, int n, double a, char *err, size_t err_size) {
    float *g = NULL;
    lh_status s = lh_ad_read(b, &g, dy, err, err_size);
    for (int k = n - 1; s == LH_OK && k >= 0; k--)
        s = conv_stage_back(b, gw[k], &g, k > 0 || dx, k ? hs[k - 1] : x, &st[k], a, err, err_size);
    if (s == LH_OK && dx) s = lh_ad_add(b, dx, g, b->host->tensor_numel(x), a, err, err_size);
    b->host->free(g);
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
        s = conv_backward(b, gw, dx, dy, hs, x, st, n, a, err, err_size);
    free_all(b, hs, n);
    return s;
}
