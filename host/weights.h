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
    size_t n, cap;
    size_t bytes; /* uploaded so far */
} lh_wstore;

void lh_wstore_init(lh_wstore *ws, lh_backend *be);
void lh_wstore_free(lh_wstore *ws);

/* Upload tensor `key` of f, which must have exactly shape[ndim] and a float
 * dtype (F32, F16, BF16) and finite values; *out gets the backend copy. */
lh_status lh_wstore_load(float **out, lh_wstore *ws, const lh_st_file *f, const char *key,
                         int ndim, const int64_t *shape, lh_error *err);

/* Backend scratch memory owned by the store (zeroed); *out NULL on failure. */
lh_status lh_wstore_alloc(float **out, lh_wstore *ws, size_t n_floats, lh_error *err);

#endif
