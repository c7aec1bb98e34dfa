/* lh_train_run: see trainer.h. */
#include "trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "adapter.h"
#include "backend_load.h"
#include "checkpoint.h"
#include "clip.h"
#include "dataset.h"
#include "file_atomic.h"
#include "log.h"
#include "lora_new.h"
#include "lorahost/adapters.h"
#include "lorahost/safetensors.h"
#include "lorahost/train.h"
#include "loss_plot.h"
#include "lr_schedule.h"
#include "model.h"
#include "noise.h"
#include "optim.h"
#include "pipeline.h"
#include "png.h"
#include "rng.h"
#include "tensor.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define PATH_MAX_LEN 4096
#define TE_TARGETS_N 4
static const char *const TE_TARGETS[TE_TARGETS_N] = {"q_proj", "k_proj", "v_proj", "out_proj"};

void lh_train_opts_default(lh_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->output_name = "lora";
    o->device = "cpu";
    o->steps = 1000;
    o->batch_size = 1;
    o->grad_accum = 1;
    o->lr = 1e-4;
    o->lr_scheduler = "constant";
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->weight_decay = 1e-2;
    o->eps = 1e-8;
    o->max_grad_norm = 1.0;
    o->adapter = "lora";
    o->rank = 4;
    o->alpha = 4.0;
    static const char *const def_targets[] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; i < 4; i++) o->targets[i] = def_targets[i];
    o->n_targets = 4;
    o->prediction = "auto";
    o->precision = LH_DTYPE_F32;
    o->save_every = 500;
    o->keep_checkpoints = 3;
    o->sample_steps = 20;
    o->save_format = LH_EXPORT_KOHYA;
    o->vae_dtype = "auto";
}

const char *lh_train_vae_dtype(const lh_train_opts *o, const lh_backend *be) {
    const char *v = o->vae_dtype ? o->vae_dtype : "auto";
    if (!strcmp(v, "f32") || !strcmp(v, "f16") || !strcmp(v, "bf16")) return v;
    if (strcmp(v, "auto")) return NULL;
    if (!be || lh_backend_host_memory(be)) return "f32";
    return o->precision == LH_DTYPE_F16 ? "f16" : o->precision == LH_DTYPE_BF16 ? "bf16" : "f32";
}

/* ---- State ---- */

/* One trained tensor: float32 data and gradient in the backend's memory
 * (an adapter's on a device: lh_adapter_load moves trainable ones there). */
typedef struct param {
    const char *key; /* adapter file key, or the U-Net's diffusers key */
    float *data, *grad;
    int64_t numel;
    int ndim;
    int64_t shape[LH_MAX_DIMS];
} param;

typedef struct trainer {
    const lh_train_opts *o;
    lh_backend *be; /* the model's, and the trained tensors' (both in its memory) */
    int own_be;     /* be was created here (not opts->backend) */
    double *d_sq;   /* be [np]: each gradient's sum of squares */
    /* What the host reads of an optimizer step, in one download after it:
     * the loss's row sums of every micro-batch, then step_check's found
     * (an int64 in the last slot). */
    double *d_step; /* be [rows + 1] */
    float *d_coef;  /* be [1]: step_check's clip multiplier */
    double *row_k;  /* host [rows]: each row sum's share of the loss */
    int64_t rows, n_rows; /* batch_size * grad_accum; rows written this step */
    lh_unet_checks checks; /* fp16/bf16: the U-Net's NaN/Inf counts of this step */
    lh_model *m;
    lh_dataset *ds;
    lh_registry *reg;
    lh_adapter *a;
    lh_adapt *ad; /* the model's adapter state (dropout switch) */
    char dir[PATH_MAX_LEN], ckpt_dir[PATH_MAX_LEN + 16];
    /* parameters (the adapter's tensors, or every U-Net weight in
     * full-parameter mode) with their AdamW moments and step counts */
    size_t np;
    struct param *p;
    float **m1, **m2; /* backend memory */
    int64_t *adam_step;
    lh_unet_grads *ugrads; /* full-parameter mode */
    /* noise */
    lh_noise_config nc;
    float *betas, *alphas_cumprod;
    lh_lr_schedule sched;
    lh_adamw_opts ao;
    lh_loss_scaler scaler;
    /* history */
    float *loss;
    int64_t step; /* optimizer steps done */
    int64_t resolution, downscale, tokens, dim;
    int random_crop;
} trainer;

enum { S_ORDER = 1, S_STEP = 2, S_CAPTION = 3 };

/* A 64-bit function of (seed, what, n). */
static uint64_t mix(const trainer *t, uint64_t what, uint64_t n) {
    uint64_t z = t->o->seed ^ (what * 0x9E3779B97F4A7C15ull) ^ (n * 0xD1B54A32D192ED03ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A generator for stream `what` of step (or epoch) n: every draw is a
 * function of (seed, what, n). */
static lh_rng *stream(const trainer *t, uint64_t what, uint64_t n, lh_error *err) {
    return lh_rng_create(mix(t, what, n), err);
}

/* Caption dropout of sample `pos`: a function of (seed, pos) alone, so the
 * step's other draws are the same with and without it. */
static int drop_caption(const trainer *t, int64_t pos) {
    double p = t->o->caption_dropout;
    return p > 0.0 && (double)(mix(t, S_CAPTION, (uint64_t)pos) >> 11) < p * 9007199254740992.0;
}

/* A uniform integer in [0, n) (rejection sampling: no modulo bias). */
static uint32_t uniform(lh_rng *r, uint32_t n) {
    uint32_t lim = UINT32_MAX - UINT32_MAX % n, x;
    do x = lh_rng_u32(r);
    while (x >= lim);
    return x % n;
}

/* Dataset index of sample `pos` (counting samples over all epochs). */
static lh_status sample_index(const trainer *t, int64_t pos, int64_t *idx, lh_error *err) {
    int64_t n = lh_dataset_count(t->ds), epoch = pos / n, at = pos % n;
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    lh_rng *r = stream(t, S_ORDER, (uint64_t)epoch, err);
    if (!perm || !r) {
        free(perm);
        lh_rng_destroy(r);
        return lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    }
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)uniform(r, (uint32_t)(i + 1));
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    *idx = perm[at];
    free(perm);
    lh_rng_destroy(r);
    return LH_OK;
}

/* ---- One micro-batch ---- */

typedef struct item {
    int64_t h, w;  /* latent size */
    float *latent; /* host [4, h, w] */
    float *text;   /* host [tokens, dim] (cached), or NULL: encode ids where the group runs */
    float weight;
    int32_t ids[LH_TOKENIZER_WINDOW]; /* the caption's window, when not cached */
} item;

static void item_free(item *it) {
    free(it->latent);
    free(it->text);
    memset(it, 0, sizeof *it);
}

/* Latent of dataset item idx (cached, or encoded now) and its text
 * embedding (cached), or the caption's token window for run_group to
 * encode on the backend. */
static lh_status load_item(trainer *t, int64_t idx, int drop, lh_rng *r, item *out,
                           lh_error *err) {
    memset(out, 0, sizeof *out);
    lh_backend *be = t->be;
    /* a trained text encoder makes cached embeddings stale: encode the caption */
    int cached = lh_dataset_has_latents(t->ds);
    /* drop: the empty caption instead, encoded now */
    int text = lh_dataset_has_text(t->ds) && !t->o->train_text_encoder && !drop;
    lh_dataset_item di;
    lh_status st = lh_dataset_read(t->ds, idx, (cached ? LH_DATASET_LATENT : LH_DATASET_IMAGE) |
                                                   (text ? LH_DATASET_TEXT : 0), &di, err);
    if (st != LH_OK) return st;
    out->weight = di.weight;
    int64_t c_in = lh_unet_get_config(t->m->unet)->in_channels, c_lat = c_in;
    if (cached) {
        c_lat = di.latent_shape[0];
        out->h = di.latent_shape[1];
        out->w = di.latent_shape[2];
        out->latent = di.latent;
        di.latent = NULL;
    } else {
        /* crop (random for random-crop datasets) to a multiple of the VAE's factor */
        int64_t ds = t->downscale, cw = di.width, ch = di.height;
        /* pixel space: crop to a multiple of the U-Net's factor (the VAE's
         * 8 already is one for SD) */
        int64_t cm = t->m->vae ? ds : (int64_t)1 << (lh_unet_get_config(t->m->unet)->n_blocks - 1);
        if (t->random_crop) {
            cw = cw < t->resolution ? cw : t->resolution;
            ch = ch < t->resolution ? ch : t->resolution;
        }
        cw -= cw % cm;
        ch -= ch % cm;
        if (cw < cm || ch < cm) {
            lh_dataset_item_free(&di);
            return lh_error_set(err, LH_ERR_INVALID, "train: dataset item %lld is %lldx%lld, "
                                "smaller than the VAE's %lld", (long long)idx,
                                (long long)di.width, (long long)di.height, (long long)cm);
        }
        int64_t x0 = (di.width - cw) / 2, y0 = (di.height - ch) / 2;
        if (t->random_crop) {
            x0 = (int64_t)uniform(r, (uint32_t)(di.width - cw + 1));
            y0 = (int64_t)uniform(r, (uint32_t)(di.height - ch + 1));
        }
        size_t npx = (size_t)(cw * ch);
        float *img = malloc(3 * npx * sizeof *img);
        out->h = ch / ds;
        out->w = cw / ds;
        size_t nl = (size_t)(c_lat * out->h * out->w);
        float *dimg = be->ops->alloc(be, 3 * npx * sizeof(float));
        float *mean = be->ops->alloc(be, nl * sizeof(float));
        float *logvar = be->ops->alloc(be, nl * sizeof(float));
        float *noise = be->ops->alloc(be, nl * sizeof(float));
        float *hn = malloc(nl * sizeof *hn);
        out->latent = malloc(nl * sizeof *out->latent);
        if (!img || !dimg || !mean || !logvar || !noise || !hn || !out->latent)
            st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
        for (int64_t y = 0; st == LH_OK && y < ch; y++) /* HWC uint8 -> CHW in [-1, 1] */
            for (int64_t x = 0; x < cw; x++)
                for (int c = 0; c < 3; c++)
                    img[(size_t)c * npx + (size_t)(y * cw + x)] =
                        di.rgb[((y0 + y) * di.width + x0 + x) * 3 + c] / 127.5f - 1.0f;
        if (st == LH_OK && !t->m->vae) /* pixel space: the latent is the image */
            memcpy(out->latent, img, nl * sizeof(float));
        else if (st == LH_OK)
            st = be->ops->upload(be, dimg, img, 3 * npx * sizeof(float));
        if (st == LH_OK && t->m->vae)
            st = lh_vae_encode(t->m->vae, mean, logvar, dimg, 1, ch, cw, err);
        if (st == LH_OK && t->m->vae) st = lh_rng_randn(r, hn, (int64_t)nl, err);
        if (st == LH_OK && t->m->vae) st = be->ops->upload(be, noise, hn, nl * sizeof(float));
        if (st == LH_OK && t->m->vae)
            st = lh_vae_sample_latents(t->m->vae, mean, mean, logvar, noise, (int64_t)nl, err);
        if (st == LH_OK && t->m->vae)
            st = be->ops->download(be, out->latent, mean, nl * sizeof(float));
        free(img);
        free(hn);
        be->ops->free(be, dimg);
        be->ops->free(be, mean);
        be->ops->free(be, logvar);
        be->ops->free(be, noise);
    }
    if (st == LH_OK && c_lat != c_in)
        st = lh_error_set(err, LH_ERR_SHAPE, "train: cached latent of item %lld has %lld "
                          "channels, the U-Net takes %lld", (long long)idx, (long long)c_lat,
                          (long long)c_in);
    if (st == LH_OK && text) {
        if (di.text_shape[0] != t->tokens || di.text_shape[1] != t->dim)
            st = lh_error_set(err, LH_ERR_SHAPE, "train: cached text embedding of item %lld is "
                              "[%lld, %lld], the U-Net takes [%lld, %lld]", (long long)idx,
                              (long long)di.text_shape[0], (long long)di.text_shape[1],
                              (long long)t->tokens, (long long)t->dim);
        out->text = di.text;
        di.text = NULL;
    } else if (st == LH_OK) {
        size_t nw = 0;
        st = lh_tokenizer_window(t->m->tok, drop ? "" : di.caption, t->m->pad_id,
                                 LH_TOKENIZER_TRUNCATE, out->ids, 1, &nw, err);
    }
    lh_dataset_item_free(&di);
    if (st != LH_OK) item_free(out);
    return st;
}

/* Weighted mse over a group of same-size items: L = sum_i w_i mean_i((pred -
 * target)^2) / denom; dL/dpred likewise. The gradient is made on the
 * backend (mse_backward) without waiting for it; the n row sums land in
 * the step's d_step, read once after the optimizer step. */
typedef struct wmse {
    lh_backend *be;
    const float *target; /* backend [n, per] */
    const float *w;      /* host [n] */
    double *sq;          /* backend [n] */
    int64_t n, per;
    double denom;
} wmse;

static lh_status wmse_loss(void *ctx, float *dout, float *loss, const float *out, int64_t numel,
                           lh_error *err) {
    wmse *c = ctx;
    lh_backend *be = c->be;
    c->per = numel / c->n;
    double *coef = malloc((size_t)c->n * sizeof *coef);
    lh_status st = coef ? LH_OK : lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    for (int64_t i = 0; st == LH_OK && i < c->n; i++)
        coef[i] = 2.0 * c->w[i] / ((double)c->per * c->denom);
    if (st == LH_OK &&
        (st = be->ops->mse_backward(be, dout, c->sq, out, c->target, coef, c->n, c->per)) != LH_OK)
        st = lh_error_set(err, st, "train: the loss on the %s backend failed", be->ops->name);
    free(coef);
    *loss = 0.0f; /* read after the optimizer step */
    return st;
}

/* Forward + backward of `n` same-size items; their loss rows into d_step. */
static lh_status run_group(trainer *t, item *const *its, int64_t n, lh_rng *r, double denom,
                           lh_error *err) {
    const lh_train_opts *o = t->o;
    lh_backend *be = t->be;
    int64_t h = its[0]->h, w = its[0]->w;
    int64_t ch = lh_unet_get_config(t->m->unet)->in_channels, per = ch * h * w;
    size_t nl = (size_t)(n * per), nc = (size_t)(n * t->tokens * t->dim);
    float *x0 = malloc(nl * sizeof *x0), *noise = malloc(nl * sizeof *noise);
    float *noisy = malloc(nl * sizeof *noisy), *target = malloc(nl * sizeof *target);
    float *ctx = malloc(nc * sizeof *ctx), *wts = malloc((size_t)n * sizeof *wts);
    float *snr = malloc((size_t)n * sizeof *snr), *ts_f = malloc((size_t)n * sizeof *ts_f);
    float *offs = malloc((size_t)(n * ch) * sizeof *offs);
    int64_t *ts = malloc((size_t)n * sizeof *ts);
    float *d_noisy = be->ops->alloc(be, nl * sizeof(float));
    float *d_target = be->ops->alloc(be, nl * sizeof(float));
    float *d_ctx = be->ops->alloc(be, nc * sizeof(float));
    int te = o->train_text_encoder;
    float *g_ctx = te ? be->ops->alloc(be, nc * sizeof(float)) : NULL;
    int32_t *ids = te ? malloc((size_t)(n * t->tokens) * sizeof *ids) : NULL;
    lh_status st = LH_OK;
    if (!x0 || !noise || !noisy || !target || !ctx || !wts || !snr || !ts_f || !offs || !ts ||
        !d_noisy || !d_target || !d_ctx || (te && (!g_ctx || !ids)))
        st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    if (st == LH_OK && t->n_rows + n > t->rows)
        st = lh_error_set(err, LH_ERR_INTERNAL, "train: more than %lld loss rows in a step",
                          (long long)t->rows);
    for (int64_t i = 0; st == LH_OK && i < n; i++) {
        memcpy(x0 + i * per, its[i]->latent, (size_t)per * sizeof *x0);
        if (its[i]->text)
            memcpy(ctx + i * t->tokens * t->dim, its[i]->text,
                   (size_t)(t->tokens * t->dim) * sizeof *ctx);
        else /* encoded below, on the backend */
            memset(ctx + i * t->tokens * t->dim, 0, (size_t)(t->tokens * t->dim) * sizeof *ctx);
        wts[i] = its[i]->weight;
        if (te) memcpy(ids + i * t->tokens, its[i]->ids, (size_t)t->tokens * sizeof *ids);
        ts[i] = (int64_t)uniform(r, (uint32_t)t->nc.num_train_timesteps);
        ts_f[i] = (float)ts[i];
    }
    /* noise, then the offset's draws, as the script does */
    if (st == LH_OK) st = lh_rng_randn(r, noise, (int64_t)nl, err);
    if (st == LH_OK && o->noise_offset > 0) {
        st = lh_rng_randn(r, offs, n * ch, err);
        if (st == LH_OK)
            st = lh_noise_apply_offset(noise, offs, o->noise_offset, n, ch, h * w, err);
    }
    int64_t T = t->nc.num_train_timesteps;
    if (st == LH_OK) st = lh_noise_add(noisy, x0, noise, ts, t->alphas_cumprod, n, per, T, err);
    if (st == LH_OK) {
        if (t->nc.prediction_type == LH_NOISE_PRED_V_PREDICTION)
            st = lh_noise_velocity(target, x0, noise, ts, t->alphas_cumprod, n, per, T, err);
        else if (t->nc.prediction_type == LH_NOISE_PRED_SAMPLE)
            memcpy(target, x0, nl * sizeof *target);
        else
            memcpy(target, noise, nl * sizeof *target);
    }
    if (st == LH_OK && o->snr_gamma > 0) {
        st = lh_noise_snr(snr, ts, t->alphas_cumprod, n, T, err);
        if (st == LH_OK)
            st = lh_noise_min_snr_weights(snr, snr, n, o->snr_gamma, t->nc.prediction_type, err);
        for (int64_t i = 0; st == LH_OK && i < n; i++) wts[i] *= snr[i];
    }
    if (st == LH_OK) st = be->ops->upload(be, d_noisy, noisy, nl * sizeof(float));
    if (st == LH_OK) st = be->ops->upload(be, d_target, target, nl * sizeof(float));
    if (st == LH_OK) st = be->ops->upload(be, d_ctx, ctx, nc * sizeof(float));
    /* the captions without a cached embedding, one at a time as the text
     * encoder sees them at inference, into their rows where they run */
    for (int64_t i = 0; st == LH_OK && i < n; i++)
        if (!its[i]->text)
            st = lh_clip_encode(t->m->clip, d_ctx + i * t->tokens * t->dim, its[i]->ids, 1,
                                t->tokens, 0, err);
    /* LoRA dropout: a mask per U-Net call, the same in its backward */
    if (st == LH_OK && t->ad && o->dropout > 0) {
        t->ad->layers.dropout = o->dropout;
        t->ad->layers.dropout_seed = (uint64_t)lh_rng_u32(r) << 32 | lh_rng_u32(r);
    }
    if (st == LH_OK) {
        wmse c = {be, d_target, wts, t->d_step + t->n_rows, n, 0, denom};
        lh_unet_train_opts uo = {.checkpointing = o->checkpointing,
                                 .precision = o->precision,
                                 .loss_scale = t->scaler.scale,
                                 .grads = t->ugrads,
                                 .checks = &t->checks};
        float l = 0.0f;
        st = lh_unet_train_step(t->m->unet, &uo, wmse_loss, &c, &l, g_ctx, d_noisy, ts_f, d_ctx,
                                n, h, w, t->tokens, NULL, err);
        for (int64_t i = 0; st == LH_OK && i < n; i++)
            t->row_k[t->n_rows + i] = (double)wts[i] / (double)c.per / denom;
        if (st == LH_OK) t->n_rows += n;
        /* encoding (load_item), its backward and sampling run without dropout:
         * the backward recomputes the forward the U-Net's context came from */
        if (t->ad) t->ad->layers.dropout = 0.0;
        /* the text encoder's adapter: dL/d(context) back through it (float32) */
        if (st == LH_OK && te)
            st = lh_clip_encode_backward(t->m->clip, NULL, NULL, g_ctx, ids, n, t->tokens, 0,
                                         err);
    }
    free(x0), free(noise), free(noisy), free(target), free(ctx), free(wts), free(snr);
    free(ts_f), free(offs), free(ts);
    if (d_noisy) be->ops->free(be, d_noisy);
    if (d_target) be->ops->free(be, d_target);
    if (d_ctx) be->ops->free(be, d_ctx);
    if (g_ctx) be->ops->free(be, g_ctx);
    free(ids);
    return st;
}

/* One micro-batch: batch_size samples from position pos, grouped by size. */
static lh_status micro_batch(trainer *t, int64_t pos, lh_rng *r, double denom, lh_error *err) {
    int64_t b = t->o->batch_size;
    item *its = calloc((size_t)b, sizeof *its);
    item **grp = calloc((size_t)b, sizeof *grp);
    int *done = calloc((size_t)b, sizeof *done);
    lh_status st = its && grp && done ? LH_OK : lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    for (int64_t j = 0; st == LH_OK && j < b; j++) {
        int64_t idx = 0;
        st = sample_index(t, pos + j, &idx, err);
        if (st == LH_OK) st = load_item(t, idx, drop_caption(t, pos + j), r, &its[j], err);
    }
    for (int64_t j = 0; st == LH_OK && j < b; j++) {
        if (done[j]) continue;
        int64_t n = 0;
        for (int64_t k = j; k < b; k++)
            if (!done[k] && its[k].h == its[j].h && its[k].w == its[j].w) {
                grp[n++] = &its[k];
                done[k] = 1;
            }
        st = run_group(t, grp, n, r, denom, err);
    }
    for (int64_t j = 0; its && j < b; j++) item_free(&its[j]);
    free(its);
    free(grp);
    free(done);
    return st;
}

/* ---- Parameters, checkpoints, export ---- */

static lh_status alloc_params(trainer *t, size_t n, lh_error *err) {
    t->np = n;
    t->p = calloc(n, sizeof *t->p);
    t->m1 = calloc(n, sizeof *t->m1);
    t->m2 = calloc(n, sizeof *t->m2);
    t->adam_step = calloc(n, sizeof *t->adam_step);
    if (!t->p || !t->m1 || !t->m2 || !t->adam_step)
        return lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    return LH_OK;
}

/* The AdamW moments (zeros), the gradient sums and the step's read-back,
 * in the backend's memory. */
static lh_status alloc_moments(trainer *t, lh_error *err) {
    lh_backend *be = t->be;
    t->rows = t->o->batch_size * t->o->grad_accum;
    t->d_sq = be->ops->alloc(be, (t->np ? t->np : 1) * sizeof *t->d_sq);
    t->d_step = be->ops->alloc(be, (size_t)(t->rows + 1) * sizeof *t->d_step);
    t->d_coef = be->ops->alloc(be, sizeof *t->d_coef);
    t->row_k = calloc((size_t)t->rows, sizeof *t->row_k);
    if (!t->d_sq || !t->d_step || !t->d_coef || !t->row_k)
        return lh_error_set(err, LH_ERR_NOMEM, "train: out of %s memory", be->ops->name);
    for (size_t i = 0; i < t->np; i++) {
        size_t bytes = (size_t)t->p[i].numel * sizeof(float);
        t->m1[i] = be->ops->alloc(be, bytes ? bytes : 1);
        t->m2[i] = be->ops->alloc(be, bytes ? bytes : 1);
        if (!t->m1[i] || !t->m2[i])
            return lh_error_set(err, LH_ERR_NOMEM, "train: out of %s memory for the AdamW moments",
                                be->ops->name);
        lh_status st = be->ops->memset0(be, t->m1[i], bytes);
        if (st == LH_OK) st = be->ops->memset0(be, t->m2[i], bytes);
        if (st != LH_OK) return lh_error_set(err, st, "train: %s memset failed", be->ops->name);
    }
    return LH_OK;
}

/* A host-readable copy of n floats at src (backend memory): src itself when
 * the backend's memory is the host's (*own NULL), else a download into *own. */
static lh_status host_view(const trainer *t, const float **out, float **own, const float *src,
                           int64_t n, lh_error *err) {
    *own = NULL;
    *out = src;
    if (lh_backend_host_memory(t->be)) return LH_OK;
    if (!(*own = malloc((size_t)(n ? n : 1) * sizeof **own)))
        return lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    *out = *own;
    lh_status st = t->be->ops->download(t->be, *own, src, (size_t)n * sizeof **own);
    return st == LH_OK ? st : lh_error_set(err, st, "train: %s download failed", t->be->ops->name);
}

static lh_status adapter_params(trainer *t, lh_error *err) {
    lh_status st = alloc_params(t, lh_adapter_n_params(t->a), err);
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        lh_tensor *v = NULL, *g = NULL;
        if (lh_adapter_param(t->a, i, &t->p[i].key, &v, &g) != LH_OK || !g)
            return lh_error_set(err, LH_ERR_INTERNAL, "train: adapter parameter %zu missing", i);
        t->p[i].data = v->data;
        t->p[i].grad = g->data;
        t->p[i].numel = v->numel;
        t->p[i].ndim = v->ndim;
        memcpy(t->p[i].shape, v->shape, sizeof t->p[i].shape);
    }
    return st == LH_OK ? alloc_moments(t, err) : st;
}

static void count_param(void *ctx, const lh_unet_param *pm) {
    (void)pm;
    ((trainer *)ctx)->np++;
}

static void take_param(void *ctx, const lh_unet_param *pm) {
    trainer *t = ctx;
    const char *key = pm->key;
    const float *w = *pm->w;
    size_t numel = pm->numel;
    param *q = &t->p[t->np++];
    q->key = lh_unet_grads_key(t->ugrads, t->np - 1); /* key is only valid during the call */
    q->data = (float *)w; /* the U-Net's own weights: AdamW updates them in place */
    q->numel = (int64_t)numel;
    q->ndim = 1;
    q->shape[0] = (int64_t)numel;
    size_t n = 0;
    q->grad = (float *)lh_unet_grad(t->ugrads, key, &n);
    if (n != numel) q->grad = NULL;
}

/* Full-parameter mode: every U-Net weight, its gradient in the store. */
static lh_status unet_params(trainer *t, lh_error *err) {
    lh_status st = lh_unet_grads_create(&t->ugrads, t->m->unet, err);
    if (st != LH_OK) return st;
    t->np = 0;
    lh__unet_params(t->m->unet, count_param, t);
    if ((st = alloc_params(t, t->np, err)) != LH_OK) return st;
    t->np = 0;
    lh__unet_params(t->m->unet, take_param, t);
    for (size_t i = 0; i < t->np; i++)
        if (!t->p[i].grad)
            return lh_error_set(err, LH_ERR_INTERNAL, "train: no gradient for %s", t->p[i].key);
    return alloc_moments(t, err);
}

static lh_status grads_zero(trainer *t, lh_error *err) {
    for (size_t i = 0; i < t->np; i++) {
        lh_status st = t->be->ops->memset0(t->be, t->p[i].grad, (size_t)t->p[i].numel * sizeof(float));
        if (st != LH_OK) return lh_error_set(err, st, "train: %s memset failed", t->be->ops->name);
    }
    return LH_OK;
}

/* Every gradient multiplied by inv, its sum of squares into d_sq, then
 * step_check: the overflow check (a non-finite sum, or a NaN/Inf the U-Net
 * counted) and, when clipping, torch's clip_grad_norm_ multiplier applied
 * to every gradient. All of it on the backend, without waiting. */
static lh_status grads_check(trainer *t, float inv, lh_error *err) {
    lh_backend *be = t->be;
    double max_norm = t->o->max_grad_norm;
    int64_t *found = (int64_t *)(t->d_step + t->rows);
    lh_status st = LH_OK;
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        if (inv != 1.0f) st = be->ops->scale(be, t->p[i].grad, t->p[i].numel, inv);
        if (st == LH_OK) st = be->ops->sum_squares(be, t->d_sq + i, t->p[i].grad, t->p[i].numel);
    }
    if (st == LH_OK)
        st = be->ops->step_check(be, t->d_coef, found, t->d_sq, (int64_t)t->np, t->checks.counts,
                                 t->checks.n, max_norm > 0 ? (float)max_norm : 0.0f);
    for (size_t i = 0; st == LH_OK && max_norm > 0 && i < t->np; i++)
        st = be->ops->scale_by(be, t->p[i].grad, t->p[i].numel, t->d_coef);
    return st == LH_OK ? st
                       : lh_error_set(err, st, "train: the gradient check on the %s backend "
                                      "failed", be->ops->name);
}

/* The warning for a step skipped for NaN/Inf: how many gradients hold one
 * and where the first appeared (read back only now). */
static void warn_skipped(trainer *t) {
    lh_backend *be = t->be;
    double *sq = malloc((t->np ? t->np : 1) * sizeof *sq);
    int64_t *counts = malloc((size_t)(t->checks.n ? t->checks.n : 1) * sizeof *counts);
    lh_unet_overflow rep = {0};
    int64_t bad = 0;
    size_t first = 0;
    if (sq && counts &&
        be->ops->download(be, sq, t->d_sq, t->np * sizeof *sq) == LH_OK &&
        (t->checks.n == 0 || be->ops->download(be, counts, t->checks.counts,
                                               (size_t)t->checks.n * sizeof *counts) == LH_OK)) {
        for (size_t i = t->np; i-- > 0;)
            if (!isfinite(sq[i])) bad++, first = i;
        lh_unet_checks_report(&rep, &t->checks, counts);
    }
    lh_log(LH_LOG_WARN, "train", "step %lld: Inf/NaN gradients in %lld tensors (first at %s); "
           "step skipped, loss scale now %g", (long long)t->step + 1, (long long)bad,
           rep.count ? rep.at[0].unit : bad ? t->p[first].key : "the parameters",
           (double)t->scaler.scale);
    free(sq);
    free(counts);
}

/* What must agree for a resume: the settings the saved state depends on. */
static void fingerprint(const trainer *t, char *out, size_t size) {
    const lh_train_opts *o = t->o;
    int n = snprintf(out, size, "rank=%d alpha=%.17g seed=%" PRIu64 " batch=%lld accum=%lld "
                     "precision=%s te=%d full=%d dropout=%.17g kind=%s targets=", o->rank, o->alpha,
                     o->seed, (long long)o->batch_size, (long long)o->grad_accum,
                     lh_dtype_name(o->precision), o->train_text_encoder, o->full_parameter,
                     o->dropout, o->adapter);
    for (int i = 0; i < o->n_targets && n > 0 && (size_t)n < size; i++)
        n += snprintf(out + n, size - (size_t)n, "%s%s", i ? "," : "", o->targets[i]);
}

static lh_status save_checkpoint(trainer *t, lh_error *err) {
    size_t n = 3 * t->np + 2;
    lh_ckpt_tensor *ts = calloc(n, sizeof *ts);
    char **names = calloc(3 * t->np, sizeof *names);
    float **own = calloc(3 * t->np, sizeof *own); /* host copies of device tensors */
    lh_status st = ts && names && own ? LH_OK
                                      : lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    size_t k = 0;
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        const param *v = &t->p[i];
        const float *dev[3] = {v->data, t->m1[i], t->m2[i]}, *src[3];
        for (int j = 0; st == LH_OK && j < 3; j++)
            st = host_view(t, &src[j], &own[3 * i + (size_t)j], dev[j], v->numel, err);
        static const char *const pre[3] = {"param/", "adam_m/", "adam_v/"};
        for (int j = 0; st == LH_OK && j < 3; j++) {
            size_t len = strlen(pre[j]) + strlen(v->key) + 1;
            if (!(names[3 * i + (size_t)j] = malloc(len))) {
                st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
                break;
            }
            snprintf(names[3 * i + (size_t)j], len, "%s%s", pre[j], v->key);
            lh_ckpt_tensor *c = &ts[k++];
            c->name = names[3 * i + (size_t)j];
            c->dtype = LH_DTYPE_F32;
            c->ndim = v->ndim;
            memcpy(c->shape, v->shape, sizeof c->shape);
            c->data = src[j];
        }
    }
    if (st == LH_OK) {
        ts[k++] = (lh_ckpt_tensor){"adam_step", LH_DTYPE_I64, 1, {(int64_t)t->np}, t->adam_step};
        ts[k++] = (lh_ckpt_tensor){"loss", LH_DTYPE_F32, 1, {t->step}, t->loss};
    }
    char fp[1024], scale[64], clean[32], skipped[32], steps[32];
    fingerprint(t, fp, sizeof fp);
    snprintf(scale, sizeof scale, "%.9g", (double)t->scaler.scale);
    snprintf(clean, sizeof clean, "%d", t->scaler.clean);
    snprintf(skipped, sizeof skipped, "%lld", (long long)t->scaler.skipped);
    snprintf(steps, sizeof steps, "%lld", (long long)t->scaler.steps);
    lh_ckpt_meta meta[] = {{"fingerprint", fp},     {"scaler_scale", scale},
                           {"scaler_clean", clean}, {"scaler_skipped", skipped},
                           {"scaler_steps", steps}};
    if (st == LH_OK)
        st = lh_ckpt_save(t->ckpt_dir, t->step, t->o->keep_checkpoints > 0 ? t->o->keep_checkpoints
                                                                          : 1000000,
                          ts, k, meta, sizeof meta / sizeof meta[0], err);
    for (size_t i = 0; names && i < 3 * t->np; i++) free(names[i]);
    for (size_t i = 0; own && i < 3 * t->np; i++) free(own[i]);
    free(names);
    free(own);
    free(ts);
    return st;
}

static lh_status resume(trainer *t, char *from, size_t from_size, lh_error *err) {
    lh_ckpt *c = NULL;
    lh_status st = lh_ckpt_open_latest(&c, t->ckpt_dir, err);
    if (st == LH_ERR_NOT_FOUND) {
        lh_log(LH_LOG_INFO, "train", "no checkpoint in %s: starting from step 0", t->ckpt_dir);
        return LH_OK;
    }
    if (st != LH_OK) return st;
    if (lh_ckpt_warnings(c)[0]) lh_log(LH_LOG_WARN, "train", "%s", lh_ckpt_warnings(c));
    char fp[1024];
    fingerprint(t, fp, sizeof fp);
    const char *saved = lh_ckpt_meta_find(c, "fingerprint");
    if (!saved || strcmp(saved, fp))
        st = lh_error_set(err, LH_ERR_CONFIG, "train: %s was made with other settings (%s), "
                          "not these (%s): resume with the same config or another output_dir",
                          lh_ckpt_path(c), saved ? saved : "none", fp);
    int64_t step = lh_ckpt_step(c);
    if (st == LH_OK && (step < 1 || step > t->o->steps))
        st = lh_error_set(err, LH_ERR_CONFIG, "train: %s is at step %lld, outside 1..%lld",
                          lh_ckpt_path(c), (long long)step, (long long)t->o->steps);
    int direct = lh_backend_host_memory(t->be);
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        const param *v = &t->p[i];
        float *dst[3] = {v->data, t->m1[i], t->m2[i]};
        static const char *const pre[3] = {"param/", "adam_m/", "adam_v/"};
        size_t bytes = (size_t)v->numel * sizeof(float);
        float *tmp = direct ? NULL : malloc(bytes ? bytes : 1);
        if (!direct && !tmp) st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
        for (int j = 0; st == LH_OK && j < 3; j++) {
            char name[512];
            snprintf(name, sizeof name, "%s%s", pre[j], v->key);
            st = lh_ckpt_read(direct ? dst[j] : tmp, c, name, LH_DTYPE_F32, v->ndim, v->shape, err);
            if (st == LH_OK && !direct &&
                (st = t->be->ops->upload(t->be, dst[j], tmp, bytes)) != LH_OK)
                st = lh_error_set(err, st, "train: %s upload failed", t->be->ops->name);
        }
        free(tmp);
    }
    int64_t np = (int64_t)t->np;
    if (st == LH_OK) st = lh_ckpt_read(t->adam_step, c, "adam_step", LH_DTYPE_I64, 1, &np, err);
    if (st == LH_OK) st = lh_ckpt_read(t->loss, c, "loss", LH_DTYPE_F32, 1, &step, err);
    const char *sc = lh_ckpt_meta_find(c, "scaler_scale"), *cl = lh_ckpt_meta_find(c, "scaler_clean");
    const char *sk = lh_ckpt_meta_find(c, "scaler_skipped"), *ss = lh_ckpt_meta_find(c, "scaler_steps");
    if (st == LH_OK && (!sc || !cl || !sk || !ss))
        st = lh_error_set(err, LH_ERR_FORMAT, "train: %s lacks the loss-scaler state",
                          lh_ckpt_path(c));
    if (st == LH_OK) {
        t->scaler.scale = strtof(sc, NULL);
        t->scaler.clean = (int)strtol(cl, NULL, 10);
        t->scaler.skipped = strtoll(sk, NULL, 10);
        t->scaler.steps = strtoll(ss, NULL, 10);
        t->step = step;
        snprintf(from, from_size, "%s", lh_ckpt_path(c));
        /* a checkpoint holding NaN/Inf would train on silently */
        for (size_t i = 0; st == LH_OK && i < t->np; i++) {
            int64_t bad = 0;
            if (t->be->ops->count_nonfinite(t->be, &bad, t->p[i].data, t->p[i].numel) != LH_OK)
                bad = 1;
            if (bad)
                st = lh_error_set(err, LH_ERR_NUMERIC, "train: %s holds %lld NaN/Inf values in "
                                  "param/%s", lh_ckpt_path(c), (long long)bad, t->p[i].key);
        }
        if (st == LH_OK && t->a) st = lh_adapter_refresh(t->a, err);
    }
    lh_ckpt_close(c);
    return st;
}

/* Full-parameter mode: output_dir/unet/ as a diffusers U-Net folder (the
 * model's config.json, every weight F32 with the shapes of its file). */
static lh_status export_unet(trainer *t, lh_error *err) {
    char dir[PATH_MAX_LEN + 16], path[PATH_MAX_LEN + 64], src[LH_MODEL_PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/unet", t->dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lh_error_set(err, LH_ERR_IO, "train: cannot create %s: %s", dir, strerror(errno));
    snprintf(src, sizeof src, "%s/unet/diffusion_pytorch_model.safetensors", t->m->info.path);
    lh_st_file *f = NULL;
    lh_st_writer *w = NULL;
    float **own = calloc(t->np ? t->np : 1, sizeof *own); /* host copies of device weights */
    lh_status st = own ? LH_OK : lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    if (st == LH_OK) st = lh_st_open(&f, src, err);
    if (st == LH_OK) st = lh_st_writer_create(&w, err);
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        const lh_st_tensor *o = lh_st_find(f, t->p[i].key);
        if (!o || o->numel != t->p[i].numel) {
            st = lh_error_set(err, LH_ERR_FORMAT, "train: %s has no tensor %s of %lld elements",
                              src, t->p[i].key, (long long)t->p[i].numel);
            break;
        }
        const float *data = NULL;
        st = host_view(t, &data, &own[i], t->p[i].data, t->p[i].numel, err);
        if (st == LH_OK)
            st = lh_st_writer_add(w, t->p[i].key, LH_DTYPE_F32, o->ndim, o->shape, data, err);
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (st == LH_OK) st = lh_st_save(w, path, err);
    lh_st_writer_destroy(w);
    for (size_t i = 0; own && i < t->np; i++) free(own[i]);
    free(own);
    lh_st_close(f);
    /* the config as it was */
    snprintf(src, sizeof src, "%s/unet/config.json", t->m->info.path);
    FILE *in = st == LH_OK ? fopen(src, "rb") : NULL;
    if (st == LH_OK && !in)
        st = lh_error_set(err, LH_ERR_IO, "train: cannot read %s: %s", src, strerror(errno));
    if (in) {
        char buf[65536];
        size_t n = fread(buf, 1, sizeof buf, in);
        int full = !feof(in);
        fclose(in);
        snprintf(path, sizeof path, "%s/config.json", dir);
        st = full ? lh_error_set(err, LH_ERR_FORMAT, "train: %s is larger than 64 KiB", src)
                  : lh_write_file_atomic(path, buf, n, err);
    }
    return st;
}

static lh_status export_adapter(trainer *t, lh_error *err) {
    const lh_train_opts *o = t->o;
    char path[PATH_MAX_LEN + 300], dim[32], alpha[32], steps[32], lr[32], n_img[32], res[64];
    snprintf(path, sizeof path, "%s/%s.safetensors", t->dir, o->output_name);
    snprintf(dim, sizeof dim, "%d", o->rank);
    snprintf(alpha, sizeof alpha, "%g", o->alpha);
    snprintf(steps, sizeof steps, "%lld", (long long)t->step);
    snprintf(lr, sizeof lr, "%g", o->lr);
    snprintf(n_img, sizeof n_img, "%lld", (long long)lh_dataset_count(t->ds));
    snprintf(res, sizeof res, "(%lld, %lld)", (long long)t->resolution,
             (long long)t->resolution);
    int v2 = t->m->info.arch == LH_MODEL_ARCH_SD2;
    int loha = !strcmp(o->adapter, "loha");
    const char *meta[] = {"ss_network_module", loha ? "lycoris.kohya" : "networks.lora",
                          "ss_network_args", loha ? "{\"algo\": \"loha\"}" : "{}",
                          "ss_network_dim", dim,
                          "ss_network_alpha", alpha,
                          "ss_base_model_version", v2 ? "sd_v2" : "sd_v1",
                          "ss_v2", v2 ? "True" : "False",
                          "ss_steps", steps,
                          "ss_learning_rate", lr,
                          "ss_num_train_images", n_img,
                          "ss_resolution", res,
                          "ss_output_name", o->output_name,
                          "ss_sd_model_name", t->m->info.name,
                          "ss_training_comment", "trained by lorahost"};
    return lh_adapter_export(path, t->a, o->save_format, meta, sizeof meta / sizeof meta[0] / 2,
                             err);
}

static lh_status write_plot(trainer *t, lh_error *err) {
    if (t->step < 1) return LH_OK;
    char path[PATH_MAX_LEN + 16];
    snprintf(path, sizeof path, "%s/loss.svg", t->dir);
    return lh_loss_plot_svg(path, t->loss, t->step, "lorahost train: loss per step", err);
}

static lh_status samples(trainer *t, lh_error *err) {
    const lh_train_opts *o = t->o;
    char dir[PATH_MAX_LEN + 16];
    snprintf(dir, sizeof dir, "%s/samples", t->dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lh_error_set(err, LH_ERR_IO, "train: cannot create %s: %s", dir, strerror(errno));
    for (int k = 0; k < o->n_sample_prompts; k++) {
        lh_gen_params p;
        lh_gen_params_init(&p);
        p.prompt = o->sample_prompts[k];
        p.steps = o->sample_steps;
        p.width = p.height = t->resolution;
        p.seed = o->seed + (uint64_t)k;
        lh_gen_result r;
        lh_status st = lh_pipeline_txt2img(t->m, t->reg, &p, &r, err);
        if (st != LH_OK) return st;
        char path[PATH_MAX_LEN + 64];
        snprintf(path, sizeof path, "%s/step-%08lld-%d.png", dir, (long long)t->step, k);
        char *text = lh_pipeline_parameters_text(&p, r.scheduler_id, t->m->info.name, 0);
        st = lh_png_write(path, r.images, r.width, r.height, "parameters", text, err);
        free(text);
        lh_gen_result_free(&r);
        if (st != LH_OK) return st;
    }
    return LH_OK;
}

/* ---- Setup ---- */

static lh_status read_noise_config(trainer *t, lh_error *err) {
    lh_noise_config_default(&t->nc);
    const lh_model_info *mi = &t->m->info;
    json_error_t je;
    json_t *j = mi->scheduler_config[0] ? json_load_file(mi->scheduler_config, 0, &je)
                                        : json_loads(mi->scheduler_json, 0, &je);
    const char *src = mi->scheduler_config[0] ? mi->scheduler_config : "the built-in scheduler";
    if (!j) return lh_error_set(err, LH_ERR_CONFIG, "train: %s: %s", src, je.text);
    lh_status st = LH_OK;
    json_t *v;
    if ((v = json_object_get(j, "num_train_timesteps")) && json_is_integer(v))
        t->nc.num_train_timesteps = json_integer_value(v);
    if ((v = json_object_get(j, "beta_start")) && json_is_number(v))
        t->nc.beta_start = json_number_value(v);
    if ((v = json_object_get(j, "beta_end")) && json_is_number(v))
        t->nc.beta_end = json_number_value(v);
    if ((v = json_object_get(j, "beta_schedule")) && json_is_string(v))
        st = lh_beta_schedule_parse(&t->nc.beta_schedule, json_string_value(v), err);
    const char *pred = strcmp(t->o->prediction, "auto") ? t->o->prediction : mi->prediction_type;
    if (st == LH_OK) st = lh_noise_pred_parse(&t->nc.prediction_type, pred[0] ? pred : "epsilon", err);
    json_decref(j);
    if (st == LH_OK && (t->nc.num_train_timesteps < 1 || t->nc.num_train_timesteps > 100000))
        st = lh_error_set(err, LH_ERR_CONFIG, "train: %s: num_train_timesteps %lld out of range",
                          src, (long long)t->nc.num_train_timesteps);
    if (st != LH_OK) return st;
    size_t T = (size_t)t->nc.num_train_timesteps;
    t->betas = malloc(T * sizeof *t->betas);
    t->alphas_cumprod = malloc(T * sizeof *t->alphas_cumprod);
    if (!t->betas || !t->alphas_cumprod)
        return lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    return lh_noise_alphas_cumprod(t->betas, t->alphas_cumprod, &t->nc, err);
}

static lh_status make_dirs(trainer *t, lh_error *err) {
    const char *d = t->o->output_dir;
    if (strlen(d) >= PATH_MAX_LEN)
        return lh_error_set(err, LH_ERR_INVALID, "train: output_dir is too long");
    snprintf(t->dir, sizeof t->dir, "%s", d);
    snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", d);
    /* mkdir -p */
    char part[PATH_MAX_LEN];
    for (size_t i = 1, n = strlen(t->dir); i <= n; i++) {
        if (t->dir[i] != '/' && t->dir[i] != '\0') continue;
        memcpy(part, t->dir, i);
        part[i] = '\0';
        if (mkdir(part, 0755) != 0 && errno != EEXIST)
            return lh_error_set(err, LH_ERR_IO, "train: cannot create %s: %s", part,
                                strerror(errno));
    }
    return LH_OK;
}

/* A fresh LoRA written beside the checkpoints, loaded trainable, active. */
static lh_status new_adapter(trainer *t, lh_error *err) {
    const lh_train_opts *o = t->o;
    lh_adapt *ad;
    lh_status st = lh_adapt_get(&ad, t->m, err);
    if (st != LH_OK) return st;
    t->ad = ad;
    char init[PATH_MAX_LEN + 32];
    snprintf(init, sizeof init, "%s/init.safetensors", t->dir);
    int n_layers = 0;
    st = lh_lora_new(init, o->adapter, &ad->layers, o->targets, o->n_targets, TE_TARGETS,
                     o->train_text_encoder ? TE_TARGETS_N : 0, o->rank, o->alpha, o->seed,
                     &n_layers, err);
    lh_adapter_load_opts lo = {.policy = LH_ADAPTER_STRICT, .name = o->output_name,
                               .trainable = 1};
    if (st == LH_OK) st = lh_adapter_load(&t->a, t->m, t->reg, init, &lo, err);
    remove(init);
    if (st == LH_OK) st = lh_adapter_grads_enable(t->a, err);
    lh_adapter_weights aw;
    lh_adapter_weights_init(&aw, 1.0);
    if (st == LH_OK) st = lh_adapter_set_ex(t->m, &t->a, &aw, 1, LH_ADAPTER_RUNTIME, err);
    if (st == LH_OK) st = adapter_params(t, err);
    if (st == LH_OK)
        lh_log(LH_LOG_INFO, "train", "%s: rank %d %s on %d layers (%zu tensors), %lld images "
               "at %lld", o->output_name, o->rank, o->adapter, n_layers, t->np,
               (long long)lh_dataset_count(t->ds), (long long)t->resolution);
    return st;
}

static lh_status setup(trainer *t, lh_error *err) {
    const lh_train_opts *o = t->o;
    if (!o->model || !o->dataset || !o->output_dir)
        return lh_error_set(err, LH_ERR_CONFIG, "train: model.path, train.dataset and "
                            "train.output_dir must be set");
    if (o->precision != LH_DTYPE_F32 && o->precision != LH_DTYPE_F16 &&
        o->precision != LH_DTYPE_BF16)
        return lh_error_set(err, LH_ERR_CONFIG, "train: mixed_precision must be no, fp16 or bf16");
    if (o->full_parameter && (o->precision != LH_DTYPE_F32 || o->train_text_encoder))
        return lh_error_set(err, LH_ERR_CONFIG, "train: full_parameter trains the U-Net's own "
                            "float32 weights: it takes neither mixed_precision nor "
                            "train_text_encoder");
    if (!lh_train_vae_dtype(o, NULL))
        return lh_error_set(err, LH_ERR_CONFIG, "train: model.vae_dtype '%s' is not auto, f32, "
                            "f16 or bf16", o->vae_dtype);
    lh_status st = make_dirs(t, err);
    char msg[LH_ERROR_MAX] = "";
    if (st == LH_OK && o->backend) {
        t->be = o->backend;
    } else if (st == LH_OK) {
        const char *dev = o->device ? o->device : "cpu";
        lh_status bs = lh_backend_create(&t->be, dev, o->threads, msg, sizeof msg);
        if (bs != LH_OK) st = lh_error_set(err, bs, "train: device %s: %s", dev, msg);
        t->own_be = st == LH_OK;
    }
    if (st == LH_OK) {
        const lh_backend_ops *ops = t->be->ops;
        if (!ops->scale || !ops->scale_by || !ops->sum_squares || !ops->mse_backward ||
            !ops->step_check || !ops->adamw || !ops->copy || (o->dropout > 0 && !ops->dropout))
            st = lh_error_set(err, LH_ERR_UNSUPPORTED, "train: the %s backend lacks the "
                              "training update ops", ops->name);
    }
    if (st == LH_OK) st = lh_model_open(&t->m, t->be, o->model, err);
    if (st == LH_OK) st = lh_model_set_vae_dtype(t->m, lh_train_vae_dtype(o, t->be), err);
    if (st == LH_OK) st = lh_dataset_open(&t->ds, o->dataset, err);
    if (st == LH_OK && lh_dataset_count(t->ds) < 1)
        st = lh_error_set(err, LH_ERR_INVALID, "train: %s holds no images", o->dataset);
    if (st != LH_OK) return st;
    t->resolution = lh_dataset_resolution(t->ds);
    t->random_crop = !strcmp(lh_dataset_crop(t->ds), "random");
    t->downscale = lh_model_downscale(t->m);
    t->tokens = LH_TOKENIZER_WINDOW;
    t->dim = lh_unet_get_config(t->m->unet)->cross_attention_dim;
    if ((st = read_noise_config(t, err)) != LH_OK) return st;
    if (o->full_parameter) {
        if (t->m->info.single_file)
            return lh_error_set(err, LH_ERR_UNSUPPORTED, "train: full_parameter needs a diffusers "
                                "model directory (its unet/ is what gets written), not the single "
                                "file %s", t->m->info.path);
        if ((st = unet_params(t, err)) != LH_OK) return st;
        int64_t total = 0;
        for (size_t i = 0; i < t->np; i++) total += t->p[i].numel;
        lh_log(LH_LOG_INFO, "train", "full-parameter: %zu U-Net tensors, %.1f M parameters, %lld "
               "images at %lld", t->np, (double)total / 1e6, (long long)lh_dataset_count(t->ds),
               (long long)t->resolution);
    } else {
        if ((st = new_adapter(t, err)) != LH_OK) return st;
    }
    lh_adamw_opts_default(&t->ao);
    t->ao.lr = o->lr;
    t->ao.beta1 = o->beta1;
    t->ao.beta2 = o->beta2;
    t->ao.eps = o->eps;
    t->ao.weight_decay = o->weight_decay;
    if ((st = lh_lr_schedule_init(&t->sched, o->lr_scheduler, o->lr, o->lr_warmup, o->steps,
                                  err)) != LH_OK)
        return st;
    lh_loss_scaler_init(&t->scaler, o->precision);
    t->loss = calloc((size_t)o->steps, sizeof *t->loss);
    if (!t->loss) return lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    return LH_OK;
}

static void teardown(trainer *t) {
    for (size_t i = 0; t->be && i < t->np; i++) {
        if (t->m1 && t->m1[i]) t->be->ops->free(t->be, t->m1[i]);
        if (t->m2 && t->m2[i]) t->be->ops->free(t->be, t->m2[i]);
    }
    if (t->d_sq) t->be->ops->free(t->be, t->d_sq);
    if (t->d_step) t->be->ops->free(t->be, t->d_step);
    if (t->d_coef) t->be->ops->free(t->be, t->d_coef);
    free(t->row_k);
    lh_unet_checks_free(&t->checks);
    free(t->p), free(t->m1), free(t->m2), free(t->adam_step);
    lh_unet_grads_free(t->ugrads);
    free(t->betas), free(t->alphas_cumprod), free(t->loss);
    if (t->a) lh_adapter_unload(t->a);
    lh_dataset_close(t->ds);
    lh_model_close(t->m);
    if (t->own_be) lh_backend_destroy(t->be);
}

/* ---- The loop ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One optimizer step; *applied 0 if an overflow skipped it. Unscale,
 * overflow check, clip and AdamW run on the backend (AdamW does nothing
 * when the check found a NaN/Inf); the host waits for the device once, at
 * the end, reading the loss rows and the check's verdict together. */
static lh_status opt_step(trainer *t, float *loss, double *lr, int *applied, lh_error *err) {
    const lh_train_opts *o = t->o;
    lh_backend *be = t->be;
    lh_status st = grads_zero(t, err);
    double denom = (double)(o->batch_size * o->grad_accum);
    t->n_rows = 0;
    t->checks.n = 0;
    for (int64_t k = 0; st == LH_OK && k < o->grad_accum; k++) {
        lh_rng *r = stream(t, S_STEP, (uint64_t)(t->step * o->grad_accum + k), err);
        if (!r) return err ? err->code : LH_ERR_NOMEM;
        st = micro_batch(t, (t->step * o->grad_accum + k) * o->batch_size, r, denom, err);
        lh_rng_destroy(r);
    }
    if (st == LH_OK) st = grads_check(t, 1.0f / t->scaler.scale, err);
    if (st != LH_OK) return st;
    *lr = lh_lr_schedule_lr(&t->sched, t->step);
    const int64_t *found = (const int64_t *)(t->d_step + t->rows);
    for (size_t i = 0; st == LH_OK && i < t->np; i++) {
        lh_adamw_coef c;
        st = lh_adamw_coef_make(&c, &t->adam_step[i], *lr, &t->ao, err);
        if (st == LH_OK &&
            (st = be->ops->adamw(be, t->p[i].data, t->m1[i], t->m2[i], t->p[i].grad,
                                 t->p[i].numel, &c, found)) != LH_OK)
            st = lh_error_set(err, st, "train: AdamW on the %s backend failed (%s)",
                              be->ops->name, t->p[i].key);
    }
    /* the step's one wait: the loss rows, then found, in one download */
    size_t nb = (size_t)(t->rows + 1) * sizeof(double);
    double *back = st == LH_OK ? malloc(nb) : NULL;
    if (st == LH_OK && !back) st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    if (st == LH_OK && (st = be->ops->download(be, back, t->d_step, nb)) != LH_OK)
        st = lh_error_set(err, st, "train: reading the step's loss from the %s backend failed",
                          be->ops->name);
    if (st != LH_OK) {
        free(back);
        return st;
    }
    double l = 0.0;
    for (int64_t i = 0; i < t->n_rows; i++) l += t->row_k[i] * back[i];
    int64_t bad;
    memcpy(&bad, back + t->rows, sizeof bad);
    free(back);
    *loss = (float)l;
    *applied = lh_loss_scaler_update(&t->scaler, bad != 0);
    if (!*applied) { /* torch skips optimizer.step(): its step counts stay */
        for (size_t i = 0; i < t->np; i++) t->adam_step[i]--;
        warn_skipped(t);
        return LH_OK;
    }
    return t->a ? lh_adapter_refresh(t->a, err) : LH_OK;
}

lh_status lh_train_run(const lh_train_opts *o, lh_registry *reg, lh_train_progress_fn progress,
                       void *user, float *final_loss, lh_error *err) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.o = o;
    t.reg = reg;
    lh_status st = setup(&t, err);
    char from[PATH_MAX_LEN + 64] = "";
    if (st == LH_OK && o->resume) st = resume(&t, from, sizeof from, err);
    double t0 = now();
    float *smooth = st == LH_OK ? malloc((size_t)o->steps * sizeof *smooth) : NULL;
    if (st == LH_OK && !smooth) st = lh_error_set(err, LH_ERR_NOMEM, "train: out of memory");
    if (st == LH_OK && from[0] && progress) {
        char event[PATH_MAX_LEN + 96];
        snprintf(event, sizeof event, "resumed from %s", from);
        lh_train_progress p = {.step = t.step, .steps = o->steps, .event = event};
        progress(user, &p);
    }
    while (st == LH_OK && t.step < o->steps) {
        float loss = 0.0f;
        double lr = 0.0;
        int applied = 0;
        st = opt_step(&t, &loss, &lr, &applied, err);
        if (st != LH_OK) break;
        t.loss[t.step++] = loss;
        lh_loss_smooth(smooth, t.loss, t.step, 0.9);
        char event[PATH_MAX_LEN + 64] = "";
        int last = t.step == o->steps;
        if (o->sample_every > 0 && o->n_sample_prompts > 0 &&
            (t.step % o->sample_every == 0 || last)) {
            st = samples(&t, err);
            snprintf(event, sizeof event, "samples");
        }
        if (st == LH_OK && ((o->save_every > 0 && t.step % o->save_every == 0) || last)) {
            st = save_checkpoint(&t, err);
            if (st == LH_OK) st = o->full_parameter ? export_unet(&t, err) : export_adapter(&t, err);
            if (st == LH_OK) st = write_plot(&t, err);
            size_t len = strlen(event);
            snprintf(event + len, sizeof event - len, "%scheckpoint %s/checkpoint-%08lld.safetensors",
                     len ? "; " : "", t.ckpt_dir, (long long)t.step);
        }
        if (progress) {
            lh_train_progress p = {t.step, o->steps, loss, smooth[t.step - 1], lr, now() - t0,
                                   t.scaler.skipped, t.scaler.scale, event[0] ? event : NULL};
            progress(user, &p);
        }
    }
    if (st == LH_OK && final_loss) *final_loss = t.step > 0 ? smooth[t.step - 1] : 0.0f;
    free(smooth);
    teardown(&t);
    return st;
}
