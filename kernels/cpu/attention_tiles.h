/* Attention micro-kernels, a template included by attention.c once per
 * instruction set. Both products are vectorised across queries: a tile
 * keeps Q and O transposed ([d, ATT_BQ]) and scores as S^T [keys, ATT_BQ],
 * and K and V are read in place, one broadcast scalar at a time.
 * The includer defines AT_NAME(x) (suffixes names), AT_ATTR (the target
 * attribute), AT_VL (floats per native vector), AT_NV (vectors per query
 * block) and AT_RB (key or head-dim rows per register block); AT_RB * AT_NV
 * accumulators stay in registers. GCC vector extensions; no include
 * guard on purpose. */

#define AT_IW (AT_NV * AT_VL) /* queries per block */

typedef float AT_NAME(vec) __attribute__((vector_size(AT_VL * 4)));
typedef float AT_NAME(uvec) __attribute__((vector_size(AT_VL * 4), aligned(4), may_alias));
#define AT_LD(p) (*(const AT_NAME(uvec) *)(p))
#define AT_ST(p, v) (*(AT_NAME(uvec) *)(p) = (v))

/* The register blocks: rb (a constant once inlined, <= AT_RB) rows of the
 * result times AT_IW queries. */
AT_ATTR static inline __attribute__((always_inline)) void AT_NAME(qk_block)(
    float *restrict st, const float *restrict qt, const float *restrict kr, int64_t ld,
    int64_t d, const int rb) {
    AT_NAME(vec) acc[AT_RB][AT_NV];
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) acc[r][u] = (AT_NAME(vec)){0};
    for (int64_t c = 0; c < d; c++) {
        AT_NAME(vec) qv[AT_NV];
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) qv[u] = AT_LD(qt + c * ATT_BQ + u * AT_VL);
#pragma GCC unroll 8
        for (int r = 0; r < rb; r++) {
            float x = kr[r * ld + c];
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) acc[r][u] += x * qv[u];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) AT_ST(st + r * ATT_BQ + u * AT_VL, acc[r][u]);
}

AT_ATTR static inline __attribute__((always_inline)) void AT_NAME(pv_block)(
    float *restrict ot, const float *restrict pt, const float *restrict v, int64_t ld,
    int64_t kv, const int rb) {
    AT_NAME(vec) acc[AT_RB][AT_NV];
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) acc[r][u] = AT_LD(ot + r * ATT_BQ + u * AT_VL);
    for (int64_t j = 0; j < kv; j++) {
        AT_NAME(vec) pv[AT_NV];
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) pv[u] = AT_LD(pt + j * ATT_BQ + u * AT_VL);
        const float *vr = v + j * ld;
#pragma GCC unroll 8
        for (int r = 0; r < rb; r++) {
            float x = vr[r];
#pragma GCC unroll 4
            for (int u = 0; u < AT_NV; u++) acc[r][u] += x * pv[u];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int u = 0; u < AT_NV; u++) AT_ST(ot + r * ATT_BQ + u * AT_VL, acc[r][u]);
}

/* Rows done in AT_RB blocks out of n: as many as leave a multiple of 4
 * (when AT_RB > 4), so that no row goes alone where it need not (80 = 12 *
 * 6 + 2 * 4, not 13 * 6 + 2 * 1). */
static inline int64_t AT_NAME(big_rows)(int64_t n) {
    int64_t nb = n / AT_RB;
    if (AT_RB > 4)
        while (nb > 0 && (n - nb * AT_RB) % 4 != 0) nb--;
    return nb * AT_RB;
}

/* st[j, i] = sum_c k[j, c] qt[c, i] for j < kv, i < qcols (a multiple of
 * AT_IW); k rows are ld apart, qt and st rows ATT_BQ apart. Rows go in
 * blocks of AT_RB, then 4, then 1. */
AT_ATTR static void AT_NAME(qk_tile)(float *restrict st, const float *restrict qt,
                                     const float *restrict k, int64_t ld, int64_t kv,
                                     int64_t qcols, int64_t d) {
    for (int64_t i = 0; i < qcols; i += AT_IW) {
        int64_t j = 0, end = AT_NAME(big_rows)(kv);
        for (; j < end; j += AT_RB)
            AT_NAME(qk_block)(st + j * ATT_BQ + i, qt + i, k + j * ld, ld, d, AT_RB);
        if (AT_RB > 4)
            for (; j + 4 <= kv; j += 4)
                AT_NAME(qk_block)(st + j * ATT_BQ + i, qt + i, k + j * ld, ld, d, 4);
        for (; j < kv; j++) AT_NAME(qk_block)(st + j * ATT_BQ + i, qt + i, k + j * ld, ld, d, 1);
    }
}

/* ot[c, i] += sum_j v[j, c] pt[j, i] for c < d, j < kv, i < qcols (a
 * multiple of AT_IW); v rows are ld apart, pt and ot rows ATT_BQ apart.
 * Head dims go in blocks of AT_RB, then 4, then 1. */
AT_ATTR static void AT_NAME(pv_tile)(float *restrict ot, const float *restrict pt,
                                     const float *restrict v, int64_t ld, int64_t kv,
                                     int64_t qcols, int64_t d) {
    for (int64_t i = 0; i < qcols; i += AT_IW) {
        int64_t c = 0, end = AT_NAME(big_rows)(d);
        for (; c < end; c += AT_RB)
            AT_NAME(pv_block)(ot + c * ATT_BQ + i, pt + i, v + c, ld, kv, AT_RB);
        if (AT_RB > 4)
            for (; c + 4 <= d; c += 4)
                AT_NAME(pv_block)(ot + c * ATT_BQ + i, pt + i, v + c, ld, kv, 4);
        for (; c < d; c++) AT_NAME(pv_block)(ot + c * ATT_BQ + i, pt + i, v + c, ld, kv, 1);
    }
}

#undef AT_IW
#undef AT_LD
#undef AT_ST
