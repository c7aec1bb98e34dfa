/* Plugin registry and instances: find .so plugins, check their ABI, and
 * create scheduler and safety-checker instances from them. */
#ifndef LORAHOST_REGISTRY_H
#define LORAHOST_REGISTRY_H

#include <stddef.h>

#include "lorahost/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lh_error;
typedef struct lh_registry lh_registry;
typedef struct lh_instance lh_instance;

#define LH_PLUGIN_PATH_ENV "LORAHOST_PLUGIN_PATH"

LH_API lh_status lh_registry_create(lh_registry **out, struct lh_error *err);
/* Unloads every plugin; instances must be destroyed first. */
LH_API void lh_registry_destroy(lh_registry *reg);

/* Load every *.so in `dirs` (in order), then the directories listed in
 * $LORAHOST_PLUGIN_PATH (':'-separated) if use_env, then the built-in plugin
 * directories if use_builtin. The first plugin to claim a (kind, id) wins.
 * A refused plugin is logged and recorded as a diagnostic; scanning goes on.
 * A directory that does not exist is skipped (a diagnostic if it was named
 * explicitly). Returns an error only for out-of-memory. */
LH_API lh_status lh_registry_scan(lh_registry *reg, const char *const *dirs, size_t n_dirs,
                                  int use_env, int use_builtin, struct lh_error *err);
/* Load one plugin file; returns the refusal as an error. */
LH_API lh_status lh_registry_load_file(lh_registry *reg, const char *path, struct lh_error *err);

/* Loaded descriptors, in load order. */
LH_API size_t lh_registry_count(const lh_registry *reg);
LH_API const lh_plugin_info *lh_registry_get(const lh_registry *reg, size_t i,
                                             const char **path);
/* By id or alias (aliases compare case-insensitively); NULL if none. */
LH_API const lh_plugin_info *lh_registry_find(const lh_registry *reg, lh_plugin_kind kind,
                                              const char *name);
/* Messages about plugins that were refused or skipped, in order. */
LH_API size_t lh_registry_diagnostic_count(const lh_registry *reg);
LH_API const char *lh_registry_diagnostic(const lh_registry *reg, size_t i);
/* The built-in plugin directory next to the program or library (for messages). */
LH_API const char *lh_registry_builtin_dir(void);

LH_API const char *lh_plugin_kind_name(lh_plugin_kind kind);

/* Create a scheduler or safety-checker instance of plugin `name` with `cfg`
 * (may be NULL for no settings). Keys in cfg that the plugin did not read are
 * an error naming the key and plugin. If the plugin's create fails, its file
 * is unloaded from the registry (the host carries on without it). */
LH_API lh_status lh_instance_create(lh_instance **out, lh_registry *reg, lh_plugin_kind kind,
                                    const char *name, lh_config *cfg, struct lh_error *err);
LH_API void lh_instance_destroy(lh_instance *inst);
LH_API const lh_plugin_info *lh_instance_info(const lh_instance *inst);
/* The plugin's own state pointer, for calling the descriptor's functions. */
LH_API void *lh_instance_state(const lh_instance *inst);

#ifdef __cplusplus
}
#endif

#endif
