#!/usr/bin/env python3
"""FLOPs of one SD 1.5 U-Net step by op, as torch's FlopCounterMode counts
them on diffusers' UNet2DConditionModel (meta device: no weights, no GPU).
The figure docs/cuda.md quotes (batch 2, 64x64 latents, 77 tokens).

Usage: python3 bench/gpu/unet_flops.py [--batch 2] [--size 64]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import unet_gpu  # noqa: E402  the SD 1.5 config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=77)
    args = ap.parse_args()
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        m = UNet2DConditionModel(**unet_gpu.SD15_UNET)
        x = torch.randn(args.batch, 4, args.size, args.size)
        t = torch.full((args.batch,), 500)
        c = torch.randn(args.batch, args.ctx, 768)
        fc = FlopCounterMode(display=False)
        with fc:
            m(x, t, c)
    print(f"U-Net step, batch {args.batch}, {args.size}x{args.size}: "
          f"{fc.get_total_flops() / 1e12:.2f} TFLOP")
    for op, n in sorted(fc.get_flop_counts()["Global"].items(), key=lambda kv: -kv[1]):
        print(f"  {op}: {n / 1e12:.3f} TFLOP")


if __name__ == "__main__":
    main()
