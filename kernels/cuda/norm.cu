/* torch.nn.GroupNorm (optionally fused with SiLU) and torch.nn.LayerNorm
 * with their backwards, computed as kernels/cpu/group_norm.c, layer_norm.c
 * and backward_norm.c do: mean, then biased variance in a second pass, both
 * accumulated in double; eps inside the square root; the normalisation in
 * float32. One block per (image, group) or per row, block-stride loops over
 * its elements (any hw * channels per group); a group norm with few groups
 * of many values (the VAE at 512x512: 32 groups of a million; the U-Net's
 * first level at 64x64: 64 of 40960) spreads each group over many blocks
 * instead: partial sums, then the statistics, then the normalisation, four
 * kernels (the backward: the statistics so, then per-channel sums a block
 * per (image, channel), per-group coefficients, and dx elementwise).
 * Parameter gradients go through partial sums in double in scratch (per
 * (image, channel), or per (row chunk, column)), added up by a second
 * kernel in a fixed order: no atomics, so the same bits every run. */
#include <limits.h>

#include "block_reduce.cuh"
#include "cuda.h"
#include "op_checks.h"

#define GN_BLOCK 512        /* threads per (image, group) */
#define LN_BLOCK 256        /* threads per row */
#define LN_BX 32            /* columns per block of layer norm's parameter sums */
#define LN_BY 8             /* row lanes per block */
#define LN_CHUNKS 1024      /* row chunks, at most */
#define NORM_GRID (1 << 20) /* blocks, at most (they loop over the tasks) */
#define GN_SPLIT_LEN 32768  /* values a group from which groups are split... */
#define GN_SPLIT_TASKS 256  /* ...when there are fewer groups than this */
#define GN_CHUNK 16384      /* values per block of the split path */

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static unsigned task_grid(int64_t tasks) {
    return (unsigned)(tasks < NORM_GRID ? (tasks > 0 ? tasks : 1) : NORM_GRID);
}

/* ---- Device helpers ---- */

/* Mean and 1 / sqrt(biased variance + eps) of x [len], two passes in
 * double, as the cpu's lh__sum_f32 / lh__sumsq_dev_f32; to every thread. */
static __device__ void block_stats(float *mean_f, float *rstd_f, const float *x, int64_t len,
                                   float eps, double *shm) {
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) s += (double)x[i];
    double mean = lh__block_sum(s, shm) / (double)len, q = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        double d = (double)x[i] - mean;
        q += d * d;
    }
    q = lh__block_sum(q, shm);
    *rstd_f = (float)(1.0 / sqrt(q / (double)len + (double)eps));
    *mean_f = (float)mean;
}

/* dy * silu'(y) if `silu`, else dy. */
static __device__ __forceinline__ float silu_chain(float dy, float y, int silu);

/* One channel's sums over its hw values, to every thread of the block:
 * s1 = sum g, s2 = sum g xhat, g = dy through the SiLU, in double. */
static __device__ void channel_sums(double *s1, double *s2, const float *xs, const float *ds,
                                    int64_t hw, float mf, float rstd, float a, float b, int silu,
                                    double *shm) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
        float xh = (xs[i] - mf) * rstd, gy = silu_chain(ds[i], xh * a + b, silu);
        t1 += (double)gy;
        t2 += (double)(gy * xh);
    }
    *s1 = lh__block_sum(t1, shm);
    *s2 = lh__block_sum(t2, shm);
}

/* dy * silu'(y) if `silu`, else dy. */
static __device__ __forceinline__ float silu_chain(float dy, float y, int silu) {
    if (!silu) return dy;
    float s = 1.0f / (1.0f + expf(-y));
    return dy * s * (1.0f + y * (1.0f - s));
}

/* ---- Group norm ---- */

/* Task t = (image, group) of x [n, c, hw]: cg * hw contiguous values. */
static __global__ void group_norm_fwd(float *out, const float *x, const float *gamma,
                                      const float *beta, int64_t tasks, int64_t c, int64_t hw,
                                      int64_t groups, float eps, int silu, int act) {
    __shared__ double shm[32];
    int64_t cg = c / groups, len = cg * hw;
    for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {
        int64_t c0 = t % groups * cg, off = (t / groups * c + c0) * hw;
        const float *xs = x + off;
        float *os = out + off;
        float mf, rstd;
        block_stats(&mf, &rstd, xs, len, eps, &shm[0]);
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
            int64_t ch = c0 + i / hw;
            float a = rstd * gamma[ch], y = (xs[i] - mf) * a + beta[ch];
            os[i] = lh__cu_act(silu ? y / (1.0f + expf(-y)) : y, act);
        }
    }
}

/* ---- Group norm over many blocks a group ----
 * Task t's values split into `chunks` chunks of GN_CHUNK; part [tasks,
 * chunks] holds each chunk's sum, then its sum of squared deviations. */

/* The chunk's range of task t (block blockIdx.x = t * chunks + chunk). */
static __device__ void gn_chunk(const float **xs, int64_t *n, const float *x, int64_t len,
                                int64_t chunks) {
    int64_t t = blockIdx.x / chunks, ch = blockIdx.x % chunks, i0 = ch * GN_CHUNK;
    *xs = x + t * len + i0;
    *n = len - i0 < GN_CHUNK ? len - i0 : GN_CHUNK;
}

/* The mean of task t from its chunks' sums, added in chunk order. */
static __device__ double gn_mean(const double *part, int64_t t, int64_t chunks, int64_t len) {
    double s = 0.0;
    for (int64_t k = 0; k < chunks; k++) s += part[t * chunks + k];
    return s / (double)len;
}

static __global__ void gn_split_sum(double *part, const float *x, int64_t len, int64_t chunks) {
    __shared__ double shm[32];
    const float *xs;
    int64_t n;
    gn_chunk(&xs, &n, x, len, chunks);
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)xs[i];
    s = lh__block_sum(s, shm);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

static __global__ void gn_split_sq(double *sq, const double *part, const float *x, int64_t len,
                                   int64_t chunks) {
    __shared__ double shm[32], mean_s;
    const float *xs;
    int64_t n;
    gn_chunk(&xs, &n, x, len, chunks);
    if (threadIdx.x == 0) mean_s = gn_mean(part, blockIdx.x / chunks, chunks, len);
    __syncthreads();
    double mean = mean_s, q = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)xs[i] - mean;
        q += d * d;
    }
    q = lh__block_sum(q, shm);
    if (threadIdx.x == 0) sq[blockIdx.x] = q;
}

/* stats [tasks, 2] = mean, rstd (float) as block_stats gives them. */
static __global__ void gn_split_stats(float *stats, const double *part, const double *sq,
                                      int64_t tasks, int64_t chunks, int64_t len, float eps) {
    int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= tasks) return;
    double q = 0.0;
    for (int64_t k = 0; k < chunks; k++) q += sq[t * chunks + k];
    stats[2 * t] = (float)gn_mean(part, t, chunks, len);
    stats[2 * t + 1] = (float)(1.0 / sqrt(q / (double)len + (double)eps));
}

/* out [n, c, hw] normalised with its group's stats (as group_norm_fwd). */
static __global__ void gn_split_apply(float *out, const float *x, const float *gamma,
                                      const float *beta, const float *stats, int64_t total,
                                      int64_t c, int64_t hw, int64_t groups, int silu, int act) {
    int64_t cg = c / groups;
    LH_CU_FOR(i, total) {
        int64_t ch = i / hw % c, t = i / hw / c * groups + ch / cg;
        float mf = stats[2 * t], a = stats[2 * t + 1] * gamma[ch];
        float y = (x[i] - mf) * a + beta[ch];
        out[i] = lh__cu_act(silu ? y / (1.0f + expf(-y)) : y, act);
    }
}

/* Whether group norms of these sizes take the split path. */
static int gn_split(int64_t tasks, int64_t len) { return len >= GN_SPLIT_LEN && tasks < GN_SPLIT_TASKS; }

/* The split path's scratch: chunk partials, then stats [tasks, 2]. */
static size_t gn_split_bytes(int64_t tasks, int64_t len) {
    return (size_t)(tasks * cdiv(len, GN_CHUNK)) * 2 * sizeof(double) +
           (size_t)tasks * 2 * sizeof(float);
}

/* stats [tasks, 2] (mean, rstd) of x's groups, the partials in `partials`. */
static lh_status gn_split_run_stats(lh_backend *be, float *stats, double *partials,
                                    const float *x, int64_t tasks, int64_t len, float eps) {
    int64_t chunks = cdiv(len, GN_CHUNK), blocks = tasks * chunks;
    double *part = partials, *sq = part + blocks;
    cudaStream_t s = lh__cuda(be)->stream;
    gn_split_sum<<<(unsigned)blocks, GN_BLOCK, 0, s>>>(part, x, len, chunks);
    gn_split_sq<<<(unsigned)blocks, GN_BLOCK, 0, s>>>(sq, part, x, len, chunks);
    gn_split_stats<<<(unsigned)cdiv(tasks, 128), 128, 0, s>>>(stats, part, sq, tasks, chunks,
                                                             len, eps);
    return lh__cuda_launched(be, "group_norm: statistics");
}

static lh_status group_norm_split(lh_backend *be, float *out, const float *x, const float *gamma,
                                  const float *beta, int64_t n, int64_t c, int64_t hw,
                                  int64_t groups, float eps, int silu) {
    int64_t tasks = n * groups, len = c / groups * hw, total = n * c * hw;
    void *scratch = NULL;
    lh_status st = lh__cuda_scratch(be, gn_split_bytes(tasks, len), &scratch);
    if (st != LH_OK) return st;
    int64_t blocks = tasks * cdiv(len, GN_CHUNK);
    float *stats = (float *)((double *)scratch + 2 * blocks);
    if ((st = gn_split_run_stats(be, stats, (double *)scratch, x, tasks, len, eps)) != LH_OK)
        return st;
    cudaStream_t s = lh__cuda(be)->stream;
    gn_split_apply<<<lh__cuda_grid(total, 256), 256, 0, s>>>(
        out, x, gamma, beta, stats, total, c, hw, groups, silu, lh__cuda(be)->act);
    return lh__cuda_launched(be, "group_norm");
}

/* Task t = (image, group): dx (if wanted) and the per-channel sums sb[img,
 * ch] = sum dy', sg[img, ch] = sum dy' xhat (if wanted), dy' = dy through
 * the SiLU; as the cpu's group_norm_back_one. */
static __global__ void group_norm_bwd(float *dx, double *sb, double *sg, const float *dy,
                                      const float *x, const float *gamma, const float *beta,
                                      int64_t tasks, int64_t c, int64_t hw, int64_t groups,
                                      float eps, int silu) {
    __shared__ double shm[32];
    int64_t cg = c / groups, len = cg * hw;
    for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {
        int64_t c0 = t % groups * cg, ch0 = t / groups * c + c0, off = ch0 * hw;
        const float *xg = x + off, *dg = dy + off;
        float mf, rstd;
        block_stats(&mf, &rstd, xg, len, eps, &shm[0]);
        double m1 = 0.0, m2 = 0.0; /* sums of g and g xhat over the group */
        for (int64_t ch = 0; ch < cg; ch++) {
            float a = gamma[c0 + ch], b = silu ? beta[c0 + ch] : 0.0f;
            double s1, s2;
            channel_sums(&s1, &s2, xg + ch * hw, dg + ch * hw, hw, mf, rstd, a, b, silu, shm);
            if (sb && threadIdx.x == 0) {
                sb[ch0 + ch] = s1;
                sg[ch0 + ch] = s2;
            }
            m1 += s1 * (double)a;
            m2 += s2 * (double)a;
        }
        if (!dx) continue;
        float k1 = (float)(m1 / (double)len), k2 = (float)(m2 / (double)len);
        float *os = dx + off;
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
            int64_t ch = c0 + i / hw;
            float a = gamma[ch], b = silu ? beta[ch] : 0.0f;
            float xh = (xg[i] - mf) * rstd, gy = silu_chain(dg[i], xh * a + b, silu);
            os[i] = rstd * (gy * a - k1 - xh * k2);
        }
    }
}

/* The split backward: per (image, channel) block, sb and sg [n, c] (as
 * group_norm_bwd's s1, s2: the same loop and block sum), from the group's
 * stats; then per task k [tasks, 2] = (m1 / len, m2 / len); then dx. */
static __global__ void gn_split_bwd_sums(double *sb, double *sg, const float *dy, const float *x,
                                         const float *gamma, const float *beta,
                                         const float *stats, int64_t c, int64_t hw,
                                         int64_t groups, int silu) {
    __shared__ double shm[32];
    int64_t nc = blockIdx.x, ch = nc % c, t = nc / c * groups + ch / (c / groups);
    const float *xs = x + nc * hw, *ds = dy + nc * hw;
    float mf = stats[2 * t], rstd = stats[2 * t + 1], a = gamma[ch], b = silu ? beta[ch] : 0.0f;
    double s1, s2;
    channel_sums(&s1, &s2, xs, ds, hw, mf, rstd, a, b, silu, shm);
    if (threadIdx.x == 0) {
        sb[nc] = s1;
        sg[nc] = s2;
    }
}

static __global__ void gn_split_bwd_k(float *k, const double *sb, const double *sg,
                                      const float *gamma, int64_t tasks, int64_t c,
                                      int64_t groups, int64_t len) {
    int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= tasks) return;
    int64_t cg = c / groups, c0 = t % groups * cg, nc0 = t / groups * c + c0;
    double m1 = 0.0, m2 = 0.0;
    for (int64_t ch = 0; ch < cg; ch++) {
        m1 += sb[nc0 + ch] * (double)gamma[c0 + ch];
        m2 += sg[nc0 + ch] * (double)gamma[c0 + ch];
    }
    k[2 * t] = (float)(m1 / (double)len);
    k[2 * t + 1] = (float)(m2 / (double)len);
}

static __global__ void gn_split_bwd_dx(float *dx, const float *dy, const float *x,
                                       const float *gamma, const float *beta,
                                       const float *stats, const float *k, int64_t total,
                                       int64_t c, int64_t hw, int64_t groups, int silu) {
    int64_t cg = c / groups;
    LH_CU_FOR(i, total) {
        int64_t ch = i / hw % c, t = i / hw / c * groups + ch / cg;
        float mf = stats[2 * t], rstd = stats[2 * t + 1];
        float a = gamma[ch], b = silu ? beta[ch] : 0.0f;
        float xh = (x[i] - mf) * rstd, gy = silu_chain(dy[i], xh * a + b, silu);
        dx[i] = rstd * (gy * a - k[2 * t] - xh * k[2 * t + 1]);
    }
}

/* dgamma [c] += sum over images of sg [n, c]; dbeta likewise from sb. */
static __global__ void group_norm_params(float *dgamma, float *dbeta, const double *sg,
                                         const double *sb, int64_t n, int64_t c) {
    for (int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; ch < c;
         ch += (int64_t)gridDim.x * blockDim.x) {
        double g = 0.0, b = 0.0;
        for (int64_t img = 0; img < n; img++) {
            g += sg[img * c + ch];
            b += sb[img * c + ch];
        }
        if (dgamma) dgamma[ch] += (float)g;
        if (dbeta) dbeta[ch] += (float)b;
    }
}

/* ---- Layer norm ---- */

static __global__ void layer_norm_fwd(float *out, const float *x, const float *gamma,
                                      const float *beta, int64_t rows, int64_t cols, float eps,
                                      int act) {
    __shared__ double shm[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xs = x + r * cols;
        float *os = out + r * cols;
        float mf, rstd;
        block_stats(&mf, &rstd, xs, cols, eps, &shm[0]);
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
            os[i] = lh__cu_act((xs[i] - mf) * rstd * gamma[i] + beta[i], act);
    }
}

/* Per row: mean and rstd (if wanted, for the parameter sums) and dx (if wanted). */
static __global__ void layer_norm_bwd(float *dx, float *mean, float *rstd_out, const float *dy,
                               const float *x, const float *gamma, int64_t rows, int64_t cols,
                               float eps) {
    __shared__ double shm[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xs = x + r * cols, *ds = dy + r * cols;
        float mf, rstd;
        block_stats(&mf, &rstd, xs, cols, eps, &shm[0]);
        if (mean && threadIdx.x == 0) {
            mean[r] = mf;
            rstd_out[r] = rstd;
        }
        if (!dx) continue;
        double m1 = 0.0, m2 = 0.0;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
            float g = ds[i] * gamma[i];
            m1 += (double)g;
            m2 += (double)(g * ((xs[i] - mf) * rstd));
        }
        m1 = lh__block_sum(m1, &shm[0]);
        m2 = lh__block_sum(m2, &shm[0]);
        float k1 = (float)(m1 / (double)cols), k2 = (float)(m2 / (double)cols);
        float *os = dx + r * cols;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
            float xh = (xs[i] - mf) * rstd;
            os[i] = rstd * (ds[i] * gamma[i] - k1 - xh * k2);
        }
    }
}

/* pg/pb [chunk, cols] = sums over the chunk's rows of dy xhat and dy; block
 * (32 columns, 8 row lanes), grid (column blocks, chunks). */
static __global__ void layer_norm_params_partial(double *pg, double *pb, const float *dy,
                                                 const float *x, const float *mean,
                                                 const float *rstd, int64_t rows, int64_t cols,
                                                 int64_t chunk_rows) {
    __shared__ double sg[LN_BY][LN_BX], sb[LN_BY][LN_BX];
    int64_t j = blockIdx.x * (int64_t)LN_BX + threadIdx.x;
    int64_t r0 = blockIdx.y * chunk_rows, r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    double g = 0.0, b = 0.0;
    if (j < cols) {
        for (int64_t r = r0 + threadIdx.y; r < r1; r += LN_BY) {
            float d = dy[r * cols + j];
            g += (double)(d * ((x[r * cols + j] - mean[r]) * rstd[r]));
            b += (double)d;
        }
    }
    sg[threadIdx.y][threadIdx.x] = g;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        double tg = 0.0, tb = 0.0;
        for (int y = 0; y < LN_BY; y++) {
            tg += sg[y][threadIdx.x];
            tb += sb[y][threadIdx.x];
        }
        pg[blockIdx.y * cols + j] = tg;
        pb[blockIdx.y * cols + j] = tb;
    }
}

/* dgamma/dbeta [cols] += sums over chunks of pg/pb [chunks, cols], in chunk order. */
static __global__ void layer_norm_params_finish(float *dgamma, float *dbeta, const double *pg,
                                         const double *pb, int64_t chunks, int64_t cols) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cols;
         j += (int64_t)gridDim.x * blockDim.x) {
        double g = 0.0, b = 0.0;
        for (int64_t k = 0; k < chunks; k++) {
            g += pg[k * cols + j];
            b += pb[k * cols + j];
        }
        if (dgamma) dgamma[j] += (float)g;
        if (dbeta) dbeta[j] += (float)b;
    }
}

/* ---- Ops ---- */

extern "C" lh_status lh__cuda_group_norm(lh_backend *be, float *out, /* [n, c, hw] */
                                         const float *x,             /* [n, c, hw] */
                                         const float *gamma, const float *beta, /* [c] */
                                         int64_t n, int64_t c, int64_t hw, int64_t groups,
                                         float eps, int silu) {
    int64_t total;
    if (n < 0 || c < 0 || hw < 0 || groups < 1 || c % groups != 0 || !(eps >= 0.0f))
        return LH_ERR_INVALID;
    if (!lh__cu_mul3(&total, n, c, hw) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !gamma || !beta) return LH_ERR_INVALID;
    int64_t tasks = n * groups;
    if (gn_split(tasks, c / groups * hw))
        return group_norm_split(be, out, x, gamma, beta, n, c, hw, groups, eps, silu != 0);
    group_norm_fwd<<<task_grid(tasks), GN_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, x, gamma, beta, tasks, c, hw, groups, eps, silu != 0, lh__cuda(be)->act);
    return lh__cuda_launched(be, "group_norm");
}

extern "C" lh_status lh__cuda_group_norm_backward(lh_backend *be, float *dx, /* [n, c, hw] */
                                                  float *dgamma, float *dbeta, /* [c] += */
                                                  const float *dy, const float *x, /* [n, c, hw] */
                                                  const float *gamma, const float *beta, /* [c] */
                                                  int64_t n, int64_t c, int64_t hw,
                                                  int64_t groups, float eps, int silu) {
    int64_t total, nc2;
    if (n < 0 || c < 0 || hw < 0 || groups < 1 || c % groups != 0 || !(eps >= 0.0f))
        return LH_ERR_INVALID;
    if (!lh__cu_mul3(&total, n, c, hw) || !lh__cu_bytes_ok(total) || !lh__cu_mul3(&nc2, n, c, 4) ||
        !lh__cu_bytes_ok(nc2))
        return LH_ERR_OVERFLOW;
    if (total == 0 || (!dx && !dgamma && !dbeta)) return LH_OK;
    if (!dy || !x || !gamma || (silu && !beta)) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    double *sb = NULL, *sg = NULL;
    lh_status st;
    int64_t tasks = n * groups, len = c / groups * hw;
    if (gn_split(tasks, len)) { /* few large groups: over many blocks */
        size_t stat_bytes = gn_split_bytes(tasks, len);
        void *p = NULL;
        if ((st = lh__cuda_scratch(be, stat_bytes + (size_t)(2 * n * c) * sizeof(double) +
                                           (size_t)tasks * 2 * sizeof(float),
                                   &p)) != LH_OK)
            return st;
        float *stats = (float *)((double *)p + 2 * tasks * cdiv(len, GN_CHUNK));
        sb = (double *)((char *)p + stat_bytes);
        sg = sb + n * c;
        float *k = (float *)(sg + n * c);
        if ((st = gn_split_run_stats(be, stats, (double *)p, x, tasks, len, eps)) != LH_OK)
            return st;
        const float *bt = silu ? beta : NULL;
        gn_split_bwd_sums<<<(unsigned)(n * c), GN_BLOCK, 0, cu->stream>>>(sb, sg, dy, x, gamma, bt,
                                                                          stats, c, hw, groups,
                                                                          silu != 0);
        if (dx) {
            gn_split_bwd_k<<<(unsigned)cdiv(tasks, 128), 128, 0, cu->stream>>>(k, sb, sg, gamma,
                                                                              tasks, c, groups,
                                                                              len);
            gn_split_bwd_dx<<<lh__cuda_grid(total, 256), 256, 0, cu->stream>>>(
                dx, dy, x, gamma, bt, stats, k, total, c, hw, groups, silu != 0);
        }
        if ((st = lh__cuda_launched(be, "group_norm_backward")) != LH_OK) return st;
        if (!dgamma && !dbeta) return LH_OK;
        group_norm_params<<<lh__cuda_grid(c, 256), 256, 0, cu->stream>>>(dgamma, dbeta, sg, sb,
                                                                         n, c);
        return lh__cuda_launched(be, "group_norm_backward: parameters");
    }
    if (dgamma || dbeta) {
        void *p = NULL;
        if ((st = lh__cuda_scratch(be, (size_t)(2 * n * c) * sizeof(double), &p)) != LH_OK)
            return st;
        sb = (double *)p;
        sg = sb + n * c;
    }
    group_norm_bwd<<<task_grid(tasks), GN_BLOCK, 0, cu->stream>>>(
        dx, sb, sg, dy, x, gamma, silu ? beta : NULL, tasks, c, hw, groups, eps, silu != 0);
    if ((st = lh__cuda_launched(be, "group_norm_backward")) != LH_OK || !sb) return st;
    group_norm_params<<<lh__cuda_grid(c, 256), 256, 0, cu->stream>>>(dgamma, dbeta, sg, sb, n, c);
    return lh__cuda_launched(be, "group_norm_backward: parameters");
}

extern "C" lh_status lh__cuda_layer_norm(lh_backend *be, float *out, /* [rows, cols] */
                                         const float *x,             /* [rows, cols] */
                                         const float *gamma, const float *beta, /* [cols] */
                                         int64_t rows, int64_t cols, float eps) {
    int64_t total;
    if (rows < 0 || cols < 0 || !(eps >= 0.0f)) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&total, rows, cols) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0) return LH_OK;
    if (!out || !x || !gamma || !beta) return LH_ERR_INVALID;
    layer_norm_fwd<<<task_grid(rows), LN_BLOCK, 0, lh__cuda(be)->stream>>>(
        out, x, gamma, beta, rows, cols, eps, lh__cuda(be)->act);
    return lh__cuda_launched(be, "layer_norm");
}

extern "C" lh_status lh__cuda_layer_norm_backward(lh_backend *be, float *dx, /* [rows, cols] */
                                                  float *dgamma, float *dbeta, /* [cols] += */
                                                  const float *dy, /* [rows, cols] */
                                                  const float *x,  /* [rows, cols] */
                                                  const float *gamma, /* [cols] */
                                                  int64_t rows, int64_t cols, float eps) {
    int64_t total;
    if (rows < 0 || cols < 0 || !(eps >= 0.0f)) return LH_ERR_INVALID;
    if (!lh__cu_mul2(&total, rows, cols) || !lh__cu_bytes_ok(total)) return LH_ERR_OVERFLOW;
    if (total == 0 || (!dx && !dgamma && !dbeta)) return LH_OK;
    if (!dy || !x || !gamma) return LH_ERR_INVALID;
    lh_cuda *cu = lh__cuda(be);
    lh_status st;
    int params = dgamma || dbeta;
    int64_t chunk_rows = cdiv(rows, LN_CHUNKS), chunks, cells;
    if (chunk_rows < 256) chunk_rows = 256;
    chunks = cdiv(rows, chunk_rows);
    /* scratch: pg, pb [chunks, cols] doubles, then mean, rstd [rows] floats */
    if (!lh__cu_mul2(&cells, chunks, cols) || cells > INT64_MAX / 32 || rows > INT64_MAX / 16 ||
        cdiv(cols, LN_BX) > INT_MAX)
        return LH_ERR_OVERFLOW;
    double *pg = NULL, *pb = NULL;
    float *mean = NULL, *rstd = NULL;
    if (params) {
        void *p = NULL;
        size_t bytes = (size_t)(2 * cells) * sizeof(double) + (size_t)(2 * rows) * sizeof(float);
        if ((st = lh__cuda_scratch(be, bytes, &p)) != LH_OK) return st;
        pg = (double *)p;
        pb = pg + cells;
        mean = (float *)(pb + cells);
        rstd = mean + rows;
    }
    layer_norm_bwd<<<task_grid(rows), LN_BLOCK, 0, cu->stream>>>(dx, mean, rstd, dy, x, gamma,
                                                                 rows, cols, eps);
    if ((st = lh__cuda_launched(be, "layer_norm_backward")) != LH_OK || !params) return st;
    dim3 grid((unsigned)cdiv(cols, LN_BX), (unsigned)chunks), block(LN_BX, LN_BY);
    layer_norm_params_partial<<<grid, block, 0, cu->stream>>>(pg, pb, dy, x, mean, rstd, rows,
                                                              cols, chunk_rows);
    if ((st = lh__cuda_launched(be, "layer_norm_backward: parameters")) != LH_OK) return st;
    layer_norm_params_finish<<<lh__cuda_grid(cols, 256), 256, 0, cu->stream>>>(dgamma, dbeta, pg,
                                                                                pb, chunks, cols);
    return lh__cuda_launched(be, "layer_norm_backward: parameters");
}
