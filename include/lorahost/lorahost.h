/* lorahost public C API: the library the `lorahost` program, the server and
 * embedding applications call. Plugins need only lorahost/plugin.h. */
#ifndef LORAHOST_H
#define LORAHOST_H

#include "lorahost/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LH_VERSION_MAJOR 0
#define LH_VERSION_MINOR 1
#define LH_VERSION_PATCH 0
#define LH_VERSION_STRING "0.1.0"

/* Text for a status code ("malformed input", ...). Never NULL. */
LH_API const char *lh_strerror(lh_status code);

/* Library version string, e.g. "0.1.0". */
LH_API const char *lh_version(void);

#ifdef __cplusplus
}
#endif

#endif
