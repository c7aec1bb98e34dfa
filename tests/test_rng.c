/* RNG suite: lorahost's generator reproduces torch.randn draws bit for bit
 * for the same seed (fixture from tests/golden/rng_torch.py, recorded with
 * torch 2.15 on an AVX-512 CPU), including the cached Box-Muller pair carried
 * between small draws, and replays supplied noise.
 *
 * Exactness, as measured: for 16+ values host/rng.c replays torch's AVX2
 * kernel (which AVX-512 machines run too) and matches it exactly on any
 * compiler/CPU with IEEE float and a correct fmaf. torch's own DEFAULT
 * kernel (CPUs without AVX2, ATEN_CPU_CAPABILITY=default, non-x86 builds)
 * differs from that in the last bits, so a fixture recorded there would not
 * match; the generator script refuses to record on such a machine. Below 16
 * values both torch and lorahost call libm's double log1p/sin/cos: exact
 * where the libm is glibc's (as in the fixture), possibly an ulp off a float
 * rounding boundary elsewhere, which this test would report. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/lorahost.h"
#include "lorahost/safetensors.h"
#include "rng.h"

static lh_st_file *g_fix;
static int64_t g_compared, g_identical; /* values checked (per forked test) */

static void open_fixture(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/rng/torch_randn.safetensors",
             getenv("LH_SOURCE_DIR") ? getenv("LH_SOURCE_DIR") : "../..");
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&g_fix, path, &err) == LH_OK, "%s", err.msg);
}

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Exact comparison of a draw with torch's: every float bit pattern equal. */
static void expect_bits(const char *name, const float *got, const float *want, int64_t n) {
    int64_t same = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        if (bits_of(got[i]) == bits_of(want[i]))
            same++;
        else if (first < 0)
            first = i;
    }
    g_compared += n;
    g_identical += same;
    ck_assert_msg(first < 0, "%s: %" PRId64 " of %" PRId64 " values differ; first at %" PRId64
                  ": got %.9g (0x%08x), torch %.9g (0x%08x)",
                  name, n - same, n, first, got[first], bits_of(got[first]), want[first],
                  bits_of(want[first]));
}

/* Draw `sizes` in order from one generator seeded with `seed` and compare
 * each draw with fixture tensor names[k], bit for bit. */
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
        expect_bits(names[k], got, want, n);
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

START_TEST(test_edge_negative_zero) {
    /* uniform 55 of seed 282286 is 0: radius is -0 and torch's
     * fma(n, std=1, mean=0) makes the value +0, not -0 */
    ONE(282286, 64, "seed282286_n64");
}
END_TEST

/* Every case the fixture lists in metadata "cases" ("S:N[,N...]" joined by
 * ";"), each draw compared bit for bit. */
START_TEST(test_all_fixture_cases) {
    const char *cases = lh_st_meta_find(g_fix, "cases");
    ck_assert_ptr_nonnull(cases);
    int64_t before = g_compared;
    int n_cases = 0;
    for (const char *p = cases; *p;) {
        char *end;
        uint64_t seed = strtoull(p, &end, 10);
        ck_assert_msg(*end == ':', "bad cases entry at '%s'", p);
        p = end + 1;
        int64_t sizes[16];
        int n = 0;
        for (;;) {
            ck_assert_int_lt(n, 16);
            sizes[n++] = strtoll(p, &end, 10);
            p = end;
            if (*p != ',') break;
            p++;
        }
        ck_assert_msg(*p == ';' || *p == 0, "bad cases entry near '%s'", p);
        if (*p) p++;
        char names[16][64];
        const char *name_ptrs[16];
        for (int k = 0; k < n; k++) {
            if (n > 1)
                snprintf(names[k], sizeof names[k], "seed%" PRIu64 "_n%" PRId64 "_%d", seed,
                         sizes[k], k);
            else
                snprintf(names[k], sizeof names[k], "seed%" PRIu64 "_n%" PRId64, seed, sizes[k]);
            name_ptrs[k] = names[k];
        }
        check_case(seed, n, sizes, name_ptrs);
        n_cases++;
    }
    /* guard against a truncated fixture passing vacuously */
    ck_assert_int_ge(n_cases, 20);
    ck_assert_int_ge(g_compared - before, 60000);
    printf("rng: %d fixture cases, %" PRId64 " values, all bit-identical with torch\n", n_cases,
           g_compared - before);
}
END_TEST

static uint64_t fnv1a64(const float *v, int64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = bits_of(v[i]);
        for (int b = 0; b < 4; b++) { /* little-endian bytes, as numpy writes them */
            h ^= (u >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

/* Draws too large to store (up to 10^5 values): FNV-1a of all their bits. */
START_TEST(test_hashed_large_draws) {
    const char *hashed = lh_st_meta_find(g_fix, "hashed");
    ck_assert_ptr_nonnull(hashed);
    int n_cases = 0;
    for (const char *p = hashed; *p;) {
        char *end;
        uint64_t seed = strtoull(p, &end, 10);
        ck_assert(*end == ':');
        int64_t n = strtoll(end + 1, &end, 10);
        p = *end == ';' ? end + 1 : end;
        char key[96];
        snprintf(key, sizeof key, "fnv1a64:seed%" PRIu64 "_n%" PRId64, seed, n);
        const char *want = lh_st_meta_find(g_fix, key);
        ck_assert_msg(want != NULL, "no %s", key);
        float *got = malloc((size_t)n * sizeof *got);
        lh_error err = {0};
        lh_rng *rng = lh_rng_create(seed, &err);
        ck_assert(got && rng);
        ck_assert_int_eq(lh_rng_randn(rng, got, n, &err), LH_OK);
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, fnv1a64(got, n));
        ck_assert_msg(strcmp(hex, want) == 0, "%s: got %s, torch %s", key, hex, want);
        g_compared += n;
        g_identical += n;
        lh_rng_destroy(rng);
        free(got);
        n_cases++;
    }
    ck_assert_int_ge(n_cases, 3);
    printf("rng: %d hashed draws bit-identical with torch\n", n_cases);
}
END_TEST

START_TEST(test_known_first_values) {
    /* torch.manual_seed(0); torch.randn(5) -- the values users see in docs */
    const float want[5] = {1.5409961f, -0.2934289f, -2.1787894f, 0.5684313f, -1.0845224f};
    lh_rng *rng = lh_rng_create(0, NULL);
    float got[5];
    ck_assert_int_eq(lh_rng_randn(rng, got, 5, NULL), LH_OK);
    /* printed to 8 digits, so this one is a tolerance, not a bit check */
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
    tcase_add_test(tc, test_edge_negative_zero);
    tcase_add_test(tc, test_all_fixture_cases);
    tcase_add_test(tc, test_hashed_large_draws);
    tcase_add_test(tc, test_known_first_values);
    tcase_add_test(tc, test_replay);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
