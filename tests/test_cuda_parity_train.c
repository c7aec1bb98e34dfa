/* CUDA parity for training, against the cpu backend:
 * - one U-Net training step (lh_unet_train_step) on the tiny SD 1.x model
 *   with runtime PEFT LoRA adapters, LoCon 3x3 convolutions included
 *   (tests/fixtures/gradients): the loss and every adapter gradient, in
 *   float32 with and without gradient checkpointing (TOL_F32), and with
 *   fp16 (loss scale 65536; also with LoRA dropout, whose gradients must
 *   stay float32 accumulators) and bf16 activations (TOL_HALF); the float32
 *   gradients also against torch autograd's float64 ones (relative L2 1e-4,
 *   as test_unet_backward);
 * - whole runs of lh_train_run, three optimizer steps each: LoRA in float32
 *   (U-Net only, and with the text encoder and LoRA dropout) and in fp16,
 *   LoHa in float32 and bf16,
 *   and full-parameter training (the U-Net's own weights and
 *   AdamW on the device): each step's loss, and the exported adapter or
 *   U-Net tensors; and a run resumed on the device from its checkpoint
 *   against the uninterrupted one.
 * Skips (77) without the module or a device. Run: ctest -R cuda_parity_train. */
#include "cuda_parity.h"

#include <sys/stat.h>

#include "adapter.h"
#include "dataset.h"
#include "lorahost/adapters.h"
#include "lorahost/safetensors.h"
#include "model.h"
#include "tensor.h"
#include "trainer.h"
#include "unet.h"
#include "../kernels/backend.h"

#define GRAD_PREFIX "unet.grad."
#define TOL_REF 1e-4 /* relative L2 of the float32 gradients against float64 */

static char g_src[4096];
static lh_registry *g_reg;

/* n floats of tensor `name` of f, malloc'd. */
static float *st_floats(const lh_st_file *f, const char *name, int64_t *n) {
    const lh_st_tensor *t = lh_st_find(f, name);
    ck_assert_msg(t, "%s: no tensor %s", lh_st_name(f), name);
    float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    ck_assert_ptr_nonnull(v);
    lh_error err = {0};
    ck_assert_msg(lh_st_read_f32(v, (size_t)t->numel, f, name, &err) == LH_OK, "%s", err.msg);
    if (n) *n = t->numel;
    return v;
}

/* ---- One training step on each backend ---- */

typedef struct side {
    lh_backend *be;
    lh_model *m;
    lh_adapter *a;
    float *x, *ctx, *dctx, *target; /* backend */
} side;

static float *dev_copy(lh_backend *be, const float *host, int64_t n) { return on(be, host, n); }

static void side_open(side *s, lh_backend *be, const lh_st_file *ref) {
    memset(s, 0, sizeof *s);
    s->be = be;
    char path[4400];
    lh_error err = {0};
    snprintf(path, sizeof path, "%s/tests/fixtures/models/sd1_tiny", g_src);
    ck_assert_msg(lh_model_open(&s->m, be, path, &err) == LH_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tests/fixtures/gradients/sd1_lora.safetensors", g_src);
    lh_adapter_load_opts lo = {.trainable = 1};
    ck_assert_msg(lh_adapter_load(&s->a, s->m, g_reg, path, &lo, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_adapter_grads_enable(s->a, &err) == LH_OK, "%s", err.msg);
    lh_adapter_weights w;
    lh_adapter_weights_init(&w, 1.0);
    ck_assert_msg(lh_adapter_set_ex(s->m, &s->a, &w, 1, LH_ADAPTER_RUNTIME, &err) == LH_OK, "%s",
                  err.msg);
    int64_t nx, nc;
    float *x = st_floats(ref, "unet.x", &nx), *c = st_floats(ref, "unet.context", &nc);
    float *tg = st_floats(ref, "unet.target", NULL);
    s->x = dev_copy(be, x, nx);
    s->ctx = dev_copy(be, c, nc);
    s->dctx = dev_copy(be, NULL, nc);
    s->target = dev_copy(be, tg, nx);
    free(x);
    free(c);
    free(tg);
}

static void side_close(side *s) {
    float *d[] = {s->x, s->ctx, s->dctx, s->target};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) s->be->ops->free(s->be, d[i]);
    lh_adapter_unload(s->a);
    lh_model_close(s->m);
}

static float side_step(side *s, const lh_st_file *ref, lh_dtype prec, float scale, int ckpt) {
    const lh_st_tensor *x = lh_st_find(ref, "unet.x"), *c = lh_st_find(ref, "unet.context");
    float *t = st_floats(ref, "unet.t", NULL);
    lh_unet_mse mse = {s->be, s->target};
    lh_unet_train_opts o = {.checkpointing = ckpt, .precision = prec, .loss_scale = scale};
    lh_unet_overflow rep = {0};
    lh_error err = {0};
    float loss = -1.0f;
    lh_adapter_grads_zero(s->a);
    ck_assert_msg(lh_unet_train_step(s->m->unet, &o, lh_unet_mse_loss, &mse, &loss, s->dctx, s->x,
                                     t, s->ctx, x->shape[0], x->shape[2], x->shape[3],
                                     c->shape[1], &rep, &err) == LH_OK,
                  "%s: %s", s->be->ops->name, err.msg);
    ck_assert_msg(rep.count == 0, "%s: overflow at %s", s->be->ops->name, rep.at[0].unit);
    if (scale > 0) ck_assert_int_eq(lh_adapter_grads_unscale(s->a, 1.0f / scale), 0);
    free(t);
    return loss;
}

/* Relative L2 ||a - b|| / ||b|| of two n-float arrays, accumulated. */
typedef struct l2 {
    double num, den;
} l2;

static void l2_add(l2 *e, const float *a, const float *b, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        double d = (double)a[k] - b[k];
        e->num += d * d;
        e->den += (double)b[k] * b[k];
    }
}

/* bf16 adapter gradients, device against cpu (relative L2): test_step_half */
#define TOL_BF16_GRAD 5e-2
/* One trained tensor of a half-precision run (relative L2), device against
 * cpu: elements whose gradients are rounding noise take AdamW steps of
 * either sign. Under tests/cuda_emu after three steps: 0.06 (lora-fp16)
 * and 0.18 (loha-bf16) for the worst tensor, 2.4e-5 and 1.9e-5 for all
 * tensors together (held to TOL_HALF). */
#define TOL_EACH_HALF 0.5

static double l2_rel(const l2 *e) { return e->den > 0 ? sqrt(e->num / e->den) : sqrt(e->num); }

/* Tensor t's values on the host (malloc'd): a trainable adapter's
 * gradients live on the device there. */
static float *values(const lh_tensor *t) {
    float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    ck_assert_ptr_nonnull(v);
    if (t->be)
        ck_assert_int_eq(t->be->ops->download(t->be, v, t->data, sizeof(float) * (size_t)t->numel),
                         LH_OK);
    else
        memcpy(v, t->data, sizeof(float) * (size_t)t->numel);
    return v;
}

/* The adapter gradients of g (device) against c (cpu): all of them
 * together within tol (relative L2), and each one within 100 tol of
 * max(its norm, 1e-4 of all of them) (a tensor whose gradient cancels to
 * about zero, as time_emb_proj's do where a group norm takes one channel
 * per group, holds only rounding); returns g's relative L2 against the
 * float64 reference, and c's in *c_vs_ref (may be NULL). */
static double compare_grads(const char *what, const side *g, const side *c, const lh_st_file *ref,
                            double tol, double *c_vs_ref) {
    l2 all = {0, 0}, vs_ref = {0, 0}, c_ref = {0, 0};
    int n = 0;
    for (int pass = 0; pass < 2; pass++) { /* the whole first, then each tensor */
        double worst = 0;
        const char *worst_key = "";
        for (size_t i = 0; i < lh_st_count(ref); i++) {
            const lh_st_tensor *t = lh_st_get(ref, i);
            if (strncmp(t->name, GRAD_PREFIX, strlen(GRAD_PREFIX)) != 0) continue;
            const char *key = t->name + strlen(GRAD_PREFIX);
            const lh_tensor *gg = lh_adapter_grad(g->a, key), *cg = lh_adapter_grad(c->a, key);
            ck_assert_msg(gg && cg && gg->numel == t->numel && cg->numel == t->numel, "%s", key);
            float *gv = values(gg), *cv = values(cg);
            l2 one = {0, 0};
            l2_add(&one, gv, cv, t->numel);
            if (pass == 0) {
                l2_add(&all, gv, cv, t->numel);
                float *want = st_floats(ref, t->name, NULL);
                l2_add(&vs_ref, gv, want, t->numel);
                l2_add(&c_ref, cv, want, t->numel);
                free(want);
                n++;
            }
            free(gv);
            free(cv);
            if (pass == 0) continue;
            double e = sqrt(one.num) / fmax(sqrt(one.den), 1e-4 * sqrt(all.den));
            if (e > worst) worst = e, worst_key = t->name;
        }
        if (pass == 0) {
            ck_assert_int_gt(n, 0);
            printf("%-24s %d adapter gradients: rel L2 %.2e (tol %.0e)\n", what, n, l2_rel(&all),
                   tol);
            PARITY_EXPECT(l2_rel(&all) <= tol, "%s: adapter gradients differ by %.3e", what,
                          l2_rel(&all));
        } else {
            printf("%-24s worst tensor %.2e (tol %.0e) %s\n", what, worst, 100 * tol, worst_key);
            PARITY_EXPECT(worst <= 100 * tol, "%s: %s differs by %.3e", what, worst_key, worst);
        }
    }
    if (c_vs_ref) *c_vs_ref = l2_rel(&c_ref);
    return l2_rel(&vs_ref);
}

static lh_st_file *open_ref(void) {
    char path[4400];
    lh_error err = {0};
    lh_st_file *ref = NULL;
    snprintf(path, sizeof path, "%s/tests/fixtures/gradients/sd1_grads.safetensors", g_src);
    ck_assert_msg(lh_st_open(&ref, path, &err) == LH_OK, "%s", err.msg);
    return ref;
}

START_TEST(test_step_fp32) {
    lh_st_file *ref = open_ref();
    side g, c;
    side_open(&g, g_gpu, ref);
    side_open(&c, g_cpu, ref);
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        float lg = side_step(&g, ref, LH_DTYPE_F32, 0, ckpt);
        float lc = side_step(&c, ref, LH_DTYPE_F32, 0, ckpt);
        char what[64];
        snprintf(what, sizeof what, "step fp32%s loss", ckpt ? " checkpointed" : "");
        expect_close(what, &lg, &lc, 1, TOL_F32);
        snprintf(what, sizeof what, "fp32%s", ckpt ? " ckpt" : "");
        double e = compare_grads(what, &g, &c, ref, TOL_F32, NULL);
        printf("%-48s relative L2 %.2e against torch fp64 (tol %.0e)\n", what, e, TOL_REF);
        PARITY_EXPECT(e <= TOL_REF, "%s: %.3e against float64", what, e);
    }
    side_close(&g);
    side_close(&c);
    lh_st_close(ref);
}
END_TEST

/* Whether v is an fp16 number in the normal range (the low 13 mantissa
 * bits zero): a float32 gradient accumulator is, by chance, once in 8192. */
static int exactly_half(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    uint32_t e = (u >> 23) & 0xFFu;
    return e >= 113 && e <= 142 && (u & 0x1FFFu) == 0;
}

/* An fp16 step with LoRA dropout (the staged path on a device): gradients
 * as the cpu's, and still float32 accumulators (not rounded to fp16). */
START_TEST(test_step_fp16_dropout) {
    lh_st_file *ref = open_ref();
    side g, c;
    side_open(&g, g_gpu, ref);
    side_open(&c, g_cpu, ref);
    side *both[2] = {&g, &c};
    lh_error err = {0};
    for (int k = 0; k < 2; k++) {
        lh_adapt *ad = NULL;
        ck_assert_msg(lh_adapt_get(&ad, both[k]->m, &err) == LH_OK, "%s", err.msg);
        ad->layers.dropout = 0.1;
        ad->layers.dropout_seed = 1234;
    }
    float lg = side_step(&g, ref, LH_DTYPE_F16, 65536.0f, 0);
    float lc = side_step(&c, ref, LH_DTYPE_F16, 65536.0f, 0);
    expect_close("step fp16 + dropout loss", &lg, &lc, 1, TOL_HALF);
    compare_grads("fp16 dropout", &g, &c, ref, TOL_HALF, NULL);
    int64_t nonzero = 0, half = 0;
    for (size_t i = 0; i < lh_st_count(ref); i++) {
        const lh_st_tensor *t = lh_st_get(ref, i);
        if (strncmp(t->name, GRAD_PREFIX, strlen(GRAD_PREFIX)) != 0) continue;
        float *v = values(lh_adapter_grad(g.a, t->name + strlen(GRAD_PREFIX)));
        for (int64_t e = 0; e < t->numel; e++)
            if (v[e] != 0.0f) nonzero++, half += exactly_half(v[e]);
        free(v);
    }
    printf("%-48s %lld of %lld gradient values exactly fp16\n", "fp16 dropout", (long long)half,
           (long long)nonzero);
    ck_assert_msg(half * 100 < nonzero, "%lld of %lld gradient values are exactly fp16: "
                  "the accumulators were rounded", (long long)half, (long long)nonzero);
    side_close(&g);
    side_close(&c);
    lh_st_close(ref);
}
END_TEST

START_TEST(test_step_half) {
    static const struct {
        lh_dtype prec;
        float scale;
        const char *name;
    } cases[] = {{LH_DTYPE_F16, 65536.0f, "fp16"}, {LH_DTYPE_BF16, 1.0f, "bf16"}};
    lh_st_file *ref = open_ref();
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        side g, c; /* fresh models: each precision rounds the base weights its own way */
        side_open(&g, g_gpu, ref);
        side_open(&c, g_cpu, ref);
        float lg = side_step(&g, ref, cases[k].prec, cases[k].scale, 1);
        float lc = side_step(&c, ref, cases[k].prec, cases[k].scale, 1);
        char what[64];
        snprintf(what, sizeof what, "step %s loss", cases[k].name);
        expect_close(what, &lg, &lc, 1, TOL_HALF);
        /* bf16: each side's gradients are about 3e-2 from float64 (8
         * significant bits), so two sides that sum in other orders part by
         * as much (2.8e-2 under tests/cuda_emu): they are held to
         * TOL_BF16_GRAD apart, and the device to the cpu's own accuracy
         * against float64 */
        int bf = cases[k].prec == LH_DTYPE_BF16;
        double ec = 0;
        double e = compare_grads(cases[k].name, &g, &c, ref, bf ? TOL_BF16_GRAD : TOL_HALF, &ec);
        /* half precision really is on: fp32 is 1e4 times closer to float64 */
        printf("%-48s relative L2 %.2e against torch fp64 (the cpu's %.2e)\n", cases[k].name, e,
               ec);
        ck_assert_msg(e > 1e-4, "%s: %.3e against float64, as close as fp32", cases[k].name, e);
        PARITY_EXPECT(e <= 1.25 * ec + 1e-3, "%s: %.3e against float64, the cpu's %.3e",
                      cases[k].name, e, ec);
        side_close(&g);
        side_close(&c);
    }
    lh_st_close(ref);
}
END_TEST

/* ---- Whole training runs ---- */

typedef struct losses {
    float v[16];
    int64_t n;
} losses;

static void keep_loss(void *user, const lh_train_progress *p) {
    losses *l = user;
    if (p->step >= 1 && p->step <= 16 && (!p->event || strncmp(p->event, "resumed", 7))) l->v[p->step - 1] = p->loss, l->n = p->step;
}

static char g_dir[64];

/* The fixture images imported at 32x32 into g_dir/data.h5 (once). */
static void dataset(char *path, size_t size) {
    snprintf(path, size, "%s/data.h5", g_dir);
    struct stat sb;
    if (stat(path, &sb) == 0) return;
    char imgs[4400];
    snprintf(imgs, sizeof imgs, "%s/tests/fixtures/datasets/images", g_src);
    lh_dataset_import_opts io = {.resolution = 32, .crop = LH_DATASET_CROP_CENTER};
    lh_error err = {0};
    ck_assert_msg(lh_dataset_import(imgs, path, &io, NULL, NULL, NULL, &err) == LH_OK, "%s",
                  err.msg);
}

/* What a run trains: a LoRA (LoCon on the convs), a LoHa, or every U-Net weight. */
typedef enum { RUN_LORA, RUN_LOHA, RUN_FULL } run_kind;

/* `steps` steps of lh_train_run on be into g_dir/<name> (resuming from its
 * newest checkpoint when `resume`). */
static void train_steps(lh_backend *be, const char *name, run_kind kind, int te, lh_dtype prec,
                        int64_t steps, int resume, losses *l) {
    char model[4400], data[4400], out[4400];
    snprintf(model, sizeof model, "%s/tests/fixtures/models/sd1_tiny", g_src);
    dataset(data, sizeof data);
    snprintf(out, sizeof out, "%s/%s", g_dir, name);
    lh_train_opts o;
    lh_train_opts_default(&o);
    static const char *const targets[] = {"to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"};
    for (int i = 0; i < 6; i++) o.targets[i] = targets[i];
    o.n_targets = 6;
    o.model = model;
    o.dataset = data;
    o.output_dir = out;
    o.backend = be;
    o.threads = 1;
    o.steps = steps;
    o.resume = resume;
    o.batch_size = 2;
    o.lr = 1e-3;
    o.max_grad_norm = 0.05; /* small enough to clip */
    o.seed = 7;
    o.save_every = 0;
    o.full_parameter = kind == RUN_FULL;
    o.adapter = kind == RUN_LOHA ? "loha" : "lora";
    o.train_text_encoder = te;
    o.dropout = te ? 0.1 : 0.0; /* the text-encoder case also takes LoRA dropout (staged) */
    o.precision = prec;
    o.checkpointing = prec != LH_DTYPE_F32;
    /* the device's VAE takes auto (the mixed precision there), the cpu's
     * that type by name: both encode the images alike */
    o.vae_dtype = be == g_gpu ? "auto"
                  : prec == LH_DTYPE_F16 ? "f16" : prec == LH_DTYPE_BF16 ? "bf16" : "f32";
    memset(l, 0, sizeof *l);
    lh_error err = {0};
    float smoothed = 0;
    ck_assert_msg(lh_train_run(&o, g_reg, keep_loss, l, &smoothed, &err) == LH_OK, "%s: %s",
                  be->ops->name, err.msg);
    ck_assert_int_eq(l->n, steps);
}

/* Three steps of lh_train_run on be into g_dir/<name>. */
static void train(lh_backend *be, const char *name, run_kind kind, int te, lh_dtype prec,
                  losses *l) {
    train_steps(be, name, kind, te, prec, 3, 0, l);
}

/* Every tensor of file a against the same-named tensor of file b: all of
 * them together within tol (relative L2), and each one within tol_each
 * (its own relative L2). Not its worst element: where an element's
 * gradient is rounding noise (half precision), AdamW steps it by about lr
 * either way, so one element may differ by its whole size (0.22 of the
 * tensor's largest in lora-fp16 under tests/cuda_emu, all tensors together
 * 2.4e-5). */
static void compare_files(const char *what, const char *a, const char *b, double tol,
                          double tol_each) {
    lh_st_file *fa = NULL, *fb = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_st_open(&fa, a, &err) == LH_OK, "%s", err.msg);
    ck_assert_msg(lh_st_open(&fb, b, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_st_count(fa), lh_st_count(fb));
    double worst = 0;
    const char *at = "";
    l2 all = {0, 0};
    for (size_t i = 0; i < lh_st_count(fa); i++) {
        const lh_st_tensor *t = lh_st_get(fa, i);
        int64_t na, nb;
        float *va = st_floats(fa, t->name, &na), *vb = st_floats(fb, t->name, &nb);
        ck_assert_int_eq(na, nb);
        l2_add(&all, va, vb, na);
        l2 one = {0, 0};
        l2_add(&one, va, vb, na);
        double d = sqrt(one.num) / fmax(sqrt(one.den), 1e-6);
        if (d > worst) worst = d, at = t->name;
        free(va);
        free(vb);
    }
    printf("%-36s %zu tensors: rel L2 %.2e (tol %.0e), worst tensor %.2e (tol %.0e) %s\n", what,
           lh_st_count(fa), l2_rel(&all), tol, worst, tol_each, at);
    PARITY_EXPECT(l2_rel(&all) <= tol, "%s: the tensors differ by %.3e", what, l2_rel(&all));
    PARITY_EXPECT(worst <= tol_each, "%s: %s differs by %.3e", what, at, worst);
    lh_st_close(fa);
    lh_st_close(fb);
}

static void run_case(const char *name, run_kind kind, int te, lh_dtype prec, double tol_loss,
                     double tol_w, double tol_each) {
    losses lg, lc;
    char gname[64], cname[64], what[96], fa[4400], fb[4400];
    snprintf(gname, sizeof gname, "%s-device", name);
    snprintf(cname, sizeof cname, "%s-cpu", name);
    train(g_gpu, gname, kind, te, prec, &lg);
    train(g_cpu, cname, kind, te, prec, &lc);
    snprintf(what, sizeof what, "train %s: step losses", name);
    expect_close(what, lg.v, lc.v, 3, tol_loss);
    int full = kind == RUN_FULL;
    const char *file = full ? "unet/diffusion_pytorch_model.safetensors" : "lora.safetensors";
    snprintf(fa, sizeof fa, "%s/%s/%s", g_dir, gname, file);
    snprintf(fb, sizeof fb, "%s/%s/%s", g_dir, cname, file);
    snprintf(what, sizeof what, "train %s: %s", name, full ? "U-Net weights" : "adapter");
    compare_files(what, fa, fb, tol_w, tol_each);
}

/* Three AdamW steps move each weight by about lr whatever its gradient's
 * size, so a weight whose gradients are tiny and noisy carries more of the
 * backends' rounding than the whole: each tensor gets 100 times the room. */
START_TEST(test_train_lora_fp32) {
    run_case("lora-fp32", RUN_LORA, 0, LH_DTYPE_F32, TOL_F32, TOL_F32, 100 * TOL_F32);
}
END_TEST

START_TEST(test_train_lora_te) {
    run_case("lora-te", RUN_LORA, 1, LH_DTYPE_F32, TOL_F32, TOL_F32, 100 * TOL_F32);
}
END_TEST

START_TEST(test_train_lora_fp16) {
    run_case("lora-fp16", RUN_LORA, 0, LH_DTYPE_F16, TOL_HALF, TOL_HALF, TOL_EACH_HALF);
}
END_TEST

/* LoHa: its delta rebuilt and differentiated on the device each step. */
START_TEST(test_train_loha_fp32) {
    run_case("loha-fp32", RUN_LOHA, 0, LH_DTYPE_F32, TOL_F32, TOL_F32, 100 * TOL_F32);
}
END_TEST

START_TEST(test_train_loha_bf16) {
    run_case("loha-bf16", RUN_LOHA, 0, LH_DTYPE_BF16, TOL_HALF, TOL_HALF, TOL_EACH_HALF);
}
END_TEST

START_TEST(test_train_full) { run_case("full", RUN_FULL, 0, LH_DTYPE_F32, TOL_F32, TOL_F32, 100 * TOL_F32); }
END_TEST

/* On the device, a run stopped after step 2 and resumed from its
 * checkpoint (parameters and AdamW moments copied out of device memory and
 * back) ends where the uninterrupted run ends. */
START_TEST(test_resume_on_device) {
    losses a, b;
    train_steps(g_gpu, "resume-whole", RUN_LORA, 0, LH_DTYPE_F32, 3, 0, &a);
    train_steps(g_gpu, "resume-split", RUN_LORA, 0, LH_DTYPE_F32, 2, 0, &b);
    train_steps(g_gpu, "resume-split", RUN_LORA, 0, LH_DTYPE_F32, 3, 1, &b);
    expect_close("resumed run: step 3 loss", &b.v[2], &a.v[2], 1, 1e-6);
    char fa[4400], fb[4400];
    snprintf(fa, sizeof fa, "%s/resume-split/lora.safetensors", g_dir);
    snprintf(fb, sizeof fb, "%s/resume-whole/lora.safetensors", g_dir);
    compare_files("resumed run: adapter", fa, fb, 1e-6, 1e-5);
}
END_TEST

static void suite_setup(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    lh_error err = {0};
    ck_assert_msg(lh_registry_create(&g_reg, &err) == LH_OK &&
                      lh_registry_scan(g_reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    snprintf(g_dir, sizeof g_dir, "/tmp/lh-parity-train-XXXXXX");
    ck_assert(mkdtemp(g_dir));
}

static void suite_teardown(void) {
    lh_registry_destroy(g_reg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

int main(void) {
    Suite *s = suite_create("cuda_parity_train");
    TCase *tc = tcase_create("sd1_tiny");
    tcase_add_unchecked_fixture(tc, suite_setup, suite_teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_step_fp32);
    tcase_add_test(tc, test_step_half);
    tcase_add_test(tc, test_step_fp16_dropout);
    tcase_add_test(tc, test_train_lora_fp32);
    tcase_add_test(tc, test_train_lora_te);
    tcase_add_test(tc, test_train_lora_fp16);
    tcase_add_test(tc, test_train_loha_fp32);
    tcase_add_test(tc, test_train_loha_bf16);
    tcase_add_test(tc, test_train_full);
    tcase_add_test(tc, test_resume_on_device);
    suite_add_tcase(s, tc);
    return parity_run(s);
}
