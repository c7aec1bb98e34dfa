/* Learning-rate schedules as diffusers.optimization.get_scheduler builds them
 * (LambdaLR over the optimizer's base lr). Host-private (train/);
 * LH_API only so the test suite can link them, as in host/adapter.h. */
#ifndef LH_TRAIN_LR_SCHEDULE_H
#define LH_TRAIN_LR_SCHEDULE_H

#include <stdint.h>

#include "lorahost/lorahost.h"

typedef enum lh_lr_kind {
    LH_LR_CONSTANT,
    LH_LR_CONSTANT_WITH_WARMUP,
    LH_LR_LINEAR,               /* warmup, then linear decay to 0 */
    LH_LR_COSINE,               /* warmup, then half a cosine (num_cycles 0.5) */
    LH_LR_COSINE_WITH_RESTARTS, /* warmup, then num_cycles hard-restarted cosines */
    LH_LR_POLYNOMIAL,           /* warmup, then (1 - progress)^power down to lr_end */
    LH_LR_COUNT
} lh_lr_kind;

typedef struct lh_lr_schedule {
    lh_lr_kind kind;
    double base_lr;         /* the optimizer's lr (LambdaLR base_lr) */
    int64_t warmup_steps;   /* num_warmup_steps */
    int64_t training_steps; /* num_training_steps */
    double num_cycles;      /* cosine: 0.5; cosine_with_restarts: get_scheduler's 1 */
    double power;           /* polynomial: 1.0 */
    double lr_end;          /* polynomial: 1e-7 */
} lh_lr_schedule;

/* Fill *out for the diffusers name ("constant", "constant_with_warmup",
 * "linear", "cosine", "cosine_with_restarts", "polynomial") with
 * get_scheduler's defaults for the other fields; change num_cycles, power
 * or lr_end afterwards if wanted, then call lh_lr_schedule_check. Errors:
 * unknown name, negative step counts, polynomial with base_lr <= lr_end or
 * training_steps <= warmup_steps (diffusers divides by their difference). */
LH_API lh_status lh_lr_schedule_init(lh_lr_schedule *out, const char *name, double base_lr,
                                     int64_t warmup_steps, int64_t training_steps, lh_error *err);
LH_API lh_status lh_lr_schedule_check(const lh_lr_schedule *s, lh_error *err);

/* "linear", ...; NULL for a value outside the enum. */
LH_API const char *lh_lr_kind_name(lh_lr_kind kind);

/* The LambdaLR multiplier lr_lambda(step), in diffusers' double arithmetic. */
LH_API double lh_lr_schedule_factor(const lh_lr_schedule *s, int64_t step);

/* The lr that optimizer step `step` (0-based: the number of optimizer steps
 * already taken) uses: base_lr * lr_lambda(step). diffusers' scripts call
 * optimizer.step() and then lr_scheduler.step(), so the first update uses
 * lr_lambda(0) (0 during warmup) and update k uses lr_lambda(k). With
 * accelerate on P processes the scripts scale both step counts by P and the
 * scheduler advances P times per update; pass those scaled counts and
 * step * P to reproduce that. */
LH_API double lh_lr_schedule_lr(const lh_lr_schedule *s, int64_t step);

#endif
