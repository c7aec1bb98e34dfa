/* Adapters inside the host: a loaded file (lh_adapter: one plugin instance
 * per layer it changes) and the per-model state that applies a set of them
 * (lh_adapt: the layer table, the active set, the original weights of merged
 * layers). The public calls are in include/lorahost/adapters.h. */
#ifndef LH_HOST_ADAPTER_H
#define LH_HOST_ADAPTER_H

#include "error.h"
#include "layers.h"
#include "lorahost/lorahost.h"
#include "model.h"

/* One layer's share of an adapter file. */
typedef struct lh_adapter_part {
    size_t layer;                /* index in the model's layer table */
    const lh_adapter_desc *desc; /* the kind that owns it */
    void *state;
    lh_adapter_tensor *tensors;  /* suffixes and tensors handed to create(); after it the
                                    tensors keep their shapes but no data */
    char **keys;                 /* each tensor's key in the file */
    lh_tensor **grads;           /* training: float32 gradients, one per tensor, or NULL */
    int32_t n_tensors;
    double alpha;                /* what create() was given (NaN: none) */
} lh_adapter_part;

struct lh_adapter {
    lh_model *model; /* NULL once the model is closed */
    char *path, *name;
    lh_adapter_part *parts;
    size_t n_parts;
    lh_tensor **owned; /* float32 copies of the file's tensors: while loading, or for
                          good when trainable (the master weights) */
    size_t n_owned;
    int trainable;
    char **unmatched;
    lh_adapter_report report;
};

/* Per-layer bookkeeping of what is applied. */
typedef struct lh_adapt_layer {
    float *orig_w, *orig_b; /* host copies of the base while merged (NULL otherwise) */
    lh_layer_term *applied; /* what the layer holds now (runtime or merged) */
    int n_applied;
    int merged;
} lh_adapt_layer;

typedef struct lh_adapt {
    lh_layers layers;
    lh_adapt_layer *ls; /* [layers.n] */
    lh_adapter_mode mode;
    lh_adapter **loaded; /* every adapter loaded for the model */
    size_t n_loaded, cap_loaded;
    lh_adapter **active; /* the current set and its weights */
    lh_adapter_weights *weights;
    size_t n_active;
    size_t n_layer_updates; /* layers re-applied since creation (tests: what a switch touches) */
} lh_adapt;

/* The model's adapter state, created on first use. */
LH_API lh_status lh_adapt_get(lh_adapt **out, lh_model *m, lh_error *err);
/* Called by lh_model_close: detaches every adapter, frees the state. */
void lh_adapt_free(lh_model *m);
/* Take an adapter off the model's lists (reapplying the set without it). */
void lh_adapt_forget(lh_model *m, lh_adapter *a);
/* The base weight of layer i as loaded (the saved original while merged),
 * float32 host memory [numel]; caller frees. NULL on failure. */
float *lh_adapt_base_weight(lh_adapt *ad, size_t i, lh_error *err);

/* Training: zeroed float32 gradient buffers for every tensor of every part
 * (the file's shapes), picked up by the runtime terms at the next set;
 * lh_layers_runtime_backward accumulates into them. Idempotent. */
LH_API lh_status lh_adapter_grads_enable(lh_adapter *a, lh_error *err);
LH_API void lh_adapter_grads_zero(lh_adapter *a);
/* Multiply every gradient by inv_scale (1 / loss scale) and return how many
 * are NaN or Inf afterwards (torch's GradScaler.unscale_ and found_inf). */
LH_API int64_t lh_adapter_grads_unscale(lh_adapter *a, float inv_scale);
/* The gradient of the tensor the file calls `key`, or NULL. */
LH_API const lh_tensor *lh_adapter_grad(const lh_adapter *a, const char *key);

/* Training an adapter loaded with opts.trainable: its tensors stay in the
 * adapter as float32 master weights. lh_adapter_param gives parameter i
 * (0 <= i < lh_adapter_n_params) with the file's key and its gradient (NULL
 * until lh_adapter_grads_enable); an optimizer updates the tensors in
 * place, then lh_adapter_refresh hands the new values to the kinds (runtime
 * mode; every active layer picks them up). */
LH_API size_t lh_adapter_n_params(const lh_adapter *a);
LH_API lh_status lh_adapter_param(lh_adapter *a, size_t i, const char **key, lh_tensor **value,
                                  lh_tensor **grad);
LH_API lh_status lh_adapter_refresh(lh_adapter *a, lh_error *err);

/* lh_adapter_load from an open file (only read during the call); `path`
 * names it. */
LH_API lh_status lh_adapter_load_st(lh_adapter **out, lh_model *model, lh_registry *reg,
                                    const lh_st_file *f, const char *path,
                                    const lh_adapter_load_opts *opts, lh_error *err);

/* dW of one adapter on layer `name` at `scale` (tests and tools):
 * out float32 [numel of the layer], zeroed first; bias_out [out] or NULL. */
LH_API lh_status lh_adapter_layer_delta(const lh_adapter *a, lh_layer_part part, const char *name,
                                 double scale, float *out, size_t numel, float *bias_out,
                                 lh_error *err);

#endif
