/* Schedulers as the host uses them: a user's name (plugin id, plugin alias,
 * diffusers class name or A1111 sampler name such as "DPM++ 2M Karras")
 * resolved to a plugin plus config, built from a model's
 * scheduler_config.json, the [scheduler] settings and per-call overrides. */
#ifndef LORAHOST_SCHEDULER_H
#define LORAHOST_SCHEDULER_H

#include <stddef.h>

#include "lorahost/config.h"
#include "lorahost/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lh_error;
typedef struct lh_scheduler lh_scheduler;

/* A sampler name users know, mapped to a plugin and config overrides. */
typedef struct lh_sampler_name {
    const char *name;      /* "DPM++ 2M Karras" */
    const char *plugin;    /* "dpmsolver_multistep" */
    const char *overrides; /* "use_karras_sigmas=true", ';'-separated, or "" */
} lh_sampler_name;

/* The A1111 / ComfyUI names lorahost knows, NULL past the end. */
LH_API const lh_sampler_name *lh_sampler_name_at(size_t index);
/* The plugin id for a diffusers scheduler class ("EulerDiscreteScheduler"), or NULL. */
LH_API const char *lh_scheduler_for_class(const char *class_name);

typedef struct lh_scheduler_opts {
    /* Plugin id, alias, A1111 name, or NULL/"" for the model's own
     * (`_class_name` of the scheduler config). */
    const char *name;
    /* Path of a diffusers scheduler_config.json, or NULL. Its keys the plugin
     * does not list are ignored, as diffusers' from_config does. */
    const char *config_json;
    /* [scheduler] keys of these settings (may be NULL); any key the plugin
     * does not read is an error. */
    const lh_settings *settings;
    /* "key=value" overrides applied last (may be NULL). */
    const char *const *overrides;
    size_t n_overrides;
    /* The scheduler config as JSON text, used when config_json is NULL (a
     * single-file checkpoint's built-in defaults), or NULL; config_origin
     * names it in messages. */
    const char *config_text;
    const char *config_origin;
} lh_scheduler_opts;

LH_API lh_status lh_scheduler_open(lh_scheduler **out, lh_registry *reg,
                                   const lh_scheduler_opts *opts, struct lh_error *err);
LH_API void lh_scheduler_close(lh_scheduler *s);

LH_API const lh_scheduler_desc *lh_scheduler_descriptor(const lh_scheduler *s);
LH_API void *lh_scheduler_state(const lh_scheduler *s);
/* The plugin id and the name the user gave (for messages and PNG metadata). */
LH_API const char *lh_scheduler_id(const lh_scheduler *s);
LH_API const char *lh_scheduler_name(const lh_scheduler *s);

LH_API lh_status lh_scheduler_set_timesteps(lh_scheduler *s, int32_t steps, struct lh_error *err);
LH_API int32_t lh_scheduler_timesteps(const lh_scheduler *s, const double **out);
LH_API int32_t lh_scheduler_sigmas(const lh_scheduler *s, const double **out);
LH_API double lh_scheduler_init_noise_sigma(const lh_scheduler *s);

#ifdef __cplusplus
}
#endif

#endif
