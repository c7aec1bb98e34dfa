/* lorahost plugin ABI: the only header a scheduler, adapter-kind or safety
 * plugin includes. Build a plugin with
 *   cc -std=c11 -shared -fPIC -fvisibility=hidden -I<prefix>/include my.c -o my.so
 * and export one function, lorahost_plugin_entry (see LH_PLUGIN_ENTRY below).
 *
 * Rules that keep old plugins loading in new hosts (and the reverse):
 *  - Every descriptor starts with lh_plugin_info {abi_version, size, ...} and
 *    ends with reserved pointers that must be NULL. New fields are appended
 *    only; the host reads a field only if the plugin's `size` covers it.
 *  - The host-services table (lh_host_api) is append-only with its own `size`;
 *    a plugin checks `host->size` before using a field added after version 1.
 *  - LH_PLUGIN_ABI_VERSION changes only when an existing field changes meaning
 *    or place; the host refuses any other version.
 *  - Functions return 0 (LH_OK) or a negative lh_status and write a message
 *    into the caller's buffer (err, err_size). Plugins never exit(), never
 *    write to stdout, and never free memory they did not allocate.
 */
#ifndef LORAHOST_PLUGIN_H
#define LORAHOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LH_API __declspec(dllexport)
#else
#define LH_API __attribute__((visibility("default")))
#endif

#define LH_PLUGIN_ABI_VERSION 1u
#define LH_PLUGIN_ENTRY "lorahost_plugin_entry"
#define LH_RESERVED_SLOTS 8
#define LH_MAX_DIMS 8

/* ---- Status codes (0 or negative) ---- */

typedef enum lh_status {
    LH_OK = 0,
    LH_ERR_INVALID = -1,     /* bad argument or value */
    LH_ERR_IO = -2,          /* open/read/write/fsync failed */
    LH_ERR_FORMAT = -3,      /* malformed file or text */
    LH_ERR_NOMEM = -4,       /* allocation failed */
    LH_ERR_NOT_FOUND = -5,   /* no such file, key, tensor, plugin */
    LH_ERR_UNSUPPORTED = -6, /* valid but not supported here */
    LH_ERR_ABI = -7,         /* plugin ABI version or struct size mismatch */
    LH_ERR_OVERFLOW = -8,    /* size arithmetic overflow */
    LH_ERR_CONFIG = -9,      /* configuration key or value */
    LH_ERR_PLUGIN = -10,     /* a plugin failed */
    LH_ERR_BACKEND = -11,    /* compute backend failed */
    LH_ERR_NUMERIC = -12,    /* NaN or Inf where a finite value is required */
    LH_ERR_SHAPE = -13,      /* tensor shape mismatch */
    LH_ERR_BUSY = -14,       /* resource busy, try later */
    LH_ERR_INTERNAL = -15    /* a bug in lorahost */
} lh_status;

/* ---- Element types (safetensors names in comments) ---- */

typedef enum lh_dtype {
    LH_DTYPE_F32 = 0,  /* F32 */
    LH_DTYPE_F16,      /* F16 */
    LH_DTYPE_BF16,     /* BF16 */
    LH_DTYPE_F64,      /* F64 */
    LH_DTYPE_I64,      /* I64 */
    LH_DTYPE_I32,      /* I32 */
    LH_DTYPE_I16,      /* I16 */
    LH_DTYPE_I8,       /* I8 */
    LH_DTYPE_U64,      /* U64 */
    LH_DTYPE_U32,      /* U32 */
    LH_DTYPE_U16,      /* U16 */
    LH_DTYPE_U8,       /* U8 */
    LH_DTYPE_BOOL,     /* BOOL */
    LH_DTYPE_F8_E4M3,  /* F8_E4M3 */
    LH_DTYPE_F8_E5M2,  /* F8_E5M2 */
    LH_DTYPE_COUNT
} lh_dtype;

typedef enum lh_log_level {
    LH_LOG_ERROR = 0,
    LH_LOG_WARN,
    LH_LOG_INFO,
    LH_LOG_DEBUG,
    LH_LOG_LEVEL_COUNT
} lh_log_level;

/* ---- Opaque host objects ---- */

/* A tensor in the active backend's memory (host RAM or GPU). Plugins see it
 * only through the host's tensor services, so one plugin runs on any backend. */
typedef struct lh_tensor lh_tensor;
/* A random stream owned by the host (torch-compatible normal draws). */
typedef struct lh_rng lh_rng;
/* The key/value configuration a plugin instance is created with. */
typedef struct lh_config lh_config;
/* An open .safetensors file (see tensor_file_open). */
typedef struct lh_tensor_file lh_tensor_file;

/* ---- Host services (append-only; check `size` before using new fields) ---- */

typedef struct lh_host_api {
    uint32_t abi_version; /* LH_PLUGIN_ABI_VERSION of the host */
    uint32_t size;        /* sizeof(lh_host_api) in the host */

    /* Logging: goes to the host's log (stderr or the server log). */
    void (*log)(lh_log_level level, const char *source, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* Host memory for the plugin's own state. Returns NULL on failure. */
    void *(*alloc)(size_t size);
    void *(*calloc)(size_t count, size_t size); /* checks count*size overflow */
    void (*free)(void *ptr);

    /* Message of the last failing host call on this thread ("" if none).
     * The tensor, RNG and math services below report errors this way. */
    const char *(*last_error)(void);

    /* Configuration lookup. Every key a plugin reads is marked used; after
     * create() the host rejects keys nobody read (unless they start with
     * '_'), naming the key and the plugin. A missing key leaves *out at
     * `fallback` and returns LH_OK; a malformed value returns LH_ERR_CONFIG
     * with a message naming the key. */
    const char *(*config_string)(const lh_config *cfg, const char *key);
    lh_status (*config_double)(const lh_config *cfg, const char *key, double fallback,
                               double *out, char *err, size_t err_size);
    lh_status (*config_int)(const lh_config *cfg, const char *key, int64_t fallback,
                            int64_t *out, char *err, size_t err_size);
    lh_status (*config_bool)(const lh_config *cfg, const char *key, int fallback, int *out,
                             char *err, size_t err_size);
    /* A list of numbers ("[0.1, 0.2]" or "0.1,0.2"). *count receives the
     * number of items even when it exceeds cap (then LH_ERR_CONFIG). */
    lh_status (*config_doubles)(const lh_config *cfg, const char *key, double *out,
                                size_t cap, size_t *count, char *err, size_t err_size);

    /* Tensors on the active backend. Shapes are row-major, outermost first. */
    lh_tensor *(*tensor_new)(lh_dtype dtype, int ndim, const int64_t *shape);
    lh_tensor *(*tensor_new_like)(const lh_tensor *t);
    void (*tensor_free)(lh_tensor *t);
    int (*tensor_ndim)(const lh_tensor *t);
    int64_t (*tensor_dim)(const lh_tensor *t, int axis); /* -1 if out of range */
    int64_t (*tensor_numel)(const lh_tensor *t);
    lh_dtype (*tensor_dtype)(const lh_tensor *t);
    /* Copy n elements between the tensor and host float32 memory. */
    lh_status (*tensor_read)(const lh_tensor *t, float *dst, int64_t n);
    lh_status (*tensor_write)(lh_tensor *t, const float *src, int64_t n);

    /* Elementwise ops (same numel everywhere; out may alias an input). */
    lh_status (*tensor_copy)(lh_tensor *out, const lh_tensor *x);
    lh_status (*tensor_fill)(lh_tensor *out, double value);
    /* out = a*x + b*y; y may be NULL (then out = a*x). */
    lh_status (*tensor_axpby)(lh_tensor *out, double a, const lh_tensor *x, double b,
                              const lh_tensor *y);
    /* out = sum_i coef[i] * xs[i], accumulated in double per element. */
    lh_status (*tensor_lincomb)(lh_tensor *out, int n, const double *coef,
                                const lh_tensor *const *xs);
    /* out = x * y elementwise. */
    lh_status (*tensor_mul)(lh_tensor *out, const lh_tensor *x, const lh_tensor *y);
    /* out = min(max(x, lo), hi). */
    lh_status (*tensor_clamp)(lh_tensor *out, const lh_tensor *x, double lo, double hi);
    /* out = standard normal draws from rng, in torch's order for this shape. */
    lh_status (*tensor_randn)(lh_tensor *out, lh_rng *rng);

    /* Matrix products on the backend, accumulating in at least float32.
     * a is viewed as [M, K] (or [K, M] with trans_a) by folding all but its
     * last axis, b as [K, N] (or [N, K] with trans_b), out as [M, N]:
     * out = alpha * op(a) op(b) + beta * out. */
    lh_status (*gemm)(lh_tensor *out, const lh_tensor *a, const lh_tensor *b, int trans_a,
                      int trans_b, double alpha, double beta);
    /* 2-D convolution, NCHW: out [N, Cout, Ho, Wo] = conv(x [N, Cin, H, W],
     * w [Cout, Cin/groups, kh, kw]) + bias [Cout] (bias may be NULL). */
    lh_status (*conv2d)(lh_tensor *out, const lh_tensor *x, const lh_tensor *w,
                        const lh_tensor *bias, int stride_h, int stride_w, int pad_h,
                        int pad_w, int dil_h, int dil_w, int groups);
    /* A view of t's data under another shape with the same number of
     * elements (no copy), e.g. a [out, in, kh, kw] weight as [out, in*kh*kw]
     * for gemm. Free it with tensor_free; the data stays t's and must
     * outlive the view. NULL (see last_error) if the counts differ. */
    lh_tensor *(*tensor_reshape)(const lh_tensor *t, int ndim, const int64_t *shape);

    /* .safetensors files (added after tensor_reshape: check `size`). open maps
     * and validates `path` (NULL on failure, see last_error: the message
     * names the path). get returns tensor `name` as a new float32 tensor of
     * the stored shape, converted from any stored dtype; the caller frees it
     * with tensor_free. NULL if the file has no such tensor (LH_ERR_NOT_FOUND
     * in last_error, naming file and tensor) or on failure. */
    lh_tensor_file *(*tensor_file_open)(const char *path);
    lh_tensor *(*tensor_file_get)(const lh_tensor_file *file, const char *name);
    void (*tensor_file_close)(lh_tensor_file *file);

    /* The gradients of conv2d (added after tensor_file_close: check
     * `size`), for groups 1, dilation 1 and square stride and padding:
     * given dy [N, Cout, Ho, Wo] = dL/d(out) and the forward's x and w,
     * dx (may be NULL) = dL/dx, written, and dw (may be NULL) +=
     * dw_scale * dL/dw. On the backend, as conv2d. */
    lh_status (*conv2d_backward)(lh_tensor *dx, lh_tensor *dw, const lh_tensor *dy,
                                 const lh_tensor *x, const lh_tensor *w, int stride, int pad,
                                 double dw_scale);

    void *reserved[LH_RESERVED_SLOTS];
} lh_host_api;

/* ---- Descriptors ---- */

typedef enum lh_plugin_kind {
    LH_PLUGIN_SCHEDULER = 1,
    LH_PLUGIN_ADAPTER = 2,
    LH_PLUGIN_SAFETY = 3
} lh_plugin_kind;

/* The common head of every descriptor. */
typedef struct lh_plugin_info {
    uint32_t abi_version;       /* LH_PLUGIN_ABI_VERSION when built */
    uint32_t size;              /* sizeof the whole descriptor struct */
    uint32_t kind;              /* lh_plugin_kind */
    uint32_t flags;             /* 0 */
    const char *id;             /* unique name, [a-z0-9_]+, e.g. "ddim" */
    const char *version;        /* the plugin's own version, e.g. "1.0.0" */
    const char *summary;        /* one line for `lorahost plugins` */
    const char *const *aliases; /* NULL-terminated user-facing names, or NULL */
} lh_plugin_info;

/* The exported entry: returns descriptor `index` (0, 1, ...) or NULL past the
 * last. Called without a lock from one thread; must not allocate. */
typedef const lh_plugin_info *(*lh_plugin_entry_fn)(uint32_t index);

/* ---- Scheduler plugins ----
 * The host calls, for one generation:
 *   create -> set_timesteps(n) -> [set_begin_index(k)] ->
 *   for i in begin..count(timesteps)-1:
 *       x_in = scale_model_input(sample, i); eps = U-Net(x_in, timesteps[i]);
 *       sample = step(eps, i, sample, rng)
 * One instance is used by one thread at a time. */
typedef struct lh_scheduler_desc {
    lh_plugin_info info;
    /* NULL-terminated list of the config keys this scheduler understands. */
    const char *const *config_keys;

    lh_status (*create)(void **state, const lh_host_api *host, const lh_config *cfg,
                        char *err, size_t err_size);
    void (*destroy)(void *state);
    lh_status (*set_timesteps)(void *state, int32_t num_inference_steps, char *err,
                               size_t err_size);
    /* Start the loop at index k (img2img). */
    lh_status (*set_begin_index)(void *state, int32_t k, char *err, size_t err_size);
    /* Pointer to the model timesteps (count returned), valid until the next
     * set_timesteps. */
    int32_t (*timesteps)(void *state, const double **out);
    /* Sigmas if the scheduler has them (count returned, 0 if none). */
    int32_t (*sigmas)(void *state, const double **out);
    double (*init_noise_sigma)(void *state);
    lh_status (*scale_model_input)(void *state, lh_tensor *out, const lh_tensor *sample,
                                   int32_t index, char *err, size_t err_size);
    lh_status (*step)(void *state, lh_tensor *prev_sample, const lh_tensor *model_output,
                      int32_t index, const lh_tensor *sample, lh_rng *rng, char *err,
                      size_t err_size);
    /* out = noised `original` at training timestep `timestep`. */
    lh_status (*add_noise)(void *state, lh_tensor *out, const lh_tensor *original,
                           const lh_tensor *noise, double timestep, char *err,
                           size_t err_size);

    void *reserved[LH_RESERVED_SLOTS];
} lh_scheduler_desc;

/* ---- Adapter-kind plugins (LoRA, LoHa, LoKr, ...) ----
 * The host reads an adapter file (kohya/A1111, LyCORIS, PEFT/diffusers, old
 * diffusers), groups its tensors by the base layer they modify and offers
 * each group to every adapter kind's `recognise`; the first kind that claims
 * it creates one instance for that layer. Suffixes are normalised to the
 * kohya/LyCORIS names whatever the file's format:
 *   lora_down.weight, lora_up.weight, lora_mid.weight  (PEFT lora_A/lora_B,
 *       old diffusers to_q_lora.down/up are renamed to these)
 *   dora_scale             LyCORIS/kohya DoRA magnitude
 *   lora_magnitude_vector  PEFT DoRA magnitude (PEFT's formula, see below)
 *   hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, hada_t1, hada_t2
 *   lokr_w1, lokr_w1_a, lokr_w1_b, lokr_w2, lokr_w2_a, lokr_w2_b, lokr_t2
 *   diff, diff_b
 * The `alpha` tensor is not among them: its value is in `alpha`.
 *
 * Layer forms. base_ndim 2: a linear layer, x [rows, in] -> y [rows, out],
 * weight [out, in]. 1x1 convolutions the host runs as linears on tokens
 * (SD 1.x proj_in/proj_out) are offered as base_ndim 2 too: adapter tensors
 * for them may carry trailing 1x1 axes ([r, in, 1, 1]), which the kind must
 * accept as the 2-D matrix. base_ndim 4: a convolution, x [n, in, h, w] ->
 * y [n, out, ho, wo], weight [out, in, kh, kw], with `stride` and `padding`
 * (square, dilation 1, groups 1).
 *
 * Scale. `scale` in weight_delta/forward/backward is the user's multiplier
 * (with any per-component or per-block factor folded in). The kind applies
 * its own alpha / rank (alpha = rank when the file gives none, i.e. `alpha`
 * is NaN). Deltas are linear in `scale` except DoRA's. */

typedef struct lh_adapter_tensor {
    const char *suffix;       /* normalised key after the layer prefix, e.g. "lora_down.weight" */
    const lh_tensor *tensor;  /* host-owned float32, valid during create() only: copy what you keep */
} lh_adapter_tensor;

typedef struct lh_adapter_layer {
    const char *name;               /* target layer (diffusers module path), for messages */
    int base_ndim;                  /* 2 (linear) or 4 (conv) */
    int64_t base_shape[LH_MAX_DIMS];/* [out, in] or [out, in, kh, kw] */
    const lh_adapter_tensor *tensors;
    int32_t n_tensors;
    double alpha;                   /* NaN when the file gives none */
    int32_t stride, padding;        /* base_ndim 4: the base convolution's */
    /* The base weight [base_shape] as loaded, float32, for groups with a
     * DoRA magnitude (dora_scale, lora_magnitude_vector); NULL otherwise.
     * Valid only during create(): copy what you keep. */
    const lh_tensor *base_weight;
} lh_adapter_layer;

typedef struct lh_adapter_desc {
    lh_plugin_info info;
    /* 1 if this kind owns the tensor group, else 0. Looks only at suffixes
     * (and ndims); create() checks shapes and values. */
    int (*recognise)(const lh_adapter_layer *layer);
    /* Check every tensor against base_shape and each other (errors name the
     * layer, the tensor and both shapes), and prepare float32 working copies. */
    lh_status (*create)(void **state, const lh_host_api *host, const lh_adapter_layer *layer,
                        char *err, size_t err_size);
    void (*destroy)(void *state);
    /* delta += dW(scale), delta float32 [base_shape]: the merged weight is
     * base + the sum of every adapter's delta. DoRA's delta is its whole
     * decomposed weight minus the base. */
    lh_status (*weight_delta)(void *state, lh_tensor *delta, double scale, char *err,
                              size_t err_size);
    /* y += f(x, scale): runtime mode, base weights untouched; y holds the
     * base layer's output (bias included). Equal, up to rounding, to adding
     * x times the transposed weight_delta(scale) (for a convolution: convolving
     * with it). */
    lh_status (*forward)(void *state, lh_tensor *y, const lh_tensor *x, double scale,
                         char *err, size_t err_size);
    /* Training: given dy = dL/dy for the forward above at input x,
     *   dx += (d f / d x)^T dy        (dx may be NULL),
     *   grads[i] += dL / d tensors[i] (float32, shaped like tensors[i];
     *                                  a NULL entry is not trained). */
    lh_status (*backward)(void *state, lh_tensor *dx, lh_tensor *const *grads,
                          const lh_tensor *dy, const lh_tensor *x, double scale, char *err,
                          size_t err_size);
    /* delta += the change of the layer's bias [out] (full-diff `diff_b`);
     * NULL for kinds that never touch the bias. forward() includes it. */
    lh_status (*bias_delta)(void *state, lh_tensor *delta, double scale, char *err,
                            size_t err_size);
    /* Optional (added after bias_delta: the host reads it only when
     * info.size covers it; may be NULL). Training changed the values of
     * the layer's tensors, not their shapes: refresh the instance's copies
     * from `layer` (valid during the call only). LH_ERR_UNSUPPORTED asks the
     * host to destroy the instance and create it anew instead. */
    lh_status (*update)(void *state, const lh_adapter_layer *layer, char *err, size_t err_size);

    void *reserved[LH_RESERVED_SLOTS];
} lh_adapter_desc;

/* ---- Safety-checker plugins ---- */

typedef enum lh_safety_action {
    LH_SAFETY_PASS = 0,
    LH_SAFETY_BLUR,
    LH_SAFETY_BLACK,
    LH_SAFETY_REJECT,
    LH_SAFETY_ACTION_COUNT
} lh_safety_action;

#define LH_SAFETY_MAX_SCORES 32

typedef struct lh_safety_result {
    int32_t flagged;                           /* 1 if anything matched */
    int32_t action;                            /* lh_safety_action */
    int32_t n_scores;
    float scores[LH_SAFETY_MAX_SCORES];        /* per concept; higher = worse */
    const char *concepts[LH_SAFETY_MAX_SCORES];/* names, owned by the plugin */
    char reason[256];                          /* human-readable, UTF-8 */
} lh_safety_result;

/* An 8-bit RGB image, rows top to bottom, `stride` bytes per row. */
typedef struct lh_image {
    int32_t width, height, stride;
    const uint8_t *rgb;
} lh_image;

typedef struct lh_safety_desc {
    lh_plugin_info info;
    const char *const *config_keys;
    lh_status (*create)(void **state, const lh_host_api *host, const lh_config *cfg,
                        char *err, size_t err_size);
    void (*destroy)(void *state);
    /* Before any compute; may be NULL if the checker only looks at images. */
    lh_status (*check_prompt)(void *state, const char *prompt, lh_safety_result *result,
                              char *err, size_t err_size);
    /* After decoding; may be NULL if the checker only looks at prompts. */
    lh_status (*check_images)(void *state, const lh_image *images, int32_t n,
                              const char *prompt, lh_safety_result *results, char *err,
                              size_t err_size);

    void *reserved[LH_RESERVED_SLOTS];
} lh_safety_desc;

/* Convenience for filling lh_plugin_info in a static descriptor. */
#define LH_PLUGIN_INFO(kind_, desc_type_, id_, version_, summary_, aliases_)             \
    { LH_PLUGIN_ABI_VERSION, (uint32_t)sizeof(desc_type_), (kind_), 0u, (id_), (version_), \
      (summary_), (aliases_) }

#ifdef __cplusplus
}
#endif

#endif
