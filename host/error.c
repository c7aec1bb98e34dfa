/* Status codes to text and the lh_error helpers. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *lh_strerror(lh_status code) {
    switch (code) {
    case LH_OK: return "ok";
    case LH_ERR_INVALID: return "invalid argument";
    case LH_ERR_IO: return "I/O error";
    case LH_ERR_FORMAT: return "malformed input";
    case LH_ERR_NOMEM: return "out of memory";
    case LH_ERR_NOT_FOUND: return "not found";
    case LH_ERR_UNSUPPORTED: return "unsupported";
    case LH_ERR_ABI: return "plugin ABI mismatch";
    case LH_ERR_OVERFLOW: return "size overflow";
    case LH_ERR_CONFIG: return "configuration error";
    case LH_ERR_PLUGIN: return "plugin error";
    case LH_ERR_BACKEND: return "backend error";
    case LH_ERR_NUMERIC: return "non-finite value";
    case LH_ERR_SHAPE: return "shape mismatch";
    case LH_ERR_BUSY: return "busy";
    case LH_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

/* Control characters (from names and values in the input) become '?', so
 * that every message is one line. */
static void one_line(char *msg) {
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

lh_status lh_error_set(lh_error *err, lh_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        one_line(err->msg);
        err->code = code;
    }
    return code;
}

lh_status lh_error_prefix(lh_error *err, const char *fmt, ...) {
    if (!err) return LH_ERR_INTERNAL;
    char head[LH_ERROR_MAX], old[LH_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", head, old);
    one_line(err->msg);
    return err->code;
}

void lh_error_clear(lh_error *err) {
    if (err) {
        err->code = LH_OK;
        err->msg[0] = '\0';
    }
}

const char *lh_version(void) { return LH_VERSION_STRING; }
