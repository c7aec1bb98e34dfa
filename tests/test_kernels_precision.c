/* Mixed-precision ops of the cpu backend: round (F16 through F16C and the
 * scalar tail, BF16) against the tested scalar conversions of
 * lorahost/safetensors.h on every kind of value (normal, subnormal, past
 * 65504, Inf, NaN, ties), count_nonfinite, and set_precision: op outputs
 * and input gradients rounded, accumulated parameter gradients not. */
#include <check.h>
#include <math.h>
#include <string.h>

#include "../kernels/cpu/cpu.h"
#include "lorahost/safetensors.h"

#define N_BE 2
static lh_backend *g_be[N_BE];
static const int g_threads[N_BE] = {1, 0};
#include "kernel_test.h"

static float via_f16(float x) { return lh_f16_to_f32(lh_f32_to_f16(x)); }
static float via_bf16(float x) { return lh_bf16_to_f32(lh_f32_to_bf16(x)); }

static int same(float a, float b) { return (isnan(a) && isnan(b)) || !memcmp(&a, &b, sizeof a); }

/* Values of every class, then random ones at many magnitudes. */
static float *values(int64_t n) {
    float *v = xmalloc((size_t)n * sizeof *v);
    const float special[] = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.0f, 65520.0f, 1e6f, -1e6f,
                             INFINITY, -INFINITY, NAN, 6.1e-5f, 5.96e-8f, 2.98e-8f, 1e-9f,
                             1.0009765625f /* 1 + 2^-10: exact */, 1.00048828125f /* tie */,
                             1.00146484375f /* tie, rounds up */, 3.3895314e38f};
    int64_t ns = (int64_t)(sizeof special / sizeof special[0]);
    for (int64_t i = 0; i < n; i++)
        v[i] = i < ns ? special[i] : (float)(urand() * pow(10.0, 12.0 * urand()));
    return v;
}

START_TEST(test_round_matches_scalar) {
    seed(41);
    const int64_t sizes[] = {1, 7, 8, 19, 1000, 100003};
    for (int b = 0; b < N_BE; b++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            float *v = values(n), *h = xmalloc((size_t)n * sizeof *h),
                  *bf = xmalloc((size_t)n * sizeof *bf);
            memcpy(h, v, (size_t)n * sizeof *h);
            memcpy(bf, v, (size_t)n * sizeof *bf);
            ck_assert(g_be[b]->ops->round(g_be[b], h, n, LH_DTYPE_F16) == LH_OK);
            ck_assert(g_be[b]->ops->round(g_be[b], bf, n, LH_DTYPE_BF16) == LH_OK);
            for (int64_t i = 0; i < n; i++) {
                ck_assert_msg(same(h[i], via_f16(v[i])), "f16 %a -> %a, want %a", v[i], h[i],
                              via_f16(v[i]));
                ck_assert_msg(same(bf[i], via_bf16(v[i])), "bf16 %a -> %a, want %a", v[i],
                              bf[i], via_bf16(v[i]));
            }
            int64_t count = -1, want = 0;
            for (int64_t i = 0; i < n; i++) want += !isfinite(h[i]);
            ck_assert(g_be[b]->ops->count_nonfinite(g_be[b], &count, h, n) == LH_OK);
            ck_assert_int_eq(count, want);
            free(v);
            free(h);
            free(bf);
        }
    float x = 1.0f;
    ck_assert(g_be[0]->ops->round(g_be[0], &x, 1, LH_DTYPE_I8) == LH_ERR_UNSUPPORTED);
    ck_assert(g_be[0]->ops->set_precision(g_be[0], LH_DTYPE_F64) == LH_ERR_UNSUPPORTED);
}
END_TEST

START_TEST(test_ops_round_their_outputs) {
    seed(42);
    lh_backend *be = g_be[1];
    const int64_t rows = 5, n_in = 33, n_out = 17;
    float *x = rand_f(rows * n_in, 1, 0), *w = rand_f(n_out * n_in, 1, 0);
    float *bias = rand_f(n_out, 1, 0), *dy = rand_f(rows * n_out, 1e-3, 0);
    float *y32 = xmalloc(rows * n_out * sizeof *y32), *y16 = xmalloc(rows * n_out * sizeof *y16);
    float *dx32 = xmalloc(rows * n_in * sizeof *dx32), *dx16 = xmalloc(rows * n_in * sizeof *dx16);
    float *dw32 = calloc((size_t)(n_out * n_in), sizeof *dw32);
    float *dw16 = calloc((size_t)(n_out * n_in), sizeof *dw16);
    ck_assert(dw32 && dw16);
    ck_assert(be->ops->linear(be, y32, x, w, bias, rows, n_in, n_out) == LH_OK);
    ck_assert(be->ops->linear_backward(be, dx32, dw32, NULL, dy, x, w, rows, n_in, n_out) ==
              LH_OK);
    ck_assert(be->ops->set_precision(be, LH_DTYPE_F16) == LH_OK);
    ck_assert(be->ops->linear(be, y16, x, w, bias, rows, n_in, n_out) == LH_OK);
    ck_assert(be->ops->linear_backward(be, dx16, dw16, NULL, dy, x, w, rows, n_in, n_out) ==
              LH_OK);
    ck_assert(be->ops->set_precision(be, LH_DTYPE_F32) == LH_OK);
    int changed = 0;
    for (int64_t i = 0; i < rows * n_out; i++) {
        ck_assert(same(y16[i], via_f16(y32[i])));
        changed += y16[i] != y32[i];
    }
    for (int64_t i = 0; i < rows * n_in; i++) ck_assert(same(dx16[i], via_f16(dx32[i])));
    /* parameter gradients accumulate in float32, untouched */
    ck_assert(memcmp(dw16, dw32, (size_t)(n_out * n_in) * sizeof *dw16) == 0);
    ck_assert(changed > 0);
    /* back to F32: exact again */
    ck_assert(be->ops->linear(be, y16, x, w, bias, rows, n_in, n_out) == LH_OK);
    ck_assert(memcmp(y16, y32, (size_t)(rows * n_out) * sizeof *y16) == 0);
    free(x), free(w), free(bias), free(dy), free(y32), free(y16), free(dx32), free(dx16);
    free(dw32), free(dw16);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels_precision");
    TCase *tc = tcase_create("round");
    tcase_add_checked_fixture(tc, backends_up, backends_down);
    tcase_add_test(tc, test_round_matches_scalar);
    tcase_add_test(tc, test_ops_round_their_outputs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
