/* Small helpers shared by the check suites that compare with golden data. */
#ifndef LH_TESTS_TEST_UTIL_H
#define LH_TESTS_TEST_UTIL_H

#include <math.h>
#include <stddef.h>

/* ||got - want|| / ||want|| (the denominator floored at 1e-30). */
static inline double rel_l2(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

#endif
