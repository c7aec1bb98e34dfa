#!/usr/bin/env python3
"""Golden data for lorahost's VAE (diffusers AutoencoderKL as SD uses it).

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/models_vae.py

Writes
  tests/fixtures/models/sd1_tiny/vae/config.json
  tests/fixtures/models/sd1_tiny/vae/diffusion_pytorch_model.safetensors
      a tiny AutoencoderKL with SD's layout (4 DownEncoderBlock2D /
      UpDecoderBlock2D, so latents are 1/8 of the image like SD, mid-block
      attention, quant_conv / post_quant_conv) and random weights, saved with
      save_pretrained exactly as users have a diffusers vae/ directory.
  tests/fixtures/models/vae_reference.safetensors
      inputs and diffusers outputs (float32, CPU) read by tests/test_vae.c:
      encode_image [2, 3, 32, 48] in [-1, 1]
        -> encode_mean, encode_logvar [2, 4, 4, 6] (latent_dist.mean / .logvar,
           logvar clamped to [-30, 20]: quant_conv's logvar bias is pushed so
           that both clamps are hit)
      sample_noise [2, 4, 4, 6]
        -> sample_latents = scaling_factor * (mean + std * noise)
      decode_latents [2, 4, 4, 6] (diffusion space, i.e. already scaled)
        -> decode_image = vae.decode(decode_latents / scaling_factor)
      tiled_latents [1, 4, 6, 8]
        -> tiled_image [1, 3, 48, 64] = vae.tiled_decode(...) with the config's
           tiles (tile_sample_min_size 32, tile_latent_min_size 4, overlap 0.25:
           3 x 2 tiles, edge tiles smaller, in-place blending as diffusers does)
      noattn_image [2, 3, 32, 48]: decode_latents through the same weights with
        mid_block_add_attention=False (the attention tensors are ignored)
  Metadata "reference" (JSON) names the torch and diffusers versions.
"""
import json
import os

import diffusers
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "models")
VAE_DIR = os.path.join(FIX, "sd1_tiny", "vae")
REF = os.path.join(FIX, "vae_reference.safetensors")

CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=0.18215,
)


def build():
    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # Every parameter moves off its init (group norms off 1/0, biases
            # off 0) so every path is exercised.
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        lc = CONFIG["latent_channels"]
        # Push two logvar channels past the clamps of DiagonalGaussianDistribution.
        vae.quant_conv.bias[lc + 0] += 19.6
        vae.quant_conv.bias[lc + 1] -= 30.4
    return vae


def main():
    torch.set_grad_enabled(False)
    vae = build()
    os.makedirs(VAE_DIR, exist_ok=True)
    vae.save_pretrained(VAE_DIR, safe_serialization=True)
    # Reload from disk so the reference uses exactly the saved weights.
    vae = AutoencoderKL.from_pretrained(VAE_DIR).eval()
    sf = vae.config.scaling_factor

    g = torch.Generator().manual_seed(2)
    t = {}
    t["encode_image"] = torch.rand(2, 3, 32, 48, generator=g) * 2 - 1
    post = vae.encode(t["encode_image"]).latent_dist
    t["encode_mean"] = post.mean
    t["encode_logvar"] = post.logvar
    t["sample_noise"] = torch.randn(post.mean.shape, generator=g)
    t["sample_latents"] = (post.mean + post.std * t["sample_noise"]) * sf

    t["decode_latents"] = torch.randn(2, 4, 4, 6, generator=g)
    t["decode_image"] = vae.decode(t["decode_latents"] / sf).sample

    t["tiled_latents"] = torch.randn(1, 4, 6, 8, generator=g)
    vae.enable_tiling()
    assert vae.tile_sample_min_size == 32 and vae.tile_latent_min_size == 4
    t["tiled_image"] = vae.decode(t["tiled_latents"] / sf).sample
    vae.disable_tiling()
    untiled = vae.decode(t["tiled_latents"] / sf).sample
    assert (untiled - t["tiled_image"]).norm() > 1e-3 * untiled.norm(), "tiling made no difference"

    noattn = AutoencoderKL(**CONFIG, mid_block_add_attention=False).eval()
    missing, unexpected = noattn.load_state_dict(vae.state_dict(), strict=False)
    assert not missing and all(".attentions." in k for k in unexpected), (missing, unexpected)
    t["noattn_image"] = noattn.decode(t["decode_latents"] / sf).sample

    t = {k: v.contiguous().float() for k, v in t.items()}
    for k, v in t.items():
        assert torch.isfinite(v).all(), k
    # One metadata entry: safetensors writes several in hash order, which
    # would change the file's bytes from run to run.
    meta = {
        "reference": json.dumps(
            {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "generator": "tests/golden/models_vae.py",
                "model": "tests/fixtures/models/sd1_tiny/vae",
            },
            sort_keys=True,
        )
    }
    save_file(t, REF, metadata=meta)
    with open(os.path.join(VAE_DIR, "config.json")) as f:
        cfg = json.load(f)
    print(f"wrote {VAE_DIR} ({sum(p.numel() for p in vae.parameters())} parameters) and {REF}")
    print("config:", json.dumps(cfg))
    for k, v in t.items():
        print(f"  {k:16s} {list(v.shape)} rms {v.pow(2).mean().sqrt():.4f}")
    lv = t["encode_logvar"]
    print(f"  logvar at +20: {(lv == 20).sum().item()}, at -30: {(lv == -30).sum().item()}")


if __name__ == "__main__":
    main()
