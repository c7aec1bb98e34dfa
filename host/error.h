/* Error reporting inside the host: a status code plus a message that names the
 * file, tensor, key or field at fault. Library code fills an lh_error and
 * returns the (negative) code; only main() decides to exit. */
#ifndef LH_HOST_ERROR_H
#define LH_HOST_ERROR_H

#include <stddef.h>

#include "lorahost/lorahost.h"

/* Fill err (may be NULL) with code and a printf-style message; returns code.
 * Control characters in the message become '?': every message is one line. */
lh_status lh_error_set(lh_error *err, lh_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Put "prefix: " in front of the message already in err; returns err->code. */
lh_status lh_error_prefix(lh_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void lh_error_clear(lh_error *err);

/* Overflow-checked size arithmetic: return 0 and store the result, or -1. */
static inline int lh_mul_size(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int lh_add_size(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

#endif
