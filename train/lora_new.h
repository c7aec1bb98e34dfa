/* A fresh adapter for training, written as a kohya / LyCORIS file that
 * lh_adapter_load reads back like any other, so training starts from the
 * base model exactly:
 *   lora (LoCon on convs): lora_down ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *     (kaiming_uniform with a = sqrt(5), as kohya's LoRAModule and PEFT's
 *     lora_A initialise), lora_up zero;
 *   loha: LyCORIS's LohaModule init, hada_w1_a ~ N(0, 0.1^2), hada_w1_b and
 *     hada_w2_b ~ N(0, 1), hada_w2_a zero. */
#ifndef LH_TRAIN_LORA_NEW_H
#define LH_TRAIN_LORA_NEW_H

#include <stdint.h>

#include "error.h"
#include "layers.h"

/* Which layers: U-Net layers whose diffusers module name is one of
 * `targets` or ends with "." + one (so "to_q" takes every attention's query
 * projection, "attn1.to_q" only self-attention's, "conv1" every resnet's
 * first conv as LoCon), and text-encoder layers matching `te_targets` (none
 * when n_te_targets is 0). *n_layers gets the count; no U-Net match is an
 * error naming the targets. */
lh_status lh_lora_new(const char *path, const char *kind, const lh_layers *layers,
                      const char *const *targets, int n_targets, const char *const *te_targets,
                      int n_te_targets, int rank, double alpha, uint64_t seed, int *n_layers,
                      lh_error *err);

#endif
