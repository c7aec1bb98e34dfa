/* libFuzzer target for the HDF5 dataset reader: arbitrary bytes written to a
 * file, opened with lh_dataset_open and every item (up to 64) read with all
 * parts. Open must succeed or fail with a one-line message; reads of an
 * opened file return items of the validated sizes. Build and run: see
 * CMakeLists.txt. The open is the guarded one (libhdf5 parses the headers in
 * a forked child first): a libhdf5 crash there must come back as an error,
 * and the child's ASan report and crash-* artifact are expected noise (use
 * -artifact_prefix=); only the parent stopping is a finding. With
 * LH_DATASET_NO_FORK=1 the open runs in-process, so libFuzzer sees libhdf5's
 * own crashes and coverage. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static char g_path[64];

static void cleanup(void) {
    if (g_path[0]) unlink(g_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_path[0]) {
        snprintf(g_path, sizeof g_path, "/tmp/lh_fuzz_dataset_%d.h5", (int)getpid());
        atexit(cleanup);
    }
    FILE *fp = fopen(g_path, "wb");
    if (!fp) return 0;
    CHECK(fwrite(data, 1, size, fp) == size);
    CHECK(fclose(fp) == 0);
    lh_dataset *d = NULL;
    lh_error err = {0};
    if (lh_dataset_open(&d, g_path, &err) != LH_OK) {
        CHECK(!d && err.code < 0 && err.msg[0] != '\0' && !strchr(err.msg, '\n'));
        return 0;
    }
    int64_t n = lh_dataset_count(d);
    CHECK(n >= 0 && n <= LH_DATASET_MAX_ITEMS);
    int what = LH_DATASET_IMAGE | (lh_dataset_has_latents(d) ? LH_DATASET_LATENT : 0) |
               (lh_dataset_has_text(d) ? LH_DATASET_TEXT : 0);
    for (int64_t i = 0; i < n && i < 64; i++) {
        lh_dataset_item it;
        if (lh_dataset_read(d, i, what, &it, &err) != LH_OK) {
            CHECK(err.msg[0] != '\0' && !strchr(err.msg, '\n'));
            continue;
        }
        CHECK(it.rgb && it.caption && it.width > 0 && it.height > 0);
        volatile uint8_t sink = it.rgb[(size_t)(it.width * it.height * 3) - 1];
        (void)sink;
        if (it.latent) {
            volatile float f = it.latent[it.latent_shape[0] * it.latent_shape[1] * it.latent_shape[2] - 1];
            (void)f;
        }
        if (it.text) {
            volatile float f = it.text[it.text_shape[0] * it.text_shape[1] - 1];
            (void)f;
        }
        lh_dataset_item_free(&it);
    }
    lh_dataset_close(d);
    return 0;
}
