/* bench_attention: time the backend's attention op (forward, and the
 * backward a training step runs) on one shape.
 * Usage: bench_attention B HEADS NQ NK D ITERS [DEVICE [PRECISION [BACKWARD]]]
 *        q [B, NQ, HEADS * D], k and v [B, NK, HEADS * D], as the U-Net's
 *        projections produce them; PRECISION fp32 (default), fp16 or bf16
 *        activations (set_precision; inputs rounded to it); BACKWARD 1 also
 *        times attention_backward with the forward's logsumexp.
 * Prints one JSON object: the mean seconds of a call over ITERS calls
 * (after 3 untimed ones), queued back to back and waited for once.
 * Driven by bench/gpu/attention_gpu.py, which times PyTorch's
 * scaled_dot_product_attention (flash, cuDNN, memory-efficient) beside it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "../kernels/backend.h"
#include "backend_load.h"

typedef struct shape {
    int64_t b, heads, nq, nk, d;
} shape;

/* The mean seconds of `iters` calls of the forward (backward = 0) or the
 * backward, after 3 untimed ones; -1 on failure (said on stderr). */
static double timed(lh_backend *be, const shape *s, float *const *buf, int backward, int iters) {
    const lh_backend_ops *o = be->ops;
    float *q = buf[0], *k = buf[1], *v = buf[2], *out = buf[3], *lse = buf[4], *dout = buf[5],
          *dq = buf[6], *dk = buf[7], *dv = buf[8];
    float scale = 1.0f / sqrtf((float)s->d);
    double t0 = 0.0;
    for (int it = 0; it < iters + 3; it++) {
        if (it == 3) {
            if (o->sync(be) != LH_OK) return -1.0;
            t0 = bench_now();
        }
        lh_status st =
            backward ? o->attention_backward(be, dq, dk, dv, dout, out, lse, q, k, v, s->b,
                                             s->heads, s->nq, s->nk, s->d, scale, 0)
                     : o->attention(be, out, lse, q, k, v, s->b, s->heads, s->nq, s->nk, s->d,
                                    scale, 0);
        if (st != LH_OK) {
            fprintf(stderr, "bench_attention: attention%s: %s\n", backward ? "_backward" : "",
                    lh_strerror(st));
            return -1.0;
        }
    }
    if (o->sync(be) != LH_OK) return -1.0;
    return (bench_now() - t0) / iters;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: bench_attention B HEADS NQ NK D ITERS [DEVICE [PRECISION "
                        "[BACKWARD]]]\n");
        return 2;
    }
    shape s = {atoll(argv[1]), atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), atoll(argv[5])};
    int iters = atoi(argv[6]), backward = argc > 9 && !strcmp(argv[9], "1");
    const char *device = argc > 7 ? argv[7] : "cpu", *prec = argc > 8 ? argv[8] : "fp32";
    lh_dtype act = LH_DTYPE_F32;
    if (bench_precision(prec, &act) != 0) {
        fprintf(stderr, "bench_attention: PRECISION must be fp32, fp16 or bf16, not %s\n", prec);
        return 2;
    }
    if (s.b < 1 || s.heads < 1 || s.nq < 1 || s.nk < 1 || s.d < 1 || iters < 1) {
        fprintf(stderr, "bench_attention: B, HEADS, NQ, NK, D and ITERS must be positive\n");
        return 2;
    }
    char msg[1024];
    lh_backend *be = NULL;
    if (lh_backend_create(&be, device, 0, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, "bench_attention: %s\n", msg);
        return 1;
    }
    const lh_backend_ops *o = be->ops;
    if (act != LH_DTYPE_F32 && (!o->set_precision || o->set_precision(be, act) != LH_OK)) {
        fprintf(stderr, "bench_attention: the %s backend has no %s activations\n", o->name, prec);
        return 1;
    }
    /* q k v out lse dout dq dk dv */
    size_t nq = (size_t)(s.b * s.nq * s.heads * s.d), nk = (size_t)(s.b * s.nk * s.heads * s.d);
    size_t n[9] = {nq, nk, nk, nq, (size_t)(s.b * s.heads * s.nq), nq, nq, nk, nk};
    float *buf[9] = {0}, *host = malloc(nq > nk ? nq * sizeof *host : nk * sizeof *host);
    int ok = host != NULL;
    for (int i = 0; i < 9 && ok; i++) ok = (buf[i] = o->alloc(be, n[i] * sizeof(float))) != NULL;
    unsigned seed = 5;
    for (int i = 0; i < 6 && ok; i++) {
        if (i == 3 || i == 4) continue; /* out and lse: the forward's */
        for (size_t j = 0; j < n[i]; j++) {
            seed = seed * 1664525u + 1013904223u;
            host[j] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 2.0f;
        }
        ok = o->upload(be, buf[i], host, n[i] * sizeof(float)) == LH_OK &&
             (act == LH_DTYPE_F32 || o->round(be, buf[i], (int64_t)n[i], act) == LH_OK);
    }
    if (!ok) {
        fprintf(stderr, "bench_attention: out of memory or upload failed\n");
        return 1;
    }
    double fwd = timed(be, &s, buf, 0, iters), bwd = 0.0;
    if (fwd < 0.0 || (backward && (bwd = timed(be, &s, buf, 1, iters)) < 0.0)) return 1;
    printf("{\"b\": %lld, \"heads\": %lld, \"nq\": %lld, \"nk\": %lld, \"d\": %lld, "
           "\"precision\": \"%s\", \"forward_s\": %.9f",
           (long long)s.b, (long long)s.heads, (long long)s.nq, (long long)s.nk, (long long)s.d,
           prec, fwd);
    if (backward) printf(", \"backward_s\": %.9f", bwd);
    printf("}\n");
    for (int i = 0; i < 9; i++) o->free(be, buf[i]);
    free(host);
    lh_backend_destroy(be);
    return 0;
}
