/* lh_adapter_export: see export.h. */
#include "export.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#include "lorahost/safetensors.h"
#include "tensor.h"

/* PEFT's name for a LoRA suffix, or NULL. */
static const char *peft_suffix(const char *s) {
    if (!strcmp(s, "lora_down.weight")) return "lora_A.weight";
    if (!strcmp(s, "lora_up.weight")) return "lora_B.weight";
    return NULL;
}

lh_status lh_adapter_export(const char *path, lh_adapter *a, lh_export_format fmt,
                            const char *const *meta, size_t n_meta, lh_error *err) {
    if (!a || !a->model || !a->trainable)
        return lh_error_set(err, LH_ERR_INVALID, "export %s: the adapter must be loaded "
                            "trainable and its model open", path);
    lh_adapt *ad;
    lh_status st = lh_adapt_get(&ad, a->model, err);
    if (st != LH_OK) return st;
    lh_st_writer *w = NULL;
    if ((st = lh_st_writer_create(&w, err)) != LH_OK) return st;
    float *alphas = calloc(a->n_parts + 1, sizeof *alphas);
    size_t n_host = 0; /* host copies of tensors on a device */
    float **host = calloc(lh_adapter_n_params(a) + 1, sizeof *host);
    json_t *peft = json_object(), *cfgs[2];
    int oom = !peft;
    for (int k = 0; k < 2; k++) {
        cfgs[k] = json_pack("{s:o, s:o, s:o}", "rank_pattern", json_object(), "alpha_pattern",
                            json_object(), "target_modules", json_array());
        oom |= !cfgs[k];
    }
    if (!alphas || !host || oom) st = lh_error_set(err, LH_ERR_NOMEM, "export %s: out of memory", path);
    for (size_t i = 0; st == LH_OK && i < a->n_parts; i++) {
        const lh_adapter_part *p = &a->parts[i];
        const lh_layer *l = &ad->layers.v[p->layer];
        int te = l->part == LH_LAYER_TE;
        int64_t rank = 0;
        for (int j = 0; st == LH_OK && j < p->n_tensors; j++) {
            const lh_tensor *t = p->tensors[j].tensor;
            const char *sfx = p->tensors[j].suffix;
            char key[256];
            if (fmt == LH_EXPORT_PEFT) {
                const char *ps = peft_suffix(sfx);
                if (!ps) {
                    st = lh_error_set(err, LH_ERR_UNSUPPORTED, "export %s: layer %s has a %s "
                                      "tensor (%s), which PEFT form cannot hold; export in "
                                      "kohya form", path, l->name, p->desc->info.id, sfx);
                    break;
                }
                snprintf(key, sizeof key, "%s.%s.%s", te ? "text_encoder" : "unet", l->name, ps);
            } else {
                snprintf(key, sizeof key, "%s_%s.%s", te ? "lora_te" : "lora_unet", l->kohya,
                         sfx);
            }
            if (!strcmp(sfx, "lora_down.weight")) rank = t->shape[0];
            const void *data = t->data;
            if (t->be) {
                size_t bytes = (size_t)t->numel * sizeof(float);
                float *h = host[n_host++] = malloc(bytes ? bytes : 1);
                st = h ? t->be->ops->download(t->be, h, t->data, bytes) : LH_ERR_NOMEM;
                if (st != LH_OK) {
                    st = lh_error_set(err, st, "export %s: cannot read %s from the device", path,
                                      key);
                    break;
                }
                data = h;
            }
            st = lh_st_writer_add(w, key, LH_DTYPE_F32, t->ndim, t->shape, data, err);
        }
        if (st != LH_OK) break;
        double alpha = isnan(p->alpha) ? (double)rank : p->alpha;
        if (fmt == LH_EXPORT_KOHYA) {
            char key[256];
            snprintf(key, sizeof key, "%s_%s.alpha", te ? "lora_te" : "lora_unet", l->kohya);
            alphas[i] = (float)alpha;
            st = lh_st_writer_add(w, key, LH_DTYPE_F32, 0, NULL, &alphas[i], err);
        } else {
            /* PEFT's LoraConfig: one r / lora_alpha, the rest in rank/alpha_pattern */
            json_t *cfg = cfgs[te];
            json_t *r = json_object_get(cfg, "r"), *al = json_object_get(cfg, "lora_alpha");
            if (!r) {
                json_object_set_new(cfg, "r", json_integer(rank));
                json_object_set_new(cfg, "lora_alpha", json_real(alpha));
            } else if (json_integer_value(r) != rank || json_real_value(al) != alpha) {
                const char *pat = te && !strncmp(l->name, "text_model.", 11) ? l->name + 11
                                                                             : l->name;
                json_object_set_new(json_object_get(cfg, "rank_pattern"), pat, json_integer(rank));
                json_object_set_new(json_object_get(cfg, "alpha_pattern"), pat, json_real(alpha));
            }
            /* PEFT matches a target by name or by ".target" suffix: without
             * "text_model." it matches transformers 4 and 5 module names alike */
            const char *target = l->name;
            if (te && !strncmp(target, "text_model.", 11)) target += 11;
            json_array_append_new(json_object_get(cfg, "target_modules"), json_string(target));
        }
    }
    for (size_t i = 0; st == LH_OK && i < 2 * n_meta; i += 2)
        st = lh_st_writer_add_meta(w, meta[i], meta[i + 1], err);
    if (st == LH_OK && fmt == LH_EXPORT_PEFT) {
        static const char *const prefix[2] = {"unet", "text_encoder"};
        for (int k = 0; k < 2; k++) {
            if (!json_object_get(cfgs[k], "r")) continue;
            const char *field;
            json_t *v;
            json_object_foreach(cfgs[k], field, v) {
                char pk[128];
                snprintf(pk, sizeof pk, "%s.%s", prefix[k], field);
                json_object_set(peft, pk, v);
            }
        }
        char *text = json_dumps(peft, JSON_SORT_KEYS | JSON_COMPACT);
        st = text ? lh_st_writer_add_meta(w, "lora_adapter_metadata", text, err)
                  : lh_error_set(err, LH_ERR_NOMEM, "export %s: out of memory", path);
        free(text);
    }
    if (st == LH_OK) st = lh_st_writer_add_meta(w, "format", "pt", err);
    if (st == LH_OK) st = lh_st_save(w, path, err);
    json_decref(peft);
    json_decref(cfgs[0]);
    json_decref(cfgs[1]);
    free(alphas);
    lh_st_writer_destroy(w);
    for (size_t i = 0; i < n_host; i++) free(host[i]);
    free(host);
    return st;
}
