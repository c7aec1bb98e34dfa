/* The safety prompt filter (plugins/safety_prompt_filter.c) and safety-checker
 * chains (host/safety.c): each normalisation (case, full width, white space,
 * CJK spacing), list loading errors, lists with different actions, chain
 * order and `none`, image actions (with tests/plugins/flag_safety.c), the
 * report as a line and as JSON. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "safety.h"

static char g_build[4096], g_tmp[256];

/* ---- Fixtures ---- */

static lh_registry *registry(void) {
    lh_registry *r = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_registry_create(&r, &err), LH_OK);
    static const char *const files[] = {"lib/lorahost/plugins/safety_prompt_filter.so",
                                        "tests/plugins/good_safety.so",
                                        "tests/plugins/safety/flag_safety.so"};
    for (size_t i = 0; i < 3; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", g_build, files[i]);
        ck_assert_msg(lh_registry_load_file(r, path, &err) == LH_OK, "%s", err.msg);
    }
    return r;
}

/* Write text to g_tmp/name; returns the path (static buffer, one of 4). */
static const char *write_list(const char *name, const char *text) {
    static char paths[4][512];
    static int k;
    char *p = paths[k++ % 4];
    snprintf(p, 512, "%s/%s", g_tmp, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return p;
}

/* A chain from "section.key=value" overrides; NULL and *err filled on failure. */
static lh_safety_chain *chain(lh_registry *r, const char *const *sets, lh_error *err,
                              lh_settings **keep) {
    lh_settings *s = NULL;
    ck_assert_int_eq(lh_settings_create(&s, err), LH_OK);
    for (size_t i = 0; sets[i]; i++)
        ck_assert_msg(lh_settings_set_override(s, sets[i], err) == LH_OK, "%s: %s", sets[i],
                      err->msg);
    lh_safety_chain *c = NULL;
    lh_status st = lh_safety_chain_create(&c, r, s, err);
    if (st != LH_OK) ck_assert_ptr_null(c);
    *keep = s;
    return c;
}

/* The filter alone with `lists`; fails the test if it cannot be created. */
typedef struct filter_fx {
    lh_registry *r;
    lh_settings *s;
    lh_safety_chain *c;
} filter_fx;

static void filter_open(filter_fx *fx, const char *lists) {
    char set[4096];
    snprintf(set, sizeof set, "safety_prompt_filter.lists=%s", lists);
    const char *sets[] = {"plugins.safety=safety_prompt_filter", set, NULL};
    lh_error err = {0};
    fx->r = registry();
    fx->c = chain(fx->r, sets, &err, &fx->s);
    ck_assert_msg(fx->c != NULL, "%s", err.msg);
}

static void filter_close(filter_fx *fx) {
    lh_safety_chain_destroy(fx->c);
    lh_settings_destroy(fx->s);
    lh_registry_destroy(fx->r);
}

/* The action for prompt (checks the call succeeds); *rep gets the report. */
static int verdict(filter_fx *fx, const char *prompt, lh_safety_report *rep) {
    lh_error err = {0};
    ck_assert_msg(lh_safety_check_prompt(fx->c, prompt, rep, &err) == LH_OK, "%s", err.msg);
    return rep->action;
}

static void expect(filter_fx *fx, const char *prompt, int action) {
    lh_safety_report rep;
    int got = verdict(fx, prompt, &rep);
    ck_assert_msg(got == action, "'%s': action %s, want %s", prompt, lh_safety_action_name(got),
                  lh_safety_action_name(action));
}

static const char *en_list(void) {
    return write_list("en.txt", "# comment line\n\nforbidden example\n  banned   sample  \n"
                                "placeholder term*\n");
}

/* ---- Normalisation ---- */

START_TEST(test_case_folding) {
    filter_fx fx;
    char lists[1024];
    const char *p = write_list("fold.txt", "Forbidden Example\nété interdit\nαπαγορευμένο\n"
                                           "запрещено\nŁódź zakaz\n");
    snprintf(lists, sizeof lists, "%s:reject:fold", p);
    filter_open(&fx, lists);
    expect(&fx, "a FORBIDDEN EXAMPLE here", LH_SAFETY_REJECT);
    expect(&fx, "forbidden example", LH_SAFETY_REJECT);
    expect(&fx, "ÉTÉ INTERDIT", LH_SAFETY_REJECT);       /* Latin-1 */
    expect(&fx, "ΑΠΑΓΟΡΕΥΜΈΝΟ", LH_SAFETY_REJECT);       /* Greek, with tonos */
    expect(&fx, "ЗАПРЕЩЕНО!", LH_SAFETY_REJECT);         /* Cyrillic */
    expect(&fx, "ŁÓDŹ ZAKAZ", LH_SAFETY_REJECT);         /* Latin Extended-A */
    expect(&fx, "forbidden examples", LH_SAFETY_PASS);   /* a longer word */
    expect(&fx, "unforbidden example", LH_SAFETY_PASS);
    expect(&fx, "forbidden", LH_SAFETY_PASS);
    filter_close(&fx);
}
END_TEST

START_TEST(test_full_width) {
    filter_fx fx;
    char lists[1024];
    snprintf(lists, sizeof lists, "%s:reject:en", en_list());
    filter_open(&fx, lists);
    /* U+FF46... full-width letters and U+3000 ideographic space */
    expect(&fx, "ｆｏｒｂｉｄｄｅｎ　ｅｘａｍｐｌｅ", LH_SAFETY_REJECT);
    expect(&fx, "ＦＯＲＢＩＤＤＥＮ example", LH_SAFETY_REJECT); /* full width + fold */
    expect(&fx, "ｆｏｒｂｉｄｄｅｎ", LH_SAFETY_PASS);
    filter_close(&fx);
}
END_TEST

START_TEST(test_whitespace) {
    filter_fx fx;
    char lists[1024];
    snprintf(lists, sizeof lists, "%s:reject:en", en_list());
    filter_open(&fx, lists);
    expect(&fx, "forbidden \t\n   example", LH_SAFETY_REJECT);
    expect(&fx, "  forbidden\xC2\xA0\xE2\x80\x83" "example  ", LH_SAFETY_REJECT); /* NBSP, em space */
    expect(&fx, "banned sample", LH_SAFETY_REJECT); /* the list line's runs collapse too */
    expect(&fx, "forbid\xE2\x80\x8B" "den example", LH_SAFETY_REJECT); /* zero-width space */
    expect(&fx, "forbiddenexample", LH_SAFETY_PASS);
    /* a trailing '*' in the list matches longer words */
    expect(&fx, "placeholder terms", LH_SAFETY_REJECT);
    expect(&fx, "placeholder", LH_SAFETY_PASS);
    filter_close(&fx);
}
END_TEST

START_TEST(test_cjk_spacing) {
    filter_fx fx;
    char lists[2048];
    const char *zh = write_list("zh.txt", "# 注释\n违禁示例\n禁 止 的样例\n");
    snprintf(lists, sizeof lists, "%s:reject:zh", zh);
    filter_open(&fx, lists);
    lh_safety_report rep;
    ck_assert_int_eq(verdict(&fx, "一个违禁示例的房子", &rep), LH_SAFETY_REJECT);
    ck_assert_str_eq(rep.entries[0].result.reason, "list 'zh' matched '违禁示例'");
    expect(&fx, "违 禁 示 例", LH_SAFETY_REJECT);
    expect(&fx, "违　禁  示\t例", LH_SAFETY_REJECT);     /* ideographic space, runs */
    expect(&fx, "a house 违禁示例 at night", LH_SAFETY_REJECT);
    expect(&fx, "禁止的样例", LH_SAFETY_REJECT);          /* spaces in the list line */
    expect(&fx, "违禁", LH_SAFETY_PASS);
    expect(&fx, "违禁 x 示例", LH_SAFETY_PASS);            /* a Latin letter between */
    filter_close(&fx);
}
END_TEST

START_TEST(test_invalid_prompt_utf8) {
    filter_fx fx;
    char lists[1024];
    snprintf(lists, sizeof lists, "%s:reject:en", en_list());
    filter_open(&fx, lists);
    lh_safety_report rep;
    lh_error err = {0};
    ck_assert_int_eq(lh_safety_check_prompt(fx.c, "ok \xFF bad", &rep, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "safety_prompt_filter") && strstr(err.msg, "UTF-8 at byte 4"),
                  "%s", err.msg);
    filter_close(&fx);
}
END_TEST

/* ---- Lists ---- */

/* Creating the filter with `lists` fails with a message holding want1 and want2. */
static void expect_create_error(const char *lists, const char *want1, const char *want2) {
    char set[4096];
    snprintf(set, sizeof set, "safety_prompt_filter.lists=%s", lists);
    const char *sets[] = {"plugins.safety=prompt_filter", set, NULL};
    lh_error err = {0};
    lh_settings *s;
    lh_registry *r = registry();
    lh_safety_chain *c = chain(r, sets, &err, &s);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(err.code, LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, "safety_prompt_filter") != NULL, "no checker in: %s", err.msg);
    ck_assert_msg(strstr(err.msg, want1) != NULL, "'%s' not in: %s", want1, err.msg);
    ck_assert_msg(!want2 || strstr(err.msg, want2) != NULL, "'%s' not in: %s", want2, err.msg);
    lh_settings_destroy(s);
    lh_registry_destroy(r);
}

START_TEST(test_list_errors) {
    char lists[2048], missing[600];
    snprintf(missing, sizeof missing, "%s/nope.txt", g_tmp);
    snprintf(lists, sizeof lists, "%s:reject:en", missing);
    expect_create_error(lists, missing, "list 'en': cannot open");

    const char *bad = write_list("bad.txt", "# ok\nfine phrase\nbad \xC3\x28 here\n");
    snprintf(lists, sizeof lists, "%s:reject:bad", bad);
    char where[600];
    snprintf(where, sizeof where, "%s:3: not valid UTF-8", bad);
    expect_create_error(lists, where, "list 'bad'");

    const char *overlong = write_list("overlong.txt", "\xC0\xAF\n");
    snprintf(lists, sizeof lists, "%s:reject", overlong);
    snprintf(where, sizeof where, "%s:1: not valid UTF-8", overlong);
    expect_create_error(lists, where, "list 'overlong'"); /* name from the file name */

    const char *empty = write_list("empty.txt", "# only comments\n\n   \n");
    snprintf(lists, sizeof lists, "%s:reject:e", empty);
    expect_create_error(lists, "has no phrases", empty);

    snprintf(lists, sizeof lists, "%s:drop:en", en_list());
    expect_create_error(lists, "unknown action 'drop'", NULL);
    snprintf(lists, sizeof lists, "%s", en_list());
    expect_create_error(lists, "expected PATH:ACTION:NAME", NULL);
    snprintf(lists, sizeof lists, "%s:reject:x, %s:blur:x", en_list(), en_list());
    expect_create_error(lists, "two lists named 'x'", NULL);
    expect_create_error("", "no phrase lists", NULL);
}
END_TEST

START_TEST(test_lists_with_actions) {
    filter_fx fx;
    char lists[4096];
    const char *en = en_list();
    const char *zh = write_list("zh2.txt", "违禁示例\n");
    const char *watch = write_list("watch.txt", "lighthouse\n");
    snprintf(lists, sizeof lists, "%s:blur:en, %s:reject:zh,%s:pass:watch", en, zh, watch);
    filter_open(&fx, lists);
    lh_safety_report rep;

    ck_assert_int_eq(verdict(&fx, "a red house", &rep), LH_SAFETY_PASS);
    ck_assert_int_eq(rep.n, 1);
    const lh_safety_result *x = &rep.entries[0].result;
    ck_assert_int_eq(x->flagged, 0);
    ck_assert_int_eq(x->n_scores, 3);
    ck_assert_str_eq(x->concepts[0], "en");
    ck_assert_str_eq(x->concepts[1], "zh");
    ck_assert_str_eq(x->concepts[2], "watch");
    for (int i = 0; i < 3; i++) ck_assert_float_eq(x->scores[i], 0.0f);

    ck_assert_int_eq(verdict(&fx, "a forbidden example", &rep), LH_SAFETY_BLUR);
    ck_assert_float_eq(x->scores[0], 1.0f);
    ck_assert_float_eq(x->scores[1], 0.0f);
    ck_assert_str_eq(x->reason, "list 'en' matched 'forbidden example'");

    /* the strongest action decides and its list comes first in the reason */
    ck_assert_int_eq(verdict(&fx, "forbidden example 违禁示例 lighthouse", &rep), LH_SAFETY_REJECT);
    ck_assert_str_eq(x->reason, "list 'zh' matched '违禁示例'; list 'en' matched 'forbidden "
                                "example'; list 'watch' matched 'lighthouse'");
    for (int i = 0; i < 3; i++) ck_assert_float_eq(x->scores[i], 1.0f);

    /* a pass list only records */
    ck_assert_int_eq(verdict(&fx, "a lighthouse", &rep), LH_SAFETY_PASS);
    ck_assert_int_eq(x->flagged, 1);
    ck_assert_int_eq(rep.flagged, 1);
    filter_close(&fx);
}
END_TEST

/* ---- Chains ---- */

START_TEST(test_chain_order_and_none) {
    char lists[1024];
    snprintf(lists, sizeof lists, "safety_prompt_filter.lists=%s:reject:en", en_list());
    lh_error err = {0};
    lh_settings *s;
    lh_registry *r = registry();
    const char *sets[] = {"plugins.safety=test_words, prompt_filter, test_flag_all", lists,
                          "safety_test_words.word=house", NULL};
    lh_safety_chain *c = chain(r, sets, &err, &s);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_uint_eq(lh_safety_chain_count(c), 3);
    ck_assert_str_eq(lh_safety_chain_id(c, 0), "test_words");
    ck_assert_str_eq(lh_safety_chain_id(c, 1), "safety_prompt_filter");
    ck_assert_str_eq(lh_safety_chain_id(c, 2), "test_flag_all");
    lh_safety_report rep;
    ck_assert_int_eq(lh_safety_check_prompt(c, "a forbidden example house", &rep, &err), LH_OK);
    ck_assert_int_eq(rep.n, 2); /* test_flag_all does not look at prompts */
    ck_assert_str_eq(rep.entries[0].checker, "test_words");
    ck_assert_str_eq(rep.entries[1].checker, "safety_prompt_filter");
    ck_assert_int_eq(rep.decider, 0); /* both reject: the first one decides */
    ck_assert_int_eq(rep.action, LH_SAFETY_REJECT);
    lh_safety_chain_destroy(c);
    lh_settings_destroy(s);

    /* the other order */
    const char *sets2[] = {"plugins.safety=safety_prompt_filter,test_words", lists, NULL};
    c = chain(r, sets2, &err, &s);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_int_eq(lh_safety_check_prompt(c, "forbidden example", &rep, &err), LH_OK);
    ck_assert_str_eq(rep.entries[0].checker, "safety_prompt_filter");
    ck_assert_str_eq(rep.entries[1].checker, "test_words");
    ck_assert_int_eq(rep.decider, 0);
    lh_safety_chain_destroy(c);
    lh_settings_destroy(s);

    /* none (the default) and an empty list run nothing */
    const char *const none_sets[][2] = {{"plugins.safety=none", NULL}, {"plugins.safety=", NULL}};
    for (int k = 0; k < 3; k++) {
        const char *one[] = {k < 2 ? none_sets[k][0] : NULL, NULL};
        c = chain(r, one, &err, &s);
        ck_assert_msg(c != NULL, "%s", err.msg);
        ck_assert_uint_eq(lh_safety_chain_count(c), 0);
        ck_assert_int_eq(lh_safety_check_prompt(c, "forbidden example", &rep, &err), LH_OK);
        ck_assert_int_eq(rep.n, 0);
        ck_assert_int_eq(rep.action, LH_SAFETY_PASS);
        uint8_t img[8 * 8 * 3];
        for (size_t i = 0; i < sizeof img; i++) img[i] = (uint8_t)(i * 7);
        lh_safety_report irep;
        ck_assert_int_eq(lh_safety_check_images(c, img, 1, 8, 8, "x", &rep, &irep, &err), LH_OK);
        for (size_t i = 0; i < sizeof img; i++) ck_assert_uint_eq(img[i], (uint8_t)(i * 7));
        lh_safety_chain_destroy(c);
        lh_settings_destroy(s);
    }

    /* none with others, unknown and repeated checkers */
    const char *bad1[] = {"plugins.safety=none,test_words", NULL};
    ck_assert_ptr_null(chain(r, bad1, &err, &s));
    ck_assert_msg(strstr(err.msg, "'none' cannot be combined"), "%s", err.msg);
    lh_settings_destroy(s);
    const char *bad2[] = {"plugins.safety=test_words,nope", NULL};
    ck_assert_ptr_null(chain(r, bad2, &err, &s));
    ck_assert_msg(strstr(err.msg, "safety checker 'nope'") && strstr(err.msg, "not loaded"), "%s",
                  err.msg);
    lh_settings_destroy(s);
    const char *bad3[] = {"plugins.safety=test_words,test_words", NULL};
    ck_assert_ptr_null(chain(r, bad3, &err, &s));
    ck_assert_msg(strstr(err.msg, "named twice"), "%s", err.msg);
    lh_settings_destroy(s);
    /* a key the checker does not know */
    const char *bad4[] = {"plugins.safety=test_words", "safety_test_words.wrod=x", NULL};
    ck_assert_ptr_null(chain(r, bad4, &err, &s));
    ck_assert_msg(strstr(err.msg, "wrod") && strstr(err.msg, "test_words"), "%s", err.msg);
    lh_settings_destroy(s);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_section_names) {
    char buf[64];
    ck_assert_str_eq(lh_safety_section(buf, sizeof buf, "safety_clip"), "safety_clip");
    ck_assert_str_eq(lh_safety_section(buf, sizeof buf, "test_words"), "safety_test_words");
    /* [safety_*] sections are accepted in files and --set; others are not */
    lh_settings *s;
    lh_error err = {0};
    ck_assert_int_eq(lh_settings_create(&s, &err), LH_OK);
    ck_assert_int_eq(lh_settings_set_override(s, "safety_anything.key=1", &err), LH_OK);
    ck_assert_int_ne(lh_settings_set_override(s, "safetyx.key=1", &err), LH_OK);
    ck_assert_int_ne(lh_settings_set_override(s, "safety_Bad.key=1", &err), LH_OK);
    char path[600];
    snprintf(path, sizeof path, "%s", write_list("s.ini", "[safety_prompt_filter]\n"
                                                          "lists = a.txt:reject:a\n"));
    ck_assert_msg(lh_settings_load(s, path, &err) == LH_OK, "%s", err.msg);
    const char *sec, *key;
    const lh_setting *v = lh_settings_open_at(s, 1, &sec, &key);
    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(sec, "safety_prompt_filter");
    ck_assert_str_eq(key, "lists");
    ck_assert_str_eq(v->text, "a.txt:reject:a");
    ck_assert_int_eq(v->line, 2);
    lh_settings_destroy(s);
}
END_TEST

/* ---- Images ---- */

static double spread(const uint8_t *img, size_t n) {
    int lo = 255, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (img[i] < lo) lo = img[i];
        if (img[i] > hi) hi = img[i];
    }
    return hi - lo;
}

/* max - min over the pixels at least `border` from the edges of a w x w image. */
static double interior_spread(const uint8_t *img, int w, int border) {
    int lo = 255, hi = 0;
    for (int y = border; y < w - border; y++)
        for (int x = border; x < w - border; x++)
            for (int ch = 0; ch < 3; ch++) {
                int v = img[(y * w + x) * 3 + ch];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
    return hi - lo;
}

/* Two 32x32 checkerboards through prompt_filter + test_flag_all(action).
 * Reports point into the plugins: the chain stays open until the next call
 * or run_images(NULL, ...). */
static void run_images(const char *action, uint8_t *img, lh_safety_report *rep) {
    static lh_settings *s;
    static lh_registry *r;
    static lh_safety_chain *c;
    lh_safety_chain_destroy(c);
    lh_settings_destroy(s);
    lh_registry_destroy(r);
    c = NULL, s = NULL, r = NULL;
    if (!action) return;
    char lists[1024], act[64];
    snprintf(lists, sizeof lists, "safety_prompt_filter.lists=%s:reject:en", en_list());
    snprintf(act, sizeof act, "safety_test_flag_all.action=%s", action);
    const char *sets[] = {"plugins.safety=prompt_filter,test_flag_all", lists, act, NULL};
    lh_error err = {0};
    r = registry();
    c = chain(r, sets, &err, &s);
    ck_assert_msg(c != NULL, "%s", err.msg);
    for (int i = 0; i < 2 * 32 * 32; i++)
        for (int ch = 0; ch < 3; ch++) img[i * 3 + ch] = ((i % 32) / 4 + (i / 32) / 4) % 2 ? 255 : 0;
    lh_safety_report prompt;
    ck_assert_int_eq(lh_safety_check_prompt(c, "a house", &prompt, &err), LH_OK);
    ck_assert_int_eq(lh_safety_check_images(c, img, 2, 32, 32, "a house", &prompt, rep, &err),
                     LH_OK);
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(rep[k].n, 2);
        ck_assert_str_eq(rep[k].entries[0].checker, "safety_prompt_filter");
        ck_assert_int_eq(rep[k].entries[0].stage, LH_SAFETY_STAGE_PROMPT);
        ck_assert_str_eq(rep[k].entries[1].checker, "test_flag_all");
        ck_assert_int_eq(rep[k].entries[1].stage, LH_SAFETY_STAGE_IMAGE);
        ck_assert_int_eq(rep[k].decider, 1);
        ck_assert_int_eq(rep[k].flagged, 1);
    }
}

START_TEST(test_image_actions) {
    static uint8_t img[2 * 32 * 32 * 3];
    lh_safety_report rep[2];
    const size_t n = sizeof img;

    run_images("pass", img, rep);
    ck_assert_int_eq(rep[0].action, LH_SAFETY_PASS);
    ck_assert(spread(img, n) == 255.0); /* untouched */

    run_images("blur", img, rep);
    ck_assert_int_eq(rep[1].action, LH_SAFETY_BLUR);
    /* 4-pixel checks under a radius-2, 3-pass box blur (sigma ~4): away from
     * the clamped edges within 10% of grey in both images */
    for (int k = 0; k < 2; k++) {
        double in = interior_spread(img + (size_t)k * n / 2, 32, 8);
        ck_assert_msg(in < 0.1 * 255, "image %d: spread %.0f after blur", k, in);
    }
    double mean = 0;
    for (size_t i = 0; i < n; i++) mean += img[i];
    ck_assert_double_eq_tol(mean / (double)n, 127.5, 8.0); /* blur keeps the mean */

    run_images("black", img, rep);
    ck_assert_int_eq(rep[0].action, LH_SAFETY_BLACK);
    ck_assert(spread(img, n) == 0.0 && img[0] == 0);

    run_images("reject", img, rep);
    ck_assert_int_eq(rep[0].action, LH_SAFETY_REJECT);
    ck_assert(spread(img, n) == 0.0 && img[0] == 0); /* never left for a caller to leak */

    /* the line and the JSON */
    char line[512];
    lh_safety_report_line(line, sizeof line, &rep[1]);
    ck_assert_str_eq(line, "safety_prompt_filter prompt: pass (en 0.00); test_flag_all image: "
                           "reject, flagged (everything 0.75): image 1 of 32x32 flagged");
    char *json = lh_safety_report_json(&rep[1]);
    ck_assert_ptr_nonnull(json);
    ck_assert_str_eq(json,
                     "{\"flagged\":true,\"action\":\"reject\",\"checkers\":[{\"checker\":"
                     "\"safety_prompt_filter\",\"stage\":\"prompt\",\"flagged\":false,\"action\":"
                     "\"pass\",\"scores\":{\"en\":0.0},\"reason\":\"\"},{\"checker\":"
                     "\"test_flag_all\",\"stage\":\"image\",\"flagged\":true,\"action\":\"reject\","
                     "\"scores\":{\"everything\":0.75},\"reason\":\"image 1 of 32x32 flagged\"}]}");
    free(json);
    run_images(NULL, NULL, NULL);
}
END_TEST

START_TEST(test_failing_checker_blacks_images) {
    const char *sets[] = {"plugins.safety=test_flag_all", "safety_test_flag_all.fail=true", NULL};
    lh_error err = {0};
    lh_settings *s;
    lh_registry *r = registry();
    lh_safety_chain *c = chain(r, sets, &err, &s);
    ck_assert_msg(c != NULL, "%s", err.msg);
    uint8_t img[4 * 4 * 3];
    memset(img, 200, sizeof img);
    lh_safety_report rep;
    ck_assert_int_eq(lh_safety_check_images(c, img, 1, 4, 4, "x", NULL, &rep, &err), LH_ERR_PLUGIN);
    ck_assert_msg(strstr(err.msg, "test_flag_all") && strstr(err.msg, "told to fail"), "%s",
                  err.msg);
    ck_assert_uint_eq(img[0], 0);
    lh_safety_chain_destroy(c);
    lh_settings_destroy(s);
    lh_registry_destroy(r);
}
END_TEST

START_TEST(test_blur_uniform_and_small) {
    uint8_t img[3 * 1 * 3];
    memset(img, 90, sizeof img);
    lh_error err = {0};
    ck_assert_int_eq(lh_safety_blur(img, 3, 1, &err), LH_OK); /* smaller than the radius */
    for (size_t i = 0; i < sizeof img; i++) ck_assert_uint_eq(img[i], 90);
}
END_TEST

int main(void) {
    const char *b = getenv("LH_BUILD_DIR");
    snprintf(g_build, sizeof g_build, "%s", b ? b : "..");
    snprintf(g_tmp, sizeof g_tmp, "/tmp/lh_safety_XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("safety_filter");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_case_folding);
    tcase_add_test(tc, test_full_width);
    tcase_add_test(tc, test_whitespace);
    tcase_add_test(tc, test_cjk_spacing);
    tcase_add_test(tc, test_invalid_prompt_utf8);
    tcase_add_test(tc, test_list_errors);
    tcase_add_test(tc, test_lists_with_actions);
    tcase_add_test(tc, test_chain_order_and_none);
    tcase_add_test(tc, test_section_names);
    tcase_add_test(tc, test_image_actions);
    tcase_add_test(tc, test_failing_checker_blacks_images);
    tcase_add_test(tc, test_blur_uniform_and_small);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
