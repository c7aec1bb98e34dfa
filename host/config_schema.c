/* The settings schema as data: every config key with its type, default,
 * allowed values, the commands that read it and a one-line doc. docs/config.md
 * documents the same table; tests/test_config.c checks that they agree. */
#include <stdint.h>
#include <string.h>

#include "lorahost/config.h"

/* One row per type; the trailing designators fill the type's fields (rows
 * without any pass `.flags = 0`, as C11 wants one variadic argument). */
#define ROW(sec, key_, type_, def_, used, doc_, ...)                                       \
    {.section = sec, .key = key_, .type = type_, .def = def_, .used_by = used, .doc = doc_,  \
     __VA_ARGS__}
#define STRING(sec, key, def, used, doc)                                                    \
    ROW(sec, key, LH_SETTING_STRING, def, used, doc, .flags = 0)
#define INT_STEP(sec, key, def, lo, hi, step_, used, doc)                                   \
    ROW(sec, key, LH_SETTING_INT, def, used, doc, .min = lo, .max = hi, .step = step_)
#define INT(sec, key, def, lo, hi, used, doc) INT_STEP(sec, key, def, lo, hi, 0, used, doc)
#define DOUBLE(sec, key, def, lo, hi, used, doc)                                            \
    ROW(sec, key, LH_SETTING_DOUBLE, def, used, doc, .dmin = lo, .dmax = hi)
#define BOOL(sec, key, def, used, doc) ROW(sec, key, LH_SETTING_BOOL, def, used, doc, .flags = 0)
#define ENUM(sec, key, def, choices_, used, doc)                                            \
    ROW(sec, key, LH_SETTING_ENUM, def, used, doc, .choices = choices_)
#define LIST(sec, key, def, used, doc) ROW(sec, key, LH_SETTING_LIST, def, used, doc, .flags = 0)
#define SECRET_LIST(sec, key, def, used, doc)                                               \
    ROW(sec, key, LH_SETTING_LIST, def, used, doc, .flags = LH_SETTING_SECRET)

/* Enum choices; the order is the index lh_settings_get_enum returns. */
static const char *const DTYPES[] = {"auto", "f32", "f16", "bf16", NULL};
static const char *const STORAGES[] = {"auto", "f32", NULL};
static const char *const DEVICES[] = {"cpu", "cuda", NULL};
static const char *const POLICIES[] = {"strict", "warn", NULL};
static const char *const MODES[] = {"runtime", "merged", NULL};
static const char *const PRECISIONS[] = {"no", "fp16", "bf16", NULL};
static const char *const LEVELS[] = {"error", "warn", "info", "debug", NULL}; /* lh_log_level */
static const char *const KINDS[] = {"lora", "loha", NULL};
static const char *const PREDICTIONS[] = {"auto", "epsilon", "v_prediction", NULL};
static const char *const LR_SCHEDULES[] = {"constant", "constant_with_warmup", "cosine", "linear",
                                           NULL};
static const char *const SAVE_FORMATS[] = {"kohya", "peft", NULL};

#define ALL "generate train serve"
#define GEN "generate serve"

static const lh_setting_def SCHEMA[] = {
    STRING("model", "path", "", ALL,
           "the base model: a diffusers directory or a single-file .safetensors checkpoint"),
    ENUM("model", "dtype", "auto", DTYPES, GEN,
         "U-Net precision (weights and activations, as diffusers' torch_dtype); auto is f16 "
         "on cuda and f32 on cpu; train uses [train] mixed_precision instead"),
    ENUM("model", "weight_storage", "auto", STORAGES, GEN,
         "how the U-Net holds its linear and convolution weights: auto holds them in its "
         "f16/bf16 dtype (half the memory, widened layer by layer; on cuda an f16/bf16 file "
         "is loaded as it is), f32 keeps float32 (no widening; the same numbers)"),
    ENUM("model", "vae_dtype", "auto", DTYPES, ALL,
         "VAE precision (activations; the convolutions on the tensor cores); auto is f16 on "
         "cuda (an fp16 decode or encode that overflows is redone in f32) and f32 on cpu; "
         "training's auto is train.mixed_precision's type on cuda, as diffusers' trainers"),

    ENUM("backend", "device", "cpu", DEVICES, ALL, "where compute runs"),
    INT("backend", "threads", "0", 0, 1024, ALL, "CPU threads; 0 uses all cores"),

    LIST("plugins", "dirs", "", ALL " plugins",
         "directories searched for plugin .so files before $LORAHOST_PLUGIN_PATH and the "
         "built-in plugin directory"),
    STRING("plugins", "scheduler", "ddim", ALL, "the scheduler plugin, by id or alias"),
    LIST("plugins", "safety", "none", GEN,
         "safety-checker plugins run on every prompt and image; none runs no checker"),

    STRING("generate", "prompt", "", GEN, "the text prompt (UTF-8)"),
    STRING("generate", "negative_prompt", "", GEN, "what the image should not show"),
    INT("generate", "steps", "30", 1, 1000, GEN, "denoising steps"),
    DOUBLE("generate", "cfg_scale", "7.5", 0.0, 100.0, GEN,
           "classifier-free guidance scale; 1 or less turns guidance off"),
    INT_STEP("generate", "width", "512", 64, 4096, 8, GEN, "image width in pixels"),
    INT_STEP("generate", "height", "512", 64, 4096, 8, GEN, "image height in pixels"),
    INT("generate", "seed", "-1", -1, INT64_MAX, GEN, "random seed; -1 picks one at random"),
    INT("generate", "batch_size", "1", 1, 64, GEN, "images per prompt"),
    DOUBLE("generate", "strength", "0.75", 0.0, 1.0, GEN,
           "img2img: how much of the input image is replaced (0 keeps it, 1 ignores it)"),
    STRING("generate", "output", "out.png", "generate", "the PNG file to write"),

    LIST("adapters", "dirs", "", ALL,
         "directories searched for adapter files given without a path"),
    ENUM("adapters", "policy", "warn", POLICIES, ALL,
         "adapter tensors that match no model layer: strict fails, warn logs and skips them"),
    ENUM("adapters", "mode", "runtime", MODES, GEN,
         "runtime adds adapter outputs after each layer (switching is free); merged folds "
         "them into the weights (full speed; a switch re-merges only the layers it changes, "
         "originals come back bit for bit)"),

    STRING("server", "host", "127.0.0.1", "serve", "address to listen on; 0.0.0.0 for all"),
    INT("server", "port", "8501", 0, 65535, "serve",
        "TCP port; 0 picks a free one (the listening line names it)"),
    INT("server", "threads", "4", 1, 1024, "serve",
        "HTTP threads (libmicrohttpd's pool); each holds a request while it waits for the model"),
    SECRET_LIST("server", "api_keys", "", "serve",
                "accepted API keys; with none here or in key_file there is no authentication"),
    STRING("server", "key_file", "", "serve", "a file of API keys, one per line"),
    INT("server", "qps", "50", 0, 1000000, "serve",
        "requests per second over all clients (bursts of one second); more get HTTP 429; "
        "0 = no limit"),
    INT("server", "qps_per_key", "0", 0, 1000000, "serve",
        "requests per second per API key; 0 = no limit"),
    INT("server", "queue", "64", 1, 65536, "serve",
        "generation requests that may wait; more are refused with HTTP 503"),
    INT("server", "body_limit_mb", "16", 1, 1024, "serve", "largest request body, in MiB"),
    INT("server", "max_pixels", "4194304", 4096, 268435456, "serve",
        "largest width x height x batch_size one request may ask for"),
    INT("server", "connection_timeout_s", "30", 0, 86400, "serve",
        "idle connections are closed after this many seconds; 0 = never"),
    INT("server", "queue_timeout_s", "300", 0, 86400, "serve",
        "a request not started by the model worker after this many seconds gets HTTP 503; "
        "0 = wait"),
    INT("server", "batch", "1", 1, 64, "serve",
        "queued requests with the same adapter set, size, steps, guidance and scheduler run as "
        "one pipeline batch of up to this many images; 1 = one at a time (bench_batch tells "
        "whether batching pays for a model)"),
    DOUBLE("server", "breaker_p95_ms", "500", 0.0, 86400000.0, "serve",
           "circuit breaker: generations get HTTP 503 while the 95th percentile of queue wait "
           "is above this; 0 = off"),
    DOUBLE("server", "breaker_window_s", "10", 0.1, 3600.0, "serve",
           "the queue waits of jobs started this many seconds back count for the breaker"),
    STRING("server", "log_dir", "", "serve",
           "access log directory: one JSON-lines file per UTC day, access-YYYY-MM-DD.jsonl; "
           "empty: no access log"),
    INT("server", "log_keep_days", "7", 0, 3650, "serve",
        "days of access logs kept (today included); 0 keeps them all"),

    STRING("train", "dataset", "", "train", "the HDF5 dataset (images and captions)"),
    STRING("train", "output_dir", "lora-out", "train",
           "where checkpoints and the trained adapter are written"),
    INT("train", "steps", "1000", 1, 100000000, "train", "optimizer steps"),
    DOUBLE("train", "learning_rate", "1e-4", 0.0, 1.0, "train", "AdamW learning rate"),
    INT("train", "batch_size", "1", 1, 1024, "train", "images per optimizer step"),
    INT("train", "rank", "4", 1, 1024, "train", "adapter rank (LoRA dim)"),
    DOUBLE("train", "alpha", "4", 0.0, 65536.0, "train",
           "adapter alpha; updates are scaled by alpha / rank"),
    INT("train", "seed", "-1", -1, INT64_MAX, "train", "random seed; -1 picks one at random"),
    ENUM("train", "mixed_precision", "no", PRECISIONS, "train",
         "fp16 or bf16 compute over fp32 master weights; fp16 adds dynamic loss scaling"),
    BOOL("train", "gradient_checkpointing", "false", "train",
         "recompute block activations in the backward pass to save memory"),
    INT("train", "save_every", "500", 0, 1000000000, "train",
        "steps between checkpoints; 0 saves only at the end"),
    INT("train", "keep_checkpoints", "3", 0, 1000, "train",
        "checkpoints kept on disk; 0 keeps them all"),
    ENUM("train", "adapter", "lora", KINDS, "train",
         "adapter kind trained: lora (LoCon on convolution targets) or loha (LyCORIS)"),
    LIST("train", "target_modules", "to_q,to_k,to_v,to_out.0", "train",
         "U-Net modules given an adapter: diffusers module names or their last parts"),
    BOOL("train", "train_text_encoder", "false", "train",
         "also train a LoRA on the text encoder's q_proj, k_proj, v_proj and out_proj"),
    DOUBLE("train", "dropout", "0", 0.0, 0.99, "train",
           "LoRA dropout on each adapted layer's input, as PEFT's lora_dropout"),
    DOUBLE("train", "caption_dropout", "0", 0.0, 1.0, "train",
           "probability of training an item on the empty caption (kohya caption_dropout_rate); "
           "classifier-free guidance needs it in a model trained from scratch"),
    BOOL("train", "full_parameter", "false", "train",
         "train every U-Net weight instead of an adapter (small models only)"),
    ENUM("train", "prediction_type", "auto", PREDICTIONS, "train",
         "the U-Net's target; auto takes the model scheduler's prediction_type"),
    DOUBLE("train", "snr_gamma", "0", 0.0, 1000.0, "train",
           "min-SNR loss weighting gamma (5 is usual); 0 turns it off"),
    DOUBLE("train", "noise_offset", "0", 0.0, 1.0, "train",
           "adds noise_offset * randn(b, c, 1, 1) to the noise"),
    ENUM("train", "lr_scheduler", "constant", LR_SCHEDULES, "train",
         "learning-rate schedule, as diffusers' get_scheduler"),
    INT("train", "lr_warmup_steps", "0", 0, 100000000, "train", "steps of linear warmup"),
    INT("train", "gradient_accumulation_steps", "1", 1, 65536, "train",
        "batches whose gradients are summed into one optimizer step"),
    DOUBLE("train", "max_grad_norm", "1", 0.0, 1e9, "train",
           "clip the gradients' total L2 norm to this; 0 turns clipping off"),
    DOUBLE("train", "adam_beta1", "0.9", 0.0, 1.0, "train", "AdamW beta1"),
    DOUBLE("train", "adam_beta2", "0.999", 0.0, 1.0, "train", "AdamW beta2"),
    DOUBLE("train", "adam_weight_decay", "1e-2", 0.0, 1.0, "train", "AdamW weight decay"),
    DOUBLE("train", "adam_epsilon", "1e-8", 0.0, 1.0, "train", "AdamW epsilon"),
    INT("train", "sample_every", "0", 0, 1000000000, "train",
        "steps between sample images; 0 makes none"),
    STRING("train", "sample_prompts", "", "train",
           "prompts for the sample images, separated by vertical bars"),
    INT("train", "sample_steps", "20", 1, 1000, "train", "denoising steps of a sample image"),
    ENUM("train", "save_format", "kohya", SAVE_FORMATS, "train",
         "the exported adapter: kohya (A1111, ComfyUI, diffusers) or peft (diffusers)"),
    STRING("train", "output_name", "lora", "train",
           "file name of the exported adapter, without .safetensors"),

    ENUM("log", "level", "info", LEVELS, ALL " plugins",
         "the most detailed messages logged: error, warn, info or debug"),
};

size_t lh_settings_schema_size(void) { return sizeof SCHEMA / sizeof SCHEMA[0]; }

const lh_setting_def *lh_settings_schema(size_t index) {
    return index < lh_settings_schema_size() ? &SCHEMA[index] : NULL;
}

const lh_setting_def *lh_settings_find(const char *name) {
    const char *dot = strchr(name, '.');
    if (!dot) return NULL;
    size_t n = (size_t)(dot - name);
    for (size_t i = 0; i < lh_settings_schema_size(); i++)
        if (!strncmp(SCHEMA[i].section, name, n) && SCHEMA[i].section[n] == '\0' &&
            !strcmp(SCHEMA[i].key, dot + 1))
            return &SCHEMA[i];
    return NULL;
}
