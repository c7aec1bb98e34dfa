/* libFuzzer target for the server's request bodies: the first byte picks
 * the parser (POST /generate, A1111's txt2img or img2img), the rest is the
 * body. A body is either accepted, with sane parameters, or refused with a
 * 400-class JSON error; nothing else (no crash, no leak). Build and run:
 * see CMakeLists.txt. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    static lh_server s; /* only the options and defaults are read */
    static int init;
    if (!init) {
        lh_server_opts_init(&s.o);
        s.o.max_pixels = 1024 * 1024;
        lh_gen_params_init(&s.defaults);
        init = 1;
    }
    int kind = data[0] % 3;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    lh__gen_req r;
    memset(&r, 0, sizeof r);
    lh__reply rep;
    memset(&rep, 0, sizeof rep);
    int rc = kind == 0 ? lh__gen_req_parse(&r, &s, body, len, &rep)
                       : lh__sdapi_parse(&r, &s, body, len, kind == 2, &rep);
    if (rc == 0) {
        CHECK(!rep.body);
        CHECK(r.p.steps >= 1 && r.p.steps <= LH_PIPELINE_MAX_STEPS);
        CHECK(r.p.width * r.p.height * r.p.batch_size <= s.o.max_pixels);
        CHECK(r.n_adapters <= LH__SRV_MAX_REQ_ADAPTERS);
        CHECK(kind != 2 || r.init_rgb);
        lh__gen_req_free(&r);
    } else {
        CHECK(rep.body && rep.len && (rep.status == 400 || rep.status == 500));
        CHECK(!strncmp(rep.body, "{\"error\":", 9));
    }
    free(rep.body);
    return 0;
}
