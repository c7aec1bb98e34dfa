/* Batched strided GEMM, torch.nn.Linear and linear's backward on cuBLAS.
 * Row-major products run as their column-major transposes, C^T = op(B)^T
 * op(A)^T, so nothing is copied. FP32 (CUBLAS_COMPUTE_32F on the default
 * math mode: no TF32) unless lh_cuda.tf32 asks for
 * CUBLAS_COMPUTE_32F_FAST_TF32. With F16 or BF16 activations
 * (set_precision) the operands of a large product, already rounded to that
 * type, are converted to it in scratch and multiplied on the tensor cores
 * with float32 accumulation and a float32 C (as autocast's GEMMs
 * accumulate), which changes no input value; smaller products use TF32,
 * which holds such values exactly too. A frozen base weight held in the
 * activation type (linear_hw) is multiplied as it is, with no widened
 * float32 copy and no conversion back. Bias gradients are column
 * sums in double, in a fixed order (no atomics): the same bits every run. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits.h>

#include "block_reduce.cuh"
#include "cuda.h"
#include "op_checks.h"

#define GEMM_BATCH_MAX 65535 /* batch entries per cuBLAS call */
#define COLSUM_BX 32         /* columns per block of the column sums */
#define COLSUM_BY 8          /* row lanes per block */
#define COLSUM_CHUNKS 1024   /* row chunks, at most (partial sums in scratch) */

/* Products below this many multiply-adds stay in fp32: converting their
 * operands would cost more than the tensor cores save. */
#define GEMM_HALF_MIN (1LL << 22)

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- Kernels ---- */

/* C_b = beta C_b (0 when beta is 0, without reading C) for b in [0, batch):
 * the product when k is 0 or alpha is 0. */
static __global__ void gemm_scale(float *c, float beta, int64_t mn, int64_t batch,
                                  int64_t stride_c) {
    int64_t total = mn * batch;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        float *p = c + i / mn * stride_c + i % mn;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

/* out [rows, cols] += bias [cols] broadcast over rows, stored in the
 * activation precision act (the one rounding of acc + bias that cuBLAS's
 * beta = 1 over a bias-filled out gave, then the rounding pass's). */
static __global__ void add_rows(float *out, const float *bias, int64_t rows, int64_t cols,
                                int act) {
    int64_t total = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = lh__cu_act(out[i] + bias[i % cols], act);
}

/* part [chunk, cols] = sums of dy [rows, cols] over the rows of each chunk
 * of `chunk_rows`; block (32 columns, 8 row lanes), grid (column blocks, chunks). */
static __global__ void colsum_partial(double *part, const float *dy, int64_t rows, int64_t cols,
                               int64_t chunk_rows) {
    __shared__ double sh[COLSUM_BY][COLSUM_BX];
    int64_t j = blockIdx.x * (int64_t)COLSUM_BX + threadIdx.x;
    int64_t r0 = blockIdx.y * chunk_rows, r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    double acc = 0.0;
    if (j < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += COLSUM_BY) acc += (double)dy[r * cols + j];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        double s = 0.0;
        for (int y = 0; y < COLSUM_BY; y++) s += sh[y][threadIdx.x];
        part[blockIdx.y * cols + j] = s;
    }
}

/* out [cols] += sum over chunks of part [chunks, cols], in chunk order. */
static __global__ void colsum_finish(float *out, const double *part, int64_t chunks, int64_t cols) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cols;
         j += (int64_t)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int64_t c = 0; c < chunks; c++) s += part[c * cols + j];
        out[j] += (float)s;
    }
}

/* ---- Helpers ---- */

/* The operands of a product in the half type `act`, in scratch: *ha holds
 * the span_a elements of a, *hb the span_b of b; b_half: b is held in
 * `act` already and is used as it is. */
static lh_status half_operands(lh_backend *be, lh_dtype act, const float *a, int64_t span_a,
                               const void *b, int b_half, int64_t span_b, const void **ha,
                               const void **hb) {
    int64_t off = cdiv(span_a, 64) * 64; /* b's part starts 128-byte aligned */
    void *w = NULL;
    lh_status st = lh__cuda_scratch(be, (size_t)(off + (b_half ? 0 : span_b)) * 2, &w);
    if (st == LH_OK) st = lh__cuda_cast_in(be, w, act, a, LH_DTYPE_F32, span_a);
    if (st == LH_OK && !b_half)
        st = lh__cuda_cast_in(be, (uint16_t *)w + off, act, b, LH_DTYPE_F32, span_b);
    *ha = w;
    *hb = b_half ? b : (const void *)((uint16_t *)w + off);
    return st;
}

/* b [span] held in the half type t, widened into scratch (float32). */
static lh_status widen_operand(lh_backend *be, lh_dtype t, const void *b, int64_t span,
                               const float **out) {
    void *w = NULL;
    lh_status st = lh__cuda_scratch(be, (size_t)span * sizeof(float), &w);
    if (st == LH_OK) st = lh__cuda_cast_in(be, w, LH_DTYPE_F32, b, t, span);
    *out = (const float *)w;
    return st;
}

/* The product on checked arguments (m, n, k within int; a and b valid when
 * k > 0; strides checked for overflow). b is float32, or with b_half held
 * in the activation type (F16/BF16; a frozen base weight): a large product
 * multiplies it as it is, a small one widens it into scratch first. */
static lh_status gemm_run(lh_backend *be, float *c, const float *a, const void *b, int b_half,
                          int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          float beta, int64_t batch, int64_t stride_a, int64_t stride_b,
                          int64_t stride_c) {
    lh_cuda *cu = lh__cuda(be);
    if (m == 0 || n == 0 || batch == 0) return LH_OK;
    if (k == 0 || alpha == 0.0f) { /* C = beta C, without reading A or B */
        gemm_scale<<<lh__cuda_grid(m * n * batch, 256), 256, 0, cu->stream>>>(c, beta, m * n,
                                                                               batch, stride_c);
        return lh__cuda_launched(be, "gemm: scale");
    }
    /* column-major: C^T [n, m] = op(B)^T [n, k] op(A)^T [k, m] */
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = (int)(trans_a ? m : k), ldb = (int)(trans_b ? k : n);
    /* TF32 holds F16/BF16-rounded values exactly (conv.cu's conv_tf32) */
    int half_act = cu->act == LH_DTYPE_F16 || cu->act == LH_DTYPE_BF16;
    cublasComputeType_t ct =
        cu->tf32 || half_act ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    /* half operands: the elements each matrix spans, all batch entries */
    int64_t span_a = (batch - 1) * stride_a + m * k, span_b = (batch - 1) * stride_b + k * n;
    const void *A = a, *B = b;
    cudaDataType_t in_t = CUDA_R_32F;
    size_t esize = sizeof(float);
    if (half_act && (double)m * (double)n * (double)k >= (double)GEMM_HALF_MIN) {
        lh_status st = half_operands(be, cu->act, a, span_a, b, b_half, span_b, &A, &B);
        if (st != LH_OK) return st;
        in_t = cu->act == LH_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
        esize = 2;
        ct = CUBLAS_COMPUTE_32F;
    } else if (b_half) {
        const float *wb = NULL;
        lh_status st = widen_operand(be, cu->act, b, span_b, &wb);
        if (st != LH_OK) return st;
        B = wb;
    }
    for (int64_t b0 = 0; b0 < batch; b0 += GEMM_BATCH_MAX) {
        int nb = (int)(batch - b0 < GEMM_BATCH_MAX ? batch - b0 : GEMM_BATCH_MAX);
        const char *pa = (const char *)A + (size_t)(b0 * stride_a) * esize;
        const char *pb = (const char *)B + (size_t)(b0 * stride_b) * esize;
        lh_status st = lh__cuda_check_blas(
            be,
            cublasGemmStridedBatchedEx(cu->cublas, op_b, op_a, (int)n, (int)m, (int)k, &alpha, pb,
                                       in_t, ldb, (long long)stride_b, pa, in_t, lda,
                                       (long long)stride_a, &beta, c + b0 * stride_c, CUDA_R_32F,
                                       (int)n, (long long)stride_c, nb, ct, CUBLAS_GEMM_DEFAULT),
            "gemm: cublasGemmStridedBatchedEx");
        if (st != LH_OK) return st;
    }
    return LH_OK;
}

/* out [cols] += column sums of dy [rows, cols] (rows, cols > 0). */
static lh_status colsum_add(lh_backend *be, float *out, const float *dy, int64_t rows,
                            int64_t cols) {
    lh_cuda *cu = lh__cuda(be);
    int64_t chunk_rows = cdiv(rows, COLSUM_CHUNKS);
    if (chunk_rows < 256) chunk_rows = 256;
    int64_t chunks = cdiv(rows, chunk_rows), cells;
    if (!lh__cu_mul2(&cells, chunks, cols) || (uint64_t)cells > SIZE_MAX / sizeof(double))
        return LH_ERR_OVERFLOW;
    void *part = NULL;
    lh_status st = lh__cuda_scratch(be, (size_t)cells * sizeof(double), &part);
    if (st != LH_OK) return st;
    if (cdiv(cols, COLSUM_BX) > INT_MAX) return LH_ERR_UNSUPPORTED;
    dim3 grid((unsigned)cdiv(cols, COLSUM_BX), (unsigned)chunks), block(COLSUM_BX, COLSUM_BY);
    colsum_partial<<<grid, block, 0, cu->stream>>>((double *)part, dy, rows, cols, chunk_rows);
    if ((st = lh__cuda_launched(be, "colsum")) != LH_OK) return st;
    colsum_finish<<<lh__cuda_grid(cols, 256), 256, 0, cu->stream>>>(out, (const double *)part,
                                                                     chunks, cols);
    return lh__cuda_launched(be, "colsum");
}

/* ---- Ops ---- */

extern "C" lh_status lh__cuda_gemm(lh_backend *be, float *c, const float *a, const float *b,
                                   int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                   float alpha, float beta, int64_t batch, int64_t stride_a,
                                   int64_t stride_b, int64_t stride_c) {
    if (m < 0 || n < 0 || k < 0 || batch < 0 || stride_a < 0 || stride_b < 0 || stride_c < 0)
        return LH_ERR_INVALID;
    if (m == 0 || n == 0 || batch == 0) return LH_OK;
    if (!c || (k > 0 && (!a || !b))) return LH_ERR_INVALID;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX) return LH_ERR_UNSUPPORTED; /* cuBLAS int */
    int64_t last;
    if (!lh__cu_mul2(&last, batch - 1, stride_a) || !lh__cu_mul2(&last, batch - 1, stride_b) ||
        !lh__cu_mul2(&last, batch - 1, stride_c) || !lh__cu_mul2(&last, m, n) ||
        !lh__cu_mul2(&last, last, batch))
        return LH_ERR_OVERFLOW;
    return gemm_run(be, c, a, b, 0, trans_a != 0, trans_b != 0, m, n, k, alpha, beta, batch,
                    stride_a, stride_b, stride_c);
}

/* linear with w float32, or with w_half held in the activation type. */
static lh_status linear_run(lh_backend *be, float *out, /* [rows, n_out] */
                            const float *x,             /* [rows, n_in] */
                            const void *w, int w_half,  /* [n_out, n_in] */
                            const float *bias,          /* [n_out] or NULL */
                            int64_t rows, int64_t n_in, int64_t n_out) {
    if (rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    if (rows == 0 || n_out == 0) return LH_OK;
    if (!out || (n_in > 0 && (!x || !w))) return LH_ERR_INVALID;
    if (rows > INT_MAX || n_in > INT_MAX || n_out > INT_MAX) return LH_ERR_UNSUPPORTED;
    int64_t total;
    if (!lh__cu_mul2(&total, rows, n_out)) return LH_ERR_OVERFLOW;
    /* out = x w^T, then with a bias out = act(out + bias): rounded already */
    lh_status st = gemm_run(be, out, x, w, w_half, 0, 1, rows, n_out, n_in, 1.0f, 0.0f, 1, 0, 0, 0);
    if (st != LH_OK || !bias) return st;
    add_rows<<<lh__cuda_grid(total, 256), 256, 0, lh__cuda(be)->stream>>>(out, bias, rows, n_out,
                                                                          lh__cuda(be)->act);
    return lh__cuda_launched(be, "linear: bias");
}

/* linear's backward with w float32, or with w_half held in the activation
 * type (then dw is NULL: a half-held weight is frozen). */
static lh_status linear_backward_run(lh_backend *be, float *dx, /* [rows, n_in] */
                                     float *dw,                 /* [n_out, n_in] += */
                                     float *db,                 /* [n_out] += */
                                     const float *dy,           /* [rows, n_out] */
                                     const float *x,            /* [rows, n_in] */
                                     const void *w, int w_half, /* [n_out, n_in] */
                                     int64_t rows, int64_t n_in, int64_t n_out) {
    int64_t t;
    if (rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&t, rows, n_in) || !lh__cu_bytes_ok(t) || !lh__cu_mul2(&t, rows, n_out) ||
        !lh__cu_bytes_ok(t) || !lh__cu_mul2(&t, n_out, n_in) || !lh__cu_bytes_ok(t))
        return LH_ERR_OVERFLOW;
    if (rows == 0) return LH_OK; /* dx is empty; dw and db gain nothing */
    if ((n_out > 0 && !dy) || (dx && n_in > 0 && n_out > 0 && !w) || (dw && t > 0 && !x))
        return LH_ERR_INVALID;
    if ((dx || dw) && (rows > INT_MAX || n_in > INT_MAX || n_out > INT_MAX))
        return LH_ERR_UNSUPPORTED; /* cuBLAS int */
    lh_status st = LH_OK;
    /* dx [rows, n_in] = dy [rows, n_out] w [n_out, n_in] */
    if (dx) st = gemm_run(be, dx, dy, w, w_half, 0, 0, rows, n_in, n_out, 1.0f, 0.0f, 1, 0, 0, 0);
    /* dw [n_out, n_in] += dy^T x */
    if (st == LH_OK && dw)
        st = gemm_run(be, dw, dy, x, 0, 1, 0, n_out, n_in, rows, 1.0f, 1.0f, 1, 0, 0, 0);
    if (st == LH_OK && db && n_out > 0) st = colsum_add(be, db, dy, rows, n_out);
    return st;
}

extern "C" lh_status lh__cuda_linear(lh_backend *be, float *out, const float *x, const float *w,
                                     const float *bias, int64_t rows, int64_t n_in,
                                     int64_t n_out) {
    return linear_run(be, out, x, w, 0, bias, rows, n_in, n_out);
}

extern "C" lh_status lh__cuda_linear_backward(lh_backend *be, float *dx, float *dw, float *db,
                                              const float *dy, const float *x, const float *w,
                                              int64_t rows, int64_t n_in, int64_t n_out) {
    return linear_backward_run(be, dx, dw, db, dy, x, w, 0, rows, n_in, n_out);
}

/* The half-held weight's type must be the activation precision. */
static int held_ok(lh_backend *be, lh_dtype wdt) {
    lh_dtype act = lh__cuda(be)->act;
    return (wdt == LH_DTYPE_F16 || wdt == LH_DTYPE_BF16) && wdt == act;
}

extern "C" lh_status lh__cuda_linear_hw(lh_backend *be, float *out, const float *x, const void *w,
                                        lh_dtype wdt, const float *bias, int64_t rows,
                                        int64_t n_in, int64_t n_out) {
    if (!held_ok(be, wdt)) return LH_ERR_INVALID;
    return linear_run(be, out, x, w, 1, bias, rows, n_in, n_out);
}

extern "C" lh_status lh__cuda_linear_backward_hw(lh_backend *be, float *dx, float *db,
                                                 const float *dy, const void *w, lh_dtype wdt,
                                                 int64_t rows, int64_t n_in, int64_t n_out) {
    if (!held_ok(be, wdt)) return LH_ERR_INVALID;
    return linear_backward_run(be, dx, NULL, db, dy, NULL, w, 1, rows, n_in, n_out);
}
