/* Integer timestep spacing and add_noise of the alpha-bar schedulers
 * (DDPMScheduler, PNDMScheduler, LCMScheduler), float32 like diffusers. */
#include "sched_alphabar.h"

#include <math.h>

lh_status sched_int_timesteps(const sched_base *b, double *out, int32_t n, char *err,
                              size_t err_size) {
    int64_t train = b->num_train_timesteps;
    if (b->spacing == SCHED_SPACING_LINSPACE) {
        /* np.linspace(0, train - 1, n).round()[::-1] */
        sched_linspace(out, 0.0, (double)(train - 1), n);
        for (int32_t i = 0; i < n / 2; i++) {
            double tmp = out[i];
            out[i] = out[n - 1 - i];
            out[n - 1 - i] = tmp;
        }
        for (int32_t i = 0; i < n; i++) out[i] = nearbyint(out[i]);
    } else if (b->spacing == SCHED_SPACING_LEADING) {
        int64_t ratio = train / n;
        for (int32_t i = 0; i < n; i++)
            out[i] = (double)((int64_t)(n - 1 - i) * ratio + b->steps_offset);
    } else {
        double ratio = (double)train / n;
        for (int32_t i = 0; i < n; i++) out[i] = nearbyint((double)train - i * ratio) - 1.0;
    }
    for (int32_t i = 0; i < n; i++)
        if (out[i] < 0 || out[i] >= (double)train)
            return sched_fail(err, err_size, LH_ERR_INVALID,
                              "%s: timestep %g of %d steps outside 0..%lld (check steps_offset)",
                              b->id, out[i], n, (long long)train - 1);
    return LH_OK;
}

lh_status sched_alphabar_add_noise(const sched_base *b, lh_tensor *out, const lh_tensor *original,
                                   const lh_tensor *noise, double timestep, char *err,
                                   size_t err_size) {
    if (!(timestep >= 0 && timestep < (double)b->num_train_timesteps) ||
        timestep != floor(timestep))
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "%s: add_noise timestep %g is not an integer in 0..%lld", b->id, timestep,
                          (long long)b->num_train_timesteps - 1);
    float a = b->alphas_cumprod[(int64_t)timestep];
    lh_status st = b->host->tensor_axpby(out, sqrtf(a), original, sqrtf(1.0f - a), noise);
    return st == LH_OK ? st : sched_host_fail(b, st, "add_noise", err, err_size);
}
