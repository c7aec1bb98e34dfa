/* libFuzzer target for adapter files: the input is parsed as a safetensors
 * file and loaded as an adapter for the tiny SD 1.x test model with the
 * built-in adapter kinds. A file that loads is applied in runtime mode (one
 * text-encoder pass), merged, and unloaded; checked: every refusal carries a
 * message, and afterwards every base weight has its original bits.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "lorahost/lorahost.h"
#include "model.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static lh_backend *g_be;
static lh_registry *g_reg;
static lh_model *g_m;
static uint64_t g_sum; /* a checksum of the base weights' bits */

static uint64_t weights_sum(void) {
    const lh_layers *t = &g_m->adapt->layers;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < t->n; i++) {
        const unsigned char *p = (const unsigned char *)t->v[i].w;
        for (size_t j = 0; j < lh_layer_numel(&t->v[i]) * sizeof(float); j++)
            h = (h ^ p[j]) * 1099511628211ull;
    }
    return h;
}

static void init(void) {
    char msg[256];
    lh_error err = {0};
    const char *dirs[] = {LH_FUZZ_PLUGIN_DIR};
    lh_adapt *ad;
    if (lh_backend_cpu_create(&g_be, 1, msg, sizeof msg) != LH_OK ||
        lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, dirs, 1, 0, 0, &err) != LH_OK ||
        lh_model_open(&g_m, g_be, LH_FUZZ_MODEL_DIR, &err) != LH_OK ||
        lh_adapt_get(&ad, g_m, &err) != LH_OK) {
        fprintf(stderr, "fuzz_adapter_load: setup failed: %s %s\n", msg, err.msg);
        abort();
    }
    CHECK(lh_registry_find(g_reg, LH_PLUGIN_ADAPTER, "lora") != NULL);
    g_sum = weights_sum();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_m) init();
    lh_error err = {0};
    lh_st_file *f = NULL;
    if (lh_st_parse(&f, data, size, "fuzz.safetensors", &err) != LH_OK) return 0;
    lh_adapter *a = NULL;
    lh_adapter_load_opts opts = {.policy = size % 2 ? LH_ADAPTER_STRICT : LH_ADAPTER_WARN, .name = "fuzz"};
    lh_status st = lh_adapter_load_st(&a, g_m, g_reg, f, "fuzz.safetensors", &opts, &err);
    lh_st_close(f);
    if (st != LH_OK) {
        CHECK(a == NULL && err.msg[0]);
        return 0;
    }
    double scale = 0.7;
    if (lh_adapter_set(g_m, &a, &scale, 1, &err) == LH_OK) {
        int32_t ids[8] = {998, 1, 2, 3, 999, 999, 999, 999};
        float out[8 * 64];
        if (lh_clip_get_config(g_m->clip)->hidden_size <= 64)
            (void)lh_clip_encode(g_m->clip, out, ids, 1, 8, 0, &err);
    }
    lh_adapter_weights w;
    lh_adapter_weights_init(&w, 1.3);
    (void)lh_adapter_set_ex(g_m, &a, &w, 1, LH_ADAPTER_MERGED, &err);
    lh_adapter_unload(a);
    CHECK(weights_sum() == g_sum);
    return 0;
}
