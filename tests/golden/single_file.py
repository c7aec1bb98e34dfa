#!/usr/bin/env python3
"""Single-file (LDM / A1111) checkpoints made from the tiny diffusers fixtures,
for tests/test_ldm_keys.c.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/single_file.py

Writes
  tests/fixtures/models/sd1_tiny.safetensors
      sd1_tiny/{unet,vae,text_encoder} in the layout of an SD 1.x .ckpt saved
      as safetensors: model.diffusion_model.* (LDM UNetModel names),
      first_stage_model.* (LDM AutoencoderKL names, attention q/k/v/proj_out
      as 1x1 convolutions [c, c, 1, 1]), cond_stage_model.transformer.text_model.*
      (transformers CLIPTextModel names), plus what real files carry beside the
      weights: cond_stage_model.transformer.text_model.embeddings.position_ids
      (I64), betas / alphas_cumprod (F32) and model_ema.decay.
  tests/fixtures/models/sd2_tiny.safetensors
      sd2_tiny/{unet,text_encoder} and sd1_tiny/vae (SD 2.x uses SD 1.x's VAE
      layout; sd2_tiny has none of its own) as an SD 2.x file: the text
      encoder as OpenCLIP names under cond_stage_model.model. (token_embedding,
      positional_embedding, transformer.resblocks.N with fused
      attn.in_proj_weight [3d, d] / in_proj_bias [3d], ln_final,
      text_projection) with one more resblock than the diffusers text encoder
      has: SD 2.x checkpoints hold all 24 OpenCLIP-H layers and diffusers'
      converted encoder keeps 23 (the penultimate layer's output), so the
      extra last block here has random weights and must be ignored.

Tensors keep the fixtures' dtypes and values exactly (the C test compares
them bitwise). The diffusers -> LDM mapping below is written out here; it is
checked by running diffusers' own single-file converters
(convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
convert_ldm_clip_checkpoint, convert_open_clip_checkpoint) on the result and
requiring every tensor of the diffusers directories back, bitwise; and, where
it works offline, by UNet2DConditionModel / AutoencoderKL .from_single_file
(..., config=<tiny dir>) giving the same outputs as from_pretrained.
Metadata "reference" names the torch and diffusers versions.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers.loaders import single_file_utils as sfu

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models")


def load(variant, component, name):
    return load_file(os.path.join(ROOT, variant, component, name))


def config(variant, component):
    with open(os.path.join(ROOT, variant, component, "config.json")) as f:
        return json.load(f)


# ---- U-Net ----

UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(sd, cfg):
    lpb = cfg["layers_per_block"]
    n = len(cfg["block_out_channels"])
    up_cross = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out = {}

    def resnet(src, dst):
        for k, v in sd.items():
            if k.startswith(src + "."):
                leaf = k[len(src) + 1:]
                mod, rest = leaf.split(".", 1)
                out[dst + "." + UNET_RESNET[mod] + "." + rest] = v

    def same(src, dst):
        for k, v in sd.items():
            if k.startswith(src + "."):
                out[dst + k[len(src):]] = v

    for d, l in UNET_TOP.items():
        same(d, l)
    for i in range(n):
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            resnet(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0")
            same(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1")
        if i < n - 1:
            same(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op")
    resnet("mid_block.resnets.0", "middle_block.0")
    same("mid_block.attentions.0", "middle_block.1")
    resnet("mid_block.resnets.1", "middle_block.2")
    for i in range(n):
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            resnet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0")
            same(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1")
        if i < n - 1:
            last = i * (lpb + 1) + lpb
            same(f"up_blocks.{i}.upsamplers.0.conv",
                 f"output_blocks.{last}.{2 if up_cross[i] else 1}.conv")
    assert len(out) == len(sd), (len(out), len(sd))
    return {"model.diffusion_model." + k: v for k, v in out.items()}


# ---- VAE ----

VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd, cfg):
    n = len(cfg["block_out_channels"])
    out = {}

    def block(src, dst):
        for k, v in sd.items():
            if k.startswith(src + "."):
                out[dst + k[len(src):].replace("conv_shortcut", "nin_shortcut")] = v

    def attn(src, dst):
        for k, v in sd.items():
            if k.startswith(src + "."):
                leaf = k[len(src) + 1:]
                mod, param = leaf.rsplit(".", 1)
                if param == "weight" and mod != "group_norm":
                    v = v.reshape(*v.shape, 1, 1)  # Linear -> 1x1 Conv2d, as LDM stores it
                out[dst + "." + VAE_ATTN[mod] + "." + param] = v

    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            block(f"{side}.{name}", f"{side}.{name}")
        block(f"{side}.conv_norm_out", f"{side}.norm_out")
        block(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
        block(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
        attn(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1")
    for i in range(n):
        for j in range(cfg["layers_per_block"]):
            block(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        block(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        for j in range(cfg["layers_per_block"] + 1):
            block(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}")
        block(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    for name in ("quant_conv", "post_quant_conv"):
        block(name, name)
    assert len(out) == len(sd), (len(out), len(sd))
    return {"first_stage_model." + k: v for k, v in out.items()}


# ---- Text encoders ----


def strip_text_model(sd):
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}


def clip_to_ldm(sd):
    out = {"cond_stage_model.transformer.text_model." + k: v for k, v in strip_text_model(sd).items()}
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
        77, dtype=torch.int64).reshape(1, 77)
    return out


OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_ldm(sd, cfg, gen):
    sd = strip_text_model(sd)
    n, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    p = "cond_stage_model.model."
    out = {
        p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        p + "positional_embedding": sd["embeddings.position_embedding.weight"],
        p + "ln_final.weight": sd["final_layer_norm.weight"],
        p + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    dtype = sd["final_layer_norm.weight"].dtype
    out[p + "text_projection"] = torch.randn(h, h, generator=gen).to(dtype)
    for i in range(n):
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for d, l in OPENCLIP_LAYER.items():
            for param in ("weight", "bias"):
                out[dst + l + "." + param] = sd[src + d + "." + param]
        for param in ("weight", "bias"):
            out[dst + "attn.in_proj_" + param] = torch.cat(
                [sd[src + f"self_attn.{x}_proj.{param}"] for x in "qkv"], 0)
    # the last OpenCLIP block, which SD 2.x does not use
    last = f"{p}transformer.resblocks.{n}."
    for k in [k for k in out if k.startswith(f"{p}transformer.resblocks.0.")]:
        v = out[k]
        out[last + k[len(f"{p}transformer.resblocks.0."):]] = torch.randn(
            v.shape, generator=gen).to(v.dtype)
    return out


# ---- Checks against diffusers' converters ----


def same_tensors(got, want, what):
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:10])
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == w.dtype and g.shape == w.shape, (what, k, g.dtype, w.dtype, g.shape, w.shape)
        assert torch.equal(g.view(torch.uint8) if g.dtype == torch.bfloat16 else g,
                           w.view(torch.uint8) if w.dtype == torch.bfloat16 else w), (what, k)


def check_round_trip(ckpt, unet, unet_cfg, vae, vae_cfg, te, te_cfg, open_clip):
    same_tensors(sfu.convert_ldm_unet_checkpoint(ckpt, unet_cfg), unet, "unet")
    same_tensors(sfu.convert_ldm_vae_checkpoint(ckpt, vae_cfg), vae, "vae")
    want_te = strip_text_model(te)
    if open_clip:
        # diffusers drops resblocks.23 by name (the 24-layer model); drop ours
        n = te_cfg["num_hidden_layers"]
        sub = {k: v for k, v in ckpt.items()
               if not k.startswith(f"cond_stage_model.model.transformer.resblocks.{n}.")}

        class TM:  # convert_open_clip_checkpoint reads text_model.config only
            class config:
                hidden_size = te_cfg["hidden_size"]
        got = sfu.convert_open_clip_checkpoint(TM, sub)
        got = strip_text_model(got)
        got.pop("text_projection.weight", None)  # in SD_2_TEXT_ENCODER_KEYS_TO_IGNORE
    else:
        got = strip_text_model(sfu.convert_ldm_clip_checkpoint(ckpt))
        got.pop("embeddings.position_ids")
    same_tensors(got, want_te, "text encoder")


def check_from_single_file(path, variant, vae_variant):
    """diffusers' own loader on the file, configured by the tiny dirs."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    for cls, comp, var in ((diffusers.UNet2DConditionModel, "unet", variant),
                           (diffusers.AutoencoderKL, "vae", vae_variant)):
        d = os.path.join(ROOT, var, comp)
        try:
            a = cls.from_single_file(path, config=d, local_files_only=True).float().eval()
        except Exception as e:  # offline or an API change: the key check above stands
            print(f"  from_single_file {comp}: skipped ({type(e).__name__}: {str(e)[:120]})")
            continue
        b = cls.from_pretrained(d).float().eval()
        with torch.no_grad():
            if comp == "unet":
                ctx = torch.randn(1, 5, b.config.cross_attention_dim)
                ya, yb = a(x, 10, ctx).sample, b(x, 10, ctx).sample
            else:
                ya, yb = a.decode(x).sample, b.decode(x).sample
        assert torch.equal(ya, yb), (comp, (ya - yb).abs().max())
        print(f"  from_single_file {comp}: same outputs as from_pretrained")


def extras():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return {
        "betas": betas.float(),
        "alphas_cumprod": torch.cumprod(1 - betas, 0).float(),
        "model_ema.decay": torch.tensor(0.9999),
    }


def build(name, variant, vae_variant, open_clip, gen):
    unet, unet_cfg = load(variant, "unet", "diffusion_pytorch_model.safetensors"), config(variant, "unet")
    vae, vae_cfg = load(vae_variant, "vae", "diffusion_pytorch_model.safetensors"), config(vae_variant, "vae")
    te, te_cfg = load(variant, "text_encoder", "model.safetensors"), config(variant, "text_encoder")
    ckpt = {}
    ckpt.update(unet_to_ldm(unet, unet_cfg))
    ckpt.update(vae_to_ldm(vae, vae_cfg))
    ckpt.update(open_clip_to_ldm(te, te_cfg, gen) if open_clip else clip_to_ldm(te))
    ckpt.update(extras())
    check_round_trip(ckpt, unet, unet_cfg, vae, vae_cfg, te, te_cfg, open_clip)
    path = os.path.join(ROOT, name)
    meta = {"reference": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                                     "source": f"{variant} (+ {vae_variant}/vae)"})}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, path, metadata=meta)
    print(f"{path}: {len(ckpt)} tensors, {os.path.getsize(path)} bytes; diffusers converters give the "
          "directories back bitwise")
    check_from_single_file(path, variant, vae_variant)


def main():
    gen = torch.Generator().manual_seed(1234)
    build("sd1_tiny.safetensors", "sd1_tiny", "sd1_tiny", False, gen)
    build("sd2_tiny.safetensors", "sd2_tiny", "sd1_tiny", True, gen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
