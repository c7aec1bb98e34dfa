/* The host-services table handed to every plugin instance. */
#ifndef LH_HOST_HOST_API_H
#define LH_HOST_HOST_API_H

#include "lorahost/lorahost.h"

/* The process-wide table; never NULL. */
LH_API const lh_host_api *lh_host_api_get(void);

#endif
