/* Batched strided GEMM and torch.nn.Linear on OpenBLAS. Each product is cut
 * into a grid of C tiles chosen for the thread count; OpenMP threads take
 * tiles and multiply them with single-threaded cblas_sgemm (see the
 * threading note in backend.c). */
#include "cpu.h"

#include <cblas.h>
#include <limits.h>

/* ---- Tile planning ---- */

typedef struct gemm_plan {
    int64_t nm, nn; /* tiles along M and N */
    int64_t tm, tn; /* tile size (last tile may be smaller) */
} gemm_plan;

/* Below this many multiply-adds a product runs on the calling thread. */
#define GEMM_PAR_MIN_MACS ((int64_t)1 << 18)

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Smallest estimated time over tile grids: rounds of `threads` tiles, each
 * costing its multiply-adds plus the packing of its A and B panels (about
 * 8 multiply-adds an element); tiles narrower than the BLAS micro-kernel
 * (8 rows, 16 columns) save nothing. */
static gemm_plan plan_tiles(int64_t batch, int64_t m, int64_t n, int64_t k, int threads) {
    gemm_plan best = {1, 1, m, n};
    int64_t macs;
    if (threads <= 1 || !lh__mul4(&macs, batch, m, n, k > 0 ? k : 1) || macs < GEMM_PAR_MIN_MACS)
        return best;
    if (batch >= threads) return best;
    int64_t need = cdiv(threads, batch), limit = 4 * need;
    double best_cost = -1.0;
    for (int64_t nm = 1; nm <= limit && nm <= m; nm++) {
        for (int64_t nn = 1; nm * nn <= limit && nn <= n; nn++) {
            int64_t tm = cdiv(m, nm), tn = cdiv(n, nn);
            if (cdiv(m, tm) != nm || cdiv(n, tn) != nn) continue; /* empty tiles */
            double etm = (double)(tm > 8 ? tm : 8), etn = (double)(tn > 16 ? tn : 16);
            double rounds = (double)cdiv(batch * nm * nn, threads);
            double cost = rounds * (etm * etn + 8.0 * (etm + etn));
            if (best_cost < 0 || cost < best_cost) {
                best_cost = cost;
                best = (gemm_plan){nm, nn, tm, tn};
            }
        }
    }
    return best;
}

/* ---- One tile ---- */

typedef struct gemm_args {
    const float *a, *b;
    float *c;
    const float *bias; /* [n], added to every row of C (then beta is 1) */
    int trans_a, trans_b;
    int64_t m, n, k, batch, stride_a, stride_b, stride_c;
    float alpha, beta;
} gemm_args;

/* C[m0:m1, n0:n1] of batch entry bi. */
static void gemm_tile(const gemm_args *g, int64_t bi, int64_t m0, int64_t m1, int64_t n0,
                      int64_t n1) {
    const float *a = g->a + bi * g->stride_a;
    const float *b = g->b + bi * g->stride_b;
    float *c = g->c + bi * g->stride_c;
    int64_t m = g->m, n = g->n, k = g->k;
    float beta = g->beta;
    if (g->bias) {
        for (int64_t i = m0; i < m1; i++) memcpy(c + i * n + n0, g->bias + n0, (size_t)(n1 - n0) * sizeof(float));
        beta = 1.0f;
    }
    if (k == 0 || g->alpha == 0.0f) { /* C = beta C, without reading A or B */
        for (int64_t i = m0; i < m1; i++)
            for (int64_t j = n0; j < n1; j++) c[i * n + j] = beta == 0.0f ? 0.0f : beta * c[i * n + j];
        return;
    }
    const float *at = g->trans_a ? a + m0 : a + m0 * k;
    const float *bt = g->trans_b ? b + n0 * k : b + n0;
    int lda = (int)(g->trans_a ? m : k), ldb = (int)(g->trans_b ? k : n);
    cblas_sgemm(CblasRowMajor, g->trans_a ? CblasTrans : CblasNoTrans,
                g->trans_b ? CblasTrans : CblasNoTrans, (int)(m1 - m0), (int)(n1 - n0), (int)k,
                g->alpha, at, lda, bt, ldb, beta, c + m0 * n + n0, (int)n);
}

static void gemm_run(const gemm_args *g, int threads) {
    gemm_plan p = plan_tiles(g->batch, g->m, g->n, g->k, threads);
    int64_t per = p.nm * p.nn, tasks = g->batch * per;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t bi = t / per, r = t % per, i = r / p.nn, j = r % p.nn;
        int64_t m0 = i * p.tm, n0 = j * p.tn;
        int64_t m1 = m0 + p.tm < g->m ? m0 + p.tm : g->m;
        int64_t n1 = n0 + p.tn < g->n ? n0 + p.tn : g->n;
        gemm_tile(g, bi, m0, m1, n0, n1);
    }
}

/* ---- Ops ---- */

lh_status lh__cpu_gemm(lh_backend *be, float *c, const float *a, const float *b, int trans_a,
                       int trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                       int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
    if (m < 0 || n < 0 || k < 0 || batch < 0 || stride_a < 0 || stride_b < 0 || stride_c < 0)
        return LH_ERR_INVALID;
    if (m == 0 || n == 0 || batch == 0) return LH_OK;
    if (!c || (k > 0 && (!a || !b))) return LH_ERR_INVALID;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX) return LH_ERR_UNSUPPORTED; /* BLAS int */
    int64_t last;
    if (!lh__mul2(&last, batch - 1, stride_a) || !lh__mul2(&last, batch - 1, stride_b) ||
        !lh__mul2(&last, batch - 1, stride_c))
        return LH_ERR_OVERFLOW;
    gemm_args g = {a, b, c, NULL, trans_a != 0, trans_b != 0, m, n, k, batch,
                   stride_a, stride_b, stride_c, alpha, beta};
    gemm_run(&g, lh__cpu_threads(be));
    return LH_OK;
}

lh_status lh__cpu_linear(lh_backend *be, float *out, const float *x, const float *w,
                         const float *bias, int64_t rows, int64_t n_in, int64_t n_out) {
    if (rows < 0 || n_in < 0 || n_out < 0) return LH_ERR_INVALID;
    if (rows == 0 || n_out == 0) return LH_OK;
    if (!out || (n_in > 0 && (!x || !w))) return LH_ERR_INVALID;
    if (rows > INT_MAX || n_in > INT_MAX || n_out > INT_MAX) return LH_ERR_UNSUPPORTED;
    gemm_args g = {x, w, out, bias, 0, 1, rows, n_out, n_in, 1, 0, 0, 0, 1.0f, 0.0f};
    gemm_run(&g, lh__cpu_threads(be));
    return LH_OK;
}
