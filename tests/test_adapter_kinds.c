/* Adapter-kind suite: the lora, loha, lokr and full plugins against float64
 * formulas written here. Per case: weight deltas at two scales (and
 * linearity in scale), runtime forward against the merged weight, backward
 * against central finite differences (every tensor and x; DoRA with its
 * weight norm held constant, the convention the plugin implements); then
 * refusals of bad input, whose messages must name the layer, the tensor and
 * the shapes. Plugins come from the build tree's plugin directory. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_api.h"
#include "lorahost/lorahost.h"

#define TOL_DELTA 1e-5 /* float32 deltas vs float64 formulas, relative L2 */
#define TOL_LINEAR 1e-6
#define TOL_FWD 1e-5
#define TOL_GRAD 1e-3
#define FD_STEP 1e-3 /* every loss here is linear in each single value: FD is exact */
#define MAX_T 7
#define LAYER "down_blocks.1.attentions.0.proj_in"

static lh_registry *g_reg;
static const lh_host_api *H;
static uint64_t g_rng;

/* ---- Cases ---- */

typedef struct tspec {
    const char *suffix;
    int ndim;
    int64_t shape[4];
} tspec;

typedef struct kcase kcase;

/* One case's values (float32-representable doubles). */
typedef struct vals {
    const kcase *c;
    double *v[MAX_T]; /* per tensor spec */
    double *w;        /* base weight */
} vals;

/* delta [out*in*k] = W'(scale) - W and bias [out] (zeroed by the caller) at
 * scale; DoRA norms go to nrm, or come from it when `frozen`. */
typedef void (*ref_fn)(const vals *p, double scale, double *delta, double *bias, double *nrm,
                       int frozen);

struct kcase {
    const char *name, *kind;
    int ndim;
    int64_t out, in, kh, kw;
    int stride, pad;
    double alpha;
    int xndim;
    int64_t x[4];
    int nt;
    tspec t[MAX_T];
    ref_fn ref;
    int dora; /* not linear in scale */
};

/* ---- Helpers ---- */

static double rnd(void) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(g_rng >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}
static double rndf(void) { return (double)(float)rnd(); }

static int64_t prod(int ndim, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= s[i];
    return n;
}
static int64_t wnumel(const kcase *c) { return c->out * c->in * c->kh * c->kw; }

static double *zeros(int64_t n) {
    double *v = calloc((size_t)(n ? n : 1), sizeof *v);
    ck_assert(v);
    return v;
}
static double *randoms(int64_t n) {
    double *v = zeros(n);
    for (int64_t i = 0; i < n; i++) v[i] = rndf();
    return v;
}

static double rel(const double *got, const double *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

static int find_spec(const kcase *c, const char *suffix) {
    for (int i = 0; i < c->nt; i++)
        if (!strcmp(c->t[i].suffix, suffix)) return i;
    return -1;
}
static const double *get(const vals *p, const char *suffix) {
    int i = find_spec(p->c, suffix);
    return i < 0 ? NULL : p->v[i];
}
static int64_t dim0(const kcase *c, const char *suffix) {
    return c->t[find_spec(c, suffix)].shape[0];
}

/* Tensors through the host's services (the way plugins see them). */
static lh_tensor *mk(int ndim, const int64_t *shape, const double *v) {
    lh_tensor *t = H->tensor_new(LH_DTYPE_F32, ndim, shape);
    ck_assert_msg(t != NULL, "%s", H->last_error());
    int64_t n = H->tensor_numel(t);
    float *f = calloc((size_t)(n ? n : 1), sizeof *f);
    ck_assert(f);
    for (int64_t i = 0; v && i < n; i++) f[i] = (float)v[i];
    ck_assert_int_eq(H->tensor_write(t, f, n), LH_OK);
    free(f);
    return t;
}
static int64_t numel(const lh_tensor *t) { return H->tensor_numel(t); }
static double *rd(const lh_tensor *t) {
    int64_t n = numel(t);
    float *f = calloc((size_t)(n ? n : 1), sizeof *f);
    double *v = zeros(n);
    ck_assert(f);
    ck_assert_int_eq(H->tensor_read(t, f, n), LH_OK);
    for (int64_t i = 0; i < n; i++) v[i] = f[i];
    free(f);
    return v;
}
static void drop(lh_tensor *t) { H->tensor_free(t); }
static void sub(double *a, const double *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] -= b[i];
}

/* ---- float64 reference formulas ---- */

/* w [out, in, k] = sum_p U(o, p) down[p, i, k] or, with mid [r, r, k] and down [r, in],
 * sum_{p,q} U(o, p) mid[p, q, k] down[q, i]; U = up [out, r] or up^T ([r, out]). */
static void lowrank(double *w, const double *up, int up_t, const double *mid, const double *down,
                    int64_t out, int64_t r, int64_t in, int64_t k) {
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++)
            for (int64_t kk = 0; kk < k; kk++) {
                double s = 0;
                for (int64_t p = 0; p < r; p++) {
                    double u = up_t ? up[p * out + o] : up[o * r + p];
                    if (!mid) s += u * down[(p * in + i) * k + kk];
                    for (int64_t q = 0; mid && q < r; q++)
                        s += u * mid[(p * r + q) * k + kk] * down[q * in + i];
                }
                w[(o * in + i) * k + kk] = s;
            }
}

static double ratio(const kcase *c, int64_t r) {
    return (isnan(c->alpha) ? (double)r : c->alpha) / r;
}

/* nrm[s] = ||V|| over every axis but the output (axis 0) or input (axis 1) one. */
static void norms(const kcase *c, double *nrm, const double *v, int axis) {
    int64_t k = c->kh * c->kw;
    memset(nrm, 0, sizeof(double) * (size_t)(axis ? c->in : c->out));
    for (int64_t o = 0; o < c->out; o++)
        for (int64_t i = 0; i < c->in; i++)
            for (int64_t kk = 0; kk < k; kk++) {
                double x = v[(o * c->in + i) * k + kk];
                nrm[axis ? i : o] += x * x;
            }
    for (int64_t s = 0; s < (axis ? c->in : c->out); s++) nrm[s] = sqrt(nrm[s]);
}

static void ref_lora(const vals *p, double scale, double *delta, double *bias, double *nrm,
                     int frozen) {
    const kcase *c = p->c;
    int64_t n = wnumel(c), r = dim0(c, "lora_down.weight"), k = c->kh * c->kw;
    double *u = zeros(n), *v = zeros(n), a = ratio(c, r);
    lowrank(u, get(p, "lora_up.weight"), 0, get(p, "lora_mid.weight"), get(p, "lora_down.weight"),
            c->out, r, c->in, k);
    const double *ds = get(p, "dora_scale"), *mv = get(p, "lora_magnitude_vector");
    int axis = ds && dim0(c, "dora_scale") == 1 && c->in > 1;
    for (int64_t e = 0; e < n; e++) {
        delta[e] = scale * a * u[e];                  /* LoRA */
        v[e] = p->w[e] + (ds ? a : scale * a) * u[e]; /* W + dW1 (A1111), W + dW (PEFT) */
    }
    if ((ds || mv) && !frozen) norms(c, nrm, v, axis);
    for (int64_t o = 0; (ds || mv) && o < c->out; o++)
        for (int64_t i = 0; i < c->in; i++)
            for (int64_t kk = 0; kk < k; kk++) {
                int64_t e = (o * c->in + i) * k + kk, s = axis ? i : o;
                if (ds) /* W' = W + scale * (g V - W), g = m / (||V|| + eps) */
                    delta[e] = scale * (ds[s] / (nrm[s] + FLT_EPSILON) * v[e] - p->w[e]);
                else /* W' = m / ||V|| V */
                    delta[e] = mv[o] / nrm[o] * v[e] - p->w[e];
            }
    free(u);
    free(v);
}

static void ref_loha(const vals *p, double scale, double *delta, double *bias, double *nrm,
                     int frozen) {
    const kcase *c = p->c;
    int64_t n = wnumel(c), k = c->kh * c->kw;
    const double *t1 = get(p, "hada_t1"), *t2 = get(p, "hada_t2");
    int64_t r1 = dim0(c, "hada_w1_b"), r2 = dim0(c, "hada_w2_b");
    double *w1 = zeros(n), *w2 = zeros(n), a = ratio(c, r1);
    lowrank(w1, get(p, "hada_w1_a"), t1 != NULL, t1, get(p, "hada_w1_b"), c->out, r1, c->in, k);
    lowrank(w2, get(p, "hada_w2_a"), t2 != NULL, t2, get(p, "hada_w2_b"), c->out, r2, c->in, k);
    for (int64_t e = 0; e < n; e++) delta[e] = scale * a * w1[e] * w2[e];
    free(w1);
    free(w2);
}

static void ref_lokr(const vals *p, double scale, double *delta, double *bias, double *nrm,
                     int frozen) {
    const kcase *c = p->c;
    int64_t k = c->kh * c->kw;
    const double *w1 = get(p, "lokr_w1"), *w2 = get(p, "lokr_w2"), *t2 = get(p, "lokr_t2");
    int i1 = find_spec(c, w1 ? "lokr_w1" : "lokr_w1_b");
    int64_t o1 = w1 ? c->t[i1].shape[0] : dim0(c, "lokr_w1_a"), n1 = c->t[i1].shape[1];
    int64_t o2 = c->out / o1, n2 = c->in / n1;
    double *W1 = zeros(o1 * n1), *W2 = zeros(o2 * n2 * k);
    if (w1)
        memcpy(W1, w1, sizeof(double) * (size_t)(o1 * n1));
    else
        lowrank(W1, get(p, "lokr_w1_a"), 0, NULL, get(p, "lokr_w1_b"), o1, dim0(c, "lokr_w1_b"), n1,
                1);
    if (w2)
        memcpy(W2, w2, sizeof(double) * (size_t)(o2 * n2 * k));
    else
        lowrank(W2, get(p, "lokr_w2_a"), t2 != NULL, t2, get(p, "lokr_w2_b"), o2,
                dim0(c, "lokr_w2_b"), n2, k);
    /* ComfyUI: alpha / dim of the factorised W2, else of W1, else 1 */
    int64_t dim = !w2 ? dim0(c, "lokr_w2_b") : !w1 ? dim0(c, "lokr_w1_b") : 0;
    double a = dim ? ratio(c, dim) : 1.0;
    for (int64_t a1 = 0; a1 < o1; a1++)
        for (int64_t a2 = 0; a2 < o2; a2++)
            for (int64_t b1 = 0; b1 < n1; b1++)
                for (int64_t b2 = 0; b2 < n2; b2++)
                    for (int64_t kk = 0; kk < k; kk++)
                        delta[((a1 * o2 + a2) * c->in + b1 * n2 + b2) * k + kk] =
                            scale * a * W1[a1 * n1 + b1] * W2[(a2 * n2 + b2) * k + kk];
    free(W1);
    free(W2);
}

static void ref_full(const vals *p, double scale, double *delta, double *bias, double *nrm,
                     int frozen) {
    const double *d = get(p, "diff"), *db = get(p, "diff_b");
    for (int64_t e = 0; e < wnumel(p->c); e++) delta[e] = scale * d[e];
    for (int64_t o = 0; db && o < p->c->out; o++) bias[o] = scale * db[o];
}

/* y = x @ w^T + b (linear, x [rows, in]) or conv(x, w) + b; b may be NULL. */
static void apply(const kcase *c, double *y, const double *x, const double *w, const double *b) {
    if (c->ndim == 2) {
        int64_t rows = prod(c->xndim, c->x) / c->in;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < c->out; o++) {
                double s = b ? b[o] : 0;
                for (int64_t i = 0; i < c->in; i++) s += x[r * c->in + i] * w[o * c->in + i];
                y[r * c->out + o] = s;
            }
        return;
    }
    int64_t nb = c->x[0], h = c->x[2], wd = c->x[3];
    int64_t ho = (h + 2 * c->pad - c->kh) / c->stride + 1,
            wo = (wd + 2 * c->pad - c->kw) / c->stride + 1;
    for (int64_t n = 0; n < nb; n++)
        for (int64_t o = 0; o < c->out; o++)
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    double s = b ? b[o] : 0;
                    for (int64_t i = 0; i < c->in; i++)
                        for (int64_t ky = 0; ky < c->kh; ky++)
                            for (int64_t kx = 0; kx < c->kw; kx++) {
                                int64_t iy = oy * c->stride - c->pad + ky,
                                        ix = ox * c->stride - c->pad + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                s += x[((n * c->in + i) * h + iy) * wd + ix] *
                                     w[((o * c->in + i) * c->kh + ky) * c->kw + kx];
                            }
                    y[((n * c->out + o) * ho + oy) * wo + ox] = s;
                }
}

static int yshape(const kcase *c, int64_t *ys) {
    if (c->ndim == 2) {
        memcpy(ys, c->x, sizeof(int64_t) * (size_t)c->xndim);
        ys[c->xndim - 1] = c->out;
        return c->xndim;
    }
    ys[0] = c->x[0];
    ys[1] = c->out;
    ys[2] = (c->x[2] + 2 * c->pad - c->kh) / c->stride + 1;
    ys[3] = (c->x[3] + 2 * c->pad - c->kw) / c->stride + 1;
    return 4;
}

/* L = sum dy * (x applied to the reference delta and bias). */
static double loss(const vals *p, const double *x, const double *dy, double scale, double *nrm,
                   int frozen) {
    const kcase *c = p->c;
    int64_t ys[4], ny = prod(yshape(c, ys), ys);
    double *d = zeros(wnumel(c)), *b = zeros(c->out), *y = zeros(ny), l = 0;
    c->ref(p, scale, d, b, nrm, frozen);
    apply(c, y, x, d, b);
    for (int64_t i = 0; i < ny; i++) l += dy[i] * y[i];
    free(d);
    free(b);
    free(y);
    return l;
}

/* Central differences of loss() w.r.t. every element of v [n], in place. */
static double *fd(const vals *p, double *v, int64_t n, const double *x, const double *dy,
                  double scale, double *nrm) {
    double *g = zeros(n);
    for (int64_t j = 0; j < n; j++) {
        double keep = v[j];
        v[j] = keep + FD_STEP;
        double lp = loss(p, x, dy, scale, nrm, 1);
        v[j] = keep - FD_STEP;
        double lm = loss(p, x, dy, scale, nrm, 1);
        v[j] = keep;
        g[j] = (lp - lm) / (2 * FD_STEP);
    }
    return g;
}

/* ---- Plugin instances ---- */

typedef struct inst {
    const lh_adapter_desc *d;
    void *s;
    lh_tensor *ts[MAX_T], *w;
    lh_adapter_tensor at[MAX_T];
    lh_adapter_layer layer;
    lh_status st;
    char err[512];
} inst;

static const lh_adapter_desc *kind(const char *id) {
    const lh_plugin_info *i = lh_registry_find(g_reg, LH_PLUGIN_ADAPTER, id);
    ck_assert_msg(i != NULL, "adapter kind %s not loaded", id);
    return (const lh_adapter_desc *)i;
}

static void vals_make(vals *p, const kcase *c, uint64_t seed) {
    g_rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    p->c = c;
    for (int t = 0; t < c->nt; t++) p->v[t] = randoms(prod(c->t[t].ndim, c->t[t].shape));
    p->w = randoms(wnumel(c));
}

static void vals_free(vals *p) {
    for (int t = 0; t < p->c->nt; t++) free(p->v[t]);
    free(p->w);
}

static void inst_layer(inst *in, const vals *p) {
    const kcase *c = p->c;
    memset(in, 0, sizeof *in);
    for (int t = 0; t < c->nt; t++) {
        in->ts[t] = mk(c->t[t].ndim, c->t[t].shape, p->v[t]);
        in->at[t] = (lh_adapter_tensor){c->t[t].suffix, in->ts[t]};
    }
    const int64_t ws[4] = {c->out, c->in, c->kh, c->kw};
    in->w = mk(c->ndim, ws, p->w);
    in->layer = (lh_adapter_layer){.name = LAYER,
                                   .base_ndim = c->ndim,
                                   .tensors = in->at,
                                   .n_tensors = c->nt,
                                   .alpha = c->alpha,
                                   .stride = c->stride,
                                   .padding = c->pad,
                                   .base_weight = in->w};
    memcpy(in->layer.base_shape, ws, sizeof ws);
}

/* Create; the base weight is freed right after (valid only during create). */
static void inst_create(inst *in) {
    in->st = in->d->create(&in->s, H, &in->layer, in->err, sizeof in->err);
    drop(in->w);
    in->w = NULL;
    in->layer.base_weight = NULL;
}

static void inst_make(inst *in, const vals *p) {
    inst_layer(in, p);
    in->d = kind(p->c->kind);
    ck_assert_msg(in->d->recognise(&in->layer), "%s: %s does not recognise its group", p->c->name,
                  p->c->kind);
    inst_create(in);
    ck_assert_msg(in->st == LH_OK, "%s: create: %s", p->c->name, in->err);
}

static void inst_free(inst *in) {
    if (in->s) in->d->destroy(in->s);
    for (int t = 0; t < MAX_T; t++) drop(in->ts[t]);
    drop(in->w);
}

/* ---- The cases ---- */

#define LIN(o, i) .ndim = 2, .out = o, .in = i, .kh = 1, .kw = 1, .stride = 1, .pad = 0
#define CONV(o, i, k, s, p) .ndim = 4, .out = o, .in = i, .kh = k, .kw = k, .stride = s, .pad = p
#define T1(s, a)                                                                                   \
    {                                                                                              \
        s, 1, { a }                                                                                \
    }
#define T2(s, a, b)                                                                                \
    {                                                                                              \
        s, 2, { a, b }                                                                             \
    }
#define T4(s, a, b, c, d)                                                                          \
    {                                                                                              \
        s, 4, { a, b, c, d }                                                                       \
    }
#define DOWN "lora_down.weight"
#define UP "lora_up.weight"
#define MID "lora_mid.weight"
#define XLIN .xndim = 2, .x = {3, 6}
#define XCONV(c, h) .xndim = 4, .x = {2, c, h, h}

static const kcase CASES[] = {
    {"lora_linear_3d_x", "lora", LIN(4, 6), .alpha = 1.5, .xndim = 3, .x = {2, 2, 6}, .nt = 2,
     .t = {T2(DOWN, 2, 6), T2(UP, 4, 2)}, .ref = ref_lora},
    {"lora_linear_1x1_axes", "lora", LIN(4, 6), .alpha = NAN, XLIN, .nt = 2,
     .t = {T4(DOWN, 2, 6, 1, 1), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"lora_conv1x1", "lora", CONV(4, 3, 1, 1, 0), .alpha = 2, XCONV(3, 4), .nt = 2,
     .t = {T4(DOWN, 2, 3, 1, 1), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"locon_3x3_s1_p1", "lora", CONV(4, 3, 3, 1, 1), .alpha = 3, XCONV(3, 5), .nt = 2,
     .t = {T4(DOWN, 2, 3, 3, 3), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"locon_3x3_s2_p1", "lora", CONV(4, 3, 3, 2, 1), .alpha = 1, XCONV(3, 6), .nt = 2,
     .t = {T4(DOWN, 2, 3, 3, 3), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"lora_tucker", "lora", CONV(4, 3, 3, 1, 1), .alpha = 1, XCONV(3, 5), .nt = 3,
     .t = {T4(DOWN, 2, 3, 1, 1), T4(MID, 2, 2, 3, 3), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"lora_tucker_s2", "lora", CONV(4, 3, 3, 2, 1), .alpha = 4, XCONV(3, 6), .nt = 3,
     .t = {T4(DOWN, 2, 3, 1, 1), T4(MID, 2, 2, 3, 3), T4(UP, 4, 2, 1, 1)}, .ref = ref_lora},
    {"dora_scale_input_axis_linear", "lora", LIN(4, 6), .alpha = 1, XLIN, .nt = 3,
     .t = {T2(DOWN, 2, 6), T2(UP, 4, 2), T2("dora_scale", 1, 6)}, .ref = ref_lora, .dora = 1},
    {"dora_scale_output_axis_conv", "lora", CONV(4, 3, 3, 1, 1), .alpha = 2, XCONV(3, 5), .nt = 3,
     .t = {T4(DOWN, 2, 3, 3, 3), T4(UP, 4, 2, 1, 1), T4("dora_scale", 4, 1, 1, 1)}, .ref = ref_lora,
     .dora = 1},
    {"dora_scale_input_axis_conv", "lora", CONV(4, 3, 3, 2, 1), .alpha = 1, XCONV(3, 6), .nt = 3,
     .t = {T4(DOWN, 2, 3, 3, 3), T4(UP, 4, 2, 1, 1), T4("dora_scale", 1, 3, 1, 1)}, .ref = ref_lora,
     .dora = 1},
    {"peft_dora_linear", "lora", LIN(4, 6), .alpha = 2, XLIN, .nt = 3,
     .t = {T2(DOWN, 2, 6), T2(UP, 4, 2), T1("lora_magnitude_vector", 4)}, .ref = ref_lora,
     .dora = 1},
    {"peft_dora_conv", "lora", CONV(4, 3, 3, 2, 1), .alpha = 1, XCONV(3, 6), .nt = 3,
     .t = {T4(DOWN, 2, 3, 3, 3), T4(UP, 4, 2, 1, 1), T1("lora_magnitude_vector", 4)},
     .ref = ref_lora, .dora = 1},
    {"loha_linear", "loha", LIN(4, 6), .alpha = 1, XLIN, .nt = 4,
     .t = {T2("hada_w1_a", 4, 2), T2("hada_w1_b", 2, 6), T2("hada_w2_a", 4, 3),
           T2("hada_w2_b", 3, 6)},
     .ref = ref_loha},
    {"loha_conv", "loha", CONV(4, 3, 3, 1, 1), .alpha = 3, XCONV(3, 5), .nt = 4,
     .t = {T2("hada_w1_a", 4, 2), T2("hada_w1_b", 2, 27), T2("hada_w2_a", 4, 2),
           T2("hada_w2_b", 2, 27)},
     .ref = ref_loha},
    {"loha_tucker", "loha", CONV(4, 3, 3, 2, 1), .alpha = NAN, XCONV(3, 6), .nt = 6,
     .t = {T2("hada_w1_a", 2, 4), T2("hada_w1_b", 2, 3), T2("hada_w2_a", 2, 4),
           T2("hada_w2_b", 2, 3), T4("hada_t1", 2, 2, 3, 3), T4("hada_t2", 2, 2, 3, 3)},
     .ref = ref_loha},
    {"lokr_linear_whole", "lokr", LIN(4, 6), .alpha = 3, XLIN, .nt = 2,
     .t = {T2("lokr_w1", 2, 2), T2("lokr_w2", 2, 3)}, .ref = ref_lokr},
    {"lokr_linear_factorised_w2", "lokr", LIN(4, 6), .alpha = 1.5, XLIN, .nt = 3,
     .t = {T2("lokr_w1", 2, 3), T2("lokr_w2_a", 2, 1), T2("lokr_w2_b", 1, 2)}, .ref = ref_lokr},
    {"lokr_conv_factorised_w1", "lokr", CONV(4, 4, 3, 1, 1), .alpha = 2, XCONV(4, 5), .nt = 3,
     .t = {T2("lokr_w1_a", 2, 1), T2("lokr_w1_b", 1, 2), T4("lokr_w2", 2, 2, 3, 3)},
     .ref = ref_lokr},
    {"lokr_conv_lowrank_w2", "lokr", CONV(4, 4, 3, 1, 1), .alpha = 2, XCONV(4, 5), .nt = 3,
     .t = {T2("lokr_w1", 2, 2), T2("lokr_w2_a", 2, 1), T2("lokr_w2_b", 1, 18)}, .ref = ref_lokr},
    {"lokr_conv_tucker", "lokr", CONV(4, 4, 3, 2, 1), .alpha = 1, XCONV(4, 6), .nt = 4,
     .t = {T2("lokr_w1", 2, 2), T2("lokr_w2_a", 2, 2), T2("lokr_w2_b", 2, 2),
           T4("lokr_t2", 2, 2, 3, 3)},
     .ref = ref_lokr},
    {"full_linear_bias", "full", LIN(4, 6), .alpha = NAN, XLIN, .nt = 2,
     .t = {T2("diff", 4, 6), T1("diff_b", 4)}, .ref = ref_full},
    {"full_linear_1x1_axes", "full", LIN(4, 6), .alpha = NAN, XLIN, .nt = 1,
     .t = {T4("diff", 4, 6, 1, 1)}, .ref = ref_full},
    {"full_conv_bias", "full", CONV(4, 3, 3, 2, 1), .alpha = NAN, XCONV(3, 6), .nt = 2,
     .t = {T4("diff", 4, 3, 3, 3), T1("diff_b", 4)}, .ref = ref_full},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

/* ---- Per-case checks ---- */

#define MAX_OWN 32

/* One case created from seeded values, with what a check allocates. */
typedef struct fixture {
    const kcase *c;
    vals p;
    inst in;
    int64_t ys[4];  /* y's shape */
    int nd;         /* y's axes */
    int64_t ny, nx; /* elements of y and x */
    double *own[MAX_OWN];
    lh_tensor *own_t[MAX_OWN];
    int n_own, n_own_t;
} fixture;

static void fixture_make(fixture *f, const kcase *c, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->c = c;
    vals_make(&f->p, c, seed);
    inst_make(&f->in, &f->p);
    f->nd = yshape(c, f->ys);
    f->ny = prod(f->nd, f->ys);
    f->nx = prod(c->xndim, c->x);
}

static void fixture_free(fixture *f) {
    for (int i = 0; i < f->n_own; i++) free(f->own[i]);
    for (int i = 0; i < f->n_own_t; i++) drop(f->own_t[i]);
    inst_free(&f->in);
    vals_free(&f->p);
}

/* v or t, freed with the fixture. */
static double *own(fixture *f, double *v) {
    ck_assert(f->n_own < MAX_OWN);
    return f->own[f->n_own++] = v;
}
static lh_tensor *own_t(fixture *f, lh_tensor *t) {
    ck_assert(f->n_own_t < MAX_OWN);
    return f->own_t[f->n_own_t++] = t;
}

/* weight_delta adds to what the tensor holds; delta [wnumel] = its change. */
static double *plugin_delta(fixture *f, double scale) {
    inst *in = &f->in;
    int64_t n = wnumel(f->c);
    double *d0 = own(f, randoms(n));
    lh_tensor *t = own_t(f, mk(in->layer.base_ndim, in->layer.base_shape, d0));
    ck_assert_msg(in->d->weight_delta(in->s, t, scale, in->err, sizeof in->err) == LH_OK, "%s",
                  in->err);
    double *d = own(f, rd(t));
    sub(d, d0, n);
    return d;
}

/* bias_delta's change [out] (zeros for kinds without one). */
static double *plugin_bias(fixture *f, double scale) {
    inst *in = &f->in;
    double *b0 = own(f, randoms(f->c->out));
    lh_tensor *t = own_t(f, mk(1, &f->c->out, b0));
    if (in->d->bias_delta)
        ck_assert_msg(in->d->bias_delta(in->s, t, scale, in->err, sizeof in->err) == LH_OK, "%s",
                      in->err);
    double *b = own(f, rd(t));
    sub(b, b0, f->c->out);
    return b;
}

START_TEST(test_weight_delta) {
    fixture f;
    const kcase *c = &CASES[_i];
    fixture_make(&f, c, (uint64_t)_i + 1);
    int64_t n = wnumel(c);
    const double scales[2] = {1.0, 0.6};
    double *got[2], nrm[16];
    int has_bias = find_spec(c, "diff_b") >= 0;
    for (int k = 0; k < 2; k++) {
        double *want = own(&f, zeros(n)), *bwant = own(&f, zeros(c->out));
        got[k] = plugin_delta(&f, scales[k]);
        c->ref(&f.p, scales[k], want, bwant, nrm, 0);
        double e = rel(got[k], want, n);
        ck_assert_msg(e < TOL_DELTA, "%s: delta at scale %g: rel L2 %g", c->name, scales[k], e);
        double *bgot = plugin_bias(&f, scales[k]);
        ck_assert_msg(has_bias ? rel(bgot, bwant, c->out) < TOL_DELTA
                               : !memcmp(bgot, bwant, sizeof(double) * (size_t)c->out),
                      "%s: bias delta", c->name);
    }
    for (int64_t e = 0; e < n; e++) got[0][e] *= 0.6;
    double lin = rel(got[1], got[0], n);
    ck_assert_msg(c->dora || lin < TOL_LINEAR, "%s: delta not linear in scale (%g)", c->name, lin);
    ck_assert_msg((f.in.d->bias_delta != NULL) == !strcmp(c->kind, "full"),
                  "%s: only full has bias_delta", c->kind);
    fixture_free(&f);
}
END_TEST

/* y = base(x) + forward(x) against base(x) computed with W + delta, b + bias delta. */
START_TEST(test_forward_vs_merged) {
    fixture f;
    const kcase *c = &CASES[_i];
    const double scale = 0.8;
    fixture_make(&f, c, (uint64_t)_i + 101);
    double *x = own(&f, randoms(f.nx)), *b = own(&f, randoms(c->out));
    double *y0 = own(&f, zeros(f.ny)), *ym = own(&f, zeros(f.ny));
    apply(c, y0, x, f.p.w, b);
    lh_tensor *xt = own_t(&f, mk(c->xndim, c->x, x)), *yt = own_t(&f, mk(f.nd, f.ys, y0));
    ck_assert_msg(f.in.d->forward(f.in.s, yt, xt, scale, f.in.err, sizeof f.in.err) == LH_OK,
                  "%s: %s", c->name, f.in.err);
    double *d = plugin_delta(&f, scale), *bd = plugin_bias(&f, scale);
    for (int64_t e = 0; e < wnumel(c); e++) d[e] += f.p.w[e];
    for (int64_t o = 0; o < c->out; o++) bd[o] += b[o];
    apply(c, ym, x, d, bd);
    double e = rel(own(&f, rd(yt)), ym, f.ny);
    ck_assert_msg(e < TOL_FWD, "%s: runtime vs merged rel L2 %g", c->name, e);
    fixture_free(&f);
}
END_TEST

/* backward's += into t (held `before`), against want. */
static void check_grad(fixture *f, const char *what, lh_tensor *t, const double *before,
                       const double *want) {
    double *got = own(f, rd(t));
    sub(got, before, numel(t));
    double e = rel(got, want, numel(t));
    ck_assert_msg(e < TOL_GRAD, "%s: gradient of %s: rel L2 %g", f->c->name, what, e);
}

/* Gradients of every tensor and of x against finite differences of the loss;
 * then only the last tensor trained, without dx: the same gradient. */
START_TEST(test_backward_fd) {
    fixture f;
    const kcase *c = &CASES[_i];
    const double scale = 0.7;
    fixture_make(&f, c, (uint64_t)_i + 201);
    inst *in = &f.in;
    double *x = own(&f, randoms(f.nx)), *dy = own(&f, randoms(f.ny)), *dx0 = own(&f, randoms(f.nx));
    double *g0[MAX_T], nrm[16];
    lh_tensor *xt = own_t(&f, mk(c->xndim, c->x, x)), *dyt = own_t(&f, mk(f.nd, f.ys, dy));
    lh_tensor *dxt = own_t(&f, mk(c->xndim, c->x, dx0)), *grads[MAX_T] = {0}, *only[MAX_T] = {0};
    for (int t = 0; t < c->nt; t++) {
        g0[t] = own(&f, randoms(prod(c->t[t].ndim, c->t[t].shape)));
        grads[t] = own_t(&f, mk(c->t[t].ndim, c->t[t].shape, g0[t]));
    }
    ck_assert_msg(in->d->backward(in->s, dxt, grads, dyt, xt, scale, in->err, sizeof in->err) ==
                      LH_OK,
                  "%s: %s", c->name, in->err);
    loss(&f.p, x, dy, scale, nrm, 0); /* DoRA: the norms, held constant below */
    for (int t = 0; t < c->nt; t++)
        check_grad(&f, c->t[t].suffix, grads[t], g0[t],
                   own(&f, fd(&f.p, f.p.v[t], numel(grads[t]), x, dy, scale, nrm)));
    check_grad(&f, "x", dxt, dx0, own(&f, fd(&f.p, x, f.nx, x, dy, scale, nrm)));
    int l = c->nt - 1;
    only[l] = own_t(&f, mk(c->t[l].ndim, c->t[l].shape, NULL));
    ck_assert_msg(in->d->backward(in->s, NULL, only, dyt, xt, scale, in->err, sizeof in->err) ==
                      LH_OK,
                  "%s: %s", c->name, in->err);
    double *full_run = own(&f, rd(grads[l]));
    sub(full_run, g0[l], numel(grads[l]));
    check_grad(&f, "the last tensor alone", only[l], own(&f, zeros(numel(only[l]))), full_run);
    fixture_free(&f);
}
END_TEST

/* ---- Bad input ---- */

/* Create case c; tensor nan_tensor (if >= 0) gets a NaN (tensor 0) or Inf. */
static lh_status try_create(inst *in, const kcase *c, int nan_tensor) {
    vals p;
    vals_make(&p, c, 7);
    if (nan_tensor >= 0) p.v[nan_tensor][1] = nan_tensor ? INFINITY : NAN;
    inst_layer(in, &p);
    in->d = kind(c->kind);
    snprintf(in->err, sizeof in->err, "(no message)");
    inst_create(in);
    vals_free(&p);
    return in->st;
}

static void expect_refusal(const kcase *c, int nan_tensor, lh_status want,
                           const char *const *words) {
    inst in;
    lh_status st = try_create(&in, c, nan_tensor);
    ck_assert_msg(st == want, "%s: status %d, expected %d (%s)", c->name, st, want, in.err);
    ck_assert_msg(in.s == NULL, "%s: state set on failure", c->name);
    ck_assert_msg(strstr(in.err, LAYER) != NULL, "%s: message lacks the layer: %s", c->name,
                  in.err);
    for (; words && *words; words++)
        ck_assert_msg(strstr(in.err, *words) != NULL, "%s: message lacks '%s': %s", c->name, *words,
                      in.err);
    inst_free(&in);
}

static const kcase *case_named(const char *name) {
    for (int i = 0; i < N_CASES; i++)
        if (!strcmp(CASES[i].name, name)) return &CASES[i];
    ck_abort_msg("no case %s", name);
    return NULL;
}

START_TEST(test_shape_mismatch) {
    kcase c = *case_named("lora_linear_1x1_axes");
    c.t[1] = (tspec)T2(UP, 5, 2);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){UP, "[5, 2]", "[4, 2]", "[4, 6]", NULL});
    c = *case_named("locon_3x3_s1_p1");
    c.t[0] = (tspec)T4(DOWN, 2, 3, 1, 1);
    expect_refusal(
        &c, -1, LH_ERR_SHAPE,
        (const char *const[]){DOWN, "[2, 3, 1, 1]", "[2, 3, 3, 3]", "[4, 3, 3, 3]", NULL});
    c = *case_named("full_linear_bias");
    c.t[0] = (tspec)T2("diff", 6, 4);
    expect_refusal(&c, -1, LH_ERR_SHAPE, (const char *const[]){"diff", "[6, 4]", "[4, 6]", NULL});
    c = *case_named("loha_conv");
    c.t[1] = (tspec)T2("hada_w1_b", 2, 3);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){"hada_w1_b", "[2, 3]", "[2, 27]", NULL});
    c = *case_named("lokr_linear_whole");
    c.t[0] = (tspec)T2("lokr_w1", 3, 2);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){"lokr_w1", "[3, 2]", "[4, 6]", NULL});
    c = *case_named("peft_dora_linear");
    c.t[2] = (tspec)T1("lora_magnitude_vector", 6);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){"lora_magnitude_vector", "[6]", NULL});
}
END_TEST

START_TEST(test_rank_disagreement) {
    kcase c = *case_named("lora_linear_3d_x");
    c.t[1] = (tspec)T2(UP, 4, 3);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){"rank", DOWN, UP, "[2, 6]", "[4, 3]", NULL});
    c = *case_named("loha_linear");
    c.t[3] = (tspec)T2("hada_w2_b", 2, 6);
    expect_refusal(&c, -1, LH_ERR_SHAPE,
                   (const char *const[]){"rank", "hada_w2_a", "hada_w2_b", NULL});
}
END_TEST

START_TEST(test_bad_alpha) {
    const double bad[] = {0.0, -2.0, INFINITY, -INFINITY};
    const char *names[] = {"lora_linear_3d_x", "loha_linear", "lokr_linear_factorised_w2",
                           "full_linear_bias"};
    for (int k = 0; k < 4; k++)
        for (size_t a = 0; a < sizeof bad / sizeof bad[0]; a++) {
            kcase c = *case_named(names[k]);
            c.alpha = bad[a];
            expect_refusal(&c, -1, LH_ERR_INVALID, (const char *const[]){"alpha", NULL});
        }
}
END_TEST

START_TEST(test_non_finite) {
    for (int i = 0; i < N_CASES; i++)
        for (int t = 0; t < CASES[i].nt; t++)
            expect_refusal(&CASES[i], t, LH_ERR_NUMERIC,
                           (const char *const[]){CASES[i].t[t].suffix, NULL});
}
END_TEST

START_TEST(test_missing_tensors) {
    kcase c = *case_named("lora_linear_3d_x");
    c.nt = 1; /* down only: still LoRA's, refused at create */
    inst in;
    vals p;
    vals_make(&p, &c, 3);
    inst_layer(&in, &p);
    ck_assert(kind("lora")->recognise(&in.layer));
    inst_free(&in);
    vals_free(&p);
    expect_refusal(&c, -1, LH_ERR_NOT_FOUND, (const char *const[]){UP, "missing", NULL});
    c = *case_named("loha_tucker");
    c.nt = 5; /* hada_t1 without hada_t2 */
    expect_refusal(&c, -1, LH_ERR_NOT_FOUND, (const char *const[]){"hada_t2", NULL});
    c = *case_named("full_linear_bias");
    c.t[0] = c.t[1];
    c.nt = 1; /* diff_b alone */
    expect_refusal(&c, -1, LH_ERR_NOT_FOUND, (const char *const[]){"diff is missing", NULL});
    c = *case_named("lokr_linear_factorised_w2");
    c.nt = 2; /* lokr_w2_a without lokr_w2_b */
    expect_refusal(&c, -1, LH_ERR_NOT_FOUND, (const char *const[]){"lokr_w2_b", NULL});
}
END_TEST

START_TEST(test_bad_combinations) {
    kcase c = *case_named("lora_linear_3d_x");
    c.t[c.nt++] = (tspec)T4(MID, 2, 2, 1, 1); /* Tucker on a linear layer */
    expect_refusal(&c, -1, LH_ERR_SHAPE, (const char *const[]){MID, NULL});
    c = *case_named("peft_dora_linear");
    c.t[c.nt++] = (tspec)T2("dora_scale", 4, 1);
    expect_refusal(&c, -1, LH_ERR_INVALID,
                   (const char *const[]){"dora_scale", "lora_magnitude_vector", NULL});
    c = *case_named("lokr_linear_factorised_w2");
    c.t[c.nt++] = (tspec)T2("lokr_w2", 2, 2);
    expect_refusal(&c, -1, LH_ERR_INVALID, (const char *const[]){"lokr_w2", "lokr_w2_a", NULL});
    /* DoRA without the base weight */
    c = *case_named("dora_scale_input_axis_linear");
    inst in;
    vals p;
    vals_make(&p, &c, 5);
    inst_layer(&in, &p);
    in.d = kind("lora");
    in.layer.base_weight = NULL;
    ck_assert_int_eq(in.d->create(&in.s, H, &in.layer, in.err, sizeof in.err), LH_ERR_INVALID);
    ck_assert_msg(strstr(in.err, "base weight") && strstr(in.err, LAYER), "%s", in.err);
    inst_free(&in);
    vals_free(&p);
}
END_TEST

/* Each kind claims its own groups only; an unknown suffix is nobody's. */
START_TEST(test_recognise) {
    static const char *const kinds[] = {"lora", "loha", "lokr", "full"};
    for (int i = 0; i < N_CASES; i++) {
        inst in;
        vals p;
        kcase c = CASES[i];
        vals_make(&p, &c, 9);
        inst_layer(&in, &p);
        for (int k = 0; k < 4; k++)
            ck_assert_msg(kind(kinds[k])->recognise(&in.layer) == !strcmp(kinds[k], c.kind),
                          "%s: recognise of %s", c.name, kinds[k]);
        in.at[in.layer.n_tensors++] = (lh_adapter_tensor){"lora_extra.weight", in.ts[0]};
        for (int k = 0; k < 4; k++)
            ck_assert_msg(!kind(kinds[k])->recognise(&in.layer), "%s + extra: %s claims it", c.name,
                          kinds[k]);
        inst_free(&in);
        vals_free(&p);
    }
}
END_TEST

/* Runtime calls refuse tensors of the wrong shape instead of reading past them. */
START_TEST(test_bad_runtime_shapes) {
    const char *names[] = {"lora_linear_3d_x", "locon_3x3_s2_p1", "dora_scale_output_axis_conv",
                           "loha_tucker", "full_conv_bias"};
    for (int k = 0; k < 5; k++) {
        fixture f;
        const kcase *c = case_named(names[k]);
        fixture_make(&f, c, 11);
        inst *in = &f.in;
        int64_t xs[4];
        memcpy(xs, c->x, sizeof xs);
        xs[c->ndim == 2 ? c->xndim - 1 : 1] += 1; /* wrong input channels */
        lh_tensor *x = own_t(&f, mk(c->xndim, xs, NULL)), *y = own_t(&f, mk(f.nd, f.ys, NULL));
        ck_assert_int_eq(in->d->forward(in->s, y, x, 1.0, in->err, sizeof in->err), LH_ERR_SHAPE);
        ck_assert_msg(strstr(in->err, LAYER), "%s", in->err);
        lh_tensor *xg = own_t(&f, mk(c->xndim, c->x, NULL));
        lh_tensor *dy = own_t(&f, mk(1, (int64_t[]){3}, NULL)); /* wrong dy */
        ck_assert(in->d->backward(in->s, xg, NULL, dy, xg, 1.0, in->err, sizeof in->err) != LH_OK);
        lh_tensor *grads[MAX_T] = {own_t(&f, mk(1, (int64_t[]){2}, NULL))}; /* wrong grad */
        ck_assert(in->d->backward(in->s, NULL, grads, y, xg, 1.0, in->err, sizeof in->err) !=
                  LH_OK);
        fixture_free(&f);
    }
}
END_TEST

/* update(): an instance made from values A, updated with values B, runs
 * exactly as one made from B; a kind without it (or DoRA and LoHa's Tucker
 * form, which decline with LH_ERR_UNSUPPORTED) is recreated by the host
 * instead. */
START_TEST(test_update) {
    const kcase *c = &CASES[_i];
    vals a, b;
    vals_make(&a, c, (uint64_t)_i + 301);
    vals_make(&b, c, (uint64_t)_i + 401);
    inst ia, ib;
    inst_make(&ia, &a);
    inst_make(&ib, &b);
    const lh_adapter_desc *d = ia.d;
    int has = d->info.size > offsetof(lh_adapter_desc, update) && d->update;
    ck_assert_msg(has == (!strcmp(c->kind, "lora") || !strcmp(c->kind, "loha")),
                  "%s: only lora and loha have update", c->name);
    int declines = c->dora || !strcmp(c->name, "loha_tucker");
    lh_status st = has ? d->update(ia.s, &ib.layer, ia.err, sizeof ia.err) : LH_ERR_UNSUPPORTED;
    if (declines || !has) {
        ck_assert_msg(st == LH_ERR_UNSUPPORTED, "%s: update gave %d", c->name, (int)st);
    } else {
        ck_assert_msg(st == LH_OK, "%s: update: %s", c->name, ia.err);
        double *x = randoms(prod(c->xndim, c->x));
        int64_t ys[4];
        int nd = yshape(c, ys);
        int64_t ny = prod(nd, ys);
        lh_tensor *xt = mk(c->xndim, c->x, x);
        lh_tensor *ya = mk(nd, ys, NULL), *yb = mk(nd, ys, NULL);
        ck_assert_int_eq(d->forward(ia.s, ya, xt, 0.9, ia.err, sizeof ia.err), LH_OK);
        ck_assert_int_eq(d->forward(ib.s, yb, xt, 0.9, ib.err, sizeof ib.err), LH_OK);
        double *va = rd(ya), *vb = rd(yb);
        ck_assert_msg(!memcmp(va, vb, sizeof(double) * (size_t)ny), "%s: updated instance "
                      "differs from a fresh one", c->name);
        free(x), free(va), free(vb);
        drop(xt), drop(ya), drop(yb);
    }
    inst_free(&ia);
    inst_free(&ib);
    vals_free(&a);
    vals_free(&b);
}
END_TEST

/* ---- The host's conv2d_backward service ---- */

/* The host service against direct sums in double: dx written, dw +=
 * dw_scale * dL/dw (dw starts non-zero), at stride 2 and padding 1 with a
 * 3x3 kernel and at a 1x1 kernel; argument errors. */
START_TEST(test_conv2d_backward_service) {
    ck_assert(H->size > offsetof(lh_host_api, conv2d_backward) && H->conv2d_backward);
    static const int geo[2][4] = {{3, 3, 2, 1}, {1, 1, 1, 0}}; /* kh, kw, stride, pad */
    for (int gi = 0; gi < 2; gi++) {
        int64_t n = 2, ci = 3, h = 7, w = 6, co = 4, kh = geo[gi][0], kw = geo[gi][1];
        int stride = geo[gi][2], pad = geo[gi][3];
        int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
        const int64_t xs[4] = {n, ci, h, w}, ws[4] = {co, ci, kh, kw}, ys[4] = {n, co, ho, wo};
        double *xv = randoms(prod(4, xs)), *wv = randoms(prod(4, ws)), *dyv = randoms(prod(4, ys));
        double *dw0 = randoms(prod(4, ws)), *dxr = zeros(prod(4, xs)), *dwr = zeros(prod(4, ws));
        for (int64_t i = 0; i < n; i++)
            for (int64_t o = 0; o < co; o++)
                for (int64_t oy = 0; oy < ho; oy++)
                    for (int64_t ox = 0; ox < wo; ox++) {
                        double g = dyv[((i * co + o) * ho + oy) * wo + ox];
                        for (int64_t c = 0; c < ci; c++)
                            for (int64_t ky = 0; ky < kh; ky++)
                                for (int64_t kx = 0; kx < kw; kx++) {
                                    int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                    if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                    int64_t xi = ((i * ci + c) * h + iy) * w + ix;
                                    int64_t wi = ((o * ci + c) * kh + ky) * kw + kx;
                                    dxr[xi] += g * wv[wi];
                                    dwr[wi] += g * xv[xi];
                                }
                    }
        for (int64_t i = 0; i < prod(4, ws); i++) dwr[i] = dw0[i] + 0.5 * dwr[i];
        lh_tensor *x = mk(4, xs, xv), *wt = mk(4, ws, wv), *dy = mk(4, ys, dyv);
        lh_tensor *dx = mk(4, xs, xv), *dw = mk(4, ws, dw0); /* dx's old values are overwritten */
        ck_assert_int_eq(H->conv2d_backward(dx, dw, dy, x, wt, stride, pad, 0.5), LH_OK);
        double *dxg = rd(dx), *dwg = rd(dw);
        double ex = rel(dxg, dxr, prod(4, xs)), ew = rel(dwg, dwr, prod(4, ws));
        printf("conv2d_backward %lldx%lld stride %d pad %d: dx rel L2 %.2e, dw %.2e\n",
               (long long)kh, (long long)kw, stride, pad, ex, ew);
        ck_assert_msg(ex < 1e-6 && ew < 1e-6, "dx %g, dw %g", ex, ew);
        /* errors: no output, a misshaped dy, a NULL input */
        ck_assert_int_eq(H->conv2d_backward(NULL, NULL, dy, x, wt, stride, pad, 1.0),
                         LH_ERR_INVALID);
        ck_assert_int_eq(H->conv2d_backward(dx, NULL, x, x, wt, stride, pad, 1.0), LH_ERR_SHAPE);
        ck_assert_msg(strstr(H->last_error(), "conv2d_backward"), "%s", H->last_error());
        ck_assert_int_eq(H->conv2d_backward(dx, dw, dy, NULL, wt, stride, pad, 1.0),
                         LH_ERR_INVALID);
        lh_tensor *ts[] = {x, wt, dy, dx, dw};
        for (int i = 0; i < 5; i++) drop(ts[i]);
        double *vs[] = {xv, wv, dyv, dw0, dxr, dwr, dxg, dwg};
        for (int i = 0; i < 8; i++) free(vs[i]);
    }
}
END_TEST

int main(void) {
    H = lh_host_api_get();
    lh_error err = {0};
    if (lh_registry_create(&g_reg, &err) != LH_OK ||
        lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) != LH_OK) {
        fprintf(stderr, "registry: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("adapter_kinds");
    TCase *tc = tcase_create("kinds");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_weight_delta, 0, N_CASES);
    tcase_add_loop_test(tc, test_forward_vs_merged, 0, N_CASES);
    tcase_add_loop_test(tc, test_backward_fd, 0, N_CASES);
    tcase_add_loop_test(tc, test_update, 0, N_CASES);
    tcase_add_test(tc, test_conv2d_backward_service);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 120);
    tcase_add_test(bad, test_shape_mismatch);
    tcase_add_test(bad, test_rank_disagreement);
    tcase_add_test(bad, test_bad_alpha);
    tcase_add_test(bad, test_non_finite);
    tcase_add_test(bad, test_missing_tensors);
    tcase_add_test(bad, test_bad_combinations);
    tcase_add_test(bad, test_recognise);
    tcase_add_test(bad, test_bad_runtime_shapes);
    suite_add_tcase(s, bad);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lh_registry_destroy(g_reg);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
