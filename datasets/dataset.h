/* Training datasets in HDF5 (docs/datasets.md): images with UTF-8 captions,
 * optional per-image loss weights, optional cached VAE latents and text
 * embeddings. lh_dataset_open validates the whole layout up front (rank,
 * type and size of every dataset, overflow-checked), with HDF5 filter
 * plugins off and external links refused; reads then only fail on I/O. */
#ifndef LH_DATASETS_DATASET_H
#define LH_DATASETS_DATASET_H

#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

#define LH_DATASET_VERSION 1

typedef struct lh_dataset lh_dataset;

/* What lh_dataset_read fills (flags may be or-ed). */
enum { LH_DATASET_IMAGE = 1, LH_DATASET_LATENT = 2, LH_DATASET_TEXT = 4 };

typedef struct lh_dataset_item {
    int64_t width, height; /* the stored image's size (always set) */
    uint8_t *rgb;          /* LH_DATASET_IMAGE: [height][width][3], malloc'd */
    char *caption;         /* always: UTF-8, malloc'd */
    float weight;          /* loss weight (1 when the file has none) */
    float *latent;         /* LH_DATASET_LATENT: [c, h, w] (latent_shape), malloc'd */
    int64_t latent_shape[3];
    float *text;           /* LH_DATASET_TEXT: [tokens, dim] (text_shape), malloc'd */
    int64_t text_shape[2];
} lh_dataset_item;

LH_API lh_status lh_dataset_open(lh_dataset **out, const char *path, lh_error *err);
LH_API void lh_dataset_close(lh_dataset *d);
LH_API int64_t lh_dataset_count(const lh_dataset *d);
/* The import resolution, and whether the file holds cached latents / text
 * embeddings (with the model directory they were made from, "" if none). */
LH_API int64_t lh_dataset_resolution(const lh_dataset *d);
LH_API int lh_dataset_has_latents(const lh_dataset *d);
LH_API int lh_dataset_has_text(const lh_dataset *d);
LH_API const char *lh_dataset_cache_model(const lh_dataset *d);
/* Item i (0 <= i < count) with the parts in `what`; free with
 * lh_dataset_item_free. Asking for latents or text the file lacks is
 * LH_ERR_NOT_FOUND. */
LH_API lh_status lh_dataset_read(lh_dataset *d, int64_t i, int what, lh_dataset_item *item,
                                 lh_error *err);
LH_API void lh_dataset_item_free(lh_dataset_item *item);

#endif
