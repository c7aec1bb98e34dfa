/* The CUDA parity suites' harness (tests/test_cuda_parity_*.c): the cpu
 * backend (the reference) and the cuda backend side by side, random inputs
 * put on both, outputs compared with a relative tolerance. Without the
 * module or a device the suites print why and exit 77 (skipped). Run with
 * CK_FORK=no on a GPU machine (the suites also set no-fork themselves: a
 * CUDA context does not survive fork). LH_PARITY_DEVICE=cpu runs a suite
 * against a second cpu backend instead, to check the suite itself where
 * there is no GPU; LH_PARITY_DEVICE=poison against tests/fake_device.h, a
 * cpu backend whose memory the host cannot touch, so host code that reads
 * or writes backend memory directly crashes here as it would on a GPU.
 * Header-only: one suite includes it once. */
#ifndef LH_TESTS_CUDA_PARITY_H
#define LH_TESTS_CUDA_PARITY_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_load.h"
#include "fake_device.h"

#define PARITY_SKIP 77

/* fp32 results: relative to the reference's largest magnitude */
#define TOL_F32 1e-5
#define TOL_TF32 5e-4
#define TOL_HALF 1e-2
/* A whole model's output (U-Net, VAE decode) in bf16 activations: bf16
 * keeps 8 significant bits to fp16's 11, so two correct implementations
 * that sum in another order (a GPU's and the cpu's) part 8 times as far as
 * in fp16. Measured under tests/cuda_emu (2026-12-08): U-Net 1.4e-2 and VAE
 * decode 1.4e-2 in bf16, 1.5e-3 and 1.7e-3 in fp16 (within TOL_HALF). */
#define TOL_BF16_MODEL 3e-2
#define TOL_MODEL(dt) ((dt) == LH_DTYPE_BF16 ? TOL_BF16_MODEL : (dt) == LH_DTYPE_F32 ? TOL_F32 : TOL_HALF)

static lh_backend *g_cpu, *g_gpu;

/* Comparisons out of tolerance. They fail the run but not at once: a GPU
 * run is rare and short, so every comparison of it is made and printed
 * (a "FAIL" line each) before the suite exits non-zero. */
static int g_parity_failed;
#define PARITY_EXPECT(cond, ...)                                                               \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("FAIL ");                                                                   \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
            g_parity_failed++;                                                                 \
        }                                                                                      \
    } while (0)

/* Whether the device under test records graphs: cuda, unless
 * LORAHOST_CUDA_GRAPHS=0, and the poison device (closures it replays). */
__attribute__((unused)) static int parity_graphs(void) {
    const char *off = getenv("LORAHOST_CUDA_GRAPHS");
    if (!strcmp(g_gpu->ops->name, "poison")) return 1;
    return !strcmp(g_gpu->ops->name, "cuda") && !(off && !strcmp(off, "0"));
}

/* 0, or PARITY_SKIP with the reason printed. */
static int parity_init(void) {
    char msg[512] = "";
    if (lh_backend_cpu_create(&g_cpu, 0, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, "cpu backend: %s\n", msg);
        return 1;
    }
    /* LH_PARITY_DEVICE=cpu checks the suite itself against a second cpu
     * backend (one thread: another GEMM blocking) where no GPU is */
    const char *dev = getenv("LH_PARITY_DEVICE");
    int poison = dev && !strcmp(dev, "poison");
    lh_status st = poison ? fake_device_create(&g_gpu, 1, msg, sizeof msg)
                          : lh_backend_create(&g_gpu, dev ? dev : "cuda", dev ? 1 : 0, msg,
                                              sizeof msg);
    if (st != LH_OK) {
        printf("SKIP: %s\n", msg);
        lh_backend_destroy(g_cpu);
        return PARITY_SKIP;
    }
    if (dev && !poison) { /* under another name, so the host treats its memory as a device's (staging) */
        static lh_backend_ops as_device;
        as_device = *g_gpu->ops;
        as_device.name = "cpu-as-device";
        g_gpu->ops = &as_device;
    }
    return 0;
}

static void parity_done(void) {
    lh_backend_destroy(g_gpu);
    lh_backend_destroy(g_cpu);
}

/* Uniform in [lo, hi), reproducible from seed (xorshift). */
__attribute__((unused)) static float *rand_host(int64_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1));
    ck_assert_ptr_nonnull(x);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return x;
}

/* A backend buffer holding host[n] (NULL host: zeros). */
__attribute__((unused)) static float *on(lh_backend *be, const float *host, int64_t n) {
    float *d = be->ops->alloc(be, sizeof(float) * (size_t)(n ? n : 1));
    ck_assert_ptr_nonnull(d);
    if (host)
        ck_assert_int_eq(be->ops->upload(be, d, host, sizeof(float) * (size_t)n), LH_OK);
    else
        ck_assert_int_eq(be->ops->memset0(be, d, sizeof(float) * (size_t)n), LH_OK);
    return d;
}

/* The buffer's n values on the host (malloc'd). */
__attribute__((unused)) static float *back(lh_backend *be, const float *d, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(be->ops->download(be, h, d, sizeof(float) * (size_t)n), LH_OK);
    return h;
}

/* max |got - want| / max(max |want|, floor) <= tol, non-finite values
 * equal in kind; prints the measured error either way. floor: the scale of
 * a result that cancels to (near) zero, where rounding noise is not
 * measured against its own size (expect_close: 1e-6). */
static void expect_close_floor(const char *what, const float *got, const float *want, int64_t n,
                               double tol, double floor) {
    double worst = 0, ref = floor;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(want[i]) || !isfinite(got[i])) {
            PARITY_EXPECT(isnan(want[i]) == isnan(got[i]) && isinf(want[i]) == isinf(got[i]),
                          "%s[%lld]: cuda %g, cpu %g", what, (long long)i, (double)got[i],
                          (double)want[i]);
            continue;
        }
        double d = fabs((double)got[i] - (double)want[i]);
        if (d > worst) {
            worst = d;
            at = i;
        }
        if (fabs((double)want[i]) > ref) ref = fabs((double)want[i]);
    }
    double rel = worst / ref;
    printf("%-48s n=%-9lld rel err %.2e (tol %.0e)\n", what, (long long)n, rel, tol);
    PARITY_EXPECT(rel <= tol, "%s: relative error %.3e > %.0e (at %lld: cuda %g, cpu %g)", what,
                  rel, tol, (long long)at, at >= 0 ? (double)got[at] : 0.0,
                  at >= 0 ? (double)want[at] : 0.0);
}

static void expect_close(const char *what, const float *got, const float *want, int64_t n,
                         double tol) {
    expect_close_floor(what, got, want, n, tol, 1e-6);
}

/* Compare backend buffers a (cuda) and b (cpu) of n values. */
__attribute__((unused)) static void expect_close_dev(const char *what, const float *gpu_buf, const float *cpu_buf,
                             int64_t n, double tol) {
    float *g = back(g_gpu, gpu_buf, n), *c = back(g_cpu, cpu_buf, n);
    expect_close(what, g, c, n, tol);
    free(g);
    free(c);
}

/* Run the suite without forking; exit status for ctest. */
static int parity_run(Suite *s) {
    SRunner *sr = srunner_create(s); /* owns s: freed on every path */
    int rc = parity_init();
    if (rc) {
        srunner_free(sr);
        return rc;
    }
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    parity_done();
    if (g_parity_failed)
        printf("parity: %d comparisons out of tolerance (the FAIL lines above)\n",
               g_parity_failed);
    return failed || g_parity_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
