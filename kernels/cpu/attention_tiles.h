/* Attention micro-kernels, a template included by attention.c once per
 * instruction set. Both products are vectorised across queries: a tile
 * keeps Q and O transposed ([d, ATT_BQ]) and scores as S^T [keys, ATT_BQ],
 * and K and V are read in place, one broadcast scalar at a time.
 * The includer defines AT_NAME(x) (suffixes names), AT_ATTR (the target
 * attribute), AT_VL (floats per native vector), AT_NV (vectors per query
 * block) and AT_RB (key or head-dim rows per register block); AT_RB * AT_NV
 * accumulators (8) stay in registers. GCC vector extensions; no include
 * guard on purpose. */

#define AT_IW (AT_NV * AT_VL) /* queries per block */

typedef float AT_NAME(vec) __attribute__((vector_size(AT_VL * 4)));
typedef float AT_NAME(uvec) __attribute__((vector_size(AT_VL * 4), aligned(4), may_alias));
#define AT_LD(p) (*(const AT_NAME(uvec) *)(p))
#define AT_ST(p, v) (*(AT_NAME(uvec) *)(p) = (v))

/* st[j, i] = sum_c k[j, c] qt[c, i] for j < kv, i < qcols (a multiple of
 * AT_IW); k rows are ld apart, qt and st rows ATT_BQ apart. */
AT_ATTR static void AT_NAME(qk_tile)(float *restrict st, const float *restrict qt,
                                     const float *restrict k, int64_t ld, int64_t kv,
                                     int64_t qcols, int64_t d) {
    for (int64_t i = 0; i < qcols; i += AT_IW) {
        int64_t j = 0;
        for (; j + AT_RB <= kv; j += AT_RB) {
            AT_NAME(vec) acc[AT_RB][AT_NV];
#pragma GCC unroll 8
            for (int r = 0; r < AT_RB; r++)
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) acc[r][u] = (AT_NAME(vec)){0};
            const float *kr = k + j * ld;
            for (int64_t c = 0; c < d; c++) {
                AT_NAME(vec) qv[AT_NV];
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) qv[u] = AT_LD(qt + c * ATT_BQ + i + u * AT_VL);
#pragma GCC unroll 8
                for (int r = 0; r < AT_RB; r++) {
                    float x = kr[r * ld + c];
#pragma GCC unroll 4
                    for (int u = 0; u < AT_NV; u++) acc[r][u] += x * qv[u];
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < AT_RB; r++)
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) AT_ST(st + (j + r) * ATT_BQ + i + u * AT_VL, acc[r][u]);
        }
        for (; j < kv; j++) { /* leftover keys, one at a time */
            AT_NAME(vec) acc[AT_NV];
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) acc[u] = (AT_NAME(vec)){0};
            const float *kr = k + j * ld;
            for (int64_t c = 0; c < d; c++) {
                float x = kr[c];
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) acc[u] += x * AT_LD(qt + c * ATT_BQ + i + u * AT_VL);
            }
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) AT_ST(st + j * ATT_BQ + i + u * AT_VL, acc[u]);
        }
    }
}

/* ot[c, i] += sum_j v[j, c] pt[j, i] for c < d, j < kv, i < qcols (a
 * multiple of AT_IW); v rows are ld apart, pt and ot rows ATT_BQ apart. */
AT_ATTR static void AT_NAME(pv_tile)(float *restrict ot, const float *restrict pt,
                                     const float *restrict v, int64_t ld, int64_t kv,
                                     int64_t qcols, int64_t d) {
    for (int64_t i = 0; i < qcols; i += AT_IW) {
        int64_t c = 0;
        for (; c + AT_RB <= d; c += AT_RB) {
            AT_NAME(vec) acc[AT_RB][AT_NV];
#pragma GCC unroll 8
            for (int r = 0; r < AT_RB; r++)
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) acc[r][u] = AT_LD(ot + (c + r) * ATT_BQ + i + u * AT_VL);
            for (int64_t j = 0; j < kv; j++) {
                AT_NAME(vec) pv[AT_NV];
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) pv[u] = AT_LD(pt + j * ATT_BQ + i + u * AT_VL);
                const float *vr = v + j * ld + c;
#pragma GCC unroll 8
                for (int r = 0; r < AT_RB; r++) {
                    float x = vr[r];
#pragma GCC unroll 4
                    for (int u = 0; u < AT_NV; u++) acc[r][u] += x * pv[u];
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < AT_RB; r++)
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) AT_ST(ot + (c + r) * ATT_BQ + i + u * AT_VL, acc[r][u]);
        }
        for (; c < d; c++) { /* leftover head dims, one at a time */
            AT_NAME(vec) acc[AT_NV];
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) acc[u] = AT_LD(ot + c * ATT_BQ + i + u * AT_VL);
            for (int64_t j = 0; j < kv; j++) {
                float x = v[j * ld + c];
#pragma GCC unroll 4
                for (int u = 0; u < AT_NV; u++) acc[u] += x * AT_LD(pt + j * ATT_BQ + i + u * AT_VL);
            }
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) AT_ST(ot + c * ATT_BQ + i + u * AT_VL, acc[u]);
        }
    }
}

#undef AT_IW
#undef AT_LD
#undef AT_ST
