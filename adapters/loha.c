/* LoHa adapter kind (LyCORIS hada_*): dW = scale * alpha / r * (W1 * W2),
 * elementwise, r = dim 0 of hada_w1_b; for n = 1, 2:
 *   plain   Wn = hada_wn_a [out, rn] @ hada_wn_b [rn, in * kh * kw]
 *   Tucker  Wn[o, i, y, x] = sum_{p,q} hada_wn_a[p, o] hada_tn[p, q, y, x] hada_wn_b[q, i]
 *           with hada_wn_a [rn, out], hada_tn [rn, rn, kh, kw], hada_wn_b [rn, in]
 *           (convolutions; LyCORIS's einsum "i j k l, j r, i p -> p r k l").
 * The dense delta is built once; forward and backward run on it. Plain
 * factors build it, take training's new values (update) and differentiate
 * on the host's tensor ops, where the tensors live (a device's memory when
 * training on one); Tucker factors on host arrays. */
#include <stdio.h>

#include "lib/ad_common.h"

typedef struct loha {
    lh_ad_dense d; /* first: lh_ad_create; unit = alpha / r * (W1 * W2) */
    lh_ad_factor w[2];
    double ratio; /* alpha / r */
} loha;

static const char *const KNOWN[] = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                    "hada_t1",   "hada_t2",   NULL};

static int recognise(const lh_adapter_layer *layer) { return lh_ad_claims(layer, KNOWN); }

static void destroy(void *p) {
    loha *s = p;
    if (!s) return;
    const lh_host_api *h = s->d.b.host;
    for (int n = 0; n < 2; n++) lh_ad_factor_free(&s->d.b, &s->w[n]);
    h->tensor_free(s->d.unit);
    lh_ad_base_free(&s->d.b);
    h->free(s);
}

/* ---- Creating ---- */

/* Factor n (1 or 2): hada_wn_a, hada_wn_b [, hada_tn]. */
static lh_status load_factor(const lh_ad_ctx *c, lh_ad_factor *q, int n, int tucker) {
    const lh_ad_form *f = &c->b->form;
    char a[16], b[16], t[16];
    snprintf(a, sizeof a, "hada_w%d_a", n);
    snprintf(b, sizeof b, "hada_w%d_b", n);
    snprintf(t, sizeof t, "hada_t%d", n);
    int64_t r;
    lh_status st = lh_ad_rank(c, &r, a, tucker ? 0 : 1, b, 0);
    if (st != LH_OK) return st;
    *q = (lh_ad_factor){.rows = f->out,
                        .r = r,
                        .r2 = r,
                        .in = f->in,
                        .k = f->k,
                        .up_t = tucker,
                        .gi_w = -1,
                        .gi_up = lh_ad_index(c->layer, a),
                        .gi_down = lh_ad_index(c->layer, b),
                        .gi_mid = lh_ad_index(c->layer, t)};
    const int64_t up[2] = {tucker ? r : f->out, tucker ? f->out : r};
    const int64_t down[2] = {r, tucker ? f->in : f->in * f->k};
    const int64_t mid[4] = {r, r, f->kh, f->kw};
    st = lh_ad_load(c, &q->up, a, 2, up);
    if (st == LH_OK) st = lh_ad_load(c, &q->down, b, 2, down);
    if (st == LH_OK && tucker) st = lh_ad_load(c, &q->mid, t, 4, mid);
    return st;
}

/* s->d.unit = ratio * W1 * W2 on tensors (plain factors). */
static lh_status unit_t(loha *s, char *err, size_t err_size) {
    const lh_ad_base *b = &s->d.b;
    const lh_host_api *h = b->host;
    int64_t n = b->form.numel;
    lh_tensor *w2 = h->tensor_new(LH_DTYPE_F32, 1, &n);
    if (!w2) return lh_ad_host_fail(b, err, err_size, LH_ERR_NOMEM, "LoHa delta");
    lh_status st = lh_ad_factor_dense_t(b, s->d.unit, &s->w[0], s->ratio, err, err_size);
    if (st == LH_OK) st = lh_ad_factor_dense_t(b, w2, &s->w[1], 1.0, err, err_size);
    if (st == LH_OK && (st = h->tensor_mul(s->d.unit, s->d.unit, w2)) != LH_OK)
        st = lh_ad_host_fail(b, err, err_size, st, "LoHa delta");
    h->tensor_free(w2);
    return st;
}

/* unit = ratio * W1 * W2 */
static lh_status build_unit(const lh_ad_ctx *c, loha *s) {
    const lh_ad_base *b = c->b;
    if (!s->w[0].mid) {
        float *v = NULL;
        lh_status st = (s->d.unit = lh_ad_new_weight(b))
                           ? unit_t(s, c->err, c->err_size)
                           : lh_ad_host_fail(b, c->err, c->err_size, LH_ERR_NOMEM, "LoHa delta");
        if (st == LH_OK) st = lh_ad_read(b, &v, s->d.unit, c->err, c->err_size);
        if (st == LH_OK)
            st = lh_ad_finite(c, v, b->form.numel, "the LoHa delta (hada_w1 * hada_w2)");
        b->host->free(v);
        return st;
    }
    float *w1 = NULL, *w2 = NULL;
    lh_status st = lh_ad_factor_dense(b, &w1, &s->w[0], c->err, c->err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w2, &s->w[1], c->err, c->err_size);
    for (int64_t e = 0; st == LH_OK && e < b->form.numel; e++)
        w1[e] = (float)(s->ratio * w1[e] * w2[e]);
    if (st == LH_OK) st = lh_ad_dense_set(c, &s->d, w1, "the LoHa delta (hada_w1 * hada_w2)");
    b->host->free(w1);
    b->host->free(w2);
    return st;
}

static lh_status init(const lh_ad_ctx *c) {
    loha *s = (loha *)c->b;
    lh_ad_factor_init(&s->w[0]);
    lh_ad_factor_init(&s->w[1]);
    int t1 = lh_ad_index(c->layer, "hada_t1") >= 0, t2 = lh_ad_index(c->layer, "hada_t2") >= 0;
    if (t1 != t2)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_NOT_FOUND,
                          "%s is missing (hada_t1 and hada_t2 come together)",
                          t1 ? "hada_t2" : "hada_t1");
    if (t1 && c->b->form.ndim != 4)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                          "hada_t1/hada_t2 (Tucker) apply to convolutions only");
    lh_status st = load_factor(c, &s->w[0], 1, t1);
    if (st == LH_OK) st = load_factor(c, &s->w[1], 2, t1);
    if (st == LH_OK) st = lh_ad_alpha(c, s->w[0].r, &s->ratio);
    if (st == LH_OK) st = build_unit(c, s);
    return st;
}

static lh_status create(void **out, const lh_host_api *host, const lh_adapter_layer *layer,
                        char *err, size_t err_size) {
    return lh_ad_create(out, sizeof(loha), host, layer, err, err_size, init, destroy);
}

/* ---- Training ---- */

/* Training moved the factors' values: copy them in and rebuild the delta
 * where the tensors live (a new instance for Tucker factors). */
static lh_status update(void *p, const lh_adapter_layer *layer, char *err, size_t err_size) {
    loha *s = p;
    const lh_ad_base *b = &s->d.b;
    if (s->w[0].mid) return LH_ERR_UNSUPPORTED;
    for (int n = 0; n < 2; n++) {
        const lh_ad_factor *q = &s->w[n];
        lh_tensor *dst[2] = {q->up, q->down};
        const int gi[2] = {q->gi_up, q->gi_down};
        for (int k = 0; k < 2; k++) {
            if (gi[k] < 0 || gi[k] >= layer->n_tensors)
                return lh_ad_fail(b, err, err_size, LH_ERR_INVALID, "update: tensor %d missing",
                                  gi[k]);
            lh_status st = b->host->tensor_copy(dst[k], layer->tensors[gi[k]].tensor);
            if (st != LH_OK) return lh_ad_host_fail(b, err, err_size, st, "update");
        }
    }
    return unit_t(s, err, err_size);
}

/* The plain factors' gradients on tensors: dL/dW1 = ratio * g * W2, dL/dW2 =
 * ratio * g * W1, each through its factor's chain rule. */
static lh_status backward_t(loha *s, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                            const lh_tensor *x, double scale, char *err, size_t err_size) {
    const lh_ad_base *b = &s->d.b;
    const lh_host_api *h = b->host;
    int64_t n = b->form.numel;
    lh_tensor *g = NULL, *gw = h->tensor_new(LH_DTYPE_F32, 1, &n);
    lh_status st = gw ? lh_ad_dense_backward_t(&s->d, &g, dx, dy, x, scale, err, err_size)
                      : lh_ad_host_fail(b, err, err_size, LH_ERR_NOMEM, "LoHa gradient");
    for (int k = 0; st == LH_OK && k < 2; k++) {
        st = lh_ad_factor_dense_t(b, gw, &s->w[1 - k], s->ratio, err, err_size);
        if (st == LH_OK && (st = h->tensor_mul(gw, gw, g)) != LH_OK)
            st = lh_ad_host_fail(b, err, err_size, st, "LoHa gradient");
        if (st == LH_OK) st = lh_ad_factor_grad_t(b, grads, &s->w[k], gw, 1.0, err, err_size);
    }
    h->tensor_free(g);
    h->tensor_free(gw);
    return st;
}

/* dL/dW1 = ratio * g * W2 and dL/dW2 = ratio * g * W1, then each factor's chain rule. */
static lh_status backward(void *p, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                          const lh_tensor *x, double scale, char *err, size_t err_size) {
    loha *s = p;
    if (!s->w[0].mid) return backward_t(s, dx, grads, dy, x, scale, err, err_size);
    const lh_ad_base *b = &s->d.b;
    float *g = NULL, *w[2] = {0}, *gw = NULL;
    lh_status st = lh_ad_dense_backward(&s->d, &g, dx, dy, x, scale, err, err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w[0], &s->w[0], err, err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w[1], &s->w[1], err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &gw, b->form.numel, err, err_size);
    for (int n = 0; st == LH_OK && n < 2; n++) {
        for (int64_t e = 0; e < b->form.numel; e++) gw[e] = (float)(s->ratio * g[e] * w[1 - n][e]);
        st = lh_ad_factor_grad(b, grads, &s->w[n], gw, err, err_size);
    }
    b->host->free(g);
    b->host->free(w[0]);
    b->host->free(w[1]);
    b->host->free(gw);
    return st;
}

static const lh_adapter_desc DESC = {
    .info =
        LH_PLUGIN_INFO(LH_PLUGIN_ADAPTER, lh_adapter_desc, "loha", "1.0.0",
                       "LyCORIS LoHa: Hadamard product of two low-rank (or Tucker) factors", NULL),
    .recognise = recognise,
    .create = create,
    .destroy = destroy,
    .weight_delta = lh_ad_dense_weight_delta,
    .forward = lh_ad_dense_forward,
    .backward = backward,
    .update = update,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
