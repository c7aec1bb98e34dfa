/* Shared code of the k-diffusion style sigma schedulers (euler,
 * euler_ancestral, heun, lms): the sigma schedule as diffusers'
 * EulerDiscreteScheduler family builds it (float32 sigmas, optional
 * Karras/exponential sigmas), input scaling and add_noise (the step math
 * is sched_predict's sigma form).
 * A plugin's state struct starts with a `ksigma`, so the callbacks below
 * that take `void *state` go into its descriptor directly. */
#ifndef LH_KSIGMA_H
#define LH_KSIGMA_H

#include "sched_common.h"

#define KSIGMA_MAX_STEPS 1000

typedef enum ksigma_kind {
    KSIGMA_INTERP = 0,  /* training sigmas interpolated at the timesteps */
    KSIGMA_KARRAS,      /* use_karras_sigmas */
    KSIGMA_EXPONENTIAL, /* use_exponential_sigmas */
    KSIGMA_KIND_COUNT
} ksigma_kind;

/* Which optional diffusers keys a scheduler class has. */
enum {
    KSIGMA_HAS_ZSNR = 1u,      /* rescale_betas_zero_snr */
    KSIGMA_HAS_SIGMA_KIND = 2u /* use_karras_sigmas, use_exponential_sigmas */
};

/* Schedule options; ksigma_init sets the defaults, a plugin may change them
 * from its own keys before the first set_timesteps. */
typedef struct ksigma_opts {
    ksigma_kind kind;
    int log_linear;             /* interpolation_type = log_linear */
    double sigma_min, sigma_max;/* NAN: the ends of the interpolated sigmas */
    int final_sigma_min;        /* final_sigmas_type = sigma_min (else zero) */
    int continuous;             /* timesteps = 0.25 log(sigma) */
} ksigma_opts;

typedef struct ksigma {
    sched_base b;
    ksigma_opts opts;
    double *train_sigmas;           /* [num_train_timesteps], float32 values */
    double *log_sigmas;             /* [num_train_timesteps], float32 logs */
    double ts[2 * KSIGMA_MAX_STEPS];/* model timesteps */
    double sig[2 * KSIGMA_MAX_STEPS + 2];
    int32_t n_ts, n_sig;
    int32_t begin; /* set_begin_index, -1 if not called */
    int32_t cur;   /* diffusers' step_index: index being run, -1 before the first */
} ksigma;

/* Read the shared keys (the class's `features`), build the training sigmas. */
lh_status ksigma_init(ksigma *k, const lh_host_api *host, const char *id, const lh_config *cfg,
                      const sched_defaults *defaults, unsigned features, char *err,
                      size_t err_size);
void ksigma_free(ksigma *k);

/* The n-step schedule: n timesteps and n + 1 sigmas (n + 2 with log_linear
 * interpolation, as diffusers has it), all float32 values. */
lh_status ksigma_set_timesteps(ksigma *k, int32_t n, char *err, size_t err_size);

/* Check an index the host passes to scale_model_input or step. */
lh_status ksigma_check_index(const ksigma *k, int32_t index, char *err, size_t err_size);

/* Descriptor callbacks (state is a struct starting with a ksigma). */
lh_status ksigma_set_begin_index(void *state, int32_t k, char *err, size_t err_size);
int32_t ksigma_timesteps(void *state, const double **out);
int32_t ksigma_sigmas(void *state, const double **out);
double ksigma_init_noise_sigma(void *state);
lh_status ksigma_scale_model_input(void *state, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size);
lh_status ksigma_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                           const lh_tensor *noise, double timestep, char *err, size_t err_size);

#endif
