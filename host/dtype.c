/* Element types: names and sizes, float16/bfloat16 <-> float32 with
 * round-to-nearest-even, bulk conversion between buffers, UTF-8 checking. */
#include "dtype.h"

#include <math.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lorahost reads little-endian tensor data in place; big-endian hosts need byte swaps"
#endif

/* ---- Names and sizes ---- */

static const struct {
    const char *name;
    size_t size;
} DTYPES[LH_DTYPE_COUNT] = {
    [LH_DTYPE_F32] = {"F32", 4},         [LH_DTYPE_F16] = {"F16", 2},
    [LH_DTYPE_BF16] = {"BF16", 2},       [LH_DTYPE_F64] = {"F64", 8},
    [LH_DTYPE_I64] = {"I64", 8},         [LH_DTYPE_I32] = {"I32", 4},
    [LH_DTYPE_I16] = {"I16", 2},         [LH_DTYPE_I8] = {"I8", 1},
    [LH_DTYPE_U64] = {"U64", 8},         [LH_DTYPE_U32] = {"U32", 4},
    [LH_DTYPE_U16] = {"U16", 2},         [LH_DTYPE_U8] = {"U8", 1},
    [LH_DTYPE_BOOL] = {"BOOL", 1},       [LH_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [LH_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

static int valid_dtype(lh_dtype dtype) { return (unsigned)dtype < LH_DTYPE_COUNT; }

const char *lh_dtype_name(lh_dtype dtype) { return valid_dtype(dtype) ? DTYPES[dtype].name : "?"; }

size_t lh_dtype_size(lh_dtype dtype) { return valid_dtype(dtype) ? DTYPES[dtype].size : 0; }

int lh_dtype_from_name(lh_dtype *out, const char *name) {
    for (int i = 0; i < LH_DTYPE_COUNT; i++) {
        if (!strcmp(name, DTYPES[i].name)) {
            *out = (lh_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* ---- Scalar float conversions ---- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Shift right by s (1..31), rounding to nearest, ties to even. */
static uint32_t shift_rne(uint32_t x, unsigned s) {
    uint32_t r = x >> s, rem = x & ((1u << s) - 1), half = 1u << (s - 1);
    return r + (rem > half || (rem == half && (r & 1)));
}

float lh_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000 | (mant << 13)); /* inf, NaN */
    if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return bits_f32(sign);
    /* Subnormal: mant * 2^-24, exact in float32. */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

uint16_t lh_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) { /* NaN: keep the top payload bits, stay a NaN (as numpy) */
        uint32_t m = (ax >> 13) & 0x3ff;
        return (uint16_t)(sign | 0x7c00 | (m ? m : 1));
    }
    if (ax >= 0x477ff000) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (ax >= 0x38800000) {                     /* >= 2^-14: normal half */
        uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3ff);
        uint32_t rem = ax & 0x1fff;
        h += rem > 0x1000 || (rem == 0x1000 && (h & 1)); /* a carry bumps the exponent */
        return (uint16_t)(sign | h);
    }
    /* Subnormal half: units of 2^-24; value = mant24 * 2^(e - 150). */
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below 2^-25: rounds to zero */
    uint32_t mant24 = (ax & 0x7fffff) | 0x800000;
    return (uint16_t)(sign | shift_rne(mant24, 126 - e));
}

float lh_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t lh_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x0040); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* float8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN. */
static float f8_e4m3_to_f32(uint8_t b) {
    unsigned exp = (b >> 3) & 0xf, mant = b & 7;
    float v;
    if (exp == 0xf && mant == 7)
        v = NAN;
    else if (exp == 0)
        v = ldexpf((float)mant, -9);
    else
        v = ldexpf((float)(8 + mant), (int)exp - 10);
    return (b & 0x80) ? -v : v;
}

/* float8 e5m2 is the top byte of a binary16. */
static float f8_e5m2_to_f32(uint8_t b) { return lh_f16_to_f32((uint16_t)(b << 8)); }

/* ---- Bulk conversion ---- */

/* Element i of an unaligned little-endian buffer, as double (exact for every
 * type except 64-bit integers beyond 2^53). */
static double load(lh_dtype t, const unsigned char *p, size_t i) {
    union {
        float f32;
        double f64;
        int64_t i64;
        int32_t i32;
        int16_t i16;
        int8_t i8;
        uint64_t u64;
        uint32_t u32;
        uint16_t u16;
        uint8_t u8;
    } v;
    size_t size = DTYPES[t].size;
    memcpy(&v, p + i * size, size);
    switch (t) {
    case LH_DTYPE_F32: return v.f32;
    case LH_DTYPE_F16: return lh_f16_to_f32(v.u16);
    case LH_DTYPE_BF16: return lh_bf16_to_f32(v.u16);
    case LH_DTYPE_F64: return v.f64;
    case LH_DTYPE_I64: return (double)v.i64;
    case LH_DTYPE_I32: return v.i32;
    case LH_DTYPE_I16: return v.i16;
    case LH_DTYPE_I8: return v.i8;
    case LH_DTYPE_U64: return (double)v.u64;
    case LH_DTYPE_U32: return v.u32;
    case LH_DTYPE_U16: return v.u16;
    case LH_DTYPE_U8: return v.u8;
    case LH_DTYPE_BOOL: return v.u8 != 0;
    case LH_DTYPE_F8_E4M3: return f8_e4m3_to_f32(v.u8);
    case LH_DTYPE_F8_E5M2: return f8_e5m2_to_f32(v.u8);
    case LH_DTYPE_COUNT: break;
    }
    return 0;
}

/* Store x as element i of a float buffer of type t (F32, F16, BF16, F64).
 * F16/BF16 go through float32 first, so a float64 source rounds twice. */
static void store(lh_dtype t, unsigned char *p, size_t i, double x) {
    float f = (float)x;
    uint16_t h;
    switch (t) {
    case LH_DTYPE_F64: memcpy(p + i * 8, &x, 8); return;
    case LH_DTYPE_F32: memcpy(p + i * 4, &f, 4); return;
    case LH_DTYPE_F16: h = lh_f32_to_f16(f); break;
    default: h = lh_f32_to_bf16(f); break;
    }
    memcpy(p + i * 2, &h, 2);
}

lh_status lh_convert(void *dst, lh_dtype dst_type, const void *src, lh_dtype src_type, size_t n) {
    if (!valid_dtype(dst_type) || !valid_dtype(src_type)) return LH_ERR_UNSUPPORTED;
    if (dst_type == src_type) {
        if (n) memcpy(dst, src, n * DTYPES[src_type].size);
        return LH_OK;
    }
    if (dst_type != LH_DTYPE_F32 && dst_type != LH_DTYPE_F16 && dst_type != LH_DTYPE_BF16 &&
        dst_type != LH_DTYPE_F64)
        return LH_ERR_UNSUPPORTED;
    unsigned char *d = dst;
    const unsigned char *s = src;
    uint16_t h;
    float f;
    /* Fast paths for the conversions that model loading spends its time in. */
    if (dst_type == LH_DTYPE_F32 && (src_type == LH_DTYPE_F16 || src_type == LH_DTYPE_BF16)) {
        for (size_t i = 0; i < n; i++) {
            memcpy(&h, s + 2 * i, 2);
            f = src_type == LH_DTYPE_F16 ? lh_f16_to_f32(h) : lh_bf16_to_f32(h);
            memcpy(d + 4 * i, &f, 4);
        }
        return LH_OK;
    }
    if (src_type == LH_DTYPE_F32 && (dst_type == LH_DTYPE_F16 || dst_type == LH_DTYPE_BF16)) {
        for (size_t i = 0; i < n; i++) {
            memcpy(&f, s + 4 * i, 4);
            h = dst_type == LH_DTYPE_F16 ? lh_f32_to_f16(f) : lh_f32_to_bf16(f);
            memcpy(d + 2 * i, &h, 2);
        }
        return LH_OK;
    }
    for (size_t i = 0; i < n; i++) store(dst_type, d, i, load(src_type, s, i));
    return LH_OK;
}

/* ---- UTF-8 ---- */

size_t lh__utf8_check(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0; /* overlong */
            if (c == 0xed) hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90; /* overlong */
            if (c == 0xf4) hi = 0x8f; /* past U+10FFFF */
        } else {
            return i;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += len;
    }
    return n;
}
