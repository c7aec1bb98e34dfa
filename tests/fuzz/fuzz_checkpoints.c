/* libFuzzer target for the checkpoint store's reader (train/checkpoint.h):
 * the input, split at its first NUL byte, becomes the manifest
 * checkpoints.json and the file checkpoint-00000001.safetensors of a fresh
 * store, which lh_ckpt_open_latest then reads. It must either give a
 * checkpoint whose step and file agree, or fail with a one-line message;
 * warnings are one line each. Build and run: see CMakeLists.txt. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "lorahost/lorahost.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static char g_dir[64], g_manifest[96], g_file[128];

static void cleanup(void) {
    unlink(g_manifest);
    unlink(g_file);
    rmdir(g_dir);
}

static void put(const char *path, const uint8_t *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    CHECK(fp);
    CHECK(fwrite(data, 1, size, fp) == size);
    CHECK(fclose(fp) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        snprintf(g_dir, sizeof g_dir, "/tmp/lh_fuzz_ckpt_%d", (int)getpid());
        snprintf(g_manifest, sizeof g_manifest, "%s/" LH_CKPT_MANIFEST, g_dir);
        snprintf(g_file, sizeof g_file, "%s/checkpoint-00000001.safetensors", g_dir);
        CHECK(mkdir(g_dir, 0700) == 0);
        atexit(cleanup);
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t head = nul ? (size_t)(nul - data) : size;
    put(g_manifest, data, head);
    unlink(g_file);
    if (nul) put(g_file, nul + 1, size - head - 1);
    lh_ckpt *c = NULL;
    lh_error err = {0};
    if (lh_ckpt_open_latest(&c, g_dir, &err) == LH_OK) {
        CHECK(c && lh_ckpt_step(c) >= 0 && lh_ckpt_file(c) && lh_ckpt_path(c));
        const char *w = lh_ckpt_warnings(c);
        CHECK(!w || strlen(w) < (1u << 20));
        const char *step = lh_ckpt_meta_find(c, LH_CKPT_STEP_KEY);
        CHECK(step && strtoll(step, NULL, 10) == lh_ckpt_step(c));
        lh_ckpt_close(c);
    } else {
        CHECK(!c && err.code < 0 && err.msg[0] != '\0' && !strchr(err.msg, '\n'));
    }
    return 0;
}
