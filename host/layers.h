/* The layers of a loaded model that adapters may change: every linear and
 * convolution weight of the U-Net and the text encoder, by its diffusers
 * module name, with its shape, where its weight lives in backend memory and
 * which U-Net block it belongs to. Adapter files are matched against these
 * names (host/adapter_keys.h), merged mode rewrites `w`/`b` in place, and
 * runtime mode hangs a list of adapter contributions on the layer that the
 * forward passes apply right after the base op (lh_layers_runtime). */
#ifndef LH_HOST_LAYERS_H
#define LH_HOST_LAYERS_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "error.h"
#include "lorahost/plugin.h"

typedef struct lh_clip lh_clip;
typedef struct lh_unet lh_unet;

typedef enum lh_layer_part {
    LH_LAYER_UNET = 0,
    LH_LAYER_TE, /* the text encoder */
    LH_LAYER_PART_COUNT
} lh_layer_part;

/* Which per-block scale a U-Net layer takes, as diffusers' set_adapters
 * applies {"down": .., "mid": .., "up": ..}: every layer of a down_blocks.i /
 * up_blocks.i that has attentions, and mid_block's attention. */
typedef enum lh_layer_block {
    LH_BLOCK_NONE = 0, /* the rest: conv_in, time_embedding, conv_out, blocks
                          without attention, mid_block's resnets; the text encoder */
    LH_BLOCK_DOWN,
    LH_BLOCK_MID,
    LH_BLOCK_UP
} lh_layer_block;

/* One adapter contribution applied at run time: y += desc->forward(x, scale). */
typedef struct lh_layer_term {
    const void *desc; /* const lh_adapter_desc * */
    void *state;
    double scale;
    lh_tensor *const *grads; /* training: the adapter part's gradient buffers, NULL: none */
} lh_layer_term;

typedef struct lh_layer {
    char name[112];        /* "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                              "text_model.encoder.layers.0.self_attn.q_proj" */
    char kohya[112];       /* name with '.' -> '_', as kohya files spell it */
    char kohya_ldm[112];   /* U-Net: the LDM name (input_blocks_1_1_proj_in), as files
                              made from single-file checkpoints (ComfyUI) spell it; "" if none */
    lh_layer_part part;
    lh_layer_block block;
    int block_index;       /* i of down_blocks.i / up_blocks.i, 0 otherwise */
    int ndim;              /* 2: linear (and 1x1 convs run as linears), 4: conv */
    int64_t shape[4];      /* [out, in] or [out, in, kh, kw] */
    int stride, pad;       /* ndim 4 */
    float *w, *b;          /* backend memory; b may be NULL */
    lh_dtype wdt;          /* how w is held: F32, or F16/BF16 (the U-Net's half storage) */
    /* Runtime mode: terms applied after the base op (NULL/0 when none). */
    lh_layer_term *terms;
    int n_terms;
} lh_layer;

typedef struct lh_layers {
    lh_backend *be; /* where the weights live */
    lh_layer *v;
    size_t n;
    /* open-addressing index: weight pointer -> layer (size a power of two) */
    int32_t *by_w;
    size_t by_w_size;
    int n_runtime; /* layers with terms: the forward passes skip lookups when 0 */
    int n_runtime_unet; /* of them, the U-Net's (its forward runs as a graph when 0) */
    /* Training: LoRA dropout on the terms' input, x -> x * mask / (1 - p),
     * the mask a hash of (dropout_seed, layer, element): the backward and a
     * checkpointed recompute see the same mask as the forward. 0: off. */
    double dropout;
    uint64_t dropout_seed;
} lh_layers;

/* Build the table for a model's U-Net and text encoder (either may be NULL). */
lh_status lh_layers_build(lh_layers *t, lh_backend *be, lh_unet *unet, lh_clip *clip,
                          lh_error *err);
void lh_layers_free(lh_layers *t);

/* The model moved a weight (the U-Net's half storage): the layer whose
 * weight was `old`, if any, now reads `now`, held in `dtype`. */
void lh_layers_moved(lh_layers *t, const float *old, float *now, lh_dtype dtype);

/* The layer called `name` (diffusers module name) in `part`, or -1. */
LH_API int64_t lh_layers_find(const lh_layers *t, lh_layer_part part, const char *name);
/* The same by kohya spelling (dots as underscores; for the U-Net also its
 * LDM name spelt so), or -1. */
LH_API int64_t lh_layers_find_kohya(const lh_layers *t, lh_layer_part part, const char *name);
LH_API size_t lh_layer_numel(const lh_layer *l);

/* Runtime mode, called by the forward passes after computing a layer's
 * base output. Does nothing unless the layer whose weight is `w` has terms.
 * Linear: y [rows, out], x [rows, in] (n = rows, h = w_ = 1). Conv:
 * y [n, out, ho, wo], x [n, in, h, w_]. With `act` F16 or BF16 (mixed
 * precision) y is rounded to it after the terms, as the base op rounded its
 * output; the backward so rounds dx. */
lh_status lh_layers_runtime(const lh_layers *t, const float *w, float *y, const float *x,
                            int64_t n, int64_t h, int64_t w_, lh_dtype act, lh_error *err);

/* Training, the backward of lh_layers_runtime for the same layer and
 * shapes: dx += sum of the terms' (df/dx)^T dy (dx may be NULL), and each
 * term's parameter gradients accumulate into its grads (if any). dy has
 * y's shape, x is the layer input the forward saw. */
lh_status lh_layers_runtime_backward(const lh_layers *t, const float *w, float *dx,
                                     const float *dy, const float *x, int64_t n, int64_t h,
                                     int64_t w_, lh_dtype act, lh_error *err);

#endif
