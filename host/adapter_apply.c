/* Applying a set of adapters to a model: runtime terms or merged weights,
 * touching only the layers whose adapters or scales changed; merged layers
 * go back to their saved original bits (see include/lorahost/adapters.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "lorahost/safetensors.h"
#include "tensor.h"

void lh_adapter_weights_init(lh_adapter_weights *w, double scale) {
    memset(w, 0, sizeof *w);
    w->scale = scale;
    w->text_encoder = w->unet = w->mid = 1.0;
    for (int i = 0; i < LH_ADAPTER_MAX_BLOCKS; i++) w->down[i] = w->up[i] = 1.0;
}

/* ---- Per-model state ---- */

lh_status lh_adapt_get(lh_adapt **out, lh_model *m, lh_error *err) {
    *out = NULL;
    if (!m->adapt) {
        lh_adapt *ad = calloc(1, sizeof *ad);
        if (!ad) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for adapter state");
        lh_status st = lh_layers_build(&ad->layers, m->be, m->unet, m->clip, err);
        if (st == LH_OK && !(ad->ls = calloc(ad->layers.n ? ad->layers.n : 1, sizeof *ad->ls)))
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for adapter state");
        if (st != LH_OK) {
            lh_layers_free(&ad->layers);
            free(ad);
            return st;
        }
        m->adapt = ad;
        if (m->unet) m->unet->adapt = &ad->layers;
        if (m->clip) lh_clip_set_adapt(m->clip, &ad->layers);
    }
    *out = m->adapt;
    return LH_OK;
}

void lh_adapt_free(lh_model *m) {
    lh_adapt *ad = m->adapt;
    if (!ad) return;
    for (size_t i = 0; i < ad->n_loaded; i++) ad->loaded[i]->model = NULL;
    for (size_t i = 0; i < ad->layers.n; i++) {
        free(ad->ls[i].orig_w);
        free(ad->ls[i].orig_b);
        free(ad->ls[i].applied);
    }
    free(ad->ls);
    lh_layers_free(&ad->layers);
    free(ad->loaded);
    free(ad->active);
    free(ad->weights);
    free(ad);
    m->adapt = NULL;
    if (m->unet) m->unet->adapt = NULL;
    if (m->clip) lh_clip_set_adapt(m->clip, NULL);
}

/* A layer's weight between float32 host memory and its backend storage
 * (l->wdt: F32, or a half type that the host narrows and widens). */
static lh_status weight_get(lh_backend *be, const lh_layer *l, float *host) {
    size_t n = lh_layer_numel(l);
    if (l->wdt == LH_DTYPE_F32) return be->ops->download(be, host, l->w, n * sizeof(float));
    uint16_t *h = malloc(n ? n * 2 : 2);
    if (!h) return LH_ERR_NOMEM;
    lh_status st = be->ops->download(be, h, l->w, n * 2);
    for (size_t j = 0; st == LH_OK && j < n; j++)
        host[j] = l->wdt == LH_DTYPE_BF16 ? lh_bf16_to_f32(h[j]) : lh_f16_to_f32(h[j]);
    free(h);
    return st;
}

static lh_status weight_put(lh_backend *be, const lh_layer *l, const float *host) {
    size_t n = lh_layer_numel(l);
    if (l->wdt == LH_DTYPE_F32) return be->ops->upload(be, l->w, host, n * sizeof(float));
    uint16_t *h = malloc(n ? n * 2 : 2);
    if (!h) return LH_ERR_NOMEM;
    for (size_t j = 0; j < n; j++)
        h[j] = l->wdt == LH_DTYPE_BF16 ? lh_f32_to_bf16(host[j]) : lh_f32_to_f16(host[j]);
    lh_status st = be->ops->upload(be, l->w, h, n * 2);
    free(h);
    return st;
}

float *lh_adapt_base_weight(lh_adapt *ad, size_t i, lh_error *err) {
    const lh_layer *l = &ad->layers.v[i];
    size_t bytes = lh_layer_numel(l) * sizeof(float);
    float *buf = malloc(bytes ? bytes : 1);
    if (!buf) {
        lh_error_set(err, LH_ERR_NOMEM, "out of memory reading layer %s", l->name);
        return NULL;
    }
    if (ad->ls[i].orig_w) {
        memcpy(buf, ad->ls[i].orig_w, bytes);
        return buf;
    }
    if (weight_get(ad->layers.be, l, buf) != LH_OK) {
        free(buf);
        lh_error_set(err, LH_ERR_BACKEND, "reading layer %s from the backend failed", l->name);
        return NULL;
    }
    return buf;
}

/* ---- One layer ---- */

static lh_status restore(lh_adapt *ad, size_t i, lh_error *err) {
    lh_adapt_layer *s = &ad->ls[i];
    const lh_layer *l = &ad->layers.v[i];
    lh_backend *be = ad->layers.be;
    if (!s->merged) return LH_OK;
    lh_status st = weight_put(be, l, s->orig_w);
    if (st == LH_OK && s->orig_b)
        st = be->ops->upload(be, l->b, s->orig_b, (size_t)l->shape[0] * sizeof(float));
    if (st != LH_OK)
        return lh_error_set(err, LH_ERR_BACKEND, "restoring layer %s failed", l->name);
    free(s->orig_w);
    free(s->orig_b);
    s->orig_w = s->orig_b = NULL;
    s->merged = 0;
    return LH_OK;
}

static lh_status save_orig(lh_adapt *ad, size_t i, lh_error *err) {
    lh_adapt_layer *s = &ad->ls[i];
    const lh_layer *l = &ad->layers.v[i];
    lh_backend *be = ad->layers.be;
    if (s->orig_w) return LH_OK;
    size_t nb = (size_t)l->shape[0] * sizeof(float);
    s->orig_w = lh_adapt_base_weight(ad, i, err);
    if (!s->orig_w) return err ? err->code : LH_ERR_NOMEM;
    if (l->b) {
        s->orig_b = malloc(nb);
        if (!s->orig_b || be->ops->download(be, s->orig_b, l->b, nb) != LH_OK) {
            free(s->orig_w);
            free(s->orig_b);
            s->orig_w = s->orig_b = NULL;
            return lh_error_set(err, LH_ERR_BACKEND, "saving layer %s failed", l->name);
        }
    }
    return LH_OK;
}

/* W = W0 + the terms' deltas (bias likewise), starting from the saved W0.
 * The cpu backend's weights are host memory: the deltas accumulate there in
 * place; other backends get a host buffer uploaded at the end. */
static lh_status merge(lh_adapt *ad, size_t i, const lh_layer_term *terms, int n, lh_error *err) {
    const lh_layer *l = &ad->layers.v[i];
    lh_adapt_layer *s = &ad->ls[i];
    lh_backend *be = ad->layers.be;
    lh_status st = save_orig(ad, i, err);
    if (st != LH_OK) return st;
    s->merged = 1; /* from here on a failure restores the saved bits */
    size_t numel = lh_layer_numel(l), nout = (size_t)l->shape[0];
    int in_place = !strcmp(be->ops->name, "cpu") && l->wdt == LH_DTYPE_F32;
    float *w = in_place ? l->w : malloc((numel + nout) * sizeof *w);
    if (!w) return lh_error_set(err, LH_ERR_NOMEM, "out of memory merging layer %s", l->name);
    float *b = in_place ? l->b : w + numel;
    memcpy(w, s->orig_w, numel * sizeof *w);
    if (s->orig_b) memcpy(b, s->orig_b, nout * sizeof *b);
    lh_tensor wt, bt;
    int64_t nb = (int64_t)nout;
    st = lh_tensor_view(&wt, w, LH_DTYPE_F32, l->ndim, l->shape, err);
    if (st == LH_OK) st = lh_tensor_view(&bt, b, LH_DTYPE_F32, 1, &nb, err);
    for (int k = 0; st == LH_OK && k < n; k++) {
        const lh_adapter_desc *d = terms[k].desc;
        char msg[LH_ERROR_MAX] = "";
        st = d->weight_delta(terms[k].state, &wt, terms[k].scale, msg, sizeof msg);
        if (st == LH_OK && d->bias_delta && s->orig_b)
            st = d->bias_delta(terms[k].state, &bt, terms[k].scale, msg, sizeof msg);
        if (st != LH_OK)
            st = lh_error_set(err, st, "adapter %s on layer %s: %s", d->info.id, l->name, msg);
    }
    if (!in_place) {
        if (st == LH_OK) st = weight_put(be, l, w);
        if (st == LH_OK && s->orig_b) st = be->ops->upload(be, l->b, b, nout * sizeof(float));
        free(w);
    }
    return st;
}

static int same_terms(const lh_adapt_layer *s, const lh_layer_term *t, int n, int merged) {
    if (s->n_applied != n || s->merged != (merged && n)) return 0;
    for (int k = 0; k < n; k++)
        if (s->applied[k].desc != t[k].desc || s->applied[k].state != t[k].state ||
            s->applied[k].scale != t[k].scale || s->applied[k].grads != t[k].grads)
            return 0;
    return 1;
}

static lh_status set_layer(lh_adapt *ad, size_t i, const lh_layer_term *t, int n, int merged,
                           lh_error *err) {
    lh_adapt_layer *s = &ad->ls[i];
    lh_layer *l = &ad->layers.v[i];
    if (same_terms(s, t, n, merged)) return LH_OK;
    ad->n_layer_updates++;
    lh_layer_term *copy = NULL, *rt = NULL;
    if (n && (!(copy = malloc((size_t)n * sizeof *copy)) ||
              (!merged && !(rt = malloc((size_t)n * sizeof *rt))))) {
        free(copy);
        return lh_error_set(err, LH_ERR_NOMEM, "out of memory applying adapters");
    }
    if (n) memcpy(copy, t, (size_t)n * sizeof *t);
    if (rt) memcpy(rt, t, (size_t)n * sizeof *t);
    /* drop what the layer holds, then apply the new terms */
    free(l->terms);
    l->terms = NULL;
    ad->layers.n_runtime -= l->n_terms ? 1 : 0;
    ad->layers.n_runtime_unet -= l->n_terms && l->part != LH_LAYER_TE ? 1 : 0;
    l->n_terms = 0;
    free(s->applied);
    s->applied = NULL;
    s->n_applied = 0;
    lh_status st = merged && n ? merge(ad, i, t, n, err) : restore(ad, i, err);
    if (st != LH_OK) {
        free(copy);
        free(rt);
        return st;
    }
    if (rt) {
        l->terms = rt;
        l->n_terms = n;
        ad->layers.n_runtime++;
        ad->layers.n_runtime_unet += l->part != LH_LAYER_TE;
    }
    s->applied = copy;
    s->n_applied = n;
    return LH_OK;
}

/* ---- A set ---- */

static double layer_scale(const lh_layer *l, const lh_adapter_weights *w) {
    if (l->part == LH_LAYER_TE) return w->scale * w->text_encoder;
    double f = w->unet;
    int b = l->block_index < LH_ADAPTER_MAX_BLOCKS ? l->block_index : LH_ADAPTER_MAX_BLOCKS - 1;
    if (l->block == LH_BLOCK_DOWN) f *= w->down[b];
    else if (l->block == LH_BLOCK_MID) f *= w->mid;
    else if (l->block == LH_BLOCK_UP) f *= w->up[b];
    return w->scale * f;
}

static lh_status check_set(lh_model *m, lh_adapter *const *adapters,
                           const lh_adapter_weights *weights, size_t n, lh_error *err) {
    if (n && (!adapters || !weights))
        return lh_error_set(err, LH_ERR_INVALID, "adapter set: NULL adapters or weights");
    for (size_t j = 0; j < n; j++) {
        if (!adapters[j] || adapters[j]->model != m)
            return lh_error_set(err, LH_ERR_INVALID,
                                "adapter set: entry %zu was not loaded for this model", j);
        for (size_t k = 0; k < j; k++)
            if (adapters[k] == adapters[j])
                return lh_error_set(err, LH_ERR_INVALID, "adapter set: %s is listed twice",
                                    adapters[j]->name);
        const lh_adapter_weights *w = &weights[j];
        double all[4 + 2 * LH_ADAPTER_MAX_BLOCKS] = {w->scale, w->text_encoder, w->unet, w->mid};
        for (int b = 0; b < LH_ADAPTER_MAX_BLOCKS; b++) {
            all[4 + b] = w->down[b];
            all[4 + LH_ADAPTER_MAX_BLOCKS + b] = w->up[b];
        }
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
            if (!isfinite(all[k]))
                return lh_error_set(err, LH_ERR_INVALID,
                                    "adapter set: %s has a scale that is not a finite number",
                                    adapters[j]->name);
    }
    return LH_OK;
}

static lh_status apply(lh_adapt *ad, lh_adapter *const *adapters,
                       const lh_adapter_weights *weights, size_t n, lh_adapter_mode mode,
                       lh_error *err) {
    size_t nl = ad->layers.n, per = n ? n : 1;
    lh_layer_term *want = calloc(nl * per + 1, sizeof *want);
    int *count = calloc(nl + 1, sizeof *count);
    lh_status st = LH_OK;
    if (!want || !count) st = lh_error_set(err, LH_ERR_NOMEM, "out of memory applying adapters");
    for (size_t j = 0; st == LH_OK && j < n; j++)
        for (size_t p = 0; p < adapters[j]->n_parts; p++) {
            const lh_adapter_part *part = &adapters[j]->parts[p];
            lh_layer_term *t = &want[part->layer * per + (size_t)count[part->layer]++];
            t->desc = part->desc;
            t->state = part->state;
            t->grads = part->grads;
            t->scale = layer_scale(&ad->layers.v[part->layer], &weights[j]);
        }
    for (size_t i = 0; st == LH_OK && i < nl; i++)
        st = set_layer(ad, i, want + i * per, count[i], mode == LH_ADAPTER_MERGED, err);
    free(want);
    free(count);
    return st;
}

static lh_status remember(lh_adapt *ad, lh_adapter *const *adapters,
                          const lh_adapter_weights *weights, size_t n, lh_adapter_mode mode,
                          lh_error *err) {
    lh_adapter **a = NULL;
    lh_adapter_weights *w = NULL;
    if (n && (!(a = malloc(n * sizeof *a)) || !(w = malloc(n * sizeof *w)))) {
        free(a);
        return lh_error_set(err, LH_ERR_NOMEM, "out of memory applying adapters");
    }
    if (n) {
        memcpy(a, adapters, n * sizeof *a);
        memcpy(w, weights, n * sizeof *w);
    }
    free(ad->active);
    free(ad->weights);
    ad->active = a;
    ad->weights = w;
    ad->n_active = n;
    ad->mode = mode;
    return LH_OK;
}

lh_status lh_adapter_set_ex(lh_model *m, lh_adapter *const *adapters,
                            const lh_adapter_weights *weights, size_t n, lh_adapter_mode mode,
                            lh_error *err) {
    if (!m) return lh_error_set(err, LH_ERR_INVALID, "adapter set: NULL model");
    if (mode != LH_ADAPTER_RUNTIME && mode != LH_ADAPTER_MERGED)
        return lh_error_set(err, LH_ERR_INVALID, "adapter set: unknown mode %d", (int)mode);
    lh_status st = check_set(m, adapters, weights, n, err);
    if (st != LH_OK) return st;
    if (!n && !m->adapt) return LH_OK;
    lh_adapt *ad;
    if ((st = lh_adapt_get(&ad, m, err)) != LH_OK) return st;
    st = apply(ad, adapters, weights, n, mode, err);
    if (st == LH_OK) return remember(ad, adapters, weights, n, mode, err);
    /* leave a usable model: the base weights, no adapters */
    apply(ad, NULL, NULL, 0, mode, NULL);
    remember(ad, NULL, NULL, 0, mode, NULL);
    return st;
}

lh_status lh_adapter_set(lh_model *m, lh_adapter *const *adapters, const double *scales,
                         size_t n, lh_error *err) {
    if (n && !scales) return lh_error_set(err, LH_ERR_INVALID, "adapter set: NULL scales");
    lh_adapter_weights *w = n ? malloc(n * sizeof *w) : NULL;
    if (n && !w) return lh_error_set(err, LH_ERR_NOMEM, "out of memory applying adapters");
    for (size_t j = 0; j < n; j++) lh_adapter_weights_init(&w[j], scales[j]);
    lh_status st = lh_adapter_set_ex(m, adapters, w, n, m && m->adapt ? m->adapt->mode
                                                                       : LH_ADAPTER_RUNTIME, err);
    free(w);
    return st;
}

void lh_adapt_forget(lh_model *m, lh_adapter *a) {
    lh_adapt *ad = m->adapt;
    if (!ad) return;
    size_t k = 0;
    for (size_t j = 0; j < ad->n_active; j++)
        if (ad->active[j] != a) {
            ad->active[k] = ad->active[j];
            ad->weights[k++] = ad->weights[j];
        }
    if (k != ad->n_active) {
        lh_error err;
        if (apply(ad, ad->active, ad->weights, k, ad->mode, &err) != LH_OK)
            apply(ad, NULL, NULL, 0, ad->mode, NULL), k = 0;
        ad->n_active = k;
    }
    for (size_t j = 0; j < ad->n_loaded; j++)
        if (ad->loaded[j] == a) {
            ad->loaded[j] = ad->loaded[--ad->n_loaded];
            break;
        }
    a->model = NULL;
}
