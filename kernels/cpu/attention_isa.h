/* The attention micro-kernels of attention_tiles.h, instantiated once per
 * instruction set (generic; AVX2/FMA and AVX-512 where LH_X86_DISPATCH):
 * included by the forward (attention.c) and the backward
 * (backward_attention.c), each getting its own static copies. */
#ifndef LH_KERNELS_CPU_ATTENTION_ISA_H
#define LH_KERNELS_CPU_ATTENTION_ISA_H

#define AT_NAME(x) x##_generic
#define AT_ATTR
#define AT_VL 4
#define AT_NV 4
#define AT_RB 2
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB

#if LH_X86_DISPATCH
#define AT_NAME(x) x##_avx2
#define AT_ATTR __attribute__((target("arch=x86-64-v3")))
#define AT_VL 8
#define AT_NV 2
#define AT_RB 6  /* 12 accumulators of 16 registers */
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB

#define AT_NAME(x) x##_avx512
#define AT_ATTR __attribute__((target("arch=x86-64-v4")))
#define AT_VL 16
#define AT_NV 2
#define AT_RB 8  /* 16 accumulators of 32 registers */
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB

#endif

/* ---- Softmax helpers on 8 queries at a time ----
 * GCC vector extensions (not per-ISA instances): always inlined into the
 * LH_HOT (target_clones) callers, so each clone gets its own vector code.
 * att_exp8 is lh__expf (cpu.h) lane by lane - the same operations, clamps
 * and NaN handling - written so it is vectorised whatever the loop around it. */
typedef float att_v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t att_i8 __attribute__((vector_size(32)));

#define ATT_INLINE static inline __attribute__((always_inline))

/* always inlined, so no vector ever crosses a call: the ABI note (given
 * where they are inlined, hence for the rest of the includer) is moot */
#pragma GCC diagnostic ignored "-Wpsabi"

ATT_INLINE att_v8 att_sel(att_i8 m, att_v8 a, att_v8 b) { /* m ? a : b, m all-ones or 0 */
    return (att_v8)(((att_i8)a & m) | ((att_i8)b & ~m));
}

ATT_INLINE att_v8 att_splat(float x) { return (att_v8){x, x, x, x, x, x, x, x}; }

ATT_INLINE att_v8 att_exp8(att_v8 x) {
    const att_v8 lo = att_splat(-87.0f), hi = att_splat(88.0f), magic = att_splat(12582912.0f);
    att_v8 xc = att_sel(x > lo, x, lo); /* NaN gives -87, as lh__expf */
    xc = att_sel(xc < hi, xc, hi);
    att_v8 n = (xc * 1.44269504088896341f + magic) - magic;
    att_v8 r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    att_v8 p = att_splat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    att_i8 bits = (__builtin_convertvector(n, att_i8) + 127) << 23;
    att_v8 y = p * (att_v8)bits;
    return att_sel(x < lo, att_splat(0.0f), y);
}

/* One key tile of the online softmax, st [kv, ATT_BQ] scores (masked ones
 * -inf): per query the new max, corr = exp(m_old - m_new) and l = l corr +
 * sum_j exp(s - m_new); st becomes the probabilities when write_p. A query
 * that has seen only masked keys keeps m = -inf, l = 0. Shared by the
 * forward and the backward's lse pass, so both give the same lse bit for
 * bit. */
ATT_INLINE void att_softmax_step(float *restrict st, float *restrict m, float *restrict l,
                                 float *restrict corr, int64_t kv, int write_p) {
    for (int64_t i = 0; i < ATT_BQ; i += 8) {
        att_v8 mold = *(const att_v8 *)(m + i), mx = mold;
        for (int64_t j = 0; j < kv; j++) {
            att_v8 s = *(const att_v8 *)(st + j * ATT_BQ + i);
            mx = att_sel(s > mx, s, mx);
        }
        att_v8 base = att_sel(mx == att_splat(-INFINITY), att_splat(0.0f), mx);
        att_v8 c = att_exp8(mold - base); /* m = -inf gives 0 */
        att_v8 sum = att_splat(0.0f);
        for (int64_t j = 0; j < kv; j++) {
            att_v8 p = att_exp8(*(const att_v8 *)(st + j * ATT_BQ + i) - base);
            if (write_p) *(att_v8 *)(st + j * ATT_BQ + i) = p;
            sum += p;
        }
        *(att_v8 *)(m + i) = mx;
        *(att_v8 *)(corr + i) = c;
        *(att_v8 *)(l + i) = *(const att_v8 *)(l + i) * c + sum;
    }
}

#endif
