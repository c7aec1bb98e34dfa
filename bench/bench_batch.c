/* Does batching separate requests pay on this backend? N requests with
 * different prompts and seeds, run one at a time and then as one pipeline
 * batch (lh_gen_params.prompts / seeds, what `lorahost serve` does with
 * server.batch > 1); prints both times and the ratio, best of R rounds.
 * Usage: bench_batch MODEL_DIR [--side PX] [--steps N] [--n N] [--rounds R] [--threads T] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"

static const char *const PROMPTS[8] = {
    "a red circle on a blue background",   "a yellow star on a black background",
    "a green triangle on a white background", "a blue square on a yellow background",
    "a white heart on a purple background", "an orange diamond on a green background",
    "a red star on a white background",    "a blue circle on a black background"};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_batch MODEL_DIR [--side PX] [--steps N] [--n N] [--rounds R] "
                        "[--threads T]\n");
        return 2;
    }
    int side = 32, steps = 20, n = 4, rounds = 3, threads = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--side")) side = v;
        else if (!strcmp(argv[i], "--steps")) steps = v;
        else if (!strcmp(argv[i], "--n")) n = v;
        else if (!strcmp(argv[i], "--rounds")) rounds = v;
        else if (!strcmp(argv[i], "--threads")) threads = v;
        else {
            fprintf(stderr, "bench_batch: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n < 2 || n > 8 || side < 8 || steps < 1 || rounds < 1) {
        fprintf(stderr, "bench_batch: --n 2..8, --side >= 8, --steps >= 1, --rounds >= 1\n");
        return 2;
    }
    lh_backend *be = NULL;
    lh_registry *reg = NULL;
    lh_model *m = NULL;
    lh_error err = {0};
    char msg[LH_ERROR_MAX] = "";
    if (lh_backend_cpu_create(&be, threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, "bench_batch: %s\n", msg);
        return 1;
    }
    if (lh_registry_create(&reg, &err) != LH_OK || lh_registry_scan(reg, NULL, 0, 1, 1, &err) ||
        lh_model_open(&m, be, argv[1], &err)) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    uint64_t seeds[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.steps = steps;
    p.width = p.height = side;
    double best_solo = 1e30, best_batch = 1e30;
    for (int r = 0; r < rounds; r++) {
        lh_gen_result res;
        double t0 = bench_now();
        for (int i = 0; i < n; i++) {
            p.prompt = PROMPTS[i];
            p.seed = seeds[i];
            p.batch_size = 1;
            p.prompts = NULL;
            p.seeds = NULL;
            if (lh_pipeline_txt2img(m, reg, &p, &res, &err) != LH_OK) goto fail;
            lh_gen_result_free(&res);
        }
        double t1 = bench_now();
        p.batch_size = n;
        p.prompts = PROMPTS;
        p.seeds = seeds;
        if (lh_pipeline_txt2img(m, reg, &p, &res, &err) != LH_OK) goto fail;
        lh_gen_result_free(&res);
        double t2 = bench_now();
        if (t1 - t0 < best_solo) best_solo = t1 - t0;
        if (t2 - t1 < best_batch) best_batch = t2 - t1;
    }
    printf("model %s, %dx%d, %d steps, cfg %.1f, %d requests: one at a time %.3f s, one batch "
           "%.3f s, batched/alone speedup %.2fx (best of %d)\n",
           m->info.name, side, side, steps, p.cfg_scale, n, best_solo, best_batch,
           best_solo / best_batch, rounds);
    lh_model_close(m);
    lh_registry_destroy(reg);
    lh_backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_batch: %s\n", err.msg);
    return 1;
}
