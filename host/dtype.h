/* Encodings shared inside the host: the dtype table and the float
 * conversions are public (lorahost/safetensors.h); UTF-8 checking is here. */
#ifndef LH_HOST_DTYPE_H
#define LH_HOST_DTYPE_H

#include <stddef.h>

#include "lorahost/safetensors.h"

/* Offset of the first byte of s[0..n) that is not well-formed UTF-8
 * (overlong forms, surrogates and code points past U+10FFFF included), or n
 * when all of it is. */
size_t lh__utf8_check(const char *s, size_t n);

#endif
