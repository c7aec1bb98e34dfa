/* Sinusoidal timestep embedding, exactly diffusers' get_timestep_embedding
 * (scale 1) in its float32 arithmetic: exponent_i = -ln(max_period) * i /
 * (half - shift), freq_i = exp(exponent_i), arg = t * freq_i; [sin | cos],
 * swapped to [cos | sin] by flip_sin_to_cos; a zero column pads odd dims. */
#include "cpu.h"

lh_status lh__cpu_timestep_embedding(lh_backend *be, float *out, const float *timesteps,
                                     int64_t n, int64_t dim, int flip_sin_to_cos,
                                     float downscale_freq_shift, float max_period) {
    (void)be;
    int64_t total;
    if (n < 0 || dim < 0 || !(max_period > 0.0f) || !isfinite(downscale_freq_shift))
        return LH_ERR_INVALID;
    if (!lh__mul2(&total, n, dim) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !timesteps) return LH_ERR_INVALID;
    int64_t half = dim / 2;
    /* torch divides by the Python float (half - shift) cast to float32 */
    float denom = (float)((double)half - (double)downscale_freq_shift);
    if (half > 0 && denom == 0.0f) return LH_ERR_INVALID;
    float neg_log = (float)(-log((double)max_period));
    for (int64_t r = 0; r < n; r++) {
        float t = timesteps[r];
        float *row = out + r * dim;
        float *sin_part = row + (flip_sin_to_cos ? half : 0);
        float *cos_part = row + (flip_sin_to_cos ? 0 : half);
        for (int64_t i = 0; i < half; i++) {
            float exponent = (neg_log * (float)i) / denom;
            float arg = t * expf(exponent);
            sin_part[i] = sinf(arg);
            cos_part[i] = cosf(arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
    return LH_OK;
}
