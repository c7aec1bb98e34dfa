/* lh_model_init: a fresh pixel-space model directory with PyTorch's default
 * initialisation (see model_init.h). The U-Net and text encoder loaders ask
 * a weight source for every tensor with its shape; a source that makes each
 * one at random (from the seed and its name) and keeps it gives the whole
 * model, which is then written out in the loaders' order. */
#define _XOPEN_SOURCE 700
#include "model_init.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/backend.h"
#include "clip.h"
#include "file_atomic.h"
#include "model.h"
#include "rng.h"
#include "tokenizer.h"
#include "unet.h"
#include "weights.h"

/* ---- One tensor ---- */

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* A generator for (seed, name): FNV-1a of the name, mixed with the seed
 * (splitmix64's finaliser). */
static uint64_t tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    uint64_t z = seed ^ (h * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

lh_status lh_model_init_tensor(float *out, const char *name, int ndim, const int64_t *shape,
                               int64_t bias_fan_in, uint64_t seed, lh_error *err) {
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    int embedding = ends_with(name, "token_embedding.weight") ||
                    ends_with(name, "position_embedding.weight");
    int bias = ends_with(name, ".bias");
    int64_t fan_in = bias ? bias_fan_in : (ndim >= 2 && shape[0] > 0 ? numel / shape[0] : 0);
    if (!embedding && (bias || ndim < 2) && fan_in <= 0) {
        /* GroupNorm / LayerNorm: weight 1, bias 0 */
        for (int64_t i = 0; i < numel; i++) out[i] = bias ? 0.0f : 1.0f;
        return LH_OK;
    }
    lh_rng *rng = lh_rng_create(tensor_seed(seed, name), err);
    if (!rng) return err ? err->code : LH_ERR_NOMEM;
    lh_status st = LH_OK;
    if (embedding) {
        st = lh_rng_randn(rng, out, numel, err); /* nn.Embedding: N(0, 1) */
    } else {
        /* kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / (1 + 5)) * sqrt(3 / fan_in)
         * = 1 / sqrt(fan_in); the bias uses the same bound */
        double bound = 1.0 / sqrt((double)fan_in);
        for (int64_t i = 0; i < numel; i++) {
            double u = (double)(lh_rng_u32(rng) >> 8) * (1.0 / 16777216.0); /* [0, 1) */
            out[i] = (float)(bound * (2.0 * u - 1.0));
        }
    }
    lh_rng_destroy(rng);
    return st;
}

/* ---- A weight source that makes what it is asked for ---- */

typedef struct gen_tensor {
    lh_st_tensor t; /* t.name and t.data owned here */
} gen_tensor;

typedef struct gen_source {
    uint64_t seed;
    gen_tensor *v;
    size_t n, cap;
    lh_status st; /* the first failure, with its message in msg */
    char msg[LH_ERROR_MAX];
} gen_source;

static void gen_free(gen_source *g) {
    for (size_t i = 0; i < g->n; i++) {
        free((char *)g->v[i].t.name);
        free((void *)g->v[i].t.data);
    }
    free(g->v);
    g->v = NULL;
    g->n = g->cap = 0;
}

static const gen_tensor *gen_get(const gen_source *g, const char *name) {
    for (size_t i = g->n; i-- > 0;)
        if (!strcmp(g->v[i].t.name, name)) return &g->v[i];
    return NULL;
}

static const lh_st_tensor *gen_make(void *ctx, const char *key, int ndim, const int64_t *shape) {
    gen_source *g = ctx;
    lh_error e = {0};
    if (g->st != LH_OK) return NULL;
    if (ndim < 1 || ndim > LH_MAX_DIMS) {
        g->st = LH_ERR_INTERNAL;
        snprintf(g->msg, sizeof g->msg, "tensor '%s': %d dimensions", key, ndim);
        return NULL;
    }
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || lh_mul_size(numel, (size_t)shape[i], &numel) ||
            numel > ((size_t)1 << 40)) {
            g->st = LH_ERR_OVERFLOW;
            snprintf(g->msg, sizeof g->msg, "tensor '%s' is too large", key);
            return NULL;
        }
    int64_t bias_fan_in = 0;
    if (ends_with(key, ".bias")) {
        /* the bias of the weight loaded just before it: its fan_in, or a norm's 0 */
        char w[512];
        snprintf(w, sizeof w, "%.*s.weight", (int)(strlen(key) - 5), key);
        const gen_tensor *wt = gen_get(g, w);
        if (!wt) {
            g->st = LH_ERR_INTERNAL;
            snprintf(g->msg, sizeof g->msg, "tensor '%s' was asked for before '%s'", key, w);
            return NULL;
        }
        if (wt->t.ndim >= 2) bias_fan_in = wt->t.numel / wt->t.shape[0];
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        gen_tensor *v = realloc(g->v, cap * sizeof *v);
        if (!v) goto nomem;
        g->v = v;
        g->cap = cap;
    }
    gen_tensor *t = &g->v[g->n];
    memset(t, 0, sizeof *t);
    char *name = strdup(key);
    float *data = malloc((numel ? numel : 1) * sizeof(float));
    if (!name || !data) {
        free(name);
        free(data);
        goto nomem;
    }
    lh_status st = lh_model_init_tensor(data, key, ndim, shape, bias_fan_in, g->seed, &e);
    if (st != LH_OK) {
        free(name);
        free(data);
        g->st = st;
        snprintf(g->msg, sizeof g->msg, "%s", e.msg);
        return NULL;
    }
    t->t.name = name;
    t->t.dtype = LH_DTYPE_F32;
    t->t.ndim = ndim;
    for (int i = 0; i < ndim; i++) t->t.shape[i] = shape[i];
    t->t.numel = (int64_t)numel;
    t->t.end = numel * sizeof(float);
    t->t.data = data;
    g->n++;
    return &t->t;
nomem:
    g->st = LH_ERR_NOMEM;
    snprintf(g->msg, sizeof g->msg, "out of memory for tensor '%s'", key);
    return NULL;
}

static const lh_st_tensor *gen_find(void *ctx, const char *key) {
    (void)ctx;
    (void)key;
    return NULL;
}

/* ---- Writing ---- */

/* The tensors of g as `path`, names prefixed with `prefix`, in dtype. */
static lh_status write_tensors(const gen_source *g, const char *prefix, lh_dtype dtype,
                               const char *path, lh_error *err) {
    lh_st_writer *w = NULL;
    uint16_t **half = calloc(g->n ? g->n : 1, sizeof *half);
    if (!half) return lh_error_set(err, LH_ERR_NOMEM, "out of memory writing %s", path);
    lh_status st = lh_st_writer_create(&w, err);
    if (st == LH_OK) st = lh_st_writer_add_meta(w, "format", "pt", err);
    for (size_t i = 0; st == LH_OK && i < g->n; i++) {
        const lh_st_tensor *t = &g->v[i].t;
        char name[600];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        const void *data = t->data;
        if (dtype == LH_DTYPE_F16) {
            half[i] = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(uint16_t));
            if (!half[i]) {
                st = lh_error_set(err, LH_ERR_NOMEM, "out of memory writing %s", path);
                break;
            }
            const float *f = t->data;
            for (int64_t k = 0; k < t->numel; k++) half[i][k] = lh_f32_to_f16(f[k]);
            data = half[i];
        }
        st = lh_st_writer_add(w, name, dtype, t->ndim, t->shape, data, err);
    }
    if (st == LH_OK) st = lh_st_save(w, path, err);
    lh_st_writer_destroy(w);
    for (size_t i = 0; i < g->n; i++) free(half[i]);
    free(half);
    return st;
}

static lh_status read_all(char **out, size_t *len, const char *path, lh_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lh_error_set(err, LH_ERR_NOT_FOUND, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                free(buf);
                fclose(f);
                return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return lh_error_set(err, LH_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return LH_OK;
}

static lh_status copy_file(const char *from, const char *to, lh_error *err) {
    char *buf;
    size_t n = 0;
    lh_status st = read_all(&buf, &n, from, err);
    if (st != LH_OK) return st;
    st = lh_write_file_atomic(to, buf, n, err);
    free(buf);
    return st;
}

/* A JSON file that must hold an object: LH_ERR_FORMAT naming file and line. */
static json_t *load_object(const char *path, lh_error *err) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        lh_error_set(err, errno == ENOENT && je.line < 0 ? LH_ERR_NOT_FOUND : LH_ERR_FORMAT,
                     "%s:%d: %s", path, je.line, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        lh_error_set(err, LH_ERR_FORMAT, "%s: not a JSON object", path);
        return NULL;
    }
    return j;
}

static lh_status write_json(json_t *j, const char *path, lh_error *err) {
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(text);
    char *buf = realloc(text, n + 2);
    if (!buf) {
        free(text);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    buf[n] = '\n';
    lh_status st = lh_write_file_atomic(path, buf, n + 1, err);
    free(buf);
    return st;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

/* ---- The model ---- */

/* The configs, checked as lh_model_open would, before anything is written. */
static lh_status check_configs(lh_unet_config *uc, lh_clip_config *cc, const lh_model_init_opts *o,
                               const char *tok_dir, lh_error *err) {
    lh_status st;
    json_t *j = load_object(o->unet_config, err);
    if (!j) return err ? err->code : LH_ERR_FORMAT;
    const char *cls = json_string_value(json_object_get(j, "_class_name"));
    if (cls && strcmp(cls, "UNet2DConditionModel")) {
        json_decref(j);
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: _class_name \"%s\" (lorahost makes UNet2DConditionModel)",
                            o->unet_config, cls);
    }
    json_decref(j);
    if ((st = lh_unet_config_read(uc, o->unet_config, err)) != LH_OK) return st;
    if (uc->in_channels != 3 || uc->out_channels != 3)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "%s: in_channels %lld, out_channels %lld: model init makes pixel-space "
                            "models (no VAE), which take and give RGB: both must be 3",
                            o->unet_config, (long long)uc->in_channels,
                            (long long)uc->out_channels);
    if (!(j = load_object(o->text_encoder_config, err))) return err ? err->code : LH_ERR_FORMAT;
    json_decref(j);
    if ((st = lh_clip_config_read(cc, o->text_encoder_config, err)) != LH_OK) return st;
    if (cc->hidden_size != uc->cross_attention_dim)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: hidden_size %lld does not match cross_attention_dim %lld of %s",
                            o->text_encoder_config, (long long)cc->hidden_size,
                            (long long)uc->cross_attention_dim, o->unet_config);
    char vocab[4096], merges[4096];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", tok_dir);
    snprintf(merges, sizeof merges, "%s/merges.txt", tok_dir);
    lh_tokenizer *tok = NULL;
    if ((st = lh_tokenizer_open(&tok, vocab, merges, err)) != LH_OK) return st;
    size_t nv = lh_tokenizer_vocab_size(tok);
    lh_tokenizer_close(tok);
    if ((int64_t)nv > cc->vocab_size)
        return lh_error_set(err, LH_ERR_CONFIG,
                            "%s: vocab_size %lld is smaller than the tokenizer's %zu tokens (%s)",
                            o->text_encoder_config, (long long)cc->vocab_size, nv, vocab);
    if (o->dtype != LH_DTYPE_F32 && o->dtype != LH_DTYPE_F16)
        return lh_error_set(err, LH_ERR_INVALID, "model init: dtype must be F32 or F16, not %s",
                            lh_dtype_name(o->dtype));
    return LH_OK;
}

static lh_status write_model(const char *dir, const lh_model_init_opts *o,
                             const lh_unet_config *uc, const lh_clip_config *cc,
                             const char *tok_dir, lh_error *err) {
    char p[4096 + 128], q[4096 + 128];
    static const char *const SUB[] = {"unet", "text_encoder", "tokenizer", "scheduler"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, SUB[i]);
        if (mkdir(p, 0777) != 0)
            return lh_error_set(err, LH_ERR_IO, "%s: cannot create (%s)", p, strerror(errno));
    }
    /* weights */
    char msg[LH_ERROR_MAX] = "";
    lh_backend *be = NULL;
    if (lh_backend_cpu_create(&be, 1, msg, sizeof msg) != LH_OK)
        return lh_error_set(err, LH_ERR_INTERNAL, "model init: %s", msg);
    gen_source g = {.seed = o->seed};
    lh_wsource src = {"model init", gen_find, NULL, &g, 0, gen_make};
    lh_unet *unet = NULL;
    lh_clip *clip = NULL;
    lh_status st = lh_unet_load_src(&unet, be, uc, &src, err);
    lh_unet_free(unet);
    if (st == LH_OK) {
        snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
        st = write_tensors(&g, "", o->dtype, p, err);
    }
    gen_free(&g);
    if (st == LH_OK) st = lh_clip_load_src(&clip, be, cc, &src, err);
    lh_clip_free(clip);
    if (st == LH_OK) {
        snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
        st = write_tensors(&g, "text_model.", o->dtype, p, err);
    }
    gen_free(&g);
    lh_backend_destroy(be);
    if (st != LH_OK && g.st != LH_OK)
        return lh_error_set(err, g.st, "model init: %s", g.msg);
    if (st != LH_OK) return st;
    /* configs and tokenizer */
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    if ((st = copy_file(o->unet_config, p, err)) != LH_OK) return st;
    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    if ((st = copy_file(o->text_encoder_config, p, err)) != LH_OK) return st;
    static const char *const TOK[] = {"vocab.json", "merges.txt", "special_tokens_map.json",
                                      "tokenizer_config.json"};
    for (size_t i = 0; i < 4; i++) {
        struct stat sb;
        snprintf(q, sizeof q, "%s/%s", tok_dir, TOK[i]);
        if (i >= 2 && stat(q, &sb) != 0) continue;
        snprintf(p, sizeof p, "%s/tokenizer/%s", dir, TOK[i]);
        if ((st = copy_file(q, p, err)) != LH_OK) return st;
    }
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    json_t *sched = NULL;
    if (o->scheduler_config) {
        if (!(sched = load_object(o->scheduler_config, err))) return err ? err->code : LH_ERR_FORMAT;
        st = copy_file(o->scheduler_config, p, err);
    } else {
        sched = json_loads(LH_MODEL_INIT_SCHEDULER, 0, NULL);
        st = sched ? lh_write_file_atomic(p, LH_MODEL_INIT_SCHEDULER,
                                          strlen(LH_MODEL_INIT_SCHEDULER), err)
                   : lh_error_set(err, LH_ERR_INTERNAL, "model init: default scheduler JSON");
    }
    const char *scls = json_string_value(json_object_get(sched, "_class_name"));
    if (st == LH_OK && !scls)
        st = lh_error_set(err, LH_ERR_CONFIG, "%s: no \"_class_name\" (e.g. \"DDIMScheduler\")",
                          o->scheduler_config);
    json_t *index = NULL;
    if (st == LH_OK) {
        index = json_pack("{s:s, s:s, s:[s,s], s:[s,s], s:[s,s], s:[s,s], s:n, s:n, s:n, s:b}",
                          "_class_name", "StableDiffusionPipeline", "_lorahost", "model init",
                          "scheduler", "diffusers", scls, "text_encoder", "transformers",
                          "CLIPTextModel", "tokenizer", "transformers", "CLIPTokenizer", "unet",
                          "diffusers", "UNet2DConditionModel", "vae", "safety_checker",
                          "feature_extractor", "requires_safety_checker", 0);
        if (!index) st = lh_error_set(err, LH_ERR_NOMEM, "model init: out of memory");
    }
    json_decref(sched);
    if (st == LH_OK) {
        snprintf(p, sizeof p, "%s/model_index.json", dir);
        st = write_json(index, p, err);
    }
    json_decref(index);
    return st;
}

lh_status lh_model_init(const char *out_dir, const lh_model_init_opts *o, lh_error *err) {
    if (!out_dir || !*out_dir || !o || !o->unet_config || !o->text_encoder_config)
        return lh_error_set(err, LH_ERR_INVALID,
                            "model init: an output directory, a U-Net config and a text "
                            "encoder config are needed");
    if (strlen(out_dir) > 3900)
        return lh_error_set(err, LH_ERR_INVALID, "model init: path too long: %.100s...", out_dir);
    struct stat sb;
    if (stat(out_dir, &sb) == 0)
        return lh_error_set(err, LH_ERR_INVALID, "model init: %s already exists", out_dir);
    const char *tok_dir = o->tokenizer ? o->tokenizer : lh_model_tokenizer_dir();
    lh_unet_config uc;
    lh_clip_config cc;
    lh_status st = check_configs(&uc, &cc, o, tok_dir, err);
    if (st != LH_OK) return st;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_dir, (long)getpid());
    if (mkdir(tmp, 0777) != 0)
        return lh_error_set(err, LH_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
    st = write_model(tmp, o, &uc, &cc, tok_dir, err);
    lh_model_info info;
    if (st == LH_OK && (st = lh_model_detect(&info, tmp, err)) == LH_OK && !info.pixel_space)
        st = lh_error_set(err, LH_ERR_INTERNAL, "model init: %s is not read as pixel-space", tmp);
    if (st == LH_OK && rename(tmp, out_dir) != 0)
        st = lh_error_set(err, LH_ERR_IO, "model init: cannot rename %s to %s (%s)", tmp, out_dir,
                          strerror(errno));
    if (st != LH_OK) nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return st;
}
