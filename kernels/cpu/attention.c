/* Scaled dot-product attention, flash style: a task is (batch, head, tile
 * of ATT_BQ queries); it walks the keys in tiles of ATT_BK with an online
 * softmax (running max m, running sum l, output rescaled by exp(m_old -
 * m_new)), so memory is a few tiles per thread whatever nq and nk are -
 * never a [heads, nq, nk] matrix. Tasks are spread over OpenMP threads.
 *
 * Everything is vectorised across the task's queries: it keeps Q (times
 * `scale`) and its output transposed, [d, ATT_BQ], and the scores of a key
 * tile as S^T [ATT_BK, ATT_BQ]; K and V are read in place. The two products
 * are register-blocked in attention_tiles.h, instantiated for AVX-512,
 * AVX2+FMA and baseline vectors and picked from the CPU's features; the
 * softmax steps (attention_isa.h) are explicit 8-wide vector loops over
 * queries, and Q in and O out go through 8x8 block transposes. Asked for
 * `lse`, a task ends by writing m + log l of its queries: the backward's
 * row logsumexp, at no extra pass. */
#include "cpu.h"

#include <omp.h>
#include <stdlib.h>

#define ATT_BQ 64 /* queries per task: a multiple of every kernel's query block */
#define ATT_BK 64 /* keys per tile */

/* Per-thread floats: qt and ot [d, BQ], st [BK, BQ], m, l, corr [BQ]. */
static int64_t per_thread_floats(int64_t d) { return (2 * d + ATT_BK + 3) * ATT_BQ; }

size_t lh__cpu_attention_scratch_bytes(int64_t d, int threads) {
    int64_t all;
    if (d < 0 || d > ((int64_t)1 << 40) ||
        !lh__mul2(&all, per_thread_floats(d), threads > 0 ? threads : 1) ||
        !lh__bytes_ok(all))
        return SIZE_MAX;
    return (size_t)all * sizeof(float);
}

/* ---- Micro-kernels: one instantiation per instruction set ---- */

#include "attention_isa.h"

typedef void (*qk_fn)(float *restrict st, const float *restrict qt, const float *restrict k,
                      int64_t ld, int64_t kv, int64_t qcols, int64_t d);
typedef void (*pv_fn)(float *restrict ot, const float *restrict pt, const float *restrict v,
                      int64_t ld, int64_t kv, int64_t qcols, int64_t d);

typedef struct att_kernels {
    qk_fn qk;
    pv_fn pv;
    att_tr_fn tr;
} att_kernels;

static int g_isa_forced; /* lh__cpu_attention_force_isa, for tests */

static int isa_available(int isa) {
    if (isa == LH_CPU_ISA_GENERIC) return 1;
#if LH_X86_DISPATCH
    __builtin_cpu_init();
    if (isa == LH_CPU_ISA_AVX2) return __builtin_cpu_supports("x86-64-v3");
    if (isa == LH_CPU_ISA_AVX512) return __builtin_cpu_supports("x86-64-v4");
#endif
    return 0;
}

lh_status lh__cpu_attention_force_isa(int isa) {
    if (isa != LH_CPU_ISA_AUTO && !isa_available(isa)) return LH_ERR_UNSUPPORTED;
    g_isa_forced = isa;
    return LH_OK;
}

static att_kernels pick_kernels(void) {
    int isa = g_isa_forced;
    if (isa == LH_CPU_ISA_AUTO)
        isa = isa_available(LH_CPU_ISA_AVX512) ? LH_CPU_ISA_AVX512
              : isa_available(LH_CPU_ISA_AVX2) ? LH_CPU_ISA_AVX2
                                               : LH_CPU_ISA_GENERIC;
#if LH_X86_DISPATCH
    if (isa == LH_CPU_ISA_AVX512)
        return (att_kernels){qk_tile_avx512, pv_tile_avx512, att_transpose_avx2};
    if (isa == LH_CPU_ISA_AVX2) return (att_kernels){qk_tile_avx2, pv_tile_avx2, att_transpose_avx2};
#endif
    return (att_kernels){qk_tile_generic, pv_tile_generic, att_transpose_generic};
}

/* ---- Online softmax over one key tile ---- */

/* st [kv, BQ] scores -> exp(st - m_new); per query: m = m_new, l = l * corr
 * + sum, and ot [d, BQ] scaled by corr = exp(m_old - m_new). Masked scores
 * are -inf. A query that has seen only masked keys keeps m = -inf, l = 0. */
LH_HOT static void softmax_tile(float *restrict st, float *restrict ot, float *restrict m,
                                float *restrict l, float *restrict corr, int64_t kv, int64_t d) {
    att_softmax_step(st, m, l, corr, kv, 1);
    for (int64_t c = 0; c < d; c++)
        for (int64_t i = 0; i < ATT_BQ; i += 8) {
            att_v8 *o = (att_v8 *)(ot + c * ATT_BQ + i);
            *o = *o * *(const att_v8 *)(corr + i);
        }
}

/* ---- One task: queries [i0, i0 + qrows) of (batch bi, head h) ---- */

typedef struct att_args {
    const float *q, *k, *v;
    float *out, *lse; /* lse [b, heads, nq] or NULL */
    att_kernels kern;
    int64_t heads, nq, nk, d;
    float scale;
    int causal;
} att_args;

static void attention_task(const att_args *a, float *scratch, int64_t bi, int64_t h, int64_t i0) {
    const int64_t d = a->d, hd = a->heads * d;
    float *qt = scratch, *ot = qt + d * ATT_BQ, *st = ot + d * ATT_BQ;
    float *m = st + ATT_BK * ATT_BQ, *l = m + ATT_BQ, *corr = l + ATT_BQ;
    int64_t qrows = a->nq - i0 < ATT_BQ ? a->nq - i0 : ATT_BQ;

    /* a short last tile is padded with zero queries: loops keep constant bounds */
    if (qrows < ATT_BQ) memset(qt, 0, (size_t)(d * ATT_BQ) * sizeof(float));
    memset(ot, 0, (size_t)(d * ATT_BQ) * sizeof(float));
    a->kern.tr(qt, ATT_BQ, a->q + (bi * a->nq + i0) * hd + h * d, hd, qrows, d);
    for (int64_t x = 0; x < d * ATT_BQ; x++) qt[x] *= a->scale;
    for (int64_t i = 0; i < ATT_BQ; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }

    /* causal: query i sees keys j <= i, so keys past the last query end it */
    int64_t key_end = a->causal && i0 + qrows < a->nk ? i0 + qrows : a->nk;
    const float *kb = a->k + bi * a->nk * hd + h * d, *vb = a->v + bi * a->nk * hd + h * d;
    for (int64_t j0 = 0; j0 < key_end; j0 += ATT_BK) {
        int64_t kv = key_end - j0 < ATT_BK ? key_end - j0 : ATT_BK;
        a->kern.qk(st, qt, kb + j0 * hd, hd, kv, ATT_BQ, d);
        if (a->causal && j0 + kv - 1 > i0) /* mask key j0 + j > query i0 + i */
            for (int64_t j = 0; j < kv; j++) {
                int64_t first = j0 + j - i0; /* queries below this index cannot see key j */
                for (int64_t i = 0; i < ATT_BQ && i < first; i++) st[j * ATT_BQ + i] = -INFINITY;
            }
        softmax_tile(st, ot, m, l, corr, kv, d);
        a->kern.pv(ot, st, vb + j0 * hd, hd, kv, ATT_BQ, d);
    }

    for (int64_t i = 0; i < ATT_BQ; i++) corr[i] = 1.0f / l[i]; /* padded queries: inf, unused */
    for (int64_t c = 0; c < d; c++)
        for (int64_t i = 0; i < ATT_BQ; i++) ot[c * ATT_BQ + i] *= corr[i];
    a->kern.tr(a->out + (bi * a->nq + i0) * hd + h * d, hd, ot, ATT_BQ, d, qrows);
    if (a->lse) /* m is already scaled (qt holds scale q); key 0 is never masked, so l > 0 */
        for (int64_t i = 0; i < qrows; i++)
            a->lse[(bi * a->heads + h) * a->nq + i0 + i] = m[i] + logf(l[i]);
}

/* ---- The op ---- */

lh_status lh__cpu_attention(lh_backend *be, float *out, float *lse, const float *q,
                            const float *k, const float *v, int64_t b, int64_t heads, int64_t nq,
                            int64_t nk, int64_t d, float scale, int causal) {
    int64_t qn, kn;
    if (b < 0 || heads < 0 || nq < 0 || nk < 0 || d < 0 || !isfinite(scale)) return LH_ERR_INVALID;
    if (!lh__mul4(&qn, b, nq, heads, d) || !lh__mul4(&kn, b, nk, heads, d) || !lh__bytes_ok(qn) ||
        !lh__bytes_ok(kn))
        return LH_ERR_OVERFLOW;
    if (qn == 0) return LH_OK;
    if (nk == 0) return LH_ERR_INVALID; /* softmax over no keys */
    if (!out || !q || !k || !v) return LH_ERR_INVALID;

    int threads = lh__cpu_threads(be);
    int64_t n_qt = (nq + ATT_BQ - 1) / ATT_BQ, tasks = b * heads * n_qt;
    if (tasks < threads) threads = (int)tasks;
    size_t bytes = lh__cpu_attention_scratch_bytes(d, threads);
    if (bytes == SIZE_MAX) return LH_ERR_OVERFLOW;
    float *scratch = malloc(bytes);
    if (!scratch) return LH_ERR_NOMEM;
    att_args a = {q, k, v, out, lse, pick_kernels(), heads, nq, nk, d, scale, causal != 0};
    int64_t per = per_thread_floats(d);

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *mine = scratch + (int64_t)omp_get_thread_num() * per;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t bh = t / n_qt, qt = t % n_qt;
            attention_task(&a, mine, bh / heads, bh % heads, qt * ATT_BQ);
        }
    }
    free(scratch);
    return LH_OK;
}
