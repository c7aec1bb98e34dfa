/* lorahost model: make and describe model directories.
 *   lorahost model init --unet-config U.json --text-encoder-config T.json [--tokenizer DIR]
 *                       [--scheduler-config S.json] [--seed N] [--dtype f32|f16] OUT_DIR
 *   lorahost model info PATH
 *   lorahost model convert --dtype f16|bf16|f32 DIR */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "model.h"
#include "lorahost/safetensors.h"
#include "model_init.h"

#define NAME "lorahost model"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: lorahost model init --unet-config U.json --text-encoder-config T.json\n"
            "                           [--tokenizer DIR] [--scheduler-config S.json] [--seed N]\n"
            "                           [--dtype f32|f16] OUT_DIR\n"
            "       lorahost model info PATH\n"
            "       lorahost model convert --dtype f16|bf16|f32 DIR\n"
            "\n"
            "init  write a new pixel-space model directory (no VAE: the U-Net denoises RGB,\n"
            "      in_channels and out_channels 3) with randomly initialised weights, as\n"
            "      PyTorch initialises its modules (Linear/Conv2d U(+-1/sqrt(fan_in)), norms 1\n"
            "      and 0, embeddings N(0, 1)); the same seed (default 0) gives the same files.\n"
            "      Tokenizer: the CLIP BPE vocabulary lorahost ships unless --tokenizer;\n"
            "      scheduler: DDIM over DDPM's linear betas 0.0001..0.02, v-prediction, unless\n"
            "      --scheduler-config. examples/model/ has a tiny 32x32 configuration.\n"
            "info  what lorahost reads off a model directory or single file's configs.\n"
            "convert  rewrite the floating-point weights of DIR's unet/, text_encoder/ and vae/\n"
            "      in another precision, in place (each file atomically; metadata and other\n"
            "      tensors kept).\n");
}

static int cmd_init(int argc, char **argv) {
    lh_model_init_opts o = {0};
    o.dtype = LH_DTYPE_F32;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (a[0] == '-' && a[1] == '-' && !v) {
            fprintf(stderr, NAME " init: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--unet-config")) {
            o.unet_config = argv[++i];
        } else if (!strcmp(a, "--text-encoder-config")) {
            o.text_encoder_config = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            o.tokenizer = argv[++i];
        } else if (!strcmp(a, "--scheduler-config")) {
            o.scheduler_config = argv[++i];
        } else if (!strcmp(a, "--seed")) {
            char *end;
            o.seed = strtoull(v, &end, 10);
            if (!*v || *end || v[0] == '-') {
                fprintf(stderr, NAME " init: --seed takes a non-negative integer, not '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32") || !strcmp(v, "fp32")) o.dtype = LH_DTYPE_F32;
            else if (!strcmp(v, "f16") || !strcmp(v, "fp16")) o.dtype = LH_DTYPE_F16;
            else {
                fprintf(stderr, NAME " init: --dtype takes f32 or f16, not '%s'\n", v);
                return 2;
            }
            i++;
        } else if (a[0] == '-') {
            fprintf(stderr, NAME " init: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, NAME " init: one output directory, not '%s' and '%s'\n", out, a);
            return 2;
        }
    }
    if (!out || !o.unet_config || !o.text_encoder_config) {
        fprintf(stderr, NAME " init: %s is required\n",
                !o.unet_config ? "--unet-config" : !o.text_encoder_config ? "--text-encoder-config"
                                                                          : "OUT_DIR");
        usage(stderr);
        return 2;
    }
    lh_error err = {0};
    if (lh_model_init(out, &o, &err) != LH_OK) {
        fprintf(stderr, NAME " init: %s\n", err.msg);
        return 1;
    }
    printf("%s: pixel-space model, seed %llu, %s weights\n", out, (unsigned long long)o.seed,
           o.dtype == LH_DTYPE_F16 ? "F16" : "F32");
    return 0;
}

static int cmd_info(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            usage(stdout);
            return 0;
        }
        usage(stderr);
        return 2;
    }
    lh_model_info info;
    lh_error err = {0};
    if (lh_model_detect(&info, argv[1], &err) != LH_OK) {
        fprintf(stderr, NAME " info: %s\n", err.msg);
        return 1;
    }
    printf("model:           %s\n", info.path);
    printf("architecture:    %s%s\n", lh_model_arch_name(info.arch),
           info.pixel_space ? " (pixel space)" : "");
    printf("layout:          %s\n", info.single_file ? "single file" : "diffusers directory");
    printf("VAE:             %s\n", info.pixel_space ? "none (the U-Net denoises RGB)" : "yes");
    printf("cross attention: %lld\n", (long long)info.cross_attention_dim);
    printf("scheduler:       %s\n", info.scheduler_class[0] ? info.scheduler_class : "-");
    printf("prediction:      %s%s\n", info.prediction_type,
           info.prediction_guessed ? " (assumed)" : "");
    printf("tokenizer:       %s (pad token %s)\n", info.tokenizer, info.pad_token);
    return 0;
}

/* Rewrite one safetensors file with its float tensors in `dtype`. */
static int convert_file(const char *path, lh_dtype dtype) {
    lh_error err = {0};
    lh_st_file *f = NULL;
    if (lh_st_open(&f, path, &err) != LH_OK) {
        fprintf(stderr, NAME " convert: %s\n", err.msg);
        return 1;
    }
    size_t n = lh_st_count(f);
    void **bufs = calloc(n + 1, sizeof *bufs);
    lh_st_writer *w = NULL;
    lh_status st = bufs ? lh_st_writer_create(&w, &err) : LH_ERR_NOMEM;
    for (size_t i = 0; st == LH_OK && i < n; i++) {
        const lh_st_tensor *t = lh_st_get(f, i);
        int is_float = t->dtype == LH_DTYPE_F32 || t->dtype == LH_DTYPE_F16 ||
                       t->dtype == LH_DTYPE_BF16 || t->dtype == LH_DTYPE_F64;
        lh_dtype to = is_float ? dtype : t->dtype;
        size_t bytes = (size_t)t->numel * lh_dtype_size(to);
        if (!(bufs[i] = malloc(bytes ? bytes : 1))) {
            st = LH_ERR_NOMEM;
            break;
        }
        st = lh_convert(bufs[i], to, t->data, t->dtype, (size_t)t->numel);
        if (st != LH_OK)
            snprintf(err.msg, sizeof err.msg, "%s: tensor %s cannot be converted", path, t->name);
        if (st == LH_OK) st = lh_st_writer_add(w, t->name, to, t->ndim, t->shape, bufs[i], &err);
    }
    for (size_t i = 0; st == LH_OK && i < lh_st_meta_count(f); i++)
        st = lh_st_writer_add_meta(w, lh_st_meta_key(f, i), lh_st_meta_value(f, i), &err);
    if (st == LH_OK) st = lh_st_save(w, path, &err);
    for (size_t i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    lh_st_writer_destroy(w);
    lh_st_close(f);
    if (st != LH_OK) {
        fprintf(stderr, NAME " convert: %s\n", err.msg[0] ? err.msg : "out of memory");
        return 1;
    }
    printf("%s: %s\n", path, lh_dtype_name(dtype));
    return 0;
}

static int cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc) name = argv[++i];
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, NAME " convert: %s: unknown option or extra argument\n", argv[i]);
            return 2;
        }
    }
    lh_dtype dtype = LH_DTYPE_F64;
    char up[16] = "";
    for (size_t i = 0; name && name[i] && i < sizeof up - 1; i++)
        up[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    if (!dir || !name || lh_dtype_from_name(&dtype, up) != 0 ||
        (dtype != LH_DTYPE_F16 && dtype != LH_DTYPE_BF16 && dtype != LH_DTYPE_F32)) {
        fprintf(stderr, "usage: lorahost model convert --dtype f16|bf16|f32 DIR\n");
        return 2;
    }
    static const char *const FILES[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors"};
    int done = 0;
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        FILE *probe = fopen(path, "rb");
        if (!probe) continue;
        fclose(probe);
        if (convert_file(path, dtype)) return 1;
        done++;
    }
    if (!done) {
        fprintf(stderr, NAME " convert: %s has none of unet/, text_encoder/, vae/ weights\n", dir);
        return 1;
    }
    return 0;
}

int lh_cmd_model(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "init")) return cmd_init(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[1], "convert")) return cmd_convert(argc - 1, argv + 1);
    fprintf(stderr, NAME ": unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
