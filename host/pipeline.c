/* txt2img and img2img as diffusers' StableDiffusionPipeline and
 * StableDiffusionImg2ImgPipeline run them (diffusers 0.42), on an lh_model
 * and a scheduler plugin. Random draws come from one torch-compatible stream
 * in diffusers' order: initial latents (txt2img) or posterior sample then
 * noise (img2img), then whatever the scheduler's steps draw.
 *
 * Memory: the U-Net, text encoder and VAE work on backend buffers; the
 * scheduler plugins work on lh_tensor objects through the host services,
 * which today compute on host memory (host/tensor_ops.c). So the latents
 * live in host memory and cross to the backend around each U-Net call
 * (upload / download: with the cpu backend a memcpy of a few hundred KB per
 * step). A GPU backend will want the host services to run on the backend
 * instead, so that the latents stay on the device and lh_tensor views wrap
 * backend buffers directly. */
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "rng.h"
#include "tensor.h"

#define LATENT_SCALE 8 /* checked against the VAE's downscale at run time */

/* Monotonic seconds, for the stage timings of lh_gen_result. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void lh_gen_params_init(lh_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->steps = 30;
    p->cfg_scale = 7.5;
    p->width = p->height = 512;
    p->batch_size = 1;
    p->strength = 0.75;
    p->comma_backtrack = LH_TOKENIZER_A1111_BACKTRACK;
}

void lh_gen_result_free(lh_gen_result *r) {
    if (!r) return;
    free(r->latents);
    free(r->images);
    free(r->step_s);
    memset(r, 0, sizeof *r);
}

/* ---- Checks ---- */

/* Byte offset of the first invalid UTF-8 sequence, or -1 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static long utf8_invalid_at(const char *s) {
    const unsigned char *p = (const unsigned char *)s, *b = p;
    while (*p) {
        unsigned c = *p;
        int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
                          : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0 || c == 0xC0 || c == 0xC1 || c > 0xF4) return (long)(p - b);
        unsigned cp = n ? c & (0x3Fu >> n) : c;
        for (int k = 1; k <= n; k++) {
            if ((p[k] & 0xC0) != 0x80) return (long)(p - b);
            cp = (cp << 6) | (p[k] & 0x3Fu);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return (long)(p - b);
        p += n + 1;
    }
    return -1;
}

lh_status lh_pipeline_check(const lh_model *m, const lh_gen_params *p, int img2img,
                            lh_error *err) {
    int64_t ds = lh_model_downscale(m);
    int px = m->info.pixel_space;
    int64_t uf = (int64_t)1 << (lh_unet_get_config(m->unet)->n_blocks - 1);
    if (p->steps < 1 || p->steps > LH_PIPELINE_MAX_STEPS)
        return lh_error_set(err, LH_ERR_INVALID, "steps must be in 1..%d, got %d",
                            LH_PIPELINE_MAX_STEPS, (int)p->steps);
    if (!isfinite(p->cfg_scale) || p->cfg_scale < 0 || p->cfg_scale > 100)
        return lh_error_set(err, LH_ERR_INVALID, "cfg_scale must be a number in [0, 100], got %g",
                            p->cfg_scale);
    if (p->batch_size < 1 || p->batch_size > LH_PIPELINE_MAX_BATCH)
        return lh_error_set(err, LH_ERR_INVALID, "batch_size must be in 1..%d, got %lld",
                            LH_PIPELINE_MAX_BATCH, (long long)p->batch_size);
    const char *what[2] = {"width", "height"};
    int64_t v[2] = {p->width, p->height};
    for (int i = 0; i < 2; i++) {
        if (!px && (v[i] < 8 || v[i] > LH_PIPELINE_MAX_SIDE || v[i] % 8))
            return lh_error_set(err, LH_ERR_INVALID,
                                "%s must be a multiple of 8 in 8..%d, got %lld", what[i],
                                LH_PIPELINE_MAX_SIDE, (long long)v[i]);
        if (px && (v[i] < uf || v[i] > LH_PIPELINE_MAX_SIDE || v[i] % uf))
            return lh_error_set(err, LH_ERR_INVALID,
                                "%s must be a multiple of %lld (the U-Net's factor; a "
                                "pixel-space model) in %lld..%d, got %lld",
                                what[i], (long long)uf, (long long)uf, LH_PIPELINE_MAX_SIDE,
                                (long long)v[i]);
        if (v[i] % (ds * uf))
            return lh_error_set(err, LH_ERR_UNSUPPORTED,
                                "%s %lld: this model needs a multiple of %lld (VAE factor %lld x "
                                "U-Net factor %lld)",
                                what[i], (long long)v[i], (long long)(ds * uf), (long long)ds,
                                (long long)uf);
    }
    if (!px && ds != LATENT_SCALE)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "model %s: VAE downscale %lld (Stable Diffusion's is 8)", m->info.path,
                            (long long)ds);
    const char *names[2] = {"prompt", "negative prompt"};
    for (int64_t b = 0; b < p->batch_size; b++) {
        const char *texts[2] = {p->prompts ? p->prompts[b] : p->prompt,
                                p->negative_prompts ? p->negative_prompts[b] : p->negative_prompt};
        for (int i = 0; i < 2; i++) {
            long at = texts[i] ? utf8_invalid_at(texts[i]) : -1;
            if (at >= 0)
                return lh_error_set(err, LH_ERR_INVALID, "%s is not valid UTF-8 (byte %ld)",
                                    names[i], at);
        }
    }
    if (img2img && (p->prompts || p->negative_prompts || p->seeds))
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "img2img takes one prompt and seed for the batch, not one per image");
    if (p->clip_skip < 0 || p->clip_skip > lh_clip_get_config(m->clip)->num_hidden_layers)
        return lh_error_set(err, LH_ERR_INVALID, "clip_skip must be in 0..%lld, got %d",
                            (long long)lh_clip_get_config(m->clip)->num_hidden_layers,
                            p->clip_skip);
    if (img2img) {
        if (!p->init_image) return lh_error_set(err, LH_ERR_INVALID, "img2img needs an image");
        if (!isfinite(p->strength) || p->strength < 0 || p->strength > 1)
            return lh_error_set(err, LH_ERR_INVALID, "strength must be in [0, 1], got %g",
                                p->strength);
    }
    return LH_OK;
}

/* ---- Prompt encoding ---- */

/* Windows of one prompt into ids[LH_PIPELINE_MAX_WINDOWS][77]. */
static lh_status windows(const lh_model *m, const char *text, int backtrack, int32_t *ids,
                         size_t *n, const char *what, lh_error *err) {
    lh_status st = lh_tokenizer_window(m->tok, text ? text : "", m->pad_id, backtrack, ids,
                                       LH_PIPELINE_MAX_WINDOWS, n, err);
    if (st == LH_ERR_OVERFLOW)
        return lh_error_set(err, LH_ERR_INVALID,
                            "%s is too long: %zu windows of 75 tokens, at most %d", what, *n,
                            LH_PIPELINE_MAX_WINDOWS);
    if (st != LH_OK) return lh_error_prefix(err, "%s", what);
    return LH_OK;
}

/* The U-Net context for a batch: backend [ub, n_windows * 77, D] with ub =
 * 2B (uncond x B then cond x B, diffusers' torch.cat([negative, positive]))
 * under CFG, else B (cond). The shorter prompt is padded with windows of the
 * empty prompt, as A1111 pads conds of different lengths. With per-image
 * prompts (p->prompts, p->negative_prompts) every image has its own pair,
 * and all pairs must come to the same number of windows. */
static lh_status encode_prompts(lh_model *m, const lh_gen_params *p, int cfg, float **ctx_out,
                                int64_t *n_ctx, lh_error *err) {
    enum { W = LH_TOKENIZER_WINDOW };
    size_t cap = LH_PIPELINE_MAX_WINDOWS;
    int64_t b = p->batch_size, ub = b * (cfg ? 2 : 1);
    size_t nd = p->prompts || p->negative_prompts ? (size_t)b : 1; /* distinct pairs */
    size_t nw = 0, ne = 0;
    /* ids: [nd cond][nd uncond], cap windows each */
    int32_t *ids = malloc(sizeof(int32_t) * W * cap * 2 * nd), empty[W];
    int32_t *rows = NULL;
    float *emb_be = NULL, *emb = NULL, *ctx_be = NULL;
    if (!ids) return lh_error_set(err, LH_ERR_NOMEM, "out of memory encoding the prompt");
    lh_status st = windows(m, "", 0, empty, &ne, "empty prompt", err);
    for (size_t i = 0; i < nd && st == LH_OK; i++) {
        const char *pos = p->prompts ? p->prompts[i] : p->prompt;
        const char *neg = p->negative_prompts ? p->negative_prompts[i] : p->negative_prompt;
        int32_t *ci = ids + W * cap * i, *ui = ids + W * cap * (nd + i);
        size_t np = 0, nn = 0;
        st = windows(m, pos, p->comma_backtrack, ci, &np, "prompt", err);
        if (st == LH_OK && cfg)
            st = windows(m, neg, p->comma_backtrack, ui, &nn, "negative prompt", err);
        if (st != LH_OK) break;
        size_t w = np > nn ? np : nn;
        if (i && w != nw) {
            st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                              "batched prompts of different lengths (%zu and %zu windows of 75 "
                              "tokens)", nw, w);
            break;
        }
        nw = w;
        for (size_t k = np; k < nw; k++) memcpy(ci + W * k, empty, sizeof empty);
        if (cfg)
            for (size_t k = nn; k < nw; k++) memcpy(ui + W * k, empty, sizeof empty);
    }
    if (st != LH_OK) {
        free(ids);
        return st;
    }
    /* one text-encoder call over every window: [uncond pairs, cond pairs] */
    int64_t d = lh_clip_hidden_size(m->clip), n_rows = (int64_t)(nw * nd) * (cfg ? 2 : 1);
    size_t emb_n = (size_t)n_rows * W * (size_t)d;
    size_t per = nw * W * (size_t)d; /* one context */
    rows = malloc(sizeof(int32_t) * W * (size_t)n_rows);
    emb_be = m->be->ops->alloc(m->be, emb_n * sizeof(float));
    emb = malloc(emb_n * sizeof(float));
    if (!rows || !emb_be || !emb) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory encoding the prompt");
        goto done;
    }
    for (size_t i = 0; i < nd; i++) {
        size_t r = 0;
        if (cfg) memcpy(rows + W * nw * (r++ * nd + i), ids + W * cap * (nd + i),
                        sizeof(int32_t) * W * nw);
        memcpy(rows + W * nw * (r * nd + i), ids + W * cap * i, sizeof(int32_t) * W * nw);
    }
    if ((st = lh_clip_encode(m->clip, emb_be, rows, n_rows, W, p->clip_skip, err)) != LH_OK)
        goto done;
    if ((st = m->be->ops->download(m->be, emb, emb_be, emb_n * sizeof(float))) != LH_OK) {
        st = lh_error_set(err, st, "text encoder: download failed");
        goto done;
    }
    ctx_be = m->be->ops->alloc(m->be, (size_t)ub * per * sizeof(float));
    if (!ctx_be) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of backend memory for the prompt context");
        goto done;
    }
    for (int64_t i = 0; i < ub && st == LH_OK; i++) {
        int cond = !cfg || i >= b;
        size_t img = (size_t)(i % b), pair = nd > 1 ? img : 0;
        const float *src = emb + ((cfg && cond ? nd : 0) + pair) * per;
        st = m->be->ops->upload(m->be, ctx_be + (size_t)i * per, src, per * sizeof(float));
    }
    if (st != LH_OK) st = lh_error_set(err, st, "prompt context: upload failed");
done:
    if (st != LH_OK && ctx_be) {
        m->be->ops->free(m->be, ctx_be);
        ctx_be = NULL;
    }
    if (emb_be) m->be->ops->free(m->be, emb_be);
    free(emb);
    free(rows);
    free(ids);
    *ctx_out = ctx_be;
    *n_ctx = (int64_t)nw * W;
    return st;
}

/* ---- The denoising loop ---- */

typedef struct run_state {
    lh_model *m;
    lh_scheduler *sched;
    const lh_scheduler_desc *d;
    void *ss;
    lh_rng *rng;
    lh_gen_result *out;    /* where the stage timings go */
    int64_t b, c, h, w, n; /* latents [b, c, h, w], n elements */
    float *sample;         /* host [n] */
} run_state;

static lh_status plugin_fail(const run_state *r, lh_status st, const char *what, const char *msg,
                             lh_error *err) {
    return lh_error_set(err, st ? st : LH_ERR_PLUGIN, "scheduler %s: %s: %s",
                        lh_scheduler_id(r->sched), what, msg);
}

static lh_status denoise(run_state *r, const lh_gen_params *p, int32_t begin, lh_error *err) {
    lh_model *m = r->m;
    lh_backend *be = m->be;
    int cfg = p->cfg_scale > 1.0;
    int64_t ub = r->b * (cfg ? 2 : 1), n = r->n;
    float *ctx = NULL;
    int64_t n_ctx = 0;
    double t0 = now_s();
    lh_status st = encode_prompts(m, p, cfg, &ctx, &n_ctx, err);
    r->out->text_encoder_s = now_s() - t0;
    if (st != LH_OK) return st;
    const double *ts;
    int32_t n_ts = lh_scheduler_timesteps(r->sched, &ts);
    free(r->out->step_s);
    r->out->step_s = n_ts > begin ? calloc((size_t)(n_ts - begin), sizeof(double)) : NULL;
    float *x_in = malloc(sizeof(float) * (size_t)n), *eps = malloc(sizeof(float) * (size_t)n);
    float *prev = malloc(sizeof(float) * (size_t)n), *out = malloc(sizeof(float) * (size_t)n * (cfg ? 2 : 1));
    float *tsb = malloc(sizeof(float) * (size_t)ub);
    float *in_be = be->ops->alloc(be, sizeof(float) * (size_t)(n * (cfg ? 2 : 1)));
    float *out_be = be->ops->alloc(be, sizeof(float) * (size_t)(n * (cfg ? 2 : 1)));
    if (!x_in || !eps || !prev || !out || !tsb || !in_be || !out_be) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for the denoising loop");
        goto done;
    }
    int64_t shape[4] = {r->b, r->c, r->h, r->w};
    lh_tensor t_sample, t_in, t_eps, t_prev;
    if ((st = lh_tensor_view(&t_sample, r->sample, LH_DTYPE_F32, 4, shape, err)) != LH_OK ||
        (st = lh_tensor_view(&t_in, x_in, LH_DTYPE_F32, 4, shape, err)) != LH_OK ||
        (st = lh_tensor_view(&t_eps, eps, LH_DTYPE_F32, 4, shape, err)) != LH_OK ||
        (st = lh_tensor_view(&t_prev, prev, LH_DTYPE_F32, 4, shape, err)) != LH_OK)
        goto done;
    float g = (float)p->cfg_scale;
    char msg[LH_ERROR_MAX];
    for (int32_t i = begin; i < n_ts; i++) {
        if (p->progress) p->progress(p->progress_user, i - begin, n_ts - begin);
        t0 = now_s();
        msg[0] = 0;
        if ((st = r->d->scale_model_input(r->ss, &t_in, &t_sample, i, msg, sizeof msg)) != LH_OK) {
            st = plugin_fail(r, st, "scale_model_input", msg, err);
            goto done;
        }
        for (int k = 0; k < (cfg ? 2 : 1) && st == LH_OK; k++)
            st = be->ops->upload(be, in_be + (size_t)k * (size_t)n, x_in, sizeof(float) * (size_t)n);
        if (st != LH_OK) {
            st = lh_error_set(err, st, "U-Net input: upload failed");
            goto done;
        }
        for (int64_t k = 0; k < ub; k++) tsb[k] = (float)ts[i];
        if ((st = lh_unet_forward(m->unet, out_be, in_be, tsb, ctx, ub, r->h, r->w, n_ctx, err)) !=
            LH_OK) {
            lh_error_prefix(err, "step %d", (int)(i - begin) + 1);
            goto done;
        }
        if ((st = be->ops->download(be, out, out_be, sizeof(float) * (size_t)(n * (cfg ? 2 : 1)))) !=
            LH_OK) {
            st = lh_error_set(err, st, "U-Net output: download failed");
            goto done;
        }
        if (cfg) {
            /* noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond) */
            for (int64_t k = 0; k < n; k++) {
                float u = out[k], c = out[n + k];
                eps[k] = u + g * (c - u);
            }
        } else {
            memcpy(eps, out, sizeof(float) * (size_t)n);
        }
        msg[0] = 0;
        if ((st = r->d->step(r->ss, &t_prev, &t_eps, i, &t_sample, r->rng, msg, sizeof msg)) !=
            LH_OK) {
            st = plugin_fail(r, st, "step", msg, err);
            goto done;
        }
        memcpy(r->sample, prev, sizeof(float) * (size_t)n);
        if (r->out->step_s) r->out->step_s[i - begin] = now_s() - t0;
    }
    if (p->progress) p->progress(p->progress_user, n_ts - begin, n_ts - begin);
done:
    if (in_be) be->ops->free(be, in_be);
    if (out_be) be->ops->free(be, out_be);
    if (ctx) be->ops->free(be, ctx);
    free(x_in);
    free(eps);
    free(prev);
    free(out);
    free(tsb);
    return st;
}

/* ---- Decoding ---- */

/* The VAE on the uploaded latents lat_be into img_be, then into host img;
 * out of device memory, the U-Net's kept graph and buffers give way once. */
static lh_status decode_once(lh_model *m, const lh_gen_params *p, lh_gen_result *r, float *img,
                             float *img_be, const float *lat_be, size_t n_img, lh_error *err) {
    lh_backend *be = m->be;
    lh_status st = lh_vae_decode(m->vae, img_be, lat_be, r->batch, r->latent_h, r->latent_w,
                                 p->vae_tiling, err);
    if (st == LH_ERR_NOMEM && m->unet) {
        lh_unet_release_workspace(m->unet);
        st = lh_vae_decode(m->vae, img_be, lat_be, r->batch, r->latent_h, r->latent_w,
                           p->vae_tiling, err);
    }
    if (st == LH_OK && (st = be->ops->download(be, img, img_be, n_img * sizeof(float))) != LH_OK)
        st = lh_error_set(err, st, "VAE decode: download failed");
    return st;
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* latents / scaling_factor -> VAE -> (x / 2 + 0.5).clamp(0, 1) -> (x * 255).round()
 * (VaeImageProcessor.postprocess + numpy_to_pil; numpy rounds half to even,
 * as nearbyintf does in the default rounding mode). A pixel-space model's
 * latents are the image: the same postprocessing, no VAE. */
static lh_status decode(lh_model *m, const lh_gen_params *p, lh_gen_result *r, lh_error *err) {
    lh_backend *be = m->be;
    size_t n_lat = (size_t)(r->batch * r->channels * r->latent_h * r->latent_w);
    size_t n_img = (size_t)(r->batch * 3 * r->height * r->width);
    float *lat_be = be->ops->alloc(be, n_lat * sizeof(float));
    float *img_be = be->ops->alloc(be, n_img * sizeof(float));
    float *img = malloc(n_img * sizeof(float));
    r->images = malloc(n_img);
    lh_status st = LH_OK;
    if (!lat_be || !img_be || !img || !r->images) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory decoding %lldx%lld images",
                          (long long)r->width, (long long)r->height);
        goto done;
    }
    if (!m->vae) {
        memcpy(img, r->latents, n_img * sizeof(float)); /* pixel space: n_lat == n_img */
    } else {
        if ((st = be->ops->upload(be, lat_be, r->latents, n_lat * sizeof(float))) != LH_OK) {
            st = lh_error_set(err, st, "VAE decode: upload failed");
            goto done;
        }
        st = decode_once(m, p, r, img, img_be, lat_be, n_img, err);
        if (st == LH_OK && lh_vae_precision(m->vae) == LH_DTYPE_F16 && !all_finite(img, n_img) &&
            all_finite(r->latents, n_lat)) {
            /* an fp16 decoder past 65504 (A1111's "NaNs in VAE"): float32 from now on */
            lh_log(LH_LOG_WARN, "pipeline", "the VAE's fp16 decode gave NaN/Inf; decoding again, "
                   "and from now on, in float32 (set model.vae_dtype=f32 or bf16 to skip this)");
            st = lh_vae_set_precision(m->vae, LH_DTYPE_F32, err);
            if (st == LH_OK) st = decode_once(m, p, r, img, img_be, lat_be, n_img, err);
        }
        if (st != LH_OK) goto done;
    }
    int64_t hw = r->height * r->width;
    for (int64_t b = 0; b < r->batch; b++)
        for (int64_t c = 0; c < 3; c++)
            for (int64_t k = 0; k < hw; k++) {
                float v = img[(b * 3 + c) * hw + k] / 2.0f + 0.5f;
                v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                if (v != v) v = 0.0f; /* NaN: numpy's cast is undefined; black */
                r->images[(b * hw + k) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
            }
done:
    if (lat_be) be->ops->free(be, lat_be);
    if (img_be) be->ops->free(be, img_be);
    free(img);
    if (st != LH_OK) {
        free(r->images);
        r->images = NULL;
    }
    return st;
}

/* ---- Entry points ---- */

static lh_status open_scheduler(run_state *r, lh_registry *reg, const lh_gen_params *p,
                                lh_gen_result *out, lh_error *err) {
    const lh_model_info *mi = &r->m->info;
    lh_scheduler_opts o = {p->scheduler,
                           mi->scheduler_config[0] ? mi->scheduler_config : NULL,
                           p->settings,
                           p->overrides,
                           p->n_overrides,
                           mi->scheduler_json[0] ? mi->scheduler_json : NULL,
                           mi->single_file ? "the single file's default scheduler config" : NULL};
    lh_status st = lh_scheduler_open(&r->sched, reg, &o, err);
    if (st != LH_OK) return st;
    r->d = lh_scheduler_descriptor(r->sched);
    r->ss = lh_scheduler_state(r->sched);
    snprintf(out->scheduler_id, sizeof out->scheduler_id, "%s", lh_scheduler_id(r->sched));
    return lh_scheduler_set_timesteps(r->sched, p->steps, err);
}

static lh_status setup(run_state *r, lh_model *m, const lh_gen_params *p, lh_gen_result *out,
                       lh_error *err) {
    memset(r, 0, sizeof *r);
    memset(out, 0, sizeof *out);
    r->m = m;
    r->out = out;
    r->b = p->batch_size;
    r->c = lh_unet_get_config(m->unet)->in_channels;
    int64_t ds = m->info.pixel_space ? 1 : LATENT_SCALE;
    r->h = p->height / ds;
    r->w = p->width / ds;
    r->n = r->b * r->c * r->h * r->w;
    out->batch = r->b;
    out->channels = r->c;
    out->latent_h = r->h;
    out->latent_w = r->w;
    out->width = p->width;
    out->height = p->height;
    r->sample = calloc((size_t)r->n, sizeof(float));
    if (!r->sample) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for latents");
    r->rng = p->seeds ? lh_rng_create_batch(p->seeds, p->batch_size, err)
                      : lh_rng_create(p->seed, err);
    return r->rng ? LH_OK : (err ? err->code : LH_ERR_NOMEM);
}

static lh_status finish(run_state *r, const lh_gen_params *p, lh_gen_result *out, lh_status st,
                        lh_error *err) {
    if (st == LH_OK) {
        out->latents = r->sample;
        r->sample = NULL;
        if (!p->skip_decode) {
            double t0 = now_s();
            st = decode(r->m, p, out, err);
            out->vae_decode_s = now_s() - t0;
        }
    }
    free(r->sample);
    lh_rng_destroy(r->rng);
    lh_scheduler_close(r->sched);
    if (st != LH_OK) lh_gen_result_free(out);
    return st;
}

lh_status lh_pipeline_txt2img(lh_model *m, lh_registry *reg, const lh_gen_params *p,
                              lh_gen_result *out, lh_error *err) {
    run_state r;
    lh_status st = lh_pipeline_check(m, p, 0, err);
    if (st != LH_OK) {
        memset(out, 0, sizeof *out);
        return st;
    }
    if ((st = setup(&r, m, p, out, err)) == LH_OK) st = open_scheduler(&r, reg, p, out, err);
    if (st == LH_OK) {
        /* prepare_latents: randn(shape, generator) * init_noise_sigma */
        if (p->init_noise)
            memcpy(r.sample, p->init_noise, sizeof(float) * (size_t)r.n);
        else
            st = lh_rng_randn(r.rng, r.sample, r.n, err);
        float sigma = (float)lh_scheduler_init_noise_sigma(r.sched);
        for (int64_t k = 0; st == LH_OK && k < r.n; k++) r.sample[k] *= sigma;
    }
    if (st == LH_OK) {
        const double *ts;
        out->steps_run = lh_scheduler_timesteps(r.sched, &ts);
        st = denoise(&r, p, 0, err);
    }
    return finish(&r, p, out, st, err);
}

/* The image latents: RGB8 -> [-1, 1] -> VAE posterior of the one image ->
 * latent_dist.sample(generator) * scaling_factor (the posterior noise is the
 * stream's first draw, [1, 4, h, w]) -> repeated over the batch, as
 * diffusers' prepare_latents expands init_latents for num_images_per_prompt.
 * A pixel-space model's latents are the [-1, 1] image itself (no draw). */
static lh_status image_latents(run_state *r, const lh_gen_params *p, float *latents,
                               lh_error *err) {
    lh_model *m = r->m;
    lh_backend *be = m->be;
    int64_t hw = p->height * p->width, per = r->c * r->h * r->w;
    float *img = malloc(sizeof(float) * (size_t)(3 * hw));
    float *noise = malloc(sizeof(float) * (size_t)per);
    float *img_be = be->ops->alloc(be, sizeof(float) * (size_t)(3 * hw));
    float *mean_be = be->ops->alloc(be, sizeof(float) * (size_t)per);
    float *logv_be = be->ops->alloc(be, sizeof(float) * (size_t)per);
    float *noise_be = be->ops->alloc(be, sizeof(float) * (size_t)per);
    lh_status st = LH_OK;
    if (!img || !noise || !img_be || !mean_be || !logv_be || !noise_be) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory encoding the init image");
        goto done;
    }
    for (int64_t k = 0; k < hw; k++)
        for (int c = 0; c < 3; c++) {
            float v = (float)p->init_image[k * 3 + c] / 255.0f; /* pil_to_numpy */
            img[c * hw + k] = 2.0f * v - 1.0f;                  /* normalize */
        }
    if (!m->vae) {
        memcpy(latents, img, sizeof(float) * (size_t)per); /* pixel space: per == 3 * hw */
        for (int64_t i = 1; i < r->b; i++)
            memcpy(latents + i * per, latents, sizeof(float) * (size_t)per);
        goto done;
    }
    if ((st = be->ops->upload(be, img_be, img, sizeof(float) * (size_t)(3 * hw))) != LH_OK) {
        st = lh_error_set(err, st, "init image: upload failed");
        goto done;
    }
    if ((st = lh_vae_encode(m->vae, mean_be, logv_be, img_be, 1, p->height, p->width, err)) !=
            LH_OK ||
        (st = lh_rng_randn(r->rng, noise, per, err)) != LH_OK)
        goto done;
    if ((st = be->ops->upload(be, noise_be, noise, sizeof(float) * (size_t)per)) != LH_OK) {
        st = lh_error_set(err, st, "posterior noise: upload failed");
        goto done;
    }
    if ((st = lh_vae_sample_latents(m->vae, mean_be, mean_be, logv_be, noise_be, per, err)) !=
        LH_OK)
        goto done;
    if ((st = be->ops->download(be, latents, mean_be, sizeof(float) * (size_t)per)) != LH_OK) {
        st = lh_error_set(err, st, "init latents: download failed");
        goto done;
    }
    for (int64_t i = 1; i < r->b; i++)
        memcpy(latents + i * per, latents, sizeof(float) * (size_t)per);
done:
    free(img);
    free(noise);
    if (img_be) be->ops->free(be, img_be);
    if (mean_be) be->ops->free(be, mean_be);
    if (logv_be) be->ops->free(be, logv_be);
    if (noise_be) be->ops->free(be, noise_be);
    return st;
}

lh_status lh_pipeline_img2img(lh_model *m, lh_registry *reg, const lh_gen_params *p,
                              lh_gen_result *out, lh_error *err) {
    run_state r;
    lh_status st = lh_pipeline_check(m, p, 1, err);
    if (st != LH_OK) {
        memset(out, 0, sizeof *out);
        return st;
    }
    float *init = NULL, *noise = NULL;
    if ((st = setup(&r, m, p, out, err)) == LH_OK) st = open_scheduler(&r, reg, p, out, err);
    int32_t begin = 0;
    if (st == LH_OK) {
        /* get_timesteps: init_timestep = min(int(steps * strength), steps),
         * t_start = max(steps - init_timestep, 0), begin = t_start * order. The
         * plugin ABI has no `order`: second-order schedulers (Heun, DPM2) list
         * 2 * steps - 1 timesteps, the others steps (PNDM: steps + 1). */
        const double *ts;
        int32_t n_ts = lh_scheduler_timesteps(r.sched, &ts);
        int order = (p->steps > 1 && n_ts >= 2 * p->steps - 1) ? 2 : 1;
        int32_t init_t = (int32_t)((double)p->steps * p->strength);
        if (init_t > p->steps) init_t = p->steps;
        int32_t t_start = p->steps - init_t > 0 ? p->steps - init_t : 0;
        begin = t_start * order;
        if (begin >= n_ts) {
            st = lh_error_set(err, LH_ERR_INVALID,
                              "strength %g with %d steps leaves no step to run "
                              "(int(steps * strength) must be at least 1)",
                              p->strength, (int)p->steps);
        } else if (r.d->set_begin_index) {
            char msg[LH_ERROR_MAX] = "";
            if ((st = r.d->set_begin_index(r.ss, begin, msg, sizeof msg)) != LH_OK)
                st = plugin_fail(&r, st, "set_begin_index", msg, err);
        }
        out->steps_run = n_ts - begin;
        init = malloc(sizeof(float) * (size_t)r.n);
        noise = malloc(sizeof(float) * (size_t)r.n);
        if (st == LH_OK && (!init || !noise))
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for img2img latents");
        if (st == LH_OK) {
            double t0 = now_s();
            st = image_latents(&r, p, init, err);
            out->vae_encode_s = now_s() - t0;
        }
        if (st == LH_OK) {
            /* noise = randn(shape, generator) (after the posterior's draw) */
            if (p->init_noise)
                memcpy(noise, p->init_noise, sizeof(float) * (size_t)r.n);
            else
                st = lh_rng_randn(r.rng, noise, r.n, err);
        }
        if (st == LH_OK) {
            int64_t shape[4] = {r.b, r.c, r.h, r.w};
            lh_tensor t_out, t_init, t_noise;
            char msg[LH_ERROR_MAX] = "";
            if ((st = lh_tensor_view(&t_out, r.sample, LH_DTYPE_F32, 4, shape, err)) == LH_OK &&
                (st = lh_tensor_view(&t_init, init, LH_DTYPE_F32, 4, shape, err)) == LH_OK &&
                (st = lh_tensor_view(&t_noise, noise, LH_DTYPE_F32, 4, shape, err)) == LH_OK &&
                (st = r.d->add_noise(r.ss, &t_out, &t_init, &t_noise, ts[begin], msg,
                                     sizeof msg)) != LH_OK)
                st = plugin_fail(&r, st, "add_noise", msg, err);
        }
    }
    free(init);
    free(noise);
    if (st == LH_OK) st = denoise(&r, p, begin, err);
    return finish(&r, p, out, st, err);
}

/* ---- Generation parameters (A1111's PNG "parameters" text) ---- */

char *lh_pipeline_parameters_text(const lh_gen_params *p, const char *sampler,
                                  const char *model_name, int img2img) {
    const char *neg = p->negative_prompt ? p->negative_prompt : "";
    size_t cap = strlen(p->prompt ? p->prompt : "") + strlen(neg) + strlen(sampler) +
                 strlen(model_name) + 512;
    char *s = malloc(cap);
    if (!s) return NULL;
    int n = snprintf(s, cap, "%s\n", p->prompt ? p->prompt : "");
    if (*neg) n += snprintf(s + n, cap - (size_t)n, "Negative prompt: %s\n", neg);
    n += snprintf(s + n, cap - (size_t)n,
                  "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %lldx%lld, Model: %s",
                  (int)p->steps, sampler, p->cfg_scale, (unsigned long long)p->seed,
                  (long long)p->width, (long long)p->height, model_name);
    if (img2img) n += snprintf(s + n, cap - (size_t)n, ", Denoising strength: %g", p->strength);
    if (p->clip_skip > 0) n += snprintf(s + n, cap - (size_t)n, ", Clip skip: %d", p->clip_skip + 1);
    if (p->batch_size > 1)
        snprintf(s + n, cap - (size_t)n, ", Batch size: %lld", (long long)p->batch_size);
    return s;
}
