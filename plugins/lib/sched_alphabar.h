/* Helpers shared by the alpha-bar schedulers with integer training timesteps
 * (the ddpm, pndm and lcm plugins): diffusers' integer timestep spacing and
 * add_noise, both on the float32 alphas_cumprod of sched_base. */
#ifndef LH_SCHED_ALPHABAR_H
#define LH_SCHED_ALPHABAR_H

#include "sched_common.h"

/* Integer timesteps, descending, as DDPMScheduler spaces them: out[n].
 * Fails (naming the plugin) if one falls outside 0..num_train_timesteps-1. */
lh_status sched_int_timesteps(const sched_base *b, double *out, int32_t n, char *err,
                              size_t err_size);

/* out = sqrt(a) * original + sqrt(1 - a) * noise with a = alphas_cumprod[t],
 * for an integer training timestep t. */
lh_status sched_alphabar_add_noise(const sched_base *b, lh_tensor *out, const lh_tensor *original,
                                   const lh_tensor *noise, double timestep, char *err,
                                   size_t err_size);

#endif
