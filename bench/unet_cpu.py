#!/usr/bin/env python3
"""U-Net forward on the CPU: lorahost beside diffusers (PyTorch), same run.

Usage: ~/ref/bin/python bench/unet_cpu.py [--config sd15|tiny] [--batch 2]
           [--size 64] [--ctx 77] [--iters 3] [--build build]
Builds (once, cached under /tmp/lh-bench) a U-Net with random weights and the
true SD 1.5 shapes (859.5 M parameters) or the tiny test config, saved as a
diffusers directory in F16; times diffusers' UNet2DConditionModel forward in
float32 and lorahost's bench_unet on the same shapes, each in its own
process (so peak RSS is its own), and prints a table with the ratio.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = "/tmp/lh-bench"

SD15 = {
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


def model_dir(name):
    if name == "tiny":
        return os.path.join(ROOT, "tests", "fixtures", "models", "sd1_tiny", "unet")
    path = os.path.join(CACHE, name, "unet")
    if not os.path.exists(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        import torch
        from diffusers import UNet2DConditionModel
        torch.manual_seed(0)
        m = UNet2DConditionModel(**SD15)
        n = sum(p.numel() for p in m.parameters())
        print(f"built {name} U-Net: {n / 1e6:.1f} M parameters", file=sys.stderr)
        m.to(torch.float16).save_pretrained(path, safe_serialization=True)
    return path


def torch_worker(args):
    import torch
    from diffusers import UNet2DConditionModel
    torch.set_num_threads(os.cpu_count())
    t0 = time.perf_counter()
    m = UNet2DConditionModel.from_pretrained(args.dir, torch_dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    cfg = m.config
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, generator=g)
    ctx = torch.randn(args.batch, args.ctx, cfg.cross_attention_dim, generator=g)
    t = torch.tensor([999.0 - 37.0 * i for i in range(args.batch)])
    times = []
    with torch.no_grad():
        for _ in range(args.iters):
            t0 = time.perf_counter()
            m(x, t, encoder_hidden_states=ctx)
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"load_s": load, "forward_s": times, "peak_rss_mb": rss,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=77)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--dir")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    d = model_dir(args.config)
    shape = [str(args.batch), str(args.size), str(args.size), str(args.ctx), str(args.iters)]
    ours = run_json([os.path.join(args.build, "bench", "bench_unet"), d] + shape)
    ref = run_json([sys.executable, __file__, "--torch-worker", "--dir", d, "--batch",
                    str(args.batch), "--size", str(args.size), "--ctx", str(args.ctx),
                    "--iters", str(args.iters)])
    # the first iteration warms caches on both sides: report the median of the rest
    def med(v):
        v = sorted(v[1:] if len(v) > 1 else v)
        return v[len(v) // 2]
    o, r = med(ours["forward_s"]), med(ref["forward_s"])
    print(f"U-Net forward, {args.config}, batch {args.batch}, {args.size}x{args.size} latents, "
          f"{args.ctx} context tokens, {os.cpu_count()} cores, torch {ref['torch']}")
    print("| | lorahost | diffusers (PyTorch) | ratio (torch / ours) |")
    print("|---|---|---|---|")
    print(f"| forward (median) | {o:.3f} s | {r:.3f} s | {r / o:.2f}x |")
    print(f"| all forwards | {', '.join(f'{v:.3f}' for v in ours['forward_s'])} | "
          f"{', '.join(f'{v:.3f}' for v in ref['forward_s'])} | |")
    print(f"| load | {ours['load_s']:.2f} s | {ref['load_s']:.2f} s | |")
    print(f"| peak RSS | {ours['peak_rss_mb']:.0f} MiB | {ref['peak_rss_mb']:.0f} MiB | |")


if __name__ == "__main__":
    main()
