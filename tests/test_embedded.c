/* Embedded model suite: the shipped examples/model/shapes-tiny (trained by
 * lorahost itself, examples/model/make.sh) and its style adapter
 * examples/model/striped.safetensors, generated at fixed seeds through the
 * whole stack (tokenizer, text encoder, U-Net, scheduler plugin, pipeline,
 * adapter plugin). What the images show is measured, not their bits (those
 * move with the CPU's vector width):
 *  - content: for each prompt "a C1 SHAPE on a C2 background", the palette
 *    colour nearest the mean of the central box is C1 and the one nearest the
 *    border ring is C2, for most seeds, and the mean colours lie near the
 *    palette's;
 *  - style: with the striped adapter hot-loaded the diagonal-stripe score
 *    rises clearly while the colours stay; after unloading, the first image
 *    comes back bit for bit.
 * A regression anywhere in the stack moves these numbers. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/adapters.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"
#include "shapes.h"

#define STEPS 20
#define N_SEEDS 2

typedef struct scene {
    const char *prompt;
    lh_shapes_color shape, background;
} scene;

static const scene SCENES[] = {
    {"a red circle on a blue background", LH_SHAPES_RED, LH_SHAPES_BLUE},
    {"a yellow star on a black background", LH_SHAPES_YELLOW, LH_SHAPES_BLACK},
    {"a green triangle on a white background", LH_SHAPES_GREEN, LH_SHAPES_WHITE},
    {"a blue square on a yellow background", LH_SHAPES_BLUE, LH_SHAPES_YELLOW},
    {"a white heart on a purple background", LH_SHAPES_WHITE, LH_SHAPES_PURPLE},
    {"an orange diamond on a green background", LH_SHAPES_ORANGE, LH_SHAPES_GREEN},
};
#define N_SCENES ((int)(sizeof SCENES / sizeof SCENES[0]))

static lh_backend *g_be;
static lh_registry *g_reg;
static lh_model *g_m;
static char g_lora[1024];

static void setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    char model[1024], msg[LH_ERROR_MAX] = "";
    lh_error err = {0};
    snprintf(model, sizeof model, "%s/examples/model/shapes-tiny", src ? src : "..");
    snprintf(g_lora, sizeof g_lora, "%s/examples/model/striped.safetensors", src ? src : "..");
    if (lh_backend_cpu_create(&g_be, 0, msg, sizeof msg) != LH_OK ||
        lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) != LH_OK ||
        lh_model_open(&g_m, g_be, model, &err) != LH_OK) {
        fprintf(stderr, "setup: %s%s\n", err.msg, msg);
        abort();
    }
}

static void teardown(void) {
    lh_model_close(g_m);
    lh_registry_destroy(g_reg);
    lh_backend_destroy(g_be);
}

/* txt2img at 32x32; returns the RGB8 image (malloc'd). */
static uint8_t *gen(const char *prompt, uint64_t seed) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = prompt;
    p.steps = STEPS;
    p.width = p.height = 32;
    p.seed = seed;
    lh_gen_result r;
    lh_error err = {0};
    ck_assert_msg(lh_pipeline_txt2img(g_m, g_reg, &p, &r, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(r.width, 32);
    ck_assert_int_eq(r.height, 32);
    uint8_t *rgb = malloc(32 * 32 * 3);
    ck_assert_ptr_nonnull(rgb);
    memcpy(rgb, r.images, 32 * 32 * 3);
    lh_gen_result_free(&r);
    return rgb;
}

static double dist(const double rgb[3], lh_shapes_color c) {
    const uint8_t *p = lh_shapes_color_rgb(c);
    double d = 0;
    for (int i = 0; i < 3; i++) d += (rgb[i] - p[i]) * (rgb[i] - p[i]);
    return sqrt(d);
}

/* Every scene at every seed: how many images get both colours right, the
 * mean distances to the asked-for colours, the mean stripe score. */
typedef struct tally {
    int right_centre, right_border, n;
    double centre_dist, border_dist, stripes;
} tally;

static tally run_all(const char *tag, uint8_t *first_image_out) {
    tally t = {0};
    for (int k = 0; k < N_SCENES; k++)
        for (uint64_t seed = 1; seed <= N_SEEDS; seed++) {
            uint8_t *rgb = gen(SCENES[k].prompt, seed);
            if (k == 0 && seed == 1 && first_image_out) memcpy(first_image_out, rgb, 32 * 32 * 3);
            lh_shapes_stats s;
            lh_error err = {0};
            ck_assert(lh_shapes_measure(&s, rgb, 32, 32, &err) == LH_OK);
            lh_shapes_color c = lh_shapes_nearest_color(s.center_rgb);
            lh_shapes_color b = lh_shapes_nearest_color(s.border_rgb);
            t.right_centre += c == SCENES[k].shape;
            t.right_border += b == SCENES[k].background;
            t.centre_dist += dist(s.center_rgb, SCENES[k].shape);
            t.border_dist += dist(s.border_rgb, SCENES[k].background);
            t.stripes += s.stripe_energy;
            t.n++;
            fprintf(stderr, "%-5s seed %llu %-40s centre %-6s border %-6s stripes %+.3f\n", tag,
                    (unsigned long long)seed, SCENES[k].prompt, lh_shapes_color_name(c),
                    lh_shapes_color_name(b), s.stripe_energy);
            free(rgb);
        }
    t.centre_dist /= t.n;
    t.border_dist /= t.n;
    t.stripes /= t.n;
    fprintf(stderr, "%-5s centre right %d/%d, border right %d/%d, mean distance centre %.1f "
                    "border %.1f, stripes %+.4f\n",
            tag, t.right_centre, t.n, t.right_border, t.n, t.centre_dist, t.border_dist,
            t.stripes);
    return t;
}

START_TEST(test_content_and_style) {
    static uint8_t first[32 * 32 * 3];
    tally base = run_all("base", first);
    /* the palette's colours are >= 100 apart; a wrong colour costs ~200 */
    ck_assert_msg(base.right_centre >= base.n * 3 / 4, "shape colour right in %d of %d images",
                  base.right_centre, base.n);
    ck_assert_msg(base.right_border >= base.n * 7 / 8, "background colour right in %d of %d images",
                  base.right_border, base.n);
    ck_assert_msg(base.centre_dist < 90.0, "mean centre distance %.1f", base.centre_dist);
    ck_assert_msg(base.border_dist < 50.0, "mean border distance %.1f", base.border_dist);

    lh_adapter *a = NULL;
    lh_error err = {0};
    lh_adapter_load_opts lo = {.policy = LH_ADAPTER_STRICT};
    ck_assert_msg(lh_adapter_load(&a, g_m, g_reg, g_lora, &lo, &err) == LH_OK, "%s", err.msg);
    lh_adapter_weights one;
    lh_adapter_weights_init(&one, 1.0);
    ck_assert_msg(lh_adapter_set_ex(g_m, &a, &one, 1, LH_ADAPTER_MERGED, &err) == LH_OK, "%s",
                  err.msg);
    tally style = run_all("style", NULL);
    lh_adapter_unload(a);
    ck_assert_msg(style.stripes > base.stripes + 0.025, "stripes %.4f -> %.4f", base.stripes,
                  style.stripes);
    ck_assert_msg(style.right_border >= style.n * 3 / 4, "styled: background right in %d of %d",
                  style.right_border, style.n);
    uint8_t *again = gen(SCENES[0].prompt, 1);
    ck_assert_msg(!memcmp(again, first, sizeof first), "image after unloading differs");
    free(again);
}
END_TEST

/* Separate requests in one batch (lh_gen_params.prompts/negative_prompts/
 * seeds, as the server batches them): each image equals its own batch-of-one
 * run, for a deterministic and a stochastic (ancestral) scheduler. */
static void solo(const char *prompt, const char *neg, uint64_t seed, const char *sched,
                 lh_gen_result *r) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = prompt;
    p.negative_prompt = neg;
    p.steps = 6;
    p.width = p.height = 32;
    p.seed = seed;
    p.scheduler = sched;
    lh_error err = {0};
    ck_assert_msg(lh_pipeline_txt2img(g_m, g_reg, &p, r, &err) == LH_OK, "%s", err.msg);
}

START_TEST(test_batched_requests) {
    static const char *const SCHED[] = {"ddim", "euler_ancestral"};
    const char *prompts[3] = {SCENES[0].prompt, SCENES[1].prompt, SCENES[2].prompt};
    const char *negs[3] = {"", "a white background", ""};
    const uint64_t seeds[3] = {11, 12, 4000000001u};
    for (int k = 0; k < 2; k++) {
        lh_gen_params p;
        lh_gen_params_init(&p);
        p.steps = 6;
        p.width = p.height = 32;
        p.batch_size = 3;
        p.prompts = prompts;
        p.negative_prompts = negs;
        p.seeds = seeds;
        p.scheduler = SCHED[k];
        lh_gen_result rb;
        lh_error err = {0};
        ck_assert_msg(lh_pipeline_txt2img(g_m, g_reg, &p, &rb, &err) == LH_OK, "%s", err.msg);
        size_t per = (size_t)(rb.channels * rb.latent_h * rb.latent_w);
        for (int i = 0; i < 3; i++) {
            lh_gen_result r1;
            solo(prompts[i], negs[i], seeds[i], SCHED[k], &r1);
            double worst = 0;
            for (size_t j = 0; j < per; j++) {
                double d = fabs((double)rb.latents[i * per + j] - r1.latents[j]);
                if (d > worst) worst = d;
            }
            /* the same arithmetic, but the GEMMs block a bigger batch differently:
             * rounding-level differences (measured 1.3e-5) */
            ck_assert_msg(worst <= 1e-4, "%s: image %d of the batch differs from its own run by %g",
                          SCHED[k], i, worst);
            int px = 0;
            for (int j = 0; j < 32 * 32 * 3; j++) {
                int d = abs((int)rb.images[i * 32 * 32 * 3 + j] - (int)r1.images[j]);
                if (d > px) px = d;
            }
            ck_assert_msg(px <= 1, "%s: image %d: pixels differ by %d", SCHED[k], i, px);
            lh_gen_result_free(&r1);
        }
        lh_gen_result_free(&rb);
    }
    /* prompts that need different numbers of 75-token windows are not batched */
    char longp[2048] = "";
    for (int i = 0; i < 100; i++) strcat(longp, "red circle, ");
    const char *mixed[2] = {"a red circle", longp};
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.steps = 2;
    p.width = p.height = 32;
    p.batch_size = 2;
    p.prompts = mixed;
    p.seeds = seeds;
    lh_gen_result rb;
    lh_error err = {0};
    ck_assert_int_eq(lh_pipeline_txt2img(g_m, g_reg, &p, &rb, &err), LH_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "windows"), "%s", err.msg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("embedded");
    TCase *tc = tcase_create("shapes-tiny");
    tcase_add_checked_fixture(tc, setup, teardown); /* in the child: OpenMP does not survive fork */
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_content_and_style);
    tcase_add_test(tc, test_batched_requests);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
