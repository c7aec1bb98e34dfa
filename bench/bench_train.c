/* bench_train: time one LoRA training step (forward + backward to the adapter
 * gradients, no optimizer) on the CPU backend.
 * Usage: bench_train UNET_DIR LORA [BATCH H W N_CTX ITERS CHECKPOINTING THREADS PRECISION]
 *        (defaults 1 32 32 77 3 0 0 fp32; PRECISION fp32, fp16 or bf16)
 * One step = lh_unet_train_step: the forward keeping its activations, the
 * mse loss against a target (its gradient seeds the backward), the backward
 * accumulating the adapter gradients; in fp16 the loss is scaled by the
 * lh_loss_scaler and the gradients unscaled and checked after. The forward
 * part is the time until the loss function is called. Prints one JSON
 * object. Driven by bench/train_cpu.py, which runs diffusers + PEFT beside it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../kernels/backend.h"
#include "adapter.h"
#include "error.h"
#include "lorahost/adapters.h"
#include "lorahost/train.h"
#include "model.h"
#include "tensor.h"
#include "unet.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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
    t->t_forward_end = now();
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
            const float *d = (const float *)g->data;
            for (int64_t k = 0; k < g->numel; k++) s += (double)d[k] * (double)d[k];
        }
    }
    return sqrt(s);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_train UNET_DIR LORA "
                        "[BATCH H W N_CTX ITERS CHECKPOINTING THREADS PRECISION]\n");
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
    lh_dtype prec = !strcmp(prec_name, "fp16")   ? LH_DTYPE_F16
                    : !strcmp(prec_name, "bf16") ? LH_DTYPE_BF16
                                                 : LH_DTYPE_F32;
    if (prec == LH_DTYPE_F32 && strcmp(prec_name, "fp32"))
        die("arguments", "PRECISION must be fp32, fp16 or bf16");
    if (b < 1 || b > 64 || iters < 1) die("arguments", "BATCH must be 1..64, ITERS >= 1");
    char msg[1024];
    lh_error err = {0};
    lh_backend *be = NULL;
    if (lh_backend_cpu_create(&be, threads, msg, sizeof msg) != LH_OK) die("backend", msg);
    lh_registry *reg = NULL;
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, NULL, 0, 1, 1, &err) != LH_OK)
        die("plugins", err.msg);

    lh_unet *unet = NULL;
    double t0 = now();
    if (lh_unet_load(&unet, be, argv[1], &err) != LH_OK) die(argv[1], err.msg);
    printf("{\"unet_load_s\": %.4f", now() - t0);
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
    t0 = now();
    if (lh_adapter_load(&a, &m, reg, argv[2], NULL, &err) != LH_OK) die(argv[2], err.msg);
    if (lh_adapter_grads_enable(a, &err) != LH_OK) die("grads_enable", err.msg);
    lh_adapter_weights aw;
    lh_adapter_weights_init(&aw, 1.0);
    if (lh_adapter_set_ex(&m, &a, &aw, 1, LH_ADAPTER_RUNTIME, &err) != LH_OK)
        die("adapter_set", err.msg);
    const lh_adapter_report *r = lh_adapter_get_report(a);
    printf(", \"lora_load_s\": %.4f, \"layers_unet\": %d, \"n_unmatched\": %zu",
           now() - t0, r->layers_unet, r->n_unmatched);
    size_t wsf = lh_unet_forward_workspace(unet, b, h, w, n_ctx);
    size_t ws0 = lh_unet_backward_workspace(unet, b, h, w, n_ctx, 0);
    size_t ws1 = lh_unet_backward_workspace(unet, b, h, w, n_ctx, 1);
    printf(", \"precision\": \"%s\"", prec_name);
    printf(", \"checkpointing\": %d, \"ws_forward_mb\": %.2f, \"ws_backward_mb\": %.2f, "
           "\"ws_backward_ckpt_mb\": %.2f",
           ckpt, (double)wsf / 1048576.0, (double)ws0 / 1048576.0, (double)ws1 / 1048576.0);
    fflush(stdout);

    /* ---- Training steps ---- */
    float loss = 0.0f;
    char steps[4096] = "", fwds[4096] = "", bwds[4096] = "";
    size_t ls = 0, lf = 0, lb = 0;
    lh_loss_scaler scaler;
    lh_loss_scaler_init(&scaler, prec);
    timed_loss tl = {{be, dtarget}, 0.0};
    for (int it = 0; it < iters; it++) {
        lh_adapter_grads_zero(a);
        lh_unet_train_opts o = {.checkpointing = ckpt, .precision = prec,
                                .loss_scale = scaler.scale};
        lh_unet_overflow rep;
        double s0 = now();
        if (lh_unet_train_step(unet, &o, timed_mse, &tl, &loss, NULL, x, ts, ctx, b, h, w, n_ctx,
                               &rep, &err) != LH_OK)
            die("train step", err.msg);
        int64_t bad = lh_adapter_grads_unscale(a, 1.0f / scaler.scale);
        if (!lh_loss_scaler_update(&scaler, bad > 0 || rep.count > 0))
            fprintf(stderr, "bench_train: step %d overflowed (first at %s); skipped\n", it,
                    rep.count ? rep.at[0].unit : "the adapter gradients");
        double s2 = now(), s1 = tl.t_forward_end;
        ls += (size_t)snprintf(steps + ls, sizeof steps - ls, "%s%.4f", it ? ", " : "", s2 - s0);
        lf += (size_t)snprintf(fwds + lf, sizeof fwds - lf, "%s%.4f", it ? ", " : "", s1 - s0);
        lb += (size_t)snprintf(bwds + lb, sizeof bwds - lb, "%s%.4f", it ? ", " : "", s2 - s1);
        if (ls >= sizeof steps - 32 || lf >= sizeof fwds - 32 || lb >= sizeof bwds - 32)
            die("arguments", "too many iterations");
        fprintf(stderr, "bench_train: step %d: %.3f s\n", it, s2 - s0);
    }
    printf(", \"step_s\": [%s], \"forward_s\": [%s], \"backward_s\": [%s]", steps, fwds, bwds);
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
