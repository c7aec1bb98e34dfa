#!/usr/bin/env python3
"""Golden data for lorahost's LoRA / LyCORIS adapter support (adapters/, tests/test_adapters*.c):
adapter files in the formats users have, made with peft and diffusers on the tiny
SD 1.x / SD 2.x models, and what diffusers (or float64 formulas) make of them.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/adapters.py

Everything is seeded (torch.Generator per tensor family, torch.set_num_threads(1)),
and every file's safetensors metadata is rewritten with sorted keys (the safetensors
writer orders __metadata__ by a randomly seeded hash map), so two runs write the same
bytes. Writes tests/fixtures/adapters/:

SD 1.x LoRAs (tests/fixtures/models/sd1_tiny), made with peft LoraConfig, every
lora_A / lora_B filled with randn * 0.1 (B is not zero):
  A: U-Net to_q, to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2,
     conv1, conv2, time_emb_proj, r=4, lora_alpha=8 (scale 2). conv1/conv2 are PEFT
     conv LoRA (LoCon): lora_A a Conv2d with the base kernel [4, in, 3, 3], lora_B
     1x1 [out, 4, 1, 1]; proj_in/proj_out are 1x1 convs in SD 1.x ([4, in, 1, 1]).
     Text encoder q_proj, k_proj, v_proj, out_proj, fc1, fc2, r=4, lora_alpha=2
     (scale 0.5).
  B: U-Net to_q, to_k, to_v, to_out.0 and text encoder q_proj, k_proj, v_proj,
     out_proj, r=2, lora_alpha=2 (scale 1: formats without alpha are exact).
  D: U-Net to_q, to_v, r=4, lora_alpha=4, use_dora=True: PEFT DoRA, random
     lora_A/B and random magnitudes (row norm of W times 1 + 0.2 randn).

  sd1_A_peft.safetensors  diffusers' own format, StableDiffusionPipeline.save_lora_weights
      with unet_/text_encoder_lora_adapter_metadata = peft_config.to_dict() (as
      diffusers' training scripts pass it). Keys
        unet.<module>.lora_A.weight / .lora_B.weight           (F32)
        text_encoder.text_model.<module>.lora_A.weight / ...   (F32)
      The text-encoder keys carry "text_model." as every file written with
      transformers 4.x does (diffusers strips it when the CLIPTextModel has no
      text_model attribute, as in transformers 5).
      Metadata "format" = "pt", "lora_adapter_metadata" = JSON of the LoraConfig
      fields prefixed "unet." / "text_encoder." (r, lora_alpha, target_modules,
      rank_pattern, alpha_pattern, use_dora, ...). The scale is lora_alpha / r;
      diffusers 0.42 takes alpha only from there (a file without this metadata
      loads with lora_alpha = r).
  sd1_B_peft.safetensors  same format, text-encoder keys WITHOUT "text_model."
      (text_encoder.encoder.layers.N...), which is what transformers 5's
      get_peft_model_state_dict gives: both spellings occur in the wild.
  sd1_A_kohya.safetensors kohya-ss / AUTOMATIC1111 format:
        lora_unet_<module, dots -> underscores>.lora_down.weight  [r, in] / [r, in, kh, kw]
        lora_unet_<...>.lora_up.weight                            [out, r] / [out, r, 1, 1]
        lora_unet_<...>.alpha                                     F32 scalar (shape [])
        lora_te_text_model_encoder_layers_N_<self_attn_q_proj | mlp_fc1 ...>.lora_down.weight ...
      Metadata ss_network_module "networks.lora", ss_network_dim "4",
      ss_base_model_version "sd_v1" (no ss_network_alpha: alphas differ per component,
      the .alpha tensors carry them). The script asserts diffusers' load_lora_weights
      of this file gives the same outputs as sd1_A_peft.
  sd1_B_kohya_meta.safetensors  B in kohya format WITHOUT .alpha tensors; metadata
      ss_network_module "networks.lora", ss_network_dim "2", ss_network_alpha "2.0",
      ss_base_model_version "sd_v1".
  sd1_B_olddiff.safetensors  B in the old diffusers format that
      LoraLoaderMixin.save_lora_weights wrote in diffusers 0.15-0.18 (LoRAAttnProcessor
      for the U-Net, monkey-patched text encoder):
        unet.<block>.transformer_blocks.0.attn1.processor.to_q_lora.down.weight / .up.weight
            (to_k_lora, to_v_lora, to_out_lora; attn2 likewise)
        text_encoder.text_model.encoder.layers.N.self_attn.to_q_lora.down.weight / .up.weight
            (to_k_lora, to_v_lora, to_out_lora)
      No alphas (those versions had none: scale 1). This text-encoder form is the one
      diffusers 0.42 still converts (utils/state_dict_utils.py DIFFUSERS_OLD_TO_DIFFUSERS:
      ".to_q_lora.down" -> ".q_proj.lora_linear_layer.down" -> PEFT ".q_proj.lora_A",
      detected by any key containing "to_out_lora"); the later 0.19-0.20 form
      "...self_attn.q_proj.lora_linear_layer.down.weight" also still loads (checked by
      hand: same outputs as B), but is the "new diffusers" format, not the old one.
      The U-Net keys need the "unet." prefix: 0.42's load_lora_weights drops
      unprefixed keys with a warning.
  sd1_B_attnprocs.safetensors  the U-Net half of B as unet.save_attn_procs wrote it
      (diffusers <= 0.14, pytorch_lora_weights): the same keys without "unet.":
        down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight
      diffusers 0.42 loads it only through unet.load_lora_adapter(sd, prefix=None)
      (pipe.load_lora_weights ignores it); its U-Net output is "B.unet".
  sd1_D_peft_dora.safetensors  D, diffusers format: unet.<module>.lora_A.weight,
      .lora_B.weight and unet.<module>.lora_magnitude_vector [out] (F32), metadata
      "lora_adapter_metadata" with "unet.use_dora": true. PEFT DoRA, per output row:
        W' = m / ||W + s B A||_row * (W + s B A),  s = weight * lora_alpha / r,
      ||.||_row over the input axis; bias unchanged. diffusers 0.42 loads it.
  sd1_expected.safetensors  inputs and diffusers' outputs:
        "ids"      I32 [2, 77]  PROMPTS through sd1_tiny/tokenizer, padded to 77 with
                                the pad token as the pipeline pads (max_length, truncation)
        "x"        F32 [2, 4, 8, 8]   U-Net input latents (randn)
        "t"        F32 [2]            timesteps 999, 500
        "context"  F32 [2, 77, 32]    random text embeddings (U-Net outputs do not depend
                                      on the text encoder)
        "S.te"     F32 [2, 77, 32]    text encoder last_hidden_state for ids
        "S.unet"   F32 [2, 4, 8, 8]   U-Net output (x, t, context)
        "noise"    F32 [1, 4, 16, 16] init noise for the pipeline runs (latents=)
        "S.latents" F32 [1, 4, 16, 16] StableDiffusionPipeline final latents
                   (output_type="latent") for S in base, A, AB: metadata "pipeline".
      Scenarios S (metadata "scenarios", a JSON object S -> description):
        base     no LoRA
        A        load_lora_weights(sd1_A_peft, adapter_name="A"), weight 1
        B        load_lora_weights(sd1_B_peft, adapter_name="B"), weight 1 (the
                 reference for sd1_B_kohya_meta / _olddiff / _attnprocs)
        AB       A and B, set_adapters(["A", "B"], [0.7, 0.4])
        fusedAB  as AB, then fuse_lora(components=["unet", "text_encoder"],
                 adapter_names=["A", "B"]) and unload_lora_weights(): only the fused
                 weights act
        unfused  as AB, fuse_lora, unfuse_lora, unload_lora_weights: base weights
                 after a fuse/unfuse round trip (equal base up to float rounding).
                 (After unfuse_lora alone the adapters are still active: outputs = AB.)
        split    A with set_adapters("A", {"unet": 0.5, "text_encoder": 1.3})
        blocks   A with set_adapters("A", {"unet": {"down": 0.3, "mid": 0.8, "up": 0.6},
                 "text_encoder": 1.0}); metadata "blocks_module_weights" has the weight
                 diffusers gave each LoRA module (see BLOCK WEIGHTS below)
        D        load_lora_weights(sd1_D_peft_dora), weight 1: "D.unet" only
      Metadata "reference" (torch, diffusers, transformers, peft versions), "scenarios",
      "pipeline", "prompts", "blocks_module_weights".
      The script asserts A, B, AB, split, blocks (and C, D) against an independent
      float64 weight merge (check_against_merge, check_dora), fusedAB against AB, and
      unfused against base.

SD 2.x (tests/fixtures/models/sd2_tiny: linear proj_in/proj_out, OpenCLIP-style text
encoder as converted):
  C: U-Net targets as A (proj_in/proj_out now Linear), r=4, lora_alpha=8; text encoder
     as A, r=4, lora_alpha=4.
  sd2_C_peft.safetensors   as sd1_A_peft (text-encoder keys with "text_model.").
  sd2_C_kohya.safetensors  as sd1_A_kohya, ss_base_model_version "sd_v2" (asserted equal
      to sd2_C_peft in diffusers).
  sd2_expected.safetensors "ids" (sd2 tokenizer, pad "!"), "x" [2, 4, 8, 8], "t",
      "context" [2, 77, 48], "base.te", "base.unet", "C.te", "C.unet"; metadata
      "reference", "scenarios", "prompts".

LyCORIS kinds, float64 formulas (no diffusers involved):
  sd1_lycoris.safetensors  kohya naming (lora_unet_..., lora_te_...) on sd1_tiny's real
      modules, one kind per module (LYCORIS below), F32 tensors except the F16 ones
      marked there; per-module ".alpha" scalars in the module's dtype (the proj_in
      LoRA has none: alpha = rank; nor has the full module: alpha unused). Metadata
      ss_network_module "lycoris.kohya", ss_base_model_version "sd_v1".
  sd1_lycoris_expected.safetensors  at multiplier MULT = 0.8:
        "<diffusers module>.delta"       F64, the base weight's shape: W' - W
        "<diffusers module>.bias_delta"  F64 [out] (full / diff_b only)
      Module names as in the model files: "down_blocks.0.resnets.0.conv1",
      "text_model.encoder.layers.0.self_attn.q_proj". Metadata "layers" (JSON: module
      -> kohya name, kind, form, rank, alpha, dtype), "multiplier", "formulas".
  Formulas (mult = multiplier, alpha missing -> alpha = rank, i.e. scale 1):
    LoRA   dW = mult * alpha/r * up @ down, r = down.shape[0]; conv: up[o,p] down[p,...]
           reshaped to W; tucker: sum_pq up[o,p] mid[p,q,kh,kw] down[q,i]
    LoHa   dW = mult * alpha/r * (w1a @ w1b) * (w2a @ w2b), r = w1_b.shape[0];
           conv without tucker: w1_b [r, in*kh*kw], product reshaped to W;
           tucker: w = einsum('i j k l, j r, i p -> p r k l', t, wb, wa), wa [r, out], wb [r, in]
    LoKr   dW = mult * s * kron(w1, w2) reshaped to W (conv: w1 [a, c] -> [a, c, 1, 1]);
           w1 = w1_a @ w1_b if factorised, w2 = w2_a @ w2_b, or tucker
           einsum('i j k l, j r, i p -> p r k l', t2, w2_b, w2_a) with w2_a [r, out_b],
           w2_b [r, in_b]; s = alpha / dim, dim = w2_b.shape[0] if w2 is factorised,
           else w1_b.shape[0] if w1 is, else s = 1 (both full: alpha ignored)
    DoRA   W' = W + mult * (g * (W + dW1) - W), dW1 = alpha/r * up @ down,
           g = dora_scale / ||W + dW1|| with the norm over every axis but the one
           dora_scale spans: [out, 1] / [out, 1, 1, 1] (LyCORIS wd_on_out=True, its
           default) norms each output row; [1, in] / [1, in, 1, 1] (wd_on_out=False,
           kohya / AUTOMATIC1111) norms each input column. delta = W' - W.
    full   dW = mult * diff, bias delta = mult * diff_b (alpha ignored)
  Sources read (all agree on the above except where noted):
    LyCORIS lycoris/functional/{locon,loha,lokr,general}.py, lycoris/modules/{loha,lokr}.py
      (KohakuBlueleaf/LyCORIS f49d30d): LoKr scale alpha/lora_dim, alpha := lora_dim
      when w1 and w2 are both full; tucker layouts hada_w*_a / lokr_w2_a [r, out],
      *_b [r, in]. functional.lokr.diff_weight and LoKrModule.make_module_from_state_dict
      take the rank from w2_a.shape[1], which in the tucker layout is out_b, not r
      (a LyCORIS quirk: its training module scales by alpha / r); lorahost, AUTOMATIC1111
      and ComfyUI use w2_b.shape[0] = r. With both halves factorised (not in this
      fixture) LyCORIS takes w1_a.shape[1], ComfyUI / AUTOMATIC1111 w2_b.shape[0]
      (equal for files LyCORIS writes: one lora_dim). DISAGREES on DoRA with mult != 1: LyCORIS
      merges (W + dW1) * (1 + mult (g - 1)), i.e. W + dW1 + mult (g (W + dW1) - W - dW1);
      at mult = 1 the two agree.
    AUTOMATIC1111 extensions-builtin/Lora/network.py (calc_scale alpha/dim, DoRA
      applied after calc_scale, then * multiplier), network_hada.py (dim = w1b.shape[0]),
      network_lokr.py (dim = w1b.shape[0], overridden by w2b.shape[0]),
      lyco_helpers.make_weight_cp. AUTOMATIC1111 only knows the input-axis DoRA norm.
    ComfyUI comfy/weight_adapter/{lora,loha,lokr,base}.py: same scales; its
      weight_decompose adds finfo(dtype).eps to the norm, and for an output-axis
      dora_scale it norms the BASE weight W, not W + dW1 (v0.3.77 and later):
      lorahost follows LyCORIS / the DoRA paper here (||W + dW1||).

BLOCK WEIGHTS (diffusers 0.42 loaders/unet_loader_utils.py _maybe_expand_lora_scales
and utils/peft_utils.py set_weights_and_activate_adapters): {"down": a, "mid": b,
"up": c} expands to "down_blocks.<i>.attentions.<j>" = a for every down block that has
attentions (j < layers_per_block), "mid_block.attentions.0" = b, "up_blocks.<i>.attentions.<j>"
= c (j < layers_per_block + 1). A LoRA module gets the first of these names that is a
substring of its module name; failing that, the name
"<parts[0]>.<parts[1]>.attentions.<parts[3]>" built from its own dotted name, else 1.0.
So: everything inside down_blocks.i.attentions.j / mid_block.attentions.0 /
up_blocks.i.attentions.j gets a / b / c; resnets.j (conv1, conv2, time_emb_proj) and
downsamplers/upsamplers of a block that HAS attentions get that block's weight too
(resnets.j -> attentions.j; up_blocks have as many resnets as attentions); resnets of
blocks without attentions (sd1_tiny: down_blocks.1, up_blocks.0) and mid_block.resnets
get 1.0, whatever "mid" says; conv_in, conv_out, time_embedding.* (fewer than 4 dotted
parts) would raise IndexError (A does not target them). The text encoder gets the
plain "text_encoder" weight.
"""
import json
import os
import struct
import warnings

import diffusers
import peft
import safetensors
import torch
import transformers
import transformers.integrations.peft as hf_peft
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FIX, "adapters")
SD1 = os.path.join(FIX, "models", "sd1_tiny")
SD2 = os.path.join(FIX, "models", "sd2_tiny")

PROMPTS = ["a photo of a cat", "a red house on the hill in the morning light"]
PIPE = dict(prompt="a photo of a cat", negative_prompt="", steps=3, cfg=7.5)
MULT = 0.8  # LyCORIS expected deltas

UNET_ALL = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
            "ff.net.2", "conv1", "conv2", "time_emb_proj"]
TE_ALL = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]

# name: (unet targets, unet r, unet alpha, te targets, te r, te alpha, use_dora, seed)
LORAS = {
    "A": (UNET_ALL, 4, 8, TE_ALL, 4, 2, False, 101),
    "B": (UNET_ATTN, 2, 2, TE_ATTN, 2, 2, False, 102),
    "C": (UNET_ALL, 4, 8, TE_ALL, 4, 4, False, 103),
    "D": (["to_q", "to_v"], 4, 4, None, None, None, True, 104),
}

# transformers 5.24 refuses peft < 0.22 in its PEFT integration (add_adapter,
# load_adapter, set_adapter), and no peft >= 0.22 is published. diffusers' text-encoder
# LoRA path goes through it, so the check is bypassed here; check_against_merge() below
# verifies every such output against an independent float64 weight merge.
hf_peft.check_peft_version = lambda min_version: None


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------

def out_path(name):
    return os.path.join(OUT, name)


def canonicalize(path):
    """Rewrite a safetensors header with __metadata__ keys sorted (same bytes each run)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    new = {}
    if meta is not None:
        new["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    new.update(header)
    text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    assert len(text) == n, (path, len(text), n)
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])
    os.chmod(path, 0o644)  # the safetensors writer creates files 0600


def save(tensors, name, metadata=None):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, out_path(name), metadata=metadata)
    canonicalize(out_path(name))


def reference():
    return json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                       "transformers": transformers.__version__, "peft": peft.__version__,
                       "safetensors": safetensors.__version__})


# ---------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------

def load_tokenizer(model):
    tok_dir = os.path.join(model, "tokenizer")
    special = json.load(open(os.path.join(tok_dir, "special_tokens_map.json")))
    return CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                         pad_token=special["pad_token"], model_max_length=77)


def load_te(model):
    return CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder"), dtype=torch.float32)


def load_unet(model):
    return UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), torch_dtype=torch.float32)


def load_pipe(model):
    sched_cfg = json.load(open(os.path.join(model, "scheduler", "scheduler_config.json")))
    sched = getattr(diffusers, sched_cfg["_class_name"]).from_pretrained(os.path.join(model, "scheduler"))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.float32),
        text_encoder=load_te(model), tokenizer=load_tokenizer(model), unet=load_unet(model),
        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def te_name(module):
    """Text-encoder module name as in the model file (transformers 5 drops text_model.)."""
    return module if module.startswith("text_model.") else "text_model." + module


def base_weights(model):
    """tensor name -> tensor, from the model files as stored (the SD 1.x text encoder is F16)."""
    out = {}
    for sub, fname in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        with safe_open(os.path.join(model, sub, fname), "pt") as f:
            for k in f.keys():
                if k.endswith(".weight") or k.endswith(".bias"):
                    out[k] = f.get_tensor(k)
    return out


# ---------------------------------------------------------------------------------
# Making LoRAs with peft
# ---------------------------------------------------------------------------------

def fill(model, seed):
    """Every lora_A / lora_B weight <- randn * 0.1, in sorted-name order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def config_dict(model):
    """LoraConfig.to_dict() as diffusers' training scripts store it, made deterministic."""
    cfg = model.peft_config["default"].to_dict()
    cfg["base_model_name_or_path"] = None
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}


def make_lora(model_dir, name):
    """{component: (PEFT state dict with module keys, config dict, r, alpha)} for LORAS[name]."""
    ut, ur, ua, tt, tr, ta, dora, seed = LORAS[name]
    unet = load_unet(model_dir)
    unet.add_adapter(LoraConfig(r=ur, lora_alpha=ua, target_modules=ut, use_dora=dora,
                                init_lora_weights=True))
    fill(unet, seed)
    if dora:
        g = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for _, mod in sorted(unet.named_modules()):
                if isinstance(mod, BaseTunerLayer):
                    w = mod.get_base_layer().weight
                    mag = mod.lora_magnitude_vector["default"].weight
                    mag.copy_(w.norm(dim=1) * (1 + 0.2 * torch.randn(mag.shape, generator=g)))
    usd = get_peft_model_state_dict(unet)
    res = {"unet": (usd, config_dict(unet), ur, ua)}
    if tt:
        te = load_te(model_dir)
        te.add_adapter(LoraConfig(r=tr, lora_alpha=ta, target_modules=tt, init_lora_weights=True))
        fill(te, seed + 500)
        res["text_encoder"] = (get_peft_model_state_dict(te), config_dict(te), tr, ta)
    return res


def save_peft(lora, fname, te_text_model=True):
    """StableDiffusionPipeline.save_lora_weights, alphas in lora_adapter_metadata."""
    usd, ucfg, _, _ = lora["unet"]
    kw = dict(unet_lora_layers=usd, unet_lora_adapter_metadata=ucfg)
    if "text_encoder" in lora:
        tsd, tcfg, _, _ = lora["text_encoder"]
        if te_text_model:
            tsd = {te_name(k): v for k, v in tsd.items()}
        kw.update(text_encoder_lora_layers=tsd, text_encoder_lora_adapter_metadata=tcfg)
    StableDiffusionPipeline.save_lora_weights(OUT, weight_name=fname, **kw)
    canonicalize(out_path(fname))


def lora_modules(sd):
    """module -> (down, up) from a PEFT state dict."""
    mods = {}
    for k in sd:
        if k.endswith(".lora_A.weight"):
            m = k[: -len(".lora_A.weight")]
            mods[m] = (sd[k], sd[m + ".lora_B.weight"])
    return dict(sorted(mods.items()))


def kohya_state_dict(lora, with_alpha=True):
    out = {}
    for comp, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        if comp not in lora:
            continue
        sd, _, r, alpha = lora[comp]
        for m, (down, up) in lora_modules(sd).items():
            name = prefix + (te_name(m) if comp == "text_encoder" else m).replace(".", "_")
            out[name + ".lora_down.weight"] = down
            out[name + ".lora_up.weight"] = up
            if with_alpha:
                out[name + ".alpha"] = torch.tensor(float(alpha))
    return out


OLD_UNET = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
OLD_TE = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def olddiff_state_dict(lora, prefixed=True):
    out = {}
    for m, (down, up) in lora_modules(lora["unet"][0]).items():
        parent, leaf = m.rsplit(".", 1) if not m.endswith("to_out.0") else (m[: -len(".to_out.0")], "to_out.0")
        key = f"{parent}.processor.{OLD_UNET[leaf]}"
        key = ("unet." + key) if prefixed else key
        out[key + ".down.weight"], out[key + ".up.weight"] = down, up
    if prefixed and "text_encoder" in lora:
        for m, (down, up) in lora_modules(lora["text_encoder"][0]).items():
            parent, leaf = te_name(m).rsplit(".", 1)
            key = f"text_encoder.{parent}.{OLD_TE[leaf]}"
            out[key + ".down.weight"], out[key + ".up.weight"] = down, up
    return out


# ---------------------------------------------------------------------------------
# Running diffusers
# ---------------------------------------------------------------------------------

def make_inputs(model_dir, cross_dim, seed):
    tok = load_tokenizer(model_dir)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(seed)
    return {"ids": ids.to(torch.int32),
            "x": torch.randn((2, 4, 8, 8), generator=g),
            "t": torch.tensor([999.0, 500.0]),
            "context": torch.randn((2, 77, cross_dim), generator=g)}


@torch.no_grad()
def run(pipe, inp, te=True):
    out = {}
    if te:
        out["te"] = pipe.text_encoder(inp["ids"].long())[0].float()
    out["unet"] = pipe.unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"]).sample.float()
    return out


def run_pipeline(pipe, noise):
    h = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe(PIPE["prompt"], negative_prompt=PIPE["negative_prompt"], num_inference_steps=PIPE["steps"],
                guidance_scale=PIPE["cfg"], height=h, width=h, latents=noise.clone(),
                output_type="latent").images.float()


def assert_close(a, b, what, tol=1e-5):
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1.0)
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g}"
    return err


@torch.no_grad()
def check_against_merge(model_dir, parts, inp, got, what, te=True):
    """Merge W += w(module) * alpha/r * B @ A in float64 into fresh models, compare outputs.

    parts: list of (lora dict from make_lora, weight function (component, module) -> w).
    """
    unet, tenc = load_unet(model_dir), load_te(model_dir)
    for lora, wfn in parts:
        for comp, model in (("unet", unet), ("text_encoder", tenc)):
            if comp not in lora:
                continue
            sd, _, r, alpha = lora[comp]
            for m, (down, up) in lora_modules(sd).items():
                w = wfn(comp, m)
                mod = model.get_submodule(m)
                d = (up.double().reshape(up.shape[0], -1) @ down.double().reshape(down.shape[0], -1))
                mod.weight += (w * alpha / r * d).reshape(mod.weight.shape).float()
    ref = {"unet": unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"]).sample}
    if te:
        ref["te"] = tenc(inp["ids"].long())[0]
    for k in ref:
        assert_close(got[k], ref[k], f"{what}.{k} vs float64 merge", 1e-4)


def module_weights(model, adapter):
    """module -> the weight set_adapters gave it (scaling / (alpha / r))."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, BaseTunerLayer) and adapter in mod.scaling:
            base = mod.lora_alpha[adapter] / mod.r[adapter]
            out[name] = round(mod.scaling[adapter] / base, 6)
    return dict(sorted(out.items()))


def diffusers_block_weight(module, down, mid, up, layers_per_block, attn_blocks):
    """Our reading of diffusers 0.42's block-weight mapping (see BLOCK WEIGHTS)."""
    names = {f"down_blocks.{i}.attentions.{j}": down for i in attn_blocks["down"] for j in range(layers_per_block)}
    names["mid_block.attentions.0"] = mid
    names.update({f"up_blocks.{i}.attentions.{j}": up for i in attn_blocks["up"]
                  for j in range(layers_per_block + 1)})
    for n, w in names.items():
        if n in module:
            return w
    p = module.split(".")
    return names.get(f"{p[0]}.{p[1]}.attentions.{p[3]}", 1.0)


# ---------------------------------------------------------------------------------
# SD 1.x
# ---------------------------------------------------------------------------------

def sd1_files():
    """Writes the SD 1.x adapter files; returns the LoRAs for the checks."""
    A, B, D = make_lora(SD1, "A"), make_lora(SD1, "B"), make_lora(SD1, "D")
    save_peft(A, "sd1_A_peft.safetensors", te_text_model=True)
    save_peft(B, "sd1_B_peft.safetensors", te_text_model=False)
    save_peft(D, "sd1_D_peft_dora.safetensors")
    kohya_meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"}
    save(kohya_state_dict(A), "sd1_A_kohya.safetensors", dict(kohya_meta, ss_network_dim="4"))
    save(kohya_state_dict(B, with_alpha=False), "sd1_B_kohya_meta.safetensors",
         dict(kohya_meta, ss_network_dim="2", ss_network_alpha="2.0"))
    save(olddiff_state_dict(B), "sd1_B_olddiff.safetensors")
    save(olddiff_state_dict(B, prefixed=False), "sd1_B_attnprocs.safetensors")
    return A, B, D


def sd1_expected(A, B, D):
    inp = make_inputs(SD1, 32, 11)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(12))
    out = dict(inp, noise=noise)
    scen, pipes = {}, {}

    def record(name, res, desc):
        for k, v in res.items():
            out[f"{name}.{k}"] = v.contiguous()
        scen[name] = desc

    fA, fB = out_path("sd1_A_peft.safetensors"), out_path("sd1_B_peft.safetensors")
    one = lambda c, m: 1.0  # noqa: E731

    pipe = load_pipe(SD1)
    record("base", run(pipe, inp), {"adapters": []})
    out["base.latents"] = run_pipeline(pipe, noise)

    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fA, adapter_name="A")
    record("A", run(pipe, inp), {"adapters": [{"name": "A", "file": "sd1_A_peft.safetensors", "weight": 1.0}]})
    check_against_merge(SD1, [(A, one)], inp, run(pipe, inp), "A")
    out["A.latents"] = run_pipeline(pipe, noise)
    pipe.load_lora_weights(fB, adapter_name="B")
    pipe.set_adapters(["A", "B"], [0.7, 0.4])
    ab = run(pipe, inp)
    record("AB", ab, {"adapters": [{"name": "A", "file": "sd1_A_peft.safetensors", "weight": 0.7},
                                   {"name": "B", "file": "sd1_B_peft.safetensors", "weight": 0.4}],
                      "call": 'set_adapters(["A", "B"], [0.7, 0.4])'})
    check_against_merge(SD1, [(A, lambda c, m: 0.7), (B, lambda c, m: 0.4)], inp, ab, "AB")
    out["AB.latents"] = run_pipeline(pipe, noise)

    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fB, adapter_name="B")
    b = run(pipe, inp)
    record("B", b, {"adapters": [{"name": "B", "file": "sd1_B_peft.safetensors", "weight": 1.0}],
                    "same_outputs": ["sd1_B_kohya_meta.safetensors", "sd1_B_olddiff.safetensors",
                                     "sd1_B_attnprocs.safetensors (unet only)"]})
    check_against_merge(SD1, [(B, one)], inp, b, "B")

    # fusedAB: fuse, then unload the LoRA layers so only the fused weights act.
    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fA, adapter_name="A")
    pipe.load_lora_weights(fB, adapter_name="B")
    pipe.set_adapters(["A", "B"], [0.7, 0.4])
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=["A", "B"])
    merged = run(pipe, inp)
    pipe.unload_lora_weights()
    fused = run(pipe, inp)
    for k in fused:
        assert torch.equal(fused[k], merged[k]), k
        assert_close(fused[k], ab[k], f"fusedAB.{k} vs AB", 1e-4)
    record("fusedAB", fused, {"adapters": scen["AB"]["adapters"],
                              "call": 'set_adapters(["A", "B"], [0.7, 0.4]); fuse_lora(components=["unet", '
                                      '"text_encoder"], adapter_names=["A", "B"]); unload_lora_weights()'})

    # unfused: fuse, unfuse (adapters still active: = AB), unload -> base up to rounding.
    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fA, adapter_name="A")
    pipe.load_lora_weights(fB, adapter_name="B")
    pipe.set_adapters(["A", "B"], [0.7, 0.4])
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=["A", "B"])
    pipe.unfuse_lora(components=["unet", "text_encoder"])
    still = run(pipe, inp)
    pipe.unload_lora_weights()
    unf = run(pipe, inp)
    for k in unf:
        assert_close(still[k], ab[k], f"unfuse_lora.{k} vs AB", 1e-4)
        assert_close(unf[k], out[f"base.{k}"], f"unfused.{k} vs base", 1e-5)
    record("unfused", unf, {"adapters": [], "call": "as fusedAB, then unfuse_lora(components=[\"unet\", "
                            "\"text_encoder\"]); unload_lora_weights()",
                            "max_abs_diff_vs_base": {k: (unf[k] - out[f"base.{k}"]).abs().max().item()
                                                     for k in unf}})

    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fA, adapter_name="A")
    pipe.set_adapters("A", {"unet": 0.5, "text_encoder": 1.3})
    split = run(pipe, inp)
    record("split", split, {"adapters": [{"name": "A", "file": "sd1_A_peft.safetensors",
                                          "weight": {"unet": 0.5, "text_encoder": 1.3}}],
                            "call": 'set_adapters("A", {"unet": 0.5, "text_encoder": 1.3})'})
    check_against_merge(SD1, [(A, lambda c, m: 0.5 if c == "unet" else 1.3)], inp, split, "split")

    pipe = load_pipe(SD1)
    pipe.load_lora_weights(fA, adapter_name="A")
    bw = {"unet": {"down": 0.3, "mid": 0.8, "up": 0.6}, "text_encoder": 1.0}
    pipe.set_adapters("A", bw)
    blocks = run(pipe, inp)
    got_w = module_weights(pipe.unet, "A")
    cfg = pipe.unet.config
    attn_blocks = {"down": [i for i, t in enumerate(cfg.down_block_types) if "CrossAttn" in t],
                   "up": [i for i, t in enumerate(cfg.up_block_types) if "CrossAttn" in t]}
    ours = {m: diffusers_block_weight(m, 0.3, 0.8, 0.6, cfg.layers_per_block, attn_blocks) for m in got_w}
    assert ours == got_w, {m: (ours[m], got_w[m]) for m in got_w if ours[m] != got_w[m]}
    record("blocks", blocks, {"adapters": [{"name": "A", "file": "sd1_A_peft.safetensors", "weight": bw}],
                              "call": 'set_adapters("A", {"unet": {"down": 0.3, "mid": 0.8, "up": 0.6}, '
                                      '"text_encoder": 1.0})',
                              "module_weights": "metadata blocks_module_weights"})
    check_against_merge(SD1, [(A, lambda c, m: got_w[m] if c == "unet" else 1.0)], inp, blocks, "blocks")

    pipe = load_pipe(SD1)
    pipe.load_lora_weights(out_path("sd1_D_peft_dora.safetensors"), adapter_name="D")
    d = run(pipe, inp, te=False)
    record("D", d, {"adapters": [{"name": "D", "file": "sd1_D_peft_dora.safetensors", "weight": 1.0}],
                    "outputs": ["unet"], "formula": "W' = m / ||W + s B A||_row * (W + s B A), s = alpha/r"})
    check_dora(D, inp, d["unet"])

    meta = {"reference": reference(), "scenarios": json.dumps(scen, sort_keys=True),
            "prompts": json.dumps(PROMPTS),
            "pipeline": json.dumps(dict(PIPE, scheduler=type(pipe.scheduler).__name__,
                                        height=cfg.sample_size * pipe.vae_scale_factor,
                                        width=cfg.sample_size * pipe.vae_scale_factor,
                                        latents="noise", scenarios=["base", "A", "AB"]), sort_keys=True),
            "blocks_module_weights": json.dumps(got_w, sort_keys=True)}
    save(out, "sd1_expected.safetensors", meta)
    return inp, out


@torch.no_grad()
def check_dora(D, inp, got):
    unet = load_unet(SD1)
    sd, _, r, alpha = D["unet"]
    for m, (down, up) in lora_modules(sd).items():
        mod = unet.get_submodule(m)
        w = mod.weight.double() + alpha / r * up.double() @ down.double()
        mag = sd[m + ".lora_magnitude_vector"].double()
        mod.weight.copy_((mag / w.norm(dim=1))[:, None] * w)
    ref = unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"]).sample
    assert_close(got, ref, "D.unet vs float64 DoRA merge", 1e-4)


def check_other_formats(inp, exp):
    """diffusers loads the kohya / old-diffusers files to the same outputs as the PEFT ones."""
    pipe = load_pipe(SD1)
    pipe.load_lora_weights(out_path("sd1_A_kohya.safetensors"), adapter_name="A")
    got = run(pipe, inp)
    for k in got:
        print(f"  sd1_A_kohya {k}: max |diff| vs A {assert_close(got[k], exp['A.' + k], 'A_kohya.' + k):.3g}")
    for f in ("sd1_B_kohya_meta.safetensors", "sd1_B_olddiff.safetensors"):
        pipe = load_pipe(SD1)
        pipe.load_lora_weights(out_path(f), adapter_name="B")
        got = run(pipe, inp)
        for k in got:
            print(f"  {f} {k}: max |diff| vs B {assert_close(got[k], exp['B.' + k], f + '.' + k):.3g}")
    pipe = load_pipe(SD1)
    pipe.load_lora_weights(out_path("sd1_B_attnprocs.safetensors"), adapter_name="B")
    assert not getattr(pipe.unet, "peft_config", None), "load_lora_weights now loads unprefixed keys"
    pipe.unet.load_lora_adapter(load_file(out_path("sd1_B_attnprocs.safetensors")), prefix=None, adapter_name="B")
    got = run(pipe, inp, te=False)
    print(f"  sd1_B_attnprocs unet: max |diff| vs B {assert_close(got['unet'], exp['B.unet'], 'attnprocs'):.3g}")


# ---------------------------------------------------------------------------------
# SD 2.x
# ---------------------------------------------------------------------------------

def sd2_all():
    C = make_lora(SD2, "C")
    save_peft(C, "sd2_C_peft.safetensors", te_text_model=True)
    save(kohya_state_dict(C), "sd2_C_kohya.safetensors",
         {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_base_model_version": "sd_v2"})
    inp = make_inputs(SD2, load_unet(SD2).config.cross_attention_dim, 21)
    out = dict(inp)
    pipe = load_pipe(SD2)
    for k, v in run(pipe, inp).items():
        out["base." + k] = v
    pipe.load_lora_weights(out_path("sd2_C_peft.safetensors"), adapter_name="C")
    c = run(pipe, inp)
    check_against_merge(SD2, [(C, lambda comp, m: 1.0)], inp, c, "C")
    for k, v in c.items():
        out["C." + k] = v
    pipe = load_pipe(SD2)
    pipe.load_lora_weights(out_path("sd2_C_kohya.safetensors"), adapter_name="C")
    got = run(pipe, inp)
    for k in got:
        print(f"  sd2_C_kohya {k}: max |diff| vs C {assert_close(got[k], c[k], 'C_kohya.' + k):.3g}")
    scen = {"base": {"adapters": []},
            "C": {"adapters": [{"name": "C", "file": "sd2_C_peft.safetensors", "weight": 1.0}],
                  "same_outputs": ["sd2_C_kohya.safetensors"]}}
    save(out, "sd2_expected.safetensors", {"reference": reference(), "prompts": json.dumps(PROMPTS),
                                           "scenarios": json.dumps(scen, sort_keys=True)})


# ---------------------------------------------------------------------------------
# LyCORIS kinds, float64
# ---------------------------------------------------------------------------------

def lora_delta(W, t, alpha):
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    r = down.shape[0]
    s = 1.0 if alpha is None else alpha / r
    if "lora_mid.weight" in t:
        d = torch.einsum("op,pqhw,qi->oihw", up.reshape(up.shape[0], r), t["lora_mid.weight"],
                         down.reshape(r, -1))
    else:
        d = up.reshape(up.shape[0], -1) @ down.reshape(r, -1)
    return s * d.reshape(W.shape)


def loha_delta(W, t, alpha):
    r = t["hada_w1_b"].shape[0]
    s = 1.0 if alpha is None else alpha / r
    if "hada_t1" in t:
        w1 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
        w2 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
    else:
        w1 = t["hada_w1_a"] @ t["hada_w1_b"].reshape(r, -1)
        w2 = t["hada_w2_a"] @ t["hada_w2_b"].reshape(t["hada_w2_b"].shape[0], -1)
    return s * (w1 * w2).reshape(W.shape)


def lokr_delta(W, t, alpha):
    dim = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        dim = t["lokr_w1_b"].shape[0]
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    else:
        dim = t["lokr_w2_b"].shape[0]
        if "lokr_t2" in t:
            w2 = torch.einsum("ijkl,jr,ip->prkl", t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    s = alpha / dim if (alpha is not None and dim is not None) else 1.0
    return s * torch.kron(w1.contiguous(), w2.contiguous()).reshape(W.shape)


def dora_delta(W, t, alpha, mult):
    Wc = W + lora_delta(W, t, alpha)
    g = t["dora_scale"]
    keep = 0 if g.shape[0] == W.shape[0] and g.shape[1] == 1 else 1
    axes = tuple(a for a in range(W.dim()) if a != keep)
    g = g / Wc.pow(2).sum(dim=axes, keepdim=True).sqrt()
    return mult * (g * Wc - W)


# module, kind, form, rank, alpha (None: no .alpha tensor), dtype, seed
LYCORIS = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "loha", "linear", 2, 1.0, torch.float32, 1),
    ("down_blocks.1.resnets.0.conv1", "loha", "conv3x3 w1_b [r, in*9]", 3, 2.0, torch.float16, 2),
    ("mid_block.resnets.0.conv1", "loha", "conv3x3 tucker", 2, 1.5, torch.float32, 3),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "lokr", "linear w1 full, w2_a/w2_b", 2, 3.0,
     torch.float32, 4),
    ("text_model.encoder.layers.1.mlp.fc1", "lokr", "linear w1_a/w1_b, w2 full", 2, 1.0, torch.float32, 5),
    ("up_blocks.0.resnets.1.conv2", "lokr", "conv3x3 w1 full, tucker t2/w2_a/w2_b", 2, 4.0, torch.float32, 6),
    ("up_blocks.1.resnets.0.conv1", "locon", "conv3x3 down [r, in, 3, 3]", 4, 2.0, torch.float32, 7),
    ("down_blocks.0.resnets.1.conv2", "locon", "conv3x3 tucker mid [r, r, 3, 3]", 2, 1.0, torch.float32, 8),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_q", "dora", "linear dora_scale [out, 1]", 4, 4.0,
     torch.float32, 9),
    ("down_blocks.1.resnets.1.conv1", "dora", "conv3x3 dora_scale [1, in, 1, 1]", 4, 2.0, torch.float32, 10),
    ("text_model.encoder.layers.2.self_attn.out_proj", "full", "linear diff + diff_b", 0, None, torch.float32, 11),
    ("up_blocks.1.attentions.2.proj_in", "lora", "conv1x1 down [r, in, 1, 1], no alpha", 2, None, torch.float32, 12),
    ("text_model.encoder.layers.0.self_attn.q_proj", "lora", "linear", 4, 1.0, torch.float16, 13),
]


def lycoris_tensors(kind, form, W, r, seed):
    """Random tensors for one module (suffix -> float64 tensor, before the dtype cast)."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s, std=0.2: torch.randn(s, generator=g, dtype=torch.float64) * std  # noqa: E731
    out_dim, in_dim = W.shape[0], W.shape[1]
    k = tuple(W.shape[2:])
    if kind == "loha" and "tucker" in form:
        return {"hada_t1": rn(r, r, *k), "hada_w1_a": rn(r, out_dim), "hada_w1_b": rn(r, in_dim),
                "hada_t2": rn(r, r, *k), "hada_w2_a": rn(r, out_dim), "hada_w2_b": rn(r, in_dim)}
    if kind == "loha":
        n = in_dim * (k[0] * k[1] if k else 1)
        return {"hada_w1_a": rn(out_dim, r), "hada_w1_b": rn(r, n),
                "hada_w2_a": rn(out_dim, r), "hada_w2_b": rn(r, n)}
    if kind == "lokr" and "tucker" in form:  # w1 [2, 2] full; w2 [out/2, in/2, 3, 3] tucker
        return {"lokr_w1": rn(2, 2, std=0.5), "lokr_t2": rn(r, r, *k), "lokr_w2_a": rn(r, out_dim // 2),
                "lokr_w2_b": rn(r, in_dim // 2)}
    if kind == "lokr" and "w1 full" in form:  # w1 [4, 2]; w2 [out/4, in/2] = w2_a @ w2_b
        return {"lokr_w1": rn(4, 2, std=0.5), "lokr_w2_a": rn(out_dim // 4, r), "lokr_w2_b": rn(r, in_dim // 2)}
    if kind == "lokr":  # w1 [8, 4] = w1_a @ w1_b; w2 [out/8, in/4] full
        return {"lokr_w1_a": rn(8, r, std=0.5), "lokr_w1_b": rn(r, 4, std=0.5),
                "lokr_w2": rn(out_dim // 8, in_dim // 4)}
    if kind == "full":
        return {"diff": rn(out_dim, in_dim, std=0.05), "diff_b": rn(out_dim, std=0.05)}
    t = {}
    if "tucker" in form:
        t = {"lora_down.weight": rn(r, in_dim, 1, 1), "lora_mid.weight": rn(r, r, *k),
             "lora_up.weight": rn(out_dim, r, 1, 1)}
    elif k:
        t = {"lora_down.weight": rn(r, in_dim, *k), "lora_up.weight": rn(out_dim, r, 1, 1)}
    else:
        t = {"lora_down.weight": rn(r, in_dim), "lora_up.weight": rn(out_dim, r)}
    if kind == "dora":
        if k:  # input axis: [1, in, 1, 1]
            norm = W.transpose(0, 1).reshape(in_dim, -1).norm(dim=1).reshape(1, in_dim, 1, 1)
        else:  # output axis: [out, 1]
            norm = W.norm(dim=1, keepdim=True)
        t["dora_scale"] = norm * (1 + 0.2 * rn(*norm.shape, std=1.0))
    return t


def lycoris_all():
    base = base_weights(SD1)
    file, expected, layers = {}, {}, {}
    for module, kind, form, r, alpha, dtype, seed in LYCORIS:
        W = base[module + ".weight"].double()
        t64 = lycoris_tensors(kind, form, W, r, seed)
        cast = {s: v.to(torch.float32 if s == "dora_scale" else dtype) for s, v in t64.items()}
        t = {s: v.double() for s, v in cast.items()}  # the values as stored
        te = module.startswith("text_model.")
        kname = ("lora_te_" if te else "lora_unet_") + module.replace(".", "_")
        for s, v in cast.items():
            file[f"{kname}.{s}"] = v
        if alpha is not None:
            file[f"{kname}.alpha"] = torch.tensor(alpha, dtype=dtype)
        if kind == "lora" or kind == "locon":
            delta = MULT * lora_delta(W, t, alpha)
        elif kind == "loha":
            delta = MULT * loha_delta(W, t, alpha)
        elif kind == "lokr":
            delta = MULT * lokr_delta(W, t, alpha)
        elif kind == "dora":
            delta = dora_delta(W, t, alpha, MULT)
        else:
            delta = MULT * t["diff"]
            expected[module + ".bias_delta"] = MULT * t["diff_b"]
        assert delta.shape == W.shape and delta.abs().max() > 0, module
        expected[module + ".delta"] = delta
        layers[module] = {"kohya": kname, "kind": kind, "form": form, "rank": r or None, "alpha": alpha,
                          "dtype": str(dtype).replace("torch.", ""), "weight_shape": list(W.shape),
                          "tensors": {s: list(v.shape) for s, v in cast.items()}}
    save(file, "sd1_lycoris.safetensors", {"ss_network_module": "lycoris.kohya", "ss_base_model_version": "sd_v1"})
    save(expected, "sd1_lycoris_expected.safetensors",
         {"layers": json.dumps(layers, sort_keys=True), "multiplier": str(MULT), "reference": reference(),
          "formulas": "see tests/golden/adapters.py docstring"})


def main():
    # Quiet: loading adapter "B" next to "A" makes diffusers and transformers list A's
    # lora_A/lora_B keys as "missing" (their filters match the adapter name as a substring
    # and the "lora" marker). The float64 checks above are what vouch for the outputs.
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    A, B, D = sd1_files()
    inp, exp = sd1_expected(A, B, D)
    check_other_formats(inp, exp)
    sd2_all()
    lycoris_all()
    for f in sorted(os.listdir(OUT)):
        print(f"{f:36s} {os.path.getsize(out_path(f)):8d}")


if __name__ == "__main__":
    main()
