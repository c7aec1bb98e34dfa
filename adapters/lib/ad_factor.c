/* Adapter plugins: a matrix stored whole or as a low-rank / Tucker product
 * (LoRA's up @ down, LoHa's and LoKr's factors), its dense value and the
 * chain rule from the dense gradient to the stored tensors. Host arrays,
 * double accumulation. */
#include "ad_common.h"

#include <stddef.h>

/* c [m, n] (+)= op(a) op(b); op(a) [m, k] is a^T when ta, op(b) [k, n] b^T when tb. */
static void mm(float *c, const float *a, const float *b, int64_t m, int64_t k, int64_t n, int ta,
               int tb, int acc) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = acc ? c[i * n + j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                s += (double)a[ta ? p * m + i : i * k + p] * b[tb ? j * k + p : p * n + j];
            c[i * n + j] = (float)s;
        }
}

void lh_ad_factor_init(lh_ad_factor *f) {
    *f = (lh_ad_factor){.gi_w = -1, .gi_up = -1, .gi_down = -1, .gi_mid = -1};
}

void lh_ad_factor_free(const lh_ad_base *b, lh_ad_factor *f) {
    b->host->tensor_free(f->w);
    b->host->tensor_free(f->up);
    b->host->tensor_free(f->down);
    b->host->tensor_free(f->mid);
    lh_ad_factor_init(f);
}

/* The stored tensors as arrays; core = mid x_2 down [r, in, k] for Tucker. */
typedef struct arrays {
    float *up, *down, *mid, *core;
} arrays;

static void arrays_free(const lh_ad_base *b, arrays *a) {
    b->host->free(a->up);
    b->host->free(a->down);
    b->host->free(a->mid);
    b->host->free(a->core);
}

static lh_status arrays_read(const lh_ad_base *b, arrays *a, const lh_ad_factor *f, char *err,
                             size_t err_size) {
    *a = (arrays){0};
    lh_status st = lh_ad_read(b, &a->up, f->up, err, err_size);
    if (st == LH_OK) st = lh_ad_read(b, &a->down, f->down, err, err_size);
    if (st != LH_OK || !f->mid) return st;
    st = lh_ad_read(b, &a->mid, f->mid, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &a->core, f->r * f->in * f->k, err, err_size);
    if (st != LH_OK) return st;
    for (int64_t p = 0; p < f->r; p++)
        for (int64_t i = 0; i < f->in; i++)
            for (int64_t kk = 0; kk < f->k; kk++) {
                double s = 0.0;
                for (int64_t q = 0; q < f->r2; q++)
                    s += (double)a->mid[(p * f->r2 + q) * f->k + kk] * a->down[q * f->in + i];
                a->core[(p * f->in + i) * f->k + kk] = (float)s;
            }
    return LH_OK;
}

/* out (+)= alpha * up @ down through the host's GEMM: out viewed as
 * [rows, in * k]. LH_ERR_UNSUPPORTED for Tucker factors or a host without
 * tensor_reshape (the callers then take the loops). */
static lh_status gemm_dense(const lh_ad_base *b, lh_tensor *out, const lh_ad_factor *f,
                            double alpha, double beta) {
    const lh_host_api *h = b->host;
    if (f->mid || h->size <= offsetof(lh_host_api, tensor_reshape) || !h->tensor_reshape)
        return LH_ERR_UNSUPPORTED;
    int64_t cols = f->in * f->k;
    const int64_t so[2] = {f->rows, cols}, sd[2] = {f->r, cols};
    const int64_t su[2] = {f->up_t ? f->r : f->rows, f->up_t ? f->rows : f->r};
    lh_tensor *o = h->tensor_reshape(out, 2, so), *u = h->tensor_reshape(f->up, 2, su);
    lh_tensor *d = h->tensor_reshape(f->down, 2, sd);
    lh_status st = o && u && d ? h->gemm(o, u, d, f->up_t, 0, alpha, beta) : LH_ERR_NOMEM;
    h->tensor_free(o);
    h->tensor_free(u);
    h->tensor_free(d);
    return st;
}

lh_status lh_ad_factor_add_to(const lh_ad_base *b, lh_tensor *delta, const lh_ad_factor *f,
                              double alpha, char *err, size_t err_size) {
    lh_status st;
    if (f->w) {
        st = b->host->tensor_axpby(delta, 1.0, delta, alpha, f->w);
        return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "weight_delta");
    }
    st = gemm_dense(b, delta, f, alpha, 1.0);
    if (st != LH_ERR_UNSUPPORTED)
        return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "gemm");
    float *w = NULL;
    st = lh_ad_factor_dense(b, &w, f, err, err_size);
    if (st == LH_OK) st = lh_ad_add(b, delta, w, b->form.numel, alpha, err, err_size);
    b->host->free(w);
    return st;
}

lh_status lh_ad_factor_dense(const lh_ad_base *b, float **out, const lh_ad_factor *f, char *err,
                             size_t err_size) {
    if (f->w) return lh_ad_read(b, out, f->w, err, err_size);
    if (!f->mid) { /* the host's GEMM into a scratch tensor */
        int64_t n = f->rows * f->in * f->k;
        lh_tensor *t = b->host->tensor_new(LH_DTYPE_F32, 1, &n);
        lh_status st = t ? gemm_dense(b, t, f, 1.0, 0.0) : LH_ERR_NOMEM;
        if (st == LH_OK) st = lh_ad_read(b, out, t, err, err_size);
        b->host->tensor_free(t);
        if (st != LH_ERR_UNSUPPORTED)
            return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "gemm");
    }
    arrays a;
    int64_t cols = f->in * f->k;
    lh_status st = arrays_read(b, &a, f, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, out, f->rows * cols, err, err_size);
    if (st == LH_OK) mm(*out, a.up, a.core ? a.core : a.down, f->rows, f->r, cols, f->up_t, 0, 0);
    arrays_free(b, &a);
    return st;
}

lh_status lh_ad_factor_dense_t(const lh_ad_base *b, lh_tensor *out, const lh_ad_factor *f,
                               double alpha, char *err, size_t err_size) {
    lh_status st = f->w ? b->host->tensor_axpby(out, alpha, f->w, 0.0, NULL)
                        : gemm_dense(b, out, f, alpha, 0.0);
    return st == LH_OK || st == LH_ERR_UNSUPPORTED
               ? st
               : lh_ad_host_fail(b, err, err_size, st, "dense factor");
}

/* dst += alpha * op(a) op(b), each viewed as a matrix: dst [m, n], op(a)
 * [m, k] (a stored [k, m] when ta), op(b) [k, n] (b stored [n, k] when tb). */
static lh_status gemm_into(const lh_host_api *h, lh_tensor *dst, const lh_tensor *a,
                           const lh_tensor *bt, int ta, int tb, int64_t m, int64_t k, int64_t n,
                           double alpha) {
    const int64_t sd[2] = {m, n}, sa[2] = {ta ? k : m, ta ? m : k};
    const int64_t sb[2] = {tb ? n : k, tb ? k : n};
    lh_tensor *vd = h->tensor_reshape(dst, 2, sd), *va = h->tensor_reshape(a, 2, sa);
    lh_tensor *vb = h->tensor_reshape(bt, 2, sb);
    lh_status st = vd && va && vb ? h->gemm(vd, va, vb, ta, tb, alpha, 1.0) : LH_ERR_NOMEM;
    h->tensor_free(vd);
    h->tensor_free(va);
    h->tensor_free(vb);
    return st;
}

lh_status lh_ad_factor_grad_t(const lh_ad_base *b, lh_tensor *const *grads, const lh_ad_factor *f,
                              const lh_tensor *g, double alpha, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    lh_tensor *gw = lh_ad_grad(grads, f->gi_w), *gu = lh_ad_grad(grads, f->gi_up);
    lh_tensor *gd = lh_ad_grad(grads, f->gi_down);
    int64_t cols = f->in * f->k;
    lh_status st = LH_OK;
    if (f->w) {
        st = gw ? h->tensor_axpby(gw, 1.0, gw, alpha, g) : LH_OK;
    } else if (f->mid || h->size <= offsetof(lh_host_api, tensor_reshape) || !h->tensor_reshape) {
        return LH_ERR_UNSUPPORTED;
    } else { /* dense = U [rows, r] @ D [r, cols], U stored [r, rows] when up_t */
        if (gu && f->up_t) /* gU^T = D G^T */
            st = gemm_into(h, gu, f->down, g, 0, 1, f->r, cols, f->rows, alpha);
        else if (gu) /* gU = G D^T */
            st = gemm_into(h, gu, g, f->down, 0, 1, f->rows, cols, f->r, alpha);
        if (st == LH_OK && gd) /* gD = U^T G */
            st = gemm_into(h, gd, f->up, g, !f->up_t, 0, f->r, f->rows, cols, alpha);
    }
    return st == LH_OK ? st : lh_ad_host_fail(b, err, err_size, st, "factor gradient");
}

/* grads of mid and down from gcore = dL/d(core) [r, in, k]. */
static lh_status tucker_grad(const lh_ad_base *b, lh_tensor *gm, lh_tensor *gd, const arrays *a,
                             const float *gc, const lh_ad_factor *f, char *err, size_t err_size) {
    float *gmid = NULL, *gdown = NULL;
    lh_status st = lh_ad_zeros(b, &gmid, f->r * f->r2 * f->k, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &gdown, f->r2 * f->in, err, err_size);
    for (int64_t p = 0; st == LH_OK && p < f->r; p++)
        for (int64_t q = 0; q < f->r2; q++)
            for (int64_t kk = 0; kk < f->k; kk++) {
                double s = 0.0;
                float m = a->mid[(p * f->r2 + q) * f->k + kk];
                for (int64_t i = 0; i < f->in; i++) {
                    float g = gc[(p * f->in + i) * f->k + kk];
                    s += (double)g * a->down[q * f->in + i];
                    gdown[q * f->in + i] += g * m;
                }
                gmid[(p * f->r2 + q) * f->k + kk] = (float)s;
            }
    if (st == LH_OK && gm) st = lh_ad_add(b, gm, gmid, f->r * f->r2 * f->k, 1.0, err, err_size);
    if (st == LH_OK && gd) st = lh_ad_add(b, gd, gdown, f->r2 * f->in, 1.0, err, err_size);
    b->host->free(gmid);
    b->host->free(gdown);
    return st;
}

lh_status lh_ad_factor_grad(const lh_ad_base *b, lh_tensor *const *grads, const lh_ad_factor *f,
                            const float *g, char *err, size_t err_size) {
    lh_tensor *gw = lh_ad_grad(grads, f->gi_w), *gu = lh_ad_grad(grads, f->gi_up);
    lh_tensor *gd = lh_ad_grad(grads, f->gi_down), *gm = lh_ad_grad(grads, f->gi_mid);
    if (f->w) return gw ? lh_ad_add(b, gw, g, f->rows * f->in * f->k, 1.0, err, err_size) : LH_OK;
    if (!gu && !gd && !gm) return LH_OK;
    arrays a;
    int64_t cols = f->in * f->k;
    float *gup = NULL, *gcore = NULL;
    lh_status st = arrays_read(b, &a, f, err, err_size);
    const float *d = a.core ? a.core : a.down;
    if (st == LH_OK && gu) {
        st = lh_ad_zeros(b, &gup, f->rows * f->r, err, err_size);
        if (st == LH_OK && f->up_t) mm(gup, d, g, f->r, cols, f->rows, 0, 1, 0);
        if (st == LH_OK && !f->up_t) mm(gup, g, d, f->rows, cols, f->r, 0, 1, 0);
        if (st == LH_OK) st = lh_ad_add(b, gu, gup, f->rows * f->r, 1.0, err, err_size);
    }
    if (st == LH_OK && (gd || gm)) {
        st = lh_ad_zeros(b, &gcore, f->r * cols, err, err_size);
        if (st == LH_OK) mm(gcore, a.up, g, f->r, f->rows, cols, !f->up_t, 0, 0);
        if (st == LH_OK && !f->mid) st = lh_ad_add(b, gd, gcore, f->r * cols, 1.0, err, err_size);
        if (st == LH_OK && f->mid) st = tucker_grad(b, gm, gd, &a, gcore, f, err, err_size);
    }
    b->host->free(gup);
    b->host->free(gcore);
    arrays_free(b, &a);
    return st;
}
