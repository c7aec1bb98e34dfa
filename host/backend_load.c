/* lh_backend_create: "cpu", or the cuda module dlopen'ed on first use
 * (RTLD_LOCAL: its CUDA libraries stay private to it). The module stays
 * loaded for the life of the process: backends it made may outlive the
 * call, and CUDA does not like being unloaded. */
#include "backend_load.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODULE "lh_backend_cuda.so"

typedef lh_status (*cuda_create_fn)(lh_backend **out, int device, char *err, size_t err_size);
typedef uint32_t (*cuda_abi_fn)(void);

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static cuda_create_fn g_create;

static void put(char *err, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put(char *err, size_t size, const char *fmt, ...) {
    if (!err || !size) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

/* <dir of liblorahost>/lorahost/backends */
static void beside_library(char *out, size_t size) {
    Dl_info info;
    out[0] = 0;
    char lib[PATH_MAX];
    if (!dladdr((void *)lh_backend_create, &info) || !info.dli_fname ||
        !realpath(info.dli_fname, lib))
        return;
    char *slash = strrchr(lib, '/');
    if (!slash) return;
    *slash = 0;
    snprintf(out, size, "%s/lorahost/backends", lib);
}

static cuda_create_fn load_cuda(char *err, size_t size) {
    pthread_mutex_lock(&g_mu);
    cuda_create_fn fn = g_create;
    if (fn) {
        pthread_mutex_unlock(&g_mu);
        return fn;
    }
    char dirs[3][PATH_MAX];
    const char *env = getenv("LORAHOST_BACKEND_PATH");
    snprintf(dirs[0], sizeof dirs[0], "%s", env ? env : "");
    beside_library(dirs[1], sizeof dirs[1]);
    snprintf(dirs[2], sizeof dirs[2], "%s", LH_BACKEND_INSTALL_DIR);
    char tried[1024] = "", last[512] = "";
    for (int i = 0; i < 3 && !fn; i++) {
        if (!dirs[i][0]) continue;
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/%s", dirs[i], MODULE);
        size_t n = strlen(tried);
        snprintf(tried + n, sizeof tried - n, "%s%s", n ? ", " : "", dirs[i]);
        if (access(path, R_OK)) continue;
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) { /* e.g. libcudart, libcublas or libcudnn missing */
            snprintf(last, sizeof last, "%s", dlerror());
            continue;
        }
        cuda_abi_fn abi = (cuda_abi_fn)(uintptr_t)dlsym(h, "lh_backend_cuda_abi");
        uint32_t have = abi ? abi() : 0;
        if (have != lh_backend_abi()) {
            snprintf(last, sizeof last, "%s was built for backend ABI %u.%u, this lorahost has "
                     "%u.%u: rebuild or reinstall it", path, (unsigned)(have >> 16),
                     (unsigned)(have & 0xffff), (unsigned)(lh_backend_abi() >> 16),
                     (unsigned)(lh_backend_abi() & 0xffff));
            break; /* the first module found is the one asked for: no silent fallback */
        }
        fn = (cuda_create_fn)(uintptr_t)dlsym(h, "lh_backend_cuda_create");
        if (!fn) snprintf(last, sizeof last, "%s: no lh_backend_cuda_create", path);
    }
    g_create = fn;
    pthread_mutex_unlock(&g_mu);
    if (!fn && last[0]) put(err, size, "cuda backend: cannot load it: %s", last);
    else if (!fn)
        put(err, size,
            "cuda backend: " MODULE " not found (looked in %s); this lorahost was built without "
            "CUDA, or set LORAHOST_BACKEND_PATH", tried);
    return fn;
}

lh_status lh_backend_create(lh_backend **out, const char *device, int threads, char *err,
                            size_t err_size) {
    *out = NULL;
    if (!device || !strcmp(device, "cpu")) return lh_backend_cpu_create(out, threads, err, err_size);
    int index = 0;
    if (!strncmp(device, "cuda", 4) && (device[4] == 0 || device[4] == ':')) {
        if (device[4] == ':') {
            char *end;
            long v = strtol(device + 5, &end, 10);
            if (end == device + 5 || *end || v < 0 || v > 1024) {
                put(err, err_size, "device '%s': expected cuda or cuda:N", device);
                return LH_ERR_INVALID;
            }
            index = (int)v;
        }
        cuda_create_fn fn = load_cuda(err, err_size);
        if (!fn) return LH_ERR_UNSUPPORTED;
        return fn(out, index, err, err_size);
    }
    put(err, err_size, "device '%s': unknown (cpu, cuda or cuda:N)", device);
    return LH_ERR_INVALID;
}

int lh_backend_host_memory(const lh_backend *be) { return !strcmp(be->ops->name, "cpu"); }
