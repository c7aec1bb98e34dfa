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
    for (int64_t i = 0; i < ATT_BQ; i += 16) { /* two independent exp chains per step */
        att_v8 mold[2], mx[2], base[2], sum[2];
#pragma GCC unroll 2
        for (int u = 0; u < 2; u++) mold[u] = mx[u] = *(const att_v8 *)(m + i + 8 * u);
        for (int64_t j = 0; j < kv; j++)
#pragma GCC unroll 2
            for (int u = 0; u < 2; u++) {
                att_v8 s = *(const att_v8 *)(st + j * ATT_BQ + i + 8 * u);
                mx[u] = att_sel(s > mx[u], s, mx[u]);
            }
#pragma GCC unroll 2
        for (int u = 0; u < 2; u++) {
            base[u] = att_sel(mx[u] == att_splat(-INFINITY), att_splat(0.0f), mx[u]);
            sum[u] = att_splat(0.0f);
        }
        for (int64_t j = 0; j < kv; j++)
#pragma GCC unroll 2
            for (int u = 0; u < 2; u++) {
                att_v8 *sp = (att_v8 *)(st + j * ATT_BQ + i + 8 * u);
                att_v8 p = att_exp8(*sp - base[u]);
                if (write_p) *sp = p;
                sum[u] += p;
            }
#pragma GCC unroll 2
        for (int u = 0; u < 2; u++) {
            att_v8 c = att_exp8(mold[u] - base[u]); /* m = -inf gives 0 */
            *(att_v8 *)(m + i + 8 * u) = mx[u];
            *(att_v8 *)(corr + i + 8 * u) = c;
            *(att_v8 *)(l + i + 8 * u) = *(const att_v8 *)(l + i + 8 * u) * c + sum[u];
        }
    }
}

/* ---- Strided transposes: dst[c * dld + r] = src[r * sld + c], r < rows, c < cols ---- */

static void att_transpose_generic(float *restrict dst, int64_t dld, const float *restrict src,
                                  int64_t sld, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * dld + r] = src[r * sld + c];
}

#if LH_X86_DISPATCH
#include <immintrin.h>

/* 8x8 blocks in AVX registers, the ragged edges one at a time. */
__attribute__((target("avx2"))) static void att_transpose_avx2(float *restrict dst, int64_t dld,
                                                               const float *restrict src,
                                                               int64_t sld, int64_t rows,
                                                               int64_t cols) {
    int64_t r8 = rows & ~(int64_t)7, c8 = cols & ~(int64_t)7;
    for (int64_t rb = 0; rb < r8; rb += 8)
        for (int64_t cb = 0; cb < c8; cb += 8) {
            const float *s = src + rb * sld + cb;
            __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + sld);
            __m256 r2 = _mm256_loadu_ps(s + 2 * sld), r3 = _mm256_loadu_ps(s + 3 * sld);
            __m256 r4 = _mm256_loadu_ps(s + 4 * sld), r5 = _mm256_loadu_ps(s + 5 * sld);
            __m256 r6 = _mm256_loadu_ps(s + 6 * sld), r7 = _mm256_loadu_ps(s + 7 * sld);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = dst + cb * dld + rb;
            _mm256_storeu_ps(o, _mm256_permute2f128_ps(s0, s4, 0x20));
            _mm256_storeu_ps(o + dld, _mm256_permute2f128_ps(s1, s5, 0x20));
            _mm256_storeu_ps(o + 2 * dld, _mm256_permute2f128_ps(s2, s6, 0x20));
            _mm256_storeu_ps(o + 3 * dld, _mm256_permute2f128_ps(s3, s7, 0x20));
            _mm256_storeu_ps(o + 4 * dld, _mm256_permute2f128_ps(s0, s4, 0x31));
            _mm256_storeu_ps(o + 5 * dld, _mm256_permute2f128_ps(s1, s5, 0x31));
            _mm256_storeu_ps(o + 6 * dld, _mm256_permute2f128_ps(s2, s6, 0x31));
            _mm256_storeu_ps(o + 7 * dld, _mm256_permute2f128_ps(s3, s7, 0x31));
        }
    for (int64_t r = 0; r < rows; r++) /* ragged columns; then ragged rows */
        for (int64_t c = r < r8 ? c8 : 0; c < cols; c++) dst[c * dld + r] = src[r * sld + c];
}
#endif

typedef void (*att_tr_fn)(float *restrict dst, int64_t dld, const float *restrict src,
                          int64_t sld, int64_t rows, int64_t cols);

#endif
