#!/usr/bin/env python3
"""Golden gradients for lorahost's training backward (issue "Gradients"): torch
autograd on the tiny SD 1.x model with peft LoRA adapters (non-zero B), in
float64, for fixed inputs.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/gradients.py

Writes tests/fixtures/gradients/:
  sd1_lora.safetensors  the adapters, as StableDiffusionPipeline.save_lora_weights
      writes them (diffusers/PEFT keys unet.<module>.lora_A.weight, ...,
      text_encoder.text_model.<module>.lora_A.weight, alphas in
      lora_adapter_metadata):
        U-Net: to_q, to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj,
               ff.net.2, conv1, conv2 (LoCon), time_emb_proj; r=4, lora_alpha=8
        text encoder: q_proj, k_proj, v_proj, out_proj, fc1, fc2; r=4, lora_alpha=2
      every lora_A / lora_B = randn * 0.1 (seeded), so no gradient is trivially zero.
  sd1_grads.safetensors  inputs and torch autograd results (model and adapters
      in float64; tensors stored F32 except the losses, F64 [1]):
    U-Net, loss = mse_loss(unet(x, t, context).sample, target) (mean), adapters at scale 1:
      "unet.x" [2, 4, 8, 8], "unet.t" [2] (999, 321), "unet.context" [2, 77, 32],
      "unet.target" [2, 4, 8, 8], "unet.loss" F64 [1],
      "unet.grad.<PEFT key>"      d loss / d each U-Net adapter tensor
                                  (<PEFT key> as in sd1_lora.safetensors, e.g.
                                  unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight)
      "unet.grad_context"         d loss / d context
      "unet.full_grad.<name>"     full-parameter mode, no adapters: d loss / d every
                                  U-Net weight and bias (diffusers' state-dict names)
      "unet.full_loss" F64 [1]    that loss
    Text encoder, loss = sum(te(ids).last_hidden_state * te_dy), adapters at scale 1:
      "te.ids" I32 [2, 77], "te.dy" [2, 77, 32], "te.loss" F64 [1],
      "te.grad.<PEFT key>"        d loss / d each text-encoder adapter tensor
  Metadata "reference": library versions; "loss": how each loss is defined.
"""
import json
import os
import struct

import diffusers
import peft
import safetensors
import torch
import torch.nn.functional as F
import transformers
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.integrations import peft as hf_peft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "sd1_tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "gradients")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2", "conv1", "conv2", "time_emb_proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

# transformers 5.24 refuses peft < 0.22 (none is published); see tests/golden/adapters.py.
hf_peft.check_peft_version = lambda min_version: None


def canonicalize(path):
    """Rewrite a safetensors header with __metadata__ keys sorted (same bytes each run)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    new = {"__metadata__": {k: meta[k] for k in sorted(meta)}} if meta is not None else {}
    new.update(header)
    text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    assert len(text) == n
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])
    os.chmod(path, 0o644)


def fill(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.1)


def config_dict(model):
    cfg = model.peft_config["default"].to_dict()
    cfg["base_model_name_or_path"] = None
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}


def lora_params(model):
    """PEFT state-dict key (without the adapter name) -> parameter."""
    return {k.replace(".default", ""): p for k, p in model.named_parameters()
            if ".lora_A." in k or ".lora_B." in k}


def unet_case(out):
    g = torch.Generator().manual_seed(7)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet")).double()
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([999.0, 321.0], dtype=torch.float64)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    target = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    # full-parameter mode, no adapters
    unet.zero_grad()
    loss = F.mse_loss(unet(x, t, encoder_hidden_states=ctx).sample, target)
    loss.backward()
    for name, p in sorted(unet.named_parameters()):
        out["unet.full_grad." + name] = p.grad.float()
    out["unet.full_loss"] = loss.detach().reshape(1)
    # adapters: only their tensors train
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS))
    fill(unet, 11)
    ctx.requires_grad_(True)
    loss = F.mse_loss(unet(x, t, encoder_hidden_states=ctx).sample, target)
    loss.backward()
    for k, p in sorted(lora_params(unet).items()):
        out["unet.grad.unet." + k] = p.grad.float()
    out["unet.grad_context"] = ctx.grad.float()
    out.update({"unet.x": x.float(), "unet.t": t.float(), "unet.context": ctx.detach().float(),
                "unet.target": target.float(), "unet.loss": loss.detach().reshape(1)})
    return unet


def te_case(out):
    tok_dir = os.path.join(MODEL, "tokenizer")
    tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    ids = tok(["a photo of a cat", "a red house on the hill"], padding="max_length",
              max_length=77, return_tensors="pt").input_ids
    te = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder")).double()
    te.requires_grad_(False)
    te.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=TE_TARGETS))
    fill(te, 12)
    g = torch.Generator().manual_seed(8)
    dy = torch.randn(2, 77, te.config.hidden_size, generator=g, dtype=torch.float64)
    loss = (te(ids).last_hidden_state * dy).sum()
    loss.backward()
    prefix = "text_encoder." if any(k.startswith("text_model.") for k in lora_params(te)) \
        else "text_encoder.text_model."
    for k, p in sorted(lora_params(te).items()):
        out["te.grad." + prefix + k] = p.grad.float()
    out.update({"te.ids": ids.to(torch.int32), "te.dy": dy.float(),
                "te.loss": loss.detach().reshape(1)})
    return te, prefix


def save_adapters(unet, te, te_prefix):
    usd = {k: v.float() for k, v in get_peft_model_state_dict(unet).items()}
    tsd = {k: v.float() for k, v in get_peft_model_state_dict(te).items()}
    if te_prefix.endswith("text_model."):
        tsd = {"text_model." + k: v for k, v in tsd.items()}
    StableDiffusionPipeline.save_lora_weights(
        OUT, weight_name="sd1_lora.safetensors", unet_lora_layers=usd,
        unet_lora_adapter_metadata=config_dict(unet), text_encoder_lora_layers=tsd,
        text_encoder_lora_adapter_metadata=config_dict(te))
    canonicalize(os.path.join(OUT, "sd1_lora.safetensors"))


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    out = {}
    unet = unet_case(out)
    te, te_prefix = te_case(out)
    save_adapters(unet, te, te_prefix)
    with safetensors.safe_open(os.path.join(OUT, "sd1_lora.safetensors"), "pt") as f:
        keys = set(f.keys())
    grads = {k.split(".grad.", 1)[1] for k in out if ".grad." in k}
    assert grads == keys, sorted(grads ^ keys)[:5]
    meta = {"reference": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                                     "transformers": transformers.__version__,
                                     "peft": peft.__version__}),
            "loss": json.dumps({"unet": "mse_loss(unet(x, t, context).sample, target), mean",
                                "te": "sum(text_encoder(ids).last_hidden_state * dy)"})}
    path = os.path.join(OUT, "sd1_grads.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    canonicalize(path)
    print(f"wrote {path}: {len(out)} tensors, unet loss {out['unet.loss'].item():.6f}, "
          f"te loss {out['te.loss'].item():.6f}")


if __name__ == "__main__":
    main()
