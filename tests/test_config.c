/* Settings tests: schema defaults, INI loading, every error message (code and
 * wording), --set overrides and precedence, typed getters, docs/config.md and
 * examples/configs/ against the schema, and the `lorahost config` command. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lorahost/lorahost.h"

extern char **environ;

#define ASSERT_ERR(st, err, want, needle)                                                   \
    do {                                                                                    \
        ck_assert_int_eq((st), (want));                                                     \
        ck_assert_int_eq((err).code, (want));                                               \
        ck_assert_msg(strstr((err).msg, (needle)), "message '%s' lacks '%s'", (err).msg,    \
                      (needle));                                                            \
    } while (0)

/* ---- Helpers ---- */

static void source_path(char *out, size_t size, const char *rel) {
    const char *root = getenv("LH_SOURCE_DIR");
    ck_assert_msg(root != NULL, "LH_SOURCE_DIR is not set (run through ctest)");
    snprintf(out, size, "%s/%s", root, rel);
}

/* Write n bytes to a new temporary .ini file; its name goes to path. */
static void write_temp(char path[64], const char *bytes, size_t n) {
    snprintf(path, 64, "cfg_test_XXXXXX.ini");
    int fd = mkstemps(path, 4);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, bytes, n), (ssize_t)n);
    close(fd);
}

static lh_settings *fresh(void) {
    lh_settings *s = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_settings_create(&s, &err), LH_OK);
    return s;
}

/* Load n bytes of INI text from a temporary file (its name to path, removed
 * again) into s. */
static lh_status load_bytes(lh_settings *s, lh_error *err, char path[64], const char *bytes,
                            size_t n) {
    write_temp(path, bytes, n);
    lh_status st = lh_settings_load(s, path, err);
    unlink(path);
    return st;
}

/* Load text into fresh settings and expect it to fail with LH_ERR_CONFIG and
 * a message that starts with "path:line:" and contains needle. */
static void expect_config_error(const char *text, int line, const char *needle) {
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64], head[96];
    lh_status st = load_bytes(s, &err, path, text, strlen(text));
    snprintf(head, sizeof head, "%s:%d: ", path, line);
    ASSERT_ERR(st, err, LH_ERR_CONFIG, needle);
    ck_assert_msg(!strncmp(err.msg, head, strlen(head)), "message '%s' should start with '%s'",
                  err.msg, head);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    lh_settings_destroy(s);
}

static int64_t get_int(const lh_settings *s, const char *name) {
    int64_t v = 0;
    lh_error err = {0};
    ck_assert_msg(lh_settings_get_int(&v, s, name, &err) == LH_OK, "%s", err.msg);
    return v;
}

static double get_double(const lh_settings *s, const char *name) {
    double v = 0;
    lh_error err = {0};
    ck_assert_msg(lh_settings_get_double(&v, s, name, &err) == LH_OK, "%s", err.msg);
    return v;
}

static const char *get_string(const lh_settings *s, const char *name) {
    const char *v = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_settings_get_string(&v, s, name, &err) == LH_OK, "%s", err.msg);
    return v;
}

static const lh_setting *get_view(const lh_settings *s, const char *name) {
    const lh_setting *v = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_settings_get(&v, s, name, &err) == LH_OK, "%s", err.msg);
    return v;
}

/* ---- Defaults and the schema ---- */

START_TEST(test_defaults) {
    lh_settings *s = fresh();
    lh_error err = {0};
    ck_assert_uint_ge(lh_settings_schema_size(), 40);
    for (size_t i = 0; i < lh_settings_schema_size(); i++) {
        const lh_setting *v = lh_settings_at(s, i);
        ck_assert_ptr_eq(v->def, lh_settings_schema(i));
        ck_assert_str_eq(v->text, v->def->def);
        ck_assert_int_eq(v->origin, LH_ORIGIN_DEFAULT);
        ck_assert_ptr_nonnull(v->def->doc);
        ck_assert_ptr_nonnull(v->def->used_by);
    }
    ck_assert_ptr_null(lh_settings_at(s, lh_settings_schema_size()));
    ck_assert_ptr_null(lh_settings_schema(lh_settings_schema_size()));

    ck_assert_int_eq(get_int(s, "generate.steps"), 30);
    ck_assert_double_eq(get_double(s, "generate.cfg_scale"), 7.5);
    ck_assert_int_eq(get_int(s, "generate.width"), 512);
    ck_assert_int_eq(get_int(s, "generate.height"), 512);
    ck_assert_int_eq(get_int(s, "generate.seed"), -1);
    ck_assert_double_eq(get_double(s, "generate.strength"), 0.75);
    ck_assert_str_eq(get_string(s, "generate.output"), "out.png");
    ck_assert_str_eq(get_string(s, "generate.prompt"), "");
    ck_assert_str_eq(get_string(s, "plugins.scheduler"), "ddim");
    ck_assert_str_eq(get_string(s, "server.host"), "127.0.0.1");
    ck_assert_int_eq(get_int(s, "server.port"), 8501);
    ck_assert_int_eq(get_int(s, "server.qps"), 50);
    ck_assert_int_eq(get_int(s, "server.queue"), 64);
    ck_assert_int_eq(get_int(s, "server.body_limit_mb"), 16);
    ck_assert_int_eq(get_int(s, "server.log_keep_days"), 7);
    ck_assert_double_eq_tol(get_double(s, "train.learning_rate"), 1e-4, 1e-12);

    int e = -1, b = -1;
    ck_assert_int_eq(lh_settings_get_enum(&e, s, "log.level", &err), LH_OK);
    ck_assert_int_eq(e, LH_LOG_INFO);
    ck_assert_int_eq(lh_settings_get_enum(&e, s, "adapters.policy", &err), LH_OK);
    ck_assert_str_eq(lh_settings_find("adapters.policy")->choices[e], "warn");
    ck_assert_int_eq(lh_settings_get_bool(&b, s, "train.gradient_checkpointing", &err), LH_OK);
    ck_assert_int_eq(b, 0);

    const char *const *items = NULL;
    size_t n = 99;
    ck_assert_int_eq(lh_settings_get_list(&items, &n, s, "plugins.safety", &err), LH_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(items[0], "none");
    ck_assert_ptr_null(items[1]);
    ck_assert_int_eq(lh_settings_get_list(&items, &n, s, "plugins.dirs", &err), LH_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(items[0]);

    ck_assert_ptr_nonnull(lh_settings_find("train.mixed_precision"));
    ck_assert_ptr_null(lh_settings_find("train"));
    ck_assert_ptr_null(lh_settings_find("train.nope"));
    ck_assert_ptr_null(lh_settings_find("generat.steps"));
    lh_settings_destroy(s);
}
END_TEST

/* ---- Loading ---- */

START_TEST(test_load_full) {
    char path[4096], origin[4200];
    source_path(path, sizeof path, "tests/fixtures/config/full.ini");
    lh_settings *s = fresh();
    lh_error err = {0};
    ck_assert_msg(lh_settings_load(s, path, &err) == LH_OK, "%s", err.msg);

    ck_assert_str_eq(get_string(s, "model.path"), "/models/sd15");
    ck_assert_int_eq(get_int(s, "generate.steps"), 25);
    ck_assert_double_eq(get_double(s, "generate.cfg_scale"), 6.5);
    ck_assert_int_eq(get_int(s, "generate.width"), 768);
    ck_assert_int_eq(get_int(s, "generate.seed"), 1234);
    ck_assert_str_eq(get_string(s, "generate.prompt"), "a lighthouse at dusk, oil painting");
    ck_assert_double_eq_tol(get_double(s, "train.learning_rate"), 2e-4, 1e-12);
    int v = -1;
    ck_assert_int_eq(lh_settings_get_bool(&v, s, "train.gradient_checkpointing", &err), LH_OK);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(lh_settings_get_enum(&v, s, "log.level", &err), LH_OK);
    ck_assert_int_eq(v, LH_LOG_DEBUG);
    ck_assert_int_eq(lh_settings_get_enum(&v, s, "model.dtype", &err), LH_OK);
    ck_assert_str_eq(lh_settings_find("model.dtype")->choices[v], "f16");

    const char *const *items = NULL;
    size_t n = 0;
    ck_assert_int_eq(lh_settings_get_list(&items, &n, s, "plugins.dirs", &err), LH_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(items[0], "/opt/lh/plugins");
    ck_assert_str_eq(items[1], "./plugins");

    /* Origins: file and line for what the file set, default for the rest. */
    const lh_setting *steps = get_view(s, "generate.steps");
    ck_assert_int_eq(steps->origin, LH_ORIGIN_FILE);
    ck_assert_str_eq(steps->file, path);
    ck_assert_int_eq(steps->line, 19);
    ck_assert_int_eq(get_view(s, "server.api_keys")->line, 36);
    snprintf(path + strlen(path), sizeof path - strlen(path), ":19");
    ck_assert_str_eq(lh_setting_origin_text(origin, sizeof origin, steps), path);
    const lh_setting *queue = get_view(s, "server.queue");
    ck_assert_int_eq(queue->origin, LH_ORIGIN_DEFAULT);
    ck_assert_str_eq(lh_setting_origin_text(origin, sizeof origin, queue), "default");
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_utf8_values) {
    char path[4096];
    source_path(path, sizeof path, "tests/fixtures/config/utf8.ini");
    lh_settings *s = fresh();
    lh_error err = {0};
    ck_assert_msg(lh_settings_load(s, path, &err) == LH_OK, "%s", err.msg);
    /* 一只在月光下的猫 🐱🌙, 水彩画 */
    ck_assert_str_eq(get_string(s, "generate.prompt"),
                     "\xE4\xB8\x80\xE5\x8F\xAA\xE5\x9C\xA8\xE6\x9C\x88\xE5\x85\x89\xE4\xB8\x8B"
                     "\xE7\x9A\x84\xE7\x8C\xAB \xF0\x9F\x90\xB1\xF0\x9F\x8C\x99, "
                     "\xE6\xB0\xB4\xE5\xBD\xA9\xE7\x94\xBB");
    ck_assert_str_eq(get_string(s, "generate.negative_prompt"),
                     "\xE6\xA8\xA1\xE7\xB3\x8A \xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB"
                     "\xEF\xB8\x8F"); /* 模糊 😶‍🌫️ (a ZWJ sequence) */

    /* A byte-order mark is skipped; malformed UTF-8 is refused. */
    static const char bom[] = "\xEF\xBB\xBF[generate]\nprompt = \xE7\x8C\xAB\n";
    ck_assert_int_eq(load_bytes(s, &err, path, bom, sizeof bom - 1), LH_OK);
    ck_assert_str_eq(get_string(s, "generate.prompt"), "\xE7\x8C\xAB");
    expect_config_error("[generate]\nprompt = ab\xFF\n", 2,
                        "generate.prompt: not valid UTF-8 at byte 3");
    expect_config_error("[generate]\nprompt = \xE7\x8C\n", 2, "not valid UTF-8");
    expect_config_error("[generate]\nprompt = \xC0\xAF\n", 2, "not valid UTF-8"); /* overlong */
    /* a UTF-16 surrogate */
    expect_config_error("[generate]\nprompt = \xED\xA0\x80\n", 2, "not valid UTF-8");
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_crlf_comments_blanks) {
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    static const char crlf[] = "; windows\r\n[generate]\r\nsteps = 12\r\nprompt = a cat \r\n\r\n";
    ck_assert_int_eq(load_bytes(s, &err, path, crlf, sizeof crlf - 1), LH_OK);
    ck_assert_int_eq(get_int(s, "generate.steps"), 12);
    ck_assert_str_eq(get_string(s, "generate.prompt"), "a cat");
    ck_assert_int_eq(get_view(s, "generate.steps")->line, 3);
    expect_config_error("[generate]\r\n\r\nstpes = 1\r\n", 3, "unknown key 'stpes'");

    /* Comment lines with ; and #, indented too; no comments after values. */
    static const char comments[] = "; one\n# two\n   ; three\n\t# four\n[ generate ]\n"
                                   "# five\n  steps   =   7  \nprompt = a # b ; c\n"
                                   "negative_prompt =\n";
    ck_assert_int_eq(load_bytes(s, &err, path, comments, sizeof comments - 1), LH_OK);
    ck_assert_int_eq(get_int(s, "generate.steps"), 7);
    ck_assert_int_eq(get_view(s, "generate.steps")->line, 7);
    ck_assert_str_eq(get_string(s, "generate.prompt"), "a # b ; c");
    ck_assert_str_eq(get_string(s, "generate.negative_prompt"), "");
    expect_config_error("[generate]\nsteps = 30 ; fast\n", 2,
                        "expected an integer in 1..1000, got '30 ; fast'");
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_empty_file) {
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    ck_assert_int_eq(load_bytes(s, &err, path, "", 0), LH_OK);
    static const char blank[] = "\n\n  \n; only comments\n";
    ck_assert_int_eq(load_bytes(s, &err, path, blank, sizeof blank - 1), LH_OK);
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        ck_assert_int_eq(lh_settings_at(s, i)->origin, LH_ORIGIN_DEFAULT);
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_long_line) {
    /* A 200 000-byte prompt (with multi-byte characters) survives intact. */
    size_t n = 200000;
    char *prompt = malloc(n + 1), *text = malloc(n + 64);
    ck_assert_ptr_nonnull(prompt);
    ck_assert_ptr_nonnull(text);
    for (size_t i = 0; i < n; i += 10) memcpy(prompt + i, "a cat, \xE7\x8C\xAB", 10);
    prompt[n] = '\0';
    int len = snprintf(text, n + 64, "[generate]\nprompt = %s\nsteps = 9\n", prompt);
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    ck_assert_int_eq(load_bytes(s, &err, path, text, (size_t)len), LH_OK);
    ck_assert_str_eq(get_string(s, "generate.prompt"), prompt);
    ck_assert_int_eq(get_int(s, "generate.steps"), 9);

    /* Long bad names and values are clipped in the one-line message. */
    memcpy(prompt, "[generate]\nsteps =  ", 20); /* the value starts at a character */
    ck_assert_int_eq(load_bytes(s, &err, path, prompt, n), LH_ERR_CONFIG);
    ck_assert_msg(strstr(err.msg, ":2: generate.steps: expected an integer in 1..1000, got '"),
                  "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "...'"), "%s", err.msg);
    ck_assert_uint_lt(strlen(err.msg), 200);
    free(prompt);
    free(text);
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_missing_file) {
    lh_settings *s = fresh();
    lh_error err = {0};
    lh_status st = lh_settings_load(s, "no/such/dir/settings.ini", &err);
    ASSERT_ERR(st, err, LH_ERR_IO, "'no/such/dir/settings.ini'");
    ck_assert_msg(strstr(err.msg, "No such file"), "%s", err.msg);
    st = lh_settings_load(s, ".", &err); /* a directory cannot be read as a file */
    ASSERT_ERR(st, err, LH_ERR_IO, "cannot read config file '.'");
    lh_settings_destroy(s);
}
END_TEST

/* ---- Errors in files ---- */

START_TEST(test_unknown_section) {
    expect_config_error("[model]\npath = x\n\n[gnerate]\nsteps = 3\n", 4,
                        "unknown section [gnerate]; did you mean [generate]?");
    expect_config_error("[Server]\n", 1, "unknown section [Server]; did you mean [server]?");
    expect_config_error("[zzzzzz]\n", 1, "unknown section [zzzzzz]");
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    load_bytes(s, &err, path, "[zzzzzz]\n", 9);
    ck_assert_ptr_null(strstr(err.msg, "did you mean"));
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_unknown_key) {
    expect_config_error("[generate]\nstpes = 3\n", 2,
                        "unknown key 'stpes' in [generate]; did you mean 'steps'?");
    expect_config_error("[server]\nhost = x\napi_key = k\n", 3,
                        "unknown key 'api_key' in [server]; did you mean 'api_keys'?");
    expect_config_error("[train]\nlerning_rate = 1\n", 2, "did you mean 'learning_rate'?");
    /* Only keys of the section are suggested, and only close ones. */
    expect_config_error("[model]\nsteps = 3\n", 2, "unknown key 'steps' in [model]");
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    load_bytes(s, &err, path, "[model]\nsteps = 3\n", 18);
    ck_assert_ptr_null(strstr(err.msg, "did you mean"));
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_bad_values) {
    expect_config_error("[generate]\n\nsteps = abc\n", 3,
                        "generate.steps: expected an integer in 1..1000, got 'abc'");
    expect_config_error("[generate]\nsteps = 0\n", 2, "expected an integer in 1..1000, got '0'");
    expect_config_error("[generate]\nsteps = 1001\n", 2, "got '1001'");
    expect_config_error("[generate]\nsteps = 3.5\n", 2, "got '3.5'");
    expect_config_error("[generate]\nsteps =\n", 2, "got ''");
    expect_config_error("[generate]\nseed = 99999999999999999999\n", 2,
                        "generate.seed: expected an integer >= -1");
    expect_config_error("[generate]\nseed = -2\n", 2, "expected an integer >= -1, got '-2'");
    expect_config_error("[generate]\nwidth = 500\n", 2,
                        "generate.width: expected a multiple of 8 in 64..4096, got '500'");
    expect_config_error("[generate]\nheight = 4104\n", 2, "generate.height: expected a multiple");
    expect_config_error("[generate]\ncfg_scale = nan\n", 2,
                        "generate.cfg_scale: expected a number in 0..100, got 'nan'");
    expect_config_error("[generate]\ncfg_scale = inf\n", 2, "got 'inf'");
    expect_config_error("[generate]\nstrength = 1.5\n", 2,
                        "generate.strength: expected a number in 0..1, got '1.5'");
    expect_config_error("[generate]\nstrength = 0.5x\n", 2, "got '0.5x'");
    expect_config_error("[server]\nport = 65536\n", 2,
                        "server.port: expected an integer in 0..65535");
    expect_config_error("[model]\ndtype = fp16\n", 2,
                        "model.dtype: expected one of auto, f32, f16, bf16, got 'fp16'");
    expect_config_error("[backend]\ndevice = CUDA\n", 2, "expected one of cpu, cuda, got 'CUDA'");
    expect_config_error("[train]\ngradient_checkpointing = maybe\n", 2,
                        "train.gradient_checkpointing: expected true, false, yes, no, on, off, "
                        "1 or 0, got 'maybe'");
    expect_config_error("[log]\nlevel = verbose\n", 2,
                        "log.level: expected one of error, warn, info, debug");
}
END_TEST

START_TEST(test_syntax_errors) {
    expect_config_error("steps = 3\n", 1,
                        "key 'steps' comes before any [section]; did you mean to put it under "
                        "[generate]?");
    expect_config_error("; c\nfoo = 3\n[generate]\n", 2, "key 'foo' comes before any [section]");
    expect_config_error("[generate\nsteps = 3\n", 1,
                        "section header '[generate' has no closing ']'");
    expect_config_error("[generate] ; note\n", 1, "has no closing ']'");
    expect_config_error("[]\n", 1, "empty section name []");
    expect_config_error("[generate]\nsteps 30\n", 2,
                        "expected 'key = value', '[section]' or a comment, got 'steps 30'");
    expect_config_error("[generate]\n= 30\n", 2, "missing key before '='");
    expect_config_error("[generate]\nsteps: 30\n", 2, "got 'steps: 30'");

    static const char nul[] = "[generate]\nprompt = a\0b\n";
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    ASSERT_ERR(load_bytes(s, &err, path, nul, sizeof nul - 1), err, LH_ERR_CONFIG,
               ":2: line contains a NUL byte");
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_duplicates) {
    expect_config_error("[generate]\nsteps = 3\n\nsteps = 4\n", 4,
                        "duplicate key 'steps' in [generate] (first set on line 2)");
    /* Also across two headers of the same section. */
    expect_config_error("[generate]\nseed = 1\n[model]\npath = x\n[generate]\nseed = 2\n", 6,
                        "duplicate key 'seed' in [generate] (first set on line 2)");
    /* The same key in different sections is fine, and a second file may
     * change what the first set. */
    lh_settings *s = fresh();
    lh_error err = {0};
    char path[64];
    static const char a[] = "[generate]\nsteps = 3\nbatch_size = 2\n[train]\nsteps = 5\n";
    ck_assert_int_eq(load_bytes(s, &err, path, a, sizeof a - 1), LH_OK);
    static const char b[] = "\n[generate]\nsteps = 8\n";
    ck_assert_int_eq(load_bytes(s, &err, path, b, sizeof b - 1), LH_OK);
    ck_assert_int_eq(get_int(s, "generate.steps"), 8);
    ck_assert_int_eq(get_view(s, "generate.steps")->line, 3);
    ck_assert_int_eq(get_int(s, "generate.batch_size"), 2);
    ck_assert_int_eq(get_int(s, "train.steps"), 5);
    lh_settings_destroy(s);
}
END_TEST

/* ---- Overrides ---- */

START_TEST(test_set_override) {
    lh_settings *s = fresh();
    lh_error err = {0};
    char origin[32];
    ck_assert_int_eq(lh_settings_set_override(s, "generate.steps=20", &err), LH_OK);
    ck_assert_int_eq(get_int(s, "generate.steps"), 20);
    const lh_setting *v = get_view(s, "generate.steps");
    ck_assert_int_eq(v->origin, LH_ORIGIN_SET);
    ck_assert_str_eq(lh_setting_origin_text(origin, sizeof origin, v), "--set");
    ck_assert_int_eq(lh_settings_set_override(s, "generate.prompt=  a=b, c  ", &err), LH_OK);
    ck_assert_str_eq(get_string(s, "generate.prompt"), "a=b, c");
    ck_assert_int_eq(lh_settings_set_override(s, "generate.output=", &err), LH_OK);
    ck_assert_str_eq(get_string(s, "generate.output"), "");
    ck_assert_int_eq(lh_settings_set_override(s, "server.api_keys=k1,k2", &err), LH_OK);

    lh_status st = lh_settings_set_override(s, "generate.stpes=3", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG,
               "--set generate.stpes=3: unknown key 'stpes' in [generate]; did you mean 'steps'?");
    st = lh_settings_set_override(s, "gnerate.steps=3", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG,
               "--set gnerate.steps=3: unknown section [gnerate]; did you mean [generate]?");
    st = lh_settings_set_override(s, "generate.steps", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG, "--set generate.steps: expected section.key=value");
    st = lh_settings_set_override(s, "steps=3", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG,
               "--set steps=3: expected section.key=value; did you mean 'generate.steps'?");
    st = lh_settings_set_override(s, "nothing=3", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG, "--set nothing=3: expected section.key=value");
    st = lh_settings_set_override(s, "generate.steps=abc", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG,
               "--set generate.steps=abc: expected an integer in 1..1000, got 'abc'");
    st = lh_settings_set_override(s, "generate.width=100", &err);
    ASSERT_ERR(st, err, LH_ERR_CONFIG, "expected a multiple of 8 in 64..4096, got '100'");
    /* A failed override leaves the value as it was. */
    ck_assert_int_eq(get_int(s, "generate.steps"), 20);
    ck_assert_int_eq(get_int(s, "generate.width"), 512);
    lh_settings_destroy(s);
}
END_TEST

START_TEST(test_apply_args) {
    char path[64];
    static const char ini[] = "[generate]\nsteps = 10\ncfg_scale = 5\n";
    write_temp(path, ini, sizeof ini - 1);
    char config_eq[80];
    snprintf(config_eq, sizeof config_eq, "--config=%s", path);
    /* --set before --config still wins; the last --set of a key wins. */
    char *argv[] = {"cmd",        "--set",   "generate.steps=40", "pos1",  "--config", path,
                    "--set=generate.seed=7", "--set", "generate.seed=8", "--json", "--",
                    "--set",      "x",       NULL};
    int argc = 13;
    lh_settings *s = fresh();
    lh_error err = {0};
    ck_assert_msg(lh_settings_apply_args(s, &argc, argv, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(argc, 6);
    const char *rest[] = {"cmd", "pos1", "--json", "--", "--set", "x"};
    for (int i = 0; i < argc; i++) ck_assert_str_eq(argv[i], rest[i]);
    ck_assert_ptr_null(argv[argc]);
    ck_assert_int_eq(get_int(s, "generate.steps"), 40);
    ck_assert_int_eq(get_view(s, "generate.steps")->origin, LH_ORIGIN_SET);
    ck_assert_double_eq(get_double(s, "generate.cfg_scale"), 5);
    ck_assert_int_eq(get_view(s, "generate.cfg_scale")->origin, LH_ORIGIN_FILE);
    ck_assert_int_eq(get_view(s, "generate.cfg_scale")->line, 3);
    ck_assert_int_eq(get_int(s, "generate.seed"), 8);
    lh_settings_destroy(s);

    /* --config=FILE form, no overrides. */
    char *argv2[] = {"cmd", config_eq, NULL};
    argc = 2;
    s = fresh();
    ck_assert_int_eq(lh_settings_apply_args(s, &argc, argv2, &err), LH_OK);
    ck_assert_int_eq(argc, 1);
    ck_assert_int_eq(get_int(s, "generate.steps"), 10);
    lh_settings_destroy(s);

    /* Usage errors are LH_ERR_INVALID; argv is left alone. */
    char *bad1[] = {"cmd", "--config", NULL};
    char *bad2[] = {"cmd", "--config", path, config_eq, NULL};
    char *bad3[] = {"cmd", "--set=", NULL};
    char *bad4[] = {"cmd", "--set", NULL};
    char *bad5[] = {"cmd", "--set", "generate.stpes=1", NULL};
    char *bad6[] = {"cmd", "--config=missing.ini", NULL};
    struct {
        char **argv;
        int argc;
        lh_status code;
        const char *needle;
    } cases[] = {
        {bad1, 2, LH_ERR_INVALID, "--config needs a file name"},
        {bad2, 4, LH_ERR_INVALID, "--config given twice"},
        {bad3, 2, LH_ERR_INVALID, "--set= needs section.key=value"},
        {bad4, 2, LH_ERR_INVALID, "--set needs section.key=value"},
        {bad5, 3, LH_ERR_CONFIG, "--set generate.stpes=1: unknown key 'stpes'"},
        {bad6, 2, LH_ERR_IO, "'missing.ini'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cases[i].argc;
        s = fresh();
        lh_status st = lh_settings_apply_args(s, &n, cases[i].argv, &err);
        ASSERT_ERR(st, err, cases[i].code, cases[i].needle);
        ck_assert_int_eq(n, cases[i].argc);
        lh_settings_destroy(s);
    }
    unlink(path);
}
END_TEST

/* ---- Typed getters ---- */

START_TEST(test_getters) {
    lh_settings *s = fresh();
    lh_error err = {0};
    int64_t i = 0;
    double d = 0;
    int b = 0;
    const char *str = NULL;

    ASSERT_ERR(lh_settings_get_int(&i, s, "generate.prompt", &err), err, LH_ERR_INVALID,
               "generate.prompt is of type string, not integer");
    ASSERT_ERR(lh_settings_get_double(&d, s, "generate.steps", &err), err, LH_ERR_INVALID,
               "generate.steps is of type integer, not number");
    ASSERT_ERR(lh_settings_get_int(&i, s, "generate.stpes", &err), err, LH_ERR_CONFIG,
               "unknown setting 'generate.stpes'");
    ASSERT_ERR(lh_settings_get_bool(&b, s, "nosection", &err), err, LH_ERR_CONFIG,
               "unknown setting 'nosection'");
    /* get_string reads any type as written. */
    ck_assert_int_eq(lh_settings_get_string(&str, s, "generate.cfg_scale", &err), LH_OK);
    ck_assert_str_eq(str, "7.5");

    static const char *const words[][2] = {{"true", "1"}, {"false", "0"}, {"YES", "1"},
                                           {"no", "0"},   {"On", "1"},    {"off", "0"},
                                           {"1", "1"},    {"0", "0"}};
    char set[64];
    for (size_t k = 0; k < sizeof words / sizeof words[0]; k++) {
        snprintf(set, sizeof set, "train.gradient_checkpointing=%s", words[k][0]);
        ck_assert_int_eq(lh_settings_set_override(s, set, &err), LH_OK);
        ck_assert_int_eq(lh_settings_get_bool(&b, s, "train.gradient_checkpointing", &err), LH_OK);
        ck_assert_int_eq(b, words[k][1][0] - '0');
    }

    /* Range ends are accepted. */
    static const char *const ok[] = {
        "generate.steps=1",          "generate.steps=1000",     "generate.width=64",
        "generate.width=4096",       "generate.strength=0",     "generate.strength=1",
        "server.port=0",             "server.port=65535",       "generate.seed=-1",
        "generate.seed=9223372036854775807", "train.learning_rate=3e-5", "generate.steps=+7"};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++)
        ck_assert_msg(lh_settings_set_override(s, ok[k], &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(get_int(s, "generate.seed"), INT64_MAX);
    ck_assert_int_eq(get_int(s, "generate.steps"), 7);
    ck_assert_double_eq_tol(get_double(s, "train.learning_rate"), 3e-5, 1e-15);

    int e = -1;
    ck_assert_int_eq(lh_settings_set_override(s, "model.dtype=bf16", &err), LH_OK);
    ck_assert_int_eq(lh_settings_get_enum(&e, s, "model.dtype", &err), LH_OK);
    ck_assert_int_eq(e, 3);

    const char *const *items = NULL;
    size_t n = 0;
    ck_assert_int_eq(lh_settings_set_override(s, "plugins.safety= a, b ,, c ,", &err), LH_OK);
    ck_assert_int_eq(lh_settings_get_list(&items, &n, s, "plugins.safety", &err), LH_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(items[0], "a");
    ck_assert_str_eq(items[1], "b");
    ck_assert_str_eq(items[2], "c");
    ck_assert_ptr_null(items[3]);
    ck_assert_int_eq(lh_settings_set_override(s, "plugins.safety=", &err), LH_OK);
    ck_assert_int_eq(lh_settings_get_list(&items, &n, s, "plugins.safety", &err), LH_OK);
    ck_assert_uint_eq(n, 0);
    lh_settings_destroy(s);
}
END_TEST

/* ---- docs/config.md and examples/configs against the schema ---- */

/* Split a Markdown table row "| a | b |" into trimmed cells; returns the count. */
static int table_cells(char *line, char **cells, int max) {
    int n = 0;
    if (line[0] != '|') return 0;
    for (char *p = line + 1, *bar; n < max && (bar = strchr(p, '|')); p = bar + 1) {
        *bar = '\0';
        while (*p == ' ') p++;
        char *end = p + strlen(p);
        while (end > p && end[-1] == ' ') *--end = '\0';
        cells[n++] = p;
    }
    return n;
}

START_TEST(test_docs_match_schema) {
    static const char *const TYPE_WORDS[] = {"string", "integer", "number",
                                             "boolean", "enum", "list"};
    char path[4096], line[2048], section[64] = "", want[256];
    source_path(path, sizeof path, "docs/config.md");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t n_keys = lh_settings_schema_size(), rows = 0;
    int *seen = calloc(n_keys, sizeof *seen);
    ck_assert_ptr_nonnull(seen);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (sscanf(line, "### [%63[a-z]]", section) == 1) continue;
        char *cells[8];
        if (!section[0] || table_cells(line, cells, 8) != 5 || cells[0][0] != '`') continue;
        /* A row: | `key` | type | `default` or (empty) | allowed | meaning | */
        char name[160];
        snprintf(name, sizeof name, "%s.%.*s", section, (int)strlen(cells[0]) - 2, cells[0] + 1);
        const lh_setting_def *d = lh_settings_find(name);
        ck_assert_msg(d != NULL, "docs/config.md documents %s, which the schema lacks", name);
        size_t idx = (size_t)(d - lh_settings_schema(0));
        ck_assert_msg(!seen[idx], "docs/config.md documents %s twice", name);
        seen[idx] = 1;
        rows++;
        ck_assert_msg(!strcmp(cells[1], TYPE_WORDS[d->type]), "%s: docs say type '%s', schema %s",
                      name, cells[1], TYPE_WORDS[d->type]);
        if (d->def[0])
            snprintf(want, sizeof want, "`%s`", d->def);
        else
            snprintf(want, sizeof want, "(empty)");
        ck_assert_msg(!strcmp(cells[2], want), "%s: docs say default %s, schema %s", name,
                      cells[2], want);
        if (d->type == LH_SETTING_INT && d->max < INT64_MAX) {
            snprintf(want, sizeof want, "%lld..%lld", (long long)d->min, (long long)d->max);
            ck_assert_msg(strstr(cells[3], want), "%s: docs do not give the range %s", name, want);
        }
        for (size_t k = 0; d->type == LH_SETTING_ENUM && d->choices[k]; k++) {
            snprintf(want, sizeof want, "`%s`", d->choices[k]);
            ck_assert_msg(strstr(cells[3], want), "%s: docs do not list %s", name, want);
        }
    }
    fclose(f);
    for (size_t i = 0; i < n_keys; i++)
        ck_assert_msg(seen[i], "docs/config.md does not document %s.%s",
                      lh_settings_schema(i)->section, lh_settings_schema(i)->key);
    ck_assert_uint_eq(rows, n_keys);
    free(seen);
}
END_TEST

START_TEST(test_examples_load) {
    char dir[4096], path[4400];
    source_path(dir, sizeof dir, "examples/configs");
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    int found = 0, named = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        size_t len = strlen(ent->d_name);
        if (len < 5 || strcmp(ent->d_name + len - 4, ".ini")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        lh_settings *s = fresh();
        lh_error err = {0};
        ck_assert_msg(lh_settings_load(s, path, &err) == LH_OK, "%s", err.msg);
        lh_settings_destroy(s);
        found++;
        named += !strcmp(ent->d_name, "generate.ini") || !strcmp(ent->d_name, "train.ini") ||
                 !strcmp(ent->d_name, "server.ini");
    }
    closedir(d);
    ck_assert_int_eq(named, 3);
    ck_assert_int_ge(found, 3);
}
END_TEST

/* ---- `lorahost config` ---- */

/* Run `lorahost config args...`; stdout and stderr go to out and errbuf.
 * Returns the exit status. */
static int run_cli(const char *const *args, char *out, size_t out_size, char *errbuf,
                   size_t err_size) {
    const char *build = getenv("LH_BUILD_DIR");
    ck_assert_msg(build != NULL, "LH_BUILD_DIR is not set (run through ctest)");
    char exe[4096], out_path[64], err_path[64];
    snprintf(exe, sizeof exe, "%s/bin/lorahost", build);
    ck_assert_msg(access(exe, X_OK) == 0, "%s is not built", exe);
    char *argv[16] = {exe, "config"};
    int argc = 2;
    for (; args[argc - 2]; argc++) argv[argc] = (char *)args[argc - 2];
    argv[argc] = NULL;
    write_temp(out_path, "", 0);
    write_temp(err_path, "", 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_TRUNC, 0);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_TRUNC, 0);
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, exe, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    const char *paths[2] = {out_path, err_path};
    char *bufs[2] = {out, errbuf};
    size_t sizes[2] = {out_size, err_size};
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(paths[k], "r");
        ck_assert_ptr_nonnull(f);
        size_t n = fread(bufs[k], 1, sizes[k] - 1, f);
        bufs[k][n] = '\0';
        fclose(f);
        unlink(paths[k]);
    }
    return WEXITSTATUS(status);
}

START_TEST(test_cli) {
    static char out[1 << 16], errbuf[4096];
    char example[4096], typo[4096], want[4200];
    source_path(example, sizeof example, "examples/configs/generate.ini");
    source_path(typo, sizeof typo, "tests/fixtures/config/typo.ini");

    const char *ok[] = {"--set", "generate.steps=20", "--config", example,
                        "--set=server.api_keys=secret1", NULL};
    ck_assert_int_eq(run_cli(ok, out, sizeof out, errbuf, sizeof errbuf), 0);
    ck_assert_msg(strstr(out, "[generate]\n"), "%s", out);
    ck_assert_msg(strstr(out, "\nsteps = 20  (--set)\n"), "%s", out);
    ck_assert_msg(strstr(out, "\nqueue = 64  (default)\n"), "%s", out);
    snprintf(want, sizeof want, "\nseed = 42  (%s:", example);
    ck_assert_msg(strstr(out, want), "%s", out);
    ck_assert_msg(strstr(out, "\napi_keys = ***  (--set)\n"), "%s", out);
    ck_assert_ptr_null(strstr(out, "secret1"));
    ck_assert_str_eq(errbuf, "");

    const char *js[] = {"--json", "--config", example, "--set", "server.api_keys=secret1", NULL};
    ck_assert_int_eq(run_cli(js, out, sizeof out, errbuf, sizeof errbuf), 0);
    json_error_t jerr;
    json_t *root = json_loads(out, 0, &jerr);
    ck_assert_msg(root != NULL, "bad JSON: %s", jerr.text);
    json_t *seed = json_object_get(json_object_get(root, "generate"), "seed");
    ck_assert_int_eq(json_integer_value(json_object_get(seed, "value")), 42);
    ck_assert_str_eq(json_string_value(json_object_get(seed, "origin")), "file");
    ck_assert_str_eq(json_string_value(json_object_get(seed, "file")), example);
    ck_assert_int_gt(json_integer_value(json_object_get(seed, "line")), 0);
    json_t *cfg = json_object_get(json_object_get(root, "generate"), "cfg_scale");
    ck_assert_double_eq(json_real_value(json_object_get(cfg, "value")), 7.5);
    json_t *keys = json_object_get(json_object_get(root, "server"), "api_keys");
    ck_assert(json_is_null(json_object_get(keys, "value")));
    ck_assert(json_is_true(json_object_get(keys, "hidden")));
    json_t *dirs = json_object_get(json_object_get(json_object_get(root, "adapters"), "dirs"),
                                   "value");
    ck_assert_uint_eq(json_array_size(dirs), 1);
    ck_assert(json_is_false(json_object_get(
        json_object_get(json_object_get(root, "train"), "gradient_checkpointing"), "value")));
    ck_assert_uint_eq(json_object_size(root), 8);
    json_decref(root);

    /* An invalid config: exit 1, one line naming file:line and the fix. */
    const char *bad[] = {"--config", typo, NULL};
    ck_assert_int_eq(run_cli(bad, out, sizeof out, errbuf, sizeof errbuf), 1);
    snprintf(want, sizeof want,
             "%s:3: unknown key 'stpes' in [generate]; did you mean 'steps'?\n", typo);
    ck_assert_str_eq(errbuf, want);
    ck_assert_str_eq(out, "");
    const char *bad_set[] = {"--set", "generate.width=100", NULL};
    ck_assert_int_eq(run_cli(bad_set, out, sizeof out, errbuf, sizeof errbuf), 1);
    ck_assert_msg(strstr(errbuf, "--set generate.width=100: expected a multiple of 8"), "%s",
                  errbuf);
    const char *missing[] = {"--config", "no-such.ini", NULL};
    ck_assert_int_eq(run_cli(missing, out, sizeof out, errbuf, sizeof errbuf), 1);
    ck_assert_msg(strstr(errbuf, "'no-such.ini'"), "%s", errbuf);

    /* Usage errors: exit 2. */
    const char *u1[] = {"--bogus", NULL};
    ck_assert_int_eq(run_cli(u1, out, sizeof out, errbuf, sizeof errbuf), 2);
    ck_assert_msg(strstr(errbuf, "unexpected argument '--bogus'"), "%s", errbuf);
    const char *u2[] = {"--config", NULL};
    ck_assert_int_eq(run_cli(u2, out, sizeof out, errbuf, sizeof errbuf), 2);
    ck_assert_msg(strstr(errbuf, "--config needs a file name"), "%s", errbuf);

    const char *help[] = {"--config", typo, "--help", NULL};
    ck_assert_int_eq(run_cli(help, out, sizeof out, errbuf, sizeof errbuf), 0);
    ck_assert_msg(strstr(out, "usage: lorahost config"), "%s", out);
}
END_TEST

/* [scheduler] is open: any well-formed key is kept for the plugin. */
START_TEST(test_open_scheduler_section) {
    char path[] = "/tmp/lh_cfg_open_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "[scheduler]\nuse_karras_sigmas = true\nbeta_schedule = scaled_linear\n";
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    lh_settings *s = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_settings_create(&s, &err), LH_OK);
    ck_assert_int_eq(lh_settings_load(s, path, &err), LH_OK);
    ck_assert_int_eq(lh_settings_set_override(s, "scheduler.eta=0.5", &err), LH_OK);
    ck_assert_int_eq(lh_settings_set_override(s, "scheduler.beta_schedule=linear", &err), LH_OK);
    ck_assert_uint_eq(lh_settings_open_count(s), 3);
    const char *section, *key;
    const lh_setting *v = lh_settings_open_at(s, 0, &section, &key);
    ck_assert_str_eq(section, "scheduler");
    ck_assert_str_eq(key, "use_karras_sigmas");
    ck_assert_str_eq(v->text, "true");
    ck_assert_int_eq(v->origin, LH_ORIGIN_FILE);
    ck_assert_int_eq(v->line, 2);
    v = lh_settings_open_at(s, 1, &section, &key);
    ck_assert_str_eq(key, "beta_schedule");
    ck_assert_str_eq(v->text, "linear");
    ck_assert_int_eq(v->origin, LH_ORIGIN_SET);
    v = lh_settings_open_at(s, 2, &section, &key);
    ck_assert_str_eq(key, "eta");
    ck_assert_ptr_null(lh_settings_open_at(s, 3, &section, &key));
    ck_assert_int_eq(lh_settings_set_override(s, "scheduler.Eta=1", &err), LH_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "key 'Eta' in [scheduler] must be lower-case"));
    ck_assert_int_eq(lh_settings_set_override(s, "schedular.eta=1", &err), LH_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "did you mean [scheduler]?"));
    lh_settings_destroy(s);

    fd = open(path, O_WRONLY | O_TRUNC);
    const char *dup = "[scheduler]\neta = 1\neta = 2\n";
    ck_assert_int_eq(write(fd, dup, strlen(dup)), (ssize_t)strlen(dup));
    close(fd);
    ck_assert_int_eq(lh_settings_create(&s, &err), LH_OK);
    ck_assert_int_eq(lh_settings_load(s, path, &err), LH_ERR_CONFIG);
    ck_assert_ptr_nonnull(
        strstr(err.msg, ":3: duplicate key 'eta' in [scheduler] (first set on line 2)"));
    lh_settings_destroy(s);
    unlink(path);
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("settings");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_open_scheduler_section);
    tcase_add_test(tc, test_load_full);
    tcase_add_test(tc, test_utf8_values);
    tcase_add_test(tc, test_crlf_comments_blanks);
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_long_line);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_unknown_section);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_syntax_errors);
    tcase_add_test(tc, test_duplicates);
    tcase_add_test(tc, test_set_override);
    tcase_add_test(tc, test_apply_args);
    tcase_add_test(tc, test_getters);
    tcase_add_test(tc, test_docs_match_schema);
    tcase_add_test(tc, test_examples_load);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    TCase *cli = tcase_create("cli");
    tcase_add_test(cli, test_cli);
    tcase_set_timeout(cli, 60);
    suite_add_tcase(s, cli);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
