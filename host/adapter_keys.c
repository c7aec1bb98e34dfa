/* Adapter key parsing (see adapter_keys.h). */
#include "adapter_keys.h"

#include <stdio.h>
#include <string.h>

/* Key prefixes, longest first where one is a prefix of another. */
static const struct {
    const char *prefix;
    lh_layer_part part;
    int other_model; /* a part SD 1.x / 2.x models lack */
} KOHYA_PREFIXES[] = {
    {"lora_unet_", LH_LAYER_UNET, 0},
    {"lora_te1_", LH_LAYER_TE, 0},
    {"lora_te2_", LH_LAYER_TE, 1},
    {"lora_te_", LH_LAYER_TE, 0},
};

static const struct {
    const char *prefix;
    lh_layer_part part;
    int other_model;
} DOTTED_PREFIXES[] = {
    {"unet.", LH_LAYER_UNET, 0},
    {"text_encoder_2.", LH_LAYER_TE, 1},
    {"text_encoder.", LH_LAYER_TE, 0},
};

/* Old diffusers' per-projection names: U-Net attention and text-encoder spelling. */
static const struct {
    const char *token, *unet, *te;
} OLD_PROJ[] = {
    {"to_q_lora", "to_q", "q_proj"},
    {"to_k_lora", "to_k", "k_proj"},
    {"to_v_lora", "to_v", "v_proj"},
    {"to_out_lora", "to_out.0", "out_proj"},
};

/* Tokens that end a dotted module name and start the suffix, kohya spellings
 * (taken as they are) first. */
static const char *const KOHYA_HEADS[] = {
    "lora_down", "lora_up", "lora_mid", "alpha", "dora_scale", "diff", "diff_b",
};
static const char *const KOHYA_HEAD_PREFIXES[] = {"hada_", "lokr_"};

#define MAX_TOKENS 48

typedef struct tokens {
    char buf[512];
    char *t[MAX_TOKENS];
    int n;
} tokens;

static int split(tokens *tk, const char *s) {
    if (strlen(s) >= sizeof tk->buf) return -1;
    strcpy(tk->buf, s);
    tk->n = 0;
    for (char *p = tk->buf; tk->n < MAX_TOKENS;) {
        tk->t[tk->n++] = p;
        char *dot = strchr(p, '.');
        if (dot == p || !*p) return -1; /* an empty name part */
        if (!dot) return 0;
        *dot = '\0';
        p = dot + 1;
    }
    return -1;
}

static int is_kohya_head(const char *t) {
    for (size_t i = 0; i < sizeof KOHYA_HEADS / sizeof KOHYA_HEADS[0]; i++)
        if (!strcmp(t, KOHYA_HEADS[i])) return 1;
    for (size_t i = 0; i < sizeof KOHYA_HEAD_PREFIXES / sizeof KOHYA_HEAD_PREFIXES[0]; i++)
        if (!strncmp(t, KOHYA_HEAD_PREFIXES[i], strlen(KOHYA_HEAD_PREFIXES[i]))) return 1;
    return 0;
}

static int old_proj(const char *t) {
    for (size_t i = 0; i < sizeof OLD_PROJ / sizeof OLD_PROJ[0]; i++)
        if (!strcmp(t, OLD_PROJ[i].token)) return (int)i;
    return -1;
}

static int is_head(const char *t) {
    return is_kohya_head(t) || !strcmp(t, "lora_A") || !strcmp(t, "lora_B") ||
           !strcmp(t, "lora") || !strcmp(t, "lora_linear_layer") ||
           !strcmp(t, "lora_magnitude_vector") || !strcmp(t, "processor") || old_proj(t) >= 0;
}

/* "down"/"up" + "weight" -> "lora_down.weight"/"lora_up.weight". */
static int down_up(char *out, size_t size, char *const *t, int n) {
    if (n != 2 || strcmp(t[1], "weight")) return -1;
    if (!strcmp(t[0], "down")) return snprintf(out, size, "lora_down.weight") < 0 ? -1 : 0;
    if (!strcmp(t[0], "up")) return snprintf(out, size, "lora_up.weight") < 0 ? -1 : 0;
    return -1;
}

/* The suffix tokens t[0..n) (t[0] a head) in the normalised spelling; the
 * module may grow (old diffusers' processor names). -1: not understood. */
static int normalise(lh_akey *k, char *const *t, int n) {
    char *s = k->suffix;
    size_t ss = sizeof k->suffix;
    if (!strcmp(t[0], "lora_A") || !strcmp(t[0], "lora_B")) {
        /* lora_A.weight, lora_A.<adapter name>.weight */
        if (!(n == 2 || n == 3) || strcmp(t[n - 1], "weight")) return -1;
        k->family = LH_AKEY_PEFT;
        snprintf(s, ss, "%s", t[0][5] == 'A' ? "lora_down.weight" : "lora_up.weight");
        return 0;
    }
    if (!strcmp(t[0], "lora_magnitude_vector")) {
        /* lora_magnitude_vector[.<adapter>][.weight] */
        if (n > 3) return -1;
        k->family = LH_AKEY_PEFT;
        snprintf(s, ss, "lora_magnitude_vector");
        return 0;
    }
    if (!strcmp(t[0], "lora")) {
        k->family = LH_AKEY_PEFT;
        return down_up(s, ss, t + 1, n - 1);
    }
    if (!strcmp(t[0], "lora_linear_layer")) {
        k->family = LH_AKEY_OLD;
        return down_up(s, ss, t + 1, n - 1);
    }
    int skip = !strcmp(t[0], "processor");
    int p = n > skip ? old_proj(t[skip]) : -1;
    if (p >= 0) {
        const char *proj = k->part == LH_LAYER_TE ? OLD_PROJ[p].te : OLD_PROJ[p].unet;
        size_t len = strlen(k->module);
        if (len + 1 + strlen(proj) >= sizeof k->module) return -1;
        snprintf(k->module + len, sizeof k->module - len, ".%s", proj);
        k->family = LH_AKEY_OLD;
        return down_up(s, ss, t + skip + 1, n - skip - 1);
    }
    if (!is_kohya_head(t[0])) return -1;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(s + len, ss - len, "%s%s", i ? "." : "", t[i]);
        if (w < 0 || (size_t)w >= ss - len) return -1;
        len += (size_t)w;
    }
    return 0;
}

static lh_akey_status parse_kohya(lh_akey *k, const char *rest, lh_layer_part part) {
    const char *dot = strchr(rest, '.');
    if (!dot || dot == rest || (size_t)(dot - rest) >= sizeof k->module || !dot[1] ||
        strlen(dot + 1) >= sizeof k->suffix)
        return LH_AKEY_UNKNOWN;
    k->family = LH_AKEY_KOHYA;
    k->part = part;
    k->kohya_spelling = 1;
    memcpy(k->module, rest, (size_t)(dot - rest));
    k->module[dot - rest] = '\0';
    snprintf(k->suffix, sizeof k->suffix, "%s", dot + 1);
    return LH_AKEY_OK;
}

static lh_akey_status parse_dotted(lh_akey *k, const char *key) {
    static const char BASE[] = "base_model.model.";
    if (!strncmp(key, BASE, sizeof BASE - 1)) key += sizeof BASE - 1;
    int have_part = 0;
    k->part = LH_LAYER_UNET;
    k->family = LH_AKEY_KOHYA;
    for (size_t i = 0; i < sizeof DOTTED_PREFIXES / sizeof DOTTED_PREFIXES[0]; i++) {
        size_t len = strlen(DOTTED_PREFIXES[i].prefix);
        if (strncmp(key, DOTTED_PREFIXES[i].prefix, len)) continue;
        if (DOTTED_PREFIXES[i].other_model) return LH_AKEY_OTHER_MODEL;
        k->part = DOTTED_PREFIXES[i].part;
        k->family = LH_AKEY_PEFT;
        key += len;
        have_part = 1;
        break;
    }
    tokens tk;
    if (split(&tk, key) != 0) return LH_AKEY_UNKNOWN;
    int h = 0;
    while (h < tk.n && !is_head(tk.t[h])) h++;
    if (h == 0 || h == tk.n) return LH_AKEY_UNKNOWN;
    if (!have_part && !strcmp(tk.t[0], "text_model")) k->part = LH_LAYER_TE;
    /* the module, with text_model. in front for the text encoder */
    size_t len = 0;
    if (k->part == LH_LAYER_TE && strcmp(tk.t[0], "text_model"))
        len = (size_t)snprintf(k->module, sizeof k->module, "text_model");
    for (int i = 0; i < h; i++) {
        int w = snprintf(k->module + len, sizeof k->module - len, "%s%s", len ? "." : "", tk.t[i]);
        if (w < 0 || (size_t)w >= sizeof k->module - len) return LH_AKEY_UNKNOWN;
        len += (size_t)w;
    }
    return normalise(k, tk.t + h, tk.n - h) == 0 ? LH_AKEY_OK : LH_AKEY_UNKNOWN;
}

lh_akey_status lh_akey_parse(lh_akey *out, const char *key) {
    memset(out, 0, sizeof *out);
    if (!key || !*key) return LH_AKEY_UNKNOWN;
    for (size_t i = 0; i < sizeof KOHYA_PREFIXES / sizeof KOHYA_PREFIXES[0]; i++) {
        size_t len = strlen(KOHYA_PREFIXES[i].prefix);
        if (strncmp(key, KOHYA_PREFIXES[i].prefix, len)) continue;
        if (KOHYA_PREFIXES[i].other_model) return LH_AKEY_OTHER_MODEL;
        return parse_kohya(out, key + len, KOHYA_PREFIXES[i].part);
    }
    return parse_dotted(out, key);
}

const char *lh_akey_family_name(lh_akey_family f) {
    static const char *const NAMES[LH_AKEY_FAMILY_COUNT] = {"kohya", "peft", "old diffusers"};
    return (unsigned)f < LH_AKEY_FAMILY_COUNT ? NAMES[f] : "unknown";
}

int64_t lh_akey_layer(const lh_layers *t, const lh_akey *k) {
    return k->kohya_spelling ? lh_layers_find_kohya(t, k->part, k->module)
                             : lh_layers_find(t, k->part, k->module);
}
