/* Safety-checker plugin "clip": diffusers' StableDiffusionSafetyChecker (the
 * `safety_checker/` folder of an SD 1.x/2.x diffusers model) on decoded images.
 * Built as a module by plugins/CMakeLists.txt; tested by tests/test_safety_clip.c.
 *
 * Per image: CLIPImageProcessor preprocessing (shortest side to image_size with
 * PIL's bicubic filter, its antialiasing support and 8-bit fixed point; centre
 * crop; x/255; CLIP mean/std) -> CLIP vision tower -> pooled token ->
 * visual_projection -> cosine similarity to the 17 concept and 3 special-care
 * embeddings. Score = cos - threshold + adjustment (+0.01 once a special-care
 * concept fired, as diffusers); flagged when a concept score, rounded to 3
 * decimals as diffusers rounds it, is > 0 (diffusers' has_nsfw_concepts).
 *
 * Config keys:
 *   model       the safety_checker folder (config.json + model.safetensors); required
 *   adjustment  added to every score, i.e. subtracted from every threshold
 *               (default 0 = diffusers; diffusers hard-codes 0 and its source
 *               says to raise it for a stronger filter). Not a diffusers knob.
 *   action      blur | black | reject for flagged images (default black, as
 *               diffusers returns black images)
 * Concepts are named concept_0..16 and special_care_0..2: their meaning is not
 * published with the weights.
 */
#include <lorahost/plugin.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SRC "safety_clip"
#define MAX_CONCEPTS LH_SAFETY_MAX_SCORES
#define PIL_PRECISION_BITS (32 - 8 - 2)

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

typedef struct layer {
    lh_tensor *wq, *wk, *wv, *wo, *w1, *w2; /* [out, in] */
    float *bq, *bk, *bv, *bo, *b1, *b2;     /* [out] */
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;   /* [D] */
} layer;

typedef struct state {
    const lh_host_api *h;
    /* config */
    int64_t D, I, L, H, S, P, Pd;
    double eps;
    int gelu_erf; /* 0: quick_gelu, 1: gelu (erf) */
    double adjustment;
    int action;
    /* weights */
    lh_tensor *patch_w; /* [D, 3*P*P] */
    lh_tensor *proj_w;  /* [Pd, D] */
    float *cls, *pos;   /* [D], [T, D] */
    float *pre_w, *pre_b, *post_w, *post_b;
    layer *layers;
    int nc, ns;               /* concepts, special-care concepts */
    double *concepts;         /* [nc + ns, Pd], unit rows: concepts then special care */
    double *thresholds;       /* [nc + ns] */
    char names[MAX_CONCEPTS][24];
    /* work tensors (T = (S/P)^2 + 1 tokens) and buffers */
    int64_t T;
    lh_tensor *t_patches, *t_a, *t_q, *t_k, *t_v, *t_d, *t_i, *t_qh, *t_kh, *t_vh, *t_s, *t_oh,
        *t_pool, *t_emb, *t_pe;
    float *buf; /* one allocation, carved below */
    float *x, *a, *q, *k, *v, *o, *f, *sc, *hd, *pix, *col;
} state;

/* ---- Errors ---- */

__attribute__((format(printf, 4, 5))) static lh_status fail(lh_status code, char *err,
                                                           size_t err_size, const char *fmt, ...) {
    if (err && err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

static const char *host_msg(const lh_host_api *h) {
    const char *m = h->last_error();
    return m && *m ? m : "host call failed";
}

/* ---- config.json (a small JSON reader: objects, strings, numbers) ---- */

static const char *ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

/* End of the string starting at p (at the quote), or NULL. */
static const char *skip_string(const char *p) {
    for (p++; *p; p++) {
        if (*p == '\\') {
            if (!*++p) return NULL;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

static const char *skip_value(const char *p, int depth) {
    p = ws(p);
    if (depth > 64) return NULL;
    if (*p == '"') return skip_string(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                if (*p != '"' || !(p = skip_string(p))) return NULL;
                p = ws(p);
                if (*p++ != ':') return NULL;
            }
            if (!(p = skip_value(p, depth + 1))) return NULL;
            p = ws(p);
            if (*p == ',') {
                p = ws(p + 1);
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    /* number, true, false, null */
    const char *s = p;
    while (*p && !strchr(",}] \t\r\n", *p)) p++;
    return p > s ? p : NULL;
}

/* The value of `key` in the object at obj (top level only), or NULL. */
static const char *json_find(const char *obj, const char *key) {
    const char *p = ws(obj);
    if (*p != '{') return NULL;
    p = ws(p + 1);
    size_t kl = strlen(key);
    while (*p == '"') {
        const char *ks = p + 1, *ke = skip_string(p);
        if (!ke) return NULL;
        p = ws(ke);
        if (*p++ != ':') return NULL;
        p = ws(p);
        if ((size_t)(ke - 1 - ks) == kl && !memcmp(ks, key, kl)) return p;
        if (!(p = skip_value(p, 0))) return NULL;
        p = ws(p);
        if (*p != ',') return NULL;
        p = ws(p + 1);
    }
    return NULL;
}

/* ---- Loading ---- */

typedef struct loader {
    state *s;
    const lh_host_api *h;
    lh_tensor_file *file;
    char path[4096];
    const char *prefix; /* "vision_model." or "vision_model.vision_model." */
    char *err;
    size_t err_size;
} loader;

static void shape_str(char *out, size_t n, int ndim, const int64_t *d) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(out + k, n - k, "%s%lld", i ? ", " : "", (long long)d[i]);
    if (k < n) snprintf(out + k, n - k, "]");
}

/* Tensor prefix+name as float32 with the expected shape, or NULL (err set). */
static lh_tensor *load_t(loader *ld, const char *pre, const char *name, int ndim,
                         const int64_t *shape, lh_status *st) {
    char key[256];
    snprintf(key, sizeof key, "%s%s", pre, name);
    lh_tensor *t = ld->h->tensor_file_get(ld->file, key);
    if (!t) {
        *st = fail(LH_ERR_NOT_FOUND, ld->err, ld->err_size, SRC ": %s", host_msg(ld->h));
        return NULL;
    }
    int ok = ld->h->tensor_ndim(t) == ndim;
    int64_t got[LH_MAX_DIMS] = {0};
    int gn = ld->h->tensor_ndim(t);
    for (int i = 0; i < gn && i < LH_MAX_DIMS; i++) got[i] = ld->h->tensor_dim(t, i);
    for (int i = 0; ok && i < ndim; i++) ok = got[i] == shape[i];
    if (!ok) {
        char a[96], b[96];
        shape_str(a, sizeof a, gn, got);
        shape_str(b, sizeof b, ndim, shape);
        ld->h->tensor_free(t);
        *st = fail(LH_ERR_SHAPE, ld->err, ld->err_size,
                   SRC ": %s: tensor '%s' has shape %s, expected %s", ld->path, key, a, b);
        return NULL;
    }
    return t;
}

/* Same, copied into a new float buffer (the tensor is freed). */
static float *load_f(loader *ld, const char *pre, const char *name, int ndim,
                     const int64_t *shape, lh_status *st) {
    lh_tensor *t = load_t(ld, pre, name, ndim, shape, st);
    if (!t) return NULL;
    int64_t n = ld->h->tensor_numel(t);
    float *f = ld->h->calloc((size_t)n, sizeof *f);
    if (!f) {
        *st = fail(LH_ERR_NOMEM, ld->err, ld->err_size, SRC ": out of memory");
    } else if (ld->h->tensor_read(t, f, n) != LH_OK) {
        *st = fail(LH_ERR_BACKEND, ld->err, ld->err_size, SRC ": %s", host_msg(ld->h));
        ld->h->free(f);
        f = NULL;
    }
    ld->h->tensor_free(t);
    return f;
}

static lh_status read_text(const lh_host_api *h, const char *path, char **out, char *err,
                           size_t err_size) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return fail(LH_ERR_NOT_FOUND, err, err_size, SRC ": cannot open %s: %s", path,
                    strerror(errno));
    char *buf = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0) n = ftell(fp);
    if (n < 0 || n > (1 << 24) || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return fail(LH_ERR_IO, err, err_size, SRC ": %s: cannot read (or over 16 MiB)", path);
    }
    buf = h->alloc((size_t)n + 1);
    if (!buf) {
        fclose(fp);
        return fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    }
    size_t got = fread(buf, 1, (size_t)n, fp);
    fclose(fp);
    if (got != (size_t)n) {
        h->free(buf);
        return fail(LH_ERR_IO, err, err_size, SRC ": %s: short read", path);
    }
    buf[n] = 0;
    *out = buf;
    return LH_OK;
}

/* Integer field of obj with a CLIPVisionConfig default, in [lo, hi]. */
static lh_status json_int(const char *obj, const char *key, int64_t def, int64_t lo, int64_t hi,
                          int64_t *out, const char *path, char *err, size_t err_size) {
    const char *v = obj ? json_find(obj, key) : NULL;
    if (!v) {
        *out = def;
        return LH_OK;
    }
    char *end;
    double d = strtod(v, &end);
    if (end == v || d != floor(d) || d < (double)lo || d > (double)hi)
        return fail(LH_ERR_FORMAT, err, err_size,
                    SRC ": %s: '%s' must be an integer in [%lld, %lld]", path, key,
                    (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return LH_OK;
}

static lh_status parse_config(state *s, const char *dir, char *err, size_t err_size) {
    const lh_host_api *h = s->h;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = NULL;
    lh_status st = read_text(h, path, &text, err, err_size);
    if (st != LH_OK) return st;
    const char *top = ws(text);
    const char *vc = NULL;
    if (*top != '{' || !skip_value(top, 0)) {
        st = fail(LH_ERR_FORMAT, err, err_size, SRC ": %s: not a JSON object", path);
        goto out;
    }
    vc = json_find(top, "vision_config");
    if (vc && *vc != '{') vc = NULL;
    /* defaults: transformers' CLIPVisionConfig / CLIPConfig */
    if ((st = json_int(top, "projection_dim", 512, 1, 65536, &s->Pd, path, err, err_size)) ||
        (st = json_int(vc, "hidden_size", 768, 1, 65536, &s->D, path, err, err_size)) ||
        (st = json_int(vc, "intermediate_size", 3072, 1, 1 << 20, &s->I, path, err, err_size)) ||
        (st = json_int(vc, "num_hidden_layers", 12, 0, 1024, &s->L, path, err, err_size)) ||
        (st = json_int(vc, "num_attention_heads", 12, 1, 4096, &s->H, path, err, err_size)) ||
        (st = json_int(vc, "image_size", 224, 1, 4096, &s->S, path, err, err_size)) ||
        (st = json_int(vc, "patch_size", 32, 1, 4096, &s->P, path, err, err_size)))
        goto out;
    int64_t ch = 3;
    if ((st = json_int(vc, "num_channels", 3, 1, 64, &ch, path, err, err_size))) goto out;
    s->eps = 1e-5;
    const char *e = vc ? json_find(vc, "layer_norm_eps") : NULL;
    if (e) {
        char *end;
        s->eps = strtod(e, &end);
        if (end == e || !(s->eps > 0) || s->eps > 1) {
            st = fail(LH_ERR_FORMAT, err, err_size,
                      SRC ": %s: 'layer_norm_eps' must be a number in (0, 1]", path);
            goto out;
        }
    }
    s->gelu_erf = 0;
    const char *act = vc ? json_find(vc, "hidden_act") : NULL;
    if (act) {
        if (!strncmp(act, "\"quick_gelu\"", 12)) s->gelu_erf = 0;
        else if (!strncmp(act, "\"gelu\"", 6)) s->gelu_erf = 1;
        else {
            const char *ae = skip_value(act, 0);
            st = fail(LH_ERR_UNSUPPORTED, err, err_size,
                      SRC ": %s: hidden_act %.*s is not supported (quick_gelu, gelu)", path,
                      ae ? (int)(ae - act) : 8, act);
            goto out;
        }
    }
    if (ch != 3 || s->D % s->H || s->S % s->P) {
        st = fail(LH_ERR_FORMAT, err, err_size,
                  SRC ": %s: need num_channels 3 (got %lld), hidden_size %lld divisible by "
                      "num_attention_heads %lld and image_size %lld by patch_size %lld",
                  path, (long long)ch, (long long)s->D, (long long)s->H, (long long)s->S,
                  (long long)s->P);
        goto out;
    }
out:
    h->free(text);
    return st;
}

static lh_status load_weights(state *s, const char *dir, char *err, size_t err_size) {
    const lh_host_api *h = s->h;
    loader ld = {.s = s, .h = h, .err = err, .err_size = err_size};
    snprintf(ld.path, sizeof ld.path, "%s/model.safetensors", dir);
    ld.file = h->tensor_file_open(ld.path);
    if (!ld.file) return fail(LH_ERR_NOT_FOUND, err, err_size, SRC ": %s", host_msg(h));
    /* transformers 4.x (every Hub checkpoint) nests CLIPVisionModel's own
     * vision_model; transformers 5 save_pretrained writes it flat. */
    lh_tensor *probe = h->tensor_file_get(ld.file, "vision_model.vision_model.pre_layrnorm.weight");
    ld.prefix = probe ? "vision_model.vision_model." : "vision_model.";
    if (probe) h->tensor_free(probe);

    lh_status st = LH_OK;
    const char *p = ld.prefix;
    int64_t D = s->D, I = s->I, P = s->P, g = s->S / s->P, T = g * g + 1;
    int64_t d1[1] = {D}, dd[2] = {D, D}, id[2] = {I, D}, di[2] = {D, I}, i1[1] = {I};
    int64_t pw[4] = {D, 3, P, P}, pos[2] = {T, D}, proj[2] = {s->Pd, D};
    char name[128];

    lh_tensor *pt = load_t(&ld, p, "embeddings.patch_embedding.weight", 4, pw, &st);
    if (pt) {
        s->patch_w = h->tensor_reshape(pt, 2, (int64_t[]){D, 3 * P * P});
        /* keep the data: copy into an owned tensor of the 2-D shape */
        lh_tensor *own = s->patch_w ? h->tensor_new(LH_DTYPE_F32, 2, (int64_t[]){D, 3 * P * P})
                                    : NULL;
        if (own && h->tensor_copy(own, s->patch_w) == LH_OK) {
            h->tensor_free(s->patch_w);
            s->patch_w = own;
        } else {
            if (own) h->tensor_free(own);
            if (s->patch_w) h->tensor_free(s->patch_w);
            s->patch_w = NULL;
            st = fail(LH_ERR_BACKEND, err, err_size, SRC ": %s", host_msg(h));
        }
        h->tensor_free(pt);
    }
    if (st == LH_OK) s->cls = load_f(&ld, p, "embeddings.class_embedding", 1, d1, &st);
    if (st == LH_OK) s->pos = load_f(&ld, p, "embeddings.position_embedding.weight", 2, pos, &st);
    if (st == LH_OK) s->pre_w = load_f(&ld, p, "pre_layrnorm.weight", 1, d1, &st);
    if (st == LH_OK) s->pre_b = load_f(&ld, p, "pre_layrnorm.bias", 1, d1, &st);
    if (st == LH_OK) s->post_w = load_f(&ld, p, "post_layernorm.weight", 1, d1, &st);
    if (st == LH_OK) s->post_b = load_f(&ld, p, "post_layernorm.bias", 1, d1, &st);
    if (st == LH_OK) s->proj_w = load_t(&ld, "", "visual_projection.weight", 2, proj, &st);
    if (st == LH_OK && s->L > 0 && !(s->layers = h->calloc((size_t)s->L, sizeof *s->layers)))
        st = fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    for (int64_t l = 0; l < s->L && st == LH_OK; l++) {
        layer *y = &s->layers[l];
        /* a table of (field, suffix, shape) */
        struct {
            lh_tensor **t;
            float **f;
            const char *suffix;
            int ndim;
            const int64_t *shape;
        } tab[] = {
            {&y->wq, NULL, "self_attn.q_proj.weight", 2, dd},
            {NULL, &y->bq, "self_attn.q_proj.bias", 1, d1},
            {&y->wk, NULL, "self_attn.k_proj.weight", 2, dd},
            {NULL, &y->bk, "self_attn.k_proj.bias", 1, d1},
            {&y->wv, NULL, "self_attn.v_proj.weight", 2, dd},
            {NULL, &y->bv, "self_attn.v_proj.bias", 1, d1},
            {&y->wo, NULL, "self_attn.out_proj.weight", 2, dd},
            {NULL, &y->bo, "self_attn.out_proj.bias", 1, d1},
            {NULL, &y->ln1_w, "layer_norm1.weight", 1, d1},
            {NULL, &y->ln1_b, "layer_norm1.bias", 1, d1},
            {&y->w1, NULL, "mlp.fc1.weight", 2, id},
            {NULL, &y->b1, "mlp.fc1.bias", 1, i1},
            {&y->w2, NULL, "mlp.fc2.weight", 2, di},
            {NULL, &y->b2, "mlp.fc2.bias", 1, d1},
            {NULL, &y->ln2_w, "layer_norm2.weight", 1, d1},
            {NULL, &y->ln2_b, "layer_norm2.bias", 1, d1},
        };
        for (size_t k = 0; k < sizeof tab / sizeof tab[0] && st == LH_OK; k++) {
            snprintf(name, sizeof name, "encoder.layers.%lld.%s", (long long)l, tab[k].suffix);
            if (tab[k].t) *tab[k].t = load_t(&ld, p, name, tab[k].ndim, tab[k].shape, &st);
            else *tab[k].f = load_f(&ld, p, name, tab[k].ndim, tab[k].shape, &st);
        }
    }

    /* concepts: counts from the file, dimension from the config */
    float *ce = NULL, *se = NULL, *cw = NULL, *sw = NULL;
    lh_tensor *tc = NULL, *ts = NULL;
    if (st == LH_OK) {
        tc = h->tensor_file_get(ld.file, "concept_embeds");
        ts = h->tensor_file_get(ld.file, "special_care_embeds");
        if (!tc || !ts) st = fail(LH_ERR_NOT_FOUND, err, err_size, SRC ": %s", host_msg(h));
    }
    if (st == LH_OK) {
        int64_t nc = h->tensor_ndim(tc) == 2 ? h->tensor_dim(tc, 0) : 0;
        int64_t ns = h->tensor_ndim(ts) == 2 ? h->tensor_dim(ts, 0) : 0;
        if (nc < 1 || ns < 0 || nc + ns > MAX_CONCEPTS)
            st = fail(LH_ERR_SHAPE, err, err_size,
                      SRC ": %s: concept_embeds and special_care_embeds must be 2-D with at most "
                          "%d rows together",
                      ld.path, MAX_CONCEPTS);
        s->nc = (int)nc;
        s->ns = (int)ns;
    }
    if (tc) h->tensor_free(tc);
    if (ts) h->tensor_free(ts);
    int64_t cshape[2] = {s->nc, s->Pd}, sshape[2] = {s->ns, s->Pd};
    int64_t cn[1] = {s->nc}, sn[1] = {s->ns};
    if (st == LH_OK) ce = load_f(&ld, "", "concept_embeds", 2, cshape, &st);
    if (st == LH_OK) se = load_f(&ld, "", "special_care_embeds", 2, sshape, &st);
    if (st == LH_OK) cw = load_f(&ld, "", "concept_embeds_weights", 1, cn, &st);
    if (st == LH_OK) sw = load_f(&ld, "", "special_care_embeds_weights", 1, sn, &st);
    int n = s->nc + s->ns;
    if (st == LH_OK && (!(s->concepts = h->calloc((size_t)n * (size_t)s->Pd, sizeof(double))) ||
                        !(s->thresholds = h->calloc((size_t)n, sizeof(double)))))
        st = fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    for (int c = 0; c < n && st == LH_OK; c++) {
        const float *row = c < s->nc ? ce + (size_t)c * s->Pd : se + (size_t)(c - s->nc) * s->Pd;
        double nrm = 0;
        for (int64_t j = 0; j < s->Pd; j++) nrm += (double)row[j] * row[j];
        nrm = fmax(sqrt(nrm), 1e-12); /* torch.nn.functional.normalize's eps */
        for (int64_t j = 0; j < s->Pd; j++) s->concepts[(size_t)c * s->Pd + j] = row[j] / nrm;
        s->thresholds[c] = c < s->nc ? cw[c] : sw[c - s->nc];
        if (!isfinite(s->thresholds[c]) || !isfinite(nrm))
            st = fail(LH_ERR_NUMERIC, err, err_size, SRC ": %s: %s row %d is not finite",
                      ld.path, c < s->nc ? "concept_embeds(_weights)" : "special_care_embeds(_weights)",
                      c < s->nc ? c : c - s->nc);
        if (c < s->nc) snprintf(s->names[c], sizeof s->names[c], "concept_%d", c);
        else snprintf(s->names[c], sizeof s->names[c], "special_care_%d", c - s->nc);
    }
    h->free(ce);
    h->free(se);
    h->free(cw);
    h->free(sw);
    h->tensor_file_close(ld.file);
    return st;
}

/* ---- Work space ---- */

static lh_status alloc_work(state *s, char *err, size_t err_size) {
    const lh_host_api *h = s->h;
    int64_t D = s->D, I = s->I, T = s->T, dh = D / s->H, np = T - 1, kp = 3 * s->P * s->P;
    struct {
        lh_tensor **t;
        int64_t r, c;
    } tab[] = {
        {&s->t_patches, np, kp}, {&s->t_a, T, D},   {&s->t_q, T, D},     {&s->t_k, T, D},
        {&s->t_v, T, D},         {&s->t_d, T, D},   {&s->t_i, T, I},     {&s->t_qh, T, dh},
        {&s->t_kh, T, dh},       {&s->t_vh, T, dh}, {&s->t_s, T, T},     {&s->t_oh, T, dh},
        {&s->t_pool, 1, D},      {&s->t_emb, 1, s->Pd}, {&s->t_pe, np, D},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!(*tab[i].t = h->tensor_new(LH_DTYPE_F32, 2, (int64_t[]){tab[i].r, tab[i].c})))
            return fail(LH_ERR_NOMEM, err, err_size, SRC ": %s", host_msg(h));
    /* one float buffer: x a q k v o [T,D], f [T,I], sc [T,T], hd [T,dh],
     * pix [3,S,S] and its patches col [np, kp] (np * kp = 3*S*S) */
    size_t TD = (size_t)(T * D), n_pix = (size_t)(np * kp);
    size_t total = 6 * TD + (size_t)(T * I) + (size_t)(T * T) + (size_t)(T * dh) + 2 * n_pix;
    if (!(s->buf = h->calloc(total, sizeof(float))))
        return fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    float *p = s->buf;
    s->x = p, p += TD;
    s->a = p, p += TD;
    s->q = p, p += TD;
    s->k = p, p += TD;
    s->v = p, p += TD;
    s->o = p, p += TD;
    s->f = p, p += (size_t)(T * I);
    s->sc = p, p += (size_t)(T * T);
    s->hd = p, p += (size_t)(T * dh);
    s->pix = p, p += n_pix;
    s->col = p;
    return LH_OK;
}

/* ---- Lifetime ---- */

static void destroy(void *p) {
    state *s = p;
    if (!s) return;
    const lh_host_api *h = s->h;
#define TFREE(t) \
    if (t) h->tensor_free(t)
    TFREE(s->patch_w);
    TFREE(s->proj_w);
    for (int64_t l = 0; s->layers && l < s->L; l++) {
        layer *y = &s->layers[l];
        TFREE(y->wq);
        TFREE(y->wk);
        TFREE(y->wv);
        TFREE(y->wo);
        TFREE(y->w1);
        TFREE(y->w2);
        float *fs[] = {y->bq, y->bk, y->bv, y->bo, y->b1, y->b2, y->ln1_w, y->ln1_b, y->ln2_w, y->ln2_b};
        for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) h->free(fs[i]);
    }
    lh_tensor *ws_[] = {s->t_patches, s->t_a, s->t_q,  s->t_k,  s->t_v,  s->t_d,    s->t_i,
                        s->t_qh,      s->t_kh, s->t_vh, s->t_s,  s->t_oh, s->t_pool, s->t_emb, s->t_pe};
    for (size_t i = 0; i < sizeof ws_ / sizeof ws_[0]; i++) TFREE(ws_[i]);
#undef TFREE
    h->free(s->layers);
    h->free(s->cls);
    h->free(s->pos);
    h->free(s->pre_w);
    h->free(s->pre_b);
    h->free(s->post_w);
    h->free(s->post_b);
    h->free(s->concepts);
    h->free(s->thresholds);
    h->free(s->buf);
    h->free(s);
}

static const char *const KEYS[] = {"model", "adjustment", "action", NULL};
static const char *const ACTIONS[LH_SAFETY_ACTION_COUNT] = {"pass", "blur", "black", "reject"};

static lh_status create(void **out, const lh_host_api *h, const lh_config *cfg, char *err,
                        size_t err_size) {
    *out = NULL;
    if (h->size <= offsetof(lh_host_api, tensor_file_close) || !h->tensor_file_open ||
        !h->tensor_file_get || !h->tensor_file_close)
        return fail(LH_ERR_ABI, err, err_size,
                    SRC ": the host has no tensor_file services (host api size %u)", h->size);
    state *s = h->calloc(1, sizeof *s);
    if (!s) return fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    s->h = h;
    lh_status st = LH_OK;
    const char *model = h->config_string(cfg, "model");
    const char *action = h->config_string(cfg, "action");
    st = h->config_double(cfg, "adjustment", 0.0, &s->adjustment, err, err_size);
    if (st == LH_OK && !isfinite(s->adjustment))
        st = fail(LH_ERR_CONFIG, err, err_size, SRC ": adjustment must be finite");
    s->action = LH_SAFETY_BLACK;
    if (st == LH_OK && action) {
        int a = -1;
        for (int i = LH_SAFETY_BLUR; i < LH_SAFETY_ACTION_COUNT; i++)
            if (!strcmp(action, ACTIONS[i])) a = i;
        if (a < 0)
            st = fail(LH_ERR_CONFIG, err, err_size,
                      SRC ": action: expected blur, black or reject, got '%s'", action);
        s->action = a;
    }
    if (st == LH_OK && (!model || !*model))
        st = fail(LH_ERR_CONFIG, err, err_size,
                  SRC ": model: required (the diffusers safety_checker folder with config.json "
                      "and model.safetensors)");
    if (st == LH_OK) st = parse_config(s, model, err, err_size);
    if (st == LH_OK) {
        int64_t g = s->S / s->P;
        s->T = g * g + 1;
        if (s->T > 65536 || s->D * s->I > ((int64_t)1 << 34))
            st = fail(LH_ERR_UNSUPPORTED, err, err_size, SRC ": %s/config.json: model too large",
                      model);
    }
    if (st == LH_OK) st = load_weights(s, model, err, err_size);
    if (st == LH_OK) st = alloc_work(s, err, err_size);
    if (st != LH_OK) {
        destroy(s);
        return st;
    }
    *out = s;
    return LH_OK;
}

/* ---- Preprocessing: CLIPImageProcessor (PIL backend) ---- */

/* PIL's bicubic kernel (a = -0.5), support 2. */
static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* PIL's precompute_coeffs + normalize_coeffs_8bpc: per output index its first
 * input index, count and fixed-point weights ([out, ksize]). Returns ksize. */
static int pil_coeffs(const lh_host_api *h, int in, int out, int **bounds, int32_t **kk) {
    double scale = (double)in / out, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    *bounds = h->calloc((size_t)out * 2, sizeof(int));
    *kk = h->calloc((size_t)out * (size_t)ksize, sizeof(int32_t));
    double *k = h->calloc((size_t)ksize, sizeof(double));
    if (!*bounds || !*kk || !k) {
        h->free(k);
        return -1;
    }
    for (int xx = 0; xx < out; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double w = bicubic((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            (*kk)[(size_t)xx * ksize + x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PIL_PRECISION_BITS))
                                                  : (int32_t)(0.5 + v * (1 << PIL_PRECISION_BITS));
        }
        (*bounds)[xx * 2] = xmin;
        (*bounds)[xx * 2 + 1] = xmax;
    }
    h->free(k);
    return ksize;
}

static uint8_t clip8(int64_t v) {
    v >>= PIL_PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One separable pass over an RGB image: along x (horizontal) or y. */
static void pil_pass(uint8_t *dst, const uint8_t *src, int w_in, int h_in, int src_stride,
                     int out, int horizontal, const int *bounds, const int32_t *kk, int ksize) {
    int w_out = horizontal ? out : w_in, h_out = horizontal ? h_in : out;
    for (int y = 0; y < h_out; y++)
        for (int x = 0; x < w_out; x++) {
            int o = horizontal ? x : y, lo = bounds[o * 2], n = bounds[o * 2 + 1];
            const int32_t *k = kk + (size_t)o * ksize;
            for (int c = 0; c < 3; c++) {
                int64_t acc = 1 << (PIL_PRECISION_BITS - 1);
                for (int i = 0; i < n; i++) {
                    const uint8_t *px = horizontal ? src + (size_t)y * src_stride + (size_t)(lo + i) * 3
                                                   : src + (size_t)(lo + i) * src_stride + (size_t)x * 3;
                    acc += (int64_t)px[c] * k[i];
                }
                dst[((size_t)y * w_out + x) * 3 + c] = clip8(acc);
            }
        }
}

/* img -> s->pix [3, S, S] normalised. */
static lh_status preprocess(state *s, const lh_image *img, char *err, size_t err_size) {
    const lh_host_api *h = s->h;
    int w = img->width, hh = img->height, S = (int)s->S;
    int nw, nh;
    if (w <= hh) nw = S, nh = (int)((double)S * hh / w);
    else nh = S, nw = (int)((double)S * w / hh);
    uint8_t *tmp = NULL, *res = NULL;
    int *bx = NULL, *by = NULL;
    int32_t *kx = NULL, *ky = NULL;
    lh_status st = LH_OK;
    const uint8_t *cur = img->rgb;
    int cur_stride = img->stride, cw = w, ch = hh;
    /* Pass order matters: each pass rounds to uint8. Pillow 13
     * (ImagingResampleInner, python-pillow/Pillow#9549) runs the vertical
     * pass first when the height shrinks by more than twice as many pixels as
     * the width does (out_h < in_h and in_h - out_h > 2 * (in_w - out_w)),
     * otherwise horizontal first. Checked against Pillow 13.0 on random sizes. */
    int vertical_first = nh < hh && (int64_t)hh - nh > 2 * ((int64_t)w - nw);
    for (int step = 0; step < 2; step++) {
        int horizontal = vertical_first ? step == 1 : step == 0;
        int in = horizontal ? cw : ch, out = horizontal ? nw : nh;
        if (out == in) continue;
        int **bounds = horizontal ? &bx : &by;
        int32_t **kk = horizontal ? &kx : &ky;
        uint8_t **dst = cur == img->rgb ? &tmp : &res;
        int ks = pil_coeffs(h, in, out, bounds, kk);
        size_t ow = (size_t)(horizontal ? out : cw), oh = (size_t)(horizontal ? ch : out);
        *dst = ks < 0 ? NULL : h->calloc(ow * oh * 3, 1);
        if (!*dst) {
            st = fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
            goto out;
        }
        pil_pass(*dst, cur, cw, ch, cur_stride, out, horizontal, *bounds, *kk, ks);
        cur = *dst, cw = (int)ow, ch = (int)oh, cur_stride = cw * 3;
    }
    /* centre crop (floor offsets) to S x S, x/255 in double rounded to
     * float, then (x - mean) / std in float, as transformers' numpy path */
    int top = (nh - S) / 2, left = (nw - S) / 2;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                uint8_t u = cur[(size_t)(y + top) * cur_stride + (size_t)(x + left) * 3 + c];
                float v = (float)((double)u * (1.0 / 255.0));
                s->pix[((size_t)c * S + y) * S + x] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
out:
    h->free(tmp);
    h->free(res);
    h->free(bx);
    h->free(by);
    h->free(kx);
    h->free(ky);
    return st;
}

/* ---- Vision tower ---- */

static void layer_norm(float *out, const float *x, const float *w, const float *b, int64_t rows,
                       int64_t D, double eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        double mean = 0, var = 0;
        for (int64_t j = 0; j < D; j++) mean += xr[j];
        mean /= (double)D;
        for (int64_t j = 0; j < D; j++) var += (xr[j] - mean) * (xr[j] - mean);
        double inv = 1.0 / sqrt(var / (double)D + eps);
        for (int64_t j = 0; j < D; j++)
            out[r * D + j] = (float)((xr[j] - mean) * inv * w[j] + b[j]);
    }
}

/* host float buffer -> tensor a; out = a . W^T (+ bias) -> host buffer y. */
static lh_status linear(state *s, float *y, lh_tensor *t_out, lh_tensor *t_in, const float *x,
                        const lh_tensor *W, const float *bias) {
    const lh_host_api *h = s->h;
    int64_t n_in = h->tensor_numel(t_in), n_out = h->tensor_numel(t_out);
    if (x && h->tensor_write(t_in, x, n_in) != LH_OK) return LH_ERR_BACKEND;
    if (h->gemm(t_out, t_in, W, 0, 1, 1.0, 0.0) != LH_OK) return LH_ERR_BACKEND;
    if (h->tensor_read(t_out, y, n_out) != LH_OK) return LH_ERR_BACKEND;
    if (bias) {
        int64_t N = h->tensor_dim(t_out, 1);
        for (int64_t i = 0; i < n_out; i++) y[i] += bias[i % N];
    }
    return LH_OK;
}

static lh_status attention(state *s, const layer *y) {
    const lh_host_api *h = s->h;
    int64_t T = s->T, D = s->D, dh = D / s->H;
    lh_status st;
    if ((st = linear(s, s->q, s->t_q, s->t_a, s->a, y->wq, y->bq)) ||
        (st = linear(s, s->k, s->t_k, s->t_a, NULL, y->wk, y->bk)) ||
        (st = linear(s, s->v, s->t_v, s->t_a, NULL, y->wv, y->bv)))
        return st;
    double scale = 1.0 / sqrt((double)dh);
    for (int64_t hd = 0; hd < s->H; hd++) {
        lh_tensor *tt[3] = {s->t_qh, s->t_kh, s->t_vh};
        const float *src[3] = {s->q, s->k, s->v};
        for (int m = 0; m < 3; m++) {
            for (int64_t t = 0; t < T; t++)
                memcpy(s->hd + t * dh, src[m] + t * D + hd * dh, (size_t)dh * sizeof(float));
            if (h->tensor_write(tt[m], s->hd, T * dh) != LH_OK) return LH_ERR_BACKEND;
        }
        if (h->gemm(s->t_s, s->t_qh, s->t_kh, 0, 1, scale, 0.0) != LH_OK ||
            h->tensor_read(s->t_s, s->sc, T * T) != LH_OK)
            return LH_ERR_BACKEND;
        for (int64_t r = 0; r < T; r++) {
            float *row = s->sc + r * T;
            float mx = row[0];
            for (int64_t j = 1; j < T; j++) mx = row[j] > mx ? row[j] : mx;
            double sum = 0;
            for (int64_t j = 0; j < T; j++) sum += exp((double)row[j] - mx);
            for (int64_t j = 0; j < T; j++) row[j] = (float)(exp((double)row[j] - mx) / sum);
        }
        if (h->tensor_write(s->t_s, s->sc, T * T) != LH_OK ||
            h->gemm(s->t_oh, s->t_s, s->t_vh, 0, 0, 1.0, 0.0) != LH_OK ||
            h->tensor_read(s->t_oh, s->hd, T * dh) != LH_OK)
            return LH_ERR_BACKEND;
        for (int64_t t = 0; t < T; t++)
            memcpy(s->o + t * D + hd * dh, s->hd + t * dh, (size_t)dh * sizeof(float));
    }
    return linear(s, s->a, s->t_d, s->t_a, s->o, y->wo, y->bo);
}

/* s->pix -> emb [Pd], double: CLIPVisionTransformer's pooled output
 * (post_layernorm of the class token) through visual_projection. */
static lh_status embed_image(state *s, double *emb) {
    const lh_host_api *h = s->h;
    int64_t T = s->T, D = s->D, I = s->I, P = s->P, S = s->S, g = S / P, kp = 3 * P * P;
    lh_status st;
    /* patches [g*g, 3*P*P] in the conv weight's (c, kh, kw) order */
    for (int64_t py = 0; py < g; py++)
        for (int64_t px = 0; px < g; px++)
            for (int64_t c = 0; c < 3; c++)
                for (int64_t ky = 0; ky < P; ky++)
                    for (int64_t kx = 0; kx < P; kx++)
                        s->col[(py * g + px) * kp + (c * P + ky) * P + kx] =
                            s->pix[(c * S + py * P + ky) * S + px * P + kx];
    /* tokens: class embedding, then the patches; plus positions */
    if ((st = linear(s, s->x + D, s->t_pe, s->t_patches, s->col, s->patch_w, NULL))) return st;
    memcpy(s->x, s->cls, (size_t)D * sizeof(float));
    for (int64_t i = 0; i < T * D; i++) s->x[i] += s->pos[i];
    layer_norm(s->x, s->x, s->pre_w, s->pre_b, T, D, s->eps);
    for (int64_t l = 0; l < s->L; l++) {
        const layer *y = &s->layers[l];
        layer_norm(s->a, s->x, y->ln1_w, y->ln1_b, T, D, s->eps);
        if ((st = attention(s, y))) return st;
        for (int64_t i = 0; i < T * D; i++) s->x[i] += s->a[i];
        layer_norm(s->a, s->x, y->ln2_w, y->ln2_b, T, D, s->eps);
        if ((st = linear(s, s->f, s->t_i, s->t_a, s->a, y->w1, y->b1))) return st;
        for (int64_t i = 0; i < T * I; i++) {
            double v = s->f[i];
            s->f[i] = (float)(s->gelu_erf ? 0.5 * v * (1.0 + erf(v / sqrt(2.0)))
                                          : v / (1.0 + exp(-1.702 * v)));
        }
        if ((st = linear(s, s->a, s->t_d, s->t_i, s->f, y->w2, y->b2))) return st;
        for (int64_t i = 0; i < T * D; i++) s->x[i] += s->a[i];
    }
    layer_norm(s->a, s->x, s->post_w, s->post_b, 1, D, s->eps);
    if ((st = linear(s, s->o, s->t_emb, s->t_pool, s->a, s->proj_w, NULL))) return st;
    for (int64_t j = 0; j < s->Pd; j++) emb[j] = s->o[j];
    (void)h;
    return LH_OK;
}

/* ---- Checking ---- */

/* diffusers: round(score, 3) > 0 */
static int fires(double score) { return rint(score * 1000.0) > 0; }

static void judge(state *s, const double *emb, lh_safety_result *r) {
    int n = s->nc + s->ns;
    double nrm = 0;
    for (int64_t j = 0; j < s->Pd; j++) nrm += emb[j] * emb[j];
    nrm = fmax(sqrt(nrm), 1e-12);
    double score[MAX_CONCEPTS];
    /* special care first: each one that fires adds 0.01 for those after it
     * and for every concept (diffusers' `adjustment = 0.01`) */
    double adj = s->adjustment;
    int special = -1;
    for (int c = s->nc; c < n; c++) {
        double cs = 0;
        for (int64_t j = 0; j < s->Pd; j++) cs += emb[j] / nrm * s->concepts[(size_t)c * s->Pd + j];
        score[c] = cs - s->thresholds[c] + adj;
        if (fires(score[c])) {
            if (special < 0) special = c;
            adj = s->adjustment + 0.01;
        }
    }
    int worst = 0, hits = 0;
    for (int c = 0; c < s->nc; c++) {
        double cs = 0;
        for (int64_t j = 0; j < s->Pd; j++) cs += emb[j] / nrm * s->concepts[(size_t)c * s->Pd + j];
        score[c] = cs - s->thresholds[c] + adj;
        hits += fires(score[c]);
        if (score[c] > score[worst]) worst = c;
    }
    memset(r, 0, sizeof *r);
    r->n_scores = n;
    for (int c = 0; c < n; c++) {
        r->scores[c] = (float)score[c];
        r->concepts[c] = s->names[c];
    }
    r->flagged = hits > 0;
    r->action = r->flagged ? s->action : LH_SAFETY_PASS;
    size_t k = 0;
    if (r->flagged)
        k += (size_t)snprintf(r->reason, sizeof r->reason,
                              "image matches %d concept%s (highest %s, score %+.4f); action %s",
                              hits, hits > 1 ? "s" : "", s->names[worst], score[worst],
                              ACTIONS[s->action]);
    else
        k += (size_t)snprintf(r->reason, sizeof r->reason,
                              "no concept matched (highest %s, score %+.4f)", s->names[worst],
                              score[worst]);
    if (special >= 0 && k < sizeof r->reason)
        snprintf(r->reason + k, sizeof r->reason - k,
                 "; special care %s fired, thresholds lowered by 0.01", s->names[special]);
}

static lh_status check_images(void *p, const lh_image *images, int32_t n, const char *prompt,
                              lh_safety_result *results, char *err, size_t err_size) {
    state *s = p;
    (void)prompt;
    if (n < 0 || (n > 0 && (!images || !results)))
        return fail(LH_ERR_INVALID, err, err_size, SRC ": check_images: bad image list");
    double emb[65536 / 8];
    double *e = s->Pd <= (int64_t)(sizeof emb / sizeof emb[0]) ? emb
                                                               : s->h->calloc((size_t)s->Pd, sizeof(double));
    if (!e) return fail(LH_ERR_NOMEM, err, err_size, SRC ": out of memory");
    lh_status st = LH_OK;
    for (int32_t i = 0; i < n && st == LH_OK; i++) {
        const lh_image *im = &images[i];
        if (!im->rgb || im->width < 1 || im->height < 1 || im->width > (1 << 16) ||
            im->height > (1 << 16) || im->stride < im->width * 3) {
            st = fail(LH_ERR_INVALID, err, err_size,
                      SRC ": image %d: bad size %dx%d or stride %d (need RGB, stride >= 3*width)",
                      i, im->width, im->height, im->stride);
            break;
        }
        st = preprocess(s, im, err, err_size);
        if (st == LH_OK && (st = embed_image(s, e)) != LH_OK)
            fail(st, err, err_size, SRC ": image %d: %s", i, host_msg(s->h));
        if (st == LH_OK) judge(s, e, &results[i]);
    }
    if (e != emb) s->h->free(e);
    return st;
}

static const char *const ALIASES[] = {"clip", "stable_diffusion_safety_checker",
                                      "StableDiffusionSafetyChecker", NULL};

static const lh_safety_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SAFETY, lh_safety_desc, "safety_clip", "1.0.0",
                           "diffusers StableDiffusionSafetyChecker (CLIP image concepts)",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .check_prompt = NULL,
    .check_images = check_images,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
