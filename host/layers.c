/* The adaptable-layer table of a model (see layers.h). */
#include "layers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_load.h"
#include "clip.h"
#include "host_api.h"
#include "ldm_keys.h"
#include "tensor.h"
#include "unet.h"

typedef struct builder {
    lh_layers *t;
    size_t cap;
    lh_error *err;
    lh_status st;
} builder;

static lh_layer *add(builder *bd, lh_layer_part part, const char *name, float *w, float *b,
                     int ndim, int64_t out, int64_t in, int64_t k) {
    if (bd->st != LH_OK || !w) return NULL;
    lh_layers *t = bd->t;
    if (t->n == bd->cap) {
        size_t cap = bd->cap ? 2 * bd->cap : 256;
        lh_layer *v = realloc(t->v, cap * sizeof *v);
        if (!v) {
            bd->st = lh_error_set(bd->err, LH_ERR_NOMEM, "out of memory for the layer table");
            return NULL;
        }
        t->v = v;
        bd->cap = cap;
    }
    lh_layer *l = &t->v[t->n++];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", name);
    for (size_t i = 0; i < sizeof l->kohya && name[i]; i++) l->kohya[i] = name[i] == '.' ? '_' : name[i];
    l->kohya[sizeof l->kohya - 1] = '\0';
    l->part = part;
    l->ndim = ndim;
    l->shape[0] = out;
    l->shape[1] = in;
    l->shape[2] = l->shape[3] = ndim == 4 ? k : 1;
    l->stride = 1;
    l->pad = k == 3 ? 1 : 0;
    l->w = w;
    l->b = b;
    return l;
}

/* ---- U-Net ---- */

static void set_block(builder *bd, size_t from, lh_layer_block block, int index) {
    for (size_t i = from; bd->st == LH_OK && i < bd->t->n; i++) {
        bd->t->v[i].block = block;
        bd->t->v[i].block_index = index;
    }
}

static void add_resnet(builder *bd, const lh_unet_resnet *p, int64_t temb) {
    char n[160];
    int64_t ci = p->c_in, co = p->c_out;
    snprintf(n, sizeof n, "%s.conv1", p->name);
    add(bd, LH_LAYER_UNET, n, p->conv1_w, p->conv1_b, 4, co, ci, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", p->name);
    add(bd, LH_LAYER_UNET, n, p->temb_w, p->temb_b, 2, co, temb, 1);
    snprintf(n, sizeof n, "%s.conv2", p->name);
    add(bd, LH_LAYER_UNET, n, p->conv2_w, p->conv2_b, 4, co, co, 3);
    snprintf(n, sizeof n, "%s.conv_shortcut", p->name);
    add(bd, LH_LAYER_UNET, n, p->short_w, p->short_b, 4, co, ci, 1);
}

static void add_attn(builder *bd, const lh_unet_attn *a, int64_t ctx) {
    static const char *const TB = "transformer_blocks.0";
    const lh_unet_tblock *t = &a->block;
    int64_t c = a->c;
    char n[160];
#define LH_ADD(suffix, w_, b_, out_, in_)                                                          \
    do {                                                                                           \
        snprintf(n, sizeof n, "%s.%s", a->name, suffix);                                           \
        add(bd, LH_LAYER_UNET, n, w_, b_, 2, out_, in_, 1);                                        \
    } while (0)
    LH_ADD("proj_in", a->proj_in_w, a->proj_in_b, c, c);
    const struct {
        const char *name;
        float *w, *b;
        int64_t out, in;
    } L[] = {
        {"attn1.to_q", t->q1, NULL, c, c},       {"attn1.to_k", t->k1, NULL, c, c},
        {"attn1.to_v", t->v1, NULL, c, c},       {"attn1.to_out.0", t->o1_w, t->o1_b, c, c},
        {"attn2.to_q", t->q2, NULL, c, c},       {"attn2.to_k", t->k2, NULL, c, ctx},
        {"attn2.to_v", t->v2, NULL, c, ctx},     {"attn2.to_out.0", t->o2_w, t->o2_b, c, c},
        {"ff.net.0.proj", t->ff1_w, t->ff1_b, 8 * c, c},
        {"ff.net.2", t->ff2_w, t->ff2_b, c, 4 * c},
    };
    char sub[80];
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
        snprintf(sub, sizeof sub, "%s.%s", TB, L[i].name);
        LH_ADD(sub, L[i].w, L[i].b, L[i].out, L[i].in);
    }
    LH_ADD("proj_out", a->proj_out_w, a->proj_out_b, c, c);
#undef LH_ADD
}

static void add_block(builder *bd, const lh_unet_block *blk, const char *prefix, int up,
                      int64_t temb, int64_t ctx) {
    char n[160];
    int mid = !strcmp(prefix, "mid_block"); /* resnet, attention, resnet */
    for (int j = 0; j < blk->n_layers; j++) {
        add_resnet(bd, &blk->res[j], temb);
        if (blk->cross && (!mid || j == 0)) add_attn(bd, &blk->attn[j], ctx);
    }
    if (blk->sample_w) {
        snprintf(n, sizeof n, "%s.%s.0.conv", prefix, up ? "upsamplers" : "downsamplers");
        lh_layer *l = add(bd, LH_LAYER_UNET, n, blk->sample_w, blk->sample_b, 4, blk->c_out,
                          blk->c_out, 3);
        if (l && !up) l->stride = 2;
    }
}

/* kohya spelling of each U-Net layer's LDM name (ldm_keys.h's table). */
static void add_ldm_names(builder *bd, size_t from, const lh_unet_config *c) {
    lh_ldm_info info;
    memset(&info, 0, sizeof info);
    info.arch = c->use_linear_projection ? LH_LDM_ARCH_SD2 : LH_LDM_ARCH_SD1;
    info.unet = *c;
    info.has[LH_LDM_PART_UNET] = 1;
    static const char PREFIX[] = "model.diffusion_model.";
    for (size_t i = from; bd->st == LH_OK && i < bd->t->n; i++) {
        lh_layer *l = &bd->t->v[i];
        char key[160], ldm[200];
        snprintf(key, sizeof key, "%s.weight", l->name);
        if (lh_ldm_file_key(ldm, sizeof ldm, &info, LH_LDM_PART_UNET, key) != 0 ||
            strncmp(ldm, PREFIX, sizeof PREFIX - 1))
            continue;
        const char *s = ldm + sizeof PREFIX - 1;
        size_t n = strlen(s) - strlen(".weight");
        if (n >= sizeof l->kohya_ldm) continue;
        for (size_t j = 0; j < n; j++) l->kohya_ldm[j] = s[j] == '.' ? '_' : s[j];
        l->kohya_ldm[n] = '\0';
    }
}

static void add_unet(builder *bd, lh_unet *u) {
    const lh_unet_config *c = &u->cfg;
    size_t first = bd->t->n;
    int64_t c0 = c->block_out_channels[0], temb = 4 * c0, ctx = c->cross_attention_dim;
    char n[64];
    add(bd, LH_LAYER_UNET, "conv_in", u->conv_in_w, u->conv_in_b, 4, c0, c->in_channels, 3);
    add(bd, LH_LAYER_UNET, "time_embedding.linear_1", u->time1_w, u->time1_b, 2, temb, c0, 1);
    add(bd, LH_LAYER_UNET, "time_embedding.linear_2", u->time2_w, u->time2_b, 2, temb, temb, 1);
    /* Block scales reach what diffusers' set_adapters reaches: every layer of
     * a down/up block with attentions, and the mid block's attention only. */
    for (int i = 0; i < c->n_blocks; i++) {
        size_t from = bd->t->n;
        snprintf(n, sizeof n, "down_blocks.%d", i);
        add_block(bd, &u->down[i], n, 0, temb, ctx);
        if (u->down[i].cross) set_block(bd, from, LH_BLOCK_DOWN, i);
    }
    add_block(bd, &u->mid, "mid_block", 0, temb, ctx);
    for (size_t j = 0; bd->st == LH_OK && j < bd->t->n; j++)
        if (!strncmp(bd->t->v[j].name, "mid_block.attentions.", 21)) bd->t->v[j].block = LH_BLOCK_MID;
    for (int i = 0; i < c->n_blocks; i++) {
        size_t from = bd->t->n;
        snprintf(n, sizeof n, "up_blocks.%d", i);
        add_block(bd, &u->up[i], n, 1, temb, ctx);
        if (u->up[i].cross) set_block(bd, from, LH_BLOCK_UP, i);
    }
    add(bd, LH_LAYER_UNET, "conv_out", u->conv_out_w, u->conv_out_b, 4, c->out_channels, c0, 3);
    add_ldm_names(bd, first, c);
    for (size_t j = first; bd->st == LH_OK && j < bd->t->n; j++)
        bd->t->v[j].wdt = lh_wstore_type(&u->ws, bd->t->v[j].w);
}

/* ---- Text encoder ---- */

static void add_clip(builder *bd, lh_clip *m) {
    static const char *const NAMES[LH_CLIP_LINEARS] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
    const lh_clip_config *c = lh_clip_get_config(m);
    int64_t H = c->hidden_size, F = c->intermediate_size;
    char n[160];
    for (int64_t l = 0; l < c->num_hidden_layers; l++)
        for (int k = 0; k < LH_CLIP_LINEARS; k++) {
            float *w, *b;
            lh_clip_linear(m, l, k, &w, &b);
            snprintf(n, sizeof n, "text_model.encoder.layers.%lld.%s", (long long)l, NAMES[k]);
            lh_layer *ly = add(bd, LH_LAYER_TE, n, w, b, 2, k == 4 ? F : H, k == 5 ? F : H, 1);
            if (ly) ly->wdt = lh_clip_weight_type(m, w);
        }
}

/* ---- Index by weight pointer ---- */

static size_t hash_ptr(const void *p, size_t size) {
    uint64_t v = (uint64_t)(uintptr_t)p;
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdull;
    v ^= v >> 33;
    return (size_t)v & (size - 1);
}

static void fill_index(lh_layers *t) {
    size_t size = t->by_w_size;
    memset(t->by_w, 0xff, size * sizeof *t->by_w); /* -1 */
    for (size_t i = 0; i < t->n; i++) {
        size_t h = hash_ptr(t->v[i].w, size);
        while (t->by_w[h] >= 0) h = (h + 1) & (size - 1);
        t->by_w[h] = (int32_t)i;
    }
}

static lh_status index_weights(lh_layers *t, lh_error *err) {
    size_t size = 16;
    while (size < 2 * t->n) size *= 2;
    t->by_w = malloc(size * sizeof *t->by_w);
    if (!t->by_w) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for the layer index");
    t->by_w_size = size;
    fill_index(t);
    return LH_OK;
}

static const lh_layer *find_w(const lh_layers *t, const float *w) {
    if (!t->by_w_size) return NULL;
    for (size_t h = hash_ptr(w, t->by_w_size);; h = (h + 1) & (t->by_w_size - 1)) {
        int32_t i = t->by_w[h];
        if (i < 0) return NULL;
        if (t->v[i].w == w) return &t->v[i];
    }
}

/* ---- API ---- */

void lh_layers_moved(lh_layers *t, const float *old, float *now, lh_dtype dtype) {
    lh_layer *l = (lh_layer *)find_w(t, old);
    if (!l) return;
    l->w = now;
    l->wdt = dtype;
    fill_index(t);
}

lh_status lh_layers_build(lh_layers *t, lh_backend *be, lh_unet *unet, lh_clip *clip,
                          lh_error *err) {
    memset(t, 0, sizeof *t);
    t->be = be;
    builder bd = {t, 0, err, LH_OK};
    if (unet) add_unet(&bd, unet);
    if (clip) add_clip(&bd, clip);
    if (bd.st == LH_OK) bd.st = index_weights(t, err);
    if (bd.st != LH_OK) lh_layers_free(t);
    return bd.st;
}

void lh_layers_free(lh_layers *t) {
    for (size_t i = 0; i < t->n; i++) free(t->v[i].terms);
    free(t->v);
    free(t->by_w);
    memset(t, 0, sizeof *t);
}

int64_t lh_layers_find(const lh_layers *t, lh_layer_part part, const char *name) {
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].part == part && !strcmp(t->v[i].name, name)) return (int64_t)i;
    return -1;
}

int64_t lh_layers_find_kohya(const lh_layers *t, lh_layer_part part, const char *name) {
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].part == part &&
            (!strcmp(t->v[i].kohya, name) || !strcmp(t->v[i].kohya_ldm, name)))
            return (int64_t)i;
    return -1;
}

size_t lh_layer_numel(const lh_layer *l) {
    size_t n = 1;
    for (int i = 0; i < l->ndim; i++) n *= (size_t)l->shape[i];
    return n;
}

/* Tensor headers over a layer's input and output (2-D for linears, NCHW
 * for convolutions). */
static lh_status io_views(lh_tensor *yt, lh_tensor *xt, const lh_layer *l, const float *y,
                          const float *x, int64_t n, int64_t h, int64_t w_, lh_error *err) {
    if (l->ndim == 2) {
        int64_t ys[2] = {n, l->shape[0]}, xs[2] = {n, l->shape[1]};
        lh_status st = lh_tensor_view(yt, (void *)y, LH_DTYPE_F32, 2, ys, err);
        return st == LH_OK ? lh_tensor_view(xt, (void *)x, LH_DTYPE_F32, 2, xs, err) : st;
    }
    int64_t ho = (h + 2 * l->pad - l->shape[2]) / l->stride + 1;
    int64_t wo = (w_ + 2 * l->pad - l->shape[3]) / l->stride + 1;
    int64_t ys[4] = {n, l->shape[0], ho, wo}, xs[4] = {n, l->shape[1], h, w_};
    lh_status st = lh_tensor_view(yt, (void *)y, LH_DTYPE_F32, 4, ys, err);
    return st == LH_OK ? lh_tensor_view(xt, (void *)x, LH_DTYPE_F32, 4, xs, err) : st;
}

/* Round the n floats of an adapted layer's output to the activation precision. */
static lh_status round_act(const lh_layers *t, const lh_layer *l, float *y, const lh_tensor *v,
                           lh_dtype act, lh_error *err) {
    if (act == LH_DTYPE_F32 || !y) return LH_OK;
    if (!t->be->ops->round)
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "layer %s: the %s backend cannot round to "
                            "half precision", l->name, t->be->ops->name);
    lh_status st = t->be->ops->round(t->be, y, v->numel, act);
    if (st != LH_OK) return lh_error_set(err, st, "layer %s: rounding to half failed", l->name);
    return LH_OK;
}

/* Dropout on the terms' input: the backend's dropout op, with a seed per
 * (step, layer). */
static uint64_t drop_base(const lh_layers *t, const lh_layer *l) {
    return t->dropout_seed ^ ((uint64_t)(l - t->v) * 0xD1B54A32D192ED03ull);
}

/* *out = x * mask / (1 - p) in a new buffer of the layer's backend; NULL
 * when dropout is off. */
static lh_status dropped(float **out, const lh_layers *t, const lh_layer *l, const float *x,
                         int64_t numel, lh_error *err) {
    *out = NULL;
    if (t->dropout <= 0.0) return LH_OK;
    lh_backend *be = t->be;
    if (!be->ops->dropout || !be->ops->dropout_backward)
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "layer %s: the %s backend has no dropout",
                            l->name, be->ops->name);
    float *d = be->ops->alloc(be, (size_t)(numel ? numel : 1) * sizeof *d);
    if (!d) return lh_error_set(err, LH_ERR_NOMEM, "layer %s: out of memory for dropout", l->name);
    lh_status st = be->ops->dropout(be, d, x, numel, drop_base(t, l), t->dropout);
    if (st != LH_OK) {
        be->ops->free(be, d);
        return lh_error_set(err, st, "layer %s: dropout failed", l->name);
    }
    *out = d;
    return LH_OK;
}

/* y += the terms of layer l on x: host memory (mem NULL), or device
 * memory of backend mem. */
static lh_status forward_terms(const lh_layers *t, const lh_layer *l, float *y, const float *x,
                               int64_t n, int64_t h, int64_t w_, lh_backend *mem, lh_error *err) {
    lh_tensor yt, xt;
    lh_status st = io_views(&yt, &xt, l, y, x, n, h, w_, err);
    yt.be = xt.be = mem;
    float *xd = NULL;
    if (st == LH_OK) st = dropped(&xd, t, l, x, xt.numel, err);
    if (xd) xt.data = xd;
    for (int i = 0; st == LH_OK && i < l->n_terms; i++) {
        const lh_adapter_desc *d = l->terms[i].desc;
        char msg[512] = "";
        st = d->forward(l->terms[i].state, &yt, &xt, l->terms[i].scale, msg, sizeof msg);
        if (st != LH_OK) st = lh_error_set(err, st, "adapter %s on layer %s: %s", d->info.id,
                                           l->name, msg);
    }
    if (xd) t->be->ops->free(t->be, xd);
    return st;
}

/* The terms' gradients of layer l (memory as forward_terms'): dx += (when
 * not NULL), the terms' parameter gradients +=. */
static lh_status backward_terms(const lh_layers *t, const lh_layer *l, float *dx,
                                const float *dy, const float *x, int64_t n, int64_t h,
                                int64_t w_, lh_backend *mem, lh_error *err) {
    lh_tensor dyt, xt, dxt;
    lh_status st = io_views(&dyt, &xt, l, dy, x, n, h, w_, err);
    dyt.be = xt.be = mem;
    /* with dropout the terms saw x * mask / (1 - p): their dx goes through
     * the same mask, via a zeroed buffer */
    lh_backend *be = t->be;
    float *xd = NULL, *dxd = NULL;
    if (st == LH_OK) st = dropped(&xd, t, l, x, xt.numel, err);
    if (st == LH_OK && xd && dx) {
        size_t bytes = (size_t)xt.numel * sizeof *dxd;
        dxd = be->ops->alloc(be, bytes ? bytes : 1);
        if (!dxd || be->ops->memset0(be, dxd, bytes) != LH_OK)
            st = lh_error_set(err, LH_ERR_NOMEM, "layer %s: out of memory for dropout", l->name);
    }
    if (xd) xt.data = xd;
    if (st == LH_OK && dx)
        st = lh_tensor_view(&dxt, dxd ? dxd : dx, LH_DTYPE_F32, xt.ndim, xt.shape, err);
    if (st == LH_OK && dx) dxt.be = mem;
    for (int i = 0; st == LH_OK && i < l->n_terms; i++) {
        const lh_adapter_desc *d = l->terms[i].desc;
        char msg[512] = "";
        if (!d->backward) {
            st = lh_error_set(err, LH_ERR_UNSUPPORTED, "adapter kind %s on layer %s has no "
                              "backward: it cannot be trained through", d->info.id, l->name);
            break;
        }
        st = d->backward(l->terms[i].state, dx ? &dxt : NULL, l->terms[i].grads, &dyt, &xt,
                         l->terms[i].scale, msg, sizeof msg);
        if (st != LH_OK)
            st = lh_error_set(err, st, "adapter %s on layer %s (backward): %s", d->info.id,
                              l->name, msg);
    }
    /* d(x * m / (1 - p)) / dx = m / (1 - p): where xd kept x */
    if (st == LH_OK && dxd &&
        (st = be->ops->dropout_backward(be, dx, dxd, xt.numel, drop_base(t, l), t->dropout)) !=
            LH_OK)
        st = lh_error_set(err, st, "layer %s: dropout backward failed", l->name);
    if (xd) be->ops->free(be, xd);
    if (dxd) be->ops->free(be, dxd);
    return st;
}

/* The terms of layer l (forward into out, or backward into out = dx when
 * dy) on a backend whose memory is not the host's (cuda), in float32 as on
 * the host (the caller rounds the output to act after). The plugins
 * compute on the device (lh_host_api_bind: their tensors there). */
static lh_status device_terms(const lh_layers *t, const lh_layer *l, float *out, const float *dy,
                              const float *x, int64_t n, int64_t h, int64_t w_, lh_dtype act,
                              lh_error *err) {
    lh_backend *be = t->be;
    lh_status st = act != LH_DTYPE_F32 ? be->ops->set_precision(be, LH_DTYPE_F32) : LH_OK;
    if (st != LH_OK) st = lh_error_set(err, st, "layer %s: set_precision failed", l->name);
    if (st == LH_OK) {
        lh_backend *prev = lh_host_api_bind(be);
        st = dy ? backward_terms(t, l, out, dy, x, n, h, w_, be, err)
                : forward_terms(t, l, out, x, n, h, w_, be, err);
        lh_host_api_bind(prev);
    }
    if (act != LH_DTYPE_F32) {
        lh_status s2 = be->ops->set_precision(be, act);
        if (st == LH_OK && s2 != LH_OK)
            st = lh_error_set(err, s2, "layer %s: set_precision failed", l->name);
    }
    return st;
}

lh_status lh_layers_runtime(const lh_layers *t, const float *w, float *y, const float *x,
                            int64_t n, int64_t h, int64_t w_, lh_dtype act, lh_error *err) {
    if (!t || !t->n_runtime) return LH_OK;
    const lh_layer *l = find_w(t, w);
    if (!l || !l->n_terms) return LH_OK;
    lh_status st = lh_backend_host_memory(t->be)
                       ? forward_terms(t, l, y, x, n, h, w_, NULL, err)
                       : device_terms(t, l, y, NULL, x, n, h, w_, act, err);
    lh_tensor yt, xt;
    if (st == LH_OK) st = io_views(&yt, &xt, l, y, x, n, h, w_, err);
    if (st == LH_OK) st = round_act(t, l, y, &yt, act, err);
    return st;
}

lh_status lh_layers_runtime_backward(const lh_layers *t, const float *w, float *dx,
                                     const float *dy, const float *x, int64_t n, int64_t h,
                                     int64_t w_, lh_dtype act, lh_error *err) {
    if (!t || !t->n_runtime) return LH_OK;
    const lh_layer *l = find_w(t, w);
    if (!l || !l->n_terms) return LH_OK;
    lh_status st = lh_backend_host_memory(t->be)
                       ? backward_terms(t, l, dx, dy, x, n, h, w_, NULL, err)
                       : device_terms(t, l, dx, dy, x, n, h, w_, act, err);
    lh_tensor yt, xt;
    if (st == LH_OK && dx) st = io_views(&yt, &xt, l, dy, dx, n, h, w_, err);
    if (st == LH_OK && dx) st = round_act(t, l, dx, &xt, act, err);
    return st;
}
