/* Text-to-image and image-to-image generation, step for step as diffusers'
 * StableDiffusionPipeline / StableDiffusionImg2ImgPipeline:
 *   prompt windows -> text encoder (uncond and cond) -> initial latents
 *   (randn * init_noise_sigma, or the VAE posterior of an image noised to the
 *   strength's first timestep) -> per step: scale_model_input -> U-Net on
 *   [uncond, cond] in one batch -> CFG -> scheduler step -> VAE decode ->
 *   RGB8 images. */
#ifndef LH_HOST_PIPELINE_H
#define LH_HOST_PIPELINE_H

#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"
#include "model.h"

#define LH_PIPELINE_MAX_STEPS 1000
#define LH_PIPELINE_MAX_BATCH 64
#define LH_PIPELINE_MAX_SIDE 8192
#define LH_PIPELINE_MAX_WINDOWS 16 /* 77-token windows per prompt: 16 * 75 tokens */

/* Called before step `i` of `n` (0-based, counting only the steps run). */
typedef void (*lh_pipeline_progress_fn)(void *user, int32_t i, int32_t n);

typedef struct lh_gen_params {
    const char *prompt;          /* UTF-8; NULL = "" */
    const char *negative_prompt; /* UTF-8; NULL = "" (the uncond embedding of "") */
    int32_t steps;               /* 1..LH_PIPELINE_MAX_STEPS */
    double cfg_scale;            /* guidance off when <= 1, as diffusers */
    int64_t width, height;       /* pixels, multiples of 8 (and of the U-Net's factor) */
    int64_t batch_size;          /* 1..LH_PIPELINE_MAX_BATCH */
    uint64_t seed;               /* torch.Generator("cpu").manual_seed(seed) */
    /* Initial noise [batch, 4, height / 8, width / 8] (host) instead of drawing
     * it from the seed; stochastic schedulers still draw from the seed's
     * stream. img2img: the noise added to the image latents. NULL to draw. */
    const float *init_noise;
    /* Scheduler: plugin id, alias, A1111 name or NULL for the model's own
     * (scheduler_config.json's _class_name); [scheduler] settings (may be
     * NULL) and "key=value" overrides applied on top of the model's config. */
    const char *scheduler;
    const lh_settings *settings;
    const char *const *overrides;
    size_t n_overrides;
    /* img2img: the input image, RGB8 rows top to bottom [height][width][3],
     * used for every image of the batch, and the strength in [0, 1]. */
    const uint8_t *init_image;
    double strength;
    int clip_skip;    /* diffusers' clip_skip (0: last layer); A1111's "Clip skip" - 1 */
    int vae_tiling;   /* decode in tiles (diffusers' enable_vae_tiling) */
    int skip_decode;  /* latents only (output_type="latent") */
    /* Prompts over 75 tokens: >= 0 chunks them as AUTOMATIC1111 does with
     * this comma backtrack (lh_gen_params_init: 20, A1111's default),
     * LH_TOKENIZER_TRUNCATE cuts them at 75 tokens as diffusers does. */
    int comma_backtrack;
    lh_pipeline_progress_fn progress;
    void *progress_user;
    /* Separate requests in one batch (txt2img only; the server batches
     * this way): batch_size prompts, negative prompts and seeds, one per
     * image, instead of prompt, negative_prompt and seed for all (either
     * array may be NULL). Image i is then exactly what a batch of one with
     * prompts[i], negative_prompts[i] and seeds[i] gives, for every
     * scheduler (lh_rng_create_batch). All of them must encode to the same
     * number of 75-token windows, else LH_ERR_UNSUPPORTED. */
    const char *const *prompts;
    const char *const *negative_prompts;
    const uint64_t *seeds;
} lh_gen_params;

typedef struct lh_gen_result {
    int64_t batch, channels, latent_h, latent_w, width, height;
    float *latents;  /* host [batch, channels, latent_h, latent_w], final (scaled) latents */
    uint8_t *images; /* host [batch][height][width][3], NULL with skip_decode */
    char scheduler_id[64];
    int32_t steps_run; /* U-Net evaluations (img2img runs fewer than steps) */
    /* Wall-clock seconds (CLOCK_MONOTONIC) of the stages, for --timings:
     * prompt encoding (tokenizer + text encoder, uncond and cond), each step
     * (U-Net + guidance + scheduler step; malloc'd, steps_run entries, NULL
     * if that allocation failed), img2img's VAE encode, and the VAE decode
     * (0 with skip_decode). */
    double text_encoder_s, vae_encode_s, vae_decode_s;
    double *step_s;
} lh_gen_result;

/* Defaults: steps 30, cfg 7.5, 512x512, batch 1, seed 0, strength 0.75,
 * A1111's prompt chunking (comma backtrack 20). */
LH_API void lh_gen_params_init(lh_gen_params *p);

/* Check parameters against the model (sizes, steps, cfg, strength, UTF-8 of
 * the prompts) without running anything. */
LH_API lh_status lh_pipeline_check(const lh_model *m, const lh_gen_params *p, int img2img,
                                   lh_error *err);

LH_API lh_status lh_pipeline_txt2img(lh_model *m, lh_registry *reg, const lh_gen_params *p,
                                     lh_gen_result *out, lh_error *err);
/* p->init_image and p->strength are required. */
LH_API lh_status lh_pipeline_img2img(lh_model *m, lh_registry *reg, const lh_gen_params *p,
                                     lh_gen_result *out, lh_error *err);
LH_API void lh_gen_result_free(lh_gen_result *r);

/* A1111's "parameters" text for image `index` of a batch (seed + index is
 * not used: all images share one generator, as in diffusers):
 * "<prompt>\nNegative prompt: <neg>\nSteps: 30, Sampler: <name>, CFG scale: 7.5,
 *  Seed: 42, Size: 512x512, Model: <name>[, Denoising strength: 0.6]".
 * Returns a malloc'd string or NULL. */
LH_API char *lh_pipeline_parameters_text(const lh_gen_params *p, const char *sampler,
                                         const char *model_name, int img2img);

#endif
