/* POST /generate: the JSON body checked field by field (400 naming the
 * field), then, on the worker, the checks that need the model and the
 * registry (scheduler, adapter names), the per-request adapter set, the
 * generation and the reply (PNG, or JSON with base64 PNGs). */
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "png.h"
#include "rng.h"
#include "safety.h"
#include "server_internal.h"

#define MAX_PROMPT_BYTES (64 * 1024)
#define MAX_SCHEDULER_NAME 128

/* ---- Parsing ---- */

/* The key whose value the JSON parser stopped in: the last "key": before
 * byte `pos` (jansson's error position), or NULL. */
static const char *guess_field(const char *body, size_t len, size_t pos, char *buf, size_t size) {
    const char *found = NULL;
    if (pos > len) pos = len;
    for (size_t i = 0; i < pos; i++) {
        if (body[i] != '"') continue;
        size_t j = i + 1;
        while (j < len && body[j] != '"') j += body[j] == '\\' ? 2 : 1;
        if (j >= len) break;
        size_t k = j + 1;
        while (k < len && isspace((unsigned char)body[k])) k++;
        if (k < len && body[k] == ':' && j - i - 1 < size && k < pos) {
            memcpy(buf, body + i + 1, j - i - 1);
            buf[j - i - 1] = 0;
            found = buf;
        }
        i = j;
    }
    return found;
}

static int is_int(const json_t *v) { return json_is_integer(v); }

static int get_int(lh__reply *rep, const json_t *v, const char *field, int64_t lo, int64_t hi,
                   int64_t *out) {
    if (!is_int(v)) {
        lh__reply_error(rep, 400, field, "%s: expected an integer", field);
        return -1;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        lh__reply_error(rep, 400, field, "%s: must be in %lld..%lld, got %lld", field,
                        (long long)lo, (long long)hi, (long long)x);
        return -1;
    }
    *out = x;
    return 0;
}

static int get_num(lh__reply *rep, const json_t *v, const char *field, double lo, double hi,
                   double *out) {
    if (!json_is_number(v)) {
        lh__reply_error(rep, 400, field, "%s: expected a finite number", field);
        return -1;
    }
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) {
        lh__reply_error(rep, 400, field, "%s: must be a finite number in %g..%g", field, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int get_str(lh__reply *rep, const json_t *v, const char *field, size_t max, char **out) {
    if (!json_is_string(v)) {
        lh__reply_error(rep, 400, field, "%s: expected a string", field);
        return -1;
    }
    if (json_string_length(v) > max || strlen(json_string_value(v)) != json_string_length(v)) {
        lh__reply_error(rep, 400, field, "%s: at most %zu bytes, no NUL characters", field, max);
        return -1;
    }
    if (!(*out = strdup(json_string_value(v)))) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return -1;
    }
    return 0;
}

/* Adapter names: letters, digits, '.', '_', '-'; not starting with '.'. */
int lh__name_ok(const char *s) {
    size_t n = strlen(s);
    if (!n || n > LH__SRV_NAME_MAX || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i])) return 0;
    return 1;
}

static int parse_adapters(lh__gen_req *r, lh__reply *rep, const json_t *v) {
    if (!json_is_array(v)) {
        lh__reply_error(rep, 400, "adapters", "adapters: expected an array of {name, scale}");
        return -1;
    }
    if (json_array_size(v) > LH__SRV_MAX_REQ_ADAPTERS) {
        lh__reply_error(rep, 400, "adapters", "adapters: at most %d", LH__SRV_MAX_REQ_ADAPTERS);
        return -1;
    }
    r->has_adapters = 1;
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        char field[64];
        snprintf(field, sizeof field, "adapters[%zu]", i);
        if (!json_is_object(e)) {
            lh__reply_error(rep, 400, field, "%s: expected an object {name, scale}", field);
            return -1;
        }
        const char *key;
        json_t *x;
        lh__req_adapter *a = &r->adapters[r->n_adapters++];
        json_object_foreach((json_t *)e, key, x) {
            if (!strcmp(key, "name")) {
                snprintf(field, sizeof field, "adapters[%zu].name", i);
                if (!json_is_string(x) || !lh__name_ok(json_string_value(x))) {
                    lh__reply_error(rep, 400, field,
                                    "%s: expected an adapter name (letters, digits, '.', '_', "
                                    "'-'; at most %d)", field, LH__SRV_NAME_MAX);
                    return -1;
                }
                snprintf(a->name, sizeof a->name, "%s", json_string_value(x));
            } else if (!strcmp(key, "scale")) {
                snprintf(field, sizeof field, "adapters[%zu].scale", i);
                if (get_num(rep, x, field, -100, 100, &a->scale)) return -1;
                a->has_scale = 1;
            } else {
                snprintf(field, sizeof field, "adapters[%zu].%.32s", i, key);
                lh__reply_error(rep, 400, field, "%s: unknown field", field);
                return -1;
            }
        }
        if (!a->name[0]) {
            snprintf(field, sizeof field, "adapters[%zu].name", i);
            lh__reply_error(rep, 400, field, "%s: missing", field);
            return -1;
        }
    }
    return 0;
}

static int parse_init_image(lh__gen_req *r, lh__reply *rep, const json_t *v, int64_t *w,
                            int64_t *h) {
    if (!json_is_string(v)) {
        lh__reply_error(rep, 400, "init_image", "init_image: expected a base64 PNG string");
        return -1;
    }
    const char *b64 = json_string_value(v);
    size_t n = json_string_length(v), len = 0;
    /* a data URL's prefix is allowed */
    const char *comma = strncmp(b64, "data:", 5) ? NULL : strchr(b64, ',');
    if (comma) {
        n -= (size_t)(comma + 1 - b64);
        b64 = comma + 1;
    }
    int bad = 0;
    uint8_t *png = lh__base64_decode(b64, n, &len, &bad);
    if (!png) {
        if (bad) lh__reply_error(rep, 400, "init_image", "init_image: not valid base64");
        else lh__reply_error(rep, 500, NULL, "out of memory");
        return -1;
    }
    lh_error err = {0};
    lh_status st = lh_png_decode(png, len, "init_image", &r->init_rgb, w, h, &err);
    free(png);
    if (st != LH_OK) {
        lh__reply_error(rep, st == LH_ERR_NOMEM ? 500 : 400, "init_image", "%s", err.msg);
        return -1;
    }
    return 0;
}

void lh__gen_req_free(lh__gen_req *r) {
    free(r->prompt);
    free(r->negative_prompt);
    free(r->scheduler);
    free(r->init_rgb);
    r->prompt = r->negative_prompt = r->scheduler = NULL;
    r->init_rgb = NULL;
}

static int parse_fields(lh__gen_req *r, const lh_server *s, const json_t *root, lh__reply *rep) {
    lh_gen_params *p = &r->p;
    int64_t w = p->width, h = p->height, iw = 0, ih = 0, n, seed = -1;
    int size_given = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "prompt")) {
            if (get_str(rep, v, key, MAX_PROMPT_BYTES, &r->prompt)) return -1;
        } else if (!strcmp(key, "negative_prompt")) {
            if (get_str(rep, v, key, MAX_PROMPT_BYTES, &r->negative_prompt)) return -1;
        } else if (!strcmp(key, "steps")) {
            if (get_int(rep, v, key, 1, LH_PIPELINE_MAX_STEPS, &n)) return -1;
            p->steps = (int32_t)n;
        } else if (!strcmp(key, "width") || !strcmp(key, "height")) {
            if (get_int(rep, v, key, 8, LH_PIPELINE_MAX_SIDE, &n)) return -1;
            if (n % 8) {
                lh__reply_error(rep, 400, key, "%s: must be a multiple of 8, got %lld", key,
                                (long long)n);
                return -1;
            }
            *(key[0] == 'w' ? &w : &h) = n;
            size_given = 1;
        } else if (!strcmp(key, "cfg_scale")) {
            if (get_num(rep, v, key, 0, 100, &p->cfg_scale)) return -1;
        } else if (!strcmp(key, "seed")) {
            if (get_int(rep, v, key, -1, INT64_MAX, &seed)) return -1;
        } else if (!strcmp(key, "scheduler")) {
            if (get_str(rep, v, key, MAX_SCHEDULER_NAME, &r->scheduler)) return -1;
        } else if (!strcmp(key, "batch_size")) {
            if (get_int(rep, v, key, 1, LH_PIPELINE_MAX_BATCH, &p->batch_size)) return -1;
        } else if (!strcmp(key, "strength")) {
            if (get_num(rep, v, key, 0, 1, &p->strength)) return -1;
        } else if (!strcmp(key, "adapters")) {
            if (parse_adapters(r, rep, v)) return -1;
        } else if (!strcmp(key, "init_image")) {
            if (parse_init_image(r, rep, v, &iw, &ih)) return -1;
        } else {
            char field[80];
            snprintf(field, sizeof field, "%.64s", key);
            lh__reply_error(rep, 400, field, "%s: unknown field", field);
            return -1;
        }
    }
    if (r->init_rgb) {
        if (size_given && (w != iw || h != ih)) {
            lh__reply_error(rep, 400, "width",
                            "init_image is %lldx%lld but width/height ask for %lldx%lld (images "
                            "are not resized; leave width/height out)",
                            (long long)iw, (long long)ih, (long long)w, (long long)h);
            return -1;
        }
        if (iw % 8 || ih % 8) {
            lh__reply_error(rep, 400, "init_image",
                            "init_image: %lldx%lld: sides must be multiples of 8", (long long)iw,
                            (long long)ih);
            return -1;
        }
        w = iw;
        h = ih;
    }
    /* bounded work: width * height * batch_size pixels */
    if (w * h > s->o.max_pixels || w * h * p->batch_size > s->o.max_pixels) {
        lh__reply_error(rep, 400, w * h > s->o.max_pixels ? "width" : "batch_size",
                        "width x height x batch_size = %lld x %lld x %lld pixels is more than "
                        "this server's limit of %lld",
                        (long long)w, (long long)h, (long long)p->batch_size,
                        (long long)s->o.max_pixels);
        return -1;
    }
    if (r->want_png && p->batch_size != 1) {
        lh__reply_error(rep, 400, "batch_size",
                        "batch_size: an image/png reply holds one image; ask for JSON");
        return -1;
    }
    p->width = w;
    p->height = h;
    p->seed = seed < 0 ? lh_rng_random_seed() : (uint64_t)seed;
    if (r->prompt) p->prompt = r->prompt;
    if (r->negative_prompt) p->negative_prompt = r->negative_prompt;
    if (r->scheduler) p->scheduler = r->scheduler;
    p->init_image = r->init_rgb;
    return 0;
}

int lh__gen_req_parse(lh__gen_req *r, const lh_server *s, const char *body, size_t len,
                      lh__reply *rep) {
    r->p = s->defaults;
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char buf[80];
        const char *field = guess_field(body, len, (size_t)je.position, buf, sizeof buf);
        lh__reply_error(rep, 400, field, "invalid JSON at line %d, column %d%s%s: %s", je.line,
                        je.column, field ? ", in " : "", field ? field : "", je.text);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root))
        lh__reply_error(rep, 400, NULL, "the body must be a JSON object");
    else
        rc = parse_fields(r, s, root, rep);
    json_decref(root);
    if (rc) lh__gen_req_free(r);
    return rc;
}

/* ---- Generation (on the worker) ---- */

/* Whether `name` is a scheduler the registry can make: a plugin id or
 * alias, a diffusers class name or an A1111 sampler name of a loaded plugin. */
static int scheduler_known(const lh_registry *reg, const char *name) {
    if (lh_registry_find(reg, LH_PLUGIN_SCHEDULER, name)) return 1;
    const char *plugin = lh_scheduler_for_class(name);
    if (plugin) return lh_registry_find(reg, LH_PLUGIN_SCHEDULER, plugin) != NULL;
    const lh_sampler_name *sn;
    for (size_t i = 0; (sn = lh_sampler_name_at(i)); i++)
        if (!strcasecmp(sn->name, name))
            return lh_registry_find(reg, LH_PLUGIN_SCHEDULER, sn->plugin) != NULL;
    return 0;
}

/* The request field a pipeline message is about (the first one it names). */
static const char *field_of(const char *msg) {
    static const char *const FIELDS[] = {"steps",     "width",    "height",    "cfg_scale",
                                         "strength",  "negative_prompt", "prompt", "batch_size",
                                         "scheduler", "init_image", NULL};
    const char *best = NULL, *at = NULL;
    for (size_t i = 0; FIELDS[i]; i++) {
        const char *p = strstr(msg, FIELDS[i]);
        if (p && (!at || p < at)) {
            at = p;
            best = FIELDS[i];
        }
    }
    return best;
}

static json_t *parameters_json(const lh__gen_req *r, const lh_gen_params *p, const char *sched,
                               lh__srv_adapter *const *set, const double *scales, size_t n) {
    json_t *ad = json_array();
    for (size_t i = 0; ad && i < n; i++)
        json_array_append_new(ad, json_pack("{s:s, s:f}", "name", set[i]->name, "scale",
                                            scales[i]));
    json_t *j = json_pack("{s:s, s:s, s:i, s:I, s:I, s:f, s:I, s:s, s:I, s:o*}", "prompt",
                          p->prompt ? p->prompt : "", "negative_prompt",
                          p->negative_prompt ? p->negative_prompt : "", "steps",
                          (int)p->steps, "width", (json_int_t)p->width, "height",
                          (json_int_t)p->height, "cfg_scale", p->cfg_scale, "seed",
                          (json_int_t)p->seed, "scheduler", sched, "batch_size",
                          (json_int_t)p->batch_size, "adapters", ad);
    if (j && r->init_rgb) json_object_set_new(j, "strength", json_real(p->strength));
    return j;
}

void lh__generate(lh_server *s, lh__gen_req *r, lh__reply *rep) {
    lh_gen_params *p = &r->p;
    if (p->scheduler && *p->scheduler && !scheduler_known(s->reg, p->scheduler)) {
        lh__reply_error(rep, 400, "scheduler",
                        "scheduler: unknown scheduler '%s' (GET /schedulers lists them)",
                        p->scheduler);
        return;
    }
    /* the set: the request's, or the server's default */
    lh__srv_adapter *set[LH__SRV_MAX_ADAPTERS];
    lh_adapter *as[LH__SRV_MAX_ADAPTERS];
    double scales[LH__SRV_MAX_ADAPTERS];
    size_t n = 0;
    if (r->has_adapters) {
        for (size_t i = 0; i < r->n_adapters; i++) {
            size_t k = 0;
            while (k < s->n_adapters && strcmp(s->adapters[k].name, r->adapters[i].name)) k++;
            if (k == s->n_adapters) {
                char field[64];
                snprintf(field, sizeof field, "adapters[%zu].name", i);
                lh__reply_error(rep, 400, field,
                                "%s: no adapter '%s' is loaded (POST /adapters loads one)",
                                field, r->adapters[i].name);
                return;
            }
            for (size_t m = 0; m < n; m++)
                if (set[m] == &s->adapters[k]) {
                    char field[64];
                    snprintf(field, sizeof field, "adapters[%zu].name", i);
                    lh__reply_error(rep, 400, field, "%s: adapter '%s' is named twice", field,
                                    r->adapters[i].name);
                    return;
                }
            set[n] = &s->adapters[k];
            scales[n++] = r->adapters[i].has_scale ? r->adapters[i].scale : s->adapters[k].scale;
        }
    } else {
        for (size_t k = 0; k < s->n_adapters; k++)
            if (s->adapters[k].active) {
                set[n] = &s->adapters[k];
                scales[n++] = s->adapters[k].scale;
            }
    }
    lh_error err = {0};
    if (lh_pipeline_check(s->model, p, r->init_rgb != NULL, &err) != LH_OK) {
        lh__reply_error(rep, 400, field_of(err.msg), "%s", err.msg);
        return;
    }
    /* safety checkers ([plugins] safety): the prompt before any compute */
    int checking = s->safety && lh_safety_chain_count(s->safety);
    lh_safety_report prompt_rep;
    if (checking &&
        lh_safety_check_prompt(s->safety, p->prompt ? p->prompt : "", &prompt_rep, &err)) {
        lh__reply_error(rep, 500, NULL, "%s", err.msg);
        return;
    }
    if (checking && prompt_rep.action == LH_SAFETY_REJECT) {
        const lh_safety_entry *e = &prompt_rep.entries[prompt_rep.decider];
        lh__reply_error(rep, 400, "prompt", "prompt refused by safety checker '%s': %s",
                        e->checker, e->result.reason[0] ? e->result.reason : "(no reason given)");
        return;
    }
    for (size_t i = 0; i < n; i++) as[i] = set[i]->a;
    if (lh_adapter_set(s->model, as, scales, n, &err) != LH_OK) {
        lh__reply_error(rep, 500, "adapters", "%s", err.msg);
        return;
    }
    lh_gen_result res = {0};
    lh_status st = r->init_rgb ? lh_pipeline_img2img(s->model, s->reg, p, &res, &err)
                               : lh_pipeline_txt2img(s->model, s->reg, p, &res, &err);
    if (st != LH_OK) {
        int bad = st == LH_ERR_INVALID || st == LH_ERR_CONFIG;
        lh__reply_error(rep, bad ? 400 : 500, bad ? field_of(err.msg) : NULL, "%s", err.msg);
        lh_gen_result_free(&res);
        return;
    }
    const char *sched = p->scheduler && *p->scheduler ? p->scheduler : res.scheduler_id;
    char *text = lh_pipeline_parameters_text(p, sched, s->model->info.name, r->init_rgb != NULL);
    json_t *params = parameters_json(r, p, sched, set, scales, n);
    json_t *images = json_array(), *safety = checking ? json_array() : NULL;
    lh_safety_report *reports = checking ? calloc((size_t)res.batch, sizeof *reports) : NULL;
    if (!text || !params || !images || (checking && (!safety || !reports))) goto nomem;
    /* ... and the images, their actions (blur, black) applied in place */
    if (checking && lh_safety_check_images(s->safety, res.images, res.batch, res.width,
                                           res.height, p->prompt ? p->prompt : "", &prompt_rep,
                                           reports, &err) != LH_OK) {
        lh__reply_error(rep, 500, NULL, "%s; no image sent", err.msg);
        goto out;
    }
    size_t img_bytes = (size_t)res.width * (size_t)res.height * 3;
    for (int64_t i = 0; i < res.batch; i++) {
        char *sj = checking ? lh_safety_report_json(&reports[i]) : NULL;
        if (checking && !sj) goto nomem;
        int rejected = checking && reports[i].action == LH_SAFETY_REJECT;
        if (checking) json_array_append_new(safety, json_loads(sj, 0, NULL));
        if (rejected && r->want_png) {
            const lh_safety_entry *e = &reports[i].entries[reports[i].decider];
            lh__reply_error(rep, 422, NULL, "image refused by safety checker '%s': %s",
                            e->checker,
                            e->result.reason[0] ? e->result.reason : "(no reason given)");
            free(sj);
            goto out;
        }
        if (rejected) { /* not sent; its report says why */
            free(sj);
            if (json_array_append_new(images, json_null())) goto nomem;
            continue;
        }
        void *png = NULL;
        size_t len = 0;
        lh_png_text pt[2] = {{"parameters", text}, {"lorahost_safety", sj}};
        lh_status st2 = lh_png_encode(&png, &len, "image", res.images + (size_t)i * img_bytes,
                                      res.width, res.height, pt, sj ? 2 : 1, &err);
        free(sj);
        if (st2 != LH_OK) {
            lh__reply_error(rep, 500, NULL, "%s", err.msg);
            goto out;
        }
        if (r->want_png) {
            rep->status = 200;
            rep->ctype = "image/png";
            rep->body = png;
            rep->len = len;
            snprintf(rep->seed, sizeof rep->seed, "%llu", (unsigned long long)p->seed);
            goto out;
        }
        char *b64 = lh__base64_encode(png, len, NULL);
        free(png);
        if (!b64 || json_array_append_new(images, json_string(b64))) {
            free(b64);
            goto nomem;
        }
        free(b64);
    }
    json_t *body = json_pack("{s:o, s:o, s:I, s:o*}", "images", images, "parameters", params,
                             "seed", (json_int_t)p->seed, "safety", safety);
    images = params = safety = NULL;
    if (!body) goto nomem;
    snprintf(rep->seed, sizeof rep->seed, "%llu", (unsigned long long)p->seed);
    lh__reply_json(rep, 200, body);
    goto out;
nomem:
    lh__reply_error(rep, 500, NULL, "out of memory");
out:
    free(reports);
    json_decref(images);
    json_decref(params);
    json_decref(safety);
    free(text);
    lh_gen_result_free(&res);
}
