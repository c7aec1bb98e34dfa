#!/usr/bin/env python3
"""Tiny CLIP text encoders (SD 1.x and SD 2.x flavours) and their reference
outputs for lorahost's CLIP suite (tests/test_clip.c).

Run: ~/ref/bin/python tests/golden/models_clip.py
Writes, for each variant, a diffusers text_encoder/ directory the way users
have one (config.json + model.safetensors):

  tests/fixtures/models/sd1_tiny/text_encoder/  quick_gelu, hidden 32, 3 layers,
      F16 weights keyed "text_model.*" (what transformers 4.x wrote: every SD
      checkpoint on the Hub has this layout)
  tests/fixtures/models/sd2_tiny/text_encoder/  gelu (as diffusers converts
      OpenCLIP-H), hidden 48, 3 layers, BF16 weights keyed without the prefix
      (what transformers 5.x save_pretrained writes)

and tests/fixtures/models/clip_reference.safetensors with, per variant V:
  "V.ids"          I32 [2, 77]  token ids: BOS, words, EOS, then padding
                                (SD 1.x pads with EOS, SD 2.x with id 0)
  "V.clip_skip<k>" F32 [2, 77, hidden] for k = 0..num_hidden_layers: the
                   prompt embeddings diffusers' StableDiffusionPipeline.encode_prompt
                   returns for clip_skip=k (k=0 equals last_hidden_state)
Metadata: torch / transformers / diffusers versions.

The reference model is reloaded from the saved directory with
CLIPTextModel.from_pretrained (so it sees exactly the rounded F16/BF16
weights) and evaluated in float64; the float32 evaluation is checked
against it here as a sanity bound. clip_skip goes through diffusers' own
encode_prompt with a stand-in tokenizer that returns the fixed ids.
Note: diffusers 0.42.1's clip_skip path reads text_encoder.text_model.final_layer_norm,
which transformers 5 no longer has (CLIPTextModel lost its `text_model`
wrapper); the script supplies that alias so the pipeline code runs unchanged.
"""
import json
import os
import types

import diffusers
import torch
import transformers
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "models")
SEQ = 77
VOCAB = 1000
BOS, EOS = 998, 999

VARIANTS = [
    # name, config, dtype, key prefix in the file, pad id
    ("sd1_tiny",
     dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=128, num_hidden_layers=3,
          num_attention_heads=4, max_position_embeddings=SEQ, hidden_act="quick_gelu",
          layer_norm_eps=1e-5, projection_dim=32, bos_token_id=0, eos_token_id=2,
          pad_token_id=1),  # SD 1.5's legacy token ids in config.json
     torch.float16, "text_model.", EOS),
    ("sd2_tiny",
     dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=192, num_hidden_layers=3,
          num_attention_heads=4, max_position_embeddings=SEQ, hidden_act="gelu",
          layer_norm_eps=1e-5, projection_dim=48, bos_token_id=BOS, eos_token_id=EOS,
          pad_token_id=1),
     torch.bfloat16, "", 0),
]


def perturb(model, gen):
    """Random non-trivial values everywhere (layer norms and biases included)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "layer_norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * r
            elif name.endswith("bias"):
                v = 0.1 * r
            elif "embedding" in name:
                v = r
            else:  # Linear [out, in]
                v = r / (p.shape[1] ** 0.5)
            if "q_proj.weight" in name or "k_proj.weight" in name:
                v = v * 2.0  # peaked softmax: make causality visible
            p.copy_(v)


def make_ids(gen, pad):
    ids = torch.full((2, SEQ), pad, dtype=torch.int64)
    for row, n_words in enumerate((17, 60)):
        ids[row, 0] = BOS
        ids[row, 1:1 + n_words] = torch.randint(1, BOS, (n_words,), generator=gen)
        ids[row, 1 + n_words] = EOS
    return ids


class FixedTokenizer:
    """Stands in for CLIPTokenizer in encode_prompt: returns fixed ids."""
    model_max_length = SEQ

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, prompt, **kw):
        return types.SimpleNamespace(input_ids=self.ids.clone(),
                                     attention_mask=torch.ones_like(self.ids))

    def batch_decode(self, x):
        return [""] * len(x)


def encode(te, ids, clip_skip):
    """diffusers StableDiffusionPipeline.encode_prompt on our ids."""
    if not hasattr(te, "text_model"):  # transformers 5: see the module docstring
        object.__setattr__(te, "text_model",
                           types.SimpleNamespace(final_layer_norm=te.final_layer_norm))
    pipe = types.SimpleNamespace(text_encoder=te, tokenizer=FixedTokenizer(ids), unet=None)
    with torch.no_grad():
        emb, _ = StableDiffusionPipeline.encode_prompt(
            pipe, ["p"] * ids.shape[0], "cpu", 1, False, clip_skip=clip_skip)
    return emb


def build(name, cfg, dtype, prefix, pad, gen, out):
    d = os.path.join(FIX, name, "text_encoder")
    os.makedirs(d, exist_ok=True)
    model = CLIPTextModel(CLIPTextConfig(**cfg)).eval()
    perturb(model, gen)
    model = model.to(dtype)
    model.save_pretrained(d)  # config.json (+ weights, replaced below)
    weights = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, f))
        else:
            os.chmod(os.path.join(d, f), 0o644)

    te64 = CLIPTextModel.from_pretrained(d, dtype=torch.float64).eval()
    te32 = CLIPTextModel.from_pretrained(d, dtype=torch.float32).eval()
    w = te64.state_dict()
    for k, v in model.state_dict().items():  # reload saw the rounded weights
        assert torch.equal(w[k], v.to(torch.float64)), k
    ids = make_ids(gen, pad)
    out[f"{name}.ids"] = ids.to(torch.int32)
    with torch.no_grad():
        last = te64(ids).last_hidden_state
    for k in range(cfg["num_hidden_layers"] + 1):
        ref = encode(te64, ids, k)
        if k == 0:
            assert torch.equal(ref, last)
            assert torch.equal(ref, encode(te64, ids, None))
        got32 = encode(te32, ids, k).to(torch.float64)
        rel = ((got32 - ref).norm() / ref.norm()).item()
        print(f"{name} clip_skip={k}: |ref| {ref.norm():.3f}, float32 torch rel L2 {rel:.2e}")
        assert rel < 1e-5
        out[f"{name}.clip_skip{k}"] = ref.to(torch.float32).contiguous()
    # causality: the rows before the padding do not depend on it
    ids2 = ids.clone()
    ids2[:, -5:] = 7
    with torch.no_grad():
        assert torch.equal(te64(ids2).last_hidden_state[:, :-5], last[:, :-5])


def main():
    gen = torch.Generator("cpu").manual_seed(20240611)
    out = {}
    for name, cfg, dtype, prefix, pad in VARIANTS:
        build(name, cfg, dtype, prefix, pad, gen, out)
    meta = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "generator": "tests/golden/models_clip.py",
        "variants": json.dumps({n: {"dtype": str(dt), "prefix": p, "pad": pad}
                                for n, _, dt, p, pad in VARIANTS}),
    }
    path = os.path.join(FIX, "clip_reference.safetensors")
    save_file(out, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {len(out)} tensors")


if __name__ == "__main__":
    main()
