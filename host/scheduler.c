/* Scheduler resolution and configuration: user-facing names (plugin ids and
 * aliases, diffusers class names, A1111 sampler names) to a plugin instance
 * whose config layers scheduler_config.json, [scheduler] settings and
 * per-call overrides, in that order. */
#include "lorahost/scheduler.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "log.h"
#include "lorahost/lorahost.h"
#include "plugin_config.h"

struct lh_scheduler {
    lh_instance *inst;
    const lh_scheduler_desc *desc;
    char *name;
};

/* ---- Names ---- */

/* A1111's sampler menu (and ComfyUI's), after diffusers' scheduler overview. */
static const lh_sampler_name SAMPLER_NAMES[] = {
    {"Euler", "euler", ""},
    {"Euler a", "euler_ancestral", ""},
    {"Euler Karras", "euler", "use_karras_sigmas=true"},
    {"LMS", "lms", ""},
    {"LMS Karras", "lms", "use_karras_sigmas=true"},
    {"Heun", "heun", ""},
    {"Heun Karras", "heun", "use_karras_sigmas=true"},
    {"DPM2", "dpm2", ""},
    {"DPM2 Karras", "dpm2", "use_karras_sigmas=true"},
    {"DPM2 a", "dpm2_ancestral", ""},
    {"DPM2 a Karras", "dpm2_ancestral", "use_karras_sigmas=true"},
    {"DPM++ 2M", "dpmsolver_multistep", ""},
    {"DPM++ 2M Karras", "dpmsolver_multistep", "use_karras_sigmas=true"},
    {"DPM++ 2M SDE", "dpmsolver_multistep", "algorithm_type=sde-dpmsolver++"},
    {"DPM++ 2M SDE Karras", "dpmsolver_multistep",
     "algorithm_type=sde-dpmsolver++;use_karras_sigmas=true"},
    {"DPM++ 2M Exponential", "dpmsolver_multistep", "use_exponential_sigmas=true"},
    {"DDIM", "ddim", ""},
    {"DDPM", "ddpm", ""},
    {"PLMS", "pndm", ""},
    {"UniPC", "unipc", ""},
    {"DEIS", "deis", ""},
    {"LCM", "lcm", ""},
    /* ComfyUI sampler names */
    {"euler_ancestral", "euler_ancestral", ""},
    {"dpmpp_2m", "dpmsolver_multistep", ""},
    {"dpmpp_2m_sde", "dpmsolver_multistep", "algorithm_type=sde-dpmsolver++"},
    {"uni_pc", "unipc", ""},
    {"dpm_2", "dpm2", ""},
    {"dpm_2_ancestral", "dpm2_ancestral", ""},
};
#define N_SAMPLER_NAMES (sizeof SAMPLER_NAMES / sizeof SAMPLER_NAMES[0])

static const struct {
    const char *class_name, *plugin;
} CLASSES[] = {
    {"DDIMScheduler", "ddim"},
    {"DDPMScheduler", "ddpm"},
    {"PNDMScheduler", "pndm"},
    {"LMSDiscreteScheduler", "lms"},
    {"EulerDiscreteScheduler", "euler"},
    {"EulerAncestralDiscreteScheduler", "euler_ancestral"},
    {"HeunDiscreteScheduler", "heun"},
    {"KDPM2DiscreteScheduler", "dpm2"},
    {"KDPM2AncestralDiscreteScheduler", "dpm2_ancestral"},
    {"DPMSolverMultistepScheduler", "dpmsolver_multistep"},
    {"UniPCMultistepScheduler", "unipc"},
    {"DEISMultistepScheduler", "deis"},
    {"LCMScheduler", "lcm"},
};

const lh_sampler_name *lh_sampler_name_at(size_t index) {
    return index < N_SAMPLER_NAMES ? &SAMPLER_NAMES[index] : NULL;
}

const char *lh_scheduler_for_class(const char *class_name) {
    for (size_t i = 0; class_name && i < sizeof CLASSES / sizeof CLASSES[0]; i++)
        if (!strcmp(CLASSES[i].class_name, class_name)) return CLASSES[i].plugin;
    return NULL;
}

/* ---- Config layers ---- */

static int plugin_lists_key(const lh_scheduler_desc *d, const char *key) {
    for (const char *const *k = d->config_keys; k && *k; k++)
        if (!strcmp(*k, key)) return 1;
    return 0;
}

static char *read_text(const char *path, lh_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        lh_error_set(err, LH_ERR_IO, "%s: cannot open: %m", path);
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) {
                lh_error_set(err, LH_ERR_FORMAT, "%s: larger than 64 MiB", path);
                break;
            }
            char *p = realloc(buf, cap);
            if (!p) {
                lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = p;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096) {
            if (ferror(f)) {
                lh_error_set(err, LH_ERR_IO, "%s: read error", path);
                break;
            }
            fclose(f);
            buf[len] = '\0';
            return buf;
        }
    }
    fclose(f);
    free(buf);
    return NULL;
}

/* The `_class_name` of a scheduler_config.json, or NULL (caller frees). */
static char *json_class_name(const char *text) {
    json_t *root = json_loads(text, 0, NULL);
    const char *c = json_string_value(json_object_get(root, "_class_name"));
    char *out = c ? strdup(c) : NULL;
    json_decref(root);
    return out;
}

/* Add the members of the JSON text that the plugin lists. */
static lh_status add_json_layer(lh_config *cfg, const lh_scheduler_desc *d, const char *text,
                                const char *origin, lh_error *err) {
    lh_config *all = lh_config_create(d->info.id, err);
    if (!all) return LH_ERR_NOMEM;
    lh_status st = lh_config_set_json(all, text, origin, err);
    for (size_t i = 0; st == LH_OK && i < lh_config_count(all); i++) {
        const char *key = lh_config_key_at(all, i);
        if (!plugin_lists_key(d, key)) {
            if (key[0] != '_')
                lh_log(LH_LOG_DEBUG, "scheduler", "%s: '%s' is not a %s key; ignored", origin, key,
                       d->info.id);
            continue;
        }
        st = lh_config_set(cfg, key, lh_config_string(all, key), origin, err);
    }
    lh_config_destroy(all);
    return st;
}

static lh_status add_override(lh_config *cfg, const char *kv, lh_error *err) {
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return lh_error_set(err, LH_ERR_CONFIG, "scheduler override '%s': expected key=value", kv);
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
    return lh_config_set(cfg, key, eq + 1, "--set", err);
}

/* ---- Opening ---- */

lh_status lh_scheduler_open(lh_scheduler **out, lh_registry *reg, const lh_scheduler_opts *o,
                            lh_error *err) {
    *out = NULL;
    char *json = NULL, *class_name = NULL;
    const char *json_origin = o->config_json;
    if (o->config_json) {
        json = read_text(o->config_json, err);
        if (!json) return err ? err->code : LH_ERR_IO;
    } else if (o->config_text) {
        if (!(json = strdup(o->config_text)))
            return lh_error_set(err, LH_ERR_NOMEM, "out of memory for a scheduler config");
        json_origin = o->config_origin ? o->config_origin : "built-in scheduler config";
    }
    if (json) class_name = json_class_name(json);
    /* name -> plugin id (+ implied overrides) */
    const char *name = o->name && *o->name ? o->name : NULL;
    const char *plugin = NULL, *implied = "";
    if (!name) {
        plugin = lh_scheduler_for_class(class_name);
        if (!plugin) {
            lh_status st = lh_error_set(err, LH_ERR_CONFIG,
                                        class_name ? "no scheduler plugin for the model's "
                                                     "scheduler class '%s'; choose one by name"
                                                   : "no scheduler chosen%s",
                                        class_name ? class_name : "");
            free(json);
            free(class_name);
            return st;
        }
    } else if (lh_registry_find(reg, LH_PLUGIN_SCHEDULER, name)) {
        plugin = name;
    } else if (lh_scheduler_for_class(name)) {
        plugin = lh_scheduler_for_class(name);
    } else {
        for (size_t i = 0; i < N_SAMPLER_NAMES; i++)
            if (!strcasecmp(SAMPLER_NAMES[i].name, name)) {
                plugin = SAMPLER_NAMES[i].plugin;
                implied = SAMPLER_NAMES[i].overrides;
                break;
            }
    }
    free(class_name);
    const lh_plugin_info *info = plugin ? lh_registry_find(reg, LH_PLUGIN_SCHEDULER, plugin) : NULL;
    if (!info) {
        free(json);
        return lh_error_set(err, LH_ERR_NOT_FOUND,
                            plugin ? "scheduler '%s' needs plugin '%s', which is not loaded"
                                   : "unknown scheduler '%s'%s (`lorahost schedulers` lists them)",
                            name ? name : "(model default)", plugin ? plugin : "");
    }
    const lh_scheduler_desc *d = (const lh_scheduler_desc *)info;

    lh_config *cfg = lh_config_create(d->info.id, err);
    lh_status st = cfg ? LH_OK : LH_ERR_NOMEM;
    if (st == LH_OK && json) st = add_json_layer(cfg, d, json, json_origin, err);
    free(json);
    /* the name's implied keys, e.g. use_karras_sigmas for "... Karras" */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", implied);
    char *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); st == LH_OK && kv; kv = strtok_r(NULL, ";", &save)) {
        char where[160];
        snprintf(where, sizeof where, "sampler name '%s'", name);
        const char *eq = strchr(kv, '=');
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
        st = lh_config_set(cfg, key, eq + 1, where, err);
    }
    if (st == LH_OK && o->settings) {
        const char *section, *key;
        const lh_setting *v;
        for (size_t i = 0; st == LH_OK && (v = lh_settings_open_at(o->settings, i, &section, &key));
             i++) {
            if (strcmp(section, "scheduler")) continue;
            char origin[LH_ERROR_MAX / 2];
            st = lh_config_set(cfg, key, v->text, lh_setting_origin_text(origin, sizeof origin, v),
                               err);
        }
    }
    for (size_t i = 0; st == LH_OK && i < o->n_overrides; i++)
        st = add_override(cfg, o->overrides[i], err);

    lh_scheduler *s = NULL;
    if (st == LH_OK) {
        s = calloc(1, sizeof *s);
        if (!s || !(s->name = strdup(name ? name : d->info.id)))
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory for a scheduler");
    }
    if (st == LH_OK) st = lh_instance_create(&s->inst, reg, LH_PLUGIN_SCHEDULER, d->info.id, cfg, err);
    lh_config_destroy(cfg);
    if (st != LH_OK) {
        if (s) free(s->name);
        free(s);
        return st;
    }
    s->desc = (const lh_scheduler_desc *)lh_instance_info(s->inst);
    *out = s;
    return LH_OK;
}

void lh_scheduler_close(lh_scheduler *s) {
    if (!s) return;
    lh_instance_destroy(s->inst);
    free(s->name);
    free(s);
}

/* ---- Calls ---- */

const lh_scheduler_desc *lh_scheduler_descriptor(const lh_scheduler *s) { return s->desc; }
void *lh_scheduler_state(const lh_scheduler *s) { return lh_instance_state(s->inst); }
const char *lh_scheduler_id(const lh_scheduler *s) { return s->desc->info.id; }
const char *lh_scheduler_name(const lh_scheduler *s) { return s->name; }

lh_status lh_scheduler_set_timesteps(lh_scheduler *s, int32_t steps, lh_error *err) {
    char msg[LH_ERROR_MAX] = "";
    lh_status st = s->desc->set_timesteps(lh_scheduler_state(s), steps, msg, sizeof msg);
    if (st != LH_OK) return lh_error_set(err, st, "%s", msg[0] ? msg : lh_strerror(st));
    return LH_OK;
}

int32_t lh_scheduler_timesteps(const lh_scheduler *s, const double **out) {
    return s->desc->timesteps(lh_scheduler_state(s), out);
}

int32_t lh_scheduler_sigmas(const lh_scheduler *s, const double **out) {
    *out = NULL;
    return s->desc->sigmas ? s->desc->sigmas(lh_scheduler_state(s), out) : 0;
}

double lh_scheduler_init_noise_sigma(const lh_scheduler *s) {
    return s->desc->init_noise_sigma(lh_scheduler_state(s));
}
