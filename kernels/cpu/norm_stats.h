/* Two-pass mean and biased variance of a float32 run, accumulated in double
 * over eight lanes so the loops vectorise (shared by group_norm.c and
 * layer_norm.c; private to kernels/cpu/). */
#ifndef LH_KERNELS_CPU_NORM_STATS_H
#define LH_KERNELS_CPU_NORM_STATS_H

#include <stdint.h>

static inline double lh__sum_f32(const float *x, int64_t len) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)x[i + l];
    for (; i < len; i++) acc[0] += (double)x[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static inline double lh__sumsq_dev_f32(const float *x, int64_t len, double mean) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int l = 0; l < 8; l++) {
            double d = (double)x[i + l] - mean;
            acc[l] += d * d;
        }
    for (; i < len; i++) {
        double d = (double)x[i] - mean;
        acc[0] += d * d;
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

#endif
