/* lorahost public C API: the library the `lorahost` program, the server and
 * embedding applications call. Plugins need only lorahost/plugin.h. */
#ifndef LORAHOST_H
#define LORAHOST_H

#include "lorahost/plugin.h"
#include "lorahost/safetensors.h"
#include "lorahost/registry.h"
#include "lorahost/scheduler.h"
#include "lorahost/config.h"
#include "lorahost/adapters.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LH_VERSION_MAJOR 0
#define LH_VERSION_MINOR 1
#define LH_VERSION_PATCH 0
#define LH_VERSION_STRING "0.1.0"

/* Every API call that can fail takes an lh_error (may be NULL) and returns 0
 * or a negative lh_status; the message names the file, key or field at fault. */
#define LH_ERROR_MAX 1024
typedef struct lh_error {
    lh_status code;
    char msg[LH_ERROR_MAX];
} lh_error;

/* Text for a status code ("malformed input", ...). Never NULL. */
LH_API const char *lh_strerror(lh_status code);

/* Library version string, e.g. "0.1.0". */
LH_API const char *lh_version(void);

#ifdef __cplusplus
}
#endif

#endif
