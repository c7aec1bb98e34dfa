/* A toy trainer for checkpoint_kill.sh: a deterministic "training" state
 * (weights, momentum, an RNG) checkpointed every step through lh_ckpt_save.
 *   ckpt_writer run DIR FINAL NUMEL KEEP   resume from DIR's latest checkpoint
 *       (or start at step 0) and train to step FINAL, printing
 *       "loss <step> <float bits, hex>" per step, "committed <step>" per save
 *   ckpt_writer verify DIR NUMEL           open DIR's latest checkpoint,
 *       recompute that step's state from scratch, compare bit for bit;
 *       prints the step (-1 if there is none), exit 1 on any difference */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

typedef struct toy {
    int64_t step, numel;
    uint64_t rng;
    float *w, *m; /* [numel] each */
} toy;

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void toy_init(toy *t, int64_t numel) {
    t->step = 0;
    t->numel = numel;
    t->rng = 1234;
    t->w = malloc((size_t)numel * sizeof *t->w);
    t->m = calloc((size_t)numel, sizeof *t->m);
    if (!t->w || !t->m) {
        fprintf(stderr, "ckpt_writer: out of memory\n");
        exit(2);
    }
    for (int64_t i = 0; i < numel; i++) t->w[i] = (float)(i % 1000) / 1000.0f - 0.5f;
}

/* One step: noisy momentum descent on |w|^2; returns the loss before it. */
static float toy_step(toy *t) {
    uint64_t r = splitmix64(&t->rng);
    double loss = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        float g = t->w[i] + (float)(int32_t)((r ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull)) >> 32) *
                                0x1p-33f;
        loss += (double)t->w[i] * t->w[i];
        t->m[i] = 0.9f * t->m[i] + 0.1f * g;
        t->w[i] -= 0.01f * t->m[i];
    }
    t->step++;
    return (float)(loss / (double)t->numel);
}

static lh_status toy_load(toy *t, const lh_ckpt *c, lh_error *err) {
    int64_t n[] = {t->numel}, one[] = {1};
    lh_status rc;
    if ((rc = lh_ckpt_read(t->w, c, "w", LH_DTYPE_F32, 1, n, err)) ||
        (rc = lh_ckpt_read(t->m, c, "adam.m", LH_DTYPE_F32, 1, n, err)) ||
        (rc = lh_ckpt_read(&t->rng, c, "rng", LH_DTYPE_U64, 1, one, err)))
        return rc;
    t->step = lh_ckpt_step(c);
    return LH_OK;
}

static void toy_free(toy *t) {
    free(t->w);
    free(t->m);
}

static int run(const char *dir, int64_t final, int64_t numel, int keep) {
    toy t;
    toy_init(&t, numel);
    lh_ckpt *c = NULL;
    lh_error err = {0};
    lh_status rc = lh_ckpt_open_latest(&c, dir, &err);
    if (rc == LH_OK) rc = toy_load(&t, c, &err);
    lh_ckpt_close(c);
    if (rc && rc != LH_ERR_NOT_FOUND) {
        fprintf(stderr, "ckpt_writer: %s\n", err.msg);
        toy_free(&t);
        return 1;
    }
    while (t.step < final) {
        float loss = toy_step(&t);
        uint32_t bits;
        memcpy(&bits, &loss, 4);
        printf("loss %lld %08" PRIx32 "\n", (long long)t.step, bits);
        fflush(stdout);
        lh_ckpt_tensor ts[] = {
            {"w", LH_DTYPE_F32, 1, {numel}, t.w},
            {"adam.m", LH_DTYPE_F32, 1, {numel}, t.m},
            {"rng", LH_DTYPE_U64, 1, {1}, &t.rng},
        };
        lh_ckpt_meta meta[] = {{"trainer", "ckpt_writer"}};
        if ((rc = lh_ckpt_save(dir, t.step, keep, ts, 3, meta, 1, &err))) {
            fprintf(stderr, "ckpt_writer: %s\n", err.msg);
            toy_free(&t);
        return 1;
        }
        printf("committed %lld\n", (long long)t.step);
        fflush(stdout);
    }
    toy_free(&t);
    return 0;
}

static int verify(const char *dir, int64_t numel) {
    lh_ckpt *c = NULL;
    lh_error err = {0};
    lh_status rc = lh_ckpt_open_latest(&c, dir, &err);
    if (rc == LH_ERR_NOT_FOUND) {
        printf("-1\n");
        return 0;
    }
    if (rc) {
        fprintf(stderr, "ckpt_writer: %s\n", err.msg);
        return 1;
    }
    toy got, want;
    toy_init(&got, numel);
    toy_init(&want, numel);
    int bad = 0;
    if ((rc = toy_load(&got, c, &err))) {
        fprintf(stderr, "ckpt_writer: %s\n", err.msg);
        bad = 1;
    }
    while (!bad && want.step < got.step) toy_step(&want);
    if (!bad && (got.rng != want.rng || memcmp(got.w, want.w, (size_t)numel * 4) ||
                 memcmp(got.m, want.m, (size_t)numel * 4))) {
        fprintf(stderr, "ckpt_writer: %s: step %lld differs from a recomputation\n",
                lh_ckpt_path(c), (long long)got.step);
        bad = 1;
    }
    if (!bad && *lh_ckpt_warnings(c)) fprintf(stderr, "warnings: %s\n", lh_ckpt_warnings(c));
    if (!bad) printf("%lld\n", (long long)got.step);
    lh_ckpt_close(c);
    toy_free(&got);
    toy_free(&want);
    return bad;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "run"))
        return run(argv[2], atoll(argv[3]), atoll(argv[4]), atoi(argv[5]));
    if (argc == 4 && !strcmp(argv[1], "verify")) return verify(argv[2], atoll(argv[3]));
    fprintf(stderr, "usage: ckpt_writer run DIR FINAL NUMEL KEEP | verify DIR NUMEL\n");
    return 2;
}
