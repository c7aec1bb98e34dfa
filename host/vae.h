/* The VAE of Stable Diffusion (diffusers' AutoencoderKL): the encoder turns
 * images into the posterior over latents, the decoder turns latents back into
 * images, whole or in overlapping tiles (diffusers' tiled_decode) so large
 * images decode in bounded backend memory. Loads a diffusers vae/ directory
 * (config.json + diffusion_pytorch_model.safetensors) onto a compute backend.
 *
 * Latent scale, once and for all:
 *   - lh_vae_encode returns the posterior in the VAE's own space (diffusers'
 *     latent_dist.mean / .logvar), NOT scaled;
 *   - lh_vae_sample_latents turns a posterior into diffusion-space latents,
 *     scaling_factor * (mean + exp(logvar / 2) * noise): what img2img and
 *     training feed to the U-Net;
 *   - lh_vae_decode takes diffusion-space latents (what the U-Net and the
 *     scheduler produce) and divides by scaling_factor itself, as SD
 *     pipelines do before vae.decode.
 * So a caller never touches scaling_factor; lh_vae_scaling_factor is there
 * for those who want to. */
#ifndef LH_HOST_VAE_H
#define LH_HOST_VAE_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "error.h"
#include "lorahost/lorahost.h"

#define LH_VAE_MAX_BLOCKS 8

/* The fields of config.json the model needs (diffusers' AutoencoderKL names;
 * a missing field takes AutoencoderKL's default, as diffusers does).
 * Supported: down_block_types all "DownEncoderBlock2D", up_block_types all
 * "UpDecoderBlock2D", act_fn "silu", use_quant_conv / use_post_quant_conv
 * true, shift_factor / latents_mean / latents_std null. force_upcast and
 * private "_..." keys are ignored. */
typedef struct lh_vae_config {
    int64_t in_channels;                           /* default 3 */
    int64_t out_channels;                          /* default 3 */
    int64_t latent_channels;                       /* default 4 */
    int n_blocks;                                  /* len(block_out_channels) */
    int64_t block_out_channels[LH_VAE_MAX_BLOCKS]; /* default [64] (SD: 128, 256, 512, 512) */
    int64_t layers_per_block;                      /* default 1 (SD: 2) */
    int64_t norm_num_groups;                       /* default 32 */
    int64_t sample_size;         /* default 32 (SD 1.5: 512); a list takes its first */
    float scaling_factor;        /* default 0.18215 (SDXL: 0.13025) */
    int mid_block_add_attention; /* default 1 */
} lh_vae_config;

typedef struct lh_vae lh_vae;
struct lh_wsource; /* host/weights.h */

/* Read and check a vae config.json. Errors (LH_ERR_CONFIG for a bad value or
 * type, LH_ERR_UNSUPPORTED for a valid option lorahost lacks) name the file
 * and the field. */
LH_API lh_status lh_vae_config_read(lh_vae_config *cfg, const char *path, lh_error *err);

/* Load `<component_dir>/config.json` and
 * `<component_dir>/diffusion_pytorch_model.safetensors`. Tensor keys are
 * diffusers' names: encoder.conv_in.weight,
 * encoder.down_blocks.0.resnets.0.norm1.weight,
 * encoder.down_blocks.0.downsamplers.0.conv.weight,
 * encoder.mid_block.attentions.0.to_q.weight, quant_conv.weight,
 * post_quant_conv.weight, decoder.up_blocks.0.upsamplers.0.conv.weight, ...
 * Weights may be F32, F16 or BF16. A missing or mis-shaped tensor is an
 * error naming the file, the key and both shapes. Tiling starts at
 * diffusers' defaults: tile_sample_min_size = sample_size, overlap 0.25. */
LH_API lh_status lh_vae_load(lh_vae **out, lh_backend *be, const char *component_dir,
                             lh_error *err);

/* The same from an open file whose keys are `<prefix><diffusers name>`
 * (prefix "" for a vae/ directory). `f` is only read during the call. */
LH_API lh_status lh_vae_load_st(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                                const lh_st_file *f, const char *prefix, lh_error *err);

/* The same from a weight source that answers diffusers' names (e.g. the
 * single-file view of host/ldm_keys.h). */
LH_API lh_status lh_vae_load_src(lh_vae **out, lh_backend *be, const lh_vae_config *cfg,
                                 const struct lh_wsource *src, lh_error *err);

LH_API void lh_vae_free(lh_vae *m);

LH_API const lh_vae_config *lh_vae_get_config(const lh_vae *m);
/* config.scaling_factor. */
LH_API float lh_vae_scaling_factor(const lh_vae *m);
/* Image pixels per latent pixel along each axis: 2^(n_blocks - 1) (SD: 8). */
LH_API int64_t lh_vae_downscale(const lh_vae *m);

/* The activation precision of lh_vae_encode and lh_vae_decode: F32 (as
 * loaded), or F16 / BF16, the backend's set_precision (each op's output
 * rounded to it; products and convolutions accumulate in float32, on a
 * device's tensor cores), as diffusers' vae.to(torch_dtype) runs it. The
 * weights are rounded to the half type once (the first time), so only that
 * type or F32 may be set after; an fp16 encode that overflows (NaN/Inf
 * moments) is run again in float32, which the VAE keeps. LH_ERR_INVALID
 * for another dtype, LH_ERR_UNSUPPORTED on a backend without half
 * precision. */
LH_API lh_status lh_vae_set_precision(lh_vae *m, lh_dtype act, lh_error *err);
LH_API lh_dtype lh_vae_precision(const lh_vae *m);
/* Backend bytes its weights take: on a backend that convolves half
 * weights (conv2d_hw), a half precision holds the convolution weights in
 * that type, 2 bytes each. */
LH_API size_t lh_vae_weight_bytes(const lh_vae *m);

/* Tiling for lh_vae_decode(..., tiled = 1), as diffusers' AutoencoderKL
 * attributes: tiles of tile_sample_size image pixels (tile_latent_min_size =
 * tile_sample_size / downscale latents) overlapping by overlap_factor
 * (tile_overlap_factor). tile_sample_size must be a positive multiple of the
 * downscale and overlap_factor in [0, 1) with at least one latent of stride. */
LH_API lh_status lh_vae_set_tiling(lh_vae *m, int64_t tile_sample_size, double overlap_factor,
                                   lh_error *err);

/* Posterior of b images: image [b, in_channels, h, w] in [-1, 1] (backend
 * memory; h and w positive multiples of the downscale) -> mean and, unless
 * NULL, logvar [b, latent_channels, h / ds, w / ds] (backend memory), as
 * diffusers' vae.encode(image).latent_dist.mean / .logvar (clamped to
 * [-30, 20]). Not scaled: see lh_vae_sample_latents. */
LH_API lh_status lh_vae_encode(lh_vae *m, float *mean, float *logvar, const float *image, int64_t b,
                               int64_t h, int64_t w, lh_error *err);

/* Diffusion-space latents from a posterior, n elements each (backend memory):
 * latents = scaling_factor * (mean + exp(logvar / 2) * noise), diffusers'
 * latent_dist.sample() * scaling_factor with the caller's standard normal
 * noise; noise == NULL gives scaling_factor * mean (latent_dist.mode()).
 * logvar may be NULL only when noise is. latents may alias mean. */
LH_API lh_status lh_vae_sample_latents(lh_vae *m, float *latents, const float *mean,
                                       const float *logvar, const float *noise, int64_t n,
                                       lh_error *err);

/* Images from diffusion-space latents: latents [b, latent_channels, lh, lw]
 * (backend memory, scaled as the U-Net sees them; divided by scaling_factor
 * here) -> image [b, out_channels, lh * ds, lw * ds] (backend memory, about
 * [-1, 1]; not clamped). tiled != 0 decodes in tiles as diffusers'
 * tiled_decode when lh or lw exceeds the tile (smaller latents decode whole,
 * as diffusers does with tiling enabled); the image then differs slightly
 * from the whole decode where tiles are blended. */
LH_API lh_status lh_vae_decode(lh_vae *m, float *image, const float *latents, int64_t b, int64_t lh,
                               int64_t lw, int tiled, lh_error *err);

/* Backend bytes lh_vae_decode allocates for these sizes (activations and
 * scratch; weights excluded), or 0 if the sizes are invalid or overflow.
 * With tiling this is bounded by the tile size whatever the image size. */
LH_API size_t lh_vae_decode_workspace(const lh_vae *m, int64_t b, int64_t lh, int64_t lw,
                                      int tiled);
/* The same for lh_vae_encode. */
LH_API size_t lh_vae_encode_workspace(const lh_vae *m, int64_t b, int64_t h, int64_t w);

#endif
