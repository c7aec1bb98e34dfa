/* The host log: leveled messages to stderr (or a sink the server installs),
 * tagged with their source ("registry", a plugin id, ...). */
#ifndef LH_HOST_LOG_H
#define LH_HOST_LOG_H

#include <stdarg.h>

#include "lorahost/lorahost.h"

LH_API void lh_log(lh_log_level level, const char *source, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lh_logv(lh_log_level level, const char *source, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Messages above `level` are dropped. Default LH_LOG_INFO. */
LH_API void lh_log_set_level(lh_log_level level);
/* Parse "error", "warn", "info", "debug"; -1 if unknown. */
LH_API int lh_log_level_parse(const char *name);

#endif
