#!/usr/bin/env python3
"""Whole training runs on the CPU: `lorahost train` beside a minimal copy of
diffusers' examples/text_to_image/train_text_to_image_lora.py, same run.

Usage: ~/ref/bin/python bench/train_e2e.py [--configs tiny mid tiny-uncached]
           [--lh /tmp/b/bin/lorahost] [--variants fp32 fp16 ckpt]
Configs (data: 16 generated PNGs with captions, imported with --center-crop):
  tiny:          tests/fixtures/models/sd1_tiny, 64x64 images (8x8 latents),
                 batch 4, rank 4, 40 steps, latents and text embeddings cached
  mid:           SD 1.5 U-Net layout with block_out_channels [128, 256, 512, 512]
                 (random, F16, bench/train_cpu.py's /tmp/lh-bench/sd15mid/unet)
                 with the tiny VAE and a random 3-layer CLIP text encoder of
                 hidden size 768 (/tmp/lh-bench/sd15mid_full), 256x256 images
                 (32x32 latents), batch 1, rank 4, 12 steps, cached
  tiny-uncached: as tiny, but VAE posterior sample and text encoder every step
                 (fp32 rows only)
Each side runs in its own process with all cores:
  lorahost:  `lorahost train` (progress lines parsed: the trainer's clock
             starts after loading, so step 1 is timed alone and the warm rate
             is steps 2..N); variants fp32, fp16 (train.mixed_precision=fp16),
             ckpt (train.gradient_checkpointing=true)
  diffusers: the example script's training step, fp32 (accelerate refuses fp16
             on the CPU): UNet2DConditionModel.from_pretrained, requires_grad_(False),
             add_adapter(LoraConfig gaussian on to_k/to_q/to_v/to_out.0,
             lora_alpha = rank), AdamW (lr 1e-4, wd 1e-2), constant lr,
             DDPMScheduler add_noise, mse loss, clip_grad_norm_ 1.0
Peak RSS is the child's own (/usr/bin/time %M); load is wall time minus the training
loop (process start, imports, model load, export at the end). lorahost
prints progress at steps 1, 10, 20, ...; "best 10-step window" is the fastest
of those spans, on each side (the machine is shared and contended).
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
CACHE = "/tmp/lh-bench"
WORK = os.path.join(CACHE, "e2e")
TINY = os.path.join(ROOT, "tests", "fixtures", "models", "sd1_tiny")
MID = os.path.join(CACHE, "sd15mid_full")

CONFIGS = {
    "tiny": dict(model=TINY, res=64, batch=4, rank=4, steps=40, cached=True),
    "mid": dict(model=MID, res=256, batch=1, rank=4, steps=12, cached=True),
    "tiny-uncached": dict(model=TINY, res=64, batch=4, rank=4, steps=40, cached=False),
}
VARIANTS = {
    "fp32": [],
    "fp16": ["--set", "train.mixed_precision=fp16"],
    "ckpt": ["--set", "train.gradient_checkpointing=true"],
}


# ---- Setup: images, the mid model, the datasets ----

def make_images(d, n=16):
    from PIL import Image, ImageDraw
    if os.path.exists(os.path.join(d, f"{n - 1:02d}.txt")):
        return d
    os.makedirs(d, exist_ok=True)
    rng = random.Random(0)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square"]
    for i in range(n):
        w, h = rng.choice([(320, 288), (288, 320), (300, 300)])
        im = Image.new("RGB", (w, h))
        px = im.load()
        c0 = [rng.randrange(256) for _ in range(3)]
        c1 = [rng.randrange(256) for _ in range(3)]
        for y in range(h):
            for x in range(w):
                t = (x + y) / (w + h)
                px[x, y] = tuple(int(a + (b - a) * t) + rng.randrange(-8, 9) for a, b in zip(c0, c1))
        dr = ImageDraw.Draw(im)
        words = []
        for _ in range(rng.randint(1, 3)):
            col, sh = rng.choice(colors), rng.choice(shapes)
            x0, y0 = rng.randrange(w - 80), rng.randrange(h - 80)
            s = rng.randint(30, 80)
            (dr.ellipse if sh == "circle" else dr.rectangle)([x0, y0, x0 + s, y0 + s], fill=col)
            words.append(f"a {col} {sh}")
        im.save(os.path.join(d, f"{i:02d}.png"))
        with open(os.path.join(d, f"{i:02d}.txt"), "w") as f:
            f.write(" and ".join(words) + " on a gradient")
    return d


def build_mid():
    if os.path.exists(os.path.join(MID, "text_encoder", "model.safetensors")):
        return MID
    import train_cpu  # builds /tmp/lh-bench/sd15mid/unet (random, F16) once
    unet = train_cpu.model_dir("mid")
    tmp = MID + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for sub in ("vae", "tokenizer", "scheduler"):
        shutil.copytree(os.path.join(TINY, sub), os.path.join(tmp, sub))
    shutil.copy(os.path.join(TINY, "model_index.json"), tmp)
    shutil.copytree(unet, os.path.join(tmp, "unet"))
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig.from_pretrained(os.path.join(TINY, "text_encoder"))
    cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads = 768, 3072, 12
    cfg.projection_dim = 768
    torch.manual_seed(0)
    te = CLIPTextModel(cfg).to(torch.float16)
    te.save_pretrained(os.path.join(tmp, "text_encoder"), safe_serialization=True)
    os.replace(tmp, MID)
    print(f"built {MID}", file=sys.stderr)
    return MID


def dataset(lh, name, cfg):
    tag = os.path.basename(cfg["model"].rstrip("/"))
    path = os.path.join(WORK, f"{tag}_{cfg['res']}{'_cached' if cfg['cached'] else ''}.h5")
    if os.path.exists(path):
        return path
    imgs = make_images(os.path.join(WORK, "images"))
    subprocess.run([lh, "dataset", "import", imgs, path + ".part.h5", "--resolution",
                    str(cfg["res"]), "--center-crop", "--quiet"], check=True)
    if cfg["cached"]:
        subprocess.run([lh, "dataset", "cache", path + ".part.h5", "--model", cfg["model"],
                        "--quiet"], check=True)
    os.replace(path + ".part.h5", path)
    return path


# ---- The reference: train_text_to_image_lora.py's loop, in its own process ----

def torch_worker(a):
    t_start = time.perf_counter()
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    try:  # transformers 5.x refuses peft < 0.22 (none is published); diffusers' own check passes
        import transformers.integrations.peft as hf_peft
        hf_peft.check_peft_version = lambda min_version: None
    except ImportError:
        pass
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    noise_scheduler = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet", torch_dtype=torch.float32)
    unet.requires_grad_(False)
    unet.to(dtype=torch.float32)
    unet.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    vae = text_encoder = tokenizer = None
    f = h5py.File(a.dataset, "r")
    n = len(f["captions/length"])
    if a.cached:
        ls = f["latents/shape"][:]
        sizes = ls.prod(axis=1)
        flat = f["latents/data"][:]
        offs = np.concatenate([[0], np.cumsum(sizes)])
        latents_all = [torch.from_numpy(flat[offs[i]:offs[i + 1]].reshape(ls[i]).copy())
                       for i in range(n)]
        emb_all = torch.from_numpy(f["text/embeddings"][:])
    else:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer
        tokenizer = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder",
                                                     torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae", torch_dtype=torch.float32)
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        shp = f["images/shape"][:]
        sizes = shp.prod(axis=1) * 3
        offs = np.concatenate([[0], np.cumsum(sizes)])
        data = f["images/data"][:]
        pix_all = [torch.from_numpy(data[offs[i]:offs[i + 1]].reshape(shp[i][0], shp[i][1], 3)
                                    .astype(np.float32)).permute(2, 0, 1) / 255.0 * 2.0 - 1.0
                   for i in range(n)]
        cl = f["captions/length"][:]
        co = np.concatenate([[0], np.cumsum(cl)])
        cd = f["captions/data"][:]
        caps = [cd[co[i]:co[i + 1]].tobytes().decode() for i in range(n)]
        ids_all = tokenizer(caps, max_length=tokenizer.model_max_length, padding="max_length",
                            truncation=True, return_tensors="pt").input_ids
    f.close()
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=a.steps)
    unet.train()
    if a.ckpt:
        unet.enable_gradient_checkpointing()
    order, times, losses = [], [], []
    load = time.perf_counter() - t_start
    for step in range(a.steps):
        t0 = time.perf_counter()
        if len(order) < a.batch:  # a shuffled epoch, as the DataLoader (drop_last off)
            perm = list(range(n))
            random.Random(step).shuffle(perm)
            order += perm
        idx, order = order[:a.batch], order[a.batch:]
        if a.cached:
            latents = torch.stack([latents_all[i] for i in idx])
            encoder_hidden_states = emb_all[idx]
        else:
            with torch.no_grad():
                pix = torch.stack([pix_all[i] for i in idx])
                latents = vae.encode(pix).latent_dist.sample() * vae.config.scaling_factor
                encoder_hidden_states = text_encoder(ids_all[idx], return_dict=False)[0]
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_layers, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load": load,
           "times": times, "loss_first": losses[0], "loss_last": losses[-1],
           "lora_params": sum(p.numel() for p in lora_layers),
           "lora_layers": sum(1 for nm, _ in unet.named_modules() if nm.endswith(".lora_A.default"))}
    print("RESULT " + json.dumps(res))


# ---- Running and timing the children ----

def run_child(cmd, env=None):
    # Peak RSS from /usr/bin/time: a child forked from this (torch-importing)
    # process would report this process's RSS as its own high-water mark.
    rss = os.path.join(WORK, "rss.txt")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss] + cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = [], []
    import threading
    th = threading.Thread(target=lambda: err.extend(p.stderr))
    th.start()
    out.extend(p.stdout)
    p.wait()
    wall = time.perf_counter() - t0
    th.join()
    with open(rss) as f:
        kib = int(f.read().split()[-1])
    return dict(rc=p.returncode, wall=wall, rss_mib=kib / 1024.0,
                out="".join(out), err="".join(err))


STEP = re.compile(r"step (\d+)/(\d+) loss ([\d.naif+-]+) avg \S+ lr \S+ ([\d.]+) it/s")


def run_lorahost(lh, name, cfg, ds, variant):
    out = os.path.join(WORK, "out", f"{name}_{variant}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)  # lorahost does not create parents
    ini = os.path.join(WORK, "train.ini")
    with open(ini, "w") as f:
        f.write("[backend]\nthreads = 0\n\n[train]\nseed = 0\nsave_every = 0\n"
                "learning_rate = 1e-4\nlr_scheduler = constant\nmax_grad_norm = 1\n")
    cmd = [lh, "train", "--config", ini, "--model", cfg["model"], "--dataset", ds,
           "--output", out, "--set", f"train.steps={cfg['steps']}",
           "--set", f"train.batch_size={cfg['batch']}", "--set", f"train.rank={cfg['rank']}",
           "--set", f"train.alpha={cfg['rank']}"] + VARIANTS[variant]
    r = run_child(cmd)
    r["cmd"] = " ".join(cmd)
    if r["rc"] != 0:
        return r
    pts = {int(m.group(1)): (float(m.group(3)), float(m.group(4))) for m in STEP.finditer(r["err"])}
    n = cfg["steps"]
    if 1 not in pts or n not in pts:
        r["rc"] = -1000
        r["err"] += "\n(no progress lines for step 1 and the last step)"
        return r
    s1, sn = 1.0 / pts[1][1], n / pts[n][1]
    ks = sorted(pts)
    cum = {k: k / pts[k][1] for k in ks}
    r["best"] = min((cum[b] - cum[a]) / (b - a) for a, b in zip(ks, ks[1:]))
    r.update(first=s1, loop=sn, warm=(sn - s1) / (n - 1), load=r["wall"] - sn,
             loss_first=pts[1][0], loss_last=pts[n][0])
    return r


def run_torch(name, cfg, ds, ckpt=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", cfg["model"],
           "--dataset", ds, "--batch", str(cfg["batch"]), "--rank", str(cfg["rank"]),
           "--steps", str(cfg["steps"])] + (["--cached"] if cfg["cached"] else []) + \
        (["--ckpt"] if ckpt else [])
    r = run_child(cmd)
    if r["rc"] != 0:
        return r
    res = json.loads([ln for ln in r["out"].splitlines() if ln.startswith("RESULT ")][-1][7:])
    t = res["times"]
    r.update(res)
    ks = sorted(set([1] + list(range(10, len(t), 10)) + [len(t)]))
    r["best"] = min(sum(t[a:b]) / (b - a) for a, b in zip(ks, ks[1:]))
    r.update(first=t[0], loop=sum(t), warm=sum(t[1:]) / (len(t) - 1), load=r["wall"] - sum(t))
    return r


def fmt_t(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.3f} s"


def git_rev():
    r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["tiny", "mid", "tiny-uncached"])
    ap.add_argument("--variants", nargs="+", default=["fp32", "fp16", "ckpt"])
    ap.add_argument("--lh", default="/tmp/b/bin/lorahost")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model"), ap.add_argument("--dataset")
    ap.add_argument("--batch", type=int), ap.add_argument("--rank", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cached", action="store_true"), ap.add_argument("--ckpt", action="store_true")
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a)
    os.makedirs(WORK, exist_ok=True)
    cpu = "?"
    for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if ln.startswith("Model name:"):
            cpu = ln.split(":", 1)[1].strip()
    print(f"Machine: {cpu}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"Command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    from importlib.metadata import version  # not imported here: see run_child
    print(f"Versions: torch {version('torch')}, diffusers {version('diffusers')}, "
          f"peft {version('peft')}, transformers {version('transformers')}, "
          f"h5py {version('h5py')}; lorahost {a.lh} (git {git_rev()})")
    if "mid" in a.configs:
        build_mid()
        r = run_child([a.lh, "generate", "--model", MID, "--steps", "1", "--width", "64",
                       "--height", "64", "--prompt", "x", "-o", os.path.join(WORK, "mid.png")])
        print(f"mid model loads in `lorahost generate`: rc {r['rc']}"
              + ("" if r["rc"] == 0 else f": {r['err'].strip()}"))
    for name in a.configs:
        cfg = CONFIGS[name]
        ds = dataset(a.lh, name, cfg)
        la0 = loadavg()
        rows = []
        for v in (a.variants if cfg["cached"] else ["fp32"]):
            rows.append((f"lorahost {v}", run_lorahost(a.lh, name, cfg, ds, v)))
        rows.append(("diffusers fp32", run_torch(name, cfg, ds)))
        if "ckpt" in a.variants and cfg["cached"]:
            rows.append(("diffusers ckpt", run_torch(name, cfg, ds, ckpt=True)))
        la1 = loadavg()
        print(f"\nConfig {name}: {os.path.relpath(cfg['model'], ROOT) if cfg['model'].startswith(ROOT) else cfg['model']}, "
              f"{cfg['res']}x{cfg['res']} images ({cfg['res'] // 8}x{cfg['res'] // 8} latents), "
              f"batch {cfg['batch']}, LoRA rank {cfg['rank']} (alpha {cfg['rank']}) on "
              f"to_q/to_k/to_v/to_out.0, {cfg['steps']} steps, "
              f"{'cached latents and text embeddings' if cfg['cached'] else 'VAE + text encoder every step'}, "
              f"{os.cpu_count()} threads, load average {la0} -> {la1}")
        ref = dict(rows).get("diffusers fp32")
        print("| run | steps/s (warm) | time per step (warm) | first step | best 10-step window | "
              "load + exit | peak RSS | loss step 1 -> last | steps/s ratio (vs diffusers fp32) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, r in rows:
            if r["rc"] != 0:
                print(f"| {label} | FAILED rc {r['rc']}: {r['err'].strip()[-300:]} | | | | | | | |")
                continue
            ratio = (f"{ref['warm'] / r['warm']:.2f}x" if ref and ref["rc"] == 0 else "")
            print(f"| {label} | {1 / r['warm']:.3f} | {fmt_t(r['warm'])} | {fmt_t(r['first'])} | {fmt_t(r['best'])} | "
                  f"{r['load']:.2f} s | {r['rss_mib']:.0f} MiB | "
                  f"{r['loss_first']:.4f} -> {r['loss_last']:.4f} | {ratio} |")
        for label, r in rows:
            if label.startswith("lorahost") and r["rc"] == 0:
                print(f"  {label}: {r['cmd']}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
