/* The trained adapter as a file other tools load: kohya form (what A1111,
 * ComfyUI, kohya sd-scripts and diffusers' load_lora_weights read:
 * lora_unet_<module>.lora_down.weight / lora_up.weight / alpha, ss_*
 * metadata) or PEFT form (diffusers save_lora_weights: unet.<module>.lora_A.weight,
 * lora_B.weight, alphas in lora_adapter_metadata). Written atomically. */
#ifndef LH_TRAIN_EXPORT_H
#define LH_TRAIN_EXPORT_H

#include <stddef.h>

#include "adapter.h"
#include "error.h"

typedef enum lh_export_format { LH_EXPORT_KOHYA = 0, LH_EXPORT_PEFT } lh_export_format;

/* Write adapter `a` (LoRA / LoCon parts) to path in `fmt` with extra
 * metadata pairs meta[2i] = key, meta[2i + 1] = value (kohya's ss_*). A part
 * of another kind (LoHa, LoKr, full) cannot be written in PEFT form: error
 * naming the layer. */
lh_status lh_adapter_export(const char *path, lh_adapter *a, lh_export_format fmt,
                            const char *const *meta, size_t n_meta, lh_error *err);

#endif
