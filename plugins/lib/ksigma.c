/* The sigma schedule of diffusers' Euler/Heun/LMS schedulers: timesteps by
 * spacing, sigmas interpolated from the training sigmas (or Karras /
 * exponential), kept as float32 values the way diffusers stores them. */
#include "ksigma.h"

#include <math.h>

#include "sched_predict.h"

/* ---- Setup ---- */

lh_status ksigma_init(ksigma *k, const lh_host_api *host, const char *id, const lh_config *cfg,
                      const sched_defaults *defaults, unsigned features, char *err,
                      size_t err_size) {
    int zsnr = 0, karras = 0, exponential = 0;
    lh_status st = LH_OK;
    k->b.host = host; /* ksigma_free works from here on */
    k->b.id = id;
    if (features & KSIGMA_HAS_ZSNR)
        st = host->config_bool(cfg, "rescale_betas_zero_snr", 0, &zsnr, err, err_size);
    else if (host->config_string(cfg, "rescale_betas_zero_snr"))
        return sched_fail(err, err_size, LH_ERR_CONFIG,
                          "%s: rescale_betas_zero_snr is not an option of this scheduler", id);
    if (st == LH_OK) st = sched_base_init(&k->b, host, id, cfg, defaults, err, err_size);
    if (st != LH_OK) return st;
    if (features & KSIGMA_HAS_SIGMA_KIND) {
        st = sched_read_sigma_kind(&k->b, cfg, &karras, &exponential, err, err_size);
        if (st != LH_OK) return st;
    }
    k->opts = (ksigma_opts){.kind = karras        ? KSIGMA_KARRAS
                                    : exponential ? KSIGMA_EXPONENTIAL
                                                  : KSIGMA_INTERP,
                            .sigma_min = NAN,
                            .sigma_max = NAN};
    k->begin = k->cur = -1;

    int64_t n = k->b.num_train_timesteps;
    /* diffusers keeps the last alpha_bar just above 0 so the first sigma is finite */
    if (zsnr) k->b.alphas_cumprod[n - 1] = ldexpf(1.0f, -24);
    k->train_sigmas = host->calloc((size_t)n, sizeof *k->train_sigmas);
    k->log_sigmas = host->calloc((size_t)n, sizeof *k->log_sigmas);
    if (!k->train_sigmas || !k->log_sigmas)
        return sched_fail(err, err_size, LH_ERR_NOMEM, "%s: out of memory", id);
    sched_train_sigmas(&k->b, k->train_sigmas);
    for (int64_t i = 0; i < n; i++) k->log_sigmas[i] = (double)logf((float)k->train_sigmas[i]);
    return LH_OK;
}

void ksigma_free(ksigma *k) {
    const lh_host_api *h = k->b.host;
    if (!h) return;
    h->free(k->train_sigmas);
    h->free(k->log_sigmas);
    k->train_sigmas = k->log_sigmas = NULL;
    sched_base_free(&k->b);
}

/* ---- Schedule ---- */

lh_status ksigma_set_timesteps(ksigma *k, int32_t n, char *err, size_t err_size) {
    int64_t train = k->b.num_train_timesteps;
    const ksigma_opts *o = &k->opts;
    lh_status st = sched_check_steps(&k->b, n, train < KSIGMA_MAX_STEPS ? train : KSIGMA_MAX_STEPS,
                                     err, err_size);
    if (st != LH_OK) return st;
    sched_spaced_timesteps(&k->b, k->ts, n, 0);

    int32_t m = n; /* sigmas before the final one */
    if (o->log_linear) {
        float log_sig[KSIGMA_MAX_STEPS + 1];
        m = n + 1;
        sched_linspace_f32(log_sig, logf((float)k->train_sigmas[train - 1]),
                           logf((float)k->train_sigmas[0]), m);
        for (int32_t i = 0; i < m; i++) k->sig[i] = expf(log_sig[i]);
    } else {
        for (int32_t i = 0; i < n; i++) k->sig[i] = sched_interp(k->ts[i], k->train_sigmas, train);
    }
    if (o->kind != KSIGMA_INTERP) {
        double lo = isnan(o->sigma_min) ? k->sig[m - 1] : o->sigma_min;
        double hi = isnan(o->sigma_max) ? k->sig[0] : o->sigma_max;
        if (o->kind == KSIGMA_KARRAS)
            sched_karras_sigmas(k->sig, n, lo, hi);
        else
            sched_exponential_sigmas(k->sig, n, lo, hi);
        m = n;
        for (int32_t i = 0; i < n; i++)
            k->ts[i] = (float)sched_sigma_to_t(k->sig[i], k->log_sigmas, train);
    }
    k->sig[m] = o->final_sigma_min ? k->train_sigmas[0] : 0.0;
    k->n_sig = m + 1;
    for (int32_t i = 0; i < k->n_sig; i++) k->sig[i] = (float)k->sig[i];

    k->n_ts = n;
    if (o->continuous && k->b.prediction_type == SCHED_PRED_V) {
        k->n_ts = k->n_sig - 1;
        for (int32_t i = 0; i < k->n_ts; i++) k->ts[i] = 0.25f * logf((float)k->sig[i]);
    }
    k->begin = k->cur = -1;
    return LH_OK;
}

lh_status ksigma_check_index(const ksigma *k, int32_t index, char *err, size_t err_size) {
    if (k->n_ts == 0)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: set_timesteps was not called",
                          k->b.id);
    return sched_check_index(&k->b, "index", index, k->n_ts, err, err_size);
}

/* ---- Descriptor callbacks ---- */

lh_status ksigma_set_begin_index(void *state, int32_t index, char *err, size_t err_size) {
    ksigma *k = state;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st == LH_OK) k->begin = index;
    return st;
}

int32_t ksigma_timesteps(void *state, const double **out) {
    ksigma *k = state;
    *out = k->ts;
    return k->n_ts;
}

int32_t ksigma_sigmas(void *state, const double **out) {
    ksigma *k = state;
    *out = k->sig;
    return k->n_sig;
}

double ksigma_init_noise_sigma(void *state) {
    const ksigma *k = state;
    /* before set_timesteps diffusers holds the full training schedule */
    const double *v = k->n_sig ? k->sig : k->train_sigmas;
    int64_t n = k->n_sig ? k->n_sig : k->b.num_train_timesteps;
    float max = 0.0f;
    for (int64_t i = 0; i < n; i++)
        if ((float)v[i] > max) max = (float)v[i];
    return sched_sigma_init_noise(&k->b, max);
}

lh_status ksigma_scale_model_input(void *state, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size) {
    ksigma *k = state;
    lh_status st = ksigma_check_index(k, index, err, err_size);
    if (st != LH_OK) return st;
    k->cur = index;
    return sched_sigma_scale_input(&k->b, out, sample, (float)k->sig[index], err, err_size);
}

lh_status ksigma_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                           const lh_tensor *noise, double timestep, char *err, size_t err_size) {
    ksigma *k = state;
    int32_t index;
    if (k->begin < 0) {
        /* timesteps from sigma_to_t can differ from diffusers' in the last
         * float32 bits (numpy's float32 log is not correctly rounded), so a
         * timestep matches within 1e-6 relative */
        index = sched_find_timestep(k->ts, k->n_ts, timestep, 1e-6);
        if (index < 0)
            return sched_fail(err, err_size, LH_ERR_INVALID,
                              "%s: add_noise: timestep %g is not in the schedule (%d steps set)",
                              k->b.id, timestep, k->n_ts);
    } else {
        /* img2img (before the first step) or inpainting (after it) */
        index = k->cur >= 0 ? k->cur : k->begin;
    }
    if (index >= k->n_sig)
        return sched_fail(err, err_size, LH_ERR_INVALID, "%s: add_noise after the last step",
                          k->b.id);
    lh_status st = k->b.host->tensor_axpby(out, 1.0, original, (float)k->sig[index], noise);
    return st == LH_OK ? st : sched_host_fail(&k->b, st, "add_noise", err, err_size);
}
