#!/usr/bin/env python3
"""Golden fp16 loss-scale sequence (issue "Gradients"): torch's own GradScaler
update (torch._amp_update_scale_, what GradScaler.update() calls) with the
defaults init_scale 65536, growth_factor 2, backoff_factor 0.5,
growth_interval 2000, over a fixed pattern of overflowing steps.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/loss_scale.py

Writes tests/fixtures/loss_scale.json:
  {"reference": {...versions}, "init_scale", "growth_factor", "backoff_factor",
   "growth_interval", "steps": N, "overflow": [steps with Inf/NaN gradients],
   "scale": [[step, scale after that step's update], ...] (only where it changed)}
"""
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "loss_scale.json")


def main():
    steps = 9000
    overflow = [0, 1, 2, 3, 700, 2701, 2702, 4703, 8000]
    scale = torch.tensor([65536.0])
    tracker = torch.tensor([0], dtype=torch.int32)
    changes, prev = [], 65536.0
    for s in range(steps):
        found = torch.tensor([1.0 if s in overflow else 0.0])
        torch._amp_update_scale_(scale, tracker, found, 2.0, 0.5, 2000)
        if scale.item() != prev:
            changes.append([s, scale.item()])
            prev = scale.item()
    doc = {"reference": {"torch": torch.__version__}, "init_scale": 65536.0,
           "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
           "steps": steps, "overflow": overflow, "scale": changes}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(changes)} scale changes, final {prev}")


if __name__ == "__main__":
    main()
