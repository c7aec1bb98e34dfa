/* lorahost train --config train.ini [--set SECTION.KEY=VALUE ...] [--resume]
 * [--model PATH] [--dataset FILE] [--output DIR] [--device D]: train an adapter
 * (train/trainer.h) with a progress bar on a terminal, plain lines
 * otherwise (docs/training.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "lorahost/config.h"
#include "lorahost/lorahost.h"
#include "trainer.h"

#define NAME "lorahost train"

static void usage(FILE *out) {
    fprintf(out,
            "usage: " NAME " --config FILE.ini [options]\n"
            "Train a LoRA on an HDF5 dataset (lorahost dataset import) as diffusers'\n"
            "train_text_to_image_lora.py does; every [train] key is in docs/config.md.\n"
            "  --config FILE.ini   settings; --set SECTION.KEY=VALUE overrides a key\n"
            "  --model PATH        model.path\n"
            "  --dataset FILE.h5   train.dataset\n"
            "  --output DIR        train.output_dir\n"
            "  --device cpu|cuda   [backend] device: where the U-Net and AdamW run\n"
            "  --resume            continue from the newest good checkpoint in DIR/checkpoints\n"
            "  --quiet             no progress output\n");
}

typedef struct bar {
    int tty, quiet;
    int64_t last_line; /* step of the last plain line */
} bar;

static void progress(void *user, const lh_train_progress *p) {
    bar *b = user;
    if (b->quiet) return;
    if (p->event && !strncmp(p->event, "resumed", 7)) {
        fprintf(stderr, NAME ": step %lld: %s\n", (long long)p->step, p->event);
        return;
    }
    double rate = p->seconds > 0 ? (double)p->step / p->seconds : 0.0;
    double eta = rate > 0 ? (double)(p->steps - p->step) / rate : 0.0;
    if (b->tty) {
        int width = 30, fill = (int)((double)width * (double)p->step / (double)p->steps);
        char line[64];
        for (int i = 0; i < width; i++) line[i] = i < fill ? '#' : '.';
        line[width] = '\0';
        fprintf(stderr, "\r[%s] %lld/%lld loss %.4f (avg %.4f) lr %.2e %.2f it/s ETA %02d:%02d:%02d",
                line, (long long)p->step, (long long)p->steps, (double)p->loss,
                (double)p->smoothed, p->lr, rate, (int)(eta / 3600), (int)(eta / 60) % 60,
                (int)eta % 60);
        if (p->event || p->step == p->steps) fprintf(stderr, "\n");
    }
    if (p->event) fprintf(stderr, NAME ": step %lld: %s\n", (long long)p->step, p->event);
    if (!b->tty && (p->step - b->last_line >= 10 || p->step == p->steps || p->step == 1)) {
        fprintf(stderr, NAME ": step %lld/%lld loss %.5f avg %.5f lr %.3e %.3f it/s eta %.0f s%s\n",
                (long long)p->step, (long long)p->steps, (double)p->loss, (double)p->smoothed,
                p->lr, rate, eta, p->skipped ? " (fp16 steps skipped: see log)" : "");
        b->last_line = p->step;
    }
}

/* Settings -> options. Returns 0, or 1 after printing the error. */
static int read_settings(lh_train_opts *o, const lh_settings *s, lh_registry **reg) {
    lh_error err = {0};
    const char *model, *dataset, *out, *name, *sched, *pred, *prompts, *prec;
    int64_t threads, steps, batch, accum, warmup, rank, seed, save, keep, sample, sample_steps;
    const char *const *targets, *const *dirs;
    size_t n_targets, n_dirs;
    int ckpt, te, full, fmt;
    if (lh_settings_get_string(&model, s, "model.path", &err) ||
        lh_settings_get_int(&threads, s, "backend.threads", &err) ||
        lh_settings_get_string(&o->device, s, "backend.device", &err) ||
        lh_settings_get_string(&o->vae_dtype, s, "model.vae_dtype", &err) ||
        lh_settings_get_list(&dirs, &n_dirs, s, "plugins.dirs", &err) ||
        lh_settings_get_string(&dataset, s, "train.dataset", &err) ||
        lh_settings_get_string(&out, s, "train.output_dir", &err) ||
        lh_settings_get_string(&name, s, "train.output_name", &err) ||
        lh_settings_get_int(&steps, s, "train.steps", &err) ||
        lh_settings_get_double(&o->lr, s, "train.learning_rate", &err) ||
        lh_settings_get_int(&batch, s, "train.batch_size", &err) ||
        lh_settings_get_int(&accum, s, "train.gradient_accumulation_steps", &err) ||
        lh_settings_get_int(&rank, s, "train.rank", &err) ||
        lh_settings_get_double(&o->alpha, s, "train.alpha", &err) ||
        lh_settings_get_int(&seed, s, "train.seed", &err) ||
        lh_settings_get_string(&prec, s, "train.mixed_precision", &err) ||
        lh_settings_get_bool(&ckpt, s, "train.gradient_checkpointing", &err) ||
        lh_settings_get_int(&save, s, "train.save_every", &err) ||
        lh_settings_get_int(&keep, s, "train.keep_checkpoints", &err) ||
        lh_settings_get_list(&targets, &n_targets, s, "train.target_modules", &err) ||
        lh_settings_get_bool(&te, s, "train.train_text_encoder", &err) ||
        lh_settings_get_string(&o->adapter, s, "train.adapter", &err) ||
        lh_settings_get_double(&o->dropout, s, "train.dropout", &err) ||
        lh_settings_get_double(&o->caption_dropout, s, "train.caption_dropout", &err) ||
        lh_settings_get_bool(&full, s, "train.full_parameter", &err) ||
        lh_settings_get_string(&pred, s, "train.prediction_type", &err) ||
        lh_settings_get_double(&o->snr_gamma, s, "train.snr_gamma", &err) ||
        lh_settings_get_double(&o->noise_offset, s, "train.noise_offset", &err) ||
        lh_settings_get_string(&sched, s, "train.lr_scheduler", &err) ||
        lh_settings_get_int(&warmup, s, "train.lr_warmup_steps", &err) ||
        lh_settings_get_double(&o->max_grad_norm, s, "train.max_grad_norm", &err) ||
        lh_settings_get_double(&o->beta1, s, "train.adam_beta1", &err) ||
        lh_settings_get_double(&o->beta2, s, "train.adam_beta2", &err) ||
        lh_settings_get_double(&o->weight_decay, s, "train.adam_weight_decay", &err) ||
        lh_settings_get_double(&o->eps, s, "train.adam_epsilon", &err) ||
        lh_settings_get_int(&sample, s, "train.sample_every", &err) ||
        lh_settings_get_string(&prompts, s, "train.sample_prompts", &err) ||
        lh_settings_get_int(&sample_steps, s, "train.sample_steps", &err) ||
        lh_settings_get_enum(&fmt, s, "train.save_format", &err)) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    if (n_targets > LH_TRAIN_MAX_TARGETS) {
        fprintf(stderr, NAME ": train.target_modules: at most %d modules\n", LH_TRAIN_MAX_TARGETS);
        return 1;
    }
    o->model = model[0] ? model : NULL;
    o->dataset = dataset[0] ? dataset : NULL;
    o->output_dir = out;
    o->output_name = name;
    o->threads = (int)threads;
    o->steps = steps;
    o->batch_size = batch;
    o->grad_accum = accum;
    o->rank = (int)rank;
    if (seed < 0) seed = (int64_t)(time(NULL) ^ getpid());
    o->seed = (uint64_t)seed;
    o->precision = !strcmp(prec, "fp16") ? LH_DTYPE_F16
                   : !strcmp(prec, "bf16") ? LH_DTYPE_BF16
                                           : LH_DTYPE_F32;
    o->checkpointing = ckpt;
    o->save_every = save;
    o->keep_checkpoints = (int)keep;
    o->n_targets = (int)n_targets;
    for (size_t i = 0; i < n_targets; i++) o->targets[i] = targets[i];
    o->train_text_encoder = te;
    o->full_parameter = full;
    o->prediction = pred;
    o->lr_scheduler = sched;
    o->lr_warmup = warmup;
    o->sample_every = sample;
    o->sample_steps = (int)sample_steps;
    o->save_format = fmt == 1 ? LH_EXPORT_PEFT : LH_EXPORT_KOHYA;
    /* prompts separated by '|' (they may hold commas); the copies live as long as s */
    static char buf[8192];
    snprintf(buf, sizeof buf, "%s", prompts);
    o->n_sample_prompts = 0;
    for (char *save_p = NULL, *tok = strtok_r(buf, "|", &save_p); tok;
         tok = strtok_r(NULL, "|", &save_p)) {
        while (*tok == ' ') tok++;
        if (!*tok) continue;
        if (o->n_sample_prompts == LH_TRAIN_MAX_PROMPTS) {
            fprintf(stderr, NAME ": train.sample_prompts: at most %d prompts\n",
                    LH_TRAIN_MAX_PROMPTS);
            return 1;
        }
        o->sample_prompts[o->n_sample_prompts++] = tok;
    }
    if (lh_registry_create(reg, &err) != LH_OK ||
        lh_registry_scan(*reg, dirs, n_dirs, 1, 1, &err) != LH_OK) {
        fprintf(stderr, NAME ": plugins: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int lh_cmd_train(int argc, char **argv) {
    lh_error err = {0};
    lh_settings *s = NULL;
    if (lh_settings_create(&s, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    lh_status st = lh_settings_apply_args(s, &argc, argv, &err);
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        lh_settings_destroy(s);
        return st == LH_ERR_INVALID ? 2 : 1;
    }
    const char *model = NULL, *dataset = NULL, *output = NULL, *device = NULL;
    int resume = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char **dst = !strcmp(argv[i], "--model")     ? &model
                           : !strcmp(argv[i], "--dataset") ? &dataset
                           : !strcmp(argv[i], "--output")  ? &output
                           : !strcmp(argv[i], "--device")  ? &device
                                                           : NULL;
        if (dst && i + 1 < argc) {
            *dst = argv[++i];
        } else if (!strcmp(argv[i], "--resume")) {
            resume = 1;
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            lh_settings_destroy(s);
            return 0;
        } else {
            fprintf(stderr, NAME ": %s: unknown option or missing value\n", argv[i]);
            usage(stderr);
            lh_settings_destroy(s);
            return 2;
        }
    }
    lh_train_opts o;
    lh_train_opts_default(&o);
    lh_registry *reg = NULL;
    if (read_settings(&o, s, &reg)) {
        lh_registry_destroy(reg);
        lh_settings_destroy(s);
        return 1;
    }
    if (model) o.model = model;
    if (dataset) o.dataset = dataset;
    if (output) o.output_dir = output;
    if (device) o.device = device;
    if (strcmp(o.device, "cpu") && strncmp(o.device, "cuda", 4)) {
        fprintf(stderr, NAME ": --device: unknown device '%s' (cpu, cuda or cuda:N)\n", o.device);
        lh_registry_destroy(reg);
        lh_settings_destroy(s);
        return 2;
    }
    o.resume = resume;
    if (!o.model || !o.dataset) {
        fprintf(stderr, NAME ": give the model (--model or [model] path) and the dataset "
                        "(--dataset or [train] dataset)\n");
        lh_registry_destroy(reg);
        lh_settings_destroy(s);
        return 2;
    }
    bar b = {isatty(2), quiet, 0};
    float loss = 0.0f;
    st = lh_train_run(&o, reg, progress, &b, &loss, &err);
    if (st != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
    } else if (!quiet) {
        if (o.full_parameter)
            fprintf(stderr, NAME ": done: %s/unet (a diffusers U-Net folder)", o.output_dir);
        else
            fprintf(stderr, NAME ": done: %s/%s.safetensors (%s form)", o.output_dir,
                    o.output_name, o.save_format == LH_EXPORT_PEFT ? "PEFT" : "kohya");
        fprintf(stderr, ", loss %.5f (smoothed), loss curve %s/loss.svg\n", (double)loss,
                o.output_dir);
    }
    lh_registry_destroy(reg);
    lh_settings_destroy(s);
    return st == LH_OK ? 0 : 1;
}
