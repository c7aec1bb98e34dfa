/* Backward of scaled dot-product attention (layout and causal mask as
 * attention.c), FlashAttention-2 style. A task is one (batch, head), so it
 * owns that head's columns of dq, dk and dv and needs no locks. It first
 * walks the query tiles for D = rowsum(dO * O) (O is the forward's output)
 * and, unless the forward supplied it, the row logsumexp (an online
 * softmax over every key: the costly part), then, for each tile of ATB_BK
 * keys, every query tile that can see it: P = exp(scale S - lse)
 * recomputed, and
 *   dV += P^T dO,  dS = scale P (dO V^T - D),  dQ += dS K,  dK += dS^T Q
 * with dK, dV held for the key tile. The head's Q^T and dO^T are packed
 * once, and its dQ^T accumulated in place, tile by tile. Scratch is a few
 * tiles plus 3 d + 2 floats per query, per thread - never [nq, nk].
 *
 * The products reuse the forward's register-blocked micro-kernels
 * (attention_tiles.h), vectorised across the tile's queries for S^T, dP^T
 * and dQ^T, and across the tile's keys (P and dS transposed, 8x8 blocks in
 * AVX registers) for dK^T and dV^T; exp and dS are 8-wide vector loops. */
#include "cpu.h"

#include <omp.h>
#include <stdlib.h>

#define ATT_BQ 64 /* queries per tile; the templates' row stride */
#define ATB_BK ATT_BQ /* keys per tile: dK^T and dV^T use keys as the query axis */

/* ---- Micro-kernels (attention_tiles.h), one instantiation per instruction set ---- */

#include "attention_isa.h"

typedef void (*qk_fn)(float *restrict st, const float *restrict qt, const float *restrict k,
                      int64_t ld, int64_t kv, int64_t qcols, int64_t d);
typedef void (*pv_fn)(float *restrict ot, const float *restrict pt, const float *restrict v,
                      int64_t ld, int64_t kv, int64_t qcols, int64_t d);

typedef void (*tr_fn)(float *restrict tr, const float *restrict x, int64_t kv);

typedef struct atb_kernels {
    qk_fn qk;
    pv_fn pv;
    tr_fn tr;     /* a [kv, BQ] tile */
    att_tr_fn xt; /* strided */
} atb_kernels;

/* tr [BQ, BK] = x^T for x [kv, BQ], zero past kv (every query row: the
 * padded queries' columns of x hold zeros). */
static void tile_t_generic(float *restrict tr, const float *restrict x, int64_t kv) {
    att_transpose_generic(tr, ATB_BK, x, ATT_BQ, kv, ATT_BQ);
    for (int64_t i = 0; i < ATT_BQ; i++)
        for (int64_t j = kv; j < ATB_BK; j++) tr[i * ATB_BK + j] = 0.0f;
}

#if LH_X86_DISPATCH
static void tile_t_avx2(float *restrict tr, const float *restrict x, int64_t kv) {
    att_transpose_avx2(tr, ATB_BK, x, ATT_BQ, kv, ATT_BQ);
    for (int64_t i = 0; i < ATT_BQ && kv < ATB_BK; i++)
        for (int64_t j = kv; j < ATB_BK; j++) tr[i * ATB_BK + j] = 0.0f;
}
#endif

static atb_kernels pick_kernels(void) {
#if LH_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return (atb_kernels){qk_tile_avx512, pv_tile_avx512, tile_t_avx2, att_transpose_avx2};
    if (__builtin_cpu_supports("x86-64-v3"))
        return (atb_kernels){qk_tile_avx2, pv_tile_avx2, tile_t_avx2, att_transpose_avx2};
#endif
    return (atb_kernels){qk_tile_generic, pv_tile_generic, tile_t_generic, att_transpose_generic};
}

/* ---- Per-thread scratch ---- */

typedef struct atb_scratch {
    float *qt, *dot, *dqt;  /* [nq / BQ tiles][d, BQ]: Q^T, dO^T (zero-padded), dQ^T of the head */
    float *qs;              /* [d, BQ]: scale Q^T of a tile, for the lse pass */
    float *dkt, *dvt;       /* [d, BK]: dK^T, dV^T of a key tile */
    float *st, *dst, *tr;   /* [BK, BQ]: S^T then P^T, dP^T then dS^T; [BQ, BK]: P or dS */
    float *lse, *dd;        /* [nq]: row logsumexp (unless given), rowsum(dO * O) */
} atb_scratch;

/* query-tile count times BQ */
static int64_t padded(int64_t nq) { return (nq + ATT_BQ - 1) / ATT_BQ * ATT_BQ; }

static int64_t per_thread_floats(int64_t d, int64_t nq) {
    return 3 * d * padded(nq) + 3 * d * ATT_BQ + 3 * ATB_BK * ATT_BQ + 2 * nq;
}

static atb_scratch carve(float *p, int64_t d, int64_t nq) {
    atb_scratch s;
    s.qt = p, s.dot = s.qt + d * padded(nq), s.dqt = s.dot + d * padded(nq);
    s.qs = s.dqt + d * padded(nq);
    s.dkt = s.qs + d * ATT_BQ, s.dvt = s.dkt + d * ATB_BK;
    s.st = s.dvt + d * ATB_BK, s.dst = s.st + ATB_BK * ATT_BQ, s.tr = s.dst + ATB_BK * ATT_BQ;
    s.lse = s.tr + ATT_BQ * ATB_BK, s.dd = s.lse + nq;
    return s;
}

typedef struct atb_args {
    float *dq, *dk, *dv;                 /* [b, nq | nk, heads * d] or NULL */
    const float *dout, *out, *q, *k, *v; /* as the forward */
    const float *lse;                    /* [b, heads, nq] from the forward, or NULL */
    atb_kernels kern;
    int64_t heads, nq, nk, d;
    float scale;
    int causal;
} atb_args;

/* ---- Steps of one (batch, head) ---- */

/* xt [d, BQ] = rows [0, qr) of x (ld apart, d wide) transposed, zero-padded. */
static void pack_t(const atb_args *a, float *xt, const float *x, int64_t ld, int64_t qr,
                   int64_t d) {
    if (qr < ATT_BQ) memset(xt, 0, (size_t)(d * ATT_BQ) * sizeof(float));
    a->kern.xt(xt, ATT_BQ, x, ld, qr, d);
}

/* lse of queries [i0, i0 + qr) (rows from row0): an online softmax over
 * the keys they see. Key 0 is never masked, so every l > 0. The arithmetic
 * is the forward's (attention.c: Q scaled before the product, each key
 * tile's sum added at once, the same micro-kernel), so this is the lse it
 * returns, bit for bit. */
LH_HOT static void row_lse(const atb_args *a, atb_scratch *s, const float *kb, int64_t row0,
                           int64_t i0, int64_t qr) {
    const int64_t d = a->d, hd = a->heads * d;
    int64_t key_end = a->causal && i0 + qr < a->nk ? i0 + qr : a->nk;
    float m[ATT_BQ], l[ATT_BQ], corr[ATT_BQ];
    for (int64_t i = 0; i < ATT_BQ; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    pack_t(a, s->qs, a->q + row0, hd, qr, d);
    for (int64_t x = 0; x < d * ATT_BQ; x++) s->qs[x] *= a->scale;
    for (int64_t j0 = 0; j0 < key_end; j0 += ATB_BK) {
        int64_t kv = key_end - j0 < ATB_BK ? key_end - j0 : ATB_BK;
        float *st = s->st;
        a->kern.qk(st, s->qs, kb + j0 * hd, hd, kv, ATT_BQ, d);
        if (a->causal)
            for (int64_t j = 0; j < kv; j++)
                for (int64_t i = 0; i < ATT_BQ; i++)
                    if (j0 + j > i0 + i) st[j * ATT_BQ + i] = -INFINITY;
        att_softmax_step(st, m, l, corr, kv, 0);
    }
    for (int64_t i = 0; i < qr; i++) s->lse[i0 + i] = m[i] + logf(l[i]);
}

/* D of queries [i0, i0 + qr) (rows from row0) = rowsum(dO * O). */
static void row_dd(const atb_args *a, atb_scratch *s, int64_t row0, int64_t i0, int64_t qr) {
    const int64_t d = a->d, hd = a->heads * d;
    for (int64_t i = 0; i < qr; i++) {
        const float *o = a->out + row0 + i * hd, *g = a->dout + row0 + i * hd;
        double acc = 0.0;
        for (int64_t c = 0; c < d; c++) acc += (double)g[c] * o[c];
        s->dd[i0 + i] = (float)acc;
    }
}

/* dst [kv, BQ]: dP^T -> dS^T = scale P^T (dP^T - D) */
LH_HOT static void dscores(float *restrict dst, const float *restrict st, const float *restrict dt,
                           int64_t kv, float scale) {
    const att_v8 sc = att_splat(scale);
    for (int64_t j = 0; j < kv; j++)
        for (int64_t i = 0; i < ATT_BQ; i += 8) {
            att_v8 *ds = (att_v8 *)(dst + j * ATT_BQ + i);
            *ds = *(const att_v8 *)(st + j * ATT_BQ + i) * (*ds - *(const att_v8 *)(dt + i)) * sc;
        }
}

/* st [kv, BQ]: S^T -> P^T = exp(scale S - lse), 0 where masked or padded. */
LH_HOT static void probs(float *st, const float *lse, const float *dd, float *lt, float *dt,
                         int64_t i0, int64_t qr, int64_t j0, int64_t kv, float scale,
                         int causal) {
    for (int64_t i = 0; i < ATT_BQ; i++) {
        lt[i] = i < qr ? lse[i0 + i] : INFINITY; /* padded queries: p = 0 */
        dt[i] = i < qr ? dd[i0 + i] : 0.0f;
    }
    const att_v8 sc = att_splat(scale);
    for (int64_t j = 0; j < kv; j++)
        for (int64_t i = 0; i < ATT_BQ; i += 8) {
            att_v8 *sp = (att_v8 *)(st + j * ATT_BQ + i);
            att_v8 p = att_exp8(*sp * sc - *(const att_v8 *)(lt + i));
            if (causal) { /* mask key j0 + j > query i0 + i */
                att_i8 qi = {0, 1, 2, 3, 4, 5, 6, 7};
                qi += (att_i8){0, 0, 0, 0, 0, 0, 0, 0} + (int32_t)(i0 + i - j0 - j);
                p = att_sel(qi < 0, att_splat(0.0f), p);
            }
            *sp = p;
        }
}

/* One (key tile, query tile) pair: accumulates dV^T, dK^T of the key tile
 * and dQ^T of the query tile; lse [nq] is the head's row logsumexp; qt,
 * dot and dqt are the query tile's. */
static void pair(const atb_args *a, atb_scratch *s, const float *lse, const float *kb,
                 const float *vb, int64_t row0, const float *qt, const float *dot, float *dqt,
                 int64_t i0, int64_t qr, int64_t j0, int64_t kv) {
    const int64_t d = a->d, hd = a->heads * d;
    float lt[ATT_BQ], dt[ATT_BQ];
    a->kern.qk(s->st, qt, kb, hd, kv, ATT_BQ, d);
    probs(s->st, lse, s->dd, lt, dt, i0, qr, j0, kv, a->scale, a->causal);
    if (a->dv) { /* dV^T [d, keys] += dO^T P: keys are the kernel's vector axis */
        a->kern.tr(s->tr, s->st, kv);
        a->kern.pv(s->dvt, s->tr, a->dout + row0, hd, qr, ATB_BK, d);
    }
    if (!a->dq && !a->dk) return;
    a->kern.qk(s->dst, dot, vb, hd, kv, ATT_BQ, d); /* dP^T */
    dscores(s->dst, s->st, dt, kv, a->scale);
    if (a->dq) a->kern.pv(dqt, s->dst, kb, hd, kv, ATT_BQ, d);
    if (a->dk) {
        a->kern.tr(s->tr, s->dst, kv);
        a->kern.pv(s->dkt, s->tr, a->q + row0, hd, qr, ATB_BK, d);
    }
}

/* x rows [0, kv) (ld apart, d wide) = xt [d, BK] transposed. */
static void unpack_t(const atb_args *a, float *x, const float *xt, int64_t ld, int64_t kv,
                     int64_t d) {
    a->kern.xt(x, ld, xt, ATB_BK, d, kv);
}

/* One task: (batch bi, head h). */
static void head_task(const atb_args *a, atb_scratch *s, int64_t bi, int64_t h) {
    const int64_t d = a->d, hd = a->heads * d, kvo = bi * a->nk * hd + h * d;
    const int64_t q0 = bi * a->nq * hd + h * d;
    const float *kb = a->k + kvo, *vb = a->v + kvo;
    const float *lse = a->lse ? a->lse + (bi * a->heads + h) * a->nq : s->lse;
    for (int64_t i0 = 0; i0 < a->nq; i0 += ATT_BQ) {
        int64_t qr = a->nq - i0 < ATT_BQ ? a->nq - i0 : ATT_BQ;
        if (!a->lse) row_lse(a, s, kb, q0 + i0 * hd, i0, qr);
        row_dd(a, s, q0 + i0 * hd, i0, qr);
        pack_t(a, s->qt + i0 * d, a->q + q0 + i0 * hd, hd, qr, d);
        if (a->dq || a->dk) pack_t(a, s->dot + i0 * d, a->dout + q0 + i0 * hd, hd, qr, d);
        if (a->dq) memset(s->dqt + i0 * d, 0, (size_t)(d * ATT_BQ) * sizeof(float));
    }
    for (int64_t j0 = 0; j0 < a->nk; j0 += ATB_BK) {
        int64_t kv = a->nk - j0 < ATB_BK ? a->nk - j0 : ATB_BK;
        memset(s->dkt, 0, (size_t)(2 * d * ATB_BK) * sizeof(float)); /* dkt and dvt */
        /* causal: queries before j0 see none of these keys */
        for (int64_t i0 = a->causal ? j0 / ATT_BQ * ATT_BQ : 0; i0 < a->nq; i0 += ATT_BQ) {
            int64_t qr = a->nq - i0 < ATT_BQ ? a->nq - i0 : ATT_BQ;
            pair(a, s, lse, kb + j0 * hd, vb + j0 * hd, q0 + i0 * hd, s->qt + i0 * d,
                 s->dot + i0 * d, s->dqt + i0 * d, i0, qr, j0, kv);
        }
        if (a->dk) unpack_t(a, a->dk + kvo + j0 * hd, s->dkt, hd, kv, d);
        if (a->dv) unpack_t(a, a->dv + kvo + j0 * hd, s->dvt, hd, kv, d);
    }
    if (a->dq)
        for (int64_t i0 = 0; i0 < a->nq; i0 += ATT_BQ) {
            int64_t qr = a->nq - i0 < ATT_BQ ? a->nq - i0 : ATT_BQ;
            unpack_t(a, a->dq + q0 + i0 * hd, s->dqt + i0 * d, hd, qr, d);
        }
}

/* ---- The op ---- */

lh_status lh__cpu_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                     const float *dout, const float *out, const float *lse,
                                     const float *q, const float *k, const float *v, int64_t b,
                                     int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale,
                                     int causal) {
    int64_t qn, kn, per_all;
    if (b < 0 || heads < 0 || nq < 0 || nk < 0 || d < 0 || !isfinite(scale)) return LH_ERR_INVALID;
    if (!lh__mul4(&qn, b, nq, heads, d) || !lh__mul4(&kn, b, nk, heads, d) || !lh__bytes_ok(qn) ||
        !lh__bytes_ok(kn) || d > ((int64_t)1 << 40) || nq > ((int64_t)1 << 40))
        return LH_ERR_OVERFLOW;
    if ((qn == 0 && kn == 0) || (!dq && !dk && !dv)) return LH_OK;
    if (qn > 0 && nk == 0) return LH_ERR_INVALID; /* softmax over no keys */
    if (!dout || !out || !q || !k || !v) return LH_ERR_INVALID;

    int threads = lh__cpu_threads(be);
    int64_t tasks = b * heads, per = per_thread_floats(d, nq);
    if (tasks < threads) threads = (int)tasks;
    if (!lh__mul2(&per_all, per, threads) || !lh__bytes_ok(per_all)) return LH_ERR_OVERFLOW;
    float *scratch = malloc((size_t)per_all * sizeof(float));
    if (!scratch) return LH_ERR_NOMEM;
    atb_args a = {dq, dk, dv, dout, out, q, k, v, lse, pick_kernels(), heads, nq, nk, d, scale,
                  causal != 0};

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        atb_scratch s = carve(scratch + (int64_t)omp_get_thread_num() * per, d, nq);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) head_task(&a, &s, t / heads, t % heads);
    }
    free(scratch);
    return LH_OK;
}
