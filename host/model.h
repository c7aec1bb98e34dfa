/* A Stable Diffusion model as users have it on disk, opened for generation:
 * the architecture read off its configs, then tokenizer, text encoder, U-Net
 * and VAE loaded onto a backend. Two layouts: diffusers model directories
 * (model_index.json, unet/, text_encoder/, vae/, tokenizer/, scheduler/) and
 * single-file LDM checkpoints (.safetensors with model.diffusion_model.*,
 * first_stage_model.*, cond_stage_model.* keys: host/ldm_keys.*). */
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
    char path[LH_MODEL_PATH_MAX];             /* the directory or single file */
    char name[256];                           /* its base name (a file's without
                                                 extension), for PNG metadata */
    char scheduler_config[LH_MODEL_PATH_MAX]; /* scheduler/scheduler_config.json,
                                                 "" for a single file */
    char scheduler_json[512];                 /* a single file: the built-in
                                                 scheduler config (JSON text) */
    char scheduler_class[64];                 /* its _class_name, "" if none */
    char prediction_type[32];                 /* epsilon (default), v_prediction, sample */
    char tokenizer[LH_MODEL_PATH_MAX];        /* the directory with vocab.json + merges.txt */
    char pad_token[64];                       /* the tokenizer's pad token */
    int64_t cross_attention_dim;              /* the U-Net's */
    int single_file;                          /* 1: an LDM single-file checkpoint */
    int prediction_guessed;                   /* 1: an SD 2.x single file whose metadata
                                                 does not say epsilon or v: epsilon assumed */
    int pixel_space;                          /* 1: no VAE; the U-Net denoises RGB images
                                                 in [-1, 1] (in_channels 3) */
} lh_model_info;

/* What a single-file checkpoint does not hold (a model directory has its
 * own; giving these for one is LH_ERR_INVALID). NULL fields take defaults. */
typedef struct lh_model_opts {
    /* Directory with vocab.json + merges.txt (+ special_tokens_map.json or
     * tokenizer_config.json for the pad token). Default: the CLIP BPE
     * vocabulary lorahost ships, lh_model_tokenizer_dir(). */
    const char *tokenizer;
    /* A diffusers model directory whose unet/, vae/ and text_encoder/
     * config.json replace the configs implied by the file's shapes (the
     * numbers weights do not hold: attention heads, group-norm groups,
     * scaling factor), as diffusers' from_single_file(config=DIR). Only the
     * configs present are used; its tokenizer/ and scheduler/ are not. */
    const char *config;
} lh_model_opts;

typedef struct lh_model {
    lh_model_info info;
    lh_backend *be;
    lh_tokenizer *tok;
    lh_clip *clip;
    lh_unet *unet;
    lh_vae *vae; /* NULL for a pixel-space model (info.pixel_space) */
    int32_t pad_id; /* id of info.pad_token */
    struct lh_adapt *adapt; /* adapters loaded for the model (host/adapter.h), NULL: none yet */
} lh_model;

/* "SD 1.x", "SD 2.x", "SDXL", "unknown". */
LH_API const char *lh_model_arch_name(lh_model_arch arch);

/* Read the configs of a diffusers model directory and decide the
 * architecture, loading nothing:
 *   - model_index.json, unet/config.json, text_encoder/config.json,
 *     vae/config.json, tokenizer/vocab.json + merges.txt and
 *     scheduler/scheduler_config.json must exist: a missing one is
 *     LH_ERR_NOT_FOUND naming the component and the file;
 *   - except vae/ for a pixel-space model: no vae/ directory, model_index
 *     "vae" null or absent, and unet/config.json in_channels and
 *     out_channels 3 (the U-Net denoises RGB in [-1, 1]; pixel_space = 1).
 *     Without vae/ and with in_channels 4 the message names the missing
 *     vae/config.json and the U-Net config;
 *   - SDXL (addition_embed_type "text_time", a text_encoder_2 component or
 *     directory, an XL pipeline class) is LH_ERR_UNSUPPORTED, as is a U-Net
 *     lorahost cannot run (in_channels other than 4, or 3 without vae/: inpainting, depth;
 *     class_embed_type: upscalers), named in the message;
 *   - SD 2.x: use_linear_projection or cross_attention_dim 1024; every
 *     other UNet2DConditionModel is SD 1.x (768 for the real thing);
 *   - prediction_type comes from the scheduler config (v_prediction for
 *     SD 2.x 768-v models); the scheduler plugins read it from there too;
 *   - the pad token is tokenizer/special_tokens_map.json's pad_token, else
 *     tokenizer_config.json's, else <|endoftext|> (SD 1.x) or "!" (SD 2.x).
 * A path to a file is read as a single-file checkpoint with default options
 * (lh_model_detect_single_file). */
LH_API lh_status lh_model_detect(lh_model_info *info, const char *path, lh_error *err);

/* A single-file checkpoint's header, loading no weights: lh_ldm_detect
 * decides the architecture (SDXL, inpainting and files lacking the U-Net,
 * VAE or text encoder are refused with its message or one naming the part);
 * the scheduler is diffusers' from_single_file default for it:
 *   SD 1.x: stable-diffusion-v1-5's PNDMScheduler (scaled_linear
 *           0.00085..0.012, steps_offset 1, skip_prk_steps);
 *   SD 2.x: stable-diffusion-2-1's DDIMScheduler (same betas), with
 *           prediction_type v_prediction only if the file's metadata says
 *           so (modelspec.prediction_type "v", ss_v_parameterization);
 *           without such metadata epsilon and prediction_guessed = 1;
 * and the tokenizer opts->tokenizer or the shipped one, which must hold
 * vocab.json and merges.txt (LH_ERR_NOT_FOUND naming the directory). */
LH_API lh_status lh_model_detect_single_file(lh_model_info *info, const char *path,
                                            const lh_model_opts *opts, lh_error *err);

/* lh_model_detect, then load tokenizer, text encoder, U-Net and VAE onto
 * `be` (which must outlive the model). The tokenizer's vocabulary must fit
 * the text encoder's (vocab_size), and the text encoder's width the U-Net's
 * cross_attention_dim: mismatches are LH_ERR_SHAPE naming both. A file goes
 * to lh_model_open_single_file with default options. */
LH_API lh_status lh_model_open(lh_model **out, lh_backend *be, const char *path, lh_error *err);
LH_API void lh_model_close(lh_model *m);

/* lh_model_detect_single_file, then load as lh_model_open does, the
 * weights through ldm_keys' views (the file is closed again before
 * returning). opts may be NULL. */
LH_API lh_status lh_model_open_single_file(lh_model **out, lh_backend *be, const char *path,
                                           const lh_model_opts *opts, lh_error *err);

/* The [model] dtype setting: "f32", "f16" or "bf16" runs the U-Net in that
 * precision (lh_unet_set_precision: weights rounded once, activations
 * written in it), as diffusers' torch_dtype does; "auto" is f16 on a
 * device and f32 on the cpu. The text encoder stays float32.
 * LH_ERR_INVALID naming the value otherwise. */
LH_API lh_status lh_model_set_dtype(lh_model *m, const char *dtype, lh_error *err);
/* The [model] weight_storage setting: "auto" holds the U-Net's linear and
 * convolution weights in its half precision (lh_unet_set_precision), "f32"
 * in float32 (lh_unet_keep_f32_weights; set it before the dtype). */
LH_API lh_status lh_model_set_weight_storage(lh_model *m, const char *storage, lh_error *err);
/* The [model] vae_dtype setting, the same for the VAE's activations
 * (lh_vae_set_precision); "auto" is f16 on a device (as diffusers' fp16
 * pipelines; a decode that overflows it is redone in float32, see
 * lh_pipeline_txt2img) and f32 on the cpu. Nothing for a pixel-space
 * model. */
LH_API lh_status lh_model_set_vae_dtype(lh_model *m, const char *dtype, lh_error *err);

/* Pixels per latent pixel: the VAE's downscale factor (8 for SD), 1 for a
 * pixel-space model. */
LH_API int64_t lh_model_downscale(const lh_model *m);

/* Where the shipped CLIP BPE vocabulary (vocab.json, merges.txt) is:
 * <libdir>/../share/lorahost/tokenizer beside the installed library, else
 * the install prefix's, else (a build tree) the source tree's copy,
 * tests/fixtures/tokenizer. */
LH_API const char *lh_model_tokenizer_dir(void);

#endif
