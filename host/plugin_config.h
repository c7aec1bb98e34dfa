/* The key/value configuration a plugin instance is created with (the
 * concrete lh_config of plugin.h). Values are kept as text; the typed getters
 * parse them and mark the key used, so the host can reject unknown keys. */
#ifndef LH_HOST_PLUGIN_CONFIG_H
#define LH_HOST_PLUGIN_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

/* owner names the plugin in messages ("ddim"). */
LH_API lh_config *lh_config_create(const char *owner, lh_error *err);
LH_API void lh_config_destroy(lh_config *cfg);
/* Set or replace key; `origin` says where it came from ("scheduler_config.json",
 * "file.ini:12", "--set"), for messages. */
LH_API lh_status lh_config_set(lh_config *cfg, const char *key, const char *value,
                               const char *origin, lh_error *err);
/* Add every member of a JSON object text (numbers, strings, booleans, arrays;
 * null members are skipped, as diffusers treats them as unset). */
LH_API lh_status lh_config_set_json(lh_config *cfg, const char *json_text, const char *origin,
                                    lh_error *err);
LH_API size_t lh_config_count(const lh_config *cfg);
LH_API const char *lh_config_key_at(const lh_config *cfg, size_t i);
/* The first key nobody read (keys starting with '_' are free), or NULL. */
const char *lh_config_first_unused(const lh_config *cfg);
/* Fails naming the first key nobody read (keys starting with '_' are free). */
LH_API lh_status lh_config_check_used(const lh_config *cfg, lh_error *err);

/* The host-services getters (see lh_host_api in plugin.h). */
LH_API const char *lh_config_string(const lh_config *cfg, const char *key);
LH_API lh_status lh_config_double(const lh_config *cfg, const char *key, double fallback, double *out,
                           char *err, size_t err_size);
LH_API lh_status lh_config_int(const lh_config *cfg, const char *key, int64_t fallback, int64_t *out,
                        char *err, size_t err_size);
LH_API lh_status lh_config_bool(const lh_config *cfg, const char *key, int fallback, int *out, char *err,
                         size_t err_size);
LH_API lh_status lh_config_doubles(const lh_config *cfg, const char *key, double *out, size_t cap,
                            size_t *count, char *err, size_t err_size);

#endif
