/* A Stable Diffusion model as users have it on disk, opened for generation:
 * the architecture read off its configs, then tokenizer, text encoder, U-Net
 * and VAE loaded onto a backend. Today: diffusers model directories
 * (model_index.json, unet/, text_encoder/, vae/, tokenizer/, scheduler/).
 * Single-file checkpoints (.safetensors with model.diffusion_model.* keys)
 * come through lh_model_open_single_file once host/ldm_keys.* lands. */
#ifndef LH_HOST_MODEL_H
#define LH_HOST_MODEL_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "clip.h"
#include "error.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define LH_MODEL_PATH_MAX 4096

typedef enum lh_model_arch {
    LH_MODEL_ARCH_UNKNOWN = 0,
    LH_MODEL_ARCH_SD1,  /* SD 1.x: CLIP ViT-L/14 (768), conv proj_in/out */
    LH_MODEL_ARCH_SD2,  /* SD 2.x: OpenCLIP ViT-H/14 (1024), linear projections */
    LH_MODEL_ARCH_SDXL, /* detected to be refused: two text encoders, text_time embeddings */
    LH_MODEL_ARCH_COUNT
} lh_model_arch;

/* What the configs say, before any weight is read. Paths are absolute or
 * relative as `path` was given. */
typedef struct lh_model_info {
    lh_model_arch arch;
    char path[LH_MODEL_PATH_MAX];             /* the directory */
    char name[256];                           /* its base name, for PNG metadata */
    char scheduler_config[LH_MODEL_PATH_MAX]; /* scheduler/scheduler_config.json */
    char scheduler_class[64];                 /* its _class_name, "" if none */
    char prediction_type[32];                 /* epsilon (default), v_prediction, sample */
    char pad_token[64];                       /* the tokenizer's pad token */
    int64_t cross_attention_dim;              /* the U-Net's */
} lh_model_info;

typedef struct lh_model {
    lh_model_info info;
    lh_backend *be;
    lh_tokenizer *tok;
    lh_clip *clip;
    lh_unet *unet;
    lh_vae *vae;
    int32_t pad_id; /* id of info.pad_token */
} lh_model;

/* "SD 1.x", "SD 2.x", "SDXL", "unknown". */
LH_API const char *lh_model_arch_name(lh_model_arch arch);

/* Read the configs of a diffusers model directory and decide the
 * architecture, loading nothing:
 *   - model_index.json, unet/config.json, text_encoder/config.json,
 *     vae/config.json, tokenizer/vocab.json + merges.txt and
 *     scheduler/scheduler_config.json must exist: a missing one is
 *     LH_ERR_NOT_FOUND naming the component and the file;
 *   - SDXL (addition_embed_type "text_time", a text_encoder_2 component or
 *     directory, an XL pipeline class) is LH_ERR_UNSUPPORTED, as is a U-Net
 *     lorahost cannot run (in_channels other than 4: inpainting, depth;
 *     class_embed_type: upscalers), named in the message;
 *   - SD 2.x: use_linear_projection or cross_attention_dim 1024; every
 *     other UNet2DConditionModel is SD 1.x (768 for the real thing);
 *   - prediction_type comes from the scheduler config (v_prediction for
 *     SD 2.x 768-v models); the scheduler plugins read it from there too;
 *   - the pad token is tokenizer/special_tokens_map.json's pad_token, else
 *     tokenizer_config.json's, else <|endoftext|> (SD 1.x) or "!" (SD 2.x).
 * A path to a file goes to lh_model_open_single_file's check instead. */
LH_API lh_status lh_model_detect(lh_model_info *info, const char *path, lh_error *err);

/* lh_model_detect, then load tokenizer, text encoder, U-Net and VAE onto
 * `be` (which must outlive the model). The tokenizer's vocabulary must fit
 * the text encoder's (vocab_size), and the text encoder's width the U-Net's
 * cross_attention_dim: mismatches are LH_ERR_SHAPE naming both. */
LH_API lh_status lh_model_open(lh_model **out, lh_backend *be, const char *path, lh_error *err);
LH_API void lh_model_close(lh_model *m);

/* The hook for single-file checkpoints (a .safetensors with LDM keys): the
 * key maps are host/ldm_keys.*. Until they land this returns
 * LH_ERR_UNSUPPORTED with a message saying so and naming the file. */
LH_API lh_status lh_model_open_single_file(lh_model **out, lh_backend *be, const char *path,
                                           lh_error *err);

#endif
