/* Model output to predicted x0 / epsilon, clip_sample, and the sigma-form
 * input scaling and ODE step, as host tensor operations in diffusers' order. */
#include "sched_predict.h"

#include <math.h>

/* ---- VP form ---- */

lh_status sched_predict_x0(const sched_base *b, lh_tensor *out, const lh_tensor *model_output,
                           const lh_tensor *sample, double alpha, double sigma, char *err,
                           size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st;
    switch (b->prediction_type) {
    case SCHED_PRED_EPSILON:
        st = h->tensor_axpby(out, 1.0 / alpha, sample, -sigma / alpha, model_output);
        break;
    case SCHED_PRED_SAMPLE:
        st = h->tensor_copy(out, model_output);
        break;
    default: /* v_prediction */
        st = h->tensor_axpby(out, alpha, sample, -sigma, model_output);
        break;
    }
    return st == LH_OK ? st : sched_host_fail(b, st, "predicted x0", err, err_size);
}

lh_status sched_predict_eps(const sched_base *b, lh_tensor *out, const lh_tensor *model_output,
                            const lh_tensor *sample, double alpha, double sigma, char *err,
                            size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st;
    switch (b->prediction_type) {
    case SCHED_PRED_EPSILON:
        st = h->tensor_copy(out, model_output);
        break;
    case SCHED_PRED_SAMPLE:
        st = h->tensor_axpby(out, 1.0 / sigma, sample, -alpha / sigma, model_output);
        break;
    default: /* v_prediction */
        st = h->tensor_axpby(out, alpha, model_output, sigma, sample);
        break;
    }
    return st == LH_OK ? st : sched_host_fail(b, st, "predicted noise", err, err_size);
}

/* ---- clip_sample ---- */

lh_status sched_clip_read(const sched_base *b, const lh_config *cfg, int default_on,
                          sched_clip *c, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st = h->config_bool(cfg, "clip_sample", default_on, &c->on, err, err_size);
    if (st == LH_OK) st = h->config_double(cfg, "clip_sample_range", 1.0, &c->range, err, err_size);
    if (st == LH_OK && !(c->range > 0.0))
        st = sched_fail(err, err_size, LH_ERR_CONFIG, "%s: clip_sample_range must be > 0, got %g",
                        b->id, c->range);
    return st;
}

lh_status sched_clip_apply(const sched_base *b, const sched_clip *c, lh_tensor *x0, char *err,
                           size_t err_size) {
    if (!c->on) return LH_OK;
    lh_status st = b->host->tensor_clamp(x0, x0, -c->range, c->range);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}

/* ---- Sigma form ---- */

lh_status sched_sigma_scale_input(const sched_base *b, lh_tensor *out, const lh_tensor *sample,
                                  float sigma, char *err, size_t err_size) {
    float denom = sqrtf(sigma * sigma + 1.0f);
    lh_status st = b->host->tensor_axpby(out, 1.0 / denom, sample, 0.0, NULL);
    return st == LH_OK ? st : sched_host_fail(b, st, "scale_model_input", err, err_size);
}

lh_status sched_sigma_x0(const sched_base *b, lh_tensor *x0, lh_tensor *tmp,
                         const lh_tensor *model_output, const lh_tensor *sample, float sigma,
                         char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st;
    switch (b->prediction_type) {
    case SCHED_PRED_EPSILON:
        st = h->tensor_axpby(tmp, sigma, model_output, 0.0, NULL);
        if (st == LH_OK) st = h->tensor_axpby(x0, 1.0, sample, -1.0, tmp);
        break;
    case SCHED_PRED_V: {
        float s2 = sigma * sigma + 1.0f;
        float c_out = -sigma / sqrtf(s2);
        st = h->tensor_axpby(x0, c_out, model_output, 0.0, NULL);
        if (st == LH_OK) st = h->tensor_axpby(tmp, 1.0 / s2, sample, 0.0, NULL);
        if (st == LH_OK) st = h->tensor_axpby(x0, 1.0, x0, 1.0, tmp);
        break;
    }
    default: /* sample */
        st = h->tensor_copy(x0, model_output);
        break;
    }
    return st == LH_OK ? st : sched_host_fail(b, st, "predicted x0", err, err_size);
}

lh_status sched_sigma_derivative(const sched_base *b, lh_tensor *d, const lh_tensor *sample,
                                 const lh_tensor *x0, float sigma, char *err, size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st = h->tensor_axpby(d, 1.0, sample, -1.0, x0);
    if (st == LH_OK) st = h->tensor_axpby(d, 1.0 / sigma, d, 0.0, NULL);
    return st == LH_OK ? st : sched_host_fail(b, st, "derivative", err, err_size);
}

lh_status sched_add_scaled(const sched_base *b, lh_tensor *out, lh_tensor *tmp,
                           const lh_tensor *x, const lh_tensor *y, float c, char *err,
                           size_t err_size) {
    const lh_host_api *h = b->host;
    lh_status st = h->tensor_axpby(tmp, c, y, 0.0, NULL);
    if (st == LH_OK) st = h->tensor_axpby(out, 1.0, x, 1.0, tmp);
    return st == LH_OK ? st : sched_host_fail(b, st, "step", err, err_size);
}
