/* torch-compatible CPU random numbers: mt19937 seeded like
 * torch.Generator.manual_seed, uniform draws from 24 (float) or 53 (double)
 * random bits, and torch's normal sampling (Box-Muller over blocks of 16 for
 * tensors of 16+ elements, cached double Box-Muller pairs below that).
 * float32 randn is bit-identical with torch 2.15 on AVX2/AVX-512 CPUs; see
 * normal_fill_16 below for what that depends on. */
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MT_N 624
#define MT_M 397

struct lh_rng {
    uint32_t mt[MT_N];
    int mti;
    int has_cached_normal; /* torch's next_double_normal_sample */
    double cached_normal;
    float *replay; /* replay mode: noise handed out in order */
    int64_t replay_n, replay_pos;
    struct lh_rng *streams; /* batch mode: one generator per image */
    int64_t n_streams;
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

/* at::normal_distribution<double>: libm log1p, sin and cos in double (torch
 * calls glibc's log1p and sincos, so this path is bit-exact where both link
 * the same libm). "+ 0.0" is torch's fma(v, std=1, mean=0): -0 becomes +0. */
static double normal_f64(lh_rng *r) {
    if (r->has_cached_normal) {
        r->has_cached_normal = 0;
        return r->cached_normal + 0.0;
    }
    double u1 = uniform_f64(r), u2 = uniform_f64(r);
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * M_PI * u1;
    r->cached_normal = radius * sin(theta);
    r->has_cached_normal = 1;
    double v = radius * cos(theta);
    return v + 0.0;
}

/* ---- torch's AVX2 Box-Muller, bit for bit ----
 *
 * For float32 tensors of 16+ elements torch (aten/src/ATen/native/cpu/
 * DistributionTemplates.h, NormalFill16<float, true>) runs Box-Muller on
 * 8-lane AVX2 vectors with log256_ps and sincos256_ps from avx_mathfun.h
 * (Pommier's Cephes ports), not with libm. The functions below replay that
 * kernel one lane at a time. The operation order and the fused multiply-adds
 * are those of the machine code of torch 2.15's libtorch_cpu.so (GCC
 * contracted the header's _mm256_mul_ps/_mm256_add_ps pairs into vfmadd,
 * vfnmadd and vfmsub), so every fusion is an explicit fmaf here and every
 * other step is its own statement, each rounded to float: nothing may be
 * contracted or kept in extended precision (FLT_EVAL_METHOD must be 0, as on
 * x86-64 SSE and AArch64; with -std=c11 GCC does not contract, and the
 * pragma below stops clang).
 *
 * Which kernel torch runs depends on the CPU: torch has no AVX-512 variant of
 * this kernel, so AVX2 and AVX-512 machines (ATEN_CPU_CAPABILITY avx2 or
 * avx512) run this code and agree bit for bit; torch's DEFAULT capability
 * (x86 without AVX2, or ATEN_CPU_CAPABILITY=default) and non-x86 builds use
 * libm logf/cosf/sinf and differ in the last bit or two for about 40% of
 * values. lorahost always reproduces the AVX2/AVX-512 stream. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* log256_ps for one lane: Cephes logf with torch's fused steps. */
static float avx_log(float x) {
    const float min_norm = f32_from_bits(0x00800000u), sqrthf = f32_from_bits(0x3f3504f3u);
    int invalid = x <= 0.0f;
    x = x > min_norm ? x : min_norm; /* vmaxps: x unless x is smaller or NaN */
    uint32_t bits = f32_bits(x);
    int32_t ex = (int32_t)(bits >> 23) - 127;
    x = f32_from_bits((bits & ~0x7f800000u) | 0x3f000000u); /* mantissa in [0.5, 1) */
    float e = (float)ex;
    e = e + 1.0f;
    int below = x < sqrthf;
    float tmp = below ? x : 0.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x - 1.0f;
    x = x + tmp;
    float z = x * x;
    float y = fmaf(7.0376836292E-2f, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    float eq1 = e * -2.12194440e-4f;
    y = fmaf(y, z, eq1);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, 0.693359375f, x);
    if (invalid) x = f32_from_bits(0xffffffffu); /* x | all-ones mask: NaN */
    return x;
}

/* sincos256_ps for one lane: Cephes sinf/cosf with torch's fused steps. */
static void avx_sincos(float xin, float *s, float *c) {
    uint32_t xb = f32_bits(xin);
    uint32_t sign_sin = xb & 0x80000000u;
    float x = f32_from_bits(xb & 0x7fffffffu);
    float yq = x * 1.27323954473516f; /* 4/pi */
    int32_t j = (int32_t)yq;          /* vcvttps2dq; |x| is far below 2^31 here */
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sin = ((uint32_t)j & 4u) << 29;
    uint32_t poly_mask = ((uint32_t)j & 2u) == 0 ? 0xffffffffu : 0u;
    sign_sin ^= swap_sin;
    /* x = ((x - y*DP1) - y*DP2) - y*DP3, each step one fused multiply-add */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (~((uint32_t)j - 2u) & 4u) << 29;
    float z = x * x;
    float half_z = z * 0.5f;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = z * yc;
    yc = fmaf(z, yc, -half_z);
    yc = yc + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = z * ys;
    ys = fmaf(x, ys, x);
    /* select as the vector code does (masks, then adds with zeros) */
    float ysin2 = f32_from_bits(f32_bits(ys) & poly_mask);
    float ysin1 = f32_from_bits(f32_bits(yc) & ~poly_mask);
    float yc_rest = yc - ysin1, ys_rest = ys - ysin2;
    float sin_v = ysin2 + ysin1, cos_v = ys_rest + yc_rest;
    *s = f32_from_bits(f32_bits(sin_v) ^ sign_sin);
    *c = f32_from_bits(f32_bits(cos_v) ^ sign_cos);
}

/* Box-Muller over 16 uniforms in place: [0,8) pairs with [8,16). The final
 * "+ 0.0f" is torch's fma(n, std=1, mean=0), which turns -0 into +0. */
static void normal_fill_16(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float lg = avx_log(u1);
        float radius = sqrtf(-2.0f * lg);
        float theta = f32_from_bits(0x40c90fdbu) * d[j + 8]; /* (float)(2*pi) */
        float s, c;
        avx_sincos(theta, &s, &c);
        float n1 = radius * c, n2 = radius * s;
        d[j] = n1 + 0.0f;
        d[j + 8] = n2 + 0.0f;
    }
}

lh_status lh_rng_randn(lh_rng *r, float *out, int64_t n, lh_error *err) {
    if (n < 0) return lh_error_set(err, LH_ERR_INVALID, "randn: negative count %lld", (long long)n);
    if (r->streams) {
        if (n % r->n_streams)
            return lh_error_set(err, LH_ERR_INVALID,
                                "randn: %lld values do not split over a batch of %lld",
                                (long long)n, (long long)r->n_streams);
        int64_t per = n / r->n_streams;
        for (int64_t i = 0; i < r->n_streams; i++) {
            lh_status st = lh_rng_randn(&r->streams[i], out + i * per, per, err);
            if (st != LH_OK) return st;
        }
        return LH_OK;
    }
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

lh_rng *lh_rng_create_batch(const uint64_t *seeds, int64_t n, lh_error *err) {
    if (n < 1 || !seeds) {
        lh_error_set(err, LH_ERR_INVALID, "batch generator: no seeds");
        return NULL;
    }
    lh_rng *r = lh_rng_create(seeds[0], err);
    if (!r) return NULL;
    if (!(r->streams = calloc((size_t)n, sizeof *r->streams))) {
        free(r);
        lh_error_set(err, LH_ERR_NOMEM, "out of memory for %lld random generators", (long long)n);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) mt_seed(&r->streams[i], (uint32_t)(seeds[i] & 0xffffffffu));
    r->n_streams = n;
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
    free(r->streams);
    free(r);
}

uint64_t lh_rng_random_seed(void) {
    uint32_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&v, sizeof v, 1, f) != 1) v = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    if (f) fclose(f);
    return v;
}
