#!/usr/bin/env python3
"""Record diffusers scheduler trajectories for lorahost's scheduler suite.

Run: ~/ref/bin/python tests/golden/schedulers.py [--cases DIR] [--out DIR] [plugin_id ...]
(--cases defaults to tests/golden/sched_cases, --out to tests/fixtures/schedulers.)
For every tests/golden/sched_cases/<plugin_id>.py (which defines CLASS, the
diffusers scheduler class name, and VARIANTS, a list of (name, config dict,
step arguments dict)), this drives diffusers over each variant x steps
{1, 2, 10, 25, 50} and writes tests/fixtures/schedulers/<plugin_id>.safetensors:

  metadata "cases": JSON list of {name, config, steps, init_noise_sigma,
                                   n_noise, add_noise_timesteps}
  metadata "versions": torch / diffusers versions
  "base", "sample0", "add_noise_input": fixed tensors; the run starts from
      sample0 * init_noise_sigma
  "<case>.timesteps", "<case>.sigmas" (F64; sigmas only if the class has them)
  "<case>.scaled", "<case>.prev": [len(timesteps), numel] per-step outputs
  "<case>.noise": [n_noise, numel], every randn draw of a stochastic step
  "<case>.add_noise": [len(add_noise_timesteps), numel]

The "model" is a fixed function of the scaled sample and the timestep, written
the same way in tests/test_schedulers.c:
  out = x * (0.6 cos(pi/2 t/1000)) + base * (0.4 sin(pi/2 t/1000) + 0.1)
Stochastic steps get their noise from a patched randn_tensor whose draws are
recorded, so lorahost replays exactly the same noise.
"""
import argparse
import importlib.util
import json
import math
import os
import sys

import diffusers
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "fixtures", "schedulers")
CASE_DIR = os.path.join(HERE, "sched_cases")
STEPS = [1, 2, 10, 25, 50]
SHAPE = (1, 1, 4, 4)
NOISE_SEED = 1234


def model(x, t):
    tn = float(t) / 1000.0
    a = 0.6 * math.cos(math.pi / 2 * tn)
    b = 0.4 * math.sin(math.pi / 2 * tn) + 0.1
    return x * a + BASE * b


g = torch.Generator("cpu").manual_seed(0)
BASE = torch.randn(SHAPE, generator=g)
SAMPLE0 = torch.randn(SHAPE, generator=g)
ADD_NOISE = torch.randn(SHAPE, generator=g)


class NoiseRecorder:
    """Stands in for diffusers.utils.torch_utils.randn_tensor."""

    def __init__(self):
        self.gen = torch.Generator("cpu").manual_seed(NOISE_SEED)
        self.draws = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        n = torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32)
        self.draws.append(n.flatten().clone())
        return n.to(dtype=dtype or torch.float32)


def run_case(cls, module, config, step_kwargs, steps):
    sched = cls(**config)
    recorder = NoiseRecorder()
    saved = getattr(module, "randn_tensor", None)  # some modules never draw noise
    module.randn_tensor = recorder
    try:
        sched.set_timesteps(steps)
        timesteps = sched.timesteps.clone().double()
        sigmas = getattr(sched, "sigmas", None)
        sigmas = None if sigmas is None else torch.as_tensor(sigmas).clone().double()
        init_sigma = float(sched.init_noise_sigma)
        x = SAMPLE0.clone() * init_sigma
        scaled_rows, prev_rows = [], []
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            out = model(xin, t)
            x = sched.step(out, t, x, return_dict=False, **step_kwargs)[0]
            scaled_rows.append(xin.flatten().clone())
            prev_rows.append(x.flatten().clone())
    finally:
        if saved is None:
            del module.randn_tensor
        else:
            module.randn_tensor = saved
    # add_noise at a few training timesteps, on a fresh instance
    fresh = cls(**config)
    fresh.set_timesteps(steps)
    picks = sorted({0, len(fresh.timesteps) // 2, len(fresh.timesteps) - 1})
    add_ts = [fresh.timesteps[i] for i in picks]
    add_rows = []
    for t in add_ts:
        if hasattr(fresh, "_step_index"):
            fresh._step_index = None
        add_rows.append(fresh.add_noise(SAMPLE0.clone(), ADD_NOISE.clone(),
                                        torch.tensor([t])).flatten().clone())
    return {
        "timesteps": timesteps,
        "sigmas": sigmas,
        "init_noise_sigma": init_sigma,
        "scaled": torch.stack(scaled_rows),
        "prev": torch.stack(prev_rows),
        "noise": torch.stack(recorder.draws) if recorder.draws else None,
        "add_noise": torch.stack(add_rows),
        "add_noise_timesteps": [float(t) for t in add_ts],
    }


def load_cases(plugin_id):
    path = os.path.join(CASE_DIR, plugin_id + ".py")
    spec = importlib.util.spec_from_file_location("case_" + plugin_id, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record(plugin_id):
    cases = load_cases(plugin_id)
    cls = getattr(diffusers, cases.CLASS)
    module = sys.modules[cls.__module__]
    steps_list = getattr(cases, "STEPS", STEPS)
    tensors = {"base": BASE.flatten(), "sample0": SAMPLE0.flatten(), "add_noise_input": ADD_NOISE.flatten()}
    meta_cases = []
    for variant in cases.VARIANTS:
        name, config, step_kwargs = variant[:3]
        for steps in (variant[3] if len(variant) > 3 else steps_list):
            case = f"{name}_s{steps}"
            r = run_case(cls, module, config, step_kwargs, steps)
            tensors[case + ".timesteps"] = r["timesteps"]
            if r["sigmas"] is not None:
                tensors[case + ".sigmas"] = r["sigmas"]
            tensors[case + ".scaled"] = r["scaled"]
            tensors[case + ".prev"] = r["prev"]
            tensors[case + ".add_noise"] = r["add_noise"]
            n_noise = 0
            if r["noise"] is not None:
                tensors[case + ".noise"] = r["noise"]
                n_noise = r["noise"].shape[0]
            cfg = dict(config)
            cfg.update(step_kwargs)
            meta_cases.append({
                "name": case, "config": cfg, "steps": steps,
                "init_noise_sigma": r["init_noise_sigma"], "n_noise": n_noise,
                "add_noise_timesteps": r["add_noise_timesteps"],
            })
    meta = {
        "plugin": plugin_id,
        "class": cases.CLASS,
        "cases": json.dumps(meta_cases),
        "versions": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__}),
        "generator": "tests/golden/schedulers.py",
    }
    out = os.path.join(OUT_DIR, plugin_id + ".safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, out, metadata=meta)
    print(f"{plugin_id}: {len(meta_cases)} cases -> {os.path.relpath(out)}")


def main():
    global CASE_DIR, OUT_DIR
    ap = argparse.ArgumentParser(description="Record diffusers scheduler trajectories.")
    ap.add_argument("--cases", default=CASE_DIR, help="directory of <plugin_id>.py case files")
    ap.add_argument("--out", default=OUT_DIR, help="directory for <plugin_id>.safetensors")
    ap.add_argument("ids", nargs="*", help="plugin ids (default: every case file)")
    args = ap.parse_args()
    CASE_DIR, OUT_DIR = args.cases, args.out
    os.makedirs(OUT_DIR, exist_ok=True)
    ids = args.ids or sorted(f[:-3] for f in os.listdir(CASE_DIR) if f.endswith(".py"))
    for plugin_id in ids:
        record(plugin_id)


if __name__ == "__main__":
    main()
