#!/usr/bin/env python3
"""The attention op alone on the GPU: lorahost's cuda backend (bench_attention)
beside PyTorch's scaled_dot_product_attention with each of its fused
kernels (flash, cuDNN, memory-efficient) and its default choice, on the
SD 1.5 U-Net's attention shapes at 512x512 (batch 2: one CFG step), fp16,
forward and backward.

Usage: python3 bench/gpu/attention_gpu.py --build BUILD [--iters 50] [--batch 2]
What it answers: whether cuDNN's fused attention (reachable from C through
cuDNN's graph API) would beat our flash-style kernels (kernels/cuda/
attention_tc.cu) at these shapes, and by how much per U-Net step (each
shape weighted by how often one step runs it). Our side takes float32
buffers holding fp16-rounded values (the backend's activation layout:
heads interleaved, [b, n, heads * d]); torch's takes fp16 tensors in the
layout diffusers' attention processor hands it (the same [b, n, heads * d]
memory viewed as [b, heads, n, d]). Each side times a call as the mean of
back-to-back calls after warm-up. `--device cpu` is a dry run of the
script on a machine without a GPU.
"""
import argparse
import json
import os
import subprocess
import sys

# (name, query tokens, key tokens, head dim, calls per U-Net step) of SD 1.5
# at 64x64 latents: 8 heads; transformer blocks at 64x64, 32x32 and 16x16 (2
# down, 3 up each) and the mid block's at 8x8, each a self and a cross
# attention (77 text tokens).
SHAPES = [
    ("64x64 self", 4096, 4096, 40, 5), ("64x64 cross", 4096, 77, 40, 5),
    ("32x32 self", 1024, 1024, 80, 5), ("32x32 cross", 1024, 77, 80, 5),
    ("16x16 self", 256, 256, 160, 5), ("16x16 cross", 256, 77, 160, 5),
    ("8x8 self", 64, 64, 160, 1), ("8x8 cross", 64, 77, 160, 1),
]
HEADS = 8
KERNELS = ["default", "flash", "cudnn", "efficient"]


def torch_worker(args):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dev = torch.device(args.device)
    cuda = args.device == "cuda"
    dt = torch.float16 if cuda else torch.float32
    pick = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
    g = torch.Generator(device="cpu").manual_seed(5)
    res = {"torch": torch.__version__,
           "gpu": torch.cuda.get_device_name() if cuda else "cpu", "shapes": []}

    def view(x, n, d):  # diffusers' head_to_batch: [b, n, h*d] -> [b, h, n, d]
        return x.view(args.batch, n, HEADS, d).transpose(1, 2)

    def seconds(fn):
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / args.iters
        import time
        t0 = time.perf_counter()
        for _ in range(args.iters):
            fn()
        return (time.perf_counter() - t0) / args.iters

    for name, nq, nk, d, _ in SHAPES:
        row = {"name": name}
        q = (torch.rand(args.batch, nq, HEADS * d, generator=g) * 2 - 1).to(dev, dt)
        k = (torch.rand(args.batch, nk, HEADS * d, generator=g) * 2 - 1).to(dev, dt)
        v = (torch.rand(args.batch, nk, HEADS * d, generator=g) * 2 - 1).to(dev, dt)
        dout = (torch.rand(args.batch, HEADS, nq, d, generator=g) * 2 - 1).to(dev, dt)
        for kern in KERNELS:
            qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

            def fwd():
                with torch.no_grad():
                    return F.scaled_dot_product_attention(view(q, nq, d), view(k, nk, d),
                                                          view(v, nk, d))

            def fwd_bwd():
                o = F.scaled_dot_product_attention(view(qg, nq, d), view(kg, nk, d),
                                                   view(vg, nk, d))
                torch.autograd.grad(o, (qg, kg, vg), dout)  # no .grad to accumulate into

            try:
                if kern == "default":
                    f, fb = seconds(fwd), seconds(fwd_bwd)
                else:
                    with sdpa_kernel(pick[kern]):
                        f, fb = seconds(fwd), seconds(fwd_bwd)
                row[kern] = {"forward_s": f, "backward_s": max(fb - f, 0.0)}
            except RuntimeError as e:  # the kernel refuses this shape or device
                row[kern] = {"error": str(e).splitlines()[0][:100]}
        res["shapes"].append(row)
    print(json.dumps(res))


def ours(args, nq, nk, d, env):
    cmd = [os.path.join(args.build, "bench", "bench_attention"), str(args.batch), str(HEADS),
           str(nq), str(nk), str(d), str(args.iters), args.device,
           "fp16" if args.device == "cuda" else "fp32", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0 or not out.stdout.strip():
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:100]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ms(r, key):
    return f"{r[key] * 1e3:.3f}" if key in r else "n/a"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", help="a build with bench_attention (required but for the worker)")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--torch-worker", action="store_true")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    if not args.build:
        ap.error("--build is required")
    env = dict(os.environ)
    if os.environ.get("LH_LD_LIBRARY_PATH"):  # bench/gpu/run.sh: the packed libraries
        env["LD_LIBRARY_PATH"] = os.environ["LH_LD_LIBRARY_PATH"]
    mine = [ours(args, nq, nk, d, env) for _, nq, nk, d, _ in SHAPES]
    out = subprocess.run([sys.executable, __file__, "--torch-worker", "--device", args.device,
                          "--batch", str(args.batch), "--iters", str(args.iters)],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():  # our rows still print, torch's n/a
        print(out.stderr[-2000:], file=sys.stderr)
        why = {"error": f"torch worker exit {out.returncode}"}
        ref = {"gpu": args.device, "torch": "?",
               "shapes": [{k: why for k in KERNELS} for _ in SHAPES]}
    else:
        ref = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"Attention alone, SD 1.5 U-Net shapes at 512x512, batch {args.batch}, {HEADS} heads, "
          f"{'fp16' if args.device == 'cuda' else 'fp32'}, {ref['gpu']}, torch {ref['torch']}: "
          "ms per call, forward / backward")
    print("| shape (q x k, head dim) | per step | lorahost | " +
          " | ".join(f"torch {k}" for k in KERNELS) + " |")
    print("|---|---|---|" + "---|" * len(KERNELS))
    total = {k: [0.0, 0.0] for k in ["lorahost"] + KERNELS}
    for (name, nq, nk, d, n), m, r in zip(SHAPES, mine, ref["shapes"]):
        cells = [f"{ms(m, 'forward_s')} / {ms(m, 'backward_s')}" if "error" not in m
                 else f"failed ({m['error']})"]
        for side, t in [("lorahost", m)] + [(k, r[k]) for k in KERNELS]:
            for i, key in enumerate(("forward_s", "backward_s")):
                total[side][i] = total[side][i] + n * t[key] if key in t and total[side][i] is not None else None
        for k in KERNELS:
            t = r[k]
            cells.append(f"{ms(t, 'forward_s')} / {ms(t, 'backward_s')}" if "error" not in t
                         else f"n/a ({t['error'][:60]})")
        print(f"| {name} ({nq} x {nk}, {d}) | {n} | " + " | ".join(cells) + " |")

    def tot(side):
        f, b = total[side]
        return "n/a" if f is None or b is None else f"{f * 1e3:.2f} / {b * 1e3:.2f}"
    print("| all of one U-Net step | | " + " | ".join(tot(k) for k in ["lorahost"] + KERNELS) + " |")
    print(json.dumps({"ours": mine, "torch": ref}))
    return 0 if out.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
