/* The CLIP text encoder as Stable Diffusion uses it (transformers'
 * CLIPTextModel): token + position embeddings, pre-LN transformer layers with
 * causal self-attention, final layer norm. Loads a diffusers text_encoder/
 * directory (config.json + model.safetensors) onto a compute backend and
 * turns token ids into the prompt embeddings the U-Net attends to. */
#ifndef LH_HOST_CLIP_H
#define LH_HOST_CLIP_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "error.h"
#include "lorahost/lorahost.h"

typedef enum lh_clip_act {
    LH_CLIP_ACT_QUICK_GELU, /* "quick_gelu": x * sigmoid(1.702 x), SD 1.x (OpenAI ViT-L/14) */
    LH_CLIP_ACT_GELU,       /* "gelu" (erf form): SD 2.x (OpenCLIP ViT-H/14, converted) */
    LH_CLIP_ACT_COUNT
} lh_clip_act;

/* The fields of config.json the forward pass needs (transformers'
 * CLIPTextConfig names; a missing field takes CLIPTextConfig's default, as
 * transformers does for configs saved with only non-default values).
 * projection_dim, token ids and dropout are not needed and ignored. */
typedef struct lh_clip_config {
    int64_t vocab_size;              /* default 49408 */
    int64_t hidden_size;             /* default 512 (SD 1.x: 768, SD 2.x: 1024) */
    int64_t intermediate_size;       /* default 2048 */
    int64_t num_hidden_layers;       /* default 12 (SD 2.x as converted: 23) */
    int64_t num_attention_heads;     /* default 8 */
    int64_t max_position_embeddings; /* default 77 */
    float layer_norm_eps;            /* default 1e-5 */
    lh_clip_act hidden_act;          /* default quick_gelu */
} lh_clip_config;

typedef struct lh_clip lh_clip;

/* Read and check a text_encoder config.json. Errors (LH_ERR_CONFIG or
 * LH_ERR_UNSUPPORTED) name the file and the field. */
LH_API lh_status lh_clip_config_read(lh_clip_config *cfg, const char *path, lh_error *err);

/* Load `<component_dir>/config.json` and `<component_dir>/model.safetensors`.
 * Tensor keys are transformers' names, with the "text_model." prefix that
 * transformers 4.x wrote (every SD checkpoint on the Hub) or without it
 * (transformers 5.x); e.g. text_model.embeddings.token_embedding.weight,
 * text_model.encoder.layers.0.self_attn.q_proj.weight,
 * text_model.final_layer_norm.weight. Weights may be F32, F16 or BF16. The
 * token embedding table stays in host memory (float32; the lookup runs on
 * the host), everything else goes to the backend. A missing or mis-shaped
 * tensor is an error naming the file, the key and both shapes. `be` must
 * outlive the model. */
LH_API lh_status lh_clip_load(lh_clip **out, lh_backend *be, const char *component_dir,
                              lh_error *err);

/* The same from an open file: the tensors are `<prefix><name>` for the names
 * above without "text_model." (prefix "text_model." for the Hub layout, or
 * "cond_stage_model.transformer.text_model." for an SD 1.x single-file
 * checkpoint). `f` is only read during the call. */
LH_API lh_status lh_clip_load_st(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                                 const lh_st_file *f, const char *prefix, lh_error *err);

/* The same from a weight source that answers the names above without
 * "text_model." (e.g. the single-file view of host/ldm_keys.h). */
struct lh_wsource; /* host/weights.h */
LH_API lh_status lh_clip_load_src(lh_clip **out, lh_backend *be, const lh_clip_config *cfg,
                                  const struct lh_wsource *src, lh_error *err);

LH_API void lh_clip_free(lh_clip *m);

/* The linear layers adapters may change, per encoder layer, in this order:
 * self_attn.q_proj, k_proj, v_proj, out_proj, mlp.fc1, mlp.fc2. */
#define LH_CLIP_LINEARS 6
LH_API void lh_clip_linear(const lh_clip *m, int64_t layer, int which, float **w, float **b);
/* How the model holds weight w: F32, or F16/BF16 (a device keeps an
 * F16/BF16 file's linear weights so, widened op by op). */
LH_API lh_dtype lh_clip_weight_type(const lh_clip *m, const float *w);
/* Hold every linear weight in float32 from now on (the same values): the
 * [model] weight_storage = f32 choice, so that a merged adapter is added
 * in float32 rather than stored rounded to the file's half type. */
LH_API lh_status lh_clip_keep_f32_weights(lh_clip *m, lh_error *err);
/* Runtime adapters applied after each adapted layer (host/layers.h); NULL: none. */
struct lh_layers;
void lh_clip_set_adapt(lh_clip *m, struct lh_layers *adapt);

LH_API const lh_clip_config *lh_clip_get_config(const lh_clip *m);
LH_API int64_t lh_clip_hidden_size(const lh_clip *m);

/* Prompt embeddings for b sequences of n token ids (1 <= n <= max_position_embeddings;
 * SD pipelines pass n = 77: BOS, the prompt, EOS, then padding).
 *
 * Attention is causal only, as in SD pipelines: they pass no attention_mask
 * (SD 1.x/2.x text encoder configs have no use_attention_mask), so padding
 * tokens attend to everything before them and never influence earlier rows.
 * Every row of the output is returned, the padding rows included; the EOS
 * position only matters for CLIP's pooled output, which SD 1.x/2.x do not use.
 *
 * clip_skip follows diffusers' StableDiffusionPipeline (clip_skip=k takes
 * hidden_states[-(k + 1)] and applies final_layer_norm to it):
 *   0  the last layer's output (= last_hidden_state, the default);
 *   1  the penultimate layer's output; k: the output after
 *      num_hidden_layers - k layers; num_hidden_layers: the embeddings.
 * A1111's "Clip skip" setting N is diffusers' clip_skip N - 1 (A1111's 1 is
 * no skip, its 2 the penultimate layer). SD 2.x already uses the
 * penultimate layer of OpenCLIP-H: diffusers' converted text encoder has 23
 * of its 24 layers, so clip_skip 0 is right for SD 2.x.
 *
 * out: backend memory [b, n, hidden_size]; ids: host memory [b, n], each in
 * [0, vocab_size). The ops are queued on the backend without waiting for
 * them (the caller's next download waits, and reports a failure of theirs). */
LH_API lh_status lh_clip_encode(lh_clip *m, float *out, const int32_t *ids, int64_t b, int64_t n,
                                int clip_skip, lh_error *err);

/* Training: run the text encoder forward as lh_clip_encode does (clip_skip
 * as there), keeping each layer's activations, then backpropagate
 * dout = dL/d(out) [b, n, hidden] (backend memory): the runtime adapters'
 * parameter gradients accumulate (lh_layers_runtime_backward on every
 * adapted linear; enable them with lh_adapter_grads_enable before
 * lh_adapter_set), frozen base weights get none, and d_emb (backend
 * [b, n, hidden], may be NULL) receives dL/d(token + position embeddings).
 * out (backend [b, n, hidden], may be NULL) receives the forward output.
 * Queued without waiting, as lh_clip_encode. */
LH_API lh_status lh_clip_encode_backward(lh_clip *m, float *out, float *d_emb, const float *dout,
                                         const int32_t *ids, int64_t b, int64_t n, int clip_skip,
                                         lh_error *err);

#endif
