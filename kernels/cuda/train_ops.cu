/* Training updates on the device: scale, scale_by, sum_squares,
 * mse_backward, step_check, adamw, copy and LoRA dropout
 * (kernels/backend.h). Sums run in double with a fixed reduction
 * order (one block per row, or per-block partials summed by one block), so
 * a run repeats bit for bit. AdamW does kernels/adamw.h's steps with
 * round-to-nearest intrinsics, so nvcc contracts nothing into an FMA that
 * the cpu reference does not have. Argument checks are train_ops.c's. */
#include "../dropout.h"
#include "block_reduce.cuh"
#include "cuda.h"
#include "op_checks.h"

#define TO_BLOCK 256
#define SUM_BLOCKS 512

__global__ void scale_kernel(float *x, int64_t n, float s) {
    LH_CU_FOR(i, n) x[i] = __fmul_rn(x[i], s);
}

extern "C" lh_status lh__cuda_scale(lh_backend *be, float *x, int64_t n, float s) {
    if (n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    scale_kernel<<<lh__cuda_grid(n, TO_BLOCK), TO_BLOCK, 0, lh__cuda(be)->stream>>>(x, n, s);
    return lh__cuda_launched(be, "scale");
}

__global__ void scale_by_kernel(float *x, int64_t n, const float *s) {
    float k = *s;
    LH_CU_FOR(i, n) x[i] = __fmul_rn(x[i], k);
}

extern "C" lh_status lh__cuda_scale_by(lh_backend *be, float *x, int64_t n, const float *s) {
    if (!s || n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    scale_by_kernel<<<lh__cuda_grid(n, TO_BLOCK), TO_BLOCK, 0, lh__cuda(be)->stream>>>(x, n, s);
    return lh__cuda_launched(be, "scale_by");
}

/* part[blockIdx.x] = the block's share of sum x^2 (grid-stride, fixed grid) */
__global__ void sum_squares_partial(double *part, const float *x, int64_t n) {
    __shared__ double shm[32];
    double s = 0.0;
    LH_CU_FOR(i, n) {
        double v = (double)x[i];
        s += v * v;
    }
    s = lh__block_sum(s, shm);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_parts(double *out, const double *part, int parts) {
    __shared__ double shm[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) s += part[i];
    s = lh__block_sum(s, shm);
    if (threadIdx.x == 0) *out = s;
}

extern "C" lh_status lh__cuda_sum_squares(lh_backend *be, double *out, const float *x,
                                          int64_t n) {
    if (!out || n < 0 || (n > 0 && !x)) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    cudaStream_t s = lh__cuda(be)->stream;
    if (n == 0) return lh__cuda_check(be, cudaMemsetAsync(out, 0, sizeof *out, s), "sum_squares");
    void *part = NULL;
    lh_status st = lh__cuda_scratch(be, SUM_BLOCKS * sizeof(double), &part);
    if (st != LH_OK) return st;
    sum_squares_partial<<<SUM_BLOCKS, TO_BLOCK, 0, s>>>((double *)part, x, n);
    if ((st = lh__cuda_launched(be, "sum_squares")) != LH_OK) return st;
    sum_parts<<<1, TO_BLOCK, 0, s>>>(out, (const double *)part, SUM_BLOCKS);
    return lh__cuda_launched(be, "sum_squares");
}

/* Up to this many rows take their coefficients as a kernel argument (no
 * copy to wait for); more go through scratch. */
#define MSE_ROWS_ARG 64
typedef struct mse_coef {
    double v[MSE_ROWS_ARG];
} mse_coef;

/* One block per row: dpred = coef[r] * d, sq[r] = sum d^2 (d in double);
 * coef from `dcoef` (device) when not NULL, else from `acoef`. */
__global__ void mse_backward_kernel(float *dpred, double *sq, const float *pred,
                                    const float *target, const double *dcoef, mse_coef acoef,
                                    int64_t cols) {
    __shared__ double shm[32];
    int64_t r = blockIdx.x, base = r * cols;
    double k = dcoef ? dcoef[r] : acoef.v[r], s = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        double d = (double)pred[base + j] - (double)target[base + j];
        s += d * d;
        dpred[base + j] = (float)(k * d);
    }
    s = lh__block_sum(s, shm);
    if (threadIdx.x == 0) sq[r] = s;
}

extern "C" lh_status lh__cuda_mse_backward(lh_backend *be, float *dpred, double *sq,
                                           const float *pred, const float *target,
                                           const double *coef, int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0) return LH_ERR_INVALID;
    if (rows > 0 && (!sq || !coef || (cols > 0 && (!dpred || !pred || !target))))
        return LH_ERR_INVALID;
    int64_t total;
    if (!lh__cu_mul2(&total, rows, cols) || !lh__cu_bytes_ok(total) || rows > 65535LL * 32768)
        return LH_ERR_OVERFLOW;
    if (rows == 0) return LH_OK;
    cudaStream_t s = lh__cuda(be)->stream;
    mse_coef acoef;
    void *dcoef = NULL;
    if (rows <= MSE_ROWS_ARG) {
        for (int64_t r = 0; r < rows; r++) acoef.v[r] = coef[r];
    } else {
        lh_status st = lh__cuda_scratch(be, (size_t)rows * sizeof(double), &dcoef);
        /* staged: the caller may free coef at once, and nothing waits */
        if (st == LH_OK) st = lh__cuda_upload_async(be, dcoef, coef, (size_t)rows * sizeof(double));
        if (st != LH_OK) return st;
    }
    mse_backward_kernel<<<(unsigned)rows, TO_BLOCK, 0, s>>>(dpred, sq, pred, target,
                                                           (const double *)dcoef, acoef, cols);
    return lh__cuda_launched(be, "mse_backward");
}

/* train_ops.c's step_check: the block scans the U-Net's counts (one per
 * unit and call: thousands with gradient accumulation), then thread 0 sums
 * the norms in the cpu's order and roundings (a few hundred tensors: the
 * loop costs microseconds). */
__global__ void step_check_kernel(float *coef, int64_t *found, const double *sq, int64_t n,
                                  const int64_t *counts, int64_t nc, float max_norm) {
    int mine = 0;
    for (int64_t i = threadIdx.x; i < nc; i += blockDim.x) mine |= counts[i] != 0;
    int any = __syncthreads_or(mine);
    if (threadIdx.x != 0) return;
    int64_t bad = any;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(sq[i])) bad = 1;
        double norm = (double)__double2float_rn(__dsqrt_rn(sq[i]));
        sum = __dadd_rn(sum, __dmul_rn(norm, norm));
    }
    float c = 1.0f;
    if (!bad && max_norm > 0.0f) {
        float total = __double2float_rn(__dsqrt_rn(sum));
        float k = __fdiv_rn(max_norm, __fadd_rn(total, 1e-6f));
        if (k < 1.0f) c = k;
    }
    *coef = c;
    *found = bad;
}

extern "C" lh_status lh__cuda_step_check(lh_backend *be, float *coef, int64_t *found,
                                         const double *sq, int64_t n, const int64_t *counts,
                                         int64_t nc, float max_norm) {
    if (!coef || !found || n < 0 || nc < 0 || (n > 0 && !sq) || (nc > 0 && !counts) ||
        isnan(max_norm))
        return LH_ERR_INVALID;
    step_check_kernel<<<1, TO_BLOCK, 0, lh__cuda(be)->stream>>>(coef, found, sq, n, counts, nc,
                                                                max_norm);
    return lh__cuda_launched(be, "step_check");
}

/* kernels/adamw.h, element by element, every rounding explicit; nothing
 * when *skip (step_check's found) is set. */
__global__ void adamw_kernel(float *param, float *exp_avg, float *exp_avg_sq, const float *grad,
                             int64_t n, lh_adamw_coef c, const int64_t *skip) {
    if (skip && *skip) return;
    LH_CU_FOR(i, n) {
        float g = grad[i], p = param[i];
        if (c.decoupled) p = __fmul_rn(p, c.decay);
        float self = exp_avg[i], diff = __fsub_rn(g, self);
        float m = fabsf(c.w1) < 0.5f ? __fmaf_rn(c.w1, diff, self)
                                     : __fmaf_rn(__fsub_rn(c.w1, 1.0f), diff, g);
        float v = __fmul_rn(exp_avg_sq[i], c.b2);
        v = __fmaf_rn(__fmul_rn(c.c2, g), g, v);
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.bc2s), c.eps);
        p = __fadd_rn(p, __fdiv_rn(__fmul_rn(c.neg_step, m), denom));
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p;
    }
}

extern "C" lh_status lh__cuda_adamw(lh_backend *be, float *param, float *exp_avg,
                                    float *exp_avg_sq, const float *grad, int64_t n,
                                    const lh_adamw_coef *coef, const int64_t *skip) {
    if (!coef || n < 0 || (n > 0 && (!param || !exp_avg || !exp_avg_sq || !grad)))
        return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    adamw_kernel<<<lh__cuda_grid(n, TO_BLOCK), TO_BLOCK, 0, lh__cuda(be)->stream>>>(
        param, exp_avg, exp_avg_sq, grad, n, *coef, skip);
    return lh__cuda_launched(be, "adamw");
}

/* train_ops.c's dropout loops; explicit roundings (no FMA in the backward). */
__global__ void dropout_kernel(float *out, const float *x, int64_t n, uint64_t seed, double p,
                               float keep) {
    LH_CU_FOR(i, n) out[i] = lh_dropout_kept(seed, i, p) ? __fmul_rn(x[i], keep) : 0.0f;
}

__global__ void dropout_backward_kernel(float *dx, const float *dxd, int64_t n, uint64_t seed,
                                        double p, float keep) {
    LH_CU_FOR(i, n) {
        if (lh_dropout_kept(seed, i, p)) dx[i] = __fadd_rn(dx[i], __fmul_rn(keep, dxd[i]));
    }
}

extern "C" lh_status lh__cuda_dropout(lh_backend *be, float *out, const float *x, int64_t n,
                                      uint64_t seed, double p) {
    if (n < 0 || (n > 0 && (!out || !x)) || !(p >= 0.0 && p < 1.0)) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    float keep = (float)(1.0 / (1.0 - p));
    dropout_kernel<<<lh__cuda_grid(n, TO_BLOCK), TO_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, x, n, seed, p, keep);
    return lh__cuda_launched(be, "dropout");
}

extern "C" lh_status lh__cuda_dropout_backward(lh_backend *be, float *dx, const float *dxd,
                                               int64_t n, uint64_t seed, double p) {
    if (n < 0 || (n > 0 && (!dx || !dxd)) || !(p >= 0.0 && p < 1.0)) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    float keep = (float)(1.0 / (1.0 - p));
    dropout_backward_kernel<<<lh__cuda_grid(n, TO_BLOCK), TO_BLOCK, 0, lh__cuda(be)->stream>>>(
        dx, dxd, n, seed, p, keep);
    return lh__cuda_launched(be, "dropout_backward");
}

extern "C" lh_status lh__cuda_copy(lh_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes && (!dst || !src)) return LH_ERR_INVALID;
    if (!bytes) return LH_OK;
    return lh__cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                              lh__cuda(be)->stream),
                          "copy");
}
