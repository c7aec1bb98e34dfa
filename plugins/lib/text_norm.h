/* Text normalisation and phrase search for the safety prompt filter
 * (plugin-side: sees only the C library). Text becomes an array of code
 * points with case folded (ASCII, Latin-1, Latin Extended-A, Greek,
 * Cyrillic simple folds), full-width ASCII (U+FF01..U+FF5E) made half-width,
 * U+3000 and other white space made ' ', zero-width characters and soft
 * hyphens dropped, white-space runs collapsed and trimmed, and spaces between
 * two CJK characters removed (so "违 禁" matches "违禁"). */
#ifndef LH_TEXT_NORM_H
#define LH_TEXT_NORM_H

#include <stddef.h>
#include <stdint.h>

/* Normalise the UTF-8 bytes s[0..len) into out, which must hold at least
 * len code points (normalising never lengthens text). Returns the number of
 * code points written, or -1 with *bad_at = the offset of the first byte
 * that is not well-formed UTF-8. */
long lh_text_normalise(uint32_t *out, const char *s, size_t len, size_t *bad_at);

/* The offset of the first byte of s[0..len) that is not well-formed UTF-8
 * (overlong forms, surrogates and values past U+10FFFF included), or -1. */
long lh_text_utf8_invalid_at(const char *s, size_t len);

/* Whether cp is a CJK character (Han, kana, Hangul, CJK punctuation). */
int lh_text_is_cjk(uint32_t cp);

/* Index in hay of the first occurrence of needle (both normalised) or -1.
 * An end of the needle that is a letter or digit (not CJK) must meet a word
 * boundary in hay ("ass" does not match "class"), unless it is the end and
 * `prefix` is set (a phrase written "forbid*" matches "forbidden"). */
long lh_text_find(const uint32_t *hay, size_t n_hay, const uint32_t *needle, size_t n_needle,
                  int prefix);

#endif
