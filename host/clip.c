/* The CLIP text encoder (transformers' CLIPTextModel) on a compute backend:
 * config.json reading, weight loading by checkpoint key, and the forward
 * pass with diffusers' clip_skip. See clip.h. */
#include "clip.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "weights.h"

typedef struct clip_layer {
    float *ln1_w, *ln1_b;
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    float *ln2_w, *ln2_b;
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct lh_clip {
    lh_clip_config cfg;
    lh_backend *be;
    lh_wstore ws;          /* owns every backend weight */
    float *tok_emb;        /* host [vocab_size, hidden] */
    float *pos_emb;        /* host [max_position_embeddings, hidden] */
    clip_layer *layers;    /* [num_hidden_layers], backend pointers */
    float *final_w, *final_b; /* backend [hidden] */
    const struct lh_layers *adapt; /* runtime adapters, NULL: none */
};

void lh_clip_linear(const lh_clip *m, int64_t layer, int which, float **w, float **b) {
    const clip_layer *L = &m->layers[layer];
    float *const ws[LH_CLIP_LINEARS] = {L->q_w, L->k_w, L->v_w, L->o_w, L->fc1_w, L->fc2_w};
    float *const bs[LH_CLIP_LINEARS] = {L->q_b, L->k_b, L->v_b, L->o_b, L->fc1_b, L->fc2_b};
    *w = ws[which];
    *b = bs[which];
}

void lh_clip_set_adapt(lh_clip *m, const struct lh_layers *adapt) { m->adapt = adapt; }

/* ---- config.json ---- */

static const lh_clip_config CLIP_DEFAULTS = {
    .vocab_size = 49408,
    .hidden_size = 512,
    .intermediate_size = 2048,
    .num_hidden_layers = 12,
    .num_attention_heads = 8,
    .max_position_embeddings = 77,
    .layer_norm_eps = 1e-5f,
    .hidden_act = LH_CLIP_ACT_QUICK_GELU,
};

/* Integer fields: the key, where it goes, and the accepted range. */
static const struct {
    const char *key;
    size_t offset;
    int64_t lo, hi;
} CLIP_INT_FIELDS[] = {
    {"vocab_size", offsetof(lh_clip_config, vocab_size), 1, 1 << 24},
    {"hidden_size", offsetof(lh_clip_config, hidden_size), 1, 1 << 16},
    {"intermediate_size", offsetof(lh_clip_config, intermediate_size), 1, 1 << 18},
    {"num_hidden_layers", offsetof(lh_clip_config, num_hidden_layers), 1, 1024},
    {"num_attention_heads", offsetof(lh_clip_config, num_attention_heads), 1, 1 << 12},
    {"max_position_embeddings", offsetof(lh_clip_config, max_position_embeddings), 1, 1 << 16},
};

static const char *const CLIP_ACT_NAMES[LH_CLIP_ACT_COUNT] = {
    [LH_CLIP_ACT_QUICK_GELU] = "quick_gelu",
    [LH_CLIP_ACT_GELU] = "gelu",
};

lh_status lh_clip_config_read(lh_clip_config *cfg, const char *path, lh_error *err) {
    *cfg = CLIP_DEFAULTS;
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f)
            return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: cannot open the text encoder config",
                                path);
        fclose(f);
        return lh_error_set(err, LH_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, je.line,
                            je.text);
    }
    lh_status st = LH_OK;
    if (!json_is_object(root)) {
        st = lh_error_set(err, LH_ERR_FORMAT, "%s: not a JSON object", path);
        goto done;
    }
    const json_t *v = json_object_get(root, "model_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "clip_text_model") != 0)) {
        st = lh_error_set(err, LH_ERR_CONFIG,
                          "%s: field 'model_type' is %s%s%s; a CLIP text encoder has "
                          "\"clip_text_model\"",
                          path, json_is_string(v) ? "\"" : "",
                          json_is_string(v) ? json_string_value(v) : "not a string",
                          json_is_string(v) ? "\"" : "");
        goto done;
    }
    for (size_t i = 0; i < sizeof CLIP_INT_FIELDS / sizeof CLIP_INT_FIELDS[0]; i++) {
        v = json_object_get(root, CLIP_INT_FIELDS[i].key);
        if (!v) continue; /* CLIPTextConfig's default */
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : 0;
        if (!json_is_integer(v) || x < CLIP_INT_FIELDS[i].lo || x > CLIP_INT_FIELDS[i].hi) {
            st = lh_error_set(err, LH_ERR_CONFIG,
                              "%s: field '%s' must be an integer in [%lld, %lld]", path,
                              CLIP_INT_FIELDS[i].key, (long long)CLIP_INT_FIELDS[i].lo,
                              (long long)CLIP_INT_FIELDS[i].hi);
            goto done;
        }
        *(int64_t *)((char *)cfg + CLIP_INT_FIELDS[i].offset) = (int64_t)x;
    }
    if (cfg->hidden_size % cfg->num_attention_heads != 0) {
        st = lh_error_set(err, LH_ERR_CONFIG,
                          "%s: field 'hidden_size' (%lld) is not a multiple of "
                          "'num_attention_heads' (%lld)",
                          path, (long long)cfg->hidden_size, (long long)cfg->num_attention_heads);
        goto done;
    }
    v = json_object_get(root, "layer_norm_eps");
    if (v) {
        double eps = json_is_number(v) ? json_number_value(v) : -1.0;
        /* in (0, 1) once it is a float too: 1e-50 would become 0 */
        if (!(eps > 0.0 && eps < 1.0 && (float)eps > 0.0f && (float)eps < 1.0f)) {
            st = lh_error_set(err, LH_ERR_CONFIG,
                              "%s: field 'layer_norm_eps' must be a number in (0, 1)", path);
            goto done;
        }
        cfg->layer_norm_eps = (float)eps;
    }
    v = json_object_get(root, "hidden_act");
    if (v) {
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        int found = -1;
        for (int a = 0; s && a < LH_CLIP_ACT_COUNT; a++)
            if (strcmp(s, CLIP_ACT_NAMES[a]) == 0) found = a;
        if (found < 0) {
            st = lh_error_set(err, s ? LH_ERR_UNSUPPORTED : LH_ERR_CONFIG,
                              "%s: field 'hidden_act' is %s%s%s; supported: \"quick_gelu\", "
                              "\"gelu\"",
                              path, s ? "\"" : "", s ? s : "not a string", s ? "\"" : "");
            goto done;
        }
        cfg->hidden_act = (lh_clip_act)found;
    }
done:
    json_decref(root);
    return st;
}

/* ---- Loading ---- */

/* Shape of a weight axis, in config terms. */
enum { DIM_NONE, DIM_H, DIM_F };

/* One encoder layer's tensors: "encoder.layers.<i>.<name>" -> field. */
static const struct {
    const char *name;
    size_t offset;
    int dim0, dim1; /* DIM_NONE for a vector */
} CLIP_LAYER_TENSORS[] = {
    {"layer_norm1.weight", offsetof(clip_layer, ln1_w), DIM_H, DIM_NONE},
    {"layer_norm1.bias", offsetof(clip_layer, ln1_b), DIM_H, DIM_NONE},
    {"self_attn.q_proj.weight", offsetof(clip_layer, q_w), DIM_H, DIM_H},
    {"self_attn.q_proj.bias", offsetof(clip_layer, q_b), DIM_H, DIM_NONE},
    {"self_attn.k_proj.weight", offsetof(clip_layer, k_w), DIM_H, DIM_H},
    {"self_attn.k_proj.bias", offsetof(clip_layer, k_b), DIM_H, DIM_NONE},
    {"self_attn.v_proj.weight", offsetof(clip_layer, v_w), DIM_H, DIM_H},
    {"self_attn.v_proj.bias", offsetof(clip_layer, v_b), DIM_H, DIM_NONE},
    {"self_attn.out_proj.weight", offsetof(clip_layer, o_w), DIM_H, DIM_H},
    {"self_attn.out_proj.bias", offsetof(clip_layer, o_b), DIM_H, DIM_NONE},
    {"layer_norm2.weight", offsetof(clip_layer, ln2_w), DIM_H, DIM_NONE},
    {"layer_norm2.bias", offsetof(clip_layer, ln2_b), DIM_H, DIM_NONE},
    {"mlp.fc1.weight", offsetof(clip_layer, fc1_w), DIM_F, DIM_H},
    {"mlp.fc1.bias", offsetof(clip_layer, fc1_b), DIM_F, DIM_NONE},
    {"mlp.fc2.weight", offsetof(clip_layer, fc2_w), DIM_H, DIM_F},
    {"mlp.fc2.bias", offsetof(clip_layer, fc2_b), DIM_H, DIM_NONE},
};

static lh_status make_key(char *key, size_t size, const char *prefix, const char *name,
                          lh_error *err) {
    if ((size_t)snprintf(key, size, "%s%s", prefix, name) >= size)
        return lh_error_set(err, LH_ERR_INVALID, "text encoder key prefix '%s' is too long",
                            prefix);
    return LH_OK;
}

/* A table kept in host memory: loaded (and checked) through a temporary
 * store so shape, dtype and finiteness errors read as for every weight. */
static lh_status load_host(float **out, lh_backend *be, const lh_wsource *f, const char *key,
                           int64_t rows, int64_t cols, lh_error *err) {
    *out = NULL;
    size_t n;
    if (lh_mul_size((size_t)rows, (size_t)cols, &n) || lh_mul_size(n, sizeof(float), &n))
        return lh_error_set(err, LH_ERR_OVERFLOW, "%s: '%s' is too large", f->name, key);
    lh_wstore tmp;
    lh_wstore_init(&tmp, be);
    float *dev = NULL;
    int64_t shape[2] = {rows, cols};
    lh_status st = lh_wstore_load_src(&dev, &tmp, f, key, 2, shape, err);
    if (st == LH_OK) {
        *out = malloc(n);
        if (!*out)
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for '%s' (%zu bytes)", key, n);
    }
    if (st == LH_OK) {
        st = be->ops->download(be, *out, dev, n);
        if (st != LH_OK) lh_error_set(err, st, "%s: downloading '%s' failed", f->name, key);
    }
    if (st != LH_OK) {
        free(*out);
        *out = NULL;
    }
    lh_wstore_free(&tmp);
    return st;
}

void lh_clip_free(lh_clip *m) {
    if (!m) return;
    lh_wstore_free(&m->ws);
    free(m->tok_emb);
    free(m->pos_emb);
    free(m->layers);
    free(m);
}

static lh_status load_from(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                           const lh_wsource *f, const char *prefix, lh_error *err);

lh_status lh_clip_load_st(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                          const lh_st_file *f, const char *prefix, lh_error *err) {
    lh_wsource src = lh_wsource_file(f);
    return load_from(out, be, cfg, &src, prefix, err);
}

lh_status lh_clip_load_src(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                           const lh_wsource *src, lh_error *err) {
    return load_from(out, be, cfg, src, "", err);
}

static lh_status load_from(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                           const lh_wsource *f, const char *prefix, lh_error *err) {
    *out = NULL;
    if (cfg->vocab_size < 1 || cfg->hidden_size < 1 || cfg->intermediate_size < 1 ||
        cfg->num_hidden_layers < 1 || cfg->num_attention_heads < 1 ||
        cfg->max_position_embeddings < 1 || cfg->hidden_size % cfg->num_attention_heads != 0 ||
        !(cfg->layer_norm_eps > 0.0f) || (unsigned)cfg->hidden_act >= LH_CLIP_ACT_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "%s: invalid text encoder configuration",
                            f->name);
    lh_clip *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for the text encoder");
    m->cfg = *cfg;
    m->be = be;
    lh_wstore_init(&m->ws, be);
    const int64_t H = cfg->hidden_size, F = cfg->intermediate_size;
    lh_status st = LH_OK;
    char key[512], name[128];

    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for the text encoder layers");
        goto fail;
    }
    if ((st = make_key(key, sizeof key, prefix, "embeddings.token_embedding.weight", err)) ||
        (st = load_host(&m->tok_emb, be, f, key, cfg->vocab_size, H, err)) ||
        (st = make_key(key, sizeof key, prefix, "embeddings.position_embedding.weight", err)) ||
        (st = load_host(&m->pos_emb, be, f, key, cfg->max_position_embeddings, H, err)))
        goto fail;
    for (int64_t l = 0; l < cfg->num_hidden_layers; l++) {
        for (size_t t = 0; t < sizeof CLIP_LAYER_TENSORS / sizeof CLIP_LAYER_TENSORS[0]; t++) {
            int64_t shape[2];
            int ndim = 0;
            const int dims[2] = {CLIP_LAYER_TENSORS[t].dim0, CLIP_LAYER_TENSORS[t].dim1};
            for (int d = 0; d < 2 && dims[d] != DIM_NONE; d++)
                shape[ndim++] = dims[d] == DIM_H ? H : F;
            snprintf(name, sizeof name, "encoder.layers.%lld.%s", (long long)l,
                     CLIP_LAYER_TENSORS[t].name);
            float **dst = (float **)((char *)&m->layers[l] + CLIP_LAYER_TENSORS[t].offset);
            if ((st = make_key(key, sizeof key, prefix, name, err)) ||
                (st = lh_wstore_load_src(dst, &m->ws, f, key, ndim, shape, err)))
                goto fail;
        }
    }
    if ((st = make_key(key, sizeof key, prefix, "final_layer_norm.weight", err)) ||
        (st = lh_wstore_load_src(&m->final_w, &m->ws, f, key, 1, &H, err)) ||
        (st = make_key(key, sizeof key, prefix, "final_layer_norm.bias", err)) ||
        (st = lh_wstore_load_src(&m->final_b, &m->ws, f, key, 1, &H, err)))
        goto fail;
    *out = m;
    return LH_OK;
fail:
    lh_clip_free(m);
    return st;
}

lh_status lh_clip_load(lh_clip **out, lh_backend *be, const char *component_dir, lh_error *err) {
    *out = NULL;
    char path[4096];
    lh_clip_config cfg;
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", component_dir) >= sizeof path)
        return lh_error_set(err, LH_ERR_INVALID, "text encoder path too long: %s", component_dir);
    lh_status st = lh_clip_config_read(&cfg, path, err);
    if (st != LH_OK) return st;
    snprintf(path, sizeof path, "%s/model.safetensors", component_dir);
    lh_st_file *f = NULL;
    st = lh_st_open(&f, path, err);
    if (st != LH_OK) return st;
    /* transformers 4.x wrote "text_model.*" (the Hub layout), 5.x writes
     * the names without it; report a missing tensor under the Hub name */
    const char *prefix = "text_model.";
    if (!lh_st_find(f, "text_model.embeddings.token_embedding.weight") &&
        lh_st_find(f, "embeddings.token_embedding.weight"))
        prefix = "";
    st = lh_clip_load_st(out, be, &cfg, f, prefix, err);
    lh_st_close(f);
    return st;
}

const lh_clip_config *lh_clip_get_config(const lh_clip *m) { return &m->cfg; }

int64_t lh_clip_hidden_size(const lh_clip *m) { return m->cfg.hidden_size; }

/* ---- Forward ---- */

/* Run a backend op; on failure say which op, in which layer, and bail out. */
#define LH_CLIP_OP(op, ...)                                                                    \
    do {                                                                                       \
        st = ops->op(be, __VA_ARGS__);                                                         \
        if (st != LH_OK) {                                                                     \
            lh_error_set(err, st, "text encoder layer %lld: backend %s failed (%s)",          \
                         (long long)l, #op, lh_strerror(st));                                  \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)

/* Runtime adapter terms on the layer whose weight is w (host/layers.h). */
#define LH_CLIP_ADAPT(w, y, x)                                                                    \
    do {                                                                                           \
        st = lh_layers_runtime(m->adapt, (w), (y), (x), R, 1, 1, err);                            \
        if (st != LH_OK) goto done;                                                                \
    } while (0)

lh_status lh_clip_encode(lh_clip *m, float *out, const int32_t *ids, int64_t b, int64_t n,
                         int clip_skip, lh_error *err) {
    if (!m || !out || !ids)
        return lh_error_set(err, LH_ERR_INVALID, "text encoder: NULL model, output or ids");
    const lh_clip_config *c = &m->cfg;
    if (b < 1 || n < 1 || n > c->max_position_embeddings)
        return lh_error_set(err, LH_ERR_INVALID,
                            "text encoder: batch %lld x %lld tokens; need batch >= 1 and 1..%lld "
                            "tokens (max_position_embeddings)",
                            (long long)b, (long long)n, (long long)c->max_position_embeddings);
    if (clip_skip < 0 || clip_skip > c->num_hidden_layers)
        return lh_error_set(err, LH_ERR_INVALID,
                            "text encoder: clip_skip %d is outside 0..%lld (num_hidden_layers)",
                            clip_skip, (long long)c->num_hidden_layers);
    const int64_t H = c->hidden_size, F = c->intermediate_size, heads = c->num_attention_heads;
    const int64_t d_head = H / heads, n_layers = c->num_hidden_layers - clip_skip;
    size_t rows, row_floats, total, emb_bytes;
    if (lh_mul_size((size_t)b, (size_t)n, &rows) ||
        lh_mul_size((size_t)H, 6, &row_floats) || /* x, h, q, k, v, attention */
        lh_add_size(row_floats, 2 * (size_t)F, &row_floats) || /* fc1, activation */
        lh_mul_size(rows, row_floats, &total) || lh_mul_size(total, sizeof(float), &total) ||
        lh_mul_size(rows, (size_t)H * sizeof(float), &emb_bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW, "text encoder: batch %lld x %lld is too large",
                            (long long)b, (long long)n);

    /* embeddings on the host: token row + position row */
    for (int64_t i = 0; i < b; i++)
        for (int64_t t = 0; t < n; t++) {
            int32_t id = ids[i * n + t];
            if (id < 0 || id >= c->vocab_size)
                return lh_error_set(err, LH_ERR_INVALID,
                                    "text encoder: token id %d at [%lld, %lld] is outside the "
                                    "vocabulary (vocab_size %lld)",
                                    (int)id, (long long)i, (long long)t, (long long)c->vocab_size);
        }
    float *emb = malloc(emb_bytes);
    if (!emb) return lh_error_set(err, LH_ERR_NOMEM, "text encoder: out of memory for embeddings");
    for (int64_t i = 0; i < b; i++)
        for (int64_t t = 0; t < n; t++) {
            float *dst = emb + (i * n + t) * H;
            const float *tok = m->tok_emb + (int64_t)ids[i * n + t] * H, *pos = m->pos_emb + t * H;
            for (int64_t j = 0; j < H; j++) dst[j] = tok[j] + pos[j];
        }

    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    lh_status st = LH_OK;
    int64_t l = 0;
    float *buf = ops->alloc(be, total);
    if (!buf) {
        free(emb);
        return lh_error_set(err, LH_ERR_NOMEM, "text encoder: out of backend memory (%zu bytes)",
                            total);
    }
    const int64_t R = (int64_t)rows;
    float *x = buf, *h = x + R * H, *q = h + R * H, *k = q + R * H, *v = k + R * H;
    float *a = v + R * H, *f1 = a + R * H, *f2 = f1 + R * F;
    lh_status (*act)(lh_backend *, float *, const float *, int64_t) =
        c->hidden_act == LH_CLIP_ACT_GELU ? ops->gelu : ops->quick_gelu;
    const float scale = 1.0f / sqrtf((float)d_head);

    st = ops->upload(be, x, emb, emb_bytes);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder: uploading the embeddings failed");
        goto done;
    }
    for (l = 0; l < n_layers; l++) {
        const clip_layer *L = &m->layers[l];
        /* x += out_proj(attention(layer_norm1(x))), causal */
        LH_CLIP_OP(layer_norm, h, x, L->ln1_w, L->ln1_b, R, H, c->layer_norm_eps);
        LH_CLIP_OP(linear, q, h, L->q_w, L->q_b, R, H, H);
        LH_CLIP_ADAPT(L->q_w, q, h);
        LH_CLIP_OP(linear, k, h, L->k_w, L->k_b, R, H, H);
        LH_CLIP_ADAPT(L->k_w, k, h);
        LH_CLIP_OP(linear, v, h, L->v_w, L->v_b, R, H, H);
        LH_CLIP_ADAPT(L->v_w, v, h);
        LH_CLIP_OP(attention, a, q, k, v, b, heads, n, n, d_head, scale, 1);
        LH_CLIP_OP(linear, h, a, L->o_w, L->o_b, R, H, H);
        LH_CLIP_ADAPT(L->o_w, h, a);
        LH_CLIP_OP(add, x, x, h, R * H);
        /* x += fc2(act(fc1(layer_norm2(x)))) */
        LH_CLIP_OP(layer_norm, h, x, L->ln2_w, L->ln2_b, R, H, c->layer_norm_eps);
        LH_CLIP_OP(linear, f1, h, L->fc1_w, L->fc1_b, R, H, F);
        LH_CLIP_ADAPT(L->fc1_w, f1, h);
        st = act(be, f2, f1, R * F);
        if (st != LH_OK) {
            lh_error_set(err, st, "text encoder layer %lld: backend %s failed (%s)", (long long)l,
                         CLIP_ACT_NAMES[c->hidden_act], lh_strerror(st));
            goto done;
        }
        LH_CLIP_OP(linear, h, f2, L->fc2_w, L->fc2_b, R, F, H);
        LH_CLIP_ADAPT(L->fc2_w, h, f2);
        LH_CLIP_OP(add, x, x, h, R * H);
    }
    /* final_layer_norm, also after a clip_skip (as diffusers applies it) */
    st = ops->layer_norm(be, out, x, m->final_w, m->final_b, R, H, c->layer_norm_eps);
    if (st == LH_OK) st = ops->sync(be);
    if (st != LH_OK)
        lh_error_set(err, st, "text encoder: backend final layer_norm failed (%s)",
                     lh_strerror(st));
done:
    ops->free(be, buf);
    free(emb);
    return st;
}
