#!/usr/bin/env python3
"""Whole-image generation on the CPU: `lorahost generate` beside diffusers'
StableDiffusionPipeline, same run.

Usage: ~/ref/bin/python bench/pipeline_cpu.py [--steps 4] [--cfg 7.5]
           [--size 512] [--scheduler ddim] [--build build-bench]
           [--reference-first]
Builds (once, cached under /tmp/lh-bench/sd15-pipe) a diffusers model
directory with random weights and the true SD 1.5 shapes, stored F16: the
U-Net of bench/unet_cpu.py (859.5 M parameters, symlinked from
/tmp/lh-bench/sd15/unet, built if missing), a CLIPTextModel with the ViT-L/14
text config (123.1 M), an AutoencoderKL with SD 1.5's config (83.7 M), the
real CLIP tokenizer files (tests/fixtures/tokenizer) and SD 1.5's PNDM
scheduler config. Then runs, each in its own process (so peak RSS is its
own), with all cores:
  ours:      lorahost generate --timings (one JSON line on stderr)
  diffusers: StableDiffusionPipeline, float32, the same scheduler
             (DDIMScheduler / EulerDiscreteScheduler from the model's config),
             output_type="pil", with timers around encode_prompt, each
             denoising step (callback_on_step_end) and vae.decode.
and prints a table of stage times with the ratio reference / ours. The weight
files are read once beforehand so that both loads start from a warm page
cache.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = "/tmp/lh-bench"
PIPE = os.path.join(CACHE, "sd15-pipe")
PROMPT = "a lighthouse at dusk, oil painting"
NEGATIVE = "blurry"

CLIP_L = {  # openai/clip-vit-large-patch14's text config (SD 1.x)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
VAE = {  # runwayml/stable-diffusion-v1-5 vae/config.json
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
PNDM = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
# diffusers scheduler class for each lorahost scheduler id this script accepts
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "pndm": "PNDMScheduler"}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def build_model():
    """The SD 1.5-shaped diffusers directory (random weights, F16), once."""
    done = os.path.join(PIPE, ".complete")
    if os.path.exists(done):
        return PIPE
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    sys.path.insert(0, HERE)
    import unet_cpu
    unet = unet_cpu.model_dir("sd15")  # builds /tmp/lh-bench/sd15/unet if missing
    os.makedirs(PIPE, exist_ok=True)
    link = os.path.join(PIPE, "unet")
    if not os.path.lexists(link):
        os.symlink(unet, link)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    print(f"built text encoder: {sum(p.numel() for p in te.parameters()) / 1e6:.1f} M "
          "parameters", file=sys.stderr)
    te.to(torch.float16).save_pretrained(os.path.join(PIPE, "text_encoder"),
                                         safe_serialization=True)
    del te
    vae = AutoencoderKL(**VAE)
    print(f"built VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.1f} M parameters",
          file=sys.stderr)
    vae.to(torch.float16).save_pretrained(os.path.join(PIPE, "vae"), safe_serialization=True)
    del vae
    tok = os.path.join(PIPE, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(ROOT, "tests", "fixtures", "tokenizer", name),
                        os.path.join(tok, name))
    write_json(os.path.join(tok, "special_tokens_map.json"), SPECIAL)
    write_json(os.path.join(tok, "tokenizer_config.json"),
               dict(SPECIAL, model_max_length=77, tokenizer_class="CLIPTokenizer"))
    write_json(os.path.join(PIPE, "scheduler", "scheduler_config.json"), PNDM)
    write_json(os.path.join(PIPE, "model_index.json"), MODEL_INDEX)
    open(done, "w").close()
    return PIPE


def warm_page_cache(d):
    """Read every weight file once, so that neither side's load pays for the
    disk (whichever runs first would otherwise)."""
    for root, _, files in os.walk(d, followlinks=True):
        for name in files:
            if name.endswith(".safetensors"):
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(1 << 24):
                        pass


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def torch_worker(args):
    import torch
    import diffusers
    from diffusers import StableDiffusionPipeline
    torch.set_num_threads(os.cpu_count())
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.dir, torch_dtype=torch.float32,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    cls = getattr(diffusers, SCHEDULERS[args.scheduler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0
    rss_load = rss_mib()

    # timers: encode_prompt (tokenizer + text encoder, uncond and cond), each
    # step from the end of the previous one (U-Net + CFG + scheduler step),
    # vae.decode
    t = {"text": 0.0, "steps": [], "decode": 0.0}
    enc, dec = pipe.encode_prompt, pipe.vae.decode

    def encode_prompt(*a, **k):
        s = time.perf_counter()
        r = enc(*a, **k)
        t["text"] += time.perf_counter() - s
        t["loop_t0"] = time.perf_counter()
        return r

    def decode(*a, **k):
        s = time.perf_counter()
        r = dec(*a, **k)
        t["decode"] += time.perf_counter() - s
        return r

    def on_step_end(p, i, ts, kw):
        now = time.perf_counter()
        t["steps"].append(now - t["loop_t0"])
        t["loop_t0"] = now
        return kw

    pipe.encode_prompt = encode_prompt
    pipe.vae.decode = decode
    g = torch.Generator("cpu").manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                   guidance_scale=args.cfg, height=args.size, width=args.size, generator=g,
                   output_type="pil", callback_on_step_end=on_step_end).images[0]
    total = time.perf_counter() - t0
    img.save(os.path.join(args.out, "diffusers.png"))
    # the first step also holds the latents' preparation (a randn), which is
    # negligible next to a U-Net call
    print(json.dumps({"load_s": load, "text_encoder_s": t["text"], "steps_s": t["steps"],
                      "vae_decode_s": t["decode"], "total_s": total, "peak_rss_mb": rss_mib(),
                      "rss_after_load_mb": rss_load, "torch": torch.__version__,
                      "diffusers": diffusers.__version__,
                      "threads": torch.get_num_threads()}))


def ours(args, d):
    exe = os.path.join(args.build, "bin", "lorahost")
    if not os.path.exists(exe):
        exe = os.path.join(args.build, "lorahost")
    cmd = [exe, "generate", "--model", d, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
           "--steps", str(args.steps), "--cfg-scale", str(args.cfg), "--scheduler",
           args.scheduler, "--seed", str(args.seed), "--width", str(args.size), "--height",
           str(args.size), "--threads", "0", "--quiet", "--timings",
           "--output", os.path.join(args.out, "lorahost.png")]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"lorahost generate failed ({p.returncode}):\n{p.stderr}")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("{")]
    r = json.loads(lines[-1])
    r["process_s"] = wall
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS))
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--out", default=os.path.join(CACHE, "out"))
    ap.add_argument("--reference-first", action="store_true",
                    help="run diffusers before lorahost (the default is lorahost first)")
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--dir")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.torch_worker:
        return torch_worker(args)
    d = build_model()
    warm_page_cache(d)
    if not args.reference_first:
        o = ours(args, d)
    cmd = [sys.executable, __file__, "--torch-worker", "--dir", d, "--steps", str(args.steps),
           "--cfg", str(args.cfg), "--size", str(args.size), "--seed", str(args.seed),
           "--scheduler", args.scheduler, "--out", args.out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"diffusers worker failed ({p.returncode}):\n{p.stderr}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if args.reference_first:
        o = ours(args, d)

    def row(name, a, b, unit="s", fmt="{:.2f}", ratio=True):
        q = f"{b / a:.2f}x" if ratio and a > 0 else ""
        print(f"| {name} | {fmt.format(a)} {unit} | {fmt.format(b)} {unit} | {q} |")

    os_, rs = o["unet_steps_s"], r["steps_s"]
    cfg = "on" if args.cfg > 1 else "off"
    print(f"Pipeline, SD 1.5 shapes (random weights), {args.size}x{args.size}, {args.steps} "
          f"steps {args.scheduler}, CFG {args.cfg:g} ({cfg}), {os.cpu_count()} cores, "
          f"torch {r['torch']}, diffusers {r['diffusers']}")
    print("| | lorahost | diffusers (PyTorch) | ratio (torch / ours) |")
    print("|---|---|---|---|")
    row("load", o["load_s"], r["load_s"])
    row("text encoder (uncond + cond)", o["text_encoder_s"], r["text_encoder_s"], fmt="{:.3f}")
    row(f"U-Net steps (sum of {len(os_)} / {len(rs)})", sum(os_), sum(rs))
    row("U-Net step (median)", sorted(os_)[len(os_) // 2], sorted(rs)[len(rs) // 2])
    print(f"| all steps | {', '.join(f'{v:.2f}' for v in os_)} | "
          f"{', '.join(f'{v:.2f}' for v in rs)} | |")
    row("VAE decode", o["vae_decode_s"], r["vae_decode_s"])
    row("generation (no load)", o["total_s"], r["total_s"])
    row("peak RSS", o["peak_rss_mb"], r["peak_rss_mb"], unit="MiB", fmt="{:.0f}", ratio=False)
    first = "diffusers" if args.reference_first else "lorahost"
    print(f"\n{first} ran first; lorahost process wall time (load + generation + PNG): {o['process_s']:.2f} s; "
          f"diffusers RSS after load: {r['rss_after_load_mb']:.0f} MiB; "
          f"images in {args.out}")


if __name__ == "__main__":
    main()
