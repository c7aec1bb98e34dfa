#!/usr/bin/env python3
"""A tiny diffusers StableDiffusionSafetyChecker and its reference verdicts for
lorahost's CLIP safety-checker suite (tests/test_safety_clip.c).

Run: ~/ref/bin/python tests/golden/safety_clip.py
Writes:
  tests/fixtures/models/safety_tiny/  the checker as diffusers saves it
      (save_pretrained: config.json + model.safetensors, F32, keys
      "vision_model.*" as transformers 5 writes them): CLIP vision tower
      hidden 32, 2 layers, 4 heads, MLP 64, image 32, patch 8, quick_gelu,
      projection 16; random weights at a scale that keeps activations O(1).
  tests/fixtures/models/safety_tiny_reference.safetensors with
      "image.<i>"   U8  [H, W, 3]  the test images (sizes that exercise
                                   shortest-edge resize up and down, the
                                   centre crop and the no-resize case)
      "pixels.<i>"  F32 [3, 32, 32] CLIPImageProcessorPil's pixel_values
      "scores"      F32 [N, 20]   per image: cos_dist - threshold for the 17
                                  concepts, then the 3 special-care ones, plus
                                  diffusers' special-care adjustment (0.01 once
                                  an earlier special-care concept fired) exactly
                                  as StableDiffusionSafetyChecker.forward forms
                                  them before its round(x, 3); float64
      "flagged"     I32 [N]       has_nsfw_concepts from diffusers' forward
                                  (float32 model, as users run it)
  Metadata: library versions, and how far transformers 5's default
  (torchvision-backend) CLIPImageProcessor moves the scores.

Thresholds are set so the flags test is sharp: one image sits 0.0007 past a
concept threshold (flagged: rounds to 0.001), one 0.0007 under it, one 0.0003
past it (NOT flagged: diffusers rounds the score to 3 decimals before `> 0`),
and one fires a special-care concept, which lifts a concept 0.009 under its
threshold past it (the 0.01 adjustment). The script asserts the margins.

Preprocessing reference: CLIPImageProcessorPil (PIL bicubic with its
antialiasing filter support, 8-bit fixed point, as transformers 4.x's
CLIPImageProcessor did). transformers 5 maps the name CLIPImageProcessor to a
torchvision backend whose uint8 resize differs from PIL by up to a few levels;
the shift that causes in the scores is recorded in the metadata.
"""
import json
import os

import diffusers
import numpy as np
import PIL
import PIL.Image
import safetensors
import torch
import torchvision
import transformers
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "models")
OUT_DIR = os.path.join(FIX, "safety_tiny")
REF = os.path.join(FIX, "safety_tiny_reference.safetensors")
S = 32  # image_size
# (width, height): resize down, up, square, none, a long strip (antialias)
SIZES = [(48, 40), (40, 48), (64, 64), (32, 32), (24, 20), (37, 100), (90, 33)]


def make_images(rng):
    imgs = []
    for k, (w, h) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([
            128 + 120 * np.sin(x / (3 + k) + k),
            128 + 120 * np.cos(y / (4 + k) - k),
            128 + 100 * np.sin((x + y) / (5 + 2 * k)),
        ], -1)
        if k % 2:
            base[(x // (4 + k) + y // (4 + k)) % 2 == 0] *= 0.4
        base += rng.normal(0, 25 + 5 * k, base.shape)
        imgs.append(np.clip(np.round(base), 0, 255).astype(np.uint8))
    return imgs


def randomise(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("class_embedding") or "position_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def cos64(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def scores_of(img_emb, model):
    """diffusers' forward, unrounded, float64: [N, 17 + 3]."""
    ce = model.concept_embeds.detach().double().numpy()
    se = model.special_care_embeds.detach().double().numpy()
    cw = model.concept_embeds_weights.detach().double().numpy()
    sw = model.special_care_embeds_weights.detach().double().numpy()
    cd, sd = cos64(img_emb, ce), cos64(img_emb, se)
    out = np.zeros((img_emb.shape[0], 20))
    flags = []
    for i in range(img_emb.shape[0]):
        adj = 0.0
        for j in range(3):
            out[i, 17 + j] = sd[i, j] - sw[j] + adj
            if round(out[i, 17 + j], 3) > 0:
                adj = 0.01
        for j in range(17):
            out[i, j] = cd[i, j] - cw[j] + adj
        flags.append(any(round(v, 3) > 0 for v in out[i, :17]))
    return out, flags


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    rng = np.random.default_rng(7)
    cfg = CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=S, patch_size=8,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=16)
    model = StableDiffusionSafetyChecker(cfg).eval()
    randomise(model, g)

    images = make_images(rng)
    proc = CLIPImageProcessorPil(size={"shortest_edge": S}, crop_size={"height": S, "width": S})
    pixels = torch.cat([proc(PIL.Image.fromarray(a), return_tensors="pt").pixel_values
                        for a in images])
    n = len(images)

    m64 = StableDiffusionSafetyChecker(cfg).eval()
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    with torch.no_grad():
        emb = m64.visual_projection(m64.vision_model(pixels.double())[1]).numpy()

    # Concept directions: a few pulled towards one image each so that image
    # is the clear maximum on it; the rest random.
    ce = torch.randn(17, 16, generator=g)
    se = torch.randn(3, 16, generator=g)
    plan = {3: 0, 7: 1, 11: 2, 5: 4}  # concept -> image
    for c, i in plan.items():
        ce[c] = torch.from_numpy(emb[i] - 0.8 * emb[[k for k in range(n) if k != i]].mean(0))
    se[1] = torch.from_numpy(emb[4] - 0.8 * emb[[k for k in range(n) if k != 4]].mean(0))
    cd, sd = cos64(emb, ce.double().numpy()), cos64(emb, se.double().numpy())
    cw = cd.max(0) + 0.05
    sw = sd.max(0) + 0.05
    cw[3] = cd[0, 3] - 0.0007   # image 0: just past, flagged
    cw[7] = cd[1, 7] + 0.0007   # image 1: just under
    cw[11] = cd[2, 11] - 0.0003  # image 2: past, but rounds to 0.000: not flagged
    sw[1] = sd[4, 1] - 0.002    # image 4: special care fires ...
    cw[5] = cd[4, 5] + 0.009    # ... and lifts concept 5 from -0.009 to +0.001
    for c, i in plan.items():
        others = np.delete(cd[:, c], i)
        assert cw[c] - others.max() > 0.02, (c, cw[c], others.max())
    assert sw[1] - np.delete(sd[:, 1], 4).max() > 0.02
    with torch.no_grad():
        model.concept_embeds.copy_(ce)
        model.special_care_embeds.copy_(se)
        model.concept_embeds_weights.copy_(torch.from_numpy(cw))
        model.special_care_embeds_weights.copy_(torch.from_numpy(sw))
    # the thresholds as stored (float32) are what the C side reads
    m64.load_state_dict(model.state_dict())

    scores, flags64 = scores_of(emb, m64)
    with torch.no_grad():
        _, has_nsfw = model(pixels, [np.zeros((1,))] * n)
    has_nsfw = [bool(x) for x in has_nsfw]
    assert has_nsfw == flags64, (has_nsfw, flags64)
    assert has_nsfw == [True, False, False, False, True, False, False], has_nsfw
    for i, c, want in [(0, 3, 0.0007), (1, 7, -0.0007), (2, 11, 0.0003), (4, 5, 0.001)]:
        assert abs(scores[i, c] - want) < 2e-5, (i, c, scores[i, c], want)

    # transformers 5's default CLIPImageProcessor (torchvision backend)
    fast = CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S})
    fpix = torch.cat([fast(PIL.Image.fromarray(a), return_tensors="pt").pixel_values
                      for a in images])
    with torch.no_grad():
        femb = m64.visual_projection(m64.vision_model(fpix.double())[1]).numpy()
    fscores, fflags = scores_of(femb, m64)
    fast_shift = float(np.abs(fscores - scores).max())

    os.makedirs(OUT_DIR, exist_ok=True)
    model.save_pretrained(OUT_DIR)
    tensors = {"scores": torch.from_numpy(scores).float(),
               "flagged": torch.tensor([int(f) for f in has_nsfw], dtype=torch.int32)}
    for i, a in enumerate(images):
        tensors[f"image.{i}"] = torch.from_numpy(a.copy())
        tensors[f"pixels.{i}"] = pixels[i].contiguous()
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "diffusers": diffusers.__version__, "pillow": PIL.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "torchvision_processor_max_score_shift": f"{fast_shift:.3g}",
        "torchvision_processor_flags": json.dumps([bool(f) for f in fflags]),
    }
    save_file(tensors, REF, metadata=meta)
    print("flags", has_nsfw, "torchvision-processor score shift", fast_shift)
    print(np.array2string(scores, precision=4, max_line_width=200))


if __name__ == "__main__":
    main()
