/* Image operations for dataset import: PNG/JPEG decoding to RGB8, PIL's
 * antialiased bilinear resize (what torchvision's Resize does to a PIL image),
 * torchvision's CenterCrop offsets, and kohya-style aspect-ratio buckets. */
#ifndef LH_DATASETS_IMAGE_OPS_H
#define LH_DATASETS_IMAGE_OPS_H

#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

#define LH_DATASET_MAX_SIDE 16384

/* Decode a PNG or JPEG (by content, not by name) to RGB8 [h][w][3], malloc'd.
 * Errors name the file; a side over LH_DATASET_MAX_SIDE is LH_ERR_UNSUPPORTED. */
LH_API lh_status lh_image_load(const char *path, uint8_t **rgb, int64_t *w, int64_t *h,
                               lh_error *err);

/* PIL Image.resize(BILINEAR) of RGB8 src [sh][sw][3] into dst [dh][dw][3]:
 * triangle filter widened by the scale when shrinking (antialias), horizontal
 * pass then vertical, each rounded to 8 bits in PIL's fixed point. */
LH_API lh_status lh_image_resize(uint8_t *dst, int64_t dw, int64_t dh, const uint8_t *src,
                                 int64_t sw, int64_t sh, lh_error *err);

/* torchvision Resize(size) output for a w x h image: the short side becomes
 * `size`, the long side int(size * long / short). */
LH_API void lh_image_resize_shape(int64_t w, int64_t h, int64_t size, int64_t *ow, int64_t *oh);

/* torchvision CenterCrop offset: int(round((in - out) / 2.0)), Python's round. */
LH_API int64_t lh_image_center_offset(int64_t in, int64_t out);

/* Copy the window [y0, y0 + ch) x [x0, x0 + cw) of src [sh][sw][3] into dst. */
LH_API void lh_image_crop(uint8_t *dst, const uint8_t *src, int64_t sw, int64_t x0, int64_t y0,
                          int64_t cw, int64_t ch);

/* kohya-ss make_bucket_resolutions(max_reso = (res, res), min_size, max_size,
 * divisible = 64), sorted by aspect ratio: bucket k is (w[k], h[k]).
 * min_size = max(64, floor(res / 2 / 64) * 64), max_size = floor(2 res / 64) * 64
 * (256 and 1024 at res 512: kohya's defaults). Returns the count (<= cap). */
LH_API int lh_image_buckets(int64_t res, int64_t *bw, int64_t *bh, int cap);
/* The bucket whose aspect ratio is nearest w / h (kohya: argmin |ar_b - ar|). */
LH_API int lh_image_bucket_for(const int64_t *bw, const int64_t *bh, int n, int64_t w, int64_t h);

#endif
