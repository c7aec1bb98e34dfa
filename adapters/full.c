/* Full-diff adapter kind (LyCORIS "full"): dW = scale * diff, with diff
 * shaped like the base weight (a linear layer's may carry trailing 1x1
 * axes), and the bias change scale * diff_b [out] when given. Alpha plays no
 * part (it is still checked when the file gives one). */
#include "lib/ad_common.h"

typedef struct full {
    lh_ad_dense d;   /* first: lh_ad_create; unit = diff */
    lh_tensor *bias; /* diff_b [out] or NULL */
    int gi_diff, gi_bias;
} full;

static const char *const KNOWN[] = {"diff", "diff_b", NULL};
static const char *const ALIASES[] = {"diff", NULL};

static int recognise(const lh_adapter_layer *layer) { return lh_ad_claims(layer, KNOWN); }

static void destroy(void *p) {
    full *s = p;
    if (!s) return;
    const lh_host_api *h = s->d.b.host;
    h->tensor_free(s->d.unit);
    h->tensor_free(s->bias);
    lh_ad_base_free(&s->d.b);
    h->free(s);
}

static lh_status init(const lh_ad_ctx *c) {
    full *s = (full *)c->b;
    const lh_ad_form *f = &c->b->form;
    const int64_t shape[4] = {f->out, f->in, f->kh, f->kw};
    double unused;
    s->gi_diff = lh_ad_index(c->layer, "diff");
    s->gi_bias = lh_ad_index(c->layer, "diff_b");
    lh_status st = lh_ad_alpha(c, 1, &unused);
    if (st == LH_OK) st = lh_ad_load(c, &s->d.unit, "diff", f->ndim, shape);
    if (st == LH_OK && s->gi_bias >= 0) st = lh_ad_load(c, &s->bias, "diff_b", 1, &f->out);
    return st;
}

static lh_status create(void **out, const lh_host_api *host, const lh_adapter_layer *layer,
                        char *err, size_t err_size) {
    return lh_ad_create(out, sizeof(full), host, layer, err, err_size, init, destroy);
}

static lh_status forward(void *p, lh_tensor *y, const lh_tensor *x, double scale, char *err,
                         size_t err_size) {
    full *s = p;
    const lh_ad_form *f = &s->d.b.form;
    const lh_ad_stage one = {s->d.unit, f->stride, f->pad};
    return lh_ad_forward(&s->d.b, y, x, &one, 1, scale, s->bias, err, err_size);
}

static lh_status bias_delta(void *p, lh_tensor *delta, double scale, char *err, size_t err_size) {
    full *s = p;
    if (!s->bias) return LH_OK;
    lh_status st = s->d.b.host->tensor_axpby(delta, 1.0, delta, scale, s->bias);
    return st == LH_OK ? st : lh_ad_host_fail(&s->d.b, err, err_size, st, "bias_delta");
}

/* grad of diff_b += scale * dy summed over rows (linear) or batch and pixels (conv). */
static lh_status bias_grad(full *s, lh_tensor *gb, const lh_tensor *dy, double scale, char *err,
                           size_t err_size) {
    const lh_ad_base *b = &s->d.b;
    const lh_host_api *h = b->host;
    int64_t out = b->form.out, n = h->tensor_numel(dy);
    int64_t inner = b->form.ndim == 4 ? h->tensor_dim(dy, 2) * h->tensor_dim(dy, 3) : 1;
    float *g = NULL, *sum = NULL;
    lh_status st = lh_ad_read(b, &g, dy, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &sum, out, err, err_size);
    for (int64_t e = 0; st == LH_OK && inner > 0 && e < n; e++) sum[(e / inner) % out] += g[e];
    if (st == LH_OK) st = lh_ad_add(b, gb, sum, out, scale, err, err_size);
    h->free(g);
    h->free(sum);
    return st;
}

static lh_status backward(void *p, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                          const lh_tensor *x, double scale, char *err, size_t err_size) {
    full *s = p;
    const lh_ad_base *b = &s->d.b;
    float *g = NULL;
    lh_tensor *gd = lh_ad_grad(grads, s->gi_diff), *gb = lh_ad_grad(grads, s->gi_bias);
    lh_status st = lh_ad_dense_backward(&s->d, &g, dx, dy, x, scale, err, err_size);
    if (st == LH_OK && gd) st = lh_ad_add(b, gd, g, b->form.numel, 1.0, err, err_size);
    if (st == LH_OK && gb) st = bias_grad(s, gb, dy, scale, err, err_size);
    b->host->free(g);
    return st;
}

static const lh_adapter_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_ADAPTER, lh_adapter_desc, "full", "1.0.0",
                           "LyCORIS full diff: the whole weight (and bias) change", ALIASES),
    .recognise = recognise,
    .create = create,
    .destroy = destroy,
    .weight_delta = lh_ad_dense_weight_delta,
    .forward = forward,
    .backward = backward,
    .bias_delta = bias_delta,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
