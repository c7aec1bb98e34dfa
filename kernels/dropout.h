/* LoRA dropout's mask, shared by the cpu op, the cuda kernels and the
 * host: element i survives when the splitmix64 hash of seed + i * golden
 * ratio, as a 53-bit fraction, is at least p. A pure function of (seed, i),
 * so a backward regenerates the forward's mask and every backend draws the
 * same one. Integer arithmetic and exact conversions only. */
#ifndef LH_KERNELS_DROPOUT_H
#define LH_KERNELS_DROPOUT_H

#include <stdint.h>

#ifdef __CUDACC__
#define LH_HOST_DEVICE __host__ __device__
#else
#define LH_HOST_DEVICE
#endif

static inline LH_HOST_DEVICE int lh_dropout_kept(uint64_t seed, int64_t i, double p) {
    uint64_t z = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-53 >= p;
}

#endif
