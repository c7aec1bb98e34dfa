/* Size checks for the cuda ops' argument validation: the same rules as
 * kernels/cpu/cpu.h (lh__mul2 .. lh__bytes_ok), so a bad size gives the
 * same status on both backends. Private to kernels/cuda/. */
#ifndef LH_KERNELS_CUDA_OP_CHECKS_H
#define LH_KERNELS_CUDA_OP_CHECKS_H

#include <stdint.h>

/* *out = a * b; 0 on int64 overflow or a negative factor. */
static inline int lh__cu_mul2(int64_t *out, int64_t a, int64_t b) {
    if (a < 0 || b < 0) return 0;
    return !__builtin_mul_overflow(a, b, out);
}
static inline int lh__cu_mul3(int64_t *out, int64_t a, int64_t b, int64_t c) {
    int64_t t;
    return lh__cu_mul2(&t, a, b) && lh__cu_mul2(out, t, c);
}
static inline int lh__cu_mul4(int64_t *out, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t t;
    return lh__cu_mul3(&t, a, b, c) && lh__cu_mul2(out, t, d);
}
/* Element count n of float32 also addressable in bytes. */
static inline int lh__cu_bytes_ok(int64_t n) {
    return n >= 0 && (uint64_t)n <= (uint64_t)(SIZE_MAX / sizeof(float)) &&
           (uint64_t)n <= (uint64_t)(INT64_MAX / (int64_t)sizeof(float));
}

/* Grid-stride loop over [0, n). */
#define LH_CU_FOR(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);            \
         i += (int64_t)gridDim.x * blockDim.x)

#endif
