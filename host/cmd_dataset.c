/* lorahost dataset: build and inspect HDF5 training datasets (docs/datasets.md).
 *   lorahost dataset import DIR OUT.h5 --resolution N [--center-crop|--random-crop] [--buckets] [--skip-bad]
 *   lorahost dataset info FILE [--json]
 *   lorahost dataset cache FILE --model PATH [--threads N]
 *   lorahost dataset shapes OUT_DIR --count N [--size 32] [--style plain|striped] [--seed S] */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "../datasets/dataset.h"
#include "../datasets/shapes.h"
#include "model.h"

#define NAME "lorahost dataset"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: lorahost dataset import DIR OUT.h5 --resolution N [--center-crop | --random-crop]\n"
            "                               [--buckets] [--skip-bad] [--quiet]\n"
            "       lorahost dataset info FILE [--json]\n"
            "       lorahost dataset cache FILE --model PATH [--threads N] [--quiet]\n"
            "       lorahost dataset shapes OUT_DIR --count N [--size 32] [--style plain|striped]\n"
            "                               [--seed S]\n"
            "\n"
            "import  every .png/.jpg/.jpeg in DIR with its same-name .txt caption: short side\n"
            "        resized to N (bilinear), then center-cropped to NxN (default), or stored\n"
            "        uncropped for the trainer to crop randomly (--random-crop), or resized and\n"
            "        cropped to the nearest aspect-ratio bucket (--buckets, sizes multiple of 64,\n"
            "        area about N*N). --skip-bad skips images that fail to decode.\n"
            "info    layout version, item count, crop, image sizes, caches, caption lengths.\n"
            "cache   add VAE latents and CLIP text embeddings made with the model PATH.\n"
            "shapes  write N synthetic images OUT_DIR/NNNNNN.png with captions NNNNNN.txt\n"
            "        (\"a red circle on a blue background\"); the same seed gives the same scenes\n"
            "        in either style, byte for byte on every machine.\n");
}

typedef struct progress {
    int tty, quiet;
    const char *what;
    double t0;
} progress;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void on_progress(void *user, int64_t done, int64_t total, const char *name) {
    progress *p = user;
    if (p->quiet) return;
    double el = now_s() - p->t0;
    if (p->tty) {
        int width = 30, fill = total ? (int)(width * done / total) : width;
        fprintf(stderr, "\r%s [%.*s%*s] %lld/%lld %.1fs", p->what, fill,
                "##############################", width - fill, "", (long long)done,
                (long long)total, el);
        if (done == total) fputc('\n', stderr);
    } else {
        fprintf(stderr, NAME ": %s %lld/%lld %s (%.1fs)\n", p->what, (long long)done, (long long)total,
                name && name[0] ? name : "", el);
    }
    fflush(stderr);
}

/* ---- import ---- */

static int cmd_import(int argc, char **argv) {
    const char *pos[2] = {0};
    int npos = 0, quiet = 0, center = 0, random = 0, buckets = 0;
    lh_dataset_import_opts o = {.resolution = 0, .crop = LH_DATASET_CROP_CENTER};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--resolution") && i + 1 < argc) {
            char *end;
            o.resolution = strtoll(argv[++i], &end, 10);
            if (*end || end == argv[i]) {
                fprintf(stderr, NAME ": --resolution: not a number: %s\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--center-crop")) center = 1;
        else if (!strcmp(a, "--random-crop")) random = 1;
        else if (!strcmp(a, "--buckets")) buckets = 1;
        else if (!strcmp(a, "--skip-bad")) o.skip_bad = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, NAME " import: unknown option %s\n", a);
            return 2;
        } else if (npos < 2) pos[npos++] = a;
        else {
            fprintf(stderr, NAME " import: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (npos != 2 || o.resolution == 0) {
        fprintf(stderr, NAME " import: need DIR, OUT.h5 and --resolution N\n");
        return 2;
    }
    if (center + random + buckets > 1) {
        fprintf(stderr, NAME " import: --center-crop, --random-crop and --buckets exclude each other\n");
        return 2;
    }
    o.crop = random ? LH_DATASET_CROP_RANDOM : buckets ? LH_DATASET_CROP_BUCKET : LH_DATASET_CROP_CENTER;
    progress pr = {isatty(STDERR_FILENO), quiet, "import", now_s()};
    o.progress = on_progress, o.user = &pr;
    lh_error err = {0};
    int64_t n = 0, skipped = 0, nocap = 0;
    if (lh_dataset_import(pos[0], pos[1], &o, &n, &skipped, &nocap, &err) != LH_OK) {
        fprintf(stderr, NAME " import: %s\n", err.msg);
        return 1;
    }
    printf("%s: %lld images (%lld skipped, %lld without a caption)\n", pos[1], (long long)n,
           (long long)skipped, (long long)nocap);
    return 0;
}

/* ---- info ---- */

typedef struct size_count {
    int64_t w, h, n;
} size_count;

static int by_count(const void *a, const void *b) {
    const size_count *x = a, *y = b;
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    return x->w != y->w ? (x->w < y->w ? -1 : 1) : (x->h < y->h ? -1 : x->h > y->h);
}

static int utf8_chars(const char *s) {
    int n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, NAME " info: unknown option %s\n", argv[i]);
            return 2;
        } else if (!path) path = argv[i];
        else {
            fprintf(stderr, NAME " info: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, NAME " info: need FILE\n");
        return 2;
    }
    lh_error err = {0};
    lh_dataset *d = NULL;
    if (lh_dataset_open(&d, path, &err) != LH_OK) {
        fprintf(stderr, NAME " info: %s\n", err.msg);
        return 1;
    }
    int64_t n = lh_dataset_count(d);
    enum { MAX_SIZES = 4096 };
    size_count *sizes = calloc(MAX_SIZES, sizeof *sizes);
    int ns = 0, other = 0;
    int64_t cmin = -1, cmax = 0, csum = 0, empty = 0;
    int rc = 0;
    for (int64_t i = 0; i < n && sizes; i++) {
        int64_t w, h;
        lh_dataset_item_size(d, i, &w, &h);
        int k = 0;
        while (k < ns && (sizes[k].w != w || sizes[k].h != h)) k++;
        if (k == ns && ns < MAX_SIZES) sizes[ns++] = (size_count){w, h, 0};
        if (k < ns) sizes[k].n++;
        else other++;
        lh_dataset_item it;
        if (lh_dataset_read(d, i, 0, &it, &err) != LH_OK) {
            fprintf(stderr, NAME " info: %s\n", err.msg);
            rc = 1;
            break;
        }
        int64_t c = utf8_chars(it.caption);
        if (cmin < 0 || c < cmin) cmin = c;
        if (c > cmax) cmax = c;
        csum += c, empty += c == 0;
        lh_dataset_item_free(&it);
    }
    if (!sizes) rc = 1;
    if (rc) goto done;
    qsort(sizes, (size_t)ns, sizeof *sizes, by_count);
    double cmean = n ? (double)csum / (double)n : 0;
    const char *crop = lh_dataset_crop(d);
    int64_t tt = 0, td = 0;
    lh_dataset_text_shape(d, &tt, &td);
    if (json) {
        json_t *o = json_object(), *arr = json_array();
        json_object_set_new(o, "file", json_string(path));
        json_object_set_new(o, "version", json_integer(lh_dataset_version(d)));
        json_object_set_new(o, "count", json_integer(n));
        json_object_set_new(o, "resolution", json_integer(lh_dataset_resolution(d)));
        json_object_set_new(o, "crop", json_string(crop));
        json_object_set_new(o, "buckets", json_boolean(!strcmp(crop, "bucket")));
        for (int k = 0; k < ns; k++) {
            json_t *e = json_object();
            json_object_set_new(e, "width", json_integer(sizes[k].w));
            json_object_set_new(e, "height", json_integer(sizes[k].h));
            json_object_set_new(e, "count", json_integer(sizes[k].n));
            json_array_append_new(arr, e);
        }
        json_object_set_new(o, "sizes", arr);
        json_t *cap = json_object();
        json_object_set_new(cap, "min_chars", json_integer(cmin < 0 ? 0 : cmin));
        json_object_set_new(cap, "mean_chars", json_real(cmean));
        json_object_set_new(cap, "max_chars", json_integer(cmax));
        json_object_set_new(cap, "empty", json_integer(empty));
        json_object_set_new(o, "captions", cap);
        json_t *lat = json_null(), *txt = json_null();
        if (lh_dataset_has_latents(d)) {
            lat = json_object();
            json_object_set_new(lat, "model", json_string(lh_dataset_cache_model(d)));
            json_object_set_new(lat, "scaling_factor", json_real(lh_dataset_cache_scaling_factor(d)));
            json_object_set_new(lat, "crop", json_string(lh_dataset_latent_crop(d)));
        }
        if (lh_dataset_has_text(d)) {
            txt = json_object();
            json_object_set_new(txt, "model", json_string(lh_dataset_text_model(d)));
            json_object_set_new(txt, "tokens", json_integer(tt));
            json_object_set_new(txt, "dim", json_integer(td));
        }
        json_object_set_new(o, "latents", lat);
        json_object_set_new(o, "text", txt);
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s) puts(s);
        free(s);
        json_decref(o);
    } else {
        printf("file: %s\n", path);
        printf("layout version: %lld\n", (long long)lh_dataset_version(d));
        printf("items: %lld\n", (long long)n);
        printf("resolution: %lld\n", (long long)lh_dataset_resolution(d));
        printf("crop: %s%s\n", crop,
               !strcmp(crop, "random") ? " (stored resized, uncropped; the trainer crops)" : "");
        printf("buckets: %s\n", !strcmp(crop, "bucket") ? "yes" : "no");
        printf("sizes (%d):", ns);
        for (int k = 0; k < ns && k < 20; k++)
            printf(" %lldx%lld (%lld)", (long long)sizes[k].w, (long long)sizes[k].h, (long long)sizes[k].n);
        if (ns > 20 || other) printf(" ...");
        printf("\n");
        printf("captions: %lld to %lld characters, mean %.1f, %lld empty\n", (long long)(cmin < 0 ? 0 : cmin),
               (long long)cmax, cmean, (long long)empty);
        if (lh_dataset_has_latents(d))
            printf("latents: cached from %s (scaling factor %g%s)\n", lh_dataset_cache_model(d),
                   (double)lh_dataset_cache_scaling_factor(d),
                   !strcmp(lh_dataset_latent_crop(d), "center") ? ", of the center crop" : "");
        else
            printf("latents: not cached\n");
        if (lh_dataset_has_text(d))
            printf("text embeddings: cached from %s ([%lld, %lld] per item)\n", lh_dataset_text_model(d),
                   (long long)tt, (long long)td);
        else
            printf("text embeddings: not cached\n");
    }
done:
    free(sizes);
    lh_dataset_close(d);
    return rc;
}

/* ---- cache ---- */

static int cmd_cache(int argc, char **argv) {
    const char *path = NULL, *model = NULL;
    int quiet = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, NAME " cache: unknown option %s\n", argv[i]);
            return 2;
        } else if (!path) path = argv[i];
        else {
            fprintf(stderr, NAME " cache: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!path || !model) {
        fprintf(stderr, NAME " cache: need FILE and --model PATH\n");
        return 2;
    }
    lh_error err = {0};
    char msg[LH_ERROR_MAX];
    lh_backend *be = NULL;
    lh_model *m = NULL;
    if (lh_backend_cpu_create(&be, threads, msg, sizeof msg) != LH_OK) {
        fprintf(stderr, NAME " cache: cpu backend: %s\n", msg);
        return 1;
    }
    int rc = 0;
    if (lh_model_open(&m, be, model, &err) != LH_OK) {
        fprintf(stderr, NAME " cache: %s\n", err.msg);
        rc = 1;
    } else {
        progress pr = {isatty(STDERR_FILENO), quiet, "cache", now_s()};
        if (lh_dataset_cache(path, m, model, on_progress, &pr, &err) != LH_OK) {
            fprintf(stderr, NAME " cache: %s\n", err.msg);
            rc = 1;
        } else {
            printf("%s: latents and text embeddings cached from %s\n", path, model);
        }
    }
    if (m) lh_model_close(m);
    lh_backend_destroy(be);
    return rc;
}

/* ---- shapes ---- */

static int parse_i64(const char *opt, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || end == s || errno || v < lo || v > hi) {
        fprintf(stderr, NAME " shapes: %s: want an integer in [%lld, %lld], got %s\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int cmd_shapes(int argc, char **argv) {
    const char *dir = NULL;
    long long count = -1, size = 32, seed = 0;
    int style = LH_SHAPES_STYLE_PLAIN;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--count") && i + 1 < argc) {
            if (parse_i64(a, argv[++i], 1, LH_SHAPES_MAX_COUNT, &count)) return 2;
        } else if (!strcmp(a, "--size") && i + 1 < argc) {
            if (parse_i64(a, argv[++i], LH_SHAPES_MIN_SIZE, LH_SHAPES_MAX_SIZE, &size)) return 2;
        } else if (!strcmp(a, "--seed") && i + 1 < argc) {
            if (parse_i64(a, argv[++i], 0, INT64_MAX, &seed)) return 2;
        } else if (!strcmp(a, "--style") && i + 1 < argc) {
            style = lh_shapes_style_parse(argv[++i]);
            if (style < 0) {
                fprintf(stderr, NAME " shapes: --style: plain or striped, got %s\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, NAME " shapes: unknown option %s\n", a);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, NAME " shapes: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (!dir || count < 0) {
        fprintf(stderr, NAME " shapes: need OUT_DIR and --count N\n");
        return 2;
    }
    lh_error err = {0};
    if (lh_shapes_generate(dir, count, size, (lh_shapes_style)style, (uint64_t)seed, &err) != LH_OK) {
        fprintf(stderr, NAME " shapes: %s\n", err.msg);
        return 1;
    }
    printf("%s: %lld %s images, %lldx%lld, seed %lld\n", dir, count,
           lh_shapes_style_name((lh_shapes_style)style), size, size, seed);
    return 0;
}

int lh_cmd_dataset(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "import")) return cmd_import(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[1], "cache")) return cmd_cache(argc - 1, argv + 1);
    if (!strcmp(argv[1], "shapes")) return cmd_shapes(argc - 1, argv + 1);
    fprintf(stderr, NAME ": unknown subcommand %s (import, info, cache, shapes)\n", argv[1]);
    return 2;
}
