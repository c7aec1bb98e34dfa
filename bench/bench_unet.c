/* bench_unet: time lorahost's U-Net forward on a backend (cpu by default).
 * Usage: bench_unet UNET_DIR BATCH H W N_CTX ITERS [THREADS [DEVICE [PRECISION [STORAGE]]]]
 *        (PRECISION fp32, fp16 or bf16: lh_unet_set_precision; STORAGE half, the
 *        default, holds fp16/bf16 weights in that type, f32 keeps float32:
 *        lh_unet_keep_f32_weights)
 * Prints one JSON object: load time, per-iteration forward times, peak RSS.
 * Driven by bench/unet_cpu.py, which runs diffusers beside it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_common.h"
#include "../kernels/backend.h"
#include "backend_load.h"
#include "error.h"
#include "unet.h"

/* Deterministic N(0,1)-ish fill (sum of uniforms) in host memory. */
static void fill(float *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        float u = (float)(seed >> 8) / 16777216.0f;
        seed = seed * 1664525u + 1013904223u;
        float v = (float)(seed >> 8) / 16777216.0f;
        p[i] = (u + v - 1.0f) * 2.45f;
    }
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: bench_unet UNET_DIR BATCH H W N_CTX ITERS "
                        "[THREADS [DEVICE [PRECISION [STORAGE]]]]\n");
        return 2;
    }
    int64_t b = atoll(argv[2]), h = atoll(argv[3]), w = atoll(argv[4]), n_ctx = atoll(argv[5]);
    int iters = atoi(argv[6]), threads = argc > 7 ? atoi(argv[7]) : 0;
    char msg[1024];
    lh_error err = {0};
    lh_backend *be = NULL;
    const char *device = argc > 8 ? argv[8] : "cpu";
    if (lh_backend_create(&be, device, threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, "bench_unet: %s\n", msg);
        return 1;
    }
    double t0 = bench_now();
    lh_unet *m = NULL;
    if (lh_unet_load(&m, be, argv[1], &err) != LH_OK) {
        fprintf(stderr, "bench_unet: %s\n", err.msg);
        return 1;
    }
    double load_s = bench_now() - t0;
    const char *prec = argc > 9 ? argv[9] : "fp32";
    lh_dtype dt = LH_DTYPE_F32;
    int bad_prec = bench_precision(prec, &dt) != 0;
    const char *storage = argc > 10 ? argv[10] : "half";
    if (strcmp(storage, "half") && strcmp(storage, "f32")) {
        fprintf(stderr, "bench_unet: storage %s: expected half or f32\n", storage);
        return 1;
    }
    if (bad_prec ||
        lh_unet_keep_f32_weights(m, !strcmp(storage, "f32"), &err) != LH_OK ||
        lh_unet_set_precision(m, dt, &err) != LH_OK) {
        fprintf(stderr, "bench_unet: precision %s: %s\n", prec,
                err.msg[0] ? err.msg : "expected fp32, fp16 or bf16");
        return 1;
    }
    const lh_unet_config *cfg = lh_unet_get_config(m);
    size_t nx = (size_t)(b * cfg->in_channels * h * w);
    size_t nout = (size_t)(b * cfg->out_channels * h * w);
    size_t nctx = (size_t)(b * n_ctx * cfg->cross_attention_dim);
    float *hx = malloc(nx * sizeof *hx), *hc = malloc(nctx * sizeof *hc);
    float *x = be->ops->alloc(be, nx * sizeof(float)), *out = be->ops->alloc(be, nout * sizeof(float));
    float *ctx = be->ops->alloc(be, nctx * sizeof(float));
    if (!hx || !hc || !x || !out || !ctx) {
        fprintf(stderr, "bench_unet: out of memory\n");
        return 1;
    }
    fill(hx, nx, 1);
    fill(hc, nctx, 2);
    be->ops->upload(be, x, hx, nx * sizeof(float));
    be->ops->upload(be, ctx, hc, nctx * sizeof(float));
    float ts[64];
    for (int64_t i = 0; i < b && i < 64; i++) ts[i] = 999.0f - 37.0f * (float)i;
    printf("{\"load_s\": %.4f, \"workspace_mb\": %.1f, \"forward_s\": [", load_s,
           (double)lh_unet_forward_workspace(m, b, h, w, n_ctx) / 1048576.0);
    for (int it = 0; it < iters; it++) {
        t0 = bench_now();
        if (lh_unet_forward(m, out, x, ts, ctx, b, h, w, n_ctx, &err) != LH_OK) {
            fprintf(stderr, "bench_unet: %s\n", err.msg);
            return 1;
        }
        be->ops->sync(be);
        printf("%s%.4f", it ? ", " : "", bench_now() - t0);
        fflush(stdout);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("], \"peak_rss_mb\": %.1f}\n", (double)ru.ru_maxrss / 1024.0);
    be->ops->free(be, x);
    be->ops->free(be, out);
    be->ops->free(be, ctx);
    free(hx);
    free(hc);
    lh_unet_free(m);
    lh_backend_destroy(be);
    return 0;
}
