/* Shared code of the alpha-bar schedulers with integer training timesteps
 * (the ddim, ddpm, pndm and lcm plugins): diffusers' integer timestep
 * spacing, the schedule state and callbacks of the classes with one model
 * call per timestep (ddim, ddpm, lcm), and add_noise on the float32
 * alphas_cumprod of sched_base (ddpm, pndm, lcm; ddim keeps its own). */
#ifndef LH_SCHED_ALPHABAR_H
#define LH_SCHED_ALPHABAR_H

#include "sched_common.h"

#define ALPHABAR_MAX_STEPS 1000

/* Put first in the state of ddim, ddpm and lcm: the alphabar_* callbacks
 * below take that state as `void *`. */
typedef struct alphabar_sched {
    sched_base b;
    int32_t n;                      /* steps (= timesteps), 0 before set_timesteps */
    double ts[ALPHABAR_MAX_STEPS];  /* integer training timesteps, descending */
} alphabar_sched;

/* Integer timesteps, descending, as DDPMScheduler spaces them: out[n].
 * Fails (naming the plugin) if one falls outside 0..num_train_timesteps-1. */
lh_status sched_int_timesteps(const sched_base *b, double *out, int32_t n, char *err,
                              size_t err_size);

/* Descriptor callbacks (state is a struct starting with an alphabar_sched).
 * set_timesteps spaces n timesteps with sched_int_timesteps (n = 0 if it
 * fails); set_begin_index only checks the index. */
lh_status alphabar_set_timesteps(void *state, int32_t n, char *err, size_t err_size);
lh_status alphabar_set_begin_index(void *state, int32_t k, char *err, size_t err_size);
int32_t alphabar_timesteps(void *state, const double **out);

/* The add_noise callback of all four (state starts with a sched_base, as an
 * alphabar_sched does): out = sqrt(a) * original + sqrt(1 - a) * noise with
 * a = alphas_cumprod[t], for an integer training timestep t. */
lh_status alphabar_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                             const lh_tensor *noise, double timestep, char *err, size_t err_size);

#endif
