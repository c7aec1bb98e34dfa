/* Loss-scale suite: lh_loss_scaler against torch's GradScaler update
 * (tests/fixtures/loss_scale.json, written by tests/golden/loss_scale.py):
 * the same scale after every one of 9000 steps with overflows at fixed
 * steps, the same steps skipped; bf16 and fp32 keep scale 1.
 * Run from <build>/tests with LH_SOURCE_DIR set (ctest does this). */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "lorahost/train.h"

START_TEST(test_matches_grad_scaler) {
    const char *src = getenv("LH_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/loss_scale.json", src ? src : "../..");
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    ck_assert_msg(doc, "%s: %s", path, je.text);
    lh_loss_scaler s;
    lh_loss_scaler_init(&s, LH_DTYPE_F16);
    ck_assert(s.enabled);
    ck_assert(s.scale == json_real_value(json_object_get(doc, "init_scale")));
    ck_assert(s.growth_factor == json_real_value(json_object_get(doc, "growth_factor")));
    ck_assert(s.backoff_factor == json_real_value(json_object_get(doc, "backoff_factor")));
    ck_assert(s.growth_interval == json_integer_value(json_object_get(doc, "growth_interval")));
    json_int_t steps = json_integer_value(json_object_get(doc, "steps"));
    json_t *over = json_object_get(doc, "overflow"), *changes = json_object_get(doc, "scale");
    ck_assert(steps > 0 && json_array_size(over) > 0 && json_array_size(changes) > 0);
    size_t next_over = 0, next_change = 0, skipped = 0;
    float want = s.scale;
    for (json_int_t i = 0; i < steps; i++) {
        int found = next_over < json_array_size(over) &&
                    json_integer_value(json_array_get(over, next_over)) == i;
        next_over += found;
        int apply = lh_loss_scaler_update(&s, found);
        ck_assert_msg(apply == !found, "step %lld: apply %d with overflow %d", (long long)i,
                      apply, found);
        skipped += !apply;
        json_t *c = json_array_get(changes, next_change);
        if (c && json_integer_value(json_array_get(c, 0)) == i) {
            want = (float)json_real_value(json_array_get(c, 1));
            next_change++;
        }
        ck_assert_msg(s.scale == want, "after step %lld: scale %g, torch %g", (long long)i,
                      s.scale, want);
    }
    ck_assert(next_change == json_array_size(changes) && next_over == json_array_size(over));
    ck_assert(s.skipped == (int64_t)skipped && s.steps == steps);
    json_decref(doc);
}
END_TEST

START_TEST(test_no_scaling_without_fp16) {
    const lh_dtype kinds[] = {LH_DTYPE_F32, LH_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        lh_loss_scaler s;
        lh_loss_scaler_init(&s, kinds[k]);
        ck_assert(!s.enabled && s.scale == 1.0f);
        for (int i = 0; i < 5000; i++) ck_assert(lh_loss_scaler_update(&s, 0) == 1);
        ck_assert(lh_loss_scaler_update(&s, 1) == 0); /* a NaN step is still skipped */
        ck_assert(s.scale == 1.0f && s.skipped == 1);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("loss_scale");
    TCase *tc = tcase_create("grad_scaler");
    tcase_add_test(tc, test_matches_grad_scaler);
    tcase_add_test(tc, test_no_scaling_without_fp16);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
