/* `lorahost adapters --model PATH FILE...`: load adapter files against a
 * model and report what matched, without generating anything: the key
 * families, where alphas came from, layers per part and kind, and every key
 * that matched nothing with the reason (docs/adapters.md). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "log.h"
#include "lorahost/lorahost.h"
#include "model.h"

#define NAME "lorahost adapters"

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost adapters --model PATH [options] FILE...\n"
            "\n"
            "Loads each adapter file (LoRA, LoCon, LoHa, LoKr, DoRA, full; kohya, LyCORIS,\n"
            "PEFT/diffusers or old diffusers keys) for the model and reports what matched.\n"
            "Exit status 1 if a file cannot be loaded (or, with --strict, has unmatched keys).\n"
            "\n"
            "  --model PATH        diffusers model directory or single-file checkpoint\n"
            "  --tokenizer DIR     single file: its tokenizer (default: the shipped one)\n"
            "  --model-config DIR  single file: a diffusers directory with its configs\n"
            "  --strict            unmatched keys fail the file ([adapters] policy)\n"
            "  --json              one JSON object per file\n"
            "  --plugin-dir DIR    also load adapter-kind plugins from DIR\n");
}

static void print_text(const lh_adapter *a) {
    const lh_adapter_report *r = lh_adapter_get_report(a);
    printf("%s: %s keys; alpha: %s\n", lh_adapter_path(a), r->format, r->alpha_source);
    printf("  layers: %d U-Net, %d text encoder\n", (int)r->layers_unet, (int)r->layers_te);
    printf("  kinds:");
    for (int i = 0; i < r->n_kinds; i++)
        printf("%s %s/%s %d", i ? "," : "", r->kinds[i].kind, r->kinds[i].form,
               (int)r->kinds[i].layers);
    printf("\n  tensors: %zu of %zu used, %zu unmatched\n", r->n_used, r->n_keys, r->n_unmatched);
    for (size_t i = 0; i < r->n_unmatched; i++) printf("    %s\n", r->unmatched[i]);
}

static void print_json(const lh_adapter *a, const char *path, const char *error) {
    json_t *o = json_pack("{s:s}", "file", path);
    if (!o) return;
    if (error) {
        json_object_set_new(o, "error", json_string(error));
    } else {
        const lh_adapter_report *r = lh_adapter_get_report(a);
        json_t *kinds = json_array(), *unmatched = json_array();
        for (int i = 0; i < r->n_kinds; i++)
            json_array_append_new(kinds, json_pack("{s:s, s:s, s:i}", "kind", r->kinds[i].kind,
                                                   "form", r->kinds[i].form, "layers",
                                                   (json_int_t)r->kinds[i].layers));
        for (size_t i = 0; i < r->n_unmatched; i++)
            json_array_append_new(unmatched, json_string(r->unmatched[i]));
        json_object_set_new(o, "format", json_string(r->format));
        json_object_set_new(o, "alpha_source", json_string(r->alpha_source));
        json_object_set_new(o, "layers_unet", json_integer(r->layers_unet));
        json_object_set_new(o, "layers_text_encoder", json_integer(r->layers_te));
        json_object_set_new(o, "tensors", json_integer((json_int_t)r->n_keys));
        json_object_set_new(o, "tensors_used", json_integer((json_int_t)r->n_used));
        json_object_set_new(o, "kinds", kinds);
        json_object_set_new(o, "unmatched", unmatched);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) printf("%s\n", s);
    free(s);
    json_decref(o);
}

typedef struct opts {
    const char *model, *tokenizer, *model_config, *plugin_dir;
    int strict, json;
    int first_file; /* argv index of the first FILE */
} opts;

static int parse(opts *o, int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(a, "--strict")) {
            o->strict = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (v && !strcmp(a, "--model")) {
            o->model = argv[++i];
        } else if (v && !strcmp(a, "--tokenizer")) {
            o->tokenizer = argv[++i];
        } else if (v && !strcmp(a, "--model-config")) {
            o->model_config = argv[++i];
        } else if (v && !strcmp(a, "--plugin-dir")) {
            o->plugin_dir = argv[++i];
        } else {
            fprintf(stderr, NAME ": unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!o->model || i == argc) {
        fprintf(stderr, NAME ": needs --model PATH and at least one adapter FILE\n");
        usage(stderr);
        return 2;
    }
    o->first_file = i;
    return 0;
}

static lh_status open_model(lh_model **m, lh_backend *be, const opts *o, lh_error *err) {
    struct stat sb;
    if (stat(o->model, &sb) == 0 && S_ISREG(sb.st_mode)) {
        lh_model_opts mo = {o->tokenizer, o->model_config};
        return lh_model_open_single_file(m, be, o->model, &mo, err);
    }
    return lh_model_open(m, be, o->model, err);
}

int lh_cmd_adapters(int argc, char **argv) {
    opts o = {0};
    int rc = parse(&o, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    lh_error err = {0};
    char msg[LH_ERROR_MAX] = "";
    lh_backend *be = NULL;
    lh_registry *reg = NULL;
    lh_model *m = NULL;
    const char *dirs[1] = {o.plugin_dir};
    rc = 1;
    if (lh_backend_cpu_create(&be, 0, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, NAME ": cpu backend: %s\n", msg);
        goto done;
    }
    if (lh_registry_create(&reg, &err) != LH_OK ||
        lh_registry_scan(reg, dirs, o.plugin_dir ? 1 : 0, 1, 1, &err) != LH_OK ||
        open_model(&m, be, &o, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    rc = 0;
    lh_log_set_level(LH_LOG_ERROR); /* the report lists the unmatched keys itself */
    lh_adapter_load_opts lo = {.policy = o.strict ? LH_ADAPTER_STRICT : LH_ADAPTER_WARN};
    for (int i = o.first_file; i < argc; i++) {
        lh_adapter *a = NULL;
        lh_status st = lh_adapter_load(&a, m, reg, argv[i], &lo, &err);
        if (o.json) print_json(a, argv[i], st == LH_OK ? NULL : err.msg);
        else if (st == LH_OK) print_text(a);
        if (st != LH_OK) {
            if (!o.json) fprintf(stderr, NAME ": %s\n", err.msg);
            rc = 1;
        }
        lh_adapter_unload(a);
    }
done:
    lh_model_close(m);
    lh_registry_destroy(reg);
    if (be) lh_backend_destroy(be);
    return rc;
}
