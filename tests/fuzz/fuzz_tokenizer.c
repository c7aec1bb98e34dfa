/* libFuzzer target for the CLIP tokenizer: arbitrary bytes through
 * lh_tokenizer_encode / _window / _decode on the real CLIP vocabulary
 * (tests/fixtures/tokenizer), with the invariants a caller relies on checked.
 * Build and run: see tests/fuzz/CMakeLists.txt. First input byte picks the
 * special-token config (SD 1.x, SD 2.x "!", normalized BOS) and the backtrack. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/lorahost.h"
#include "tokenizer.h"

#ifndef LH_FUZZ_TOKENIZER_DIR
#error "LH_FUZZ_TOKENIZER_DIR must name tests/fixtures/tokenizer"
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static lh_tokenizer *g_tok[3];

static lh_tokenizer *open_config(int k) {
    lh_tokenizer *t = NULL;
    lh_error err = {0};
    CHECK(lh_tokenizer_open(&t, LH_FUZZ_TOKENIZER_DIR "/vocab.json",
                            LH_FUZZ_TOKENIZER_DIR "/merges.txt", &err) == LH_OK);
    if (k == 1) CHECK(lh_tokenizer_add_special(t, "!", 0, &err) == LH_OK);
    if (k == 2) CHECK(lh_tokenizer_add_special(t, "<|startoftext|>", 1, &err) == LH_OK);
    return t;
}

/* Independent UTF-8 check: 1 if s[0..n) is valid (no surrogates, <= U+10FFFF). */
static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t c = s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        if (!len || i + len > n) return 0;
        c &= len == 1 ? 0x7f : 0xff >> (len + 1);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

static void ref_window(const lh_tokenizer *t, int32_t *w, const int32_t *ids, size_t n,
                       int32_t pad) {
    w[0] = lh_tokenizer_bos_id(t);
    for (size_t i = 0; i < n; i++) w[1 + i] = ids[i];
    w[1 + n] = lh_tokenizer_eos_id(t);
    for (size_t i = n + 2; i < LH_TOKENIZER_WINDOW; i++) w[i] = pad;
}

/* A1111's tokenize_line chunking, written out as directly as possible. */
static size_t reference_pack(const lh_tokenizer *t, const int32_t *ids, size_t n, int32_t pad,
                             int backtrack, int32_t *out) {
    if (backtrack == LH_TOKENIZER_TRUNCATE) {
        ref_window(t, out, ids, n < 75 ? n : 75, pad);
        return 1;
    }
    int32_t comma = lh_tokenizer_token_id(t, ",</w>");
    size_t k = 0, start = 0, len = 0; /* current chunk = ids[start .. start+len) */
    long last_comma = -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == comma) {
            last_comma = (long)len;
        } else if (backtrack && len == 75 && last_comma != -1 && 75 - last_comma <= backtrack) {
            size_t brk = (size_t)last_comma + 1;
            ref_window(t, out + LH_TOKENIZER_WINDOW * k++, ids + start, brk, pad);
            start += brk;
            len -= brk;
            last_comma = -1;
        }
        if (len == 75) {
            ref_window(t, out + LH_TOKENIZER_WINDOW * k++, ids + start, len, pad);
            start += len;
            len = 0;
            last_comma = -1;
        }
        len++;
    }
    if (len || k == 0) ref_window(t, out + LH_TOKENIZER_WINDOW * k++, ids + start, len, pad);
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int config = data[0] % 3, backtrack = (data[0] / 3) % 23 - 1; /* -1 = truncate */
    if (!g_tok[config]) g_tok[config] = open_config(config);
    const lh_tokenizer *t = g_tok[config];
    char *text = malloc(size);
    CHECK(text != NULL);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    size_t len = strlen(text); /* up to the first NUL */

    size_t n = 0;
    lh_error err = {0};
    lh_status st = lh_tokenizer_encode(t, text, NULL, 0, &n, &err);
    if (!valid_utf8((const uint8_t *)text, len)) {
        CHECK(st == LH_ERR_INVALID && strstr(err.msg, "byte offset") && !strchr(err.msg, '\n'));
        free(text);
        return 0;
    }
    CHECK(st == (n ? LH_ERR_OVERFLOW : LH_OK));
    CHECK(n <= 4 * len); /* NFC and lowercase grow text at most 3x; one id per byte at most */
    int32_t *ids = malloc((n + 1) * sizeof *ids), *again = malloc((n + 1) * sizeof *again);
    CHECK(ids && again);
    size_t n2 = 0;
    CHECK(lh_tokenizer_encode(t, text, ids, n, &n2, &err) == LH_OK && n2 == n);
    CHECK(lh_tokenizer_encode(t, text, again, n, &n2, &err) == LH_OK && n2 == n); /* cached */
    CHECK(n == 0 || memcmp(ids, again, n * sizeof *ids) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] >= 0 && (size_t)ids[i] < lh_tokenizer_vocab_size(t));

    /* windows against a plain transcription of the rule in tokenizer.h */
    size_t nw = 0;
    int32_t pad = config == 1 ? 0 : lh_tokenizer_eos_id(t);
    st = lh_tokenizer_pack(t, ids, n, pad, backtrack, NULL, 0, &nw, &err);
    CHECK(st == LH_ERR_OVERFLOW && nw >= 1);
    int32_t *win = malloc(nw * LH_TOKENIZER_WINDOW * sizeof *win);
    int32_t *ref = malloc((n + 1) * LH_TOKENIZER_WINDOW * sizeof *ref);
    CHECK(win && ref);
    size_t nw2 = 0;
    CHECK(lh_tokenizer_window(t, text, pad, backtrack, win, nw, &nw2, &err) == LH_OK && nw2 == nw);
    CHECK(reference_pack(t, ids, n, pad, backtrack, ref) == nw);
    CHECK(memcmp(win, ref, nw * LH_TOKENIZER_WINDOW * sizeof *win) == 0);

    /* decode: every id is known; the text is no longer than the tokens */
    char out[1 << 16];
    size_t dl = 0;
    st = lh_tokenizer_decode(t, ids, n, out, sizeof out, &dl, &err);
    CHECK(st == LH_OK || st == LH_ERR_OVERFLOW);
    CHECK(st == LH_ERR_OVERFLOW || strlen(out) == dl);
    free(win);
    free(ref);
    free(ids);
    free(again);
    free(text);
    return 0;
}
