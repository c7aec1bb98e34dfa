/* Reading and writing .safetensors files, and converting between element
 * types. The reader maps the file and hands out zero-copy views; the writer
 * produces the same bytes as Python's safetensors for the same input.
 * Format rules and error wording: docs/formats.md. */
#ifndef LORAHOST_SAFETENSORS_H
#define LORAHOST_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "lorahost/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lh_error;

/* ---- Element types ---- */

/* "F32", "BF16", ...; "?" for a value outside the enum. */
LH_API const char *lh_dtype_name(lh_dtype dtype);
/* Bytes per element; 0 for a value outside the enum. */
LH_API size_t lh_dtype_size(lh_dtype dtype);
/* The dtype with safetensors name `name` (case-sensitive): 0, or -1 if none. */
LH_API int lh_dtype_from_name(lh_dtype *out, const char *name);

/* IEEE binary16 and bfloat16 bit patterns to and from float32. Narrowing
 * rounds to nearest, ties to even, overflows to infinity, and keeps NaN a
 * NaN with its sign and top payload bits. Widening is exact. */
LH_API float lh_f16_to_f32(uint16_t bits);
LH_API uint16_t lh_f32_to_f16(float value);
LH_API float lh_bf16_to_f32(uint16_t bits);
LH_API uint16_t lh_f32_to_bf16(float value);

/* Convert n elements from src (type src_type) to dst (type dst_type). Any
 * source type; destination F32, F16, BF16 or F64, or the source type itself
 * (a copy). Buffers may be unaligned and must not overlap. BOOL reads as 0/1.
 * Returns LH_OK or LH_ERR_UNSUPPORTED. */
LH_API lh_status lh_convert(void *dst, lh_dtype dst_type, const void *src, lh_dtype src_type,
                            size_t n);

/* ---- Reading ---- */

#define LH_ST_MAX_HEADER 100000000u      /* header length limit, as the reference */
#define LH_ST_MAX_DIM_VALUE (1ull << 48) /* largest shape entry or offset */

/* One tensor of an open file. Pointers stay valid until lh_st_close. */
typedef struct lh_st_tensor {
    const char *name; /* the key in the file, UTF-8 */
    lh_dtype dtype;
    int ndim;                   /* 0 for a scalar */
    int64_t shape[LH_MAX_DIMS]; /* outermost first; unused entries 0 */
    int64_t numel;              /* product of shape (1 for a scalar) */
    uint64_t begin, end;        /* byte offsets within the data section */
    const void *data;           /* end - begin bytes, little-endian, unaligned */
} lh_st_tensor;

typedef struct lh_st_file lh_st_file;

/* Map `path` read-only and validate it. The mapping lives until lh_st_close;
 * do not truncate the file meanwhile. */
LH_API lh_status lh_st_open(lh_st_file **out, const char *path, struct lh_error *err);
/* Validate a file image in memory. `buf` is borrowed and must outlive *out;
 * `name` (may be NULL) labels messages. */
LH_API lh_status lh_st_parse(lh_st_file **out, const void *buf, size_t len, const char *name,
                             struct lh_error *err);
LH_API void lh_st_close(lh_st_file *file);

/* The path or name given at open; total size; header length (the JSON bytes). */
LH_API const char *lh_st_name(const lh_st_file *file);
LH_API size_t lh_st_size(const lh_st_file *file);
LH_API size_t lh_st_header_size(const lh_st_file *file);

/* Tensors in file order (ascending data offset); NULL past the end. */
LH_API size_t lh_st_count(const lh_st_file *file);
LH_API const lh_st_tensor *lh_st_get(const lh_st_file *file, size_t index);
/* The tensor called `name`, or NULL. O(log n). */
LH_API const lh_st_tensor *lh_st_find(const lh_st_file *file, const char *name);

/* `__metadata__` entries, sorted by key (bytewise); NULL past the end. */
LH_API size_t lh_st_meta_count(const lh_st_file *file);
LH_API const char *lh_st_meta_key(const lh_st_file *file, size_t index);
LH_API const char *lh_st_meta_value(const lh_st_file *file, size_t index);
/* The value for `key`, or NULL. O(log n). */
LH_API const char *lh_st_meta_find(const lh_st_file *file, const char *key);

/* Convert tensor `name` into n float32 values; n must equal its numel.
 * LH_ERR_NOT_FOUND or LH_ERR_SHAPE with a message naming file and tensor. */
LH_API lh_status lh_st_read_f32(float *dst, size_t n, const lh_st_file *file, const char *name,
                                struct lh_error *err);

/* ---- Writing ----
 * lh_st_writer_create -> lh_st_writer_add / lh_st_writer_add_meta ... ->
 * lh_st_save (any number of times) -> lh_st_writer_destroy. */

typedef struct lh_st_writer lh_st_writer;

LH_API lh_status lh_st_writer_create(lh_st_writer **out, struct lh_error *err);
LH_API void lh_st_writer_destroy(lh_st_writer *writer);

/* Add a tensor. name and shape are copied; data (numel x dtype size bytes,
 * little-endian) is borrowed until the last lh_st_save. Rejects an empty,
 * non-UTF-8 or duplicate name, "__metadata__", ndim outside 0..LH_MAX_DIMS,
 * negative or > 2^48 dimensions, and NULL data for a non-empty tensor. */
LH_API lh_status lh_st_writer_add(lh_st_writer *writer, const char *name, lh_dtype dtype, int ndim,
                                  const int64_t *shape, const void *data, struct lh_error *err);
/* Add a `__metadata__` entry (both copied, UTF-8; duplicate keys rejected). */
LH_API lh_status lh_st_writer_add_meta(lh_st_writer *writer, const char *key, const char *value,
                                       struct lh_error *err);

/* Write the file atomically: `<path>.tmp.<pid>` in the same directory, fsync,
 * rename over path, fsync the directory. On failure the temporary file is
 * removed and an existing file at path is left as it was. Tensors are laid
 * out as Python safetensors does (its dtype order, widest first, then by
 * name), metadata keys sorted, the header padded with spaces to a multiple
 * of 8. */
LH_API lh_status lh_st_save(const lh_st_writer *writer, const char *path, struct lh_error *err);

#ifdef __cplusplus
}
#endif

#endif
