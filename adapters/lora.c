/* LoRA adapter kind: kohya/A1111 LoRA and LoCon, PEFT and old-diffusers LoRA
 * (renamed by the host), LyCORIS's Tucker form (lora_mid) and DoRA in both
 * forms. dW = scale * alpha / r * up @ down, r = rank (dim 0 of down).
 *   linear  down [r, in], up [out, r] (trailing 1x1 axes accepted)
 *   LoCon   down [r, in, kh, kw] (the layer's stride/padding), up [out, r, 1, 1]
 *   Tucker  down [r, in, 1, 1] -> mid [r, r, kh, kw] (stride/padding) -> up [out, r, 1, 1]
 * DoRA (lh_ad_dora): `dora_scale` with A1111/ComfyUI semantics, W' = W +
 * scale * (g * (W + dW1) - W), dW1 = dW at multiplier 1, g = dora_scale /
 * (||W + dW1|| + FLT_EPSILON) per output row ([out, 1, ..]) or per input
 * channel ([1, in, ..]); `lora_magnitude_vector` with PEFT's, W' = m /
 * ||W + dW|| * (W + dW) per output row. DoRA runs forward and backward on
 * the dense delta (cached per scale); its gradients hold the norm constant,
 * as PEFT and LyCORIS do (they detach it). The cache makes forward and
 * backward update the instance: one thread per instance at a time. */
#include "lib/ad_common.h"

typedef struct lora {
    lh_ad_base b;                     /* first: lh_ad_create */
    lh_ad_factor f;                   /* up @ down, or the Tucker product */
    lh_ad_stage st[LH_AD_MAX_STAGES]; /* runtime chain: down [mid] up */
    int gi[LH_AD_MAX_STAGES];         /* each stage's tensor in layer->tensors */
    int n_st;
    double ratio; /* alpha / rank */
    int dora_on;
    lh_ad_dora dora;
} lora;

static const char *const KNOWN[] = {"lora_down.weight", "lora_up.weight",        "lora_mid.weight",
                                    "dora_scale",       "lora_magnitude_vector", NULL};
static const char *const ALIASES[] = {"locon", "dora", NULL};

static int recognise(const lh_adapter_layer *layer) {
    return lh_ad_claims(layer, KNOWN) && (lh_ad_index(layer, "lora_down.weight") >= 0 ||
                                          lh_ad_index(layer, "lora_up.weight") >= 0);
}

static void destroy(void *p) {
    lora *s = p;
    if (!s) return;
    lh_ad_factor_free(&s->b, &s->f);
    if (s->dora_on) lh_ad_dora_free(&s->b, &s->dora);
    const lh_host_api *h = s->b.host;
    lh_ad_base_free(&s->b);
    h->free(s);
}

/* ---- Creating ---- */

static void set_stages(lora *s) {
    const lh_ad_form *f = &s->b.form;
    lh_ad_factor *q = &s->f;
    int n = 0;
    s->st[n] = (lh_ad_stage){q->down, q->mid ? 1 : f->stride, q->mid ? 0 : f->pad};
    s->gi[n++] = q->gi_down;
    if (q->mid) {
        s->st[n] = (lh_ad_stage){q->mid, f->stride, f->pad};
        s->gi[n++] = q->gi_mid;
    }
    s->st[n] = (lh_ad_stage){q->up, 1, 0};
    s->gi[n++] = q->gi_up;
    s->n_st = n;
}

static lh_status load_factors(const lh_ad_ctx *c, lora *s) {
    const lh_ad_form *f = &c->b->form;
    lh_ad_factor *q = &s->f;
    lh_ad_factor_init(q);
    int64_t r;
    lh_status st = lh_ad_rank(c, &r, "lora_down.weight", 0, "lora_up.weight", 1);
    int tucker = lh_ad_index(c->layer, "lora_mid.weight") >= 0;
    if (st == LH_OK && tucker && f->ndim != 4)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_SHAPE,
                          "lora_mid.weight (Tucker) applies to convolutions only");
    if (st != LH_OK) return st;
    *q = (lh_ad_factor){.rows = f->out,
                        .r = r,
                        .r2 = r,
                        .in = f->in,
                        .k = f->k,
                        .gi_w = -1,
                        .gi_mid = -1,
                        .gi_up = lh_ad_index(c->layer, "lora_up.weight"),
                        .gi_down = lh_ad_index(c->layer, "lora_down.weight")};
    const int64_t down[4] = {r, f->in, tucker ? 1 : f->kh, tucker ? 1 : f->kw};
    const int64_t up[4] = {f->out, r, 1, 1}, mid[4] = {r, r, f->kh, f->kw};
    st = lh_ad_load(c, &q->down, "lora_down.weight", f->ndim, down);
    if (st == LH_OK) st = lh_ad_load(c, &q->up, "lora_up.weight", f->ndim, up);
    if (st == LH_OK && tucker) {
        q->gi_mid = lh_ad_index(c->layer, "lora_mid.weight");
        st = lh_ad_load(c, &q->mid, "lora_mid.weight", 4, mid);
    }
    return st;
}

static lh_status load_dora(const lh_ad_ctx *c, lora *s) {
    int ds = lh_ad_index(c->layer, "dora_scale") >= 0;
    int mv = lh_ad_index(c->layer, "lora_magnitude_vector") >= 0;
    if (!ds && !mv) return LH_OK;
    if (ds && mv)
        return lh_ad_fail(c->b, c->err, c->err_size, LH_ERR_INVALID,
                          "dora_scale and lora_magnitude_vector both given; expected one");
    float *unit = NULL;
    lh_status st = lh_ad_factor_dense(c->b, &unit, &s->f, c->err, c->err_size);
    if (st != LH_OK) return st;
    for (int64_t e = 0; e < c->b->form.numel; e++) unit[e] = (float)(unit[e] * s->ratio);
    s->dora_on = 1; /* from here destroy() frees unit */
    return lh_ad_dora_init(c, &s->dora, ds ? "dora_scale" : "lora_magnitude_vector", unit);
}

static lh_status init(const lh_ad_ctx *c) {
    lora *s = (lora *)c->b;
    lh_status st = load_factors(c, s);
    if (st == LH_OK) st = lh_ad_alpha(c, s->f.r, &s->ratio);
    if (st == LH_OK) st = load_dora(c, s);
    if (st == LH_OK) set_stages(s);
    return st;
}

static lh_status create(void **out, const lh_host_api *host, const lh_adapter_layer *layer,
                        char *err, size_t err_size) {
    return lh_ad_create(out, sizeof(lora), host, layer, err, err_size, init, destroy);
}

/* Training moved the values: copy them into the stage tensors where they
 * live (DoRA's derived state is rebuilt by a new instance instead). */
static lh_status update(void *p, const lh_adapter_layer *layer, char *err, size_t err_size) {
    lora *s = p;
    if (s->dora_on) return LH_ERR_UNSUPPORTED;
    const lh_host_api *h = s->b.host;
    for (int k = 0; k < s->n_st; k++) {
        int gi = s->gi[k];
        if (gi < 0 || gi >= layer->n_tensors)
            return lh_ad_fail(&s->b, err, err_size, LH_ERR_INVALID, "update: tensor %d missing", gi);
        lh_tensor *w = (lh_tensor *)s->st[k].w; /* the factor's own tensor (s->f) */
        lh_status st = h->tensor_copy(w, layer->tensors[gi].tensor);
        if (st != LH_OK) return lh_ad_host_fail(&s->b, err, err_size, st, "update");
    }
    return LH_OK;
}

/* ---- Applying ---- */

/* The single dense stage DoRA runs on, at `scale`. */
static lh_status dora_stage(lora *s, lh_ad_stage *one, double scale, char *err, size_t err_size) {
    lh_tensor *d = NULL;
    lh_status st = lh_ad_dora_delta(&s->b, &s->dora, scale, &d, err, err_size);
    *one = (lh_ad_stage){d, s->b.form.stride, s->b.form.pad};
    return st;
}

static lh_status weight_delta(void *p, lh_tensor *delta, double scale, char *err, size_t err_size) {
    lora *s = p;
    if (s->dora_on) {
        lh_ad_stage one;
        lh_status st = dora_stage(s, &one, scale, err, err_size);
        if (st == LH_OK && (st = s->b.host->tensor_axpby(delta, 1.0, delta, 1.0, one.w)) != LH_OK)
            st = lh_ad_host_fail(&s->b, err, err_size, st, "weight_delta");
        return st;
    }
    return lh_ad_factor_add_to(&s->b, delta, &s->f, scale * s->ratio, err, err_size);
}

static lh_status forward(void *p, lh_tensor *y, const lh_tensor *x, double scale, char *err,
                         size_t err_size) {
    lora *s = p;
    if (!s->dora_on)
        return lh_ad_forward(&s->b, y, x, s->st, s->n_st, scale * s->ratio, NULL, err, err_size);
    lh_ad_stage one;
    lh_status st = dora_stage(s, &one, scale, err, err_size);
    return st == LH_OK ? lh_ad_forward(&s->b, y, x, &one, 1, 1.0, NULL, err, err_size) : st;
}

/* The low-rank chain rule, stage by stage: each weight gradient
 * accumulates straight into the host's gradient tensor (a view of it in the
 * stage weight's shape), where it lives. */
static lh_status chain_backward(lora *s, lh_tensor *dx, lh_tensor *const *grads,
                                const lh_tensor *dy, const lh_tensor *x, double scale, char *err,
                                size_t err_size) {
    const lh_host_api *h = s->b.host;
    lh_tensor *gt[LH_AD_MAX_STAGES] = {0};
    lh_status st = LH_OK;
    for (int k = 0; st == LH_OK && k < s->n_st; k++) {
        lh_tensor *g = lh_ad_grad(grads, s->gi[k]);
        const lh_tensor *w = s->st[k].w;
        int64_t shape[4];
        for (int i = 0; i < h->tensor_ndim(w) && i < 4; i++) shape[i] = h->tensor_dim(w, i);
        if (g && !(gt[k] = h->tensor_reshape(g, h->tensor_ndim(w), shape)))
            st = lh_ad_host_fail(&s->b, err, err_size, LH_ERR_SHAPE, "gradient view");
    }
    if (st == LH_OK)
        st = lh_ad_backward(&s->b, NULL, gt, dx, dy, x, s->st, s->n_st, scale * s->ratio, err,
                            err_size);
    for (int k = 0; k < s->n_st; k++) h->tensor_free(gt[k]);
    return st;
}

/* DoRA: dense gradient of the delta, through the decomposition, to the factors. */
static lh_status dora_backward(lora *s, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                               const lh_tensor *x, double scale, char *err, size_t err_size) {
    const lh_ad_base *b = &s->b;
    int64_t n = b->form.numel;
    float *g = NULL, *gunit = NULL, *gmag = NULL;
    lh_ad_stage one;
    lh_status st = dora_stage(s, &one, scale, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &g, n, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &gunit, n, err, err_size);
    if (st == LH_OK) st = lh_ad_zeros(b, &gmag, s->dora.n_mag, err, err_size);
    if (st == LH_OK) st = lh_ad_backward(b, &g, NULL, dx, dy, x, &one, 1, 1.0, err, err_size);
    if (st == LH_OK) st = lh_ad_dora_grad(b, gunit, gmag, &s->dora, g, scale, err, err_size);
    for (int64_t e = 0; st == LH_OK && e < n; e++) gunit[e] = (float)(gunit[e] * s->ratio);
    if (st == LH_OK) st = lh_ad_factor_grad(b, grads, &s->f, gunit, err, err_size);
    lh_tensor *gm = lh_ad_grad(grads, s->dora.gi_mag);
    if (st == LH_OK && gm) st = lh_ad_add(b, gm, gmag, s->dora.n_mag, 1.0, err, err_size);
    b->host->free(g);
    b->host->free(gunit);
    b->host->free(gmag);
    return st;
}

static lh_status backward(void *p, lh_tensor *dx, lh_tensor *const *grads, const lh_tensor *dy,
                          const lh_tensor *x, double scale, char *err, size_t err_size) {
    lora *s = p;
    return s->dora_on ? dora_backward(s, dx, grads, dy, x, scale, err, err_size)
                      : chain_backward(s, dx, grads, dy, x, scale, err, err_size);
}

static const lh_adapter_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_ADAPTER, lh_adapter_desc, "lora", "1.0.0",
                           "LoRA / LoCon / Tucker LoRA, with DoRA (dora_scale, PEFT magnitude)",
                           ALIASES),
    .recognise = recognise,
    .create = create,
    .destroy = destroy,
    .weight_delta = weight_delta,
    .forward = forward,
    .backward = backward,
    .update = update,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
