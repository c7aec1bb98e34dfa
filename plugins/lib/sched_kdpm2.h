/* Schedule shared by the dpm2 and dpm2_ancestral plugins (diffusers'
 * KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler): sigmas at the
 * spaced timesteps (or Karras / exponential), a log-midpoint sigma per step
 * and the interleaved timesteps of the 2n - 1 model calls of n steps. The
 * arrays are float32 like diffusers' tensors and indexed like them. */
#ifndef LH_SCHED_KDPM2_H
#define LH_SCHED_KDPM2_H

#include "sched_common.h"

#define KDPM2_MAX_STEPS 1000
#define KDPM2_MAX_CALLS (2 * KDPM2_MAX_STEPS - 1)
#define KDPM2_MAX_SIGMAS (2 * KDPM2_MAX_STEPS + 2)

typedef struct kdpm2 {
    sched_base b;
    int ancestral;             /* KDPM2AncestralDiscreteScheduler */
    int karras, exponential;   /* use_karras_sigmas, use_exponential_sigmas */
    int32_t n;                 /* inference steps */
    double ts[KDPM2_MAX_CALLS];
    double sigmas_out[KDPM2_MAX_SIGMAS]; /* diffusers' self.sigmas, widened */
    /* diffusers' self.sigmas, sigmas_interpol, sigmas_up, sigmas_down: the
     * per-step values with every entry but the first and last repeated */
    float sigma[KDPM2_MAX_SIGMAS], interp[KDPM2_MAX_SIGMAS];
    float up[KDPM2_MAX_SIGMAS], down[KDPM2_MAX_SIGMAS]; /* ancestral only */
    float max_sigma;
    int second_order;      /* a first-order step waits for its correction */
    lh_tensor *first;      /* that step's input sample (diffusers' self.sample) */
    lh_tensor *x0, *d, *noise; /* scratch */
} kdpm2;

#define KDPM2_KEYS SCHED_BASE_KEYS, "use_karras_sigmas", "use_exponential_sigmas"

/* Read the config (id names the plugin) and allocate the state: the
 * plugin's create. */
lh_status kdpm2_create(void **out, const lh_host_api *host, const lh_config *cfg, const char *id,
                       int ancestral, char *err, size_t err_size);
void kdpm2_destroy(void *state);

lh_status kdpm2_set_timesteps(void *state, int32_t n, char *err, size_t err_size);
lh_status kdpm2_set_begin_index(void *state, int32_t k, char *err, size_t err_size);
int32_t kdpm2_timesteps(void *state, const double **out);
int32_t kdpm2_sigmas(void *state, const double **out);
double kdpm2_init_noise_sigma(void *state);
/* Check a step index against the schedule. */
lh_status kdpm2_check_index(const kdpm2 *k, int32_t index, char *err, size_t err_size);
/* The step arithmetic below is sched_predict's sigma form, rounded op by op
 * like diffusers' float32 tensors: at large sigmas sample - x0 cancels
 * badly, and only the same rounding points reproduce diffusers' results
 * there. */
/* k->x0 = the denoised estimate from the model output evaluated at sigma. */
lh_status kdpm2_x0(kdpm2 *k, const lh_tensor *model_output, const lh_tensor *sample, float sigma,
                   char *err, size_t err_size);
/* prev = base + (sample - k->x0) / sigma * dt: the derivative at sigma times dt. */
lh_status kdpm2_advance(kdpm2 *k, lh_tensor *prev, const lh_tensor *base, const lh_tensor *sample,
                        float sigma, float dt, char *err, size_t err_size);
/* out = original + sigma * noise, sigma that of the schedule entry holding
 * `timestep` (its second entry if it occurs twice, like diffusers). */
lh_status kdpm2_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                          const lh_tensor *noise, double timestep, char *err, size_t err_size);

#endif
