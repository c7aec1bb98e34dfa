/* Adapter plugins: kinds that keep their whole delta at multiplier 1 (LoHa,
 * LoKr, full) and apply it densely: merge, runtime forward, and the
 * gradient w.r.t. that dense delta for their own chain rule. */
#include "ad_common.h"

lh_tensor *lh_ad_new_weight(const lh_ad_base *b) {
    const lh_ad_form *f = &b->form;
    const int64_t shape[4] = {f->out, f->in, f->kh, f->kw};
    return b->host->tensor_new(LH_DTYPE_F32, f->ndim, shape);
}

lh_status lh_ad_dense_set(const lh_ad_ctx *c, lh_ad_dense *d, const float *v, const char *what) {
    const lh_ad_base *b = c->b;
    lh_status st = lh_ad_finite(c, v, b->form.numel, what);
    if (st != LH_OK) return st;
    d->unit = lh_ad_new_weight(b);
    st = d->unit ? b->host->tensor_write(d->unit, v, b->form.numel) : LH_ERR_NOMEM;
    return st == LH_OK ? st : lh_ad_host_fail(b, c->err, c->err_size, st, what);
}

static lh_ad_stage stage_of(const lh_ad_dense *d) {
    return (lh_ad_stage){d->unit, d->b.form.stride, d->b.form.pad};
}

lh_status lh_ad_dense_weight_delta(void *state, lh_tensor *delta, double scale, char *err,
                                   size_t err_size) {
    lh_ad_dense *d = state;
    lh_status st = d->b.host->tensor_axpby(delta, 1.0, delta, scale, d->unit);
    return st == LH_OK ? st : lh_ad_host_fail(&d->b, err, err_size, st, "weight_delta");
}

lh_status lh_ad_dense_forward(void *state, lh_tensor *y, const lh_tensor *x, double scale,
                              char *err, size_t err_size) {
    lh_ad_dense *d = state;
    lh_ad_stage one = stage_of(d);
    return lh_ad_forward(&d->b, y, x, &one, 1, scale, NULL, err, err_size);
}

lh_status lh_ad_dense_backward_t(lh_ad_dense *d, lh_tensor **g, lh_tensor *dx, const lh_tensor *dy,
                                 const lh_tensor *x, double scale, char *err, size_t err_size) {
    lh_ad_stage one = stage_of(d);
    lh_status st = (*g = lh_ad_new_weight(&d->b)) ? d->b.host->tensor_fill(*g, 0.0) : LH_ERR_NOMEM;
    if (st != LH_OK) return lh_ad_host_fail(&d->b, err, err_size, st, "delta gradient");
    return lh_ad_backward(&d->b, NULL, g, dx, dy, x, &one, 1, scale, err, err_size);
}

lh_status lh_ad_dense_backward(lh_ad_dense *d, float **g, lh_tensor *dx, const lh_tensor *dy,
                               const lh_tensor *x, double scale, char *err, size_t err_size) {
    lh_ad_stage one = stage_of(d);
    lh_status st = lh_ad_zeros(&d->b, g, d->b.form.numel, err, err_size);
    if (st == LH_OK) st = lh_ad_backward(&d->b, g, NULL, dx, dy, x, &one, 1, scale, err, err_size);
    return st;
}
