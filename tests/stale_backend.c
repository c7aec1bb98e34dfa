/* A cuda backend module built against another backend table (ABI 1): the
 * loader must refuse it with a message (tests/cli_generate.sh). */
#include <stddef.h>
#include <stdint.h>

__attribute__((visibility("default"))) uint32_t lh_backend_cuda_abi(void) { return 1u << 16 | 8u; }

__attribute__((visibility("default"))) int lh_backend_cuda_create(void **out, int device, char *err,
                                                                  size_t err_size) {
    (void)out, (void)device, (void)err, (void)err_size;
    return -1; /* never reached: the loader checks the ABI first */
}
