/* The Stable Diffusion 1.x / 2.x denoising U-Net: diffusers'
 * UNet2DConditionModel read from a diffusers `unet/` directory (config.json +
 * diffusion_pytorch_model.safetensors, tensors by their real keys) and run on
 * a compute backend. unet.c parses the config and loads the weights;
 * unet_blocks.c holds the forward pass and its activation plan. */
#ifndef LH_HOST_UNET_H
#define LH_HOST_UNET_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "error.h"
#include "weights.h"

#define LH_UNET_MAX_BLOCKS 6 /* len(block_out_channels) */
#define LH_UNET_MAX_LAYERS 8 /* resnets in one block (up blocks have layers_per_block + 1) */

/* ---- Configuration (the config.json fields SD 1.x and 2.x use) ---- */

typedef struct lh_unet_config {
    int64_t in_channels, out_channels;
    int n_blocks;                                  /* len(block_out_channels) */
    int64_t block_out_channels[LH_UNET_MAX_BLOCKS];
    int layers_per_block[LH_UNET_MAX_BLOCKS];      /* per down block */
    int64_t heads[LH_UNET_MAX_BLOCKS];             /* diffusers' `attention_head_dim` */
    int down_cross[LH_UNET_MAX_BLOCKS];            /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross[LH_UNET_MAX_BLOCKS];              /* 1: CrossAttnUpBlock2D, 0: UpBlock2D */
    int64_t cross_attention_dim;
    int64_t norm_num_groups;
    float norm_eps;
    int use_linear_projection; /* SD 2.x: proj_in/proj_out are Linear, not 1x1 Conv2d */
    int upcast_attention;      /* accepted; attention is float32 anyway */
    int flip_sin_to_cos;
    float freq_shift;
} lh_unet_config;

/* Parse a diffusers UNet2DConditionModel config.json. Missing fields take
 * diffusers' defaults; a field outside what SD 1.x / 2.x use (class_embed_type,
 * addition_embed_type, time_cond_proj_dim, ...) is refused with a message
 * naming it. `name` labels messages (usually the path). */
LH_API lh_status lh_unet_config_parse(lh_unet_config *cfg, const char *json_text,
                                      const char *name, lh_error *err);
LH_API lh_status lh_unet_config_read(lh_unet_config *cfg, const char *path, lh_error *err);

/* ---- Weights, one struct per diffusers module (pointers into backend memory) ---- */

typedef struct lh_unet_resnet { /* ResnetBlock2D */
    char name[48];              /* key prefix, e.g. "down_blocks.0.resnets.1" */
    int64_t c_in, c_out;
    float *norm1_w, *norm1_b, *conv1_w, *conv1_b;
    float *temb_w, *temb_b; /* time_emb_proj */
    float *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    float *short_w, *short_b; /* conv_shortcut (1x1), NULL when c_in == c_out */
} lh_unet_resnet;

typedef struct lh_unet_tblock { /* BasicTransformerBlock */
    float *norm1_w, *norm1_b, *q1, *k1, *v1, *o1_w, *o1_b; /* self-attention (attn1) */
    float *norm2_w, *norm2_b, *q2, *k2, *v2, *o2_w, *o2_b; /* cross-attention (attn2) */
    float *norm3_w, *norm3_b, *ff1_w, *ff1_b, *ff2_w, *ff2_b; /* GEGLU feed-forward */
} lh_unet_tblock;

typedef struct lh_unet_attn { /* Transformer2DModel with one transformer block */
    char name[48];
    int64_t c, heads;
    float *norm_w, *norm_b;
    float *proj_in_w, *proj_in_b;   /* [c, c] (linear) or [c, c, 1, 1] (conv): same numbers */
    lh_unet_tblock block;
    float *proj_out_w, *proj_out_b;
} lh_unet_attn;

typedef struct lh_unet_block { /* a down, mid or up block */
    int n_layers, cross;
    int64_t c_out;
    lh_unet_resnet res[LH_UNET_MAX_LAYERS];
    lh_unet_attn attn[LH_UNET_MAX_LAYERS]; /* [0, n_layers) if cross (mid: 1) */
    float *sample_w, *sample_b; /* downsamplers.0.conv / upsamplers.0.conv, or NULL */
} lh_unet_block;

typedef struct lh_unet {
    lh_unet_config cfg;
    lh_backend *be;
    lh_wstore ws;
    float *conv_in_w, *conv_in_b;
    float *time1_w, *time1_b, *time2_w, *time2_b; /* time_embedding.linear_1 / linear_2 */
    lh_unet_block down[LH_UNET_MAX_BLOCKS], mid, up[LH_UNET_MAX_BLOCKS];
    float *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
    /* Runtime adapters (host/layers.h), applied after each adapted layer; NULL: none. */
    struct lh_layers *adapt;
    /* What the base weights are exactly representable in: F32 as loaded
     * (F16/BF16 files are widened exactly), or the half type a mixed
     * precision step rounded them to. */
    lh_dtype weight_precision;
    /* How the linear and convolution weights are held: F16/BF16 when all
     * are held in that type (half the memory: on a device, loaded so from
     * a file that holds them so; rounded to it by lh_unet_set_precision),
     * F32 otherwise. Each one held in a half type is widened into a float32
     * buffer of the activation arena (wide_max values: the largest such
     * weight; 0: none) right before the op that reads it. Biases and norm
     * parameters stay float32. */
    lh_dtype weight_storage;
    size_t wide_max;
    int keep_f32; /* lh_unet_keep_f32_weights */
    /* lh_unet_forward's activation precision (lh_unet_set_precision). */
    lh_dtype act_precision;
    /* The training steps' activation arena, kept between steps (backend
     * memory; lh_unet_release_workspace frees it). */
    float *train_ws;
    size_t train_ws_floats;
    /* lh_unet_forward's graph (a backend with graph ops, no runtime
     * adapters): the call it serves, its buffers (backend memory: the
     * activations, then x, context and out) and the backend's graph once
     * recorded. lh_unet_release_workspace frees it. */
    struct lh_unet_graph {
        int64_t b, h, w, n_ctx;
        lh_dtype act, weights;
        size_t floats; /* activations */
        float *arena;
        void *graph;
        int state; /* 0 new, 1 ran once, 2 recorded, 3 recording failed */
    } graph;
} lh_unet;

/* ---- Loading ---- */

/* Load `dir`/config.json and `dir`/diffusion_pytorch_model.safetensors (a
 * diffusers `unet/` folder) into backend memory. Keys are diffusers' names:
 * conv_in.weight, time_embedding.linear_1.weight,
 * down_blocks.0.resnets.0.norm1.weight,
 * down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight, ...
 * Weights may be F32, F16 or BF16. Errors name the file and the field or
 * tensor at fault (a mis-shaped tensor: both shapes). */
LH_API lh_status lh_unet_load(lh_unet **out, lh_backend *be, const char *dir, lh_error *err);
/* The same from an open file whose tensors are `<prefix><diffusers key>`
 * (prefix "" for a diffusers file). `f` is only read during the call. */
LH_API lh_status lh_unet_load_st(lh_unet **out, lh_backend *be, const lh_unet_config *cfg,
                                 const lh_st_file *f, const char *prefix, lh_error *err);
/* The same from a weight source that answers diffusers' names (e.g. the
 * single-file view of host/ldm_keys.h). */
LH_API lh_status lh_unet_load_src(lh_unet **out, lh_backend *be, const lh_unet_config *cfg,
                                  const lh_wsource *src, lh_error *err);
LH_API void lh_unet_free(lh_unet *m);
LH_API const lh_unet_config *lh_unet_get_config(const lh_unet *m);

/* ---- Forward ---- */

/* Bytes of backend memory lh_unet_forward's activations take for these
 * sizes (0 if they are invalid or overflow); on a backend with graphs it
 * also keeps copies of x, context and out beside them. */
LH_API size_t lh_unet_forward_workspace(lh_unet *m, int64_t b, int64_t h, int64_t w,
                                        int64_t n_ctx);

/* The predicted noise (or v) for latents x at `timesteps` given text
 * embeddings `context`. h and w must be multiples of 2^(n_blocks - 1). The
 * activations are planned and allocated once per call, then freed; on a
 * backend with graphs (cuda) and without runtime adapters on the U-Net
 * they stay, with the call's graph, until a call of another shape or
 * lh_unet_release_workspace. Returns after the device finished. */
LH_API lh_status lh_unet_forward(lh_unet *m,
                                 float *out,             /* backend [b, out_channels, h, w] */
                                 const float *x,         /* backend [b, in_channels, h, w] */
                                 const float *timesteps, /* host [b] */
                                 const float *context, /* backend [b, n_ctx, cross_attention_dim] */
                                 int64_t b, int64_t h, int64_t w, int64_t n_ctx, lh_error *err);

/* Inference precision: from now on lh_unet_forward writes its activations
 * in `prec` (F32, F16 or BF16: the backend's set_precision), and for a half
 * type the base weights are rounded to it, once, as diffusers' U-Net loaded
 * with torch_dtype=float16 holds them. Going back to F32 keeps the rounded
 * weights. LH_ERR_UNSUPPORTED when the backend cannot round. */
LH_API lh_status lh_unet_set_precision(lh_unet *m, lh_dtype prec, lh_error *err);

/* The linear and convolution weights rounded to a half type are then held
 * in it (half their memory) and widened op by op, unless keep is 1: then
 * they are held in float32 from now on (those held in a half type are
 * widened now, the values unchanged). A U-Net trained in full
 * (lh_unet_grads_create) keeps float32. */
LH_API lh_status lh_unet_keep_f32_weights(lh_unet *m, int keep, lh_error *err);

/* Private to the host: hold every linear and convolution weight in dtype
 * (F32, F16, BF16; to a half type: rounded to nearest even). The graph is
 * dropped and the layer table follows. On failure some may be held in
 * another type, which still computes. */
lh_status lh__unet_store(lh_unet *m, lh_dtype dtype, lh_error *err);

/* ---- Training ---- */

/* The forward of lh_unet_forward keeping what the backward needs (every
 * unit's activations, or with `checkpointing` only each resnet's,
 * transformer's and upsampler's input, recomputing the unit during the
 * backward with the same forward code), then, given dout = dL/d(out):
 * runtime adapter parameter gradients accumulate (enable them with
 * lh_adapter_grads_enable), frozen base weights get none, d_context receives
 * dL/d(context) (written). out and d_context may be NULL. */
LH_API lh_status lh_unet_backward(lh_unet *m,
                                  float *out,             /* backend [b, out_channels, h, w] */
                                  float *d_context, /* backend [b, n_ctx, cross_attention_dim] */
                                  const float *dout,      /* backend [b, out_channels, h, w] */
                                  const float *x,         /* backend [b, in_channels, h, w] */
                                  const float *timesteps, /* host [b] */
                                  const float *context, /* backend, as for lh_unet_forward */
                                  int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                                  int checkpointing, lh_error *err);

/* Full-parameter training: one float32 gradient buffer (backend memory) per
 * U-Net parameter, named by its diffusers key ("conv_in.weight",
 * "down_blocks.0.resnets.0.conv1.weight", ...). lh_unet_backward_full
 * accumulates (+=) dL/d(parameter) into them; zero them between steps. */
typedef struct lh_unet_grads lh_unet_grads;
LH_API lh_status lh_unet_grads_create(lh_unet_grads **out, lh_unet *m, lh_error *err);
LH_API void lh_unet_grads_free(lh_unet_grads *g);
LH_API lh_status lh_unet_grads_zero(lh_unet_grads *g);
/* The gradient of parameter `key` (backend memory, *numel elements; a
 * proj_in / proj_out weight has c*c whether stored [c, c] or [c, c, 1, 1]),
 * or NULL if the U-Net has no such parameter. */
LH_API const float *lh_unet_grad(const lh_unet_grads *g, const char *key, size_t *numel);
/* The number of parameters, and the key of the i-th in loading order (NULL
 * past the end). */
LH_API size_t lh_unet_grads_count(const lh_unet_grads *g);
LH_API const char *lh_unet_grads_key(const lh_unet_grads *g, size_t i);

/* lh_unet_backward that also accumulates every base weight's gradient into
 * `g` (created for this U-Net; NULL: frozen base, as lh_unet_backward). */
LH_API lh_status lh_unet_backward_full(lh_unet *m, lh_unet_grads *g,
                                       float *out,             /* backend [b, out_channels, h, w] */
                                       float *d_context, /* backend [b, n_ctx, cross_attn_dim] */
                                       const float *dout,      /* backend [b, out_channels, h, w] */
                                       const float *x,         /* backend [b, in_channels, h, w] */
                                       const float *timesteps, /* host [b] */
                                       const float *context,   /* backend */
                                       int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                                       int checkpointing, lh_error *err);

/* ---- Training steps: forward, loss, backward in one pass ---- */

/* Given the forward's prediction `out` (backend memory, numel floats),
 * write dL/d(out) into dout (backend memory) and L into *loss (host). */
typedef lh_status (*lh_unet_loss_fn)(void *ctx, float *dout, float *loss, const float *out,
                                     int64_t numel, lh_error *err);

/* The loss of diffusers' training scripts: F.mse_loss(out, target), the
 * mean over every element, computed in float64 on the host. ctx is an
 * lh_unet_mse. */
typedef struct lh_unet_mse {
    lh_backend *be;
    const float *target; /* backend memory, numel floats */
} lh_unet_mse;
LH_API lh_status lh_unet_mse_loss(void *ctx, float *dout, float *loss, const float *out,
                                  int64_t numel, lh_error *err);

typedef struct lh_unet_train_opts {
    int checkpointing;
    /* Mixed precision: F32 (default when 0-initialised), F16 or BF16.
     * Activations and activation gradients are rounded to it after every
     * op (the backend's set_precision); GEMM inputs are therefore half, and
     * the frozen base weights are rounded to it in place once, as
     * diffusers' unet.to(weight_dtype) does; norm statistics, softmax and
     * accumulations stay float32, and so do adapter parameters and every
     * gradient that accumulates (the master copies). */
    lh_dtype precision;
    /* dL/d(out) is multiplied by this before the backward (0 means 1):
     * fp16 loss scaling. Gradients come out scaled by it. */
    float loss_scale;
    lh_unet_grads *grads; /* full-parameter gradients, or NULL: frozen base */
    /* F16/BF16: what the backward reads (with checkpointing, what it
     * keeps) is held in the half type it is rounded to (half the memory,
     * the same bits; the time embedding and attention's logsumexp stay
     * float32), each unit widened back before its backward. 1 keeps all of
     * it float32. */
    int f32_saved;
    /* F16/BF16: where the step's NaN/Inf checks go (see lh_unet_checks;
     * the report argument must then be NULL), or NULL: the step waits for
     * the device at its end and reads them into its report */
    struct lh_unet_checks *checks;
} lh_unet_train_opts;

/* Where NaN or Inf appeared during a step, in the order they did: a unit's
 * output in the forward, or its input gradient in the backward. Checked in
 * F16/BF16 steps (in F32 the caller's gradient check suffices). */
#define LH_UNET_OVERFLOW_MAX 8
typedef struct lh_unet_overflow_at {
    char unit[64]; /* "time_embedding", "conv_in", "down_blocks.1.resnets.0",
                      "up_blocks.2.upsamplers.0", "conv_out", ... */
    int backward;  /* 0: its forward output, 1: the gradient of its input */
    int64_t n_bad; /* NaN/Inf elements there */
} lh_unet_overflow_at;
typedef struct lh_unet_overflow {
    int count; /* units with NaN/Inf; the first LH_UNET_OVERFLOW_MAX are in `at` */
    lh_unet_overflow_at at[LH_UNET_OVERFLOW_MAX];
} lh_unet_overflow;

/* A half-precision step's NaN/Inf checks left in backend memory, so that a
 * trainer reads them with its other per-step values in one download (or,
 * when its own check finds nothing, never): each step given it (its
 * opts.checks) appends its checks and does not wait for the device.
 * Zero-initialise it; set n to 0 to start over (the memory is kept);
 * lh_unet_checks_free releases it. */
typedef struct lh_unet_checks {
    lh_backend *be;          /* the backend of counts (set by the first step) */
    int64_t *counts;         /* backend [cap]: NaN/Inf elements each check found */
    lh_unet_overflow_at *at; /* host [cap]: what each check is of (n_bad unused) */
    int n, cap;              /* checks made, room */
} lh_unet_checks;
LH_API void lh_unet_checks_free(lh_unet_checks *c);
/* *report from the checks of c, counts: a host copy of c->counts [c->n]. */
LH_API void lh_unet_checks_report(lh_unet_overflow *report, const lh_unet_checks *c,
                                  const int64_t *counts);

/* One training step: the forward keeping what the backward needs, then
 * loss_fn on its prediction, then the backward from the forward's own
 * activations (the forward runs once; with checkpointing units are
 * recomputed from their inputs). Adapter gradients accumulate (scaled by
 * loss_scale), d_context (may be NULL) receives dL/d(context) (also scaled),
 * *loss the unscaled loss, *report (may be NULL) where non-finite values
 * appeared. */
LH_API lh_status lh_unet_train_step(lh_unet *m, const lh_unet_train_opts *opts,
                                    lh_unet_loss_fn loss_fn, void *loss_ctx, float *loss,
                                    float *d_context, /* backend [b, n_ctx, cross_attention_dim] */
                                    const float *x,   /* backend [b, in_channels, h, w] */
                                    const float *timesteps, /* host [b] */
                                    const float *context,   /* backend */
                                    int64_t b, int64_t h, int64_t w, int64_t n_ctx,
                                    lh_unet_overflow *report, lh_error *err);

/* Training steps keep their activation arena in the U-Net for the next
 * step (no allocation or page faults per step): a U-Net trains one step at
 * a time, and lh_unet_forward keeps its graph and that graph's buffers.
 * This frees both (lh_unet_free does too). */
LH_API void lh_unet_release_workspace(lh_unet *m);

/* Private to the host: call fn for every parameter of m, in loading order:
 * its diffusers key (valid during the call), the model's pointer to its
 * backend data (fn may replace it: host/unet_blocks.c's half storage), its
 * rank (2 and 4: the linear and convolution weights; 1: biases and norms)
 * and element count. */
typedef struct lh_unet_param {
    const char *key;
    float **w;
    int ndim;
    size_t numel;
} lh_unet_param;
void lh__unet_params(lh_unet *m, void (*fn)(void *ctx, const lh_unet_param *p), void *ctx);

/* Bytes of backend memory a training step allocates (activations and
 * activation gradients; 0 if the sizes are invalid) at `precision` (F16,
 * BF16: with the stash of lh_unet_train_opts; F32). */
LH_API size_t lh_unet_backward_workspace(lh_unet *m, int64_t b, int64_t h, int64_t w,
                                         int64_t n_ctx, int checkpointing, lh_dtype precision);

#endif
