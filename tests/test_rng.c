/* RNG suite: lorahost's generator reproduces torch.randn draws for the same
 * seed (fixture from tests/golden/rng_torch.py), including the cached
 * Box-Muller pair carried between small draws, and replays supplied noise. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "rng.h"

static lh_st_file *g_fix;

static void open_fixture(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/rng/torch_randn.safetensors",
             getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..");
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&g_fix, path, &err) == LH_OK, "%s", err.msg);
}

/* Draw `sizes` in order from one generator seeded with `seed` and compare
 * each draw with fixture tensor names[k]. Relative L2 error and max abs. */
static void check_case(uint64_t seed, int n_draws, const int64_t *sizes,
                       const char *const *names) {
    lh_error err = {0};
    lh_rng *rng = lh_rng_create(seed, &err);
    ck_assert_ptr_nonnull(rng);
    for (int k = 0; k < n_draws; k++) {
        int64_t n = sizes[k];
        float *got = malloc((size_t)n * sizeof *got), *want = malloc((size_t)n * sizeof *want);
        ck_assert(got && want);
        ck_assert_int_eq(lh_rng_randn(rng, got, n, &err), LH_OK);
        ck_assert_msg(lh_st_read_f32(want, (size_t)n, g_fix, names[k], &err) == LH_OK, "%s",
                      err.msg);
        double num = 0, den = 0, maxabs = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = (double)got[i] - want[i];
            num += d * d;
            den += (double)want[i] * want[i];
            if (fabs(d) > maxabs) maxabs = fabs(d);
        }
        /* torch's vectorised logf/sinf/cosf may differ from libm's in the
         * last bit: allow 1e-6 absolute, far below any visible change */
        ck_assert_msg(maxabs <= 1e-6 && sqrt(num / den) <= 1e-7,
                      "%s: max abs diff %g, rel L2 %g", names[k], maxabs, sqrt(num / den));
        free(got);
        free(want);
    }
    lh_rng_destroy(rng);
}

#define ONE(seed, n, name)                                                                     \
    do {                                                                                       \
        int64_t s_[1] = {n};                                                                   \
        const char *n_[1] = {name};                                                            \
        check_case(seed, 1, s_, n_);                                                           \
    } while (0)

START_TEST(test_small_draws) {
    ONE(0, 1, "seed0_n1");
    ONE(0, 5, "seed0_n5");
    ONE(42, 15, "seed42_n15");
}
END_TEST

START_TEST(test_block_draws) {
    ONE(42, 16, "seed42_n16");
    ONE(42, 17, "seed42_n17");
    ONE(1234, 33, "seed1234_n33");
    ONE(7, 256, "seed7_n256");
    ONE(99, 32768, "seed99_n32768");
}
END_TEST

START_TEST(test_seed_above_32_bits) { ONE((1ull << 40) + 7, 100, "seed1099511627783_n100"); }
END_TEST

START_TEST(test_sequence_keeps_cached_normal) {
    int64_t sizes[4] = {3, 3, 20, 1};
    const char *names[4] = {"seed3_n3_0", "seed3_n3_1", "seed3_n20_2", "seed3_n1_3"};
    check_case(3, 4, sizes, names);
}
END_TEST

START_TEST(test_known_first_values) {
    /* torch.manual_seed(0); torch.randn(5) -- the values users see in docs */
    const float want[5] = {1.5409961f, -0.2934289f, -2.1787894f, 0.5684313f, -1.0845224f};
    lh_rng *rng = lh_rng_create(0, NULL);
    float got[5];
    ck_assert_int_eq(lh_rng_randn(rng, got, 5, NULL), LH_OK);
    for (int i = 0; i < 5; i++) ck_assert_float_eq_tol(got[i], want[i], 1e-6f);
    lh_rng_destroy(rng);
}
END_TEST

START_TEST(test_replay) {
    const float noise[5] = {1, 2, 3, 4, 5};
    lh_error err = {0};
    lh_rng *rng = lh_rng_create_replay(noise, 5, &err);
    float got[4];
    ck_assert_int_eq(lh_rng_randn(rng, got, 3, &err), LH_OK);
    ck_assert_float_eq(got[2], 3.0f);
    ck_assert_int_eq(lh_rng_randn(rng, got, 3, &err), LH_ERR_INVALID);
    ck_assert_str_eq(err.msg, "supplied noise exhausted: 3 values asked, 2 left");
    ck_assert_int_eq(lh_rng_randn(rng, got, 2, &err), LH_OK);
    ck_assert_float_eq(got[1], 5.0f);
    lh_rng_destroy(rng);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("torch");
    tcase_add_unchecked_fixture(tc, open_fixture, NULL);
    tcase_add_test(tc, test_small_draws);
    tcase_add_test(tc, test_block_draws);
    tcase_add_test(tc, test_seed_above_32_bits);
    tcase_add_test(tc, test_sequence_keeps_cached_normal);
    tcase_add_test(tc, test_known_first_values);
    tcase_add_test(tc, test_replay);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
