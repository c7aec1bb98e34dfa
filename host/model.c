/* Opening a Stable Diffusion model: diffusers directory layout or LDM single
 * file, architecture detection, and loading of its four components. */
#include "model.h"

#include "adapter.h"

#include <dlfcn.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend_load.h"
#include "ldm_keys.h"

/* ---- Small helpers ---- */

const char *lh_model_arch_name(lh_model_arch arch) {
    switch (arch) {
    case LH_MODEL_ARCH_SD1: return "SD 1.x";
    case LH_MODEL_ARCH_SD2: return "SD 2.x";
    case LH_MODEL_ARCH_SDXL: return "SDXL";
    default: return "unknown";
    }
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static lh_status join(char *out, size_t size, const char *dir, const char *rel, lh_error *err) {
    int n = snprintf(out, size, "%s/%s", dir, rel);
    if (n < 0 || (size_t)n >= size)
        return lh_error_set(err, LH_ERR_INVALID, "model path too long: %s/%s", dir, rel);
    return LH_OK;
}

/* A required file of a component: LH_ERR_NOT_FOUND naming both if absent. */
static lh_status need(char *out, size_t size, const char *dir, const char *component,
                      const char *file, lh_error *err) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/%s", component, file);
    lh_status st = join(out, size, dir, rel, err);
    if (st != LH_OK) return st;
    if (!is_file(out))
        return lh_error_set(err, LH_ERR_NOT_FOUND,
                            "model %s: component '%s' is missing (no %s)", dir, component, out);
    return LH_OK;
}

static json_t *load_json(const char *path, lh_error *err) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        lh_error_set(err, LH_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        lh_error_set(err, LH_ERR_FORMAT, "%s: not a JSON object", path);
        return NULL;
    }
    return j;
}

/* A token in a tokenizer config: a string or an AddedToken {"content": ...}. */
static const char *token_text(json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

/* The pad token: tok_dir's special_tokens_map.json, else its
 * tokenizer_config.json, else the architecture's default. */
static void read_pad_token(lh_model_info *info, const char *tok_dir) {
    static const char *const FILES[] = {"special_tokens_map.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 2; i++) {
        char p[LH_MODEL_PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", tok_dir, FILES[i]);
        if (!is_file(p)) continue;
        json_t *j = json_load_file(p, 0, NULL);
        const char *t = j ? token_text(json_object_get(j, "pad_token")) : NULL;
        if (t && strlen(t) < sizeof info->pad_token) {
            snprintf(info->pad_token, sizeof info->pad_token, "%s", t);
            json_decref(j);
            return;
        }
        json_decref(j);
    }
    snprintf(info->pad_token, sizeof info->pad_token, "%s",
             info->arch == LH_MODEL_ARCH_SD2 ? "!" : "<|endoftext|>");
}

/* ---- Detection ---- */

static lh_status detect_unet(lh_model_info *info, json_t *index, const char *unet_cfg,
                             lh_error *err) {
    json_t *u = load_json(unet_cfg, err);
    if (!u) return err ? err->code : LH_ERR_FORMAT;
    lh_status st = LH_OK;
    const char *cls = json_string_value(json_object_get(index, "_class_name"));
    const char *add = json_string_value(json_object_get(u, "addition_embed_type"));
    const char *ucls = json_string_value(json_object_get(u, "_class_name"));
    json_t *in_ch = json_object_get(u, "in_channels");
    json_t *out_ch = json_object_get(u, "out_channels");
    json_t *cad = json_object_get(u, "cross_attention_dim");
    char te2[LH_MODEL_PATH_MAX + 32], vae[LH_MODEL_PATH_MAX + 32];
    snprintf(te2, sizeof te2, "%s/text_encoder_2", info->path);
    snprintf(vae, sizeof vae, "%s/vae", info->path);
    /* Pixel space: no vae/ (model_index "vae" null or absent), RGB in and out. */
    json_t *ivae = json_object_get(index, "vae");
    info->pixel_space = !is_dir(vae) && (!ivae || json_is_null(ivae)) &&
                        json_integer_value(in_ch) == 3 &&
                        (!out_ch || json_integer_value(out_ch) == 3);
    if ((add && !strcmp(add, "text_time")) || json_object_get(index, "text_encoder_2") ||
        is_dir(te2) || (cls && strstr(cls, "XL"))) {
        info->arch = LH_MODEL_ARCH_SDXL;
        st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                          "model %s is SDXL (%s): lorahost generates with SD 1.x and SD 2.x "
                          "models only for now",
                          info->path,
                          add && !strcmp(add, "text_time") ? "unet addition_embed_type "
                                                             "\"text_time\""
                                                           : "a second text encoder");
    } else if (ucls && strcmp(ucls, "UNet2DConditionModel")) {
        st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                          "model %s: unknown architecture: %s has _class_name \"%s\" "
                          "(lorahost runs UNet2DConditionModel)",
                          info->path, unet_cfg, ucls);
    } else if (in_ch && json_integer_value(in_ch) != 4 && !info->pixel_space) {
        st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                          "model %s: unknown architecture: %s: in_channels %lld (inpainting or "
                          "depth models are not supported; SD 1.x/2.x text-to-image has 4)",
                          info->path, unet_cfg, (long long)json_integer_value(in_ch));
    } else if (!json_is_null(json_object_get(u, "class_embed_type")) &&
               json_object_get(u, "class_embed_type")) {
        st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                          "model %s: unknown architecture: %s sets class_embed_type "
                          "(upscaler or unCLIP models are not supported)",
                          info->path, unet_cfg);
    } else if (cad && !json_is_integer(cad)) {
        st = lh_error_set(err, LH_ERR_UNSUPPORTED,
                          "model %s: unknown architecture: %s: cross_attention_dim is not one "
                          "number",
                          info->path, unet_cfg);
    } else {
        info->cross_attention_dim = cad ? (int64_t)json_integer_value(cad) : 1280;
        int linear = json_is_true(json_object_get(u, "use_linear_projection"));
        info->arch = (linear || info->cross_attention_dim == 1024) ? LH_MODEL_ARCH_SD2
                                                                    : LH_MODEL_ARCH_SD1;
    }
    json_decref(u);
    return st;
}

static lh_status detect_scheduler(lh_model_info *info, lh_error *err) {
    json_t *s = load_json(info->scheduler_config, err);
    if (!s) return err ? err->code : LH_ERR_FORMAT;
    const char *cls = json_string_value(json_object_get(s, "_class_name"));
    const char *pt = json_string_value(json_object_get(s, "prediction_type"));
    snprintf(info->scheduler_class, sizeof info->scheduler_class, "%s", cls ? cls : "");
    snprintf(info->prediction_type, sizeof info->prediction_type, "%s", pt ? pt : "epsilon");
    json_decref(s);
    return LH_OK;
}

lh_status lh_model_detect(lh_model_info *info, const char *path, lh_error *err) {
    memset(info, 0, sizeof *info);
    if (!path || !*path) return lh_error_set(err, LH_ERR_INVALID, "no model path given");
    if (is_file(path)) return lh_model_detect_single_file(info, path, NULL, err);
    if (!is_dir(path))
        return lh_error_set(err, LH_ERR_NOT_FOUND, "model %s: no such file or directory", path);
    if (strlen(path) >= sizeof info->path - 64)
        return lh_error_set(err, LH_ERR_INVALID, "model path too long: %s", path);
    snprintf(info->path, sizeof info->path, "%s", path);
    size_t len = strlen(info->path);
    while (len > 1 && info->path[len - 1] == '/') info->path[--len] = 0;
    const char *base = strrchr(info->path, '/');
    snprintf(info->name, sizeof info->name, "%s", base ? base + 1 : info->path);

    char p[LH_MODEL_PATH_MAX + 64];
    lh_status st = join(p, sizeof p, info->path, "model_index.json", err);
    if (st != LH_OK) return st;
    if (!is_file(p))
        return lh_error_set(err, LH_ERR_NOT_FOUND,
                            "model %s: not a diffusers model directory (no model_index.json)",
                            info->path);
    json_t *index = load_json(p, err);
    if (!index) return err ? err->code : LH_ERR_FORMAT;

    char unet_cfg[LH_MODEL_PATH_MAX + 64];
    static const char *const NEED[][2] = {
        {"unet", "config.json"},         {"unet", "diffusion_pytorch_model.safetensors"},
        {"text_encoder", "config.json"}, {"text_encoder", "model.safetensors"},
        {"vae", "config.json"},          {"vae", "diffusion_pytorch_model.safetensors"},
        {"tokenizer", "vocab.json"},     {"tokenizer", "merges.txt"},
        {"scheduler", "scheduler_config.json"},
    };
    /* The SDXL check comes first so that an SDXL directory gets its own message. */
    if ((st = need(unet_cfg, sizeof unet_cfg, info->path, "unet", "config.json", err)) == LH_OK)
        st = detect_unet(info, index, unet_cfg, err);
    json_decref(index);
    for (size_t i = 1; st == LH_OK && i < sizeof NEED / sizeof NEED[0]; i++) {
        if (info->pixel_space && !strcmp(NEED[i][0], "vae")) continue;
        st = need(p, sizeof p, info->path, NEED[i][0], NEED[i][1], err);
        if (st == LH_ERR_NOT_FOUND && !strcmp(NEED[i][0], "vae") && err) {
            char msg[LH_ERROR_MAX];
            snprintf(msg, sizeof msg, "%s", err->msg);
            st = lh_error_set(err, st,
                              "%s; a pixel-space model has no vae/ but its %s must have "
                              "in_channels and out_channels 3",
                              msg, unet_cfg);
        }
    }
    if (st != LH_OK) return st;
    if ((st = join(info->scheduler_config, sizeof info->scheduler_config, info->path,
                   "scheduler/scheduler_config.json", err)) != LH_OK ||
        (st = detect_scheduler(info, err)) != LH_OK)
        return st;
    if ((st = join(info->tokenizer, sizeof info->tokenizer, info->path, "tokenizer", err)))
        return st;
    read_pad_token(info, info->tokenizer);
    return LH_OK;
}

/* ---- Single files ---- */

const char *lh_model_tokenizer_dir(void) {
    static char dir[PATH_MAX];
    if (dir[0]) return dir;
    char p[PATH_MAX + 64];
    Dl_info dl;
    if (dladdr((void *)lh_model_tokenizer_dir, &dl) && dl.dli_fname) {
        char lib[PATH_MAX];
        char *slash = realpath(dl.dli_fname, lib) ? strrchr(lib, '/') : NULL;
        if (slash) {
            *slash = '\0';
            snprintf(p, sizeof p, "%s/%s", lib, LH_TOKENIZER_REL_DIR);
            char vocab[PATH_MAX + 64];
            snprintf(vocab, sizeof vocab, "%s/vocab.json", p);
            if (is_file(vocab) && realpath(p, dir)) return dir;
            dir[0] = '\0';
        }
    }
    snprintf(p, sizeof p, "%s/vocab.json", LH_TOKENIZER_INSTALL_DIR);
    snprintf(dir, sizeof dir, "%s",
             is_file(p) ? LH_TOKENIZER_INSTALL_DIR : LH_TOKENIZER_SOURCE_DIR);
    return dir;
}

/* diffusers' from_single_file schedulers: the scheduler_config.json of
 * stable-diffusion-v1-5 (SD 1.x) and stable-diffusion-2-1 (SD 2.x; its
 * prediction_type is what the file says, see lh_model_detect_single_file). */
static void default_scheduler(lh_model_info *info) {
    snprintf(info->scheduler_class, sizeof info->scheduler_class, "%s",
             info->arch == LH_MODEL_ARCH_SD2 ? "DDIMScheduler" : "PNDMScheduler");
    snprintf(info->scheduler_json, sizeof info->scheduler_json,
             "{\"_class_name\": \"%s\", \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", "
             "\"beta_start\": 0.00085, \"clip_sample\": false, \"num_train_timesteps\": 1000, "
             "\"prediction_type\": \"%s\", \"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
             "\"steps_offset\": 1}",
             info->scheduler_class, info->prediction_type);
}

/* opts->config's component configs over the ones the shapes imply. */
static lh_status read_configs(lh_ldm_info *ldm, const char *dir, lh_error *err) {
    char p[LH_MODEL_PATH_MAX + 64];
    lh_status st = LH_OK;
    if (!is_dir(dir))
        return lh_error_set(err, LH_ERR_NOT_FOUND, "model config %s: not a directory", dir);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    if (is_file(p) && (st = lh_unet_config_read(&ldm->unet, p, err))) return st;
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    if (is_file(p) && (st = lh_vae_config_read(&ldm->vae, p, err))) return st;
    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    if (is_file(p) && (st = lh_clip_config_read(&ldm->clip, p, err))) return st;
    return LH_OK;
}

/* Header and configs of a single file; *f stays open for loading if asked. */
static lh_status detect_file(lh_model_info *info, lh_ldm_info *ldm, lh_st_file **keep,
                             const char *path, const lh_model_opts *opts, lh_error *err) {
    memset(info, 0, sizeof *info);
    if (strlen(path) >= sizeof info->path - 64)
        return lh_error_set(err, LH_ERR_INVALID, "model path too long: %s", path);
    snprintf(info->path, sizeof info->path, "%s", path);
    info->single_file = 1;
    const char *base = strrchr(path, '/');
    snprintf(info->name, sizeof info->name, "%s", base ? base + 1 : path);
    char *dot = strrchr(info->name, '.');
    if (dot && dot != info->name) *dot = '\0';

    lh_st_file *f = NULL;
    lh_status st = lh_st_open(&f, path, err);
    if (st != LH_OK) return st;
    if ((st = lh_ldm_detect(f, ldm, err)) != LH_OK) {
        lh_st_close(f);
        return st;
    }
    static const char *const PART[LH_LDM_PART_COUNT] = {
        "U-Net (model.diffusion_model.*)", "VAE (first_stage_model.*)",
        "text encoder (cond_stage_model.*)"};
    for (int i = 0; i < LH_LDM_PART_COUNT; i++)
        if (!ldm->has[i]) {
            lh_st_close(f);
            return lh_error_set(err, LH_ERR_UNSUPPORTED,
                                "model %s: the file has no %s; lorahost needs a full checkpoint "
                                "(U-Net, VAE and text encoder in one file)",
                                path, PART[i]);
        }
    if (opts && opts->config && (st = read_configs(ldm, opts->config, err)) != LH_OK) {
        lh_st_close(f);
        return st;
    }
    info->arch = ldm->arch == LH_LDM_ARCH_SD2 ? LH_MODEL_ARCH_SD2 : LH_MODEL_ARCH_SD1;
    info->cross_attention_dim = ldm->unet.cross_attention_dim;
    info->prediction_guessed = ldm->prediction == LH_LDM_PRED_UNKNOWN;
    snprintf(info->prediction_type, sizeof info->prediction_type, "%s",
             ldm->prediction == LH_LDM_PRED_V ? "v_prediction" : "epsilon");
    default_scheduler(info);

    const char *tok = opts && opts->tokenizer ? opts->tokenizer : lh_model_tokenizer_dir();
    snprintf(info->tokenizer, sizeof info->tokenizer, "%s", tok);
    static const char *const TOK_FILES[] = {"vocab.json", "merges.txt"};
    for (size_t i = 0; i < 2; i++) {
        char p[LH_MODEL_PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", tok, TOK_FILES[i]);
        if (!is_file(p)) {
            lh_st_close(f);
            return lh_error_set(err, LH_ERR_NOT_FOUND,
                                "model %s: tokenizer %s has no %s (a single-file checkpoint holds "
                                "no tokenizer: --tokenizer DIR names a directory with vocab.json "
                                "and merges.txt)",
                                path, tok, TOK_FILES[i]);
        }
    }
    read_pad_token(info, tok);
    if (keep)
        *keep = f;
    else
        lh_st_close(f);
    return LH_OK;
}

lh_status lh_model_detect_single_file(lh_model_info *info, const char *path,
                                      const lh_model_opts *opts, lh_error *err) {
    lh_ldm_info ldm;
    return detect_file(info, &ldm, NULL, path, opts, err);
}

/* ---- Loading ---- */

/* The tokenizer of m->info (and its pad token). */
static lh_status open_tokenizer(lh_model *m, lh_error *err) {
    char a[LH_MODEL_PATH_MAX + 64], b[LH_MODEL_PATH_MAX + 64];
    const char *dir = m->info.tokenizer;
    snprintf(a, sizeof a, "%s/vocab.json", dir);
    snprintf(b, sizeof b, "%s/merges.txt", dir);
    lh_status st = lh_tokenizer_open(&m->tok, a, b, err);
    if (st != LH_OK) return st;
    m->pad_id = lh_tokenizer_token_id(m->tok, m->info.pad_token);
    if (m->pad_id < 0)
        return lh_error_set(err, LH_ERR_CONFIG, "model %s: tokenizer pad token '%s' is not in %s",
                            m->info.path, m->info.pad_token, a);
    if (!strcmp(m->info.pad_token, "!"))
        /* SD 2.x: transformers makes the pad token "!" special (tokenizer.h) */
        return lh_tokenizer_add_special(m->tok, "!", 0, err);
    return LH_OK;
}

/* After the text encoder: the tokenizer must fit it, it the U-Net. */
static lh_status check_text_encoder(lh_model *m, lh_error *err) {
    const lh_clip_config *cc = lh_clip_get_config(m->clip);
    if ((int64_t)lh_tokenizer_vocab_size(m->tok) > cc->vocab_size)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "model %s: %s/vocab.json has %zu tokens but the text encoder's "
                            "vocab_size is %lld%s",
                            m->info.path, m->info.tokenizer, lh_tokenizer_vocab_size(m->tok),
                            (long long)cc->vocab_size,
                            m->info.single_file ? " (give the model's own tokenizer with "
                                                  "--tokenizer DIR)"
                                                : "");
    if (cc->hidden_size != m->info.cross_attention_dim)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "model %s: text encoder hidden_size %lld does not match the U-Net's "
                            "cross_attention_dim %lld",
                            m->info.path, (long long)cc->hidden_size,
                            (long long)m->info.cross_attention_dim);
    return LH_OK;
}

static lh_status check_vae(lh_model *m, lh_error *err) {
    if (lh_vae_get_config(m->vae)->latent_channels != lh_unet_get_config(m->unet)->in_channels)
        return lh_error_set(err, LH_ERR_SHAPE,
                            "model %s: the VAE has %lld latent channels, the U-Net takes %lld",
                            m->info.path, (long long)lh_vae_get_config(m->vae)->latent_channels,
                            (long long)lh_unet_get_config(m->unet)->in_channels);
    return LH_OK;
}

/* A component that does not load with the configs implied by the shapes
 * (heads or group-norm groups other than SD's): say how to give real ones. */
static lh_status config_hint(lh_status st, const lh_model_opts *opts, lh_error *err) {
    if (st == LH_OK || st == LH_ERR_NOMEM || !err || (opts && opts->config)) return st;
    char msg[LH_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", err->msg);
    return lh_error_set(err, st,
                        "%s (configs implied by the file's shapes and SD defaults; "
                        "--model-config DIR reads a diffusers model directory's)",
                        msg);
}

lh_status lh_model_open_single_file(lh_model **out, lh_backend *be, const char *path,
                                    const lh_model_opts *opts, lh_error *err) {
    *out = NULL;
    lh_model *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory opening model %s", path);
    m->be = be;
    lh_ldm_info ldm;
    lh_st_file *f = NULL;
    lh_status st = detect_file(&m->info, &ldm, &f, path, opts, err);
    if (st == LH_OK) st = open_tokenizer(m, err);
    if (st == LH_OK) st = config_hint(lh_ldm_load_clip(&m->clip, be, f, &ldm, err), opts, err);
    if (st == LH_OK) st = check_text_encoder(m, err);
    if (st == LH_OK) st = config_hint(lh_ldm_load_unet(&m->unet, be, f, &ldm, err), opts, err);
    if (st == LH_OK) st = config_hint(lh_ldm_load_vae(&m->vae, be, f, &ldm, err), opts, err);
    if (st == LH_OK) st = check_vae(m, err);
    lh_st_close(f);
    if (st != LH_OK) {
        lh_model_close(m);
        return st;
    }
    *out = m;
    return LH_OK;
}

lh_status lh_model_open(lh_model **out, lh_backend *be, const char *path, lh_error *err) {
    *out = NULL;
    if (path && is_file(path)) return lh_model_open_single_file(out, be, path, NULL, err);
    lh_model *m = calloc(1, sizeof *m);
    if (!m) return lh_error_set(err, LH_ERR_NOMEM, "out of memory opening model %s", path);
    m->be = be;
    lh_status st = lh_model_detect(&m->info, path, err);
    char a[LH_MODEL_PATH_MAX + 64];
    const char *dir = m->info.path;
    if (st == LH_OK) st = open_tokenizer(m, err);
    if (st == LH_OK) {
        snprintf(a, sizeof a, "%s/text_encoder", dir);
        st = lh_clip_load(&m->clip, be, a, err);
    }
    if (st == LH_OK) st = check_text_encoder(m, err);
    if (st == LH_OK) {
        snprintf(a, sizeof a, "%s/unet", dir);
        st = lh_unet_load(&m->unet, be, a, err);
    }
    if (st == LH_OK && !m->info.pixel_space) {
        snprintf(a, sizeof a, "%s/vae", dir);
        st = lh_vae_load(&m->vae, be, a, err);
        if (st == LH_OK) st = check_vae(m, err);
    }
    if (st == LH_OK && m->info.pixel_space && lh_unet_get_config(m->unet)->out_channels != 3)
        st = lh_error_set(err, LH_ERR_SHAPE, "model %s: pixel-space U-Net has out_channels %lld, not 3",
                          dir, (long long)lh_unet_get_config(m->unet)->out_channels);
    if (st != LH_OK) {
        lh_model_close(m);
        return st;
    }
    *out = m;
    return LH_OK;
}

int64_t lh_model_downscale(const lh_model *m) {
    return m->vae ? lh_vae_downscale(m->vae) : 1;
}

/* "auto", "f32", "f16", "bf16" into *prec; auto is `device` on a device. */
static lh_status parse_dtype(lh_dtype *prec, const lh_model *m, const char *dtype,
                             lh_dtype device, const char *key, lh_error *err) {
    if (!strcmp(dtype, "auto"))
        *prec = lh_backend_host_memory(m->be) ? LH_DTYPE_F32 : device;
    else if (!strcmp(dtype, "f32"))
        *prec = LH_DTYPE_F32;
    else if (!strcmp(dtype, "f16"))
        *prec = LH_DTYPE_F16;
    else if (!strcmp(dtype, "bf16"))
        *prec = LH_DTYPE_BF16;
    else
        return lh_error_set(err, LH_ERR_INVALID, "%s: '%s' is not auto, f32, f16 or bf16", key,
                            dtype);
    return LH_OK;
}

lh_status lh_model_set_weight_storage(lh_model *m, const char *storage, lh_error *err) {
    if (!m || !storage)
        return lh_error_set(err, LH_ERR_INVALID, "model weight_storage: NULL argument");
    int f32 = !strcmp(storage, "f32");
    if (!f32 && strcmp(storage, "auto"))
        return lh_error_set(err, LH_ERR_INVALID, "model.weight_storage: '%s' is not auto or f32",
                            storage);
    lh_status st = lh_unet_keep_f32_weights(m->unet, f32, err);
    if (st == LH_OK && f32 && m->clip) st = lh_clip_keep_f32_weights(m->clip, err);
    return st;
}

lh_status lh_model_set_vae_dtype(lh_model *m, const char *dtype, lh_error *err) {
    if (!m || !dtype) return lh_error_set(err, LH_ERR_INVALID, "model vae_dtype: NULL argument");
    lh_dtype prec = LH_DTYPE_F32;
    lh_status st = parse_dtype(&prec, m, dtype, LH_DTYPE_F16, "model.vae_dtype", err);
    if (st != LH_OK || !m->vae) return st; /* pixel space: no VAE */
    return lh_vae_set_precision(m->vae, prec, err);
}

lh_status lh_model_set_dtype(lh_model *m, const char *dtype, lh_error *err) {
    if (!m || !dtype) return lh_error_set(err, LH_ERR_INVALID, "model dtype: NULL argument");
    lh_dtype prec = LH_DTYPE_F32;
    lh_status st = parse_dtype(&prec, m, dtype, LH_DTYPE_F16, "model.dtype", err);
    return st == LH_OK ? lh_unet_set_precision(m->unet, prec, err) : st;
}

void lh_model_close(lh_model *m) {
    if (!m) return;
    lh_adapt_free(m);
    lh_vae_free(m->vae);
    lh_unet_free(m->unet);
    lh_clip_free(m->clip);
    lh_tokenizer_close(m->tok);
    free(m);
}
