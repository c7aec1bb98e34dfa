/* A fresh model with randomly initialised weights (`lorahost model init`):
 * a diffusers-style directory for a pixel-space Stable-Diffusion-architecture
 * model (CLIP text encoder, U-Net on RGB in [-1, 1], no VAE) that lorahost
 * can then train and generate with. */
#ifndef LH_HOST_MODEL_INIT_H
#define LH_HOST_MODEL_INIT_H

#include <stdint.h>

#include "error.h"
#include "lorahost/safetensors.h"

typedef struct lh_model_init_opts {
    const char *unet_config;         /* a UNet2DConditionModel config.json (required) */
    const char *text_encoder_config; /* a CLIPTextModel config.json (required) */
    const char *tokenizer;           /* vocab.json + merges.txt dir; NULL: lh_model_tokenizer_dir() */
    const char *scheduler_config;    /* scheduler_config.json; NULL: LH_MODEL_INIT_SCHEDULER */
    uint64_t seed;
    lh_dtype dtype; /* LH_DTYPE_F32 (0) or LH_DTYPE_F16 */
} lh_model_init_opts;

/* The default scheduler: DDPM's training schedule (linear betas
 * 0.0001..0.02 over 1000 steps) sampled with DDIM, predicting v: with
 * epsilon a small model learns to echo the noise at high noise levels (low
 * loss, but samples from pure noise never reach the data); v carries the
 * image at every level. x0 is not clipped (as SD's configs): DDIM clips
 * x0 but keeps the unclipped noise estimate, so under strong guidance,
 * where the extrapolated x0 leaves [-1, 1] far behind, clipping drives the
 * sample to the opposite colour (measured on the embedded model: red
 * circle on blue came out blue on yellow at cfg 7.5). */
#define LH_MODEL_INIT_SCHEDULER                                                                   \
    "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"beta_start\": 0.0001,\n  \"beta_end\": "     \
    "0.02,\n  \"beta_schedule\": \"linear\",\n  \"num_train_timesteps\": 1000,\n  "             \
    "\"prediction_type\": \"v_prediction\",\n  \"clip_sample\": false,\n  \"clip_sample_range\": "    \
    "1.0,\n  \"set_alpha_to_one\": true,\n  \"steps_offset\": 0,\n  \"timestep_spacing\": "     \
    "\"leading\"\n}\n"

/* Write out_dir (which must not exist; it appears whole or not at all:
 * built as out_dir.tmp.<pid>, then renamed):
 *   model_index.json                StableDiffusionPipeline, "vae": null
 *   unet/config.json                the given file, copied
 *   unet/diffusion_pytorch_model.safetensors
 *   text_encoder/config.json        the given file, copied
 *   text_encoder/model.safetensors  keys text_model.* (transformers 4.x)
 *   tokenizer/                      vocab.json, merges.txt (+ special_tokens_map.json,
 *                                   tokenizer_config.json if present)
 *   scheduler/scheduler_config.json
 * Tensor names and shapes are what the loaders ask for (host/unet.c,
 * host/clip.c), each drawn as PyTorch initialises its module, from a
 * generator seeded by (seed, tensor name):
 *   Linear / Conv2d weight and bias  U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 *                                    fan_in = in_features (x kernel area)
 *                                    (kaiming_uniform_(a=sqrt(5)) and the bias rule)
 *   GroupNorm / LayerNorm            weight 1, bias 0
 *   Embedding (token, position)      N(0, 1) (nn.Embedding's default, not
 *                                    transformers' CLIP init of N(0, 0.02))
 * The configs are checked as lh_model_open checks them: the U-Net must be
 * pixel-space (in_channels and out_channels 3), the text encoder's
 * hidden_size its cross_attention_dim, the tokenizer's vocabulary within
 * vocab_size. Errors name the file and field. */
LH_API lh_status lh_model_init(const char *out_dir, const lh_model_init_opts *opts,
                               lh_error *err);

/* The init of one tensor as above: fills out[numel] (float32) for tensor
 * `name` of shape[ndim]; fan_in is the weight's for a bias (0 for a norm's). */
LH_API lh_status lh_model_init_tensor(float *out, const char *name, int ndim,
                                      const int64_t *shape, int64_t bias_fan_in, uint64_t seed,
                                      lh_error *err);

#endif
