/* `lorahost inspect FILE [--json]`: the metadata, tensors and totals of a
 * .safetensors file, and what kind of model or adapter it looks like. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "ldm_keys.h"
#include "lorahost/lorahost.h"

static const char USAGE[] =
    "usage: lorahost inspect FILE [--json]\n"
    "\n"
    "Validate a .safetensors file and show its metadata (sorted by key), its\n"
    "tensors (name, dtype, shape, bytes; by name), totals and what it looks like.\n"
    "\n"
    "  --json   print one JSON object instead of text\n"
    "  --help   show this help\n"
    "\n"
    "Exit status: 0 ok, 1 unreadable or invalid file, 2 usage error.\n";

/* ---- What a file looks like ----
 * The first rule, in table order, that some tensor key matches decides: the
 * key starts with `prefix` and contains `part`. Adapters come first because
 * their keys embed model keys; LyCORIS before kohya for the same reason. */

typedef struct lh_kind_rule {
    const char *kind;  /* stable id for --json */
    const char *label; /* for people */
    const char *prefix;
    const char *part;
} lh_kind_rule;

static const lh_kind_rule KIND_RULES[] = {
    {"lycoris_loha", "LyCORIS adapter (LoHa)", "", ".hada_w1_a"},
    {"lycoris_lokr", "LyCORIS adapter (LoKr)", "", ".lokr_w1"},
    {"lora_kohya", "LoRA adapter (kohya)", "lora_unet_", ".lora_down.weight"},
    {"lora_kohya", "LoRA adapter (kohya)", "lora_te_", ".lora_down.weight"},
    {"lora_kohya", "LoRA adapter (kohya)", "lora_te1_", ".lora_down.weight"},
    {"lora_kohya", "LoRA adapter (kohya)", "lora_te2_", ".lora_down.weight"},
    {"lora_peft", "LoRA adapter (PEFT)", "", ".lora_A.weight"},
    {"lora_diffusers_old", "LoRA adapter (old diffusers attention processors)", "",
     "_lora.down.weight"},
    {"sd_checkpoint", "single-file SD checkpoint", "model.diffusion_model.", ""},
    {"sd_checkpoint", "single-file SD checkpoint", "cond_stage_model.", ""},
    {"sd_checkpoint", "single-file SD checkpoint", "first_stage_model.", ""},
    {"diffusers_vae", "diffusers component: vae", "encoder.down_blocks.", ""},
    {"diffusers_vae", "diffusers component: vae", "decoder.", ""},
    {"diffusers_unet", "diffusers component: unet", "down_blocks.", ""},
    {"diffusers_text_encoder", "diffusers component: text_encoder", "text_model.", ""},
};
#define N_KIND_RULES (sizeof KIND_RULES / sizeof KIND_RULES[0])

static const lh_kind_rule UNKNOWN_KIND = {"unknown", "unknown", "", ""};

static const lh_kind_rule *looks_like(const lh_st_tensor *const *tensors, size_t n) {
    for (size_t r = 0; r < N_KIND_RULES; r++) {
        const lh_kind_rule *rule = &KIND_RULES[r];
        size_t plen = strlen(rule->prefix);
        for (size_t i = 0; i < n; i++)
            if (!strncmp(tensors[i]->name, rule->prefix, plen) &&
                strstr(tensors[i]->name + plen, rule->part))
                return rule;
    }
    return &UNKNOWN_KIND;
}

/* ---- Gathering ---- */

/* "SD 2.x (U-Net, VAE, text encoder), prediction v" or why lorahost refuses it. */
static void describe_checkpoint(char buf[LH_ERROR_MAX], const lh_st_file *f) {
    lh_ldm_info ldm;
    lh_error err = {0};
    if (lh_ldm_detect(f, &ldm, &err) != LH_OK) {
        snprintf(buf, LH_ERROR_MAX, "not usable: %s", err.msg);
        return;
    }
    static const char *const PART[LH_LDM_PART_COUNT] = {"U-Net", "VAE", "text encoder"};
    static const char *const PRED[LH_LDM_PRED_COUNT] = {
        "epsilon", "v", "not in the metadata (epsilon assumed)"};
    char parts[64] = "";
    for (int i = 0; i < LH_LDM_PART_COUNT; i++)
        if (ldm.has[i])
            snprintf(parts + strlen(parts), sizeof parts - strlen(parts), "%s%s",
                     parts[0] ? ", " : "", PART[i]);
    snprintf(buf, LH_ERROR_MAX, "%s (%s), prediction %s",
             ldm.arch == LH_LDM_ARCH_SD2 ? "SD 2.x" : "SD 1.x", parts, PRED[ldm.prediction]);
}

typedef struct lh_inspect {
    const lh_st_file *file;
    const lh_st_tensor **sorted; /* by name */
    size_t n;
    int64_t params, bytes;
    int64_t dtype_tensors[LH_DTYPE_COUNT], dtype_params[LH_DTYPE_COUNT],
        dtype_bytes[LH_DTYPE_COUNT];
    const lh_kind_rule *kind;
    const char *network_dim, *network_alpha; /* kohya metadata, or NULL */
    char checkpoint[LH_ERROR_MAX]; /* single-file SD checkpoint: lh_ldm_detect's verdict */
} lh_inspect;

static int cmp_names(const void *a, const void *b) {
    return strcmp((*(const lh_st_tensor *const *)a)->name, (*(const lh_st_tensor *const *)b)->name);
}

static int gather(lh_inspect *in, const lh_st_file *f) {
    memset(in, 0, sizeof *in);
    in->file = f;
    in->n = lh_st_count(f);
    in->sorted = calloc(in->n ? in->n : 1, sizeof *in->sorted);
    if (!in->sorted) return -1;
    for (size_t i = 0; i < in->n; i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        int64_t bytes = (int64_t)(t->end - t->begin);
        in->sorted[i] = t;
        in->params += t->numel;
        in->bytes += bytes;
        in->dtype_tensors[t->dtype]++;
        in->dtype_params[t->dtype] += t->numel;
        in->dtype_bytes[t->dtype] += bytes;
    }
    qsort(in->sorted, in->n, sizeof *in->sorted, cmp_names);
    in->kind = looks_like(in->sorted, in->n);
    in->network_dim = lh_st_meta_find(f, "ss_network_dim");
    in->network_alpha = lh_st_meta_find(f, "ss_network_alpha");
    if (!strcmp(in->kind->kind, "sd_checkpoint")) describe_checkpoint(in->checkpoint, f);
    return 0;
}

/* ---- Text output ---- */

/* Print s with control characters escaped, at most max bytes of it (cut at a
 * character boundary, then "..."); out may be NULL to only measure. Returns
 * the width in characters. */
static size_t put_text(FILE *out, const char *s, size_t max) {
    size_t width = 0, n = strlen(s);
    if (n > max) {
        while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80) max--;
        n = max;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            char esc[5] = {'\\', 'n'};
            if (c == '\t')
                esc[1] = 't';
            else if (c != '\n')
                snprintf(esc, sizeof esc, "\\x%02x", c);
            if (out) fputs(esc, out);
            width += strlen(esc);
        } else {
            if (out) fputc(c, out);
            width += (c & 0xc0) != 0x80;
        }
    }
    if (n < strlen(s)) {
        if (out) fputs("...", out);
        width += 3;
    }
    return width;
}

static void pad(size_t width, size_t target) {
    for (; width < target; width++) fputc(' ', stdout);
}

static void format_shape(char *buf, size_t size, const lh_st_tensor *t) {
    size_t len = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && len < size; d++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", d ? ", " : "",
                                (long long)t->shape[d]);
    if (len < size) snprintf(buf + len, size - len, "]");
}

#define META_VALUE_MAX 160
#define SHAPE_TEXT_MAX (LH_MAX_DIMS * 24 + 4)

static void print_text(const lh_inspect *in) {
    const lh_st_file *f = in->file;
    printf("file: ");
    put_text(stdout, lh_st_name(f), SIZE_MAX);
    printf("\nsize: %zu bytes (header %zu bytes)\n", lh_st_size(f), lh_st_header_size(f));

    size_t n_meta = lh_st_meta_count(f);
    printf("\nmetadata: %zu key%s\n", n_meta, n_meta == 1 ? "" : "s");
    for (size_t i = 0; i < n_meta; i++) {
        printf("  ");
        put_text(stdout, lh_st_meta_key(f, i), SIZE_MAX);
        printf(" = ");
        put_text(stdout, lh_st_meta_value(f, i), META_VALUE_MAX);
        printf("\n");
    }

    size_t name_w = 4, shape_w = 5;
    char shape[SHAPE_TEXT_MAX];
    for (size_t i = 0; i < in->n; i++) {
        size_t w = put_text(NULL, in->sorted[i]->name, SIZE_MAX);
        if (w > name_w) name_w = w;
        format_shape(shape, sizeof shape, in->sorted[i]);
        if (strlen(shape) > shape_w) shape_w = strlen(shape);
    }
    printf("\ntensors: %zu\n", in->n);
    if (in->n)
        printf("  %-*s  DTYPE    %-*s  %14s\n", (int)name_w, "NAME", (int)shape_w, "SHAPE",
               "BYTES");
    for (size_t i = 0; i < in->n; i++) {
        const lh_st_tensor *t = in->sorted[i];
        printf("  ");
        pad(put_text(stdout, t->name, SIZE_MAX), name_w);
        format_shape(shape, sizeof shape, t);
        printf("  %-7s  %-*s  %14llu\n", lh_dtype_name(t->dtype), (int)shape_w, shape,
               (unsigned long long)(t->end - t->begin));
    }

    printf("\ntotals: %zu tensors, %lld parameters, %lld bytes\n", in->n, (long long)in->params,
           (long long)in->bytes);
    for (int d = 0; d < LH_DTYPE_COUNT; d++)
        if (in->dtype_tensors[d])
            printf("  %-7s  %lld tensors, %lld parameters, %lld bytes\n",
                   lh_dtype_name((lh_dtype)d), (long long)in->dtype_tensors[d],
                   (long long)in->dtype_params[d], (long long)in->dtype_bytes[d]);

    printf("\nlooks like: %s", in->kind->label);
    if (in->checkpoint[0]) {
        printf(": ");
        put_text(stdout, in->checkpoint, SIZE_MAX);
    }
    if (in->network_dim) {
        printf(", network_dim ");
        put_text(stdout, in->network_dim, META_VALUE_MAX);
    }
    if (in->network_alpha) {
        printf(", network_alpha ");
        put_text(stdout, in->network_alpha, META_VALUE_MAX);
    }
    printf("\n");
}

/* ---- JSON output ---- */

/* A JSON string for a file name, which need not be UTF-8: bytes that make it
 * invalid become '?'. */
static json_t *path_string(const char *path) {
    json_t *s = json_string(path);
    if (s) return s;
    char *copy = strdup(path);
    if (!copy) return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    s = json_string(copy);
    free(copy);
    return s;
}

/* Build the --json object; NULL when out of memory. */
static json_t *to_json(const lh_inspect *in) {
    const lh_st_file *f = in->file;
    json_t *root = json_object(), *meta = json_object(), *tensors = json_array();
    json_t *totals = json_object(), *by_dtype = json_object(), *kind = json_object();
    int bad = !root || !meta || !tensors || !totals || !by_dtype || !kind;
    bad |= json_object_set_new(root, "file", path_string(lh_st_name(f)));
    bad |= json_object_set_new(root, "size", json_integer((json_int_t)lh_st_size(f)));
    bad |= json_object_set_new(root, "header_size", json_integer((json_int_t)lh_st_header_size(f)));
    bad |= json_object_set(root, "metadata", meta);
    for (size_t i = 0; i < lh_st_meta_count(f); i++)
        bad |= json_object_set_new(meta, lh_st_meta_key(f, i), json_string(lh_st_meta_value(f, i)));
    bad |= json_object_set(root, "tensors", tensors);
    for (size_t i = 0; i < in->n; i++) {
        const lh_st_tensor *t = in->sorted[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            bad |= json_array_append_new(shape, json_integer(t->shape[d]));
        bad |= json_array_append_new(
            tensors, json_pack("{s:s, s:s, s:o, s:I, s:[I, I]}", "name", t->name, "dtype",
                               lh_dtype_name(t->dtype), "shape", shape, "bytes",
                               (json_int_t)(t->end - t->begin), "data_offsets",
                               (json_int_t)t->begin, (json_int_t)t->end));
    }
    bad |= json_object_set(root, "totals", totals);
    bad |= json_object_set_new(totals, "tensors", json_integer((json_int_t)in->n));
    bad |= json_object_set_new(totals, "parameters", json_integer(in->params));
    bad |= json_object_set_new(totals, "bytes", json_integer(in->bytes));
    bad |= json_object_set(totals, "by_dtype", by_dtype);
    for (int d = 0; d < LH_DTYPE_COUNT; d++)
        if (in->dtype_tensors[d])
            bad |= json_object_set_new(by_dtype, lh_dtype_name((lh_dtype)d),
                                       json_pack("{s:I, s:I, s:I}", "tensors",
                                                 (json_int_t)in->dtype_tensors[d], "parameters",
                                                 (json_int_t)in->dtype_params[d], "bytes",
                                                 (json_int_t)in->dtype_bytes[d]));
    bad |= json_object_set(root, "looks_like", kind);
    bad |= json_object_set_new(kind, "kind", json_string(in->kind->kind));
    bad |= json_object_set_new(kind, "label", json_string(in->kind->label));
    if (in->checkpoint[0])
        bad |= json_object_set_new(kind, "checkpoint", json_string(in->checkpoint));
    if (in->network_dim)
        bad |= json_object_set_new(kind, "network_dim", json_string(in->network_dim));
    if (in->network_alpha)
        bad |= json_object_set_new(kind, "network_alpha", json_string(in->network_alpha));
    json_decref(meta);
    json_decref(tensors);
    json_decref(totals);
    json_decref(by_dtype);
    json_decref(kind);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* ---- The command ---- */

/* One line on stderr: control characters in msg would break it. */
static int fail(const char *msg) {
    fputs("lorahost inspect: ", stderr);
    for (const char *p = msg; *p; p++) fputc((unsigned char)*p < 0x20 ? '?' : *p, stderr);
    fputc('\n', stderr);
    return 1;
}

int lh_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "lorahost inspect: unknown option '%s'\n%s", argv[i], USAGE);
            return 2;
        } else if (path) {
            fprintf(stderr, "lorahost inspect: one FILE only ('%s' and '%s')\n%s", path, argv[i],
                    USAGE);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "lorahost inspect: no FILE given\n%s", USAGE);
        return 2;
    }

    lh_error err = {0};
    lh_st_file *f;
    if (lh_st_open(&f, path, &err) != LH_OK) return fail(err.msg);
    lh_inspect in;
    int rc = 0;
    if (gather(&in, f) != 0) {
        rc = fail("out of memory");
    } else if (json) {
        json_t *root = to_json(&in);
        if (!root || json_dumpf(root, stdout, JSON_COMPACT) != 0 || fputc('\n', stdout) == EOF)
            rc = fail(root ? "cannot write the JSON output" : "out of memory");
        json_decref(root);
    } else {
        print_text(&in);
    }
    free(in.sorted);
    lh_st_close(f);
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot write output: %s", strerror(errno));
        rc = fail(msg);
    }
    return rc;
}
