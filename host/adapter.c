/* Loading adapter files: keys -> layers -> adapter-kind plugin instances,
 * with a report of what matched (see include/lorahost/adapters.h). */
#include "adapter.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_keys.h"
#include "backend_load.h"
#include "host_api.h"
#include "log.h"
#include "tensor.h"

#define MAX_GROUP 16 /* tensors per layer: LoKr Tucker with DoRA needs 7 */

typedef struct group {
    int n;
    char suffix[MAX_GROUP][LH_AKEY_SUFFIX_MAX]; /* normalised */
    lh_tensor *tensor[MAX_GROUP];
    size_t key[MAX_GROUP]; /* index in the file */
    double alpha;          /* NaN: none in the file */
    lh_akey_family family;
} group;

/* Alphas a file may give outside `.alpha` tensors. */
typedef struct alphas {
    double kohya;                         /* ss_network_alpha, NaN if none */
    double kohya_conv;                    /* ss_network_args conv_alpha, NaN if none */
    double peft[LH_LAYER_PART_COUNT];     /* lora_adapter_metadata <part>.lora_alpha */
    json_t *pattern[LH_LAYER_PART_COUNT]; /* <part>.alpha_pattern (borrowed from meta) */
    json_t *meta;
} alphas;

typedef struct loader {
    lh_adapter *a;
    lh_adapt *ad;
    lh_registry *reg;
    const lh_st_file *f;
    lh_adapter_policy policy;
    group *groups; /* one per layer of the table, n == layers.n; layer -1 unused */
    alphas al;
    unsigned families; /* bit per lh_akey_family */
    unsigned alpha_sources;
    lh_error *err;
} loader;

enum { ALPHA_TENSOR = 1, ALPHA_KOHYA = 2, ALPHA_PEFT = 4, ALPHA_NONE = 8 };

/* ---- Small helpers ---- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static lh_status add_unmatched(loader *L, const char *key, const char *why) {
    lh_adapter *a = L->a;
    if (a->report.n_unmatched % 64 == 0) {
        char **u = realloc(a->unmatched, (a->report.n_unmatched + 64) * sizeof *u);
        if (!u) return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory for the load report");
        a->unmatched = u;
        a->report.unmatched = (const char *const *)u;
    }
    size_t len = strlen(key) + strlen(why) + 3;
    char *s = malloc(len);
    if (!s) return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory for the load report");
    snprintf(s, len, "%s: %s", key, why);
    a->unmatched[a->report.n_unmatched++] = s;
    return LH_OK;
}

static lh_status own_tensor(loader *L, lh_tensor **out, const lh_st_tensor *t) {
    *out = NULL;
    lh_adapter *a = L->a;
    if (t->dtype != LH_DTYPE_F32 && t->dtype != LH_DTYPE_F16 && t->dtype != LH_DTYPE_BF16 &&
        t->dtype != LH_DTYPE_F64)
        return lh_error_set(L->err, LH_ERR_UNSUPPORTED,
                            "%s: tensor '%s' is %s; adapter weights must be F32, F16, BF16 or F64",
                            lh_st_name(L->f), t->name, lh_dtype_name(t->dtype));
    int64_t one = 1;
    lh_tensor *x = lh_tensor_create(LH_DTYPE_F32, t->ndim ? t->ndim : 1,
                                    t->ndim ? t->shape : &one, L->err);
    if (!x) return L->err ? L->err->code : LH_ERR_NOMEM;
    if (lh_convert(x->data, LH_DTYPE_F32, t->data, t->dtype, (size_t)t->numel) != LH_OK) {
        lh_tensor_destroy(x);
        return lh_error_set(L->err, LH_ERR_FORMAT, "%s: tensor '%s' cannot be read",
                            lh_st_name(L->f), t->name);
    }
    const float *v = x->data;
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(v[i])) {
            lh_tensor_destroy(x);
            return lh_error_set(L->err, LH_ERR_NUMERIC,
                                "%s: tensor '%s' has a NaN or Inf at element %lld",
                                lh_st_name(L->f), t->name, (long long)i);
        }
    if (a->n_owned % 64 == 0) {
        lh_tensor **o = realloc(a->owned, (a->n_owned + 64) * sizeof *o);
        if (!o) {
            lh_tensor_destroy(x);
            return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading %s", lh_st_name(L->f));
        }
        a->owned = o;
    }
    a->owned[a->n_owned++] = x;
    *out = x;
    return LH_OK;
}

/* ---- Alphas from metadata ---- */

static double meta_number(const lh_st_file *f, const char *key) {
    for (size_t i = 0; i < lh_st_meta_count(f); i++)
        if (!strcmp(lh_st_meta_key(f, i), key)) {
            char *end;
            const char *v = lh_st_meta_value(f, i);
            double d = strtod(v, &end);
            return end != v && *end == '\0' ? d : NAN;
        }
    return NAN;
}

static const char *meta_text(const lh_st_file *f, const char *key) {
    for (size_t i = 0; i < lh_st_meta_count(f); i++)
        if (!strcmp(lh_st_meta_key(f, i), key)) return lh_st_meta_value(f, i);
    return NULL;
}

static lh_status check_alpha(loader *L, double v, const char *where) {
    if (isnan(v) || (isfinite(v) && v > 0)) return LH_OK;
    return lh_error_set(L->err, LH_ERR_INVALID, "%s: %s is %g; alpha must be a finite number > 0",
                        lh_st_name(L->f), where, v);
}

/* PEFT's lora_alpha and alpha_pattern for `part`, as "<prefix>lora_alpha"
 * in obj (diffusers' metadata: "unet.", PEFT's adapter_config.json: ""). */
static lh_status peft_alpha(loader *L, int part, json_t *obj, const char *prefix,
                            const char *where) {
    char k[64], what[128];
    snprintf(k, sizeof k, "%slora_alpha", prefix);
    json_t *v = json_object_get(obj, k);
    if (json_is_number(v)) L->al.peft[part] = json_number_value(v);
    snprintf(what, sizeof what, "%s %s", where, k);
    lh_status st = check_alpha(L, L->al.peft[part], what);
    snprintf(k, sizeof k, "%salpha_pattern", prefix);
    v = json_object_get(obj, k);
    if (json_is_object(v) && json_object_size(v)) L->al.pattern[part] = v;
    return st;
}

/* A PEFT save_pretrained directory: adapter_config.json beside the file. */
static lh_status peft_config(loader *L) {
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s", L->a->path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = '\0';
    else dir[0] = '\0';
    snprintf(path, sizeof path, "%sadapter_config.json", dir);
    FILE *fp = fopen(path, "rb");
    if (!fp) return LH_OK;
    json_error_t je;
    L->al.meta = json_loadf(fp, 0, &je);
    fclose(fp);
    if (!json_is_object(L->al.meta))
        return lh_error_set(L->err, LH_ERR_FORMAT, "%s:%d: not a PEFT adapter config (%s)", path,
                            je.line, je.text);
    lh_status st = LH_OK;
    for (int p = 0; st == LH_OK && p < LH_LAYER_PART_COUNT; p++)
        st = peft_alpha(L, p, L->al.meta, "", path);
    return st;
}

static lh_status read_alphas(loader *L) {
    alphas *al = &L->al;
    al->kohya = meta_number(L->f, "ss_network_alpha");
    al->kohya_conv = NAN;
    for (int p = 0; p < LH_LAYER_PART_COUNT; p++) al->peft[p] = NAN;
    lh_status st = check_alpha(L, al->kohya, "metadata ss_network_alpha");
    if (st != LH_OK) return st;
    const char *args = meta_text(L->f, "ss_network_args");
    if (args) {
        json_t *j = json_loads(args, 0, NULL);
        json_t *c = j ? json_object_get(j, "conv_alpha") : NULL;
        if (json_is_string(c)) al->kohya_conv = strtod(json_string_value(c), NULL);
        else if (json_is_number(c)) al->kohya_conv = json_number_value(c);
        json_decref(j);
        if ((st = check_alpha(L, al->kohya_conv, "metadata ss_network_args conv_alpha"))) return st;
    }
    const char *meta = meta_text(L->f, "lora_adapter_metadata");
    if (meta) {
        json_error_t je;
        al->meta = json_loads(meta, 0, &je);
        if (!json_is_object(al->meta))
            return lh_error_set(L->err, LH_ERR_FORMAT,
                                "%s: metadata lora_adapter_metadata is not a JSON object (%s)",
                                lh_st_name(L->f), je.text);
        static const char *const PART[LH_LAYER_PART_COUNT] = {"unet.", "text_encoder."};
        for (int p = 0; p < LH_LAYER_PART_COUNT; p++)
            if ((st = peft_alpha(L, p, al->meta, PART[p], "lora_adapter_metadata"))) return st;
        return LH_OK;
    }
    return peft_config(L);
}

/* PEFT alpha_pattern: a key matches a module whose name ends with it. */
static double pattern_alpha(const json_t *pattern, const char *name) {
    const char *k;
    json_t *v;
    size_t n = strlen(name);
    json_object_foreach((json_t *)pattern, k, v) {
        size_t m = strlen(k);
        if (m <= n && !strcmp(name + n - m, k) && (m == n || name[n - m - 1] == '.') &&
            json_is_number(v))
            return json_number_value(v);
    }
    return NAN;
}

/* The alpha a group without an `.alpha` tensor gets. */
static double file_alpha(loader *L, const lh_layer *l, lh_akey_family fam) {
    if (fam == LH_AKEY_PEFT) {
        double v = L->al.pattern[l->part] ? pattern_alpha(L->al.pattern[l->part], l->name) : NAN;
        if (isnan(v)) v = L->al.peft[l->part];
        if (!isnan(v)) L->alpha_sources |= ALPHA_PEFT;
        return v;
    }
    double v = l->ndim == 4 && l->shape[2] > 1 && !isnan(L->al.kohya_conv) ? L->al.kohya_conv
                                                                           : L->al.kohya;
    if (!isnan(v)) L->alpha_sources |= ALPHA_KOHYA;
    return v;
}

/* ---- Grouping ---- */

static lh_status add_key(loader *L, size_t index, const lh_st_tensor *t) {
    lh_akey k;
    lh_akey_status ks = lh_akey_parse(&k, t->name);
    if (ks == LH_AKEY_OTHER_MODEL)
        return add_unmatched(L, t->name, "for a model part SD 1.x/2.x lack (SDXL's second text encoder)");
    if (ks != LH_AKEY_OK) return add_unmatched(L, t->name, "not an adapter key lorahost knows");
    int64_t li = lh_akey_layer(&L->ad->layers, &k);
    if (li < 0) {
        char why[LH_AKEY_MODULE_MAX + 64];
        snprintf(why, sizeof why, "no layer '%s' in the %s", k.module,
                 k.part == LH_LAYER_TE ? "text encoder" : "U-Net");
        return add_unmatched(L, t->name, why);
    }
    L->families |= 1u << k.family;
    group *g = &L->groups[li];
    if (!strcmp(k.suffix, "alpha")) {
        if (t->numel != 1)
            return lh_error_set(L->err, LH_ERR_SHAPE, "%s: tensor '%s' has %lld elements; an alpha "
                                "is one number", lh_st_name(L->f), t->name, (long long)t->numel);
        float v;
        if (lh_convert(&v, LH_DTYPE_F32, t->data, t->dtype, 1) != LH_OK) v = NAN;
        if (!(isfinite(v) && v > 0))
            return lh_error_set(L->err, LH_ERR_INVALID,
                                "%s: tensor '%s' is %g; alpha must be a finite number > 0",
                                lh_st_name(L->f), t->name, (double)v);
        g->alpha = v;
        L->alpha_sources |= ALPHA_TENSOR;
        L->a->report.n_used++;
        return LH_OK;
    }
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->suffix[i], k.suffix))
            return lh_error_set(L->err, LH_ERR_FORMAT,
                                "%s: tensors '%s' and '%s' are both %s of layer %s",
                                lh_st_name(L->f), lh_st_get(L->f, g->key[i])->name, t->name,
                                k.suffix, L->ad->layers.v[li].name);
    if (g->n == MAX_GROUP)
        return lh_error_set(L->err, LH_ERR_FORMAT, "%s: more than %d tensors for layer %s",
                            lh_st_name(L->f), MAX_GROUP, L->ad->layers.v[li].name);
    lh_tensor *x;
    lh_status st = own_tensor(L, &x, t);
    if (st != LH_OK) return st;
    snprintf(g->suffix[g->n], sizeof g->suffix[0], "%s", k.suffix);
    g->key[g->n] = index;
    g->tensor[g->n++] = x;
    g->family = k.family;
    return LH_OK;
}

/* ---- Instances ---- */

static const lh_adapter_desc *find_kind(lh_registry *reg, const lh_adapter_layer *al) {
    for (size_t i = 0; i < lh_registry_count(reg); i++) {
        const lh_plugin_info *info = lh_registry_get(reg, i, NULL);
        if (info->kind != LH_PLUGIN_ADAPTER) continue;
        const lh_adapter_desc *d = (const lh_adapter_desc *)info;
        if (d->recognise(al)) return d;
    }
    return NULL;
}

static void count_kind(lh_adapter_report *r, const char *kind, const char *form) {
    for (int i = 0; i < r->n_kinds; i++)
        if (!strcmp(r->kinds[i].kind, kind) && !strcmp(r->kinds[i].form, form)) {
            r->kinds[i].layers++;
            return;
        }
    if (r->n_kinds == LH_ADAPTER_MAX_KINDS) return;
    snprintf(r->kinds[r->n_kinds].kind, sizeof r->kinds[0].kind, "%s", kind);
    snprintf(r->kinds[r->n_kinds].form, sizeof r->kinds[0].form, "%s", form);
    r->kinds[r->n_kinds++].layers = 1;
}

/* The description create() gets for part p of layer l. */
static void layer_desc(lh_adapter_layer *al, const lh_layer *l, const lh_adapter_part *p,
                       double alpha) {
    memset(al, 0, sizeof *al);
    al->name = l->name;
    al->base_ndim = l->ndim;
    for (int i = 0; i < l->ndim; i++) al->base_shape[i] = l->shape[i];
    al->tensors = p->tensors;
    al->n_tensors = p->n_tensors;
    al->alpha = alpha;
    al->stride = l->stride;
    al->padding = l->pad;
}

/* d->create for part p, with a copy of the base weight where a DoRA
 * magnitude needs it. */
static lh_status create_state(void **state, lh_adapt *ad, const lh_adapter_part *p,
                              const lh_adapter_desc *d, lh_adapter_layer *al, lh_error *err) {
    const lh_layer *l = &ad->layers.v[p->layer];
    float *base = NULL;
    lh_tensor bt;
    lh_status st = LH_OK;
    for (int i = 0; i < p->n_tensors; i++)
        if (!strcmp(p->tensors[i].suffix, "dora_scale") ||
            !strcmp(p->tensors[i].suffix, "lora_magnitude_vector")) {
            if (!(base = lh_adapt_base_weight(ad, p->layer, err)))
                return err ? err->code : LH_ERR_NOMEM;
            st = lh_tensor_view(&bt, base, LH_DTYPE_F32, l->ndim, l->shape, err);
            al->base_weight = &bt;
            break;
        }
    char msg[LH_ERROR_MAX] = "";
    /* on a device the instance keeps its tensors in device memory */
    lh_backend *be = ad->layers.be, *prev = NULL;
    int dev = be && !lh_backend_host_memory(be);
    if (dev) prev = lh_host_api_bind(be);
    if (st == LH_OK) st = d->create(state, lh_host_api_get(), al, msg, sizeof msg);
    if (dev) lh_host_api_bind(prev);
    free(base);
    if (st != LH_OK && msg[0]) return lh_error_set(err, st, "%s", msg);
    if (st != LH_OK) return lh_error_set(err, st, "the adapter kind refused layer %s", l->name);
    return LH_OK;
}

static lh_status make_part(loader *L, size_t li, group *g) {
    lh_adapter *a = L->a;
    const lh_layer *l = &L->ad->layers.v[li];
    lh_adapter_part *p = &a->parts[a->n_parts];
    memset(p, 0, sizeof *p);
    p->layer = li;
    p->tensors = calloc((size_t)g->n, sizeof *p->tensors);
    if (!p->tensors) return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading adapters");
    for (int i = 0; i < g->n; i++) {
        char *sfx = dup_str(g->suffix[i]);
        if (!sfx) {
            for (int j = 0; j < i; j++) free((char *)p->tensors[j].suffix);
            free(p->tensors);
            return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading adapters");
        }
        p->tensors[i].suffix = sfx;
        p->tensors[i].tensor = g->tensor[i];
    }
    p->keys = calloc((size_t)g->n, sizeof *p->keys);
    for (int i = 0; p->keys && i < g->n; i++)
        if (!(p->keys[i] = dup_str(lh_st_get(L->f, g->key[i])->name))) break;
    p->n_tensors = g->n;
    a->n_parts++; /* owned from here: freed with the adapter */
    if (!p->keys || !p->keys[g->n - 1])
        return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading adapters");

    double alpha = isnan(g->alpha) ? file_alpha(L, l, g->family) : g->alpha;
    if (isnan(g->alpha) && isnan(alpha)) L->alpha_sources |= ALPHA_NONE;
    lh_adapter_layer al;
    layer_desc(&al, l, p, alpha);
    const lh_adapter_desc *d = find_kind(L->reg, &al);
    if (!d) {
        a->n_parts--;
        for (int i = 0; i < p->n_tensors; i++) {
            free((char *)p->tensors[i].suffix);
            free(p->keys[i]);
        }
        free(p->tensors);
        free(p->keys);
        for (int i = 0; i < g->n; i++) {
            lh_status st = add_unmatched(L, lh_st_get(L->f, g->key[i])->name,
                                         "no adapter kind (lora, loha, lokr, full) recognises "
                                         "this layer's set of tensors");
            if (st != LH_OK) return st;
        }
        return LH_OK;
    }
    p->alpha = alpha;
    lh_status st = create_state(&p->state, L->ad, p, d, &al, L->err);
    if (st != LH_OK && L->err) {
        char msg[LH_ERROR_MAX];
        snprintf(msg, sizeof msg, "%s", L->err->msg);
        return lh_error_set(L->err, st, "%s: %s", lh_st_name(L->f), msg);
    }
    if (st != LH_OK) return st;
    p->desc = d;
    a->report.n_used += (size_t)g->n;
    if (l->part == LH_LAYER_TE) a->report.layers_te++;
    else a->report.layers_unet++;
    count_kind(&a->report, d->info.id, l->ndim == 4 ? "conv" : "linear");
    return LH_OK;
}

/* ---- Load / unload ---- */

static void adapter_free(lh_adapter *a) {
    if (!a) return;
    for (size_t i = 0; i < a->n_parts; i++) {
        lh_adapter_part *p = &a->parts[i];
        if (p->desc) p->desc->destroy(p->state);
        for (int j = 0; j < p->n_tensors; j++) {
            free((char *)p->tensors[j].suffix);
            if (p->keys) free(p->keys[j]);
            if (p->grads) lh_tensor_destroy(p->grads[j]);
        }
        free(p->tensors);
        free(p->keys);
        free(p->grads);
    }
    free(a->parts);
    for (size_t i = 0; i < a->n_owned; i++) lh_tensor_destroy(a->owned[i]);
    free(a->owned);
    for (size_t i = 0; i < a->report.n_unmatched; i++) free(a->unmatched[i]);
    free(a->unmatched);
    free(a->path);
    free(a->name);
    free(a);
}

static void join_format(char *out, size_t size, unsigned families) {
    out[0] = '\0';
    for (int f = 0; f < LH_AKEY_FAMILY_COUNT; f++)
        if (families & (1u << f)) {
            size_t len = strlen(out);
            snprintf(out + len, size - len, "%s%s", len ? "+" : "", lh_akey_family_name(f));
        }
}

static void join_alpha(char *out, size_t size, unsigned sources) {
    static const char *const NAMES[] = {".alpha tensors", "ss_network_alpha",
                                        "PEFT config", "none (alpha = rank)"};
    out[0] = '\0';
    for (int i = 0; i < 4; i++)
        if (sources & (1u << i)) {
            size_t len = strlen(out);
            snprintf(out + len, size - len, "%s%s", len ? "+" : "", NAMES[i]);
        }
}

static char *stem(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    char *s = dup_str(b);
    if (!s) return NULL;
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = '\0';
    return s;
}

static lh_status load_groups(loader *L) {
    lh_adapter *a = L->a;
    size_t n_layers = L->ad->layers.n;
    L->groups = calloc(n_layers ? n_layers : 1, sizeof *L->groups);
    a->parts = calloc(n_layers ? n_layers : 1, sizeof *a->parts);
    if (!L->groups || !a->parts) return lh_error_set(L->err, LH_ERR_NOMEM, "out of memory loading adapters");
    for (size_t i = 0; i < n_layers; i++) L->groups[i].alpha = NAN;
    lh_status st = read_alphas(L);
    for (size_t i = 0; st == LH_OK && i < lh_st_count(L->f); i++)
        st = add_key(L, i, lh_st_get(L->f, i));
    for (size_t i = 0; st == LH_OK && i < n_layers; i++)
        if (L->groups[i].n) st = make_part(L, i, &L->groups[i]);
    return st;
}

static lh_status check_report(loader *L) {
    lh_adapter_report *r = &L->a->report;
    const char *name = lh_st_name(L->f);
    if (r->layers_unet + r->layers_te == 0) {
        if (r->n_unmatched)
            return lh_error_set(L->err, LH_ERR_NOT_FOUND,
                                "%s: none of its %zu tensors matches a layer of this model "
                                "(first: %s)",
                                name, r->n_keys, r->unmatched[0]);
        return lh_error_set(L->err, LH_ERR_NOT_FOUND, "%s: holds no adapter tensors", name);
    }
    if (L->policy == LH_ADAPTER_STRICT && r->n_unmatched)
        return lh_error_set(L->err, LH_ERR_NOT_FOUND,
                            "%s: %zu key%s match%s no layer (strict policy); first: %s", name,
                            r->n_unmatched, r->n_unmatched == 1 ? "" : "s",
                            r->n_unmatched == 1 ? "es" : "", r->unmatched[0]);
    return LH_OK;
}

/* A trainable adapter on a device backend: its tensors (what the
 * optimizer updates) move to the device's memory. */
static lh_status to_device(lh_adapter *a, lh_backend *be, lh_error *err) {
    if (!be || lh_backend_host_memory(be)) return LH_OK;
    for (size_t i = 0; i < a->n_owned; i++) {
        lh_tensor *t = a->owned[i];
        size_t bytes = (size_t)t->numel * sizeof(float);
        void *d = be->ops->alloc(be, bytes ? bytes : 1);
        lh_status st = d ? be->ops->upload(be, d, t->data, bytes) : LH_ERR_NOMEM;
        if (st != LH_OK) {
            if (d) be->ops->free(be, d);
            return lh_error_set(err, st, "adapter %s: cannot copy its tensors to the %s device",
                                a->name, be->ops->name);
        }
        free(t->data);
        t->data = d;
        t->be = be;
    }
    return LH_OK;
}

lh_status lh_adapter_load(lh_adapter **out, lh_model *model, lh_registry *reg, const char *path,
                          const lh_adapter_load_opts *opts, lh_error *err) {
    if (out) *out = NULL;
    if (!out || !model || !reg || !path)
        return lh_error_set(err, LH_ERR_INVALID, "adapter load: NULL model, registry or path");
    lh_st_file *f = NULL;
    lh_status st = lh_st_open(&f, path, err);
    if (st != LH_OK) return st;
    st = lh_adapter_load_st(out, model, reg, f, path, opts, err);
    lh_st_close(f);
    return st;
}

lh_status lh_adapter_load_st(lh_adapter **out, lh_model *model, lh_registry *reg,
                             const lh_st_file *f, const char *path,
                             const lh_adapter_load_opts *opts, lh_error *err) {
    *out = NULL;
    lh_adapt *ad;
    lh_status st = lh_adapt_get(&ad, model, err);
    if (st != LH_OK) return st;
    lh_adapter *a = calloc(1, sizeof *a);
    loader L;
    memset(&L, 0, sizeof L);
    L.a = a;
    L.ad = ad;
    L.reg = reg;
    L.f = f;
    L.policy = opts ? opts->policy : LH_ADAPTER_WARN;
    L.err = err;
    if (!a || !(a->path = dup_str(path)) ||
        !(a->name = opts && opts->name ? dup_str(opts->name) : stem(path))) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory loading %s", path);
        goto done;
    }
    a->model = model;
    a->report.n_keys = lh_st_count(f);
    if ((st = load_groups(&L)) != LH_OK || (st = check_report(&L)) != LH_OK) goto done;
    /* the kinds hold their own copies now: keep only the shapes (unless trainable) */
    a->trainable = opts && opts->trainable;
    for (size_t i = 0; !a->trainable && i < a->n_owned; i++) {
        free(a->owned[i]->data);
        a->owned[i]->data = NULL;
        a->owned[i]->owns_data = 0;
    }
    if (a->trainable && (st = to_device(a, ad->layers.be, err)) != LH_OK) goto done;
    join_format(a->report.format, sizeof a->report.format, L.families);
    join_alpha(a->report.alpha_source, sizeof a->report.alpha_source, L.alpha_sources);
    if (ad->n_loaded == ad->cap_loaded) {
        size_t cap = ad->cap_loaded ? 2 * ad->cap_loaded : 8;
        lh_adapter **v = realloc(ad->loaded, cap * sizeof *v);
        if (!v) {
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory loading %s", path);
            goto done;
        }
        ad->loaded = v;
        ad->cap_loaded = cap;
    }
    ad->loaded[ad->n_loaded++] = a;
    for (size_t i = 0; i < a->report.n_unmatched; i++)
        lh_log(LH_LOG_WARN, "adapter", "%s: %s", a->name, a->unmatched[i]);
    *out = a;
    a = NULL;
done:
    adapter_free(a);
    free(L.groups);
    json_decref(L.al.meta);
    return st;
}

void lh_adapter_unload(lh_adapter *a) {
    if (!a) return;
    if (a->model) lh_adapt_forget(a->model, a);
    adapter_free(a);
}

const lh_adapter_report *lh_adapter_get_report(const lh_adapter *a) { return a ? &a->report : NULL; }
const char *lh_adapter_name(const lh_adapter *a) { return a ? a->name : NULL; }
const char *lh_adapter_path(const lh_adapter *a) { return a ? a->path : NULL; }

lh_status lh_adapter_layer_delta(const lh_adapter *a, lh_layer_part part, const char *name,
                                 double scale, float *out, size_t numel, float *bias_out,
                                 lh_error *err) {
    if (!a || !a->model || !a->model->adapt)
        return lh_error_set(err, LH_ERR_INVALID, "adapter delta: adapter not loaded");
    const lh_layers *t = &a->model->adapt->layers;
    int64_t li = lh_layers_find(t, part, name);
    if (li < 0) return lh_error_set(err, LH_ERR_NOT_FOUND, "no layer %s", name);
    const lh_layer *l = &t->v[li];
    if (numel != lh_layer_numel(l))
        return lh_error_set(err, LH_ERR_SHAPE, "layer %s has %zu weights, not %zu", name,
                            lh_layer_numel(l), numel);
    memset(out, 0, numel * sizeof *out);
    if (bias_out) memset(bias_out, 0, (size_t)l->shape[0] * sizeof *bias_out);
    for (size_t i = 0; i < a->n_parts; i++) {
        const lh_adapter_part *p = &a->parts[i];
        if (p->layer != (size_t)li) continue;
        lh_tensor dt, bt;
        lh_status st = lh_tensor_view(&dt, out, LH_DTYPE_F32, l->ndim, l->shape, err);
        char msg[LH_ERROR_MAX] = "";
        if (st == LH_OK) st = p->desc->weight_delta(p->state, &dt, scale, msg, sizeof msg);
        if (st == LH_OK && bias_out && p->desc->bias_delta &&
            (st = lh_tensor_view(&bt, bias_out, LH_DTYPE_F32, 1, l->shape, err)) == LH_OK)
            st = p->desc->bias_delta(p->state, &bt, scale, msg, sizeof msg);
        if (st != LH_OK) return lh_error_set(err, st, "layer %s: %s", name, msg);
        return LH_OK;
    }
    return lh_error_set(err, LH_ERR_NOT_FOUND, "adapter %s does not change layer %s", a->name, name);
}

/* ---- Training ---- */

lh_status lh_adapter_grads_enable(lh_adapter *a, lh_error *err) {
    for (size_t i = 0; i < a->n_parts; i++) {
        lh_adapter_part *p = &a->parts[i];
        if (p->grads) continue;
        if (!(p->grads = calloc((size_t)p->n_tensors, sizeof *p->grads)))
            return lh_error_set(err, LH_ERR_NOMEM, "out of memory for adapter gradients");
        for (int j = 0; j < p->n_tensors; j++) {
            const lh_tensor *t = p->tensors[j].tensor;
            if (!(p->grads[j] = lh_tensor_create_on(t->be, t->ndim, t->shape, err)))
                return err ? err->code : LH_ERR_NOMEM;
        }
    }
    return LH_OK;
}

void lh_adapter_grads_zero(lh_adapter *a) {
    for (size_t i = 0; i < a->n_parts; i++)
        for (int j = 0; a->parts[i].grads && j < a->parts[i].n_tensors; j++) {
            lh_tensor *g = a->parts[i].grads[j];
            if (g->be)
                g->be->ops->memset0(g->be, g->data, (size_t)g->numel * sizeof(float));
            else
                memset(g->data, 0, (size_t)g->numel * sizeof(float));
        }
}

int64_t lh_adapter_grads_unscale(lh_adapter *a, float inv_scale) {
    int64_t bad = 0;
    for (size_t i = 0; i < a->n_parts; i++)
        for (int j = 0; a->parts[i].grads && j < a->parts[i].n_tensors; j++) {
            lh_tensor *t = a->parts[i].grads[j];
            if (t->be) {
                int64_t n = 0;
                if (t->be->ops->scale(t->be, t->data, t->numel, inv_scale) != LH_OK ||
                    t->be->ops->count_nonfinite(t->be, &n, t->data, t->numel) != LH_OK)
                    n = t->numel; /* a failed device reads as all bad */
                bad += n;
                continue;
            }
            float *g = t->data;
            for (int64_t k = 0; k < t->numel; k++) {
                g[k] *= inv_scale;
                bad += !isfinite(g[k]);
            }
        }
    return bad;
}

const lh_tensor *lh_adapter_grad(const lh_adapter *a, const char *key) {
    for (size_t i = 0; i < a->n_parts; i++)
        for (int j = 0; a->parts[i].grads && j < a->parts[i].n_tensors; j++)
            if (!strcmp(a->parts[i].keys[j], key)) return a->parts[i].grads[j];
    return NULL;
}

size_t lh_adapter_n_params(const lh_adapter *a) {
    size_t n = 0;
    for (size_t i = 0; a && i < a->n_parts; i++) n += (size_t)a->parts[i].n_tensors;
    return n;
}

lh_status lh_adapter_param(lh_adapter *a, size_t i, const char **key, lh_tensor **value,
                           lh_tensor **grad) {
    for (size_t k = 0; a && k < a->n_parts; k++) {
        lh_adapter_part *p = &a->parts[k];
        if (i >= (size_t)p->n_tensors) {
            i -= (size_t)p->n_tensors;
            continue;
        }
        if (key) *key = p->keys[i];
        if (value) *value = a->trainable ? (lh_tensor *)p->tensors[i].tensor : NULL;
        if (grad) *grad = p->grads ? p->grads[i] : NULL;
        return a->trainable ? LH_OK : LH_ERR_INVALID;
    }
    return LH_ERR_NOT_FOUND;
}

/* The kind's update() of part p's instance from al (bound to a device
 * backend as create_state is); LH_ERR_UNSUPPORTED when the kind has none or
 * declines: the caller recreates the instance. */
static lh_status update_state(lh_adapt *ad, lh_adapter_part *p, const lh_adapter_layer *al,
                              lh_error *err) {
    const lh_adapter_desc *d = p->desc;
    if (d->info.size <= offsetof(lh_adapter_desc, update) || !d->update) return LH_ERR_UNSUPPORTED;
    lh_backend *be = ad->layers.be, *prev = NULL;
    int dev = be && !lh_backend_host_memory(be);
    if (dev) prev = lh_host_api_bind(be);
    char msg[LH_ERROR_MAX] = "";
    lh_status st = d->update(p->state, al, msg, sizeof msg);
    if (dev) lh_host_api_bind(prev);
    if (st == LH_OK || st == LH_ERR_UNSUPPORTED) return st;
    return lh_error_set(err, st, "adapter kind %s, layer %s: %s", d->info.id, al->name,
                        msg[0] ? msg : "update failed");
}

/* Replace state `old` by `now` wherever layer li holds it. */
static void swap_state(lh_adapt *ad, size_t li, const void *old, void *now) {
    lh_layer *l = &ad->layers.v[li];
    for (int k = 0; k < l->n_terms; k++)
        if (l->terms[k].state == old) l->terms[k].state = now;
    lh_adapt_layer *s = &ad->ls[li];
    for (int k = 0; k < s->n_applied; k++)
        if (s->applied[k].state == old) s->applied[k].state = now;
}

lh_status lh_adapter_refresh(lh_adapter *a, lh_error *err) {
    if (!a || !a->model)
        return lh_error_set(err, LH_ERR_INVALID, "adapter refresh: no adapter or no model");
    if (!a->trainable)
        return lh_error_set(err, LH_ERR_INVALID, "adapter %s was not loaded trainable", a->name);
    lh_adapt *ad;
    lh_status st = lh_adapt_get(&ad, a->model, err);
    if (st != LH_OK) return st;
    for (size_t i = 0; i < a->n_parts; i++)
        if (ad->ls[a->parts[i].layer].merged)
            return lh_error_set(err, LH_ERR_INVALID, "adapter %s is merged into layer %s: "
                                "training needs runtime mode", a->name,
                                ad->layers.v[a->parts[i].layer].name);
    for (size_t i = 0; i < a->n_parts; i++) {
        lh_adapter_part *p = &a->parts[i];
        lh_adapter_layer al;
        layer_desc(&al, &ad->layers.v[p->layer], p, p->alpha);
        st = update_state(ad, p, &al, err);
        if (st != LH_ERR_UNSUPPORTED) {
            if (st != LH_OK) return st;
            continue;
        }
        void *now = NULL;
        st = create_state(&now, ad, p, p->desc, &al, err);
        if (st != LH_OK) return st;
        swap_state(ad, p->layer, p->state, now);
        p->desc->destroy(p->state);
        p->state = now;
    }
    return LH_OK;
}
