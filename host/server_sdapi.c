/* AUTOMATIC1111's API on the server: POST /sdapi/v1/txt2img and
 * /sdapi/v1/img2img take A1111's request fields and answer in its format
 * ({"images": [base64 PNG], "parameters": {...}, "info": "<JSON text>"}),
 * so A1111 clients work unchanged; GET /sdapi/v1/samplers lists the sampler
 * names. <lora:NAME:W> tags in the prompt choose the adapters, loaded from
 * the adapter directories on first use as A1111 finds them. Fields lorahost
 * cannot honour (hires fix, inpainting masks, scripts, face restoration)
 * are refused with a 400 naming them unless they hold their "off" value;
 * fields about saving files or UI state are accepted and ignored. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "adapter_prompt.h"
#include "server_internal.h"

#define MAX_TEXT (64 * 1024)
#define MAX_N_ITER 16

/* Fields with no effect here: any value is accepted. */
static const char *const IGNORED[] = {
    "do_not_save_samples", "do_not_save_grid", "save_images", "comments", "force_task_id",
    "override_settings_restore_afterwards", "firstphase_width", "firstphase_height", "hr_scale",
    "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "subseed",
    "image_cfg_scale", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "resize_mode",
    "sampler_index", NULL};

/* Fields accepted only at their "off" value (null always is): JSON texts
 * separated by '|'. */
static const struct {
    const char *name, *off, *what;
} OFF_ONLY[] = {
    {"styles", "[]", "styles"},
    {"subseed_strength", "0", "variation seeds"},
    {"seed_resize_from_h", "-1|0", "seed resizing"},
    {"seed_resize_from_w", "-1|0", "seed resizing"},
    {"restore_faces", "false", "face restoration"},
    {"tiling", "false", "tiling"},
    {"eta", "", "eta"},
    {"s_min_uncond", "0", "s_min_uncond"},
    {"s_churn", "0", "s_churn"},
    {"s_tmax", "0", "s_tmax"},
    {"s_tmin", "0", "s_tmin"},
    {"s_noise", "1", "s_noise"},
    {"refiner_checkpoint", "\"\"", "a refiner"},
    {"refiner_switch_at", "0", "a refiner"},
    {"firstpass_image", "\"\"", "hires fix"},
    {"enable_hr", "false", "hires fix"},
    {"script_name", "\"\"", "scripts"},
    {"script_args", "[]", "scripts"},
    {"alwayson_scripts", "{}", "scripts"},
    {"infotext", "\"\"", "infotext"},
    {"mask", "\"\"", "inpainting"},
    {"latent_mask", "\"\"", "inpainting"},
    {"initial_noise_multiplier", "1", "initial_noise_multiplier"},
    {"include_init_images", "false", "include_init_images"},
};

static int in_list(const char *const *list, const char *key) {
    for (size_t i = 0; list[i]; i++)
        if (!strcmp(list[i], key)) return 1;
    return 0;
}

/* 1 if v is null or one of the '|'-separated JSON texts in off. */
static int is_off(const json_t *v, const char *off) {
    if (json_is_null(v)) return 1;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", off);
    for (char *save = NULL, *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save)) {
        json_t *x = json_loads(t, JSON_DECODE_ANY, NULL);
        int eq = x && (json_equal((json_t *)v, x) ||
                       (json_is_number(v) && json_is_number(x) &&
                        json_number_value(v) == json_number_value(x)));
        json_decref(x);
        if (eq) return 1;
    }
    return 0;
}

/* A1111's sampler + scheduler pair as one of lorahost's sampler names. */
static int sampler_name(char *out, size_t size, const char *sampler, const char *sched,
                        lh__reply *rep) {
    if (!sched || !*sched || !strcasecmp(sched, "automatic") || !strcasecmp(sched, "uniform")) {
        snprintf(out, size, "%s", sampler);
        return 0;
    }
    if (!strcasecmp(sched, "karras") || !strcasecmp(sched, "exponential")) {
        /* "DPM++ 2M" + "Karras"; a name that has it already stays */
        size_t n = strlen(sampler), k = strlen(sched);
        int has = n > k && !strcasecmp(sampler + n - k, sched) && sampler[n - k - 1] == ' ';
        snprintf(out, size, has ? "%s" : "%s %c%s", sampler, (char)(sched[0] & ~0x20), sched + 1);
        return 0;
    }
    lh__reply_error(rep, 400, "scheduler",
                    "scheduler: '%s' is not supported (Automatic, Uniform, Karras or Exponential)",
                    sched);
    return -1;
}

/* <lora:NAME:TE:UNET> tags out of the prompt into r->adapters. */
static int lora_tags(lh__gen_req *r, int apply, lh__reply *rep) {
    char *clean = NULL;
    lh_adapter_ref *refs = NULL;
    size_t n = 0;
    lh_error err = {0};
    if (lh_prompt_adapters(&clean, &refs, &n, r->prompt ? r->prompt : "", &err) != LH_OK) {
        lh__reply_error(rep, 400, "prompt", "prompt: %s", err.msg);
        return -1;
    }
    free(r->prompt);
    r->prompt = clean;
    int rc = 0;
    if (apply && n > LH__SRV_MAX_REQ_ADAPTERS) {
        lh__reply_error(rep, 400, "prompt", "prompt: at most %d <lora:...> tags",
                        LH__SRV_MAX_REQ_ADAPTERS);
        rc = -1;
    }
    for (size_t i = 0; apply && !rc && i < n; i++) {
        if (!lh__name_ok(refs[i].name)) {
            lh__reply_error(rep, 400, "prompt",
                            "prompt: <lora:%.64s>: a name of letters, digits, '.', '_', '-' (at "
                            "most %d), no directories", refs[i].name, LH__SRV_NAME_MAX);
            rc = -1;
            break;
        }
        if (!isfinite(refs[i].te) || !isfinite(refs[i].unet) || fabs(refs[i].te) > 100 ||
            fabs(refs[i].unet) > 100) {
            lh__reply_error(rep, 400, "prompt", "prompt: <lora:%s>: multipliers in -100..100",
                            refs[i].name);
            rc = -1;
            break;
        }
        lh__req_adapter *a = &r->adapters[r->n_adapters++];
        snprintf(a->name, sizeof a->name, "%s", refs[i].name);
        a->scale = 1;
        a->has_scale = 1;
        a->te = refs[i].te;
        a->unet = refs[i].unet;
    }
    if (apply && n) r->has_adapters = 1;
    free(refs);
    return rc;
}

/* override_settings: CLIP_stop_at_last_layers (clip skip); others refused. */
static int overrides(lh__gen_req *r, const json_t *v, lh__reply *rep) {
    if (json_is_null(v)) return 0;
    if (!json_is_object(v)) {
        lh__reply_error(rep, 400, "override_settings", "override_settings: expected an object");
        return -1;
    }
    const char *key;
    json_t *x;
    json_object_foreach((json_t *)v, key, x) {
        char field[96];
        snprintf(field, sizeof field, "override_settings.%.64s", key);
        if (!strcmp(key, "CLIP_stop_at_last_layers")) {
            int64_t n;
            if (lh__get_int(rep, x, field, 1, 12, &n)) return -1;
            r->p.clip_skip = (int)n - 1;
        } else if (!strcmp(key, "sd_model_checkpoint") || !strcmp(key, "sd_vae")) {
            continue; /* one model per server: which one is what GET /healthz says */
        } else {
            lh__reply_error(rep, 400, field, "%s: not supported (only CLIP_stop_at_last_layers)",
                            field);
            return -1;
        }
    }
    return 0;
}

static int parse(lh__gen_req *r, const lh_server *s, const json_t *root, int img2img,
                 lh__reply *rep) {
    lh_gen_params *p = &r->p;
    int64_t w = p->width, h = p->height, iw = 0, ih = 0, n, seed = -1;
    int size_given = 0, extra_networks = 1;
    char *sampler = NULL, *sched = NULL;
    const char *key;
    json_t *v;
    int rc = -1;
    r->n_iter = 1;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "prompt")) {
            if (lh__get_str(rep, v, key, MAX_TEXT, &r->prompt)) goto out;
        } else if (!strcmp(key, "negative_prompt")) {
            if (lh__get_str(rep, v, key, MAX_TEXT, &r->negative_prompt)) goto out;
        } else if (!strcmp(key, "steps")) {
            if (lh__get_int(rep, v, key, 1, LH_PIPELINE_MAX_STEPS, &n)) goto out;
            p->steps = (int32_t)n;
        } else if (!strcmp(key, "width") || !strcmp(key, "height")) {
            if (lh__get_int(rep, v, key, 8, LH_PIPELINE_MAX_SIDE, &n)) goto out;
            if (n % 8) {
                lh__reply_error(rep, 400, key, "%s: must be a multiple of 8, got %lld", key,
                                (long long)n);
                goto out;
            }
            *(key[0] == 'w' ? &w : &h) = n;
            size_given = 1;
        } else if (!strcmp(key, "cfg_scale")) {
            if (lh__get_num(rep, v, key, 0, 100, &p->cfg_scale)) goto out;
        } else if (!strcmp(key, "seed")) {
            if (lh__get_int(rep, v, key, -1, INT64_MAX, &seed)) goto out;
        } else if (!strcmp(key, "sampler_name")) {
            free(sampler);
            sampler = NULL;
            if (!json_is_null(v) && lh__get_str(rep, v, key, 128, &sampler)) goto out;
        } else if (!strcmp(key, "scheduler")) {
            if (!json_is_null(v) && lh__get_str(rep, v, key, 128, &sched)) goto out;
        } else if (!strcmp(key, "batch_size")) {
            if (lh__get_int(rep, v, key, 1, LH_PIPELINE_MAX_BATCH, &p->batch_size)) goto out;
        } else if (!strcmp(key, "n_iter")) {
            if (lh__get_int(rep, v, key, 1, MAX_N_ITER, &n)) goto out;
            r->n_iter = (int)n;
        } else if (!strcmp(key, "denoising_strength")) {
            /* txt2img: only hires fix reads it */
            if (img2img && lh__get_num(rep, v, key, 0, 1, &p->strength)) goto out;
        } else if (!strcmp(key, "init_images") && img2img) {
            if (!json_is_array(v) || json_array_size(v) != 1) {
                lh__reply_error(rep, 400, key, "init_images: expected an array of one base64 "
                                               "PNG (one image for the whole batch)");
                goto out;
            }
            if (lh__get_png(rep, json_array_get(v, 0), "init_images", &r->init_rgb, &iw, &ih))
                goto out;
        } else if (!strcmp(key, "override_settings")) {
            if (overrides(r, v, rep)) goto out;
        } else if (!strcmp(key, "disable_extra_networks")) {
            if (!json_is_boolean(v)) {
                lh__reply_error(rep, 400, key, "%s: expected true or false", key);
                goto out;
            }
            extra_networks = !json_is_true(v);
        } else if (!strcmp(key, "send_images")) {
            if (!json_is_boolean(v) || !json_is_true(v)) {
                lh__reply_error(rep, 400, key, "send_images: only true (the images are the "
                                               "reply; nothing is saved on the server)");
                goto out;
            }
        } else if (in_list(IGNORED, key)) {
            continue;
        } else {
            size_t i = 0, m = sizeof OFF_ONLY / sizeof OFF_ONLY[0];
            while (i < m && strcmp(OFF_ONLY[i].name, key)) i++;
            char field[80];
            snprintf(field, sizeof field, "%.64s", key);
            if (i == m) {
                lh__reply_error(rep, 400, field, "%s: unknown field", field);
                goto out;
            }
            if (!is_off(v, OFF_ONLY[i].off)) {
                lh__reply_error(rep, 400, field, "%s: %s is not supported by lorahost", field,
                                OFF_ONLY[i].what);
                goto out;
            }
        }
    }
    if (img2img && !r->init_rgb) {
        lh__reply_error(rep, 400, "init_images", "init_images: missing");
        goto out;
    }
    if (sampler) {
        char name[300];
        if (sampler_name(name, sizeof name, sampler, sched, rep)) goto out;
        free(r->scheduler);
        if (!(r->scheduler = strdup(name))) {
            lh__reply_error(rep, 500, NULL, "out of memory");
            goto out;
        }
    } else if (sched && sampler_name((char[8]){0}, 8, "", sched, rep)) {
        goto out;
    }
    if (lora_tags(r, extra_networks, rep)) goto out;
    rc = lh__gen_req_finish(r, s, w, h, size_given, iw, ih, seed, rep);
    /* "parameters": the request with what was used filled in */
    if (!rc && !(r->echo = json_deep_copy(root))) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        rc = -1;
    }
    if (!rc) {
        json_object_set_new(r->echo, "seed", json_integer((json_int_t)p->seed));
        json_object_set_new(r->echo, "steps", json_integer(p->steps));
        json_object_set_new(r->echo, "cfg_scale", json_real(p->cfg_scale));
        json_object_set_new(r->echo, "width", json_integer((json_int_t)p->width));
        json_object_set_new(r->echo, "height", json_integer((json_int_t)p->height));
        json_object_set_new(r->echo, "batch_size", json_integer((json_int_t)p->batch_size));
        json_object_set_new(r->echo, "n_iter", json_integer(r->n_iter));
        json_object_del(r->echo, "init_images"); /* A1111 echoes no images */
    }
out:
    free(sampler);
    free(sched);
    return rc;
}

int lh__sdapi_parse(lh__gen_req *r, const lh_server *s, const char *body, size_t len, int img2img,
                    lh__reply *rep) {
    r->p = s->defaults;
    r->a1111 = 1;
    json_t *root = lh__json_body(body, len, rep);
    int rc = root ? parse(r, s, root, img2img, rep) : -1;
    json_decref(root);
    if (rc) lh__gen_req_free(r);
    return rc;
}

json_t *lh__sdapi_reply(const lh__gen_req *r, json_t *images, const uint64_t *seeds,
                        char *const *infotexts, size_t n, const char *sampler,
                        const char *model_name) {
    const lh_gen_params *p = &r->p;
    const char *prompt = p->prompt ? p->prompt : "", *neg = p->negative_prompt ? p->negative_prompt
                                                                               : "";
    json_t *all_p = json_array(), *all_n = json_array(), *all_s = json_array(),
           *all_sub = json_array(), *texts = json_array();
    for (size_t i = 0; all_p && all_n && all_s && all_sub && texts && i < n; i++) {
        json_array_append_new(all_p, json_string(prompt));
        json_array_append_new(all_n, json_string(neg));
        json_array_append_new(all_s, json_integer((json_int_t)seeds[i]));
        json_array_append_new(all_sub, json_integer(-1));
        json_array_append_new(texts, json_string(infotexts[i]));
    }
    char stamp[32] = "";
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm)) strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", &tm);
    json_t *info = json_pack(
        "{s:s, s:o*, s:s, s:o*, s:I, s:o*, s:i, s:o*, s:f, s:I, s:I, s:s, s:f, s:i, s:I, s:b, "
        "s:s, s:s?, s:o?, s:i, s:o*, s:[], s:s, s:i, s:s, s:{}, s:b}",
        "prompt", prompt, "all_prompts", all_p, "negative_prompt", neg, "all_negative_prompts",
        all_n, "seed", (json_int_t)(n ? seeds[0] : p->seed), "all_seeds", all_s, "subseed", -1,
        "all_subseeds", all_sub, "subseed_strength", 0.0, "width", (json_int_t)p->width,
        "height", (json_int_t)p->height, "sampler_name", sampler, "cfg_scale", p->cfg_scale,
        "steps", (int)p->steps, "batch_size", (json_int_t)p->batch_size, "restore_faces", 0,
        "sd_model_name", model_name, "sd_model_hash", NULL, "denoising_strength",
        r->init_rgb ? json_real(p->strength) : NULL, "clip_skip", p->clip_skip + 1, "infotexts",
        texts, "styles", "job_timestamp", stamp, "index_of_first_image", 0, "version",
        lh_version(), "extra_generation_params", "is_using_inpainting_conditioning", 0);
    char *info_text = info ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    json_t *body = NULL;
    if (info_text)
        body = json_pack("{s:o, s:O, s:s}", "images", images, "parameters", r->echo, "info",
                         info_text);
    else
        json_decref(images);
    free(info_text);
    return body;
}

void lh__sdapi_samplers(const lh_server *s, lh__reply *rep) {
    json_t *list = json_array();
    const lh_sampler_name *sn;
    for (size_t i = 0; list && (sn = lh_sampler_name_at(i)); i++) {
        if (!lh_registry_find(s->reg, LH_PLUGIN_SCHEDULER, sn->plugin)) continue;
        json_t *opts = json_object();
        if (opts && sn->overrides[0]) json_object_set_new(opts, "lorahost", json_string(sn->overrides));
        json_array_append_new(list, json_pack("{s:s, s:[s], s:o*}", "name", sn->name, "aliases",
                                              sn->plugin, "options", opts));
    }
    lh__reply_json(rep, 200, list);
}
