/* Synthetic shapes suite (datasets/shapes.h): the same bytes on every run
 * (a fixed pixel hash per style), every shape and colour over a few hundred
 * scenes, captions that say what is drawn (shape centre and image corners
 * against the caption's colours), striped images measurably striped, the
 * measurement helper on synthetic images, and an import of a generated set. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "png.h"
#include "shapes.h"

#define S 32 /* image side for the suite */
/* set 1, scene 0, and the FNV-1a hash of scenes 0..7 of set 1 at 32x32:
 * pinned values; a change here changes every generated data set */
#define FIXED_EXTENT 2959
#define FIXED_CX 1995
#define FIXED_CY 2179
#define FIXED_HASH_PLAIN 0x41a66f5cd1e23ee6ull
#define FIXED_HASH_STRIPED 0x86e6aef8bd920856ull

static char g_tmp[256];

static void setup(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_test_shapes_%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", g_tmp, g_tmp);
    ck_assert_int_eq(system(cmd), 0);
}

static void teardown(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    (void)system(cmd);
}

static uint64_t fnv1a(const uint8_t *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static void render_ok(uint8_t *rgb, int64_t size, const lh_shapes_scene *sc, lh_shapes_style st) {
    lh_error err = {0};
    ck_assert_msg(lh_shapes_render(rgb, size, sc, st, &err) == LH_OK, "%s", err.msg);
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len + 1);
    ck_assert_int_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    buf[len] = 0;
    *n = (size_t)len;
    return buf;
}

static const uint8_t *px(const uint8_t *rgb, int64_t x, int64_t y) { return rgb + 3 * (y * S + x); }

static int same_rgb(const uint8_t *a, const uint8_t *b) { return !memcmp(a, b, 3); }

/* ---- Determinism ---- */

START_TEST(test_fixed_scene) {
    /* set 1, scene 0 is a black heart on blue; the geometry is pinned too */
    lh_shapes_scene sc;
    lh_shapes_scene_at(&sc, 1, 0);
    ck_assert_int_eq(sc.shape, LH_SHAPE_HEART);
    ck_assert_int_eq(sc.color, LH_SHAPES_BLACK);
    ck_assert_int_eq(sc.background, LH_SHAPES_BLUE);
    ck_assert_int_eq(sc.extent, FIXED_EXTENT);
    ck_assert_int_eq(sc.cx, FIXED_CX);
    ck_assert_int_eq(sc.cy, FIXED_CY);
    char cap[128];
    lh_shapes_caption(cap, sizeof cap, &sc, LH_SHAPES_STYLE_PLAIN);
    ck_assert_str_eq(cap, "a black heart on a blue background");
    lh_shapes_caption(cap, sizeof cap, &sc, LH_SHAPES_STYLE_STRIPED);
    ck_assert_str_eq(cap, "a black heart on a blue background, striped style");

    /* pixel hashes of scenes 0..7 of set 1 at 32x32 */
    const uint64_t want[LH_SHAPES_STYLE_COUNT] = {FIXED_HASH_PLAIN, FIXED_HASH_STRIPED};
    uint8_t rgb[S * S * 3];
    for (int st = 0; st < LH_SHAPES_STYLE_COUNT; st++) {
        uint64_t h = 0xCBF29CE484222325ull;
        for (int i = 0; i < 8; i++) {
            lh_shapes_scene_at(&sc, 1, i);
            render_ok(rgb, S, &sc, (lh_shapes_style)st);
            h = fnv1a(rgb, sizeof rgb, h);
        }
        ck_assert_msg(h == want[st], "%s: hash 0x%016llx", lh_shapes_style_name(st),
                      (unsigned long long)h);
    }
}
END_TEST

START_TEST(test_generate_twice) {
    for (int st = 0; st < LH_SHAPES_STYLE_COUNT; st++) {
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/a%d", g_tmp, st);
        snprintf(b, sizeof b, "%s/b%d", g_tmp, st);
        lh_error err = {0};
        ck_assert_msg(lh_shapes_generate(a, 10, S, st, 42, &err) == LH_OK, "%s", err.msg);
        ck_assert_msg(lh_shapes_generate(b, 10, S, st, 42, &err) == LH_OK, "%s", err.msg);
        for (int i = 0; i < 10; i++) {
            for (int k = 0; k < 2; k++) {
                char pa[600], pb[600];
                const char *ext = k ? "txt" : "png";
                snprintf(pa, sizeof pa, "%s/%06d.%s", a, i, ext);
                snprintf(pb, sizeof pb, "%s/%06d.%s", b, i, ext);
                size_t na, nb;
                uint8_t *da = slurp(pa, &na), *db = slurp(pb, &nb);
                ck_assert_msg(na == nb && !memcmp(da, db, na), "%s differs from %s", pa, pb);
                free(da);
                free(db);
            }
            /* the PNG holds exactly what lh_shapes_render draws; the txt the caption */
            char p[600];
            snprintf(p, sizeof p, "%s/%06d.png", a, i);
            uint8_t *got = NULL;
            int64_t w, h;
            ck_assert_msg(lh_png_read(p, &got, &w, &h, &err) == LH_OK, "%s", err.msg);
            ck_assert_int_eq(w, S);
            ck_assert_int_eq(h, S);
            uint8_t want[S * S * 3];
            lh_shapes_scene sc;
            lh_shapes_scene_at(&sc, 42, i);
            render_ok(want, S, &sc, st);
            ck_assert(!memcmp(got, want, sizeof want));
            free(got);
            char cap[128];
            lh_shapes_caption(cap, sizeof cap, &sc, st);
            snprintf(p, sizeof p, "%s/%06d.txt", a, i);
            size_t n;
            char *txt = (char *)slurp(p, &n);
            ck_assert_str_eq(txt, cap);
            free(txt);
        }
    }
    /* another seed is another set */
    lh_shapes_scene x, y;
    int differ = 0;
    for (int i = 0; i < 16; i++) {
        lh_shapes_scene_at(&x, 42, i);
        lh_shapes_scene_at(&y, 43, i);
        differ += memcmp(&x, &y, sizeof x) != 0;
    }
    ck_assert_int_ge(differ, 15);
}
END_TEST

/* ---- Content ---- */

START_TEST(test_coverage) {
    int shapes[LH_SHAPE_COUNT] = {0}, colors[LH_SHAPES_COLOR_COUNT] = {0},
        bgs[LH_SHAPES_COLOR_COUNT] = {0};
    int32_t emin = LH_SHAPES_UNIT, emax = 0;
    for (int i = 0; i < 600; i++) {
        lh_shapes_scene sc;
        lh_shapes_scene_at(&sc, 0, i);
        ck_assert_int_lt((int)sc.shape, LH_SHAPE_COUNT);
        ck_assert_int_lt((int)sc.color, LH_SHAPES_COLOR_COUNT);
        ck_assert_int_lt((int)sc.background, LH_SHAPES_COLOR_COUNT);
        ck_assert_int_ne(sc.color, sc.background);
        shapes[sc.shape]++, colors[sc.color]++, bgs[sc.background]++;
        /* 40% to 80% of the side, the bounding square inside the image */
        ck_assert_int_ge(sc.extent, LH_SHAPES_UNIT * 2 / 5);
        ck_assert_int_le(sc.extent, LH_SHAPES_UNIT * 4 / 5);
        ck_assert_int_ge(sc.cx - sc.extent / 2, 0);
        ck_assert_int_le(sc.cx + sc.extent / 2, LH_SHAPES_UNIT);
        ck_assert_int_ge(sc.cy - sc.extent / 2, 0);
        ck_assert_int_le(sc.cy + sc.extent / 2, LH_SHAPES_UNIT);
        emin = sc.extent < emin ? sc.extent : emin;
        emax = sc.extent > emax ? sc.extent : emax;
    }
    /* 600 draws: every value at least half its expected count */
    for (int s = 0; s < LH_SHAPE_COUNT; s++)
        ck_assert_msg(shapes[s] >= 50, "%s: %d", lh_shapes_shape_name(s), shapes[s]);
    for (int c = 0; c < LH_SHAPES_COLOR_COUNT; c++) {
        ck_assert_msg(colors[c] >= 37, "%s: %d", lh_shapes_color_name(c), colors[c]);
        ck_assert_msg(bgs[c] >= 37, "background %s: %d", lh_shapes_color_name(c), bgs[c]);
    }
    ck_assert_int_lt(emin, LH_SHAPES_UNIT / 2);      /* sizes spread over the range */
    ck_assert_int_gt(emax, LH_SHAPES_UNIT * 7 / 10);
}
END_TEST

/* The caption's words, parsed back: "a|an COLOR SHAPE on a COLOR background[, striped style]" */
static void parse_caption(const char *cap, int *color, int *shape, int *bg, int *striped) {
    char art[8], c[32], s[32], b[32];
    int n = 0;
    ck_assert_msg(sscanf(cap, "%7s %31s %31s on a %31s background%n", art, c, s, b, &n) == 4,
                  "caption: %s", cap);
    *color = *shape = *bg = -1;
    for (int i = 0; i < LH_SHAPES_COLOR_COUNT; i++) {
        if (!strcmp(c, lh_shapes_color_name(i))) *color = i;
        if (!strcmp(b, lh_shapes_color_name(i))) *bg = i;
    }
    for (int i = 0; i < LH_SHAPE_COUNT; i++)
        if (!strcmp(s, lh_shapes_shape_name(i))) *shape = i;
    ck_assert_str_eq(art, strchr("aeiou", c[0]) ? "an" : "a");
    if (!strcmp(cap + n, "")) *striped = 0;
    else if (!strcmp(cap + n, ", striped style")) *striped = 1;
    else ck_abort_msg("caption tail: %s", cap + n);
}

START_TEST(test_captions_match_pixels) {
    uint8_t rgb[S * S * 3];
    int centre_hits = 0, border_hits = 0;
    const int N = 300;
    for (int i = 0; i < N; i++) {
        lh_shapes_scene sc;
        lh_shapes_scene_at(&sc, 5, i);
        for (int st = 0; st < LH_SHAPES_STYLE_COUNT; st++) {
            char cap[128];
            lh_shapes_caption(cap, sizeof cap, &sc, st);
            int color, shape, bg, striped;
            parse_caption(cap, &color, &shape, &bg, &striped);
            ck_assert_int_eq(color, sc.color);
            ck_assert_int_eq(shape, sc.shape);
            ck_assert_int_eq(bg, sc.background);
            ck_assert_int_eq(striped, st == LH_SHAPES_STYLE_STRIPED);

            render_ok(rgb, S, &sc, st);
            const uint8_t *bgc = lh_shapes_color_rgb(bg);
            /* corners: exactly the background, in both styles */
            ck_assert_msg(same_rgb(px(rgb, 0, 0), bgc) && same_rgb(px(rgb, S - 1, 0), bgc) &&
                              same_rgb(px(rgb, 0, S - 1), bgc) && same_rgb(px(rgb, S - 1, S - 1), bgc),
                          "scene %d (%s): a corner is not the background", i, cap);
            if (st != LH_SHAPES_STYLE_PLAIN) continue;
            /* the pixel under the shape's centre: exactly the caption's colour */
            int64_t x = (int64_t)sc.cx * S / LH_SHAPES_UNIT, y = (int64_t)sc.cy * S / LH_SHAPES_UNIT;
            ck_assert_msg(same_rgb(px(rgb, x, y), lh_shapes_color_rgb(color)),
                          "scene %d (%s): centre pixel (%lld,%lld) is %d,%d,%d", i, cap,
                          (long long)x, (long long)y, px(rgb, x, y)[0], px(rgb, x, y)[1],
                          px(rgb, x, y)[2]);
            /* the statistics a model's output is judged by */
            lh_shapes_stats s;
            lh_error err = {0};
            ck_assert_msg(lh_shapes_measure(&s, rgb, S, S, &err) == LH_OK, "%s", err.msg);
            centre_hits += lh_shapes_nearest_color(s.center_rgb) == (lh_shapes_color)color;
            border_hits += lh_shapes_nearest_color(s.border_rgb) == (lh_shapes_color)bg;
        }
    }
    /* the centre box can miss a small shifted star; the border never holds much shape */
    ck_assert_msg(centre_hits >= N * 9 / 10, "centre colour = caption colour in %d/%d", centre_hits, N);
    ck_assert_msg(border_hits == N, "border colour = background in %d/%d", border_hits, N);
}
END_TEST

START_TEST(test_stripes_measurable) {
    uint8_t plain[S * S * 3], striped[S * S * 3];
    double sum_p = 0, sum_s = 0, max_p = -1, min_s = 1;
    const int N = 200;
    for (int i = 0; i < N; i++) {
        lh_shapes_scene sc;
        lh_shapes_scene_at(&sc, 9, i);
        render_ok(plain, S, &sc, LH_SHAPES_STYLE_PLAIN);
        render_ok(striped, S, &sc, LH_SHAPES_STYLE_STRIPED);
        lh_shapes_stats a, b;
        ck_assert(lh_shapes_measure(&a, plain, S, S, NULL) == LH_OK);
        ck_assert(lh_shapes_measure(&b, striped, S, S, NULL) == LH_OK);
        ck_assert_msg(b.stripe_energy > a.stripe_energy + 0.003, "scene %d: plain %.4f striped %.4f",
                      i, a.stripe_energy, b.stripe_energy);
        /* the ratio does not shrink with the shape: plain ~0, striped clearly positive */
        ck_assert_msg(fabs(a.stripe_ratio) < 0.01 && b.stripe_ratio > 0.04,
                      "scene %d: ratio plain %.4f striped %.4f", i, a.stripe_ratio, b.stripe_ratio);
        sum_p += a.stripe_energy, sum_s += b.stripe_energy;
        max_p = a.stripe_energy > max_p ? a.stripe_energy : max_p;
        min_s = b.stripe_energy < min_s ? b.stripe_energy : min_s;
    }
    /* plain images sit near 0 (edges cancel); striped ones well above */
    ck_assert_msg(fabs(sum_p / N) < 0.002, "plain mean %.4f", sum_p / N);
    ck_assert_msg(sum_s / N > 0.04, "striped mean %.4f", sum_s / N);
    ck_assert_msg(max_p < min_s, "max plain %.4f, min striped %.4f", max_p, min_s);
}
END_TEST

/* ---- The measurement helper on synthetic images ---- */

START_TEST(test_measure_synthetic) {
    enum { W = 16, H = 8 };
    uint8_t img[H][W][3];
    lh_shapes_stats s;
    lh_error err = {0};

    /* flat colour: both means that colour, no stripes */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) img[y][x][0] = 10, img[y][x][1] = 20, img[y][x][2] = 30;
    ck_assert(lh_shapes_measure(&s, &img[0][0][0], W, H, &err) == LH_OK);
    for (int k = 0; k < 3; k++) {
        ck_assert_double_eq_tol(s.center_rgb[k], 10.0 * (k + 1), 1e-12);
        ck_assert_double_eq_tol(s.border_rgb[k], 10.0 * (k + 1), 1e-12);
    }
    ck_assert_double_eq_tol(s.stripe_energy, 0.0, 1e-12);

    /* red centre box x in [6, 10), y in [3, 5) over blue, a green ring x<2|x>=14|y<1|y>=7 */
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            uint8_t *p = img[y][x];
            int centre = x >= 6 && x < 10 && y >= 3 && y < 5;
            int ring = x < 2 || x >= 14 || y < 1 || y >= 7;
            p[0] = centre ? 200 : 0, p[1] = ring ? 150 : 0, p[2] = centre || ring ? 0 : 100;
        }
    }
    ck_assert(lh_shapes_measure(&s, &img[0][0][0], W, H, &err) == LH_OK);
    ck_assert_double_eq_tol(s.center_rgb[0], 200, 1e-12);
    ck_assert_double_eq_tol(s.center_rgb[1], 0, 1e-12);
    ck_assert_double_eq_tol(s.center_rgb[2], 0, 1e-12);
    ck_assert_double_eq_tol(s.border_rgb[0], 0, 1e-12);
    ck_assert_double_eq_tol(s.border_rgb[1], 150, 1e-12);
    ck_assert_double_eq_tol(s.border_rgb[2], 0, 1e-12);
    ck_assert_int_eq(lh_shapes_nearest_color(s.center_rgb), LH_SHAPES_RED);

    /* black/white stripes along x+y, period 4: every diagonal step flips, every
     * anti-diagonal step keeps: +1. Along x-y: -1. Vertical stripes: 0. */
    const double want[3] = {1.0, -1.0, 0.0};
    for (int kind = 0; kind < 3; kind++) {
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) {
                int on = kind == 0 ? (x + y) % 4 < 2 : kind == 1 ? (x - y + 64) % 4 < 2 : x % 2;
                memset(img[y][x], on ? 255 : 0, 3);
            }
        }
        ck_assert(lh_shapes_measure(&s, &img[0][0][0], W, H, &err) == LH_OK);
        ck_assert_msg(fabs(s.stripe_energy - want[kind]) < 1e-12, "kind %d: %.6f", kind,
                      s.stripe_energy);
    }

    ck_assert_int_eq(lh_shapes_measure(&s, &img[0][0][0], 4, 4, &err), LH_ERR_INVALID);
}
END_TEST

START_TEST(test_errors) {
    lh_error err = {0};
    uint8_t rgb[4 * 4 * 3];
    lh_shapes_scene sc;
    lh_shapes_scene_at(&sc, 0, 0);
    ck_assert_int_eq(lh_shapes_render(rgb, 4, &sc, LH_SHAPES_STYLE_PLAIN, &err), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "size 4"));
    char dir[512];
    snprintf(dir, sizeof dir, "%s/d", g_tmp);
    ck_assert_int_eq(lh_shapes_generate(dir, 0, S, LH_SHAPES_STYLE_PLAIN, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_shapes_generate(dir, 1, S, (lh_shapes_style)7, 0, &err), LH_ERR_INVALID);
    snprintf(dir, sizeof dir, "%s/missing/d", g_tmp);
    ck_assert_int_eq(lh_shapes_generate(dir, 1, S, LH_SHAPES_STYLE_PLAIN, 0, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, dir));
    ck_assert_int_eq(lh_shapes_style_parse("striped"), LH_SHAPES_STYLE_STRIPED);
    ck_assert_int_eq(lh_shapes_style_parse("plain"), LH_SHAPES_STYLE_PLAIN);
    ck_assert_int_eq(lh_shapes_style_parse("ink"), -1);
}
END_TEST

/* ---- A training set ---- */

START_TEST(test_import) {
    char dir[512], h5[512];
    snprintf(dir, sizeof dir, "%s/set", g_tmp);
    snprintf(h5, sizeof h5, "%s/set.h5", g_tmp);
    lh_error err = {0};
    ck_assert_msg(lh_shapes_generate(dir, 6, S, LH_SHAPES_STYLE_STRIPED, 3, &err) == LH_OK, "%s",
                  err.msg);
    lh_dataset_import_opts o = {.resolution = S, .crop = LH_DATASET_CROP_CENTER};
    int64_t n = 0, skipped = -1, nocap = -1;
    ck_assert_msg(lh_dataset_import(dir, h5, &o, &n, &skipped, &nocap, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(n, 6);
    ck_assert_int_eq(skipped, 0);
    ck_assert_int_eq(nocap, 0);
    lh_dataset *d = NULL;
    ck_assert_msg(lh_dataset_open(&d, h5, &err) == LH_OK, "%s", err.msg);
    for (int i = 0; i < 6; i++) {
        lh_dataset_item it = {0};
        ck_assert_msg(lh_dataset_read(d, i, LH_DATASET_IMAGE, &it, &err) == LH_OK, "%s", err.msg);
        lh_shapes_scene sc;
        lh_shapes_scene_at(&sc, 3, i);
        char cap[128];
        lh_shapes_caption(cap, sizeof cap, &sc, LH_SHAPES_STYLE_STRIPED);
        ck_assert_str_eq(it.caption, cap);
        uint8_t want[S * S * 3];
        render_ok(want, S, &sc, LH_SHAPES_STYLE_STRIPED);
        ck_assert_int_eq(it.width, S);
        ck_assert_int_eq(it.height, S);
        ck_assert(!memcmp(it.rgb, want, sizeof want)); /* same size: stored as drawn */
        lh_dataset_item_free(&it);
    }
    lh_dataset_close(d);
}
END_TEST

int main(void) {
    Suite *s = suite_create("shapes");
    TCase *tc = tcase_create("shapes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fixed_scene);
    tcase_add_test(tc, test_generate_twice);
    tcase_add_test(tc, test_coverage);
    tcase_add_test(tc, test_captions_match_pixels);
    tcase_add_test(tc, test_stripes_measurable);
    tcase_add_test(tc, test_measure_synthetic);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_import);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
