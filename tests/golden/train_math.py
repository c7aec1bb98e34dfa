#!/usr/bin/env python3
"""Golden numbers for the trainer's numeric pieces (train/optim.c,
train/lr_schedule.c, train/noise.c): torch.optim.AdamW (single-tensor path),
torch.nn.utils.clip_grad_norm_, diffusers.optimization.get_scheduler and the
noise math of diffusers' train_text_to_image_lora.py (DDPMScheduler
alphas_cumprod / add_noise / get_velocity, training_utils.compute_snr,
min-SNR-gamma weights, noise offset).

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/train_math.py

Writes tests/fixtures/train_math/{adamw,lr_schedule,noise}.json; every float
is written as a Python float (float32 values exactly), so the C suite reads
them back without rounding.
"""
import json
import os

import diffusers
import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "train_math")
REF = {"torch": torch.__version__, "diffusers": diffusers.__version__}


def fl(t):
    return [float(x) for x in t.detach().flatten().tolist()]


def write(name, doc):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    print("wrote", path)


def adamw_case(n, steps, lr_kind, base_lr, wd, gen, grad_scale):
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    p0 = fl(p)
    opt = torch.optim.AdamW([p], lr=base_lr, weight_decay=wd, foreach=False, fused=False)
    sched = get_scheduler(lr_kind, opt, num_warmup_steps=3, num_training_steps=steps)
    grads, lrs, after = [], [], []
    for s in range(steps):
        g = torch.randn(n, generator=gen) * grad_scale * (1.0 + s % 5)
        if s == 4:
            g[: n // 3] = 0.0  # some zero gradients
        p.grad = g.clone()
        grads.append(fl(g))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        after.append(fl(p))
    st = opt.state[p]
    return {"n": n, "steps": steps, "weight_decay": wd, "betas": [0.9, 0.999], "eps": 1e-8,
            "schedule": lr_kind, "base_lr": base_lr, "param0": p0, "grads": grads, "lr": lrs,
            "param_after": after, "exp_avg": fl(st["exp_avg"]), "exp_avg_sq": fl(st["exp_avg_sq"]),
            "step": float(st["step"])}


def clip_case(sizes, max_norm, gen):
    ps = [torch.nn.Parameter(torch.zeros(k)) for k in sizes]
    for i, q in enumerate(ps):
        q.grad = torch.randn(len(q), generator=gen) * (0.5 + i)
    before = [fl(q.grad) for q in ps]
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    return {"sizes": sizes, "max_norm": max_norm, "grads": before, "total_norm": float(total),
            "clipped": [fl(q.grad) for q in ps]}


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    defaults = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    write("adamw.json", {
        "reference": REF,
        "defaults": {k: defaults[k] for k in ("lr", "betas", "eps", "weight_decay")},
        "cases": [adamw_case(131, 20, "cosine", 1e-2, 1e-2, gen, 1.0),
                  adamw_case(67, 12, "constant", 1e-3, 0.0, gen, 1e-3)],
        "clip": [clip_case([37, 200, 5], 1.0, gen), clip_case([64, 3], 1e3, gen)]})

    kinds = [("constant", {}), ("constant_with_warmup", {}), ("linear", {}), ("cosine", {}),
             ("cosine_with_restarts", {"num_cycles": 3}), ("polynomial", {"power": 2.0})]
    rows = []
    for name, extra in kinds:
        for warm, total in ((10, 100), (0, 37)):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=1e-4)
            sched = get_scheduler(name, opt, num_warmup_steps=warm, num_training_steps=total,
                                  **extra)
            lrs = []
            for _ in range(total + 10):  # a few steps past the end too
                lrs.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
                opt.step()
                sched.step()
            rows.append({"name": name, "warmup": warm, "total": total, "base_lr": 1e-4,
                         "num_cycles": extra.get("num_cycles", 1), "power": extra.get("power", 1.0),
                         "lr_end": 1e-7, "lr": lrs})
    write("lr_schedule.json", {"reference": REF, "schedules": rows})

    configs = [("scaled_linear", 0.00085, 0.012, 1000), ("linear", 0.0001, 0.02, 1000),
               ("squaredcos_cap_v2", 0.0001, 0.02, 1000), ("scaled_linear", 0.0001, 0.03, 50)]
    scheds = []
    for kind, b0, b1, n in configs:
        s = DDPMScheduler(beta_schedule=kind, beta_start=b0, beta_end=b1, num_train_timesteps=n)
        scheds.append({"beta_schedule": kind, "beta_start": b0, "beta_end": b1,
                       "num_train_timesteps": n, "betas": fl(s.betas),
                       "alphas_cumprod": fl(s.alphas_cumprod)})
    sd = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       num_train_timesteps=1000)
    B, C, H, W = 4, 4, 3, 5
    x0 = torch.randn(B, C, H, W, generator=gen)
    noise = torch.randn(B, C, H, W, generator=gen)
    off_randn = torch.randn(B, C, 1, 1, generator=gen)
    noise_offset = 0.1
    noise_off = noise.clone()
    noise_off += noise_offset * off_randn  # as train_text_to_image_lora.py
    t = torch.tensor([0, 999, 500, 37], dtype=torch.long)
    snr = compute_snr(sd, t)
    gamma = 5.0
    base_w = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    write("noise.json", {
        "reference": REF, "schedules": scheds, "shape": [B, C, H, W], "timesteps": fl(t),
        "x0": fl(x0), "noise": fl(noise), "offset_randn": fl(off_randn),
        "noise_offset": noise_offset, "noise_with_offset": fl(noise_off),
        "noisy": fl(sd.add_noise(x0, noise, t)), "velocity": fl(sd.get_velocity(x0, noise, t)),
        "snr": fl(snr), "snr_gamma": gamma, "weights_epsilon": fl(base_w / snr),
        "weights_v_prediction": fl(base_w / (snr + 1))})


if __name__ == "__main__":
    main()
