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

/* ---- Additions (layout details: docs/datasets.md) ---- */

#define LH_DATASET_MAX_ITEMS 10000000 /* items per file */

/* The crop the import used: "center", "random" (images stored resized but
 * uncropped; the consumer crops) or "bucket". */
LH_API const char *lh_dataset_crop(const lh_dataset *d);
/* The file's layout version (1 to LH_DATASET_VERSION). */
LH_API int64_t lh_dataset_version(const lh_dataset *d);
LH_API const char *lh_dataset_path(const lh_dataset *d);
/* Stored size of item i, without reading it (0 <= i < count). */
LH_API void lh_dataset_item_size(const lh_dataset *d, int64_t i, int64_t *width, int64_t *height);
/* Cached latents: VAE scaling factor used, and the crop applied before
 * encoding ("center" for random-crop datasets, else "none"). */
LH_API float lh_dataset_cache_scaling_factor(const lh_dataset *d);
LH_API const char *lh_dataset_latent_crop(const lh_dataset *d);
/* Cached text embeddings: [tokens, dim] per item, and their model directory. */
LH_API void lh_dataset_text_shape(const lh_dataset *d, int64_t *tokens, int64_t *dim);
LH_API const char *lh_dataset_text_model(const lh_dataset *d);

/* ---- Writing (datasets/dataset_write.c) ---- */

typedef enum lh_dataset_crop_mode {
    LH_DATASET_CROP_CENTER,
    LH_DATASET_CROP_RANDOM,
    LH_DATASET_CROP_BUCKET,
    LH_DATASET_CROP_COUNT
} lh_dataset_crop_mode;

typedef struct lh_dataset_import_opts {
    int64_t resolution;       /* > 0, multiple of 8 (of 64 with buckets) */
    lh_dataset_crop_mode crop;
    int skip_bad;             /* 1: skip images that fail to decode (warning) */
    /* progress(user, done, total, name) after each image; NULL: none */
    void (*progress)(void *user, int64_t done, int64_t total, const char *name);
    void *user;
} lh_dataset_import_opts;

/* Import every *.png / *.jpg / *.jpeg of dir (sorted by name) with its
 * same-name .txt caption into a new file at out (temp + fsync + rename).
 * *n_items / *n_skipped / *n_no_caption may be NULL. */
LH_API lh_status lh_dataset_import(const char *dir, const char *out,
                                   const lh_dataset_import_opts *opts, int64_t *n_items,
                                   int64_t *n_skipped, int64_t *n_no_caption, lh_error *err);

/* Add cached latents (scaling_factor * VAE posterior mean) and text
 * embeddings (last hidden state of the caption's 77-token window) made with
 * the model directory `model`; replaces an existing cache. The file is
 * rewritten atomically (copy, add, fsync, rename). A pixel-space model (no
 * VAE) has no latents: LH_ERR_UNSUPPORTED, the file untouched. */
struct lh_model;
LH_API lh_status lh_dataset_cache(const char *path, struct lh_model *model, const char *model_path,
                                  void (*progress)(void *user, int64_t done, int64_t total,
                                                   const char *name),
                                  void *user, lh_error *err);

#endif
