/* `lorahost generate`: txt2img (or img2img with --init-image) from a diffusers
 * model directory or a single-file checkpoint to PNG files carrying A1111-style "parameters" text.
 * Options override the [generate], [model], [plugins] and [backend] keys of
 * --config FILE; `lorahost generate --help` lists them (docs/generate.md).
 * Safety checkers ([plugins] safety, docs/safety.md) see the prompt before
 * anything is loaded and the images before they are written. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "adapter_prompt.h"
#include "backend_load.h"
#include "pipeline.h"
#include "rng.h"
#include "png.h"
#include "safety.h"

#define MAX_OVERRIDES 64
#define MAX_DIRS 16
#define NAME "lorahost generate"
#define EXIT_SAFETY 3 /* a safety checker rejected the prompt or an image */

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost generate --model PATH --prompt TEXT [options]\n"
            "\n"
            "  --model PATH            diffusers model directory or single-file\n"
            "                          checkpoint (.safetensors, SD 1.x/2.x)  [model] path\n"
            "  --tokenizer DIR         single file: vocab.json + merges.txt (default: the\n"
            "                          CLIP vocabulary lorahost ships)\n"
            "  --model-config DIR      single file: a diffusers model directory whose unet/,\n"
            "                          vae/, text_encoder/ config.json describe the file\n"
            "  --prompt TEXT           what to draw (UTF-8)                 [generate] prompt\n"
            "  --negative-prompt TEXT  what to avoid                        [generate] negative_prompt\n"
            "  --steps N               denoising steps, 1..1000 (30)        [generate] steps\n"
            "  --cfg-scale X           guidance scale; <= 1 is off (7.5)    [generate] cfg_scale\n"
            "  --scheduler NAME        plugin id, alias or A1111 name; default: the model's\n"
            "                          own scheduler_config.json class      [plugins] scheduler\n"
            "  --seed N                torch-compatible seed; -1 random     [generate] seed\n"
            "  --width W --height H    multiples of 8 (512; a pixel-space model: of its U-Net's\n"
            "                          factor)                              [generate] width/height\n"
            "  --batch-size B          images from one noise draw (1)       [generate] batch_size\n"
            "  --init-image FILE.png   img2img input (its size is the output size)\n"
            "  --strength S            img2img: 0 keeps, 1 replaces (0.75)  [generate] strength\n"
            "  --init-noise FILE       safetensors tensor 'noise' [B, 4, H/8, W/8] instead of\n"
            "                          drawing it from the seed\n"
            "  --save-latents FILE     write the final latents (tensor 'latents') as safetensors\n"
            "  --clip-skip N           skip the last N text-encoder layers (A1111 'Clip skip' N+1)\n"
            "  --vae-tiling            decode in tiles (large images, bounded memory)\n"
            "  --output FILE.png       (out.png); a batch writes out.png, out-1.png, ...\n"
            "  --device cpu|cuda       compute device (cpu)                 [backend] device\n"
            "  --set model.dtype=f16   U-Net precision: auto (f16 on cuda), f32, f16, bf16\n"
            "  --set model.vae_dtype=f32  VAE precision: auto (f16 on cuda), f32, f16, bf16\n"
            "  --set model.weight_storage=f32  U-Net weights in float32, not its f16/bf16\n"
            "  --threads N             CPU threads, 0 = all                 [backend] threads\n"
            "  --plugin-dir DIR        also load plugins from DIR           [plugins] dirs\n"
            "  --lora PATH[:SCALE]     apply an adapter (repeatable); <lora:NAME:SCALE> in the\n"
            "                          prompt finds NAME[.safetensors] in    [adapters] dirs\n"
            "                          (<lora:NAME:TE:UNET>, te=X, unet=X: per-part scales)\n"
            "  --lora-mode runtime|merged  add adapter outputs on the fly, or fold them into\n"
            "                          the weights                          [adapters] mode\n"
            "  --lora-policy warn|strict  adapter keys matching no layer: skip or fail\n"
            "                                                               [adapters] policy\n"
            "  safety checkers         --set plugins.safety=LIST and [safety_*] sections\n"
            "                          (docs/safety.md); a refusal exits with status 3\n"
            "  --quiet                 no progress output\n"
            "  --timings               print stage timings and peak RSS as one JSON line\n"
            "                          on standard error\n"
            "  --config FILE.ini       settings file; --set SECTION.KEY=VALUE overrides a key,\n"
            "                          --set KEY=VALUE sets a scheduler key (use_karras_sigmas=true)\n");
}

/* ---- Option values ---- */

static int parse_i64(const char *opt, const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, NAME ": %s: expected an integer, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_f64(const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, NAME ": %s: expected a number, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* out.png, out-1.png, out-2.png, ... */
static void batch_path(char *buf, size_t size, const char *base, int64_t i) {
    if (i == 0) {
        snprintf(buf, size, "%s", base);
        return;
    }
    const char *dot = strrchr(base, '.'), *slash = strrchr(base, '/');
    if (!dot || (slash && dot < slash)) dot = base + strlen(base);
    snprintf(buf, size, "%.*s-%lld%s", (int)(dot - base), base, (long long)i, dot);
}

typedef struct progress {
    int tty, quiet;
    struct timespec t0;
} progress;

static void on_step(void *user, int32_t i, int32_t n) {
    progress *pr = user;
    if (pr->quiet) return;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double el = (double)(t.tv_sec - pr->t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - pr->t0.tv_nsec);
    if (pr->tty) {
        fprintf(stderr, "\r" NAME ": step %d/%d  %.1fs%s", (int)i, (int)n, el, i == n ? "\n" : "");
    } else if (i < n) {
        fprintf(stderr, NAME ": step %d/%d (%.1fs)\n", (int)i + 1, (int)n, el);
    }
    fflush(stderr);
}

static double mono_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* --timings: one JSON line on stderr (docs/generate.md, "Timings"). */
static void print_timings(const lh_gen_result *r, double load_s, double total_s, int img2img) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* ru_maxrss: KiB on Linux */
    fprintf(stderr, "{\"load_s\": %.4f, \"text_encoder_s\": %.4f, \"unet_steps_s\": [", load_s,
            r->text_encoder_s);
    for (int32_t i = 0; r->step_s && i < r->steps_run; i++)
        fprintf(stderr, "%s%.4f", i ? ", " : "", r->step_s[i]);
    fprintf(stderr, "], ");
    if (img2img) fprintf(stderr, "\"vae_encode_s\": %.4f, ", r->vae_encode_s);
    fprintf(stderr, "\"vae_decode_s\": %.4f, \"total_s\": %.4f, \"peak_rss_mb\": %.1f}\n",
            r->vae_decode_s, total_s, (double)ru.ru_maxrss / 1024.0);
}

static int read_noise(const char *path, float **out, const lh_gen_params *p, const lh_model *m) {
    lh_st_file *f;
    lh_error err = {0};
    if (lh_st_open(&f, path, &err) != LH_OK) {
        fprintf(stderr, NAME ": --init-noise: %s\n", err.msg);
        return 1;
    }
    const lh_st_tensor *t = lh_st_find(f, "noise");
    int64_t ds = lh_model_downscale(m);
    int64_t want[4] = {p->batch_size, lh_unet_get_config(m->unet)->in_channels, p->height / ds,
                       p->width / ds};
    int rc = 0;
    if (!t) {
        fprintf(stderr, NAME ": --init-noise %s: no tensor 'noise'\n", path);
        rc = 1;
    } else if (t->ndim != 4 || t->shape[0] != want[0] || t->shape[1] != want[1] ||
               t->shape[2] != want[2] || t->shape[3] != want[3]) {
        char got[128] = "", *g = got;
        for (int i = 0; i < t->ndim && i < 8; i++)
            g += snprintf(g, (size_t)(got + sizeof got - g), "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        fprintf(stderr,
                NAME ": --init-noise %s: tensor 'noise' has shape [%s], expected [%lld, %lld, "
                "%lld, %lld] (batch, %lld, height / %lld, width / %lld)\n",
                path, got, (long long)want[0], (long long)want[1], (long long)want[2],
                (long long)want[3], (long long)want[1], (long long)ds, (long long)ds);
        rc = 1;
    } else {
        *out = malloc(sizeof(float) * (size_t)t->numel);
        if (!*out || lh_st_read_f32(*out, (size_t)t->numel, f, "noise", &err) != LH_OK) {
            fprintf(stderr, NAME ": --init-noise: %s\n", *out ? err.msg : "out of memory");
            rc = 1;
        }
    }
    lh_st_close(f);
    return rc;
}

static int save_latents(const char *path, const lh_gen_result *r, const char *params) {
    lh_st_writer *w;
    lh_error err = {0};
    int64_t shape[4] = {r->batch, r->channels, r->latent_h, r->latent_w};
    lh_status st = lh_st_writer_create(&w, &err);
    if (st == LH_OK) st = lh_st_writer_add(w, "latents", LH_DTYPE_F32, 4, shape, r->latents, &err);
    if (st == LH_OK && params) st = lh_st_writer_add_meta(w, "parameters", params, &err);
    if (st == LH_OK) st = lh_st_save(w, path, &err);
    lh_st_writer_destroy(w);
    if (st != LH_OK) fprintf(stderr, NAME ": --save-latents: %s\n", err.msg);
    return st == LH_OK ? 0 : 1;
}

/* Whether the user chose a prediction_type (--set [scheduler.]prediction_type=...). */
static int prediction_given(const lh_gen_params *p) {
    for (size_t i = 0; i < p->n_overrides; i++)
        if (!strncmp(p->overrides[i], "prediction_type=", 16)) return 1;
    const char *section, *key;
    for (size_t i = 0; p->settings && lh_settings_open_at(p->settings, i, &section, &key); i++)
        if (!strcmp(section, "scheduler") && !strcmp(key, "prediction_type")) return 1;
    return 0;
}

#define MAX_LORAS 16

typedef struct opts {
    const char *model, *init_image, *init_noise, *save_latents, *output, *device, *dtype, *vae_dtype,
        *weight_storage;
    const char *loras[MAX_LORAS], *lora_mode, *lora_policy;
    size_t n_loras;
    const char *const *adapter_dirs;
    size_t n_adapter_dirs;
    const char *tokenizer, *model_config;
    const char *dirs[MAX_DIRS];
    size_t n_dirs;
    int64_t threads;
    int quiet, size_given, timings;
} opts;

/* ---- Adapters: --lora and <lora:NAME:SCALE> ---- */

typedef struct loaded {
    lh_adapter *a[2 * MAX_LORAS];
    size_t n;
    char *clean_prompt; /* the prompt without its tags */
} loaded;

static void print_report(const lh_adapter *a) {
    const lh_adapter_report *r = lh_adapter_get_report(a);
    fprintf(stderr, NAME ": adapter %s (%s; alpha: %s): %d U-Net + %d text-encoder layers (",
            lh_adapter_name(a), r->format, r->alpha_source, (int)r->layers_unet,
            (int)r->layers_te);
    for (int i = 0; i < r->n_kinds; i++)
        fprintf(stderr, "%s%s/%s %d", i ? ", " : "", r->kinds[i].kind, r->kinds[i].form,
                (int)r->kinds[i].layers);
    fprintf(stderr, "), %zu of %zu tensors used, %zu unmatched\n", r->n_used, r->n_keys,
            r->n_unmatched);
}

static int load_adapters(loaded *L, lh_model *m, lh_registry *reg, lh_gen_params *p,
                         const opts *o) {
    lh_error err = {0};
    int mode = !strcmp(o->lora_mode, "merged") ? 1 : !strcmp(o->lora_mode, "runtime") ? 0 : -1;
    int policy = !strcmp(o->lora_policy, "strict") ? 1 : !strcmp(o->lora_policy, "warn") ? 0 : -1;
    if (mode < 0 || policy < 0) {
        fprintf(stderr, NAME ": %s '%s': expected %s\n", mode < 0 ? "--lora-mode" : "--lora-policy",
                mode < 0 ? o->lora_mode : o->lora_policy,
                mode < 0 ? "runtime or merged" : "warn or strict");
        return 2;
    }
    lh_adapter_ref *tags = NULL, refs[2 * MAX_LORAS];
    size_t n_tags = 0, n = 0;
    if (lh_prompt_adapters(&L->clean_prompt, &tags, &n_tags, p->prompt, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 2;
    }
    int rc = 2;
    for (size_t i = 0; i < o->n_loras; i++)
        if (lh_adapter_ref_parse(&refs[n++], o->loras[i], &err) != LH_OK) goto bad;
    for (size_t i = 0; i < n_tags; i++) {
        if (n == 2 * MAX_LORAS) {
            fprintf(stderr, NAME ": at most %d adapters in all\n", 2 * MAX_LORAS);
            goto out;
        }
        refs[n++] = tags[i];
    }
    rc = 1;
    lh_adapter_weights w[2 * MAX_LORAS];
    lh_adapter_load_opts lo = {.policy = policy ? LH_ADAPTER_STRICT : LH_ADAPTER_WARN};
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        if (lh_adapter_resolve(path, sizeof path, refs[i].name, o->adapter_dirs,
                               o->n_adapter_dirs, &err) != LH_OK ||
            lh_adapter_load(&L->a[L->n], m, reg, path, &lo, &err) != LH_OK)
            goto bad;
        if (!o->quiet) print_report(L->a[L->n]);
        lh_adapter_weights_init(&w[L->n], 1.0);
        w[L->n].text_encoder = refs[i].te;
        w[L->n++].unet = refs[i].unet;
    }
    if (n && lh_adapter_set_ex(m, L->a, w, L->n, mode ? LH_ADAPTER_MERGED : LH_ADAPTER_RUNTIME,
                               &err) != LH_OK)
        goto bad;
    rc = 0;
    goto out;
bad:
    fprintf(stderr, NAME ": %s\n", err.msg);
out:
    free(tags);
    return rc;
}

static void unload_adapters(loaded *L) {
    for (size_t i = 0; i < L->n; i++) lh_adapter_unload(L->a[i]);
    free(L->clean_prompt);
}

/* ---- The command ---- */


static int settings_defaults(lh_gen_params *p, opts *o, const lh_settings *s) {
    lh_error err = {0};
    int64_t steps, seed;
    const lh_setting *sched;
    const char *const *dirs;
    size_t n_dirs;
    if (lh_settings_get_string(&p->prompt, s, "generate.prompt", &err) != LH_OK ||
        lh_settings_get_string(&p->negative_prompt, s, "generate.negative_prompt", &err) ||
        lh_settings_get_int(&steps, s, "generate.steps", &err) ||
        lh_settings_get_double(&p->cfg_scale, s, "generate.cfg_scale", &err) ||
        lh_settings_get_int(&p->width, s, "generate.width", &err) ||
        lh_settings_get_int(&p->height, s, "generate.height", &err) ||
        lh_settings_get_int(&seed, s, "generate.seed", &err) ||
        lh_settings_get_int(&p->batch_size, s, "generate.batch_size", &err) ||
        lh_settings_get_double(&p->strength, s, "generate.strength", &err) ||
        lh_settings_get_string(&o->output, s, "generate.output", &err) ||
        lh_settings_get_string(&o->model, s, "model.path", &err) ||
        lh_settings_get_string(&o->dtype, s, "model.dtype", &err) ||
        lh_settings_get_string(&o->vae_dtype, s, "model.vae_dtype", &err) ||
        lh_settings_get_string(&o->weight_storage, s, "model.weight_storage", &err) ||
        lh_settings_get_string(&o->device, s, "backend.device", &err) ||
        lh_settings_get_int(&o->threads, s, "backend.threads", &err) ||
        lh_settings_get(&sched, s, "plugins.scheduler", &err) ||
        lh_settings_get_list(&dirs, &n_dirs, s, "plugins.dirs", &err) ||
        lh_settings_get_list(&o->adapter_dirs, &o->n_adapter_dirs, s, "adapters.dirs", &err) ||
        lh_settings_get_string(&o->lora_mode, s, "adapters.mode", &err) ||
        lh_settings_get_string(&o->lora_policy, s, "adapters.policy", &err)) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    p->steps = (int32_t)steps;
    p->seed = (uint64_t)seed;
    if (seed < 0) p->seed = UINT64_MAX; /* marker: pick one */
    /* the schema's default scheduler stands aside for the model's own */
    if (sched->origin != LH_ORIGIN_DEFAULT) p->scheduler = sched->text;
    for (size_t i = 0; i < n_dirs && o->n_dirs < MAX_DIRS; i++) o->dirs[o->n_dirs++] = dirs[i];
    p->settings = s;
    return 0;
}

static int parse_args(lh_gen_params *p, opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n;
        int takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            takes = 0;
        } else if (!strcmp(a, "--timings")) {
            o->timings = 1;
            takes = 0;
        } else if (!strcmp(a, "--vae-tiling")) {
            p->vae_tiling = 1;
            takes = 0;
        } else if (!v) {
            fprintf(stderr, NAME ": unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "--tokenizer")) {
            o->tokenizer = v;
        } else if (!strcmp(a, "--model-config")) {
            o->model_config = v;
        } else if (!strcmp(a, "--prompt")) {
            p->prompt = v;
        } else if (!strcmp(a, "--negative-prompt")) {
            p->negative_prompt = v;
        } else if (!strcmp(a, "--steps")) {
            if (parse_i64(a, v, &n)) return 2;
            if (n < 1 || n > LH_PIPELINE_MAX_STEPS) {
                fprintf(stderr, NAME ": steps must be in 1..%d, got %lld\n",
                        LH_PIPELINE_MAX_STEPS, (long long)n);
                return 1;
            }
            p->steps = (int32_t)n;
        } else if (!strcmp(a, "--cfg-scale")) {
            if (parse_f64(a, v, &p->cfg_scale)) return 2;
        } else if (!strcmp(a, "--scheduler") || !strcmp(a, "--sampler")) {
            p->scheduler = v;
        } else if (!strcmp(a, "--seed")) {
            if (parse_i64(a, v, &n)) return 2;
            p->seed = n < 0 ? UINT64_MAX : (uint64_t)n;
        } else if (!strcmp(a, "--width")) {
            if (parse_i64(a, v, &p->width)) return 2;
            o->size_given = 1;
        } else if (!strcmp(a, "--height")) {
            if (parse_i64(a, v, &p->height)) return 2;
            o->size_given = 1;
        } else if (!strcmp(a, "--batch-size")) {
            if (parse_i64(a, v, &p->batch_size)) return 2;
        } else if (!strcmp(a, "--strength")) {
            if (parse_f64(a, v, &p->strength)) return 2;
        } else if (!strcmp(a, "--clip-skip")) {
            if (parse_i64(a, v, &n)) return 2;
            if (n < 0 || n > 1000) {
                fprintf(stderr, NAME ": --clip-skip must be in 0..1000, got %lld\n", (long long)n);
                return 1;
            }
            p->clip_skip = (int)n;
        } else if (!strcmp(a, "--threads")) {
            if (parse_i64(a, v, &o->threads)) return 2;
        } else if (!strcmp(a, "--init-image")) {
            o->init_image = v;
        } else if (!strcmp(a, "--init-noise")) {
            o->init_noise = v;
        } else if (!strcmp(a, "--save-latents")) {
            o->save_latents = v;
        } else if (!strcmp(a, "--output") || !strcmp(a, "-o")) {
            o->output = v;
        } else if (!strcmp(a, "--device")) {
            o->device = v;
        } else if (!strcmp(a, "--lora")) {
            if (o->n_loras == MAX_LORAS) {
                fprintf(stderr, NAME ": at most %d --lora\n", MAX_LORAS);
                return 2;
            }
            o->loras[o->n_loras++] = v;
        } else if (!strcmp(a, "--lora-mode")) {
            o->lora_mode = v;
        } else if (!strcmp(a, "--lora-policy")) {
            o->lora_policy = v;
        } else if (!strcmp(a, "--plugin-dir")) {
            if (o->n_dirs >= MAX_DIRS) {
                fprintf(stderr, NAME ": at most %d --plugin-dir\n", MAX_DIRS);
                return 2;
            }
            o->dirs[o->n_dirs++] = v;
        } else {
            fprintf(stderr, NAME ": unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        i += takes;
    }
    return 0;
}

static int generate(lh_settings *settings, int argc, char **argv, const char **overrides,
                    size_t n_overrides) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    opts o = {0};
    if (settings_defaults(&p, &o, settings)) return 1;
    p.overrides = overrides;
    p.n_overrides = n_overrides;
    int rc = parse_args(&p, &o, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.model || !*o.model) {
        fprintf(stderr, NAME ": no model: give --model PATH (or [model] path in --config)\n");
        return 2;
    }
    if (strcmp(o.device, "cpu") && strncmp(o.device, "cuda", 4)) {
        fprintf(stderr, NAME ": --device: unknown device '%s' (cpu, cuda or cuda:N)\n", o.device);
        return 2;
    }
    if (o.threads < 0 || o.threads > 1024) {
        fprintf(stderr, NAME ": --threads must be in 0..1024, got %lld\n", (long long)o.threads);
        return 1;
    }
    if (p.seed == UINT64_MAX) p.seed = lh_rng_random_seed();

    lh_error err = {0};
    uint8_t *image = NULL;
    float *noise = NULL;
    lh_backend *be = NULL;
    lh_registry *reg = NULL;
    lh_model *m = NULL;
    lh_gen_result r = {0};
    loaded ad = {0};
    char *params = NULL;
    lh_safety_chain *safety = NULL;
    lh_safety_report prompt_rep, *image_rep = NULL;
    rc = 1;
    if (o.init_image) {
        int64_t w, h;
        if (lh_png_read(o.init_image, &image, &w, &h, &err) != LH_OK) {
            fprintf(stderr, NAME ": --init-image: %s\n", err.msg);
            goto done;
        }
        if (o.size_given && (w != p.width || h != p.height)) {
            fprintf(stderr,
                    NAME ": --init-image %s is %lldx%lld but --width/--height ask for %lldx%lld "
                    "(images are not resized; leave out --width/--height to use the image's "
                    "size)\n",
                    o.init_image, (long long)w, (long long)h, (long long)p.width,
                    (long long)p.height);
            goto done;
        }
        p.width = w;
        p.height = h;
        p.init_image = image;
    }
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, o.dirs, o.n_dirs, 1, 1, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    /* safety checkers: created (or start-up fails naming the checker and its
     * file) and asked about the prompt before anything is loaded or computed */
    if (lh_safety_chain_create(&safety, reg, settings, &err) != LH_OK ||
        lh_safety_check_prompt(safety, p.prompt, &prompt_rep, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    if (prompt_rep.action == LH_SAFETY_REJECT) {
        const lh_safety_entry *e = &prompt_rep.entries[prompt_rep.decider];
        fprintf(stderr, NAME ": prompt refused by safety checker '%s': %s\n", e->checker,
                e->result.reason[0] ? e->result.reason : "(no reason given)");
        rc = EXIT_SAFETY;
        goto done;
    }
    char msg[LH_ERROR_MAX] = "";
    if (lh_backend_create(&be, o.device, (int)o.threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, NAME ": --device %s: %s\n", o.device, msg);
        goto done;
    }
    double t_load = mono_s();
    struct stat sb;
    lh_model_opts mo = {o.tokenizer, o.model_config};
    if (stat(o.model, &sb) == 0 && S_ISREG(sb.st_mode)) {
        if (lh_model_open_single_file(&m, be, o.model, &mo, &err) != LH_OK) {
            fprintf(stderr, NAME ": %s\n", err.msg);
            goto done;
        }
        if (m->info.prediction_guessed && !o.quiet && !prediction_given(&p))
            fprintf(stderr,
                    NAME ": %s: an SD 2.x checkpoint whose metadata does not say what it "
                    "predicts: assuming epsilon (512-base); a 768-v model needs --set "
                    "scheduler.prediction_type=v_prediction\n",
                    m->info.name);
    } else if (o.tokenizer || o.model_config) {
        fprintf(stderr, NAME ": %s is for single-file checkpoints; %s is not a file\n",
                o.tokenizer ? "--tokenizer" : "--model-config", o.model);
        rc = 2;
        goto done;
    } else if (lh_model_open(&m, be, o.model, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    if (lh_model_set_weight_storage(m, o.weight_storage, &err) != LH_OK ||
        lh_model_set_dtype(m, o.dtype, &err) != LH_OK ||
        lh_model_set_vae_dtype(m, o.vae_dtype, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    t_load = mono_s() - t_load;
    if (lh_pipeline_check(m, &p, image != NULL, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    if (o.init_noise && read_noise(o.init_noise, &noise, &p, m)) goto done;
    p.init_noise = noise;
    const char *prompt = p.prompt;
    rc = load_adapters(&ad, m, reg, &p, &o);
    if (rc) goto done;
    rc = 1;
    p.prompt = ad.clean_prompt;
    progress pr = {isatty(STDERR_FILENO), o.quiet, {0, 0}};
    clock_gettime(CLOCK_MONOTONIC, &pr.t0);
    p.progress = on_step;
    p.progress_user = &pr;
    if (!o.quiet)
        fprintf(stderr, NAME ": %s model %s, %lldx%lld, seed %llu\n",
                lh_model_arch_name(m->info.arch), m->info.name, (long long)p.width,
                (long long)p.height, (unsigned long long)p.seed);
    double t_gen = mono_s();
    lh_status st = image ? lh_pipeline_img2img(m, reg, &p, &r, &err)
                         : lh_pipeline_txt2img(m, reg, &p, &r, &err);
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    p.prompt = prompt; /* A1111 keeps the tags in the parameters text */
    if (o.timings) print_timings(&r, t_load, mono_s() - t_gen, image != NULL);
    const char *sampler = p.scheduler && *p.scheduler ? p.scheduler
                          : m->info.scheduler_class[0] ? m->info.scheduler_class
                                                       : r.scheduler_id;
    params = lh_pipeline_parameters_text(&p, sampler, m->info.name, image != NULL);
    if (!params) {
        fprintf(stderr, NAME ": out of memory\n");
        goto done;
    }
    /* the images' checks, their actions applied in place before anything is written */
    size_t n_checkers = lh_safety_chain_count(safety);
    int any_flagged = 0, any_rejected = 0;
    if (n_checkers) {
        image_rep = calloc((size_t)r.batch, sizeof *image_rep);
        if (!image_rep) {
            fprintf(stderr, NAME ": out of memory\n");
            goto done;
        }
        if (lh_safety_check_images(safety, r.images, r.batch, r.width, r.height, p.prompt,
                                   &prompt_rep, image_rep, &err) != LH_OK) {
            fprintf(stderr, NAME ": %s; no image written\n", err.msg);
            goto done;
        }
        for (int64_t i = 0; i < r.batch; i++) any_flagged |= image_rep[i].action != LH_SAFETY_PASS;
    }
    if (o.save_latents && any_flagged)
        fprintf(stderr, NAME ": --save-latents %s not written: a safety checker flagged the "
                        "images\n", o.save_latents);
    else if (o.save_latents && save_latents(o.save_latents, &r, params))
        goto done;
    size_t plen = strlen(o.output) + 32;
    char *path = malloc(plen);
    if (!path) goto done;
    int64_t img_bytes = r.width * r.height * 3;
    for (int64_t i = 0; i < r.batch; i++) {
        batch_path(path, plen, o.output, i);
        char line[1024] = "";
        char *json = NULL;
        if (n_checkers) {
            lh_safety_report_line(line, sizeof line, &image_rep[i]);
            if (image_rep[i].action == LH_SAFETY_REJECT) {
                fprintf(stderr, NAME ": safety %s: rejected, not written: %s\n", path, line);
                any_rejected = 1;
                continue;
            }
            if (!(json = lh_safety_report_json(&image_rep[i]))) {
                fprintf(stderr, NAME ": out of memory\n");
                free(path);
                goto done;
            }
        }
        lh_png_text texts[2] = {{"parameters", params}, {"lorahost_safety", json}};
        if (lh_png_write_texts(path, r.images + i * img_bytes, r.width, r.height, texts,
                               json ? 2 : 1, &err) != LH_OK) {
            fprintf(stderr, NAME ": %s\n", err.msg);
            free(json);
            free(path);
            goto done;
        }
        free(json);
        printf("%s\n", path);
        if (n_checkers) fprintf(stderr, NAME ": safety %s: %s\n", path, line);
    }
    free(path);
    rc = any_rejected ? EXIT_SAFETY : 0;
done:
    free(image_rep);
    lh_safety_chain_destroy(safety);
    free(params);
    lh_gen_result_free(&r);
    unload_adapters(&ad);
    lh_model_close(m);
    lh_registry_destroy(reg);
    if (be) lh_backend_destroy(be);
    free(image);
    free(noise);
    return rc;
}

int lh_cmd_generate(int argc, char **argv) {
    /* `--set KEY=VALUE` without a section is a scheduler key (as for
     * `lorahost schedulers`); the rest goes to the settings. */
    const char *overrides[MAX_OVERRIDES];
    size_t n_overrides = lh_take_scheduler_sets(&argc, argv, overrides, MAX_OVERRIDES);
    lh_error err = {0};
    lh_settings *settings = NULL;
    if (lh_settings_create(&settings, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    lh_status st = lh_settings_apply_args(settings, &argc, argv, &err);
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        lh_settings_destroy(settings);
        return st == LH_ERR_INVALID ? 2 : 1;
    }
    int rc = generate(settings, argc, argv, overrides, n_overrides);
    lh_settings_destroy(settings);
    return rc;
}
