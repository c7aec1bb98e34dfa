/* tests/cuda_emu: the emulated device (emu.h says what and why): half
 * conversions, device memory, the stream queue, events and graphs, the
 * fibers that run a block's threads, cuBLAS's strided batched GEMM and
 * cuDNN's convolutions. Single-threaded: the queue runs on the thread that
 * waits for it. x86-64 only (the fiber switch). */
#include "emu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include <deque>
#include <map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

/* ---- Half conversions ---- */
namespace emu {

unsigned short f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); /* rounds past 65504 */
    if (ax < 0x38800000u) {                                            /* a half subnormal */
        float v;
        memcpy(&v, &ax, 4);
        return (unsigned short)(sign | (uint32_t)nearbyintf(v * 16777216.0f));
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}

float f16_to_f32(unsigned short h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1f) x = sign | 0x7f800000u | (m << 13);
    else if (e) x = sign | ((e - 15 + 127) << 23) | (m << 13);
    else {
        float v = (float)m / 16777216.0f;
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

unsigned short f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}

float bf16_to_f32(unsigned short h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- Errors ---- */

static const char *g_kernel = "(host)"; /* the kernel running, for messages */

void trap(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda emulator: in %s: ", g_kernel);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

} // namespace emu

static cudaError_t g_last = cudaSuccess;
static cudaError_t set_err(cudaError_t e) {
    if (e != cudaSuccess) g_last = e;
    return e;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last; }

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    default: return "unknown error";
    }
}

/* ---- Device memory: poisoned (NaN bytes) when allocated, checked by the
 * copies and the libraries, kept poisoned a while after it is freed ---- */

namespace {
struct alloc_info {
    size_t bytes;
    int pinned;
};
std::map<uintptr_t, alloc_info> g_allocs;
size_t g_device_bytes, g_device_limit;
/* freed device memory, kept a while (poisoned) so that a late read shows;
 * freed for good when the module goes (LeakSanitizer then sees only what
 * the program itself never freed) */
struct quarantine {
    std::deque<std::pair<void *, size_t>> q;
    ~quarantine() {
        for (auto &e : q) free(e.first);
    }
} g_quarantine;
size_t g_quarantine_bytes;

size_t device_limit(void) {
    if (!g_device_limit) {
        const char *e = getenv("LH_EMU_DEVICE_MIB");
        g_device_limit = (size_t)(e ? atol(e) : 4096) << 20;
    }
    return g_device_limit;
}

/* the allocation holding [p, p + bytes), or NULL */
const alloc_info *find_alloc(const void *p, size_t bytes, uintptr_t *base) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return NULL;
    --it;
    if (a < it->first || a + bytes > it->first + it->second.bytes) return NULL;
    if (base) *base = it->first;
    return &it->second;
}

int is_device(const void *p, size_t bytes) {
    const alloc_info *a = find_alloc(p, bytes ? bytes : 1, NULL);
    return a && !a->pinned;
}
int is_pinned(const void *p, size_t bytes) {
    const alloc_info *a = find_alloc(p, bytes ? bytes : 1, NULL);
    return a && a->pinned;
}

void check_device(const void *p, size_t bytes, const char *what) {
    if (bytes && !is_device(p, bytes))
        emu::trap("%s: [%p, +%zu bytes) is not within one device allocation", what, p, bytes);
}
} // namespace

/* ---- The queue: stream work runs when the host waits ---- */

struct emu_graph {
    std::vector<std::function<void()>> nodes;
};
struct emu_graph_exec {
    std::vector<std::function<void()>> nodes;
};
struct emu_stream {
    unsigned flags;
    emu_graph *capture; /* recording into this */
    int invalid;        /* the recording failed */
};
struct emu_event {
    unsigned flags;
    int pending;  /* recorded, not yet run */
    int captured; /* recorded into a graph */
    double t;
};

namespace {
std::vector<std::function<void()>> g_queue;
int g_capturing; /* streams recording */

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void flush(void) {
    while (!g_queue.empty()) {
        std::vector<std::function<void()>> q;
        q.swap(g_queue);
        for (auto &f : q) f();
    }
}

/* Queue f on s (its recording, when s records); cudaErrorStreamCaptureInvalidated
 * for work on a stream whose recording failed. */
cudaError_t enqueue(cudaStream_t s, std::function<void()> f) {
    if (s && s->capture) {
        if (s->invalid) return cudaErrorStreamCaptureInvalidated;
        s->capture->nodes.push_back(std::move(f));
        return cudaSuccess;
    }
    g_queue.push_back(std::move(f));
    return cudaSuccess;
}

/* an operation a recording cannot hold, on s: the recording fails */
cudaError_t capture_refuses(cudaStream_t s) {
    s->invalid = 1;
    return set_err(cudaErrorStreamCaptureUnsupported);
}
} // namespace

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : set_err(cudaErrorInvalidDevice);
}

static int smem_optin(void) {
    const char *e = getenv("LH_EMU_SMEM_OPTIN"); /* sm_90: 227 KiB; sm_80: 163 KiB */
    return e ? atoi(e) : 232448;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0) return set_err(cudaErrorInvalidDevice);
    if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return set_err(cudaErrorInvalidValue);
    *value = smem_optin();
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    flush();
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = NULL;
    size_t round = (bytes + 255) / 256 * 256;
    if (!round) round = 256;
    if (g_device_bytes + round > device_limit()) return set_err(cudaErrorMemoryAllocation);
    /* 256-byte aligned as cudaMalloc's, and exactly `bytes` long, so that
     * AddressSanitizer (an instrumented build of the module) catches a
     * kernel's access one element past it */
    void *m = NULL;
    if (posix_memalign(&m, 256, bytes ? bytes : 1)) return set_err(cudaErrorMemoryAllocation);
    memset(m, 0xff, bytes);
    g_allocs[(uintptr_t)m] = alloc_info{bytes, 0};
    g_device_bytes += round;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    flush(); /* cudaFree waits for the device */
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second.pinned) return set_err(cudaErrorInvalidValue);
    size_t round = (it->second.bytes + 255) / 256 * 256;
    if (!round) round = 256;
    g_device_bytes -= round;
    memset(p, 0xff, it->second.bytes); /* a later read of it reads NaN */
    g_allocs.erase(it);
    g_quarantine.q.push_back({p, round});
    g_quarantine_bytes += round;
    while (g_quarantine_bytes > ((size_t)256 << 20)) {
        free(g_quarantine.q.front().first);
        g_quarantine_bytes -= g_quarantine.q.front().second;
        g_quarantine.q.pop_front();
    }
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = NULL;
    void *m = NULL;
    if (posix_memalign(&m, 256, bytes ? bytes : 1)) return set_err(cudaErrorMemoryAllocation);
    g_allocs[(uintptr_t)m] = alloc_info{bytes, 1};
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    flush();
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || !it->second.pinned) return set_err(cudaErrorInvalidValue);
    g_allocs.erase(it);
    free(p);
    return cudaSuccess;
}

static cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    int d_dev = is_device(dst, bytes), s_dev = is_device(src, bytes);
    int ok = kind == cudaMemcpyHostToDevice   ? d_dev && !s_dev
             : kind == cudaMemcpyDeviceToHost ? !d_dev && s_dev
             : kind == cudaMemcpyDeviceToDevice ? d_dev && s_dev
             : kind == cudaMemcpyDefault       ? 1
                                               : !d_dev && !s_dev;
    if (!ok)
        emu::trap("cudaMemcpy kind %d from %p to %p (%zu bytes): %s is not device memory", (int)kind,
                  src, dst, bytes,
                  (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) && !d_dev
                      ? "the destination"
                      : "the source");
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (!bytes) return cudaSuccess;
    check_copy(dst, src, bytes, kind);
    flush();
    memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    check_copy(dst, src, bytes, kind);
    int recording = s && s->capture;
    if (kind == cudaMemcpyHostToDevice && !is_pinned(src, bytes)) {
        /* pageable: taken now (the caller may reuse it on return) */
        if (recording) return capture_refuses(s);
        std::vector<unsigned char> copy((const unsigned char *)src,
                                        (const unsigned char *)src + bytes);
        return set_err(enqueue(s, [dst, copy]() { memcpy(dst, copy.data(), copy.size()); }));
    }
    if (kind == cudaMemcpyDeviceToHost && !is_pinned(dst, bytes)) {
        /* pageable: returns once copied */
        if (recording) return capture_refuses(s);
        flush();
        memcpy(dst, src, bytes);
        return cudaSuccess;
    }
    return set_err(enqueue(s, [dst, src, bytes]() { memcpy(dst, src, bytes); }));
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    check_device(dst, bytes, "cudaMemsetAsync");
    return set_err(enqueue(s, [dst, value, bytes]() { memset(dst, value, bytes); }));
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    *s = new emu_stream{flags, NULL, 0};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return set_err(cudaErrorInvalidResourceHandle);
    flush();
    if (s->capture) {
        delete s->capture;
        g_capturing--;
    }
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s && s->capture) return capture_refuses(s);
    flush();
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    *e = new emu_event{flags, 0, 0, 0.0};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    flush(); /* a queued record must not touch it after */
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    if (s && s->capture) {
        e->captured = 1;
        return set_err(enqueue(s, []() {}));
    }
    e->captured = 0;
    e->pending = 1;
    return set_err(enqueue(s, [e]() {
        e->t = now_s();
        e->pending = 0;
    }));
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    if (e->captured) return set_err(cudaErrorStreamCaptureUnsupported);
    flush();
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b || (a->flags & cudaEventDisableTiming) || (b->flags & cudaEventDisableTiming))
        return set_err(cudaErrorInvalidResourceHandle);
    if (a->pending || b->pending) return set_err(cudaErrorNotReady);
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void)mode;
    if (!s) return set_err(cudaErrorStreamCaptureUnsupported); /* the legacy stream */
    if (s->capture) return set_err(cudaErrorStreamCaptureUnsupported);
    s->capture = new emu_graph;
    s->invalid = 0;
    g_capturing++;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    *g = NULL;
    if (!s || !s->capture) return set_err(cudaErrorInvalidValue);
    emu_graph *graph = s->capture;
    s->capture = NULL;
    g_capturing--;
    if (s->invalid) {
        delete graph;
        return set_err(cudaErrorStreamCaptureInvalidated);
    }
    *g = graph;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    if (!g) return set_err(cudaErrorInvalidValue);
    *exec = new emu_graph_exec{g->nodes};
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return set_err(cudaErrorInvalidResourceHandle);
    return set_err(enqueue(s, [exec]() {
        for (auto &f : exec->nodes) f();
    }));
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    flush(); /* a queued launch must not run it after */
    delete exec;
    return cudaSuccess;
}

/* ---- Fibers: a block's threads ---- */

extern "C" void emu_switch(void **save_sp, void *to_sp);
__asm__(".text\n"
        ".globl emu_switch\n"
        ".hidden emu_switch\n"
        ".type emu_switch,@function\n"
        "emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size emu_switch,.-emu_switch\n");

namespace emu {
uint3 g_thread_idx, g_block_idx;
dim3 g_block_dim, g_grid_dim;
} // namespace emu

namespace {
const size_t STACK_BYTES = (size_t)256 << 10;
const int MAX_THREADS = 1024;

struct fiber {
    void *sp;
    uint3 tid;
    int linear, done;
};
struct warp_state {
    unsigned gen, arrived, mask;
    unsigned char slot[2][32][16];
};
struct block_state {
    int n, live, progress;
    unsigned gen, arrived;
    int acc, result;
    warp_state warps[MAX_THREADS / 32];
    unsigned exists[MAX_THREADS / 32]; /* lanes of each warp the block has */
    unsigned done[MAX_THREADS / 32];   /* lanes that returned */
    void *smem;
};

unsigned char *g_stacks;
fiber g_fibers[MAX_THREADS];
fiber *g_cur;
block_state g_blk;
void *g_sched_sp;
const std::function<void()> *g_body;
#ifdef EMU_ASAN
void *g_sched_fake;
const void *g_sched_bottom;
size_t g_sched_size;
#endif

unsigned char *stack_of(int i) { return g_stacks + (size_t)i * (STACK_BYTES + 4096) + 4096; }

void to_scheduler(int exiting) {
#ifdef EMU_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(exiting ? NULL : &fake, g_sched_bottom, g_sched_size);
    emu_switch(&g_cur->sp, g_sched_sp);
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#else
    (void)exiting;
    emu_switch(&g_cur->sp, g_sched_sp);
#endif
}

void fiber_main(void) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &g_sched_bottom, &g_sched_size);
#endif
    (*g_body)();
    g_cur->done = 1;
    g_blk.done[g_cur->linear >> 5] |= 1u << (g_cur->linear & 31);
    g_blk.live--;
    g_blk.progress = 1;
    to_scheduler(1);
    emu::trap("a finished thread was resumed");
}

void yield(void) { to_scheduler(0); }

void run_block(int n, size_t smem) {
    if (!g_stacks) {
        size_t total = (size_t)MAX_THREADS * (STACK_BYTES + 4096);
        void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) emu::trap("cannot map the fiber stacks");
        g_stacks = (unsigned char *)m;
        for (int i = 0; i < MAX_THREADS; i++) mprotect(stack_of(i) - 4096, 4096, PROT_NONE);
    }
    g_blk.n = g_blk.live = n;
    g_blk.gen = g_blk.arrived = 0;
    g_blk.acc = g_blk.result = 0;
    for (int w = 0; w < (n + 31) / 32; w++) {
        g_blk.warps[w].gen = g_blk.warps[w].arrived = 0;
        int lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        g_blk.exists[w] = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        g_blk.done[w] = 0;
    }
    /* exactly smem bytes (an instrumented build catches a read past them),
     * poisoned: NaN bytes */
    void *dyn = NULL;
    if (posix_memalign(&dyn, 128, smem ? smem : 1)) emu::trap("no memory for %zu bytes of shared memory", smem);
    memset(dyn, 0xff, smem);
    g_blk.smem = dyn;
    dim3 b = emu::g_block_dim;
    for (int i = 0; i < n; i++) {
        fiber &f = g_fibers[i];
        f.linear = i;
        f.tid = uint3{(unsigned)i % b.x, (unsigned)i / b.x % b.y, (unsigned)i / (b.x * b.y)};
        f.done = 0;
        uintptr_t *sp = (uintptr_t *)(stack_of(i) + STACK_BYTES);
        *--sp = 0;
        *--sp = (uintptr_t)fiber_main;
        for (int r = 0; r < 6; r++) *--sp = 0;
        f.sp = sp;
    }
    /* One warp at a time, its lanes in turn, until each waits at a
     * __syncthreads or has returned; then the next warp. Warps so drift
     * apart between block barriers as on a device, so a shared-memory
     * read missing its __syncthreads sees what is not yet (or no longer)
     * written. LH_EMU_WARP_ORDER=reverse runs the warps last to first (a
     * race whose writer is a later warp than its reader shows in one order
     * only). */
    static int reverse = -1;
    if (reverse < 0) {
        const char *e = getenv("LH_EMU_WARP_ORDER");
        reverse = e && !strcmp(e, "reverse");
    }
    int warps = (n + 31) / 32;
    while (g_blk.live > 0) {
        int any = 0;
        for (int k = 0; k < warps; k++) {
            int w = reverse ? warps - 1 - k : k;
            int lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
            do {
                g_blk.progress = 0;
                for (int i = lo; i < hi; i++) {
                    if (g_fibers[i].done) continue;
                    g_cur = &g_fibers[i];
                    emu::g_thread_idx = g_cur->tid;
#ifdef EMU_ASAN
                    __sanitizer_start_switch_fiber(&g_sched_fake, stack_of(i), STACK_BYTES);
                    emu_switch(&g_sched_sp, g_cur->sp);
                    __sanitizer_finish_switch_fiber(g_sched_fake, NULL, NULL);
#else
                    emu_switch(&g_sched_sp, g_cur->sp);
#endif
                }
                any |= g_blk.progress;
            } while (g_blk.progress);
        }
        if (!any && g_blk.live > 0)
            emu::trap("block (%u, %u, %u): %d threads wait at barriers no other thread reaches "
                      "(a __syncthreads or warp operation not reached by all)",
                      emu::g_block_idx.x, emu::g_block_idx.y, emu::g_block_idx.z, g_blk.live);
    }
    g_cur = NULL;
    free(dyn);
}

std::map<const void *, int> g_smem_attr;
} // namespace

static unsigned popcount32(unsigned m) {
    unsigned n = 0;
    for (; m; m &= m - 1) n++;
    return n;
}

namespace emu {

int lane(void) { return g_cur->linear & 31; }
void *dynamic_smem(void) { return g_blk.smem; }
long long clock64(void) { return (long long)(now_s() * 1e9); }
unsigned long long globaltimer(void) { return (unsigned long long)(now_s() * 1e9); }

int block_barrier(int pred) {
    if (!g_cur) trap("__syncthreads outside a kernel");
    unsigned gen = g_blk.gen;
    g_blk.arrived++;
    g_blk.acc |= pred;
    g_blk.progress = 1;
    for (;;) {
        if (g_blk.gen != gen) break;
        if ((int)g_blk.arrived == g_blk.live) { /* threads that returned count as arrived */
            g_blk.result = g_blk.acc;
            g_blk.acc = 0;
            g_blk.arrived = 0;
            g_blk.gen++;
            break;
        }
        yield();
    }
    return g_blk.result;
}

void warp_barrier(unsigned mask) {
    if (!g_cur) trap("a warp operation outside a kernel");
    int w = g_cur->linear >> 5, l = g_cur->linear & 31;
    warp_state &ws = g_blk.warps[w];
    if (!(mask >> l & 1u)) trap("thread %d calls a warp operation with mask %#x not naming its lane", g_cur->linear, mask);
    if (mask & ~g_blk.exists[w])
        trap("warp %d: mask %#x names lanes the block does not have (%#x)", w, mask, g_blk.exists[w]);
    if (ws.arrived == 0) ws.mask = mask;
    else if (ws.mask != mask)
        trap("warp %d: lanes meet at a warp operation with masks %#x and %#x", w, ws.mask, mask);
    unsigned gen = ws.gen, expected = popcount32(mask);
    ws.arrived++;
    g_blk.progress = 1;
    for (;;) {
        if (ws.gen != gen) break;
        if (ws.arrived == expected) {
            ws.arrived = 0;
            ws.gen++;
            break;
        }
        if (mask & g_blk.done[w])
            trap("warp %d: lanes %#x returned before a warp operation of mask %#x", w,
                 mask & g_blk.done[w], mask);
        yield();
    }
}

/* One barrier per exchange: the slots alternate with the barrier's
 * generation, and a lane can write the other set again only after the
 * next barrier, which every lane reaches after reading this one. */
void warp_exchange(unsigned mask, const void *mine, void *out, size_t bytes, int src) {
    int w = g_cur->linear >> 5;
    warp_state &ws = g_blk.warps[w];
    unsigned set = ws.gen & 1u;
    memcpy(ws.slot[set][g_cur->linear & 31], mine, bytes);
    warp_barrier(mask);
    if (!(mask >> src & 1u)) trap("warp %d: a shuffle reads lane %d, not in mask %#x", w, src, mask);
    memcpy(out, ws.slot[set][src], bytes);
}

void wmma_check(const void *p, unsigned ldm, size_t elem, const char *what) {
    if ((uintptr_t)p % 32) trap("%s: pointer %p is not 32-byte aligned", what, p);
    if ((ldm * elem) % 16) trap("%s: ldm %u is not a multiple of 16 bytes", what, ldm);
}

cudaError_t func_set_attribute(const void *fn, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return set_err(cudaErrorInvalidValue);
    if (value < 0 || value > smem_optin()) return set_err(cudaErrorInvalidValue);
    g_smem_attr[fn] = value;
    return cudaSuccess;
}

void enqueue_launch(const launch_cfg &c, std::function<void()> body) {
    dim3 g = c.grid, b = c.block;
    unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !threads || threads > 1024 || b.x > 1024 || b.y > 1024 ||
        b.z > 64 || g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
        set_err(cudaErrorInvalidConfiguration);
        return;
    }
    if (c.smem > 48 * 1024) {
        if (!c.fn) trap("%s: %zu bytes of dynamic shared memory from a kernel the emulator cannot name", c.name, c.smem);
        auto it = g_smem_attr.find(c.fn);
        if (it == g_smem_attr.end() || (size_t)it->second < c.smem) {
            set_err(cudaErrorInvalidValue); /* no opt-in for that much */
            return;
        }
    }
    launch_cfg cfg = c;
    cudaError_t e = enqueue(c.stream, [cfg, body]() {
        const char *saved = g_kernel;
        g_kernel = cfg.name;
        g_body = &body;
        g_grid_dim = cfg.grid;
        g_block_dim = cfg.block;
        int n = (int)(cfg.block.x * cfg.block.y * cfg.block.z);
        for (unsigned z = 0; z < cfg.grid.z; z++)
            for (unsigned y = 0; y < cfg.grid.y; y++)
                for (unsigned x = 0; x < cfg.grid.x; x++) {
                    g_block_idx = uint3{x, y, z};
                    run_block(n, cfg.smem);
                }
        g_kernel = saved;
    });
    set_err(e);
}

} // namespace emu

/* ---- cuBLAS ---- */

struct emu_blas {
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
};

static size_t dt_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }
static float load_dt(const void *p, cudaDataType t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    if (t == CUDA_R_16F) return emu::f16_to_f32(((const unsigned short *)p)[i]);
    return emu::bf16_to_f32(((const unsigned short *)p)[i]);
}
static void store_dt(void *p, cudaDataType t, size_t i, float v) {
    if (t == CUDA_R_32F) ((float *)p)[i] = v;
    else if (t == CUDA_R_16F) ((unsigned short *)p)[i] = emu::f32_to_f16(v);
    else ((unsigned short *)p)[i] = emu::f32_to_bf16(v);
}
static float tf32(float v) { /* round to nearest, 10 mantissa bits */
    uint32_t x;
    memcpy(&x, &v, 4);
    if ((x & 0x7f800000u) == 0x7f800000u) return v;
    x = (x + 0xfffu + ((x >> 13) & 1u)) & ~0x1fffu;
    memcpy(&v, &x, 4);
    return v;
}

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new emu_blas{NULL, NULL, 0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    flush();
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    (void)m;
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    check_device(ws, bytes, "cublasSetWorkspace");
    h->workspace = ws;
    h->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_EXECUTION_FAILED";
    }
}

/* the elements [0, last] of one operand over the batch must be in one allocation */
static void check_operand(const void *p, cudaDataType t, long long rows, long long cols, int ld,
                          long long stride, int batch, const char *what) {
    if (!rows || !cols || !batch) return;
    long long last = (rows - 1) + (cols - 1) * (long long)ld + (batch - 1) * stride;
    check_device(p, (size_t)(last + 1) * dt_size(t), what);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType at,
                                          int lda, long long sa, const void *B, cudaDataType bt,
                                          int ldb, long long sb, const void *beta, void *C,
                                          cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    int ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (ta ? (k > 1 ? k : 1) : (m > 1 ? m : 1)) ||
        ldb < (tb ? (n > 1 ? n : 1) : (k > 1 ? k : 1)) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    int half_ab = (at == CUDA_R_16F && bt == CUDA_R_16F) || (at == CUDA_R_16BF && bt == CUDA_R_16BF);
    int ok = compute == CUBLAS_COMPUTE_32F
                 ? (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F) ||
                       (half_ab && (ct == CUDA_R_32F || ct == at))
             : compute == CUBLAS_COMPUTE_32F_FAST_TF32
                 ? at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F
                 : 0;
    if (!ok) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!m || !n || !batch) return CUBLAS_STATUS_SUCCESS;
    float al = *(const float *)alpha, be = *(const float *)beta;
    if (k > 0 && al != 0.0f) {
        check_operand(A, at, ta ? k : m, ta ? m : k, lda, sa, batch, "cublasGemmStridedBatchedEx: A");
        check_operand(B, bt, tb ? n : k, tb ? k : n, ldb, sb, batch, "cublasGemmStridedBatchedEx: B");
    }
    check_operand(C, ct, m, n, ldc, sc, batch, "cublasGemmStridedBatchedEx: C");
    int round_tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    cudaError_t e = enqueue(h->stream, [=]() {
        /* op(A) as rows [m][k] and op(B) as columns [n][k], in double, so
         * that each element is a contiguous dot product */
        std::vector<double> ar((size_t)m * k), bc((size_t)n * k);
        for (int bi = 0; bi < batch; bi++) {
            const unsigned char *a = (const unsigned char *)A + (size_t)(bi * sa) * dt_size(at);
            const unsigned char *b = (const unsigned char *)B + (size_t)(bi * sb) * dt_size(bt);
            unsigned char *c = (unsigned char *)C + (size_t)(bi * sc) * dt_size(ct);
            if (al != 0.0f) {
                for (int i = 0; i < m; i++)
                    for (int l = 0; l < k; l++) {
                        float x = load_dt(a, at, ta ? (size_t)l + (size_t)i * lda
                                                    : (size_t)i + (size_t)l * lda);
                        ar[(size_t)i * k + l] = round_tf32 ? tf32(x) : x;
                    }
                for (int j = 0; j < n; j++)
                    for (int l = 0; l < k; l++) {
                        float y = load_dt(b, bt, tb ? (size_t)j + (size_t)l * ldb
                                                    : (size_t)l + (size_t)j * ldb);
                        bc[(size_t)j * k + l] = round_tf32 ? tf32(y) : y;
                    }
            }
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                    if (al != 0.0f) {
                        const double *x = &ar[(size_t)i * k], *y = &bc[(size_t)j * k];
                        int l = 0;
                        for (; l + 4 <= k; l += 4) {
                            s0 += x[l] * y[l];
                            s1 += x[l + 1] * y[l + 1];
                            s2 += x[l + 2] * y[l + 2];
                            s3 += x[l + 3] * y[l + 3];
                        }
                        for (; l < k; l++) s0 += x[l] * y[l];
                    }
                    size_t ci = (size_t)i + (size_t)j * ldc;
                    float v = (float)(al * ((s0 + s1) + (s2 + s3)));
                    if (be != 0.0f) v += be * load_dt(c, ct, ci);
                    store_dt(c, ct, ci, v);
                }
        }
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                            int m, int n, int k, const void *alpha, const void *A,
                            cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb,
                            const void *beta, void *C, cudaDataType ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(h, transa, transb, m, n, k, alpha, A, at, lda, 0, B, bt,
                                      ldb, 0, beta, C, ct, ldc, 0, 1, compute, algo);
}

/* ---- cuDNN ---- */

struct emu_dnn {
    cudaStream_t stream;
};
struct emu_tensor_desc {
    int set;
    cudnnDataType_t t;
    int n, c, h, w; /* a filter: k, c, h, w */
};
struct emu_conv_desc {
    int set;
    int pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnDataType_t compute;
    cudnnMathType_t math;
};

const char *cudnnGetErrorString(cudnnStatus_t s) {
    switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    default: return "CUDNN_STATUS_EXECUTION_FAILED";
    }
}
cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
    *h = new emu_dnn{NULL};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
    flush();
    delete h;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) {
    *d = new emu_tensor_desc{};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}
static int dnn_type_ok(cudnnDataType_t t) {
    return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
                                         cudnnDataType_t t, int n, int c, int h, int w) {
    if (!d || n <= 0 || c <= 0 || h <= 0 || w <= 0 || !dnn_type_ok(t)) return CUDNN_STATUS_BAD_PARAM;
    if (f != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED; /* the emulator's */
    *d = emu_tensor_desc{1, t, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) {
    return cudnnCreateTensorDescriptor(d);
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
    return cudnnDestroyTensorDescriptor(d);
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t,
                                         cudnnTensorFormat_t f, int k, int c, int h, int w) {
    return cudnnSetTensor4dDescriptor(d, f, t, k, c, h, w);
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) {
    *d = new emu_conv_desc{};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h,
                                              int pad_w, int u, int v, int dil_h, int dil_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
    if (!d || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0 ||
        !dnn_type_ok(compute))
        return CUDNN_STATUS_BAD_PARAM;
    if (mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_NOT_SUPPORTED; /* the emulator's */
    *d = emu_conv_desc{1, pad_h, pad_w, u, v, dil_h, dil_w, compute, CUDNN_DEFAULT_MATH};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

/* x, w, y consistent (y the convolution's output shape; one data type;
 * float32 compute) */
static cudnnStatus_t conv_shapes(const emu_tensor_desc *x, const emu_tensor_desc *w,
                                 const emu_conv_desc *c, const emu_tensor_desc *y) {
    if (!x || !w || !c || !y || !x->set || !w->set || !c->set || !y->set)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->t != w->t || x->t != y->t || c->compute != CUDNN_DATA_FLOAT) return CUDNN_STATUS_BAD_PARAM;
    int ho = (x->h + 2 * c->pad_h - c->dil_h * (w->h - 1) - 1) / c->u + 1;
    int wo = (x->w + 2 * c->pad_w - c->dil_w * (w->w - 1) - 1) / c->v + 1;
    if (x->n != y->n || x->c != w->c || y->c != w->n || y->h != ho || y->w != wo || ho <= 0 ||
        wo <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}

/* the emulator's algorithms: what each asks of the workspace (so the
 * caller's workspace handling runs) */
static size_t fwd_ws(int algo) { return algo == 1 ? 65536 : algo == 6 ? 4096 : 0; }
static size_t bwd_data_ws(int algo) { return algo == 1 ? 65536 : algo == 2 ? (1 << 20) : 0; }
static size_t bwd_filter_ws(int algo) { return algo == 1 ? 65536 : algo == 3 ? 32768 : 0; }

template <typename P, typename A>
static void fill_perf(P *perf, int requested, int *returned, const int (*rows)[3],
                      size_t (*ws)(int), int half) {
    int got = 0;
    for (int i = 0; i < 3 && got < requested; i++, got++) {
        memset(&perf[got], 0, sizeof perf[got]);
        perf[got].algo = (A)rows[i][0];
        perf[got].status = CUDNN_STATUS_SUCCESS;
        perf[got].time = -1.0f;
        perf[got].memory = ws(rows[i][0]);
        perf[got].determinism = rows[i][1] ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
        perf[got].mathType = rows[i][2] && half ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH;
    }
    *returned = got;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h, cudnnTensorDescriptor_t x,
                                                     cudnnFilterDescriptor_t w,
                                                     cudnnConvolutionDescriptor_t c,
                                                     cudnnTensorDescriptor_t y, int requested,
                                                     int *returned,
                                                     cudnnConvolutionFwdAlgoPerf_t *perf) {
    cudnnStatus_t s = h ? conv_shapes(x, w, c, y) : CUDNN_STATUS_NOT_INITIALIZED;
    if (s) return s;
    static const int rows[3][3] = {{1, 1, 1}, {6, 1, 0}, {0, 1, 0}}; /* algo, deterministic, tensor op */
    fill_perf<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(perf, requested, returned, rows, fwd_ws, x->t != CUDNN_DATA_FLOAT);
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t h, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t dx, int requested, int *returned,
    cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    cudnnStatus_t s = h ? conv_shapes(dx, w, c, dy) : CUDNN_STATUS_NOT_INITIALIZED;
    if (s) return s;
    static const int rows[3][3] = {{1, 1, 1}, {0, 0, 0}, {2, 1, 0}};
    fill_perf<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(perf, requested, returned, rows, bwd_data_ws, dx->t != CUDNN_DATA_FLOAT);
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t h, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t dw, int requested, int *returned,
    cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    cudnnStatus_t s = h ? conv_shapes(x, dw, c, dy) : CUDNN_STATUS_NOT_INITIALIZED;
    if (s) return s;
    static const int rows[3][3] = {{1, 1, 1}, {0, 0, 0}, {3, 1, 0}};
    fill_perf<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(perf, requested, returned, rows, bwd_filter_ws, x->t != CUDNN_DATA_FLOAT);
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h, cudnnTensorDescriptor_t x,
                                                      cudnnFilterDescriptor_t w,
                                                      cudnnConvolutionDescriptor_t c,
                                                      cudnnTensorDescriptor_t y,
                                                      cudnnConvolutionFwdAlgo_t algo,
                                                      size_t *bytes) {
    cudnnStatus_t s = h ? conv_shapes(x, w, c, y) : CUDNN_STATUS_NOT_INITIALIZED;
    if (!s) *bytes = fwd_ws(algo);
    return s;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t h, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t dx, cudnnConvolutionBwdDataAlgo_t algo,
    size_t *bytes) {
    cudnnStatus_t s = h ? conv_shapes(dx, w, c, dy) : CUDNN_STATUS_NOT_INITIALIZED;
    if (!s) *bytes = bwd_data_ws(algo);
    return s;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t h, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t dw,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t *bytes) {
    cudnnStatus_t s = h ? conv_shapes(x, dw, c, dy) : CUDNN_STATUS_NOT_INITIALIZED;
    if (!s) *bytes = bwd_filter_ws(algo);
    return s;
}

static float dnn_load(const void *p, cudnnDataType_t t, size_t i) {
    return load_dt(p, t == CUDNN_DATA_FLOAT ? CUDA_R_32F : t == CUDNN_DATA_HALF ? CUDA_R_16F : CUDA_R_16BF, i);
}
static void dnn_store(void *p, cudnnDataType_t t, size_t i, float v) {
    store_dt(p, t == CUDNN_DATA_FLOAT ? CUDA_R_32F : t == CUDNN_DATA_HALF ? CUDA_R_16F : CUDA_R_16BF, i, v);
}
static size_t dnn_bytes(const emu_tensor_desc *d) {
    return (size_t)d->n * d->c * d->h * d->w * (d->t == CUDNN_DATA_FLOAT ? 4 : 2);
}

enum { DIR_FWD, DIR_DATA, DIR_FILTER };

/* One direction of the convolution: the output is alpha * (the product) +
 * beta * output (not read when beta is 0). */
static cudnnStatus_t conv_run(cudnnHandle_t h, int dir, const void *alpha, const void *beta,
                              const emu_tensor_desc *xd, const void *x,
                              const emu_tensor_desc *wd, const void *w,
                              const emu_tensor_desc *yd, const void *y, void *out,
                              const emu_conv_desc *cd, size_t need, void *ws, size_t ws_bytes,
                              const char *what) {
    cudnnStatus_t s = h ? conv_shapes(xd, wd, cd, yd) : CUDNN_STATUS_NOT_INITIALIZED;
    if (s) return s;
    if (ws_bytes < need || (need && !ws)) return CUDNN_STATUS_BAD_PARAM;
    if (need) check_device(ws, need, what);
    if (dir != DIR_DATA) check_device(x, dnn_bytes(xd), what);
    if (dir != DIR_FILTER) check_device(w, dnn_bytes(wd), what);
    if (dir != DIR_FWD) check_device(y, dnn_bytes(yd), what);
    const emu_tensor_desc *od = dir == DIR_FWD ? yd : dir == DIR_DATA ? xd : wd;
    check_device(out, dnn_bytes(od), what);
    float al = *(const float *)alpha, be = *(const float *)beta;
    emu_tensor_desc X = *xd, W = *wd, Y = *yd;
    emu_tensor_desc O = *od; /* the descriptors may be destroyed before it runs */
    emu_conv_desc C = *cd;
    cudaError_t e = enqueue(h->stream, [=]() {
        size_t on = (size_t)O.n * O.c * O.h * O.w;
        std::vector<double> acc(on, 0.0);
        for (int n = 0; n < Y.n; n++)
            for (int k = 0; k < Y.c; k++)
                for (int p = 0; p < Y.h; p++)
                    for (int q = 0; q < Y.w; q++) {
                        size_t yi = (((size_t)n * Y.c + k) * Y.h + p) * Y.w + q;
                        double g = dir == DIR_FWD ? 0.0 : dnn_load(y, Y.t, yi);
                        double sum = 0.0;
                        for (int c = 0; c < X.c; c++)
                            for (int r = 0; r < W.h; r++) {
                                int hi = p * C.u - C.pad_h + r * C.dil_h;
                                if (hi < 0 || hi >= X.h) continue;
                                for (int t = 0; t < W.w; t++) {
                                    int wi = q * C.v - C.pad_w + t * C.dil_w;
                                    if (wi < 0 || wi >= X.w) continue;
                                    size_t xi = (((size_t)n * X.c + c) * X.h + hi) * X.w + wi;
                                    size_t fi = (((size_t)k * W.c + c) * W.h + r) * W.w + t;
                                    if (dir == DIR_FWD)
                                        sum += (double)dnn_load(x, X.t, xi) * dnn_load(w, W.t, fi);
                                    else if (dir == DIR_DATA)
                                        acc[xi] += g * dnn_load(w, W.t, fi);
                                    else
                                        acc[fi] += g * dnn_load(x, X.t, xi);
                                }
                            }
                        if (dir == DIR_FWD) acc[yi] = sum;
                    }
        for (size_t i = 0; i < on; i++) {
            float v = (float)(al * acc[i]);
            if (be != 0.0f) v += be * dnn_load(out, O.t, i);
            dnn_store(out, O.t, i, v);
        }
    });
    return e == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                      cudnnTensorDescriptor_t xd, const void *x,
                                      cudnnFilterDescriptor_t wd, const void *w,
                                      cudnnConvolutionDescriptor_t cd,
                                      cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes,
                                      const void *beta, cudnnTensorDescriptor_t yd, void *y) {
    return conv_run(h, DIR_FWD, alpha, beta, xd, x, wd, w, yd, NULL, y, cd, fwd_ws(algo), ws,
                    ws_bytes, "cudnnConvolutionForward");
}
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha,
                                           cudnnFilterDescriptor_t wd, const void *w,
                                           cudnnTensorDescriptor_t dyd, const void *dy,
                                           cudnnConvolutionDescriptor_t cd,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *ws,
                                           size_t ws_bytes, const void *beta,
                                           cudnnTensorDescriptor_t dxd, void *dx) {
    return conv_run(h, DIR_DATA, alpha, beta, dxd, NULL, wd, w, dyd, dy, dx, cd, bwd_data_ws(algo),
                    ws, ws_bytes, "cudnnConvolutionBackwardData");
}
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha,
                                             cudnnTensorDescriptor_t xd, const void *x,
                                             cudnnTensorDescriptor_t dyd, const void *dy,
                                             cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *ws,
                                             size_t ws_bytes, const void *beta,
                                             cudnnFilterDescriptor_t dwd, void *dw) {
    return conv_run(h, DIR_FILTER, alpha, beta, xd, x, dwd, NULL, dyd, dy, dw, cd,
                    bwd_filter_ws(algo), ws, ws_bytes, "cudnnConvolutionBackwardFilter");
}
