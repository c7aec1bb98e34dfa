#!/usr/bin/env python3
"""Build tiny SD 1.x / 2.x U-Nets with diffusers and record their outputs.

Run: ~/ref/bin/python tests/golden/models_unet.py
Writes, with random weights from fixed seeds:
  tests/fixtures/models/sd1_tiny/unet/{config.json,diffusion_pytorch_model.safetensors}
      SD 1.x layout: conv proj_in/proj_out, one int attention_head_dim (heads),
      block_out_channels (8, 16), layers_per_block 2, norm_num_groups 8
      (1 and 2 channels a group), cross_attention_dim 32, F32 weights.
  tests/fixtures/models/sd2_tiny/unet/...
      SD 2.x layout: use_linear_projection, attention_head_dim per block,
      upcast_attention, block_out_channels (16, 32), layers_per_block 1,
      norm_num_groups 8, cross_attention_dim 48, F16 weights (the reference runs on the rounded
      weights in float32).
  tests/fixtures/models/unet_reference.safetensors
      for each case "<case>.x" [b, 4, h, w], "<case>.t" [b], "<case>.ctx"
      [b, n_ctx, cross_dim] and "<case>.out" [b, 4, h, w]; metadata "cases"
      (JSON: name -> {model, config overrides}) and the library versions.
      Case "sd1_flip" reruns sd1's inputs with flip_sin_to_cos false and
      freq_shift 1 (the C test patches config.json the same way).
Every norm's weight is 1 + 0.1 randn and its bias 0.1 randn, so no path is
trivial; convolutions and linears keep diffusers' random init.
"""
import json
import os

import diffusers
import safetensors
import torch
import transformers
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "models")

COMMON = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    flip_sin_to_cos=True,
    freq_shift=0,
)

MODELS = {
    "sd1_tiny": dict(
        COMMON,
        block_out_channels=(8, 16),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=2,
    ),
    "sd2_tiny": dict(
        COMMON,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=48,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        upcast_attention=True,
    ),
}
HALF = {"sd2_tiny"}  # stored as F16

# (name, model, config overrides, b, h, w, n_ctx, timesteps); timesteps None
# reuses the previous case's inputs
CASES = [
    ("sd1", "sd1_tiny", {}, 2, 16, 16, 77, [999.0, 17.5]),
    ("sd1_flip", "sd1_tiny", {"flip_sin_to_cos": False, "freq_shift": 1}, 2, 16, 16, 77, None),
    ("sd1_odd", "sd1_tiny", {}, 1, 8, 24, 7, [250.25]),
    ("sd2", "sd2_tiny", {}, 2, 16, 16, 77, [999.0, 17.5]),
    ("sd2_odd", "sd2_tiny", {}, 2, 24, 8, 77, [1.0, 500.0]),
]


def build(name, seed):
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**MODELS[name]).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        if name in HALF:
            for p in m.parameters():
                p.copy_(p.half().float())
    return m


def save_model(name, m):
    out = os.path.join(FIX, name, "unet")
    os.makedirs(out, exist_ok=True)
    if name in HALF:
        m.half().save_pretrained(out, safe_serialization=True)
        m.float()
    else:
        m.save_pretrained(out, safe_serialization=True)
    weights = os.path.join(out, "diffusion_pytorch_model.safetensors")
    os.chmod(weights, 0o644)
    size = os.path.getsize(weights)
    print(f"wrote {out}: {sum(p.numel() for p in m.parameters())} params, {size} bytes")


def main():
    torch.set_num_threads(1)  # the same bytes on every run
    torch.use_deterministic_algorithms(True)
    models = {}
    for i, name in enumerate(MODELS):
        models[name] = build(name, 1000 + i)
        save_model(name, models[name])

    g = torch.Generator().manual_seed(7)
    tensors, meta_cases, last_inputs = {}, {}, {}
    for case, model_name, over, b, h, w, n_ctx, ts in CASES:
        cfg = dict(models[model_name].config)
        cross = cfg["cross_attention_dim"]
        if ts is None:
            x, t, ctx = last_inputs[model_name]
        else:
            x = torch.randn(b, 4, h, w, generator=g)
            t = torch.tensor(ts, dtype=torch.float32)
            ctx = torch.randn(b, n_ctx, cross, generator=g)
            last_inputs[model_name] = (x, t, ctx)
        m = models[model_name]
        if over:
            cfg.update(over)
            m = UNet2DConditionModel.from_config(cfg).eval()
            m.load_state_dict(models[model_name].state_dict())
        with torch.no_grad():
            out = m(x, t, encoder_hidden_states=ctx).sample
        tensors[f"{case}.x"] = x.clone()
        tensors[f"{case}.t"] = t.clone()
        tensors[f"{case}.ctx"] = ctx.clone()
        tensors[f"{case}.out"] = out.contiguous()
        meta_cases[case] = {"model": model_name, "config": over}
        print(f"{case}: x {list(x.shape)} t {t.tolist()} ctx {list(ctx.shape)} "
              f"|out| {out.norm():.4f}")

    meta = {
        "cases": json.dumps(meta_cases, sort_keys=True),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "generator": "tests/golden/models_unet.py",
    }
    path = os.path.join(FIX, "unet_reference.safetensors")
    save_file(tensors, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
