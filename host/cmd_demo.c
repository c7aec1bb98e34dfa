/* lorahost demo [--model DIR] [--lora FILE] [--out DIR] [--steps N] [--seed S]
 *               [--prompts "P1|P2|..."] [--threads N]
 * The README's tour in one process: the embedded model (examples/model/
 * shapes-tiny) generates each prompt, the style adapter is hot-loaded and
 * the same prompts are generated again, the adapter is unloaded and the
 * first prompt generated once more (bit for bit the first image: no
 * drift). Writes each image and a contact sheet (prompts as rows, without /
 * with the style), and prints what each image shows (centre colour, stripe
 * score). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapter.h"
#include "commands.h"
#include "lorahost/adapters.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"
#include "png.h"
#include "shapes.h"

#define NAME "lorahost demo"
#define MAX_PROMPTS 8
#define ZOOM 4 /* contact sheet: each pixel as ZOOM x ZOOM */
#define GAP 4

static const char *const DEFAULT_PROMPTS[] = {
    "a red circle on a blue background", "a yellow star on a black background",
    "a green triangle on a white background", "a blue square on a yellow background"};

static void usage(FILE *out) {
    fprintf(out, "usage: " NAME " [--model DIR] [--lora FILE] [--out DIR] [--steps N] [--seed S]\n"
                 "                     [--prompts \"P1|P2|...\"] [--threads N]\n"
                 "Generate with the embedded model, hot-load its style adapter, generate again,\n"
                 "unload it; write the images and out/contact-sheet.png.\n"
                 "Defaults: --model examples/model/shapes-tiny --lora\n"
                 "examples/model/striped.safetensors --out out --steps 30 --seed 1.\n");
}

typedef struct demo {
    lh_model *m;
    lh_registry *reg;
    const char *out;
    int steps;
    uint64_t seed;
} demo;

/* txt2img of one prompt; *rgb (malloc'd) gets the image. */
static lh_status gen(demo *d, const char *prompt, uint8_t **rgb, int64_t *w, int64_t *h,
                     lh_error *err) {
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = prompt;
    p.steps = d->steps;
    p.width = p.height = lh_unet_get_config(d->m->unet)->in_channels == 3 ? 32 : 64;
    p.seed = d->seed;
    lh_gen_result r;
    lh_status st = lh_pipeline_txt2img(d->m, d->reg, &p, &r, err);
    if (st != LH_OK) return st;
    size_t n = (size_t)(r.width * r.height * 3);
    *rgb = malloc(n);
    if (!*rgb) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        st = err->code = LH_ERR_NOMEM;
    }
    else memcpy(*rgb, r.images, n);
    *w = r.width;
    *h = r.height;
    lh_gen_result_free(&r);
    return st;
}

static void describe(const char *tag, const char *prompt, const uint8_t *rgb, int64_t w,
                     int64_t h) {
    lh_shapes_stats s;
    lh_error err = {0};
    if (lh_shapes_measure(&s, rgb, w, h, &err) != LH_OK) return;
    printf("%-6s %-42s centre %-6s (%3.0f %3.0f %3.0f)  border %-6s  stripes %+.3f\n", tag,
           prompt, lh_shapes_color_name(lh_shapes_nearest_color(s.center_rgb)), s.center_rgb[0],
           s.center_rgb[1], s.center_rgb[2],
           lh_shapes_color_name(lh_shapes_nearest_color(s.border_rgb)), s.stripe_energy);
}

int lh_cmd_demo(int argc, char **argv) {
    const char *model = "examples/model/shapes-tiny", *lora = "examples/model/striped.safetensors";
    const char *prompts_arg = NULL;
    demo d = {.out = "out", .steps = 30, .seed = 1};
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (v && !strcmp(argv[i], "--model")) model = argv[++i];
        else if (v && !strcmp(argv[i], "--lora")) lora = argv[++i];
        else if (v && !strcmp(argv[i], "--out")) d.out = argv[++i];
        else if (v && !strcmp(argv[i], "--prompts")) prompts_arg = argv[++i];
        else if (v && !strcmp(argv[i], "--steps")) d.steps = atoi(argv[++i]);
        else if (v && !strcmp(argv[i], "--seed")) d.seed = strtoull(argv[++i], NULL, 10);
        else if (v && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, NAME ": %s: unknown option or missing value\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (d.steps < 1 || d.steps > 1000 || threads < 0) {
        fprintf(stderr, NAME ": --steps must be 1..1000 and --threads >= 0\n");
        return 2;
    }
    const char *prompts[MAX_PROMPTS];
    int n = 0;
    static char buf[4096];
    if (prompts_arg) {
        snprintf(buf, sizeof buf, "%s", prompts_arg);
        for (char *save = NULL, *t = strtok_r(buf, "|", &save); t && n < MAX_PROMPTS;
             t = strtok_r(NULL, "|", &save))
            if (*t) prompts[n++] = t;
    } else {
        for (; n < 4; n++) prompts[n] = DEFAULT_PROMPTS[n];
    }
    if (n == 0) {
        fprintf(stderr, NAME ": --prompts gave no prompt\n");
        return 2;
    }
    lh_error err = {0};
    char msg[LH_ERROR_MAX] = "";
    lh_backend *be = NULL;
    lh_adapter *a = NULL;
    uint8_t *img[2][MAX_PROMPTS] = {{0}}, *again = NULL;
    int64_t w = 0, h = 0;
    int rc = 1;
    if (mkdir(d.out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, NAME ": cannot create %s: %s\n", d.out, strerror(errno));
        return 1;
    }
    if (lh_backend_cpu_create(&be, threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", msg);
        return 1;
    }
    lh_status st = lh_registry_create(&d.reg, &err);
    if (st == LH_OK) st = lh_registry_scan(d.reg, NULL, 0, 1, 1, &err);
    if (st == LH_OK) st = lh_model_open(&d.m, be, model, &err);
    /* without, then the style hot-loaded, then without again */
    for (int k = 0; st == LH_OK && k < n; k++) st = gen(&d, prompts[k], &img[0][k], &w, &h, &err);
    lh_adapter_load_opts lo = {.policy = LH_ADAPTER_STRICT};
    if (st == LH_OK) st = lh_adapter_load(&a, d.m, d.reg, lora, &lo, &err);
    /* merged: the style's deltas written into the weights (full speed); the
     * unload below writes the kept base weights back bit for bit */
    lh_adapter_weights one;
    lh_adapter_weights_init(&one, 1.0);
    if (st == LH_OK) st = lh_adapter_set_ex(d.m, &a, &one, 1, LH_ADAPTER_MERGED, &err);
    for (int k = 0; st == LH_OK && k < n; k++) st = gen(&d, prompts[k], &img[1][k], &w, &h, &err);
    if (st == LH_OK) {
        lh_adapter_unload(a);
        a = NULL;
        st = gen(&d, prompts[0], &again, &w, &h, &err);
    }
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    /* the images, what they show, the contact sheet */
    int64_t cw = 2 * w * ZOOM + 3 * GAP, chh = n * h * ZOOM + (n + 1) * GAP;
    uint8_t *sheet = malloc((size_t)(cw * chh * 3));
    if (!sheet) goto done;
    memset(sheet, 255, (size_t)(cw * chh * 3));
    printf("model %s, style %s, %d steps, seed %llu\n", model, lora, d.steps,
           (unsigned long long)d.seed);
    for (int k = 0; k < n; k++)
        for (int s = 0; s < 2; s++) {
            char path[4300];
            snprintf(path, sizeof path, "%s/demo-%d-%s.png", d.out, k, s ? "style" : "base");
            if (lh_png_write(path, img[s][k], w, h, "parameters", prompts[k], &err) != LH_OK) {
                fprintf(stderr, NAME ": %s\n", err.msg);
                free(sheet);
                goto done;
            }
            describe(s ? "style" : "base", prompts[k], img[s][k], w, h);
            int64_t x0 = GAP + s * (w * ZOOM + GAP), y0 = GAP + k * (h * ZOOM + GAP);
            for (int64_t y = 0; y < h * ZOOM; y++)
                for (int64_t x = 0; x < w * ZOOM; x++)
                    memcpy(sheet + ((y0 + y) * cw + x0 + x) * 3,
                           img[s][k] + ((y / ZOOM) * w + x / ZOOM) * 3, 3);
        }
    char path[4300];
    snprintf(path, sizeof path, "%s/contact-sheet.png", d.out);
    st = lh_png_write(path, sheet, cw, chh, "parameters", "lorahost demo: without | with style",
                      &err);
    free(sheet);
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        goto done;
    }
    int same = !memcmp(again, img[0][0], (size_t)(w * h * 3));
    printf("after unloading the style, \"%s\" again: %s\n", prompts[0],
           same ? "bit-identical to the first image (no drift)" : "DIFFERENT (drift)");
    printf("wrote %s/demo-*.png and %s\n", d.out, path);
    rc = same ? 0 : 1;
done:
    for (int k = 0; k < MAX_PROMPTS; k++) free(img[0][k]), free(img[1][k]);
    free(again);
    lh_adapter_unload(a);
    lh_model_close(d.m);
    lh_registry_destroy(d.reg);
    lh_backend_destroy(be);
    return rc;
}
