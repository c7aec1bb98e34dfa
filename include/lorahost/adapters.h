/* Adapters (LoRA, LoCon, LoHa, LoKr, DoRA, full diffs) on a loaded model:
 * load files, choose which are active with which scales, unload — between
 * generations, without reloading the model. The same calls serve the CLI
 * (--lora, <lora:name:scale>) and the server.
 *
 *   lh_adapter *a, *b;
 *   lh_adapter_load(&a, model, registry, "style.safetensors", NULL, &err);
 *   lh_adapter_load(&b, model, registry, "detail.safetensors", NULL, &err);
 *   lh_adapter *set[] = {a, b};
 *   double scales[] = {0.7, 0.4};
 *   lh_adapter_set(model, set, scales, 2, &err);   // generate ...
 *   lh_adapter_set(model, NULL, NULL, 0, &err);    // back to the base model
 *   lh_adapter_unload(b);
 *
 * Two modes. Runtime (the default): base weights stay untouched and every
 * adapted layer adds sum_i f_i(x, scale_i) to its output; switching is
 * free. Merged: W = W0 + sum_i dW_i(scale_i) is written into the layers for
 * full speed; W0 is kept and written back bit for bit when a layer leaves
 * the set (never subtracted). Either way a set call only touches the layers
 * whose adapters or scales changed. */
#ifndef LORAHOST_ADAPTERS_H
#define LORAHOST_ADAPTERS_H

#include <stddef.h>
#include <stdint.h>

#include "lorahost/plugin.h"
#include "lorahost/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lh_error;
typedef struct lh_model lh_model;
typedef struct lh_adapter lh_adapter;

typedef enum lh_adapter_policy {
    LH_ADAPTER_WARN = 0, /* keys that match nothing are reported and skipped */
    LH_ADAPTER_STRICT    /* ... and refused: the load fails naming them */
} lh_adapter_policy;

typedef enum lh_adapter_mode {
    LH_ADAPTER_RUNTIME = 0,
    LH_ADAPTER_MERGED
} lh_adapter_mode;

typedef struct lh_adapter_load_opts {
    lh_adapter_policy policy;
    const char *name; /* for messages and lookups; NULL: the file name without extension */
    int trainable;    /* keep the tensors as float32 master weights (training) */
} lh_adapter_load_opts;

/* What a load matched. Strings are owned by the adapter. */
#define LH_ADAPTER_MAX_KINDS 16
typedef struct lh_adapter_report {
    char format[48];         /* key families seen: "kohya", "peft", "old diffusers", joined by '+' */
    char alpha_source[64];   /* ".alpha tensors", "ss_network_alpha", "PEFT config" (diffusers'
                                lora_adapter_metadata or an adapter_config.json beside the
                                file), "none (alpha = rank)", or several joined by '+' */
    size_t n_keys;           /* tensors in the file */
    size_t n_used;           /* tensors that went into a layer */
    int32_t layers_unet, layers_te;
    int32_t n_kinds;
    struct {
        char kind[32];       /* adapter kind id: "lora", "loha", "lokr", "full" */
        char form[16];       /* "linear" or "conv" */
        int32_t layers;
    } kinds[LH_ADAPTER_MAX_KINDS];
    size_t n_unmatched;
    const char *const *unmatched; /* "key: why", n_unmatched of them */
} lh_adapter_report;

/* Per-adapter multipliers: the effective scale of a layer is
 * scale * (text_encoder | unet * down[i] | unet * mid | unet * up[i]).
 * Block factors reach what diffusers' set_adapters({"unet": {"down": ..,
 * "mid": .., "up": ..}}) reaches: every layer of down_blocks.i / up_blocks.i
 * when that block has attentions, and mid_block's attention; other U-Net
 * layers (conv_in, time_embedding, conv_out, attention-free blocks,
 * mid_block's resnets) take scale * unet. */
#define LH_ADAPTER_MAX_BLOCKS 6
typedef struct lh_adapter_weights {
    double scale;
    double text_encoder, unet;
    double down[LH_ADAPTER_MAX_BLOCKS], mid, up[LH_ADAPTER_MAX_BLOCKS];
} lh_adapter_weights;

/* scale as given, every factor 1. */
LH_API void lh_adapter_weights_init(lh_adapter_weights *w, double scale);

/* Read an adapter file (.safetensors, any of the formats host/adapter_keys.h
 * lists) for `model`: group its tensors by the layer they change, hand each
 * group to the adapter kind that recognises it (plugins in `reg`), check
 * every shape against the model. Fails (the model untouched) on a shape
 * mismatch (naming the layer and both shapes), NaN/Inf, alpha <= 0, ranks
 * that disagree, a file that matches no layer, or — with LH_ADAPTER_STRICT —
 * any unmatched key. The adapter is not active until lh_adapter_set. */
LH_API lh_status lh_adapter_load(lh_adapter **out, lh_model *model, lh_registry *reg,
                                 const char *path, const lh_adapter_load_opts *opts,
                                 struct lh_error *err);
/* Deactivate (restoring the layers it changed) and free. NULL is a no-op. */
LH_API void lh_adapter_unload(lh_adapter *a);

LH_API const lh_adapter_report *lh_adapter_get_report(const lh_adapter *a);
LH_API const char *lh_adapter_name(const lh_adapter *a);
LH_API const char *lh_adapter_path(const lh_adapter *a);

/* Make exactly these adapters active with these scales (n = 0: none), in
 * the model's current mode. Adapters must have been loaded for `model`. */
LH_API lh_status lh_adapter_set(lh_model *model, lh_adapter *const *adapters,
                                const double *scales, size_t n, struct lh_error *err);
/* The same with per-component and per-block multipliers, and the mode. */
LH_API lh_status lh_adapter_set_ex(lh_model *model, lh_adapter *const *adapters,
                                   const lh_adapter_weights *weights, size_t n,
                                   lh_adapter_mode mode, struct lh_error *err);

#ifdef __cplusplus
}
#endif

#endif
