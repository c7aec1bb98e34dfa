/* LH_CUDA_PROFILE=1: where the device time goes, op by op. Every op of
 * the table (backend.cu's profiled table) is bracketed by two CUDA events
 * on the stream; their elapsed times are summed per op (harvested every
 * LH_PROF_PAIRS ops and at the end) and printed to stderr when the backend
 * is destroyed. Graphs are off while profiling, so each op is queued as
 * the host reaches it.
 *
 * An op queued on an idle device would count the host's queueing time
 * (a few microseconds a launch) as device time, which for small ops is
 * most of it. So every LH_PROF_BATCH ops the stream first runs a kernel
 * that holds the device for hold_ns while the host queues the batch,
 * which then runs back to back. A batch the host took longer than that to
 * queue may still hold such gaps: it is counted ("batches the host may
 * have slowed") and the hold doubled, up to LH_PROF_HOLD_MAX_NS; batches
 * queued in a quarter of the hold halve it again, down to LH_PROF_HOLD_NS.
 * Ops that wait for the device (download, sync, ...) end a batch. An op
 * that spends more than LH_PROF_STALL_S of host time between its events
 * (a first call growing the scratch, choosing a cuDNN algorithm) may have
 * left the device idle inside them: it is left out and counted, as are
 * failed ops. Inside an op, the passes that float32 activation buffers
 * cost (operand casts to the half type and back, the half convolutions'
 * widened outputs, rounding passes) are timed too (lh__cuda_prof_inner_*)
 * and printed apart: the part of the ops' time that half activation
 * buffers would save. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cuda.h"

#define LH_PROF_BATCH 32
#define LH_PROF_PAIRS 2048
#define LH_PROF_HOLD_NS (1000LL * 1000)
#define LH_PROF_HOLD_MAX_NS (64LL * 1000 * 1000)
#define LH_PROF_STALL_S 200e-6
#define LH_PROF_INNER_MAX 256 /* inner slots one op may take (chunked convolutions) */

struct lh_cuda_prof {
    cudaEvent_t ev[2 * LH_PROF_PAIRS]; /* begin, end of each slot */
    int op[LH_PROF_PAIRS]; /* what the slot times; -1: left out */
    int n;           /* slots taken, not yet harvested */
    int open;        /* the slot of the op being timed, plus 1; 0: none */
    int last_end;    /* the event recorded last (an op's end follows its inner slots') */
    int in_batch;    /* ops queued since the last hold; 0: the next one holds first */
    double batch_t0; /* host seconds when the hold was queued */
    double last_t;   /* host seconds when the batch's last op was queued */
    double op_t0;    /* host seconds at the open op's begin event */
    long long hold_ns, holds, slowed, stalled, failed, untimed; /* untimed: inner parts */
    double ms[LH_CUDA_PROF_CATS];
    long long calls[LH_CUDA_PROF_CATS];
    int broken; /* a CUDA call failed: nothing more is timed */
};

static const char *const NAMES[LH_CUDA_PROF_CATS] = {
#define LH_PROF_NAME(name) #name,
    LH_CUDA_PROF_TIMED(LH_PROF_NAME)
#undef LH_PROF_NAME
    "casts of operands to or from the half type",
    "half convolution outputs widened (+ bias)",
    "rounding passes after ops",
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One thread spinning for ns of the device's global timer; also stops
 * after 4 ns clock cycles, in case that timer does not move. */
static __global__ void hold_kernel(long long ns) {
    unsigned long long t0, t;
    long long c0 = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while ((long long)(t - t0) < ns && clock64() - c0 < 4 * ns);
}

static void broken(lh_cuda_prof *p, const char *what, cudaError_t e) {
    cudaGetLastError(); /* not sticky: the next op's launch check must not see it */
    if (!p->broken)
        fprintf(stderr, "cuda profile: %s: %s; timing stops here\n", what, cudaGetErrorString(e));
    p->broken = 1;
}

/* The batch ends; it may have starved when the host took longer to queue
 * it than the hold lasted. */
static void batch_end(lh_cuda_prof *p) {
    if (!p->in_batch) return;
    double took = p->last_t - p->batch_t0, hold = 1e-9 * (double)p->hold_ns;
    if (took > 0.75 * hold) {
        p->slowed++;
        if (p->hold_ns < LH_PROF_HOLD_MAX_NS) p->hold_ns *= 2;
    } else if (took < 0.25 * hold && p->hold_ns > LH_PROF_HOLD_NS) {
        p->hold_ns /= 2;
    }
    p->in_batch = 0;
}

/* A slot whose begin event is recorded now; -1 when none (broken). */
static int slot_begin(lh_cuda_prof *p, cudaStream_t stream) {
    cudaError_t e = cudaEventRecord(p->ev[2 * p->n], stream);
    if (e != cudaSuccess) {
        broken(p, "cudaEventRecord", e);
        return -1;
    }
    p->op[p->n] = -1;
    return p->n++;
}

static int slot_end(lh_cuda_prof *p, cudaStream_t stream, int k) {
    cudaError_t e = cudaEventRecord(p->ev[2 * k + 1], stream);
    if (e != cudaSuccess) broken(p, "cudaEventRecord", e);
    else p->last_end = 2 * k + 1;
    return e == cudaSuccess;
}

/* Waits for the recorded slots (none open) and adds their times. */
static void harvest(lh_cuda_prof *p) {
    batch_end(p);
    if (p->n && !p->broken) {
        cudaError_t e = cudaEventSynchronize(p->ev[p->last_end]); /* one stream: all done */
        for (int i = 0; e == cudaSuccess && i < p->n; i++) {
            if (p->op[i] < 0) continue;
            float ms = 0.0f;
            e = cudaEventElapsedTime(&ms, p->ev[2 * i], p->ev[2 * i + 1]);
            if (e == cudaSuccess) {
                p->ms[p->op[i]] += (double)ms;
                p->calls[p->op[i]]++;
            }
        }
        if (e != cudaSuccess) broken(p, "reading the events", e);
    }
    p->n = 0;
}

extern "C" void lh__cuda_prof_create(lh_cuda *cu, lh_cuda_prof **out) {
    (void)cu;
    *out = NULL;
    lh_cuda_prof *p = (lh_cuda_prof *)calloc(1, sizeof *p);
    if (!p) {
        fprintf(stderr, "cuda profile: out of memory; not profiling\n");
        return;
    }
    for (int i = 0; i < 2 * LH_PROF_PAIRS; i++) {
        cudaError_t e = cudaEventCreate(&p->ev[i]);
        if (e != cudaSuccess) {
            fprintf(stderr, "cuda profile: cudaEventCreate: %s; not profiling\n",
                    cudaGetErrorString(e));
            while (i-- > 0) cudaEventDestroy(p->ev[i]);
            free(p);
            return;
        }
    }
    p->hold_ns = LH_PROF_HOLD_NS;
    *out = p;
}

extern "C" int lh__cuda_prof_begin(lh_backend *be) {
    lh_cuda *cu = lh__cuda(be);
    lh_cuda_prof *p = cu->prof;
    if (!p || p->broken || p->open) return 0;
    if (p->n + LH_PROF_INNER_MAX >= LH_PROF_PAIRS) harvest(p); /* room for its inner slots */
    if (p->broken) return 0;
    if (!p->in_batch) {
        hold_kernel<<<1, 1, 0, cu->stream>>>(p->hold_ns);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            broken(p, "the hold kernel", e);
            return 0;
        }
        p->batch_t0 = now_s();
        p->holds++;
    }
    int k = slot_begin(p, cu->stream);
    if (k < 0) return 0;
    p->open = k + 1;
    p->op_t0 = now_s();
    return 1;
}

extern "C" void lh__cuda_prof_end(lh_backend *be, int op, lh_status st) {
    lh_cuda *cu = lh__cuda(be);
    lh_cuda_prof *p = cu->prof;
    if (!p || !p->open) return;
    int k = p->open - 1;
    p->open = 0;
    if (p->broken || !slot_end(p, cu->stream, k)) return;
    p->last_t = now_s();
    if (p->last_t - p->op_t0 > LH_PROF_STALL_S || st != LH_OK) {
        if (st == LH_OK) p->stalled++;
        else p->failed++;
        for (int i = k + 1; i < p->n; i++) p->op[i] = -1; /* its inner slots too */
    } else {
        p->op[k] = op;
    }
    if (++p->in_batch == LH_PROF_BATCH) batch_end(p);
}

extern "C" int lh__cuda_prof_inner_begin(lh_backend *be) {
    lh_cuda *cu = lh__cuda(be);
    lh_cuda_prof *p = cu->prof;
    if (!p || p->broken || !p->open) return 0;
    if (p->n == LH_PROF_PAIRS) {
        p->untimed++;
        return 0;
    }
    return slot_begin(p, cu->stream) + 1;
}

extern "C" void lh__cuda_prof_inner_end(lh_backend *be, int slot, int cat, lh_status st) {
    lh_cuda *cu = lh__cuda(be);
    lh_cuda_prof *p = cu->prof;
    if (!p || !slot || p->broken || !slot_end(p, cu->stream, slot - 1)) return;
    if (st == LH_OK) p->op[slot - 1] = cat;
}

extern "C" void lh__cuda_prof_waited(lh_backend *be) {
    lh_cuda_prof *p = lh__cuda(be)->prof;
    if (p) batch_end(p);
}

extern "C" void lh__cuda_prof_finish(lh_cuda *cu) {
    lh_cuda_prof *p = cu->prof;
    if (!p) return;
    harvest(p);
    int order[LH_CUDA_PROF_N];
    double total = 0.0;
    long long calls = 0;
    for (int i = 0; i < LH_CUDA_PROF_N; i++) {
        order[i] = i;
        total += p->ms[i];
        calls += p->calls[i];
    }
    for (int i = 1; i < LH_CUDA_PROF_N; i++) /* by time, largest first */
        for (int j = i; j > 0 && p->ms[order[j]] > p->ms[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    fprintf(stderr,
            "cuda profile (LH_CUDA_PROFILE=1): device time by op, graphs off; %lld holds, the "
            "last of %.1f ms; %lld batches the host may have slowed; calls left out: %lld with "
            "over %.0f us of host time inside (the device may have idled), %lld failed\n",
            p->holds, (double)p->hold_ns * 1e-6, p->slowed, p->stalled, LH_PROF_STALL_S * 1e6,
            p->failed);
    fprintf(stderr, "  %-44s %9s %12s %10s %7s\n", "op", "calls", "total ms", "mean us", "share");
    for (int k = 0; k < LH_CUDA_PROF_N; k++) {
        int i = order[k];
        if (!p->calls[i]) continue;
        fprintf(stderr, "  %-44s %9lld %12.3f %10.1f %6.1f%%\n", NAMES[i], p->calls[i], p->ms[i],
                1e3 * p->ms[i] / (double)p->calls[i], total > 0 ? 100.0 * p->ms[i] / total : 0.0);
    }
    fprintf(stderr, "  %-44s %9lld %12.3f\n", "all", calls, total);
    fprintf(stderr, "  inside the ops above (%lld parts untimed: no slot left):\n", p->untimed);
    for (int i = LH_CUDA_PROF_N; i < LH_CUDA_PROF_CATS; i++)
        fprintf(stderr, "  %-44s %9lld %12.3f %10.1f %6.1f%%\n", NAMES[i], p->calls[i], p->ms[i],
                p->calls[i] ? 1e3 * p->ms[i] / (double)p->calls[i] : 0.0,
                total > 0 ? 100.0 * p->ms[i] / total : 0.0);
    for (int i = 0; i < 2 * LH_PROF_PAIRS; i++) cudaEventDestroy(p->ev[i]);
    free(p);
    cu->prof = NULL;
}
