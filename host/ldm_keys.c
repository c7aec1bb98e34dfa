/* Single-file (LDM / A1111) checkpoints under diffusers' names: detection,
 * configs from shapes, and the key tables (see ldm_keys.h). */
#include "ldm_keys.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNET_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."
#define CLIP_PREFIX "cond_stage_model.transformer.text_model."
#define CLIP_PREFIX_OLD "cond_stage_model.transformer." /* transformers < 4.x layout */
#define OPEN_CLIP_PREFIX "cond_stage_model.model."
#define MAX_COUNT 4096 /* bound on block / layer counting loops */

/* ---- Key tables ----
 * A diffusers key is matched against path rules in order: `from` is a
 * prefix where '#' stands for a decimal number; the rest of the key goes
 * through the rule's leaf table (first `from` prefix that matches; none:
 * unchanged). `to` gets the numbers the rule's index kind computes, in
 * place of its '#'s. */

typedef enum xform {
    XF_NONE,
    XF_SQUEEZE, /* [c, c, 1, 1] or [c, c, 1] -> [c, c] */
    XF_ROWS0,   /* rows [0, n/3) of a fused q/k/v tensor */
    XF_ROWS1,   /* rows [n/3, 2n/3) */
    XF_ROWS2,   /* rows [2n/3, n) */
} xform;

typedef struct leaf_rule {
    const char *from, *to;
    xform xf;
} leaf_rule;

typedef enum index_kind {
    IX_SAME,              /* the numbers as matched */
    IX_UNET_DOWN,         /* down_blocks.i.*.j -> input_blocks.(start of block i + j) */
    IX_UNET_DOWN_SAMPLER, /* down_blocks.i.downsamplers -> input_blocks.(after its resnets) */
    IX_UNET_MID,          /* mid_block.resnets.j -> middle_block.(2j) */
    IX_UNET_UP,           /* up_blocks.i.*.j -> output_blocks.(start of block i + j) */
    IX_UNET_UP_SAMPLER,   /* up_blocks.i.upsamplers -> output_blocks.(last).(1, or 2 after attention) */
    IX_VAE_MID,           /* mid_block.resnets.j -> mid.block_(j + 1) */
    IX_VAE_UP,            /* up_blocks.i -> up.(n_blocks - 1 - i): LDM counts up blocks from the bottom */
    IX_CLIP_LAYER,        /* encoder.layers.i, i < num_hidden_layers */
} index_kind;

typedef struct path_rule {
    const char *from, *to;
    index_kind ix;
    const leaf_rule *leaf;
} path_rule;

static const leaf_rule UNET_RESNET_LEAF[] = {
    {"norm1.", "in_layers.0.", XF_NONE},         {"conv1.", "in_layers.2.", XF_NONE},
    {"time_emb_proj.", "emb_layers.1.", XF_NONE}, {"norm2.", "out_layers.0.", XF_NONE},
    {"conv2.", "out_layers.3.", XF_NONE},         {"conv_shortcut.", "skip_connection.", XF_NONE},
    {NULL, NULL, XF_NONE},
};

static const path_rule UNET_RULES[] = {
    {"conv_in.", "input_blocks.0.0.", IX_SAME, NULL},
    {"time_embedding.linear_1.", "time_embed.0.", IX_SAME, NULL},
    {"time_embedding.linear_2.", "time_embed.2.", IX_SAME, NULL},
    {"conv_norm_out.", "out.0.", IX_SAME, NULL},
    {"conv_out.", "out.2.", IX_SAME, NULL},
    {"down_blocks.#.resnets.#.", "input_blocks.#.0.", IX_UNET_DOWN, UNET_RESNET_LEAF},
    {"down_blocks.#.attentions.#.", "input_blocks.#.1.", IX_UNET_DOWN, NULL},
    {"down_blocks.#.downsamplers.0.conv.", "input_blocks.#.0.op.", IX_UNET_DOWN_SAMPLER, NULL},
    {"mid_block.resnets.#.", "middle_block.#.", IX_UNET_MID, UNET_RESNET_LEAF},
    {"mid_block.attentions.0.", "middle_block.1.", IX_SAME, NULL},
    {"up_blocks.#.resnets.#.", "output_blocks.#.0.", IX_UNET_UP, UNET_RESNET_LEAF},
    {"up_blocks.#.attentions.#.", "output_blocks.#.1.", IX_UNET_UP, NULL},
    {"up_blocks.#.upsamplers.0.conv.", "output_blocks.#.#.conv.", IX_UNET_UP_SAMPLER, NULL},
    {NULL, NULL, IX_SAME, NULL},
};

static const leaf_rule VAE_RESNET_LEAF[] = {
    {"conv_shortcut.", "nin_shortcut.", XF_NONE},
    {NULL, NULL, XF_NONE},
};

/* LDM's AttnBlock: 1x1 convolutions where diffusers has linear layers. */
static const leaf_rule VAE_ATTN_LEAF[] = {
    {"group_norm.", "norm.", XF_NONE},
    {"to_q.weight", "q.weight", XF_SQUEEZE},
    {"to_k.weight", "k.weight", XF_SQUEEZE},
    {"to_v.weight", "v.weight", XF_SQUEEZE},
    {"to_out.0.weight", "proj_out.weight", XF_SQUEEZE},
    {"to_q.", "q.", XF_NONE},
    {"to_k.", "k.", XF_NONE},
    {"to_v.", "v.", XF_NONE},
    {"to_out.0.", "proj_out.", XF_NONE},
    {NULL, NULL, XF_NONE},
};

static const path_rule VAE_RULES[] = {
    {"encoder.conv_norm_out.", "encoder.norm_out.", IX_SAME, NULL},
    {"decoder.conv_norm_out.", "decoder.norm_out.", IX_SAME, NULL},
    {"encoder.down_blocks.#.resnets.#.", "encoder.down.#.block.#.", IX_SAME, VAE_RESNET_LEAF},
    {"encoder.down_blocks.#.downsamplers.0.conv.", "encoder.down.#.downsample.conv.", IX_SAME,
     NULL},
    {"encoder.mid_block.resnets.#.", "encoder.mid.block_#.", IX_VAE_MID, VAE_RESNET_LEAF},
    {"encoder.mid_block.attentions.0.", "encoder.mid.attn_1.", IX_SAME, VAE_ATTN_LEAF},
    {"decoder.mid_block.resnets.#.", "decoder.mid.block_#.", IX_VAE_MID, VAE_RESNET_LEAF},
    {"decoder.mid_block.attentions.0.", "decoder.mid.attn_1.", IX_SAME, VAE_ATTN_LEAF},
    {"decoder.up_blocks.#.resnets.#.", "decoder.up.#.block.#.", IX_VAE_UP, VAE_RESNET_LEAF},
    {"decoder.up_blocks.#.upsamplers.0.conv.", "decoder.up.#.upsample.conv.", IX_VAE_UP, NULL},
    {"", "", IX_SAME, NULL}, /* conv_in, conv_out, quant_conv, post_quant_conv */
    {NULL, NULL, IX_SAME, NULL},
};

/* SD 1.x: transformers' CLIPTextModel names, prefix only. */
static const path_rule CLIP_RULES[] = {
    {"", "", IX_SAME, NULL},
    {NULL, NULL, IX_SAME, NULL},
};

/* SD 2.x: open_clip's TextTransformer (nn.MultiheadAttention: q, k, v fused). */
static const leaf_rule OPEN_CLIP_LAYER_LEAF[] = {
    {"layer_norm1.", "ln_1.", XF_NONE},
    {"layer_norm2.", "ln_2.", XF_NONE},
    {"mlp.fc1.", "mlp.c_fc.", XF_NONE},
    {"mlp.fc2.", "mlp.c_proj.", XF_NONE},
    {"self_attn.out_proj.", "attn.out_proj.", XF_NONE},
    {"self_attn.q_proj.weight", "attn.in_proj_weight", XF_ROWS0},
    {"self_attn.k_proj.weight", "attn.in_proj_weight", XF_ROWS1},
    {"self_attn.v_proj.weight", "attn.in_proj_weight", XF_ROWS2},
    {"self_attn.q_proj.bias", "attn.in_proj_bias", XF_ROWS0},
    {"self_attn.k_proj.bias", "attn.in_proj_bias", XF_ROWS1},
    {"self_attn.v_proj.bias", "attn.in_proj_bias", XF_ROWS2},
    {NULL, NULL, XF_NONE},
};

static const path_rule OPEN_CLIP_RULES[] = {
    {"embeddings.token_embedding.weight", "token_embedding.weight", IX_SAME, NULL},
    {"embeddings.position_embedding.weight", "positional_embedding", IX_SAME, NULL},
    {"final_layer_norm.", "ln_final.", IX_SAME, NULL},
    {"encoder.layers.#.", "transformer.resblocks.#.", IX_CLIP_LAYER, OPEN_CLIP_LAYER_LEAF},
    {NULL, NULL, IX_SAME, NULL},
};

/* ---- Matching ---- */

/* Match `pat` ('#' = a number) against the start of s: the rest of s, or
 * NULL. Numbers go to num[0..2). */
static const char *match(const char *pat, const char *s, long *num, int *n_num) {
    *n_num = 0;
    while (*pat) {
        if (*pat == '#') {
            if (*s < '0' || *s > '9' || *n_num == 2) return NULL;
            long v = 0;
            while (*s >= '0' && *s <= '9') {
                if (v > 100000) return NULL;
                v = v * 10 + (*s++ - '0');
            }
            num[(*n_num)++] = v;
            pat++;
        } else if (*pat++ != *s++) {
            return NULL;
        }
    }
    return s;
}

/* Index of the first LDM input block of down block i (input_blocks.0 is conv_in). */
static long down_start(const lh_unet_config *c, long i) {
    long s = 1;
    for (long k = 0; k < i; k++) s += c->layers_per_block[k] + 1;
    return s;
}

/* Index of the first LDM output block of up block i (it mirrors down block n - 1 - i). */
static long up_start(const lh_unet_config *c, long i) {
    long s = 0;
    for (long k = 0; k < i; k++) s += c->layers_per_block[c->n_blocks - 1 - k] + 1;
    return s;
}

/* The LDM numbers for a matched rule; 0, or -1 if out of range. */
static int ldm_numbers(long *out, index_kind ix, const long *in, int n_in, const lh_ldm_info *info) {
    const lh_unet_config *u = &info->unet;
    out[0] = n_in > 0 ? in[0] : 0;
    out[1] = n_in > 1 ? in[1] : 0;
    switch (ix) {
    case IX_SAME: return 0;
    case IX_UNET_DOWN:
        if (in[0] >= u->n_blocks || in[1] >= u->layers_per_block[in[0]]) return -1;
        out[0] = down_start(u, in[0]) + in[1];
        return 0;
    case IX_UNET_DOWN_SAMPLER:
        if (in[0] >= u->n_blocks - 1) return -1;
        out[0] = down_start(u, in[0]) + u->layers_per_block[in[0]];
        return 0;
    case IX_UNET_MID:
        if (in[0] > 1) return -1;
        out[0] = 2 * in[0];
        return 0;
    case IX_UNET_UP:
        if (in[0] >= u->n_blocks || in[1] > u->layers_per_block[u->n_blocks - 1 - in[0]]) return -1;
        out[0] = up_start(u, in[0]) + in[1];
        return 0;
    case IX_UNET_UP_SAMPLER:
        if (in[0] >= u->n_blocks - 1) return -1;
        out[0] = up_start(u, in[0]) + u->layers_per_block[u->n_blocks - 1 - in[0]];
        out[1] = u->up_cross[in[0]] ? 2 : 1;
        return 0;
    case IX_VAE_MID:
        if (in[0] > 1) return -1;
        out[0] = in[0] + 1;
        return 0;
    case IX_VAE_UP:
        if (in[0] >= info->vae.n_blocks) return -1;
        out[0] = info->vae.n_blocks - 1 - in[0];
        return 0;
    case IX_CLIP_LAYER: return in[0] < info->clip.num_hidden_layers ? 0 : -1;
    }
    return -1;
}

static const path_rule *part_rules(const lh_ldm_info *info, lh_ldm_part part,
                                   const char **prefix) {
    switch (part) {
    case LH_LDM_PART_UNET: *prefix = UNET_PREFIX; return UNET_RULES;
    case LH_LDM_PART_VAE: *prefix = info->vae_prefix; return VAE_RULES;
    case LH_LDM_PART_CLIP:
        *prefix = info->clip_prefix;
        return info->arch == LH_LDM_ARCH_SD2 ? OPEN_CLIP_RULES : CLIP_RULES;
    default: return NULL;
    }
}

/* The file key and view transform for diffusers name `key`. */
static int translate(char *buf, size_t size, xform *xf, const lh_ldm_info *info,
                     lh_ldm_part part, const char *key) {
    const char *prefix = "";
    const path_rule *r = part_rules(info, part, &prefix);
    *xf = XF_NONE;
    if (!r) return -1;
    for (; r->from; r++) {
        long in[2], num[2];
        int n_in;
        const char *rest = match(r->from, key, in, &n_in);
        if (!rest) continue;
        if (ldm_numbers(num, r->ix, in, n_in, info) != 0) return -1;
        const char *to = r->to, *tail = rest;
        const leaf_rule *leaf = NULL;
        for (const leaf_rule *l = r->leaf; l && l->from; l++) {
            size_t n = strlen(l->from);
            if (strncmp(rest, l->from, n) == 0) {
                leaf = l;
                *xf = l->xf;
                tail = rest + n;
                break;
            }
        }
        size_t len = (size_t)snprintf(buf, size, "%s", prefix);
        int k = 0;
        for (; *to && len + 1 < size; to++) {
            if (*to == '#') len += (size_t)snprintf(buf + len, size - len, "%ld", num[k++]);
            else buf[len++] = *to;
        }
        if (len >= size) return -1;
        buf[len] = 0;
        int n = snprintf(buf + len, size - len, "%s%s", leaf ? leaf->to : "", tail);
        return n < 0 || (size_t)n >= size - len ? -1 : 0;
    }
    return -1;
}

int lh_ldm_file_key(char *buf, size_t size, const lh_ldm_info *info, lh_ldm_part part,
                    const char *key) {
    xform xf;
    return translate(buf, size, &xf, info, part, key);
}

/* ---- The view ---- */

struct lh_ldm_map {
    const lh_st_file *f;
    lh_ldm_info info;
    lh_ldm_part part;
    lh_wsource src;
    lh_st_tensor view; /* the last tensor found */
    char view_name[512];
};

static const lh_st_tensor *map_find(void *ctx, const char *key) {
    lh_ldm_map *m = ctx;
    char fk[512];
    xform xf;
    if (translate(fk, sizeof fk, &xf, &m->info, m->part, key) != 0) return NULL;
    const lh_st_tensor *t = lh_st_find(m->f, fk);
    if (!t) return NULL;
    lh_st_tensor *v = &m->view;
    *v = *t;
    snprintf(m->view_name, sizeof m->view_name, "%s", key);
    v->name = m->view_name;
    if (xf == XF_SQUEEZE && v->ndim >= 3) {
        int ones = 1;
        for (int d = 2; d < v->ndim; d++) ones &= v->shape[d] == 1;
        if (ones) {
            for (int d = 2; d < v->ndim; d++) v->shape[d] = 0;
            v->ndim = 2;
        }
    } else if (xf >= XF_ROWS0 && xf <= XF_ROWS2 && v->ndim >= 1 && v->shape[0] % 3 == 0 &&
               v->shape[0] > 0) {
        /* A third of the rows: contiguous in the file, so just a window. Left
         * whole (the loader then reports the fused shape) when not divisible. */
        int64_t rows = v->shape[0] / 3, row_elems = v->numel / v->shape[0];
        uint64_t bytes = (uint64_t)(rows * row_elems) * lh_dtype_size(v->dtype);
        uint64_t skip = bytes * (uint64_t)(xf - XF_ROWS0);
        v->shape[0] = rows;
        v->numel = rows * row_elems;
        v->data = (const char *)v->data + skip;
        v->begin += skip;
        v->end = v->begin + bytes;
    }
    return v;
}

static void map_file_key(void *ctx, const char *key, char *buf, size_t size) {
    lh_ldm_map *m = ctx;
    if (lh_ldm_file_key(buf, size, &m->info, m->part, key) != 0 && size) buf[0] = 0;
}

static const char *const PART_NAMES[LH_LDM_PART_COUNT] = {
    "U-Net (model.diffusion_model.*)",
    "VAE (first_stage_model.*)",
    "text encoder (cond_stage_model.*)",
};

lh_status lh_ldm_map_create(lh_ldm_map **out, const lh_st_file *f, const lh_ldm_info *info,
                            lh_ldm_part part, lh_error *err) {
    *out = NULL;
    if ((unsigned)part >= LH_LDM_PART_COUNT || (unsigned)info->arch >= LH_LDM_ARCH_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "lh_ldm_map_create: bad part or info");
    if (!info->has[part])
        return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: the checkpoint has no %s", lh_st_name(f),
                            PART_NAMES[part]);
    lh_ldm_map *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for a checkpoint view");
    m->f = f;
    m->info = *info;
    m->part = part;
    m->src = (lh_wsource){lh_st_name(f), map_find, map_file_key, m, 0, NULL};
    *out = m;
    return LH_OK;
}

void lh_ldm_map_destroy(lh_ldm_map *map) { free(map); }

const lh_wsource *lh_ldm_map_source(const lh_ldm_map *map) { return &map->src; }

/* ---- Loading ---- */

lh_status lh_ldm_load_unet(lh_unet **out, lh_backend *be, const lh_st_file *f,
                           const lh_ldm_info *info, lh_error *err) {
    *out = NULL;
    lh_ldm_map *m = NULL;
    lh_status st = lh_ldm_map_create(&m, f, info, LH_LDM_PART_UNET, err);
    if (st == LH_OK) st = lh_unet_load_src(out, be, &info->unet, &m->src, err);
    lh_ldm_map_destroy(m);
    return st;
}

lh_status lh_ldm_load_vae(lh_vae **out, lh_backend *be, const lh_st_file *f,
                          const lh_ldm_info *info, lh_error *err) {
    *out = NULL;
    lh_ldm_map *m = NULL;
    lh_status st = lh_ldm_map_create(&m, f, info, LH_LDM_PART_VAE, err);
    if (st == LH_OK) st = lh_vae_load_src(out, be, &info->vae, &m->src, err);
    lh_ldm_map_destroy(m);
    return st;
}

lh_status lh_ldm_load_clip(lh_clip **out, lh_backend *be, const lh_st_file *f,
                           const lh_ldm_info *info, lh_error *err) {
    *out = NULL;
    lh_ldm_map *m = NULL;
    lh_status st = lh_ldm_map_create(&m, f, info, LH_LDM_PART_CLIP, err);
    if (st == LH_OK) st = lh_clip_load_src(out, be, &info->clip, &m->src, err);
    lh_ldm_map_destroy(m);
    return st;
}

/* ---- Detection ---- */

__attribute__((format(printf, 2, 3))) static const lh_st_tensor *findf(const lh_st_file *f,
                                                                       const char *fmt, ...) {
    char key[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= sizeof key ? NULL : lh_st_find(f, key);
}

static int has_prefix(const lh_st_file *f, const char *prefix) {
    size_t n = strlen(prefix);
    for (size_t i = 0; i < lh_st_count(f); i++)
        if (strncmp(lh_st_get(f, i)->name, prefix, n) == 0) return 1;
    return 0;
}

/* A required tensor of rank ndim, or an error naming it. */
static lh_status need(const lh_st_tensor **out, const lh_st_file *f, const char *key, int ndim,
                      lh_error *err) {
    *out = lh_st_find(f, key);
    if (!*out)
        return lh_error_set(err, LH_ERR_FORMAT, "%s: tensor '%s' is missing", lh_st_name(f), key);
    if ((*out)->ndim != ndim)
        return lh_error_set(err, LH_ERR_FORMAT, "%s: tensor '%s' has %d dimensions, expected %d",
                            lh_st_name(f), key, (*out)->ndim, ndim);
    return LH_OK;
}

/* "a.b" families of the file's keys with their counts, for the unknown-layout message. */
static void key_families(char *out, size_t size, const lh_st_file *f) {
    char fam[8][64];
    size_t cnt[8] = {0}, n_fam = 0, len = 0, other = 0;
    int has_dot[8] = {0};
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const char *name = lh_st_get(f, i)->name;
        const char *dot = strchr(name, '.');
        if (dot && strchr(dot + 1, '.')) dot = strchr(dot + 1, '.');
        size_t n = dot ? (size_t)(dot - name) : strlen(name);
        if (n >= sizeof fam[0]) n = sizeof fam[0] - 1;
        size_t k = 0;
        while (k < n_fam && !(strncmp(fam[k], name, n) == 0 && fam[k][n] == 0)) k++;
        if (k == n_fam && n_fam < 8) {
            memcpy(fam[k], name, n);
            fam[k][n] = 0;
            has_dot[k] = dot != NULL;
            n_fam++;
        }
        if (k < n_fam) cnt[k]++;
        else other++;
    }
    out[0] = 0;
    for (size_t k = 0; k < n_fam && len < size; k++)
        len += (size_t)snprintf(out + len, size - len, "%s%s%s (%zu)", k ? ", " : "", fam[k],
                                has_dot[k] ? ".*" : "", cnt[k]);
    if (other && len < size) snprintf(out + len, size - len, ", %zu more", other);
}

static lh_status detect_unet(const lh_st_file *f, lh_ldm_info *info, lh_error *err) {
    lh_unet_config *u = &info->unet;
    const lh_st_tensor *t;
    lh_status st;
    if ((st = need(&t, f, UNET_PREFIX "input_blocks.0.0.weight", 4, err))) return st;
    u->in_channels = t->shape[1];
    if (u->in_channels == 9)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: an inpainting model (the U-Net takes 9 input channels: latents, "
                            "mask and masked image); lorahost runs text-to-image U-Nets (4)",
                            lh_st_name(f));
    if (u->in_channels != 4)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: the U-Net takes %lld input channels (depth, instruct-pix2pix or "
                            "upscaler models); lorahost runs text-to-image U-Nets (4)",
                            lh_st_name(f), (long long)u->in_channels);
    if ((st = need(&t, f, UNET_PREFIX "out.2.weight", 4, err))) return st;
    u->out_channels = t->shape[0];

    /* Walk input_blocks: resnets (.0.in_layers), then a downsampler (.0.op)
     * closes a block; the last block has none. */
    int nb = 0, layers = 0;
    for (int n = 1; n < MAX_COUNT; n++) {
        if (findf(f, UNET_PREFIX "input_blocks.%d.0.op.weight", n) ||
            !findf(f, UNET_PREFIX "input_blocks.%d.0.in_layers.2.weight", n)) {
            if (layers == 0)
                return lh_error_set(err, LH_ERR_FORMAT,
                                    "%s: U-Net down block %d has no resnet "
                                    "(model.diffusion_model.input_blocks.%d.0.in_layers.2.weight)",
                                    lh_st_name(f), nb, n);
            if (layers >= LH_UNET_MAX_LAYERS || nb >= LH_UNET_MAX_BLOCKS)
                return lh_error_set(err, LH_ERR_UNSUPPORTED,
                                    "%s: the U-Net has more than %d blocks or %d resnets in one",
                                    lh_st_name(f), LH_UNET_MAX_BLOCKS, LH_UNET_MAX_LAYERS - 1);
            u->layers_per_block[nb++] = layers;
            layers = 0;
            if (!findf(f, UNET_PREFIX "input_blocks.%d.0.op.weight", n)) break;
            continue;
        }
        if (layers == 0) {
            if (nb >= LH_UNET_MAX_BLOCKS)
                return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: the U-Net has more than %d blocks",
                                    lh_st_name(f), LH_UNET_MAX_BLOCKS);
            u->block_out_channels[nb] =
                findf(f, UNET_PREFIX "input_blocks.%d.0.in_layers.2.weight", n)->shape[0];
            u->down_cross[nb] = findf(f, UNET_PREFIX "input_blocks.%d.1.proj_in.weight", n) != NULL;
        }
        layers++;
    }
    u->n_blocks = nb;
    for (int i = 0; i < nb; i++)
        u->up_cross[i] = findf(f, UNET_PREFIX "output_blocks.%ld.1.proj_in.weight",
                               up_start(u, i)) != NULL;
    if ((st = need(&t, f, UNET_PREFIX "middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2,
                   err)))
        return st;
    u->cross_attention_dim = t->shape[1];
    t = lh_st_find(f, UNET_PREFIX "middle_block.1.proj_in.weight");
    if (!t)
        return lh_error_set(err, LH_ERR_FORMAT, "%s: tensor '%s' is missing", lh_st_name(f),
                            UNET_PREFIX "middle_block.1.proj_in.weight");
    u->use_linear_projection = t->ndim == 2;
    u->norm_num_groups = 32;
    u->norm_eps = 1e-5f;
    u->flip_sin_to_cos = 1;
    u->freq_shift = 0;
    return LH_OK;
}

static lh_status detect_vae(const lh_st_file *f, lh_ldm_info *info, lh_error *err) {
    lh_vae_config *v = &info->vae;
    const char *p = info->vae_prefix;
    const lh_st_tensor *t;
    lh_status st;
    char key[256];
    snprintf(key, sizeof key, "%sencoder.conv_in.weight", p);
    if ((st = need(&t, f, key, 4, err))) return st;
    v->in_channels = t->shape[1];
    snprintf(key, sizeof key, "%sdecoder.conv_in.weight", p);
    if ((st = need(&t, f, key, 4, err))) return st;
    v->latent_channels = t->shape[1];
    snprintf(key, sizeof key, "%sdecoder.conv_out.weight", p);
    if ((st = need(&t, f, key, 4, err))) return st;
    v->out_channels = t->shape[0];
    int nb = 0;
    while (nb < MAX_COUNT && (t = findf(f, "%sencoder.down.%d.block.0.conv1.weight", p, nb))) {
        if (nb >= LH_VAE_MAX_BLOCKS)
            return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: the VAE has more than %d blocks",
                                lh_st_name(f), LH_VAE_MAX_BLOCKS);
        v->block_out_channels[nb++] = t->shape[0];
    }
    v->n_blocks = nb;
    while (v->layers_per_block < MAX_COUNT &&
           findf(f, "%sencoder.down.0.block.%d.conv1.weight", p, (int)v->layers_per_block))
        v->layers_per_block++;
    if (nb == 0)
        return lh_error_set(err, LH_ERR_FORMAT, "%s: tensor '%sencoder.down.0.block.0.conv1.weight' "
                            "is missing", lh_st_name(f), p);
    v->norm_num_groups = 32;
    v->sample_size = info->arch == LH_LDM_ARCH_SD2 ? 768 : 512;
    v->scaling_factor = 0.18215f;
    v->mid_block_add_attention = findf(f, "%sencoder.mid.attn_1.q.weight", p) != NULL;
    return LH_OK;
}

static lh_status detect_clip(const lh_st_file *f, lh_ldm_info *info, lh_error *err) {
    lh_clip_config *c = &info->clip;
    const char *p = info->clip_prefix;
    const int open = info->arch == LH_LDM_ARCH_SD2;
    const lh_st_tensor *t;
    lh_status st;
    char key[256];
    snprintf(key, sizeof key, "%s%s", p,
             open ? "token_embedding.weight" : "embeddings.token_embedding.weight");
    if ((st = need(&t, f, key, 2, err))) return st;
    c->vocab_size = t->shape[0];
    c->hidden_size = t->shape[1];
    snprintf(key, sizeof key, "%s%s", p,
             open ? "positional_embedding" : "embeddings.position_embedding.weight");
    if ((st = need(&t, f, key, 2, err))) return st;
    c->max_position_embeddings = t->shape[0];
    snprintf(key, sizeof key, "%s%s", p,
             open ? "transformer.resblocks.0.mlp.c_fc.weight" : "encoder.layers.0.mlp.fc1.weight");
    if ((st = need(&t, f, key, 2, err))) return st;
    c->intermediate_size = t->shape[0];
    int n = 0;
    while (n < MAX_COUNT && findf(f, open ? "%stransformer.resblocks.%d.ln_1.weight"
                                          : "%sencoder.layers.%d.layer_norm1.weight",
                                  p, n))
        n++;
    if (open) {
        /* diffusers' converted OpenCLIP-H keeps 23 of 24 blocks: SD 2.x
         * conditions on the penultimate layer */
        info->clip_open_layers = n;
        if (n < 2)
            return lh_error_set(err, LH_ERR_FORMAT,
                                "%s: the OpenCLIP text encoder has %d blocks "
                                "(cond_stage_model.model.transformer.resblocks.*); SD 2.x uses all "
                                "but the last, so it needs at least 2",
                                lh_st_name(f), n);
        n--;
    }
    c->num_hidden_layers = n;
    c->num_attention_heads = c->hidden_size >= 64 ? c->hidden_size / 64 : 1;
    c->layer_norm_eps = 1e-5f;
    c->hidden_act = open ? LH_CLIP_ACT_GELU : LH_CLIP_ACT_QUICK_GELU;
    return LH_OK;
}

static lh_ldm_pred prediction_from_metadata(const lh_st_file *f, lh_ldm_arch arch) {
    const char *v = lh_st_meta_find(f, "modelspec.prediction_type");
    if (v && strcmp(v, "v") == 0) return LH_LDM_PRED_V;
    if (v && strcmp(v, "epsilon") == 0) return LH_LDM_PRED_EPSILON;
    v = lh_st_meta_find(f, "ss_v_parameterization");
    if (v && strcmp(v, "True") == 0) return LH_LDM_PRED_V;
    return arch == LH_LDM_ARCH_SD1 ? LH_LDM_PRED_EPSILON : LH_LDM_PRED_UNKNOWN;
}

lh_status lh_ldm_detect(const lh_st_file *f, lh_ldm_info *out, lh_error *err) {
    memset(out, 0, sizeof *out);
    const char *name = lh_st_name(f);
    if (has_prefix(f, "conditioner.embedders."))
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: an SDXL checkpoint (conditioner.embedders.* text encoders); "
                            "lorahost runs SD 1.x and 2.x",
                            name);
    if (has_prefix(f, UNET_PREFIX "label_emb."))
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: the U-Net has class or added-condition embeddings "
                            "(model.diffusion_model.label_emb.*: SDXL, the x4 upscaler); lorahost "
                            "runs SD 1.x and 2.x",
                            name);
    out->has[LH_LDM_PART_UNET] = lh_st_find(f, UNET_PREFIX "input_blocks.0.0.weight") != NULL;
    if (lh_st_find(f, VAE_PREFIX "encoder.conv_in.weight")) {
        out->has[LH_LDM_PART_VAE] = 1;
        snprintf(out->vae_prefix, sizeof out->vae_prefix, "%s", VAE_PREFIX);
    } else if (lh_st_find(f, "encoder.down.0.block.0.conv1.weight") &&
               lh_st_find(f, "encoder.conv_in.weight")) {
        out->has[LH_LDM_PART_VAE] = 1; /* a bare LDM VAE file (vae-ft-mse-*.safetensors) */
    }
    static const struct {
        const char *prefix, *probe;
        lh_ldm_arch arch;
    } CLIPS[] = {
        {CLIP_PREFIX, "embeddings.token_embedding.weight", LH_LDM_ARCH_SD1},
        {CLIP_PREFIX_OLD, "embeddings.token_embedding.weight", LH_LDM_ARCH_SD1},
        {OPEN_CLIP_PREFIX, "token_embedding.weight", LH_LDM_ARCH_SD2},
    };
    for (size_t i = 0; i < sizeof CLIPS / sizeof *CLIPS && !out->has[LH_LDM_PART_CLIP]; i++)
        if (findf(f, "%s%s", CLIPS[i].prefix, CLIPS[i].probe)) {
            out->has[LH_LDM_PART_CLIP] = 1;
            out->arch = CLIPS[i].arch;
            snprintf(out->clip_prefix, sizeof out->clip_prefix, "%s", CLIPS[i].prefix);
        }
    if (!out->has[LH_LDM_PART_UNET] && !out->has[LH_LDM_PART_VAE] && !out->has[LH_LDM_PART_CLIP]) {
        char fams[400];
        key_families(fams, sizeof fams, f);
        int diffusers = has_prefix(f, "down_blocks.") || has_prefix(f, "text_model.") ||
                        has_prefix(f, "encoder.down_blocks.");
        return lh_error_set(err, LH_ERR_FORMAT,
                            "%s: not a Stable Diffusion single-file checkpoint: no "
                            "model.diffusion_model.*, first_stage_model.* or cond_stage_model.* "
                            "tensors; found %s%s",
                            name, lh_st_count(f) ? fams : "no tensors",
                            diffusers ? " (diffusers names: load the component from its folder)"
                                      : "");
    }

    lh_status st;
    if (out->has[LH_LDM_PART_UNET]) {
        if ((st = detect_unet(f, out, err))) return st;
        if (!out->has[LH_LDM_PART_CLIP])
            out->arch = out->unet.use_linear_projection ? LH_LDM_ARCH_SD2 : LH_LDM_ARCH_SD1;
    }
    if (out->has[LH_LDM_PART_CLIP] && (st = detect_clip(f, out, err))) return st;
    if (out->has[LH_LDM_PART_VAE] && (st = detect_vae(f, out, err))) return st;
    if (out->has[LH_LDM_PART_UNET]) {
        lh_unet_config *u = &out->unet;
        for (int i = 0; i < u->n_blocks; i++)
            u->heads[i] = out->arch == LH_LDM_ARCH_SD1 ? 8
                          : u->block_out_channels[i] >= 64 ? u->block_out_channels[i] / 64
                                                           : 1;
        u->upcast_attention = out->arch == LH_LDM_ARCH_SD2;
        if (out->has[LH_LDM_PART_CLIP] && out->clip.hidden_size != u->cross_attention_dim)
            return lh_error_set(err, LH_ERR_FORMAT,
                                "%s: the text encoder's width (%lld) is not the U-Net's "
                                "cross-attention width (%lld)",
                                name, (long long)out->clip.hidden_size,
                                (long long)u->cross_attention_dim);
        if (out->has[LH_LDM_PART_VAE] && out->vae.latent_channels != u->in_channels)
            return lh_error_set(err, LH_ERR_FORMAT,
                                "%s: the VAE has %lld latent channels, the U-Net takes %lld", name,
                                (long long)out->vae.latent_channels, (long long)u->in_channels);
    }
    out->prediction = prediction_from_metadata(f, out->arch);
    return LH_OK;
}
