/* The U-Net forward pass (diffusers UNet2DConditionModel.forward for SD 1.x /
 * 2.x) and its activation plan. The forward runs twice: a sizing pass that
 * only records how much scratch each slot and each skip connection needs,
 * then, after one backend allocation carved into those buffers, the real
 * pass. So the plan cannot drift from what the code uses. Training
 * (lh_unet_backward, at the end) runs the same forward with activation
 * records that keep what the backward reads, then walks a tape of units
 * backwards; checkpointing reruns each unit's forward from its kept input. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet.h"
#include "layers.h"
#include "log.h"

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
    SLOT_WIDE,        /* a half-stored weight widened for its op (m->wide_max) */
    SLOT_XIN,         /* F16/BF16: the input x rounded to it [b, c_in, h, w] */
    SLOT_CTXIN,       /* ... and the context [b, n_ctx, cross_attention_dim] */
    /* Training only (zero bytes in inference). The recompute record of
     * gradient checkpointing: one unit's saved activations, recomputed
     * from its input during the backward. */
    SLOT_R_H1, SLOT_R_H2,
    SLOT_X_TOK, SLOT_X_S0, SLOT_X_S1, SLOT_X_S2, SLOT_X_S3, SLOT_X_LN1, SLOT_X_LN2, SLOT_X_LN3,
    SLOT_X_Q1, SLOT_X_K1, SLOT_X_V1, SLOT_X_ATT1, SLOT_X_Q2, SLOT_X_K2, SLOT_X_V2, SLOT_X_ATT2,
    SLOT_X_FF, SLOT_X_GG, SLOT_X_UP, SLOT_X_LSE1, SLOT_X_LSE2,
    /* gradients: the hidden state's (ping-pong), one unit's backward scratch,
     * dL/d(silu(time embedding)) */
    SLOT_G_CUR0, SLOT_G_CUR1,
    SLOT_GA, SLOT_GB, SLOT_GC, SLOT_GD, SLOT_GE, SLOT_GF, SLOT_GQ, SLOT_GK, SLOT_GV, SLOT_GCTX,
    SLOT_GDT, SLOT_DTEMB,
    SLOT_COUNT
};

#define MAX_SKIPS (1 + LH_UNET_MAX_BLOCKS * LH_UNET_MAX_LAYERS)
#define ALIGN_FLOATS 64 /* 256-byte alignment for every carved buffer */
#define MAX_UNITS (8 + 2 * LH_UNET_MAX_BLOCKS * (3 * LH_UNET_MAX_LAYERS + 1))

/* ---- Activation records ----
 * Each unit's forward writes its intermediates into a record. Inference
 * aliases the record onto the scratch slots; training gives every field
 * that the backward reads its own storage (or, with checkpointing, the
 * shared recompute slots). Scratch fields are never read by the backward. */

typedef struct res_acts {
    float *h1;   /* [b, c_in, hw] silu(gn1(x)) */
    float *a;    /* [b, c_out, hw] conv1(h1) + temb_proj */
    float *h2;   /* [b, c_out, hw] silu(gn2(a)) */
    float *tres; /* [b, c_out] scratch */
    float *sc;   /* [b, c_out, hw] scratch: the shortcut */
} res_acts;

typedef struct attn_acts {
    float *q;    /* [b, hw, c] */
    float *k, *v; /* [b, n_kv, c] */
    float *att;  /* [b, hw, c] attention output */
    float *lse;  /* [b, heads, hw] its row logsumexp (training; NULL in inference) */
    float *proj; /* [b, hw, c] scratch: to_out(att) */
} attn_acts;

typedef struct tf_acts {
    float *t1;  /* [b, c, hw] scratch: gn(x) */
    float *tok; /* [b, hw, c] gn(x) as tokens: proj_in's input */
    float *s0, *s1, *s2, *s3; /* [b, hw, c] the stream after proj_in, attn1, attn2, ff */
    float *ln1, *ln2, *ln3;   /* [b, hw, c] layer norms of s0, s1, s2 */
    attn_acts a1, a2;
    float *ff;  /* [b * hw, 8c] GEGLU input */
    float *gg;  /* [b * hw, 4c] GEGLU output */
    float *ffo; /* [b * hw, c] scratch: ff2 output */
    float *t2;  /* [b, hw, c] scratch: proj_out output */
} tf_acts;

typedef struct time_acts {
    float *tp;  /* [b, c0] sinusoidal features */
    float *th;  /* [b, 4c0] linear_1 output */
    float *ths; /* [b, 4c0] silu(th) */
    float *tep; /* [b, 4c0] linear_2 output */
    float *te;  /* [b, 4c0] silu(tep): every resnet's input */
} time_acts;

/* One step of the training tape, in forward order. */
enum { U_CONV_IN, U_RES, U_TF, U_DOWN, U_CAT, U_UP, U_OUT };

typedef struct unit {
    int kind;
    const void *p; /* lh_unet_resnet, lh_unet_attn or lh_unet_block */
    int64_t h, w, ca, cb; /* input size; U_CAT: the two channel counts */
    const float *in;
    float *out;
    int skip_out; /* out is skip connection skip_out, or -1 */
    int skip_in;  /* U_CAT: the skip connection it read */
    res_acts ra;
    tf_acts ta;
    float *buf;   /* U_UP: upsampled input; U_OUT: silu(norm_out(in)) */
} unit;

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
    const float *ctx;  /* [b, n_ctx, cross_attention_dim] */
    const float *temb; /* [b, 4 c0] silu(time embedding) */
    time_acts ta;
    /* training */
    int train, ckpt;
    int recompute; /* checkpointing: rerunning a unit's forward in the backward */
    size_t taken, toff; /* floats of saved activations (sizing / carving) */
    float *tbase;
    /* The stash (training in F16/BF16): unit u's saved activations (with
     * checkpointing, what it keeps) are written to a record window, its
     * output (unit u + 1's input) to output window u & 1; when unit u + 1
     * opens (its first take) u's record is packed into `stash` in the half
     * type, exactly, as it is rounded to it, and when unit u + 2 opens, u's
     * output. The backward unpacks each unit's record, and its input, into
     * the windows before it. Half the memory of keeping them as float32,
     * for one pass over them each way. What is not rounded to the half
     * type (the time embedding every resnet reads, attention's logsumexp)
     * stays float32 (take_keep). */
    lh_dtype stash; /* the half type, or F32: off */
    /* per unit, [0] its record, [1] its output: floats (sizing pass), then
     * the place in the stash, in halves */
    size_t part_need[MAX_UNITS + 1][2], part_off[MAX_UNITS + 1][2];
    size_t wrec_need, wout_need[2], stash_halves, kept, koff, roff, ooff;
    float *wrec, *wout[2], *kbase;
    void *stash_base;
    int take_unit;     /* the unit the last take served, -1 before the first */
    int packed[2];     /* records / outputs of units [0, packed) are in the stash */
    int res_rec;       /* the unit whose record the record window holds, -1: none */
    int res_out[2];    /* the unit whose output each output window holds */
    int checked;       /* units whose output the overflow checks counted */
    lh_status stash_st; /* a pack that failed (the error is in err) */
    float *dskip[MAX_SKIPS];
    unit *tape;
    int n_units;
    lh_unet_grads *grads; /* full-parameter gradients, or NULL: frozen base */
    lh_dtype act;         /* activation precision (the backend's set_precision) */
    int tproj_done;       /* SLOT_TPROJ already holds the timestep table (graphs) */
    /* the NaN/Inf checks of a half-precision step, counted into backend
     * memory as the step runs (lh_unet_checks), or NULL: none */
    lh_unet_checks *ovf;
    lh_status wide_st; /* a failed widening, which the op then refused */
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

static size_t align_up(size_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

static lh_status stash_open(run *r, int u);

/* Training: a buffer of n floats that lives until the backward is done,
 * part of the record (out 0) or the output (out 1) of the unit being
 * recorded: in the stash's windows when it is on. */
static float *take_part(run *r, size_t n, int out) {
    if (r->stash != LH_DTYPE_F32) {
        int u = r->n_units;
        if (u > MAX_UNITS) {
            r->overflow = 1;
            return NULL;
        }
        size_t *need_ = &r->part_need[u][out];
        if (r->dry) {
            if (lh_add_size(*need_, align_up(n), need_)) r->overflow = 1;
            return NULL;
        }
        if (u != r->take_unit && r->stash_st == LH_OK) r->stash_st = stash_open(r, u);
        size_t *off = out ? &r->ooff : &r->roff;
        float *p = (out ? r->wout[u & 1] : r->wrec) + *off;
        *off += align_up(n);
        return p;
    }
    if (r->dry) {
        if (lh_add_size(r->taken, align_up(n), &r->taken)) r->overflow = 1;
        return NULL;
    }
    float *p = r->tbase + r->toff;
    r->toff += align_up(n);
    return p;
}

static float *take(run *r, size_t n) { return take_part(r, n, 0); }

/* The same for what is not rounded to the activation precision: kept as
 * float32 beside the stash. */
static float *take_keep(run *r, size_t n) {
    if (r->stash == LH_DTYPE_F32) return take(r, n);
    if (r->dry) {
        if (lh_add_size(r->kept, align_up(n), &r->kept)) r->overflow = 1;
        return NULL;
    }
    float *p = r->kbase + r->koff;
    r->koff += align_up(n);
    return p;
}

/* The next tape entry (NULL in inference). */
static unit *record(run *r, int kind, const void *p, int64_t h, int64_t w, const float *in,
                    float *out) {
    if (!r->train) return NULL;
    if (r->n_units == MAX_UNITS) { /* cannot happen within the config limits */
        r->overflow = 1;
        return NULL;
    }
    unit *u = &r->tape[r->n_units++];
    memset(u, 0, sizeof *u);
    u->kind = kind;
    u->p = p;
    u->h = h;
    u->w = w;
    u->in = in;
    u->out = out;
    u->skip_out = -1;
    u->skip_in = -1;
    return u;
}

/* A ping-pong buffer that is not `busy` (busy may be a skip buffer). */
static float *spare(run *r, const float *busy) {
    return busy == r->slot[SLOT_H0] ? r->slot[SLOT_H1] : r->slot[SLOT_H0];
}

/* The next hidden state of n floats: a ping-pong slot in inference, kept
 * storage in training (the next unit's saved input). */
static float *next(run *r, const float *busy, size_t n) {
    if (r->train) return take_part(r, n, 1);
    need(r, SLOT_H0, n);
    need(r, SLOT_H1, n);
    return spare(r, busy);
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
        if (st_ != LH_OK && r->wide_st != LH_OK)                                                   \
            return lh_error_set(r->err, r->wide_st, "unet: %s: widening a half weight failed "     \
                                "(%s)", (who), lh_strerror(r->wide_st));                           \
        if (st_ != LH_OK)                                                                          \
            return lh_error_set(r->err, st_, "unet: %s: backend op %s failed (%s)", (who),         \
                                #call, lh_strerror(st_));                                          \
    } while (0)

/* The type weight w is held in: F32, or a half type (host/weights.h). */
static lh_dtype held(const run *r, const float *w) {
    const lh_unet *m = r->m;
    if (!m->wide_max || !w) return LH_DTYPE_F32;
    /* all held in one half type (the usual case), or a mixture: look it up */
    return m->weight_storage != LH_DTYPE_F32 ? m->weight_storage : lh_wstore_type(&m->ws, w);
}

/* The float32 weights [n] an op reads: w itself, or, held in a half type,
 * w widened into SLOT_WIDE, which the op reads before the next widening
 * overwrites it (one stream: in order). NULL, which every op refuses, on
 * failure. */
static const float *wide(run *r, const float *w, size_t n) {
    lh_unet *m = r->m;
    if (r->dry) return w;
    lh_dtype t = held(r, w);
    if (t == LH_DTYPE_F32) return w;
    lh_status st = n > m->wide_max ? LH_ERR_INTERNAL
                                   : r->ops->cast(m->be, S(r, SLOT_WIDE), LH_DTYPE_F32, w, t,
                                                  (int64_t)n);
    if (st != LH_OK) {
        r->wide_st = st;
        return NULL;
    }
    return S(r, SLOT_WIDE);
}
/* A half weight of the activation type, which the backend multiplies as
 * it is (linear_hw), or NULL: widen it. */
static const void *held_direct(const run *r, const float *w, int has_op, lh_dtype *t) {
    if (r->dry || !has_op) return NULL;
    *t = held(r, w);
    return *t != LH_DTYPE_F32 && *t == r->act ? (const void *)w : NULL;
}

/* The backend's linear on out [rows, n_out] = x [rows, n_in] w^T + bias,
 * with w [n_out, n_in] as it is held. */
static lh_status lin(run *r, float *out, const float *x, const float *w, const float *bias,
                     int64_t rows, int64_t n_in, int64_t n_out) {
    lh_backend *be = r->m->be;
    lh_dtype t = LH_DTYPE_F32;
    const void *h = held_direct(r, w, r->ops->linear_hw != NULL, &t);
    if (h) return r->ops->linear_hw(be, out, x, h, t, bias, rows, n_in, n_out);
    return r->ops->linear(be, out, x, wide(r, w, (size_t)n_out * (size_t)n_in), bias, rows, n_in,
                          n_out);
}

/* The backend's linear_backward, with w as it is held (a half one is frozen:
 * no dw). */
static lh_status lin_bwd(run *r, float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int64_t rows, int64_t n_in, int64_t n_out) {
    lh_backend *be = r->m->be;
    lh_dtype t = LH_DTYPE_F32;
    const void *h = dx && !dw ? held_direct(r, w, r->ops->linear_backward_hw != NULL, &t) : NULL;
    if (h) return r->ops->linear_backward_hw(be, dx, db, dy, h, t, rows, n_in, n_out);
    return r->ops->linear_backward(be, dx, dw, db, dy, x, wide(r, w, (size_t)n_out * (size_t)n_in),
                                   rows, n_in, n_out);
}

/* The backend's conv2d with w [c_out, c_in, kh, kw] as it is held: a half
 * weight of the activation type through conv2d_hw where the backend has it
 * (and takes the shape), else widened. */
static lh_status cnv(run *r, float *out, const float *x, const float *w, const float *bias,
                     int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                     int64_t kw, int stride, int pad) {
    lh_backend *be = r->m->be;
    lh_dtype t = LH_DTYPE_F32;
    const void *hw = held_direct(r, w, r->ops->conv2d_hw != NULL, &t);
    if (hw) {
        lh_status st =
            r->ops->conv2d_hw(be, out, x, hw, t, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad);
        if (st != LH_ERR_UNSUPPORTED) return st;
    }
    size_t nw = (size_t)c_out * (size_t)c_in * (size_t)kh * (size_t)kw;
    return r->ops->conv2d(be, out, x, wide(r, w, nw), bias, n, c_in, h, wd, c_out, kh, kw, stride,
                          pad);
}

/* The backend's conv2d_backward, with w as it is held (a half one is
 * frozen: no dw). */
static lh_status cnv_bwd(run *r, float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                         int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    lh_backend *be = r->m->be;
    lh_dtype t = LH_DTYPE_F32;
    const void *hw = dx && !dw ? held_direct(r, w, r->ops->conv2d_backward_hw != NULL, &t) : NULL;
    if (hw) {
        lh_status st = r->ops->conv2d_backward_hw(be, dx, db, dy, hw, t, n, c_in, h, wd, c_out, kh,
                                                  kw, stride, pad);
        if (st != LH_ERR_UNSUPPORTED) return st;
    }
    size_t nw = (size_t)c_out * (size_t)c_in * (size_t)kh * (size_t)kw;
    return r->ops->conv2d_backward(be, dx, dw, db, dy, x, wide(r, w, nw), n, c_in, h, wd, c_out, kh,
                                   kw, stride, pad);
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        lh_status st_ = (expr);                                                                    \
        if (st_ != LH_OK) return st_;                                                              \
    } while (0)

/* Runtime adapter terms on the layer whose weight is w (host/layers.h). */
#define ADAPT(w, y, x, n, h, w_)                                                                   \
    TRY(lh_layers_runtime(r->m->adapt, (w), (y), (x), (n), (h), (w_), r->act, r->err))

/* ---- Units: one forward per layer group, shared by inference and training ---- */

/* The resnet record: scratch slots in inference; kept storage in training,
 * or the shared recompute slots with checkpointing. */
static res_acts res_record(run *r, int64_t ci, int64_t co, int64_t h, int64_t w) {
    int64_t b = r->b;
    size_t ni = elems(r, b, ci, h, w), no = elems(r, b, co, h, w), nt = elems(r, b, co, 1, 1);
    need(r, SLOT_T2, no);
    need(r, SLOT_TRES, nt);
    if (!r->train) {
        need(r, SLOT_T1, ni > no ? ni : no);
        return (res_acts){S(r, SLOT_T1), S(r, SLOT_T2), S(r, SLOT_T1), S(r, SLOT_TRES),
                          S(r, SLOT_T2)};
    }
    size_t nx = ni > no ? ni : no;
    need(r, SLOT_GA, no);
    need(r, SLOT_GB, no);
    need(r, SLOT_GC, ni);
    need(r, SLOT_GD, ni);
    need(r, SLOT_GE, nt);
    need(r, SLOT_G_CUR0, nx);
    need(r, SLOT_G_CUR1, nx);
    res_acts a = {NULL, NULL, NULL, S(r, SLOT_TRES), S(r, SLOT_T2)};
    if (r->ckpt) { /* a (conv1's output) stays: the recompute is two group norms */
        need(r, SLOT_R_H1, ni);
        need(r, SLOT_R_H2, no);
        a.h1 = S(r, SLOT_R_H1);
        a.a = take(r, no);
        a.h2 = S(r, SLOT_R_H2);
    } else {
        a.h1 = take(r, ni);
        a.a = take(r, no);
        a.h2 = take(r, no);
    }
    return a;
}

/* ResnetBlock2D: out = shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x))) + temb_proj))).
 * out must not be x. */
static lh_status resnet_fwd(run *r, const res_acts *a,
                            float *out,     /* [b, c_out, h, w] */
                            const float *x, /* [b, c_in, h, w] */
                            const lh_unet_resnet *p, int64_t h, int64_t w) {
    const lh_unet_config *c = &r->m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, hw = h * w, ci = p->c_in, co = p->c_out;
    const char *who = p->name;

    OP(ops->group_norm(be, a->h1, x, p->norm1_w, p->norm1_b, b, ci, hw, c->norm_num_groups,
                       c->norm_eps, 1), who);
    if (!r->recompute) { /* checkpointing keeps a */
        OP(cnv(r, a->a, a->h1, p->conv1_w, p->conv1_b, b, ci, h, w, co, 3, 3, 1, 1), who);
        ADAPT(p->conv1_w, a->a, a->h1, b, h, w);
        OP(lin(r, a->tres, r->temb, p->temb_w, p->temb_b, b, 4 * c->block_out_channels[0], co),
           who);
        ADAPT(p->temb_w, a->tres, r->temb, b, 1, 1);
        OP(ops->add_channel_bias(be, a->a, a->a, a->tres, b, co, hw), who);
    }
    OP(ops->group_norm(be, a->h2, a->a, p->norm2_w, p->norm2_b, b, co, hw, c->norm_num_groups,
                       c->norm_eps, 1), who);
    if (r->recompute) return LH_OK; /* the backward reads h1, a, h2; out is kept */
    OP(cnv(r, out, a->h2, p->conv2_w, p->conv2_b, b, co, h, w, co, 3, 3, 1, 1), who);
    ADAPT(p->conv2_w, out, a->h2, b, h, w);
    if (p->short_w) {
        OP(cnv(r, a->sc, x, p->short_w, p->short_b, b, ci, h, w, co, 1, 1, 1, 0), who);
        ADAPT(p->short_w, a->sc, x, b, h, w);
        OP(ops->add(be, out, out, a->sc, b * co * hw), who);
    } else {
        OP(ops->add(be, out, out, x, b * co * hw), who);
    }
    return LH_OK;
}

static lh_status resnet(run *r, float *out, const float *x, const lh_unet_resnet *p, int64_t h,
                        int64_t w) {
    res_acts a = res_record(r, p->c_in, p->c_out, h, w);
    unit *u = record(r, U_RES, p, h, w, x, out);
    if (u) u->ra = a;
    if (r->dry) return LH_OK;
    return resnet_fwd(r, &a, out, x, p, h, w);
}

/* One attention of a BasicTransformerBlock: s_out = s_in + to_out(attn(q(ln), k(kv), v(kv))).
 * kv is ln itself (self-attention, n_kv = hw) or the text context. */
static lh_status attention(run *r, const attn_acts *A,
                           float *s_out,      /* [b, hw, c] (may be s_in) */
                           const float *s_in, /* [b, hw, c] */
                           const float *ln,   /* [b, hw, c] */
                           const float *kv,   /* [b, n_kv, c_kv] */
                           const float *wq, const float *wk, const float *wv, const float *wo,
                           const float *bo, int64_t c, int64_t heads, int64_t hw, int64_t n_kv,
                           int64_t c_kv, const char *who) {
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, d = c / heads;
    OP(lin(r, A->q, ln, wq, NULL, b * hw, c, c), who);
    ADAPT(wq, A->q, ln, b * hw, 1, 1);
    OP(lin(r, A->k, kv, wk, NULL, b * n_kv, c_kv, c), who);
    ADAPT(wk, A->k, kv, b * n_kv, 1, 1);
    OP(lin(r, A->v, kv, wv, NULL, b * n_kv, c_kv, c), who);
    ADAPT(wv, A->v, kv, b * n_kv, 1, 1);
    /* checkpointing keeps attention outputs: the recompute skips the kernel */
    if (!r->recompute)
        OP(ops->attention(be, A->att, A->lse, A->q, A->k, A->v, b, heads, hw, n_kv, d,
                          1.0f / sqrtf((float)d), 0), who);
    /* inference: proj is ln's slot (ln is consumed once q, k and v exist) */
    OP(lin(r, A->proj, A->att, wo, bo, b * hw, c, c), who);
    ADAPT(wo, A->proj, A->att, b * hw, 1, 1);
    OP(ops->add(be, s_out, s_in, A->proj, b * hw * c), who);
    return LH_OK;
}

/* The transformer record (see res_record). */
static tf_acts tf_record(run *r, int64_t c, int64_t heads, int64_t h, int64_t w) {
    int64_t b = r->b, n = b * h * w;
    size_t lse = elems(r, b, heads, h * w, 1);
    size_t tok = elems(r, b, h * w, c, 1), ctx = elems(r, b, r->n_ctx, c, 1);
    size_t kv = tok > ctx ? tok : ctx, f8 = elems(r, n, 8, c, 1), f4 = elems(r, n, 4, c, 1);
    need(r, SLOT_T1, tok);
    need(r, SLOT_T2, tok);
    need(r, SLOT_LN, tok);
    if (!r->train) {
        need(r, SLOT_TOK, tok);
        need(r, SLOT_Q, tok);
        need(r, SLOT_K, kv);
        need(r, SLOT_V, kv);
        need(r, SLOT_ATT, tok);
        need(r, SLOT_FF, f8);
        need(r, SLOT_GEGLU, f4);
        float *st = S(r, SLOT_TOK), *ln = S(r, SLOT_LN);
        attn_acts at = {S(r, SLOT_Q), S(r, SLOT_K), S(r, SLOT_V), S(r, SLOT_ATT), NULL, ln};
        return (tf_acts){.t1 = S(r, SLOT_T1), .tok = S(r, SLOT_T2), .s0 = st, .s1 = st,
                         .s2 = st, .s3 = st, .ln1 = ln, .ln2 = ln, .ln3 = ln, .a1 = at,
                         .a2 = at, .ff = S(r, SLOT_FF), .gg = S(r, SLOT_GEGLU), .ffo = ln,
                         .t2 = S(r, SLOT_T2)};
    }
    need(r, SLOT_GA, tok);
    need(r, SLOT_GB, tok);
    need(r, SLOT_GC, f4);
    need(r, SLOT_GD, tok);
    need(r, SLOT_GE, tok);
    need(r, SLOT_GF, f8);
    need(r, SLOT_GQ, tok);
    need(r, SLOT_GK, kv);
    need(r, SLOT_GV, kv);
    need(r, SLOT_GCTX, elems(r, b, r->n_ctx, r->m->cfg.cross_attention_dim, 1));
    need(r, SLOT_G_CUR0, tok);
    need(r, SLOT_G_CUR1, tok);
    tf_acts a = {.t1 = S(r, SLOT_T1), .t2 = S(r, SLOT_T2), .ffo = S(r, SLOT_LN)};
    a.a1.proj = a.a2.proj = S(r, SLOT_LN);
    /* field, slot, size: the saved activations */
    struct { float **f; int slot; size_t n; } keep[] = {
        {&a.tok, SLOT_X_TOK, tok}, {&a.s0, SLOT_X_S0, tok}, {&a.s1, SLOT_X_S1, tok},
        {&a.s2, SLOT_X_S2, tok}, {&a.s3, SLOT_X_S3, tok}, {&a.ln1, SLOT_X_LN1, tok},
        {&a.ln2, SLOT_X_LN2, tok}, {&a.ln3, SLOT_X_LN3, tok}, {&a.a1.q, SLOT_X_Q1, tok},
        {&a.a1.k, SLOT_X_K1, tok}, {&a.a1.v, SLOT_X_V1, tok}, {&a.a1.att, SLOT_X_ATT1, tok},
        {&a.a2.q, SLOT_X_Q2, tok}, {&a.a2.k, SLOT_X_K2, ctx}, {&a.a2.v, SLOT_X_V2, ctx},
        {&a.a2.att, SLOT_X_ATT2, tok}, {&a.ff, SLOT_X_FF, f8}, {&a.gg, SLOT_X_GG, f4},
        {&a.a1.lse, SLOT_X_LSE1, lse}, {&a.a2.lse, SLOT_X_LSE2, lse},
    };
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        /* with checkpointing the attention outputs and their logsumexp are
         * still kept (a few % of the activations): recomputing them is the
         * dearest part of a transformer's forward */
        int dear = keep[i].f == &a.a1.att || keep[i].f == &a.a2.att || keep[i].f == &a.a1.lse ||
                   keep[i].f == &a.a2.lse;
        int is_lse = keep[i].f == &a.a1.lse || keep[i].f == &a.a2.lse;
        if (r->ckpt && !dear) {
            need(r, keep[i].slot, keep[i].n);
            *keep[i].f = S(r, keep[i].slot);
        } else {
            *keep[i].f = is_lse ? take_keep(r, keep[i].n) : take(r, keep[i].n);
        }
    }
    return a;
}

/* Transformer2DModel (continuous input, one BasicTransformerBlock):
 * out = x + proj_out(block(proj_in(gn(x)))). proj_in/proj_out are 1x1 convs
 * (SD 1.x) or linears (SD 2.x); on tokens both are the same matrix product.
 * out must not be x. */
static lh_status transformer_fwd(run *r, const tf_acts *A,
                                 float *out,     /* [b, c, h, w] */
                                 const float *x, /* [b, c, h, w] */
                                 const lh_unet_attn *a, int64_t h, int64_t w) {
    const lh_unet_config *cfg = &r->m->cfg;
    int64_t b = r->b, c = a->c, hw = h * w, n = b * hw, heads = a->heads;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    const lh_unet_tblock *t = &a->block;
    const char *who = a->name;

    OP(ops->group_norm(be, A->t1, x, a->norm_w, a->norm_b, b, c, hw, cfg->norm_num_groups, 1e-6f,
                       0), who);
    OP(ops->transpose_c_hw(be, A->tok, A->t1, b, c, hw), who);
    OP(lin(r, A->s0, A->tok, a->proj_in_w, a->proj_in_b, n, c, c), who);
    ADAPT(a->proj_in_w, A->s0, A->tok, n, 1, 1);

    OP(ops->layer_norm(be, A->ln1, A->s0, t->norm1_w, t->norm1_b, n, c, 1e-5f), who);
    TRY(attention(r, &A->a1, A->s1, A->s0, A->ln1, A->ln1, t->q1, t->k1, t->v1, t->o1_w, t->o1_b,
                  c, heads, hw, hw, c, who));
    OP(ops->layer_norm(be, A->ln2, A->s1, t->norm2_w, t->norm2_b, n, c, 1e-5f), who);
    TRY(attention(r, &A->a2, A->s2, A->s1, A->ln2, r->ctx, t->q2, t->k2, t->v2, t->o2_w, t->o2_b,
                  c, heads, hw, r->n_ctx, cfg->cross_attention_dim, who));
    OP(ops->layer_norm(be, A->ln3, A->s2, t->norm3_w, t->norm3_b, n, c, 1e-5f), who);
    OP(lin(r, A->ff, A->ln3, t->ff1_w, t->ff1_b, n, c, 8 * c), who);
    ADAPT(t->ff1_w, A->ff, A->ln3, n, 1, 1);
    OP(ops->geglu(be, A->gg, A->ff, n, 4 * c), who);
    OP(lin(r, A->ffo, A->gg, t->ff2_w, t->ff2_b, n, 4 * c, c), who);
    ADAPT(t->ff2_w, A->ffo, A->gg, n, 1, 1);
    OP(ops->add(be, A->s3, A->s2, A->ffo, n * c), who);
    if (r->recompute) return LH_OK; /* the backward reads up to s3; out is kept */

    OP(lin(r, A->t2, A->s3, a->proj_out_w, a->proj_out_b, n, c, c), who);
    ADAPT(a->proj_out_w, A->t2, A->s3, n, 1, 1);
    OP(ops->transpose_c_hw(be, out, A->t2, b, hw, c), who);
    OP(ops->add(be, out, out, x, n * c), who);
    return LH_OK;
}

static lh_status transformer(run *r, float *out, const float *x, const lh_unet_attn *a,
                             int64_t h, int64_t w) {
    tf_acts A = tf_record(r, a->c, a->heads, h, w);
    unit *u = record(r, U_TF, a, h, w, x, out);
    if (u) u->ta = A;
    if (r->dry) return LH_OK;
    return transformer_fwd(r, &A, out, x, a, h, w);
}

/* Downsample2D: 3x3 conv, stride 2, padding 1. */
static lh_status down_fwd(run *r, float *out, const float *x, const lh_unet_block *blk,
                          int64_t h, int64_t w) {
    int64_t c = blk->c_out;
    OP(cnv(r, out, x, blk->sample_w, blk->sample_b, r->b, c, h, w, c, 3, 3, 2, 1),
       "downsamplers.0");
    ADAPT(blk->sample_w, out, x, r->b, h, w);
    return LH_OK;
}

/* Upsample2D: nearest 2x into up, then a 3x3 conv. */
static lh_status up_fwd(run *r, float *up, float *out, const float *x, const lh_unet_block *blk,
                        int64_t h, int64_t w) {
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, c = blk->c_out;
    OP(ops->upsample_nearest2x(be, up, x, b, c, h, w), "upsamplers.0");
    if (r->recompute) return LH_OK; /* the backward reads the upsampled input; out is kept */
    OP(cnv(r, out, up, blk->sample_w, blk->sample_b, b, c, 2 * h, 2 * w, c, 3, 3, 1, 1),
       "upsamplers.0");
    ADAPT(blk->sample_w, out, up, b, 2 * h, 2 * w);
    return LH_OK;
}

/* Training: the last unit's output is the newest skip connection. */
static void mark_skip(run *r) {
    if (r->train && r->n_units > 0) r->tape[r->n_units - 1].skip_out = r->top - 1;
}

/* CrossAttnDownBlock2D / DownBlock2D: every layer's output and the
 * downsampler's are skip connections. *cur is the hidden state (in and out). */
static lh_status down_block(run *r, const float **cur, const lh_unet_block *blk, int64_t *h,
                            int64_t *w) {
    int64_t b = r->b, c = blk->c_out;
    for (int j = 0; j < blk->n_layers; j++) {
        size_t n = elems(r, b, c, *h, *w);
        if (!r->train) {
            need(r, SLOT_H0, n);
            need(r, SLOT_H1, n);
        }
        float *res_out = blk->cross ? next(r, *cur, n) : skip_push(r, c, n);
        TRY(resnet(r, res_out, *cur, &blk->res[j], *h, *w));
        if (!blk->cross) mark_skip(r);
        *cur = res_out;
        if (blk->cross) {
            float *attn_out = skip_push(r, c, n);
            TRY(transformer(r, attn_out, *cur, &blk->attn[j], *h, *w));
            mark_skip(r);
            *cur = attn_out;
        }
    }
    if (blk->sample_w) {
        float *s = skip_push(r, c, elems(r, b, c, *h / 2, *w / 2));
        if (r->train) need(r, SLOT_G_CUR0, elems(r, b, c, *h, *w));
        if (r->train) need(r, SLOT_G_CUR1, elems(r, b, c, *h, *w));
        record(r, U_DOWN, blk, *h, *w, *cur, s);
        mark_skip(r);
        if (!r->dry) TRY(down_fwd(r, s, *cur, blk, *h, *w));
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
    float *a = next(r, *cur, n);
    TRY(resnet(r, a, *cur, &blk->res[0], h, w));
    float *bb = next(r, a, n);
    TRY(transformer(r, bb, a, &blk->attn[0], h, w));
    a = next(r, bb, n);
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
        if (!r->train) {
            need(r, SLOT_H0, n_cat > n ? n_cat : n);
            need(r, SLOT_H1, n_cat > n ? n_cat : n);
        }
        float *cat = next(r, *cur, n_cat);
        unit *u = record(r, U_CAT, blk, *h, *w, *cur, cat);
        if (u) {
            u->ca = c_cur;
            u->cb = c_skip;
            u->skip_in = r->top;
        }
        if (!r->dry) OP(ops->concat_channels(be, cat, *cur, skip, b, c_cur, c_skip, hw), p->name);
        float *res_out = next(r, cat, n);
        TRY(resnet(r, res_out, cat, p, *h, *w));
        *cur = res_out;
        if (blk->cross) {
            float *attn_out = next(r, res_out, n);
            TRY(transformer(r, attn_out, res_out, &blk->attn[j], *h, *w));
            *cur = attn_out;
        }
    }
    if (blk->sample_w) {
        int64_t c = blk->c_out;
        size_t n = elems(r, b, c, 2 * *h, 2 * *w);
        float *up;
        if (!r->train) {
            need(r, SLOT_T1, n);
            up = S(r, SLOT_T1);
        } else if (r->ckpt) {
            need(r, SLOT_X_UP, n);
            up = S(r, SLOT_X_UP);
        } else {
            up = take(r, n);
        }
        if (r->train) {
            need(r, SLOT_GA, n);
            need(r, SLOT_G_CUR0, n);
            need(r, SLOT_G_CUR1, n);
        }
        float *o = next(r, *cur, n);
        unit *u = record(r, U_UP, blk, *h, *w, *cur, o);
        if (u) u->buf = up;
        if (!r->dry) TRY(up_fwd(r, up, o, *cur, blk, *h, *w));
        *cur = o;
        *h *= 2;
        *w *= 2;
    }
    return LH_OK;
}

/* time_proj (sinusoidal) + time_embedding (linear_1, SiLU, linear_2), then
 * the SiLU every resnet applies before its time_emb_proj. */
static lh_status time_fwd(run *r, const time_acts *a, const float *timesteps) {
    lh_unet *m = r->m;
    const lh_unet_config *c = &m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = m->be;
    int64_t b = r->b, c0 = c->block_out_channels[0];
    if (!r->tproj_done)
        OP(ops->timestep_embedding(be, a->tp, timesteps, b, c0, c->flip_sin_to_cos,
                                   c->freq_shift, 10000.0f), "time_proj");
    OP(lin(r, a->th, a->tp, m->time1_w, m->time1_b, b, c0, 4 * c0), "time_embedding");
    ADAPT(m->time1_w, a->th, a->tp, b, 1, 1);
    OP(ops->silu(be, a->ths, a->th, b * 4 * c0), "time_embedding");
    OP(lin(r, a->tep, a->ths, m->time2_w, m->time2_b, b, 4 * c0, 4 * c0), "time_embedding");
    ADAPT(m->time2_w, a->tep, a->ths, b, 1, 1);
    OP(ops->silu(be, a->te, a->tep, b * 4 * c0), "time_embedding");
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
    r->n_units = 0;
    r->toff = 0;
    r->koff = r->roff = r->ooff = 0;
    r->take_unit = -1;
    r->packed[0] = r->packed[1] = 0;
    r->checked = -1;
    r->res_rec = r->res_out[0] = r->res_out[1] = -1;
    need(r, SLOT_WIDE, m->wide_max);
    /* Under F16/BF16 the inputs are rounded to it first, as autocast casts
     * them for conv_in and the K/V projections (and diffusers' fp16
     * pipeline hands the U-Net half tensors): every backend's products then
     * read the same values (a device's half GEMMs could not read others). */
    size_t nxi = elems(r, b, c->in_channels, h, w);
    size_t nci = elems(r, b, r->n_ctx, c->cross_attention_dim, 1);
    need(r, SLOT_XIN, nxi);
    need(r, SLOT_CTXIN, nci);
    if (!r->dry && r->act != LH_DTYPE_F32) {
        OP(ops->copy(be, S(r, SLOT_XIN), x, nxi * sizeof(float)), "input");
        OP(ops->round(be, S(r, SLOT_XIN), (int64_t)nxi, r->act), "input");
        OP(ops->copy(be, S(r, SLOT_CTXIN), r->ctx, nci * sizeof(float)), "context");
        OP(ops->round(be, S(r, SLOT_CTXIN), (int64_t)nci, r->act), "context");
        x = S(r, SLOT_XIN);
        r->ctx = S(r, SLOT_CTXIN);
    }

    size_t ntp = elems(r, b, c0, 1, 1), nte = elems(r, b, 4, c0, 1);
    time_acts ta;
    if (!r->train) {
        need(r, SLOT_TPROJ, ntp);
        need(r, SLOT_THID, nte);
        need(r, SLOT_TEMB, nte);
        ta = (time_acts){S(r, SLOT_TPROJ), S(r, SLOT_THID), S(r, SLOT_THID), S(r, SLOT_TEMB),
                         S(r, SLOT_TEMB)};
    } else {
        ta.tp = take_keep(r, ntp);
        ta.th = take_keep(r, nte);
        ta.ths = take_keep(r, nte);
        ta.tep = take_keep(r, nte);
        ta.te = take_keep(r, nte);
        need(r, SLOT_DTEMB, nte);
        need(r, SLOT_GDT, nte);
        need(r, SLOT_GA, nte);
    }
    r->ta = ta;
    r->temb = ta.te;
    if (!r->dry) TRY(time_fwd(r, &ta, timesteps));

    float *first = skip_push(r, c0, elems(r, b, c0, h, w));
    record(r, U_CONV_IN, NULL, h, w, x, first);
    mark_skip(r);
    if (!r->dry) {
        OP(cnv(r, first, x, m->conv_in_w, m->conv_in_b, b, c->in_channels, h, w, c0, 3, 3, 1, 1),
           "conv_in");
        ADAPT(m->conv_in_w, first, x, b, h, w);
    }
    const float *cur = first;
    for (int i = 0; i < c->n_blocks; i++) TRY(down_block(r, &cur, &m->down[i], &h, &w));
    TRY(mid_block(r, &cur, &m->mid, h, w));
    for (int i = 0; i < c->n_blocks; i++) TRY(up_block(r, &cur, &m->up[i], &h, &w));

    size_t n = elems(r, b, c0, h, w);
    float *g;
    if (!r->train) {
        need(r, SLOT_T1, n);
        g = S(r, SLOT_T1);
    } else {
        g = take(r, n);
        float *o = take_part(r, elems(r, b, c->out_channels, h, w), 1);
        if (!out) out = o;
        need(r, SLOT_GA, n);
        need(r, SLOT_G_CUR0, n);
        need(r, SLOT_G_CUR1, n);
    }
    unit *u = record(r, U_OUT, NULL, h, w, cur, out);
    if (u) u->buf = g;
    if (!r->dry) {
        OP(ops->group_norm(be, g, cur, m->norm_out_w, m->norm_out_b, b, c0, h * w,
                           c->norm_num_groups, c->norm_eps, 1), "conv_norm_out");
        OP(cnv(r, out, g, m->conv_out_w, m->conv_out_b, b, c0, h, w, c->out_channels, 3, 3, 1, 1),
           "conv_out");
        ADAPT(m->conv_out_w, out, g, b, h, w);
    }
    return LH_OK;
}

/* ---- Entry ---- */

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

/* The sizing pass: fills r's needs; *floats gets the arena size. Training
 * (tape non-NULL) adds the skip connections' gradients and the kept
 * activations. */
static lh_status plan(run *r, lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                      unit *tape, int ckpt, lh_dtype stash, size_t *floats, lh_error *err) {
    memset(r, 0, sizeof *r);
    r->stash = tape ? stash : LH_DTYPE_F32;
    r->m = m;
    r->ops = m->be->ops;
    r->err = err;
    r->b = b;
    r->n_ctx = n_ctx;
    r->dry = 1;
    r->train = tape != NULL;
    r->ckpt = tape && ckpt;
    r->tape = tape;
    lh_status st = forward(r, NULL, NULL, NULL, h, w);
    if (st != LH_OK) return st;
    size_t total = 0;
    for (int i = 0; i < SLOT_COUNT && !r->overflow; i++)
        if (lh_add_size(total, align_up(r->need[i]), &total)) r->overflow = 1;
    for (int pass = 0; pass < (r->train ? 2 : 1); pass++)
        for (int i = 0; i < r->n_skips && !r->overflow; i++)
            if (lh_add_size(total, align_up(r->skip_need[i]), &total)) r->overflow = 1;
    if (!r->overflow && lh_add_size(total, r->taken, &total)) r->overflow = 1;
    if (r->stash != LH_DTYPE_F32) { /* the kept float32, the windows, the stash */
        for (int u = 0; u <= r->n_units && !r->overflow; u++) {
            size_t rec = r->part_need[u][0], out = r->part_need[u][1];
            if (rec > r->wrec_need) r->wrec_need = rec;
            if (out > r->wout_need[u & 1]) r->wout_need[u & 1] = out;
            for (int k = 0; k < 2; k++) {
                r->part_off[u][k] = r->stash_halves;
                if (lh_add_size(r->stash_halves, r->part_need[u][k], &r->stash_halves))
                    r->overflow = 1;
            }
        }
        size_t sf = (r->stash_halves + 1) / 2;
        if (!r->overflow && (lh_add_size(total, r->kept, &total) ||
                             lh_add_size(total, r->wrec_need, &total) ||
                             lh_add_size(total, r->wout_need[0], &total) ||
                             lh_add_size(total, r->wout_need[1], &total) ||
                             lh_add_size(total, align_up(sf), &total)))
            r->overflow = 1;
    }
    size_t bytes;
    if (r->overflow || lh_mul_size(total, sizeof(float), &bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW, "unet forward: activations for batch %lld at "
                            "%lldx%lld overflow size_t", (long long)b, (long long)h, (long long)w);
    *floats = total;
    return LH_OK;
}

/* Carve the arena into r's slots, skips (and in training the skips'
 * gradients and the kept activations) as plan() sized them. */
static void carve(run *r, float *arena) {
    float *p = arena;
    for (int i = 0; i < SLOT_COUNT; i++) {
        r->slot[i] = p;
        p += align_up(r->need[i]);
    }
    for (int i = 0; i < r->n_skips; i++) {
        r->skip[i] = p;
        p += align_up(r->skip_need[i]);
    }
    if (!r->train) return;
    for (int i = 0; i < r->n_skips; i++) {
        r->dskip[i] = p;
        p += align_up(r->skip_need[i]);
    }
    r->tbase = p;
    if (r->stash == LH_DTYPE_F32) return;
    r->kbase = p;
    r->wrec = r->kbase + r->kept;
    r->wout[0] = r->wrec + r->wrec_need;
    r->wout[1] = r->wout[0] + r->wout_need[0];
    r->stash_base = r->wout[1] + r->wout_need[1];
}

/* ---- The stash (see run) ---- */

static lh_status check_finite(run *r, const char *unit, const float *x, size_t n, int backward);
static void unit_info(const run *r, const unit *u, char *name, size_t size, size_t *n_in,
                      size_t *n_out);

/* The overflow checks of the time embedding and then of unit outputs
 * [checked, upto), in that order; each while its unit is in its window. */
static lh_status check_units(run *r, int upto) {
    if (!r->ovf) return LH_OK;
    if (r->checked < 0) {
        TRY(check_finite(r, "time_embedding", r->ta.te,
                         (size_t)r->b * 4 * (size_t)r->m->cfg.block_out_channels[0], 0));
        r->checked = 0;
    }
    for (; r->checked < upto; r->checked++) {
        char name[64];
        size_t n_in, n_out;
        const unit *u = &r->tape[r->checked];
        unit_info(r, u, name, sizeof name, &n_in, &n_out);
        TRY(check_finite(r, name, u->out, n_out, 0));
    }
    return LH_OK;
}

/* Unit j's record (out 0) or output (out 1) from its window into the stash
 * (pack) or back (unpack). */
static lh_status stash_move(run *r, int j, int out, int pack) {
    size_t n = r->part_need[j][out];
    if (!n) return LH_OK;
    uint16_t *s = (uint16_t *)r->stash_base + r->part_off[j][out];
    float *w = out ? r->wout[j & 1] : r->wrec;
    lh_status st = pack ? r->ops->cast(r->m->be, s, r->stash, w, LH_DTYPE_F32, (int64_t)n)
                        : r->ops->cast(r->m->be, w, LH_DTYPE_F32, s, r->stash, (int64_t)n);
    if (st != LH_OK)
        return lh_error_set(r->err, st, "unet train: %s the saved %s of unit %d failed",
                            pack ? "packing" : "unpacking", out ? "output" : "activations", j);
    return LH_OK;
}

/* Unit u takes its first buffer: the records of the units before it go to
 * the stash, and the outputs of those before u - 1 (u - 1's output is u's
 * input: it stays), each unit's overflow check first. */
static lh_status stash_open(run *r, int u) {
    for (; r->packed[0] < u; r->packed[0]++) TRY(stash_move(r, r->packed[0], 0, 1));
    for (; r->packed[1] < u - 1; r->packed[1]++) {
        TRY(check_units(r, r->packed[1] + 1));
        TRY(stash_move(r, r->packed[1], 1, 1));
    }
    r->take_unit = u;
    r->roff = r->ooff = 0;
    r->res_rec = r->res_out[u & 1] = u;
    return LH_OK;
}

/* The backward of unit i reads its record and its input, unit i - 1's
 * output: both in their windows. */
static lh_status stash_need(run *r, int i) {
    if (r->stash == LH_DTYPE_F32) return LH_OK;
    if (r->res_rec != i) TRY(stash_move(r, i, 0, 0));
    r->res_rec = i;
    if (i > 0 && r->res_out[(i - 1) & 1] != i - 1) TRY(stash_move(r, i - 1, 1, 0));
    if (i > 0) r->res_out[(i - 1) & 1] = i - 1;
    return LH_OK;
}

size_t lh_unet_forward_workspace(lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx) {
    run r;
    size_t floats;
    if (!m || check_sizes(m, b, h, w, n_ctx, NULL) != LH_OK ||
        plan(&r, m, b, h, w, n_ctx, NULL, 0, LH_DTYPE_F32, &floats, NULL) != LH_OK)
        return 0;
    return floats * sizeof(float);
}

/* ---- Inference through a graph ----
 * On a backend with graph ops and without runtime adapters, the forward
 * keeps its arena and its own x, context and out buffers between calls of
 * one shape. The first call runs the ops; the second records them
 * (graph_begin .. graph_end) and every later one launches the recording.
 * Each call still computes the timestep table on the host (an upload, which
 * a graph cannot hold) into its slot, and copies x and context in and out
 * out, so the recorded pointers never change. Runtime adapters (their
 * terms allocate and read scales on the host) run op by op, and leave the
 * recording for when they are gone: no re-recording on a switch. */

enum { GRAPH_NEW, GRAPH_WARM, GRAPH_READY, GRAPH_REFUSED };

static int graph_usable(const lh_unet *m) {
    const lh_backend_ops *ops = m->be->ops;
    return ops->graph_begin && ops->graph_end && ops->graph_launch && ops->graph_free &&
           !(m->adapt && m->adapt->n_runtime_unet);
}

static void graph_drop(lh_unet *m) {
    struct lh_unet_graph *g = &m->graph;
    if (g->graph) m->be->ops->graph_free(m->be, g->graph);
    if (g->arena) m->be->ops->free(m->be, g->arena);
    memset(g, 0, sizeof *g);
}

/* Record the forward into a graph and launch it; when the recording
 * fails (an op a graph cannot hold), say why once and run the ops. */
static lh_status graph_record(run *r, float *go, const float *gx, int64_t h, int64_t w) {
    lh_unet *m = r->m;
    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    struct lh_unet_graph *g = &m->graph;
    lh_error why = {0}, *err = r->err;
    void *graph = NULL;
    const float *ctx = r->ctx; /* forward() points r->ctx at its rounded copy */
    r->err = &why;
    lh_status st = ops->graph_begin(be);
    int refused = st == LH_ERR_UNSUPPORTED; /* by choice (LORAHOST_CUDA_GRAPHS=0): no warning */
    if (refused) {
        lh_error_set(&why, st, "the %s backend does not record graphs", ops->name);
    } else if (st != LH_OK) {
        lh_error_set(&why, st, "the %s backend could not start recording", ops->name);
    } else {
        lh_status fs = forward(r, go, gx, NULL, h, w);
        if (fs == LH_OK && r->top != 0)
            fs = lh_error_set(&why, LH_ERR_INTERNAL, "skip connections left unused");
        lh_status es = ops->graph_end(be, &graph);
        if (fs == LH_OK && es != LH_OK) lh_error_set(&why, es, "recording failed");
        if (fs != LH_OK && graph) {
            ops->graph_free(be, graph);
            graph = NULL;
        }
        st = fs != LH_OK ? fs : es;
    }
    r->err = err;
    if (st == LH_OK) {
        g->graph = graph;
        g->state = GRAPH_READY;
        st = ops->graph_launch(be, graph);
        return st == LH_OK ? st : lh_error_set(err, st, "unet forward: graph launch failed");
    }
    g->state = GRAPH_REFUSED;
    lh_log(refused ? LH_LOG_INFO : LH_LOG_WARN, "unet",
           "forward at batch %lld, %lldx%lld runs op by op, not as a graph: %s", (long long)r->b,
           (long long)h, (long long)w, why.msg);
    r->ctx = ctx; /* the recording's copy of it never ran */
    st = forward(r, go, gx, NULL, h, w);
    if (st == LH_OK && r->top != 0)
        st = lh_error_set(err, LH_ERR_INTERNAL, "unet forward: %d skip connections left unused",
                          r->top);
    return st;
}

/* lh_unet_forward on the graph's buffers (r planned: `floats`). */
static lh_status graph_forward(run *r, size_t floats, float *out, const float *x,
                               const float *timesteps, const float *context, int64_t h,
                               int64_t w, int64_t n_ctx, lh_error *err) {
    lh_unet *m = r->m;
    lh_backend *be = m->be;
    const lh_backend_ops *ops = be->ops;
    const lh_unet_config *c = &m->cfg;
    struct lh_unet_graph *g = &m->graph;
    int64_t b = r->b;
    size_t nx = (size_t)(b * c->in_channels * h * w), no = (size_t)(b * c->out_channels * h * w);
    size_t nc = (size_t)(b * n_ctx * c->cross_attention_dim);
    if (g->arena && (g->b != b || g->h != h || g->w != w || g->n_ctx != n_ctx ||
                     g->act != m->act_precision || g->weights != m->weight_precision ||
                     g->floats != floats))
        graph_drop(m);
    if (!g->arena) {
        size_t total = align_up(floats) + align_up(nx) + align_up(nc) + no;
        if (!(g->arena = ops->alloc(be, total * sizeof(float))))
            return lh_error_set(err, LH_ERR_NOMEM, "unet forward: cannot allocate %zu MiB of "
                                "activations (batch %lld, %lldx%lld)",
                                (total * sizeof(float)) >> 20, (long long)b, (long long)h,
                                (long long)w);
        *g = (struct lh_unet_graph){b, h, w, n_ctx, m->act_precision, m->weight_precision,
                                    floats, g->arena, NULL, GRAPH_NEW};
    }
    float *gx = g->arena + align_up(floats), *gc = gx + align_up(nx), *go = gc + align_up(nc);
    carve(r, g->arena);
    r->dry = 0;
    r->ctx = gc;
    r->act = m->act_precision;
    r->tproj_done = 1;
    const int64_t c0 = c->block_out_channels[0];
    lh_status st = LH_OK;
    if (r->act != LH_DTYPE_F32 && (st = ops->set_precision(be, r->act)) != LH_OK)
        lh_error_set(err, st, "unet forward: set_precision failed");
    if (st == LH_OK && (st = ops->timestep_embedding(be, S(r, SLOT_TPROJ), timesteps, b, c0,
                                                     c->flip_sin_to_cos, c->freq_shift,
                                                     10000.0f)) != LH_OK)
        lh_error_set(err, st, "unet forward: time_proj failed");
    if (st == LH_OK && ((st = ops->copy(be, gx, x, nx * sizeof(float))) != LH_OK ||
                        (st = ops->copy(be, gc, context, nc * sizeof(float))) != LH_OK))
        lh_error_set(err, st, "unet forward: copying the inputs failed");
    if (st == LH_OK && g->state == GRAPH_READY) {
        if ((st = ops->graph_launch(be, g->graph)) != LH_OK)
            lh_error_set(err, st, "unet forward: graph launch failed");
    } else if (st == LH_OK && g->state == GRAPH_WARM) {
        st = graph_record(r, go, gx, h, w);
    } else if (st == LH_OK) {
        st = forward(r, go, gx, NULL, h, w);
        if (st == LH_OK && r->top != 0)
            st = lh_error_set(err, LH_ERR_INTERNAL, "unet forward: %d skip connections left "
                              "unused", r->top);
        if (st == LH_OK && g->state == GRAPH_NEW) g->state = GRAPH_WARM;
    }
    if (r->act != LH_DTYPE_F32) ops->set_precision(be, LH_DTYPE_F32);
    if (st == LH_OK && (st = ops->copy(be, out, go, no * sizeof(float))) != LH_OK)
        lh_error_set(err, st, "unet forward: copying the output failed");
    if (st == LH_OK && (st = ops->sync(be)) != LH_OK)
        lh_error_set(err, st, "unet forward: backend sync failed");
    return st;
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
    st = plan(&r, m, b, h, w, n_ctx, NULL, 0, LH_DTYPE_F32, &floats, err);
    if (st != LH_OK) return st;
    if (graph_usable(m))
        return graph_forward(&r, floats, out, x, timesteps, context, h, w, n_ctx, err);
    /* op by op (runtime adapters): in the graph's arena when it fits */
    struct lh_unet_graph *g = &m->graph;
    int shared = g->arena && g->b == b && g->h == h && g->w == w && g->n_ctx == n_ctx &&
                 g->floats == floats;
    float *arena = shared ? g->arena
                          : m->be->ops->alloc(m->be, (floats ? floats : 1) * sizeof(float));
    if (!arena)
        return lh_error_set(err, LH_ERR_NOMEM, "unet forward: cannot allocate %zu MiB of "
                            "activations (batch %lld, %lldx%lld)", (floats * sizeof(float)) >> 20,
                            (long long)b, (long long)h, (long long)w);
    carve(&r, arena);

    r.dry = 0;
    r.ctx = context;
    r.act = m->act_precision;
    if (r.act != LH_DTYPE_F32 && (st = m->be->ops->set_precision(m->be, r.act)) != LH_OK)
        lh_error_set(err, st, "unet forward: set_precision failed");
    if (st == LH_OK) st = forward(&r, out, x, timesteps, h, w);
    if (r.act != LH_DTYPE_F32) m->be->ops->set_precision(m->be, LH_DTYPE_F32);
    if (st == LH_OK && r.top != 0)
        st = lh_error_set(err, LH_ERR_INTERNAL, "unet forward: %d skip connections left unused",
                          r.top);
    if (st == LH_OK) {
        st = m->be->ops->sync(m->be);
        if (st != LH_OK) lh_error_set(err, st, "unet forward: backend sync failed");
    }
    if (!shared) m->be->ops->free(m->be, arena);
    return st;
}

/* ---- Training ----
 * lh_unet_backward runs forward() with r->train set: every unit keeps its
 * input, output and (without checkpointing) its activation record, and
 * appends itself to a tape. The backward walks the tape in reverse; with
 * checkpointing it first reruns the unit's forward into the shared
 * recompute record. Base weights are frozen (NULL gradients) unless a
 * gradient store is given (lh_unet_backward_full); runtime adapter terms
 * accumulate theirs. */

/* ---- Full-parameter gradients ----
 * One backend allocation holding a gradient per parameter, carved in the
 * loader's order; the backward finds a parameter's by its weight pointer. */

typedef struct grad_param {
    char key[128];     /* diffusers key */
    const float *w;    /* the parameter (backend memory) */
    float *g;          /* its gradient (backend memory) */
    size_t numel, off; /* off: floats into the arena */
} grad_param;

struct lh_unet_grads {
    lh_backend *be;
    grad_param *p;
    size_t n, cap, floats;
    int overflow;
    float *arena;
};

static void grads_add(void *ctx, const lh_unet_param *pm) {
    lh_unet_grads *g = ctx;
    const char *key = pm->key;
    const float *w = *pm->w;
    size_t numel = pm->numel;
    if (g->overflow) return;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 512;
        grad_param *p = realloc(g->p, cap * sizeof *p);
        if (!p) {
            g->overflow = 1;
            return;
        }
        g->p = p;
        g->cap = cap;
    }
    grad_param *e = &g->p[g->n++];
    snprintf(e->key, sizeof e->key, "%s", key);
    e->w = w;
    e->g = NULL;
    e->numel = numel;
    e->off = g->floats;
    if (lh_add_size(g->floats, align_up(numel), &g->floats)) g->overflow = 1;
}

lh_status lh_unet_grads_create(lh_unet_grads **out, lh_unet *m, lh_error *err) {
    if (!out || !m) return lh_error_set(err, LH_ERR_INVALID, "unet grads: NULL argument");
    *out = NULL;
    /* trained in full: its weights are float32 from here on */
    lh_status kst = lh_unet_keep_f32_weights(m, 1, err);
    if (kst != LH_OK) return kst;
    lh_unet_grads *g = calloc(1, sizeof *g);
    if (!g) return lh_error_set(err, LH_ERR_NOMEM, "unet grads: out of host memory");
    g->be = m->be;
    /* the walk rewrites only what loading set, to the same values */
    lh__unet_params(m, grads_add, g);
    size_t bytes = 0;
    if (g->overflow || g->n == 0 || lh_mul_size(g->floats, sizeof(float), &bytes)) {
        lh_unet_grads_free(g);
        return lh_error_set(err, LH_ERR_NOMEM, "unet grads: cannot size the parameter list");
    }
    g->arena = m->be->ops->alloc(m->be, bytes);
    if (!g->arena) {
        lh_unet_grads_free(g);
        return lh_error_set(err, LH_ERR_NOMEM, "unet grads: cannot allocate %zu MiB for %zu "
                            "parameter gradients", bytes >> 20, g->n);
    }
    for (size_t i = 0; i < g->n; i++) g->p[i].g = g->arena + g->p[i].off;
    lh_status st = lh_unet_grads_zero(g);
    if (st != LH_OK) {
        lh_unet_grads_free(g);
        return lh_error_set(err, st, "unet grads: cannot zero the gradients");
    }
    *out = g;
    return LH_OK;
}

void lh_unet_grads_free(lh_unet_grads *g) {
    if (!g) return;
    if (g->arena) g->be->ops->free(g->be, g->arena);
    free(g->p);
    free(g);
}

lh_status lh_unet_grads_zero(lh_unet_grads *g) {
    if (!g || !g->arena) return LH_ERR_INVALID;
    return g->be->ops->memset0(g->be, g->arena, g->floats * sizeof(float));
}

const float *lh_unet_grad(const lh_unet_grads *g, const char *key, size_t *numel) {
    if (!g || !key) return NULL;
    for (size_t i = 0; i < g->n; i++)
        if (!strcmp(g->p[i].key, key)) {
            if (numel) *numel = g->p[i].numel;
            return g->p[i].g;
        }
    return NULL;
}

size_t lh_unet_grads_count(const lh_unet_grads *g) { return g ? g->n : 0; }

const char *lh_unet_grads_key(const lh_unet_grads *g, size_t i) {
    return g && i < g->n ? g->p[i].key : NULL;
}

/* The gradient of the parameter whose data is w, or NULL (frozen base). */
static float *G(const run *r, const float *w) {
    const lh_unet_grads *g = r->grads;
    if (!g || !w) return NULL;
    for (size_t i = 0; i < g->n; i++)
        if (g->p[i].w == w) return g->p[i].g;
    return NULL;
}

/* Adapter terms' backward on the layer whose weight is w (host/layers.h). */
#define ADAPT_BW(w, dx, dy, x, n, h, w_)                                                           \
    TRY(lh_layers_runtime_backward(r->m->adapt, (w), (dx), (dy), (x), (n), (h), (w_), r->act,     \
                                   r->err))

/* Backward of resnet_fwd: din [b, c_in, hw] = dL/dx from dout [b, c_out, hw];
 * dL/d(temb) accumulates into SLOT_DTEMB. */
static lh_status resnet_bw(run *r, const res_acts *a, float *din, const float *dout,
                           const float *x, const lh_unet_resnet *p, int64_t h, int64_t w) {
    const lh_unet_config *c = &r->m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, hw = h * w, ci = p->c_in, co = p->c_out, ct = 4 * c->block_out_channels[0];
    float *dh2 = S(r, SLOT_GA), *da = S(r, SLOT_GB), *dh1 = S(r, SLOT_GC), *dt = S(r, SLOT_GD);
    float *dtres = S(r, SLOT_GE), *dte = S(r, SLOT_GDT);
    const char *who = p->name;

    OP(cnv_bwd(r, dh2, G(r, p->conv2_w), G(r, p->conv2_b), dout, a->h2, p->conv2_w, b, co, h, w, co,
               3, 3, 1, 1),
       who);
    ADAPT_BW(p->conv2_w, dh2, dout, a->h2, b, h, w);
    OP(ops->group_norm_backward(be, da, G(r, p->norm2_w), G(r, p->norm2_b), dh2, a->a,
                                p->norm2_w, p->norm2_b, b, co, hw, c->norm_num_groups,
                                c->norm_eps, 1), who);
    /* a = conv1(h1) + temb_proj broadcast over hw */
    OP(ops->channel_bias_backward(be, dtres, da, b, co, hw), who);
    OP(lin_bwd(r, dte, G(r, p->temb_w), G(r, p->temb_b), dtres, r->temb, p->temb_w, b, ct, co),
       who);
    ADAPT_BW(p->temb_w, dte, dtres, r->temb, b, 1, 1);
    OP(ops->add(be, S(r, SLOT_DTEMB), S(r, SLOT_DTEMB), dte, b * ct), who);
    OP(cnv_bwd(r, dh1, G(r, p->conv1_w), G(r, p->conv1_b), da, a->h1, p->conv1_w, b, ci, h, w, co,
               3, 3, 1, 1),
       who);
    ADAPT_BW(p->conv1_w, dh1, da, a->h1, b, h, w);
    OP(ops->group_norm_backward(be, din, G(r, p->norm1_w), G(r, p->norm1_b), dh1, x,
                                p->norm1_w, p->norm1_b, b, ci, hw, c->norm_num_groups,
                                c->norm_eps, 1), who);
    if (p->short_w) {
        OP(cnv_bwd(r, dt, G(r, p->short_w), G(r, p->short_b), dout, x, p->short_w, b, ci, h, w, co,
                   1, 1, 1, 0),
           who);
        ADAPT_BW(p->short_w, dt, dout, x, b, h, w);
        OP(ops->add(be, din, din, dt, b * ci * hw), who);
    } else {
        OP(ops->add(be, din, din, dout, b * ci * hw), who);
    }
    return LH_OK;
}

/* Backward of attention(): ds = dL/d(s_out) (it reaches s_in unchanged);
 * dln = dL/d(ln) is written. Self-attention adds the k and v input
 * gradients into dln; cross-attention adds them into d_ctx (may be NULL). */
static lh_status attention_bw(run *r, const attn_acts *A, float *dln, float *d_ctx,
                              const float *ds, const float *ln, const float *kv, const float *wq,
                              const float *wk, const float *wv, const float *wo,
                              const float *bo, int64_t c,
                              int64_t heads, int64_t hw, int64_t n_kv, int64_t c_kv, int self,
                              const char *who) {
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, d = c / heads, n = b * hw;
    float *datt = S(r, SLOT_GA), *dq = S(r, SLOT_GQ), *dk = S(r, SLOT_GK), *dv = S(r, SLOT_GV);
    OP(lin_bwd(r, datt, G(r, wo), G(r, bo), ds, A->att, wo, n, c, c), who);
    ADAPT_BW(wo, datt, ds, A->att, n, 1, 1);
    OP(ops->attention_backward(be, dq, dk, dv, datt, A->att, A->lse, A->q, A->k, A->v, b, heads, hw,
                               n_kv, d, 1.0f / sqrtf((float)d), 0), who);
    OP(lin_bwd(r, dln, G(r, wq), NULL, dq, ln, wq, n, c, c), who);
    ADAPT_BW(wq, dln, dq, ln, n, 1, 1);
    const float *wkv[2] = {wk, wv}, *dkv[2] = {dk, dv};
    for (int i = 0; i < 2; i++) {
        if (self) {
            float *dt = S(r, SLOT_GE);
            OP(lin_bwd(r, dt, G(r, wkv[i]), NULL, dkv[i], ln, wkv[i], n, c, c), who);
            OP(ops->add(be, dln, dln, dt, n * c), who);
            ADAPT_BW(wkv[i], dln, dkv[i], ln, n, 1, 1);
        } else {
            float *dc = d_ctx ? S(r, SLOT_GCTX) : NULL, *dw = G(r, wkv[i]);
            if (dc || dw) OP(lin_bwd(r, dc, dw, NULL, dkv[i], kv, wkv[i], b * n_kv, c_kv, c), who);
            ADAPT_BW(wkv[i], dc, dkv[i], kv, b * n_kv, 1, 1);
            if (dc) OP(ops->add(be, d_ctx, d_ctx, dc, b * n_kv * c_kv), who);
        }
    }
    return LH_OK;
}

/* Backward of transformer_fwd: din [b, c, hw] from dout [b, c, hw]. */
static lh_status transformer_bw(run *r, const tf_acts *A, float *din, float *d_ctx,
                                const float *dout, const float *x, const lh_unet_attn *a,
                                int64_t h, int64_t w) {
    const lh_unet_config *cfg = &r->m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = r->m->be;
    int64_t b = r->b, c = a->c, hw = h * w, n = b * hw, heads = a->heads;
    const lh_unet_tblock *t = &a->block;
    const char *who = a->name;
    float *dt2 = S(r, SLOT_GA), *ds = S(r, SLOT_GB), *dgg = S(r, SLOT_GC), *dff = S(r, SLOT_GF);
    float *dln = S(r, SLOT_GD), *dt = S(r, SLOT_GE);

    /* out = x + transpose(proj_out(s3)) */
    OP(ops->transpose_c_hw(be, dt2, dout, b, c, hw), who);
    OP(lin_bwd(r, ds, G(r, a->proj_out_w), G(r, a->proj_out_b), dt2, A->s3, a->proj_out_w, n, c, c),
       who);
    ADAPT_BW(a->proj_out_w, ds, dt2, A->s3, n, 1, 1);
    /* s3 = s2 + ff2(geglu(ff1(ln3(s2)))) */
    OP(lin_bwd(r, dgg, G(r, t->ff2_w), G(r, t->ff2_b), ds, A->gg, t->ff2_w, n, 4 * c, c), who);
    ADAPT_BW(t->ff2_w, dgg, ds, A->gg, n, 1, 1);
    OP(ops->geglu_backward(be, dff, dgg, A->ff, n, 4 * c), who);
    OP(lin_bwd(r, dln, G(r, t->ff1_w), G(r, t->ff1_b), dff, A->ln3, t->ff1_w, n, c, 8 * c), who);
    ADAPT_BW(t->ff1_w, dln, dff, A->ln3, n, 1, 1);
    OP(ops->layer_norm_backward(be, dt, G(r, t->norm3_w), G(r, t->norm3_b), dln, A->s2,
                                t->norm3_w, n, c, 1e-5f), who);
    OP(ops->add(be, ds, ds, dt, n * c), who);
    /* s2 = s1 + attn2(ln2(s1), context) */
    TRY(attention_bw(r, &A->a2, dln, d_ctx, ds, A->ln2, r->ctx, t->q2, t->k2, t->v2, t->o2_w,
                     t->o2_b, c, heads, hw, r->n_ctx, cfg->cross_attention_dim, 0, who));
    OP(ops->layer_norm_backward(be, dt, G(r, t->norm2_w), G(r, t->norm2_b), dln, A->s1,
                                t->norm2_w, n, c, 1e-5f), who);
    OP(ops->add(be, ds, ds, dt, n * c), who);
    /* s1 = s0 + attn1(ln1(s0)) */
    TRY(attention_bw(r, &A->a1, dln, NULL, ds, A->ln1, A->ln1, t->q1, t->k1, t->v1, t->o1_w,
                     t->o1_b, c, heads, hw, hw, c, 1, who));
    OP(ops->layer_norm_backward(be, dt, G(r, t->norm1_w), G(r, t->norm1_b), dln, A->s0,
                                t->norm1_w, n, c, 1e-5f), who);
    OP(ops->add(be, ds, ds, dt, n * c), who);
    /* s0 = proj_in(transpose(gn(x))) */
    float *dtok = S(r, SLOT_GC), *dt1 = S(r, SLOT_GD);
    OP(lin_bwd(r, dtok, G(r, a->proj_in_w), G(r, a->proj_in_b), ds, A->tok, a->proj_in_w, n, c, c),
       who);
    ADAPT_BW(a->proj_in_w, dtok, ds, A->tok, n, 1, 1);
    OP(ops->transpose_c_hw(be, dt1, dtok, b, hw, c), who);
    OP(ops->group_norm_backward(be, din, G(r, a->norm_w), G(r, a->norm_b), dt1, x, a->norm_w,
                                a->norm_b, b, c, hw,
                                cfg->norm_num_groups, 1e-6f, 0), who);
    OP(ops->add(be, din, din, dout, n * c), who);
    return LH_OK;
}

/* The time embedding's backward from dL/d(te) in SLOT_DTEMB (consumed). */
static lh_status time_bw(run *r) {
    lh_unet *m = r->m;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = m->be;
    const time_acts *a = &r->ta;
    int64_t b = r->b, c0 = m->cfg.block_out_channels[0], n = b * 4 * c0;
    float *dte = S(r, SLOT_DTEMB), *dh = S(r, SLOT_GA);
    OP(ops->silu_backward(be, dte, dte, a->tep, n), "time_embedding");
    OP(lin_bwd(r, dh, G(r, m->time2_w), G(r, m->time2_b), dte, a->ths, m->time2_w, b, 4 * c0,
               4 * c0),
       "time_embedding");
    ADAPT_BW(m->time2_w, dh, dte, a->ths, b, 1, 1);
    OP(ops->silu_backward(be, dh, dh, a->th, n), "time_embedding");
    if (r->grads)
        OP(lin_bwd(r, NULL, G(r, m->time1_w), G(r, m->time1_b), dh, a->tp, NULL, b, c0, 4 * c0),
           "time_embedding");
    ADAPT_BW(m->time1_w, NULL, dh, a->tp, b, 1, 1);
    return LH_OK;
}

/* ---- Overflow report (half precision) ---- */

/* The unit's module name and its input / output element counts. */
static void unit_info(const run *r, const unit *u, char *name, size_t size, size_t *n_in,
                      size_t *n_out) {
    const lh_unet_config *c = &r->m->cfg;
    size_t hw = (size_t)u->h * (size_t)u->w, b = (size_t)r->b;
    size_t c0 = (size_t)c->block_out_channels[0], ci = 0, co = 0, hwo = hw;
    const char *base = NULL, *tail = "";
    switch (u->kind) {
    case U_CONV_IN: base = "conv_in", ci = (size_t)c->in_channels, co = c0; break;
    case U_OUT: base = "conv_out", ci = c0, co = (size_t)c->out_channels; break;
    case U_RES: {
        const lh_unet_resnet *p = u->p;
        base = p->name, ci = (size_t)p->c_in, co = (size_t)p->c_out;
        break;
    }
    case U_TF: {
        const lh_unet_attn *a = u->p;
        base = a->name, ci = co = (size_t)a->c;
        break;
    }
    default: { /* U_DOWN, U_UP, U_CAT: named after the block's first resnet */
        const lh_unet_block *blk = u->p;
        base = blk->res[0].name;
        ci = co = (size_t)blk->c_out;
        if (u->kind == U_DOWN) tail = ".downsamplers.0", hwo = hw / 4;
        if (u->kind == U_UP) tail = ".upsamplers.0", hwo = hw * 4;
        if (u->kind == U_CAT) tail = " (skip concat)", ci = (size_t)u->ca,
                               co = (size_t)(u->ca + u->cb);
        break;
    }
    }
    int len = (int)strcspn(base, "");
    const char *cut = u->kind == U_DOWN || u->kind == U_UP || u->kind == U_CAT
                          ? strstr(base, ".resnets.") : NULL;
    if (cut) len = (int)(cut - base);
    snprintf(name, size, "%.*s%s", len, base, tail);
    *n_in = b * ci * hw;
    *n_out = b * co * hwo;
}

/* Count NaN/Inf in x [n] under `name`, into the next slot of r->ovf (no
 * wait). */
static lh_status check_finite(run *r, const char *name, const float *x, size_t n, int backward) {
    lh_unet_checks *c = r->ovf;
    if (!c || !x || n == 0) return LH_OK;
    if (c->n == c->cap)
        return lh_error_set(r->err, LH_ERR_INTERNAL, "unet train: more than %d overflow checks",
                            c->cap);
    lh_unet_overflow_at *a = &c->at[c->n];
    snprintf(a->unit, sizeof a->unit, "%s", name);
    a->backward = backward;
    a->n_bad = 0;
    OP(r->ops->count_nonfinite_into(r->m->be, c->counts + c->n, x, (int64_t)n), name);
    c->n++;
    return LH_OK;
}

/* Room in c for `more` checks past c->n, keeping those made. */
static lh_status checks_reserve(lh_unet_checks *c, lh_backend *be, int more, lh_error *err) {
    if (c->be && c->be != be)
        return lh_error_set(err, LH_ERR_INVALID, "unet train: the overflow checks belong to "
                            "another backend");
    if (c->n < 0 || c->n > c->cap || (c->cap > 0 && (!c->counts || !c->at)))
        return lh_error_set(err, LH_ERR_INVALID, "unet train: corrupt overflow checks");
    if (c->cap - c->n >= more) return LH_OK;
    if (c->n > INT_MAX / 2 - more)
        return lh_error_set(err, LH_ERR_OVERFLOW, "unet train: too many overflow checks");
    int cap = 2 * (c->n + more);
    int64_t *counts = be->ops->alloc(be, (size_t)cap * sizeof *counts);
    lh_unet_overflow_at *at = realloc(c->at, (size_t)cap * sizeof *at);
    if (at) c->at = at;
    lh_status st = counts && at ? LH_OK : LH_ERR_NOMEM;
    if (st == LH_OK && c->n > 0)
        st = be->ops->copy(be, counts, c->counts, (size_t)c->n * sizeof *counts);
    if (st != LH_OK) {
        if (counts) be->ops->free(be, counts);
        return lh_error_set(err, st, "unet train: no memory for %d overflow checks", cap);
    }
    if (c->counts) be->ops->free(be, c->counts);
    c->be = be;
    c->counts = counts;
    c->cap = cap;
    return LH_OK;
}

void lh_unet_checks_free(lh_unet_checks *c) {
    if (!c) return;
    if (c->counts && c->be) c->be->ops->free(c->be, c->counts);
    free(c->at);
    memset(c, 0, sizeof *c);
}

void lh_unet_checks_report(lh_unet_overflow *report, const lh_unet_checks *c,
                           const int64_t *counts) {
    memset(report, 0, sizeof *report);
    for (int i = 0; c && counts && i < c->n; i++) {
        if (counts[i] == 0) continue;
        if (report->count < LH_UNET_OVERFLOW_MAX) {
            report->at[report->count] = c->at[i];
            report->at[report->count].n_bad = counts[i];
        }
        report->count++;
    }
}

/* *report from the checks in c, read back now. */
static lh_status read_checks(lh_unet_overflow *report, const lh_unet_checks *c, lh_error *err) {
    if (c->n == 0) return LH_OK;
    int64_t *bad = malloc((size_t)c->n * sizeof *bad);
    if (!bad) return lh_error_set(err, LH_ERR_NOMEM, "unet train: out of host memory");
    lh_status st = c->be->ops->download(c->be, bad, c->counts, (size_t)c->n * sizeof *bad);
    if (st == LH_OK) lh_unet_checks_report(report, c, bad);
    else lh_error_set(err, st, "unet train: reading the overflow checks failed");
    free(bad);
    return st;
}

/* After the training forward: every unit's output, in forward order. */
static lh_status check_forward(run *r) {
    if (r->stash_st != LH_OK) return r->stash_st;
    return check_units(r, r->n_units);
}

/* Walk the tape backwards from dout = dL/d(out). */
static lh_status backward(run *r, float *d_ctx, const float *dout) {
    lh_unet *m = r->m;
    const lh_unet_config *c = &m->cfg;
    const lh_backend_ops *ops = r->ops;
    lh_backend *be = m->be;
    int64_t b = r->b, c0 = c->block_out_channels[0];
    OP(ops->memset0(be, S(r, SLOT_DTEMB), (size_t)(b * 4 * c0) * sizeof(float)), "backward");
    if (d_ctx)
        OP(ops->memset0(be, d_ctx, (size_t)(b * r->n_ctx * c->cross_attention_dim) *
                                       sizeof(float)), "backward");
    float *g0 = S(r, SLOT_G_CUR0), *g1 = S(r, SLOT_G_CUR1), *dc = NULL;
    for (int i = r->n_units - 1; i >= 0; i--) {
        const unit *u = &r->tape[i];
        int64_t h = u->h, w = u->w;
        const float *dy = u->kind == U_OUT ? dout : dc;
        float *dx = dc == g0 ? g1 : g0;
        TRY(stash_need(r, i));
        if (u->skip_out >= 0) /* out also fed an up block */
            OP(ops->add(be, dc, dc, r->dskip[u->skip_out], (int64_t)r->skip_need[u->skip_out]),
               "skip connection");
        switch (u->kind) {
        case U_OUT:
            OP(cnv_bwd(r, S(r, SLOT_GA), G(r, m->conv_out_w), G(r, m->conv_out_b), dy, u->buf,
                       m->conv_out_w, b, c0, h, w, c->out_channels, 3, 3, 1, 1),
               "conv_out");
            ADAPT_BW(m->conv_out_w, S(r, SLOT_GA), dy, u->buf, b, h, w);
            OP(ops->group_norm_backward(be, dx, G(r, m->norm_out_w), G(r, m->norm_out_b),
                                        S(r, SLOT_GA), u->in, m->norm_out_w,
                                        m->norm_out_b, b, c0, h * w, c->norm_num_groups,
                                        c->norm_eps, 1), "conv_norm_out");
            break;
        case U_UP: {
            const lh_unet_block *blk = u->p;
            int64_t ch = blk->c_out;
            if (r->ckpt) {
                r->recompute = 1;
                lh_status rst = up_fwd(r, u->buf, u->out, u->in, blk, h, w);
                r->recompute = 0;
                if (rst != LH_OK) return rst;
            }
            OP(cnv_bwd(r, S(r, SLOT_GA), G(r, blk->sample_w), G(r, blk->sample_b), dy, u->buf,
                       blk->sample_w, b, ch, 2 * h, 2 * w, ch, 3, 3, 1, 1),
               "upsamplers.0");
            ADAPT_BW(blk->sample_w, S(r, SLOT_GA), dy, u->buf, b, 2 * h, 2 * w);
            OP(ops->upsample_nearest2x_backward(be, dx, S(r, SLOT_GA), b, ch, h, w),
               "upsamplers.0");
            break;
        }
        case U_TF: {
            const lh_unet_attn *a = u->p;
            if (r->ckpt) {
                r->recompute = 1;
                lh_status rst = transformer_fwd(r, &u->ta, u->out, u->in, a, h, w);
                r->recompute = 0;
                if (rst != LH_OK) return rst;
            }
            TRY(transformer_bw(r, &u->ta, dx, d_ctx, dy, u->in, a, h, w));
            break;
        }
        case U_RES: {
            const lh_unet_resnet *p = u->p;
            if (r->ckpt) {
                r->recompute = 1;
                lh_status rst = resnet_fwd(r, &u->ra, u->out, u->in, p, h, w);
                r->recompute = 0;
                if (rst != LH_OK) return rst;
            }
            TRY(resnet_bw(r, &u->ra, dx, dy, u->in, p, h, w));
            break;
        }
        case U_CAT:
            OP(ops->split_channels(be, dx, r->dskip[u->skip_in], dy, b, u->ca, u->cb, h * w),
               "skip connection");
            break;
        case U_DOWN: {
            const lh_unet_block *blk = u->p;
            int64_t ch = blk->c_out;
            OP(cnv_bwd(r, dx, G(r, blk->sample_w), G(r, blk->sample_b), dy, u->in, blk->sample_w, b,
                       ch, h, w, ch, 3, 3, 2, 1),
               "downsamplers.0");
            ADAPT_BW(blk->sample_w, dx, dy, u->in, b, h, w);
            break;
        }
        case U_CONV_IN:
            if (r->grads)
                OP(cnv_bwd(r, NULL, G(r, m->conv_in_w), G(r, m->conv_in_b), dy, u->in, NULL, b,
                           c->in_channels, h, w, c0, 3, 3, 1, 1),
                   "conv_in");
            ADAPT_BW(m->conv_in_w, NULL, dy, u->in, b, h, w);
            break;
        default:
            return lh_error_set(r->err, LH_ERR_INTERNAL, "unet backward: bad tape entry %d", i);
        }
        if (r->ovf && u->kind != U_CONV_IN) {
            char name[64];
            size_t n_in, n_out;
            unit_info(r, u, name, sizeof name, &n_in, &n_out);
            TRY(check_finite(r, name, dx, n_in, 1));
        }
        dc = dx;
    }
    return time_bw(r);
}

size_t lh_unet_backward_workspace(lh_unet *m, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                                  int checkpointing, lh_dtype precision) {
    run r;
    size_t floats = 0;
    if (!m || check_sizes(m, b, h, w, n_ctx, NULL) != LH_OK) return 0;
    unit *tape = malloc(MAX_UNITS * sizeof *tape);
    if (!tape) return 0;
    lh_dtype stash = (precision == LH_DTYPE_F16 || precision == LH_DTYPE_BF16) && m->be->ops->cast
                         ? precision : LH_DTYPE_F32;
    if (plan(&r, m, b, h, w, n_ctx, tape, checkpointing, stash, &floats, NULL) != LH_OK)
        floats = 0;
    free(tape);
    return floats * sizeof(float);
}

/* Round every base weight held in float32 to `prec` once (the first
 * half-precision step). */
static void round_param(void *ctx, const lh_unet_param *p) {
    lh_unet *m = ctx;
    if (lh_wstore_type(&m->ws, *p->w) != LH_DTYPE_F32) return;
    if (m->be->ops->round(m->be, *p->w, (int64_t)p->numel, m->weight_precision) != LH_OK)
        m->weight_precision = LH_DTYPE_F32; /* flags the failure to the caller */
}

typedef struct storing {
    lh_unet *m;
    lh_dtype dtype;
    lh_status st;
    lh_error *err;
    size_t wide_max;
    int mixed; /* held in another type than dtype (a failure part way) */
} storing;

/* Hold one linear or convolution weight in s->dtype (host/weights.h); the
 * layer table follows it. */
static void store_param(void *ctx, const lh_unet_param *p) {
    storing *s = ctx;
    lh_unet *m = s->m;
    if (p->ndim < 2) return;
    float *old = *p->w;
    if (s->st == LH_OK) {
        s->st = lh_wstore_retype(&m->ws, p->w, p->numel, s->dtype, s->err);
        if (s->st != LH_OK) lh_error_prefix(s->err, "unet: %s", p->key);
    }
    lh_dtype t = lh_wstore_type(&m->ws, *p->w);
    if (t != LH_DTYPE_F32 && p->numel > s->wide_max) s->wide_max = p->numel;
    s->mixed |= t != s->dtype;
    if (m->adapt && *p->w != old) lh_layers_moved(m->adapt, old, *p->w, t);
}

lh_status lh__unet_store(lh_unet *m, lh_dtype dtype, lh_error *err) {
    graph_drop(m); /* its recorded ops read the old buffers */
    storing s = {m, dtype, LH_OK, err, 0, 0};
    lh__unet_params(m, store_param, &s);
    /* wide() looks each weight's type up: a failure part way leaves a
     * mixture, which still computes */
    m->wide_max = s.wide_max;
    m->weight_storage = s.mixed ? LH_DTYPE_F32 : dtype;
    return s.st;
}

/* The weights rounded to `prec`, then (unless kept in float32, or trained
 * in full) held in it. */
static lh_status set_weight_precision(lh_unet *m, lh_dtype prec, int full, lh_error *err) {
    if (full && m->wide_max) TRY(lh__unet_store(m, LH_DTYPE_F32, err));
    if (prec == LH_DTYPE_F32) return LH_OK;
    if (m->weight_precision != prec) {
        m->weight_precision = prec;
        lh__unet_params(m, round_param, m); /* those held in float32 */
        if (m->weight_precision != prec)
            return lh_error_set(err, LH_ERR_INTERNAL, "unet: rounding the base weights to %s "
                                "failed", lh_dtype_name(prec));
    }
    /* the rest are held in a half type: the other one rounds to prec here */
    if (m->weight_storage == prec || m->keep_f32 || full || !m->be->ops->cast) return LH_OK;
    return lh__unet_store(m, prec, err);
}

lh_status lh_unet_keep_f32_weights(lh_unet *m, int keep, lh_error *err) {
    if (!m) return lh_error_set(err, LH_ERR_INVALID, "unet weights: NULL model");
    m->keep_f32 = keep != 0;
    return keep && m->wide_max ? lh__unet_store(m, LH_DTYPE_F32, err) : LH_OK;
}

lh_status lh_unet_set_precision(lh_unet *m, lh_dtype prec, lh_error *err) {
    if (!m) return lh_error_set(err, LH_ERR_INVALID, "unet precision: NULL model");
    if (prec != LH_DTYPE_F32 && prec != LH_DTYPE_F16 && prec != LH_DTYPE_BF16)
        return lh_error_set(err, LH_ERR_INVALID, "unet precision: %s is not F32, F16 or BF16",
                            lh_dtype_name(prec));
    const lh_backend_ops *ops = m->be->ops;
    if (prec != LH_DTYPE_F32 && (!ops->set_precision || !ops->round))
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "unet precision: the %s backend has no "
                            "half precision", ops->name);
    if (m->weight_precision != LH_DTYPE_F32 && prec != LH_DTYPE_F32 && m->weight_precision != prec)
        return lh_error_set(err, LH_ERR_INVALID, "unet precision: the weights are already "
                            "rounded to %s", lh_dtype_name(m->weight_precision));
    lh_status st = set_weight_precision(m, prec, 0, err);
    if (st == LH_OK) m->act_precision = prec;
    return st;
}

lh_status lh_unet_mse_loss(void *ctx, float *dout, float *loss, const float *out, int64_t numel,
                           lh_error *err) {
    const lh_unet_mse *t = ctx;
    if (!t || !t->be || !t->target || !dout || !loss || !out || numel < 1)
        return lh_error_set(err, LH_ERR_INVALID, "mse loss: NULL target or backend");
    size_t n = (size_t)numel;
    float *ho = malloc(n * sizeof *ho), *ht = malloc(n * sizeof *ht);
    lh_status st = ho && ht ? LH_OK : LH_ERR_NOMEM;
    if (st == LH_OK) st = t->be->ops->download(t->be, ho, out, n * sizeof *ho);
    if (st == LH_OK) st = t->be->ops->download(t->be, ht, t->target, n * sizeof *ht);
    double sum = 0.0;
    if (st == LH_OK) {
        float k = 2.0f / (float)numel;
        for (size_t i = 0; i < n; i++) {
            double d = (double)ho[i] - (double)ht[i];
            sum += d * d;
            ho[i] = k * (ho[i] - ht[i]);
        }
        st = t->be->ops->upload(t->be, dout, ho, n * sizeof *ho);
    }
    free(ho);
    free(ht);
    if (st != LH_OK) return lh_error_set(err, st, "mse loss: %s", lh_strerror(st));
    *loss = (float)(sum / (double)numel);
    return LH_OK;
}

static void train_ws_free(lh_unet *m) {
    if (!m->train_ws) return;
    m->be->ops->free(m->be, m->train_ws);
    m->train_ws = NULL;
    m->train_ws_floats = 0;
}

/* The shared body of the training entry points. out_keep: where to copy the
 * prediction (may be NULL); dout_fixed: lh_unet_backward's given gradient,
 * used when loss_fn is NULL. */
static lh_status train(lh_unet *m, const lh_unet_train_opts *o, lh_unet_loss_fn loss_fn,
                       void *loss_ctx, const float *dout_fixed, float *loss, float *out_keep,
                       float *d_context, const float *x, const float *timesteps,
                       const float *context, int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                       lh_unet_overflow *report, lh_error *err) {
    if (!m || !x || !timesteps || !context || (!loss_fn && !dout_fixed))
        return lh_error_set(err, LH_ERR_INVALID, "unet backward: a NULL tensor argument");
    lh_unet_grads *g = o->grads;
    if (g && (g->be != m->be || !g->arena))
        return lh_error_set(err, LH_ERR_INVALID, "unet backward: the gradient store belongs to "
                            "another U-Net");
    const lh_backend_ops *ops = m->be->ops;
    if (!ops->linear_backward || !ops->conv2d_backward || !ops->group_norm_backward ||
        !ops->layer_norm_backward || !ops->attention_backward || !ops->silu_backward ||
        !ops->geglu_backward || !ops->channel_bias_backward ||
        !ops->upsample_nearest2x_backward || !ops->split_channels)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "unet backward: the %s backend has no backward ops", ops->name);
    lh_dtype prec = o->precision;
    if (prec != LH_DTYPE_F32 && prec != LH_DTYPE_F16 && prec != LH_DTYPE_BF16)
        return lh_error_set(err, LH_ERR_INVALID, "unet train: precision must be fp32, fp16 or "
                            "bf16, not %s", lh_dtype_name(prec));
    if (prec != LH_DTYPE_F32 &&
        (!ops->set_precision || !ops->round || !ops->count_nonfinite_into))
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "unet train: the %s backend has no mixed "
                            "precision", ops->name);
    float scale = o->loss_scale == 0.0f ? 1.0f : o->loss_scale;
    if (!isfinite(scale) || scale < 0.0f)
        return lh_error_set(err, LH_ERR_INVALID, "unet train: loss scale %g must be a positive "
                            "finite number", (double)scale);
    lh_status st = check_sizes(m, b, h, w, n_ctx, err);
    if (st != LH_OK) return st;
    for (int64_t i = 0; i < b; i++)
        if (!isfinite(timesteps[i]))
            return lh_error_set(err, LH_ERR_NUMERIC, "unet backward: timestep %lld is not finite",
                                (long long)i);
    if (o->checks && report)
        return lh_error_set(err, LH_ERR_INVALID, "unet train: a step leaves its overflow checks "
                            "to the caller (opts.checks) or fills a report, not both");
    if (report) memset(report, 0, sizeof *report);
    st = set_weight_precision(m, prec, g != NULL, err);
    if (st != LH_OK) return st;
    unit *tape = malloc(MAX_UNITS * sizeof *tape);
    if (!tape) return lh_error_set(err, LH_ERR_NOMEM, "unet backward: out of host memory");
    run r;
    size_t floats;
    /* the stash: half precision, a backend that casts, not turned off */
    lh_dtype stash = prec != LH_DTYPE_F32 && ops->cast && !o->f32_saved ? prec : LH_DTYPE_F32;
    st = plan(&r, m, b, h, w, n_ctx, tape, o->checkpointing, stash, &floats, err);
    if (st != LH_OK) {
        free(tape);
        return st;
    }
    int64_t n_out = b * m->cfg.out_channels * h * w;
    size_t need = floats + align_up((size_t)n_out); /* the activations, then dL/d(out) */
    if (m->train_ws_floats < need) {
        train_ws_free(m);
        graph_drop(m); /* inference's kept buffers give way to training's */
        m->train_ws = ops->alloc(m->be, need * sizeof(float));
        if (!m->train_ws) {
            free(tape);
            return lh_error_set(err, LH_ERR_NOMEM, "unet backward: cannot allocate %zu MiB of "
                                "activations (batch %lld, %lldx%lld, checkpointing %d)",
                                (need * sizeof(float)) >> 20, (long long)b, (long long)h,
                                (long long)w, o->checkpointing);
        }
        m->train_ws_floats = need;
    }
    float *arena = m->train_ws, *dout = arena + floats;
    carve(&r, arena);
    r.dry = 0;
    r.ctx = context;
    r.grads = g;
    r.act = prec;
    /* half precision: a count per unit output, per input gradient, and the
     * time embedding, into the caller's checks or (read at the end) ours */
    lh_unet_checks mine = {0}, *ck = o->checks ? o->checks : &mine;
    if (prec != LH_DTYPE_F32 && (o->checks || report)) {
        st = checks_reserve(ck, m->be, 2 * MAX_UNITS + 2, err);
        r.ovf = ck;
    }
    if (st == LH_OK && prec != LH_DTYPE_F32) {
        st = ops->set_precision(m->be, prec);
        if (st != LH_OK) lh_error_set(err, st, "unet train: set_precision failed");
    }
    if (st == LH_OK) st = forward(&r, out_keep, x, timesteps, h, w);
    if (st == LH_OK && r.top != 0)
        st = lh_error_set(err, LH_ERR_INTERNAL, "unet backward: %d skip connections left unused",
                          r.top);
    if (st == LH_OK) st = check_forward(&r);
    const float *pred = r.n_units > 0 ? r.tape[r.n_units - 1].out : NULL;
    float l = 0.0f;
    /* The loss and its gradient in float32 (as autocast runs mse_loss), the
     * scale applied, then one rounding to half: the backward's seed. */
    if (st == LH_OK && prec != LH_DTYPE_F32) st = ops->set_precision(m->be, LH_DTYPE_F32);
    if (st == LH_OK) {
        if (loss_fn) {
            st = loss_fn(loss_ctx, dout, &l, pred, n_out, err);
        } else {
            st = ops->upload(m->be, dout, dout_fixed, (size_t)n_out * sizeof(float));
            if (st != LH_OK) lh_error_set(err, st, "unet backward: copying dout failed");
        }
    }
    if (st == LH_OK && scale != 1.0f) {
        st = ops->axpby(m->be, dout, scale, dout, 0.0f, dout, n_out);
        if (st != LH_OK) lh_error_set(err, st, "unet train: loss scaling failed");
    }
    if (st == LH_OK && prec != LH_DTYPE_F32) {
        st = ops->set_precision(m->be, prec);
        if (st == LH_OK) st = ops->round(m->be, dout, n_out, prec);
        if (st != LH_OK) lh_error_set(err, st, "unet train: rounding dL/d(out) failed");
    }
    if (st == LH_OK) st = backward(&r, d_context, dout);
    if (st == LH_OK && !o->checks) { /* the caller's checks are read by the caller */
        st = ops->sync(m->be);
        if (st != LH_OK) lh_error_set(err, st, "unet backward: backend sync failed");
        if (st == LH_OK && report) st = read_checks(report, &mine, err);
    }
    if (prec != LH_DTYPE_F32) ops->set_precision(m->be, LH_DTYPE_F32);
    lh_unet_checks_free(&mine);
    if (loss) *loss = l;
    free(tape);
    return st;
}

void lh_unet_release_workspace(lh_unet *m) {
    if (!m) return;
    graph_drop(m);
    train_ws_free(m);
}

lh_status lh_unet_backward(lh_unet *m, float *out, float *d_context, const float *dout,
                           const float *x, const float *timesteps, const float *context,
                           int64_t b, int64_t h, int64_t w, int64_t n_ctx, int checkpointing,
                           lh_error *err) {
    return lh_unet_backward_full(m, NULL, out, d_context, dout, x, timesteps, context, b, h, w,
                                 n_ctx, checkpointing, err);
}

lh_status lh_unet_backward_full(lh_unet *m, lh_unet_grads *g, float *out, float *d_context,
                                const float *dout, const float *x, const float *timesteps,
                                const float *context, int64_t b, int64_t h, int64_t w,
                                int64_t n_ctx, int checkpointing, lh_error *err) {
    if (!dout) return lh_error_set(err, LH_ERR_INVALID, "unet backward: a NULL tensor argument");
    lh_unet_train_opts o = {.checkpointing = checkpointing, .grads = g};
    return train(m, &o, NULL, NULL, dout, NULL, out, d_context, x, timesteps, context, b, h, w,
                 n_ctx, NULL, err);
}

lh_status lh_unet_train_step(lh_unet *m, const lh_unet_train_opts *opts, lh_unet_loss_fn loss_fn,
                             void *loss_ctx, float *loss, float *d_context, const float *x,
                             const float *timesteps, const float *context, int64_t b, int64_t h,
                             int64_t w, int64_t n_ctx, lh_unet_overflow *report, lh_error *err) {
    if (!opts || !loss_fn)
        return lh_error_set(err, LH_ERR_INVALID, "unet train: NULL options or loss function");
    return train(m, opts, loss_fn, loss_ctx, NULL, loss, NULL, d_context, x, timesteps, context,
                 b, h, w, n_ctx, report, err);
}
