/* Model weights in backend memory: each tensor is looked up by its
 * checkpoint key, its shape checked against what the model expects (an
 * error names the file, key and both shapes), converted to float32 and
 * uploaded once. A store owns what it uploaded. */
#ifndef LH_HOST_WEIGHTS_H
#define LH_HOST_WEIGHTS_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "error.h"
#include "lorahost/safetensors.h"

typedef struct lh_wstore {
    lh_backend *be;
    void **ptrs;
    size_t *floats;  /* each one's length in values */
    lh_dtype *types; /* each one's storage: F32, or F16/BF16 (hold_half, lh_wstore_retype) */
    size_t n, cap;
    size_t bytes; /* uploaded so far */
    /* Load matrices (rank 2 and up) that the file holds in F16 or BF16 in
     * that type, as they are (no float32 copy, ever); the rest float32. */
    int hold_half;
} lh_wstore;

/* Where weights are looked up: an open safetensors file (lh_wsource_file),
 * or a view that presents another layout under the names the loaders ask
 * for (host/ldm_keys.h: single-file LDM checkpoints). find returns the
 * tensor called `key` or NULL; the tensor may be a view (data inside a
 * larger tensor, shape reinterpreted) that stays valid until the next find
 * on the same source. file_key, if not NULL, writes the key `key` has in
 * the file, so that messages name what the user can look for. */
typedef struct lh_wsource {
    const char *name; /* labels messages: the file path */
    const lh_st_tensor *(*find)(void *ctx, const char *key);
    void (*file_key)(void *ctx, const char *key, char *buf, size_t size);
    void *ctx;
    size_t count; /* tensors in the file, 0 if not meaningful */
    /* Optional, for sources that make tensors rather than look them up
     * (host/model_init.c: random initialisation): called instead of find
     * with the shape the model expects. */
    const lh_st_tensor *(*make)(void *ctx, const char *key, int ndim, const int64_t *shape);
} lh_wsource;

/* A source that reads `f` by its own keys. */
lh_wsource lh_wsource_file(const lh_st_file *f);
static inline const lh_st_tensor *lh_wsource_find(const lh_wsource *src, const char *key) {
    return src->find(src->ctx, key);
}

void lh_wstore_init(lh_wstore *ws, lh_backend *be);
void lh_wstore_free(lh_wstore *ws);

/* Upload tensor `key` of f, which must have exactly shape[ndim] and a float
 * dtype (F32, F16, BF16) and finite values; *out gets the backend copy. */
lh_status lh_wstore_load(float **out, lh_wstore *ws, const lh_st_file *f, const char *key,
                         int ndim, const int64_t *shape, lh_error *err);

/* The same from any source; messages name the key as it is in the file
 * (and the name asked for, when they differ). */
lh_status lh_wstore_load_src(float **out, lh_wstore *ws, const lh_wsource *src, const char *key,
                             int ndim, const int64_t *shape, lh_error *err);

/* Backend scratch memory owned by the store (zeroed); *out NULL on failure. */
lh_status lh_wstore_alloc(float **out, lh_wstore *ws, size_t n_floats, lh_error *err);

/* Every float32 buffer of the store rounded in place to dtype (F16, BF16;
 * the backend's round op), as a model run in that precision holds it. */
lh_status lh_wstore_round(lh_wstore *ws, lh_dtype dtype, lh_error *err);

/* How the store holds buffer w: F32, F16 or BF16; F32 for one it does not own. */
lh_dtype lh_wstore_type(const lh_wstore *ws, const void *w);

/* Hold the store's buffer *w of n values in `dtype` (F32, F16, BF16)
 * instead: a new backend buffer gets the backend's cast of it (to a half
 * type: round to nearest even, exact where the values are already rounded
 * to it; between the half types through float32), the old one is freed and
 * *w points at the new one (whose values are 2-byte halves for a half
 * type, not floats). Nothing changes on failure. */
lh_status lh_wstore_retype(lh_wstore *ws, float **w, size_t n, lh_dtype dtype, lh_error *err);

#endif
