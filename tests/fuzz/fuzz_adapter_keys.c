/* libFuzzer target for the adapter key maps and the prompt's adapter tags:
 * every line of the input goes through lh_akey_parse (checked: terminated,
 * non-empty module and suffix on success, the kohya spelling has no '.',
 * a parsed kohya key parses back to itself), and the whole input through
 * lh_prompt_adapters and lh_adapter_ref_parse (checked: the clean prompt
 * is no longer than the input, scales are finite).
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_keys.h"
#include "adapter_prompt.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static void one_key(const char *key) {
    lh_akey k;
    lh_akey_status st = lh_akey_parse(&k, key);
    if (st != LH_AKEY_OK) return;
    size_t ml = strnlen(k.module, sizeof k.module), sl = strnlen(k.suffix, sizeof k.suffix);
    CHECK(ml > 0 && ml < sizeof k.module && sl > 0 && sl < sizeof k.suffix);
    CHECK(k.family < LH_AKEY_FAMILY_COUNT && k.part < LH_LAYER_PART_COUNT);
    if (k.kohya_spelling) {
        CHECK(!strchr(k.module, '.'));
        char again[600];
        snprintf(again, sizeof again, "%s%s.%s", k.part == LH_LAYER_TE ? "lora_te_" : "lora_unet_",
                 k.module, k.suffix);
        lh_akey k2;
        CHECK(lh_akey_parse(&k2, again) == LH_AKEY_OK);
        CHECK(!strcmp(k2.module, k.module) && !strcmp(k2.suffix, k.suffix) && k2.part == k.part);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *line = text;
    for (;;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        one_key(line);
        if (!nl) break;
        line = nl + 1;
    }
    memcpy(text, data, size); /* again, whole, for the prompt parsers */
    char *clean;
    lh_adapter_ref *refs;
    size_t n;
    lh_error err;
    if (lh_prompt_adapters(&clean, &refs, &n, text, &err) == LH_OK) {
        CHECK(strlen(clean) <= strlen(text));
        for (size_t i = 0; i < n; i++) CHECK(isfinite(refs[i].te) && isfinite(refs[i].unet) && refs[i].name[0]);
        free(clean);
        free(refs);
    } else {
        CHECK(err.msg[0]);
    }
    lh_adapter_ref r;
    if (lh_adapter_ref_parse(&r, text, &err) == LH_OK) CHECK(isfinite(r.te) && r.te == r.unet && r.name[0]);
    free(text);
    return 0;
}
