/* The SD 1.x / 2.x U-Net: config.json parsing and weight loading (see
 * unet.h). The forward pass is in unet_blocks.c. */
#include "unet.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_load.h"
#include "log.h"

/* ---- Configuration ---- */

/* Fields SD 1.x / 2.x leave at one value; anything else is a model we do not
 * implement (SDXL's addition_embed_type, LCM's time_cond_proj_dim, ...). A
 * field may be absent (diffusers' default is the supported value). */
typedef enum {
    FIXED_NULL,    /* null */
    FIXED_FALSE,   /* false */
    FIXED_NUMBER,  /* a number equal to `number` */
    FIXED_STRING,  /* one of `strings` */
    FIXED_FALSES,  /* false, or a list of false */
    FIXED_ONES,    /* 1, or a list of 1 */
    FIXED_NULL_OR_FALSE,
} fixed_kind;

typedef struct fixed_field {
    const char *key;
    fixed_kind kind;
    double number;
    const char *strings[3];
} fixed_field;

static const fixed_field FIXED_FIELDS[] = {
    {"_class_name", FIXED_STRING, 0, {"UNet2DConditionModel"}},
    {"center_input_sample", FIXED_FALSE, 0, {0}},
    {"mid_block_type", FIXED_STRING, 0, {"UNetMidBlock2DCrossAttn"}},
    {"only_cross_attention", FIXED_FALSES, 0, {0}},
    {"mid_block_only_cross_attention", FIXED_NULL_OR_FALSE, 0, {0}},
    {"dual_cross_attention", FIXED_FALSE, 0, {0}},
    {"transformer_layers_per_block", FIXED_ONES, 0, {0}},
    {"reverse_transformer_layers_per_block", FIXED_NULL, 0, {0}},
    {"resnet_time_scale_shift", FIXED_STRING, 0, {"default"}},
    {"resnet_skip_time_act", FIXED_FALSE, 0, {0}},
    {"resnet_out_scale_factor", FIXED_NUMBER, 1.0, {0}},
    {"mid_block_scale_factor", FIXED_NUMBER, 1.0, {0}},
    {"downsample_padding", FIXED_NUMBER, 1.0, {0}},
    {"conv_in_kernel", FIXED_NUMBER, 3.0, {0}},
    {"conv_out_kernel", FIXED_NUMBER, 3.0, {0}},
    {"act_fn", FIXED_STRING, 0, {"silu", "swish"}},
    {"time_embedding_type", FIXED_STRING, 0, {"positional"}},
    {"time_embedding_dim", FIXED_NULL, 0, {0}},
    {"time_embedding_act_fn", FIXED_NULL, 0, {0}},
    {"timestep_post_act", FIXED_NULL, 0, {0}},
    {"time_cond_proj_dim", FIXED_NULL, 0, {0}},
    {"class_embed_type", FIXED_NULL, 0, {0}},
    {"num_class_embeds", FIXED_NULL, 0, {0}},
    {"class_embeddings_concat", FIXED_FALSE, 0, {0}},
    {"projection_class_embeddings_input_dim", FIXED_NULL, 0, {0}},
    {"addition_embed_type", FIXED_NULL, 0, {0}},
    {"addition_time_embed_dim", FIXED_NULL, 0, {0}},
    {"encoder_hid_dim", FIXED_NULL, 0, {0}},
    {"encoder_hid_dim_type", FIXED_NULL, 0, {0}},
    {"num_attention_heads", FIXED_NULL, 0, {0}},
    {"attention_type", FIXED_STRING, 0, {"default"}},
    {"cross_attention_norm", FIXED_NULL, 0, {0}},
};

static int fixed_ok(const fixed_field *f, const json_t *v) {
    switch (f->kind) {
    case FIXED_NULL: return json_is_null(v);
    case FIXED_FALSE: return json_is_false(v);
    case FIXED_NULL_OR_FALSE: return json_is_null(v) || json_is_false(v);
    case FIXED_NUMBER: return json_is_number(v) && json_number_value(v) == f->number;
    case FIXED_STRING:
        for (int i = 0; i < 3 && f->strings[i]; i++)
            if (json_is_string(v) && !strcmp(json_string_value(v), f->strings[i])) return 1;
        return 0;
    case FIXED_FALSES:
    case FIXED_ONES: {
        int ones = f->kind == FIXED_ONES;
        if (!json_is_array(v)) return ones ? json_is_integer(v) && json_integer_value(v) == 1
                                           : json_is_false(v);
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) {
            if (ones ? !(json_is_integer(e) && json_integer_value(e) == 1) : !json_is_false(e))
                return 0;
        }
        return 1;
    }
    }
    return 0;
}

static const char *fixed_want(const fixed_field *f, char *buf, size_t size) {
    switch (f->kind) {
    case FIXED_NULL: return "null";
    case FIXED_FALSE: return "false";
    case FIXED_NULL_OR_FALSE: return "null or false";
    case FIXED_FALSES: return "false";
    case FIXED_ONES: return "1";
    case FIXED_NUMBER: snprintf(buf, size, "%g", f->number); return buf;
    case FIXED_STRING:
        snprintf(buf, size, "\"%s\"%s%s%s", f->strings[0], f->strings[1] ? " or \"" : "",
                 f->strings[1] ? f->strings[1] : "", f->strings[1] ? "\"" : "");
        return buf;
    }
    return "?";
}

/* Parsing state: the config object and the label for messages. */
typedef struct cfg_reader {
    const json_t *root;
    const char *name;
    lh_error *err;
} cfg_reader;

static lh_status bad_field(cfg_reader *r, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static lh_status bad_field(cfg_reader *r, const char *key, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return lh_error_set(r->err, LH_ERR_CONFIG, "%s: field '%s' %s", r->name, key, why);
}

/* An integer field in [lo, hi]; `fallback` if absent. */
static lh_status get_int(cfg_reader *r, const char *key, int64_t fallback, int64_t lo, int64_t hi,
                         int64_t *out) {
    const json_t *v = json_object_get(r->root, key);
    *out = fallback;
    if (!v) return LH_OK;
    if (!json_is_integer(v)) return bad_field(r, key, "must be an integer");
    *out = json_integer_value(v);
    if (*out < lo || *out > hi)
        return bad_field(r, key, "is %lld; it must be in [%lld, %lld]", (long long)*out,
                         (long long)lo, (long long)hi);
    return LH_OK;
}

static lh_status get_bool(cfg_reader *r, const char *key, int fallback, int *out) {
    const json_t *v = json_object_get(r->root, key);
    *out = fallback;
    if (!v) return LH_OK;
    if (!json_is_boolean(v)) return bad_field(r, key, "must be true or false");
    *out = json_is_true(v);
    return LH_OK;
}

static lh_status get_number(cfg_reader *r, const char *key, double fallback, double lo, double hi,
                            double *out) {
    const json_t *v = json_object_get(r->root, key);
    *out = fallback;
    if (!v) return LH_OK;
    if (!json_is_number(v)) return bad_field(r, key, "must be a number");
    *out = json_number_value(v);
    if (!(*out >= lo && *out <= hi))
        return bad_field(r, key, "is %g; it must be in [%g, %g]", *out, lo, hi);
    return LH_OK;
}

/* An integer or a list of n integers, each in [lo, hi], into out[n]. */
static lh_status get_ints(cfg_reader *r, const char *key, int64_t fallback, int n, int64_t lo,
                          int64_t hi, int64_t *out) {
    const json_t *v = json_object_get(r->root, key);
    for (int i = 0; i < n; i++) out[i] = fallback;
    if (!v) return LH_OK;
    if (json_is_integer(v)) {
        for (int i = 0; i < n; i++) out[i] = json_integer_value(v);
    } else if (json_is_array(v)) {
        if (json_array_size(v) != (size_t)n)
            return bad_field(r, key, "has %zu entries; down_block_types has %d", json_array_size(v),
                             n);
        for (int i = 0; i < n; i++) {
            const json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_integer(e)) return bad_field(r, key, "entry %d must be an integer", i);
            out[i] = json_integer_value(e);
        }
    } else {
        return bad_field(r, key, "must be an integer or a list of integers");
    }
    for (int i = 0; i < n; i++)
        if (out[i] < lo || out[i] > hi)
            return bad_field(r, key, "has %lld; each must be in [%lld, %lld]", (long long)out[i],
                             (long long)lo, (long long)hi);
    return LH_OK;
}

/* A list of block type names; out[i] = 1 for `cross_name`, 0 for `plain_name`. */
static lh_status get_block_types(cfg_reader *r, const char *key, const char *cross_name,
                                 const char *plain_name, int *n, int *out) {
    const json_t *v = json_object_get(r->root, key);
    if (!v) { /* diffusers' defaults, the SD 1.5 layout: 3 cross-attention blocks and a plain one */
        int down = !strcmp(cross_name, "CrossAttnDownBlock2D");
        *n = 4;
        for (int i = 0; i < 4; i++) out[i] = down ? i < 3 : i > 0;
        return LH_OK;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad_field(r, key, "must be a non-empty list of block type names");
    if (json_array_size(v) > LH_UNET_MAX_BLOCKS)
        return bad_field(r, key, "has %zu blocks; at most %d are supported", json_array_size(v),
                         LH_UNET_MAX_BLOCKS);
    *n = (int)json_array_size(v);
    for (int i = 0; i < *n; i++) {
        const char *s = json_string_value(json_array_get(v, (size_t)i));
        if (s && !strcmp(s, cross_name)) out[i] = 1;
        else if (s && !strcmp(s, plain_name)) out[i] = 0;
        else
            return bad_field(r, key, "entry %d is \"%s\"; supported: \"%s\", \"%s\"", i,
                             s ? s : "(not a string)", cross_name, plain_name);
    }
    return LH_OK;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        lh_status st_ = (expr);                                                                    \
        if (st_ != LH_OK) return st_;                                                              \
    } while (0)

static lh_status parse_root(lh_unet_config *c, cfg_reader *r) {
    const int64_t big = (int64_t)1 << 20; /* channel counts beyond this are not a U-Net */
    for (size_t i = 0; i < sizeof FIXED_FIELDS / sizeof FIXED_FIELDS[0]; i++) {
        const fixed_field *f = &FIXED_FIELDS[i];
        const json_t *v = json_object_get(r->root, f->key);
        if (v && !fixed_ok(f, v)) {
            char want[128], *got = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            lh_status st = bad_field(r, f->key,
                                     "is %s; lorahost's SD 1.x/2.x U-Net supports only %s",
                                     got ? got : "?", fixed_want(f, want, sizeof want));
            free(got);
            return st;
        }
    }

    int n_up = 0;
    TRY(get_block_types(r, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", &c->n_blocks,
                        c->down_cross));
    TRY(get_block_types(r, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", &n_up,
                        c->up_cross));
    if (n_up != c->n_blocks)
        return bad_field(r, "up_block_types", "has %d blocks; down_block_types has %d", n_up,
                         c->n_blocks);
    int n = c->n_blocks;

    const json_t *boc = json_object_get(r->root, "block_out_channels");
    if (boc) {
        if (!json_is_array(boc) || json_array_size(boc) != (size_t)n)
            return bad_field(r, "block_out_channels", "must be a list of %d integers (one per "
                             "entry of down_block_types)", n);
        for (int i = 0; i < n; i++) {
            const json_t *e = json_array_get(boc, (size_t)i);
            if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > big)
                return bad_field(r, "block_out_channels", "entry %d must be an integer in [1, %lld]",
                                 i, (long long)big);
            c->block_out_channels[i] = json_integer_value(e);
        }
    } else {
        static const int64_t DEFAULT_BOC[] = {320, 640, 1280, 1280};
        if (n != 4)
            return bad_field(r, "block_out_channels", "is missing; the default has 4 entries, "
                             "down_block_types has %d", n);
        memcpy(c->block_out_channels, DEFAULT_BOC, sizeof DEFAULT_BOC);
    }

    int64_t lpb[LH_UNET_MAX_BLOCKS];
    TRY(get_ints(r, "layers_per_block", 2, n, 1, LH_UNET_MAX_LAYERS - 1, lpb));
    for (int i = 0; i < n; i++) c->layers_per_block[i] = (int)lpb[i];
    TRY(get_ints(r, "attention_head_dim", 8, n, 1, big, c->heads));

    int64_t cross[LH_UNET_MAX_BLOCKS];
    TRY(get_ints(r, "cross_attention_dim", 1280, n, 1, big, cross));
    for (int i = 1; i < n; i++)
        if (cross[i] != cross[0])
            return bad_field(r, "cross_attention_dim", "differs between blocks (%lld, %lld); one "
                             "text embedding width is supported", (long long)cross[0],
                             (long long)cross[i]);
    c->cross_attention_dim = cross[0];

    TRY(get_int(r, "in_channels", 4, 1, big, &c->in_channels));
    TRY(get_int(r, "out_channels", 4, 1, big, &c->out_channels));
    TRY(get_int(r, "norm_num_groups", 32, 1, big, &c->norm_num_groups));
    if (json_is_null(json_object_get(r->root, "norm_num_groups")))
        return bad_field(r, "norm_num_groups", "is null; a U-Net without GroupNorm is not supported");
    double d;
    TRY(get_number(r, "norm_eps", 1e-5, 0.0, 1.0, &d));
    c->norm_eps = (float)d;
    TRY(get_number(r, "freq_shift", 0.0, -1e6, 1e6, &d));
    c->freq_shift = (float)d;
    TRY(get_bool(r, "flip_sin_to_cos", 1, &c->flip_sin_to_cos));
    TRY(get_bool(r, "use_linear_projection", 0, &c->use_linear_projection));
    TRY(get_bool(r, "upcast_attention", 0, &c->upcast_attention));
    TRY(get_number(r, "dropout", 0.0, 0.0, 1.0, &d)); /* inference: no dropout */

    /* Shapes every block must be able to take. */
    for (int i = 0; i < n; i++) {
        int64_t ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups)
            return bad_field(r, "norm_num_groups", "is %lld, which does not divide "
                             "block_out_channels[%d] = %lld", (long long)c->norm_num_groups, i,
                             (long long)ch);
        int attn = c->down_cross[i] || c->up_cross[n - 1 - i] || i == n - 1; /* mid: last */
        if (attn && ch % c->heads[i])
            return bad_field(r, "attention_head_dim", "entry %d (%lld heads) does not divide "
                             "block_out_channels[%d] = %lld", i, (long long)c->heads[i], i,
                             (long long)ch);
    }
    return LH_OK;
}

lh_status lh_unet_config_parse(lh_unet_config *cfg, const char *json_text, const char *name,
                               lh_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!name) name = "unet config";
    json_error_t je;
    json_t *root = json_loads(json_text, 0, &je);
    if (!root)
        return lh_error_set(err, LH_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", name, je.line,
                            je.text);
    lh_status st;
    if (!json_is_object(root)) {
        st = lh_error_set(err, LH_ERR_FORMAT, "%s: must be a JSON object", name);
    } else {
        cfg_reader r = {root, name, err};
        st = parse_root(cfg, &r);
    }
    json_decref(root);
    return st;
}

lh_status lh_unet_config_read(lh_unet_config *cfg, const char *path, lh_error *err) {
    memset(cfg, 0, sizeof *cfg);
    FILE *f = fopen(path, "rb");
    if (!f) return lh_error_set(err, LH_ERR_IO, "%s: cannot open", path);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            if (cap > (size_t)16 << 20) {
                free(buf);
                fclose(f);
                return lh_error_set(err, LH_ERR_FORMAT, "%s: larger than 16 MB", path);
            }
            size_t ncap = cap ? 2 * cap : 8192;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t k = fread(buf + len, 1, cap - len - 1, f);
        len += k;
        if (k == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return lh_error_set(err, LH_ERR_IO, "%s: read error", path);
    }
    buf[len] = '\0';
    lh_status st = lh_unet_config_parse(cfg, buf, path, err);
    free(buf);
    return st;
}

/* ---- Loading ---- */

typedef struct loader {
    lh_wstore *ws;
    const lh_wsource *src;
    const char *file_prefix; /* in front of every key ("" for a diffusers file) */
    lh_error *err;
    size_t n_loaded;
    /* Walk mode (lh__unet_params): name each loaded parameter instead of loading it. */
    void (*walk)(void *ctx, const lh_unet_param *p);
    void *walk_ctx;
} loader;

/* Upload tensor "<file_prefix><prefix>.<suffix>" with the given shape. */
static lh_status ld(loader *l, float **out, const char *prefix, const char *suffix, int ndim,
                    int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    char key[512];
    snprintf(key, sizeof key, "%s%s.%s", l->file_prefix, prefix, suffix);
    const int64_t shape[4] = {d0, d1, d2, d3};
    if (l->walk) {
        size_t numel = 1;
        for (int i = 0; i < ndim; i++) numel *= (size_t)shape[i]; /* sizes were checked on load */
        l->walk(l->walk_ctx, &(lh_unet_param){key, out, ndim, numel});
        return LH_OK;
    }
    lh_status st = lh_wstore_load_src(out, l->ws, l->src, key, ndim, shape, l->err);
    if (st == LH_OK) l->n_loaded++;
    return st;
}

static lh_status ld_vec(loader *l, float **out, const char *p, const char *s, int64_t n) {
    return ld(l, out, p, s, 1, n, 0, 0, 0);
}
static lh_status ld_mat(loader *l, float **out, const char *p, const char *s, int64_t r, int64_t c) {
    return ld(l, out, p, s, 2, r, c, 0, 0);
}
static lh_status ld_conv(loader *l, float **out, const char *p, const char *s, int64_t co,
                         int64_t ci, int64_t k) {
    return ld(l, out, p, s, 4, co, ci, k, k);
}

static lh_status load_resnet(loader *l, lh_unet_resnet *r, const lh_unet_config *c,
                             int64_t c_in, int64_t c_out) {
    const char *p = r->name;
    int64_t temb = 4 * c->block_out_channels[0];
    r->c_in = c_in;
    r->c_out = c_out;
    TRY(ld_vec(l, &r->norm1_w, p, "norm1.weight", c_in));
    TRY(ld_vec(l, &r->norm1_b, p, "norm1.bias", c_in));
    TRY(ld_conv(l, &r->conv1_w, p, "conv1.weight", c_out, c_in, 3));
    TRY(ld_vec(l, &r->conv1_b, p, "conv1.bias", c_out));
    TRY(ld_mat(l, &r->temb_w, p, "time_emb_proj.weight", c_out, temb));
    TRY(ld_vec(l, &r->temb_b, p, "time_emb_proj.bias", c_out));
    TRY(ld_vec(l, &r->norm2_w, p, "norm2.weight", c_out));
    TRY(ld_vec(l, &r->norm2_b, p, "norm2.bias", c_out));
    TRY(ld_conv(l, &r->conv2_w, p, "conv2.weight", c_out, c_out, 3));
    TRY(ld_vec(l, &r->conv2_b, p, "conv2.bias", c_out));
    if (c_in != c_out) {
        TRY(ld_conv(l, &r->short_w, p, "conv_shortcut.weight", c_out, c_in, 1));
        TRY(ld_vec(l, &r->short_b, p, "conv_shortcut.bias", c_out));
    }
    return LH_OK;
}

static lh_status load_attention(loader *l, float **q, float **k, float **v, float **o_w,
                                float **o_b, const char *prefix, const char *attn, int64_t c,
                                int64_t c_kv) {
    char p[128];
    snprintf(p, sizeof p, "%s.%s", prefix, attn);
    TRY(ld_mat(l, q, p, "to_q.weight", c, c));
    TRY(ld_mat(l, k, p, "to_k.weight", c, c_kv));
    TRY(ld_mat(l, v, p, "to_v.weight", c, c_kv));
    TRY(ld_mat(l, o_w, p, "to_out.0.weight", c, c));
    return ld_vec(l, o_b, p, "to_out.0.bias", c);
}

static lh_status load_transformer(loader *l, lh_unet_attn *a, const lh_unet_config *c,
                                  int64_t ch, int64_t heads) {
    const char *p = a->name;
    a->c = ch;
    a->heads = heads;
    TRY(ld_vec(l, &a->norm_w, p, "norm.weight", ch));
    TRY(ld_vec(l, &a->norm_b, p, "norm.bias", ch));
    int lin = c->use_linear_projection;
    TRY(ld(l, &a->proj_in_w, p, "proj_in.weight", lin ? 2 : 4, ch, ch, 1, 1));
    TRY(ld_vec(l, &a->proj_in_b, p, "proj_in.bias", ch));
    TRY(ld(l, &a->proj_out_w, p, "proj_out.weight", lin ? 2 : 4, ch, ch, 1, 1));
    TRY(ld_vec(l, &a->proj_out_b, p, "proj_out.bias", ch));

    lh_unet_tblock *t = &a->block;
    char b[96];
    snprintf(b, sizeof b, "%s.transformer_blocks.0", p);
    TRY(ld_vec(l, &t->norm1_w, b, "norm1.weight", ch));
    TRY(ld_vec(l, &t->norm1_b, b, "norm1.bias", ch));
    TRY(load_attention(l, &t->q1, &t->k1, &t->v1, &t->o1_w, &t->o1_b, b, "attn1", ch, ch));
    TRY(ld_vec(l, &t->norm2_w, b, "norm2.weight", ch));
    TRY(ld_vec(l, &t->norm2_b, b, "norm2.bias", ch));
    TRY(load_attention(l, &t->q2, &t->k2, &t->v2, &t->o2_w, &t->o2_b, b, "attn2", ch,
                       c->cross_attention_dim));
    TRY(ld_vec(l, &t->norm3_w, b, "norm3.weight", ch));
    TRY(ld_vec(l, &t->norm3_b, b, "norm3.bias", ch));
    TRY(ld_mat(l, &t->ff1_w, b, "ff.net.0.proj.weight", 8 * ch, ch));
    TRY(ld_vec(l, &t->ff1_b, b, "ff.net.0.proj.bias", 8 * ch));
    TRY(ld_mat(l, &t->ff2_w, b, "ff.net.2.weight", ch, 4 * ch));
    return ld_vec(l, &t->ff2_b, b, "ff.net.2.bias", ch);
}

/* A down or up block: resnet i takes c_in[i] channels; the diffusers channel
 * arithmetic is done by the caller. */
static lh_status load_block(loader *l, lh_unet_block *blk, const lh_unet_config *c,
                            const char *prefix, int n_layers, int cross, const int64_t *c_in,
                            int64_t c_out, int64_t heads, const char *sampler) {
    blk->n_layers = n_layers;
    blk->cross = cross;
    blk->c_out = c_out;
    for (int j = 0; j < n_layers; j++) {
        snprintf(blk->res[j].name, sizeof blk->res[j].name, "%s.resnets.%d", prefix, j);
        TRY(load_resnet(l, &blk->res[j], c, c_in[j], c_out));
        if (cross) {
            snprintf(blk->attn[j].name, sizeof blk->attn[j].name, "%s.attentions.%d", prefix, j);
            TRY(load_transformer(l, &blk->attn[j], c, c_out, heads));
        }
    }
    if (sampler) {
        char p[96];
        snprintf(p, sizeof p, "%s.%s.0.conv", prefix, sampler);
        TRY(ld_conv(l, &blk->sample_w, p, "weight", c_out, c_out, 3));
        TRY(ld_vec(l, &blk->sample_b, p, "bias", c_out));
    }
    return LH_OK;
}

static lh_status load_all(lh_unet *m, loader *l) {
    const lh_unet_config *c = &m->cfg;
    const int n = c->n_blocks;
    const int64_t *boc = c->block_out_channels;
    const int64_t c0 = boc[0], temb = 4 * c0;

    TRY(ld_conv(l, &m->conv_in_w, "conv_in", "weight", c0, c->in_channels, 3));
    TRY(ld_vec(l, &m->conv_in_b, "conv_in", "bias", c0));
    TRY(ld_mat(l, &m->time1_w, "time_embedding.linear_1", "weight", temb, c0));
    TRY(ld_vec(l, &m->time1_b, "time_embedding.linear_1", "bias", temb));
    TRY(ld_mat(l, &m->time2_w, "time_embedding.linear_2", "weight", temb, temb));
    TRY(ld_vec(l, &m->time2_b, "time_embedding.linear_2", "bias", temb));

    char p[64];
    int64_t c_in[LH_UNET_MAX_LAYERS];
    for (int i = 0; i < n; i++) { /* CrossAttnDownBlock2D / DownBlock2D */
        int layers = c->layers_per_block[i];
        for (int j = 0; j < layers; j++) c_in[j] = j == 0 ? boc[i > 0 ? i - 1 : 0] : boc[i];
        snprintf(p, sizeof p, "down_blocks.%d", i);
        TRY(load_block(l, &m->down[i], c, p, layers, c->down_cross[i], c_in, boc[i], c->heads[i],
                       i < n - 1 ? "downsamplers" : NULL));
    }

    /* UNetMidBlock2DCrossAttn: resnets.0, attentions.0, resnets.1 */
    lh_unet_block *mid = &m->mid;
    mid->n_layers = 2;
    mid->cross = 1;
    mid->c_out = boc[n - 1];
    for (int j = 0; j < 2; j++) {
        snprintf(mid->res[j].name, sizeof mid->res[j].name, "mid_block.resnets.%d", j);
        TRY(load_resnet(l, &mid->res[j], c, boc[n - 1], boc[n - 1]));
    }
    snprintf(mid->attn[0].name, sizeof mid->attn[0].name, "mid_block.attentions.0");
    TRY(load_transformer(l, &mid->attn[0], c, boc[n - 1], c->heads[n - 1]));

    for (int i = 0; i < n; i++) { /* CrossAttnUpBlock2D / UpBlock2D, reversed channels */
        int k = n - 1 - i;                      /* the matching down block */
        int64_t out_c = boc[k];
        int64_t prev_c = boc[i > 0 ? k + 1 : k]; /* the previous up block's output */
        int64_t skip_last = boc[k > 0 ? k - 1 : 0];
        int layers = c->layers_per_block[k] + 1;
        for (int j = 0; j < layers; j++)
            c_in[j] = (j == 0 ? prev_c : out_c) + (j == layers - 1 ? skip_last : out_c);
        snprintf(p, sizeof p, "up_blocks.%d", i);
        TRY(load_block(l, &m->up[i], c, p, layers, c->up_cross[i], c_in, out_c, c->heads[k],
                       i < n - 1 ? "upsamplers" : NULL));
    }

    TRY(ld_vec(l, &m->norm_out_w, "conv_norm_out", "weight", c0));
    TRY(ld_vec(l, &m->norm_out_b, "conv_norm_out", "bias", c0));
    TRY(ld_conv(l, &m->conv_out_w, "conv_out", "weight", c->out_channels, c0, 3));
    return ld_vec(l, &m->conv_out_b, "conv_out", "bias", c->out_channels);
}

void lh__unet_params(lh_unet *m, void (*fn)(void *ctx, const lh_unet_param *p), void *ctx) {
    /* load_all in walk mode: it rewrites the block names and sizes it set on
     * load (the same values) and reports every tensor in loading order */
    loader l = {.file_prefix = "", .walk = fn, .walk_ctx = ctx};
    (void)load_all(m, &l);
}

/* After loading: the type the linear and convolution weights are held in
 * (one half type for all, or F32) and the largest one held in a half type. */
static void scan_storage(void *ctx, const lh_unet_param *p) {
    lh_unet *m = ctx;
    if (p->ndim < 2) return;
    lh_dtype t = lh_wstore_type(&m->ws, *p->w);
    if (t != LH_DTYPE_F32 && p->numel > m->wide_max) m->wide_max = p->numel;
    if (m->weight_storage == LH_DTYPE_I64) m->weight_storage = t; /* the first one */
    else if (m->weight_storage != t) m->weight_storage = LH_DTYPE_F32; /* a mixture */
}

static lh_status load_from(lh_unet **out, lh_backend *be, const lh_unet_config *cfg,
                           const lh_wsource *src, const char *prefix, lh_error *err) {
    *out = NULL;
    /* cfg normally comes from lh_unet_config_parse; guard the array bounds anyway */
    int ok = cfg->n_blocks >= 1 && cfg->n_blocks <= LH_UNET_MAX_BLOCKS &&
             cfg->in_channels > 0 && cfg->out_channels > 0 && cfg->norm_num_groups > 0 &&
             cfg->cross_attention_dim > 0;
    for (int i = 0; ok && i < cfg->n_blocks; i++)
        ok = cfg->layers_per_block[i] >= 1 && cfg->layers_per_block[i] < LH_UNET_MAX_LAYERS &&
             cfg->block_out_channels[i] > 0 && cfg->heads[i] > 0;
    if (!ok)
        return lh_error_set(err, LH_ERR_INVALID, "%s: the U-Net config is not valid (use "
                            "lh_unet_config_parse)", src->name);
    lh_unet *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for the U-Net");
    m->cfg = *cfg;
    m->be = be;
    lh_wstore_init(&m->ws, be);
    /* on a device, matrices a file holds in F16/BF16 stay so: half the
     * memory, no float32 copy (widened op by op; host/unet_blocks.c) */
    m->ws.hold_half = !lh_backend_host_memory(be) && be->ops->cast;
    loader l = {.ws = &m->ws, .src = src, .file_prefix = prefix ? prefix : "", .err = err};
    lh_status st = load_all(m, &l);
    if (st != LH_OK) {
        lh_unet_free(m);
        return st;
    }
    m->weight_storage = LH_DTYPE_I64; /* none seen yet */
    lh__unet_params(m, scan_storage, m);
    if (m->weight_storage == LH_DTYPE_I64) m->weight_storage = LH_DTYPE_F32;
    if (!*l.file_prefix && l.n_loaded < src->count)
        lh_log(LH_LOG_WARN, "unet", "%s: %zu of %zu tensors are not part of the U-Net", src->name,
               src->count - l.n_loaded, src->count);
    *out = m;
    return LH_OK;
}

lh_status lh_unet_load_st(lh_unet **out, lh_backend *be, const lh_unet_config *cfg,
                         const lh_st_file *f, const char *prefix, lh_error *err) {
    lh_wsource src = lh_wsource_file(f);
    return load_from(out, be, cfg, &src, prefix, err);
}

lh_status lh_unet_load_src(lh_unet **out, lh_backend *be, const lh_unet_config *cfg,
                          const lh_wsource *src, lh_error *err) {
    lh_wsource s = *src;
    s.count = 0; /* a mapped source: unused tensors are the mapper's business */
    return load_from(out, be, cfg, &s, "", err);
}

lh_status lh_unet_load(lh_unet **out, lh_backend *be, const char *dir, lh_error *err) {
    *out = NULL;
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return lh_error_set(err, LH_ERR_INVALID, "U-Net directory path is too long: %.200s...",
                            dir);
    lh_unet_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    lh_status st = lh_unet_config_read(&cfg, path, err);
    if (st != LH_OK) return st;
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    lh_st_file *f = NULL;
    st = lh_st_open(&f, path, err);
    if (st != LH_OK) return st;
    st = lh_unet_load_st(out, be, &cfg, f, "", err);
    lh_st_close(f);
    return st;
}

const lh_unet_config *lh_unet_get_config(const lh_unet *m) { return &m->cfg; }

void lh_unet_free(lh_unet *m) {
    if (!m) return;
    lh_unet_release_workspace(m);
    lh_wstore_free(&m->ws);
    free(m);
}
