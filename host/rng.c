/* torch-compatible CPU random numbers: mt19937 seeded like
 * torch.Generator.manual_seed, uniform draws from 24 (float) or 53 (double)
 * random bits, and torch's normal sampling (Box-Muller over blocks of 16 for
 * tensors of 16+ elements, cached double Box-Muller pairs below that). */
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

struct lh_rng {
    uint32_t mt[MT_N];
    int mti;
    int has_cached_normal; /* torch's next_double_normal_sample */
    double cached_normal;
    float *replay; /* replay mode: noise handed out in order */
    int64_t replay_n, replay_pos;
};

/* ---- mt19937 ---- */

static void mt_seed(lh_rng *r, uint32_t seed) {
    r->mt[0] = seed;
    for (int i = 1; i < MT_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->mti = MT_N;
}

static void mt_twist(lh_rng *r) {
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % MT_N] & 0x7fffffffu);
        uint32_t v = r->mt[(i + MT_M) % MT_N] ^ (y >> 1);
        if (y & 1u) v ^= 0x9908b0dfu;
        r->mt[i] = v;
    }
    r->mti = 0;
}

uint32_t lh_rng_u32(lh_rng *r) {
    if (r->mti >= MT_N) mt_twist(r);
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* ---- Uniform and normal draws as torch makes them ---- */

static float uniform_f32(lh_rng *r) {
    return (float)(lh_rng_u32(r) & ((1u << 24) - 1)) * (1.0f / (float)(1u << 24));
}

static double uniform_f64(lh_rng *r) {
    uint64_t hi = lh_rng_u32(r), lo = lh_rng_u32(r);
    uint64_t v = (hi << 32) | lo;
    return (double)(v & ((1ull << 53) - 1)) * (1.0 / (double)(1ull << 53));
}

static double normal_f64(lh_rng *r) {
    if (r->has_cached_normal) {
        r->has_cached_normal = 0;
        return r->cached_normal;
    }
    double u1 = uniform_f64(r), u2 = uniform_f64(r);
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * M_PI * u1;
    r->cached_normal = radius * sin(theta);
    r->has_cached_normal = 1;
    return radius * cos(theta);
}

/* Box-Muller over 16 uniforms in place: [0,8) pairs with [8,16). */
static void normal_fill_16(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * M_PI) * u2;
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

lh_status lh_rng_randn(lh_rng *r, float *out, int64_t n, lh_error *err) {
    if (n < 0) return lh_error_set(err, LH_ERR_INVALID, "randn: negative count %lld", (long long)n);
    if (r->replay) {
        if (n > r->replay_n - r->replay_pos)
            return lh_error_set(err, LH_ERR_INVALID,
                                "supplied noise exhausted: %lld values asked, %lld left",
                                (long long)n, (long long)(r->replay_n - r->replay_pos));
        memcpy(out, r->replay + r->replay_pos, (size_t)n * sizeof *out);
        r->replay_pos += n;
        return LH_OK;
    }
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = (float)normal_f64(r);
        return LH_OK;
    }
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(r);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16) {
        /* torch redraws the last 16 values when n is not a multiple of 16 */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(r);
        normal_fill_16(tail);
    }
    return LH_OK;
}

/* ---- Lifetime ---- */

lh_rng *lh_rng_create(uint64_t seed, lh_error *err) {
    lh_rng *r = calloc(1, sizeof *r);
    if (!r) {
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for a random generator");
        return NULL;
    }
    mt_seed(r, (uint32_t)(seed & 0xffffffffu));
    return r;
}

lh_rng *lh_rng_create_replay(const float *noise, int64_t n, lh_error *err) {
    if (n < 0 || (n > 0 && !noise)) {
        lh_error_set(err, LH_ERR_INVALID, "replay noise: bad buffer");
        return NULL;
    }
    lh_rng *r = lh_rng_create(0, err);
    if (!r) return NULL;
    size_t bytes;
    if (lh_mul_size((size_t)n, sizeof(float), &bytes)) {
        free(r);
        lh_error_set(err, LH_ERR_OVERFLOW, "replay noise of %lld values overflows", (long long)n);
        return NULL;
    }
    r->replay = malloc(bytes ? bytes : 1);
    if (!r->replay) {
        free(r);
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for %lld noise values", (long long)n);
        return NULL;
    }
    if (n) memcpy(r->replay, noise, bytes);
    r->replay_n = n;
    return r;
}

void lh_rng_destroy(lh_rng *r) {
    if (!r) return;
    free(r->replay);
    free(r);
}
