/* Shared code of the scheduler plugins (compiled into each one; plugin-side,
 * so it sees only lorahost/plugin.h): the diffusers config keys every
 * scheduler understands, beta schedules as diffusers computes them (float32
 * betas, double-accumulated cumulative products), and small helpers. */
#ifndef LH_SCHED_COMMON_H
#define LH_SCHED_COMMON_H

#include <lorahost/plugin.h>
#include <stdarg.h>

typedef enum sched_pred {
    SCHED_PRED_EPSILON = 0,
    SCHED_PRED_V,
    SCHED_PRED_SAMPLE,
    SCHED_PRED_COUNT
} sched_pred;

typedef enum sched_spacing {
    SCHED_SPACING_LEADING = 0,
    SCHED_SPACING_TRAILING,
    SCHED_SPACING_LINSPACE,
    SCHED_SPACING_COUNT
} sched_spacing;

/* Defaults that differ between diffusers' scheduler classes. */
typedef struct sched_defaults {
    double beta_start, beta_end;
    const char *beta_schedule;
    sched_spacing spacing;
} sched_defaults;

/* The part of a scheduler's configuration every plugin shares. */
typedef struct sched_base {
    const lh_host_api *host;
    const char *id;            /* plugin id, for messages */
    int64_t num_train_timesteps;
    sched_pred prediction_type;
    sched_spacing spacing;
    int64_t steps_offset;
    float *betas;              /* [num_train_timesteps], float32 as diffusers keeps them */
    float *alphas_cumprod;     /* [num_train_timesteps] */
} sched_base;

#define SCHED_BASE_KEYS                                                                     \
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",      \
        "prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"

/* Read the shared keys (and mark them used), build betas and alphas_cumprod. */
lh_status sched_base_init(sched_base *b, const lh_host_api *host, const char *id,
                          const lh_config *cfg, const sched_defaults *defaults, char *err,
                          size_t err_size);
void sched_base_free(sched_base *b);

/* Read an enum-valued key: *out = index of the value in `choices` (NULL-
 * terminated), or `fallback` if the key is absent. */
lh_status sched_enum(const lh_host_api *host, const lh_config *cfg, const char *id,
                     const char *key, const char *const *choices, int fallback, int *out,
                     char *err, size_t err_size);

/* Write a message and return code (format like printf). */
lh_status sched_fail(char *err, size_t err_size, lh_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Copy the host's last error into err and return st (for failing services). */
lh_status sched_host_fail(const sched_base *b, lh_status st, const char *what, char *err,
                          size_t err_size);

/* Check 1 <= n <= limit for set_timesteps, naming the plugin. */
lh_status sched_check_steps(const sched_base *b, int32_t n, int64_t limit, char *err,
                            size_t err_size);

/* alphas_cumprod[t] for an integer timestep t in range. */
static inline double sched_alpha_bar(const sched_base *b, int64_t t) {
    return (double)b->alphas_cumprod[t];
}

/* numpy.linspace(start, stop, n) in double, written to out[n]. */
void sched_linspace(double *out, double start, double stop, int32_t n);

/* Make sure *t is a tensor shaped like `like` (allocated on first use). */
lh_status sched_scratch(const sched_base *b, lh_tensor **t, const lh_tensor *like, char *err,
                        size_t err_size);

#endif

/* ---- Sigma schedules (the k-diffusion family) ---- */

/* sigma_i = sqrt((1 - alphas_cumprod[i]) / alphas_cumprod[i]) for every
 * training timestep, in float32 as diffusers computes them, widened. */
void sched_train_sigmas(const sched_base *b, double *out /* [num_train_timesteps] */);

/* numpy.interp(x, arange(n), fp) for one x. */
double sched_interp(double x, const double *fp, int64_t n);

/* diffusers' _sigma_to_t: fractional timestep of sigma by linear
 * interpolation in log-sigma over the training log sigmas (ascending t). */
double sched_sigma_to_t(double sigma, const double *log_sigmas, int64_t n);

/* Karras et al. (2022) sigmas, rho = 7: out[n] from sigma_max down to sigma_min. */
void sched_karras_sigmas(double *out, int32_t n, double sigma_min, double sigma_max);

/* exp(linspace(log sigma_max, log sigma_min, n)). */
void sched_exponential_sigmas(double *out, int32_t n, double sigma_min, double sigma_max);

/* Timesteps of the given spacing as diffusers' sigma schedulers compute
 * them (float32 values): out[n], descending. */
void sched_spaced_timesteps(const sched_base *b, double *out, int32_t n);
