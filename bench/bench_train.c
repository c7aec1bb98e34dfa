/* bench_train: time one LoRA training step on a backend.
 * Usage: bench_train UNET_DIR LORA [BATCH H W N_CTX ITERS CHECKPOINTING THREADS PRECISION
 *                                   DEVICE]
 *        (defaults 1 32 32 77 3 0 0 fp32 cpu; PRECISION fp32, fp16 or bf16;
 *        DEVICE cpu, cuda or cuda:N)
 * One step = lh_unet_train_step (the forward keeping its activations, the
 * mse loss against a target, whose gradient seeds the backward, and the
 * backward accumulating the adapter gradients; in fp16 the loss is scaled
 * by the lh_loss_scaler and the gradients unscaled and checked after), then
 * the gradients clipped to norm 1 and one AdamW update of every adapter
 * tensor with the backend's ops, and the adapter instances' refresh (as
 * lorahost train does).
 * The forward part is the time until the loss function is called, the
 * optimizer part the update. The adapter is loaded trainable, so on a
 * device its tensors and gradients live there. Prints one JSON object.
 * Driven by bench/train_cpu.py and bench/gpu/train_gpu.py, which run
 * diffusers + PEFT beside it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_common.h"
#include "../kernels/backend.h"
#include "adapter.h"
#include "backend_load.h"
#include "error.h"
#include "lorahost/adapters.h"
#include "lorahost/train.h"
#include "model.h"
#include "optim.h"
#include "tensor.h"
#include "unet.h"

/* Deterministic N(0,1)-ish fill (sum of uniforms), as bench_unet. */
static void fill(float *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        float u = (float)(seed >> 8) / 16777216.0f;
        seed = seed * 1664525u + 1013904223u;
        float v = (float)(seed >> 8) / 16777216.0f;
        p[i] = (u + v - 1.0f) * 2.45f;
    }
}

static void die(const char *what, const char *msg) {
    fprintf(stderr, "bench_train: %s: %s\n", what, msg);
    exit(1);
}

/* The mse loss, noting when the forward ended. */
typedef struct timed_loss {
    lh_unet_mse mse;
    double t_forward_end;
} timed_loss;

static lh_status timed_mse(void *ctx, float *dout, float *loss, const float *out, int64_t numel,
                           lh_error *err) {
    timed_loss *t = ctx;
    t->t_forward_end = bench_now();
    return lh_unet_mse_loss(&t->mse, dout, loss, out, numel, err);
}

/* L2 norm over every adapter gradient (a sanity check that they are non-zero). */
static double grad_norm(const lh_adapter *a) {
    double s = 0.0;
    for (size_t i = 0; i < a->n_parts; i++) {
        const lh_adapter_part *p = &a->parts[i];
        if (!p->grads) continue;
        for (int32_t j = 0; j < p->n_tensors; j++) {
            const lh_tensor *g = p->grads[j];
            if (!g) continue;
            float *d = malloc((size_t)g->numel * sizeof *d);
            if (!d) die("grad_norm", "out of memory");
            if (g->be)
                g->be->ops->download(g->be, d, g->data, (size_t)g->numel * sizeof *d);
            else
                memcpy(d, g->data, (size_t)g->numel * sizeof *d);
            for (int64_t k = 0; k < g->numel; k++) s += (double)d[k] * (double)d[k];
            free(d);
        }
    }
    return sqrt(s);
}

/* AdamW state of the adapter's tensors, in the backend's memory. */
typedef struct adam {
    size_t n;
    lh_tensor **v, **g;
    float **m1, **m2;
    int64_t *steps;
    double *sq;    /* backend [n]: each gradient's sum of squares */
    float *coef;   /* backend: step_check's clip multiplier */
    int64_t *skip; /* backend: step_check's found */
} adam;

static void adam_init(adam *o, lh_backend *be, lh_adapter *a) {
    o->n = lh_adapter_n_params(a);
    o->v = calloc(o->n, sizeof *o->v);
    o->g = calloc(o->n, sizeof *o->g);
    o->m1 = calloc(o->n, sizeof *o->m1);
    o->m2 = calloc(o->n, sizeof *o->m2);
    o->steps = calloc(o->n, sizeof *o->steps);
    o->sq = be->ops->alloc(be, o->n * sizeof *o->sq);
    o->coef = be->ops->alloc(be, sizeof *o->coef);
    o->skip = be->ops->alloc(be, sizeof *o->skip);
    if (!o->v || !o->g || !o->m1 || !o->m2 || !o->steps || !o->sq || !o->coef || !o->skip)
        die("adamw", "out of memory");
    for (size_t i = 0; i < o->n; i++) {
        if (lh_adapter_param(a, i, NULL, &o->v[i], &o->g[i]) != LH_OK || !o->g[i])
            die("adamw", "adapter parameter missing");
        size_t bytes = (size_t)o->v[i]->numel * sizeof(float);
        o->m1[i] = be->ops->alloc(be, bytes ? bytes : 1);
        o->m2[i] = be->ops->alloc(be, bytes ? bytes : 1);
        if (!o->m1[i] || !o->m2[i] || be->ops->memset0(be, o->m1[i], bytes) != LH_OK ||
            be->ops->memset0(be, o->m2[i], bytes) != LH_OK)
            die("adamw", "no memory for the moments");
    }
}

/* As the trainer's step: the overflow check and the gradients clipped to
 * norm 1 (clip_grad_norm_) on the backend, then one AdamW update of every
 * adapter tensor (lr 1e-4), then a sync. */
static void adam_step(adam *o, lh_backend *be) {
    for (size_t i = 0; i < o->n; i++)
        if (be->ops->sum_squares(be, o->sq + i, o->g[i]->data, o->g[i]->numel) != LH_OK)
            die("clip", "sum_squares failed");
    if (be->ops->step_check(be, o->coef, o->skip, o->sq, (int64_t)o->n, NULL, 0, 1.0f) != LH_OK)
        die("clip", "step_check failed");
    for (size_t i = 0; i < o->n; i++)
        if (be->ops->scale_by(be, o->g[i]->data, o->g[i]->numel, o->coef) != LH_OK)
            die("clip", "scale_by failed");
    lh_adamw_opts ao;
    lh_adamw_opts_default(&ao);
    lh_error err = {0};
    for (size_t i = 0; i < o->n; i++) {
        lh_adamw_coef c;
        if (lh_adamw_coef_make(&c, &o->steps[i], 1e-4, &ao, &err) != LH_OK) die("adamw", err.msg);
        if (be->ops->adamw(be, o->v[i]->data, o->m1[i], o->m2[i], o->g[i]->data, o->v[i]->numel,
                           &c, o->skip) != LH_OK)
            die("adamw", "the backend's adamw failed");
    }
    if (be->ops->sync(be) != LH_OK) die("adamw", "sync failed");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_train UNET_DIR LORA "
                        "[BATCH H W N_CTX ITERS CHECKPOINTING THREADS PRECISION DEVICE]\n");
        return 2;
    }
    int64_t b = argc > 3 ? atoll(argv[3]) : 1;
    int64_t h = argc > 4 ? atoll(argv[4]) : 32;
    int64_t w = argc > 5 ? atoll(argv[5]) : 32;
    int64_t n_ctx = argc > 6 ? atoll(argv[6]) : 77;
    int iters = argc > 7 ? atoi(argv[7]) : 3;
    int ckpt = argc > 8 ? atoi(argv[8]) : 0;
    int threads = argc > 9 ? atoi(argv[9]) : 0;
    const char *prec_name = argc > 10 ? argv[10] : "fp32";
    const char *device = argc > 11 ? argv[11] : "cpu";
    lh_dtype prec = LH_DTYPE_F32;
    if (bench_precision(prec_name, &prec) != 0)
        die("arguments", "PRECISION must be fp32, fp16 or bf16");
    if (b < 1 || b > 64 || iters < 1) die("arguments", "BATCH must be 1..64, ITERS >= 1");
    char msg[1024];
    lh_error err = {0};
    lh_backend *be = NULL;
    if (lh_backend_create(&be, device, threads, msg, sizeof msg) != LH_OK) die(device, msg);
    lh_registry *reg = NULL;
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, NULL, 0, 1, 1, &err) != LH_OK)
        die("plugins", err.msg);

    lh_unet *unet = NULL;
    double t0 = bench_now();
    if (lh_unet_load(&unet, be, argv[1], &err) != LH_OK) die(argv[1], err.msg);
    printf("{\"unet_load_s\": %.4f", bench_now() - t0);
    lh_model m = {0};
    m.be = be;
    m.unet = unet;
    const lh_unet_config *cfg = lh_unet_get_config(unet);
    size_t nx = (size_t)(b * cfg->in_channels * h * w);
    size_t nctx = (size_t)(b * n_ctx * cfg->cross_attention_dim);
    size_t nout = (size_t)(b * cfg->out_channels * h * w);
    float *hx = malloc(nx * sizeof *hx), *hc = malloc(nctx * sizeof *hc);
    float *target = malloc(nout * sizeof *target);
    float *x = be->ops->alloc(be, nx * sizeof(float));
    float *ctx = be->ops->alloc(be, nctx * sizeof(float));
    float *dtarget = be->ops->alloc(be, nout * sizeof(float));
    if (!hx || !hc || !target || !x || !ctx || !dtarget) die("buffers", "out of memory");
    fill(hx, nx, 1);
    fill(hc, nctx, 2);
    fill(target, nout, 3);
    be->ops->upload(be, x, hx, nx * sizeof(float));
    be->ops->upload(be, ctx, hc, nctx * sizeof(float));
    be->ops->upload(be, dtarget, target, nout * sizeof(float));
    float ts[64];
    for (int64_t i = 0; i < b; i++) ts[i] = 999.0f - 37.0f * (float)i;

    /* ---- The LoRA, runtime mode, gradients on ---- */
    lh_adapter *a = NULL;
    t0 = bench_now();
    lh_adapter_load_opts lo = {.trainable = 1};
    if (lh_adapter_load(&a, &m, reg, argv[2], &lo, &err) != LH_OK) die(argv[2], err.msg);
    if (lh_adapter_grads_enable(a, &err) != LH_OK) die("grads_enable", err.msg);
    lh_adapter_weights aw;
    lh_adapter_weights_init(&aw, 1.0);
    if (lh_adapter_set_ex(&m, &a, &aw, 1, LH_ADAPTER_RUNTIME, &err) != LH_OK)
        die("adapter_set", err.msg);
    const lh_adapter_report *r = lh_adapter_get_report(a);
    printf(", \"lora_load_s\": %.4f, \"layers_unet\": %d, \"n_unmatched\": %zu",
           bench_now() - t0, r->layers_unet, r->n_unmatched);
    size_t wsf = lh_unet_forward_workspace(unet, b, h, w, n_ctx);
    size_t ws0 = lh_unet_backward_workspace(unet, b, h, w, n_ctx, 0, prec);
    size_t ws1 = lh_unet_backward_workspace(unet, b, h, w, n_ctx, 1, prec);
    printf(", \"precision\": \"%s\", \"device\": \"%s\"", prec_name, device);
    adam opt;
    adam_init(&opt, be, a);
    printf(", \"checkpointing\": %d, \"ws_forward_mb\": %.2f, \"ws_backward_mb\": %.2f, "
           "\"ws_backward_ckpt_mb\": %.2f",
           ckpt, (double)wsf / 1048576.0, (double)ws0 / 1048576.0, (double)ws1 / 1048576.0);
    fflush(stdout);

    /* ---- Training steps ---- */
    float loss = 0.0f;
    char steps[4096] = "", fwds[4096] = "", bwds[4096] = "", opts[4096] = "";
    size_t ls = 0, lf = 0, lb = 0, lo_ = 0;
    lh_loss_scaler scaler;
    lh_loss_scaler_init(&scaler, prec);
    timed_loss tl = {{be, dtarget}, 0.0};
    for (int it = 0; it < iters; it++) {
        lh_adapter_grads_zero(a);
        lh_unet_train_opts o = {.checkpointing = ckpt, .precision = prec,
                                .loss_scale = scaler.scale};
        lh_unet_overflow rep;
        double s0 = bench_now();
        if (lh_unet_train_step(unet, &o, timed_mse, &tl, &loss, NULL, x, ts, ctx, b, h, w, n_ctx,
                               &rep, &err) != LH_OK)
            die("train step", err.msg);
        int64_t bad = lh_adapter_grads_unscale(a, 1.0f / scaler.scale);
        double s2 = bench_now(), s1 = tl.t_forward_end;
        if (lh_loss_scaler_update(&scaler, bad > 0 || rep.count > 0)) {
            adam_step(&opt, be); /* and the instances' copies of the new values */
            if (lh_adapter_refresh(a, &err) != LH_OK) die("refresh", err.msg);
        } else
            fprintf(stderr, "bench_train: step %d overflowed (first at %s); skipped\n", it,
                    rep.count ? rep.at[0].unit : "the adapter gradients");
        double s3 = bench_now();
        ls += (size_t)snprintf(steps + ls, sizeof steps - ls, "%s%.4f", it ? ", " : "", s3 - s0);
        lf += (size_t)snprintf(fwds + lf, sizeof fwds - lf, "%s%.4f", it ? ", " : "", s1 - s0);
        lb += (size_t)snprintf(bwds + lb, sizeof bwds - lb, "%s%.4f", it ? ", " : "", s2 - s1);
        lo_ += (size_t)snprintf(opts + lo_, sizeof opts - lo_, "%s%.4f", it ? ", " : "", s3 - s2);
        if (ls >= sizeof steps - 32 || lf >= sizeof fwds - 32 || lb >= sizeof bwds - 32 ||
            lo_ >= sizeof opts - 32)
            die("arguments", "too many iterations");
        fprintf(stderr, "bench_train: step %d: %.3f s\n", it, s3 - s0);
    }
    printf(", \"step_s\": [%s], \"forward_s\": [%s], \"backward_s\": [%s], \"optimizer_s\": [%s]",
           steps, fwds, bwds, opts);
    printf(", \"loss\": %.8g, \"grad_norm\": %.6g, \"skipped\": %lld", (double)loss,
           grad_norm(a), (long long)scaler.skipped);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(", \"peak_rss_mb\": %.1f}\n", (double)ru.ru_maxrss / 1024.0);

    /* The model's adapter state is private to the library and is not freed
     * here: the process ends. */
    lh_adapter_unload(a);
    be->ops->free(be, x);
    be->ops->free(be, ctx);
    be->ops->free(be, dtarget);
    free(hx);
    free(hc);
    free(target);
    lh_unet_free(unet);
    lh_registry_destroy(reg);
    lh_backend_destroy(be);
    return 0;
}
