/* Single-file Stable Diffusion checkpoints (the LDM / A1111 layout:
 * model.diffusion_model.*, first_stage_model.*, cond_stage_model.*): what a
 * file holds, the configs its shapes imply, and a view that hands its tensors
 * to the U-Net, VAE and text-encoder loaders under diffusers' names without
 * copying data. The key tables follow diffusers' loaders/single_file_utils.py
 * (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, convert_open_clip_checkpoint). */
#ifndef LH_HOST_LDM_KEYS_H
#define LH_HOST_LDM_KEYS_H

#include "clip.h"
#include "unet.h"
#include "vae.h"
#include "weights.h"

typedef enum lh_ldm_arch {
    LH_LDM_ARCH_SD1, /* SD 1.x: CLIP ViT-L/14 (cond_stage_model.transformer.*), conv proj_in */
    LH_LDM_ARCH_SD2, /* SD 2.x: OpenCLIP ViT-H/14 (cond_stage_model.model.*), linear proj_in */
    LH_LDM_ARCH_COUNT
} lh_ldm_arch;

typedef enum lh_ldm_part {
    LH_LDM_PART_UNET, /* model.diffusion_model.* */
    LH_LDM_PART_VAE,  /* first_stage_model.* (or a bare LDM VAE file: encoder.down.0...) */
    LH_LDM_PART_CLIP, /* cond_stage_model.* */
    LH_LDM_PART_COUNT
} lh_ldm_part;

/* What the noise predictor was trained to output. The weights do not say:
 * SD 2.x 768-v models predict v, SD 2.x 512-base models epsilon, same
 * tensors and shapes. A1111 decides by the .yaml beside the file; diffusers'
 * from_single_file by the config it is given (for an SD 2.x file without one
 * it takes stabilityai/stable-diffusion-2-1: v_prediction, 768 px). */
typedef enum lh_ldm_pred {
    LH_LDM_PRED_EPSILON, /* SD 1.x, or metadata says so */
    LH_LDM_PRED_V,       /* metadata says so ("modelspec.prediction_type": "v",
                            or "ss_v_parameterization": "True") */
    LH_LDM_PRED_UNKNOWN, /* SD 2.x without such metadata: ask the user */
    LH_LDM_PRED_COUNT
} lh_ldm_pred;

typedef struct lh_ldm_info {
    lh_ldm_arch arch; /* from the text encoder, else from the U-Net's proj_in */
    int has[LH_LDM_PART_COUNT];
    lh_ldm_pred prediction;
    /* Configs implied by the shapes; fields the weights cannot tell take
     * what diffusers' default config for the architecture says:
     *   unet.heads             SD 1.x: 8 per block; SD 2.x: channels / 64
     *   unet.norm_num_groups   32 (also vae.norm_num_groups)
     *   unet.upcast_attention  SD 2.x: 1 (no effect: attention is float32)
     *   vae.sample_size        SD 1.x: 512, SD 2.x: 768; scaling_factor 0.18215
     *   clip.num_attention_heads  hidden_size / 64
     * A caller with a real config (a diffusers folder, a user's choice) may
     * overwrite any field before loading. */
    lh_unet_config unet;
    lh_vae_config vae;
    lh_clip_config clip;
    int clip_open_layers; /* SD 2.x: OpenCLIP resblocks in the file; the
                             encoder uses clip.num_hidden_layers = this - 1
                             (the penultimate layer, as diffusers) */
    char vae_prefix[32];  /* "first_stage_model." or "" */
    char clip_prefix[48]; /* "cond_stage_model.transformer.text_model.",
                             "cond_stage_model.transformer." or
                             "cond_stage_model.model." */
} lh_ldm_info;

/* Recognise an LDM single-file checkpoint and fill *out. Refused with a
 * message saying what was found: SDXL (conditioner.embedders.*) and other
 * models with label_emb (LH_ERR_UNSUPPORTED), inpainting U-Nets (9 input
 * channels) and other input widths (LH_ERR_UNSUPPORTED), a file without any
 * of the three parts (LH_ERR_FORMAT: the key families it has, and a hint
 * when they are diffusers' names), shapes that contradict each other
 * (LH_ERR_FORMAT). Unused tensors (model_ema.*, betas, position_ids, the
 * 24th OpenCLIP block, ...) are ignored. */
LH_API lh_status lh_ldm_detect(const lh_st_file *f, lh_ldm_info *out, lh_error *err);

/* ---- The diffusers-name view ---- */

typedef struct lh_ldm_map lh_ldm_map;

/* A view of `part` of f under the names its loader asks for (lh_unet_load_src,
 * lh_vae_load_src, lh_clip_load_src: diffusers' names, the text encoder's
 * without "text_model."). Tensors are views into f (OpenCLIP's fused
 * in_proj_weight split into q/k/v rows, the VAE's 1x1-conv attention
 * weights [c, c, 1, 1] read as [c, c]); a missing or mis-shaped tensor is
 * reported under its key in f. info (from lh_ldm_detect, configs possibly
 * edited) is copied; f must outlive the map. */
LH_API lh_status lh_ldm_map_create(lh_ldm_map **out, const lh_st_file *f, const lh_ldm_info *info,
                                   lh_ldm_part part, lh_error *err);
LH_API void lh_ldm_map_destroy(lh_ldm_map *map);
LH_API const lh_wsource *lh_ldm_map_source(const lh_ldm_map *map);

/* The key in the file that diffusers name `key` of `part` maps to (written
 * to buf); 0, or -1 if the name is not one of the part's. */
LH_API int lh_ldm_file_key(char *buf, size_t size, const lh_ldm_info *info, lh_ldm_part part,
                           const char *key);

/* ---- Loading (the hook for model loading) ----
 * Each builds the view, loads with the config in info, and drops the view.
 * LH_ERR_NOT_FOUND if the file lacks that part. */
LH_API lh_status lh_ldm_load_unet(lh_unet **out, lh_backend *be, const lh_st_file *f,
                                  const lh_ldm_info *info, lh_error *err);
LH_API lh_status lh_ldm_load_vae(lh_vae **out, lh_backend *be, const lh_st_file *f,
                                 const lh_ldm_info *info, lh_error *err);
LH_API lh_status lh_ldm_load_clip(lh_clip **out, lh_backend *be, const lh_st_file *f,
                                  const lh_ldm_info *info, lh_error *err);

#endif
