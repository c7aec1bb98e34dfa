/* Integer timestep spacing, schedule callbacks and add_noise of the
 * alpha-bar schedulers (DDIMScheduler, DDPMScheduler, PNDMScheduler,
 * LCMScheduler), float32 like diffusers. */
#include "sched_alphabar.h"

#include <math.h>

lh_status sched_int_timesteps(const sched_base *b, double *out, int32_t n, char *err,
                              size_t err_size) {
    int64_t train = b->num_train_timesteps;
    sched_spaced_timesteps(b, out, n, 1);
    for (int32_t i = 0; i < n; i++)
        if (out[i] < 0 || out[i] >= (double)train)
            return sched_fail(err, err_size, LH_ERR_INVALID,
                              "%s: timestep %g of %d steps outside 0..%lld (check steps_offset)",
                              b->id, out[i], n, (long long)train - 1);
    return LH_OK;
}

/* ---- Descriptor callbacks ---- */

lh_status alphabar_set_timesteps(void *state, int32_t n, char *err, size_t err_size) {
    alphabar_sched *a = state;
    int64_t train = a->b.num_train_timesteps;
    int64_t limit = train < ALPHABAR_MAX_STEPS ? train : ALPHABAR_MAX_STEPS;
    lh_status st = sched_check_steps(&a->b, n, limit, err, err_size);
    if (st == LH_OK) st = sched_int_timesteps(&a->b, a->ts, n, err, err_size);
    a->n = st == LH_OK ? n : 0;
    return st;
}

lh_status alphabar_set_begin_index(void *state, int32_t k, char *err, size_t err_size) {
    alphabar_sched *a = state;
    return sched_check_index(&a->b, "begin index", k, a->n, err, err_size);
}

int32_t alphabar_timesteps(void *state, const double **out) {
    alphabar_sched *a = state;
    *out = a->ts;
    return a->n;
}

lh_status alphabar_add_noise(void *state, lh_tensor *out, const lh_tensor *original,
                             const lh_tensor *noise, double timestep, char *err, size_t err_size) {
    const sched_base *b = state;
    if (!(timestep >= 0 && timestep < (double)b->num_train_timesteps) ||
        timestep != floor(timestep))
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: add_noise timestep %g is not an integer in 0..%lld", b->id, timestep,
                          (long long)b->num_train_timesteps - 1);
    float a = b->alphas_cumprod[(int64_t)timestep];
    lh_status st = b->host->tensor_axpby(out, sqrtf(a), original, sqrtf(1.0f - a), noise);
    return st == LH_OK ? st : sched_host_fail(b, st, "add_noise", err, err_size);
}
