#!/usr/bin/env python3
"""An adapter training step on the GPU: lorahost's cuda backend beside
diffusers + PEFT, same run, same random SD 1.5 U-Net, same LoRA.

Usage: python3 bench/gpu/train_gpu.py --build BUILD [--batches 1 4] [--ckpt 0 1]
           [--precisions fp16 bf16] [--iters 8] [--rank 4] [--cache DIR]
The U-Net is bench/gpu/unet_gpu.py's (random weights, SD 1.5 config, F16
file); the LoRA is bench/train_cpu.py's (PEFT format, rank r, alpha r, on
to_q/to_k/to_v/to_out.0 of every attention). Inputs: 64x64 latents (512x512
images), 77 context tokens.
One step, as diffusers' train_text_to_image_lora.py takes it:
  diffusers: the frozen U-Net in the half type, LoRA parameters in float32
             (cast_training_params), the forward under torch.autocast, the
             loss F.mse_loss(pred.float(), target), GradScaler for fp16,
             clip_grad_norm_(1.0), AdamW step, zero_grad;
             enable_gradient_checkpointing() for the checkpointed runs.
  lorahost:  bench_train on the cuda backend: lh_unet_train_step in the
             half type (loss scaling for fp16), gradient unscale and
             check, clip to 1.0, AdamW on the device, the adapter refresh.
Each side runs in its own process per setting; the step time is the median
after two warm-up steps; peak device memory is torch.cuda's
max_memory_allocated and the cuda backend's peak in use (LH_CUDA_STATS).
Prints a table with the ratios. `--device cpu --unet DIR --size 8` is a dry
run of the script itself on a machine without a GPU.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import unet_gpu  # noqa: E402


def torch_worker(args):
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    try:  # transformers 5.x refuses older peft; diffusers' own check passes
        import transformers.integrations.peft as hf_peft
        hf_peft.check_peft_version = lambda min_version: None
    except ImportError:
        pass
    dev = torch.device(args.device)
    cuda = args.device == "cuda"
    dt = torch.float16 if args.precision == "fp16" else torch.bfloat16
    m = UNet2DConditionModel.from_pretrained(args.dir, torch_dtype=dt)
    m.load_lora_adapter(args.lora, prefix="unet", adapter_name="A")
    m.to(dev)
    for n, p in m.named_parameters():
        p.requires_grad_(".lora_" in n)
        if ".lora_" in n:
            p.data = p.data.float()  # cast_training_params
    params = [p for p in m.parameters() if p.requires_grad]
    m.train()
    if args.ckpt:
        m.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(args.device) if args.precision == "fp16" else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = m.config
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, generator=g).to(dev, dt)
    ctx = torch.randn(args.batch, args.ctx, cfg.cross_attention_dim, generator=g).to(dev, dt)
    target = torch.randn(args.batch, cfg.out_channels, args.size, args.size, generator=g).to(dev)
    t = torch.tensor([999 - 37 * i for i in range(args.batch)], device=dev)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=dt):
            pred = m(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        opt.zero_grad()
        sync()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"step_s": times, "loss": loss.item(),
                      "peak_device_mb": torch.cuda.max_memory_allocated() / 1048576.0
                      if cuda else float("nan"),
                      "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
                      "layers_unet": sum(1 for n, _ in m.named_modules()
                                         if n.endswith(".lora_A.A"))}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", help="a build with bench_train (required but for --torch-worker)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--ckpt", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=77)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--cache", default="/tmp/lh-gpu-bench")
    ap.add_argument("--device", default="cuda",
                    help="cpu: a dry run of this script (with --unet, small --size)")
    ap.add_argument("--unet", help="a U-Net directory instead of the random SD 1.5 one")
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--dir")
    ap.add_argument("--lora")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--precision")
    args = ap.parse_args()
    if args.torch_worker:
        args.ckpt = args.ckpt[0]
        return torch_worker(args)
    if not args.build:
        ap.error("--build is required")
    import train_cpu  # bench/train_cpu.py: the LoRA file
    d = args.unet or unet_gpu.random_dir(args.cache, "unet", "UNet2DConditionModel",
                                         unet_gpu.SD15_UNET, 0)
    lora = train_cpu.build_lora("sd15gpu" if not args.unet else "dry", d, args.rank)
    env = dict(os.environ, LH_CUDA_STATS="1")
    if os.environ.get("LH_LD_LIBRARY_PATH"):  # bench/gpu/run.sh: the packed libraries
        env["LD_LIBRARY_PATH"] = os.environ["LH_LD_LIBRARY_PATH"]
    what = f"U-Net {args.unet}" if args.unet else "SD 1.5 shapes (random weights)"
    print(f"Adapter training step, {what}, {args.size}x{args.size} latents, {args.ctx} tokens, "
          f"LoRA rank {args.rank} on to_q/to_k/to_v/to_out.0, {args.device}")
    print("| precision | batch | checkpointing | lorahost | diffusers + PEFT "
          "| ratio (torch / ours) | peak memory ours | peak memory torch "
          "| LoRA layers (ours / torch) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for prec in args.precisions:
        for b in args.batches:
            for ck in args.ckpt:
                ours = unet_gpu.run_json([os.path.join(args.build, "bench", "bench_train"), d, lora,
                                          str(b), str(args.size), str(args.size), str(args.ctx),
                                          str(args.iters), str(ck), "0", prec, args.device],
                                         env, fatal=False)
                ref = unet_gpu.run_json([sys.executable, __file__, "--torch-worker", "--dir", d,
                                         "--lora", lora, "--batch", str(b), "--size",
                                         str(args.size), "--ctx", str(args.ctx), "--iters",
                                         str(args.iters), "--ckpt", str(ck), "--precision", prec,
                                         "--device", args.device], fatal=False)
                print(json.dumps({"precision": prec, "batch": b, "ckpt": ck, "ours": ours,
                                  "torch": ref}), file=sys.stderr)
                cells = [prec, str(b), "yes" if ck else "no"]  # each row as soon as measured
                if "error" in ours or "error" in ref:
                    cells += [f"ours: {ours.get('error', 'ran')}; torch: {ref.get('error', 'ran')}"]
                    print("| " + " | ".join(cells) + " | | | | | |", flush=True)
                    continue
                o, r = unet_gpu.med(ours["step_s"]), unet_gpu.med(ref["step_s"])
                cells += [f"{o * 1e3:.1f} ms", f"{r * 1e3:.1f} ms", f"{r / o:.2f}x",
                          f"{ours.get('peak_device_mb', float('nan')):.0f} MiB",
                          f"{ref['peak_device_mb']:.0f} MiB",
                          f"{ours['layers_unet']} / {ref['layers_unet']} ({ref['gpu']}, "
                          f"torch {ref['torch']})"]
                print("| " + " | ".join(cells) + " |", flush=True)
    if args.device == "cuda":  # where the first setting's step spends its device time
        prec, b, ck = args.precisions[0], args.batches[0], args.ckpt[0]
        cmd = [os.path.join(args.build, "bench", "bench_train"), d, lora, str(b), str(args.size),
               str(args.size), str(args.ctx), "3", str(ck), "0", prec, args.device]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                                 env=dict(env, LH_CUDA_PROFILE="1"))
            lines = out.stderr.splitlines()
            at = next((i for i, x in enumerate(lines) if x.startswith("cuda profile")), None)
            print(f"\nTraining step, {prec}, batch {b}, checkpointing {'yes' if ck else 'no'}: "
                  f"device time by op over 3 steps (LH_CUDA_PROFILE=1, exit {out.returncode})")
            print("```\n" + "\n".join(lines[at:] if at is not None else lines[-5:]) + "\n```")
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"\nprofile: failed ({str(e)[:160]})")

if __name__ == "__main__":
    main()
