/* libFuzzer target for the init-image reader: arbitrary bytes written to a
 * file and read with lh_png_read (and its text lookup). Errors must be one
 * line; an image must have a sane size. Build and run: see CMakeLists.txt. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "png.h"

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
        snprintf(g_path, sizeof g_path, "/tmp/lh_fuzz_png_%d.png", (int)getpid());
        atexit(cleanup);
    }
    FILE *fp = fopen(g_path, "wb");
    if (!fp) return 0;
    CHECK(fwrite(data, 1, size, fp) == size);
    CHECK(fclose(fp) == 0);
    uint8_t *rgb = NULL;
    int64_t w = 0, h = 0;
    lh_error err = {0};
    if (lh_png_read(g_path, &rgb, &w, &h, &err) == LH_OK) {
        CHECK(rgb && w > 0 && h > 0);
        volatile uint8_t sink = rgb[(size_t)(w * h * 3) - 1];
        (void)sink;
        free(rgb);
    } else {
        CHECK(!rgb && err.code < 0 && err.msg[0] != '\0' && !strchr(err.msg, '\n'));
    }
    char *text = NULL;
    if (lh_png_read_text(g_path, "parameters", &text, &err) == LH_OK) CHECK(text != NULL);
    free(text);
    return 0;
}
