/* Shared code of the adapter-kind plugins (adapters/<kind>.c), compiled
 * into each one; plugin-side, so it sees only lorahost/plugin.h: checking
 * and loading an adapter's tensors, matrices stored whole or as low-rank
 * (Tucker) products, DoRA's weight decomposition, dense deltas, and the
 * runtime forward/backward of a chain of linear or convolution stages. */
#ifndef LH_AD_COMMON_H
#define LH_AD_COMMON_H

#include <lorahost/plugin.h>

/* ---- The layer an instance modifies ---- */

typedef struct lh_ad_form {
    int ndim;                /* 2 linear, 4 conv */
    int64_t out, in, kh, kw; /* kh = kw = 1 for a linear layer */
    int64_t k;               /* kh * kw */
    int64_t numel;           /* out * in * k */
    int stride, pad;         /* 1, 0 for a linear layer */
} lh_ad_form;

/* What every instance keeps: the host, the form and the layer name. */
typedef struct lh_ad_base {
    const lh_host_api *host;
    lh_ad_form form;
    char *name; /* copy of layer->name, for messages */
} lh_ad_base;

/* create()'s working context. */
typedef struct lh_ad_ctx {
    lh_ad_base *b;
    const lh_adapter_layer *layer;
    char *err;
    size_t err_size;
} lh_ad_ctx;

/* "layer <name>: <message>" into err; returns st. */
lh_status lh_ad_fail(const lh_ad_base *b, char *err, size_t err_size, lh_status st, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));
/* The same for a failed host call, with the host's last error. */
lh_status lh_ad_host_fail(const lh_ad_base *b, char *err, size_t err_size, lh_status st,
                          const char *what);

/* ---- Recognising and loading (create time) ---- */

/* 1 if every suffix of the group is in `known` (NULL-terminated) and the
 * group is not empty. */
int lh_ad_claims(const lh_adapter_layer *layer, const char *const *known);
/* create() for a kind whose state (`size` bytes, zeroed) starts with an
 * lh_ad_base: fills the base from layer, then init(c); on failure calls
 * destroy(state) and returns the error. */
lh_status lh_ad_create(void **out, size_t size, const lh_host_api *host,
                       const lh_adapter_layer *layer, char *err, size_t err_size,
                       lh_status (*init)(const lh_ad_ctx *c), void (*destroy)(void *state));
void lh_ad_base_free(lh_ad_base *b);
/* grads[gi], or NULL when grads is NULL or gi < 0. */
lh_tensor *lh_ad_grad(lh_tensor *const *grads, int gi);
/* Position of `suffix` in layer->tensors, or -1. */
int lh_ad_index(const lh_adapter_layer *layer, const char *suffix);
/* Axis `axis` of tensor `suffix`; -1 when absent or out of range. */
int64_t lh_ad_dim(const lh_ad_ctx *c, const char *suffix, int axis);
/* LH_ERR_NOT_FOUND naming the first suffix of `names` (NULL-terminated)
 * that the group lacks. */
lh_status lh_ad_require(const lh_ad_ctx *c, const char *const *names);
/* *rank = dim a_axis of a, which must equal dim b_axis of b (else a message
 * naming both tensors, both shapes and both ranks). */
lh_status lh_ad_rank(const lh_ad_ctx *c, int64_t *rank, const char *a, int a_axis, const char *b,
                     int b_axis);
/* *out = a new F32 copy of tensor `suffix` shaped `shape` (ndim axes). The
 * tensor must have that shape up to trailing axes of size 1 and be finite. */
lh_status lh_ad_load(const lh_ad_ctx *c, lh_tensor **out, const char *suffix, int ndim,
                     const int64_t *shape);
/* *ratio = alpha / rank (alpha NaN means rank); alpha must be finite and > 0. */
lh_status lh_ad_alpha(const lh_ad_ctx *c, int64_t rank, double *ratio);
/* LH_ERR_NUMERIC naming `what` if v holds a NaN or Inf. */
lh_status lh_ad_finite(const lh_ad_ctx *c, const float *v, // [n]
                       int64_t n, const char *what);

/* ---- Host memory and tensors ---- */

/* *out = zeroed float array of n elements (host->calloc). */
lh_status lh_ad_zeros(const lh_ad_base *b, float **out, int64_t n, char *err, size_t err_size);
/* *out = a new array holding t as float. */
lh_status lh_ad_read(const lh_ad_base *b, float **out, const lh_tensor *t, char *err,
                     size_t err_size);
/* t += a * v; t must have n elements (LH_ERR_SHAPE otherwise). */
lh_status lh_ad_add(const lh_ad_base *b, lh_tensor *t, const float *v, // [n]
                    int64_t n, double a, char *err, size_t err_size);

/* ---- A matrix stored whole or as a low-rank product ----
 * The dense value is [rows, in * k]. Whole: w. Low rank: up [rows, r] (or
 * [r, rows] when up_t) times down [r, in * k]; Tucker (mid != NULL): down is
 * [r2, in], mid [r, r2, k], and dense[o, i, kk] =
 * sum_{p,q} up(o, p) mid[p, q, kk] down[q, i]. */
typedef struct lh_ad_factor {
    lh_tensor *w, *up, *down, *mid;   /* F32 copies (instance-owned) */
    int gi_w, gi_up, gi_down, gi_mid; /* positions in layer->tensors, for grads */
    int up_t;
    int64_t rows, r, r2, in, k;
} lh_ad_factor;

void lh_ad_factor_init(lh_ad_factor *f);
void lh_ad_factor_free(const lh_ad_base *b, lh_ad_factor *f);
/* delta += alpha * the dense matrix (delta shaped like the base weight),
 * through the host's GEMM where it can. */
lh_status lh_ad_factor_add_to(const lh_ad_base *b, lh_tensor *delta, const lh_ad_factor *f,
                              double alpha, char *err, size_t err_size);
/* *out = new array [rows, in * k] holding the dense value. */
lh_status lh_ad_factor_dense(const lh_ad_base *b, float **out, const lh_ad_factor *f, char *err,
                             size_t err_size);
/* grads[gi_*] += dL/d(each stored tensor) given g = dL/d(dense) [rows, in * k];
 * NULL grads are skipped. */
lh_status lh_ad_factor_grad(const lh_ad_base *b, lh_tensor *const *grads, const lh_ad_factor *f,
                            const float *g, char *err, size_t err_size);
/* The same two on tensors, where they live (a device's memory during
 * training on one: no copy to the host), float32 GEMMs: out = alpha * the
 * dense value (out holds rows * in * k elements), and grads[gi_*] +=
 * alpha * dL/d(each stored tensor) given the tensor g = dL/d(dense).
 * LH_ERR_UNSUPPORTED for Tucker factors or a host without tensor_reshape
 * (the callers then take the host arrays above); other failures carry the
 * host's message. */
lh_status lh_ad_factor_dense_t(const lh_ad_base *b, lh_tensor *out, const lh_ad_factor *f,
                               double alpha, char *err, size_t err_size);
lh_status lh_ad_factor_grad_t(const lh_ad_base *b, lh_tensor *const *grads, const lh_ad_factor *f,
                              const lh_tensor *g, double alpha, char *err, size_t err_size);

/* ---- DoRA weight decomposition ----
 * V = W + cv * unit, nrm = ||V|| per slice (a slice is an output row,
 * axis 0, or an input channel over every other axis, axis 1), and
 *   delta = kf * (mag / (nrm + eps) * V - W)
 * dora_scale (A1111/ComfyUI/LyCORIS): kf = scale, cv = 1, eps = FLT_EPSILON;
 * lora_magnitude_vector (PEFT): kf = 1, cv = scale, eps = 0, axis 0. */
typedef struct lh_ad_dora {
    float *base; /* W [numel] */
    float *unit; /* the adapter's dW at multiplier 1 [numel] */
    float *mag;  /* [out] (axis 0) or [in] (axis 1) */
    int axis, peft;
    int64_t n_mag;    /* out or in */
    int gi_mag;       /* position of the magnitude in layer->tensors */
    lh_tensor *delta; /* forward cache: delta at delta_scale, base shape */
    double delta_scale;
} lh_ad_dora;

/* Load magnitude `suffix` and the base weight; takes ownership of unit. */
lh_status lh_ad_dora_init(const lh_ad_ctx *c, lh_ad_dora *d, const char *suffix, float *unit);
void lh_ad_dora_free(const lh_ad_base *b, lh_ad_dora *d);
/* The delta tensor at `scale` (computed when the scale changes). */
lh_status lh_ad_dora_delta(const lh_ad_base *b, lh_ad_dora *d, double scale, lh_tensor **delta,
                           char *err, size_t err_size);
/* gunit = dL/d(unit), gmag += dL/d(mag), given g = dL/d(delta), with the
 * norm held constant (PEFT and LyCORIS detach it when training). */
lh_status lh_ad_dora_grad(const lh_ad_base *b, float *gunit,   // [numel]
                          float *gmag,                         // [out] or [in]
                          const lh_ad_dora *d, const float *g, // [numel]
                          double scale, char *err, size_t err_size);

/* ---- Runtime chains ----
 * y += a * stage_n(... stage_1(x)) (+ a * bias): a linear stage is
 * h @ w^T (w [c_out, c_in], x [rows, in] with any leading axes), a conv stage
 * conv2d(h, w [c_out, c_in, kh, kw], stride, pad) (x [n, in, h, w]). */
typedef struct lh_ad_stage {
    const lh_tensor *w;
    int stride, pad;
} lh_ad_stage;

#define LH_AD_MAX_STAGES 3

lh_status lh_ad_forward(const lh_ad_base *b, lh_tensor *y, const lh_tensor *x,
                        const lh_ad_stage *st, int n, double a, const lh_tensor *bias, // [out]
                        char *err, size_t err_size);
/* Backward of lh_ad_forward without bias, given dy: gw[k] (host floats
 * shaped like st[k].w; NULL skips) += dL/dw_k, dx (may be NULL) += dL/dx.
 * The weight gradients may instead accumulate into tensors: gt (NULL, or
 * gt[k] a tensor of st[k].w's shape, used where not NULL), where the
 * tensors live (no copy to the host). Linear chains run on the host's
 * gemm, conv chains on its conv2d_backward. */
lh_status lh_ad_backward(const lh_ad_base *b, float *const *gw, lh_tensor *const *gt,
                         lh_tensor *dx, const lh_tensor *dy, const lh_tensor *x,
                         const lh_ad_stage *st, int n, double a, char *err, size_t err_size);

/* ---- Kinds that run on a dense delta (LoHa, LoKr, full) ----
 * The state starts with lh_ad_dense; dW(scale) = scale * unit. */
typedef struct lh_ad_dense {
    lh_ad_base b;
    lh_tensor *unit; /* F32, base shape ([out, in] for a linear layer) */
} lh_ad_dense;

/* A new zeroed F32 tensor shaped like the base weight, or NULL. */
lh_tensor *lh_ad_new_weight(const lh_ad_base *b);
/* d->unit = v [numel], which must be finite (else LH_ERR_NUMERIC naming `what`). */
lh_status lh_ad_dense_set(const lh_ad_ctx *c, lh_ad_dense *d, const float *v, const char *what);
/* The descriptor's weight_delta and forward (no bias) for such a state. */
lh_status lh_ad_dense_weight_delta(void *state, lh_tensor *delta, double scale, char *err,
                                   size_t err_size);
lh_status lh_ad_dense_forward(void *state, lh_tensor *y, const lh_tensor *x, double scale,
                              char *err, size_t err_size);
/* *g = new array dL/d(unit) [numel] for the forward at `scale`; dx += dL/dx. */
lh_status lh_ad_dense_backward(lh_ad_dense *d, float **g, lh_tensor *dx, const lh_tensor *dy,
                               const lh_tensor *x, double scale, char *err, size_t err_size);
/* The same into a new tensor *g shaped like the base weight, where the
 * host keeps tensors (no copy to the host). */
lh_status lh_ad_dense_backward_t(lh_ad_dense *d, lh_tensor **g, lh_tensor *dx, const lh_tensor *dy,
                                 const lh_tensor *x, double scale, char *err, size_t err_size);

#endif
