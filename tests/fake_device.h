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
 * and refuses to record graphs. */
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

static void fake_free(lh_backend *be, void *ptr) {
    if (!ptr) return;
    fake_device *fd = fake__dev(be);
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
#define CALL(op, ...) CPU->ops->op(CPU, __VA_ARGS__)

static lh_status fake_upload(lh_backend *be, void *dst, const void *src, size_t bytes) {
    return CALL(upload, FAKE_R(dst), src, bytes);
}
static lh_status fake_download(lh_backend *be, void *dst, const void *src, size_t bytes) {
    fake__dev(be)->waits++;
    return CALL(download, dst, FAKE_R(src), bytes);
}
static lh_status fake_memset0(lh_backend *be, void *dst, size_t bytes) {
    return CALL(memset0, FAKE_R(dst), bytes);
}
static lh_status fake_upload_weights(lh_backend *be, float *dst, const void *src,
                                     lh_dtype src_dtype, size_t n) {
    return CALL(upload_weights, FAKE_R(dst), src, src_dtype, n);
}
static lh_status fake_sync(lh_backend *be) {
    fake__dev(be)->waits++;
    return CPU->ops->sync(CPU);
}

/* ---- Compute: every backend pointer mapped back ---- */

static lh_status fake_gemm(lh_backend *be, float *c, const float *a, const float *b,
                           int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                           float alpha, float beta, int64_t batch, int64_t stride_a,
                           int64_t stride_b, int64_t stride_c) {
    return CALL(gemm, FAKE_R(c), FAKE_R(a), FAKE_R(b), trans_a, trans_b, m, n, k, alpha, beta,
                batch, stride_a, stride_b, stride_c);
}
static lh_status fake_linear(lh_backend *be, float *out, const float *x, const float *w,
                             const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    return CALL(linear, FAKE_R(out), FAKE_R(x), FAKE_R(w), FAKE_R(bias), rows, n_in, n_out);
}
static lh_status fake_conv2d(lh_backend *be, float *out, const float *x, const float *w,
                             const float *bias, int64_t n, int64_t c_in, int64_t h, int64_t wd,
                             int64_t c_out, int64_t kh, int64_t kw, int stride, int pad) {
    return CALL(conv2d, FAKE_R(out), FAKE_R(x), FAKE_R(w), FAKE_R(bias), n, c_in, h, wd, c_out,
                kh, kw, stride, pad);
}
static lh_status fake_group_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                                 const float *beta, int64_t n, int64_t c, int64_t hw,
                                 int64_t groups, float eps, int silu) {
    return CALL(group_norm, FAKE_R(out), FAKE_R(x), FAKE_R(gamma), FAKE_R(beta), n, c, hw,
                groups, eps, silu);
}
static lh_status fake_layer_norm(lh_backend *be, float *out, const float *x, const float *gamma,
                                 const float *beta, int64_t rows, int64_t cols, float eps) {
    return CALL(layer_norm, FAKE_R(out), FAKE_R(x), FAKE_R(gamma), FAKE_R(beta), rows, cols,
                eps);
}
static lh_status fake_attention(lh_backend *be, float *out, float *lse, const float *q,
                                const float *k, const float *v, int64_t b, int64_t heads,
                                int64_t nq, int64_t nk, int64_t d, float scale, int causal) {
    return CALL(attention, FAKE_R(out), FAKE_R(lse), FAKE_R(q), FAKE_R(k), FAKE_R(v), b, heads,
                nq, nk, d, scale, causal);
}

#define FAKE_UNARY(op)                                                                        \
    static lh_status fake_##op(lh_backend *be, float *out, const float *x, int64_t n) {       \
        return CALL(op, FAKE_R(out), FAKE_R(x), n);                                           \
    }
FAKE_UNARY(silu)
FAKE_UNARY(gelu)
FAKE_UNARY(quick_gelu)
#undef FAKE_UNARY

static lh_status fake_geglu(lh_backend *be, float *out, const float *x, int64_t rows,
                            int64_t f) {
    return CALL(geglu, FAKE_R(out), FAKE_R(x), rows, f);
}
static lh_status fake_add(lh_backend *be, float *out, const float *a, const float *b,
                          int64_t n) {
    return CALL(add, FAKE_R(out), FAKE_R(a), FAKE_R(b), n);
}
static lh_status fake_mul(lh_backend *be, float *out, const float *a, const float *b,
                          int64_t n) {
    return CALL(mul, FAKE_R(out), FAKE_R(a), FAKE_R(b), n);
}
static lh_status fake_axpby(lh_backend *be, float *out, float alpha, const float *a, float beta,
                            const float *b, int64_t n) {
    return CALL(axpby, FAKE_R(out), alpha, FAKE_R(a), beta, FAKE_R(b), n);
}
static lh_status fake_add_channel_bias(lh_backend *be, float *out, const float *x,
                                       const float *bias, int64_t outer, int64_t c,
                                       int64_t inner) {
    return CALL(add_channel_bias, FAKE_R(out), FAKE_R(x), FAKE_R(bias), outer, c, inner);
}
static lh_status fake_upsample_nearest2x(lh_backend *be, float *out, const float *x, int64_t n,
                                         int64_t c, int64_t h, int64_t w) {
    return CALL(upsample_nearest2x, FAKE_R(out), FAKE_R(x), n, c, h, w);
}
static lh_status fake_concat_channels(lh_backend *be, float *out, const float *a,
                                      const float *b, int64_t n, int64_t ca, int64_t cb,
                                      int64_t hw) {
    return CALL(concat_channels, FAKE_R(out), FAKE_R(a), FAKE_R(b), n, ca, cb, hw);
}
static lh_status fake_transpose_c_hw(lh_backend *be, float *out, const float *x, int64_t n,
                                     int64_t c, int64_t hw) {
    return CALL(transpose_c_hw, FAKE_R(out), FAKE_R(x), n, c, hw);
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
    return CPU->ops->set_precision(CPU, act);
}
static lh_status fake_round(lh_backend *be, float *x, int64_t n, lh_dtype dtype) {
    return CALL(round, FAKE_R(x), n, dtype);
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

static lh_status fake_copy(lh_backend *be, void *dst, const void *src, size_t bytes) {
    return CALL(copy, FAKE_R(dst), FAKE_R(src), bytes);
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

/* Graphs: refused at graph_begin (the host then runs its graph path op by
 * op, which these tests check against the cpu backend). */
static lh_status fake_graph_begin(lh_backend *be) {
    (void)be;
    return LH_ERR_UNSUPPORTED;
}
static lh_status fake_graph_end(lh_backend *be, void **graph) {
    (void)be;
    if (graph) *graph = NULL;
    return LH_ERR_INVALID;
}
static lh_status fake_graph_launch(lh_backend *be, void *graph) {
    (void)be, (void)graph;
    return LH_ERR_INVALID;
}
static void fake_graph_free(lh_backend *be, void *graph) { (void)be, (void)graph; }

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
    .conv2d = fake_conv2d,
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
    .conv2d_backward = fake_conv2d_backward,
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
