#!/usr/bin/env python3
"""Golden data for lorahost's generation pipeline (tests/test_pipeline.c):
diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline on the tiny
SD 1.x model, as a diffusers model directory.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/pipeline.py

Completes tests/fixtures/models/sd1_tiny/ into a diffusers model directory
(the text_encoder/, unet/ and vae/ written by models_*.py are read, never
rewritten):
  model_index.json                 StableDiffusionPipeline, as save_pretrained writes it
  scheduler/scheduler_config.json  SD 1.5's PNDMScheduler config
  tokenizer/vocab.json, merges.txt A 1000-token CLIP BPE tokenizer cut from the
      real vocabulary in tests/fixtures/tokenizer/ by the CLIP recipe (256
      bytes, 256 bytes + "</w>", the first 486 merges, <|startoftext|> = 998,
      <|endoftext|> = 999): the tiny text encoder has vocab_size 1000, so
      the full 49408-token vocabulary cannot drive it.
  tokenizer/special_tokens_map.json, tokenizer_config.json (pad "<|endoftext|>")

and tests/fixtures/pipeline_reference.safetensors with, per case C (metadata
"cases" is a JSON list describing each: prompt, negative prompt, scheduler
(lorahost plugin id and diffusers class), steps, cfg, size, batch, seed or
given noise, strength for img2img):
  "C.noise"    F32 [B, 4, h, w]  the init noise passed as `latents=` (noise cases)
  "C.latents"  F32 [B, 4, h, w]  diffusers' final latents (output_type="latent")
  "C.image"    U8 [B, H, W, 3]   the decoded image (cases with "image": true)
  "init_image" U8 [32, 32, 3]    the img2img input
Seed cases use generator=torch.Generator("cpu").manual_seed(seed). The "long"
case passes prompt_embeds built from 77-token windows of a > 75-token prompt
(AUTOMATIC1111's chunking without commas: plain 75-token chunks), the
negative prompt padded to the same number of windows.
Metadata "reference" names the torch, diffusers and transformers versions.

SD 2.x: completes tests/fixtures/models/sd2_tiny/ (unet/ and text_encoder/
from models_*.py) the same way, with
  vae/                             a copy of sd1_tiny/vae (the tiny SD 2.x file,
      sd2_tiny.safetensors, carries sd1_tiny's VAE too)
  scheduler/scheduler_config.json  SD 2.1's DDIMScheduler config (v_prediction)
  tokenizer/                       the same 1000-token vocabulary, pad "!" as
      SD 2.x's tokenizer (special_tokens_map.json)
and writes tests/fixtures/pipeline_sd2_reference.safetensors (same layout,
cases SD2_CASES: v-prediction with DDIM and Euler, 20 steps, seed and given
noise), leaving pipeline_reference.safetensors' cases as they were.
"""
import json
import os
import shutil

import diffusers
import numpy as np
import PIL.Image
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
MODEL = os.path.join(FIX, "models", "sd1_tiny")
VOCAB = 1000

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}

SCHEDULERS = {  # lorahost plugin id -> diffusers class
    "pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmsolver_multistep": DPMSolverMultistepScheduler,
}

PROMPT = "a photograph of an astronaut riding a horse"
NEG = "blurry, low quality"
LONG = " ".join(["a red house on the hill with a tree and the sky in the morning light"] * 6)

# name, scheduler, batch, seed (None: given noise), cfg, extra
CASES = [
    ("ddim_noise_b1", "ddim", 1, None, 7.5, {"image": True}),
    ("ddim_seed_b2", "ddim", 2, 42, 7.5, {}),
    ("euler_seed_b1", "euler", 1, 1234, 7.5, {}),
    ("euler_a_seed_b2", "euler_ancestral", 2, 7, 7.5, {"image": True}),
    ("dpmpp2m_seed_b1", "dpmsolver_multistep", 1, 99, 7.5, {}),
    ("dpmpp2m_noise_b2", "dpmsolver_multistep", 2, None, 7.5, {}),
    ("pndm_seed_b1", "pndm", 1, 5, 7.5, {}),
    ("nocfg_euler_a_b1", "euler_ancestral", 1, 11, 1.0, {"negative_prompt": ""}),
    ("long_ddim_b1", "ddim", 1, 3, 7.5, {"long": True}),
    ("img2img_ddim_b1", "ddim", 1, 21, 7.5, {"strength": 0.6}),
    ("img2img_euler_a_b2", "euler_ancestral", 2, 22, 7.5, {"strength": 0.6, "image": True}),
]
STEPS, SIZE = 20, 32

SD2 = os.path.join(FIX, "models", "sd2_tiny")
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD2_CASES = [
    ("sd2_ddim_v_seed_b1", "ddim", 1, 31, 7.5, {}),
    ("sd2_ddim_v_noise_b2", "ddim", 2, None, 7.5, {"image": True}),
    ("sd2_euler_v_seed_b1", "euler", 1, 32, 7.5, {"prompt": "a cat! on a red house!"}),
    ("sd2_euler_v_noise_b1", "euler", 1, None, 7.5, {}),
]


def write_model_dir(model=MODEL, scheduler=SD15_SCHEDULER, pad="<|endoftext|>"):
    with open(os.path.join(model, "model_index.json"), "w") as f:
        json.dump({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "image_encoder": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }, f, indent=2, sort_keys=True)
        f.write("\n")
    os.makedirs(os.path.join(model, "scheduler"), exist_ok=True)
    with open(os.path.join(model, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(scheduler, f, indent=2, sort_keys=True)
        f.write("\n")
    tok = os.path.join(model, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    full = json.load(open(os.path.join(FIX, "tokenizer", "vocab.json"), encoding="utf-8"))
    keep = VOCAB - 2
    vocab = {t: i for t, i in full.items() if i < keep}
    vocab["<|startoftext|>"] = keep
    vocab["<|endoftext|>"] = keep + 1
    with open(os.path.join(tok, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    lines = open(os.path.join(FIX, "tokenizer", "merges.txt"), encoding="utf-8").read().split("\n")
    merges = [l for l in lines if l and not l.startswith("#version")][: keep - 512]
    with open(os.path.join(tok, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": pad, "unk_token": "<|endoftext|>"}
    with open(os.path.join(tok, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(tok, "tokenizer_config.json"), "w") as f:
        json.dump(dict(special, model_max_length=77, tokenizer_class="CLIPTokenizer"), f, indent=2)


def load_pipe(model=MODEL, pad="<|endoftext|>", sched_cls=PNDMScheduler):
    tok = CLIPTokenizer(os.path.join(model, "tokenizer", "vocab.json"),
                        os.path.join(model, "tokenizer", "merges.txt"),
                        pad_token=pad, model_max_length=77)
    assert len(tok) == VOCAB, len(tok)
    te = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder"), dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.float32)
    sched = sched_cls.from_pretrained(os.path.join(model, "scheduler"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def long_embeds(pipe, text, n_windows=None):
    """A1111-style windows of 75 ids (no commas in the text) through the encoder."""
    tok = pipe.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + 75] for i in range(0, max(len(ids), 1), 75)] or [[]]
    while n_windows and len(chunks) < n_windows:
        chunks.append([])
    embs = []
    for c in chunks:
        w = [tok.bos_token_id] + c + [tok.eos_token_id]
        w += [tok.pad_token_id] * (77 - len(w))
        with torch.no_grad():
            embs.append(pipe.text_encoder(torch.tensor([w]))[0])
    return torch.cat(embs, dim=1), len(chunks)


def init_image():
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    img = np.stack([(x * 255) // (SIZE - 1), (y * 255) // (SIZE - 1),
                    ((x + y) * 37) % 256], axis=-1).astype(np.uint8)
    return img


def run_cases(pipe, cases, fixture):
    base_config = pipe.scheduler.config
    out, meta = {}, []
    img = init_image()
    out["init_image"] = torch.from_numpy(img.copy())
    for name, sched, batch, seed, cfg, extra in cases:
        pipe.scheduler = SCHEDULERS[sched].from_config(base_config)
        neg = extra.get("negative_prompt", NEG)
        prompt = LONG if extra.get("long") else extra.get("prompt", PROMPT)
        kw = dict(num_inference_steps=STEPS, guidance_scale=cfg, output_type="latent",
                  num_images_per_prompt=batch)
        if extra.get("long"):
            pe, nw = long_embeds(pipe, prompt)
            ne, _ = long_embeds(pipe, neg, nw)
            assert nw == 2, nw
            kw.update(prompt_embeds=pe, negative_prompt_embeds=ne)
        else:
            kw.update(prompt=prompt, negative_prompt=neg)
        entry = dict(name=name, scheduler=sched, diffusers_class=SCHEDULERS[sched].__name__,
                     prompt=prompt, negative_prompt=neg, steps=STEPS, cfg_scale=cfg,
                     width=SIZE, height=SIZE, batch_size=batch, seed=seed,
                     image=bool(extra.get("image")), strength=extra.get("strength"))
        if seed is None:
            g = torch.Generator("cpu").manual_seed(1000 + len(meta))
            noise = torch.randn((batch, 4, SIZE // 8, SIZE // 8), generator=g)
            out[name + ".noise"] = noise.clone()
            kw["latents"] = noise
        else:
            kw["generator"] = torch.Generator("cpu").manual_seed(seed)
        if "strength" in extra:
            i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
            i2i.set_progress_bar_config(disable=True)
            kw.pop("latents", None)
            lat = i2i(image=PIL.Image.fromarray(img), strength=extra["strength"], **kw).images
        else:
            lat = pipe(height=SIZE, width=SIZE, **kw).images
        out[name + ".latents"] = lat.float().contiguous()
        if entry["image"]:
            with torch.no_grad():
                dec = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
            pil = pipe.image_processor.postprocess(dec, output_type="np")
            out[name + ".image"] = torch.from_numpy(np.ascontiguousarray((pil * 255).round().astype(np.uint8)))
        meta.append(entry)
        print(name, tuple(lat.shape), float(lat.abs().mean()))
    ref = {"torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__}
    save_file(out, os.path.join(FIX, fixture),
              metadata={"cases": json.dumps(meta), "reference": json.dumps(ref)})


def main():
    write_model_dir()
    run_cases(load_pipe(), CASES, "pipeline_reference.safetensors")
    shutil.copytree(os.path.join(MODEL, "vae"), os.path.join(SD2, "vae"), dirs_exist_ok=True)
    write_model_dir(SD2, SD21_SCHEDULER, "!")
    pipe = load_pipe(SD2, "!", DDIMScheduler)
    assert pipe.tokenizer.pad_token_id == 0
    run_cases(pipe, SD2_CASES, "pipeline_sd2_reference.safetensors")


if __name__ == "__main__":
    main()
