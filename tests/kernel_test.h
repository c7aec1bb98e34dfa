/* Shared by the test_kernels_* suites. Before including it, a suite defines
 *   #define N_BE <n>
 *   static lh_backend *g_be[N_BE];
 *   static const int g_threads[N_BE] = {...};   (0 = all cores)
 * and gets the check fixtures backends_up / backends_down (one cpu backend
 * per thread count) and seeded random data (splitmix64). */
#ifndef LH_TESTS_KERNEL_TEST_H
#define LH_TESTS_KERNEL_TEST_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

static void backends_up(void) {
    char err[256];
    for (int i = 0; i < N_BE; i++)
        ck_assert_msg(lh_backend_cpu_create(&g_be[i], g_threads[i], err, sizeof err) == LH_OK,
                      "%s", err);
}

static void backends_down(void) {
    for (int i = 0; i < N_BE; i++) {
        lh_backend_destroy(g_be[i]);
        g_be[i] = NULL;
    }
}

static uint64_t g_rng;
static void seed(uint64_t s) { g_rng = s; }
static double urand(void) { /* [-1, 1) */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* n float32 values uniform in [offset - amp, offset + amp) */
static inline float *rand_f(int64_t n, double amp, double offset) {
    float *p = xmalloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(offset + amp * urand());
    return p;
}

#endif
