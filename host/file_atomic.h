/* Files that are either whole or absent: written to `<path>.tmp.<pid>` in
 * the same directory, fsync'd, renamed over path, and the directory fsync'd
 * so the rename survives a crash. Used for images, plots and anything else
 * a run must not leave half-written. */
#ifndef LH_HOST_FILE_ATOMIC_H
#define LH_HOST_FILE_ATOMIC_H

#include <stddef.h>

#include "error.h"

/* Write buf [n] to path atomically. On failure the temporary file is
 * removed and an existing file at path is left as it was. */
LH_API lh_status lh_write_file_atomic(const char *path, const void *buf, size_t n,
                                      lh_error *err);

#endif
