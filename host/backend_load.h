/* Choosing a compute backend by name: "cpu" (built in), "cuda" or "cuda:N"
 * (the separately built module lh_backend_cuda.so, loaded on first use, so
 * lorahost runs where the CUDA libraries are absent). */
#ifndef LH_HOST_BACKEND_LOAD_H
#define LH_HOST_BACKEND_LOAD_H

#include <stddef.h>

#include "../kernels/backend.h"
#include "lorahost/lorahost.h"

/* The backend for `device` ("cpu": `threads` CPU threads, 0 = all). The
 * cuda module is looked for in $LORAHOST_BACKEND_PATH, then in
 * lorahost/backends beside liblorahost, then in the install prefix. A
 * missing module, missing CUDA libraries or no device is LH_ERR_UNSUPPORTED
 * with the reason in err. */
LH_API lh_status lh_backend_create(lh_backend **out, const char *device, int threads, char *err,
                                   size_t err_size);

/* Whether the backend's memory is host memory that host code and plugins
 * may read and write directly (the cpu backend), rather than a device's. */
LH_API int lh_backend_host_memory(const lh_backend *be);

#endif
