/* Base64 (RFC 4648, with padding) for the server's JSON: images out,
 * init images in. */
#include <stdlib.h>

#include "error.h"
#include "server_internal.h"

static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *lh__base64_encode(const void *data, size_t n, size_t *out_len) {
    const unsigned char *p = data;
    size_t len, size;
    if (lh_mul_size((n + 2) / 3, 4, &len) || lh_add_size(len, 1, &size)) return NULL;
    char *out = malloc(size), *o = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = ALPHABET[v >> 18];
        *o++ = ALPHABET[(v >> 12) & 63];
        *o++ = ALPHABET[(v >> 6) & 63];
        *o++ = ALPHABET[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = ALPHABET[v >> 18];
        *o++ = ALPHABET[(v >> 12) & 63];
        *o++ = i + 1 < n ? ALPHABET[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    if (out_len) *out_len = len;
    return out;
}

static int value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

uint8_t *lh__base64_decode(const char *s, size_t n, size_t *out_len, int *bad) {
    *bad = 0;
    if (n % 4) {
        *bad = 1;
        return NULL;
    }
    size_t pad = n && s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    size_t len = n / 4 * 3 - pad;
    uint8_t *out = malloc(len ? len : 1);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++) {
            int last = i + 4 == n;
            v[j] = last && (size_t)j >= 4 - pad ? 0 : value(s[i + (size_t)j]);
            if (v[j] < 0) {
                free(out);
                *bad = 1;
                return NULL;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        if (k < len) out[k++] = (uint8_t)(w >> 16);
        if (k < len) out[k++] = (uint8_t)(w >> 8);
        if (k < len) out[k++] = (uint8_t)w;
    }
    *out_len = len;
    return out;
}
