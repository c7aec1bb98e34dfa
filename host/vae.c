/* The SD VAE (diffusers' AutoencoderKL) on a compute backend: config.json
 * reading, weight loading by checkpoint key, the encoder and decoder forward
 * passes, posterior sampling and diffusers' tiled decoding. See vae.h. */
#include "vae.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_load.h"
#include "log.h"
#include "weights.h"

#define VAE_EPS 1e-6f          /* every GroupNorm of the VAE (resnet_eps) */
#define VAE_MAX_CHANNELS 65536 /* bounds that keep every size below 2^63 */
#define VAE_MAX_LAYERS 64
#define VAE_MAX_SIDE (1 << 20)
#define VAE_MAX_PIXELS ((int64_t)1 << 36) /* b * h * w */
#define VAE_LOGVAR_MIN -30.0f             /* DiagonalGaussianDistribution's clamp */
#define VAE_LOGVAR_MAX 20.0f

/* ---- Model ---- */

typedef struct vae_conv {
    float *w, *b; /* [c_out, c_in, k, k], [c_out] */
    int64_t c_in, c_out, k;
} vae_conv;

typedef struct vae_norm {
    float *w, *b; /* [c] */
} vae_norm;

typedef struct vae_resnet { /* ResnetBlock2D without time embedding */
    char name[96];
    int64_t c_in, c_out;
    vae_norm norm1, norm2;
    vae_conv conv1, conv2;
    vae_conv shortcut; /* 1x1, only when c_in != c_out */
} vae_resnet;

typedef struct vae_attn { /* single-head self-attention over pixels, group norm in front */
    char name[96];
    vae_norm group_norm;
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b; /* [c, c], [c] */
} vae_attn;

typedef struct vae_mid { /* UNetMidBlock2D: resnet, (attention), resnet */
    vae_resnet res[2];
    vae_attn attn;
} vae_mid;

typedef struct vae_block { /* DownEncoderBlock2D or UpDecoderBlock2D */
    char name[96];
    vae_resnet *res;
    int n_res;
    vae_conv sampler; /* downsamplers.0.conv / upsamplers.0.conv; w NULL in the last block */
} vae_block;

struct lh_vae {
    lh_vae_config cfg;
    lh_backend *be;
    lh_wstore ws; /* owns every backend weight */
    vae_conv enc_conv_in, enc_conv_out, quant_conv;
    vae_block down[LH_VAE_MAX_BLOCKS];
    vae_mid enc_mid;
    vae_norm enc_norm_out;
    vae_conv post_quant_conv, dec_conv_in, dec_conv_out;
    vae_mid dec_mid;
    vae_block up[LH_VAE_MAX_BLOCKS];
    vae_norm dec_norm_out;
    int64_t tile_sample, tile_latent; /* diffusers' tile_sample_min_size, tile_latent_min_size */
    lh_dtype act;     /* activation precision of encode and decode (lh_vae_set_precision) */
    lh_dtype weights; /* F32 as loaded, or the half type set_precision rounded them to */
    double tile_overlap;              /* tile_overlap_factor */
    /* On a device, an F16/BF16 file's convolution weights are held in that
     * type from loading on, and a backend that convolves half weights
     * (conv2d_hw) holds them in the half activation type (hold_convs); one
     * that must be widened goes to `wide` (float32, wide_max values, the
     * largest convolution; allocated on first need). */
    float *wide;
    size_t wide_max;
};

/* ---- config.json ---- */

static const lh_vae_config VAE_DEFAULTS = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 4,
    .n_blocks = 1,
    .block_out_channels = {64},
    .layers_per_block = 1,
    .norm_num_groups = 32,
    .sample_size = 32,
    .scaling_factor = 0.18215f,
    .mid_block_add_attention = 1,
};

/* Integer fields: the key, where it goes, and the accepted range. */
static const struct {
    const char *key;
    size_t offset;
    int64_t lo, hi;
} VAE_INT_FIELDS[] = {
    {"in_channels", offsetof(lh_vae_config, in_channels), 1, VAE_MAX_CHANNELS},
    {"out_channels", offsetof(lh_vae_config, out_channels), 1, VAE_MAX_CHANNELS},
    {"latent_channels", offsetof(lh_vae_config, latent_channels), 1, VAE_MAX_CHANNELS},
    {"layers_per_block", offsetof(lh_vae_config, layers_per_block), 1, VAE_MAX_LAYERS},
    {"norm_num_groups", offsetof(lh_vae_config, norm_num_groups), 1, VAE_MAX_CHANNELS},
};

/* Fields that must be absent or null: options of other autoencoders. */
static const char *const VAE_NULL_FIELDS[] = {"shift_factor", "latents_mean", "latents_std"};
/* Fields that must be absent or true. */
static const char *const VAE_TRUE_FIELDS[] = {"use_quant_conv", "use_post_quant_conv"};

/* What every config must satisfy, read from a file or given by a caller. */
static lh_status check_config(const lh_vae_config *c, const char *where, lh_error *err) {
    if (c->n_blocks < 1 || c->n_blocks > LH_VAE_MAX_BLOCKS)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: field 'block_out_channels' has %d entries; 1 to %d are supported",
                            where, c->n_blocks, LH_VAE_MAX_BLOCKS);
    const int64_t *ints[] = {&c->in_channels, &c->out_channels, &c->latent_channels,
                             &c->layers_per_block, &c->norm_num_groups};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        if (*ints[i] < VAE_INT_FIELDS[i].lo || *ints[i] > VAE_INT_FIELDS[i].hi)
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field '%s' is %lld; it must be in [%lld, %lld]", where,
                                VAE_INT_FIELDS[i].key, (long long)*ints[i],
                                (long long)VAE_INT_FIELDS[i].lo, (long long)VAE_INT_FIELDS[i].hi);
    for (int i = 0; i < c->n_blocks; i++) {
        int64_t ch = c->block_out_channels[i];
        if (ch < 1 || ch > VAE_MAX_CHANNELS)
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field 'block_out_channels[%d]' is %lld; it must be in [1, %d]",
                                where, i, (long long)ch, VAE_MAX_CHANNELS);
        if (ch % c->norm_num_groups != 0)
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field 'norm_num_groups' (%lld) does not divide "
                                "block_out_channels[%d] (%lld)",
                                where, (long long)c->norm_num_groups, i, (long long)ch);
    }
    if (c->sample_size < 1 || c->sample_size > VAE_MAX_SIDE)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: field 'sample_size' is %lld; it must be in [1, %d]", where,
                            (long long)c->sample_size, VAE_MAX_SIDE);
    if (!isfinite(c->scaling_factor) || c->scaling_factor <= 0.0f)
        return lh_error_set(err, LH_ERR_CONFIG, "%s: field 'scaling_factor' is %g; it must be > 0",
                            where, (double)c->scaling_factor);
    return LH_OK;
}

/* A JSON value for messages: strings quoted, other types by name. */
static void json_text(char *out, size_t size, const json_t *v) {
    if (json_is_string(v)) snprintf(out, size, "\"%s\"", json_string_value(v));
    else if (json_is_integer(v)) snprintf(out, size, "%lld", (long long)json_integer_value(v));
    else if (json_is_number(v)) snprintf(out, size, "%g", json_number_value(v));
    else if (json_is_boolean(v)) snprintf(out, size, "%s", json_is_true(v) ? "true" : "false");
    else if (json_is_null(v)) snprintf(out, size, "null");
    else snprintf(out, size, "%s", json_is_array(v) ? "an array" : "an object");
}

/* Every entry of array field `key` must be the string `want`;
 * the array must have n entries. Absent: diffusers' default, one entry. */
static lh_status block_types(const json_t *root, const char *key, const char *want, int n,
                             const char *path, lh_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v) {
        if (n != 1)
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field '%s' is missing (default: one block) but "
                                "block_out_channels has %d entries",
                                path, key, n);
        return LH_OK;
    }
    if (!json_is_array(v))
        return lh_error_set(err, LH_ERR_CONFIG, "%s: field '%s' must be an array of strings", path,
                            key);
    if ((int)json_array_size(v) != n)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: field '%s' has %zu entries but block_out_channels has %d", path,
                            key, json_array_size(v), n);
    for (int i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_string(e) || strcmp(json_string_value(e), want) != 0) {
            char got[128];
            json_text(got, sizeof got, e);
            return lh_error_set(err, json_is_string(e) ? LH_ERR_UNSUPPORTED : LH_ERR_CONFIG,
                                "%s: field '%s[%d]' is %s; only \"%s\" is supported", path, key, i,
                                got, want);
        }
    }
    return LH_OK;
}

static lh_status parse_config(lh_vae_config *cfg, const json_t *root, const char *path,
                              lh_error *err) {
    char got[128];
    const json_t *v = json_object_get(root, "_class_name");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "AutoencoderKL") != 0)) {
        json_text(got, sizeof got, v);
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: field '_class_name' is %s; only \"AutoencoderKL\" is supported",
                            path, got);
    }
    for (size_t i = 0; i < sizeof VAE_INT_FIELDS / sizeof *VAE_INT_FIELDS; i++) {
        v = json_object_get(root, VAE_INT_FIELDS[i].key);
        if (!v) continue;
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : 0;
        if (!json_is_integer(v) || x < VAE_INT_FIELDS[i].lo || x > VAE_INT_FIELDS[i].hi) {
            json_text(got, sizeof got, v);
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field '%s' is %s; it must be an integer in [%lld, %lld]", path,
                                VAE_INT_FIELDS[i].key, got, (long long)VAE_INT_FIELDS[i].lo,
                                (long long)VAE_INT_FIELDS[i].hi);
        }
        *(int64_t *)((char *)cfg + VAE_INT_FIELDS[i].offset) = (int64_t)x;
    }
    v = json_object_get(root, "block_out_channels");
    if (v) {
        if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > LH_VAE_MAX_BLOCKS)
            return lh_error_set(
                err, LH_ERR_CONFIG,
                "%s: field 'block_out_channels' must be an array of 1 to %d integers", path,
                LH_VAE_MAX_BLOCKS);
        cfg->n_blocks = (int)json_array_size(v);
        for (int i = 0; i < cfg->n_blocks; i++) {
            const json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_integer(e)) {
                json_text(got, sizeof got, e);
                return lh_error_set(
                    err, LH_ERR_CONFIG,
                    "%s: field 'block_out_channels[%d]' is %s; it must be an integer", path, i,
                    got);
            }
            cfg->block_out_channels[i] = (int64_t)json_integer_value(e);
        }
    }
    lh_status st =
        block_types(root, "down_block_types", "DownEncoderBlock2D", cfg->n_blocks, path, err);
    if (st == LH_OK)
        st = block_types(root, "up_block_types", "UpDecoderBlock2D", cfg->n_blocks, path, err);
    if (st != LH_OK) return st;
    v = json_object_get(root, "act_fn");
    if (v && (!json_is_string(v) || (strcmp(json_string_value(v), "silu") != 0 &&
                                     strcmp(json_string_value(v), "swish") != 0))) {
        json_text(got, sizeof got, v);
        return lh_error_set(err, json_is_string(v) ? LH_ERR_UNSUPPORTED : LH_ERR_CONFIG,
                            "%s: field 'act_fn' is %s; only \"silu\" is supported", path, got);
    }
    v = json_object_get(root, "sample_size");
    if (v && json_is_array(v) && json_array_size(v) > 0) v = json_array_get(v, 0);
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > VAE_MAX_SIDE) {
            json_text(got, sizeof got, v);
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field 'sample_size' is %s; it must be an integer in [1, %d]",
                                path, got, VAE_MAX_SIDE);
        }
        cfg->sample_size = (int64_t)json_integer_value(v);
    }
    v = json_object_get(root, "scaling_factor");
    if (v) {
        double x = json_is_number(v) ? json_number_value(v) : -1.0;
        if (!json_is_number(v) || !(x > 0.0) || x > 1e30) {
            json_text(got, sizeof got, v);
            return lh_error_set(err, LH_ERR_CONFIG,
                                "%s: field 'scaling_factor' is %s; it must be a number > 0", path,
                                got);
        }
        cfg->scaling_factor = (float)x;
    }
    v = json_object_get(root, "mid_block_add_attention");
    if (v) {
        if (!json_is_boolean(v)) {
            json_text(got, sizeof got, v);
            return lh_error_set(
                err, LH_ERR_CONFIG,
                "%s: field 'mid_block_add_attention' is %s; it must be true or false", path, got);
        }
        cfg->mid_block_add_attention = json_is_true(v);
    }
    for (size_t i = 0; i < sizeof VAE_NULL_FIELDS / sizeof *VAE_NULL_FIELDS; i++) {
        v = json_object_get(root, VAE_NULL_FIELDS[i]);
        if (v && !json_is_null(v)) {
            json_text(got, sizeof got, v);
            return lh_error_set(err, LH_ERR_UNSUPPORTED,
                                "%s: field '%s' is %s; only null is supported (SD 1.x/2.x/XL VAEs)",
                                path, VAE_NULL_FIELDS[i], got);
        }
    }
    for (size_t i = 0; i < sizeof VAE_TRUE_FIELDS / sizeof *VAE_TRUE_FIELDS; i++) {
        v = json_object_get(root, VAE_TRUE_FIELDS[i]);
        if (v && !json_is_true(v)) {
            json_text(got, sizeof got, v);
            return lh_error_set(err, json_is_false(v) ? LH_ERR_UNSUPPORTED : LH_ERR_CONFIG,
                                "%s: field '%s' is %s; only true is supported", path,
                                VAE_TRUE_FIELDS[i], got);
        }
    }
    return check_config(cfg, path, err);
}

lh_status lh_vae_config_read(lh_vae_config *cfg, const char *path, lh_error *err) {
    *cfg = VAE_DEFAULTS;
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f) return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: cannot open the VAE config", path);
        fclose(f);
        return lh_error_set(err, LH_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, je.line,
                            je.text);
    }
    lh_status st = json_is_object(root)
                       ? parse_config(cfg, root, path, err)
                       : lh_error_set(err, LH_ERR_FORMAT, "%s: not a JSON object", path);
    json_decref(root);
    return st;
}

/* ---- Loading ---- */

typedef struct loader {
    lh_vae *m;
    const lh_wsource *src;
    const char *prefix;
    lh_error *err;
    int hold_convs; /* a device: F16/BF16 convolution weights stay as the file holds them */
} loader;

/* Load `<prefix><path>.<leaf>` with the given shape. */
static lh_status load(loader *L, float **out, const char *path, const char *leaf, int ndim,
                      const int64_t *shape) {
    char key[512];
    int n = snprintf(key, sizeof key, "%s%s.%s", L->prefix, path, leaf);
    if (n < 0 || (size_t)n >= sizeof key)
        return lh_error_set(L->err, LH_ERR_INVALID, "%s: tensor key prefix too long",
                            L->src->name);
    return lh_wstore_load_src(out, &L->m->ws, L->src, key, ndim, shape, L->err);
}

static lh_status load_conv(loader *L, vae_conv *c, const char *path, int64_t c_in, int64_t c_out,
                           int64_t k) {
    c->c_in = c_in;
    c->c_out = c_out;
    c->k = k;
    L->m->ws.hold_half = L->hold_convs; /* not the attention's linear weights */
    lh_status st = load(L, &c->w, path, "weight", 4, (const int64_t[]){c_out, c_in, k, k});
    L->m->ws.hold_half = 0;
    if (st == LH_OK) st = load(L, &c->b, path, "bias", 1, (const int64_t[]){c_out});
    return st;
}

static lh_status load_norm(loader *L, vae_norm *nm, const char *path, int64_t c) {
    lh_status st = load(L, &nm->w, path, "weight", 1, (const int64_t[]){c});
    if (st == LH_OK) st = load(L, &nm->b, path, "bias", 1, (const int64_t[]){c});
    return st;
}

static lh_status load_resnet(loader *L, vae_resnet *r, const char *path, int64_t c_in,
                             int64_t c_out) {
    char sub[160];
    snprintf(r->name, sizeof r->name, "%s", path);
    r->c_in = c_in;
    r->c_out = c_out;
    lh_status st;
    snprintf(sub, sizeof sub, "%s.norm1", path);
    if ((st = load_norm(L, &r->norm1, sub, c_in)) != LH_OK) return st;
    snprintf(sub, sizeof sub, "%s.conv1", path);
    if ((st = load_conv(L, &r->conv1, sub, c_in, c_out, 3)) != LH_OK) return st;
    snprintf(sub, sizeof sub, "%s.norm2", path);
    if ((st = load_norm(L, &r->norm2, sub, c_out)) != LH_OK) return st;
    snprintf(sub, sizeof sub, "%s.conv2", path);
    if ((st = load_conv(L, &r->conv2, sub, c_out, c_out, 3)) != LH_OK) return st;
    if (c_in != c_out) {
        snprintf(sub, sizeof sub, "%s.conv_shortcut", path);
        if ((st = load_conv(L, &r->shortcut, sub, c_in, c_out, 1)) != LH_OK) return st;
    }
    return LH_OK;
}

/* The attention projections under their current names and the names
 * diffusers wrote before 0.14 (it renames them on load). */
static const struct {
    const char *name, *deprecated;
    size_t w, b; /* offsets of the weight and bias pointers in vae_attn */
} VAE_ATTN_PROJ[] = {
    {"to_q", "query", offsetof(vae_attn, q_w), offsetof(vae_attn, q_b)},
    {"to_k", "key", offsetof(vae_attn, k_w), offsetof(vae_attn, k_b)},
    {"to_v", "value", offsetof(vae_attn, v_w), offsetof(vae_attn, v_b)},
    {"to_out.0", "proj_attn", offsetof(vae_attn, o_w), offsetof(vae_attn, o_b)},
};

static lh_status load_attn(loader *L, vae_attn *a, const char *path, int64_t c) {
    char sub[160], key[512];
    snprintf(a->name, sizeof a->name, "%s", path);
    snprintf(sub, sizeof sub, "%s.group_norm", path);
    lh_status st = load_norm(L, &a->group_norm, sub, c);
    for (size_t i = 0; st == LH_OK && i < sizeof VAE_ATTN_PROJ / sizeof *VAE_ATTN_PROJ; i++) {
        const char *name = VAE_ATTN_PROJ[i].name;
        snprintf(key, sizeof key, "%s%s.%s.weight", L->prefix, path, name);
        if (!lh_wsource_find(L->src, key)) {
            snprintf(key, sizeof key, "%s%s.%s.weight", L->prefix, path,
                     VAE_ATTN_PROJ[i].deprecated);
            if (lh_wsource_find(L->src, key)) name = VAE_ATTN_PROJ[i].deprecated;
        }
        /* A linear layer, stored as [c, c] or, from converted LDM files, as a
         * 1x1 convolution [c, c, 1, 1]: the same numbers. */
        snprintf(key, sizeof key, "%s%s.%s.weight", L->prefix, path, name);
        const lh_st_tensor *t = lh_wsource_find(L->src, key);
        int ndim = t && t->ndim == 4 ? 4 : 2;
        snprintf(sub, sizeof sub, "%s.%s", path, name);
        st = load(L, (float **)((char *)a + VAE_ATTN_PROJ[i].w), sub, "weight", ndim,
                  (const int64_t[]){c, c, 1, 1});
        if (st == LH_OK)
            st = load(L, (float **)((char *)a + VAE_ATTN_PROJ[i].b), sub, "bias", 1,
                      (const int64_t[]){c});
    }
    return st;
}

static lh_status load_mid(loader *L, vae_mid *mid, const char *path, int64_t c) {
    char sub[160];
    snprintf(sub, sizeof sub, "%s.resnets.0", path);
    lh_status st = load_resnet(L, &mid->res[0], sub, c, c);
    if (st == LH_OK && L->m->cfg.mid_block_add_attention) {
        snprintf(sub, sizeof sub, "%s.attentions.0", path);
        st = load_attn(L, &mid->attn, sub, c);
    }
    if (st == LH_OK) {
        snprintf(sub, sizeof sub, "%s.resnets.1", path);
        st = load_resnet(L, &mid->res[1], sub, c, c);
    }
    return st;
}

/* A down block (n_res resnets, "downsamplers") or up block ("upsamplers"). */
static lh_status load_block(loader *L, vae_block *blk, const char *path, int n_res, int64_t c_in,
                            int64_t c_out, const char *sampler) {
    char sub[160];
    snprintf(blk->name, sizeof blk->name, "%s", path);
    blk->res = calloc((size_t)n_res, sizeof *blk->res);
    if (!blk->res) return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading %s", path);
    blk->n_res = n_res;
    for (int r = 0; r < n_res; r++) {
        snprintf(sub, sizeof sub, "%s.resnets.%d", path, r);
        lh_status st = load_resnet(L, &blk->res[r], sub, r == 0 ? c_in : c_out, c_out);
        if (st != LH_OK) return st;
    }
    if (sampler) {
        snprintf(sub, sizeof sub, "%s.%s.0.conv", path, sampler);
        return load_conv(L, &blk->sampler, sub, c_out, c_out, 3);
    }
    return LH_OK;
}

static lh_status load_all(loader *L) {
    const lh_vae_config *c = &L->m->cfg;
    const int nb = c->n_blocks;
    const int64_t *ch = c->block_out_channels, c_last = ch[nb - 1], lc = c->latent_channels;
    const int layers = (int)c->layers_per_block;
    char path[96];
    lh_status st = load_conv(L, &L->m->enc_conv_in, "encoder.conv_in", c->in_channels, ch[0], 3);
    for (int i = 0; st == LH_OK && i < nb; i++) {
        snprintf(path, sizeof path, "encoder.down_blocks.%d", i);
        st = load_block(L, &L->m->down[i], path, layers, i == 0 ? ch[0] : ch[i - 1], ch[i],
                        i < nb - 1 ? "downsamplers" : NULL);
    }
    if (st == LH_OK) st = load_mid(L, &L->m->enc_mid, "encoder.mid_block", c_last);
    if (st == LH_OK) st = load_norm(L, &L->m->enc_norm_out, "encoder.conv_norm_out", c_last);
    if (st == LH_OK) st = load_conv(L, &L->m->enc_conv_out, "encoder.conv_out", c_last, 2 * lc, 3);
    if (st == LH_OK) st = load_conv(L, &L->m->quant_conv, "quant_conv", 2 * lc, 2 * lc, 1);
    if (st == LH_OK) st = load_conv(L, &L->m->post_quant_conv, "post_quant_conv", lc, lc, 1);
    if (st == LH_OK) st = load_conv(L, &L->m->dec_conv_in, "decoder.conv_in", lc, c_last, 3);
    if (st == LH_OK) st = load_mid(L, &L->m->dec_mid, "decoder.mid_block", c_last);
    for (int i = 0; st == LH_OK && i < nb; i++) {
        /* Up block i runs at the channels of down block nb - 1 - i. */
        int64_t c_in = ch[nb - 1 - (i == 0 ? 0 : i - 1)], c_out = ch[nb - 1 - i];
        snprintf(path, sizeof path, "decoder.up_blocks.%d", i);
        st = load_block(L, &L->m->up[i], path, layers + 1, c_in, c_out,
                        i < nb - 1 ? "upsamplers" : NULL);
    }
    if (st == LH_OK) st = load_norm(L, &L->m->dec_norm_out, "decoder.conv_norm_out", ch[0]);
    if (st == LH_OK)
        st = load_conv(L, &L->m->dec_conv_out, "decoder.conv_out", ch[0], c->out_channels, 3);
    return st;
}

static lh_status load_from(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                           const lh_wsource *src, const char *prefix, lh_error *err);

lh_status lh_vae_load_st(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                         const lh_st_file *f, const char *prefix, lh_error *err) {
    lh_wsource src = lh_wsource_file(f);
    return load_from(out, be, cfg, &src, prefix, err);
}

lh_status lh_vae_load_src(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                          const lh_wsource *src, lh_error *err) {
    return load_from(out, be, cfg, src, "", err);
}

static lh_status each_conv(lh_vae *m, lh_status (*fn)(lh_vae *m, vae_conv *c, void *ctx),
                           void *ctx);
static lh_status size_one(lh_vae *m, vae_conv *c, void *ctx);

static lh_status load_from(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                           const lh_wsource *src, const char *prefix, lh_error *err) {
    *out = NULL;
    lh_status st = check_config(cfg, src->name, err);
    if (st != LH_OK) return st;
    lh_vae *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory loading the VAE");
    m->cfg = *cfg;
    m->be = be;
    lh_wstore_init(&m->ws, be);
    loader L = {m, src, prefix ? prefix : "", err, !lh_backend_host_memory(be) && be->ops->cast};
    st = load_all(&L);
    /* half-held convolution weights are widened before float32 convolutions
     * (conv()): the buffer covers the largest */
    if (st == LH_OK && L.hold_convs) each_conv(m, size_one, NULL);
    /* diffusers' tiling defaults: tile_sample_min_size = sample_size (whole
     * latents, at least two so the 0.25 overlap leaves a stride), overlap 0.25. */
    const int64_t ds = lh_vae_downscale(m), tile = cfg->sample_size / ds * ds;
    if (st == LH_OK) st = lh_vae_set_tiling(m, tile > 2 * ds ? tile : 2 * ds, 0.25, err);
    if (st != LH_OK) {
        lh_vae_free(m);
        return st;
    }
    *out = m;
    return LH_OK;
}

lh_status lh_vae_load(lh_vae **out, lh_backend *be, const char *component_dir, lh_error *err) {
    *out = NULL;
    char path[4096];
    lh_vae_config cfg;
    snprintf(path, sizeof path, "%s/config.json", component_dir);
    lh_status st = lh_vae_config_read(&cfg, path, err);
    if (st != LH_OK) return st;
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", component_dir);
    lh_st_file *f = NULL;
    st = lh_st_open(&f, path, err);
    if (st != LH_OK) return st;
    st = lh_vae_load_st(out, be, &cfg, f, "", err);
    lh_st_close(f);
    return st;
}

void lh_vae_free(lh_vae *m) {
    if (!m) return;
    for (int i = 0; i < LH_VAE_MAX_BLOCKS; i++) {
        free(m->down[i].res);
        free(m->up[i].res);
    }
    lh_wstore_free(&m->ws);
    free(m);
}

const lh_vae_config *lh_vae_get_config(const lh_vae *m) { return &m->cfg; }

float lh_vae_scaling_factor(const lh_vae *m) { return m->cfg.scaling_factor; }

int64_t lh_vae_downscale(const lh_vae *m) { return (int64_t)1 << (m->cfg.n_blocks - 1); }

/* fn on every convolution the model has loaded (w NULL: none, skipped). */
static lh_status each_conv(lh_vae *m, lh_status (*fn)(lh_vae *m, vae_conv *c, void *ctx),
                           void *ctx) {
    vae_conv *one[] = {&m->enc_conv_in, &m->enc_conv_out, &m->quant_conv,
                       &m->post_quant_conv, &m->dec_conv_in, &m->dec_conv_out};
    lh_status st = LH_OK;
    for (size_t i = 0; st == LH_OK && i < sizeof one / sizeof one[0]; i++)
        if (one[i]->w) st = fn(m, one[i], ctx);
    vae_mid *mids[] = {&m->enc_mid, &m->dec_mid};
    for (int i = 0; st == LH_OK && i < 2; i++)
        for (int j = 0; st == LH_OK && j < 2; j++) {
            vae_conv *rc[] = {&mids[i]->res[j].conv1, &mids[i]->res[j].conv2,
                              &mids[i]->res[j].shortcut};
            for (int k = 0; st == LH_OK && k < 3; k++)
                if (rc[k]->w) st = fn(m, rc[k], ctx);
        }
    for (int i = 0; st == LH_OK && i < m->cfg.n_blocks; i++) {
        vae_block *bl[] = {&m->down[i], &m->up[i]};
        for (int j = 0; st == LH_OK && j < 2; j++) {
            for (int r = 0; st == LH_OK && bl[j]->res && r < bl[j]->n_res; r++) {
                vae_conv *rc[] = {&bl[j]->res[r].conv1, &bl[j]->res[r].conv2,
                                  &bl[j]->res[r].shortcut};
                for (int k = 0; st == LH_OK && k < 3; k++)
                    if (rc[k]->w) st = fn(m, rc[k], ctx);
            }
            if (st == LH_OK && bl[j]->sampler.w) st = fn(m, &bl[j]->sampler, ctx);
        }
    }
    return st;
}

static size_t conv_numel(const vae_conv *c) {
    return (size_t)c->c_out * (size_t)c->c_in * (size_t)c->k * (size_t)c->k;
}

/* wide_max = the largest convolution weight (ctx unused). */
static lh_status size_one(lh_vae *m, vae_conv *c, void *ctx) {
    (void)ctx;
    if (conv_numel(c) > m->wide_max) m->wide_max = conv_numel(c);
    return LH_OK;
}

/* Hold one convolution's weight in *(lh_dtype *)ctx. */
static lh_status hold_one(lh_vae *m, vae_conv *c, void *ctx) {
    lh_error e = {0};
    return lh_wstore_retype(&m->ws, &c->w, conv_numel(c), *(const lh_dtype *)ctx, &e);
}

/* The convolution weights held in the half type t on a backend with
 * conv2d_hw: half the memory, convolved as they are. wide_max (the
 * widening buffer's size) covers every convolution first, so a failure
 * part way leaves a mixture that conv() handles weight by weight. */
static lh_status hold_convs(lh_vae *m, lh_dtype t, lh_error *err) {
    each_conv(m, size_one, NULL);
    lh_status st = each_conv(m, hold_one, &t);
    if (st != LH_OK)
        return lh_error_set(err, st, "VAE precision: holding the convolution weights in %s "
                            "failed (%s)", lh_dtype_name(t), lh_strerror(st));
    return LH_OK;
}

lh_status lh_vae_set_precision(lh_vae *m, lh_dtype act, lh_error *err) {
    if (!m) return lh_error_set(err, LH_ERR_INVALID, "VAE precision: NULL model");
    if (act != LH_DTYPE_F32 && act != LH_DTYPE_F16 && act != LH_DTYPE_BF16)
        return lh_error_set(err, LH_ERR_INVALID, "VAE precision: %s is not F32, F16 or BF16",
                            lh_dtype_name(act));
    const lh_backend_ops *ops = m->be->ops;
    if (act != LH_DTYPE_F32 && (!ops->set_precision || !ops->round))
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "VAE precision: the %s backend has no "
                            "half precision", ops->name);
    if (act != LH_DTYPE_F32 && m->weights != LH_DTYPE_F32 && m->weights != act)
        return lh_error_set(err, LH_ERR_INVALID, "VAE precision: the weights are already "
                            "rounded to %s", lh_dtype_name(m->weights));
    if (act != LH_DTYPE_F32 && m->weights != act) { /* once, as diffusers' vae.to(dtype) */
        lh_status st = lh_wstore_round(&m->ws, act, err);
        if (st != LH_OK) return st;
        m->weights = act;
    }
    /* a device that convolves half weights holds them so; float32
     * activations (the overflow retry) widen them op by op (the same
     * values; no new allocation when memory may be short) */
    if (act != LH_DTYPE_F32 && ops->conv2d_hw && ops->cast) {
        lh_status st = hold_convs(m, act, err);
        if (st != LH_OK) return st;
    }
    m->act = act;
    return LH_OK;
}

lh_dtype lh_vae_precision(const lh_vae *m) { return m ? m->act : LH_DTYPE_F32; }

size_t lh_vae_weight_bytes(const lh_vae *m) { return m ? m->ws.bytes : 0; }

lh_status lh_vae_set_tiling(lh_vae *m, int64_t tile_sample_size, double overlap_factor,
                            lh_error *err) {
    int64_t ds = lh_vae_downscale(m);
    if (tile_sample_size < ds || tile_sample_size > VAE_MAX_SIDE || tile_sample_size % ds != 0)
        return lh_error_set(
            err, LH_ERR_INVALID,
            "VAE tiling: tile size %lld must be a positive multiple of %lld (at most %d)",
            (long long)tile_sample_size, (long long)ds, VAE_MAX_SIDE);
    int64_t latent = tile_sample_size / ds;
    if (!(overlap_factor >= 0.0 && overlap_factor < 1.0) ||
        (int64_t)((double)latent * (1.0 - overlap_factor)) < 1)
        return lh_error_set(
            err, LH_ERR_INVALID,
            "VAE tiling: overlap factor %g with %lld-latent tiles leaves no stride; "
            "it must be in [0, 1)",
            overlap_factor, (long long)latent);
    m->tile_sample = tile_sample_size;
    m->tile_latent = latent;
    m->tile_overlap = overlap_factor;
    return LH_OK;
}

/* ---- Workspace ----
 * One backend allocation per forward, sized from the input shape up front:
 * three rotating activation buffers as large as the largest activation
 * (padded copies included), q/k/v/o for the mid-block attention, a zero
 * vector for padding, and the model's own input/output slots. */

typedef struct vae_plan {
    size_t act;   /* floats per activation buffer */
    size_t attn;  /* floats per attention buffer */
    size_t zeros; /* floats of zeros for the encoder's asymmetric padding */
    size_t io[2]; /* floats of extra slots (moments; tile in / tile out) */
} vae_plan;

typedef struct vae_fwd {
    lh_vae *m;
    lh_backend *be;
    lh_error *err;
    vae_plan plan;
    float *base;          /* the one allocation */
    float *buf[3];        /* [plan.act] each; buf[0] holds the current activation */
    float *q, *k, *v, *o; /* [plan.attn] each */
    float *zeros;         /* [plan.zeros] */
    float *io[2];         /* [plan.io[i]] */
} vae_fwd;

static size_t umax(size_t a, size_t b) { return a > b ? a : b; }

/* Sizes are bounded (check_config, check_dims) so these products fit. */
static size_t nel(int64_t b, int64_t c, int64_t h, int64_t w) {
    return (size_t)b * (size_t)c * (size_t)h * (size_t)w;
}

static void plan_mid(vae_plan *p, const lh_vae_config *c, int64_t b, int64_t h, int64_t w) {
    int64_t c_last = c->block_out_channels[c->n_blocks - 1];
    p->act = umax(p->act, nel(b, c_last, h, w));
    if (c->mid_block_add_attention) p->attn = umax(p->attn, nel(b, c_last, h, w));
}

static vae_plan plan_encode(const lh_vae_config *c, int64_t b, int64_t h, int64_t w) {
    vae_plan p = {0};
    const int64_t *ch = c->block_out_channels;
    p.act = nel(b, ch[0], h, w);
    for (int i = 0; i < c->n_blocks; i++) {
        int64_t c_in = i == 0 ? ch[0] : ch[i - 1];
        p.act = umax(p.act, nel(b, c_in > ch[i] ? c_in : ch[i], h, w));
        if (i < c->n_blocks - 1) {
            p.act = umax(p.act, nel(b, ch[i], h + 1, w + 1));
            p.zeros = umax(p.zeros, nel(b, ch[i], 1, h > w + 1 ? h : w + 1));
            h /= 2;
            w /= 2;
        }
    }
    plan_mid(&p, c, b, h, w);
    p.act = umax(p.act, nel(b, 2 * c->latent_channels, h, w));
    p.io[0] = nel(b, 2 * c->latent_channels, h, w); /* moments */
    return p;
}

static vae_plan plan_decode(const lh_vae_config *c, int64_t b, int64_t h, int64_t w) {
    vae_plan p = {0};
    const int nb = c->n_blocks;
    const int64_t *ch = c->block_out_channels;
    p.act = nel(b, c->latent_channels, h, w);
    plan_mid(&p, c, b, h, w);
    for (int i = 0; i < nb; i++) {
        int64_t c_in = ch[nb - 1 - (i == 0 ? 0 : i - 1)], c_out = ch[nb - 1 - i];
        p.act = umax(p.act, nel(b, c_in > c_out ? c_in : c_out, h, w));
        if (i < nb - 1) {
            h *= 2;
            w *= 2;
            p.act = umax(p.act, nel(b, c_out, h, w));
        }
    }
    return p;
}

/* Regions start on 256-byte boundaries (vector loads, cuBLAS/cuDNN alignment). */
static size_t aligned(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t plan_floats(const vae_plan *p) {
    return 3 * aligned(p->act) + 4 * aligned(p->attn) + aligned(p->zeros) + aligned(p->io[0]) +
           aligned(p->io[1]);
}

static size_t plan_bytes(const vae_plan *p) { return plan_floats(p) * sizeof(float); }

static lh_status fwd_open(vae_fwd *F, lh_vae *m, const vae_plan *p, lh_error *err) {
    memset(F, 0, sizeof *F);
    F->m = m;
    F->be = m->be;
    F->err = err;
    F->plan = *p;
    F->base = m->be->ops->alloc(m->be, plan_bytes(p));
    if (!F->base)
        return lh_error_set(err, LH_ERR_NOMEM,
                            "VAE: out of backend memory for activations (%zu bytes)", plan_bytes(p));
    float *q = F->base;
    for (int i = 0; i < 3; i++, q += aligned(p->act)) F->buf[i] = q;
    float **attn[4] = {&F->q, &F->k, &F->v, &F->o};
    for (int i = 0; i < 4; i++, q += aligned(p->attn)) *attn[i] = q;
    F->zeros = q, q += aligned(p->zeros);
    F->io[0] = q, q += aligned(p->io[0]);
    F->io[1] = q;
    lh_status st =
        p->zeros ? m->be->ops->memset0(m->be, F->zeros, p->zeros * sizeof(float)) : LH_OK;
    if (st != LH_OK) {
        m->be->ops->free(m->be, F->base);
        F->base = NULL;
        return lh_error_set(err, st, "VAE: backend memset failed");
    }
    /* the ops until fwd_close write their activations in m->act */
    if (m->act != LH_DTYPE_F32 && (st = m->be->ops->set_precision(m->be, m->act)) != LH_OK) {
        m->be->ops->free(m->be, F->base);
        F->base = NULL;
        return lh_error_set(err, st, "VAE: set_precision failed");
    }
    return LH_OK;
}

static void fwd_close(vae_fwd *F) {
    if (F->base && F->m->act != LH_DTYPE_F32) F->be->ops->set_precision(F->be, LH_DTYPE_F32);
    if (F->base) F->be->ops->free(F->be, F->base);
    F->base = NULL;
}

/* ---- Layers ----
 * Each takes the current activation in F->buf[0] and leaves its output there. */

/* A failed backend op: name the layer. */
static lh_status fail(vae_fwd *F, lh_status st, const char *op, const char *layer) {
    return lh_error_set(F->err, st, "VAE: backend %s failed in %s (%s)", op, layer,
                        lh_strerror(st));
}

#define TRY(call, op, layer)                                                                       \
    do {                                                                                           \
        lh_status st_ = (call);                                                                    \
        if (st_ != LH_OK) return fail(F, st_, op, layer);                                          \
    } while (0)

/* Refuse to write past a buffer: a planning bug, never a user error. */
static lh_status fits(vae_fwd *F, size_t n, size_t cap, const char *layer) {
    if (n <= cap) return LH_OK;
    return lh_error_set(F->err, LH_ERR_INTERNAL, "VAE: %s needs %zu floats, workspace has %zu",
                        layer, n, cap);
}

static void swap(float **a, float **b) {
    float *t = *a;
    *a = *b;
    *b = t;
}

static lh_status conv(vae_fwd *F, float *out, const float *x, const vae_conv *c, int64_t b,
                      int64_t h, int64_t w, int stride, int pad, const char *layer) {
    lh_vae *m = F->m;
    const lh_backend_ops *ops = F->be->ops;
    const float *wt = c->w;
    lh_dtype t = m->wide_max ? lh_wstore_type(&m->ws, c->w) : LH_DTYPE_F32;
    if (t != LH_DTYPE_F32 && t == m->act && ops->conv2d_hw) { /* as held */
        lh_status st = ops->conv2d_hw(F->be, out, x, c->w, t, c->b, b, c->c_in, h, w, c->c_out,
                                      c->k, c->k, stride, pad);
        if (st != LH_ERR_UNSUPPORTED) {
            TRY(st, "conv2d_hw", layer);
            return LH_OK;
        }
    }
    if (t != LH_DTYPE_F32) { /* widened into m->wide for this one */
        if (conv_numel(c) > m->wide_max)
            return lh_error_set(F->err, LH_ERR_INTERNAL, "VAE: %s: a half weight larger than "
                                "the widening buffer", layer);
        if (!m->wide && lh_wstore_alloc(&m->wide, &m->ws, m->wide_max, F->err) != LH_OK)
            return LH_ERR_NOMEM;
        TRY(ops->cast(F->be, m->wide, LH_DTYPE_F32, c->w, t, (int64_t)conv_numel(c)),
            "cast", layer);
        wt = m->wide;
    }
    TRY(ops->conv2d(F->be, out, x, wt, c->b, b, c->c_in, h, w, c->c_out, c->k, c->k, stride,
                    pad),
        "conv2d", layer);
    return LH_OK;
}

/* ResnetBlock2D (temb None, output_scale_factor 1):
 * y = conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x). */
static lh_status resnet(vae_fwd *F, const vae_resnet *r, int64_t b, int64_t h, int64_t w) {
    const int64_t hw = h * w, g = F->m->cfg.norm_num_groups;
    lh_status st =
        fits(F, nel(b, r->c_in > r->c_out ? r->c_in : r->c_out, h, w), F->plan.act, r->name);
    if (st != LH_OK) return st;
    float *x = F->buf[0], *t = F->buf[1], *y = F->buf[2];
    const lh_backend_ops *ops = F->be->ops;
    TRY(ops->group_norm(F->be, t, x, r->norm1.w, r->norm1.b, b, r->c_in, hw, g, VAE_EPS, 1),
        "group_norm", r->name);
    if ((st = conv(F, y, t, &r->conv1, b, h, w, 1, 1, r->name)) != LH_OK) return st;
    TRY(ops->group_norm(F->be, t, y, r->norm2.w, r->norm2.b, b, r->c_out, hw, g, VAE_EPS, 1),
        "group_norm", r->name);
    if ((st = conv(F, y, t, &r->conv2, b, h, w, 1, 1, r->name)) != LH_OK) return st;
    if (r->shortcut.w) {
        if ((st = conv(F, t, x, &r->shortcut, b, h, w, 1, 0, r->name)) != LH_OK) return st;
        TRY(ops->add(F->be, y, t, y, nel(b, r->c_out, h, w)), "add", r->name);
    } else {
        TRY(ops->add(F->be, y, x, y, nel(b, r->c_out, h, w)), "add", r->name);
    }
    swap(&F->buf[0], &F->buf[2]);
    return LH_OK;
}

/* diffusers Attention with group norm, one head of all c channels, residual
 * connection and rescale_output_factor 1, over the h * w pixels. */
static lh_status attention(vae_fwd *F, const vae_attn *a, int64_t b, int64_t c, int64_t h,
                           int64_t w) {
    const int64_t hw = h * w;
    lh_status st = fits(F, nel(b, c, h, w), F->plan.attn, a->name);
    if (st != LH_OK) return st;
    float *x = F->buf[0], *t = F->buf[1], *u = F->buf[2];
    const lh_backend_ops *ops = F->be->ops;
    TRY(ops->group_norm(F->be, t, x, a->group_norm.w, a->group_norm.b, b, c, hw,
                        F->m->cfg.norm_num_groups, VAE_EPS, 0),
        "group_norm", a->name);
    TRY(ops->transpose_c_hw(F->be, u, t, b, c, hw), "transpose_c_hw", a->name); /* [b, hw, c] */
    TRY(ops->linear(F->be, F->q, u, a->q_w, a->q_b, b * hw, c, c), "linear", a->name);
    TRY(ops->linear(F->be, F->k, u, a->k_w, a->k_b, b * hw, c, c), "linear", a->name);
    TRY(ops->linear(F->be, F->v, u, a->v_w, a->v_b, b * hw, c, c), "linear", a->name);
    TRY(ops->attention(F->be, F->o, NULL, F->q, F->k, F->v, b, 1, hw, hw, c,
                       (float)(1.0 / sqrt((double)c)), 0),
        "attention", a->name);
    TRY(ops->linear(F->be, u, F->o, a->o_w, a->o_b, b * hw, c, c), "linear", a->name);
    TRY(ops->transpose_c_hw(F->be, t, u, b, hw, c), "transpose_c_hw", a->name); /* [b, c, hw] */
    TRY(ops->add(F->be, x, t, x, nel(b, c, h, w)), "add", a->name);
    return LH_OK;
}

static lh_status mid_block(vae_fwd *F, const vae_mid *mid, int64_t b, int64_t h, int64_t w) {
    const lh_vae_config *c = &F->m->cfg;
    lh_status st = resnet(F, &mid->res[0], b, h, w);
    if (st == LH_OK && c->mid_block_add_attention)
        st = attention(F, &mid->attn, b, c->block_out_channels[c->n_blocks - 1], h, w);
    if (st == LH_OK) st = resnet(F, &mid->res[1], b, h, w);
    return st;
}

/* Downsample2D with padding=0: zero-pad one column on the right and one row
 * at the bottom (F.pad(x, (0, 1, 0, 1))), then a 3x3 stride-2 convolution
 * without padding. The backend's convolution pads symmetrically, so the pad
 * is built from two channel concatenations with a zero vector:
 *   rows    [b*c*h, w]   ++ [b*c*h, 1]       -> [b*c*h, w + 1]
 *   planes  [b*c, h, w+1] ++ [b*c, 1, w + 1] -> [b*c, h + 1, w + 1]. */
static lh_status downsample(vae_fwd *F, const vae_block *blk, int64_t b, int64_t h, int64_t w) {
    const int64_t c = blk->sampler.c_in;
    lh_status st = fits(F, nel(b, c, h + 1, w + 1), F->plan.act, blk->name);
    if (st == LH_OK) st = fits(F, nel(b, c, 1, h > w + 1 ? h : w + 1), F->plan.zeros, blk->name);
    if (st != LH_OK) return st;
    float *x = F->buf[0], *t = F->buf[1], *u = F->buf[2];
    TRY(F->be->ops->concat_channels(F->be, t, x, F->zeros, b * c * h, w, 1, 1), "concat_channels",
        blk->name);
    TRY(F->be->ops->concat_channels(F->be, u, t, F->zeros, b * c, h, 1, w + 1), "concat_channels",
        blk->name);
    return conv(F, x, u, &blk->sampler, b, h + 1, w + 1, 2, 0, blk->name);
}

/* Upsample2D: nearest 2x, then a 3x3 convolution. */
static lh_status upsample(vae_fwd *F, const vae_block *blk, int64_t b, int64_t h, int64_t w) {
    const int64_t c = blk->sampler.c_in;
    lh_status st = fits(F, nel(b, c, 2 * h, 2 * w), F->plan.act, blk->name);
    if (st != LH_OK) return st;
    TRY(F->be->ops->upsample_nearest2x(F->be, F->buf[1], F->buf[0], b, c, h, w),
        "upsample_nearest2x", blk->name);
    return conv(F, F->buf[0], F->buf[1], &blk->sampler, b, 2 * h, 2 * w, 1, 1, blk->name);
}

/* ---- Encoder ---- */

/* image [b, in_channels, h, w] -> moments [b, 2 * latent_channels, h / ds, w / ds]
 * (quant_conv applied; mean channels first). */
static lh_status encoder(vae_fwd *F, float *moments, const float *image, int64_t b, int64_t h,
                         int64_t w) {
    lh_vae *m = F->m;
    const lh_vae_config *c = &m->cfg;
    const int64_t c_last = c->block_out_channels[c->n_blocks - 1];
    lh_status st = conv(F, F->buf[0], image, &m->enc_conv_in, b, h, w, 1, 1, "encoder.conv_in");
    for (int i = 0; st == LH_OK && i < c->n_blocks; i++) {
        const vae_block *blk = &m->down[i];
        for (int r = 0; st == LH_OK && r < blk->n_res; r++) st = resnet(F, &blk->res[r], b, h, w);
        if (st == LH_OK && blk->sampler.w) {
            st = downsample(F, blk, b, h, w);
            h /= 2;
            w /= 2;
        }
    }
    if (st == LH_OK) st = mid_block(F, &m->enc_mid, b, h, w);
    if (st != LH_OK) return st;
    TRY(F->be->ops->group_norm(F->be, F->buf[1], F->buf[0], m->enc_norm_out.w, m->enc_norm_out.b, b,
                               c_last, h * w, c->norm_num_groups, VAE_EPS, 1),
        "group_norm", "encoder.conv_norm_out");
    st = conv(F, F->buf[2], F->buf[1], &m->enc_conv_out, b, h, w, 1, 1, "encoder.conv_out");
    if (st == LH_OK) st = conv(F, moments, F->buf[2], &m->quant_conv, b, h, w, 1, 0, "quant_conv");
    return st;
}

/* Reject sizes outside what the plans were checked for. */
static lh_status check_dims(int64_t b, int64_t h, int64_t w, int64_t multiple, const char *what,
                            lh_error *err) {
    if (b < 1 || h < 1 || w < 1 || h > VAE_MAX_SIDE || w > VAE_MAX_SIDE || b > VAE_MAX_SIDE ||
        b * h > VAE_MAX_PIXELS / w)
        return lh_error_set(err, LH_ERR_INVALID, "VAE %s: size [%lld, %lld, %lld] is out of range",
                            what, (long long)b, (long long)h, (long long)w);
    if (h % multiple != 0 || w % multiple != 0)
        return lh_error_set(err, LH_ERR_INVALID,
                            "VAE %s: image height %lld and width %lld must be multiples of %lld",
                            what, (long long)h, (long long)w, (long long)multiple);
    return LH_OK;
}

size_t lh_vae_encode_workspace(const lh_vae *m, int64_t b, int64_t h, int64_t w) {
    if (check_dims(b, h, w, lh_vae_downscale(m), "encode", NULL) != LH_OK) return 0;
    vae_plan p = plan_encode(&m->cfg, b, h, w);
    return plan_bytes(&p);
}

lh_status lh_vae_encode(lh_vae *m, float *mean, float *logvar, const float *image, int64_t b,
                        int64_t h, int64_t w, lh_error *err) {
    const float *image_in = image;
    const int64_t ds = lh_vae_downscale(m), lc = m->cfg.latent_channels;
    lh_status st = check_dims(b, h, w, ds, "encode", err);
    if (st != LH_OK) return st;
    const int64_t hw = (h / ds) * (w / ds);
    vae_plan p = plan_encode(&m->cfg, b, h, w);
    vae_fwd F;
    if ((st = fwd_open(&F, m, &p, err)) != LH_OK) return st;
    float *host = malloc(p.io[0] * sizeof *host), *rounded = NULL;
    if (!host) st = lh_error_set(err, LH_ERR_NOMEM, "VAE encode: out of memory");
    /* in half precision the image too is an activation of that type */
    size_t n_img = (size_t)(b * m->cfg.in_channels * h * w);
    if (st == LH_OK && m->act != LH_DTYPE_F32) {
        const lh_backend_ops *ops = m->be->ops;
        if (!(rounded = ops->alloc(m->be, n_img * sizeof(float))))
            st = lh_error_set(err, LH_ERR_NOMEM, "VAE encode: out of backend memory");
        else if ((st = ops->copy(m->be, rounded, image, n_img * sizeof(float))) != LH_OK ||
                 (st = ops->round(m->be, rounded, (int64_t)n_img, m->act)) != LH_OK)
            lh_error_set(err, st, "VAE encode: rounding the image failed");
        image = rounded;
    }
    if (st == LH_OK) st = encoder(&F, F.io[0], image, b, h, w);
    /* DiagonalGaussianDistribution: split the moments, clamp logvar. Small
     * (latent-sized), so on the host; the backend has no clamp. */
    if (st == LH_OK) {
        st = m->be->ops->download(m->be, host, F.io[0], p.io[0] * sizeof *host);
        if (st != LH_OK) st = lh_error_set(err, st, "VAE encode: download failed");
    }
    int overflow = 0; /* an fp16 encoder past 65504: float32 from now on, as the decode */
    for (size_t i = 0; st == LH_OK && m->act == LH_DTYPE_F16 && i < p.io[0] && !overflow; i++)
        overflow = !isfinite(host[i]);
    if (overflow) {
        free(host);
        if (rounded) m->be->ops->free(m->be, rounded);
        fwd_close(&F);
        lh_log(LH_LOG_WARN, "vae", "the fp16 encode gave NaN/Inf; encoding again, and from now "
               "on, in float32 (set model.vae_dtype=f32 or bf16 to skip this)");
        m->act = LH_DTYPE_F32;
        return lh_vae_encode(m, mean, logvar, image_in, b, h, w, err);
    }
    const size_t half = (size_t)(lc * hw);
    for (int64_t n = 0; st == LH_OK && n < b; n++) {
        float *mo = host + (size_t)n * 2 * half;
        for (size_t i = 0; i < half; i++)
            mo[half + i] = fminf(fmaxf(mo[half + i], VAE_LOGVAR_MIN), VAE_LOGVAR_MAX);
        st = m->be->ops->upload(m->be, mean + (size_t)n * half, mo, half * sizeof *mo);
        if (st == LH_OK && logvar)
            st = m->be->ops->upload(m->be, logvar + (size_t)n * half, mo + half, half * sizeof *mo);
        if (st != LH_OK) st = lh_error_set(err, st, "VAE encode: upload failed");
    }
    free(host);
    if (rounded) m->be->ops->free(m->be, rounded);
    fwd_close(&F);
    return st;
}

lh_status lh_vae_sample_latents(lh_vae *m, float *latents, const float *mean, const float *logvar,
                                const float *noise, int64_t n, lh_error *err) {
    if (n < 1 || n > VAE_MAX_PIXELS || (noise && !logvar))
        return lh_error_set(err, LH_ERR_INVALID, "VAE sample: %s",
                            n < 1 || n > VAE_MAX_PIXELS ? "size out of range"
                                                        : "noise needs logvar");
    const int k = noise ? 3 : 1;
    float *host = malloc((size_t)n * (size_t)k * sizeof *host);
    if (!host) return lh_error_set(err, LH_ERR_NOMEM, "VAE sample: out of memory");
    const size_t bytes = (size_t)n * sizeof *host;
    float *mh = host, *lv = host + n, *nz = host + 2 * n;
    lh_backend *be = m->be;
    lh_status st = be->ops->download(be, mh, mean, bytes);
    if (st == LH_OK && noise) st = be->ops->download(be, lv, logvar, bytes);
    if (st == LH_OK && noise) st = be->ops->download(be, nz, noise, bytes);
    if (st == LH_OK) {
        const float sf = m->cfg.scaling_factor;
        for (int64_t i = 0; i < n; i++) {
            float x = mh[i];
            if (noise) {
                float std = expf(0.5f * lv[i]);
                float dev = std * nz[i];
                x = x + dev;
            }
            mh[i] = x * sf;
        }
        st = be->ops->upload(be, latents, mh, bytes);
    }
    free(host);
    return st == LH_OK ? LH_OK : lh_error_set(err, st, "VAE sample: backend copy failed");
}

/* ---- Decoder ---- */

/* latents [b, latent_channels, h, w] (diffusion space) -> image [b, out_channels, h*ds, w*ds]. */
static lh_status decoder(vae_fwd *F, float *image, const float *latents, int64_t b, int64_t h,
                         int64_t w) {
    lh_vae *m = F->m;
    const lh_vae_config *c = &m->cfg;
    const int64_t lc = c->latent_channels;
    const lh_backend_ops *ops = F->be->ops;
    /* z = latents / scaling_factor, as the pipelines do before vae.decode. */
    TRY(ops->axpby(F->be, F->buf[1], 1.0f / c->scaling_factor, latents, 0.0f, latents,
                   nel(b, lc, h, w)),
        "axpby", "1 / scaling_factor");
    lh_status st =
        conv(F, F->buf[2], F->buf[1], &m->post_quant_conv, b, h, w, 1, 0, "post_quant_conv");
    if (st == LH_OK)
        st = conv(F, F->buf[0], F->buf[2], &m->dec_conv_in, b, h, w, 1, 1, "decoder.conv_in");
    if (st == LH_OK) st = mid_block(F, &m->dec_mid, b, h, w);
    for (int i = 0; st == LH_OK && i < c->n_blocks; i++) {
        const vae_block *blk = &m->up[i];
        for (int r = 0; st == LH_OK && r < blk->n_res; r++) st = resnet(F, &blk->res[r], b, h, w);
        if (st == LH_OK && blk->sampler.w) {
            st = upsample(F, blk, b, h, w);
            h *= 2;
            w *= 2;
        }
    }
    if (st != LH_OK) return st;
    TRY(ops->group_norm(F->be, F->buf[1], F->buf[0], m->dec_norm_out.w, m->dec_norm_out.b, b,
                        c->block_out_channels[0], h * w, c->norm_num_groups, VAE_EPS, 1),
        "group_norm", "decoder.conv_norm_out");
    return conv(F, image, F->buf[1], &m->dec_conv_out, b, h, w, 1, 1, "decoder.conv_out");
}

/* ---- Tiled decoding (diffusers' AutoencoderKL.tiled_decode) ----
 * Latent tiles of tile_latent, stride overlap = int(tile_latent * (1 - f)),
 * are decoded one at a time on the backend; the decoded tiles (out_channels
 * only, so small) are blended and assembled on the host. Blending works in
 * place in raster order exactly as diffusers' does: a tile's top rows mix
 * with the bottom rows of the (already blended) tile above, then its left
 * columns with the right columns of the (already blended) tile to its left;
 * each tile keeps its first row_limit rows and columns. */

typedef struct vae_tiling {
    int64_t overlap;   /* latent stride between tiles */
    int64_t blend;     /* blend_extent, image pixels */
    int64_t row_limit; /* image pixels kept per tile */
} vae_tiling;

static vae_tiling tiling_of(const lh_vae *m) {
    vae_tiling t;
    t.overlap = (int64_t)((double)m->tile_latent * (1.0 - m->tile_overlap));
    t.blend = (int64_t)((double)m->tile_sample * m->tile_overlap);
    t.row_limit = m->tile_sample - t.blend;
    return t;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Image pixels the tiles produce along an axis of n latents. */
static int64_t tiled_extent(const lh_vae *m, const vae_tiling *t, int64_t n) {
    int64_t px = 0, ds = lh_vae_downscale(m);
    for (int64_t i = 0; i < n; i += t->overlap)
        px += min64(t->row_limit, min64(m->tile_latent, n - i) * ds);
    return px;
}

/* A decoded tile on the host: [b, c, h, w]. */
typedef struct vae_tile {
    float *px;
    int64_t h, w;
} vae_tile;

/* blend_v: the first e rows of `cur` fade in from the last e rows of `up`. */
static void blend_v(const vae_tile *up, vae_tile *cur, int64_t bc, int64_t extent) {
    const int64_t e = min64(min64(up->h, cur->h), extent), w = cur->w;
    for (int64_t p = 0; p < bc; p++)
        for (int64_t y = 0; y < e; y++) {
            const float wa = (float)(1.0 - (double)y / (double)e),
                        wb = (float)((double)y / (double)e);
            const float *a = up->px + (p * up->h + up->h - e + y) * w;
            float *d = cur->px + (p * cur->h + y) * w;
            for (int64_t x = 0; x < w; x++) {
                float pa = a[x] * wa, pb = d[x] * wb;
                d[x] = pa + pb;
            }
        }
}

/* blend_h: the first e columns of `cur` fade in from the last e columns of `left`. */
static void blend_h(const vae_tile *left, vae_tile *cur, int64_t bc, int64_t extent) {
    const int64_t e = min64(min64(left->w, cur->w), extent), h = cur->h;
    for (int64_t p = 0; p < bc; p++)
        for (int64_t y = 0; y < h; y++) {
            const float *a = left->px + (p * h + y) * left->w + left->w - e;
            float *d = cur->px + (p * h + y) * cur->w;
            for (int64_t x = 0; x < e; x++) {
                const float wa = (float)(1.0 - (double)x / (double)e),
                            wb = (float)((double)x / (double)e);
                float pa = a[x] * wa, pb = d[x] * wb;
                d[x] = pa + pb;
            }
        }
}

static vae_plan plan_tiled(const lh_vae *m, int64_t b) {
    vae_plan p = plan_decode(&m->cfg, b, m->tile_latent, m->tile_latent);
    p.io[0] = nel(b, m->cfg.latent_channels, m->tile_latent, m->tile_latent);
    p.io[1] = nel(b, m->cfg.out_channels, m->tile_sample, m->tile_sample);
    return p;
}

static int use_tiles(const lh_vae *m, int64_t lh, int64_t lw, int tiled) {
    return tiled && (lh > m->tile_latent || lw > m->tile_latent);
}

static lh_status tiled_decode(lh_vae *m, float *image, const float *latents, int64_t b, int64_t lh,
                              int64_t lw, lh_error *err) {
    const int64_t ds = lh_vae_downscale(m), lc = m->cfg.latent_channels, oc = m->cfg.out_channels;
    const int64_t H = lh * ds, W = lw * ds, T = m->tile_latent, S = m->tile_sample;
    const vae_tiling t = tiling_of(m);
    if (tiled_extent(m, &t, lh) != H || tiled_extent(m, &t, lw) != W)
        return lh_error_set(err, LH_ERR_INVALID,
                            "VAE tiled decode: tiles of %lld pixels with overlap %g do not cover "
                            "[%lld, %lld] exactly (diffusers would return [%lld, %lld]); choose "
                            "another tile size",
                            (long long)S, m->tile_overlap, (long long)H, (long long)W,
                            (long long)tiled_extent(m, &t, lh), (long long)tiled_extent(m, &t, lw));
    const int64_t cols = (lw + t.overlap - 1) / t.overlap;
    const size_t tile_px = nel(b, oc, S, S), tile_lat = nel(b, lc, T, T);
    const size_t n_lat = nel(b, lc, lh, lw), n_out = nel(b, oc, H, W);
    /* Host: all latents, one latent tile, two rows of decoded tiles, the image. */
    size_t host_n = n_lat + tile_lat + 2 * (size_t)cols * tile_px + n_out;
    float *host = malloc(host_n * sizeof *host);
    vae_tile *row = calloc(2 * (size_t)cols, sizeof *row);
    if (!host || !row) {
        free(host);
        free(row);
        return lh_error_set(err, LH_ERR_NOMEM, "VAE tiled decode: out of host memory (%zu bytes)",
                            host_n * sizeof *host);
    }
    float *lat = host, *lat_tile = lat + n_lat, *tiles = lat_tile + tile_lat,
          *out = tiles + 2 * cols * tile_px;
    vae_tile *prev = row, *cur = row + cols;
    for (int64_t j = 0; j < 2 * cols; j++) row[j].px = tiles + j * tile_px;

    vae_plan p = plan_tiled(m, b);
    vae_fwd F;
    lh_status st = fwd_open(&F, m, &p, err);
    if (st != LH_OK) goto done;
    st = m->be->ops->download(m->be, lat, latents, n_lat * sizeof *lat);
    if (st != LH_OK) st = lh_error_set(err, st, "VAE tiled decode: download failed");
    for (int64_t i = 0, oy = 0; st == LH_OK && i < lh; i += t.overlap) {
        const int64_t th = min64(T, lh - i);
        for (int64_t j = 0, tj = 0, ox = 0; st == LH_OK && j < lw; j += t.overlap, tj++) {
            const int64_t tw = min64(T, lw - j);
            for (int64_t pl = 0; pl < b * lc; pl++)
                for (int64_t y = 0; y < th; y++)
                    memcpy(lat_tile + (pl * th + y) * tw, lat + (pl * lh + i + y) * lw + j,
                           (size_t)tw * sizeof *lat);
            st = m->be->ops->upload(m->be, F.io[0], lat_tile, nel(b, lc, th, tw) * sizeof *lat);
            if (st != LH_OK) {
                st = lh_error_set(err, st, "VAE tiled decode: upload failed");
                break;
            }
            if ((st = decoder(&F, F.io[1], F.io[0], b, th, tw)) != LH_OK) break;
            vae_tile *tile = &cur[tj];
            tile->h = th * ds;
            tile->w = tw * ds;
            st = m->be->ops->download(m->be, tile->px, F.io[1],
                                      nel(b, oc, tile->h, tile->w) * sizeof *lat);
            if (st != LH_OK) {
                st = lh_error_set(err, st, "VAE tiled decode: download failed");
                break;
            }
            if (i > 0) blend_v(&prev[tj], tile, b * oc, t.blend);
            if (tj > 0) blend_h(&cur[tj - 1], tile, b * oc, t.blend);
            const int64_t kh = min64(t.row_limit, tile->h), kw = min64(t.row_limit, tile->w);
            for (int64_t pl = 0; pl < b * oc; pl++)
                for (int64_t y = 0; y < kh; y++)
                    memcpy(out + (pl * H + oy + y) * W + ox,
                           tile->px + (pl * tile->h + y) * tile->w, (size_t)kw * sizeof *out);
            ox += kw;
        }
        oy += min64(t.row_limit, th * ds);
        vae_tile *sw = prev;
        prev = cur;
        cur = sw;
    }
    if (st == LH_OK) {
        st = m->be->ops->upload(m->be, image, out, n_out * sizeof *out);
        if (st != LH_OK) st = lh_error_set(err, st, "VAE tiled decode: upload failed");
    }
done:
    fwd_close(&F);
    free(row);
    free(host);
    return st;
}

/* Decode sizes: the image [b, lh * ds, lw * ds] within the bounds of check_dims,
 * and with tiling a batch of whole tiles too. */
static lh_status check_decode(const lh_vae *m, int64_t b, int64_t lh, int64_t lw, int tiled,
                              lh_error *err) {
    const int64_t ds = lh_vae_downscale(m), s = m->tile_sample;
    if (lh < 1 || lw < 1 || lh > VAE_MAX_SIDE / ds || lw > VAE_MAX_SIDE / ds)
        return lh_error_set(err, LH_ERR_INVALID,
                            "VAE decode: latent size [%lld, %lld] is out of range", (long long)lh,
                            (long long)lw);
    lh_status st = check_dims(b, lh * ds, lw * ds, ds, "decode", err);
    if (st == LH_OK && use_tiles(m, lh, lw, tiled) && b * s > VAE_MAX_PIXELS / s)
        st = lh_error_set(err, LH_ERR_INVALID,
                          "VAE decode: batch %lld of %lld-pixel tiles is too large", (long long)b,
                          (long long)s);
    return st;
}

size_t lh_vae_decode_workspace(const lh_vae *m, int64_t b, int64_t lh, int64_t lw, int tiled) {
    if (check_decode(m, b, lh, lw, tiled, NULL) != LH_OK) return 0;
    vae_plan p = use_tiles(m, lh, lw, tiled) ? plan_tiled(m, b) : plan_decode(&m->cfg, b, lh, lw);
    return plan_bytes(&p);
}

lh_status lh_vae_decode(lh_vae *m, float *image, const float *latents, int64_t b, int64_t lh,
                        int64_t lw, int tiled, lh_error *err) {
    lh_status st = check_decode(m, b, lh, lw, tiled, err);
    if (st != LH_OK) return st;
    if (use_tiles(m, lh, lw, tiled)) return tiled_decode(m, image, latents, b, lh, lw, err);
    vae_plan p = plan_decode(&m->cfg, b, lh, lw);
    vae_fwd F;
    if ((st = fwd_open(&F, m, &p, err)) != LH_OK) return st;
    st = decoder(&F, image, latents, b, lh, lw);
    fwd_close(&F);
    return st;
}
