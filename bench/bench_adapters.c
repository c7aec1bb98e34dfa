/* bench_adapters: time LoRA load, switch and per-step cost on a backend.
 * Usage: bench_adapters UNET_DIR LORA_A LORA_B [BATCH H W N_CTX ITERS THREADS
 *                       [DEVICE [PRECISION]]]
 *        (defaults 2 64 64 77 2 0 cpu fp32: one CFG step of 512x512, all
 *        cores; PRECISION fp16 or bf16 sets the U-Net's precision first,
 *        lh_unet_set_precision)
 * Prints one JSON object. Driven by bench/adapters_cpu.py, which runs
 * diffusers + PEFT beside it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_common.h"
#include "../kernels/backend.h"
#include "backend_load.h"
#include "error.h"
#include "lorahost/adapters.h"
#include "model.h"
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
    fprintf(stderr, "bench_adapters: %s: %s\n", what, msg);
    exit(1);
}

/* ---- One forward setup ---- */

typedef struct bench {
    lh_backend *be;
    lh_unet *unet;
    lh_model m;
    int64_t b, h, w, n_ctx;
    int iters;
    size_t nout;
    float *x, *out, *ctx; /* backend */
    float ts[64];
} bench;

/* Run `iters` forwards, print their times as a JSON array; the last output
 * goes to host array `keep` [nout]. */
static void forwards(bench *B, const char *key, float *keep) {
    lh_error err = {0};
    printf(", \"%s\": [", key);
    for (int it = 0; it < B->iters; it++) {
        double t0 = bench_now();
        if (lh_unet_forward(B->unet, B->out, B->x, B->ts, B->ctx, B->b, B->h, B->w, B->n_ctx,
                            &err) != LH_OK)
            die(key, err.msg);
        B->be->ops->sync(B->be);
        printf("%s%.4f", it ? ", " : "", bench_now() - t0);
        fflush(stdout);
    }
    printf("]");
    if (B->be->ops->download(B->be, keep, B->out, B->nout * sizeof(float)) != LH_OK)
        die(key, "download failed");
}

/* Time one lh_adapter_set_ex and print it as "key": seconds. */
static void set(bench *B, const char *key, lh_adapter *const *a, const double *scales, size_t n,
                lh_adapter_mode mode) {
    lh_adapter_weights w[4];
    for (size_t i = 0; i < n; i++) lh_adapter_weights_init(&w[i], scales[i]);
    lh_error err = {0};
    double t0 = bench_now();
    if (lh_adapter_set_ex(&B->m, a, w, n, mode, &err) != LH_OK) die(key, err.msg);
    B->be->ops->sync(B->be);
    printf(", \"%s\": %.6f", key, bench_now() - t0);
    fflush(stdout);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

static double max_abs(const float *a, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i]));
    return d;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_adapters UNET_DIR LORA_A LORA_B "
                        "[BATCH H W N_CTX ITERS THREADS [DEVICE [PRECISION]]]\n");
        return 2;
    }
    bench B = {0};
    B.b = argc > 4 ? atoll(argv[4]) : 2;
    B.h = argc > 5 ? atoll(argv[5]) : 64;
    B.w = argc > 6 ? atoll(argv[6]) : 64;
    B.n_ctx = argc > 7 ? atoll(argv[7]) : 77;
    B.iters = argc > 8 ? atoi(argv[8]) : 2;
    int threads = argc > 9 ? atoi(argv[9]) : 0;
    const char *device = argc > 10 ? argv[10] : "cpu", *prec = argc > 11 ? argv[11] : "fp32";
    lh_dtype act = LH_DTYPE_F32;
    if (B.b < 1 || B.b > 64 || B.iters < 1) die("arguments", "BATCH must be 1..64, ITERS >= 1");
    if (bench_precision(prec, &act) != 0) die("arguments", "PRECISION must be fp32, fp16 or bf16");
    char msg[1024];
    lh_error err = {0};
    if (lh_backend_create(&B.be, device, threads, msg, sizeof msg) != LH_OK) die("backend", msg);
    lh_registry *reg = NULL;
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, NULL, 0, 1, 1, &err) != LH_OK)
        die("plugins", err.msg);

    /* ---- Model: the U-Net alone (the adapter code takes clip == NULL) ---- */
    double t0 = bench_now();
    if (lh_unet_load(&B.unet, B.be, argv[1], &err) != LH_OK) die(argv[1], err.msg);
    if (lh_unet_set_precision(B.unet, act, &err) != LH_OK) die(prec, err.msg);
    printf("{\"unet_load_s\": %.4f, \"device\": \"%s\", \"precision\": \"%s\"", bench_now() - t0,
           B.be->ops->name, prec);
    B.m.be = B.be;
    B.m.unet = B.unet;
    const lh_unet_config *cfg = lh_unet_get_config(B.unet);
    size_t nx = (size_t)(B.b * cfg->in_channels * B.h * B.w);
    size_t nctx = (size_t)(B.b * B.n_ctx * cfg->cross_attention_dim);
    B.nout = (size_t)(B.b * cfg->out_channels * B.h * B.w);
    float *hx = malloc(nx * sizeof *hx), *hc = malloc(nctx * sizeof *hc);
    float *y_base = malloc(B.nout * sizeof(float)), *y_run = malloc(B.nout * sizeof(float));
    float *y_mrg = malloc(B.nout * sizeof(float));
    B.x = B.be->ops->alloc(B.be, nx * sizeof(float));
    B.out = B.be->ops->alloc(B.be, B.nout * sizeof(float));
    B.ctx = B.be->ops->alloc(B.be, nctx * sizeof(float));
    if (!hx || !hc || !y_base || !y_run || !y_mrg || !B.x || !B.out || !B.ctx)
        die("buffers", "out of memory");
    fill(hx, nx, 1);
    fill(hc, nctx, 2);
    B.be->ops->upload(B.be, B.x, hx, nx * sizeof(float));
    B.be->ops->upload(B.be, B.ctx, hc, nctx * sizeof(float));
    for (int64_t i = 0; i < B.b; i++) B.ts[i] = 999.0f - 37.0f * (float)i;

    /* ---- Loading the two adapters from disk ---- */
    lh_adapter *ab[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        t0 = bench_now();
        if (lh_adapter_load(&ab[k], &B.m, reg, argv[2 + k], NULL, &err) != LH_OK)
            die(argv[2 + k], err.msg);
        printf(", \"load_%c_s\": %.6f", "AB"[k], bench_now() - t0);
    }
    const lh_adapter_report *r = lh_adapter_get_report(ab[0]);
    printf(", \"format\": \"%s\", \"alpha_source\": \"%s\", \"n_keys\": %zu, \"n_used\": %zu, "
           "\"layers_unet\": %d, \"n_unmatched\": %zu",
           r->format, r->alpha_source, r->n_keys, r->n_used, r->layers_unet, r->n_unmatched);
    fflush(stdout);

    const double one = 1.0, two[2] = {0.7, 0.4};
    lh_adapter *a = ab[0], *b = ab[1];
    forwards(&B, "base_s", y_base);

    /* ---- Runtime mode ---- */
    set(&B, "rt_set_A_s", &a, &one, 1, LH_ADAPTER_RUNTIME);
    forwards(&B, "rt_s", y_run);
    set(&B, "rt_switch_B_s", &b, &one, 1, LH_ADAPTER_RUNTIME);
    set(&B, "rt_set_AB_s", ab, two, 2, LH_ADAPTER_RUNTIME);
    set(&B, "rt_none_s", NULL, NULL, 0, LH_ADAPTER_RUNTIME);

    /* ---- Merged mode ---- */
    set(&B, "mg_set_A_s", &a, &one, 1, LH_ADAPTER_MERGED);
    forwards(&B, "mg_s", y_mrg);
    set(&B, "mg_switch_B_s", &b, &one, 1, LH_ADAPTER_MERGED);
    set(&B, "mg_none_s", NULL, NULL, 0, LH_ADAPTER_MERGED);

    /* Sanity: runtime and merged {A} agree, and differ from the base. */
    printf(", \"max_abs_base\": %.3g, \"max_diff_rt_base\": %.3g, \"max_diff_rt_mg\": %.3g",
           max_abs(y_base, B.nout), max_diff(y_run, y_base, B.nout),
           max_diff(y_run, y_mrg, B.nout));
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(", \"peak_rss_mb\": %.1f}\n", (double)ru.ru_maxrss / 1024.0);

    /* The model's adapter state (host/adapter.h) is private to the library
     * and is not freed here: the process ends. */
    lh_adapter_unload(a);
    lh_adapter_unload(b);
    B.be->ops->free(B.be, B.x);
    B.be->ops->free(B.be, B.out);
    B.be->ops->free(B.be, B.ctx);
    free(hx);
    free(hc);
    free(y_base);
    free(y_run);
    free(y_mrg);
    lh_unet_free(B.unet);
    lh_registry_destroy(reg);
    lh_backend_destroy(B.be);
    return 0;
}
