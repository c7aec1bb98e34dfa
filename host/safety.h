/* Safety-checker chains: the checkers named in [plugins] safety, created in
 * order from the registry with their settings sections ([safety_clip],
 * [safety_prompt_filter]; see lh_safety_section), run on the
 * prompt before any compute and on the decoded images after; the strongest
 * action any of them asks for is applied to each image in place (blur,
 * black; reject blacks the pixels and the caller writes nothing). Used by
 * `lorahost generate` and the server. docs/safety.md describes it. */
#ifndef LH_HOST_SAFETY_H
#define LH_HOST_SAFETY_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/config.h"
#include "lorahost/lorahost.h"

#define LH_SAFETY_MAX_CHECKERS 8

typedef enum lh_safety_stage {
    LH_SAFETY_STAGE_PROMPT = 0,
    LH_SAFETY_STAGE_IMAGE,
    LH_SAFETY_STAGE_COUNT
} lh_safety_stage;

/* One checker's verdict on the prompt or on one image. */
typedef struct lh_safety_entry {
    const char *checker;     /* plugin id; valid while the chain lives */
    int32_t stage;           /* lh_safety_stage */
    lh_safety_result result; /* checked: action in range, reason NUL-terminated,
                                concepts non-NULL (valid while the chain lives) */
} lh_safety_entry;

/* Every verdict on one prompt, or on one image (its prompt's entries first). */
typedef struct lh_safety_report {
    int32_t flagged;  /* 1 if any entry is flagged */
    int32_t action;   /* the strongest action of all entries (reject > black > blur > pass) */
    int32_t decider;  /* the entry that chose `action`, -1 if none flagged */
    int32_t n;
    lh_safety_entry entries[2 * LH_SAFETY_MAX_CHECKERS];
} lh_safety_report;

typedef struct lh_safety_chain lh_safety_chain;

/* The chain [plugins] safety names (ids or aliases, in order; "none" or an
 * empty list gives an empty chain), each checker created with the keys of
 * its settings section (lh_safety_section). Fails, naming the checker, if one is not loaded,
 * is named twice, or cannot be created (its message names the file). */
LH_API lh_status lh_safety_chain_create(lh_safety_chain **out, lh_registry *reg,
                                        const lh_settings *s, lh_error *err);
/* The same with the names given (a request's own list); s may be NULL. */
LH_API lh_status lh_safety_chain_create_names(lh_safety_chain **out, lh_registry *reg,
                                              const char *const *names, size_t n_names,
                                              const lh_settings *s, lh_error *err);
LH_API void lh_safety_chain_destroy(lh_safety_chain *c);
LH_API size_t lh_safety_chain_count(const lh_safety_chain *c);
LH_API const char *lh_safety_chain_id(const lh_safety_chain *c, size_t i);

/* Run every checker that looks at prompts, in order, into *report. LH_OK
 * whatever the verdict: the caller refuses when report->action is
 * LH_SAFETY_REJECT. A checker that fails is an error naming it. */
LH_API lh_status lh_safety_check_prompt(lh_safety_chain *c, const char *prompt,
                                        lh_safety_report *report, lh_error *err);

/* Run every checker that looks at images on rgb [n][height][width][3] and
 * fill reports[0..n): the prompt's entries (prompt_report, may be NULL)
 * then each checker's verdict on that image. Then apply each image's
 * strongest action in place: blur (a strong separable blur), black (all
 * zero), reject (all zero too; the caller must not write it out). */
LH_API lh_status lh_safety_check_images(lh_safety_chain *c, uint8_t *rgb, int64_t n,
                                        int64_t width, int64_t height, const char *prompt,
                                        const lh_safety_report *prompt_report,
                                        lh_safety_report *reports, lh_error *err);

/* The settings section of checker `id`: [<id>] when the id starts with
 * "safety_" (safety_clip, safety_prompt_filter), else [safety_<id>]. */
LH_API char *lh_safety_section(char *out, size_t size, const char *id);

/* "pass", "blur", "black", "reject" ("?" if out of range). */
LH_API const char *lh_safety_action_name(int action);

/* The report as one line for people:
 *   "prompt_filter: pass (en 0.00, zh 0.00); nsfw: blur, flagged (nsfw 0.91): why"
 * (each checker's action, flagged, its three top scores with concept names,
 * the reason). "no checkers" for an empty report. */
LH_API void lh_safety_report_line(char *out, size_t size, const lh_safety_report *r);

/* The report as JSON (malloc'd, NULL if out of memory), for the PNG chunk
 * "lorahost_safety" and the server:
 *   {"flagged": true, "action": "blur", "checkers": [{"checker": "nsfw",
 *    "stage": "image", "flagged": true, "action": "blur",
 *    "scores": {"nsfw": 0.91}, "reason": "..."}, ...]} */
LH_API char *lh_safety_report_json(const lh_safety_report *r);

/* Blur rgb [height][width][3] in place: three box passes per axis with a
 * radius of max(width, height) / 16 (at least 2), close to a Gaussian of
 * that sigma, so no detail survives. LH_ERR_NOMEM if scratch fails. */
LH_API lh_status lh_safety_blur(uint8_t *rgb, int64_t width, int64_t height, lh_error *err);

#endif
