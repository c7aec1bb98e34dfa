/* checkpoint suite: the trainer's checkpoint store (train/checkpoint.h):
 * round trip, keep-last-K, fallback past corrupt or missing files, a missing
 * or bad manifest, stale temp files. Kill -9 mid-write: checkpoint_kill.sh. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "log.h"

static char g_tmp[4096]; /* scratch directory under the build tree */
static char g_dir[4096]; /* this test's store */

/* ---- Helpers ---- */

static const char *build_dir(void) {
    return getenv("LH_BUILD_DIR") ? getenv("LH_BUILD_DIR") : "..";
}

static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int g_case;
static void new_store(void) {
    snprintf(g_dir, sizeof g_dir, "%s/store-%d", g_tmp, ++g_case);
    remove_tree(g_dir);
}

static const char *in_store(const char *name) {
    static char p[8192];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    return p;
}

static const char *ckpt_name(int64_t step) {
    static char p[64];
    snprintf(p, sizeof p, "checkpoint-%08lld.safetensors", (long long)step);
    return p;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* What the "trainer" holds at `step`: weights, Adam moments, an RNG state. */
typedef struct state {
    float w[2][3], m[7];
    uint8_t rng[5];
    int64_t seen;
} state;

static state make_state(int64_t step) {
    state s;
    for (int i = 0; i < 6; i++) s.w[i / 3][i % 3] = (float)step * 0.5f + (float)i / 7.0f;
    for (int i = 0; i < 7; i++) s.m[i] = -(float)step / (float)(i + 3);
    for (int i = 0; i < 5; i++) s.rng[i] = (uint8_t)(step * 31 + i);
    s.seen = step * 1000 + 7;
    return s;
}

static void save(int64_t step, int keep) {
    state s = make_state(step);
    lh_ckpt_tensor t[] = {
        {"lora.down", LH_DTYPE_F32, 2, {2, 3}, s.w},
        {"adam.m", LH_DTYPE_F32, 1, {7}, s.m},
        {"rng.state", LH_DTYPE_U8, 1, {5}, s.rng},
        {"data.seen", LH_DTYPE_I64, 0, {0}, &s.seen},
    };
    lh_ckpt_meta meta[] = {{"config_hash", "abc123"}, {"model", "sd15"}};
    lh_error err = {0};
    lh_status rc = lh_ckpt_save(g_dir, step, keep, t, 4, meta, 2, &err);
    ck_assert_msg(rc == LH_OK, "save step %lld: %s", (long long)step, err.msg);
}

/* Open the latest, check it is `step` with exactly the state saved for it. */
static lh_ckpt *open_expect(int64_t step) {
    lh_ckpt *c = NULL;
    lh_error err = {0};
    lh_status rc = lh_ckpt_open_latest(&c, g_dir, &err);
    ck_assert_msg(rc == LH_OK, "open: %s", err.msg);
    ck_assert_int_eq(lh_ckpt_step(c), step);
    state want = make_state(step), got;
    memset(&got, 0xee, sizeof got);
    int64_t s23[] = {2, 3}, s7[] = {7}, s5[] = {5};
    ck_assert_int_eq(lh_ckpt_read(got.w, c, "lora.down", LH_DTYPE_F32, 2, s23, &err), LH_OK);
    ck_assert_int_eq(lh_ckpt_read(got.m, c, "adam.m", LH_DTYPE_F32, 1, s7, &err), LH_OK);
    ck_assert_int_eq(lh_ckpt_read(got.rng, c, "rng.state", LH_DTYPE_U8, 1, s5, &err), LH_OK);
    ck_assert_int_eq(lh_ckpt_read(&got.seen, c, "data.seen", LH_DTYPE_I64, 0, NULL, &err), LH_OK);
    ck_assert_mem_eq(got.w, want.w, sizeof want.w); /* bit for bit */
    ck_assert_mem_eq(got.m, want.m, sizeof want.m);
    ck_assert_mem_eq(got.rng, want.rng, sizeof want.rng);
    ck_assert_int_eq(got.seen, want.seen);
    return c;
}

/* The steps the manifest lists, in order, as "1,2,3". */
static const char *manifest_steps(void) {
    static char buf[1024];
    buf[0] = '\0';
    json_t *root = json_load_file(in_store("checkpoints.json"), 0, NULL);
    ck_assert_ptr_nonnull(root);
    json_t *list = json_object_get(root, "checkpoints");
    for (size_t i = 0; i < json_array_size(list); i++) {
        size_t k = strlen(buf);
        snprintf(buf + k, sizeof buf - k, "%s%lld", i ? "," : "",
                 (long long)json_integer_value(json_object_get(json_array_get(list, i), "step")));
    }
    json_decref(root);
    return buf;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void flip_byte(const char *path, long from_end) {
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, -from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -from_end, SEEK_END);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static long file_size(const char *path) {
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (long)st.st_size;
}

/* ---- CRC-32 ---- */

START_TEST(test_crc32) {
    /* zlib.crc32(b"123456789") == 0xcbf43926; zlib.crc32(b"") == 0 */
    ck_assert_uint_eq(lh_crc32(0, "123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(lh_crc32(0, "", 0), 0);
    ck_assert_uint_eq(lh_crc32(lh_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
    /* zlib.crc32(b"The quick brown fox jumps over the lazy dog") */
    const char *fox = "The quick brown fox jumps over the lazy dog";
    ck_assert_uint_eq(lh_crc32(0, fox, strlen(fox)), 0x414FA339u);
}
END_TEST

/* ---- Round trip and the manifest ---- */

START_TEST(test_round_trip) {
    new_store();
    save(10, 3);
    lh_ckpt *c = open_expect(10);
    ck_assert_str_eq(lh_ckpt_warnings(c), "");
    ck_assert_str_eq(lh_ckpt_path(c), in_store(ckpt_name(10)));
    ck_assert_str_eq(lh_ckpt_meta_find(c, "step"), "10");
    ck_assert_str_eq(lh_ckpt_meta_find(c, "config_hash"), "abc123");
    ck_assert_str_eq(lh_ckpt_meta_find(c, "model"), "sd15");
    ck_assert_ptr_null(lh_ckpt_meta_find(c, "nope"));
    ck_assert_uint_eq(lh_st_count(lh_ckpt_file(c)), 4);

    /* shape, dtype and name checks name the file and the tensor */
    float buf[16];
    lh_error err = {0};
    int64_t s32[] = {3, 2}, s6[] = {6};
    ck_assert_int_eq(lh_ckpt_read(buf, c, "lora.down", LH_DTYPE_F32, 2, s32, &err), LH_ERR_SHAPE);
    char want[8192];
    snprintf(want, sizeof want, "%s: tensor 'lora.down' is F32 [2, 3], expected F32 [3, 2]",
             in_store(ckpt_name(10)));
    ck_assert_str_eq(err.msg, want);
    ck_assert_int_eq(lh_ckpt_read(buf, c, "lora.down", LH_DTYPE_F32, 1, s6, &err), LH_ERR_SHAPE);
    int64_t s7[] = {7};
    ck_assert_int_eq(lh_ckpt_read(buf, c, "adam.m", LH_DTYPE_F16, 1, s7, &err), LH_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(err.msg, "'adam.m' is F32 [7], expected F16 [7]"));
    ck_assert_int_eq(lh_ckpt_read(buf, c, "adam.v", LH_DTYPE_F32, 1, s7, &err), LH_ERR_NOT_FOUND);
    snprintf(want, sizeof want, "%s: no tensor 'adam.v'", in_store(ckpt_name(10)));
    ck_assert_str_eq(err.msg, want);
    lh_ckpt_close(c);

    /* the manifest entry: name, step, the file's size and zlib CRC-32 */
    json_t *root = json_load_file(in_store("checkpoints.json"), 0, NULL);
    ck_assert_ptr_nonnull(root);
    ck_assert_str_eq(json_string_value(json_object_get(root, "format")), "lorahost-checkpoints");
    ck_assert_int_eq(json_integer_value(json_object_get(root, "version")), 1);
    json_t *e = json_array_get(json_object_get(root, "checkpoints"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(e, "file")), ckpt_name(10));
    ck_assert_int_eq(json_integer_value(json_object_get(e, "step")), 10);
    ck_assert_int_eq(json_integer_value(json_object_get(e, "size")),
                     file_size(in_store(ckpt_name(10))));
    FILE *f = fopen(in_store(ckpt_name(10)), "rb");
    static unsigned char bytes[1 << 16];
    size_t n = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", (unsigned)lh_crc32(0, bytes, n));
    ck_assert_str_eq(json_string_value(json_object_get(e, "crc32")), crc);
    json_decref(root);
}
END_TEST

START_TEST(test_empty_and_missing_store) {
    new_store();
    lh_ckpt *c = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_ckpt_open_latest(&c, g_dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(mkdir(g_dir, 0777), 0);
    ck_assert_int_eq(lh_ckpt_open_latest(&c, g_dir, &err), LH_ERR_NOT_FOUND);
    char want[8192];
    snprintf(want, sizeof want, "%s: no usable checkpoint", g_dir);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

START_TEST(test_bad_arguments) {
    new_store();
    float x = 1;
    lh_ckpt_tensor t = {"x", LH_DTYPE_F32, 0, {0}, &x};
    lh_ckpt_meta reserved = {"step", "9"}, dup[] = {{"a", "1"}, {"a", "2"}};
    lh_error err = {0};
    ck_assert_int_eq(lh_ckpt_save(g_dir, 1, 0, &t, 1, NULL, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_ckpt_save(g_dir, -1, 1, &t, 1, NULL, 0, &err), LH_ERR_INVALID);
    ck_assert_int_eq(lh_ckpt_save(g_dir, 1, 1, &t, 1, &reserved, 1, &err), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "'step' is reserved"));
    ck_assert_int_eq(lh_ckpt_save(g_dir, 1, 1, &t, 1, dup, 2, &err), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "checkpoint-00000001.safetensors: "));
    ck_assert_ptr_nonnull(strstr(err.msg, "duplicate metadata key 'a'"));
    lh_ckpt_tensor twice[] = {t, t};
    ck_assert_int_eq(lh_ckpt_save(g_dir, 1, 1, twice, 2, NULL, 0, &err), LH_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "duplicate tensor name 'x'"));
    ck_assert(!exists(in_store(ckpt_name(1))));
}
END_TEST

/* ---- Keep the last K ---- */

START_TEST(test_keep_last_k) {
    new_store();
    for (int s = 1; s <= 6; s++) save(s * 100, 3);
    ck_assert_str_eq(manifest_steps(), "400,500,600");
    for (int s = 1; s <= 6; s++) ck_assert_int_eq(exists(in_store(ckpt_name(s * 100))), s >= 4);
    lh_ckpt_close(open_expect(600));
    save(700, 1);
    ck_assert_str_eq(manifest_steps(), "700");
    ck_assert(!exists(in_store(ckpt_name(600))));
    lh_ckpt_close(open_expect(700));
}
END_TEST

/* A run resumed from an earlier checkpoint voids the later ones. */
START_TEST(test_resume_earlier_step) {
    new_store();
    for (int s = 1; s <= 5; s++) save(s, 10);
    save(3, 10);
    ck_assert_str_eq(manifest_steps(), "1,2,3");
    ck_assert(!exists(in_store(ckpt_name(4))));
    ck_assert(!exists(in_store(ckpt_name(5))));
    lh_ckpt_close(open_expect(3));
}
END_TEST

/* ---- Corrupt and missing files ---- */

START_TEST(test_corrupt_newest_flipped_byte) {
    new_store();
    for (int s = 1; s <= 3; s++) save(s, 5);
    flip_byte(in_store(ckpt_name(3)), 3); /* inside the tensor data */
    lh_ckpt *c = open_expect(2);
    const char *w = lh_ckpt_warnings(c);
    ck_assert_ptr_nonnull(strstr(w, in_store(ckpt_name(3))));
    ck_assert_ptr_nonnull(strstr(w, "CRC-32"));
    ck_assert_ptr_nonnull(strstr(w, "falling back to the previous one"));
    ck_assert_ptr_null(strchr(w, '\n')); /* one warning */
    lh_ckpt_close(c);
}
END_TEST

START_TEST(test_corrupt_truncated_and_missing) {
    new_store();
    for (int s = 1; s <= 4; s++) save(s, 5);
    ck_assert_int_eq(truncate(in_store(ckpt_name(4)), 100), 0);
    ck_assert_int_eq(unlink(in_store(ckpt_name(3))), 0);
    lh_ckpt *c = open_expect(2);
    const char *w = lh_ckpt_warnings(c);
    char want[8192];
    snprintf(want, sizeof want, "%s: 100 bytes, the manifest says %ld (truncated or replaced)",
             in_store(ckpt_name(4)), file_size(in_store(ckpt_name(2))));
    ck_assert_msg(strstr(w, want), "warnings: %s", w);
    ck_assert_ptr_nonnull(strstr(w, in_store(ckpt_name(3))));
    ck_assert_ptr_nonnull(strstr(w, "No such file"));
    lh_ckpt_close(c);

    /* every listed file bad, none other on disk: not found, all named */
    flip_byte(in_store(ckpt_name(2)), 1);
    ck_assert_int_eq(truncate(in_store(ckpt_name(1)), 0), 0);
    lh_error err = {0};
    ck_assert_int_eq(lh_ckpt_open_latest(&c, g_dir, &err), LH_ERR_NOT_FOUND);
    for (int s = 1; s <= 4; s++) ck_assert_ptr_nonnull(strstr(err.msg, ckpt_name(s)));

    /* the next save keeps the listed files that are there with the right size */
    save(5, 5);
    ck_assert_str_eq(manifest_steps(), "2,5"); /* missing or resized files dropped */
    ck_assert(!exists(in_store(ckpt_name(1))));
    ck_assert(!exists(in_store(ckpt_name(4))));
    lh_ckpt_close(open_expect(5));
}
END_TEST

/* The store's step key must match the file: a renamed file is refused. */
START_TEST(test_renamed_file) {
    new_store();
    save(1, 5);
    ck_assert_int_eq(unlink(in_store("checkpoints.json")), 0);
    char from[8192];
    snprintf(from, sizeof from, "%s", in_store(ckpt_name(1)));
    ck_assert_int_eq(rename(from, in_store(ckpt_name(2))), 0);
    lh_ckpt *c = NULL;
    lh_error err = {0};
    ck_assert_int_eq(lh_ckpt_open_latest(&c, g_dir, &err), LH_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "metadata \"step\" is '1', expected 2"));
}
END_TEST

/* ---- The manifest missing or bad ---- */

START_TEST(test_missing_manifest) {
    new_store();
    for (int s = 1; s <= 3; s++) save(s, 5);
    ck_assert_int_eq(unlink(in_store("checkpoints.json")), 0);
    lh_ckpt *c = open_expect(3);
    ck_assert_ptr_nonnull(strstr(lh_ckpt_warnings(c), "no manifest"));
    ck_assert_ptr_nonnull(strstr(lh_ckpt_warnings(c), "parsing only (no CRC)"));
    lh_ckpt_close(c);

    /* a newest file that does not parse: the scan falls back too */
    ck_assert_int_eq(truncate(in_store(ckpt_name(3)), 50), 0);
    c = open_expect(2);
    ck_assert_ptr_nonnull(strstr(lh_ckpt_warnings(c), ckpt_name(3)));
    lh_ckpt_close(c);

    /* saving rebuilds the manifest from the files that parse */
    save(4, 5);
    ck_assert_str_eq(manifest_steps(), "1,2,4");
    ck_assert(!exists(in_store(ckpt_name(3))));
    c = open_expect(4);
    ck_assert_str_eq(lh_ckpt_warnings(c), "");
    lh_ckpt_close(c);
}
END_TEST

static void expect_manifest_fallback(const char *manifest, int64_t step, const char *needle) {
    write_file(in_store("checkpoints.json"), manifest);
    lh_ckpt *c = open_expect(step);
    ck_assert_msg(strstr(lh_ckpt_warnings(c), needle), "warnings '%s' lack '%s'",
                  lh_ckpt_warnings(c), needle);
    lh_ckpt_close(c);
}

START_TEST(test_bad_manifest) {
    new_store();
    for (int s = 1; s <= 3; s++) save(s, 5);
    expect_manifest_fallback("{\"format\": \"lorahost-chec", 3, "manifest unusable");
    expect_manifest_fallback("\x01\x02garbage", 3, "parsing only (no CRC)");
    expect_manifest_fallback("[]", 3, "not a JSON object");
    expect_manifest_fallback("{\"format\":\"lorahost-checkpoints\",\"version\":2,"
                             "\"checkpoints\":[]}",
                             3, "\"version\" is not 1");
    expect_manifest_fallback("{\"format\":\"lorahost-checkpoints\",\"version\":1,\"checkpoints\":"
                             "[{\"file\":\"../checkpoint-00000003.safetensors\",\"step\":3,"
                             "\"size\":1,\"crc32\":\"00000000\"}]}",
                             3, "is not the name for step 3");
    expect_manifest_fallback("{\"format\":\"lorahost-checkpoints\",\"version\":1,\"checkpoints\":"
                             "[{\"file\":\"checkpoint-00000003.safetensors\",\"step\":3,"
                             "\"size\":1,\"crc32\":\"XYZ\"}]}",
                             3, "crc32 'XYZ' is not 8 lower-case hex digits");
    expect_manifest_fallback("{\"format\":\"lorahost-checkpoints\",\"version\":1,\"checkpoints\":"
                             "[{\"file\":\"checkpoint-00000003.safetensors\",\"step\":3,"
                             "\"size\":1,\"crc32\":\"00000000\"},"
                             "{\"file\":\"checkpoint-00000002.safetensors\",\"step\":2,"
                             "\"size\":1,\"crc32\":\"00000000\"}]}",
                             3, "step 2 does not follow step 3");

    /* well-formed but wrong sizes: each listed file is refused; the scan then
     * finds nothing it has not already refused */
    save(4, 5);
    char *text = NULL;
    json_t *good = json_load_file(in_store("checkpoints.json"), 0, NULL);
    json_t *root = json_deep_copy(good);
    json_t *list = json_object_get(root, "checkpoints");
    size_t n = json_array_size(list);
    json_t *newest = json_array_get(list, n - 1);
    json_object_set_new(newest, "size",
                        json_integer(json_integer_value(json_object_get(newest, "size")) + 8));
    text = json_dumps(root, 0);
    json_decref(root);
    char want[8192];
    snprintf(want, sizeof want, "checkpoint %s is unusable (%s: %ld bytes, the manifest says %ld",
             in_store(ckpt_name(4)), in_store(ckpt_name(4)), file_size(in_store(ckpt_name(4))),
             file_size(in_store(ckpt_name(4))) + 8);
    expect_manifest_fallback(text, 3, want);
    free(text);

    /* a wrong CRC only for the newest */
    root = json_deep_copy(good);
    json_object_set_new(json_array_get(json_object_get(root, "checkpoints"), n - 1), "crc32",
                        json_string("00000000"));
    text = json_dumps(root, 0);
    json_decref(root);
    expect_manifest_fallback(text, 3, "the manifest says 00000000");
    free(text);
    json_decref(good);
}
END_TEST

/* ---- Temporary files of a killed writer ---- */

START_TEST(test_temp_files_ignored_and_removed) {
    new_store();
    save(1, 5);
    save(2, 5);
    write_file(in_store("checkpoint-00000003.safetensors.tmp.4242"), "half a checkpoint");
    write_file(in_store("checkpoints.json.tmp.4242"), "{\"format\":");
    write_file(in_store("notes.tmp.1"), "not ours");
    lh_ckpt *c = open_expect(2);
    ck_assert_str_eq(lh_ckpt_warnings(c), "");
    lh_ckpt_close(c);
    ck_assert(exists(in_store("checkpoint-00000003.safetensors.tmp.4242")));

    /* no manifest: the scan does not take a temp file for a checkpoint */
    ck_assert_int_eq(unlink(in_store("checkpoints.json")), 0);
    lh_ckpt_close(open_expect(2));

    save(3, 5);
    ck_assert(!exists(in_store("checkpoint-00000003.safetensors.tmp.4242")));
    ck_assert(!exists(in_store("checkpoints.json.tmp.4242")));
    ck_assert(exists(in_store("notes.tmp.1")));
    ck_assert_str_eq(manifest_steps(), "1,2,3");
    c = open_expect(3);
    ck_assert_str_eq(lh_ckpt_warnings(c), "");
    lh_ckpt_close(c);
}
END_TEST

/* ---- Setup ---- */

static void setup(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s/tests/ckpt-XXXXXX", build_dir());
    if (!mkdtemp(g_tmp)) {
        fprintf(stderr, "cannot create %s: %s\n", g_tmp, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

static void teardown(void) { remove_tree(g_tmp); }

int main(void) {
    lh_log_set_level(LH_LOG_ERROR); /* the fallback warnings are asserted, not shown */
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("store");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_crc32);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_empty_and_missing_store);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_keep_last_k);
    tcase_add_test(tc, test_resume_earlier_step);
    tcase_add_test(tc, test_corrupt_newest_flipped_byte);
    tcase_add_test(tc, test_corrupt_truncated_and_missing);
    tcase_add_test(tc, test_renamed_file);
    tcase_add_test(tc, test_missing_manifest);
    tcase_add_test(tc, test_bad_manifest);
    tcase_add_test(tc, test_temp_files_ignored_and_removed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
