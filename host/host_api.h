/* The host-services table handed to every plugin instance. */
#ifndef LH_HOST_HOST_API_H
#define LH_HOST_HOST_API_H

#include "lorahost/lorahost.h"

/* The process-wide table; never NULL. */
LH_API const lh_host_api *lh_host_api_get(void);

/* Bind `be` (a backend whose memory is not the host's; NULL: none) to the
 * calling thread: until the next bind, plugins' tensor_new makes F32
 * tensors in its memory and their ops run there (host_api.c). Returns the
 * previous binding, to restore. */
struct lh_backend;
LH_API struct lh_backend *lh_host_api_bind(struct lh_backend *be);

#endif
