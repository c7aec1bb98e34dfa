/* libFuzzer target for the model config.json readers: the same input through
 * lh_unet_config_parse (and lh_unet_config_read, which must agree with it),
 * lh_clip_config_read and lh_vae_config_read, each result checked against the
 * ranges the loaders and forward passes rely on.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clip.h"
#include "unet.h"
#include "vae.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

/* ---- The config file: one per process, in a private temp dir ---- */

static char g_dir[512], g_path[600];

static void remove_temp(void) {
    unlink(g_path);
    rmdir(g_dir);
}

static void write_input(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/lh-fuzz-model-config-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        CHECK(mkdtemp(g_dir) != NULL);
        snprintf(g_path, sizeof g_path, "%s/config.json", g_dir);
        atexit(remove_temp);
    }
    FILE *f = fopen(g_path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, size, f) == size);
    CHECK(fclose(f) == 0);
}

/* A failed read: a one-line message for the same code, naming the file (or
 * label), though strings in the input may hold any character. */
static void check_error(lh_status st, const lh_error *err, const char *name) {
    CHECK(st < 0 && err->code == st && !strncmp(err->msg, name, strlen(name)));
    CHECK(!strchr(err->msg, '\n') && !strchr(err->msg, '\r'));
}

/* ---- U-Net ---- */

static void check_unet(const lh_unet_config *c) {
    const int64_t big = (int64_t)1 << 20;
    int n = c->n_blocks;
    CHECK(n >= 1 && n <= LH_UNET_MAX_BLOCKS);
    CHECK(c->in_channels >= 1 && c->in_channels <= big);
    CHECK(c->out_channels >= 1 && c->out_channels <= big);
    CHECK(c->cross_attention_dim >= 1 && c->cross_attention_dim <= big);
    CHECK(c->norm_num_groups >= 1 && c->norm_num_groups <= big);
    CHECK(isfinite(c->norm_eps) && c->norm_eps >= 0.0f && c->norm_eps <= 1.0f);
    CHECK(isfinite(c->freq_shift));
    CHECK((c->use_linear_projection | c->upcast_attention | c->flip_sin_to_cos) <= 1);
    for (int i = 0; i < n; i++) {
        int64_t ch = c->block_out_channels[i];
        CHECK(ch >= 1 && ch <= big && ch % c->norm_num_groups == 0);
        /* lh_unet_load_st's own guard, and the largest up block fits its arrays */
        CHECK(c->layers_per_block[i] >= 1 && c->layers_per_block[i] + 1 <= LH_UNET_MAX_LAYERS);
        CHECK(c->heads[i] >= 1 && c->heads[i] <= big);
        CHECK((c->down_cross[i] | c->up_cross[i]) <= 1);
        if (c->down_cross[i] || c->up_cross[n - 1 - i] || i == n - 1) CHECK(ch % c->heads[i] == 0);
    }
}

static void fuzz_unet(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    lh_unet_config cfg, again;
    lh_error err = {0}, err2 = {0};
    lh_status st = lh_unet_config_parse(&cfg, text, "fuzz", &err);
    if (st == LH_OK)
        check_unet(&cfg);
    else
        check_error(st, &err, "fuzz: ");
    /* from the file: the text up to its first NUL, as above */
    lh_status st2 = lh_unet_config_read(&again, g_path, &err2);
    CHECK(st2 == st && !memcmp(&cfg, &again, sizeof cfg));
    if (st2 != LH_OK) {
        check_error(st2, &err2, g_path);
        if (strlen(err2.msg) < LH_ERROR_MAX - 1) /* not cut short */
            CHECK(!strcmp(strchr(err.msg, ':'), err2.msg + strlen(g_path)));
    }
    free(text);
}

/* ---- CLIP text encoder ---- */

static void fuzz_clip(void) {
    lh_clip_config c;
    lh_error err = {0};
    lh_status st = lh_clip_config_read(&c, g_path, &err);
    if (st != LH_OK) {
        check_error(st, &err, g_path);
        CHECK(st == LH_ERR_FORMAT || st == LH_ERR_CONFIG || st == LH_ERR_UNSUPPORTED);
        return;
    }
    CHECK(c.vocab_size >= 1 && c.vocab_size <= 1 << 24);
    CHECK(c.hidden_size >= 1 && c.hidden_size <= 1 << 16);
    CHECK(c.intermediate_size >= 1 && c.intermediate_size <= 1 << 18);
    CHECK(c.num_hidden_layers >= 1 && c.num_hidden_layers <= 1024);
    CHECK(c.num_attention_heads >= 1 && c.num_attention_heads <= 1 << 12);
    CHECK(c.max_position_embeddings >= 1 && c.max_position_embeddings <= 1 << 16);
    CHECK(c.hidden_size % c.num_attention_heads == 0);
    CHECK(c.layer_norm_eps > 0.0f && c.layer_norm_eps < 1.0f); /* LayerNorm divides by it */
    CHECK(c.hidden_act >= 0 && c.hidden_act < LH_CLIP_ACT_COUNT);
}

/* ---- VAE ---- */

static void fuzz_vae(void) {
    lh_vae_config c;
    lh_error err = {0};
    lh_status st = lh_vae_config_read(&c, g_path, &err);
    if (st != LH_OK) {
        check_error(st, &err, g_path);
        CHECK(st == LH_ERR_FORMAT || st == LH_ERR_CONFIG || st == LH_ERR_UNSUPPORTED);
        return;
    }
    const int64_t max_channels = 65536; /* vae.c's VAE_MAX_CHANNELS */
    CHECK(c.n_blocks >= 1 && c.n_blocks <= LH_VAE_MAX_BLOCKS);
    CHECK(c.in_channels >= 1 && c.in_channels <= max_channels);
    CHECK(c.out_channels >= 1 && c.out_channels <= max_channels);
    CHECK(c.latent_channels >= 1 && c.latent_channels <= max_channels);
    CHECK(c.norm_num_groups >= 1 && c.norm_num_groups <= max_channels);
    CHECK(c.layers_per_block >= 1 && c.layers_per_block <= 64);
    for (int i = 0; i < c.n_blocks; i++) {
        int64_t ch = c.block_out_channels[i];
        CHECK(ch >= 1 && ch <= max_channels && ch % c.norm_num_groups == 0);
    }
    CHECK(c.sample_size >= 1 && c.sample_size <= 1 << 20);
    CHECK(isfinite(c.scaling_factor) && c.scaling_factor > 0.0f);
    CHECK(c.mid_block_add_attention == 0 || c.mid_block_add_attention == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_input(data, size);
    fuzz_unet(data, size);
    fuzz_clip();
    fuzz_vae();
    return 0;
}
