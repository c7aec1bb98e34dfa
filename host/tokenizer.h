/* CLIP BPE tokenizer, id for id the same as transformers' CLIPTokenizer (v5:
 * the HuggingFace `tokenizers` pipeline; v5 has no slow Python class), plus the
 * 77-token windows Stable Diffusion feeds its text encoder.
 *
 * Files (a diffusers model's tokenizer/ directory):
 *   vocab.json  one JSON object {token: id}; ids are integers in [0, 2^31).
 *               Must hold <|startoftext|> and <|endoftext|>. Stricter than
 *               transformers, which ignores non-number values and lets a
 *               repeated key or id silently win: those are errors here.
 *   merges.txt  one merge "a b" per line (exactly one ASCII space), rank =
 *               order of the line; lines starting "#version" are skipped
 *               wherever they are; "\r\n" endings are accepted; an empty
 *               line (also a blank line at the end) is an error, as in
 *               transformers. a, b and ab must all be in the vocabulary. A
 *               pair listed twice keeps its later rank (as tokenizers does).
 *
 * Encoding (lh_tokenizer_encode), in CLIPTokenizer's order:
 *   1. special tokens are split out of the raw text (leftmost, longest);
 *   2. each other segment is normalized: NFC, every run of \s becomes one
 *      space, then lowercase (no ftfy, no html unescape, no strip; the
 *      space step changes no id, as step 4 drops \s, so the code skips it);
 *   3. "normalized" special tokens are split out of the normalized text;
 *   4. the pattern <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *      [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ cuts the rest into pieces, spaces
 *      dropped; the GPT-2 byte-level pattern cuts each piece again (this only
 *      splits a literal "<|endoftext|>" that was not a special token);
 *   5. each piece is BPE-merged over its UTF-8 bytes (bytes_to_unicode
 *      alphabet), the last symbol carrying "</w>".
 * Unicode data (host/unicode_tables.c) is read off tokenizers itself by
 * tests/golden/unicode_tables.py: Oniguruma classes, Rust lowercase, NFC of the
 * unicode-normalization-alignments crate.
 *
 * Windows: [BOS, up to 75 ids, EOS, pad...] of LH_TOKENIZER_WINDOW ids.
 *   SD 1.x (openai CLIP ViT-L/14 tokenizer): pad = <|endoftext|> (49407).
 *   SD 2.x (OpenCLIP ViT-H tokenizer config): pad = "!" (id 0); transformers
 *   also makes "!" a special token there, so call lh_tokenizer_add_special(t,
 *   "!", 0, err) to get its ids for prompts that contain "!".
 *   Prompts over 75 ids are split as AUTOMATIC1111's webui does (see
 *   lh_tokenizer_pack), or truncated as diffusers does. */
#ifndef LH_HOST_TOKENIZER_H
#define LH_HOST_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

#define LH_TOKENIZER_WINDOW 77 /* ids per window: BOS + 75 + EOS */
#define LH_TOKENIZER_CHUNK 75  /* prompt ids per window */
/* comma_backtrack for diffusers' behaviour: one window, ids past 75 dropped */
#define LH_TOKENIZER_TRUNCATE (-1)
/* AUTOMATIC1111's default comma_padding_backtrack ("Prompt word wrap length limit") */
#define LH_TOKENIZER_A1111_BACKTRACK 20

typedef struct lh_tokenizer lh_tokenizer;

/* Load vocab.json and merges.txt. Errors name the file and line: I/O
 * (LH_ERR_NOT_FOUND for a missing file), malformed JSON or merges line,
 * duplicate token or id, merge of unknown tokens, missing special tokens
 * (all LH_ERR_FORMAT). <|startoftext|> and <|endoftext|> are registered as
 * special tokens matched on the raw text (what CLIPTokenizer does when it is
 * built from these two files). */
LH_API lh_status lh_tokenizer_open(lh_tokenizer **out, const char *vocab_json,
                                   const char *merges_txt, lh_error *err);
LH_API void lh_tokenizer_close(lh_tokenizer *t);

/* Make `token` (already in the vocabulary) a special token: split out of the
 * text before BPE and mapped to its id. normalized = 0 matches the raw text,
 * 1 matches the text after NFC/whitespace/lowercase (transformers'
 * AddedToken.normalized). Registering a token again changes its flag. Not
 * thread-safe against concurrent encodes. LH_ERR_NOT_FOUND if not in the vocab. */
LH_API lh_status lh_tokenizer_add_special(lh_tokenizer *t, const char *token, int normalized,
                                          lh_error *err);

/* Id of a vocabulary token ("!", "<|endoftext|>", "cat</w>"), or -1. */
LH_API int32_t lh_tokenizer_token_id(const lh_tokenizer *t, const char *token);
LH_API int32_t lh_tokenizer_bos_id(const lh_tokenizer *t); /* <|startoftext|> */
LH_API int32_t lh_tokenizer_eos_id(const lh_tokenizer *t); /* <|endoftext|> */
LH_API size_t lh_tokenizer_vocab_size(const lh_tokenizer *t);

/* Token ids of NUL-terminated UTF-8 text, without BOS/EOS (what
 * CLIPTokenizer(text, add_special_tokens=False) returns). *n receives the
 * number of ids; if it exceeds cap, the first cap are written and
 * LH_ERR_OVERFLOW is returned (ids may be NULL with cap 0 to size a buffer).
 * Invalid UTF-8 is LH_ERR_INVALID naming the byte offset. Thread-safe. */
LH_API lh_status lh_tokenizer_encode(const lh_tokenizer *t, const char *utf8, int32_t *ids,
                                     size_t cap, size_t *n, lh_error *err);

/* Pack prompt ids into windows, out = [cap][LH_TOKENIZER_WINDOW]; *n_windows
 * receives the number needed (LH_ERR_OVERFLOW if more than cap; those that fit
 * are written). Each window is BOS, its ids, EOS, then pad_id to 77.
 *   comma_backtrack = LH_TOKENIZER_TRUNCATE: one window of the first 75 ids,
 *     what diffusers gets from CLIPTokenizer(padding="max_length",
 *     max_length=77, truncation=True).
 *   comma_backtrack >= 0: AUTOMATIC1111's chunking (modules/sd_hijack_clip.py,
 *     FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line): ids fill 75-id
 *     chunks; when a chunk is full and the next id is not ",</w>", and the
 *     chunk's last ",</w>" is within comma_backtrack ids of its end
 *     (75 - index <= comma_backtrack), the ids after that comma move to the
 *     next chunk. 0 gives plain 75-id chunks, A1111's default is 20. An empty
 *     prompt gives one window. (A1111 tokenizes each emphasis "(...:1.2)" and
 *     BREAK segment separately; here the caller passes one id sequence.) */
LH_API lh_status lh_tokenizer_pack(const lh_tokenizer *t, const int32_t *ids, size_t n,
                                   int32_t pad_id, int comma_backtrack, int32_t *out, size_t cap,
                                   size_t *n_windows, lh_error *err);

/* lh_tokenizer_encode then lh_tokenizer_pack. */
LH_API lh_status lh_tokenizer_window(const lh_tokenizer *t, const char *utf8, int32_t pad_id,
                                     int comma_backtrack, int32_t *out, size_t cap,
                                     size_t *n_windows, lh_error *err);

/* Debugging: the text of ids ("</w>" becomes a space, bytes mapped back, ends
 * trimmed of spaces), NUL-terminated in out[cap]; *len receives the length
 * without the NUL (LH_ERR_OVERFLOW if it does not fit). Unknown ids are
 * LH_ERR_INVALID. A sequence cut inside a character gives invalid UTF-8. */
LH_API lh_status lh_tokenizer_decode(const lh_tokenizer *t, const int32_t *ids, size_t n, char *out,
                                     size_t cap, size_t *len, lh_error *err);

/* ---- Generated Unicode tables (host/unicode_tables.c), private ---- */

enum { LH__UNI_OTHER = 0, LH__UNI_L = 1, LH__UNI_N = 2, LH__UNI_S = 3 };
typedef struct lh__uni_range {
    uint32_t first, last, value;
} lh__uni_range;
typedef struct lh__uni_lower_run {
    uint32_t first, last;
    int32_t stride, delta;
} lh__uni_lower_run;
typedef struct lh__uni_lower_multi {
    uint32_t cp, to[3];
} lh__uni_lower_multi;
typedef struct lh__uni_decomp_entry {
    uint32_t cp;
    uint16_t off, len;
} lh__uni_decomp_entry;
typedef struct lh__uni_comp_entry {
    uint32_t first, second, composite;
} lh__uni_comp_entry;

extern const lh__uni_range lh__uni_classes[];
extern const size_t lh__uni_classes_n;
extern const lh__uni_lower_run lh__uni_lower[];
extern const size_t lh__uni_lower_n;
extern const lh__uni_lower_multi lh__uni_lower_multi_tab[];
extern const size_t lh__uni_lower_multi_n;
extern const uint32_t lh__uni_nfc_quick_below;
extern const lh__uni_range lh__uni_ccc[];
extern const size_t lh__uni_ccc_n;
extern const lh__uni_decomp_entry lh__uni_decomp[];
extern const size_t lh__uni_decomp_n;
extern const uint32_t lh__uni_decomp_data[];
extern const lh__uni_comp_entry lh__uni_comp[];
extern const size_t lh__uni_comp_n;

#endif
