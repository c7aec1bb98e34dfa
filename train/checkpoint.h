/* The trainer's crash-safe checkpoint store: one safetensors file per saved
 * step plus a manifest with each file's size and CRC-32, written so that a
 * crash (kill -9, power loss) at any instant leaves a loadable store.
 *
 * Directory layout (DIR is the store, one writer process at a time):
 *   DIR/checkpoint-<step, %08lld>.safetensors   tensors + __metadata__
 *   DIR/checkpoints.json                          the manifest
 *   DIR/<either name>.tmp.<pid>                   a write in progress (or a
 *                                                 killed one): never read
 *
 * A checkpoint file is plain safetensors (any dtype: F32 weights and Adam
 * moments, U8/I64/U64 RNG states, ...). Its __metadata__ holds the caller's
 * string pairs and "step" (reserved, written by the store).
 *
 * The manifest, in step order, oldest first:
 *   {"format": "lorahost-checkpoints", "version": 1,
 *    "checkpoints": [{"file": "checkpoint-00000010.safetensors", "step": 10,
 *                     "size": 123456, "crc32": "1a2b3c4d"}, ...]}
 * crc32 is zlib's CRC-32 of the whole file as 8 lower-case hex digits; the
 * file name must be the canonical name for the step.
 *
 * lh_ckpt_save(step S), each stage durable before the next starts:
 *   1. remove stale *.tmp.* files (a killed writer's);
 *   2. if the manifest lists steps >= S (a run resumed from an earlier
 *      checkpoint), rewrite it without them first;
 *   3. write the checkpoint: temp file, fsync, rename, fsync DIR (lh_st_save);
 *   4. size + CRC-32 of the file as written; write the manifest the same way
 *      with the new entry appended and only the newest keep_last entries;
 *   5. delete checkpoint files the new manifest does not list.
 * The manifest is the commit point: a checkpoint counts once 4 is done.
 *
 * lh_ckpt_open_latest: the newest manifest entry whose file exists with the
 * listed size and CRC, parses, and carries the right "step". A bad entry is
 * skipped with a warning naming the file and the fault (falling back to the
 * previous one). With no manifest, a corrupt one, or no good entry left, the
 * directory is scanned for checkpoint-*.safetensors files not already found
 * bad; those are checked by parsing only (no CRC), and a warning says so.
 * Warnings go to the log (source "checkpoint") and to lh_ckpt_warnings. */
#ifndef LH_TRAIN_CHECKPOINT_H
#define LH_TRAIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"

#define LH_CKPT_MANIFEST "checkpoints.json"
#define LH_CKPT_STEP_KEY "step" /* reserved __metadata__ key */

/* One tensor to save; data (numel x dtype size bytes, little-endian) is
 * only read during the call. */
typedef struct lh_ckpt_tensor {
    const char *name;
    lh_dtype dtype;
    int ndim;
    int64_t shape[LH_MAX_DIMS];
    const void *data;
} lh_ckpt_tensor;

/* One __metadata__ pair (UTF-8); the key must not be LH_CKPT_STEP_KEY. */
typedef struct lh_ckpt_meta {
    const char *key, *value;
} lh_ckpt_meta;

/* Save step `step` (>= 0) into `dir` (created if missing, parent must
 * exist) and keep the newest `keep_last` (>= 1) checkpoints. On failure the
 * store still loads what it loaded before. */
LH_API lh_status lh_ckpt_save(const char *dir, int64_t step, int keep_last,
                              const lh_ckpt_tensor *tensors, size_t n_tensors,
                              const lh_ckpt_meta *meta, size_t n_meta, lh_error *err);

/* An open (validated) checkpoint. */
typedef struct lh_ckpt lh_ckpt;

/* Open the newest good checkpoint in `dir`. LH_ERR_NOT_FOUND when there is
 * none (an empty or missing directory: a fresh run), with a message that
 * lists what was rejected. Reads nothing but DIR; removes nothing. */
LH_API lh_status lh_ckpt_open_latest(lh_ckpt **out, const char *dir, lh_error *err);
LH_API void lh_ckpt_close(lh_ckpt *c);

LH_API int64_t lh_ckpt_step(const lh_ckpt *c);
LH_API const char *lh_ckpt_path(const lh_ckpt *c);
/* The fallback warnings of the open, one per line; "" when there were none. */
LH_API const char *lh_ckpt_warnings(const lh_ckpt *c);
/* The underlying file, for listing tensors and metadata (lh_st_*). */
LH_API const lh_st_file *lh_ckpt_file(const lh_ckpt *c);
/* The __metadata__ value for key, or NULL. */
LH_API const char *lh_ckpt_meta_find(const lh_ckpt *c, const char *key);

/* Copy tensor `name` into dst (numel x dtype size bytes). Its dtype and
 * shape must equal dtype/ndim/shape exactly: LH_ERR_NOT_FOUND or
 * LH_ERR_SHAPE with a message naming the file, the tensor, and both shapes. */
LH_API lh_status lh_ckpt_read(void *dst, const lh_ckpt *c, const char *name, lh_dtype dtype,
                              int ndim, const int64_t *shape, lh_error *err);

/* zlib's CRC-32 (polynomial 0xEDB88320, reflected): start with crc = 0 and
 * feed the running value back for the next chunk. */
LH_API uint32_t lh_crc32(uint32_t crc, const void *buf, size_t n);

#endif
