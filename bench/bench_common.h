/* What the bench programs share: a monotonic clock and the PRECISION
 * argument (fp32, fp16, bf16). Header-only: each program is one file. */
#ifndef LH_BENCH_COMMON_H
#define LH_BENCH_COMMON_H

#include <string.h>
#include <time.h>

#include "lorahost/safetensors.h"

/* Seconds on the monotonic clock. */
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* *out = the activation type PRECISION names ("fp32", "fp16", "bf16");
 * 0, or -1 when it names none. */
static inline int bench_precision(const char *name, lh_dtype *out) {
    if (!strcmp(name, "fp32")) *out = LH_DTYPE_F32;
    else if (!strcmp(name, "fp16")) *out = LH_DTYPE_F16;
    else if (!strcmp(name, "bf16")) *out = LH_DTYPE_BF16;
    else return -1;
    return 0;
}

#endif
