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

#include "adapter_prompt.h"
#include "log.h"
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

int lh__get_int(lh__reply *rep, const json_t *v, const char *field, int64_t lo, int64_t hi,
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

int lh__get_num(lh__reply *rep, const json_t *v, const char *field, double lo, double hi,
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

int lh__get_str(lh__reply *rep, const json_t *v, const char *field, size_t max, char **out) {
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
        a->te = a->unet = 1;
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
                if (lh__get_num(rep, x, field, -100, 100, &a->scale)) return -1;
                a->has_scale = 1;
            } else if (!strcmp(key, "text_encoder") || !strcmp(key, "unet")) {
                snprintf(field, sizeof field, "adapters[%zu].%s", i, key);
                if (lh__get_num(rep, x, field, -100, 100, key[0] == 't' ? &a->te : &a->unet))
                    return -1;
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

int lh__get_png(lh__reply *rep, const json_t *v, const char *field, uint8_t **rgb, int64_t *w,
                int64_t *h) {
    if (!json_is_string(v)) {
        lh__reply_error(rep, 400, field, "%s: expected a base64 PNG string", field);
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
        if (bad) lh__reply_error(rep, 400, field, "%s: not valid base64", field);
        else lh__reply_error(rep, 500, NULL, "out of memory");
        return -1;
    }
    lh_error err = {0};
    lh_status st = lh_png_decode(png, len, field, rgb, w, h, &err);
    free(png);
    if (st != LH_OK) {
        lh__reply_error(rep, st == LH_ERR_NOMEM ? 500 : 400, field, "%s", err.msg);
        return -1;
    }
    return 0;
}

void lh__gen_req_free(lh__gen_req *r) {
    free(r->prompt);
    free(r->negative_prompt);
    free(r->scheduler);
    free(r->init_rgb);
    json_decref(r->echo);
    r->prompt = r->negative_prompt = r->scheduler = NULL;
    r->init_rgb = NULL;
    r->echo = NULL;
}

static int parse_fields(lh__gen_req *r, const lh_server *s, const json_t *root, lh__reply *rep) {
    lh_gen_params *p = &r->p;
    int64_t w = p->width, h = p->height, iw = 0, ih = 0, n, seed = -1;
    int size_given = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "prompt")) {
            if (lh__get_str(rep, v, key, MAX_PROMPT_BYTES, &r->prompt)) return -1;
        } else if (!strcmp(key, "negative_prompt")) {
            if (lh__get_str(rep, v, key, MAX_PROMPT_BYTES, &r->negative_prompt)) return -1;
        } else if (!strcmp(key, "steps")) {
            if (lh__get_int(rep, v, key, 1, LH_PIPELINE_MAX_STEPS, &n)) return -1;
            p->steps = (int32_t)n;
        } else if (!strcmp(key, "width") || !strcmp(key, "height")) {
            if (lh__get_int(rep, v, key, 8, LH_PIPELINE_MAX_SIDE, &n)) return -1;
            if (n % 8) {
                lh__reply_error(rep, 400, key, "%s: must be a multiple of 8, got %lld", key,
                                (long long)n);
                return -1;
            }
            *(key[0] == 'w' ? &w : &h) = n;
            size_given = 1;
        } else if (!strcmp(key, "cfg_scale")) {
            if (lh__get_num(rep, v, key, 0, 100, &p->cfg_scale)) return -1;
        } else if (!strcmp(key, "seed")) {
            if (lh__get_int(rep, v, key, -1, INT64_MAX, &seed)) return -1;
        } else if (!strcmp(key, "scheduler")) {
            if (lh__get_str(rep, v, key, MAX_SCHEDULER_NAME, &r->scheduler)) return -1;
        } else if (!strcmp(key, "batch_size")) {
            if (lh__get_int(rep, v, key, 1, LH_PIPELINE_MAX_BATCH, &p->batch_size)) return -1;
        } else if (!strcmp(key, "strength")) {
            if (lh__get_num(rep, v, key, 0, 1, &p->strength)) return -1;
        } else if (!strcmp(key, "adapters")) {
            if (parse_adapters(r, rep, v)) return -1;
        } else if (!strcmp(key, "init_image")) {
            if (lh__get_png(rep, v, key, &r->init_rgb, &iw, &ih)) return -1;
        } else {
            char field[80];
            snprintf(field, sizeof field, "%.64s", key);
            lh__reply_error(rep, 400, field, "%s: unknown field", field);
            return -1;
        }
    }
    return lh__gen_req_finish(r, s, w, h, size_given, iw, ih, seed, rep);
}

int lh__gen_req_finish(lh__gen_req *r, const lh_server *s, int64_t w, int64_t h, int size_given,
                       int64_t iw, int64_t ih, int64_t seed, lh__reply *rep) {
    lh_gen_params *p = &r->p;
    const char *imf = r->a1111 ? "init_images" : "init_image";
    if (r->init_rgb) {
        if (size_given && (w != iw || h != ih)) {
            lh__reply_error(rep, 400, "width",
                            "%s is %lldx%lld but width/height ask for %lldx%lld (images "
                            "are not resized; leave width/height out)", imf,
                            (long long)iw, (long long)ih, (long long)w, (long long)h);
            return -1;
        }
        if (iw % 8 || ih % 8) {
            lh__reply_error(rep, 400, imf, "%s: %lldx%lld: sides must be multiples of 8", imf,
                            (long long)iw, (long long)ih);
            return -1;
        }
        w = iw;
        h = ih;
    }
    /* bounded work: width * height * batch_size (* n_iter) pixels */
    int64_t iters = r->n_iter > 1 ? r->n_iter : 1;
    if (w * h > s->o.max_pixels || w * h * p->batch_size * iters > s->o.max_pixels) {
        const char *f = w * h > s->o.max_pixels ? "width" : iters > 1 ? "n_iter" : "batch_size";
        lh__reply_error(rep, 400, f,
                        "width x height x batch_size%s = %lld x %lld x %lld%s pixels is more "
                        "than this server's limit of %lld", iters > 1 ? " x n_iter" : "",
                        (long long)w, (long long)h, (long long)p->batch_size,
                        iters > 1 ? " x n_iter" : "", (long long)s->o.max_pixels);
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

json_t *lh__json_body(const char *body, size_t len, lh__reply *rep) {
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char buf[80];
        const char *field = guess_field(body, len, (size_t)je.position, buf, sizeof buf);
        lh__reply_error(rep, 400, field, "invalid JSON at line %d, column %d%s%s: %s", je.line,
                        je.column, field ? ", in " : "", field ? field : "", je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        lh__reply_error(rep, 400, NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

int lh__gen_req_parse(lh__gen_req *r, const lh_server *s, const char *body, size_t len,
                      lh__reply *rep) {
    r->p = s->defaults;
    json_t *root = lh__json_body(body, len, rep);
    int rc = root ? parse_fields(r, s, root, rep) : -1;
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

static json_t *parameters_json(const lh__gen_req *r, const lh_gen_params *p, const char *sched) {
    json_t *ad = json_array();
    for (size_t i = 0; ad && i < r->n_set; i++)
        json_array_append_new(ad, json_pack("{s:s, s:f}", "name", r->set[i]->name, "scale",
                                            r->w[i].scale));
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

int lh__gen_batchable(const lh__gen_req *a, const lh__gen_req *b) {
    const lh_gen_params *p = &a->p, *q = &b->p;
    if (a->init_rgb || b->init_rgb || p->batch_size != 1 || q->batch_size != 1 ||
        a->n_iter > 1 || b->n_iter > 1 || p->steps != q->steps || p->width != q->width ||
        p->height != q->height || p->cfg_scale != q->cfg_scale || p->clip_skip != q->clip_skip ||
        strcmp(p->scheduler ? p->scheduler : "", q->scheduler ? q->scheduler : ""))
        return 0;
    if (a->has_adapters != b->has_adapters || a->n_adapters != b->n_adapters) return 0;
    for (size_t i = 0; i < a->n_adapters; i++) {
        const lh__req_adapter *x = &a->adapters[i], *y = &b->adapters[i];
        if (strcmp(x->name, y->name) || x->has_scale != y->has_scale ||
            (x->has_scale && x->scale != y->scale) || x->te != y->te || x->unet != y->unet)
            return 0;
    }
    return 1;
}

/* The adapter named in request adapter i: loaded, or (A1111's <lora:...>
 * tags) found in the adapter directories and loaded now, not in the
 * default set. NULL with the reply filled. */
static lh__srv_adapter *find_adapter(lh_server *s, const lh__gen_req *r, size_t i,
                                     lh__reply *rep) {
    const char *name = r->adapters[i].name;
    for (size_t k = 0; k < s->n_adapters; k++)
        if (!strcmp(s->adapters[k].name, name)) return &s->adapters[k];
    char field[64];
    snprintf(field, sizeof field, r->a1111 ? "prompt" : "adapters[%zu].name", i);
    if (!r->a1111 || !s->o.n_adapter_dirs) {
        lh__reply_error(rep, 400, field, "%s: no adapter '%s' is loaded (POST /adapters loads one)",
                        field, name);
        return NULL;
    }
    char path[4096];
    lh_error err = {0};
    if (lh_adapter_resolve(path, sizeof path, name, s->o.adapter_dirs, s->o.n_adapter_dirs,
                           &err) != LH_OK) {
        lh__reply_error(rep, 400, field, "<lora:%s>: not loaded, and %s", name, err.msg);
        return NULL;
    }
    const char *base = strrchr(path, '/');
    lh__srv_adapter *a = lh__adapter_add(s, name, path, base ? base + 1 : path, 1.0, 0, rep);
    if (a) lh_log(LH_LOG_INFO, "serve", "loaded adapter '%s' from %s for a <lora:> tag", name, path);
    return a;
}

/* The checks that need the model and the registry, the adapter set (into
 * r->set, r->w) and the prompt's safety check. 0, or -1 with the reply. */
static int prepare(lh_server *s, lh__gen_req *r, lh_safety_report *prompt_rep, lh__reply *rep) {
    lh_gen_params *p = &r->p;
    if (p->scheduler && *p->scheduler && !scheduler_known(s->reg, p->scheduler)) {
        lh__reply_error(rep, 400, r->a1111 ? "sampler_name" : "scheduler",
                        "%s: unknown scheduler '%s' (GET %s lists them)",
                        r->a1111 ? "sampler_name" : "scheduler", p->scheduler,
                        r->a1111 ? "/sdapi/v1/samplers" : "/schedulers");
        return -1;
    }
    r->n_set = 0;
    if (!r->has_adapters) {
        r->n_set = lh__default_set(s, r->set, r->w);
    } else {
        for (size_t i = 0; i < r->n_adapters; i++) {
            lh__srv_adapter *a = find_adapter(s, r, i, rep);
            if (!a) return -1;
            for (size_t m = 0; m < r->n_set; m++)
                if (r->set[m] == a) {
                    char field[64];
                    snprintf(field, sizeof field, r->a1111 ? "prompt" : "adapters[%zu].name", i);
                    lh__reply_error(rep, 400, field, "%s: adapter '%s' is named twice", field,
                                    r->adapters[i].name);
                    return -1;
                }
            r->set[r->n_set] = a;
            lh_adapter_weights_init(&r->w[r->n_set],
                                    r->adapters[i].has_scale ? r->adapters[i].scale : a->scale);
            r->w[r->n_set].text_encoder = r->adapters[i].te;
            r->w[r->n_set++].unet = r->adapters[i].unet;
        }
    }
    lh_error err = {0};
    if (lh_pipeline_check(s->model, p, r->init_rgb != NULL, &err) != LH_OK) {
        lh__reply_error(rep, 400, field_of(err.msg), "%s", err.msg);
        return -1;
    }
    /* safety checkers ([plugins] safety): the prompt before any compute */
    if (!s->safety || !lh_safety_chain_count(s->safety)) return 0;
    if (lh_safety_check_prompt(s->safety, p->prompt ? p->prompt : "", prompt_rep, &err)) {
        lh__reply_error(rep, 500, NULL, "%s", err.msg);
        return -1;
    }
    if (prompt_rep->action == LH_SAFETY_REJECT) {
        const lh_safety_entry *e = &prompt_rep->entries[prompt_rep->decider];
        lh__reply_error(rep, 400, "prompt", "prompt refused by safety checker '%s': %s",
                        e->checker, e->result.reason[0] ? e->result.reason : "(no reason given)");
        return -1;
    }
    return 0;
}

static lh_status apply_set(lh_server *s, const lh__gen_req *r, lh_error *err) {
    lh_adapter *as[LH__SRV_MAX_ADAPTERS];
    for (size_t i = 0; i < r->n_set; i++) as[i] = r->set[i]->a;
    return lh_adapter_set_ex(s->model, as, r->w, r->n_set, LH_ADAPTER_RUNTIME, err);
}

/* The reply for request r from its n images (RGB8, w x h; seeds[i] made
 * image i): the safety checks on the images, PNGs with their parameters,
 * and the body (one PNG, our JSON or A1111's). */
static void respond(lh_server *s, lh__gen_req *r, uint8_t *const *imgs, const uint64_t *seeds,
                    size_t n, int64_t w, int64_t h, const char *sched,
                    const lh_safety_report *prompt_rep, lh__reply *rep) {
    lh_gen_params p = r->p;
    int checking = s->safety && lh_safety_chain_count(s->safety);
    lh_error err = {0};
    json_t *params = r->a1111 ? NULL : parameters_json(r, &p, sched);
    json_t *images = json_array(), *safety = checking ? json_array() : NULL;
    char **texts = calloc(n, sizeof *texts);
    if ((!r->a1111 && !params) || !images || !texts || (checking && !safety)) goto nomem;
    for (size_t i = 0; i < n; i++) {
        p.seed = seeds[i];
        if (!(texts[i] = lh_pipeline_parameters_text(&p, sched, s->model->info.name,
                                                     r->init_rgb != NULL)))
            goto nomem;
        lh_safety_report report;
        char *sj = NULL;
        int rejected = 0;
        if (checking) {
            /* the actions (blur, black) are applied in place */
            if (lh_safety_check_images(s->safety, imgs[i], 1, w, h, p.prompt ? p.prompt : "",
                                       prompt_rep, &report, &err) != LH_OK) {
                lh__reply_error(rep, 500, NULL, "%s; no image sent", err.msg);
                goto out;
            }
            if (!(sj = lh_safety_report_json(&report))) goto nomem;
            json_array_append_new(safety, json_loads(sj, 0, NULL));
            rejected = report.action == LH_SAFETY_REJECT;
        }
        if (rejected && r->want_png) {
            const lh_safety_entry *e = &report.entries[report.decider];
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
        lh_png_text pt[2] = {{"parameters", texts[i]}, {"lorahost_safety", sj}};
        lh_status st = lh_png_encode(&png, &len, "image", imgs[i], w, h, pt, sj ? 2 : 1, &err);
        free(sj);
        if (st != LH_OK) {
            lh__reply_error(rep, 500, NULL, "%s", err.msg);
            goto out;
        }
        if (r->want_png) {
            rep->status = 200;
            rep->ctype = "image/png";
            rep->body = png;
            rep->len = len;
            snprintf(rep->seed, sizeof rep->seed, "%llu", (unsigned long long)seeds[0]);
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
    json_t *body;
    if (r->a1111) {
        body = lh__sdapi_reply(r, images, seeds, texts, n, sched, s->model->info.name);
        images = NULL;
    } else {
        body = json_pack("{s:o, s:o, s:I, s:o*}", "images", images, "parameters", params, "seed",
                         (json_int_t)seeds[0], "safety", safety);
        images = params = safety = NULL;
    }
    if (!body) goto nomem;
    snprintf(rep->seed, sizeof rep->seed, "%llu", (unsigned long long)seeds[0]);
    lh__reply_json(rep, 200, body);
    goto out;
nomem:
    lh__reply_error(rep, 500, NULL, "out of memory");
out:
    for (size_t i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    json_decref(images);
    json_decref(params);
    json_decref(safety);
}

static void pipeline_error(lh__reply *rep, lh_status st, const lh_error *err) {
    int bad = st == LH_ERR_INVALID || st == LH_ERR_CONFIG;
    lh__reply_error(rep, bad ? 400 : 500, bad ? field_of(err->msg) : NULL, "%s", err->msg);
}

#define MAX_ITER 16

/* One request on its own: n_iter pipeline runs (seeds seed, seed + 1, ...). */
static void run_one(lh_server *s, lh__gen_req *r, const lh_safety_report *prompt_rep,
                    lh__reply *rep) {
    lh_gen_result res[MAX_ITER] = {{0}};
    int iters = r->n_iter > 1 ? r->n_iter : 1;
    uint64_t base = r->p.seed;
    lh_error err = {0};
    int done = 0;
    for (; done < iters; done++) {
        r->p.seed = base + (uint64_t)done;
        lh_status st = r->init_rgb ? lh_pipeline_img2img(s->model, s->reg, &r->p, &res[done], &err)
                                   : lh_pipeline_txt2img(s->model, s->reg, &r->p, &res[done], &err);
        if (st != LH_OK) {
            pipeline_error(rep, st, &err);
            goto out;
        }
    }
    r->p.seed = base;
    size_t n = (size_t)iters * (size_t)r->p.batch_size;
    uint8_t **imgs = malloc(n * sizeof *imgs);
    uint64_t *seeds = malloc(n * sizeof *seeds);
    if (!imgs || !seeds) {
        lh__reply_error(rep, 500, NULL, "out of memory");
    } else {
        size_t bytes = (size_t)res[0].width * (size_t)res[0].height * 3, k = 0;
        for (int it = 0; it < iters; it++)
            for (int64_t b = 0; b < res[it].batch; b++, k++) {
                imgs[k] = res[it].images + (size_t)b * bytes;
                seeds[k] = base + (uint64_t)it;
            }
        const char *sched = r->p.scheduler && *r->p.scheduler ? r->p.scheduler : res[0].scheduler_id;
        respond(s, r, imgs, seeds, n, res[0].width, res[0].height, sched, prompt_rep, rep);
    }
    free(imgs);
    free(seeds);
out:
    for (int i = 0; i < done && i < iters; i++) lh_gen_result_free(&res[i]);
}

void lh__generate(lh_server *s, lh__gen_req *const *rs, lh__reply *const *reps, size_t n) {
    lh__gen_req *ok[LH_PIPELINE_MAX_BATCH];
    lh__reply *ok_rep[LH_PIPELINE_MAX_BATCH];
    lh_safety_report prompt_rep[LH_PIPELINE_MAX_BATCH];
    size_t m = 0;
    for (size_t i = 0; i < n && i < LH_PIPELINE_MAX_BATCH; i++) {
        if (prepare(s, rs[i], &prompt_rep[m], reps[i])) continue;
        ok[m] = rs[i];
        ok_rep[m++] = reps[i];
    }
    if (!m) return;
    /* batchable requests name the same set */
    lh_error err = {0};
    if (apply_set(s, ok[0], &err) != LH_OK) {
        for (size_t i = 0; i < m; i++) lh__reply_error(ok_rep[i], 500, "adapters", "%s", err.msg);
        return;
    }
    int checking = s->safety && lh_safety_chain_count(s->safety);
    if (m == 1) {
        run_one(s, ok[0], checking ? &prompt_rep[0] : NULL, ok_rep[0]);
        return;
    }
    const char *prompts[LH_PIPELINE_MAX_BATCH], *negs[LH_PIPELINE_MAX_BATCH];
    uint64_t seeds[LH_PIPELINE_MAX_BATCH];
    for (size_t i = 0; i < m; i++) {
        prompts[i] = ok[i]->p.prompt ? ok[i]->p.prompt : "";
        negs[i] = ok[i]->p.negative_prompt ? ok[i]->p.negative_prompt : "";
        seeds[i] = ok[i]->p.seed;
    }
    lh_gen_params p = ok[0]->p;
    p.batch_size = (int64_t)m;
    p.prompts = prompts;
    p.negative_prompts = negs;
    p.seeds = seeds;
    lh_gen_result res = {0};
    lh_status st = lh_pipeline_txt2img(s->model, s->reg, &p, &res, &err);
    if (st == LH_ERR_UNSUPPORTED) { /* prompts of different lengths: one by one */
        for (size_t i = 0; i < m; i++)
            run_one(s, ok[i], checking ? &prompt_rep[i] : NULL, ok_rep[i]);
        return;
    }
    if (st != LH_OK) {
        for (size_t i = 0; i < m; i++) pipeline_error(ok_rep[i], st, &err);
        return;
    }
    const char *sched = p.scheduler && *p.scheduler ? p.scheduler : res.scheduler_id;
    size_t bytes = (size_t)res.width * (size_t)res.height * 3;
    for (size_t i = 0; i < m; i++) {
        uint8_t *img = res.images + i * bytes;
        respond(s, ok[i], &img, &seeds[i], 1, res.width, res.height, sched,
                checking ? &prompt_rep[i] : NULL, ok_rep[i]);
    }
    lh_gen_result_free(&res);
}
