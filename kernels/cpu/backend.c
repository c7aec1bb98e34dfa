/* The cpu backend: its ops table, memory (host RAM, 64-byte aligned) and
 * lh_backend_cpu_create / lh_backend_destroy. The ops live one per file
 * beside this one; this is the reference every other backend is tested
 * against.
 *
 * Threading: one thread pool, OpenMP's. lh_backend_cpu_create sets OpenBLAS
 * to one thread (openblas_set_num_threads(1), process-wide), and every op
 * parallelises itself with `#pragma omp parallel num_threads(threads)`; ops
 * that need GEMM (gemm, linear, conv2d) split the product into tiles and
 * call single-threaded cblas_sgemm on each tile from inside the parallel
 * region. So OpenBLAS's pthreads never compete with OpenMP's for cores, the
 * im2col of a conv tile runs on the thread that multiplies it, and the
 * thread count is per backend (no global omp_set_num_threads). */
#include "cpu.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/safetensors.h"

/* ---- Memory ---- */

static void *cpu_alloc(lh_backend *be, size_t bytes) {
    (void)be;
    if (bytes > SIZE_MAX - 63) return NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) return NULL;
    return p;
}

static void cpu_free(lh_backend *be, void *ptr) {
    (void)be;
    free(ptr);
}

static lh_status cpu_copy(lh_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes == 0) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    memmove(dst, src, bytes);
    return LH_OK;
}

static lh_status cpu_memset0(lh_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes == 0) return LH_OK;
    if (!dst) return LH_ERR_INVALID;
    memset(dst, 0, bytes);
    return LH_OK;
}

static lh_status cpu_upload_weights(lh_backend *be, float *dst, const void *src,
                                    lh_dtype src_dtype, size_t n) {
    if (n == 0) return LH_OK;
    if (!dst || !src) return LH_ERR_INVALID;
    if (n > SIZE_MAX / sizeof(float) || n > (size_t)INT64_MAX) return LH_ERR_OVERFLOW;
    int64_t count = (int64_t)n;
    int nt = lh__cpu_threads(be);
    switch (src_dtype) {
    case LH_DTYPE_F32: memmove(dst, src, n * sizeof(float)); return LH_OK;
    case LH_DTYPE_F16: {
        const uint16_t *s = src;
#pragma omp parallel for num_threads(nt) schedule(static) if (count > LH_CPU_PAR_MIN)
        for (int64_t i = 0; i < count; i++) dst[i] = lh_f16_to_f32(s[i]);
        return LH_OK;
    }
    case LH_DTYPE_BF16: {
        const uint16_t *s = src;
#pragma omp parallel for num_threads(nt) schedule(static) if (count > LH_CPU_PAR_MIN)
        for (int64_t i = 0; i < count; i++) dst[i] = lh_bf16_to_f32(s[i]);
        return LH_OK;
    }
    default: return LH_ERR_UNSUPPORTED;
    }
}

static lh_status cpu_sync(lh_backend *be) {
    (void)be;
    return LH_OK;
}

static void cpu_destroy(lh_backend *be) {
    free(be->impl);
    free(be);
}

/* ---- The table ---- */

static const lh_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memset0 = cpu_memset0,
    .upload_weights = cpu_upload_weights,
    .sync = cpu_sync,
    .gemm = lh__cpu_r_gemm,
    .linear = lh__cpu_r_linear,
    .conv2d = lh__cpu_r_conv2d,
    .group_norm = lh__cpu_r_group_norm,
    .layer_norm = lh__cpu_r_layer_norm,
    .attention = lh__cpu_r_attention,
    .silu = lh__cpu_r_silu,
    .gelu = lh__cpu_r_gelu,
    .quick_gelu = lh__cpu_r_quick_gelu,
    .geglu = lh__cpu_r_geglu,
    .add = lh__cpu_r_add,
    .mul = lh__cpu_r_mul,
    .axpby = lh__cpu_r_axpby,
    .add_channel_bias = lh__cpu_r_add_channel_bias,
    .upsample_nearest2x = lh__cpu_upsample_nearest2x,
    .concat_channels = lh__cpu_concat_channels,
    .transpose_c_hw = lh__cpu_transpose_c_hw,
    .timestep_embedding = lh__cpu_r_timestep_embedding,
    .linear_backward = lh__cpu_r_linear_backward,
    .conv2d_backward = lh__cpu_r_conv2d_backward,
    .group_norm_backward = lh__cpu_r_group_norm_backward,
    .layer_norm_backward = lh__cpu_r_layer_norm_backward,
    .attention_backward = lh__cpu_r_attention_backward,
    .silu_backward = lh__cpu_r_silu_backward,
    .gelu_backward = lh__cpu_r_gelu_backward,
    .quick_gelu_backward = lh__cpu_r_quick_gelu_backward,
    .geglu_backward = lh__cpu_r_geglu_backward,
    .channel_bias_backward = lh__cpu_r_channel_bias_backward,
    .upsample_nearest2x_backward = lh__cpu_r_upsample_nearest2x_backward,
    .split_channels = lh__cpu_split_channels,
    .set_precision = lh__cpu_set_precision,
    .round = lh__cpu_round,
    .cast = lh__cpu_cast,
    .count_nonfinite = lh__cpu_count_nonfinite,
    .count_nonfinite_into = lh__cpu_count_nonfinite, /* backend memory is host memory */
    .scale = lh__cpu_scale,
    .scale_by = lh__cpu_scale_by,
    .sum_squares = lh__cpu_sum_squares,
    .mse_backward = lh__cpu_mse_backward,
    .step_check = lh__cpu_step_check,
    .adamw = lh__cpu_adamw,
    .copy = lh__cpu_copy,
    .dropout = lh__cpu_dropout,
    .dropout_backward = lh__cpu_dropout_backward,
};

/* ---- Create / destroy ---- */

static lh_status fail(char *err, size_t err_size, lh_status code, const char *msg) {
    if (err && err_size) {
        size_t len = strlen(msg);
        if (len >= err_size) len = err_size - 1;
        memcpy(err, msg, len);
        err[len] = '\0';
    }
    return code;
}

lh_status lh_backend_cpu_create(lh_backend **out, int threads, char *err, size_t err_size) {
    if (!out) return fail(err, err_size, LH_ERR_INVALID, "cpu backend: NULL output pointer");
    *out = NULL;
    if (threads < 0)
        return fail(err, err_size, LH_ERR_INVALID, "cpu backend: threads must be >= 0 (0 = all cores)");
    lh_backend *be = calloc(1, sizeof *be);
    lh_cpu *cpu = calloc(1, sizeof *cpu);
    if (!be || !cpu) {
        free(be);
        free(cpu);
        return fail(err, err_size, LH_ERR_NOMEM, "cpu backend: out of memory");
    }
    /* 0: OpenMP's default team size, the cores this process may run on
     * (or OMP_NUM_THREADS when set). */
    cpu->act = LH_DTYPE_F32;
    cpu->threads = threads > 0 ? threads : omp_get_max_threads();
    if (cpu->threads < 1) cpu->threads = 1;
    openblas_set_num_threads(1); /* see the threading note at the top */
    be->ops = &cpu_ops;
    be->impl = cpu;
    *out = be;
    if (err && err_size) err[0] = '\0';
    return LH_OK;
}

void lh_backend_destroy(lh_backend *be) {
    if (be) be->ops->destroy(be);
}
