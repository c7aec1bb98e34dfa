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

#include "backend_load.h"
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
    struct lh_layers *adapt; /* runtime adapters, NULL: none */
    /* On a device, the linear weights an F16/BF16 file holds are kept in
     * that type (half the memory) and widened into `wide` (float32, the
     * largest linear's size) right before the op that reads them; NULL
     * when every weight is float32. */
    float *wide;
};

void lh_clip_linear(const lh_clip *m, int64_t layer, int which, float **w, float **b) {
    const clip_layer *L = &m->layers[layer];
    float *const ws[LH_CLIP_LINEARS] = {L->q_w, L->k_w, L->v_w, L->o_w, L->fc1_w, L->fc2_w};
    float *const bs[LH_CLIP_LINEARS] = {L->q_b, L->k_b, L->v_b, L->o_b, L->fc1_b, L->fc2_b};
    *w = ws[which];
    *b = bs[which];
}

void lh_clip_set_adapt(lh_clip *m, struct lh_layers *adapt) { m->adapt = adapt; }

lh_dtype lh_clip_weight_type(const lh_clip *m, const float *w) {
    return lh_wstore_type(&m->ws, w);
}

lh_status lh_clip_keep_f32_weights(lh_clip *m, lh_error *err) {
    if (!m) return lh_error_set(err, LH_ERR_INVALID, "text encoder weights: NULL model");
    if (!m->wide) return LH_OK;
    const int64_t H = m->cfg.hidden_size, F = m->cfg.intermediate_size;
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++) {
        clip_layer *L = &m->layers[l];
        float **ws[LH_CLIP_LINEARS] = {&L->q_w, &L->k_w, &L->v_w, &L->o_w, &L->fc1_w, &L->fc2_w};
        for (int k = 0; k < LH_CLIP_LINEARS; k++) {
            float *old = *ws[k];
            size_t n = (size_t)(k == 4 || k == 5 ? F : H) * (size_t)H;
            lh_status st = lh_wstore_retype(&m->ws, ws[k], n, LH_DTYPE_F32, err);
            if (st != LH_OK) return st;
            if (m->adapt && *ws[k] != old) lh_layers_moved(m->adapt, old, *ws[k], LH_DTYPE_F32);
        }
    }
    return LH_OK; /* `wide` stays, unused: a store buffer */
}

/* *w, held in a half type, widened into m->wide (float32) for the op that
 * reads it next; a float32 one stays. */
static lh_status widen(const lh_clip *m, const float **w, int64_t n) {
    if (!m->wide) return LH_OK;
    lh_dtype t = lh_wstore_type(&m->ws, *w);
    if (t == LH_DTYPE_F32) return LH_OK;
    lh_status st = m->be->ops->cast(m->be, m->wide, LH_DTYPE_F32, *w, t, n);
    if (st == LH_OK) *w = m->wide;
    return st;
}

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
    /* on a device, F16/BF16 matrices (the linear weights) stay as the file holds them */
    m->ws.hold_half = !lh_backend_host_memory(be) && be->ops->cast;
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
    int half = 0;
    for (int64_t l = 0; l < cfg->num_hidden_layers && !half; l++)
        for (int k = 0; k < LH_CLIP_LINEARS && !half; k++) {
            float *w, *b;
            lh_clip_linear(m, l, k, &w, &b);
            half = lh_wstore_type(&m->ws, w) != LH_DTYPE_F32;
        }
    /* the widening buffer: the largest linear, [F, H] or [H, H] */
    if (half && (st = lh_wstore_alloc(&m->wide, &m->ws, (size_t)H * (size_t)(F > H ? F : H),
                                      err)) != LH_OK)
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

/* w_ = weight w [n_out, n_in] as an op reads it (widened when held in a
 * half type), inside a function with m, l, st, err and a `done` label. */
#define LH_CLIP_WIDEN(w_, w, n_in, n_out)                                                      \
    const float *w_ = (w);                                                                     \
    if ((st = widen(m, &w_, (n_in) * (n_out))) != LH_OK) {                                     \
        lh_error_set(err, st, "text encoder layer %lld: widening a half weight failed (%s)",     \
                     (long long)l, lh_strerror(st));                                           \
        goto done;                                                                             \
    }

/* linear / linear_backward (no weight gradient) on w as it is held. */
#define LH_CLIP_LINEAR(out, x, w, bias, n_in, n_out)                                          \
    do {                                                                                       \
        LH_CLIP_WIDEN(w_, w, n_in, n_out)                                                      \
        LH_CLIP_OP(linear, out, x, w_, bias, R, n_in, n_out);                                  \
    } while (0)
#define LH_CLIP_LINEAR_BACKWARD(dx, dy, x, w, n_in, n_out)                                    \
    do {                                                                                       \
        LH_CLIP_WIDEN(w_, w, n_in, n_out)                                                      \
        LH_CLIP_OP(linear_backward, dx, NULL, NULL, dy, x, w_, R, n_in, n_out);                \
    } while (0)

/* Runtime adapter terms on the layer whose weight is w (host/layers.h). */
#define LH_CLIP_ADAPT(w, y, x)                                                                    \
    do {                                                                                           \
        st = lh_layers_runtime(m->adapt, (w), (y), (x), R, 1, 1, LH_DTYPE_F32, err);                            \
        if (st != LH_OK) goto done;                                                                \
    } while (0)

/* One encoder layer's buffers, backend memory. Inference aliases them onto
 * two rows (x = x2 = out, h1 = o = h2 = y) and adds in place; training gives
 * each saved intermediate its own storage for the backward. */
typedef struct clip_acts {
    const float *x; /* [R, H] layer input */
    float *h1;      /* [R, H] layer_norm1(x) */
    float *q, *k, *v; /* [R, H] projections of h1 */
    float *a;       /* [R, H] causal attention output */
    float *o;       /* [R, H] out_proj(a) */
    float *x2;      /* [R, H] x + o */
    float *h2;      /* [R, H] layer_norm2(x2) */
    float *f1, *f2; /* [R, F] fc1(h2), act(f1) */
    float *y;       /* [R, H] fc2(f2) */
    float *out;     /* [R, H] x2 + y: the layer output */
} clip_acts;

/* Encoder layer l: out = x2 + fc2(act(fc1(ln2(x2)))), x2 = x + out_proj(attn(ln1(x))). */
static lh_status layer_forward(lh_clip *m, int64_t l, const clip_acts *s, int64_t b, int64_t n,
                               lh_error *err) {
    const lh_clip_config *c = &m->cfg;
    const clip_layer *L = &m->layers[l];
    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    const int64_t H = c->hidden_size, F = c->intermediate_size, heads = c->num_attention_heads;
    const int64_t R = b * n, d_head = H / heads;
    const float scale = 1.0f / sqrtf((float)d_head);
    lh_status st = LH_OK;
    /* x2 = x + out_proj(attention(layer_norm1(x))), causal */
    LH_CLIP_OP(layer_norm, s->h1, s->x, L->ln1_w, L->ln1_b, R, H, c->layer_norm_eps);
    LH_CLIP_LINEAR(s->q, s->h1, L->q_w, L->q_b, H, H);
    LH_CLIP_ADAPT(L->q_w, s->q, s->h1);
    LH_CLIP_LINEAR(s->k, s->h1, L->k_w, L->k_b, H, H);
    LH_CLIP_ADAPT(L->k_w, s->k, s->h1);
    LH_CLIP_LINEAR(s->v, s->h1, L->v_w, L->v_b, H, H);
    LH_CLIP_ADAPT(L->v_w, s->v, s->h1);
    LH_CLIP_OP(attention, s->a, NULL, s->q, s->k, s->v, b, heads, n, n, d_head, scale, 1);
    LH_CLIP_LINEAR(s->o, s->a, L->o_w, L->o_b, H, H);
    LH_CLIP_ADAPT(L->o_w, s->o, s->a);
    LH_CLIP_OP(add, s->x2, s->x, s->o, R * H);
    /* out = x2 + fc2(act(fc1(layer_norm2(x2)))) */
    LH_CLIP_OP(layer_norm, s->h2, s->x2, L->ln2_w, L->ln2_b, R, H, c->layer_norm_eps);
    LH_CLIP_LINEAR(s->f1, s->h2, L->fc1_w, L->fc1_b, H, F);
    LH_CLIP_ADAPT(L->fc1_w, s->f1, s->h2);
    st = (c->hidden_act == LH_CLIP_ACT_GELU ? ops->gelu : ops->quick_gelu)(be, s->f2, s->f1,
                                                                          R * F);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder layer %lld: backend %s failed (%s)", (long long)l,
                     CLIP_ACT_NAMES[c->hidden_act], lh_strerror(st));
        goto done;
    }
    LH_CLIP_LINEAR(s->y, s->f2, L->fc2_w, L->fc2_b, F, H);
    LH_CLIP_ADAPT(L->fc2_w, s->y, s->f2);
    LH_CLIP_OP(add, s->out, s->x2, s->y, R * H);
done:
    return st;
}

/* Check encode's sizes and clip_skip. */
static lh_status check_args(const lh_clip *m, int64_t b, int64_t n, int clip_skip,
                            lh_error *err) {
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
    return LH_OK;
}

/* The embeddings (token row + position row) on the host, ids checked:
 * *emb [b * n, hidden], the caller frees it. Sizes were checked for
 * overflow by the caller. */
static lh_status embed(const lh_clip *m, float **emb, const int32_t *ids, int64_t b, int64_t n,
                       lh_error *err) {
    *emb = NULL;
    const lh_clip_config *c = &m->cfg;
    const int64_t H = c->hidden_size;
    const size_t emb_bytes = (size_t)b * (size_t)n * (size_t)H * sizeof(float);
    for (int64_t i = 0; i < b; i++)
        for (int64_t t = 0; t < n; t++) {
            int32_t id = ids[i * n + t];
            if (id < 0 || id >= c->vocab_size)
                return lh_error_set(err, LH_ERR_INVALID,
                                    "text encoder: token id %d at [%lld, %lld] is outside the "
                                    "vocabulary (vocab_size %lld)",
                                    (int)id, (long long)i, (long long)t, (long long)c->vocab_size);
        }
    float *e = malloc(emb_bytes);
    if (!e) return lh_error_set(err, LH_ERR_NOMEM, "text encoder: out of memory for embeddings");
    for (int64_t i = 0; i < b; i++)
        for (int64_t t = 0; t < n; t++) {
            float *dst = e + (i * n + t) * H;
            const float *tok = m->tok_emb + (int64_t)ids[i * n + t] * H, *pos = m->pos_emb + t * H;
            for (int64_t j = 0; j < H; j++) dst[j] = tok[j] + pos[j];
        }
    *emb = e;
    return LH_OK;
}

lh_status lh_clip_encode(lh_clip *m, float *out, const int32_t *ids, int64_t b, int64_t n,
                         int clip_skip, lh_error *err) {
    if (!m || !out || !ids)
        return lh_error_set(err, LH_ERR_INVALID, "text encoder: NULL model, output or ids");
    const lh_clip_config *c = &m->cfg;
    lh_status st = check_args(m, b, n, clip_skip, err);
    if (st != LH_OK) return st;
    const int64_t H = c->hidden_size, F = c->intermediate_size;
    const int64_t n_layers = c->num_hidden_layers - clip_skip, R = b * n;
    size_t rows, row_floats, total, emb_bytes;
    if (lh_mul_size((size_t)b, (size_t)n, &rows) ||
        lh_mul_size((size_t)H, 6, &row_floats) || /* x, h, q, k, v, attention */
        lh_add_size(row_floats, 2 * (size_t)F, &row_floats) || /* fc1, activation */
        lh_mul_size(rows, row_floats, &total) || lh_mul_size(total, sizeof(float), &total) ||
        lh_mul_size(rows, (size_t)H * sizeof(float), &emb_bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW, "text encoder: batch %lld x %lld is too large",
                            (long long)b, (long long)n);
    float *emb = NULL;
    if ((st = embed(m, &emb, ids, b, n, err)) != LH_OK) return st;

    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    float *buf = ops->alloc(be, total);
    if (!buf) {
        free(emb);
        return lh_error_set(err, LH_ERR_NOMEM, "text encoder: out of backend memory (%zu bytes)",
                            total);
    }
    float *x = buf, *h = x + R * H, *q = h + R * H, *k = q + R * H, *v = k + R * H;
    float *a = v + R * H, *f1 = a + R * H, *f2 = f1 + R * F;
    /* in place: the residual stream x and one scratch h, nothing kept */
    const clip_acts s = {.x = x, .h1 = h, .q = q, .k = k, .v = v, .a = a, .o = h, .x2 = x,
                         .h2 = h, .f1 = f1, .f2 = f2, .y = h, .out = x};

    st = ops->upload(be, x, emb, emb_bytes);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder: uploading the embeddings failed");
        goto done;
    }
    for (int64_t l = 0; l < n_layers; l++)
        if ((st = layer_forward(m, l, &s, b, n, err)) != LH_OK) goto done;
    /* final_layer_norm, also after a clip_skip (as diffusers applies it) */
    st = ops->layer_norm(be, out, x, m->final_w, m->final_b, R, H, c->layer_norm_eps);
    if (st != LH_OK)
        lh_error_set(err, st, "text encoder: backend final layer_norm failed (%s)",
                     lh_strerror(st));
done:
    ops->free(be, buf);
    free(emb);
    return st;
}

/* ---- Training ---- */

/* Adapter terms' backward on the layer whose weight is w: dx += their input
 * gradient, their parameter gradients accumulate (host/layers.h). */
#define LH_CLIP_ADAPT_BACKWARD(w, dx, dy, x)                                                     \
    do {                                                                                        \
        st = lh_layers_runtime_backward(m->adapt, (w), (dx), (dy), (x), R, 1, 1, LH_DTYPE_F32, err);          \
        if (st != LH_OK) goto done;                                                             \
    } while (0)

/* Gradient buffers of one layer's backward, backend memory. */
typedef struct clip_grads {
    float *dx;         /* [R, H] dL/d(residual stream), += per branch */
    float *dh;         /* [R, H] dL/d(layer norm output) */
    float *dt;         /* [R, H] scratch: a branch's input gradient before it is added */
    float *dq, *dk, *dv; /* [R, H] */
    float *da;         /* [R, H] dL/d(attention output) */
    float *df;         /* [R, F] dL/d(fc2 input), then dL/d(fc1 output) in place */
} clip_grads;

/* Backward of layer_forward for layer l from the activations it saved in s:
 * g->dx holds dL/d(s->out) on entry and dL/d(s->x) on return. Base weights
 * are frozen (no gradients); adapter terms accumulate theirs. */
static lh_status layer_backward(lh_clip *m, int64_t l, const clip_grads *g, const clip_acts *s,
                                int64_t b, int64_t n, lh_error *err) {
    const lh_clip_config *c = &m->cfg;
    const clip_layer *L = &m->layers[l];
    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    const int64_t H = c->hidden_size, F = c->intermediate_size, heads = c->num_attention_heads;
    const int64_t R = b * n, d_head = H / heads;
    const float scale = 1.0f / sqrtf((float)d_head), eps = c->layer_norm_eps;
    lh_status st = LH_OK;
    /* out = x2 + fc2(act(fc1(layer_norm2(x2)))): dx reaches x2 directly and
     * through the MLP */
    LH_CLIP_LINEAR_BACKWARD(g->df, g->dx, s->f2, L->fc2_w, F, H);
    LH_CLIP_ADAPT_BACKWARD(L->fc2_w, g->df, g->dx, s->f2);
    st = (c->hidden_act == LH_CLIP_ACT_GELU ? ops->gelu_backward : ops->quick_gelu_backward)(
        be, g->df, g->df, s->f1, R * F);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder layer %lld: backend %s backward failed (%s)",
                     (long long)l, CLIP_ACT_NAMES[c->hidden_act], lh_strerror(st));
        goto done;
    }
    LH_CLIP_LINEAR_BACKWARD(g->dh, g->df, s->h2, L->fc1_w, H, F);
    LH_CLIP_ADAPT_BACKWARD(L->fc1_w, g->dh, g->df, s->h2);
    LH_CLIP_OP(layer_norm_backward, g->dt, NULL, NULL, g->dh, s->x2, L->ln2_w, R, H, eps);
    LH_CLIP_OP(add, g->dx, g->dx, g->dt, R * H);
    /* x2 = x + out_proj(attention(layer_norm1(x))) */
    LH_CLIP_LINEAR_BACKWARD(g->da, g->dx, s->a, L->o_w, H, H);
    LH_CLIP_ADAPT_BACKWARD(L->o_w, g->da, g->dx, s->a);
    LH_CLIP_OP(attention_backward, g->dq, g->dk, g->dv, g->da, s->a, NULL, s->q, s->k, s->v, b,
               heads, n, n, d_head, scale, 1);
    /* h1 feeds q, k and v: dh sums the three */
    LH_CLIP_LINEAR_BACKWARD(g->dh, g->dq, s->h1, L->q_w, H, H);
    LH_CLIP_ADAPT_BACKWARD(L->q_w, g->dh, g->dq, s->h1);
    LH_CLIP_LINEAR_BACKWARD(g->dt, g->dk, s->h1, L->k_w, H, H);
    LH_CLIP_OP(add, g->dh, g->dh, g->dt, R * H);
    LH_CLIP_ADAPT_BACKWARD(L->k_w, g->dh, g->dk, s->h1);
    LH_CLIP_LINEAR_BACKWARD(g->dt, g->dv, s->h1, L->v_w, H, H);
    LH_CLIP_OP(add, g->dh, g->dh, g->dt, R * H);
    LH_CLIP_ADAPT_BACKWARD(L->v_w, g->dh, g->dv, s->h1);
    LH_CLIP_OP(layer_norm_backward, g->dt, NULL, NULL, g->dh, s->x, L->ln1_w, R, H, eps);
    LH_CLIP_OP(add, g->dx, g->dx, g->dt, R * H);
done:
    return st;
}

lh_status lh_clip_encode_backward(lh_clip *m, float *out, float *d_emb, const float *dout,
                                  const int32_t *ids, int64_t b, int64_t n, int clip_skip,
                                  lh_error *err) {
    if (!m || !dout || !ids)
        return lh_error_set(err, LH_ERR_INVALID,
                            "text encoder backward: NULL model, output gradient or ids");
    const lh_clip_config *c = &m->cfg;
    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    if (!ops->linear_backward || !ops->layer_norm_backward || !ops->attention_backward ||
        !ops->gelu_backward || !ops->quick_gelu_backward)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "text encoder backward: the %s backend has no backward ops",
                            ops->name);
    lh_status st = check_args(m, b, n, clip_skip, err);
    if (st != LH_OK) return st;
    const int64_t H = c->hidden_size, F = c->intermediate_size;
    const int64_t n_layers = c->num_hidden_layers - clip_skip, R = b * n;
    /* Activations: the residual stream before every layer and after the
     * last, per layer h1, q, k, v, a, x2, h2 [R, H] and f1, f2 [R, F], and
     * one scratch row [R, H] for o, y and an unwanted output. Gradients:
     * dx, dh, dt, dq, dk, dv, da [R, H] and df [R, F]. */
    size_t rows, layer_floats, act_floats, grad_floats, act_bytes, grad_bytes, emb_bytes;
    if (lh_mul_size((size_t)b, (size_t)n, &rows) ||
        lh_mul_size((size_t)H, 7, &layer_floats) ||
        lh_add_size(layer_floats, 2 * (size_t)F, &layer_floats) ||
        lh_add_size(layer_floats, (size_t)H, &layer_floats) || /* this layer's input */
        lh_mul_size(layer_floats, (size_t)n_layers, &act_floats) ||
        lh_add_size(act_floats, 2 * (size_t)H, &act_floats) || /* last x, scratch */
        lh_mul_size(act_floats, rows, &act_floats) ||
        lh_mul_size(act_floats, sizeof(float), &act_bytes) ||
        lh_mul_size((size_t)H, 7, &grad_floats) ||
        lh_add_size(grad_floats, (size_t)F, &grad_floats) ||
        lh_mul_size(grad_floats, rows, &grad_floats) ||
        lh_mul_size(grad_floats, sizeof(float), &grad_bytes) ||
        lh_mul_size(rows, (size_t)H * sizeof(float), &emb_bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW,
                            "text encoder backward: batch %lld x %lld is too large",
                            (long long)b, (long long)n);
    float *emb = NULL;
    if ((st = embed(m, &emb, ids, b, n, err)) != LH_OK) return st;
    float *acts = ops->alloc(be, act_bytes), *grads = ops->alloc(be, grad_bytes);
    clip_acts *s = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *s);
    if (!acts || !grads || !s) {
        st = lh_error_set(err, LH_ERR_NOMEM,
                          "text encoder backward: out of memory (%zu + %zu backend bytes)",
                          act_bytes, grad_bytes);
        goto done;
    }
    /* layer i's activations start at acts + i * stride: x, h1, q, k, v, a,
     * x2, h2, f1, f2; after the last layer's, the last x and the scratch */
    const int64_t RH = R * H, RF = R * F, stride = (int64_t)layer_floats * R;
    float *x_last = acts + n_layers * stride, *tmp = x_last + RH;
    const clip_grads g = {.dx = d_emb ? d_emb : grads, .dh = grads + RH, .dt = grads + 2 * RH,
                          .dq = grads + 3 * RH, .dk = grads + 4 * RH, .dv = grads + 5 * RH,
                          .da = grads + 6 * RH, .df = grads + 7 * RH};

    st = ops->upload(be, n_layers > 0 ? acts : x_last, emb, emb_bytes);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder backward: uploading the embeddings failed");
        goto done;
    }
    for (int64_t l = 0; l < n_layers; l++) {
        float *p = acts + l * stride;
        s[l] = (clip_acts){.x = p, .h1 = p + RH, .q = p + 2 * RH, .k = p + 3 * RH,
                           .v = p + 4 * RH, .a = p + 5 * RH, .o = tmp, .x2 = p + 6 * RH,
                           .h2 = p + 7 * RH, .f1 = p + 8 * RH, .f2 = p + 8 * RH + RF, .y = tmp,
                           .out = l + 1 < n_layers ? p + stride : x_last};
        if ((st = layer_forward(m, l, &s[l], b, n, err)) != LH_OK) goto done;
    }
    /* final_layer_norm, then its backward into dx (gamma and beta frozen) */
    st = ops->layer_norm(be, out ? out : tmp, x_last, m->final_w, m->final_b, R, H,
                         c->layer_norm_eps);
    if (st == LH_OK)
        st = ops->layer_norm_backward(be, g.dx, NULL, NULL, dout, x_last, m->final_w, R, H,
                                      c->layer_norm_eps);
    if (st != LH_OK) {
        lh_error_set(err, st, "text encoder backward: backend final layer_norm failed (%s)",
                     lh_strerror(st));
        goto done;
    }
    for (int64_t l = n_layers - 1; l >= 0; l--)
        if ((st = layer_backward(m, l, &g, &s[l], b, n, err)) != LH_OK) goto done;
done:
    if (acts) ops->free(be, acts);
    if (grads) ops->free(be, grads);
    free(s);
    free(emb);
    return st;
}
