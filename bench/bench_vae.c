/* bench_vae: time lorahost's VAE decode on a backend (cpu by default).
 * Usage: bench_vae VAE_DIR BATCH LH LW ITERS [THREADS [DEVICE [PRECISION]]]
 *        (LH x LW latents: 64 x 64 decode to 512 x 512 for SD; PRECISION
 *        fp32 (default), fp16 or bf16 activations, lh_vae_set_precision)
 * Prints one JSON object: load time, per-iteration decode times, peak RSS.
 * Driven by bench/gpu/unet_gpu.py, which runs diffusers beside it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_common.h"
#include "../kernels/backend.h"
#include "backend_load.h"
#include "error.h"
#include "vae.h"

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr,
                "usage: bench_vae VAE_DIR BATCH LH LW ITERS [THREADS [DEVICE [PRECISION]]]\n");
        return 2;
    }
    int64_t b = atoll(argv[2]), lh = atoll(argv[3]), lw = atoll(argv[4]);
    int iters = atoi(argv[5]), threads = argc > 6 ? atoi(argv[6]) : 0;
    const char *device = argc > 7 ? argv[7] : "cpu", *prec = argc > 8 ? argv[8] : "fp32";
    lh_dtype act = LH_DTYPE_F32;
    if (bench_precision(prec, &act) != 0) {
        fprintf(stderr, "bench_vae: PRECISION must be fp32, fp16 or bf16, not %s\n", prec);
        return 2;
    }
    if (b < 1 || lh < 1 || lw < 1 || iters < 1) {
        fprintf(stderr, "bench_vae: BATCH, LH, LW and ITERS must be positive\n");
        return 2;
    }
    char msg[1024];
    lh_error err = {0};
    lh_backend *be = NULL;
    if (lh_backend_create(&be, device, threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, "bench_vae: %s\n", msg);
        return 1;
    }
    double t0 = bench_now();
    lh_vae *m = NULL;
    if (lh_vae_load(&m, be, argv[1], &err) != LH_OK) {
        fprintf(stderr, "bench_vae: %s\n", err.msg);
        return 1;
    }
    double load_s = bench_now() - t0;
    if (lh_vae_set_precision(m, act, &err) != LH_OK) {
        fprintf(stderr, "bench_vae: %s\n", err.msg);
        return 1;
    }
    const lh_vae_config *cfg = lh_vae_get_config(m);
    int64_t ds = lh_vae_downscale(m);
    size_t nl = (size_t)(b * cfg->latent_channels * lh * lw);
    size_t ni = (size_t)(b * cfg->out_channels * lh * ds * lw * ds);
    float *hl = malloc(nl * sizeof *hl);
    float *lat = be->ops->alloc(be, nl * sizeof(float)), *img = be->ops->alloc(be, ni * sizeof(float));
    if (!hl || !lat || !img) {
        fprintf(stderr, "bench_vae: out of memory\n");
        return 1;
    }
    unsigned seed = 3;
    for (size_t i = 0; i < nl; i++) {
        seed = seed * 1664525u + 1013904223u;
        hl[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 3.0f;
    }
    if (be->ops->upload(be, lat, hl, nl * sizeof(float)) != LH_OK) {
        fprintf(stderr, "bench_vae: upload failed\n");
        return 1;
    }
    printf("{\"load_s\": %.4f, \"weights_mb\": %.1f, \"workspace_mb\": %.1f, \"decode_s\": [",
           load_s, (double)lh_vae_weight_bytes(m) / 1048576.0,
           (double)lh_vae_decode_workspace(m, b, lh, lw, 0) / 1048576.0);
    for (int it = 0; it < iters; it++) {
        t0 = bench_now();
        if (lh_vae_decode(m, img, lat, b, lh, lw, 0, &err) != LH_OK) {
            fprintf(stderr, "bench_vae: %s\n", err.msg);
            return 1;
        }
        if (be->ops->sync(be) != LH_OK) {
            fprintf(stderr, "bench_vae: sync failed\n");
            return 1;
        }
        printf("%s%.4f", it ? ", " : "", bench_now() - t0);
        fflush(stdout);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("], \"peak_rss_mb\": %.1f}\n", (double)ru.ru_maxrss / 1024.0);
    be->ops->free(be, lat);
    be->ops->free(be, img);
    free(hl);
    lh_vae_free(m);
    lh_backend_destroy(be);
    return 0;
}
