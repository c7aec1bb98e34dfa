/* Helpers for suites that drive model code on a backend with golden data.
 * Before including it, a suite defines `static lh_backend *g_be;`. */
#ifndef LH_TESTS_BACKEND_TEST_H
#define LH_TESTS_BACKEND_TEST_H

#include <check.h>
#include <stdlib.h>
#include <time.h>

#include "lorahost/lorahost.h"

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Tensor `key` of f as n host floats (fails if missing or mis-sized). */
static inline float *read_host(const lh_st_file *f, const char *key, size_t n) {
    const lh_st_tensor *t = lh_st_find(f, key);
    ck_assert_msg(t && (size_t)t->numel == n, "%s missing or mis-sized", key);
    float *p = malloc(n * sizeof *p);
    ck_assert(p);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(p, n, f, key, &err) == LH_OK, "%s", err.msg);
    return p;
}

/* n floats of backend memory, filled from host (or left as they are when NULL). */
static inline float *to_dev(const float *host, size_t n) {
    float *d = g_be->ops->alloc(g_be, n * sizeof(float));
    ck_assert(d);
    if (host) ck_assert(g_be->ops->upload(g_be, d, host, n * sizeof(float)) == LH_OK);
    return d;
}

/* A malloc'd host copy of n floats of backend memory. */
static inline float *download(const float *dev, size_t n) {
    float *host = malloc(n * sizeof *host);
    ck_assert(host);
    ck_assert(g_be->ops->download(g_be, host, dev, n * sizeof *host) == LH_OK);
    return host;
}

#endif
