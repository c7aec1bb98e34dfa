#!/usr/bin/env python3
"""One LoRA training step on the CPU: lorahost beside diffusers + PEFT, same run.

Usage: ~/ref/bin/python bench/train_cpu.py [--configs tiny mid] [--iters 3]
           [--rank 8] [--build build] [--precisions fp32 fp16]
Configs:
  tiny: tests/fixtures/models/sd1_tiny/unet, batch 2, 8x8 latents, 8 context
        tokens (the goldens' shape)
  mid:  SD 1.5 block layout with block_out_channels [128, 256, 512, 512]
        (random weights, F16 file, cached under /tmp/lh-bench/sd15mid),
        batch 1, 32x32 latents, 77 context tokens
  sd15: the full SD 1.5 shapes of bench/unet_cpu.py (random weights,
        /tmp/lh-bench/sd15), batch 1, 32x32 latents, 77 context tokens
A rank-r LoRA (PEFT format, lora_alpha = r, randn * 0.05, F32) on to_q, to_k,
to_v and to_out.0 of every attention (attn1 and attn2), cached under
/tmp/lh-bench/loras/. One step, each side in its own process per precision
and checkpointing setting, all cores: forward, mse loss against a random
target, backward to the LoRA gradients (no optimizer).
  ours:      bench_train (lh_unet_train_step: one forward keeping its
             activations, the loss, the backward; with / without
             checkpointing; fp16: loss scale 65536 from lh_loss_scaler,
             gradients unscaled and checked)
  diffusers: UNet2DConditionModel + load_lora_adapter, base frozen,
             F.mse_loss(...).backward(); unet.train() and
             enable_gradient_checkpointing() for the checkpointed run.
             fp16 as diffusers' LoRA scripts with --mixed_precision fp16:
             the frozen U-Net cast to float16, LoRA parameters float32,
             the forward under torch.autocast("cpu", float16), the loss on
             pred.float(), torch.amp.GradScaler (scale 65536).
Prints a table per config and whether the issue's targets are met.
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
import unet_cpu  # noqa: E402
from unet_cpu import CACHE, SD15  # noqa: E402

LORAS = os.path.join(CACHE, "loras")
TARGET = re.compile(r"^(.*attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\."
                    r"(to_q|to_k|to_v|to_out\.0))\.weight$")
CONFIGS = {
    "tiny": dict(batch=2, size=8, ctx=8),
    "mid": dict(batch=1, size=32, ctx=77),
    "sd15": dict(batch=1, size=32, ctx=77),
}


def model_dir(name):
    if name == "tiny":
        return os.path.join(ROOT, "tests", "fixtures", "models", "sd1_tiny", "unet")
    if name == "sd15":
        return unet_cpu.model_dir("sd15")
    path = os.path.join(CACHE, "sd15mid", "unet")
    if not os.path.exists(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        import torch
        from diffusers import UNet2DConditionModel
        torch.manual_seed(0)
        m = UNet2DConditionModel(**dict(SD15, block_out_channels=[128, 256, 512, 512]))
        n = sum(p.numel() for p in m.parameters())
        print(f"built sd15mid U-Net: {n / 1e6:.1f} M parameters", file=sys.stderr)
        m.to(torch.float16).save_pretrained(path, safe_serialization=True)
    return path


def lora_path(name, rank):
    return os.path.join(LORAS, f"train_{name}_r{rank}.safetensors")


def build_lora(name, unet_dir, rank):
    path = lora_path(name, rank)
    if os.path.exists(path):
        return path
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    shapes = {}
    with safe_open(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"), "pt") as f:
        for k in f.keys():
            mt = TARGET.match(k)
            if mt:
                shapes[mt.group(1)] = f.get_slice(k).get_shape()
    mods = sorted(shapes)
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
        {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": mods})}
    g = torch.Generator().manual_seed(7 + rank)
    sd = {}
    for m in mods:
        out, inp = shapes[m][0], shapes[m][1]
        sd[f"unet.{m}.lora_A.weight"] = torch.randn([rank, inp], generator=g) * 0.05
        sd[f"unet.{m}.lora_B.weight"] = torch.randn([out, rank], generator=g) * 0.05
    os.makedirs(LORAS, exist_ok=True)
    save_file(sd, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)
    print(f"built {os.path.basename(path)}: {len(mods)} modules", file=sys.stderr)
    return path


# ---- The reference (diffusers + PEFT), in its own process ----

def torch_worker(args):
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    try:  # transformers 5.x refuses peft < 0.22 (none is published); diffusers' own check passes
        import transformers.integrations.peft as hf_peft
        hf_peft.check_peft_version = lambda min_version: None
    except ImportError:
        pass
    torch.set_num_threads(os.cpu_count())
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "checkpointing": args.ckpt, "precision": args.precision}
    half = args.precision == "fp16"
    m = UNet2DConditionModel.from_pretrained(args.dir, torch_dtype=torch.float32)
    if half:
        m.to(torch.float16)
    m.load_lora_adapter(args.lora, prefix="unet", adapter_name="A")
    for n, p in m.named_parameters():
        p.requires_grad_(".lora_" in n)
        if half and ".lora_" in n:
            p.data = p.data.float()  # diffusers' cast_training_params
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0) if half else None
    n_lora = sum(1 for n, _ in m.named_modules() if n.endswith(".lora_A.A"))
    res["layers_unet"] = n_lora
    m.train()  # diffusers checkpoints only in train mode; no dropout in this config
    if args.ckpt:
        m.enable_gradient_checkpointing()
    g = torch.Generator().manual_seed(0)
    cfg = m.config
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, generator=g)
    ctx = torch.randn(args.batch, args.ctx, cfg.cross_attention_dim, generator=g)
    target = torch.randn(args.batch, cfg.out_channels, args.size, args.size, generator=g)
    t = torch.tensor([999.0 - 37.0 * i for i in range(args.batch)])
    params = [p for p in m.parameters() if p.requires_grad]

    saved = {}

    def pack(tn):  # bytes of the tensors autograd saves for the backward (by storage)
        try:
            st = tn.untyped_storage()
            saved[st.data_ptr()] = st.nbytes()
        except Exception:
            pass
        return tn

    def forward():
        if not half:
            return F.mse_loss(m(x, t, encoder_hidden_states=ctx).sample, target)
        with torch.autocast("cpu", dtype=torch.float16):
            pred = m(x.half(), t, encoder_hidden_states=ctx.half()).sample
        return F.mse_loss(pred.float(), target)

    opt = torch.optim.SGD(params, lr=0.0)  # GradScaler.unscale_ works per optimizer
    steps, fwds, bwds = [], [], []
    for it in range(args.iters):
        for p in params:
            p.grad = None
        hooks = it == 0  # the counting hooks only on the (untimed-for-median) first step
        t0 = time.perf_counter()
        if hooks:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tn: tn):
                loss = forward()
        else:
            loss = forward()
        t1 = time.perf_counter()
        if half:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scaler.update()
        else:
            loss.backward()
        t2 = time.perf_counter()
        steps.append(t2 - t0)
        fwds.append(t1 - t0)
        bwds.append(t2 - t1)
        print(f"torch: step {it}: {t2 - t0:.3f} s", file=sys.stderr)
    gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    res.update(step_s=steps, forward_s=fwds, backward_s=bwds, loss=loss.item(), grad_norm=gn,
               saved_mb=sum(saved.values()) / 1048576.0,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    print(json.dumps(res))


# ---- Driver ----

def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def step(v):
    """The warm step: median of iterations 2..N."""
    v = sorted(v[1:] if len(v) > 1 else v)
    return v[len(v) // 2]


def secs(v):
    return f"{v * 1e3:.1f} ms" if v < 1.0 else f"{v:.3f} s"


def table(name, args, iters, sh, o, r, la0, la1, prec):
    print(f"Config {name}: {sh['dir']}, batch {sh['batch']}, {sh['size']}x{sh['size']} latents, "
          f"{sh['ctx']} context tokens, LoRA rank {args.rank} (alpha {args.rank}) on "
          f"to_q/to_k/to_v/to_out.0 ({o[0]['layers_unet']} layers ours, "
          f"{r[0]['layers_unet']} diffusers), {prec}, {os.cpu_count()} cores, torch "
          f"{r[0]['torch']}, {iters} iterations, load average {la0} -> {la1}")
    print("| | lorahost | diffusers + PEFT | ratio (diffusers / ours) |")
    print("|---|---|---|---|")
    for ck in (0, 1):
        lab = "with checkpointing" if ck else "no checkpointing"
        for what, key in (("step", "step_s"), ("  forward part", "forward_s"),
                          ("  backward part", "backward_s")):
            a, b = step(o[ck][key]), step(r[ck][key])
            print(f"| {what}, {lab} | {secs(a)} | {secs(b)} | {b / a:.2f}x |")
        print(f"| all steps, {lab} | {', '.join(f'{v:.3f}' for v in o[ck]['step_s'])} | "
              f"{', '.join(f'{v:.3f}' for v in r[ck]['step_s'])} | |")
    print(f"| activation memory, no checkpointing | {o[0]['ws_backward_mb']:.1f} MiB (workspace) "
          f"| {r[0]['saved_mb']:.1f} MiB (saved tensors) | |")
    print(f"| activation memory, with checkpointing | {o[0]['ws_backward_ckpt_mb']:.1f} MiB "
          f"(workspace) | {r[1]['saved_mb']:.1f} MiB (saved tensors, outer graph) | |")
    for ck in (0, 1):
        lab = "with checkpointing" if ck else "no checkpointing"
        print(f"| peak RSS, {lab} | {o[ck]['peak_rss_mb']:.0f} MiB | "
              f"{r[ck]['peak_rss_mb']:.0f} MiB | |")
    print(f"| loss / LoRA grad L2 norm | {o[0]['loss']:.4g} / {o[0]['grad_norm']:.4g} | "
          f"{r[0]['loss']:.4g} / {r[0]['grad_norm']:.4g} | (different random inputs) |")
    s0, s1 = step(o[0]["step_s"]), step(o[1]["step_s"])
    rs0, rs1 = step(r[0]["step_s"]), step(r[1]["step_s"])
    for ck, a, b in ((0, s0, rs0), (1, s1, rs1)):
        lab = "with" if ck else "without"
        print(f"Target: step {lab} checkpointing not slower than PyTorch ({secs(a)} vs "
              f"{secs(b)}): {'met' if a <= b else 'NOT met'}")
    frac = o[0]["ws_backward_ckpt_mb"] / o[0]["ws_backward_mb"]
    extra = 100.0 * (s1 - s0) / s0
    print(f"Target: checkpointing at least halves activation memory ({frac * 100:.0f} % of "
          f"the workspace): {'met' if frac <= 0.5 else 'NOT met'}; for at most 40 % more time "
          f"({extra:+.1f} %): {'met' if extra <= 40.0 else 'NOT met'}  "
          f"[PyTorch for comparison: {100.0 * (rs1 - rs0) / rs0:+.1f} %]")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["tiny", "mid"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--iters-tiny", type=int, default=20)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--dir")
    ap.add_argument("--lora")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--ctx", type=int)
    ap.add_argument("--ckpt", type=int, default=0)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    for name in args.configs:
        sh = dict(CONFIGS[name])
        d = model_dir(name)
        sh["dir"] = os.path.relpath(d, ROOT) if d.startswith(ROOT) else d
        lora = build_lora(name, d, args.rank)
        iters = args.iters_tiny if name == "tiny" else args.iters
        for prec in args.precisions:
            la0 = loadavg()
            o, r = {}, {}
            for ck in (0, 1):
                o[ck] = run_json([os.path.join(args.build, "bench", "bench_train"), d, lora,
                                  str(sh["batch"]), str(sh["size"]), str(sh["size"]),
                                  str(sh["ctx"]), str(iters), str(ck), "0", prec])
                print(f"{name} {prec} ckpt {ck}: ours {json.dumps(o[ck])}", file=sys.stderr)
                r[ck] = run_json([sys.executable, __file__, "--torch-worker", "--dir", d,
                                  "--lora", lora, "--batch", str(sh["batch"]),
                                  "--size", str(sh["size"]), "--ctx", str(sh["ctx"]),
                                  "--iters", str(iters), "--ckpt", str(ck),
                                  "--precision", prec])
                print(f"{name} {prec} ckpt {ck}: diffusers {json.dumps(r[ck])}", file=sys.stderr)
            la1 = loadavg()
            table(name, args, iters, sh, o, r, la0, la1, prec)


if __name__ == "__main__":
    main()
