/* A fake device for the parity suites (LH_PARITY_DEVICE=poison): a cpu
 * backend behind an ops table named "poison" whose memory the host cannot
 * touch, so host code that reads or writes backend memory directly, which
 * only crashes on a real GPU, crashes here too. Header-only.
 *
 * Each alloc takes a real buffer from the wrapped cpu backend and reserves
 * a PROT_NONE, MAP_NORESERVE region of the same size plus a guard page; the
 * caller gets the region's address. Any host load or store there faults
 * (SIGSEGV). Every op maps each backend pointer back before calling the cpu
 * op: the region containing it (binary search over the live allocations)
 * gives real + (p - fake), so `base + offset` pointers work as on a device.
 * A pointer in no live region (host memory handed to an op, or a freed
 * buffer) aborts with a message: that is a bug too. NULL stays NULL. The
 * host pointers of the table (timestep_embedding's timesteps,
 * count_nonfinite's count, mse_backward's and adamw's coef, upload's
 * source, download's destination) pass through unchanged. It also counts
 * the calls that make the host wait for a real device (fake_device_waits),
 * and records graphs of the compute ops (see "Graphs" below). */
#ifndef LH_TESTS_FAKE_DEVICE_H
#define LH_TESTS_FAKE_DEVICE_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../kernels/backend.h"

typedef struct {
    uintptr_t fake;  /* start of the PROT_NONE region */
    size_t reserved; /* its length: size rounded up to pages, plus a guard page */
    size_t size;     /* what alloc was asked for */
    void *real;      /* the cpu backend's buffer */
} fake_region;

typedef struct {
    lh_backend *cpu;
    pthread_mutex_t mu;
    fake_region *regions; /* sorted by fake */
    size_t count, cap;
    size_t waits; /* calls after which a real device's host waits: download, sync,
                     count_nonfinite */
    struct fake_graph *rec; /* the graph being recorded, or NULL */
    int spoiled;            /* an op that cannot be recorded came while recording */
    lh_dtype act;           /* set_precision's activation type (linear_hw checks it) */
} fake_device;

static fake_device *fake__dev(lh_backend *be) { return be->impl; }

/* Index of the first region whose fake >= addr. */
static size_t fake__lower(const fake_device *fd, uintptr_t addr) {
    size_t lo = 0, hi = fd->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fd->regions[mid].fake < addr) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The real address behind backend pointer p (NULL: NULL); aborts on a
 * pointer that is in no live allocation. p may be one past a buffer's end
 * (a zero-length range there): the guard page keeps that unambiguous. */
static void *fake__real(lh_backend *be, const void *p, const char *op) {
    if (!p) return NULL;
    fake_device *fd = fake__dev(be);
    uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&fd->mu);
    size_t i = fake__lower(fd, a + 1); /* first region starting after a */
    void *real = NULL;
    if (i > 0) {
        const fake_region *r = &fd->regions[i - 1];
        if (a - r->fake <= r->size) real = (char *)r->real + (a - r->fake);
    }
    pthread_mutex_unlock(&fd->mu);
    if (!real) {
        fprintf(stderr,
                "poison device: %s got %p, which is no live allocation of this backend "
                "(host memory, or a freed buffer)\n",
                op, p);
        abort();
    }
    return real;
}

#define FAKE_R(p) fake__real(be, (p), __func__)

/* ---- Memory ---- */

static void *fake_alloc(lh_backend *be, size_t bytes) {
    fake_device *fd = fake__dev(be);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (bytes > SIZE_MAX - 2 * page) return NULL;
    size_t reserved = (bytes + page - 1) / page * page + page;
    void *real = fd->cpu->ops->alloc(fd->cpu, bytes ? bytes : 1);
    if (!real) return NULL;
    void *fake = mmap(NULL, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    if (fake == MAP_FAILED) {
        fd->cpu->ops->free(fd->cpu, real);
        return NULL;
    }
    pthread_mutex_lock(&fd->mu);
    if (fd->count == fd->cap) {
        size_t cap = fd->cap ? fd->cap * 2 : 256;
        fake_region *r = realloc(fd->regions, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&fd->mu);
            munmap(fake, reserved);
            fd->cpu->ops->free(fd->cpu, real);
            return NULL;
        }
        fd->regions = r;
        fd->cap = cap;
    }
    size_t i = fake__lower(fd, (uintptr_t)fake);
    memmove(fd->regions + i + 1, fd->regions + i, (fd->count - i) * sizeof *fd->regions);
    fd->regions[i] = (fake_region){(uintptr_t)fake, reserved, bytes, real};
    fd->count++;
    pthread_mutex_unlock(&fd->mu);
    return fake;
}

static int fake__defer_free(fake_device *fd, void *ptr);

static void fake_free(lh_backend *be, void *ptr) {
    if (!ptr) return;
    fake_device *fd = fake__dev(be);
    if (fd->rec && fake__defer_free(fd, ptr)) return; /* recorded ops may use it: the graph's */
    pthread_mutex_lock(&fd->mu);
    size_t i = fake__lower(fd, (uintptr_t)ptr);
    if (i == fd->count || fd->regions[i].fake != (uintptr_t)ptr) {
        pthread_mutex_unlock(&fd->mu);
        fprintf(stderr, "poison device: free of %p, which is no allocation's start\n", ptr);
        abort();
    }
    fake_region r = fd->regions[i];
    memmove(fd->regions + i, fd->regions + i + 1, (fd->count - i - 1) * sizeof *fd->regions);
    fd->count--;
    pthread_mutex_unlock(&fd->mu);
    munmap((void *)r.fake, r.reserved);
    fd->cpu->ops->free(fd->cpu, r.real);
}

static void fake_destroy(lh_backend *be) {
    fake_device *fd = fake__dev(be);
    for (size_t i = 0; i < fd->count; i++) {
        munmap((void *)fd->regions[i].fake, fd->regions[i].reserved);
        fd->cpu->ops->free(fd->cpu, fd->regions[i].real);
    }
    free(fd->regions);
    pthread_mutex_destroy(&fd->mu);
    lh_backend_destroy(fd->cpu);
    free(fd);
    free(be);
}

#define CPU fake__dev(be)->cpu

/* ---- Graphs ----
 * Between graph_begin and graph_end the compute ops the U-Net's forward
 * uses are recorded as closures (their arguments copied), not run, as
 * stream capture does; graph_launch runs them again, mapping their
 * pointers then, so a buffer freed since aborts as a dangling pointer in a
 * CUDA graph would fault. Any other op while recording fails and spoils
 * the recording (graph_end then fails); buffers freed while recording are
 * freed with the graph. */
typedef lh_status (*fake_run_fn)(lh_backend *be, const void *args);
typedef struct {
    fake_run_fn run;
    void *args;
} fake_step;
typedef struct fake_graph {
    fake_step *steps;
    size_t n, cap;
    void **freed;
    size_t n_freed, cap_freed;
} fake_graph;

static int fake__defer_free(fake_device *fd, void *ptr) {
    fake_graph *g = fd->rec;
    if (g->n_freed == g->cap_freed) {
        size_t cap = g->cap_freed ? 2 * g->cap_freed : 16;
        void **f = realloc(g->freed, cap * sizeof *f);
        if (!f) return 0;
        g->freed = f;
        g->cap_freed = cap;
    }
    g->freed[g->n_freed++] = ptr;
    return 1;
}

/* Run the op now, or record it while recording. */
static lh_status fake__op(lh_backend *be, fake_run_fn run, const void *args, size_t size) {
    fake_device *fd = fake__dev(be);
    fake_graph *g = fd->rec;
    if (!g) return run(be, args);
    void *copy = malloc(size);
    if (copy && g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        fake_step *s = realloc(g->steps, cap * sizeof *s);
        if (s) g->steps = s, g->cap = cap;
    }
    if (!copy || g->n == g->cap) {
        free(copy);
        fd->spoiled = 1;
        return LH_ERR_NOMEM;
    }
    memcpy(copy, args, size);
    g->steps[g->n++] = (fake_step){run, copy};
    return LH_OK;
}

/* An op that cannot be recorded, called while recording. */
static lh_status fake__refuse(lh_backend *be, const char *op) {
    (void)op;
    fake__dev(be)->spoiled = 1;
    return LH_ERR_BACKEND;
}

#define CALL(op, ...)                                                                         \
    (fake__dev(be)->rec ? fake__refuse(be, #op) : CPU->ops->op(CPU, __VA_ARGS__))

static lh_status fake_upload(lh_backend *be, void *dst, const void *src, size_t bytes) {
    return CALL(upload, FAKE_R(dst), src, bytes);
}
static lh_status fake_download(lh_backend *be, void *dst, const void *src, size_t bytes) {
    fake__dev(be)->waits++;
    return CALL(download, dst, FAKE_R(src), bytes);
}
typedef struct { void *dst; size_t bytes; } fake_memset0_a;
static lh_status fake_memset0_run(lh_backend *be, const void *p) {
    const fake_memset0_a *A_ = p;
    return CPU->ops->memset0(CPU, FAKE_R(A_->dst), A_->bytes);
}
static lh_status fake_memset0(lh_backend *be, void *dst, size_t bytes) {
    fake_memset0_a A_ = {dst, bytes};
    return fake__op(be, fake_memset0_run, &A_, sizeof A_);
}
static lh_status fake_upload_weights(lh_backend *be, float *dst, const void *src,
                                     lh_dtype src_dtype, size_t n) {
    return CALL(upload_weights, FAKE_R(dst), src, src_dtype, n);
}
static lh_status fake_sync(lh_backend *be) {
    if (fake__dev(be)->rec) return fake__refuse(be, "sync");
    fake__dev(be)->waits++;
    return CPU->ops->sync(CPU);
}

/* ---- Compute: every backend pointer mapped back ---- */

typedef struct { float *c; const float *a; const float *b; int trans_a; int trans_b; int64_t m; int64_t n; int64_t k; float alpha; float beta; int64_t batch; int64_t stride_a; int64_t stride_b; int64_t stride_c; } fake_gemm_a;
static lh_status fake_gemm_run(lh_backend *be, const void *p) {
    const fake_gemm_a *A_ = p;
    return CPU->ops->gemm(CPU, FAKE_R(A_->c), FAKE_R(A_->a), FAKE_R(A_->b), A_->trans_a, A_->trans_b, A_->m, A_->n, A_->k, A_->alpha, A_->beta, A_->batch, A_->stride_a, A_->stride_b, A_->stride_c);
}
static lh_status fake_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
    fake_gemm_a A_ = {c, a, b, trans_a, trans_b, m, n, k, alpha, beta, batch, stride_a, stride_b, stride_c};
    return fake__op(be, fake_gemm_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; const float *w; const float *bias; int64_t rows; int64_t n_in; int64_t n_out; } fake_linear_a;
static lh_status fake_linear_run(lh_backend *be, const void *p) {
    const fake_linear_a *A_ = p;
    return CPU->ops->linear(CPU, FAKE_R(A_->out), FAKE_R(A_->x), FAKE_R(A_->w), FAKE_R(A_->bias), A_->rows, A_->n_in, A_->n_out);
}
static lh_status fake_linear(lh_backend *be, float *out, const float *x, const float *w, const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    fake_linear_a A_ = {out, x, w, bias, rows, n_in, n_out};
    return fake__op(be, fake_linear_run, &A_, sizeof A_);
}
/* linear_hw (and its backward): the half weights widened into a host
 * buffer with the cpu's cast, then the cpu's linear -- the contract's
 * "same numbers as linear on w widened" by construction; what the parity
 * suites check through it is that the host hands the op half weights of
 * the activation type, in backend memory. */
static int fake__held_ok(lh_backend *be, lh_dtype wdt) {
    return (wdt == LH_DTYPE_F16 || wdt == LH_DTYPE_BF16) && wdt == fake__dev(be)->act;
}
static float *fake__widened(lh_backend *be, const void *w, lh_dtype wdt, int64_t n) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    if (f && CPU->ops->cast(CPU, f, LH_DTYPE_F32, w, wdt, n) != LH_OK) {
        free(f);
        return NULL;
    }
    return f;
}
typedef struct { float *out; const float *x; const void *w; lh_dtype wdt; const float *bias; int64_t rows; int64_t n_in; int64_t n_out; } fake_linear_hw_a;
static lh_status fake_linear_hw_run(lh_backend *be, const void *p) {
    const fake_linear_hw_a *A_ = p;
    float *w = A_->w ? fake__widened(be, FAKE_R(A_->w), A_->wdt, A_->n_out * A_->n_in) : NULL;
    if (A_->w && !w) return LH_ERR_NOMEM;
    lh_status st = CPU->ops->linear(CPU, FAKE_R(A_->out), FAKE_R(A_->x), w, FAKE_R(A_->bias), A_->rows, A_->n_in, A_->n_out);
    free(w);
    return st;
}
static lh_status fake_linear_hw(lh_backend *be, float *out, const float *x, const void *w, lh_dtype wdt, const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    if (!fake__held_ok(be, wdt) || rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    fake_linear_hw_a A_ = {out, x, w, wdt, bias, rows, n_in, n_out};
    return fake__op(be, fake_linear_hw_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; const float *w; const float *bias; int64_t n; int64_t c_in; int64_t h; int64_t wd; int64_t c_out; int64_t kh; int64_t kw; int stride; int pad; } fake_conv2d_a;
static lh_status fake_conv2d_run(lh_backend *be, const void *p) {
    const fake_conv2d_a *A_ = p;
    return CPU->ops->conv2d(CPU, FAKE_R(A_->out), FAKE_R(A_->x), FAKE_R(A_->w), FAKE_R(A_->bias), A_->n, A_->c_in, A_->h, A_->wd, A_->c_out, A_->kh, A_->kw, A_->stride, A_->pad);
}
static lh_status fake_conv2d(lh_backend *be, float *out, const float *x, const float *w, const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    fake_conv2d_a A_ = {out, x, w, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad};
    return fake__op(be, fake_conv2d_run, &A_, sizeof A_);
}
/* conv2d_hw likewise (the cpu's one rounding, within the contract's half
 * tolerance); LH_FAKE_HALF_CONV=0 answers LH_ERR_UNSUPPORTED, as cuda's
 * LORAHOST_CUDA_HALF_CONV=0 does, so the host's fallback runs. */
static int fake__half_conv_off(void) {
    const char *e = getenv("LH_FAKE_HALF_CONV");
    return e && !strcmp(e, "0");
}
typedef struct { float *out; const float *x; const void *w; lh_dtype wdt; const float *bias; int64_t n; int64_t c_in; int64_t h; int64_t wd; int64_t c_out; int64_t kh; int64_t kw; int stride; int pad; } fake_conv2d_hw_a;
static lh_status fake_conv2d_hw_run(lh_backend *be, const void *p) {
    const fake_conv2d_hw_a *A_ = p;
    int64_t nw = A_->c_out * A_->c_in * A_->kh * A_->kw;
    float *w = A_->w ? fake__widened(be, FAKE_R(A_->w), A_->wdt, nw) : NULL;
    if (A_->w && !w) return LH_ERR_NOMEM;
    lh_status st = CPU->ops->conv2d(CPU, FAKE_R(A_->out), FAKE_R(A_->x), w, FAKE_R(A_->bias), A_->n, A_->c_in, A_->h, A_->wd, A_->c_out, A_->kh, A_->kw, A_->stride, A_->pad);
    free(w);
    return st;
}
static lh_status fake_conv2d_hw(lh_backend *be, float *out, const float *x, const void *w, lh_dtype wdt, const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd, int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    if (!fake__held_ok(be, wdt) || n < 0 || c_in < 0 || c_out < 0 || kh < 1 || kw < 1) return LH_ERR_INVALID;
    if (fake__half_conv_off()) return LH_ERR_UNSUPPORTED;
    fake_conv2d_hw_a A_ = {out, x, w, wdt, bias, n, c_in, h, wd, c_out, kh, kw, stride, pad};
    return fake__op(be, fake_conv2d_hw_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; const float *gamma; const float *beta; int64_t n; int64_t c; int64_t hw; int64_t groups; float eps; int silu; } fake_group_norm_a;
static lh_status fake_group_norm_run(lh_backend *be, const void *p) {
    const fake_group_norm_a *A_ = p;
    return CPU->ops->group_norm(CPU, FAKE_R(A_->out), FAKE_R(A_->x), FAKE_R(A_->gamma), FAKE_R(A_->beta), A_->n, A_->c, A_->hw, A_->groups, A_->eps, A_->silu);
}
static lh_status fake_group_norm(lh_backend *be, float *out, const float *x, const float *gamma, const float *beta, int64_t n, int64_t c, int64_t hw, int64_t groups, float eps, int silu) {
    fake_group_norm_a A_ = {out, x, gamma, beta, n, c, hw, groups, eps, silu};
    return fake__op(be, fake_group_norm_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; const float *gamma; const float *beta; int64_t rows; int64_t cols; float eps; } fake_layer_norm_a;
static lh_status fake_layer_norm_run(lh_backend *be, const void *p) {
    const fake_layer_norm_a *A_ = p;
    return CPU->ops->layer_norm(CPU, FAKE_R(A_->out), FAKE_R(A_->x), FAKE_R(A_->gamma), FAKE_R(A_->beta), A_->rows, A_->cols, A_->eps);
}
static lh_status fake_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma, const float *beta, int64_t rows, int64_t cols, float eps) {
    fake_layer_norm_a A_ = {out, x, gamma, beta, rows, cols, eps};
    return fake__op(be, fake_layer_norm_run, &A_, sizeof A_);
}
typedef struct { float *out; float *lse; const float *q; const float *k; const float *v; int64_t b; int64_t heads; int64_t nq; int64_t nk; int64_t d; float scale; int causal; } fake_attention_a;
static lh_status fake_attention_run(lh_backend *be, const void *p) {
    const fake_attention_a *A_ = p;
    return CPU->ops->attention(CPU, FAKE_R(A_->out), FAKE_R(A_->lse), FAKE_R(A_->q), FAKE_R(A_->k), FAKE_R(A_->v), A_->b, A_->heads, A_->nq, A_->nk, A_->d, A_->scale, A_->causal);
}
static lh_status fake_attention(lh_backend *be, float *out, float *lse, const float *q, const float *k, const float *v, int64_t b, int64_t heads, int64_t nq, int64_t nk, int64_t d, float scale, int causal) {
    fake_attention_a A_ = {out, lse, q, k, v, b, heads, nq, nk, d, scale, causal};
    return fake__op(be, fake_attention_run, &A_, sizeof A_);
}

typedef struct {
    float *out;
    const float *x;
    int64_t n;
} fake_unary_a;
#define FAKE_UNARY(op)                                                                        \
    static lh_status fake_##op##_run(lh_backend *be, const void *p) {                         \
        const fake_unary_a *A_ = p;                                                           \
        return CPU->ops->op(CPU, FAKE_R(A_->out), FAKE_R(A_->x), A_->n);                      \
    }                                                                                         \
    static lh_status fake_##op(lh_backend *be, float *out, const float *x, int64_t n) {       \
        fake_unary_a A_ = {out, x, n};                                                        \
        return fake__op(be, fake_##op##_run, &A_, sizeof A_);                                 \
    }
FAKE_UNARY(silu)
FAKE_UNARY(gelu)
FAKE_UNARY(quick_gelu)
#undef FAKE_UNARY

typedef struct { float *out; const float *x; int64_t rows; int64_t f; } fake_geglu_a;
static lh_status fake_geglu_run(lh_backend *be, const void *p) {
    const fake_geglu_a *A_ = p;
    return CPU->ops->geglu(CPU, FAKE_R(A_->out), FAKE_R(A_->x), A_->rows, A_->f);
}
static lh_status fake_geglu(lh_backend *be, float *out, const float *x, int64_t rows, int64_t f) {
    fake_geglu_a A_ = {out, x, rows, f};
    return fake__op(be, fake_geglu_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *a; const float *b; int64_t n; } fake_add_a;
static lh_status fake_add_run(lh_backend *be, const void *p) {
    const fake_add_a *A_ = p;
    return CPU->ops->add(CPU, FAKE_R(A_->out), FAKE_R(A_->a), FAKE_R(A_->b), A_->n);
}
static lh_status fake_add(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    fake_add_a A_ = {out, a, b, n};
    return fake__op(be, fake_add_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *a; const float *b; int64_t n; } fake_mul_a;
static lh_status fake_mul_run(lh_backend *be, const void *p) {
    const fake_mul_a *A_ = p;
    return CPU->ops->mul(CPU, FAKE_R(A_->out), FAKE_R(A_->a), FAKE_R(A_->b), A_->n);
}
static lh_status fake_mul(lh_backend *be, float *out, const float *a, const float *b, int64_t n) {
    fake_mul_a A_ = {out, a, b, n};
    return fake__op(be, fake_mul_run, &A_, sizeof A_);
}
typedef struct { float *out; float alpha; const float *a; float beta; const float *b; int64_t n; } fake_axpby_a;
static lh_status fake_axpby_run(lh_backend *be, const void *p) {
    const fake_axpby_a *A_ = p;
    return CPU->ops->axpby(CPU, FAKE_R(A_->out), A_->alpha, FAKE_R(A_->a), A_->beta, FAKE_R(A_->b), A_->n);
}
static lh_status fake_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta, const float *b, int64_t n) {
    fake_axpby_a A_ = {out, alpha, a, beta, b, n};
    return fake__op(be, fake_axpby_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; const float *bias; int64_t outer; int64_t c; int64_t inner; } fake_add_channel_bias_a;
static lh_status fake_add_channel_bias_run(lh_backend *be, const void *p) {
    const fake_add_channel_bias_a *A_ = p;
    return CPU->ops->add_channel_bias(CPU, FAKE_R(A_->out), FAKE_R(A_->x), FAKE_R(A_->bias), A_->outer, A_->c, A_->inner);
}
static lh_status fake_add_channel_bias(lh_backend *be, float *out, const float *x, const float *bias, int64_t outer, int64_t c, int64_t inner) {
    fake_add_channel_bias_a A_ = {out, x, bias, outer, c, inner};
    return fake__op(be, fake_add_channel_bias_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; int64_t n; int64_t c; int64_t h; int64_t w; } fake_upsample_nearest2x_a;
static lh_status fake_upsample_nearest2x_run(lh_backend *be, const void *p) {
    const fake_upsample_nearest2x_a *A_ = p;
    return CPU->ops->upsample_nearest2x(CPU, FAKE_R(A_->out), FAKE_R(A_->x), A_->n, A_->c, A_->h, A_->w);
}
static lh_status fake_upsample_nearest2x(lh_backend *be, float *out, const float *x, int64_t n, int64_t c, int64_t h, int64_t w) {
    fake_upsample_nearest2x_a A_ = {out, x, n, c, h, w};
    return fake__op(be, fake_upsample_nearest2x_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *a; const float *b; int64_t n; int64_t ca; int64_t cb; int64_t hw; } fake_concat_channels_a;
static lh_status fake_concat_channels_run(lh_backend *be, const void *p) {
    const fake_concat_channels_a *A_ = p;
    return CPU->ops->concat_channels(CPU, FAKE_R(A_->out), FAKE_R(A_->a), FAKE_R(A_->b), A_->n, A_->ca, A_->cb, A_->hw);
}
static lh_status fake_concat_channels(lh_backend *be, float *out, const float *a, const float *b, int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    fake_concat_channels_a A_ = {out, a, b, n, ca, cb, hw};
    return fake__op(be, fake_concat_channels_run, &A_, sizeof A_);
}
typedef struct { float *out; const float *x; int64_t n; int64_t c; int64_t hw; } fake_transpose_c_hw_a;
static lh_status fake_transpose_c_hw_run(lh_backend *be, const void *p) {
    const fake_transpose_c_hw_a *A_ = p;
    return CPU->ops->transpose_c_hw(CPU, FAKE_R(A_->out), FAKE_R(A_->x), A_->n, A_->c, A_->hw);
}
static lh_status fake_transpose_c_hw(lh_backend *be, float *out, const float *x, int64_t n, int64_t c, int64_t hw) {
    fake_transpose_c_hw_a A_ = {out, x, n, c, hw};
    return fake__op(be, fake_transpose_c_hw_run, &A_, sizeof A_);
}
static lh_status fake_timestep_embedding(lh_backend *be, float *out,
                                         const float *timesteps, /* host memory */
                                         int64_t n, int64_t dim, int flip_sin_to_cos,
                                         float downscale_freq_shift, float max_period) {
    return CALL(timestep_embedding, FAKE_R(out), timesteps, n, dim, flip_sin_to_cos,
                downscale_freq_shift, max_period);
}

/* ---- Backward ---- */

static lh_status fake_linear_backward(lh_backend *be, float *dx, float *dw, float *db,
                                      const float *dy, const float *x, const float *w,
                                      int64_t rows, int64_t n_in, int64_t n_out) {
    return CALL(linear_backward, FAKE_R(dx), FAKE_R(dw), FAKE_R(db), FAKE_R(dy), FAKE_R(x),
                FAKE_R(w), rows, n_in, n_out);
}
static lh_status fake_linear_backward_hw(lh_backend *be, float *dx, float *db, const float *dy,
                                         const void *w, lh_dtype wdt, int64_t rows,
                                         int64_t n_in, int64_t n_out) {
    if (fake__dev(be)->rec) return fake__refuse(be, "linear_backward_hw");
    if (!fake__held_ok(be, wdt) || rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    float *wf = w && dx ? fake__widened(be, FAKE_R(w), wdt, n_out * n_in) : NULL;
    if (w && dx && !wf) return LH_ERR_NOMEM;
    lh_status st = CPU->ops->linear_backward(CPU, FAKE_R(dx), NULL, FAKE_R(db), FAKE_R(dy), NULL,
                                             wf, rows, n_in, n_out);
    free(wf);
    return st;
}
static lh_status fake_conv2d_backward_hw(lh_backend *be, float *dx, float *db, const float *dy,
                                         const void *w, lh_dtype wdt, int64_t n, int64_t c_in,
                                         int64_t h, int64_t wd, int64_t c_out, int64_t kh,
                                         int64_t kw, int stride, int pad) {
    if (fake__dev(be)->rec) return fake__refuse(be, "conv2d_backward_hw");
    if (!fake__held_ok(be, wdt) || n < 0 || c_in < 0 || c_out < 0 || kh < 1 || kw < 1)
        return LH_ERR_INVALID;
    if (fake__half_conv_off()) return LH_ERR_UNSUPPORTED;
    int64_t nw = c_out * c_in * kh * kw;
    float *wf = w && dx ? fake__widened(be, FAKE_R(w), wdt, nw) : NULL;
    if (w && dx && !wf) return LH_ERR_NOMEM;
    lh_status st = CPU->ops->conv2d_backward(CPU, FAKE_R(dx), NULL, FAKE_R(db), FAKE_R(dy), NULL,
                                             wf, n, c_in, h, wd, c_out, kh, kw, stride, pad);
    free(wf);
    return st;
}
static lh_status fake_conv2d_backward(lh_backend *be, float *dx, float *dw, float *db,
                                      const float *dy, const float *x, const float *w,
                                      int64_t n, int64_t c_in, int64_t h, int64_t wd,
                                      int64_t c_out, int64_t kh, int64_t kw, int stride,
                                      int pad) {
    return CALL(conv2d_backward, FAKE_R(dx), FAKE_R(dw), FAKE_R(db), FAKE_R(dy), FAKE_R(x),
                FAKE_R(w), n, c_in, h, wd, c_out, kh, kw, stride, pad);
}
static lh_status fake_group_norm_backward(lh_backend *be, float *dx, float *dgamma,
                                          float *dbeta, const float *dy, const float *x,
                                          const float *gamma, const float *beta, int64_t n,
                                          int64_t c, int64_t hw, int64_t groups, float eps,
                                          int silu) {
    return CALL(group_norm_backward, FAKE_R(dx), FAKE_R(dgamma), FAKE_R(dbeta), FAKE_R(dy),
                FAKE_R(x), FAKE_R(gamma), FAKE_R(beta), n, c, hw, groups, eps, silu);
}
static lh_status fake_layer_norm_backward(lh_backend *be, float *dx, float *dgamma,
                                          float *dbeta, const float *dy, const float *x,
                                          const float *gamma, int64_t rows, int64_t cols,
                                          float eps) {
    return CALL(layer_norm_backward, FAKE_R(dx), FAKE_R(dgamma), FAKE_R(dbeta), FAKE_R(dy),
                FAKE_R(x), FAKE_R(gamma), rows, cols, eps);
}
static lh_status fake_attention_backward(lh_backend *be, float *dq, float *dk, float *dv,
                                         const float *dout, const float *out, const float *lse,
                                         const float *q, const float *k, const float *v,
                                         int64_t b, int64_t heads, int64_t nq, int64_t nk,
                                         int64_t d, float scale, int causal) {
    return CALL(attention_backward, FAKE_R(dq), FAKE_R(dk), FAKE_R(dv), FAKE_R(dout),
                FAKE_R(out), FAKE_R(lse), FAKE_R(q), FAKE_R(k), FAKE_R(v), b, heads, nq, nk, d,
                scale, causal);
}

#define FAKE_ACT_BACKWARD(op)                                                                 \
    static lh_status fake_##op(lh_backend *be, float *dx, const float *dy, const float *x,    \
                               int64_t n) {                                                   \
        return CALL(op, FAKE_R(dx), FAKE_R(dy), FAKE_R(x), n);                                \
    }
FAKE_ACT_BACKWARD(silu_backward)
FAKE_ACT_BACKWARD(gelu_backward)
FAKE_ACT_BACKWARD(quick_gelu_backward)
#undef FAKE_ACT_BACKWARD

static lh_status fake_geglu_backward(lh_backend *be, float *dx, const float *dy, const float *x,
                                     int64_t rows, int64_t f) {
    return CALL(geglu_backward, FAKE_R(dx), FAKE_R(dy), FAKE_R(x), rows, f);
}
static lh_status fake_channel_bias_backward(lh_backend *be, float *dbias, const float *dy,
                                            int64_t outer, int64_t c, int64_t inner) {
    return CALL(channel_bias_backward, FAKE_R(dbias), FAKE_R(dy), outer, c, inner);
}
static lh_status fake_upsample_nearest2x_backward(lh_backend *be, float *dx, const float *dy,
                                                  int64_t n, int64_t c, int64_t h, int64_t w) {
    return CALL(upsample_nearest2x_backward, FAKE_R(dx), FAKE_R(dy), n, c, h, w);
}
static lh_status fake_split_channels(lh_backend *be, float *a, float *b, const float *x,
                                     int64_t n, int64_t ca, int64_t cb, int64_t hw) {
    return CALL(split_channels, FAKE_R(a), FAKE_R(b), FAKE_R(x), n, ca, cb, hw);
}

/* ---- Mixed precision ---- */

static lh_status fake_set_precision(lh_backend *be, lh_dtype act) {
    if (fake__dev(be)->rec) return fake__refuse(be, "set_precision");
    lh_status st = CPU->ops->set_precision(CPU, act);
    if (st == LH_OK) fake__dev(be)->act = act;
    return st;
}
typedef struct { float *x; int64_t n; lh_dtype dtype; } fake_round_a;
static lh_status fake_round_run(lh_backend *be, const void *p) {
    const fake_round_a *A_ = p;
    return CPU->ops->round(CPU, FAKE_R(A_->x), A_->n, A_->dtype);
}
static lh_status fake_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype) {
    fake_round_a A_ = {x, n, dtype};
    return fake__op(be, fake_round_run, &A_, sizeof A_);
}
typedef struct { void *dst; lh_dtype dt; const void *src; lh_dtype st; int64_t n; } fake_cast_a;
static lh_status fake_cast_run(lh_backend *be, const void *p) {
    const fake_cast_a *A_ = p;
    return CPU->ops->cast(CPU, FAKE_R(A_->dst), A_->dt, FAKE_R(A_->src), A_->st, A_->n);
}
static lh_status fake_cast(lh_backend *be, void *dst, lh_dtype dst_dtype, const void *src,
                           lh_dtype src_dtype, int64_t n) {
    fake_cast_a A_ = {dst, dst_dtype, src, src_dtype, n};
    return fake__op(be, fake_cast_run, &A_, sizeof A_);
}
static lh_status fake_count_nonfinite(lh_backend *be, int64_t *count, /* host memory */
                                      const float *x, int64_t n) {
    fake__dev(be)->waits++;
    return CALL(count_nonfinite, count, FAKE_R(x), n);
}

static lh_status fake_count_nonfinite_into(lh_backend *be, int64_t *count, const float *x,
                                           int64_t n) {
    return CALL(count_nonfinite_into, FAKE_R(count), FAKE_R(x), n);
}

static lh_status fake_scale(lh_backend *be, float *x, int64_t n, float s) {
    return CALL(scale, FAKE_R(x), n, s);
}

static lh_status fake_scale_by(lh_backend *be, float *x, int64_t n, const float *s) {
    return CALL(scale_by, FAKE_R(x), n, FAKE_R(s));
}

static lh_status fake_step_check(lh_backend *be, float *coef, int64_t *found, const double *sq,
                                 int64_t n, const int64_t *counts, int64_t nc, float max_norm) {
    return CALL(step_check, FAKE_R(coef), FAKE_R(found), FAKE_R(sq), n, FAKE_R(counts), nc,
                max_norm);
}

static lh_status fake_sum_squares(lh_backend *be, double *out, const float *x, int64_t n) {
    return CALL(sum_squares, FAKE_R(out), FAKE_R(x), n);
}

static lh_status fake_mse_backward(lh_backend *be, float *dpred, double *sq, const float *pred,
                                   const float *target, const double *coef, /* host memory */
                                   int64_t rows, int64_t cols) {
    return CALL(mse_backward, FAKE_R(dpred), FAKE_R(sq), FAKE_R(pred), FAKE_R(target), coef,
                rows, cols);
}

typedef struct { void *dst; const void *src; size_t bytes; } fake_copy_a;
static lh_status fake_copy_run(lh_backend *be, const void *p) {
    const fake_copy_a *A_ = p;
    return CPU->ops->copy(CPU, FAKE_R(A_->dst), FAKE_R(A_->src), A_->bytes);
}
static lh_status fake_copy(lh_backend *be, void *dst, const void *src, size_t bytes) {
    fake_copy_a A_ = {dst, src, bytes};
    return fake__op(be, fake_copy_run, &A_, sizeof A_);
}

static lh_status fake_adamw(lh_backend *be, float *param, float *exp_avg, float *exp_avg_sq,
                            const float *grad, int64_t n, const lh_adamw_coef *coef, /* host */
                            const int64_t *skip) {
    return CALL(adamw, FAKE_R(param), FAKE_R(exp_avg), FAKE_R(exp_avg_sq), FAKE_R(grad), n,
                coef, FAKE_R(skip));
}

static lh_status fake_dropout(lh_backend *be, float *out, const float *x, int64_t n,
                              uint64_t seed, double p) {
    return CALL(dropout, FAKE_R(out), FAKE_R(x), n, seed, p);
}

static lh_status fake_dropout_backward(lh_backend *be, float *dx, const float *dxd, int64_t n,
                                       uint64_t seed, double p) {
    return CALL(dropout_backward, FAKE_R(dx), FAKE_R(dxd), n, seed, p);
}

static lh_status fake_graph_begin(lh_backend *be) {
    fake_device *fd = fake__dev(be);
    if (fd->rec) return LH_ERR_INVALID;
    fd->spoiled = 0;
    return (fd->rec = calloc(1, sizeof *fd->rec)) ? LH_OK : LH_ERR_NOMEM;
}
static void fake_graph_free(lh_backend *be, void *graph) {
    fake_graph *g = graph;
    if (!g) return;
    for (size_t i = 0; i < g->n; i++) free(g->steps[i].args);
    for (size_t i = 0; i < g->n_freed; i++) fake_free(be, g->freed[i]);
    free(g->steps);
    free(g->freed);
    free(g);
}
static lh_status fake_graph_end(lh_backend *be, void **graph) {
    fake_device *fd = fake__dev(be);
    fake_graph *g = fd->rec;
    fd->rec = NULL;
    if (graph) *graph = NULL;
    if (!g) return LH_ERR_INVALID;
    const char *fail = getenv("LH_FAKE_GRAPH_FAIL"); /* "1": every recording fails at its end */
    if (fd->spoiled || !graph || (fail && !strcmp(fail, "1"))) {
        fake_graph_free(be, g);
        return LH_ERR_BACKEND;
    }
    *graph = g;
    return LH_OK;
}
static lh_status fake_graph_launch(lh_backend *be, void *graph) {
    fake_graph *g = graph;
    if (!g || fake__dev(be)->rec) return LH_ERR_INVALID;
    for (size_t i = 0; i < g->n; i++) {
        lh_status st = g->steps[i].run(be, g->steps[i].args);
        if (st != LH_OK) return st;
    }
    return LH_OK;
}

#undef CALL
#undef CPU
#undef FAKE_R

static const lh_backend_ops fake_device_ops = {
    .name = "poison",
    .destroy = fake_destroy,
    .alloc = fake_alloc,
    .free = fake_free,
    .upload = fake_upload,
    .download = fake_download,
    .memset0 = fake_memset0,
    .upload_weights = fake_upload_weights,
    .sync = fake_sync,
    .gemm = fake_gemm,
    .linear = fake_linear,
    .linear_hw = fake_linear_hw,
    .conv2d = fake_conv2d,
    .conv2d_hw = fake_conv2d_hw,
    .group_norm = fake_group_norm,
    .layer_norm = fake_layer_norm,
    .attention = fake_attention,
    .silu = fake_silu,
    .gelu = fake_gelu,
    .quick_gelu = fake_quick_gelu,
    .geglu = fake_geglu,
    .add = fake_add,
    .mul = fake_mul,
    .axpby = fake_axpby,
    .add_channel_bias = fake_add_channel_bias,
    .upsample_nearest2x = fake_upsample_nearest2x,
    .concat_channels = fake_concat_channels,
    .transpose_c_hw = fake_transpose_c_hw,
    .timestep_embedding = fake_timestep_embedding,
    .linear_backward = fake_linear_backward,
    .linear_backward_hw = fake_linear_backward_hw,
    .conv2d_backward = fake_conv2d_backward,
    .conv2d_backward_hw = fake_conv2d_backward_hw,
    .group_norm_backward = fake_group_norm_backward,
    .layer_norm_backward = fake_layer_norm_backward,
    .attention_backward = fake_attention_backward,
    .silu_backward = fake_silu_backward,
    .gelu_backward = fake_gelu_backward,
    .quick_gelu_backward = fake_quick_gelu_backward,
    .geglu_backward = fake_geglu_backward,
    .channel_bias_backward = fake_channel_bias_backward,
    .upsample_nearest2x_backward = fake_upsample_nearest2x_backward,
    .split_channels = fake_split_channels,
    .set_precision = fake_set_precision,
    .round = fake_round,
    .cast = fake_cast,
    .count_nonfinite = fake_count_nonfinite,
    .count_nonfinite_into = fake_count_nonfinite_into,
    .scale = fake_scale,
    .scale_by = fake_scale_by,
    .sum_squares = fake_sum_squares,
    .mse_backward = fake_mse_backward,
    .step_check = fake_step_check,
    .adamw = fake_adamw,
    .copy = fake_copy,
    .dropout = fake_dropout,
    .dropout_backward = fake_dropout_backward,
    .graph_begin = fake_graph_begin,
    .graph_end = fake_graph_end,
    .graph_launch = fake_graph_launch,
    .graph_free = fake_graph_free,
};

/* How many times so far the host would have waited for a real device. */
static inline size_t fake_device_waits(lh_backend *be) { return fake__dev(be)->waits; }

/* The poison device over a cpu backend of `threads` threads. */
static lh_status fake_device_create(lh_backend **out, int threads, char *err, size_t err_size) {
    *out = NULL;
    lh_backend *cpu = NULL;
    lh_status st = lh_backend_cpu_create(&cpu, threads, err, err_size);
    if (st != LH_OK) return st;
    lh_backend *be = calloc(1, sizeof *be);
    fake_device *fd = calloc(1, sizeof *fd);
    if (!be || !fd) {
        free(be);
        free(fd);
        lh_backend_destroy(cpu);
        snprintf(err, err_size, "poison device: out of memory");
        return LH_ERR_NOMEM;
    }
    fd->cpu = cpu;
    pthread_mutex_init(&fd->mu, NULL);
    be->ops = &fake_device_ops;
    be->impl = fd;
    *out = be;
    return LH_OK;
}

#endif
