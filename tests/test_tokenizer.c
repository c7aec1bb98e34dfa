/* Tokenizer suite: lorahost's CLIP BPE tokenizer gives transformers'
 * CLIPTokenizer ids on the real CLIP vocabulary for every prompt in
 * tests/fixtures/tokenizer/cases.jsonl (from tests/golden/tokenizer.py), its
 * 77-token windows (diffusers truncation, SD 1.x and SD 2.x padding, A1111
 * chunks), and refuses bad text and malformed tokenizer files by name. */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "tokenizer.h"

static char g_vocab[4096], g_merges[4096];
static json_t **g_cases; /* g_cases[0] is the meta record */
static size_t g_n_cases;
static lh_tokenizer *g_sd1, *g_sd2, *g_sd15;

/* ---- Fixture ---- */

static void apply_config(lh_tokenizer *t, const char *name) {
    json_t *specials = json_object_get(
        json_object_get(json_object_get(json_object_get(g_cases[0], "meta"), "configs"), name),
        "specials");
    ck_assert_msg(json_is_array(specials), "cases.jsonl: meta.configs.%s.specials", name);
    size_t i;
    json_t *sp;
    json_array_foreach(specials, i, sp) {
        lh_error err = {0};
        const char *text = json_string_value(json_array_get(sp, 0));
        int normalized = (int)json_integer_value(json_array_get(sp, 1));
        ck_assert_msg(lh_tokenizer_add_special(t, text, normalized, &err) == LH_OK, "%s", err.msg);
    }
}

static lh_tokenizer *open_real(void) {
    lh_tokenizer *t = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_tokenizer_open(&t, g_vocab, g_merges, &err) == LH_OK, "%s", err.msg);
    return t;
}

static void load_fixture(void) {
    const char *src = getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..";
    snprintf(g_vocab, sizeof g_vocab, "%s/tests/fixtures/tokenizer/vocab.json", src);
    snprintf(g_merges, sizeof g_merges, "%s/tests/fixtures/tokenizer/merges.txt", src);
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/cases.jsonl", src);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t cap = 0;
    char *line = NULL;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *rec = json_loadb(line, (size_t)got, 0, &je);
        ck_assert_msg(rec != NULL, "%s:%zu: %s", path, g_n_cases + 1, je.text);
        g_cases = realloc(g_cases, (g_n_cases + 1) * sizeof *g_cases);
        ck_assert_ptr_nonnull(g_cases);
        g_cases[g_n_cases++] = rec;
    }
    free(line);
    fclose(f);
    ck_assert_msg(g_n_cases > 200 && json_object_get(g_cases[0], "meta"), "%s: too few cases",
                  path);
    g_sd1 = open_real();
    g_sd2 = open_real();
    g_sd15 = open_real();
    apply_config(g_sd1, "sd1");
    apply_config(g_sd2, "sd2");
    apply_config(g_sd15, "sd15");
}

static void free_fixture(void) {
    for (size_t i = 0; i < g_n_cases; i++) json_decref(g_cases[i]);
    free(g_cases);
    lh_tokenizer_close(g_sd1);
    lh_tokenizer_close(g_sd2);
    lh_tokenizer_close(g_sd15);
}

/* ---- Helpers ---- */

/* Compare got[0..n) with the JSON array want; message names the case. */
static void expect_ids(const int32_t *got, size_t n, json_t *want, const char *what, size_t k,
                       const char *text) {
    ck_assert_msg(json_is_array(want), "case %zu: no %s", k, what);
    size_t nw = json_array_size(want);
    size_t m = n < nw ? n : nw, i = 0;
    while (i < m && got[i] == json_integer_value(json_array_get(want, i))) i++;
    ck_assert_msg(i == m && n == nw,
                  "case %zu (%s) %s: %zu ids, want %zu; first difference at %zu: got %d want %d", k,
                  text, what, n, nw, i, i < n ? (int)got[i] : -1,
                  i < nw ? (int)json_integer_value(json_array_get(want, i)) : -1);
}

/* Encode into a fresh buffer; returns it (caller frees), count in *n. */
static int32_t *encode(const lh_tokenizer *t, const char *text, size_t *n) {
    lh_error err = {0};
    size_t need = 0;
    lh_status st = lh_tokenizer_encode(t, text, NULL, 0, &need, &err);
    ck_assert_msg(st == LH_OK || st == LH_ERR_OVERFLOW, "%s", err.msg);
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    ck_assert_msg(lh_tokenizer_encode(t, text, ids, need, n, &err) == LH_OK, "%s", err.msg);
    ck_assert_uint_eq(*n, need);
    return ids;
}

static void check_ids_config(const lh_tokenizer *t, const char *key) {
    size_t checked = 0;
    for (size_t k = 1; k < g_n_cases; k++) {
        const char *text = json_string_value(json_object_get(g_cases[k], "text"));
        json_t *want = key ? json_object_get(g_cases[k], key) : NULL;
        if (!want) want = json_object_get(g_cases[k], "ids");
        size_t n;
        int32_t *ids = encode(t, text, &n);
        expect_ids(ids, n, want, key ? key : "ids", k, text);
        free(ids);
        checked++;
    }
    ck_assert_uint_ge(checked, 600);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- Reference ids ---- */

START_TEST(test_vocab_basics) {
    ck_assert_uint_eq(lh_tokenizer_vocab_size(g_sd1), 49408);
    ck_assert_int_eq(lh_tokenizer_bos_id(g_sd1), 49406);
    ck_assert_int_eq(lh_tokenizer_eos_id(g_sd1), 49407);
    ck_assert_int_eq(lh_tokenizer_token_id(g_sd1, "!"), 0);
    ck_assert_int_eq(lh_tokenizer_token_id(g_sd1, ",</w>"), 267);
    ck_assert_int_eq(lh_tokenizer_token_id(g_sd1, "cat</w>"), 2368);
    ck_assert_int_eq(lh_tokenizer_token_id(g_sd1, "not a token"), -1);
    json_t *meta = json_object_get(g_cases[0], "meta");
    ck_assert_int_eq(json_integer_value(json_object_get(meta, "comma_id")), 267);
}
END_TEST

START_TEST(test_ids_sd1) { check_ids_config(g_sd1, NULL); }
END_TEST

START_TEST(test_ids_sd2) { check_ids_config(g_sd2, "ids_sd2"); }
END_TEST

START_TEST(test_ids_sd15) { check_ids_config(g_sd15, "ids_sd15"); }
END_TEST

/* A second pass is served by the BPE cache and must not change anything;
 * so must a cache that fills up and starts over (every case, 5 rounds). */
START_TEST(test_ids_cached) {
    lh_tokenizer *t = open_real();
    apply_config(t, "sd1");
    for (int round = 0; round < 5; round++) check_ids_config(t, NULL);
    lh_tokenizer_close(t);
}
END_TEST

/* ---- Windows ---- */

START_TEST(test_windows_truncate) {
    size_t checked = 0;
    for (size_t k = 1; k < g_n_cases; k++) {
        json_t *w1 = json_object_get(g_cases[k], "window_sd1");
        if (!w1) continue;
        const char *text = json_string_value(json_object_get(g_cases[k], "text"));
        int32_t win[LH_TOKENIZER_WINDOW];
        size_t nw = 0;
        lh_error err = {0};
        ck_assert_msg(lh_tokenizer_window(g_sd1, text, 49407, LH_TOKENIZER_TRUNCATE, win, 1, &nw,
                                          &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_uint_eq(nw, 1);
        expect_ids(win, LH_TOKENIZER_WINDOW, w1, "window_sd1", k, text);
        int32_t pad2 = lh_tokenizer_token_id(g_sd2, "!");
        ck_assert_msg(lh_tokenizer_window(g_sd2, text, pad2, LH_TOKENIZER_TRUNCATE, win, 1, &nw,
                                          &err) == LH_OK,
                      "%s", err.msg);
        expect_ids(win, LH_TOKENIZER_WINDOW, json_object_get(g_cases[k], "window_sd2"),
                   "window_sd2", k, text);
        checked++;
    }
    ck_assert_uint_ge(checked, 200);
}
END_TEST

static void check_a1111(const char *key, int backtrack) {
    size_t checked = 0, multi = 0;
    for (size_t k = 1; k < g_n_cases; k++) {
        json_t *want = json_object_get(g_cases[k], key);
        if (!want) continue;
        const char *text = json_string_value(json_object_get(g_cases[k], "text"));
        size_t nw = 0, cap = json_array_size(want);
        int32_t *win = malloc(cap * LH_TOKENIZER_WINDOW * sizeof *win);
        lh_error err = {0};
        ck_assert_msg(lh_tokenizer_window(g_sd1, text, 49407, backtrack, win, cap, &nw, &err) ==
                          LH_OK,
                      "case %zu: %s", k, err.msg);
        ck_assert_msg(nw == cap, "case %zu (%s) %s: %zu windows, want %zu", k, text, key, nw, cap);
        for (size_t i = 0; i < cap; i++)
            expect_ids(win + i * LH_TOKENIZER_WINDOW, LH_TOKENIZER_WINDOW, json_array_get(want, i),
                       key, k, text);
        multi += cap > 1;
        checked++;
        free(win);
    }
    ck_assert_uint_ge(checked, 15);
    ck_assert_uint_ge(multi, 10);
}

START_TEST(test_windows_a1111) {
    check_a1111("a1111_20", LH_TOKENIZER_A1111_BACKTRACK);
    check_a1111("a1111_0", 0);
}
END_TEST

/* The A1111 rules on made-up ids: 1 = comma (",</w>" is 267 here). */
START_TEST(test_pack_rules) {
    int32_t ids[200], out[4 * LH_TOKENIZER_WINDOW];
    size_t nw;
    lh_error err = {0};
    for (int i = 0; i < 200; i++) ids[i] = 1000 + i;
    /* empty prompt: one window BOS EOS pad... */
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 0, 7, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_uint_eq(nw, 1);
    ck_assert_int_eq(out[0], 49406);
    ck_assert_int_eq(out[1], 49407);
    for (int i = 2; i < LH_TOKENIZER_WINDOW; i++) ck_assert_int_eq(out[i], 7);
    /* exactly 75 ids: one window; 76: two */
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 75, 0, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_uint_eq(nw, 1);
    ck_assert_int_eq(out[75], 1074);
    ck_assert_int_eq(out[76], 49407);
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 76, 0, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_uint_eq(nw, 2);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 1], 1075);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 2], 49407);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 3], 0);
    /* a comma 20 ids before the end moves the 19 ids after it along */
    ids[55] = 267;
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 80, 0, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_uint_eq(nw, 2);
    ck_assert_int_eq(out[56], 267);
    ck_assert_int_eq(out[57], 49407);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 1], 1056);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 24], 1079);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 25], 49407);
    /* 21 ids after it is too far: plain split */
    ids[55] = 1055;
    ids[54] = 267;
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 80, 0, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_int_eq(out[75], 1074);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 1], 1075);
    /* backtrack 0 never moves ids */
    ids[54] = 1054;
    ids[70] = 267;
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 80, 0, 0, out, 4, &nw, &err), LH_OK);
    ck_assert_int_eq(out[75], 1074);
    /* the 76th id itself a comma: it starts the next chunk */
    ids[70] = 1070;
    ids[75] = 267;
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 80, 0, 20, out, 4, &nw, &err), LH_OK);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 1], 267);
    /* truncation keeps the first 75 */
    ids[75] = 1075;
    ck_assert_int_eq(
        lh_tokenizer_pack(g_sd1, ids, 200, 5, LH_TOKENIZER_TRUNCATE, out, 1, &nw, &err), LH_OK);
    ck_assert_uint_eq(nw, 1);
    ck_assert_int_eq(out[75], 1074);
    ck_assert_int_eq(out[76], 49407);
    /* too small a buffer: count reported, the windows that fit written */
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 200, 0, 0, out, 2, &nw, &err), LH_ERR_OVERFLOW);
    ck_assert_uint_eq(nw, 3);
    ck_assert_int_eq(out[LH_TOKENIZER_WINDOW + 1], 1075);
    ck_assert_int_eq(lh_tokenizer_pack(g_sd1, ids, 10, 0, -2, out, 2, &nw, &err), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "comma_backtrack"));
}
END_TEST

/* ---- Decode, buffers, threads ---- */

START_TEST(test_decode) {
    size_t checked = 0;
    for (size_t k = 1; k < g_n_cases; k++) {
        json_t *want = json_object_get(g_cases[k], "decoded");
        if (!want) continue;
        const char *text = json_string_value(json_object_get(g_cases[k], "text"));
        size_t n, len;
        int32_t *ids = encode(g_sd1, text, &n);
        char out[8192];
        lh_error err = {0};
        ck_assert_msg(lh_tokenizer_decode(g_sd1, ids, n, out, sizeof out, &len, &err) == LH_OK,
                      "%s", err.msg);
        ck_assert_msg(strcmp(out, json_string_value(want)) == 0 && len == strlen(out),
                      "case %zu: decoded \"%s\", want \"%s\"", k, out, json_string_value(want));
        free(ids);
        checked++;
    }
    ck_assert_uint_ge(checked, 200);
    int32_t bad = 49408;
    char out[4];
    size_t len;
    lh_error err = {0};
    ck_assert_int_eq(lh_tokenizer_decode(g_sd1, &bad, 1, out, sizeof out, &len, &err),
                     LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown id 49408"));
    int32_t cat[1] = {2368};
    ck_assert_int_eq(lh_tokenizer_decode(g_sd1, cat, 1, out, 3, &len, &err), LH_ERR_OVERFLOW);
    ck_assert_uint_eq(len, 3);
}
END_TEST

START_TEST(test_encode_overflow) {
    int32_t ids[3];
    size_t n = 0;
    lh_error err = {0};
    ck_assert_int_eq(lh_tokenizer_encode(g_sd1, "a photo of a cat", ids, 3, &n, &err),
                     LH_ERR_OVERFLOW);
    ck_assert_uint_eq(n, 5);
    ck_assert_int_eq(ids[0], 320);
    ck_assert_int_eq(ids[1], 1125);
    ck_assert_int_eq(ids[2], 539);
    ck_assert_int_eq(lh_tokenizer_encode(g_sd1, "", ids, 0, &n, &err), LH_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(lh_tokenizer_encode(g_sd1, NULL, ids, 3, &n, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_tokenizer_encode(g_sd1, "x", NULL, 3, &n, &err), LH_ERR_INVALID);
}
END_TEST

typedef struct thread_arg {
    size_t first, step;
    int ok;
} thread_arg;

static void *encode_thread(void *p) {
    thread_arg *a = p;
    a->ok = 1;
    for (int round = 0; round < 3; round++) {
        for (size_t k = 1 + a->first; k < g_n_cases; k += a->step) {
            const char *text = json_string_value(json_object_get(g_cases[k], "text"));
            json_t *want = json_object_get(g_cases[k], "ids");
            int32_t ids[2048];
            size_t n;
            if (lh_tokenizer_encode(g_sd1, text, ids, 2048, &n, NULL) != LH_OK ||
                n != json_array_size(want)) {
                a->ok = 0;
                continue;
            }
            for (size_t i = 0; i < n; i++)
                if (ids[i] != json_integer_value(json_array_get(want, i))) a->ok = 0;
        }
    }
    return NULL;
}

/* One tokenizer, four threads, a shared BPE cache. */
START_TEST(test_threads) {
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){(size_t)i % 2, 2, 0}; /* two threads per half: cache races */
        ck_assert_int_eq(pthread_create(&th[i], NULL, encode_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(args[i].ok, "thread %d got wrong ids", i);
    }
}
END_TEST

/* ---- Bad input ---- */

START_TEST(test_invalid_utf8) {
    static const struct {
        const char *text;
        size_t offset;
    } bad[] = {
        {"\xff", 0},
        {"abc\xc3", 3},            /* truncated 2-byte sequence */
        {"a\xc0\xaf", 1},          /* overlong '/' */
        {"ok \xe0\x80\xaf", 3},    /* overlong 3-byte */
        {"x\xed\xa0\x80y", 1},     /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 0},   /* above U+10FFFF */
        {"caf\xc3\xa9 \x80", 6},   /* stray continuation byte after valid text */
        {"\xe2\x82", 0},           /* truncated 3-byte */
        {"\xf0\x9f\x98", 0},       /* truncated 4-byte */
        {"<|endoftext|>\xfe", 13}, /* after a special token */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[16];
        size_t n = 99;
        lh_error err = {0};
        ck_assert_int_eq(lh_tokenizer_encode(g_sd1, bad[i].text, ids, 16, &n, &err),
                         LH_ERR_INVALID);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad[i].offset);
        ck_assert_msg(strstr(err.msg, want), "case %zu: \"%s\" lacks \"%s\"", i, err.msg, want);
        int32_t win[LH_TOKENIZER_WINDOW];
        ck_assert_int_eq(lh_tokenizer_window(g_sd1, bad[i].text, 49407, 20, win, 1, &n, &err),
                         LH_ERR_INVALID);
    }
}
END_TEST

static char g_tmp[64]; /* our own directory for small bad files */

static const char *write_tmp(const char *name, const char *content) {
    static char path[64][256];
    static int k;
    char *p = path[k++ % 64];
    snprintf(p, 256, "%s/%s", g_tmp, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    fclose(f);
    return p;
}

/* A small vocabulary: the ids were checked with transformers 5.24's
 * CLIPTokenizer.from_pretrained on the same two files. */
#define MINI_VOCAB                                                                                 \
    "{\"a\":0,\"b\":1,\"a</w>\":2,\"b</w>\":3,\"ab</w>\":4,\"ab\":5,\"<|startoftext|>\":6,"        \
    "\"<|endoftext|>\":7,\"c\":8,\"bc\":9,\"bc</w>\":10,\"c</w>\":11,\"abc</w>\":12}"

static void expect_open_fails(const char *vocab, const char *merges, lh_status code,
                              const char *const *needles) {
    lh_tokenizer *t = (lh_tokenizer *)1;
    lh_error err = {0};
    ck_assert_int_eq(lh_tokenizer_open(&t, vocab, merges, &err), code);
    ck_assert_ptr_null(t);
    for (; *needles; needles++)
        ck_assert_msg(strstr(err.msg, *needles), "\"%s\" lacks \"%s\"", err.msg, *needles);
}

#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

static void expect_mini(const char *vocab, const char *merges, const char *text,
                        const int32_t *want, size_t nw) {
    lh_tokenizer *t = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_tokenizer_open(&t, vocab, merges, &err) == LH_OK, "%s", err.msg);
    size_t n;
    int32_t *ids = encode(t, text, &n);
    ck_assert_msg(n == nw && memcmp(ids, want, n * sizeof *ids) == 0, "\"%s\": %zu ids", text, n);
    free(ids);
    lh_tokenizer_close(t);
}

START_TEST(test_small_vocab) {
    const char *v = write_tmp("mini.json", MINI_VOCAB);
    const char *m = write_tmp("mini.txt", "#version: 0.2\na b</w>\n");
    expect_mini(v, m, "ab", (int32_t[]){4}, 1);
    expect_mini(v, m, "ba", (int32_t[]){1, 2}, 2);
    expect_mini(v, m, "abab", (int32_t[]){0, 1, 4}, 3);
    expect_mini(v, m, "AB", (int32_t[]){4}, 1);
    expect_mini(v, m, "xyz", (int32_t[]){7, 7, 7}, 3);   /* one unk per byte */
    expect_mini(v, m, "\xc3\xa9", (int32_t[]){7, 7}, 2); /* é: two bytes */
    /* a pair listed twice keeps its later rank: "b c</w>" (rank 1) first */
    const char *dup = write_tmp("dup.txt", "#version: 0.2\na b\nb c</w>\na b\nab c</w>\n");
    expect_mini(v, dup, "abc", (int32_t[]){0, 10}, 2);
    const char *nodup = write_tmp("nodup.txt", "#version: 0.2\na b\nb c</w>\nab c</w>\n");
    expect_mini(v, nodup, "abc", (int32_t[]){12}, 1);
    /* accepted as transformers accepts them: CRLF, no header, header anywhere,
     * no final newline, an empty file */
    expect_mini(v, write_tmp("crlf.txt", "#version: 0.2\r\na b</w>\r\n"), "ab", (int32_t[]){4}, 1);
    expect_mini(v, write_tmp("nohead.txt", "a b</w>"), "ab", (int32_t[]){4}, 1);
    expect_mini(v, write_tmp("mid.txt", "a b</w>\n#version: 0.2\n"), "ab", (int32_t[]){4}, 1);
    expect_mini(v, write_tmp("empty.txt", ""), "ab", (int32_t[]){0, 3}, 2);
}
END_TEST

START_TEST(test_bad_files) {
    const char *v = write_tmp("v.json", MINI_VOCAB);
    const char *m = write_tmp("m.txt", "#version: 0.2\na b</w>\n");
    char missing[256];
    snprintf(missing, sizeof missing, "%s/nope.json", g_tmp);
    expect_open_fails(missing, m, LH_ERR_NOT_FOUND, NEEDLES(missing));
    expect_open_fails(v, missing, LH_ERR_NOT_FOUND, NEEDLES(missing));
    expect_open_fails(write_tmp("b1.json", "{\"a\": 0,\n \"b\": }"), m, LH_ERR_FORMAT,
                      NEEDLES("b1.json:2:"));
    expect_open_fails(write_tmp("b2.json", "[1, 2]"), m, LH_ERR_FORMAT,
                      NEEDLES("b2.json", "not an object"));
    expect_open_fails(write_tmp("b3.json", "{\"a\": \"0\"}"), m, LH_ERR_FORMAT,
                      NEEDLES("b3.json", "token \"a\"", "not an integer"));
    expect_open_fails(write_tmp("b4.json", "{\"a\": -1}"), m, LH_ERR_FORMAT, NEEDLES("\"a\""));
    expect_open_fails(write_tmp("b5.json", "{\"a\": 1.0}"), m, LH_ERR_FORMAT, NEEDLES("\"a\""));
    expect_open_fails(write_tmp("b6.json", "{\"a\": 4294967296}"), m, LH_ERR_FORMAT,
                      NEEDLES("\"a\""));
    expect_open_fails(write_tmp("b7.json", "{\"a\": 0, \"b\": 0}"), m, LH_ERR_FORMAT,
                      NEEDLES("b7.json", "same id 0"));
    expect_open_fails(write_tmp("b8.json", "{\"a\": 0,\n\"a\": 1}"), m, LH_ERR_FORMAT,
                      NEEDLES("b8.json:2:", "duplicate"));
    expect_open_fails(write_tmp("b9.json", "{\"a\": 0, \"<|endoftext|>\": 1}"), m, LH_ERR_FORMAT,
                      NEEDLES("b9.json", "<|startoftext|> is missing"));
    expect_open_fails(write_tmp("b10.json", "{\"a\": 0, \"<|startoftext|>\": 1}"), m, LH_ERR_FORMAT,
                      NEEDLES("<|endoftext|> is missing"));
    expect_open_fails(write_tmp("b11.json", ""), m, LH_ERR_FORMAT, NEEDLES("b11.json"));
    /* merges */
    expect_open_fails(v, write_tmp("m1.txt", "#version: 0.2\na b</w>\na b c\n"), LH_ERR_FORMAT,
                      NEEDLES("m1.txt:3:", "one space"));
    expect_open_fails(v, write_tmp("m2.txt", "#version: 0.2\na  b\n"), LH_ERR_FORMAT,
                      NEEDLES("m2.txt:2:"));
    expect_open_fails(v, write_tmp("m3.txt", "#version: 0.2\nab\n"), LH_ERR_FORMAT,
                      NEEDLES("m3.txt:2:"));
    expect_open_fails(v, write_tmp("m4.txt", "#version: 0.2\na b</w>\nzz b\n"), LH_ERR_FORMAT,
                      NEEDLES("m4.txt:3:", "token \"zz\" is not in the vocabulary"));
    expect_open_fails(v, write_tmp("m5.txt", "#version: 0.2\nb a\n"), LH_ERR_FORMAT,
                      NEEDLES("m5.txt:2:", "merged token \"ba\""));
    expect_open_fails(v, write_tmp("m6.txt", "#version: 0.2\na b</w>\n\nb c\n"), LH_ERR_FORMAT,
                      NEEDLES("m6.txt:3:", "empty line"));
    expect_open_fails(v, write_tmp("m7.txt", "#version: 0.2\na b</w>\n\n"), LH_ERR_FORMAT,
                      NEEDLES("m7.txt:3:", "empty line"));
    expect_open_fails(v, write_tmp("m8.txt", "#version: 0.2\na \xff\n"), LH_ERR_FORMAT,
                      NEEDLES("m8.txt:2:", "UTF-8"));
    expect_open_fails(v, write_tmp("m9.txt", "# comment\n"), LH_ERR_FORMAT,
                      NEEDLES("m9.txt:1:", "\"#\""));
    expect_open_fails(v, write_tmp("m10.txt", " a\n"), LH_ERR_FORMAT,
                      NEEDLES("m10.txt:1:", "token \"\""));
    lh_error err = {0};
    ck_assert_int_eq(lh_tokenizer_open(NULL, v, m, &err), LH_ERR_INVALID);
    /* special tokens must be in the vocabulary */
    lh_tokenizer *t = NULL;
    ck_assert_int_eq(lh_tokenizer_open(&t, v, m, &err), LH_OK);
    ck_assert_int_eq(lh_tokenizer_add_special(t, "!", 0, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "\"!\""));
    lh_tokenizer_close(t);
}
END_TEST

/* Pathological text stays fast: 200k combining marks, a 1 MB word. */
START_TEST(test_big_inputs) {
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, 'a', big);
    s[big] = '\0';
    double t0 = now_ms();
    size_t n;
    int32_t *ids = encode(g_sd1, s, &n);
    ck_assert_uint_gt(n, 0);
    free(ids);
    /* 'e' followed by marks of mixed classes, as one long run */
    static const char *marks[] = {"\xcc\x81", "\xcc\xa3", "\xcc\xb4", "\xcd\x85", "\xcc\x9b"};
    size_t off = 0;
    s[off++] = 'e';
    for (size_t i = 0; off + 2 < big; i++, off += 2) memcpy(s + off, marks[i % 5], 2);
    s[off] = '\0';
    ids = encode(g_sd1, s, &n);
    ck_assert_uint_gt(n, 0);
    free(ids);
    double dt = now_ms() - t0;
    printf("tokenizer: two 1 MB inputs took %.0f ms\n", dt);
    free(s);
}
END_TEST

static void setup(void) {
    load_fixture();
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_tokenizer_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_tmp));
}

static void teardown(void) {
    free_fixture();
    /* tests run in forked children, so list what they left in the directory */
    DIR *d = opendir(g_tmp);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", g_tmp, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(g_tmp);
}

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("clip");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_vocab_basics);
    tcase_add_test(tc, test_ids_sd1);
    tcase_add_test(tc, test_ids_sd2);
    tcase_add_test(tc, test_ids_sd15);
    tcase_add_test(tc, test_ids_cached);
    tcase_add_test(tc, test_windows_truncate);
    tcase_add_test(tc, test_windows_a1111);
    tcase_add_test(tc, test_pack_rules);
    tcase_add_test(tc, test_decode);
    tcase_add_test(tc, test_encode_overflow);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_small_vocab);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_big_inputs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
