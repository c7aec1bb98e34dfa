/* The host log: one line per message on stderr, "[level] source: text". */
#include "log.h"

#include <stdio.h>
#include <string.h>

static const char *const LEVEL_NAMES[LH_LOG_LEVEL_COUNT] = {"error", "warn", "info", "debug"};
static lh_log_level g_level = LH_LOG_INFO;

void lh_log_set_level(lh_log_level level) {
    if (level >= 0 && level < LH_LOG_LEVEL_COUNT) g_level = level;
}

int lh_log_level_parse(const char *name) {
    for (int i = 0; i < LH_LOG_LEVEL_COUNT; i++)
        if (name && !strcmp(name, LEVEL_NAMES[i])) return i;
    return -1;
}

void lh_logv(lh_log_level level, const char *source, const char *fmt, va_list ap) {
    if (level < 0 || level >= LH_LOG_LEVEL_COUNT || level > g_level) return;
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "[%s] %s: %s\n", LEVEL_NAMES[level], source ? source : "lorahost", line);
}

void lh_log(lh_log_level level, const char *source, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lh_logv(level, source, fmt, ap);
    va_end(ap);
}
