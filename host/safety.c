/* Safety-checker chains (safety.h): creation from [plugins] safety and the
 * [safety_<id>] sections, prompt and image checks, the actions applied to
 * images, and the verdicts as a text line and as JSON. */
#include "safety.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_config.h"

struct lh_safety_chain {
    lh_instance *inst[LH_SAFETY_MAX_CHECKERS];
    const lh_safety_desc *desc[LH_SAFETY_MAX_CHECKERS];
    size_t n;
};

static const char *const ACTION_NAMES[LH_SAFETY_ACTION_COUNT] = {"pass", "blur", "black",
                                                                 "reject"};
static const char *const STAGE_NAMES[LH_SAFETY_STAGE_COUNT] = {"prompt", "image"};

const char *lh_safety_action_name(int action) {
    return action >= 0 && action < LH_SAFETY_ACTION_COUNT ? ACTION_NAMES[action] : "?";
}

/* ---- Creation ---- */

char *lh_safety_section(char *out, size_t size, const char *id) {
    snprintf(out, size, "%s%s", strncmp(id, "safety_", 7) ? "safety_" : "", id);
    return out;
}

/* The keys of [safety_<id>] into a new config for checker id. */
static lh_config *checker_config(const char *id, const lh_settings *s, lh_error *err) {
    lh_config *cfg = lh_config_create(id, err);
    if (!cfg) return NULL;
    char section[96];
    lh_safety_section(section, sizeof section, id);
    const char *sec, *key;
    const lh_setting *v;
    for (size_t i = 0; s && (v = lh_settings_open_at(s, i, &sec, &key)); i++) {
        if (strcmp(sec, section)) continue;
        char origin[LH_ERROR_MAX / 2], where[LH_ERROR_MAX / 2 + 128];
        lh_setting_origin_text(origin, sizeof origin, v);
        snprintf(where, sizeof where, "%s: [%s] %s", origin, section, key);
        if (lh_config_set(cfg, key, v->text, where, err) != LH_OK) {
            lh_config_destroy(cfg);
            return NULL;
        }
    }
    return cfg;
}

lh_status lh_safety_chain_create_names(lh_safety_chain **out, lh_registry *reg,
                                       const char *const *names, size_t n_names,
                                       const lh_settings *s, lh_error *err) {
    *out = NULL;
    lh_safety_chain *c = calloc(1, sizeof *c);
    if (!c) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for the safety checkers");
    int none = 0;
    for (size_t i = 0; i < n_names; i++) none |= !strcmp(names[i], "none");
    if (none && n_names > 1) {
        free(c);
        return lh_error_set(err, LH_ERR_CONFIG,
                            "[plugins] safety: 'none' cannot be combined with checkers");
    }
    if (none) n_names = 0;
    if (n_names > LH_SAFETY_MAX_CHECKERS) {
        free(c);
        return lh_error_set(err, LH_ERR_CONFIG, "[plugins] safety: at most %d checkers, got %zu",
                            LH_SAFETY_MAX_CHECKERS, n_names);
    }
    for (size_t i = 0; i < n_names; i++) {
        const lh_plugin_info *info = lh_registry_find(reg, LH_PLUGIN_SAFETY, names[i]);
        if (!info) {
            lh_safety_chain_destroy(c);
            return lh_error_set(err, LH_ERR_NOT_FOUND,
                                "safety checker '%s' ([plugins] safety) is not loaded; "
                                "`lorahost plugins` lists the loaded plugins", names[i]);
        }
        for (size_t k = 0; k < c->n; k++)
            if (lh_instance_info(c->inst[k]) == info) {
                lh_safety_chain_destroy(c);
                return lh_error_set(err, LH_ERR_CONFIG,
                                    "[plugins] safety: checker '%s' is named twice", info->id);
            }
        lh_config *cfg = checker_config(info->id, s, err);
        if (!cfg) {
            lh_safety_chain_destroy(c);
            return err ? err->code : LH_ERR_NOMEM;
        }
        lh_status st = lh_instance_create(&c->inst[c->n], reg, LH_PLUGIN_SAFETY, info->id, cfg, err);
        lh_config_destroy(cfg);
        if (st != LH_OK) {
            lh_safety_chain_destroy(c);
            /* plugin and registry messages often name the checker already */
            char quoted[96];
            snprintf(quoted, sizeof quoted, "'%s'", info->id);
            if (err && !strstr(err->msg, quoted))
                lh_error_prefix(err, "safety checker '%s'", info->id);
            return st;
        }
        c->desc[c->n] = (const lh_safety_desc *)lh_instance_info(c->inst[c->n]);
        c->n++;
    }
    *out = c;
    return LH_OK;
}

lh_status lh_safety_chain_create(lh_safety_chain **out, lh_registry *reg, const lh_settings *s,
                                 lh_error *err) {
    const char *const *names;
    size_t n;
    lh_status st = lh_settings_get_list(&names, &n, s, "plugins.safety", err);
    if (st != LH_OK) {
        *out = NULL;
        return st;
    }
    return lh_safety_chain_create_names(out, reg, names, n, s, err);
}

void lh_safety_chain_destroy(lh_safety_chain *c) {
    if (!c) return;
    for (size_t i = c->n; i-- > 0;) lh_instance_destroy(c->inst[i]);
    free(c);
}

size_t lh_safety_chain_count(const lh_safety_chain *c) { return c ? c->n : 0; }

const char *lh_safety_chain_id(const lh_safety_chain *c, size_t i) {
    return c && i < c->n ? c->desc[i]->info.id : NULL;
}

/* ---- Checks ---- */

/* Check what a plugin wrote; a bad action is a plugin bug, never a pass. */
static lh_status take_result(lh_safety_report *r, const char *id, int stage,
                             const lh_safety_result *res, lh_error *err) {
    if (res->action < 0 || res->action >= LH_SAFETY_ACTION_COUNT)
        return lh_error_set(err, LH_ERR_PLUGIN, "safety checker '%s': returned action %d (0..%d)",
                            id, (int)res->action, LH_SAFETY_ACTION_COUNT - 1);
    if (r->n >= (int32_t)(sizeof r->entries / sizeof r->entries[0]))
        return lh_error_set(err, LH_ERR_INTERNAL, "safety report full");
    lh_safety_entry *e = &r->entries[r->n];
    e->checker = id;
    e->stage = stage;
    e->result = *res;
    lh_safety_result *x = &e->result;
    x->reason[sizeof x->reason - 1] = '\0';
    if (x->n_scores < 0) x->n_scores = 0;
    if (x->n_scores > LH_SAFETY_MAX_SCORES) x->n_scores = LH_SAFETY_MAX_SCORES;
    for (int32_t k = 0; k < x->n_scores; k++) {
        if (!x->concepts[k]) x->concepts[k] = "?";
        if (!(x->scores[k] == x->scores[k])) x->scores[k] = 0.0f; /* NaN */
    }
    x->flagged = x->flagged || x->action != LH_SAFETY_PASS;
    if (x->flagged) {
        r->flagged = 1;
        if (r->decider < 0 || x->action > r->action) {
            r->action = x->action;
            r->decider = r->n;
        }
    }
    r->n++;
    return LH_OK;
}

static void report_init(lh_safety_report *r) {
    memset(r, 0, sizeof *r);
    r->decider = -1;
}

lh_status lh_safety_check_prompt(lh_safety_chain *c, const char *prompt, lh_safety_report *report,
                                 lh_error *err) {
    report_init(report);
    for (size_t i = 0; c && i < c->n; i++) {
        if (!c->desc[i]->check_prompt) continue;
        lh_safety_result res;
        memset(&res, 0, sizeof res);
        char msg[LH_ERROR_MAX] = "";
        lh_status st = c->desc[i]->check_prompt(lh_instance_state(c->inst[i]), prompt ? prompt : "",
                                                &res, msg, sizeof msg);
        if (st != LH_OK)
            return lh_error_set(err, st < LH_ERR_INTERNAL || st > 0 ? LH_ERR_PLUGIN : st,
                                "safety checker '%s': %s", c->desc[i]->info.id,
                                msg[0] ? msg : lh_strerror(st));
        st = take_result(report, c->desc[i]->info.id, LH_SAFETY_STAGE_PROMPT, &res, err);
        if (st != LH_OK) return st;
    }
    return LH_OK;
}

lh_status lh_safety_check_images(lh_safety_chain *c, uint8_t *rgb, int64_t n, int64_t width,
                                 int64_t height, const char *prompt,
                                 const lh_safety_report *prompt_report, lh_safety_report *reports,
                                 lh_error *err) {
    if (n < 0 || width < 1 || height < 1 || width > INT32_MAX / 3 || height > INT32_MAX)
        return lh_error_set(err, LH_ERR_INVALID, "safety check: bad image size %lldx%lld x %lld",
                            (long long)width, (long long)height, (long long)n);
    size_t bytes;
    if (lh_mul_size((size_t)width * 3, (size_t)height, &bytes))
        return lh_error_set(err, LH_ERR_OVERFLOW, "safety check: image size overflows");
    for (int64_t k = 0; k < n; k++) {
        if (prompt_report) {
            reports[k] = *prompt_report;
        } else {
            report_init(&reports[k]);
        }
    }
    lh_status st = LH_OK;
    lh_image *imgs = n ? calloc((size_t)n, sizeof *imgs) : NULL;
    lh_safety_result *res = n ? calloc((size_t)n, sizeof *res) : NULL;
    if (n && (!imgs || !res)) st = lh_error_set(err, LH_ERR_NOMEM, "safety check: out of memory");
    for (int64_t k = 0; st == LH_OK && k < n; k++)
        imgs[k] = (lh_image){(int32_t)width, (int32_t)height, (int32_t)(width * 3),
                             rgb + (size_t)k * bytes};
    for (size_t i = 0; st == LH_OK && c && i < c->n; i++) {
        if (!c->desc[i]->check_images) continue;
        memset(res, 0, (size_t)n * sizeof *res);
        char msg[LH_ERROR_MAX] = "";
        st = c->desc[i]->check_images(lh_instance_state(c->inst[i]), imgs, (int32_t)n,
                                      prompt ? prompt : "", res, msg, sizeof msg);
        if (st != LH_OK) {
            st = lh_error_set(err, st < LH_ERR_INTERNAL || st > 0 ? LH_ERR_PLUGIN : st,
                              "safety checker '%s': %s", c->desc[i]->info.id,
                              msg[0] ? msg : lh_strerror(st));
            break;
        }
        for (int64_t k = 0; st == LH_OK && k < n; k++)
            st = take_result(&reports[k], c->desc[i]->info.id, LH_SAFETY_STAGE_IMAGE, &res[k], err);
    }
    free(imgs);
    free(res);
    /* on any failure no image may go out unchecked: black them all */
    for (int64_t k = 0; k < n; k++) {
        uint8_t *img = rgb + (size_t)k * bytes;
        int action = st == LH_OK ? reports[k].action : LH_SAFETY_BLACK;
        if (action == LH_SAFETY_BLUR) {
            lh_status b = lh_safety_blur(img, width, height, err);
            if (b != LH_OK) {
                memset(img, 0, bytes);
                if (st == LH_OK) st = b;
            }
        } else if (action == LH_SAFETY_BLACK || action == LH_SAFETY_REJECT) {
            memset(img, 0, bytes);
        }
    }
    return st;
}

/* ---- Blur ---- */

/* One box pass of radius r along n samples (step `stride` bytes apart) of
 * each of 3 channels, edges clamped; tmp holds n * 3 ints. */
static void box_pass(uint8_t *p, int64_t n, int64_t stride, int64_t r, int32_t *tmp) {
    for (int64_t i = 0; i < n; i++)
        for (int ch = 0; ch < 3; ch++) tmp[i * 3 + ch] = p[i * stride + ch];
    int64_t w = 2 * r + 1;
    for (int ch = 0; ch < 3; ch++) {
        int64_t sum = 0;
        for (int64_t j = -r; j <= r; j++) sum += tmp[(j < 0 ? 0 : j >= n ? n - 1 : j) * 3 + ch];
        for (int64_t i = 0; i < n; i++) {
            p[i * stride + ch] = (uint8_t)((sum + w / 2) / w);
            int64_t add = i + r + 1, sub = i - r;
            sum += tmp[(add >= n ? n - 1 : add) * 3 + ch] - tmp[(sub < 0 ? 0 : sub) * 3 + ch];
        }
    }
}

lh_status lh_safety_blur(uint8_t *rgb, int64_t width, int64_t height, lh_error *err) {
    int64_t side = width > height ? width : height;
    int64_t r = side / 16 < 2 ? 2 : side / 16;
    int32_t *tmp = malloc((size_t)side * 3 * sizeof *tmp);
    if (!tmp) return lh_error_set(err, LH_ERR_NOMEM, "blur: out of memory");
    for (int pass = 0; pass < 3; pass++) {
        for (int64_t y = 0; y < height; y++) box_pass(rgb + y * width * 3, width, 3, r, tmp);
        for (int64_t x = 0; x < width; x++) box_pass(rgb + x * 3, height, width * 3, r, tmp);
    }
    free(tmp);
    return LH_OK;
}

/* ---- Reports ---- */

/* The indices of the k highest scores of res, highest first; returns how many. */
static int top_scores(const lh_safety_result *res, int k, int *idx) {
    int n = 0;
    for (int i = 0; i < res->n_scores; i++) {
        if (n == k && res->scores[i] <= res->scores[idx[k - 1]]) continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && res->scores[idx[at - 1]] < res->scores[i]) {
            idx[at] = idx[at - 1];
            at--;
        }
        idx[at] = i;
    }
    return n;
}

void lh_safety_report_line(char *out, size_t size, const lh_safety_report *r) {
    size_t len = 0;
    if (!size) return;
    out[0] = '\0';
#define PUT(...)                                                                     \
    do {                                                                             \
        if (len < size) {                                                            \
            int w_ = snprintf(out + len, size - len, __VA_ARGS__);                   \
            len = w_ < 0 ? size : len + (size_t)w_;                                  \
        }                                                                            \
    } while (0)
    if (r->n == 0) PUT("no checkers");
    for (int32_t i = 0; i < r->n; i++) {
        const lh_safety_entry *e = &r->entries[i];
        const lh_safety_result *x = &e->result;
        PUT("%s%s %s: %s%s", i ? "; " : "", e->checker, STAGE_NAMES[e->stage],
            lh_safety_action_name(x->action), x->flagged ? ", flagged" : "");
        int idx[3], k = top_scores(x, 3, idx);
        for (int j = 0; j < k; j++)
            PUT("%s%s %.2f", j ? ", " : " (", x->concepts[idx[j]], (double)x->scores[idx[j]]);
        if (k) PUT(")");
        if (x->reason[0]) PUT(": %s", x->reason);
    }
#undef PUT
    if (len >= size && size > 4) memcpy(out + size - 4, "...", 4);
}

char *lh_safety_report_json(const lh_safety_report *r) {
    json_t *root = json_object(), *list = json_array();
    int bad = !root || !list;
    bad = bad || json_object_set_new(root, "flagged", json_boolean(r->flagged));
    bad = bad || json_object_set_new(root, "action", json_string(lh_safety_action_name(r->action)));
    bad = bad || json_object_set(root, "checkers", list);
    for (int32_t i = 0; !bad && i < r->n; i++) {
        const lh_safety_entry *e = &r->entries[i];
        const lh_safety_result *x = &e->result;
        json_t *item = json_object(), *scores = json_object();
        bad = !item || !scores || json_array_append_new(list, item);
        if (bad) {
            json_decref(scores);
            break;
        }
        bad = json_object_set_new(item, "checker", json_string(e->checker)) ||
              json_object_set_new(item, "stage", json_string(STAGE_NAMES[e->stage])) ||
              json_object_set_new(item, "flagged", json_boolean(x->flagged)) ||
              json_object_set_new(item, "action", json_string(lh_safety_action_name(x->action)));
        for (int32_t k = 0; !bad && k < x->n_scores; k++)
            bad = json_object_set_new(scores, x->concepts[k], json_real((double)x->scores[k]));
        bad = json_object_set_new(item, "scores", scores) || bad;
        /* a plugin's reason that is not UTF-8 becomes null rather than lost JSON */
        json_t *reason = json_string(x->reason);
        bad = bad || json_object_set_new(item, "reason", reason ? reason : json_null());
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(list);
    json_decref(root);
    return text;
}
