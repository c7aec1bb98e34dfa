/* Overflow-checked size products for the cuda ops' argument checks, the
 * same rules as kernels/cpu/cpu.h (lh__mul2 ...) so that both backends
 * return the same status for the same sizes. Private to kernels/cuda/. */
#ifndef LH_KERNELS_CUDA_SIZE_CHECK_CUH
#define LH_KERNELS_CUDA_SIZE_CHECK_CUH

#include <stddef.h>
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

#endif
