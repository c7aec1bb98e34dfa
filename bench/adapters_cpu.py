#!/usr/bin/env python3
"""LoRA on the CPU (or a GPU): load, switch and per-step cost, lorahost beside
diffusers + PEFT, same run.

Usage: ~/ref/bin/python bench/adapters_cpu.py [--ranks 4 32 128] [--iters 2]
           [--batch 2] [--size 64] [--ctx 77] [--build build]
           [--device cuda --precision fp16 [--unet DIR]]
With --device cuda both sides run on the GPU in --precision (diffusers'
U-Net cast to it, times after torch.cuda.synchronize), on bench/gpu/
unet_gpu.py's random SD 1.5 U-Net unless --unet names one (bench/gpu/run.sh
runs it at rank 32).
Uses the SD 1.5-shaped U-Net with random weights of bench/unet_cpu.py
(/tmp/lh-bench/sd15/unet, built if missing) and builds, once per rank r,
two LoRAs A_r and B_r (different seeds) cached under /tmp/lh-bench/loras/:
PEFT / diffusers format (unet.<module>.lora_A.weight [r, in(, 1, 1)],
unet.<module>.lora_B.weight [out, r(, 1, 1)], F16, randn * 0.01), alpha = r
in lora_adapter_metadata, on what kohya's default SD LoRA targets: to_q,
to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj and ff.net.2 of the
16 transformer blocks (192 modules; no resnets). Then for each rank, each
side in its own process with all cores:
  ours:      bench_adapters (load A, B; forwards without adapters, with {A}
             in runtime mode, with {A} merged; set / switch / merge / unmerge
             times)
  diffusers: UNet2DConditionModel (float32) with its PeftAdapterMixin:
             load_lora_adapter, set_adapters (PEFT's unfused path),
             fuse_lora / unfuse_lora
and prints one table per rank with the ratio reference / ours, and whether
the issue's targets are met (a switch costs less than one U-Net step;
runtime mode adds at most 10 % per step at rank 32).
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from unet_cpu import CACHE, model_dir  # noqa: E402

LORAS = os.path.join(CACHE, "loras")
SEEDS = {"A": 1, "B": 2}
# kohya's default SD LoRA targets: the Linear / 1x1 Conv2d modules of every Transformer2DModel
TARGET = re.compile(r"^(down_blocks\.\d+\.|mid_block\.|up_blocks\.\d+\.)attentions\.\d+\."
                    r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)"
                    r"|ff\.net\.0\.proj|ff\.net\.2))\.weight$")


# ---- LoRA files ----

def lora_path(rank, name):
    return os.path.join(LORAS, f"sd15_r{rank}_{name}.safetensors")


def build_loras(unet_dir, rank):
    """A_r and B_r in diffusers' PEFT format, from the U-Net file's shapes."""
    if all(os.path.exists(lora_path(rank, n)) for n in SEEDS):
        return
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    shapes = {}
    with safe_open(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"), "pt") as f:
        for k in f.keys():
            if TARGET.match(k):
                shapes[k[: -len(".weight")]] = f.get_slice(k).get_shape()
    assert len(shapes) == 192, f"expected 192 target modules, found {len(shapes)}"
    mods = sorted(shapes)
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
        {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": mods})}
    os.makedirs(LORAS, exist_ok=True)
    for name, seed in SEEDS.items():
        g = torch.Generator().manual_seed(1000 * rank + seed)
        sd = {}
        for m in mods:
            out, inp = shapes[m][0], shapes[m][1]
            tail = list(shapes[m][2:])  # [1, 1] for the 1x1 conv proj_in / proj_out
            sd[f"unet.{m}.lora_A.weight"] = (torch.randn([rank, inp] + tail, generator=g)
                                             * 0.01).half()
            sd[f"unet.{m}.lora_B.weight"] = (torch.randn([out, rank] + tail, generator=g)
                                             * 0.01).half()
        tmp = lora_path(rank, name) + ".tmp"
        save_file(sd, tmp, metadata=meta)
        os.replace(tmp, lora_path(rank, name))
        n = sum(v.numel() for v in sd.values())
        print(f"built {os.path.basename(lora_path(rank, name))}: {len(mods)} modules, "
              f"{n / 1e6:.1f} M parameters", file=sys.stderr)


# ---- The reference (diffusers + PEFT), in its own process ----

def torch_worker(args):
    import torch
    from diffusers import UNet2DConditionModel
    try:  # transformers 5.x refuses peft < 0.22 (none is published); diffusers' own check passes
        import transformers.integrations.peft as hf_peft
        hf_peft.check_peft_version = lambda min_version: None
    except ImportError:
        pass
    torch.set_num_threads(os.cpu_count())
    cuda = args.device == "cuda"
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    res = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    m = UNet2DConditionModel.from_pretrained(args.dir, torch_dtype=dt).eval().to(args.device)
    res["unet_load_s"] = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    cfg = m.config
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, generator=g)
    ctx = torch.randn(args.batch, args.ctx, cfg.cross_attention_dim, generator=g)
    x, ctx = x.to(args.device, dt), ctx.to(args.device, dt)
    t = torch.tensor([999.0 - 37.0 * i for i in range(args.batch)]).to(args.device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(key, fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        res[key] = time.perf_counter() - t0

    def forwards(key):
        times = []
        with torch.no_grad():
            for _ in range(args.iters):
                sync()
                t0 = time.perf_counter()
                y = m(x, t, encoder_hidden_states=ctx).sample
                sync()
                times.append(time.perf_counter() - t0)
        res[key] = times
        return y.float()

    for name, path in (("A", args.lora_a), ("B", args.lora_b)):
        timed(f"load_{name}_s", lambda: m.load_lora_adapter(path, prefix="unet",
                                                             adapter_name=name))
    n_lora = sum(1 for n, _ in m.named_modules() if n.endswith(".lora_A.A"))
    dtypes = sorted({str(p.dtype) for n, p in m.named_parameters() if ".lora_" in n})
    res.update(layers_unet=n_lora, lora_dtypes=dtypes)
    m.disable_adapters()  # the base model: PEFT's layers call the base layer only
    y_base = forwards("base_s")

    # runtime (unfused): PEFT adds lora_B(lora_A(x)) * scaling in every layer
    timed("rt_set_A_s", lambda: (m.enable_adapters(), m.set_adapters(["A"])))
    y_run = forwards("rt_s")
    timed("rt_switch_B_s", lambda: m.set_adapters(["B"]))
    timed("rt_set_AB_s", lambda: m.set_adapters(["A", "B"], [0.7, 0.4]))
    timed("rt_none_s", lambda: m.disable_adapters())

    # merged: fuse_lora writes W + dW into the base layers; unfuse_lora subtracts it again
    timed("mg_set_A_s", lambda: (m.enable_adapters(), m.set_adapters(["A"]), m.fuse_lora()))
    y_mrg = forwards("mg_s")
    timed("mg_switch_B_s", lambda: (m.unfuse_lora(), m.set_adapters(["B"]), m.fuse_lora()))
    timed("mg_none_s", lambda: (m.unfuse_lora(), m.disable_adapters()))

    res.update(max_abs_base=y_base.abs().max().item(),
               max_diff_rt_base=(y_run - y_base).abs().max().item(),
               max_diff_rt_mg=(y_run - y_mrg).abs().max().item(),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               gpu=torch.cuda.get_device_name() if cuda else "cpu")
    print(json.dumps(res))


# ---- Driver ----

def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def warm(paths):
    """Read the files once so both sides load from a warm page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def step(v):
    """The warm step: median of iterations 2..N (the only one when N = 2)."""
    v = sorted(v[1:] if len(v) > 1 else v)
    return v[len(v) // 2]


def secs(v):
    if v < 0.01:
        return f"{v * 1e3:.3f} ms"
    return f"{v * 1e3:.1f} ms" if v < 1.0 else f"{v:.3f} s"


def overhead(d):
    return 100.0 * (step(d["rt_s"]) - step(d["mg_s"])) / step(d["mg_s"])


def table(rank, args, o, r, la0, la1):
    where = (f"{r.get('gpu', args.device)}, {args.precision}" if args.device != "cpu"
             else f"{os.cpu_count()} cores")
    print(f"LoRA rank {rank} (alpha {rank}), 192 U-Net modules, SD 1.5 shapes (random weights), "
          f"batch {args.batch}, {args.size}x{args.size} latents, {args.ctx} context tokens, "
          f"{where}, torch {r['torch']}, load average {la0} -> {la1}")
    print("| | lorahost | diffusers + PEFT | ratio (diffusers / ours) |")
    print("|---|---|---|---|")

    def row(label, key):
        a = o[key] if isinstance(key, str) else key(o)
        b = r[key] if isinstance(key, str) else key(r)
        ratio = f"{b / a:.2f}x" if a > 0 else "n/a"
        print(f"| {label} | {secs(a)} | {secs(b)} | {ratio} |")

    row("load A (from disk)", "load_A_s")
    row("load B (from disk)", "load_B_s")
    row("set {A} (runtime)", "rt_set_A_s")
    row("switch {A} -> {B} (runtime)", "rt_switch_B_s")
    row("set {A, B} 0.7 / 0.4 (runtime)", "rt_set_AB_s")
    row("per step, no adapter", lambda d: step(d["base_s"]))
    row("per step, runtime {A}", lambda d: step(d["rt_s"]))
    row("per step, merged {A}", lambda d: step(d["mg_s"]))
    print(f"| runtime overhead vs merged | {overhead(o):+.1f} % | {overhead(r):+.1f} % | |")
    row("merge {A} (set, merged mode)", "mg_set_A_s")
    row("switch {A} -> {B} (merged)", "mg_switch_B_s")
    row("unmerge (back to none)", "mg_none_s")
    for label, key in (("no adapter", "base_s"), ("runtime", "rt_s"), ("merged", "mg_s")):
        print(f"| all forwards, {label} | {', '.join(f'{v:.3f}' for v in o[key])} | "
              f"{', '.join(f'{v:.3f}' for v in r[key])} | |")
    print(f"| max abs(runtime - merged) / max abs(runtime - base) | "
          f"{o['max_diff_rt_mg']:.2g} / {o['max_diff_rt_base']:.2g} | "
          f"{r['max_diff_rt_mg']:.2g} / {r['max_diff_rt_base']:.2g} | |")
    print(f"| U-Net load | {o['unet_load_s']:.2f} s | {r['unet_load_s']:.2f} s | |")
    print(f"| peak RSS | {o['peak_rss_mb']:.0f} MiB | {r['peak_rss_mb']:.0f} MiB | |")
    one = step(o["base_s"])
    for label, key in (("runtime", "rt_switch_B_s"), ("merged", "mg_switch_B_s")):
        ok = o[key] < one
        print(f"Target (lorahost): switch ({label}) {secs(o[key])} < one U-Net step "
              f"{secs(one)}: {'met' if ok else 'NOT met'}")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 32, 128])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=77)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--unet", help="the U-Net directory (default: a random SD 1.5 one)")
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--dir")
    ap.add_argument("--lora-a")
    ap.add_argument("--lora-b")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    if args.unet:
        d = args.unet
    elif args.device == "cpu":
        d = model_dir("sd15")
    else:  # the GPU benchmarks' U-Net (built there once)
        sys.path.insert(0, os.path.join(HERE, "gpu"))
        import unet_gpu
        d = unet_gpu.random_dir("/tmp/lh-gpu-bench", "unet", "UNet2DConditionModel",
                                unet_gpu.SD15_UNET, 0)
    for rank in args.ranks:
        build_loras(d, rank)
    shape = [str(args.batch), str(args.size), str(args.size), str(args.ctx), str(args.iters)]
    results = {}
    for rank in args.ranks:
        a, b = lora_path(rank, "A"), lora_path(rank, "B")
        warm([os.path.join(d, "diffusion_pytorch_model.safetensors"), a, b])
        la0 = loadavg()
        env = dict(os.environ)
        if os.environ.get("LH_LD_LIBRARY_PATH"):  # bench/gpu/run.sh: the packed libraries
            env["LD_LIBRARY_PATH"] = os.environ["LH_LD_LIBRARY_PATH"]
        o = run_json([os.path.join(args.build, "bench", "bench_adapters"), d, a, b] + shape +
                     ["0", args.device, args.precision], env)
        r = run_json([sys.executable, __file__, "--torch-worker", "--dir", d, "--lora-a", a,
                      "--lora-b", b, "--batch", str(args.batch), "--size", str(args.size),
                      "--ctx", str(args.ctx), "--iters", str(args.iters), "--device",
                      args.device, "--precision", args.precision])
        la1 = loadavg()
        print(f"rank {rank}: ours {json.dumps(o)}", file=sys.stderr)
        print(f"rank {rank}: diffusers {json.dumps(r)}", file=sys.stderr)
        if o["layers_unet"] != 192 or r["layers_unet"] != 192 or o["n_unmatched"]:
            sys.exit(f"rank {rank}: expected 192 adapted layers on both sides, got "
                     f"{o['layers_unet']} (ours, {o['n_unmatched']} unmatched keys) and "
                     f"{r['layers_unet']} (diffusers)")
        table(rank, args, o, r, la0, la1)
        results[rank] = (o, r)
    if 32 in results:
        ov = overhead(results[32][0])
        print(f"Target (lorahost): runtime overhead at rank 32 {ov:+.1f} % <= 10 %: "
              f"{'met' if ov <= 10.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
