/* Adapter plugins: DoRA's weight decomposition (see lh_ad_dora in
 * ad_common.h), its delta at a scale and its gradient with the norm held
 * constant. Host arrays, norms in double. */
#include "ad_common.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- Loading ---- */

static lh_status load_base(const lh_ad_ctx *c, lh_ad_dora *d, const char *suffix) {
    const lh_tensor *w = c->layer->base_weight;
    const lh_ad_base *b = c->b;
    if (!w)
        return lh_ad_fail(b, c->err, c->err_size, LH_ERR_INVALID,
                          "%s (DoRA) needs the base weight, which the host did not give", suffix);
    if (b->host->tensor_numel(w) != b->form.numel)
        return lh_ad_fail(b, c->err, c->err_size, LH_ERR_SHAPE,
                          "base weight has %lld elements, its shape says %lld",
                          (long long)b->host->tensor_numel(w), (long long)b->form.numel);
    lh_status st = lh_ad_read(b, &d->base, w, c->err, c->err_size);
    return st == LH_OK ? lh_ad_finite(c, d->base, b->form.numel, "the base weight") : st;
}

lh_status lh_ad_dora_init(const lh_ad_ctx *c, lh_ad_dora *d, const char *suffix, float *unit) {
    const lh_ad_form *f = &c->b->form;
    *d = (lh_ad_dora){.unit = unit,
                      .peft = !strcmp(suffix, "lora_magnitude_vector"),
                      .gi_mag = lh_ad_index(c->layer, suffix),
                      .delta_scale = NAN};
    /* [1, in, 1, ...] spans the input axis; [out, 1, ...] the output axis. */
    d->axis =
        !d->peft && f->in > 1 && lh_ad_dim(c, suffix, 0) == 1 && lh_ad_dim(c, suffix, 1) == f->in;
    d->n_mag = d->axis ? f->in : f->out;
    const int64_t shape[2] = {d->axis ? 1 : f->out, f->in};
    lh_tensor *t = NULL;
    lh_status st = lh_ad_load(c, &t, suffix, d->axis ? 2 : 1, shape);
    if (st == LH_OK) st = lh_ad_read(c->b, &d->mag, t, c->err, c->err_size);
    c->b->host->tensor_free(t);
    if (st == LH_OK) st = lh_ad_finite(c, unit, f->numel, "the adapter's weight delta");
    return st == LH_OK ? load_base(c, d, suffix) : st;
}

void lh_ad_dora_free(const lh_ad_base *b, lh_ad_dora *d) {
    b->host->free(d->base);
    b->host->free(d->unit);
    b->host->free(d->mag);
    b->host->tensor_free(d->delta);
    memset(d, 0, sizeof *d);
}

/* ---- The decomposition ---- */

typedef struct coef {
    double kf, cv, eps;
} coef;

static coef coef_at(const lh_ad_dora *d, double scale) {
    return d->peft ? (coef){1.0, scale, 0.0} : (coef){scale, 1.0, FLT_EPSILON};
}

static int64_t slice_of(const lh_ad_dora *d, const lh_ad_form *f, int64_t e) {
    return d->axis ? (e / f->k) % f->in : e / (f->in * f->k);
}

/* nrm [2 * slices]: ||V|| + eps per slice, then zeros for the caller. */
static lh_status norms(const lh_ad_base *b, double **nrm, const lh_ad_dora *d, coef c, char *err,
                       size_t err_size) {
    const lh_ad_form *f = &b->form;
    int64_t ns = d->n_mag;
    *nrm = b->host->calloc((size_t)(2 * ns), sizeof **nrm);
    if (!*nrm) return lh_ad_fail(b, err, err_size, LH_ERR_NOMEM, "out of memory for DoRA norms");
    for (int64_t e = 0; e < f->numel; e++) {
        double v = d->base[e] + c.cv * d->unit[e];
        (*nrm)[slice_of(d, f, e)] += v * v;
    }
    for (int64_t s = 0; s < ns; s++) (*nrm)[s] = sqrt((*nrm)[s]) + c.eps;
    return LH_OK;
}

static lh_status compute_delta(const lh_ad_base *b, float *delta, const lh_ad_dora *d, double scale,
                               char *err, size_t err_size) {
    const lh_ad_form *f = &b->form;
    coef c = coef_at(d, scale);
    double *nrm = NULL;
    lh_status st = norms(b, &nrm, d, c, err, err_size);
    for (int64_t e = 0; st == LH_OK && e < f->numel; e++) {
        int64_t s = slice_of(d, f, e);
        double v = d->base[e] + c.cv * d->unit[e];
        delta[e] = (float)(c.kf * (d->mag[s] / nrm[s] * v - d->base[e]));
        if (!isfinite(delta[e]))
            st = lh_ad_fail(b, err, err_size, LH_ERR_NUMERIC,
                            "DoRA delta is not finite at element %lld (weight norm %g)",
                            (long long)e, nrm[s]);
    }
    b->host->free(nrm);
    return st;
}

lh_status lh_ad_dora_delta(const lh_ad_base *b, lh_ad_dora *d, double scale, lh_tensor **delta,
                           char *err, size_t err_size) {
    const lh_ad_form *f = &b->form;
    const lh_host_api *h = b->host;
    if (d->delta && d->delta_scale == scale) {
        *delta = d->delta;
        return LH_OK;
    }
    if (!d->delta && !(d->delta = lh_ad_new_weight(b)))
        return lh_ad_host_fail(b, err, err_size, LH_ERR_NOMEM, "DoRA delta");
    d->delta_scale = NAN;
    float *v = NULL;
    lh_status st = lh_ad_zeros(b, &v, f->numel, err, err_size);
    if (st == LH_OK) st = compute_delta(b, v, d, scale, err, err_size);
    if (st == LH_OK && (st = h->tensor_write(d->delta, v, f->numel)) != LH_OK)
        st = lh_ad_host_fail(b, err, err_size, st, "DoRA delta");
    if (st == LH_OK) {
        d->delta_scale = scale;
        *delta = d->delta;
    }
    h->free(v);
    return st;
}

lh_status lh_ad_dora_grad(const lh_ad_base *b, float *gunit, float *gmag, const lh_ad_dora *d,
                          const float *g, double scale, char *err, size_t err_size) {
    const lh_ad_form *f = &b->form;
    coef c = coef_at(d, scale);
    double *nrm = NULL;
    lh_status st = norms(b, &nrm, d, c, err, err_size);
    if (st != LH_OK) return st;
    int64_t ns = d->n_mag;
    double *acc = nrm + ns;
    for (int64_t e = 0; e < f->numel; e++) {
        int64_t s = slice_of(d, f, e);
        double v = d->base[e] + c.cv * d->unit[e];
        acc[s] += (double)g[e] * v / nrm[s];
        gunit[e] = (float)(c.kf * c.cv * d->mag[s] / nrm[s] * g[e]);
    }
    for (int64_t s = 0; s < ns; s++) gmag[s] += (float)(c.kf * acc[s]);
    b->host->free(nrm);
    return LH_OK;
}
