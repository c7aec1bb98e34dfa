/* A test safety checker ("test_flag_all") that flags every image with the
 * configured action (key "action": pass, blur, black or reject; default
 * blur) and score 0.75 for concept "everything", and never looks at prompts.
 * Key "fail" = true makes check_images fail. */
#include <lorahost/plugin.h>
#include <stdio.h>
#include <string.h>

typedef struct state {
    const lh_host_api *host;
    int action, fail;
} state;

static const char *const KEYS[] = {"action", "fail", NULL};
static const char *const ACTIONS[] = {"pass", "blur", "black", "reject"};

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    const char *a = host->config_string(cfg, "action");
    int action = a ? -1 : LH_SAFETY_BLUR;
    for (int i = 0; a && i < LH_SAFETY_ACTION_COUNT; i++)
        if (!strcmp(a, ACTIONS[i])) action = i;
    if (action < 0) {
        snprintf(err, err_size, "action '%s': expected pass, blur, black or reject", a);
        return LH_ERR_CONFIG;
    }
    int fail = 0;
    lh_status st = host->config_bool(cfg, "fail", 0, &fail, err, err_size);
    if (st != LH_OK) return st;
    state *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    s->host = host;
    s->action = action;
    s->fail = fail;
    *out = s;
    return LH_OK;
}

static void destroy(void *p) {
    state *s = p;
    if (s) s->host->free(s);
}

static lh_status check_images(void *p, const lh_image *images, int32_t n, const char *prompt,
                              lh_safety_result *results, char *err, size_t err_size) {
    state *s = p;
    if (s->fail) {
        snprintf(err, err_size, "told to fail");
        return LH_ERR_PLUGIN;
    }
    for (int32_t i = 0; i < n; i++) {
        lh_safety_result *r = &results[i];
        memset(r, 0, sizeof *r);
        r->flagged = 1;
        r->action = s->action;
        r->n_scores = 1;
        r->concepts[0] = "everything";
        r->scores[0] = 0.75f;
        snprintf(r->reason, sizeof r->reason, "image %d of %dx%d flagged", (int)i,
                 (int)images[i].width, (int)images[i].height);
    }
    return LH_OK;
}

static const lh_safety_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SAFETY, lh_safety_desc, "test_flag_all", "0.1",
                           "test image checker: flags every image", NULL),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .check_images = check_images,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
