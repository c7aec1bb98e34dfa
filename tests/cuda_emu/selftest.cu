/* tests/cuda_emu: the emulator against known answers, so that the parity
 * suites' _emu runs stand on something checked: half conversions at their
 * edges, a block reduction through shared memory and shuffles, a WMMA
 * product, launch errors, the stream queue (pinned copies land at the
 * wait), a recorded graph replayed, cuBLAS and cuDNN against plain loops,
 * and its traps (a deadlock, a shuffle after a lane returned, a WMMA
 * pointer off 32 bytes) in child processes. Built through rewrite.pl like
 * kernels/cuda/. Exit 0 when every check holds. */
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <mma.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace nvcuda;

static int g_failed;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            g_failed++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- kernels ---- */

template <int B> __global__ void block_sum(float *out, const float *x, int n) {
    __shared__ float part[B / 32];
    float v = 0;
    for (int i = threadIdx.x; i < n; i += B) v += x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (int w = 0; w < B / 32; w++) s += part[w];
        out[blockIdx.x] = s;
    }
}

__global__ void fill(float *x, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

__global__ void dyn_fill(float *out, int n) {
    extern __shared__ float sm[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) sm[i] = (float)i;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = sm[n - 1];
}

__global__ void wmma_product(float *c, const __half *a, const __half *b) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 1.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

__global__ void deadlock(float *x) {
    if (threadIdx.x == 0) __syncthreads();
    else __syncwarp();
    x[threadIdx.x] = 1;
}

__global__ void shuffle_after_return(float *x) {
    if (threadIdx.x == 3) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void wmma_misaligned(float *c, const __half *a) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + 1, 16);
    (void)c;
}

/* ---- host ---- */

static float *dev(size_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) {
        printf("FAIL cudaMalloc\n");
        exit(1);
    }
    return (float *)p;
}

static void check_halves(void) {
    static const struct {
        float f;
        unsigned short h, b;
    } cases[] = {
        {1.0f, 0x3c00, 0x3f80},        {-2.0f, 0xc000, 0xc000},
        {65504.0f, 0x7bff, 0x4780},    {65519.99f, 0x7bff, 0x4780},
        {65520.0f, 0x7c00, 0x4780},    {5.9604645e-8f, 0x0001, 0x3380}, /* 2^-24 */
        {2.9802322e-8f, 0x0000, 0x3300} /* 2^-25: ties to even */,
        {8.940697e-8f, 0x0002, 0x33c0} /* 3 * 2^-25 */,
        {1.00048828125f, 0x3c00, 0x3f80} /* 1 + 2^-11: ties to even */,
        {1.00146484375f, 0x3c02, 0x3f80} /* 1 + 3 * 2^-11 */,
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned short h = __float2half_rn(cases[i].f).x, b = __float2bfloat16_rn(cases[i].f).x;
        CHECK(h == cases[i].h, "f16(%.9g) = %#x, want %#x", cases[i].f, h, cases[i].h);
        CHECK(b == cases[i].b, "bf16(%.9g) = %#x, want %#x", cases[i].f, b, cases[i].b);
    }
    CHECK(__half2float(__half(3.0f)) == 3.0f, "f16 round trip");
    CHECK(__half2float(__float2half_rn(1e-6f)) == 1.013278961181640625e-06f, "f16 subnormal");
    CHECK(isnan(__half2float(__float2half_rn(NAN))), "f16 NaN");
    CHECK(isnan(__bfloat162float(__float2bfloat16_rn(NAN))), "bf16 NaN");
    CHECK(__bfloat162float(__float2bfloat16_rn(1.0f + 1.0f / 256)) == 1.0f, "bf16 tie to even");
}

static void check_kernels(void) {
    const int n = 1000, blocks = 3;
    float h[n], *x = dev(n), *out = dev(blocks);
    double want = 0;
    for (int i = 0; i < n; i++) h[i] = (float)(i % 7) - 3.0f, want += h[i];
    cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice);
    block_sum<256><<<blocks, 256>>>(out, x, n);
    CHECK(cudaGetLastError() == cudaSuccess, "block_sum launch");
    float got[blocks];
    cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
    for (int b = 0; b < blocks; b++) CHECK(got[b] == (float)want, "block %d sum %g, want %g", b, got[b], want);

    /* 64 KiB of dynamic shared memory: refused until the kernel opts in */
    const int sn = 16384;
    dyn_fill<<<1, 128, sn * sizeof(float)>>>(out, sn);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB without the opt-in");
    CHECK(cudaFuncSetAttribute(dyn_fill, cudaFuncAttributeMaxDynamicSharedMemorySize, sn * 4) ==
              cudaSuccess, "opt-in");
    CHECK(cudaFuncSetAttribute(dyn_fill, cudaFuncAttributeMaxDynamicSharedMemorySize, 300000) ==
              cudaErrorInvalidValue, "opt-in past the device's");
    cudaGetLastError();
    dyn_fill<<<1, 128, sn * sizeof(float)>>>(out, sn);
    CHECK(cudaGetLastError() == cudaSuccess, "64 KiB with the opt-in");
    cudaMemcpy(got, out, sizeof(float), cudaMemcpyDeviceToHost);
    CHECK(got[0] == sn - 1, "dynamic shared memory: %g", got[0]);
    fill<<<1, 1025>>>(x, 0, n);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads");
    fill<<<dim3(1, 65536), 32>>>(x, 0, n);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid y 65536");

    /* WMMA: C = A B + 1 */
    __half ha[256], hb[256];
    float want_c[256], hc[256];
    for (int i = 0; i < 256; i++) ha[i] = __float2half_rn((float)(i % 5) - 2), hb[i] = __float2half_rn((float)(i % 3) * 0.5f);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            float s = 1;
            for (int k = 0; k < 16; k++) s += __half2float(ha[r * 16 + k]) * __half2float(hb[c * 16 + k]);
            want_c[r * 16 + c] = s;
        }
    __half *da = NULL, *db = NULL;
    cudaMalloc(&da, sizeof ha);
    cudaMalloc(&db, sizeof hb);
    float *dc = dev(256);
    cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice);
    wmma_product<<<1, 32>>>(dc, da, db);
    cudaMemcpy(hc, dc, sizeof hc, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int i = 0; i < 256; i++) bad += hc[i] != want_c[i];
    CHECK(!bad, "wmma: %d of 256 wrong", bad);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    cudaFree(x);
    cudaFree(out);
}

static void check_streams(void) {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    float *x = dev(64), *pinned = NULL;
    cudaMallocHost(&pinned, 64 * sizeof(float));
    for (int i = 0; i < 64; i++) pinned[i] = -1;
    fill<<<1, 64, 0, s>>>(x, 7.0f, 64);
    cudaMemcpyAsync(pinned, x, 64 * sizeof(float), cudaMemcpyDeviceToHost, s);
    CHECK(pinned[5] == -1, "a pinned copy landed before the wait");
    cudaStreamSynchronize(s);
    CHECK(pinned[5] == 7, "a pinned copy missing after the wait: %g", pinned[5]);

    /* a recorded launch replayed twice, after its buffer changed */
    cudaGraph_t g = NULL;
    cudaGraphExec_t e = NULL;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "capture");
    fill<<<1, 64, 0, s>>>(x, 3.0f, 32);
    CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported, "a wait while recording");
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated && !g,
          "a recording with a wait in it");
    cudaGetLastError();
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "capture");
    fill<<<1, 64, 0, s>>>(x, 3.0f, 32);
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess && g, "end capture");
    cudaGraphInstantiate(&e, g, 0);
    cudaGraphDestroy(g);
    float h[64];
    cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost);
    CHECK(h[0] == 7, "a recorded launch ran while recording: %g", h[0]);
    fill<<<1, 64, 0, s>>>(x, 0.0f, 64);
    cudaGraphLaunch(e, s);
    cudaGraphLaunch(e, s);
    cudaMemcpyAsync(h, x, sizeof h, cudaMemcpyDeviceToHost, s);
    CHECK(h[0] == 3 && h[40] == 0, "graph replay: %g %g", h[0], h[40]);
    cudaGraphExecDestroy(e);
    cudaFreeHost(pinned);
    cudaFree(x);
    cudaStreamDestroy(s);
}

static void check_libraries(void) {
    /* C [m, n] (column-major) = A^T B with A [k, m], B [k, n], batch 2 */
    const int m = 5, n = 3, k = 7, batch = 2;
    float ha[batch * k * m], hb[batch * k * n], hc[batch * m * n];
    for (int i = 0; i < batch * k * m; i++) ha[i] = sinf((float)i);
    for (int i = 0; i < batch * k * n; i++) hb[i] = cosf((float)i);
    float *a = dev(batch * k * m), *b = dev(batch * k * n), *c = dev(batch * m * n);
    cudaMemcpy(a, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(b, hb, sizeof hb, cudaMemcpyHostToDevice);
    cublasHandle_t h;
    cublasCreate(&h);
    float one = 1, zero = 0;
    CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_32F, k,
                                     k * m, b, CUDA_R_32F, k, k * n, &zero, c, CUDA_R_32F, m,
                                     m * n, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
              CUBLAS_STATUS_SUCCESS, "gemm");
    CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_32F,
                                     k - 1, k * m, b, CUDA_R_32F, k, k * n, &zero, c, CUDA_R_32F,
                                     m, m * n, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
              CUBLAS_STATUS_INVALID_VALUE, "gemm with lda < k");
    cudaMemcpy(hc, c, sizeof hc, cudaMemcpyDeviceToHost);
    double worst = 0;
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int l = 0; l < k; l++) s += (double)ha[t * k * m + i * k + l] * hb[t * k * n + j * k + l];
                worst = fmax(worst, fabs(s - hc[t * m * n + j * m + i]));
            }
    CHECK(worst < 1e-5, "gemm: off by %g", worst);
    cublasDestroy(h);

    /* a 3x3 convolution, padding 1, stride 2: 1 x 2 x 5 x 4 -> 1 x 3 x 3 x 2 */
    const int C = 2, H = 5, W = 4, K = 3, HO = 3, WO = 2;
    float hx[C * H * W], hw[K * C * 9], hy[K * HO * WO];
    for (int i = 0; i < C * H * W; i++) hx[i] = (float)(i % 11) - 5;
    for (int i = 0; i < K * C * 9; i++) hw[i] = (float)(i % 5) - 2;
    float *x = dev(C * H * W), *w = dev(K * C * 9), *y = dev(K * HO * WO), *ws = dev(1 << 16);
    cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice);
    cudaMemcpy(w, hw, sizeof hw, cudaMemcpyHostToDevice);
    cudnnHandle_t d;
    cudnnCreate(&d);
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnCreateTensorDescriptor(&xd);
    cudnnCreateTensorDescriptor(&yd);
    cudnnCreateFilterDescriptor(&wd);
    cudnnCreateConvolutionDescriptor(&cd);
    cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, C, H, W);
    cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, K, HO, WO);
    cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, K, C, 3, 3);
    cudnnSetConvolution2dDescriptor(cd, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    CHECK(cudnnConvolutionForward(d, &one, xd, x, wd, w, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                  ws, 16, &zero, yd, y) == CUDNN_STATUS_BAD_PARAM,
          "a workspace short of the algorithm's");
    CHECK(cudnnConvolutionForward(d, &one, xd, x, wd, w, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                  ws, 1 << 18, &zero, yd, y) == CUDNN_STATUS_SUCCESS, "conv");
    cudaMemcpy(hy, y, sizeof hy, cudaMemcpyDeviceToHost);
    worst = 0;
    for (int o = 0; o < K; o++)
        for (int p = 0; p < HO; p++)
            for (int q = 0; q < WO; q++) {
                double s = 0;
                for (int ci = 0; ci < C; ci++)
                    for (int r = 0; r < 3; r++)
                        for (int t = 0; t < 3; t++) {
                            int hi = p * 2 - 1 + r, wi = q * 2 - 1 + t;
                            if (hi >= 0 && hi < H && wi >= 0 && wi < W)
                                s += (double)hx[(ci * H + hi) * W + wi] * hw[((o * C + ci) * 3 + r) * 3 + t];
                        }
                worst = fmax(worst, fabs(s - hy[(o * HO + p) * WO + q]));
            }
    CHECK(worst == 0, "conv: off by %g", worst);
    cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, K, HO + 1, WO);
    CHECK(cudnnConvolutionForward(d, &one, xd, x, wd, w, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                  NULL, 0, &zero, yd, y) == CUDNN_STATUS_BAD_PARAM,
          "an output shape the convolution does not make");
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroy(d);
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    cudaFree(ws);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
}

/* f run in a child must abort with `expect` on stderr */
static void check_trap(const char *what, void (*f)(void), const char *expect) {
    int fds[2];
    if (pipe(fds)) return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        f();
        cudaDeviceSynchronize();
        _exit(0);
    }
    close(fds[1]);
    char buf[4096] = "";
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf - 1 && (r = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: not trapped", what);
    CHECK(strstr(buf, expect) != NULL, "%s: said \"%s\", not \"%s\"", what, buf, expect);
}

static void run_deadlock(void) { deadlock<<<1, 32>>>(dev(32)); }
static void run_shuffle(void) { shuffle_after_return<<<1, 32>>>(dev(32)); }
static void run_misaligned(void) {
    __half *a = NULL;
    cudaMalloc(&a, 1024);
    wmma_misaligned<<<1, 32>>>(dev(1), a);
}
static void run_oob_copy(void) {
    float h[8];
    cudaMemcpy(dev(4), h, sizeof h, cudaMemcpyHostToDevice);
}

int main(void) {
    check_halves();
    check_kernels();
    check_streams();
    check_libraries();
    check_trap("deadlock", run_deadlock, "wait at barriers no other thread reaches");
    check_trap("shuffle after a return", run_shuffle, "returned before a warp operation");
    check_trap("misaligned WMMA", run_misaligned, "is not 32-byte aligned");
    check_trap("copy past an allocation", run_oob_copy, "is not device memory");
    printf("%s: %d failed\n", g_failed ? "FAIL" : "cuda emulator self-test passed", g_failed);
    return g_failed ? 1 : 0;
}
