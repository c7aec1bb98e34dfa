/* The adapter trainer behind `lorahost train`: diffusers'
 * train_text_to_image_lora.py recipe on lorahost's own forward and backward.
 * Per optimizer step, gradient_accumulation_steps micro-batches of
 * batch_size images: latents (cached in the dataset, or the VAE posterior
 * sampled as latent_dist.sample() * scaling_factor), text embeddings
 * (cached, or the text encoder on the caption), noise (+ noise offset),
 * uniform timesteps, add_noise, the U-Net training step against the noise
 * (epsilon) or the velocity (v_prediction) with mse loss (min-SNR weighted
 * if asked), then fp16 unscale / overflow skip, gradient clipping, AdamW at
 * the schedule's learning rate.
 *
 * Every random draw of step s comes from generators seeded by (seed, s),
 * and the data order of epoch e from (seed, e): a run resumed from a
 * checkpoint (adapter, AdamW moments and step counts, loss scaler, loss
 * history) computes exactly what the uninterrupted run does. */
#ifndef LH_TRAIN_TRAINER_H
#define LH_TRAIN_TRAINER_H

#include <stdint.h>

#include "error.h"
#include "export.h"
#include "lorahost/lorahost.h"

#define LH_TRAIN_MAX_TARGETS 64
#define LH_TRAIN_MAX_PROMPTS 16

typedef struct lh_train_opts {
    const char *model;       /* diffusers directory or single file */
    const char *dataset;     /* HDF5 (datasets/dataset.h) */
    const char *output_dir;  /* checkpoints/, samples/, loss.svg, <output_name>.safetensors */
    const char *output_name;
    int threads;
    /* Where the U-Net and the optimizer run: "cpu", "cuda" or "cuda:N"
     * (host/backend_load.h). `backend`, when not NULL, is used instead
     * (borrowed: the caller destroys it after the run). */
    const char *device;
    struct lh_backend *backend;
    int64_t steps, batch_size, grad_accum;
    double lr;
    const char *lr_scheduler;
    int64_t lr_warmup;
    double beta1, beta2, weight_decay, eps, max_grad_norm;
    const char *adapter; /* "lora" (LoCon on convs) or "loha" */
    int rank;
    double alpha;
    const char *targets[LH_TRAIN_MAX_TARGETS];
    int n_targets;
    int train_text_encoder;
    double dropout; /* LoRA dropout on the adapted layers' input (PEFT's lora_dropout) */
    /* Probability that an item trains with the empty caption instead of
     * its own (kohya's caption_dropout_rate, diffusers'
     * proportion_empty_prompts): what classifier-free guidance needs of a
     * model trained from scratch. */
    double caption_dropout;
    /* Train every U-Net weight in float32 instead of an adapter (small
     * models): the result is a diffusers unet/ directory in output_dir. */
    int full_parameter;
    const char *prediction; /* "auto", "epsilon", "v_prediction" */
    double snr_gamma, noise_offset;
    uint64_t seed;
    lh_dtype precision; /* F32, F16, BF16 */
    /* The VAE's precision while it encodes the images ([model] vae_dtype):
     * "f32", "f16", "bf16", or "auto" (NULL too): the mixed precision on a
     * device, as diffusers' and kohya's trainers cast the VAE to the
     * weight dtype, and f32 on the cpu (lh_train_vae_dtype); the samples
     * (sample_every) decode in it too. An fp16 encode or decode that
     * overflows is redone in float32 (lh_vae_encode, lh_pipeline_txt2img). */
    const char *vae_dtype;
    int checkpointing;
    int64_t save_every; /* 0: only at the end */
    int keep_checkpoints;
    int64_t sample_every;
    const char *sample_prompts[LH_TRAIN_MAX_PROMPTS];
    int n_sample_prompts;
    int sample_steps;
    lh_export_format save_format;
    int resume; /* continue from the newest good checkpoint in output_dir/checkpoints */
} lh_train_opts;

/* What the progress callback sees after each optimizer step. */
typedef struct lh_train_progress {
    int64_t step, steps;  /* steps done, of steps */
    float loss, smoothed; /* this step's loss and its EMA (0.9, debiased) */
    double lr;
    double seconds;       /* since the run (or the resume) started */
    int64_t skipped;      /* fp16 steps skipped on overflow so far */
    float loss_scale;
    const char *event;    /* NULL, or "checkpoint <path>", "samples", "resumed from <path>" */
} lh_train_progress;

typedef void (*lh_train_progress_fn)(void *user, const lh_train_progress *p);

/* Fill *o with the [train] defaults of docs/config.md (model, dataset and
 * output_dir NULL). */
LH_API void lh_train_opts_default(lh_train_opts *o);
/* What o->vae_dtype means for a run on backend be (NULL: auto is f32):
 * "f32", "f16" or "bf16" (a model.vae_dtype value), or NULL when it is
 * none of auto, f32, f16 and bf16. */
LH_API const char *lh_train_vae_dtype(const lh_train_opts *o, const struct lh_backend *be);

/* Run the whole training; *final_loss (may be NULL) gets the last step's
 * smoothed loss. Errors name the file, setting or step at fault. */
LH_API lh_status lh_train_run(const lh_train_opts *o, lh_registry *reg,
                              lh_train_progress_fn progress, void *user, float *final_loss,
                              lh_error *err);

#endif
