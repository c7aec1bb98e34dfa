/* LoKr adapter kind (LyCORIS lokr_*): dW = scale * c * kron(W1, W2) laid out
 * as the base weight, dW[i1 * out2 + i2, j1 * in2 + j2, y, x] =
 * W1[i1, j1] W2[i2, j2, y, x], with out = out1 * out2, in = in1 * in2 and
 *   W1 = lokr_w1 [out1, in1], or lokr_w1_a [out1, r1] @ lokr_w1_b [r1, in1]
 *   W2 = lokr_w2 [out2, in2, kh, kw] ([out2, in2] for a linear layer), or
 *        lokr_w2_a [out2, r2] @ lokr_w2_b [r2, in2 * kh * kw], or Tucker
 *        (convolutions) lokr_w2_a [r2, out2], lokr_t2 [r2, r2, kh, kw], lokr_w2_b [r2, in2].
 * Alpha as ComfyUI's weight_adapter/lokr.py: c = alpha / dim with dim = r2
 * (dim 0 of lokr_w2_b) when W2 is factorised, else r1 (dim 0 of lokr_w1_b)
 * when W1 is, else c = 1 and alpha is unused (LyCORIS's lokr.py sets
 * alpha = dim, scale 1, when both are whole). Alpha NaN means c = 1. */
#include "lib/ad_common.h"

typedef struct lokr {
    lh_ad_dense d; /* first: lh_ad_create; unit = c * kron(W1, W2) */
    lh_ad_factor w[2];
    double c;
} lokr;

static const char *const KNOWN[] = {"lokr_w1",   "lokr_w1_a", "lokr_w1_b", "lokr_w2",
                                    "lokr_w2_a", "lokr_w2_b", "lokr_t2",   NULL};

static int recognise(const lh_adapter_layer *layer) { return lh_ad_claims(layer, KNOWN); }

static void destroy(void *p) {
    lokr *s = p;
    if (!s) return;
    const lh_host_api *h = s->d.b.host;
    for (int n = 0; n < 2; n++) lh_ad_factor_free(&s->d.b, &s->w[n]);
    h->tensor_free(s->d.unit);
    lh_ad_base_free(&s->d.b);
    h->free(s);
}

/* ---- The Kronecker product ---- */

/* u [out1 * out2, in1 * in2, k] = c * kron(w1 [out1, in1], w2 [out2, in2, k]). */
static void kron(float *u, const float *w1, const float *w2, const lh_ad_factor *q1,
                 const lh_ad_factor *q2, double c) {
    int64_t o2 = q2->rows, i1n = q1->in, i2n = q2->in, k = q2->k, in = i1n * i2n;
    for (int64_t i1 = 0; i1 < q1->rows; i1++)
        for (int64_t j1 = 0; j1 < i1n; j1++)
            for (int64_t i2 = 0; i2 < o2; i2++)
                for (int64_t j2 = 0; j2 < i2n; j2++)
                    for (int64_t kk = 0; kk < k; kk++)
                        u[((i1 * o2 + i2) * in + j1 * i2n + j2) * k + kk] =
                            (float)(c * w1[i1 * i1n + j1] * w2[(i2 * i2n + j2) * k + kk]);
}

/* gw1 = c * sum g * w2, gw2 = c * sum g * w1 over the other factor's indices. */
static void kron_grad(float *gw1, float *gw2, const float *g, const float *w1, const float *w2,
                      const lh_ad_factor *q1, const lh_ad_factor *q2, double c) {
    int64_t o2 = q2->rows, i1n = q1->in, i2n = q2->in, k = q2->k, in = i1n * i2n;
    for (int64_t i1 = 0; i1 < q1->rows; i1++)
        for (int64_t j1 = 0; j1 < i1n; j1++) {
            double s = 0.0, a = c * w1[i1 * i1n + j1];
            for (int64_t i2 = 0; i2 < o2; i2++)
                for (int64_t j2 = 0; j2 < i2n; j2++)
                    for (int64_t kk = 0; kk < k; kk++) {
                        int64_t e = (i2 * i2n + j2) * k + kk;
                        float gv = g[((i1 * o2 + i2) * in + j1 * i2n + j2) * k + kk];
                        s += (double)gv * w2[e];
                        gw2[e] += (float)(a * gv);
                    }
            gw1[i1 * i1n + j1] = (float)(c * s);
        }
}

/* ---- Creating ---- */

static lh_status exclusive(const lh_ad_ctx *c, const char *whole, const char *part) {
    if (lh_ad_index(c->layer, whole) < 0 || lh_ad_index(c->layer, part) < 0) return LH_OK;
    return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_INVALID,
                      "%s and %s both given; expected one form", whole, part);
}

/* W1: its rows and columns must divide the base weight's. */
static lh_status load_w1(const lh_ad_ctx *c, lh_ad_factor *q) {
    const lh_ad_form *f = &c->b->form;
    int whole = lh_ad_index(c->layer, "lokr_w1") >= 0;
    lh_status st = whole ? LH_OK : lh_ad_rank(c, &q->r, "lokr_w1_a", 1, "lokr_w1_b", 0);
    if (st != LH_OK) return st;
    q->rows = lh_ad_dim(c, whole ? "lokr_w1" : "lokr_w1_a", 0);
    q->in = lh_ad_dim(c, whole ? "lokr_w1" : "lokr_w1_b", 1);
    q->k = 1;
    if (q->rows < 1 || q->in < 1 || f->out % q->rows || f->in % q->in)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                          "%s gives W1 [%lld, %lld], which does not divide the base weight's "
                          "[%lld, %lld]",
                          whole ? "lokr_w1" : "lokr_w1_a/_b", (long long)q->rows, (long long)q->in,
                          (long long)f->out, (long long)f->in);
    const int64_t w[2] = {q->rows, q->in}, up[2] = {q->rows, q->r}, down[2] = {q->r, q->in};
    if (whole) {
        q->gi_w = lh_ad_index(c->layer, "lokr_w1");
        return lh_ad_load(c, &q->w, "lokr_w1", 2, w);
    }
    q->gi_up = lh_ad_index(c->layer, "lokr_w1_a");
    q->gi_down = lh_ad_index(c->layer, "lokr_w1_b");
    st = lh_ad_load(c, &q->up, "lokr_w1_a", 2, up);
    return st == LH_OK ? lh_ad_load(c, &q->down, "lokr_w1_b", 2, down) : st;
}

/* W2 [out / out1, in / in1, kh, kw]. */
static lh_status load_w2(const lh_ad_ctx *c, lh_ad_factor *q, const lh_ad_factor *q1) {
    const lh_ad_form *f = &c->b->form;
    int64_t o2 = f->out / q1->rows, i2 = f->in / q1->in;
    *q = (lh_ad_factor){
        .rows = o2, .in = i2, .k = f->k, .gi_w = -1, .gi_up = -1, .gi_down = -1, .gi_mid = -1};
    if (lh_ad_index(c->layer, "lokr_w2") >= 0) {
        const int64_t w[4] = {o2, i2, f->kh, f->kw};
        q->gi_w = lh_ad_index(c->layer, "lokr_w2");
        return lh_ad_load(c, &q->w, "lokr_w2", f->ndim, w);
    }
    q->up_t = lh_ad_index(c->layer, "lokr_t2") >= 0;
    if (q->up_t && f->ndim != 4)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                          "lokr_t2 (Tucker) applies to convolutions only");
    lh_status st = lh_ad_rank(c, &q->r, "lokr_w2_a", q->up_t ? 0 : 1, "lokr_w2_b", 0);
    if (st != LH_OK) return st;
    q->r2 = q->r;
    q->gi_up = lh_ad_index(c->layer, "lokr_w2_a");
    q->gi_down = lh_ad_index(c->layer, "lokr_w2_b");
    const int64_t up[2] = {q->up_t ? q->r : o2, q->up_t ? o2 : q->r};
    const int64_t down[2] = {q->r, q->up_t ? i2 : i2 * f->k}, mid[4] = {q->r, q->r, f->kh, f->kw};
    st = lh_ad_load(c, &q->up, "lokr_w2_a", 2, up);
    if (st == LH_OK) st = lh_ad_load(c, &q->down, "lokr_w2_b", 2, down);
    if (st == LH_OK && q->up_t) {
        q->gi_mid = lh_ad_index(c->layer, "lokr_t2");
        st = lh_ad_load(c, &q->mid, "lokr_t2", 4, mid);
    }
    return st;
}

static lh_status build_unit(const lh_ad_ctx *c, lokr *s) {
    const lh_ad_base *b = c->b;
    float *w1 = NULL, *w2 = NULL, *u = NULL;
    lh_status st = lh_ad_factor_dense(b, &w1, &s->w[0], c->err, c->err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w2, &s->w[1], c->err, c->err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &u, b->form.numel, c->err, c->err_size);
    if (st == LH_OK) kron(u, w1, w2, &s->w[0], &s->w[1], s->c);
    if (st == LH_OK) st = lh_ad_dense_set(c, &s->d, u, "the LoKr delta kron(W1, W2)");
    b->host->free(w1);
    b->host->free(w2);
    b->host->free(u);
    return st;
}

static lh_status init(const lh_ad_ctx *c) {
    lokr *s = (lokr *)c->b;
    lh_ad_factor_init(&s->w[0]);
    lh_ad_factor_init(&s->w[1]);
    lh_status st = exclusive(c, "lokr_w1", "lokr_w1_a");
    if (st == LH_OK) st = exclusive(c, "lokr_w1", "lokr_w1_b");
    if (st == LH_OK) st = exclusive(c, "lokr_w2", "lokr_w2_a");
    if (st == LH_OK) st = exclusive(c, "lokr_w2", "lokr_w2_b");
    if (st == LH_OK) st = exclusive(c, "lokr_w2", "lokr_t2");
    if (st == LH_OK) st = load_w1(c, &s->w[0]);
    if (st == LH_OK) st = load_w2(c, &s->w[1], &s->w[0]);
    int64_t dim = !s->w[1].w ? s->w[1].r : !s->w[0].w ? s->w[0].r : 0;
    if (st == LH_OK) st = lh_ad_alpha(c, dim ? dim : 1, &s->c);
    if (st == LH_OK && !dim) s->c = 1.0;
    if (st == LH_OK) st = build_unit(c, s);
    return st;
}

static lh_status create(void **out, const lh_host_api *host, const lh_adapter_layer *layer,
                        char *err, size_t err_size) {
    return lh_ad_create(out, sizeof(lokr), host, layer, err, err_size, init, destroy);
}

/* ---- Training ---- */

static lh_status backward(void *p, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                          const lh_tensor *x, double scale, char *err, size_t err_size) {
    lokr *s = p;
    const lh_ad_base *b = &s->d.b;
    const lh_ad_factor *q1 = &s->w[0], *q2 = &s->w[1];
    float *g = NULL, *w1 = NULL, *w2 = NULL, *g1 = NULL, *g2 = NULL;
    lh_status st = lh_ad_dense_backward(&s->d, &g, dx, dy, x, scale, err, err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w1, q1, err, err_size);
    if (st == LH_OK) st = lh_ad_factor_dense(b, &w2, q2, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &g1, q1->rows * q1->in, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &g2, q2->rows * q2->in * q2->k, err, err_size);
    if (st == LH_OK) kron_grad(g1, g2, g, w1, w2, q1, q2, s->c);
    if (st == LH_OK) st = lh_ad_factor_grad(b, grads, q1, g1, err, err_size);
    if (st == LH_OK) st = lh_ad_factor_grad(b, grads, q2, g2, err, err_size);
    float *tmp[] = {g, w1, w2, g1, g2};
    for (int i = 0; i < 5; i++) b->host->free(tmp[i]);
    return st;
}

static const lh_adapter_desc DESC = {
    .info =
        LH_PLUGIN_INFO(LH_PLUGIN_ADAPTER, lh_adapter_desc, "lokr", "1.0.0",
                       "LyCORIS LoKr: Kronecker product of a small and a low-rank factor", NULL),
    .recognise = recognise,
    .create = create,
    .destroy = destroy,
    .weight_delta = lh_ad_dense_weight_delta,
    .forward = lh_ad_dense_forward,
    .backward = backward,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
