#!/usr/bin/env python3
"""U-Net step and VAE decode on the GPU: lorahost's cuda backend beside
diffusers (PyTorch SDPA, fp16), same run, same random SD 1.5 weights.

Usage: python3 bench/gpu/unet_gpu.py --build BUILD [--iters 20] [--cache DIR]
Builds (once, under --cache) a U-Net and a VAE with random weights and SD
1.5's shapes (diffusers' configs), saved as F16 diffusers directories.
U-Net: times diffusers' UNet2DConditionModel forward (batch 2, 64x64
latents, 77 tokens: one CFG step) in fp16 with SDPA and lorahost's
bench_unet on the cuda backend with fp16 and with fp32 activations and
each attention kernel, without the CUDA graph and with float32 weight
storage (fp16 weights are held in fp16 by default). VAE: times diffusers' AutoencoderKL decode of one
64x64 latent to 512x512 in fp16 and fp32 and lorahost's bench_vae (float32
activations). Each in its own process; prints a table each with the ratio
and the peak device memory, then the fp16 step's device time by op
(bench_unet once more with LH_CUDA_PROFILE=1, kernels/cuda/profile.cu). Needs diffusers importable (the GPU image has
torch; bench/gpu/run.sh installs carried wheels).
"""
import argparse
import json
import os
import subprocess
import sys
import time

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}


SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def random_dir(cache, name, cls, config, seed):
    """A diffusers folder of `cls(**config)` with random weights, saved F16 once."""
    path = os.path.join(cache, "sd15-random", name)
    if not os.path.exists(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        import torch
        import diffusers
        torch.manual_seed(seed)
        m = getattr(diffusers, cls)(**config)
        m.to(torch.float16).save_pretrained(path, safe_serialization=True)
    return path


def timed(args, cls, dtype, call):
    """Load args.dir as diffusers' `cls` in `dtype`, then time call(model, torch,
    dev) args.iters times: load seconds, the times, peak device MiB."""
    import torch
    import diffusers
    dev = torch.device(args.device)
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    m = getattr(diffusers, cls).from_pretrained(args.dir, torch_dtype=dtype).to(dev).eval()
    sync()
    load = time.perf_counter() - t0
    run = call(m, torch, dev)
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(args.iters):
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 1048576.0 if cuda else float("nan")
    return load, times, peak


def vae_worker(args):
    import torch
    dtype = torch.float16 if args.vae_dtype == "fp16" else torch.float32

    def call(m, torch, dev):
        g = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(1, m.config.latent_channels, args.vae_size, args.vae_size,
                        generator=g).to(dev, dtype)
        return lambda: m.decode(z / m.config.scaling_factor)
    load, times, peak = timed(args, "AutoencoderKL", dtype, call)
    print(json.dumps({"load_s": load, "decode_s": times, "peak_device_mb": peak}))


def torch_worker(args):
    import torch

    def call(m, torch, dev):
        g = torch.Generator(device="cpu").manual_seed(0)
        cfg = m.config
        x = torch.randn(args.batch, cfg.in_channels, args.size, args.size,
                        generator=g).to(dev, torch.float16)
        ctx = torch.randn(args.batch, args.ctx, cfg.cross_attention_dim,
                          generator=g).to(dev, torch.float16)
        t = torch.tensor([999.0 - 37.0 * i for i in range(args.batch)], device=dev)
        return lambda: m(x, t, encoder_hidden_states=ctx)
    load, times, peak = timed(args, "UNet2DConditionModel", torch.float16, call)
    cuda = args.device == "cuda"
    print(json.dumps({"load_s": load, "forward_s": times, "peak_device_mb": peak,
                      "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0) if cuda else "cpu"}))


def run_json(cmd, env=None, fatal=True):
    """The JSON object a benchmark prints last. A failing run of ours
    (fatal=False) gives {"error": ...} instead, so the other rows still run."""
    try:
        out = subprocess.run(cmd, check=fatal, capture_output=True, text=True, env=env)
    except OSError as e:
        if fatal:
            raise
        return {"error": str(e)[:160]}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:160]}"}
    res = json.loads(lines[-1])
    for line in out.stderr.splitlines():  # LH_CUDA_STATS
        if "peak device memory in use" in line:
            res["peak_device_mb"] = float(line.split("in use")[1].split("MiB")[0])
    return res


# what a failed reference run stands in with
NO_REF = {"forward_s": [float("nan")], "gpu": "?", "torch": "?", "load_s": float("nan"),
          "peak_device_mb": float("nan")}


def med(v):
    v = sorted(v[2:] if len(v) > 3 else v)  # the first two warm up (cuDNN's choice, caches)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", help="a build with bench_unet (required but for --torch-worker)")
    ap.add_argument("--device", default="cuda",
                    help="cpu: a dry run of this script (with --unet, small --size)")
    ap.add_argument("--unet", help="a U-Net directory instead of the random SD 1.5 one")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=77)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "fp32"])
    ap.add_argument("--attention", nargs="+", default=["auto", "flash", "gemm"],
                    help="the cuda backend's attention forward (LORAHOST_CUDA_ATTENTION)")
    ap.add_argument("--vae", help="a VAE directory instead of the random SD 1.5 one")
    ap.add_argument("--vae-size", type=int, default=64, help="latent side of the VAE decode")
    ap.add_argument("--vae-dtype", default="fp16", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="/tmp/lh-gpu-bench")
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--vae-worker", action="store_true")
    ap.add_argument("--dir")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    if args.vae_worker:
        return vae_worker(args)
    if not args.build:
        ap.error("--build is required")
    d = args.unet or random_dir(args.cache, "unet", "UNet2DConditionModel", SD15_UNET, 0)
    shape = [str(args.batch), str(args.size), str(args.size), str(args.ctx), str(args.iters)]
    env = dict(os.environ, LH_CUDA_STATS="1")
    if os.environ.get("LH_LD_LIBRARY_PATH"):  # bench/gpu/run.sh: the packed libraries
        env["LD_LIBRARY_PATH"] = os.environ["LH_LD_LIBRARY_PATH"]
    ours = {}
    for p in args.precisions:
        for att in args.attention:
            if att == "auto" and p == "fp32" and "flash" in args.attention:
                continue  # auto is the flash kernel under float32 activations
            e = dict(env, LORAHOST_CUDA_ATTENTION=att)
            ours[f"{p}, attention {att}"] = run_json(
                [os.path.join(args.build, "bench", "bench_unet"), d] + shape +
                ["0", args.device, p], e, fatal=False)
    if "fp16" in args.precisions and "auto" in args.attention:  # what the graph buys
        ours["fp16, attention auto, no graph"] = run_json(
            [os.path.join(args.build, "bench", "bench_unet"), d] + shape + ["0", args.device, "fp16"],
            dict(env, LORAHOST_CUDA_ATTENTION="auto", LORAHOST_CUDA_GRAPHS="0"), fatal=False)
        # half-tensor convolutions against widened weights in float32 (TF32) ones
        ours["fp16, attention auto, float32 convolutions"] = run_json(
            [os.path.join(args.build, "bench", "bench_unet"), d] + shape + ["0", args.device, "fp16"],
            dict(env, LORAHOST_CUDA_ATTENTION="auto", LORAHOST_CUDA_HALF_CONV="0"), fatal=False)
        # float32 weight storage: no half GEMM or convolution weights at all
        ours["fp16, attention auto, f32 weight storage"] = run_json(
            [os.path.join(args.build, "bench", "bench_unet"), d] + shape +
            ["0", args.device, "fp16", "f32"], dict(env, LORAHOST_CUDA_ATTENTION="auto"),
            fatal=False)
    ref = run_json([sys.executable, __file__, "--torch-worker", "--dir", d, "--batch",
                    str(args.batch), "--size", str(args.size), "--ctx", str(args.ctx),
                    "--iters", str(args.iters), "--device", args.device], fatal=False)
    if "error" in ref:  # our rows still print, beside NaN
        print(f"diffusers' U-Net failed: {ref['error']}")
        ref = dict(NO_REF, error=ref["error"])
    r = med(ref["forward_s"])
    what = f"U-Net {args.unet}" if args.unet else "SD 1.5 shapes (random weights)"
    print(f"U-Net step, {what}, batch {args.batch}, "
          f"{args.size}x{args.size} latents, {args.ctx} tokens, {ref['gpu']}, torch {ref['torch']}")
    print("| lorahost (activations, attention) | lorahost step (median) | diffusers (fp16, SDPA) | ratio (torch / ours) "
          "| load ours / torch | peak device memory ours / torch |")
    print("|---|---|---|---|---|---|")
    for p, o in ours.items():
        if "error" in o:
            print(f"| {p} | failed ({o['error']}) | {r * 1e3:.2f} ms | | | |")
            continue
        m = med(o["forward_s"])
        print(f"| {p} | {m * 1e3:.2f} ms | {r * 1e3:.2f} ms | {r / m:.2f}x | {o['load_s']:.2f} s / "
              f"{ref['load_s']:.2f} s | {o.get('peak_device_mb', float('nan')):.0f} MiB / "
              f"{ref['peak_device_mb']:.0f} MiB |")
    # VAE decode of one latent (512x512 for SD 1.5)
    vd = args.vae or random_dir(args.cache, "vae", "AutoencoderKL", SD15_VAE, 1)
    vs = str(args.vae_size)
    vae_ours = {p: run_json([os.path.join(args.build, "bench", "bench_vae"), vd, "1", vs, vs,
                             str(args.iters), "0", args.device, p], env, fatal=False)
                for p in ("fp16", "bf16", "fp32")}
    vae_ref = {}
    for dt in ("fp16", "fp32"):
        vae_ref[dt] = run_json([sys.executable, __file__, "--vae-worker", "--dir", vd,
                                "--vae-size", vs, "--vae-dtype", dt, "--iters", str(args.iters),
                                "--device", args.device], fatal=False)
        if "error" in vae_ref[dt]:
            print(f"diffusers' VAE ({dt}) failed: {vae_ref[dt]['error']}")
            vae_ref[dt] = dict(NO_REF, decode_s=[float("nan")], error=vae_ref[dt]["error"])
    print()
    print(f"VAE decode, {'VAE ' + args.vae if args.vae else 'SD 1.5 shapes (random weights)'}, "
          f"one {args.vae_size}x{args.vae_size} latent")
    print("| lorahost activations | lorahost | diffusers fp16 | diffusers fp32 "
          "| ratio (torch fp16 / ours) | peak device memory ours / torch fp16 |")
    print("|---|---|---|---|---|---|")
    r16, r32 = med(vae_ref["fp16"]["decode_s"]), med(vae_ref["fp32"]["decode_s"])
    for p, vo in vae_ours.items():
        if "error" in vo:
            print(f"| {p} | failed ({vo['error']}) | {r16 * 1e3:.2f} ms | {r32 * 1e3:.2f} ms | | |")
            continue
        mo = med(vo["decode_s"])
        print(f"| {p} | {mo * 1e3:.2f} ms | {r16 * 1e3:.2f} ms | {r32 * 1e3:.2f} ms | "
              f"{r16 / mo:.2f}x | {vo.get('peak_device_mb', float('nan')):.0f} MiB / "
              f"{vae_ref['fp16']['peak_device_mb']:.0f} MiB |")
    if args.device == "cuda" and "fp16" in args.precisions:
        profile(args, d, shape[:4], env)
    print(json.dumps({"ours": ours, "torch": ref, "vae_ours": vae_ours, "vae_torch": vae_ref}))


def profile(args, d, shape, env):
    """Where the fp16 step's device time goes: bench_unet once more with
    LH_CUDA_PROFILE=1 (each op's time between two CUDA events, graphs off;
    kernels/cuda/profile.cu), 5 steps, the warm-up included."""
    cmd = [os.path.join(args.build, "bench", "bench_unet"), d] + shape + ["5", "0", args.device,
                                                                          "fp16"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                             env=dict(env, LH_CUDA_PROFILE="1", LORAHOST_CUDA_ATTENTION="auto"))
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"\nprofile: failed ({str(e)[:160]})")
        return
    lines = out.stderr.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("cuda profile")), None)
    print(f"\nU-Net step, fp16, attention auto: device time by op over 5 steps "
          f"(LH_CUDA_PROFILE=1, exit {out.returncode})")
    print("```")
    print("\n".join(lines[at:] if at is not None else lines[-5:]))
    print("```")


if __name__ == "__main__":
    main()
