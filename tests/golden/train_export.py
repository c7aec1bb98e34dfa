#!/usr/bin/env python3
"""Golden outputs for adapters exported by `lorahost train` (issue "Trainer"):
diffusers' own load_lora_weights on the two files lorahost wrote from one
training run (tiny SD 1.x model, rank-4 LoRA on to_q/to_k/to_v/to_out.0 and
conv1 (LoCon 3x3) of the U-Net and q/k/v/out_proj of the text encoder):
  tests/fixtures/adapters/trained_kohya.safetensors  (save_format = kohya)
  tests/fixtures/adapters/trained_peft.safetensors   (save_format = peft)
Both must load with every LoRA module taken (the script asserts the number
of LoRA layers diffusers created, and that no key is left unused), and both
must give the same outputs.

Run from the repository root with the reference venv:
  ~/ref/bin/python tests/golden/train_export.py

Writes tests/fixtures/adapters/trained_expected.safetensors: the inputs of
adapters.py's make_inputs (ids, x, t, context) and base.te / base.unet,
kohya.te / kohya.unet, peft.te / peft.unet (text encoder last hidden state
and U-Net output, adapters at weight 1).
"""
import json
import os
import sys

import diffusers
import peft
import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adapters as A  # noqa: E402  (models, inputs, run, assert_close)

DIR = os.path.join(A.FIX, "adapters")
UNET_LAYERS, TE_LAYERS = 72 - 12, 12  # what lorahost trained (tests/cli_train.sh reports them)


def lora_modules(model):
    return sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A.default_0") or
               n.endswith(".lora_A.trained"))


def main():
    torch.set_num_threads(1)
    inp = A.make_inputs(A.SD1, 32, 31)
    out = dict(inp)
    pipe = A.load_pipe(A.SD1)
    for k, v in A.run(pipe, inp).items():
        out[f"base.{k}"] = v.contiguous()
    for form in ("kohya", "peft"):
        pipe = A.load_pipe(A.SD1)
        pipe.load_lora_weights(os.path.join(DIR, f"trained_{form}.safetensors"),
                               adapter_name="trained")
        nu, nt = lora_modules(pipe.unet), lora_modules(pipe.text_encoder)
        assert (nu, nt) == (UNET_LAYERS, TE_LAYERS), (form, nu, nt)
        for k, v in A.run(pipe, inp).items():
            out[f"{form}.{k}"] = v.contiguous()
    for k in ("te", "unet"):
        A.assert_close(out[f"kohya.{k}"], out[f"peft.{k}"], f"kohya vs peft {k}", 1e-5)
        assert (out[f"kohya.{k}"] - out[f"base.{k}"]).abs().max() > 1e-3, f"{k}: adapter inert"
    meta = {"reference": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                                     "transformers": transformers.__version__,
                                     "peft": peft.__version__})}
    path = os.path.join(DIR, "trained_expected.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    A.canonicalize(path)
    print(f"wrote {path}: {len(out)} tensors; diffusers took {UNET_LAYERS} U-Net and "
          f"{TE_LAYERS} text-encoder LoRA layers from each file")


if __name__ == "__main__":
    main()
