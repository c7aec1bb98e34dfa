/* Random streams for noise: torch.Generator("cpu").manual_seed(N) compatible
 * (mt19937 and torch's CPU normal sampling), or a replay of noise the caller
 * supplies, so runs are reproducible and comparable with diffusers. */
#ifndef LH_HOST_RNG_H
#define LH_HOST_RNG_H

#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

/* A generator seeded as torch.Generator("cpu").manual_seed(seed). */
LH_API lh_rng *lh_rng_create(uint64_t seed, lh_error *err);
/* n independent generators, one per image of a batch, seeded as
 * lh_rng_create(seeds[i]): a draw of k values (k a multiple of n) takes k / n
 * from each in turn, so image i of a batch gets exactly the noise a batch
 * of one seeded with seeds[i] gets (batched requests, lh_gen_params.seeds). */
LH_API lh_rng *lh_rng_create_batch(const uint64_t *seeds, int64_t n, lh_error *err);
/* A stream that hands out `noise` (copied) in order, then fails. */
LH_API lh_rng *lh_rng_create_replay(const float *noise, int64_t n, lh_error *err);
LH_API void lh_rng_destroy(lh_rng *rng);

/* Next raw 32-bit word of the mt19937 stream. */
LH_API uint32_t lh_rng_u32(lh_rng *rng);
/* A fresh 32-bit seed for "no seed given" (/dev/urandom, else time ^ pid),
 * as A1111's seed -1. */
LH_API uint64_t lh_rng_random_seed(void);
/* out[n] = torch.randn(n, generator=g) for a contiguous float32 tensor. */
LH_API lh_status lh_rng_randn(lh_rng *rng, float *out, int64_t n, lh_error *err);

#endif
