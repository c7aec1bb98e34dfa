/* Pointwise ops on the device: SiLU, GELU (erf form), quick GELU, GEGLU,
 * add, axpby, the per-channel bias add, the sinusoidal timestep embedding
 * and the backwards of the activations and of the bias add. Grid-stride
 * loops on the backend's stream; full-precision expf/erfcf (no fast-math
 * intrinsics) so float32 results match kernels/cpu/ within 1e-5. Argument
 * checks and status codes are the cpu backend's (activations.c,
 * backward_act.c, elementwise.c, backward_dense.c, timestep_embedding.c). */
#include <math.h>
#include <stdlib.h>

#include "cuda.h"
#include "op_checks.h"

#define EW_BLOCK 256

/* ---- Device math ---- */

__device__ __forceinline__ float sigmoid1(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Phi(x) = erfc(-x / sqrt(2)) / 2: accurate in both tails. */
__device__ __forceinline__ float gelu_cdf(float x) {
    return 0.5f * erfcf(-x * 0.70710678118654752f);
}
__device__ __forceinline__ float gelu_pdf(float x) {
    return 0.39894228040143268f * expf(-0.5f * x * x);
}

/* ---- Activations ---- */

/* The forward kernels store in the activation precision `act` (lh__cu_act):
 * no rounding pass after them. */
__global__ void silu_kernel(float *out, const float *x, int64_t n, int act) {
    LH_CU_FOR(i, n) {
        float v = x[i];
        out[i] = lh__cu_act(v / (1.0f + expf(-v)), act);
    }
}

__global__ void gelu_kernel(float *out, const float *x, int64_t n, int act) {
    LH_CU_FOR(i, n) {
        float v = x[i];
        out[i] = lh__cu_act(v * gelu_cdf(v), act);
    }
}

__global__ void quick_gelu_kernel(float *out, const float *x, int64_t n, int act) {
    LH_CU_FOR(i, n) {
        float v = x[i];
        out[i] = lh__cu_act(v / (1.0f + expf(-1.702f * v)), act);
    }
}

/* out [rows, f] = hidden * gelu(gate), x [rows, 2f] = [hidden | gate] */
__global__ void geglu_kernel(float *out, const float *x, int64_t rows, int64_t f, int act) {
    LH_CU_FOR(i, rows * f) {
        int64_t r = i / f, j = i - r * f;
        float g = x[r * 2 * f + f + j];
        out[i] = lh__cu_act(x[r * 2 * f + j] * (g * gelu_cdf(g)), act);
    }
}

typedef enum { ACT_SILU, ACT_GELU, ACT_QUICK_GELU } act_kind;

static lh_status pointwise(lh_backend *be, act_kind kind, float *out, const float *x, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
    cudaStream_t s = lh__cuda(be)->stream;
    unsigned g = lh__cuda_grid(n, EW_BLOCK);
    int act = lh__cuda(be)->act;
    if (kind == ACT_SILU) silu_kernel<<<g, EW_BLOCK, 0, s>>>(out, x, n, act);
    else if (kind == ACT_GELU) gelu_kernel<<<g, EW_BLOCK, 0, s>>>(out, x, n, act);
    else quick_gelu_kernel<<<g, EW_BLOCK, 0, s>>>(out, x, n, act);
    return lh__cuda_launched(be, kind == ACT_SILU   ? "silu"
                                 : kind == ACT_GELU ? "gelu"
                                                    : "quick_gelu");
}

extern "C" lh_status lh__cuda_silu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, ACT_SILU, out, x, n);
}

extern "C" lh_status lh__cuda_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, ACT_GELU, out, x, n);
}

extern "C" lh_status lh__cuda_quick_gelu(lh_backend *be, float *out, const float *x, int64_t n) {
    return pointwise(be, ACT_QUICK_GELU, out, x, n);
}

extern "C" lh_status lh__cuda_geglu(lh_backend *be, float *out, /* [rows, f] */
                                    const float *x,             /* [rows, 2f] */
                                    int64_t rows, int64_t f) {
    int64_t total;
    if (rows < 0 || f < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul3(&total, rows, f, 2) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x) return LH_ERR_INVALID;
    geglu_kernel<<<lh__cuda_grid(rows * f, EW_BLOCK), EW_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, x, rows, f, lh__cuda(be)->act);
    return lh__cuda_launched(be, "geglu");
}

/* ---- Arithmetic ---- */

__global__ void add_kernel(float *out, const float *a, const float *b, int64_t n, int act) {
    LH_CU_FOR(i, n) out[i] = lh__cu_act(a[i] + b[i], act);
}

__global__ void mul_kernel(float *out, const float *a, const float *b, int64_t n, int act) {
    LH_CU_FOR(i, n) out[i] = lh__cu_act(__fmul_rn(a[i], b[i]), act);
}

__global__ void axpby_kernel(float *out, float alpha, const float *a, float beta, const float *b,
                             int64_t n, int act) {
    LH_CU_FOR(i, n) out[i] = lh__cu_act(alpha * a[i] + beta * b[i], act);
}

/* out[r * inner + k] = x[r * inner + k] + bias[r] */
__global__ void channel_bias_kernel(float *out, const float *x, const float *bias, int64_t total,
                                    int64_t inner, int act) {
    LH_CU_FOR(i, total) out[i] = lh__cu_act(x[i] + bias[i / inner], act);
}

static lh_status check_n(int64_t n, const void *p, const void *q, const void *r) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n > 0 && (!p || !q || !r)) return LH_ERR_INVALID;
    return LH_OK;
}

/* out = kernel(a, b) over n elements. */
static lh_status binary(lh_backend *be,
                        void (*kernel)(float *, const float *, const float *, int64_t, int),
                        float *out, const float *a, const float *b, int64_t n, const char *what) {
    lh_status st = check_n(n, out, a, b);
    if (st != LH_OK || n == 0) return st;
    kernel<<<lh__cuda_grid(n, EW_BLOCK), EW_BLOCK, 0, lh__cuda(be)->stream>>>(out, a, b, n,
                                                                             lh__cuda(be)->act);
    return lh__cuda_launched(be, what);
}

extern "C" lh_status lh__cuda_add(lh_backend *be, float *out, const float *a, const float *b,
                                  int64_t n) {
    return binary(be, add_kernel, out, a, b, n, "add");
}

extern "C" lh_status lh__cuda_mul(lh_backend *be, float *out, const float *a, const float *b,
                                  int64_t n) {
    return binary(be, mul_kernel, out, a, b, n, "mul");
}

extern "C" lh_status lh__cuda_axpby(lh_backend *be, float *out, float alpha, const float *a,
                                    float beta, const float *b, int64_t n) {
    lh_status st = check_n(n, out, a, b);
    if (st != LH_OK || n == 0) return st;
    axpby_kernel<<<lh__cuda_grid(n, EW_BLOCK), EW_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, alpha, a, beta, b, n, lh__cuda(be)->act);
    return lh__cuda_launched(be, "axpby");
}

extern "C" lh_status lh__cuda_add_channel_bias(lh_backend *be, float *out, /* [outer, c, inner] */
                                               const float *x,  /* [outer, c, inner] */
                                               const float *bias, /* [outer, c] */
                                               int64_t outer, int64_t c, int64_t inner) {
    int64_t rows, total;
    if (outer < 0 || c < 0 || inner < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&rows, outer, c) || !lh__cu_mul2(&total, rows, inner) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !bias) return LH_ERR_INVALID;
    channel_bias_kernel<<<lh__cuda_grid(total, EW_BLOCK), EW_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, x, bias, total, inner, lh__cuda(be)->act);
    return lh__cuda_launched(be, "add_channel_bias");
}

/* ---- Timestep embedding ---- */

/* Computed on the host with kernels/cpu/timestep_embedding.c's float32
 * arithmetic (the timesteps are host memory, the table is n x dim, tiny),
 * then uploaded: the same numbers bit for bit. Not part of a graph (an
 * upload): lh_unet_forward runs it before launching one. */
extern "C" lh_status lh__cuda_timestep_embedding(lh_backend *be, float *out, /* [n, dim] */
                                                 const float *timesteps,     /* [n], host */
                                                 int64_t n, int64_t dim, int flip_sin_to_cos,
                                                 float downscale_freq_shift, float max_period) {
    int64_t total;
    if (n < 0 || dim < 0 || !(max_period > 0.0f) || !isfinite(downscale_freq_shift))
        return LH_ERR_INVALID;
    if (!lh__cu_mul2(&total, n, dim) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !timesteps) return LH_ERR_INVALID;
    int64_t half = dim / 2;
    /* torch divides by the Python float (half - shift) cast to float32 */
    float denom = (float)((double)half - (double)downscale_freq_shift);
    if (half > 0 && denom == 0.0f) return LH_ERR_INVALID;
    float neg_log = (float)(-log((double)max_period));
    float *host = (float *)malloc((size_t)total * sizeof(float));
    if (!host) return LH_ERR_NOMEM;
    for (int64_t r = 0; r < n; r++) {
        float t = timesteps[r];
        float *row = host + r * dim;
        float *sin_part = row + (flip_sin_to_cos ? half : 0);
        float *cos_part = row + (flip_sin_to_cos ? 0 : half);
        for (int64_t i = 0; i < half; i++) {
            float exponent = (neg_log * (float)i) / denom;
            float arg = t * expf(exponent);
            sin_part[i] = sinf(arg);
            cos_part[i] = cosf(arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
    /* staged: no wait for the device, and host may go at once */
    lh_status st = lh__cuda_upload_async(be, out, host, (size_t)total * sizeof(float));
    free(host);
    return st;
}

/* ---- Backward ---- */

__global__ void silu_bw_kernel(float *dx, const float *dy, const float *x, int64_t n) {
    LH_CU_FOR(i, n) {
        float v = x[i], s = sigmoid1(v);
        dx[i] = dy[i] * s * (1.0f + v * (1.0f - s));
    }
}

__global__ void gelu_bw_kernel(float *dx, const float *dy, const float *x, int64_t n) {
    LH_CU_FOR(i, n) {
        float v = x[i];
        dx[i] = dy[i] * (gelu_cdf(v) + v * gelu_pdf(v));
    }
}

__global__ void quick_gelu_bw_kernel(float *dx, const float *dy, const float *x, int64_t n) {
    LH_CU_FOR(i, n) {
        float v = x[i], s = sigmoid1(1.702f * v);
        dx[i] = dy[i] * (s + 1.702f * v * s * (1.0f - s));
    }
}

/* dx [rows, 2f] = [dy gelu(gate) | dy hidden gelu'(gate)] */
__global__ void geglu_bw_kernel(float *dx, const float *dy, const float *x, int64_t rows,
                                int64_t f) {
    LH_CU_FOR(i, rows * f) {
        int64_t r = i / f, j = i - r * f;
        float hj = x[r * 2 * f + j], g = x[r * 2 * f + f + j], cdf = gelu_cdf(g), d = dy[i];
        dx[r * 2 * f + j] = d * g * cdf;
        dx[r * 2 * f + f + j] = d * hj * (cdf + g * gelu_pdf(g));
    }
}

static lh_status pointwise_bw(lh_backend *be, act_kind kind, float *dx, const float *dy,
                              const float *x, int64_t n) {
    if (n < 0) return LH_ERR_INVALID;
    if (!lh__cu_bytes_ok(n)) return LH_ERR_OVERFLOW;
    if (n == 0) return LH_OK;
    if (!dx || !dy || !x) return LH_ERR_INVALID;
    cudaStream_t s = lh__cuda(be)->stream;
    unsigned g = lh__cuda_grid(n, EW_BLOCK);
    if (kind == ACT_SILU) silu_bw_kernel<<<g, EW_BLOCK, 0, s>>>(dx, dy, x, n);
    else if (kind == ACT_GELU) gelu_bw_kernel<<<g, EW_BLOCK, 0, s>>>(dx, dy, x, n);
    else quick_gelu_bw_kernel<<<g, EW_BLOCK, 0, s>>>(dx, dy, x, n);
    return lh__cuda_launched(be, kind == ACT_SILU ? "silu_backward"
                                 : kind == ACT_GELU ? "gelu_backward"
                                                    : "quick_gelu_backward");
}

extern "C" lh_status lh__cuda_silu_backward(lh_backend *be, float *dx, const float *dy,
                                            const float *x, int64_t n) {
    return pointwise_bw(be, ACT_SILU, dx, dy, x, n);
}

extern "C" lh_status lh__cuda_gelu_backward(lh_backend *be, float *dx, const float *dy,
                                            const float *x, int64_t n) {
    return pointwise_bw(be, ACT_GELU, dx, dy, x, n);
}

extern "C" lh_status lh__cuda_quick_gelu_backward(lh_backend *be, float *dx, const float *dy,
                                                  const float *x, int64_t n) {
    return pointwise_bw(be, ACT_QUICK_GELU, dx, dy, x, n);
}

extern "C" lh_status lh__cuda_geglu_backward(lh_backend *be, float *dx, /* [rows, 2f] */
                                             const float *dy,           /* [rows, f] */
                                             const float *x,            /* [rows, 2f] */
                                             int64_t rows, int64_t f) {
    int64_t total;
    if (rows < 0 || f < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul3(&total, rows, f, 2) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!dx || !dy || !x) return LH_ERR_INVALID;
    geglu_bw_kernel<<<lh__cuda_grid(rows * f, EW_BLOCK), EW_BLOCK, 0, lh__cuda(be)->stream>>>(
        dx, dy, x, rows, f);
    return lh__cuda_launched(be, "geglu_backward");
}

/* dbias[r] = sum_k dy[r * inner + k]: one block per row (grid-stride over
 * rows), float64 partial sums as the cpu's, a shared-memory tree. */
__global__ void channel_bias_bw_kernel(float *dbias, const float *dy, int64_t rows,
                                       int64_t inner) {
    __shared__ double part[EW_BLOCK];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *row = dy + r * inner;
        double acc = 0.0;
        for (int64_t k = threadIdx.x; k < inner; k += blockDim.x) acc += row[k];
        part[threadIdx.x] = acc;
        __syncthreads();
        for (int w = EW_BLOCK / 2; w > 0; w >>= 1) {
            if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
            __syncthreads();
        }
        if (threadIdx.x == 0) dbias[r] = (float)part[0];
        __syncthreads(); /* part[0] read before the next row overwrites it */
    }
}

extern "C" lh_status lh__cuda_channel_bias_backward(lh_backend *be, float *dbias, /* [outer, c] */
                                                    const float *dy, /* [outer, c, inner] */
                                                    int64_t outer, int64_t c, int64_t inner) {
    int64_t rows, total;
    if (outer < 0 || c < 0 || inner < 0) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&rows, outer, c) || !lh__cu_mul2(&total, rows, inner) ||
        !lh__cu_bytes_ok(total))
        return LH_ERR_OVERFLOW;
    if (rows == 0) return LH_OK;
    if (!dbias || (total > 0 && !dy)) return LH_ERR_INVALID;
    if (total == 0)
        return lh__cuda_check(be,
                              cudaMemsetAsync(dbias, 0, (size_t)rows * sizeof(float),
                                              lh__cuda(be)->stream),
                              "channel_bias_backward");
    unsigned g = rows > 65535LL * 8 ? 65535u * 8 : (unsigned)rows;
    channel_bias_bw_kernel<<<g, EW_BLOCK, 0, lh__cuda(be)->stream>>>(dbias, dy, rows, inner);
    return lh__cuda_launched(be, "channel_bias_backward");
}
