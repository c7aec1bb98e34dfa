/* libFuzzer target for the safetensors reader: lh_st_parse on arbitrary bytes,
 * then every view a caller could touch, checked against the format's rules.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <stdint.h>
#include <string.h>

#include "lorahost/lorahost.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

/* Convert the first few elements of t every way lh_convert offers. */
static void convert_some(const lh_st_tensor *t) {
    enum { K = 16 };
    float f32[K];
    uint16_t half[K];
    double f64[K];
    size_t n = t->numel < K ? (size_t)t->numel : K;
    CHECK(lh_convert(f32, LH_DTYPE_F32, t->data, t->dtype, n) == LH_OK);
    CHECK(lh_convert(half, LH_DTYPE_F16, t->data, t->dtype, n) == LH_OK);
    CHECK(lh_convert(half, LH_DTYPE_BF16, t->data, t->dtype, n) == LH_OK);
    CHECK(lh_convert(f64, LH_DTYPE_F64, t->data, t->dtype, n) == LH_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lh_st_file *f;
    lh_error err = {0};
    if (lh_st_parse(&f, data, size, "fuzz", &err) != LH_OK) {
        CHECK(f == NULL && err.code < 0 && err.msg[0] != '\0' && !strchr(err.msg, '\n'));
        return 0;
    }
    CHECK(lh_st_size(f) == size && lh_st_header_size(f) + 8 <= size);
    const uint8_t *section = data + 8 + lh_st_header_size(f);
    uint64_t pos = 0;
    for (size_t i = 0; i < lh_st_count(f); i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        CHECK(t->begin == pos && t->begin <= t->end);
        CHECK(t->ndim >= 0 && t->ndim <= LH_MAX_DIMS && lh_dtype_size(t->dtype) > 0);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        CHECK(numel == t->numel);
        CHECK(t->end - t->begin == (uint64_t)t->numel * lh_dtype_size(t->dtype));
        CHECK((const uint8_t *)t->data == section + t->begin);
        CHECK(lh_st_find(f, t->name) == t);
        convert_some(t);
        pos = t->end;
    }
    CHECK(8 + lh_st_header_size(f) + pos == size);
    CHECK(lh_st_get(f, lh_st_count(f)) == NULL);
    for (size_t i = 0; i < lh_st_meta_count(f); i++) {
        const char *key = lh_st_meta_key(f, i);
        CHECK(lh_st_meta_find(f, key) == lh_st_meta_value(f, i));
        CHECK(i == 0 || strcmp(lh_st_meta_key(f, i - 1), key) < 0);
    }
    lh_st_close(f);
    return 0;
}
