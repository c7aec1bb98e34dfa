/* torch.nn.GroupNorm over [n, c, hw] (optionally fused with SiLU): mean,
 * then biased variance in a second pass, both accumulated in double; eps
 * inside the square root. One (image, group) per task. */
#include "cpu.h"
#include "norm_stats.h"

/* One group: `cg` channels of `hw` values starting at channel c0. */
LH_HOT static void group_norm_one(float *out, const float *x, const float *gamma,
                                  const float *beta, int64_t c0, int64_t cg, int64_t hw,
                                  float eps, int silu) {
    int64_t len = cg * hw;
    double sum = 0.0;
    for (int64_t ch = 0; ch < cg; ch++) sum += lh__sum_f32(x + ch * hw, hw);
    double mean = sum / (double)len, sq = 0.0;
    for (int64_t ch = 0; ch < cg; ch++) sq += lh__sumsq_dev_f32(x + ch * hw, hw, mean);
    float rstd = (float)(1.0 / sqrt(sq / (double)len + (double)eps));
    float mf = (float)mean;
    for (int64_t ch = 0; ch < cg; ch++) {
        float a = rstd * gamma[c0 + ch], b = beta[c0 + ch];
        const float *xs = x + ch * hw;
        float *os = out + ch * hw;
        if (silu) {
            for (int64_t i = 0; i < hw; i++) {
                float y = (xs[i] - mf) * a + b;
                os[i] = y / (1.0f + lh__expf(-y));
            }
        } else {
            for (int64_t i = 0; i < hw; i++) os[i] = (xs[i] - mf) * a + b;
        }
    }
}

lh_status lh__cpu_group_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                             const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups,
                             float eps, int silu) {
    int64_t total;
    if (n < 0 || c < 0 || hw < 0 || groups < 1 || c % groups != 0 || !(eps >= 0.0f))
        return LH_ERR_INVALID;
    if (!lh__mul3(&total, n, c, hw) || !lh__bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !gamma || !beta) return LH_ERR_INVALID;
    int64_t cg = c / groups, tasks = n * groups;
    int threads = lh__cpu_threads(be);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (total > LH_CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t img = t / groups, g = t % groups;
        int64_t off = (img * c + g * cg) * hw;
        group_norm_one(out + off, x + off, gamma, beta, g * cg, cg, hw, eps, silu);
    }
    return LH_OK;
}
