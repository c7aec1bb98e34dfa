/* safetensors suite: every malformed-file rule, interop with Python's
 * safetensors (fixtures from tests/golden/safetensors_interop.py), the
 * writer's bytes and atomicity, dtype conversions and `lorahost inspect`.
 * LH_REGEN_FIXTURES=1 rewrites written_by_lorahost.safetensors and the fuzz
 * corpus tests/fuzz/corpus/safetensors/ in the source tree. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lorahost/lorahost.h"

static char g_tmp[4096]; /* scratch directory under the build tree */

/* ---- Helpers ---- */

static const char *source_dir(void) {
    return getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..";
}

static const char *build_dir(void) {
    return getenv("LH_BUILD_DIR") ? getenv("LH_BUILD_DIR") : "..";
}

static int regen(void) {
    return getenv("LH_REGEN_FIXTURES") && !strcmp(getenv("LH_REGEN_FIXTURES"), "1");
}

/* A path or command line, returned by value so callers need not free it. */
typedef struct lh_path {
    char s[4096];
} lh_path;

__attribute__((format(printf, 1, 2))) static lh_path pathf(const char *fmt, ...) {
    lh_path p;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p.s, sizeof p.s, fmt, ap);
    va_end(ap);
    return p;
}

static lh_path fixture(const char *name) {
    return pathf("%s/tests/fixtures/safetensors/%s", source_dir(), name);
}

static lh_path tmp(const char *name) { return pathf("%s/%s", g_tmp, name); }

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, k;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        k = fread(buf + n, 1, cap - n, f);
        n += k;
    } while (k > 0);
    fclose(f);
    *len = n;
    return buf;
}

static void spit(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s: %s", path, strerror(errno));
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static int same_file(const char *a, const char *b) {
    size_t la, lb;
    unsigned char *x = slurp(a, &la), *y = slurp(b, &lb);
    int same = la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

/* Number of entries in dir whose name contains ".tmp.". */
static int count_temp_files(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* A file image: the 8-byte length (hlen if use_hlen, else the header's own
 * length), the header, then data_len zero bytes. */
static unsigned char *image(size_t *len, const char *header, int use_hlen, uint64_t hlen,
                            size_t data_len) {
    size_t h = strlen(header);
    uint64_t prefix = use_hlen ? hlen : h;
    *len = 8 + h + data_len;
    unsigned char *buf = calloc(1, *len);
    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(prefix >> (8 * i));
    memcpy(buf + 8, header, h);
    return buf;
}

/* ---- Bad input: one test per rule ---- */

typedef struct bad_case {
    const char *name;   /* also the fuzz corpus file name */
    const char *header; /* JSON text */
    size_t data_len;    /* zero bytes after the header */
    int use_hlen;       /* 1: write hlen as the length prefix */
    uint64_t hlen;
    long cut; /* >= 0: keep only this many bytes of the image */
    lh_status code;
    const char *expect; /* substring of the message */
} bad_case;

#define T(dtype, shape, offs)                                                                      \
    "{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}"
#define F32x1(offs) T("F32", "[1]", offs)

static const bad_case BAD[] = {
    {"short_file", "{}", 0, 0, 0, 5, LH_ERR_FORMAT, "file is 5 bytes, shorter than the 8-byte"},
    {"empty_file", "{}", 0, 0, 0, 0, LH_ERR_FORMAT, "file is 0 bytes"},
    {"header_len_zero", "{}", 0, 1, 0, -1, LH_ERR_FORMAT, "header length is 0"},
    {"header_too_large", "{}", 0, 1, 100000001, -1, LH_ERR_FORMAT,
     "header length 100000001 is over the 100000000-byte limit"},
    {"header_len_max", "{}", 0, 1, UINT64_MAX, -1, LH_ERR_FORMAT, "over the 100000000-byte limit"},
    {"header_past_eof", "{}", 0, 1, 64, -1, LH_ERR_FORMAT,
     "header length 64 runs past the end of the file (10 bytes)"},
    {"header_utf8", "{\"a\xff\":1}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "header is not valid UTF-8 (bad byte 0xff at file offset 11)"},
    {"header_utf8_surrogate", "{\"\xed\xa0\x80\":1}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "not valid UTF-8"},
    {"header_utf8_overlong", "{\"\xc0\xaf\":1}", 0, 0, 0, -1, LH_ERR_FORMAT, "not valid UTF-8"},
    {"header_utf8_cut", "{\"\xe2\x9c\":1}", 0, 0, 0, -1, LH_ERR_FORMAT, "not valid UTF-8"},
    {"json_syntax", "{\"a\":", 0, 0, 0, -1, LH_ERR_FORMAT, "header is not valid JSON: "},
    {"json_trailing", "{}x", 0, 0, 0, -1, LH_ERR_FORMAT, "at line 1 column 3"},
    {"json_nul_escape", "{\"a\\u0000b\":" F32x1("[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "header is not valid JSON"},
    {"json_big_integer", "{\"a\":" T("F32", "[99999999999999999999]", "[0,4]") "}", 4, 0, 0, -1,
     LH_ERR_FORMAT, "header is not valid JSON: too big integer"},
    {"json_error_newline", "{\"a\":\"\\\n\"}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "invalid escape near '\"\\?' at line 2"},
    {"not_object", "[]", 0, 0, 0, -1, LH_ERR_FORMAT, "header is not a JSON object"},
    {"not_object_string", "\"x\"", 0, 0, 0, -1, LH_ERR_FORMAT, "header is not a JSON object"},
    {"duplicate_name", "{\"a\":" F32x1("[0,4]") ",\"a\":" F32x1("[4,8]") "}", 8, 0, 0, -1,
     LH_ERR_FORMAT, "header has a duplicate key (tensor names and metadata keys must be unique)"},
    {"entry_not_object", "{\"a\":1}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': entry is not an object"},
    {"entry_name_newline", "{\"a\\nb\":1}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a?b': entry is not an object"},
    {"missing_dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': missing field 'dtype'"},
    {"missing_shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, 0, 0, -1,
     LH_ERR_FORMAT, "tensor 'a': missing field 'shape'"},
    {"missing_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': missing field 'data_offsets'"},
    {"extra_field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}", 4,
     0, 0, -1, LH_ERR_FORMAT, "tensor 'a': unknown field 'foo'"},
    {"dtype_not_string", "{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, 0, -1,
     LH_ERR_FORMAT, "tensor 'a': dtype is not a string"},
    {"unknown_dtype", "{\"a\":" T("f32", "[1]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': unknown dtype 'f32'"},
    {"unsupported_dtype", "{\"a\":" T("C64", "[1]", "[0,8]") "}", 8, 0, 0, -1, LH_ERR_UNSUPPORTED,
     "tensor 'a': dtype 'C64' is not supported by lorahost"},
    {"shape_not_array", "{\"a\":" T("F32", "1", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': shape is not an array"},
    {"too_many_dims", "{\"a\":" T("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, 0, 0, -1,
     LH_ERR_UNSUPPORTED, "tensor 'a': shape has 9 dimensions, more than the 8"},
    {"shape_negative", "{\"a\":" T("F32", "[-1]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': shape[0] is negative (-1)"},
    {"shape_fraction", "{\"a\":" T("F32", "[1,1.5]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': shape[1] is 1.5, not an integer"},
    {"shape_real", "{\"a\":" T("F32", "[1.0]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': shape[0] is 1, not an integer"},
    {"shape_string", "{\"a\":" T("F32", "[\"1\"]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': shape[0] is not an integer"},
    {"shape_over_2_48", "{\"a\":" T("U8", "[281474976710657]", "[0,4]") "}", 4, 0, 0, -1,
     LH_ERR_FORMAT, "tensor 'a': shape[0] is 281474976710657, more than 2^48"},
    {"offsets_not_pair", "{\"a\":" T("F32", "[1]", "[0]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets is not an array of 2 integers"},
    {"offsets_not_array", "{\"a\":" T("F32", "[1]", "{}") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets is not an array of 2 integers"},
    {"offsets_negative", "{\"a\":" T("F32", "[1]", "[-4,0]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets[0] is negative (-4)"},
    {"offsets_fraction", "{\"a\":" T("F32", "[1]", "[0,4.5]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets[1] is 4.5, not an integer"},
    {"offsets_over_2_48", "{\"a\":" T("F32", "[1]", "[0,281474976710657]") "}", 4, 0, 0, -1,
     LH_ERR_FORMAT, "tensor 'a': data_offsets[1] is 281474976710657, more than 2^48"},
    {"begin_after_end", "{\"a\":" T("F32", "[0]", "[8,4]") "}", 8, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets [8, 4] begin is after end"},
    {"size_mismatch", "{\"a\":" T("F32", "[2,3]", "[0,4]") "}", 4, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': data_offsets [0, 4] hold 4 bytes but F32 with 6 elements needs 24"},
    {"shape_overflow", "{\"a\":" T("U8", "[4294967296,4294967296]", "[0,4]") "}", 4, 0, 0, -1,
     LH_ERR_OVERFLOW, "tensor 'a': shape is too large"},
    {"bytes_overflow", "{\"a\":" T("F64", "[2147483648,2147483648]", "[0,4]") "}", 4, 0, 0, -1,
     LH_ERR_OVERFLOW, "tensor 'a': shape is too large"},
    {"first_not_zero", "{\"a\":" F32x1("[4,8]") "}", 8, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'a': first tensor starts at byte 4, not 0"},
    {"gap", "{\"a\":" F32x1("[0,4]") ",\"b\":" F32x1("[8,12]") "}", 12, 0, 0, -1, LH_ERR_FORMAT,
     "tensor 'b': gap of 4 bytes after tensor 'a'"},
    {"overlap", "{\"a\":" T("F32", "[2]", "[0,8]") ",\"b\":" F32x1("[4,8]") "}", 8, 0, 0, -1,
     LH_ERR_FORMAT, "tensor 'b': overlaps tensor 'a'"},
    {"overlap_empty", "{\"a\":" T("F32", "[2]", "[0,8]") ",\"e\":" T("F32", "[0]", "[4,4]") "}", 8,
     0, 0, -1, LH_ERR_FORMAT, "tensor 'e': overlaps tensor 'a'"},
    {"trailing_bytes", "{\"a\":" F32x1("[0,4]") "}", 5, 0, 0, -1, LH_ERR_FORMAT,
     "trailing bytes: data section is 5 bytes but tensors end at 4"},
    {"trailing_bytes_no_tensors", "{}", 1, 0, 0, -1, LH_ERR_FORMAT, "trailing bytes"},
    {"truncated", "{\"a\":" F32x1("[0,4]") "}", 3, 0, 0, -1, LH_ERR_FORMAT,
     "truncated: data section is 3 bytes but tensors end at 4"},
    {"metadata_not_object", "{\"__metadata__\":[]}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "__metadata__ is not an object"},
    {"metadata_null", "{\"__metadata__\":null}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "__metadata__ is not an object"},
    {"metadata_number", "{\"__metadata__\":{\"k\":1}}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "__metadata__ value for key 'k' is not a string"},
    {"metadata_nested", "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, 0, 0, -1, LH_ERR_FORMAT,
     "__metadata__ value for key 'k' is not a string"},
    {"metadata_duplicate", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, 0, 0, -1,
     LH_ERR_FORMAT, "duplicate key"},
};
#define N_BAD ((int)(sizeof BAD / sizeof BAD[0]))

static unsigned char *bad_image(const bad_case *c, size_t *len) {
    unsigned char *buf = image(len, c->header, c->use_hlen, c->hlen, c->data_len);
    if (c->cut >= 0) *len = (size_t)c->cut;
    return buf;
}

START_TEST(test_bad_input) {
    const bad_case *c = &BAD[_i];
    size_t len;
    unsigned char *buf = bad_image(c, &len);
    lh_st_file *f = (lh_st_file *)buf; /* must be reset to NULL on failure */
    lh_error err = {0};
    lh_status rc = lh_st_parse(&f, buf, len, "bad.safetensors", &err);
    ck_assert_msg(rc == c->code, "%s: got %d (%s), want %d", c->name, rc, err.msg, c->code);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err.msg, c->expect) != NULL, "%s: message '%s' lacks '%s'", c->name,
                  err.msg, c->expect);
    ck_assert_msg(!strncmp(err.msg, "bad.safetensors: ", 17), "%s: '%s' does not name the file",
                  c->name, err.msg);
    ck_assert_msg(!strchr(err.msg, '\n'), "%s: message is not one line", c->name);
    free(buf);
}
END_TEST

/* The same rules through lh_st_open: the message names the path. */
START_TEST(test_bad_input_open) {
    const bad_case *c = &BAD[_i];
    size_t len;
    unsigned char *buf = bad_image(c, &len);
    lh_path path = tmp(c->name);
    spit(path.s, buf, len);
    lh_st_file *f;
    lh_error err = {0};
    ck_assert_int_eq(lh_st_open(&f, path.s, &err), c->code);
    ck_assert_ptr_null(f);
    ck_assert_msg(!strncmp(err.msg, path.s, strlen(path.s)) && strstr(err.msg, c->expect), "%s: %s",
                  c->name, err.msg);
    free(buf);
}
END_TEST

/* ---- Unusual but valid input ---- */

typedef struct good_case {
    const char *header;
    size_t data_len;
    size_t n_tensors, n_meta;
} good_case;

static const good_case GOOD[] = {
    {"{}", 0, 0, 0},
    {"{}      ", 0, 0, 0},
    {" \n{\"a\":" F32x1("[0,4]") "}\n\t ", 4, 1, 0},
    {"{\"a\":" F32x1("[0,4]") ",\"e\":" T("F32", "[0]", "[4,4]") ",\"b\":" F32x1("[4,8]") "}", 8, 3,
     0},
    {"{\"e1\":" T("F16", "[0,3]", "[0,0]") ",\"e2\":" T("I8", "[2,0]", "[0,0]") "}", 0, 2, 0},
    {"{\"s\":" T("I64", "[]", "[0,8]") "}", 8, 1, 0},
    {"{\"__metadata__\":{}}", 0, 0, 0},
    {"{\"__metadata__\":{\"k\":\"v\",\"\":\"\"}}", 0, 0, 2},
    {"{\"d8\":" T("U8", "[1,1,1,1,1,1,1,2]", "[0,2]") "}", 2, 1, 0},
    {"{\"max\":" T("U8", "[281474976710656,0]", "[0,0]") "}", 0, 1, 0},
    {"{\"\":" F32x1("[0,4]") "}", 4, 1, 0},
};
#define N_GOOD ((int)(sizeof GOOD / sizeof GOOD[0]))

START_TEST(test_good_input) {
    const good_case *c = &GOOD[_i];
    size_t len;
    unsigned char *buf = image(&len, c->header, 0, 0, c->data_len);
    lh_st_file *f;
    lh_error err = {0};
    ck_assert_msg(lh_st_parse(&f, buf, len, "good", &err) == LH_OK, "%s: %s", c->header, err.msg);
    ck_assert_uint_eq(lh_st_count(f), c->n_tensors);
    ck_assert_uint_eq(lh_st_meta_count(f), c->n_meta);
    ck_assert_uint_eq(lh_st_header_size(f), strlen(c->header));
    uint64_t pos = 0;
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        ck_assert_uint_eq(t->begin, pos); /* file order tiles the data section */
        ck_assert_ptr_eq(t->data, buf + 8 + strlen(c->header) + t->begin);
        ck_assert_ptr_eq(lh_st_find(f, t->name), t);
        pos = t->end;
    }
    ck_assert_ptr_null(lh_st_get(f, lh_st_count(f)));
    ck_assert_ptr_null(lh_st_find(f, "no such tensor"));
    lh_st_close(f);
    free(buf);
}
END_TEST

START_TEST(test_open_errors) {
    lh_st_file *f;
    lh_error err = {0};
    lh_path missing = tmp("missing.safetensors");
    ck_assert_int_eq(lh_st_open(&f, missing.s, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err.msg, missing.s) && strstr(err.msg, "cannot open"), "%s", err.msg);
    ck_assert_int_eq(lh_st_open(&f, g_tmp, &err), LH_ERR_IO);
    ck_assert_msg(strstr(err.msg, "not a regular file"), "%s", err.msg);
}
END_TEST

/* ---- Interop with Python safetensors ---- */

/* Keep identical to INTEROP in tests/golden/safetensors_interop.py. Element i
 * is i * scale + offset (float64 for float types, int64 for integers, raw
 * bytes mod 256 for float8); BOOL is i % 3 == 0. */
typedef struct interop_row {
    const char *name;
    lh_dtype dtype;
    int ndim;
    int64_t shape[3];
    double scale, offset;
} interop_row;

static const interop_row INTEROP[] = {
    {"f32.mat", LH_DTYPE_F32, 2, {3, 5}, 0.25, -3.0},
    {"f16.vec", LH_DTYPE_F16, 1, {7}, 0.5, -1.5},
    {"bf16.cube", LH_DTYPE_BF16, 3, {2, 3, 2}, 0.125, -0.75},
    {"f64.row", LH_DTYPE_F64, 2, {1, 3}, 0.1, -1.0},
    {"i64.scalar", LH_DTYPE_I64, 0, {0}, 0, -1234567890123.0},
    {"i32.col", LH_DTYPE_I32, 2, {4, 1}, -7, 3},
    {"i16.v", LH_DTYPE_I16, 1, {3}, 1000, -1500},
    {"i8.v", LH_DTYPE_I8, 1, {5}, -50, 100},
    {"u64.v", LH_DTYPE_U64, 1, {2}, 4294967296.0, 7},
    {"u32.v", LH_DTYPE_U32, 1, {2}, 3000000000.0, 1},
    {"u16.v", LH_DTYPE_U16, 1, {3}, 30000, 5},
    {"u8.img", LH_DTYPE_U8, 3, {2, 2, 3}, 37, 5},
    {"bool.mask", LH_DTYPE_BOOL, 1, {5}, 0, 0},
    {"f8e4m3.v", LH_DTYPE_F8_E4M3, 1, {4}, 3, 0x38},
    {"f8e5m2.v", LH_DTYPE_F8_E5M2, 1, {4}, 5, 0x3c},
    {"empty", LH_DTYPE_F32, 2, {0, 4}, 1.0, 0.0},
    {"unicode \xc3\xbc \"q\"/\\ \xe2\x9c\x93", LH_DTYPE_F16, 1, {1}, 0.0, 0.5},
};
#define N_INTEROP ((int)(sizeof INTEROP / sizeof INTEROP[0]))

static const char *const INTEROP_META[][2] = {
    {"\xe6\x8f\x8f\xe8\xbf\xb0 \xe2\x9c\x93",
     "h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x98\x80\n\t\"q\" \\ / \x01 \x1f \x7f \b \f \r end"},
};
static const char *const LORAHOST_META[][2] = {
    {"format", "pt"},
    {"lorahost", "written by tests/test_safetensors.c"},
    {"\xc3\xbc-key", "\xc3\xbf-value \xe2\x9c\x93\nline two"},
    {"", "empty key"},
};

static size_t row_numel(const interop_row *r) {
    size_t n = 1;
    for (int d = 0; d < r->ndim; d++) n *= (size_t)r->shape[d];
    return n;
}

/* Float value of element i, as read_f32 must return it (not for float8). */
static float row_value(const interop_row *r, size_t i) {
    if (r->dtype == LH_DTYPE_BOOL) return i % 3 == 0;
    if (r->dtype == LH_DTYPE_F32 || r->dtype == LH_DTYPE_F16 || r->dtype == LH_DTYPE_BF16 ||
        r->dtype == LH_DTYPE_F64)
        return (float)((double)i * r->scale + r->offset);
    int64_t v = (int64_t)i * (int64_t)r->scale + (int64_t)r->offset;
    switch (r->dtype) {
    case LH_DTYPE_U64: return (float)(uint64_t)v;
    case LH_DTYPE_U32: return (float)(uint32_t)v;
    case LH_DTYPE_U16: return (float)(uint16_t)v;
    case LH_DTYPE_U8: return (float)(uint8_t)v;
    default: return (float)v;
    }
}

/* The row's bytes, generated here independently of Python. */
static unsigned char *row_bytes(const interop_row *r) {
    size_t n = row_numel(r), size = lh_dtype_size(r->dtype);
    unsigned char *buf = calloc(n ? n : 1, size);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = buf + i * size;
        double x = (double)i * r->scale + r->offset;
        int64_t v = (int64_t)i * (int64_t)r->scale + (int64_t)r->offset;
        float f = (float)x;
        uint16_t h;
        switch (r->dtype) {
        case LH_DTYPE_F64: memcpy(p, &x, 8); break;
        case LH_DTYPE_F32: memcpy(p, &f, 4); break;
        case LH_DTYPE_F16:
            h = lh_f32_to_f16(f);
            memcpy(p, &h, 2);
            break;
        case LH_DTYPE_BF16:
            h = lh_f32_to_bf16(f);
            memcpy(p, &h, 2);
            break;
        case LH_DTYPE_BOOL: p[0] = i % 3 == 0; break;
        default: memcpy(p, &v, size); break; /* little-endian: the low bytes wrap */
        }
    }
    return buf;
}

/* A writer holding every INTEROP row; data buffers go to bufs. */
static lh_st_writer *interop_writer(unsigned char **bufs, const char *const (*meta)[2],
                                    size_t n_meta) {
    lh_st_writer *w;
    lh_error err = {0};
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    for (int k = 0; k < N_INTEROP; k++) {
        bufs[k] = row_bytes(&INTEROP[k]);
        ck_assert_msg(lh_st_writer_add(w, INTEROP[k].name, INTEROP[k].dtype, INTEROP[k].ndim,
                                       INTEROP[k].shape, bufs[k], &err) == LH_OK,
                      "%s", err.msg);
    }
    for (size_t k = 0; k < n_meta; k++)
        ck_assert_msg(lh_st_writer_add_meta(w, meta[k][0], meta[k][1], &err) == LH_OK, "%s",
                      err.msg);
    return w;
}

static void free_bufs(unsigned char **bufs) {
    for (int k = 0; k < N_INTEROP; k++) free(bufs[k]);
}

/* Every INTEROP row is in f with the right dtype, shape, bytes and values. */
static void check_interop_tensors(const lh_st_file *f) {
    lh_error err = {0};
    ck_assert_uint_eq(lh_st_count(f), N_INTEROP);
    for (int k = 0; k < N_INTEROP; k++) {
        const interop_row *r = &INTEROP[k];
        const lh_st_tensor *t = lh_st_find(f, r->name);
        ck_assert_msg(t != NULL, "missing %s", r->name);
        ck_assert_str_eq(t->name, r->name);
        ck_assert_int_eq(t->dtype, r->dtype);
        ck_assert_int_eq(t->ndim, r->ndim);
        for (int d = 0; d < r->ndim; d++) ck_assert_int_eq(t->shape[d], r->shape[d]);
        size_t n = row_numel(r);
        ck_assert_int_eq(t->numel, (int64_t)n);
        unsigned char *want = row_bytes(r);
        ck_assert_uint_eq(t->end - t->begin, n * lh_dtype_size(r->dtype));
        ck_assert_msg(!memcmp(t->data, want, n * lh_dtype_size(r->dtype)), "%s bytes", r->name);
        float *got = malloc((n ? n : 1) * sizeof *got);
        ck_assert_ptr_nonnull(got);
        ck_assert_msg(lh_st_read_f32(got, n, f, r->name, &err) == LH_OK, "%s", err.msg);
        if (r->dtype != LH_DTYPE_F8_E4M3 && r->dtype != LH_DTYPE_F8_E5M2)
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(got[i] == row_value(r, i), "%s[%zu] = %g, want %g", r->name, i,
                              got[i], row_value(r, i));
        free(got);
        free(want);
    }
}

START_TEST(test_interop_read_python) {
    lh_st_file *f;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, fixture("interop_py.safetensors").s, &err) == LH_OK, "%s",
                  err.msg);
    check_interop_tensors(f);
    ck_assert_uint_eq(lh_st_meta_count(f), 1);
    ck_assert_str_eq(lh_st_meta_key(f, 0), INTEROP_META[0][0]);
    ck_assert_str_eq(lh_st_meta_value(f, 0), INTEROP_META[0][1]);
    ck_assert_str_eq(lh_st_meta_find(f, INTEROP_META[0][0]), INTEROP_META[0][1]);
    ck_assert_ptr_null(lh_st_meta_key(f, 1));
    /* file order: Python's layout, widest dtype first */
    ck_assert_str_eq(lh_st_get(f, 0)->name, "u64.v");
    ck_assert_str_eq(lh_st_get(f, N_INTEROP - 1)->name, "bool.mask");
    lh_st_close(f);
}
END_TEST

START_TEST(test_interop_write_like_python) {
    unsigned char *bufs[N_INTEROP];
    lh_st_writer *w = interop_writer(bufs, INTEROP_META, 1);
    lh_error err = {0};
    lh_path out = tmp("interop_lh.safetensors");
    ck_assert_msg(lh_st_save(w, out.s, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(same_file(out.s, fixture("interop_py.safetensors").s),
                  "%s differs from Python's interop_py.safetensors", out.s);
    lh_st_writer_destroy(w);
    free_bufs(bufs);
}
END_TEST

static void write_corpus(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/safetensors", source_dir());
    mkdir(pathf("%s/tests/fuzz/corpus", source_dir()).s, 0755);
    ck_assert_msg(mkdir(dir, 0755) == 0 || errno == EEXIST, "%s: %s", dir, strerror(errno));
    for (int k = 0; k < N_BAD; k++) {
        size_t len;
        unsigned char *buf = bad_image(&BAD[k], &len);
        spit(pathf("%s/bad_%s.safetensors", dir, BAD[k].name).s, buf, len);
        free(buf);
    }
    const char *good[] = {"interop_py.safetensors", "meta_py.safetensors",
                          "written_by_lorahost.safetensors"};
    for (size_t k = 0; k < sizeof good / sizeof *good; k++) {
        size_t len;
        unsigned char *buf = slurp(fixture(good[k]).s, &len);
        spit(pathf("%s/good_%s", dir, good[k]).s, buf, len);
        free(buf);
    }
}

/* Our writer's file for the Python side to check; kept in sync here. */
START_TEST(test_interop_lorahost_fixture) {
    unsigned char *bufs[N_INTEROP];
    lh_st_writer *w = interop_writer(bufs, LORAHOST_META, 4);
    lh_error err = {0};
    lh_path out = regen() ? fixture("written_by_lorahost.safetensors")
                          : tmp("written_by_lorahost.safetensors");
    ck_assert_msg(lh_st_save(w, out.s, &err) == LH_OK, "%s", err.msg);
    if (regen()) write_corpus();
    ck_assert_msg(same_file(out.s, fixture("written_by_lorahost.safetensors").s),
                  "writer output changed: rerun LH_REGEN_FIXTURES=1 ctest -R safetensors and "
                  "tests/golden/safetensors_interop.py");
    lh_st_file *f;
    ck_assert_msg(lh_st_open(&f, out.s, &err) == LH_OK, "%s", err.msg);
    check_interop_tensors(f);
    ck_assert_uint_eq(lh_st_meta_count(f), 4);
    for (int k = 0; k < 4; k++)
        ck_assert_str_eq(lh_st_meta_find(f, LORAHOST_META[k][0]), LORAHOST_META[k][1]);
    ck_assert_str_eq(lh_st_meta_key(f, 0), ""); /* sorted bytewise */
    ck_assert_str_eq(lh_st_meta_key(f, 3), "\xc3\xbc-key");
    lh_st_close(f);
    lh_st_writer_destroy(w);
    free_bufs(bufs);
}
END_TEST

START_TEST(test_interop_metadata) {
    static const char *const want[][2] = {
        {"empty", ""},
        {"format", "pt"},
        {"json", "{\"a\": [1, 2], \"b\": \"\xc3\xa9\"}"},
        {"ss_network_alpha", "4.0"},
        {"ss_network_dim", "8"},
        {"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87",
         "\xd0\xb7\xd0\xbd\xd0\xb0\xd1\x87\xd0\xb5\xd0\xbd\xd0\xb8\xd0\xb5"},
    };
    lh_st_file *f;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&f, fixture("meta_py.safetensors").s, &err) == LH_OK, "%s", err.msg);
    ck_assert_uint_eq(lh_st_meta_count(f), 6);
    for (size_t k = 0; k < 6; k++) {
        ck_assert_str_eq(lh_st_meta_key(f, k), want[k][0]);
        ck_assert_str_eq(lh_st_meta_value(f, k), want[k][1]);
        ck_assert_str_eq(lh_st_meta_find(f, want[k][0]), want[k][1]);
    }
    ck_assert_ptr_null(lh_st_meta_find(f, "ss_network"));
    float v[4];
    ck_assert_int_eq(lh_st_read_f32(v, 4, f, "lora_unet_x.lora_down.weight", &err), LH_OK);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(v[i], i * 0.5f + 0.25f);
    ck_assert_int_eq(lh_st_read_f32(v, 3, f, "lora_unet_x.lora_down.weight", &err), LH_ERR_SHAPE);
    ck_assert_msg(strstr(err.msg, "has 4 elements, the buffer holds 3"), "%s", err.msg);
    ck_assert_int_eq(lh_st_read_f32(v, 4, f, "nope", &err), LH_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "meta_py.safetensors: no tensor 'nope'"), "%s", err.msg);
    lh_st_close(f);
}
END_TEST

/* ---- Writer ---- */

/* Every dtype, with scalar, empty and 8-dimensional shapes, survives a round trip. */
START_TEST(test_roundtrip_all_dtypes) {
    static const int64_t shapes[][LH_MAX_DIMS] = {{0}, {5}, {2, 0, 3}, {1, 2, 1, 2, 1, 1, 3, 1}};
    static const int ndims[] = {0, 1, 3, 8};
    lh_st_writer *w;
    lh_error err = {0};
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    unsigned char *data[LH_DTYPE_COUNT][4];
    char name[64];
    for (int d = 0; d < LH_DTYPE_COUNT; d++) {
        for (int s = 0; s < 4; s++) {
            size_t n = 1;
            for (int k = 0; k < ndims[s]; k++) n *= (size_t)shapes[s][k];
            size_t bytes = n * lh_dtype_size((lh_dtype)d);
            data[d][s] = malloc(bytes ? bytes : 1);
            ck_assert_ptr_nonnull(data[d][s]);
            for (size_t b = 0; b < bytes; b++) data[d][s][b] = (unsigned char)(b * 7 + d * 13 + s);
            snprintf(name, sizeof name, "%s/shape%d", lh_dtype_name((lh_dtype)d), s);
            ck_assert_int_eq(
                lh_st_writer_add(w, name, (lh_dtype)d, ndims[s], shapes[s], data[d][s], &err),
                LH_OK);
        }
    }
    lh_path out = tmp("roundtrip.safetensors");
    ck_assert_msg(lh_st_save(w, out.s, &err) == LH_OK, "%s", err.msg);
    lh_st_file *f;
    ck_assert_msg(lh_st_open(&f, out.s, &err) == LH_OK, "%s", err.msg);
    ck_assert_uint_eq(lh_st_count(f), LH_DTYPE_COUNT * 4);
    ck_assert_uint_eq(lh_st_header_size(f) % 8, 0);
    for (int d = 0; d < LH_DTYPE_COUNT; d++) {
        for (int s = 0; s < 4; s++) {
            snprintf(name, sizeof name, "%s/shape%d", lh_dtype_name((lh_dtype)d), s);
            const lh_st_tensor *t = lh_st_find(f, name);
            ck_assert_msg(t != NULL, "%s", name);
            ck_assert_int_eq(t->dtype, d);
            ck_assert_int_eq(t->ndim, ndims[s]);
            for (int k = 0; k < ndims[s]; k++) ck_assert_int_eq(t->shape[k], shapes[s][k]);
            ck_assert(!memcmp(t->data, data[d][s], t->end - t->begin));
            free(data[d][s]);
        }
    }
    lh_st_close(f);
    lh_st_writer_destroy(w);
}
END_TEST

START_TEST(test_writer_rejects) {
    lh_st_writer *w;
    lh_error err = {0};
    int64_t shape[LH_MAX_DIMS + 1] = {2, 2, 1, 1, 1, 1, 1, 1, 1};
    float data[4] = {0};
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "a", LH_DTYPE_F32, 2, shape, data, &err), LH_OK);
    struct {
        const char *name;
        lh_dtype dtype;
        int ndim;
        int64_t dim0;
        int null_data;
        lh_status code;
        const char *expect;
    } cases[] = {
        {"a", LH_DTYPE_F32, 2, 2, 0, LH_ERR_INVALID, "duplicate tensor name 'a'"},
        {"", LH_DTYPE_F32, 2, 2, 0, LH_ERR_INVALID, "invalid tensor name ''"},
        {"__metadata__", LH_DTYPE_F32, 2, 2, 0, LH_ERR_INVALID, "invalid tensor name"},
        {"bad\xff", LH_DTYPE_F32, 2, 2, 0, LH_ERR_INVALID, "tensor name is not valid UTF-8"},
        {"b", LH_DTYPE_COUNT, 2, 2, 0, LH_ERR_INVALID, "tensor 'b': bad dtype"},
        {"b", LH_DTYPE_F32, LH_MAX_DIMS + 1, 2, 0, LH_ERR_INVALID, "ndim 9 is not in 0..8"},
        {"b", LH_DTYPE_F32, -1, 2, 0, LH_ERR_INVALID, "ndim -1"},
        {"b", LH_DTYPE_F32, 2, -3, 0, LH_ERR_INVALID, "shape[0] = -3 is not in 0..2^48"},
        {"b", LH_DTYPE_F32, 2, (1ll << 48) + 1, 0, LH_ERR_INVALID, "is not in 0..2^48"},
        {"b", LH_DTYPE_F32, 2, 2, 1, LH_ERR_INVALID, "tensor 'b': data is NULL"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        shape[0] = cases[k].dim0;
        lh_status rc = lh_st_writer_add(w, cases[k].name, cases[k].dtype, cases[k].ndim, shape,
                                        cases[k].null_data ? NULL : data, &err);
        ck_assert_msg(rc == cases[k].code && strstr(err.msg, cases[k].expect), "case %zu: %d %s", k,
                      rc, err.msg);
    }
    int64_t big[3] = {1ll << 40, 1ll << 40, 1ll << 40};
    ck_assert_int_eq(lh_st_writer_add(w, "big", LH_DTYPE_F32, 3, big, data, &err), LH_ERR_OVERFLOW);
    ck_assert_int_eq(lh_st_writer_add_meta(w, "k", "v", &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add_meta(w, "k", "w", &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "duplicate metadata key 'k'"), "%s", err.msg);
    ck_assert_int_eq(lh_st_writer_add_meta(w, "x", "\xc0\xaf", &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "metadata value is not valid UTF-8"), "%s", err.msg);
    /* empty tensors need no data */
    shape[0] = 0;
    ck_assert_int_eq(lh_st_writer_add(w, "empty", LH_DTYPE_F32, 2, shape, NULL, &err), LH_OK);
    lh_st_writer_destroy(w);
}
END_TEST

/* A writer with one tensor of n float32 values, all equal to v. */
static lh_st_writer *one_tensor_writer(float *buf, int64_t n, float v) {
    lh_st_writer *w;
    lh_error err = {0};
    for (int64_t i = 0; i < n; i++) buf[i] = v;
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "w", LH_DTYPE_F32, 1, &n, buf, &err), LH_OK);
    return w;
}

START_TEST(test_save_atomic) {
    static float old_data[16], new_data[4096];
    lh_error err = {0};
    lh_path target = tmp("atomic.safetensors");
    lh_st_writer *old = one_tensor_writer(old_data, 16, 1.0f);
    ck_assert_int_eq(lh_st_save(old, target.s, &err), LH_OK);
    lh_path copy = tmp("atomic.orig");
    size_t len;
    unsigned char *orig = slurp(target.s, &len);
    spit(copy.s, orig, len);
    free(orig);
    lh_st_writer *w = one_tensor_writer(new_data, 4096, 2.0f);

    /* A directory that does not exist: nothing is created. */
    lh_path nodir = tmp("no/such/dir/x.safetensors");
    ck_assert_int_eq(lh_st_save(w, nodir.s, &err), LH_ERR_IO);
    ck_assert_msg(strstr(err.msg, "cannot create") && strstr(err.msg, "x.safetensors.tmp."), "%s",
                  err.msg);

    /* The target is a non-empty directory: rename fails after the data is
     * written; the temporary file goes and the directory stays. */
    lh_path dir = tmp("is_a_dir");
    ck_assert_int_eq(mkdir(dir.s, 0755), 0);
    spit(pathf("%s/%s", dir.s, "keep").s, "x", 1);
    ck_assert_int_eq(lh_st_save(w, dir.s, &err), LH_ERR_IO);
    ck_assert_msg(strstr(err.msg, "cannot rename"), "%s", err.msg);
    struct stat st;
    ck_assert_int_eq(stat(pathf("%s/%s", dir.s, "keep").s, &st), 0);
    ck_assert_int_eq(count_temp_files(g_tmp), 0);

    /* A write that fails half-way (file size limit): the old file survives. */
    struct rlimit saved, small = {4096, 4096};
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    small.rlim_max = saved.rlim_max;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    lh_status rc = lh_st_save(w, target.s, &err);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, old_handler);
    ck_assert_int_eq(rc, LH_ERR_IO);
    ck_assert_msg(strstr(err.msg, "cannot write") && strstr(err.msg, "File too large"), "%s",
                  err.msg);
    ck_assert_msg(same_file(target.s, copy.s), "old file was changed");
    ck_assert_int_eq(count_temp_files(g_tmp), 0);

    /* A directory we may not write to (not testable as root, who may). */
    if (geteuid() != 0) {
        lh_path ro = tmp("readonly");
        ck_assert_int_eq(mkdir(ro.s, 0755), 0);
        lh_path ro_target = pathf("%s/%s", ro.s, "x.safetensors");
        ck_assert_int_eq(lh_st_save(old, ro_target.s, &err), LH_OK);
        ck_assert_int_eq(chmod(ro.s, 0555), 0);
        ck_assert_int_eq(lh_st_save(w, ro_target.s, &err), LH_ERR_IO);
        ck_assert_msg(strstr(err.msg, "Permission denied"), "%s", err.msg);
        ck_assert_msg(same_file(ro_target.s, copy.s), "old file was changed");
        ck_assert_int_eq(chmod(ro.s, 0755), 0);
    }

    /* Success replaces the file and leaves no temporary behind. */
    ck_assert_int_eq(lh_st_save(w, target.s, &err), LH_OK);
    ck_assert(!same_file(target.s, copy.s));
    lh_st_file *f;
    ck_assert_int_eq(lh_st_open(&f, target.s, &err), LH_OK);
    ck_assert_int_eq(lh_st_get(f, 0)->numel, 4096);
    lh_st_close(f);
    ck_assert_int_eq(count_temp_files(g_tmp), 0);
    lh_st_writer_destroy(old);
    lh_st_writer_destroy(w);
}
END_TEST

/* The Python writer's quirks we match: metadata first, tensors by dtype order
 * then name, spaces to a multiple of 8, no __metadata__ when there is none. */
START_TEST(test_writer_header_text) {
    lh_st_writer *w;
    lh_error err = {0};
    uint16_t h[2] = {0};
    double d = 0;
    int64_t two = 2, one = 1;
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "b", LH_DTYPE_F16, 1, &two, h, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "a", LH_DTYPE_F16, 1, &two, h, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "z", LH_DTYPE_F64, 1, &one, &d, &err), LH_OK);
    lh_path out = tmp("header.safetensors");
    ck_assert_int_eq(lh_st_save(w, out.s, &err), LH_OK);
    size_t len;
    unsigned char *buf = slurp(out.s, &len);
    const char *want = "{\"z\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                       "\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                       "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}";
    size_t hlen = buf[0] | (size_t)buf[1] << 8;
    ck_assert_uint_eq(hlen, (strlen(want) + 7) / 8 * 8);
    ck_assert(!memcmp(buf + 8, want, strlen(want)));
    for (size_t i = strlen(want); i < hlen; i++) ck_assert_int_eq(buf[8 + i], ' ');
    ck_assert_uint_eq(len, 8 + hlen + 16);
    free(buf);
    lh_st_writer_destroy(w);

    /* Metadata only. */
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add_meta(w, "a", "b", &err), LH_OK);
    ck_assert_int_eq(lh_st_save(w, out.s, &err), LH_OK);
    buf = slurp(out.s, &len);
    ck_assert_uint_eq(len, 40);
    ck_assert(!memcmp(buf, " \0\0\0\0\0\0\0{\"__metadata__\":{\"a\":\"b\"}}      ", 40));
    free(buf);
    lh_st_writer_destroy(w);
}
END_TEST

/* ---- Lookups in a large file ---- */

START_TEST(test_many_tensors) {
    enum { N = 2000 };
    lh_st_writer *w;
    lh_error err = {0};
    static uint16_t data[N][5];
    char name[64];
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    for (int k = 0; k < N; k++) {
        int i = (k * 997) % N; /* a permutation: 997 is prime to 2000 */
        int64_t n = i % 5 + 1;
        for (int j = 0; j < n; j++) data[i][j] = lh_f32_to_f16((float)(i + j));
        snprintf(name, sizeof name, "down_blocks.%d.attn.to_q.weight", i);
        ck_assert_int_eq(lh_st_writer_add(w, name, LH_DTYPE_F16, 1, &n, data[i], &err), LH_OK);
    }
    lh_path out = tmp("many.safetensors");
    ck_assert_int_eq(lh_st_save(w, out.s, &err), LH_OK);
    lh_st_writer_destroy(w);
    lh_st_file *f;
    ck_assert_int_eq(lh_st_open(&f, out.s, &err), LH_OK);
    ck_assert_uint_eq(lh_st_count(f), N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "down_blocks.%d.attn.to_q.weight", i);
        const lh_st_tensor *t = lh_st_find(f, name);
        ck_assert_ptr_nonnull(t);
        ck_assert_str_eq(t->name, name);
        ck_assert_int_eq(t->numel, i % 5 + 1);
        ck_assert(!memcmp(t->data, data[i], (size_t)t->numel * 2));
    }
    ck_assert_ptr_null(lh_st_find(f, "down_blocks.2000.attn.to_q.weight"));
    ck_assert_ptr_null(lh_st_find(f, ""));
    for (size_t i = 1; i < lh_st_count(f); i++)
        ck_assert_uint_eq(lh_st_get(f, i)->begin, lh_st_get(f, i - 1)->end);
    lh_st_close(f);
}
END_TEST

/* ---- Conversions ---- */

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

START_TEST(test_f16_known) {
    static const struct {
        uint16_t h;
        uint32_t f;
    } exact[] = {
        {0x0000, 0x00000000}, {0x8000, 0x80000000}, {0x3c00, 0x3f800000},
        {0xc000, 0xc0000000}, {0x7bff, 0x477fe000}, /* 65504 */
        {0x0400, 0x38800000},                       /* smallest normal 2^-14 */
        {0x0001, 0x33800000},                       /* smallest subnormal 2^-24 */
        {0x03ff, 0x387fc000},                       /* largest subnormal */
        {0x8001, 0xb3800000}, {0x7c00, 0x7f800000}, {0xfc00, 0xff800000},
        {0x7e00, 0x7fc00000}, /* quiet NaN */
        {0x7c01, 0x7f802000}, /* signalling NaN keeps its payload */
        {0xfe55, 0xffcaa000}, /* negative NaN with payload */
        {0x3555, 0x3eaaa000}, /* 0.333251953125 */
    };
    for (size_t k = 0; k < sizeof exact / sizeof exact[0]; k++) {
        ck_assert_uint_eq(bits(lh_f16_to_f32(exact[k].h)), exact[k].f);
        ck_assert_uint_eq(lh_f32_to_f16(from_bits(exact[k].f)), exact[k].h);
    }
    static const struct {
        float f;
        uint16_t h;
    } rounded[] = {
        {1.0f + 0x1p-11f, 0x3c00},            /* tie: stays at even 1.0 */
        {1.0f + 3 * 0x1p-11f, 0x3c02},        /* tie: up to even */
        {1.0f + 0x1p-11f + 0x1p-23f, 0x3c01}, /* just above the tie */
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00}, /* tie at the top rounds to infinity */
        {1e10f, 0x7c00},
        {-1e10f, 0xfc00},
        {0x1p-25f, 0x0000}, /* tie between 0 and 2^-24: even 0 */
        {0x1.8p-25f, 0x0001},
        {3 * 0x1p-25f, 0x0002}, /* tie between 1 and 2 units: even 2 */
        {5 * 0x1p-25f, 0x0002}, /* tie between 2 and 3 units: even 2 */
        {0x1p-26f, 0x0000},
        {-0x1p-26f, 0x8000},
        {1e-30f, 0x0000},
        {0x1.ffcp-15f, 0x0400}, /* subnormal rounding up into the normals */
        {0.1f, 0x2e66},
        {-2.5e-5f, 0x81a3},
    };
    for (size_t k = 0; k < sizeof rounded / sizeof rounded[0]; k++)
        ck_assert_msg(lh_f32_to_f16(rounded[k].f) == rounded[k].h, "%a -> %04x, want %04x",
                      (double)rounded[k].f, lh_f32_to_f16(rounded[k].f), rounded[k].h);
    ck_assert(isnan(lh_f16_to_f32(lh_f32_to_f16(from_bits(0x7f800001))))); /* payload below f16 */
    ck_assert_uint_eq(lh_f32_to_f16(from_bits(0x7f800001)), 0x7c01);
}
END_TEST

/* Every binary16 value round-trips, and every midpoint between neighbours
 * rounds to the even one (nudged either side, to the nearer one). */
START_TEST(test_f16_exhaustive) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = lh_f16_to_f32((uint16_t)h);
        ck_assert_uint_eq(lh_f32_to_f16(f), h);
        if ((h & 0x7fff) >= 0x7bff) continue; /* no finite upper neighbour */
        float up = lh_f16_to_f32((uint16_t)(h + 1));
        float mid = (f + up) / 2; /* exact: 11-bit significands fit float32 */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        ck_assert_msg(lh_f32_to_f16(mid) == even, "midpoint above %04x", h);
        ck_assert_uint_eq(lh_f32_to_f16(nextafterf(mid, 0)), h);
        ck_assert_uint_eq(lh_f32_to_f16(nextafterf(mid, (h & 0x8000) ? -INFINITY : INFINITY)),
                          h + 1);
    }
}
END_TEST

START_TEST(test_bf16) {
    static const struct {
        float f;
        uint16_t b;
    } cases[] = {
        {1.0f, 0x3f80},
        {-2.0f, 0xc000},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f + 0x1p-8f, 0x3f80},     /* tie: even */
        {1.0f + 3 * 0x1p-8f, 0x3f82}, /* tie: up to even */
        {1.0f + 0x1p-8f + 0x1p-20f, 0x3f81},
        {3.0e38f, 0x7f62},
        {3.4028235e38f, 0x7f80}, /* FLT_MAX rounds to infinity */
        {INFINITY, 0x7f80},
        {-INFINITY, 0xff80},
        {0x1p-133f, 0x0001}, /* subnormal */
        {0.1f, 0x3dcd},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        ck_assert_msg(lh_f32_to_bf16(cases[k].f) == cases[k].b, "%a -> %04x, want %04x",
                      (double)cases[k].f, lh_f32_to_bf16(cases[k].f), cases[k].b);
    ck_assert_uint_eq(lh_f32_to_bf16(from_bits(0x7fc00000)), 0x7fc0);
    ck_assert_uint_eq(lh_f32_to_bf16(from_bits(0xff800001)), 0xffc0); /* sNaN stays NaN */
    ck_assert_uint_eq(lh_f32_to_bf16(from_bits(0x7fab0000)), 0x7feb); /* payload kept */
    for (uint32_t b = 0; b < 0x10000; b++) {
        float f = lh_bf16_to_f32((uint16_t)b);
        ck_assert_uint_eq(bits(f), b << 16);
        if (!isnan(f)) ck_assert_uint_eq(lh_f32_to_bf16(f), b);
    }
}
END_TEST

START_TEST(test_convert) {
    float f[6] = {1.0f, -2.5f, 65504.0f, 1e-6f, INFINITY, NAN}, back[6];
    uint16_t h[6], b[6];
    ck_assert_int_eq(lh_convert(h, LH_DTYPE_F16, f, LH_DTYPE_F32, 6), LH_OK);
    ck_assert_uint_eq(h[0], 0x3c00);
    ck_assert_uint_eq(h[1], 0xc100);
    ck_assert_uint_eq(h[2], 0x7bff);
    ck_assert_uint_eq(h[3], 0x0011); /* subnormal */
    ck_assert_uint_eq(h[4], 0x7c00);
    ck_assert_uint_eq(h[5] & 0x7e00, 0x7e00);
    ck_assert_int_eq(lh_convert(b, LH_DTYPE_BF16, h, LH_DTYPE_F16, 6), LH_OK);
    ck_assert_uint_eq(b[0], 0x3f80);
    ck_assert_uint_eq(b[1], 0xc020);
    ck_assert_int_eq(lh_convert(back, LH_DTYPE_F32, b, LH_DTYPE_BF16, 6), LH_OK);
    ck_assert_float_eq(back[1], -2.5f);
    ck_assert(isinf(back[4]) && isnan(back[5]));

    int32_t i32[3] = {-7, 0, 16777217};
    double d[3];
    ck_assert_int_eq(lh_convert(d, LH_DTYPE_F64, i32, LH_DTYPE_I32, 3), LH_OK);
    ck_assert(d[0] == -7.0 && d[2] == 16777217.0);
    ck_assert_int_eq(lh_convert(f, LH_DTYPE_F32, d, LH_DTYPE_F64, 3), LH_OK);
    ck_assert(f[0] == -7.0f && f[2] == 16777216.0f);
    uint8_t mask[3] = {0, 1, 7};
    ck_assert_int_eq(lh_convert(f, LH_DTYPE_F32, mask, LH_DTYPE_BOOL, 3), LH_OK);
    ck_assert(f[0] == 0.0f && f[1] == 1.0f && f[2] == 1.0f);
    /* float8: e4m3fn has no infinity and one NaN pattern; e5m2 is half a binary16 */
    uint8_t e4m3[6] = {0x38, 0x3c, 0x7e, 0x7f, 0x01, 0xb8};
    ck_assert_int_eq(lh_convert(f, LH_DTYPE_F32, e4m3, LH_DTYPE_F8_E4M3, 6), LH_OK);
    ck_assert(f[0] == 1.0f && f[1] == 1.5f && f[2] == 448.0f && isnan(f[3]) && f[4] == 0x1p-9f &&
              f[5] == -1.0f);
    uint8_t e5m2[4] = {0x3c, 0x7b, 0x7c, 0x01};
    ck_assert_int_eq(lh_convert(f, LH_DTYPE_F32, e5m2, LH_DTYPE_F8_E5M2, 4), LH_OK);
    ck_assert(f[0] == 1.0f && f[1] == 57344.0f && isinf(f[2]) && f[3] == 0x1p-16f);
    /* same type copies; integer destinations are not offered */
    int32_t copy[3];
    ck_assert_int_eq(lh_convert(copy, LH_DTYPE_I32, i32, LH_DTYPE_I32, 3), LH_OK);
    ck_assert(!memcmp(copy, i32, sizeof copy));
    ck_assert_int_eq(lh_convert(copy, LH_DTYPE_I32, f, LH_DTYPE_F32, 3), LH_ERR_UNSUPPORTED);
    ck_assert_int_eq(lh_convert(f, LH_DTYPE_F32, f, LH_DTYPE_COUNT, 3), LH_ERR_UNSUPPORTED);
    /* unaligned buffers */
    unsigned char raw[1 + 3 * 4];
    float three[3] = {0.5f, -1.0f, 2.0f}, out3[3];
    memcpy(raw + 1, three, sizeof three);
    ck_assert_int_eq(lh_convert(h, LH_DTYPE_F16, raw + 1, LH_DTYPE_F32, 3), LH_OK);
    ck_assert_int_eq(lh_convert(out3, LH_DTYPE_F32, h, LH_DTYPE_F16, 3), LH_OK);
    ck_assert(!memcmp(out3, three, sizeof three));
}
END_TEST

START_TEST(test_dtype_names) {
    for (int d = 0; d < LH_DTYPE_COUNT; d++) {
        lh_dtype back;
        ck_assert_int_eq(lh_dtype_from_name(&back, lh_dtype_name((lh_dtype)d)), 0);
        ck_assert_int_eq(back, d);
        ck_assert_uint_gt(lh_dtype_size((lh_dtype)d), 0);
    }
    lh_dtype x;
    ck_assert_int_eq(lh_dtype_from_name(&x, "f32"), -1);
    ck_assert_str_eq(lh_dtype_name(LH_DTYPE_COUNT), "?");
    ck_assert_uint_eq(lh_dtype_size(LH_DTYPE_COUNT), 0);
    ck_assert_uint_eq(lh_dtype_size(LH_DTYPE_BF16), 2);
}
END_TEST

/* ---- lorahost inspect ---- */

typedef struct run_result {
    int status;
    char *out, *err;
} run_result;

/* Run `lorahost <args>` with stdout and stderr captured. */
static run_result run_cli(const char *args) {
    lh_path out = tmp("cli.out"), errp = tmp("cli.err");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s/bin/lorahost' %s >'%s' 2>'%s'", build_dir(), args, out.s,
             errp.s);
    int st = system(cmd);
    ck_assert_msg(st != -1 && WIFEXITED(st), "cannot run: %s", cmd);
    run_result r = {WEXITSTATUS(st), NULL, NULL};
    size_t len;
    unsigned char *buf = slurp(out.s, &len);
    r.out = realloc(buf, len + 1);
    r.out[len] = '\0';
    buf = slurp(errp.s, &len);
    r.err = realloc(buf, len + 1);
    r.err[len] = '\0';
    return r;
}

static void run_free(run_result *r) {
    free(r->out);
    free(r->err);
}

#define ASSERT_HAS(text, part)                                                                     \
    ck_assert_msg(strstr((text), (part)) != NULL, "no '%s' in:\n%s", (part), (text))

START_TEST(test_inspect_text) {
    run_result r = run_cli(pathf("inspect '%s'", fixture("interop_py.safetensors").s).s);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    ck_assert_str_eq(r.err, "");
    ASSERT_HAS(r.out, "metadata: 1 key\n");
    ASSERT_HAS(r.out, "\\n\\t\"q\" \\ / \\x01 \\x1f \\x7f \\x08 \\x0c \\x0d end\n");
    ASSERT_HAS(r.out, "tensors: 17\n");
    ASSERT_HAS(r.out, "  bf16.cube          BF16     [2, 3, 2]              24\n");
    ASSERT_HAS(r.out, "  i64.scalar         I64      []                      8\n");
    ASSERT_HAS(r.out, "totals: 17 tensors, 83 parameters, 214 bytes\n");
    ASSERT_HAS(r.out, "  F16      2 tensors, 8 parameters, 16 bytes\n");
    ASSERT_HAS(r.out, "looks like: unknown\n");
    /* name order */
    ck_assert(strstr(r.out, "bf16.cube") < strstr(r.out, "bool.mask"));
    ck_assert(strstr(r.out, "u8.img") < strstr(r.out, "unicode"));
    run_free(&r);

    r = run_cli(pathf("inspect '%s'", fixture("meta_py.safetensors").s).s);
    ck_assert_msg(r.status == 0, "exit status %d, stderr: %s", r.status, r.err);
    ASSERT_HAS(r.out, "looks like: LoRA adapter (kohya), network_dim 8, network_alpha 4.0\n");
    ASSERT_HAS(r.out, "  format = pt\n");
    ck_assert(strstr(r.out, "  empty = \n") < strstr(r.out, "  format = pt\n"));
    run_free(&r);
}
END_TEST

/* Long values are cut at a character boundary; a file may hold no tensors. */
START_TEST(test_inspect_long_metadata) {
    char value[401] = {0};
    for (int i = 0; i < 200; i++) memcpy(value + 2 * i, "\xc3\xa9", 2);
    lh_st_writer *w;
    lh_error err = {0};
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add_meta(w, "long", value, &err), LH_OK);
    lh_path path = tmp("long.safetensors");
    ck_assert_int_eq(lh_st_save(w, path.s, &err), LH_OK);
    lh_st_writer_destroy(w);
    run_result r = run_cli(pathf("inspect '%s'", path.s).s);
    ck_assert_msg(r.status == 0, "exit status %d, stderr: %s", r.status, r.err);
    value[160] = '\0';
    ASSERT_HAS(r.out, pathf("  long = %s...\n", value).s);
    ASSERT_HAS(r.out, "tensors: 0\n\ntotals: 0 tensors, 0 parameters, 0 bytes\n");
    run_free(&r);
}
END_TEST

START_TEST(test_inspect_json) {
    lh_path fix = fixture("interop_py.safetensors");
    run_result r = run_cli(pathf("inspect --json '%s'", fix.s).s);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    json_error_t je;
    json_t *root = json_loads(r.out, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(root != NULL, "bad JSON: %s", je.text);
    json_t *tensors = json_object_get(root, "tensors");
    ck_assert_uint_eq(json_array_size(tensors), 17);
    json_t *first = json_array_get(tensors, 0);
    ck_assert_str_eq(json_string_value(json_object_get(first, "name")), "bf16.cube");
    ck_assert_str_eq(json_string_value(json_object_get(first, "dtype")), "BF16");
    ck_assert_int_eq(json_integer_value(json_object_get(first, "bytes")), 24);
    ck_assert_int_eq(json_array_size(json_object_get(first, "shape")), 3);
    json_t *totals = json_object_get(root, "totals");
    ck_assert_int_eq(json_integer_value(json_object_get(totals, "parameters")), 83);
    ck_assert_int_eq(json_integer_value(json_object_get(totals, "bytes")), 214);
    json_t *f16 = json_object_get(json_object_get(totals, "by_dtype"), "F16");
    ck_assert_int_eq(json_integer_value(json_object_get(f16, "tensors")), 2);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_object_get(root, "metadata"), INTEROP_META[0][0])),
        INTEROP_META[0][1]);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_object_get(root, "looks_like"), "kind")), "unknown");
    ck_assert_int_eq(json_integer_value(json_object_get(root, "size")), 1414);
    json_decref(root);
    run_free(&r);

    r = run_cli(pathf("inspect '%s' --json", fixture("meta_py.safetensors").s).s);
    ck_assert_msg(r.status == 0, "exit status %d, stderr: %s", r.status, r.err);
    root = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(root);
    json_t *kind = json_object_get(root, "looks_like");
    ck_assert_str_eq(json_string_value(json_object_get(kind, "kind")), "lora_kohya");
    ck_assert_str_eq(json_string_value(json_object_get(kind, "network_dim")), "8");
    ck_assert_str_eq(json_string_value(json_object_get(kind, "network_alpha")), "4.0");
    json_decref(root);
    run_free(&r);
}
END_TEST

START_TEST(test_inspect_bad_input) {
    const bad_case *c = &BAD[_i];
    size_t len;
    unsigned char *buf = bad_image(c, &len);
    lh_path path = tmp(c->name);
    spit(path.s, buf, len);
    free(buf);
    run_result r = run_cli(pathf("inspect '%s'", path.s).s);
    ck_assert_msg(r.status == 1, "%s: exit status %d, stderr: %s", c->name, r.status, r.err);
    ck_assert_str_eq(r.out, "");
    lh_path head = pathf("lorahost inspect: %s: ", path.s);
    ck_assert_msg(!strncmp(r.err, head.s, strlen(head.s)), "stderr: %s", r.err);
    ASSERT_HAS(r.err, c->expect);
    char *nl = strchr(r.err, '\n');
    ck_assert_msg(nl && nl[1] == '\0', "stderr is not exactly one line: %s", r.err);
    run_free(&r);
}
END_TEST

START_TEST(test_inspect_usage) {
    run_result r = run_cli("inspect");
    ck_assert_msg(r.status == 2, "exit status %d, stderr: %s", r.status, r.err);
    ASSERT_HAS(r.err, "no FILE given");
    run_free(&r);
    r = run_cli("inspect --bogus x");
    ck_assert_msg(r.status == 2, "exit status %d, stderr: %s", r.status, r.err);
    ASSERT_HAS(r.err, "unknown option '--bogus'");
    run_free(&r);
    r = run_cli("inspect a b");
    ck_assert_msg(r.status == 2, "exit status %d, stderr: %s", r.status, r.err);
    ASSERT_HAS(r.err, "one FILE only");
    run_free(&r);
    r = run_cli("inspect --help");
    ck_assert_msg(r.status == 0, "exit status %d, stderr: %s", r.status, r.err);
    ck_assert_msg(!strncmp(r.out, "usage: lorahost inspect FILE [--json]", 37), "%s", r.out);
    run_free(&r);
    r = run_cli(pathf("inspect '%s'", tmp("missing.safetensors").s).s);
    ck_assert_msg(r.status == 1, "exit status %d, stderr: %s", r.status, r.err);
    ASSERT_HAS(r.err, "missing.safetensors: cannot open: No such file or directory\n");
    run_free(&r);
}
END_TEST

static const struct {
    const char *key, *kind;
} KINDS[] = {
    {"lora_unet_down_blocks_0.hada_w1_a", "lycoris_loha"},
    {"lora_te_text_model_encoder.lokr_w1", "lycoris_lokr"},
    {"lora_unet_down_blocks_0_attn.lora_down.weight", "lora_kohya"},
    {"lora_te_text_model_encoder_layers_0.lora_down.weight", "lora_kohya"},
    {"lora_te2_text_model_encoder_layers_0.lora_down.weight", "lora_kohya"},
    {"unet.down_blocks.0.attn.to_q.lora_A.weight", "lora_peft"},
    {"down_blocks.0.attentions.0.processor.to_q_lora.down.weight", "lora_diffusers_old"},
    {"model.diffusion_model.input_blocks.0.0.weight", "sd_checkpoint"},
    {"first_stage_model.decoder.conv_in.weight", "sd_checkpoint"},
    {"encoder.down_blocks.0.resnets.0.conv1.weight", "diffusers_vae"},
    {"decoder.conv_in.weight", "diffusers_vae"},
    {"down_blocks.0.resnets.0.conv1.weight", "diffusers_unet"},
    {"text_model.embeddings.position_embedding.weight", "diffusers_text_encoder"},
    {"something.else", "unknown"},
};

START_TEST(test_inspect_looks_like) {
    lh_st_writer *w;
    lh_error err = {0};
    float x = 0;
    int64_t one = 1;
    ck_assert_int_eq(lh_st_writer_create(&w, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, "aaa.unrelated", LH_DTYPE_F32, 1, &one, &x, &err), LH_OK);
    ck_assert_int_eq(lh_st_writer_add(w, KINDS[_i].key, LH_DTYPE_F32, 1, &one, &x, &err), LH_OK);
    lh_path path = tmp("kind.safetensors");
    ck_assert_int_eq(lh_st_save(w, path.s, &err), LH_OK);
    lh_st_writer_destroy(w);
    run_result r = run_cli(pathf("inspect --json '%s'", path.s).s);
    ck_assert_msg(r.status == 0, "exit status %d, stderr: %s", r.status, r.err);
    json_error_t je;
    json_t *root = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(root);
    const char *kind =
        json_string_value(json_object_get(json_object_get(root, "looks_like"), "kind"));
    ck_assert_msg(kind && !strcmp(kind, KINDS[_i].kind), "%s: got %s, want %s", KINDS[_i].key, kind,
                  KINDS[_i].kind);
    json_decref(root);
    run_free(&r);
}
END_TEST

/* ---- Suite ---- */

static Suite *safetensors_suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("reader");
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_add_loop_test(tc, test_bad_input_open, 0, N_BAD);
    tcase_add_loop_test(tc, test_good_input, 0, N_GOOD);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_many_tensors);
    suite_add_tcase(s, tc);

    tc = tcase_create("interop");
    tcase_add_test(tc, test_interop_read_python);
    tcase_add_test(tc, test_interop_write_like_python);
    tcase_add_test(tc, test_interop_lorahost_fixture);
    tcase_add_test(tc, test_interop_metadata);
    suite_add_tcase(s, tc);

    tc = tcase_create("writer");
    tcase_add_test(tc, test_roundtrip_all_dtypes);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_save_atomic);
    tcase_add_test(tc, test_writer_header_text);
    suite_add_tcase(s, tc);

    tc = tcase_create("dtype");
    tcase_add_test(tc, test_f16_known);
    tcase_add_test(tc, test_f16_exhaustive);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_convert);
    tcase_add_test(tc, test_dtype_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("inspect");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_inspect_text);
    tcase_add_test(tc, test_inspect_json);
    tcase_add_test(tc, test_inspect_long_metadata);
    tcase_add_loop_test(tc, test_inspect_bad_input, 0, N_BAD);
    tcase_add_test(tc, test_inspect_usage);
    tcase_add_loop_test(tc, test_inspect_looks_like, 0, (int)(sizeof KINDS / sizeof KINDS[0]));
    suite_add_tcase(s, tc);
    return s;
}

/* Remove the scratch directory (flat, plus the test's own subdirectories). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            chmod(path, 0755);
            remove_tree(path);
        } else {
            unlink(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s/tests/st-XXXXXX", build_dir());
    if (!mkdtemp(g_tmp)) {
        fprintf(stderr, "cannot create %s: %s\n", g_tmp, strerror(errno));
        return 1;
    }
    SRunner *sr = srunner_create(safetensors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tree(g_tmp);
    return failed ? 1 : 0;
}
