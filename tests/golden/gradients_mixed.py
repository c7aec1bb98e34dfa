#!/usr/bin/env python3
"""Golden mixed-precision gradients for lorahost's training backward (issue
"Gradients"): the U-Net case of gradients.py (same tiny SD 1.x model, same
LoRA adapters and inputs), trained the way diffusers' LoRA scripts do with
--mixed_precision fp16 / bf16: the frozen U-Net cast to the half type
(unet.to(weight_dtype)), the LoRA parameters kept in float32
(cast_training_params), the forward under torch.autocast, the loss
F.mse_loss(pred.float(), target.float()), and for fp16 the loss multiplied by
65536 (GradScaler's initial scale) before backward and the gradients divided
by it after.

Run from the repository root with the reference venv (after gradients.py):
  ~/ref/bin/python tests/golden/gradients_mixed.py

Writes tests/fixtures/gradients/sd1_grads_mixed.safetensors, F32 tensors:
  "<p>.grad.<PEFT key>"  d loss / d each U-Net adapter tensor, p in {f16, bf16}
  "<p>.loss" [1]         the (unscaled) loss
  Metadata "reference": library versions; "recipe": the recipe above.
"""
import json
import os
import sys

import diffusers
import peft
import safetensors
import torch
import torch.nn.functional as F
import transformers
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gradients as G  # noqa: E402  (the fp64 case: model, targets, fill, inputs)

SCALE = 65536.0


def mixed_case(out, name, dtype, inputs):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(G.MODEL, "unet"))
    unet.requires_grad_(False)
    unet.to(dtype)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=G.UNET_TARGETS))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    G.fill(unet, 11)
    x, t, ctx, target = (inputs[k] for k in ("unet.x", "unet.t", "unet.context", "unet.target"))
    scale = SCALE if dtype == torch.float16 else 1.0
    with torch.autocast("cpu", dtype=dtype):
        pred = unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype)).sample
    loss = F.mse_loss(pred.float(), target.float())
    (loss * scale).backward()
    for k, p in sorted(G.lora_params(unet).items()):
        assert p.grad.dtype == torch.float32, (k, p.grad.dtype)
        out[f"{name}.grad.unet.{k}"] = p.grad / scale
    out[f"{name}.loss"] = loss.detach().float().reshape(1)


def main():
    torch.set_num_threads(1)
    G.hf_peft.check_peft_version = lambda min_version: None
    inputs = {}
    with safetensors.safe_open(os.path.join(G.OUT, "sd1_grads.safetensors"), "pt") as f:
        for k in ("unet.x", "unet.t", "unet.context", "unet.target"):
            inputs[k] = f.get_tensor(k)
        ref = {k: f.get_tensor(k) for k in f.keys() if k.startswith("unet.grad.")}
    out = {}
    mixed_case(out, "f16", torch.float16, inputs)
    mixed_case(out, "bf16", torch.bfloat16, inputs)
    for name in ("f16", "bf16"):
        num = den = 0.0
        for k, r in ref.items():
            d = out[name + k[4:]].double() - r.double()
            num += float((d * d).sum())
            den += float((r.double() ** 2).sum())
        print(f"{name}: all adapter grads, rel L2 against fp64 {(num / den) ** 0.5:.3e}")
    meta = {"reference": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                                     "transformers": transformers.__version__,
                                     "peft": peft.__version__}),
            "recipe": "unet.to(dtype); lora params float32; torch.autocast('cpu', dtype); "
                      "loss = mse_loss(pred.float(), target.float()); fp16: (loss * 65536)"
                      ".backward(), grads / 65536"}
    path = os.path.join(G.OUT, "sd1_grads_mixed.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    G.canonicalize(path)
    print(f"wrote {path}: {len(out)} tensors")


if __name__ == "__main__":
    main()
