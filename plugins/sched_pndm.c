/* PNDM scheduler plugin (diffusers PNDMScheduler): linear multistep (PLMS)
 * steps, started either by a Runge-Kutta warm-up (PRK: 12 model calls for
 * the first 3 steps, skip_prk_steps = false) or by one Heun-like repeat of
 * the second timestep (skip_prk_steps = true, what SD pipelines use). Its
 * timesteps array therefore has n + 1 (PLMS) or n + 9 (PRK) entries. */
#include <math.h>

#include "lib/sched_alphabar.h"
#include "lib/sched_predict.h"

#define MAX_STEPS 1000
#define PRK_CALLS 12

typedef struct pndm {
    sched_base b;
    int skip_prk_steps;
    float final_alpha_cumprod;
    double ts[MAX_STEPS + PRK_CALLS];
    int32_t n, count; /* inference steps, entries in ts */
    int32_t n_prk;    /* leading PRK entries of ts (0 or 12) */
    int32_t begin, counter; /* diffusers' counter: steps taken since begin */
    lh_tensor *ets[4];      /* past model outputs, newest first */
    int32_t n_ets;
    lh_tensor *cur_sample, *cur_output; /* sample and output sum of the running step */
    lh_tensor *eps;                     /* scratch */
} pndm;

static const char *const KEYS[] = {SCHED_BASE_KEYS, "skip_prk_steps", "set_alpha_to_one", NULL};
static const char *const ALIASES[] = {"PLMS", NULL};

static void destroy(void *p) {
    pndm *s = p;
    if (!s) return;
    const lh_host_api *h = s->b.host;
    for (int i = 0; i < 4; i++) h->tensor_free(s->ets[i]);
    h->tensor_free(s->cur_sample);
    h->tensor_free(s->cur_output);
    h->tensor_free(s->eps);
    sched_base_free(&s->b);
    h->free(s);
}

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    pndm *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    static const sched_defaults defaults = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    int set_alpha_to_one = 0, rescale = 0;
    lh_status st = sched_base_init(&s->b, host, "pndm", cfg, &defaults, err, err_size);
    if (st == LH_OK)
        st = host->config_bool(cfg, "skip_prk_steps", 0, &s->skip_prk_steps, err, err_size);
    if (st == LH_OK)
        st = host->config_bool(cfg, "set_alpha_to_one", 0, &set_alpha_to_one, err, err_size);
    if (st == LH_OK) st = sched_read_zero_snr(&s->b, cfg, 0, &rescale, err, err_size);
    if (st == LH_OK) st = sched_refuse_sample_prediction(&s->b, err, err_size);
    if (st == LH_OK) s->final_alpha_cumprod = set_alpha_to_one ? 1.0f : s->b.alphas_cumprod[0];
    return sched_finish_create(out, s, st, destroy);
}

static void reset(pndm *s) {
    s->counter = 0;
    s->n_ets = 0;
}

static lh_status set_timesteps(void *p, int32_t n, char *err, size_t err_size) {
    pndm *s = p;
    int64_t train = s->b.num_train_timesteps;
    double t[MAX_STEPS]; /* diffusers' _timesteps, descending here */
    s->n = s->count = 0;
    lh_status st = sched_check_steps(&s->b, n, train < MAX_STEPS ? train : MAX_STEPS, err,
                                     err_size);
    if (st == LH_OK && !s->skip_prk_steps && n < 4)
        st = sched_fail(err, err_size, LH_ERR_INVALID,
                        "pndm: the PRK warm-up (skip_prk_steps = false) needs at least 4 steps, "
                        "got %d",
                        n);
    if (st == LH_OK) st = sched_int_timesteps(&s->b, t, n, err, err_size);
    if (st != LH_OK) return st;

    int32_t k = 0;
    if (s->skip_prk_steps) {
        /* t0, t1, t1, t2, ..., t_{n-1}: the second timestep is evaluated twice */
        s->n_prk = 0;
        for (int32_t i = 0; i < n; i++) {
            s->ts[k++] = t[i];
            if (i == 1) s->ts[k++] = t[i];
        }
    } else {
        /* RK4 over the first 3 steps: t, t - h, t - h, t - 2h for each,
         * with h half a step, then one PLMS step per remaining timestep */
        double half = (double)(train / n / 2);
        for (int32_t i = 0; i < 3; i++) {
            s->ts[k++] = t[i];
            s->ts[k++] = t[i + 1] + half;
            s->ts[k++] = t[i + 1] + half;
            s->ts[k++] = t[i + 1];
        }
        s->n_prk = k;
        for (int32_t i = 3; i < n; i++) s->ts[k++] = t[i];
    }
    s->n = n;
    s->count = k;
    s->begin = 0;
    reset(s);
    return LH_OK;
}

static lh_status set_begin_index(void *p, int32_t k, char *err, size_t err_size) {
    pndm *s = p;
    lh_status st = sched_check_index(&s->b, "begin index", k, s->count, err, err_size);
    if (st != LH_OK) return st;
    s->begin = k;
    reset(s);
    return LH_OK;
}

static int32_t timesteps(void *p, const double **out) {
    pndm *s = p;
    *out = s->ts;
    return s->count;
}

/* Append a model output to the history (newest first, at most 4 kept). */
static lh_status push_ets(pndm *s, const lh_tensor *model_output, char *err, size_t err_size) {
    lh_tensor *oldest = s->ets[3];
    for (int i = 3; i > 0; i--) s->ets[i] = s->ets[i - 1];
    s->ets[0] = oldest;
    if (s->n_ets < 4) s->n_ets++;
    return sched_keep(&s->b, &s->ets[0], model_output, err, err_size);
}

/* diffusers' _get_prev_sample (PNDM paper, eq. 9): prev = x_{t_prev} from x_t
 * and the (combined) model output, in float32 like diffusers. */
static lh_status prev_sample(pndm *s, lh_tensor *prev, const lh_tensor *sample,
                             const lh_tensor *model_output, int64_t t, int64_t t_prev, char *err,
                             size_t err_size) {
    const lh_host_api *h = s->b.host;
    if (t < 0 || t >= s->b.num_train_timesteps || t_prev >= s->b.num_train_timesteps)
        return sched_fail(err, err_size, LH_ERR_INTERNAL,
                          "pndm: step from timestep %lld to %lld leaves 0..%lld", (long long)t,
                          (long long)t_prev, (long long)s->b.num_train_timesteps - 1);
    float a_t = s->b.alphas_cumprod[t];
    float a_prev = t_prev >= 0 ? s->b.alphas_cumprod[t_prev] : s->final_alpha_cumprod;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    lh_status st = LH_OK;
    if (s->b.prediction_type == SCHED_PRED_V) {
        /* diffusers steps with the epsilon that v implies */
        st = sched_scratch(&s->b, &s->eps, sample, err, err_size);
        if (st == LH_OK)
            st = sched_predict_eps(&s->b, s->eps, model_output, sample, sqrtf(a_t), sqrtf(b_t),
                                   err, err_size);
        if (st != LH_OK) return st;
        model_output = s->eps;
    }
    float sample_coeff = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float output_coeff = (a_prev - a_t) / denom;
    st = h->tensor_axpby(prev, sample_coeff, sample, -output_coeff, model_output);
    return st == LH_OK ? st : sched_host_fail(&s->b, st, "step", err, err_size);
}

/* One of the 12 Runge-Kutta calls (diffusers counts them from the first
 * step taken, whatever the begin index). */
static lh_status step_prk(pndm *s, lh_tensor *prev, const lh_tensor *model_output, double t,
                          const lh_tensor *sample, char *err, size_t err_size) {
    const lh_host_api *h = s->b.host;
    int32_t k = s->counter;
    int64_t half = s->b.num_train_timesteps / s->n / 2;
    int64_t t_prev = (int64_t)t - (k % 2 ? 0 : half);
    int64_t t_start = (int64_t)s->ts[k / 4 * 4]; /* diffusers: prk_timesteps[counter // 4 * 4] */
    lh_status st = LH_OK;
    const lh_tensor *out = model_output;
    switch (k % 4) {
    case 0:
        st = sched_scratch(&s->b, &s->cur_output, sample, err, err_size);
        if (st == LH_OK) st = h->tensor_axpby(s->cur_output, 1.0 / 6.0, model_output, 0.0, NULL);
        if (st == LH_OK) st = push_ets(s, model_output, err, err_size);
        if (st == LH_OK) st = sched_keep(&s->b, &s->cur_sample, sample, err, err_size);
        break;
    case 1:
    case 2:
        st = h->tensor_axpby(s->cur_output, 1.0, s->cur_output, 1.0 / 3.0, model_output);
        break;
    default: /* the RK4 combination of the four slopes */
        st = h->tensor_axpby(s->cur_output, 1.0, s->cur_output, 1.0 / 6.0, model_output);
        out = s->cur_output;
        break;
    }
    if (st != LH_OK) return sched_host_fail(&s->b, st, "step", err, err_size);
    return prev_sample(s, prev, s->cur_sample, out, t_start, t_prev, err, err_size);
}

/* A linear multistep step over the kept model outputs. */
static lh_status step_plms(pndm *s, lh_tensor *prev, const lh_tensor *model_output, double t,
                           const lh_tensor *sample, char *err, size_t err_size) {
    const lh_host_api *h = s->b.host;
    int64_t ratio = s->b.num_train_timesteps / s->n;
    int64_t t_cur = (int64_t)t, t_prev = t_cur - ratio;
    lh_status st = LH_OK;
    if (s->counter == 1) {
        /* the repeat of the second timestep corrects the first step */
        t_prev = t_cur;
        t_cur += ratio;
    } else {
        st = push_ets(s, model_output, err, err_size);
        if (st != LH_OK) return st;
    }
    st = sched_scratch(&s->b, &s->eps, sample, err, err_size);
    if (st != LH_OK) return st;
    lh_tensor *const *e = s->ets;
    if (s->n_ets == 1 && s->counter == 0) {
        st = sched_keep(&s->b, &s->cur_sample, sample, err, err_size);
        if (st == LH_OK) st = h->tensor_copy(s->eps, model_output);
    } else if (s->n_ets == 1 && s->counter == 1) {
        st = h->tensor_axpby(s->eps, 0.5, model_output, 0.5, e[0]);
        sample = s->cur_sample;
    } else if (s->n_ets == 2) {
        st = h->tensor_axpby(s->eps, 1.5, e[0], -0.5, e[1]);
    } else if (s->n_ets == 3) {
        const double c[3] = {23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0};
        st = h->tensor_lincomb(s->eps, 3, c, (const lh_tensor *const *)e);
    } else {
        const double c[4] = {55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0};
        st = h->tensor_lincomb(s->eps, 4, c, (const lh_tensor *const *)e);
    }
    if (st != LH_OK) return sched_host_fail(&s->b, st, "step", err, err_size);
    return prev_sample(s, prev, sample, s->eps, t_cur, t_prev, err, err_size);
}

static lh_status step(void *p, lh_tensor *prev, const lh_tensor *model_output, int32_t index,
                      const lh_tensor *sample, lh_rng *rng, char *err, size_t err_size) {
    pndm *s = p;
    lh_status st = sched_check_index(&s->b, "step index", index, s->count, err, err_size);
    if (st != LH_OK) return st;
    if (index != s->begin + s->counter)
        return sched_fail(err, err_size, LH_ERR_INVALID,
                          "pndm: steps must be taken in order: expected index %d, got %d",
                          s->begin + s->counter, index);
    double t = s->ts[index];
    st = s->counter < s->n_prk ? step_prk(s, prev, model_output, t, sample, err, err_size)
                               : step_plms(s, prev, model_output, t, sample, err, err_size);
    if (st == LH_OK) s->counter++;
    return st;
}

static const lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, "pndm", "1.0.0",
                           "PNDM / PLMS (diffusers PNDMScheduler), optional PRK warm-up",
                           ALIASES),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = set_begin_index,
    .timesteps = timesteps,
    .init_noise_sigma = sched_unit_init_noise_sigma,
    .scale_model_input = sched_identity_scale_model_input,
    .step = step,
    .add_noise = alphabar_add_noise,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
