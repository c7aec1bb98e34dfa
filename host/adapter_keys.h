/* Adapter file keys: which layer a tensor belongs to, and what it is.
 * Four naming families are read (ANCHORS.md "LoRA file formats"):
 *   kohya/A1111 and LyCORIS  lora_unet_<module, dots as '_'>.<suffix>,
 *                            lora_te_ / lora_te1_ for the text encoder
 *   PEFT/diffusers           unet.<module>.lora_A.weight, text_encoder.<module>...,
 *                            lora_A.<adapter>.weight, base_model.model.<module>...,
 *                            lora_magnitude_vector (DoRA); the diffusers 0.2x
 *                            form <module>.lora.down.weight
 *   old diffusers            <module>.processor.to_q_lora.down.weight (U-Net),
 *                            text_encoder.<...>.self_attn.to_q_lora.down.weight,
 *                            <module>.lora_linear_layer.down.weight
 * Suffixes come out in the kohya/LyCORIS spelling plugin.h lists. The
 * tables below are data: a new spelling is a new row. */
#ifndef LH_HOST_ADAPTER_KEYS_H
#define LH_HOST_ADAPTER_KEYS_H

#include <stddef.h>

#include "layers.h"

typedef enum lh_akey_family {
    LH_AKEY_KOHYA = 0, /* kohya/A1111/LyCORIS */
    LH_AKEY_PEFT,      /* PEFT/diffusers */
    LH_AKEY_OLD,       /* old diffusers attention processors / lora_linear_layer */
    LH_AKEY_FAMILY_COUNT
} lh_akey_family;

typedef enum lh_akey_status {
    LH_AKEY_OK = 0,
    LH_AKEY_OTHER_MODEL, /* a part this model does not have (lora_te2_, text_encoder_2.) */
    LH_AKEY_UNKNOWN      /* no family recognises it */
} lh_akey_status;

#define LH_AKEY_MODULE_MAX 256
#define LH_AKEY_SUFFIX_MAX 48

typedef struct lh_akey {
    lh_akey_family family;
    lh_layer_part part;
    int kohya_spelling;               /* module has '_' for '.' (kohya) */
    char module[LH_AKEY_MODULE_MAX];  /* diffusers name, or its kohya spelling */
    char suffix[LH_AKEY_SUFFIX_MAX];  /* normalised: "lora_down.weight", "alpha", "hada_w1_a", ... */
} lh_akey;

/* Split one key. Never fails on any string; the status says what it is. */
LH_API lh_akey_status lh_akey_parse(lh_akey *out, const char *key);

/* "kohya", "peft", "old diffusers". */
const char *lh_akey_family_name(lh_akey_family f);

/* The layer `k` names in t, or -1. */
LH_API int64_t lh_akey_layer(const lh_layers *t, const lh_akey *k);

#endif
