/* lh_lora_new: see lora_new.h. */
#include "lora_new.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorahost/safetensors.h"
#include "rng.h"

static int wanted(const char *name, const char *const *targets, int n) {
    size_t len = strlen(name);
    for (int i = 0; i < n; i++) {
        size_t t = strlen(targets[i]);
        if (!strcmp(name, targets[i])) return 1;
        if (t < len && name[len - t - 1] == '.' && !strcmp(name + len - t, targets[i])) return 1;
    }
    return 0;
}

/* One factor tensor: normal with std `sd` (0: zero) or kaiming-uniform
 * (sd < 0), added to w under name `<prefix>_<layer>.<suffix>`; *buf owns it. */
static lh_status add_factor(lh_st_writer *w, lh_rng *rng, float **buf, const char *prefix,
                            const lh_layer *l, const char *suffix, int ndim, const int64_t *shape,
                            double sd, int64_t fan_in, lh_error *err) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *v = calloc((size_t)n, sizeof *v);
    if (!v) return lh_error_set(err, LH_ERR_NOMEM, "new adapter: out of memory");
    *buf = v;
    lh_status st = LH_OK;
    if (sd < 0) {
        double bound = 1.0 / sqrt((double)fan_in);
        for (int64_t k = 0; k < n; k++)
            v[k] = (float)((2.0 * lh_rng_u32(rng) / 4294967296.0 - 1.0) * bound);
    } else if (sd > 0) {
        st = lh_rng_randn(rng, v, n, err);
        for (int64_t k = 0; st == LH_OK && k < n; k++) v[k] = (float)(v[k] * sd);
    }
    char key[192];
    snprintf(key, sizeof key, "%s_%s.%s", prefix, l->kohya, suffix);
    return st == LH_OK ? lh_st_writer_add(w, key, LH_DTYPE_F32, ndim, shape, v, err) : st;
}

lh_status lh_lora_new(const char *path, const char *kind, const lh_layers *layers,
                      const char *const *targets, int n_targets, const char *const *te_targets,
                      int n_te_targets, int rank, double alpha, uint64_t seed, int *n_layers,
                      lh_error *err) {
    *n_layers = 0;
    int loha = !strcmp(kind, "loha");
    if (!loha && strcmp(kind, "lora"))
        return lh_error_set(err, LH_ERR_INVALID, "new adapter: kind '%s': lora or loha", kind);
    if (rank < 1 || !(alpha > 0) || !isfinite(alpha) || n_targets < 1)
        return lh_error_set(err, LH_ERR_INVALID, "new LoRA: rank %d, alpha %g and %d targets: "
                            "rank and alpha must be positive, targets not empty", rank, alpha,
                            n_targets);
    lh_st_writer *w = NULL;
    lh_status st = lh_st_writer_create(&w, err);
    if (st != LH_OK) return st;
    lh_rng *rng = lh_rng_create(seed, err);
    size_t n_bufs = 0;
    float **bufs = calloc(4 * layers->n + 1, sizeof *bufs);
    float alpha_f = (float)alpha;
    if (!rng || !bufs) st = lh_error_set(err, LH_ERR_NOMEM, "new LoRA: out of memory");
    for (size_t i = 0; st == LH_OK && i < layers->n; i++) {
        const lh_layer *l = &layers->v[i];
        int te = l->part == LH_LAYER_TE;
        if (te ? !wanted(l->name, te_targets, n_te_targets) : !wanted(l->name, targets, n_targets))
            continue;
        const char *prefix = te ? "lora_te" : "lora_unet";
        int64_t out = l->shape[0], in = l->shape[1];
        int64_t kh = l->ndim == 4 ? l->shape[2] : 1, kw = l->ndim == 4 ? l->shape[3] : 1;
        int64_t fan_in = in * kh * kw;
        char key[160];
        if (loha) { /* 2-D factors: [out, r] @ [r, in * kh * kw] */
            int64_t sa[2] = {out, rank}, sb[2] = {rank, fan_in};
            st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "hada_w1_a", 2, sa, 0.1, 0, err);
            if (st == LH_OK)
                st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "hada_w1_b", 2, sb, 1.0, 0,
                                err);
            if (st == LH_OK)
                st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "hada_w2_a", 2, sa, 0.0, 0,
                                err);
            if (st == LH_OK)
                st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "hada_w2_b", 2, sb, 1.0, 0,
                                err);
        } else {
            int64_t sd[4] = {rank, in, kh, kw}, su[4] = {out, rank, 1, 1};
            st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "lora_down.weight", l->ndim, sd,
                            -1.0, fan_in, err);
            if (st == LH_OK)
                st = add_factor(w, rng, &bufs[n_bufs++], prefix, l, "lora_up.weight", l->ndim,
                                su, 0.0, 0, err);
        }
        snprintf(key, sizeof key, "%s_%s.alpha", prefix, l->kohya);
        if (st == LH_OK) st = lh_st_writer_add(w, key, LH_DTYPE_F32, 0, NULL, &alpha_f, err);
        if (st == LH_OK) ++*n_layers;
    }
    int n_unet = 0;
    for (size_t i = 0; i < layers->n; i++)
        n_unet += layers->v[i].part == LH_LAYER_UNET && wanted(layers->v[i].name, targets, n_targets);
    if (st == LH_OK && n_unet == 0) {
        char list[512] = "";
        size_t len = 0;
        for (int i = 0; i < n_targets && len < sizeof list - 1; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "",
                                    targets[i]);
        st = lh_error_set(err, LH_ERR_NOT_FOUND, "new LoRA: no U-Net layer matches the targets "
                          "(%s)", list);
    }
    if (st == LH_OK) st = lh_st_save(w, path, err);
    for (size_t i = 0; i < n_bufs; i++) free(bufs[i]);
    free(bufs);
    lh_rng_destroy(rng);
    lh_st_writer_destroy(w);
    return st;
}
