/* Text normalisation and phrase search for the safety prompt filter: see
 * text_norm.h for the rules. Tables are code-point ranges; no locale is used. */
#include "text_norm.h"

/* ---- UTF-8 ---- */

/* Decode one code point at s (n bytes left); returns its length or 0. */
static size_t decode(const unsigned char *s, size_t n, uint32_t *cp) {
    size_t more;
    uint32_t c, min;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    } else if ((s[0] & 0xE0) == 0xC0) {
        more = 1, c = s[0] & 0x1F, min = 0x80;
    } else if ((s[0] & 0xF0) == 0xE0) {
        more = 2, c = s[0] & 0x0F, min = 0x800;
    } else if ((s[0] & 0xF8) == 0xF0) {
        more = 3, c = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (more >= n) return 0;
    for (size_t k = 1; k <= more; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return more + 1;
}

long lh_text_utf8_invalid_at(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = decode(p + i, len - i, &cp);
        if (!k) return (long)i;
        i += k;
    }
    return -1;
}

/* ---- Character classes ---- */

static int is_space(uint32_t c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Zero-width and invisible formatting characters: dropped. */
static int is_ignorable(uint32_t c) {
    return c == 0xAD || (c >= 0x200B && c <= 0x200D) || c == 0x2060 || c == 0xFEFF;
}

int lh_text_is_cjk(uint32_t c) {
    return (c >= 0x1100 && c <= 0x11FF) || (c >= 0x2E80 && c <= 0x2FDF) ||
           (c >= 0x3001 && c <= 0x303F) || (c >= 0x3040 && c <= 0x9FFF) ||
           (c >= 0xA960 && c <= 0xA97F) || (c >= 0xAC00 && c <= 0xD7AF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFE30 && c <= 0xFE4F) ||
           (c >= 0xFF5F && c <= 0xFFDC) || (c >= 0x20000 && c <= 0x3FFFF);
}

/* Letters and digits of alphabetic scripts: what a word boundary separates. */
static int is_word(uint32_t c) {
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    return c >= 0xC0 && c != 0xD7 && c != 0xF7 && c < 0x2000 && !is_space(c);
}

/* ---- Case folding (simple folds of Unicode's CaseFolding.txt) ---- */

static uint32_t fold(uint32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    if (c == 0xB5) return 0x3BC;                                     /* micro sign */
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;          /* Latin-1 */
    if (c >= 0x100 && c <= 0x17F) {                                  /* Latin Extended-A */
        if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149) return c;
        if (c == 0x178) return 0xFF;
        if (c == 0x17F) return 's';
        int odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
        return (c & 1) == (uint32_t)odd_upper ? c + 1 : c;
    }
    if (c >= 0x386 && c <= 0x3AB) {                                  /* Greek */
        if (c == 0x386) return 0x3AC;
        if (c >= 0x388 && c <= 0x38A) return c + 37;
        if (c == 0x38C) return 0x3CC;
        if (c == 0x38E || c == 0x38F) return c + 63;
        if (c >= 0x391 && c != 0x3A2) return c + 32;
        return c;
    }
    if (c == 0x3C2) return 0x3C3;                                    /* final sigma */
    if (c >= 0x400 && c <= 0x40F) return c + 80;                     /* Cyrillic */
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF) || (c >= 0x4D0 && c <= 0x52F))
        return (c & 1) ? c : c + 1;
    if (c == 0x4C0) return 0x4CF;
    if (c >= 0x4C1 && c <= 0x4CE) return (c & 1) ? c + 1 : c;
    return c;
}

/* ---- Normalisation ---- */

long lh_text_normalise(uint32_t *out, const char *s, size_t len, size_t *bad_at) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = decode(p + i, len - i, &c);
        if (!k) {
            if (bad_at) *bad_at = i;
            return -1;
        }
        i += k;
        if (c >= 0xFF01 && c <= 0xFF5E) c -= 0xFEE0; /* full-width ASCII */
        if (is_ignorable(c)) continue;
        if (is_space(c)) {
            if (n > 0 && out[n - 1] != ' ') out[n++] = ' ';
            continue;
        }
        out[n++] = fold(c);
    }
    if (n > 0 && out[n - 1] == ' ') n--;
    /* drop the spaces between two CJK characters */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (out[i] == ' ' && m > 0 && i + 1 < n && lh_text_is_cjk(out[m - 1]) &&
            lh_text_is_cjk(out[i + 1]))
            continue;
        out[m++] = out[i];
    }
    return (long)m;
}

/* ---- Search ---- */

long lh_text_find(const uint32_t *hay, size_t n_hay, const uint32_t *needle, size_t n_needle,
                  int prefix) {
    if (n_needle == 0 || n_needle > n_hay) return -1;
    int word_start = is_word(needle[0]), word_end = !prefix && is_word(needle[n_needle - 1]);
    for (size_t i = 0; i + n_needle <= n_hay; i++) {
        if (hay[i] != needle[0]) continue;
        size_t k = 1;
        while (k < n_needle && hay[i + k] == needle[k]) k++;
        if (k < n_needle) continue;
        if (word_start && i > 0 && is_word(hay[i - 1])) continue;
        if (word_end && i + n_needle < n_hay && is_word(hay[i + n_needle])) continue;
        return (long)i;
    }
    return -1;
}
