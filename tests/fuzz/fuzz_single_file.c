/* libFuzzer target for single-file checkpoint detection: arbitrary bytes
 * through the safetensors reader, then lh_ldm_detect, then the diffusers-name
 * view of every part it found, looked up under names the loaders ask for.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <stdint.h>
#include <string.h>

#include "ldm_keys.h"
#include "lorahost/lorahost.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static const char *const NAMES[LH_LDM_PART_COUNT][4] = {
    {"conv_in.weight", "down_blocks.0.attentions.0.proj_in.weight",
     "up_blocks.1.upsamplers.0.conv.weight", "mid_block.resnets.1.norm2.bias"},
    {"encoder.conv_in.weight", "decoder.mid_block.attentions.0.to_q.weight",
     "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "quant_conv.weight"},
    {"embeddings.token_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight",
     "encoder.layers.0.self_attn.v_proj.bias", "final_layer_norm.weight"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lh_st_file *f;
    lh_error err = {0};
    if (lh_st_parse(&f, data, size, "fuzz", &err) != LH_OK) return 0;
    lh_ldm_info info;
    if (lh_ldm_detect(f, &info, &err) != LH_OK) {
        CHECK(err.code < 0 && err.msg[0] != '\0' && !strchr(err.msg, '\n'));
        lh_st_close(f);
        return 0;
    }
    for (int p = 0; p < LH_LDM_PART_COUNT; p++) {
        if (!info.has[p]) continue;
        lh_ldm_map *map = NULL;
        if (lh_ldm_map_create(&map, f, &info, (lh_ldm_part)p, &err) != LH_OK) {
            CHECK(err.msg[0] != '\0' && !strchr(err.msg, '\n'));
            continue;
        }
        const lh_wsource *src = lh_ldm_map_source(map);
        for (int k = 0; k < 4; k++) {
            const lh_st_tensor *t = lh_wsource_find(src, NAMES[p][k]);
            if (t) CHECK(t->ndim >= 0 && t->ndim <= LH_MAX_DIMS && t->numel >= 0);
            char buf[256];
            (void)lh_ldm_file_key(buf, sizeof buf, &info, (lh_ldm_part)p, NAMES[p][k]);
        }
        lh_ldm_map_destroy(map);
    }
    lh_st_close(f);
    return 0;
}
