/* A well-behaved test safety checker ("test_words"): flags a prompt that
 * contains the configured word (default "forbidden"); images always pass. */
#include <lorahost/plugin.h>
#include <stdio.h>
#include <string.h>

typedef struct state {
    const lh_host_api *host;
    char word[64];
} state;

static const char *const KEYS[] = {"word", NULL};
static const char *const CONCEPTS[] = {"word"};

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
    state *s = host->calloc(1, sizeof *s);
    if (!s) return LH_ERR_NOMEM;
    s->host = host;
    const char *w = host->config_string(cfg, "word");
    snprintf(s->word, sizeof s->word, "%s", w ? w : "forbidden");
    *out = s;
    return LH_OK;
}

static void destroy(void *p) {
    state *s = p;
    if (s) s->host->free(s);
}

static lh_status check_prompt(void *p, const char *prompt, lh_safety_result *r, char *err,
                              size_t err_size) {
    state *s = p;
    memset(r, 0, sizeof *r);
    r->n_scores = 1;
    r->concepts[0] = CONCEPTS[0];
    r->flagged = strstr(prompt, s->word) != NULL;
    r->scores[0] = r->flagged ? 1.0f : 0.0f;
    r->action = r->flagged ? LH_SAFETY_REJECT : LH_SAFETY_PASS;
    if (r->flagged) snprintf(r->reason, sizeof r->reason, "prompt contains '%s'", s->word);
    return LH_OK;
}

static const lh_safety_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SAFETY, lh_safety_desc, "test_words", "0.1",
                           "test prompt filter", NULL),
    .config_keys = KEYS,
    .create = create,
    .destroy = destroy,
    .check_prompt = check_prompt,
};

LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
