/* Shared code of the scheduler plugins (compiled into each one; plugin-side,
 * so it sees only lorahost/plugin.h): the diffusers config keys every
 * scheduler understands and the checks several classes share, beta
 * schedules as diffusers computes them (float32 betas, double-accumulated
 * cumulative products), timestep spacing and sigma schedules, index checks,
 * scratch tensors and noise draws. */
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
/* torch.linspace(start, end, n, dtype=float32): a float32 step, each value
 * computed in double from the nearer end and rounded once (torch 2.x). */
void sched_linspace_f32(float *out, float start, float end, int64_t n);

/* Make sure *t is a tensor shaped like `like` (allocated on first use). */
lh_status sched_scratch(const sched_base *b, lh_tensor **t, const lh_tensor *like, char *err,
                        size_t err_size);
/* Store a copy of x in *slot (allocated on first use). */
lh_status sched_keep(const sched_base *b, lh_tensor **slot, const lh_tensor *x, char *err,
                     size_t err_size);
/* *noise = standard normal draws from rng shaped like `like` (allocated on
 * first use); without a generator, fail with "<id>: <what> needs a random
 * generator" (what: "step", "eta > 0", ...). */
lh_status sched_draw_noise(const sched_base *b, lh_tensor **noise, const lh_tensor *like,
                           lh_rng *rng, const char *what, char *err, size_t err_size);

/* ---- Plugin create ---- */

/* Read use_karras_sigmas and use_exponential_sigmas (they exclude each other). */
lh_status sched_read_sigma_kind(const sched_base *b, const lh_config *cfg, int *karras,
                                int *exponential, char *err, size_t err_size);
/* Read rescale_betas_zero_snr into *on (sched_base_init has applied it);
 * refuse it if the diffusers class has no such option (!allowed). */
lh_status sched_read_zero_snr(const sched_base *b, const lh_config *cfg, int allowed, int *on,
                              char *err, size_t err_size);
/* Refuse prediction_type 'sample' for a class that has only epsilon and
 * v_prediction. */
lh_status sched_refuse_sample_prediction(const sched_base *b, char *err, size_t err_size);
/* The end of a plugin's create: *out = state if st is LH_OK, else
 * destroy(state); returns st. */
lh_status sched_finish_create(void **out, void *state, lh_status st, void (*destroy)(void *));

/* ---- Steps ---- */

/* Check 0 <= index < count for an index the host passes (what: "step index",
 * "begin index", ...), naming the plugin. */
lh_status sched_check_index(const sched_base *b, const char *what, int32_t index, int32_t count,
                            char *err, size_t err_size);

/* Descriptor callbacks for a state that starts with a sched_base, for the
 * classes whose model input is the sample itself (init_noise_sigma 1). */
double sched_unit_init_noise_sigma(void *state);
lh_status sched_identity_scale_model_input(void *state, lh_tensor *out, const lh_tensor *sample,
                                           int32_t index, char *err, size_t err_size);

/* ---- Timesteps ---- */

/* Timesteps of the configured spacing, descending, as diffusers computes
 * them: out[n]. linspace values are rounded to integers if `integer` (the
 * alpha-bar classes), else to float32 (the sigma classes). */
void sched_spaced_timesteps(const sched_base *b, double *out, int32_t n, int integer);

/* diffusers' index_for_timestep: the index of `timestep` in ts[n], its
 * second occurrence if it repeats, or -1. Values match within rel_tol
 * relative (to max(1, |timestep|)); 0 asks for equality. */
int32_t sched_find_timestep(const double *ts, int32_t n, double timestep, double rel_tol);

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

/* diffusers' init_noise_sigma of the sigma classes from the largest sigma:
 * sqrt(max^2 + 1) for leading spacing, else max (float32). */
double sched_sigma_init_noise(const sched_base *b, float max_sigma);

#endif
