/* Shared code of the multistep solver plugins (dpmsolver_multistep, unipc,
 * deis): their config keys, diffusers' timestep and sigma schedule for these
 * classes, the VP alpha/sigma/lambda of a sigma in float32 as diffusers
 * computes them, the model-output history and add_noise. */
#ifndef LH_SCHED_MULTISTEP_H
#define LH_SCHED_MULTISTEP_H

#include "sched_common.h"

#define MS_MAX_STEPS 1000
#define MS_MAX_ORDER 3

/* Keys the three diffusers classes share beyond SCHED_BASE_KEYS. The
 * thresholding, beta-, flow- and dynamic-shift keys are accepted only at
 * their defaults (their companions are read and have no effect then). */
#define MS_KEYS                                                                             \
    "solver_order", "solver_type", "lower_order_final", "use_karras_sigmas",                \
        "use_exponential_sigmas", "thresholding", "dynamic_thresholding_ratio",             \
        "sample_max_value", "use_beta_sigmas", "use_flow_sigmas", "flow_shift",             \
        "use_dynamic_shifting", "time_shift_type"

typedef enum ms_sigma_kind {
    MS_SIGMAS_TRAIN = 0,   /* training sigmas at the spaced timesteps */
    MS_SIGMAS_KARRAS,
    MS_SIGMAS_EXPONENTIAL,
    MS_SIGMAS_LU,          /* uniform log-SNR (DPM-Solver's use_lu_lambdas) */
    MS_SIGMAS_COUNT
} ms_sigma_kind;

/* The sigma appended after the last step. */
typedef enum ms_final {
    MS_FINAL_ZERO = 0,
    MS_FINAL_TRAIN_MIN,    /* the training schedule's smallest sigma */
    MS_FINAL_REPEAT,       /* the last sigma of the schedule again */
    MS_FINAL_COUNT
} ms_final;

/* Put first in each plugin's state: the ms_* plugin functions below take
 * that state as `void *`. */
typedef struct ms_sched {
    sched_base b;
    int order;               /* solver_order, 1..3 */
    int lower_order_final;
    ms_sigma_kind kind;
    ms_final final_sigma;     /* set by the plugin before set_timesteps */
    int round_timesteps;      /* round karras/lu timesteps (else truncate) */
    double sigma_min, sigma_max; /* NaN: the training schedule's */
    int64_t last_timestep;    /* training timesteps in use (lambda_min_clipped) */
    double *train_sigmas;     /* [num_train_timesteps], float32 values */
    double *train_log_sigmas; /* [num_train_timesteps], log rounded to float32 */
    int32_t n;                /* timesteps */
    double ts[MS_MAX_STEPS];
    double sigmas[MS_MAX_STEPS + 1];
    int32_t begin;            /* set_begin_index, or -1 */
    int32_t next;             /* index the next step must have, or -1 */
    int lower_order_nums;     /* steps taken, at most order */
    lh_tensor *m[MS_MAX_ORDER + 1]; /* converted outputs, m[0] newest; m[order] is free */
} ms_sched;

/* sched_base_init plus the MS_KEYS. `zero_snr` says whether the class has
 * rescale_betas_zero_snr (DEIS has not); with it, alphas_cumprod ends at
 * 2^-24 as in diffusers. */
lh_status ms_init(ms_sched *s, const lh_host_api *host, const char *id, const lh_config *cfg,
                  int zero_snr, char *err, size_t err_size);
void ms_free(ms_sched *s);

/* Build timesteps and sigmas for n steps and reset the history. */
lh_status ms_schedule(ms_sched *s, int32_t n, char *err, size_t err_size);

/* Check index against the schedule and the steps taken so far, and make sure
 * the history tensors exist (shaped like sample). */
lh_status ms_begin_step(ms_sched *s, int32_t index, const lh_tensor *sample, char *err,
                        size_t err_size);
/* Make the free history slot m[order] the newest, m[0]. */
void ms_push(ms_sched *s);
/* After a step at index: count it for the warm-up of the multistep orders. */
void ms_end_step(ms_sched *s, int32_t index);

/* VP coefficients of a sigma, in float32 like diffusers' _sigma_to_alpha_sigma_t:
 * alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha. */
void ms_alpha_sigma(float sigma, float *alpha, float *sigma_t);
/* lambda = log(alpha) - log(sigma_t) (inf for sigma 0). */
float ms_lambda(float sigma);

/* numpy's float32 log, bit for bit (its AVX2/AVX-512 kernel: a rational
 * approximation, up to 3.8 ulp off). diffusers takes np.log of float32
 * values where the last bit matters: DEIS's coefficients and the log
 * sigmas that fractional timesteps are interpolated in. */
float ms_np_logf(float x);

/* out = predicted x0 (data) or epsilon (noise) from the model output at
 * sigma, following prediction_type. */
lh_status ms_to_x0(const ms_sched *s, lh_tensor *out, const lh_tensor *model_output,
                   const lh_tensor *sample, float sigma, char *err, size_t err_size);
lh_status ms_to_eps(const ms_sched *s, lh_tensor *out, const lh_tensor *model_output,
                    const lh_tensor *sample, float sigma, char *err, size_t err_size);

/* lh_scheduler_desc functions shared by the three plugins (init_noise_sigma
 * and scale_model_input are sched_common's unit / identity ones). */
lh_status ms_set_begin_index(void *p, int32_t k, char *err, size_t err_size);
int32_t ms_timesteps(void *p, const double **out);
int32_t ms_sigmas(void *p, const double **out);
lh_status ms_add_noise(void *p, lh_tensor *out, const lh_tensor *x, const lh_tensor *noise,
                       double timestep, char *err, size_t err_size);

#endif
