/* diffusers.optimization schedules: the lr_lambda functions of
 * get_scheduler, term for term in double as Python evaluates them, so the
 * lr of every step is bit-identical to LambdaLR's base_lr * lr_lambda(k). */
#include <math.h>
#include <string.h>

#include "error.h"
#include "lr_schedule.h"

static const char *const KIND_NAMES[LH_LR_COUNT] = {
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
};

const char *lh_lr_kind_name(lh_lr_kind kind) {
    return (unsigned)kind < LH_LR_COUNT ? KIND_NAMES[kind] : NULL;
}

lh_status lh_lr_schedule_check(const lh_lr_schedule *s, lh_error *err) {
    if (!s) return lh_error_set(err, LH_ERR_INVALID, "lr schedule: NULL schedule");
    if ((unsigned)s->kind >= LH_LR_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "lr schedule: kind %d out of range", (int)s->kind);
    const char *name = KIND_NAMES[s->kind];
    if (!(s->base_lr >= 0.0) || !isfinite(s->base_lr))
        return lh_error_set(err, LH_ERR_INVALID, "lr schedule %s: invalid learning rate %g", name,
                            s->base_lr);
    if (s->warmup_steps < 0 || s->training_steps < 0)
        return lh_error_set(err, LH_ERR_INVALID,
                            "lr schedule %s: step counts must be >= 0, got warmup %lld, "
                            "training %lld",
                            name, (long long)s->warmup_steps, (long long)s->training_steps);
    if ((s->kind == LH_LR_COSINE || s->kind == LH_LR_COSINE_WITH_RESTARTS) &&
        !(isfinite(s->num_cycles) && s->num_cycles >= 0.0))
        return lh_error_set(err, LH_ERR_INVALID, "lr schedule %s: invalid num_cycles %g", name,
                            s->num_cycles);
    if (s->kind == LH_LR_POLYNOMIAL) {
        if (!(s->base_lr > s->lr_end))
            return lh_error_set(err, LH_ERR_INVALID,
                                "lr schedule polynomial: lr_end (%g) must be smaller than the "
                                "initial lr (%g)",
                                s->lr_end, s->base_lr);
        if (s->training_steps <= s->warmup_steps)
            return lh_error_set(err, LH_ERR_INVALID,
                                "lr schedule polynomial: training steps (%lld) must exceed "
                                "warmup steps (%lld)",
                                (long long)s->training_steps, (long long)s->warmup_steps);
        if (!isfinite(s->power))
            return lh_error_set(err, LH_ERR_INVALID, "lr schedule polynomial: invalid power %g",
                                s->power);
    }
    return LH_OK;
}

lh_status lh_lr_schedule_init(lh_lr_schedule *out, const char *name, double base_lr,
                              int64_t warmup_steps, int64_t training_steps, lh_error *err) {
    if (!out) return lh_error_set(err, LH_ERR_INVALID, "lr schedule: NULL output");
    if (!name) return lh_error_set(err, LH_ERR_INVALID, "lr schedule: NULL name");
    int kind = -1;
    for (int k = 0; k < LH_LR_COUNT; k++)
        if (!strcmp(name, KIND_NAMES[k])) kind = k;
    if (kind < 0)
        return lh_error_set(err, LH_ERR_INVALID,
                            "lr schedule: unknown name '%s' (expected constant, "
                            "constant_with_warmup, linear, cosine, cosine_with_restarts or "
                            "polynomial)",
                            name);
    lh_lr_schedule s = {
        .kind = (lh_lr_kind)kind,
        .base_lr = base_lr,
        .warmup_steps = warmup_steps,
        .training_steps = training_steps,
        .num_cycles = kind == LH_LR_COSINE ? 0.5 : 1.0,
        .power = 1.0,
        .lr_end = 1e-7,
    };
    lh_status st = lh_lr_schedule_check(&s, err);
    if (st != LH_OK) return st;
    *out = s;
    return LH_OK;
}

static double max1(int64_t x) { return (double)(x > 1 ? x : 1); }
static double max0(double x) { return 0.0 >= x ? 0.0 : x; } /* Python max(0.0, x) */

double lh_lr_schedule_factor(const lh_lr_schedule *s, int64_t step) {
    int64_t warm = s->warmup_steps, total = s->training_steps;
    double k = (double)step;
    if (s->kind == LH_LR_CONSTANT) return 1.0;
    if (step < warm) return k / max1(warm); /* every warmup (linear: f_max 1.0 * k) */
    double progress = (double)(step - warm) / max1(total - warm);
    switch (s->kind) {
    case LH_LR_CONSTANT_WITH_WARMUP:
        return 1.0;
    case LH_LR_LINEAR: /* f_min + (f_max - f_min) * max(0, p) with f_min 0, f_max 1 */
        return 0.0 + 1.0 * max0((double)(total - step) / max1(total - warm));
    case LH_LR_COSINE:
        return max0(0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress)));
    case LH_LR_COSINE_WITH_RESTARTS:
        if (progress >= 1.0) return 0.0;
        return max0(0.5 * (1.0 + cos(M_PI * fmod(s->num_cycles * progress, 1.0))));
    case LH_LR_POLYNOMIAL: {
        double lr_init = s->base_lr;
        if (step > total) return s->lr_end / lr_init;
        double lr_range = lr_init - s->lr_end;
        double pct_remaining = 1.0 - (double)(step - warm) / (double)(total - warm);
        return (lr_range * pow(pct_remaining, s->power) + s->lr_end) / lr_init;
    }
    default:
        return 1.0;
    }
}

double lh_lr_schedule_lr(const lh_lr_schedule *s, int64_t step) {
    return s->base_lr * lh_lr_schedule_factor(s, step);
}
