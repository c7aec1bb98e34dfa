/* PNG files through libspng: RGB8 images written atomically with the
 * generation parameters in a text chunk (AUTOMATIC1111's "parameters"
 * convention, so its PNG Info tab and other tools read them back), and
 * init images read as RGB8 whatever their colour type and depth. */
#ifndef LH_HOST_PNG_H
#define LH_HOST_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

#define LH_PNG_MAX_SIDE 16384

/* Write rgb [height][width][3] to `path`: `<path>.tmp.<pid>` in the same
 * directory, fsync, rename over path, fsync the directory; on failure the
 * temporary file is removed and an existing file at path left as it was.
 * If key and text are not NULL, text (UTF-8) goes into a tEXt chunk named
 * key when it is ASCII, else into an uncompressed iTXt chunk (what PIL,
 * and so A1111, writes for text that is not Latin-1). */
LH_API lh_status lh_png_write(const char *path, const uint8_t *rgb, int64_t width, int64_t height,
                              const char *key, const char *text, lh_error *err);

/* lh_png_write with several text chunks, written in order (e.g. A1111's
 * "parameters" and lorahost's "lorahost_safety"); at most LH_PNG_MAX_TEXTS. */
#define LH_PNG_MAX_TEXTS 8
typedef struct lh_png_text {
    const char *key, *text;
} lh_png_text;
LH_API lh_status lh_png_write_texts(const char *path, const uint8_t *rgb, int64_t width,
                                    int64_t height, const lh_png_text *texts, size_t n_texts,
                                    lh_error *err);

/* The PNG lh_png_write_texts writes, in memory: *out is malloc'd (free()),
 * *out_len bytes. `name` only labels messages. */
LH_API lh_status lh_png_encode(void **out, size_t *out_len, const char *name, const uint8_t *rgb,
                               int64_t width, int64_t height, const lh_png_text *texts,
                               size_t n_texts, lh_error *err);

/* Read a PNG (gray, gray+alpha, RGB, RGBA or palette, 1 to 16 bits) as RGB8:
 * 16-bit samples scaled to 8 bits, alpha dropped (not composited).
 * *rgb is malloc'd [height][width][3]. Errors name the file: cannot open
 * (LH_ERR_IO or LH_ERR_NOT_FOUND), not a PNG or corrupt (LH_ERR_FORMAT),
 * larger than LH_PNG_MAX_SIDE (LH_ERR_UNSUPPORTED). */
LH_API lh_status lh_png_read(const char *path, uint8_t **rgb, int64_t *width, int64_t *height,
                             lh_error *err);

/* lh_png_read from n bytes in memory; `name` labels messages. */
LH_API lh_status lh_png_decode(const void *buf, size_t n, const char *name, uint8_t **rgb,
                               int64_t *width, int64_t *height, lh_error *err);

/* The text of chunk `key` (tEXt, zTXt or iTXt) of a PNG, malloc'd, or NULL
 * with LH_ERR_NOT_FOUND. */
LH_API lh_status lh_png_read_text(const char *path, const char *key, char **text, lh_error *err);

#endif
