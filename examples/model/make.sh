#!/usr/bin/env bash
# How examples/model/shapes-tiny (the embedded default model) and
# examples/model/striped.safetensors (its style adapter) were made, with
# lorahost alone: synthetic shapes datasets, a random pixel-space model,
# full-parameter training of its U-Net, then a LoRA on the striped set.
# Usage: bash examples/model/make.sh BUILD_DIR [WORK_DIR]
# (BUILD_DIR holds bin/lorahost; WORK_DIR defaults to /tmp/lorahost-model).
# Deterministic on one machine; the shipped files record the commands in
# their metadata. Takes tens of minutes on a 2-core CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lh="$1/bin/lorahost"
work="${2:-/tmp/lorahost-model}"
STEPS="${LH_BASE_STEPS:-6000}"
STYLE_STEPS="${LH_STYLE_STEPS:-600}"
mkdir -p "$work"
cd "$work"

# 1. data: plain shapes to learn from, the same scenes striped for the style
"$lh" dataset shapes plain --count 4000 --size 32 --seed 1
"$lh" dataset import plain plain.h5 --resolution 32 --center-crop
"$lh" dataset shapes striped --count 800 --size 32 --style striped --seed 2
"$lh" dataset import striped striped.h5 --resolution 32 --center-crop

# 2. a random pixel-space model: U-Net on 32x32 RGB, tiny CLIP text encoder
rm -rf init
"$lh" model init --unet-config "$here/unet_config.json" \
  --text-encoder-config "$here/text_encoder_config.json" --seed 0 --dtype f32 init

# 3. the U-Net, every weight, on the plain set (the text encoder stays as
#    initialised); one caption in ten dropped, for classifier-free guidance
"$lh" train --model init --dataset plain.h5 --output base --quiet \
  --set train.full_parameter=true --set train.steps="$STEPS" --set train.batch_size=16 \
  --set train.learning_rate=5e-4 --set train.lr_scheduler=cosine \
  --set train.lr_warmup_steps=200 --set train.seed=0 --set train.save_every=500 \
  --set train.max_grad_norm=1 --set train.caption_dropout=0.1 --set train.keep_checkpoints=20
rm -rf shapes-tiny && cp -r init shapes-tiny && rm -rf shapes-tiny/unet && cp -r base/unet shapes-tiny/unet

# 4. the style: a LoRA on the striped set, on the trained model
"$lh" train --model shapes-tiny --dataset striped.h5 --output style \
  --set train.output_name=striped --set train.steps="$STYLE_STEPS" --set train.batch_size=16 \
  --set train.learning_rate=1e-3 --set train.rank=8 --set train.alpha=8 \
  --set "train.target_modules=to_q,to_k,to_v,to_out.0,conv1,conv2" --set train.seed=0 \
  --set train.save_every=0

# 5. ship: F16 weights, the adapter
rm -rf "$here/shapes-tiny" && cp -r shapes-tiny "$here/shapes-tiny"
"$lh" model convert --dtype f16 "$here/shapes-tiny"
cp style/striped.safetensors "$here/striped.safetensors"
echo "make.sh: $here/shapes-tiny and $here/striped.safetensors"
