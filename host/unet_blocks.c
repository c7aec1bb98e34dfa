/* The U-Net forward pass (diffusers UNet2DConditionModel.forward for SD 1.x /
 * 2.x) and its activation plan. The forward runs twice: a sizing pass that
 * only records how much scratch each slot and each skip connection needs,
 * then, after one backend allocation carved into those buffers, the real
 * pass. So the plan cannot drift from what the code uses. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "unet.h"
#include "layers.h"

/* ---- The activation plan ---- */

/* Scratch slots, each sized to the largest use in the forward. */
enum {
    SLOT_H0, SLOT_H1, /* the hidden state, ping-pong: [b, c, h, w] */
    SLOT_T1, SLOT_T2, /* block scratch in NCHW */
    SLOT_TOK,         /* transformer tokens [b, hw, c] */
    SLOT_LN,          /* normed tokens, projections back into the stream */
    SLOT_Q, SLOT_K, SLOT_V, SLOT_ATT,
    SLOT_FF,          /* GEGLU input [b * hw, 8c] */
    SLOT_GEGLU,       /* GEGLU output [b * hw, 4c] */
    SLOT_TPROJ,       /* sinusoidal timestep features [b, c0] */
    SLOT_THID,        /* time_embedding hidden [b, 4 c0] */
    SLOT_TEMB,        /* silu(time embedding) [b, 4 c0]: every resnet's input */
    SLOT_TRES,        /* one resnet's time_emb_proj output [b, c] */
    SLOT_COUNT
};

#define MAX_SKIPS (1 + LH_UNET_MAX_BLOCKS * LH_UNET_MAX_LAYERS)
#define ALIGN_FLOATS 64 /* 256-byte alignment for every carved buffer */

typedef struct run {
    lh_unet *m;
    const lh_backend_ops *ops;
    lh_error *err;
    int dry;      /* sizing pass: record needs, compute nothing */
    int overflow; /* a size did not fit */
    size_t need[SLOT_COUNT];
    float *slot[SLOT_COUNT];
    /* skip connections: pushed by conv_in and the down blocks, popped by the up blocks */
    int n_skips, top;
    size_t skip_need[MAX_SKIPS];
    int64_t skip_c[MAX_SKIPS];
    float *skip[MAX_SKIPS];
    int64_t b, n_ctx;
    const float *ctx; /* [b, n_ctx, cross_attention_dim] */
} run;

/* a * b * c * d elements as size_t, flagging overflow. */
static size_t elems(run *r, int64_t a, int64_t b, int64_t c, int64_t d) {
    size_t n = 1;
    const int64_t f[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (f[i] < 0 || lh_mul_size(n, (size_t)f[i], &n)) {
            r->overflow = 1;
            return 0;
        }
    return n;
}

static void need(run *r, int slot, size_t n) {
    if (r->dry && n > r->need[slot]) r->need[slot] = n;
}

static float *S(run *r, int slot) { return r->slot[slot]; }

/* A ping-pong buffer that is not `busy` (busy may be a skip buffer). */
static float *spare(run *r, const float *busy) {
    return busy == r->slot[SLOT_H0] ? r->slot[SLOT_H1] : r->slot[SLOT_H0];
}

/* The next skip buffer (its size and channel count recorded in the sizing
 * pass); NULL in the sizing pass. */
static float *skip_push(run *r, int64_t c, size_t n) {
    if (r->dry) {
        if (r->n_skips == MAX_SKIPS) { /* cannot happen within the config limits */
            r->overflow = 1;
            return NULL;
        }
        r->skip_need[r->n_skips] = n;
        r->skip_c[r->n_skips++] = c;
    }
    return r->skip[r->top++];
}

static lh_status skip_pop(run *r, float **out, int64_t *c, const char *who) {
    if (r->top == 0)
        return lh_error_set(r->err, LH_ERR_INTERNAL, "unet: %s: no skip connection left", who);
    r->top--;
    *out = r->skip[r->top];
    *c = r->skip_c[r->top];
    return LH_OK;
}

/* Check a backend op's status; name the layer on failure. */
#define OP(call, who)                                                                              \
    do {                                                                                           \
        lh_status st_ = (call);                                                                    \
        if (st_ != LH_OK)                                                                          \
            return lh_error_set(r->err, st_, "unet: %s: backend op %s failed (%s)", (who),         \
                                #call, lh_strerror(st_));                                          \
    } while (0)

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        lh_status st_ = (expr);                                                                    \
        if (st_ != LH_OK) return st_;                                                              \
    } while (0)

/* Runtime adapter terms on the layer whose weight is w (host/layers.h). */
#define ADAPT(w, y, x, n, h, w_) TRY(lh_layers_runtime(r->m->adapt, (w), (y), (x), (n), (h), (w_), r->err))

/* ---- Blocks ---- */

/* ResnetBlock2D: out = shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x))) + temb_proj))).
 * out must not be x. */
static lh_status resnet(run *r, float *out, /* [b, c_out, h, w] */
                        const float *x,     /* [b, c_in, h, w] */
                        const lh_unet_resnet *p, int64_t h, int64_t w) {
    const lh_unet_config *c = &r->m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, hw = h * w, ci = p->c_in, co = p->c_out;
    need(r, SLOT_T1, elems(r, b, ci > co ? ci : co, h, w));
    need(r, SLOT_T2, elems(r, b, co, h, w));
    need(r, SLOT_TRES, elems(r, b, co, 1, 1));
    if (r->dry) return LH_OK;
    float *t1 = S(r, SLOT_T1), *t2 = S(r, SLOT_T2), *tres = S(r, SLOT_TRES);
    const char *who = p->name;

    OP(ops->group_norm(be, t1, x, p->norm1_w, p->norm1_b, b, ci, hw, c->norm_num_groups,
                       c->norm_eps, 1), who);
    OP(ops->conv2d(be, t2, t1, p->conv1_w, p->conv1_b, b, ci, h, w, co, 3, 3, 1, 1), who);
    ADAPT(p->conv1_w, t2, t1, b, h, w);
    OP(ops->linear(be, tres, S(r, SLOT_TEMB), p->temb_w, p->temb_b, b, 4 * c->block_out_channels[0],
                   co), who);
    ADAPT(p->temb_w, tres, S(r, SLOT_TEMB), b, 1, 1);
    OP(ops->add_channel_bias(be, t2, t2, tres, b, co, hw), who);
    OP(ops->group_norm(be, t1, t2, p->norm2_w, p->norm2_b, b, co, hw, c->norm_num_groups,
                       c->norm_eps, 1), who);
    OP(ops->conv2d(be, out, t1, p->conv2_w, p->conv2_b, b, co, h, w, co, 3, 3, 1, 1), who);
    ADAPT(p->conv2_w, out, t1, b, h, w);
    if (p->short_w) {
        OP(ops->conv2d(be, t2, x, p->short_w, p->short_b, b, ci, h, w, co, 1, 1, 1, 0), who);
        ADAPT(p->short_w, t2, x, b, h, w);
        OP(ops->add(be, out, out, t2, b * co * hw), who);
    } else {
        OP(ops->add(be, out, out, x, b * co * hw), who);
    }
    return LH_OK;
}

/* One attention of a BasicTransformerBlock: stream += to_out(attn(q(ln), k(kv), v(kv))).
 * kv is ln itself (self-attention, n_kv = hw) or the text context. */
static lh_status attention(run *r, float *stream, /* [b, hw, c] */
                           const float *ln,       /* [b, hw, c] */
                           const float *kv,       /* [b, n_kv, c_kv] */
                           const float *wq, const float *wk, const float *wv, const float *wo,
                           const float *bo, int64_t c, int64_t heads, int64_t hw, int64_t n_kv,
                           int64_t c_kv, const char *who) {
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, d = c / heads;
    float *q = S(r, SLOT_Q), *k = S(r, SLOT_K), *v = S(r, SLOT_V), *att = S(r, SLOT_ATT);
    float *proj = S(r, SLOT_LN); /* ln is consumed once q, k and v exist */
    OP(ops->linear(be, q, ln, wq, NULL, b * hw, c, c), who);
    ADAPT(wq, q, ln, b * hw, 1, 1);
    OP(ops->linear(be, k, kv, wk, NULL, b * n_kv, c_kv, c), who);
    ADAPT(wk, k, kv, b * n_kv, 1, 1);
    OP(ops->linear(be, v, kv, wv, NULL, b * n_kv, c_kv, c), who);
    ADAPT(wv, v, kv, b * n_kv, 1, 1);
    OP(ops->attention(be, att, q, k, v, b, heads, hw, n_kv, d, 1.0f / sqrtf((float)d), 0), who);
    OP(ops->linear(be, proj, att, wo, bo, b * hw, c, c), who);
    ADAPT(wo, proj, att, b * hw, 1, 1);
    OP(ops->add(be, stream, stream, proj, b * hw * c), who);
    return LH_OK;
}

/* Transformer2DModel (continuous input, one BasicTransformerBlock):
 * out = x + proj_out(block(proj_in(gn(x)))). proj_in/proj_out are 1x1 convs
 * (SD 1.x) or linears (SD 2.x); on tokens both are the same matrix product.
 * out must not be x. */
static lh_status transformer(run *r, float *out, /* [b, c, h, w] */
                             const float *x,     /* [b, c, h, w] */
                             const lh_unet_attn *a, int64_t h, int64_t w) {
    const lh_unet_config *cfg = &r->m->cfg;
    int64_t b = r->b, c = a->c, hw = h * w, n = b * hw, heads = a->heads;
    size_t tok = elems(r, b, hw, c, 1), ctx = elems(r, b, r->n_ctx, c, 1);
    need(r, SLOT_T1, tok);
    need(r, SLOT_T2, tok);
    need(r, SLOT_TOK, tok);
    need(r, SLOT_LN, tok);
    need(r, SLOT_Q, tok);
    need(r, SLOT_K, tok > ctx ? tok : ctx);
    need(r, SLOT_V, tok > ctx ? tok : ctx);
    need(r, SLOT_ATT, tok);
    need(r, SLOT_FF, elems(r, n, 8, c, 1));
    need(r, SLOT_GEGLU, elems(r, n, 4, c, 1));
    if (r->dry) return LH_OK;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    float *t1 = S(r, SLOT_T1), *t2 = S(r, SLOT_T2), *stream = S(r, SLOT_TOK), *ln = S(r, SLOT_LN);
    const lh_unet_tblock *t = &a->block;
    const char *who = a->name;

    OP(ops->group_norm(be, t1, x, a->norm_w, a->norm_b, b, c, hw, cfg->norm_num_groups, 1e-6f, 0),
       who);
    OP(ops->transpose_c_hw(be, t2, t1, b, c, hw), who);
    OP(ops->linear(be, stream, t2, a->proj_in_w, a->proj_in_b, n, c, c), who);
    ADAPT(a->proj_in_w, stream, t2, n, 1, 1);

    OP(ops->layer_norm(be, ln, stream, t->norm1_w, t->norm1_b, n, c, 1e-5f), who);
    TRY(attention(r, stream, ln, ln, t->q1, t->k1, t->v1, t->o1_w, t->o1_b, c, heads, hw, hw, c,
                  who));
    OP(ops->layer_norm(be, ln, stream, t->norm2_w, t->norm2_b, n, c, 1e-5f), who);
    TRY(attention(r, stream, ln, r->ctx, t->q2, t->k2, t->v2, t->o2_w, t->o2_b, c, heads, hw,
                  r->n_ctx, cfg->cross_attention_dim, who));
    OP(ops->layer_norm(be, ln, stream, t->norm3_w, t->norm3_b, n, c, 1e-5f), who);
    OP(ops->linear(be, S(r, SLOT_FF), ln, t->ff1_w, t->ff1_b, n, c, 8 * c), who);
    ADAPT(t->ff1_w, S(r, SLOT_FF), ln, n, 1, 1);
    OP(ops->geglu(be, S(r, SLOT_GEGLU), S(r, SLOT_FF), n, 4 * c), who);
    OP(ops->linear(be, ln, S(r, SLOT_GEGLU), t->ff2_w, t->ff2_b, n, 4 * c, c), who);
    ADAPT(t->ff2_w, ln, S(r, SLOT_GEGLU), n, 1, 1);
    OP(ops->add(be, stream, stream, ln, n * c), who);

    OP(ops->linear(be, t2, stream, a->proj_out_w, a->proj_out_b, n, c, c), who);
    ADAPT(a->proj_out_w, t2, stream, n, 1, 1);
    OP(ops->transpose_c_hw(be, out, t2, b, hw, c), who);
    OP(ops->add(be, out, out, x, n * c), who);
    return LH_OK;
}

/* CrossAttnDownBlock2D / DownBlock2D: every layer's output and the
 * downsampler's are skip connections. *cur is the hidden state (in and out). */
static lh_status down_block(run *r, const float **cur, const lh_unet_block *blk, int64_t *h,
                            int64_t *w) {
    int64_t b = r->b, c = blk->c_out;
    for (int j = 0; j < blk->n_layers; j++) {
        size_t n = elems(r, b, c, *h, *w);
        float *res_out = blk->cross ? spare(r, *cur) : skip_push(r, c, n);
        need(r, SLOT_H0, n);
        need(r, SLOT_H1, n);
        TRY(resnet(r, res_out, *cur, &blk->res[j], *h, *w));
        *cur = res_out;
        if (blk->cross) {
            float *attn_out = skip_push(r, c, n);
            TRY(transformer(r, attn_out, *cur, &blk->attn[j], *h, *w));
            *cur = attn_out;
        }
    }
    if (blk->sample_w) { /* Downsample2D: 3x3 conv, stride 2, padding 1 */
        float *s = skip_push(r, c, elems(r, b, c, *h / 2, *w / 2));
        if (!r->dry) {
            OP(r->ops->conv2d(r->m->be, s, *cur, blk->sample_w, blk->sample_b, b, c, *h, *w, c, 3,
                              3, 2, 1), "downsamplers.0");
            ADAPT(blk->sample_w, s, *cur, b, *h, *w);
        }
        *cur = s;
        *h /= 2;
        *w /= 2;
    }
    return LH_OK;
}

/* UNetMidBlock2DCrossAttn: resnet, transformer, resnet. */
static lh_status mid_block(run *r, const float **cur, const lh_unet_block *blk, int64_t h,
                           int64_t w) {
    size_t n = elems(r, r->b, blk->c_out, h, w);
    need(r, SLOT_H0, n);
    need(r, SLOT_H1, n);
    float *a = spare(r, *cur);
    TRY(resnet(r, a, *cur, &blk->res[0], h, w));
    float *bb = spare(r, a);
    TRY(transformer(r, bb, a, &blk->attn[0], h, w));
    a = spare(r, bb);
    TRY(resnet(r, a, bb, &blk->res[1], h, w));
    *cur = a;
    return LH_OK;
}

/* CrossAttnUpBlock2D / UpBlock2D: each layer concatenates the newest skip
 * connection onto the hidden state along channels. */
static lh_status up_block(run *r, const float **cur, const lh_unet_block *blk, int64_t *h,
                          int64_t *w) {
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, hw = *h * *w;
    for (int j = 0; j < blk->n_layers; j++) {
        const lh_unet_resnet *p = &blk->res[j];
        float *skip = NULL;
        int64_t c_skip = 0;
        TRY(skip_pop(r, &skip, &c_skip, p->name));
        int64_t c_cur = p->c_in - c_skip;
        if (c_cur <= 0)
            return lh_error_set(r->err, LH_ERR_INTERNAL, "unet: %s: skip connection has %lld "
                                "channels, the resnet takes %lld", p->name, (long long)c_skip,
                                (long long)p->c_in);
        size_t n_cat = elems(r, b, p->c_in, *h, *w), n = elems(r, b, blk->c_out, *h, *w);
        need(r, SLOT_H0, n_cat > n ? n_cat : n);
        need(r, SLOT_H1, n_cat > n ? n_cat : n);
        float *cat = spare(r, *cur);
        if (!r->dry) OP(ops->concat_channels(be, cat, *cur, skip, b, c_cur, c_skip, hw), p->name);
        float *res_out = spare(r, cat);
        TRY(resnet(r, res_out, cat, p, *h, *w));
        *cur = res_out;
        if (blk->cross) {
            float *attn_out = spare(r, res_out);
            TRY(transformer(r, attn_out, res_out, &blk->attn[j], *h, *w));
            *cur = attn_out;
        }
    }
    if (blk->sample_w) { /* Upsample2D: nearest 2x, then a 3x3 conv */
        int64_t c = blk->c_out;
        size_t n = elems(r, b, c, 2 * *h, 2 * *w);
        need(r, SLOT_T1, n);
        need(r, SLOT_H0, n);
        need(r, SLOT_H1, n);
        float *o = spare(r, *cur);
        if (!r->dry) {
            float *t1 = S(r, SLOT_T1);
            OP(ops->upsample_nearest2x(be, t1, *cur, b, c, *h, *w), "upsamplers.0");
            OP(ops->conv2d(be, o, t1, blk->sample_w, blk->sample_b, b, c, 2 * *h, 2 * *w, c, 3, 3,
                           1, 1), "upsamplers.0");
            ADAPT(blk->sample_w, o, t1, b, 2 * *h, 2 * *w);
        }
        *cur = o;
        *h *= 2;
        *w *= 2;
    }
    return LH_OK;
}

/* The whole network; run once dry and once for real. */
static lh_status forward(run *r, float *out, const float *x, const float *timesteps, int64_t h,
                         int64_t w) {
    lh_unet *m = r->m;
    const lh_unet_config *c = &m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = m->be;
    int64_t b = r->b, c0 = c->block_out_channels[0];
    r->top = 0;

    /* time_proj (sinusoidal) + time_embedding (linear_1, SiLU, linear_2), then
     * the SiLU every resnet applies before its time_emb_proj */
    need(r, SLOT_TPROJ, elems(r, b, c0, 1, 1));
    need(r, SLOT_THID, elems(r, b, 4, c0, 1));
    need(r, SLOT_TEMB, elems(r, b, 4, c0, 1));
    if (!r->dry) {
        float *tp = S(r, SLOT_TPROJ), *th = S(r, SLOT_THID), *te = S(r, SLOT_TEMB);
        OP(ops->timestep_embedding(be, tp, timesteps, b, c0, c->flip_sin_to_cos, c->freq_shift,
                                   10000.0f), "time_proj");
        OP(ops->linear(be, th, tp, m->time1_w, m->time1_b, b, c0, 4 * c0), "time_embedding");
        ADAPT(m->time1_w, th, tp, b, 1, 1);
        OP(ops->silu(be, th, th, b * 4 * c0), "time_embedding");
        OP(ops->linear(be, te, th, m->time2_w, m->time2_b, b, 4 * c0, 4 * c0), "time_embedding");
        ADAPT(m->time2_w, te, th, b, 1, 1);
        OP(ops->silu(be, te, te, b * 4 * c0), "time_embedding");
    }

    float *first = skip_push(r, c0, elems(r, b, c0, h, w));
    if (!r->dry) {
        OP(ops->conv2d(be, first, x, m->conv_in_w, m->conv_in_b, b, c->in_channels, h, w,
                       c0, 3, 3, 1, 1), "conv_in");
        ADAPT(m->conv_in_w, first, x, b, h, w);
    }
    const float *cur = first;
    for (int i = 0; i < c->n_blocks; i++) TRY(down_block(r, &cur, &m->down[i], &h, &w));
    TRY(mid_block(r, &cur, &m->mid, h, w));
    for (int i = 0; i < c->n_blocks; i++) TRY(up_block(r, &cur, &m->up[i], &h, &w));

    need(r, SLOT_T1, elems(r, b, c0, h, w));
    if (!r->dry) {
        float *t1 = S(r, SLOT_T1);
        OP(ops->group_norm(be, t1, cur, m->norm_out_w, m->norm_out_b, b, c0, h * w,
                           c->norm_num_groups, c->norm_eps, 1), "conv_norm_out");
        OP(ops->conv2d(be, out, t1, m->conv_out_w, m->conv_out_b, b, c0, h, w, c->out_channels, 3,
                       3, 1, 1), "conv_out");
        ADAPT(m->conv_out_w, out, t1, b, h, w);
    }
    return LH_OK;
}

/* ---- Entry ---- */

static size_t align_up(size_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

static lh_status check_sizes(const lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                             lh_error *err) {
    const lh_unet_config *c = &m->cfg;
    int64_t mult = (int64_t)1 << (c->n_blocks - 1);
    if (b < 1 || h < 1 || w < 1 || n_ctx < 1)
        return lh_error_set(err, LH_ERR_INVALID, "unet forward: batch %lld, size %lldx%lld and "
                            "context length %lld must all be positive", (long long)b,
                            (long long)h, (long long)w, (long long)n_ctx);
    /* Every product the forward forms (b * h * w * 8c for the feed-forward,
     * b * c_in * 4hw before an upsampling conv) stays below this bound. */
    int64_t cmax = c->in_channels > c->out_channels ? c->in_channels : c->out_channels, e;
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] > cmax) cmax = c->block_out_channels[i];
    if (__builtin_mul_overflow(b, h, &e) || __builtin_mul_overflow(e, w, &e) ||
        __builtin_mul_overflow(e, 16 * cmax, &e) || __builtin_mul_overflow(b, n_ctx, &e) ||
        __builtin_mul_overflow(e, cmax + c->cross_attention_dim, &e))
        return lh_error_set(err, LH_ERR_OVERFLOW, "unet forward: batch %lld at %lldx%lld with "
                            "context length %lld is too large", (long long)b, (long long)h,
                            (long long)w, (long long)n_ctx);
    if (h % mult || w % mult)
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "unet forward: latent size %lldx%lld is not "
                            "a multiple of %lld (2^%d downsamplings)", (long long)h, (long long)w,
                            (long long)mult, c->n_blocks - 1);
    return LH_OK;
}

/* The sizing pass: fills r's needs; *floats gets the arena size. */
static lh_status plan(run *r, lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                      size_t *floats, lh_error *err) {
    memset(r, 0, sizeof *r);
    r->m = m;
    r->ops = m->be->ops;
    r->err = err;
    r->b = b;
    r->n_ctx = n_ctx;
    r->dry = 1;
    lh_status st = forward(r, NULL, NULL, NULL, h, w);
    if (st != LH_OK) return st;
    size_t total = 0;
    for (int i = 0; i < SLOT_COUNT && !r->overflow; i++)
        if (lh_add_size(total, align_up(r->need[i]), &total)) r->overflow = 1;
    for (int i = 0; i < r->n_skips && !r->overflow; i++)
        if (lh_add_size(total, align_up(r->skip_need[i]), &total)) r->overflow = 1;
    size_t bytes;
    if (r->overflow || lh_mul_size(total, sizeof(float), &bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW, "unet forward: activations for batch %lld at "
                            "%lldx%lld overflow size_t", (long long)b, (long long)h, (long long)w);
    *floats = total;
    return LH_OK;
}

size_t lh_unet_forward_workspace(lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx) {
    run r;
    size_t floats;
    if (!m || check_sizes(m, b, h, w, n_ctx, NULL) != LH_OK ||
        plan(&r, m, b, h, w, n_ctx, &floats, NULL) != LH_OK)
        return 0;
    return floats * sizeof(float);
}

lh_status lh_unet_forward(lh_unet *m, float *out, const float *x, const float *timesteps,
                          const float *context, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                          lh_error *err) {
    if (!m || !out || !x || !timesteps || !context)
        return lh_error_set(err, LH_ERR_INVALID, "unet forward: a NULL tensor argument");
    lh_status st = check_sizes(m, b, h, w, n_ctx, err);
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < b; i++)
        if (!isfinite(timesteps[i]))
            return lh_error_set(err, LH_ERR_NUMERIC, "unet forward: timestep %lld is not finite",
                                (long long)i);

    /* Sizing pass, then one allocation carved into slots and skips. */
    run r;
    size_t floats;
    st = plan(&r, m, b, h, w, n_ctx, &floats, err);
    if (st != LH_OK) return st;
    float *arena = m->be->ops->alloc(m->be, (floats ? floats : 1) * sizeof(float));
    if (!arena)
        return lh_error_set(err, LH_ERR_NOMEM, "unet forward: cannot allocate %zu MiB of "
                            "activations (batch %lld, %lldx%lld)", (floats * sizeof(float)) >> 20,
                            (long long)b, (long long)h, (long long)w);
    float *p = arena;
    for (int i = 0; i < SLOT_COUNT; i++) {
        r.slot[i] = p;
        p += align_up(r.need[i]);
    }
    for (int i = 0; i < r.n_skips; i++) {
        r.skip[i] = p;
        p += align_up(r.skip_need[i]);
    }

    r.dry = 0;
    r.ctx = context;
    st = forward(&r, out, x, timesteps, h, w);
    if (st == LH_OK && r.top != 0)
        st = lh_error_set(err, LH_ERR_INTERNAL, "unet forward: %d skip connections left unused",
                          r.top);
    if (st == LH_OK) {
        st = m->be->ops->sync(m->be);
        if (st != LH_OK) lh_error_set(err, st, "unet forward: backend sync failed");
    }
    m->be->ops->free(m->be, arena);
    return st;
}
