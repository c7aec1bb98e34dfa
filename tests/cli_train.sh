#!/usr/bin/env bash
# `lorahost train` end to end on the tiny SD 1.x model: a dataset imported
# from the fixture images, a run that writes checkpoints, the loss curve and
# an adapter that `lorahost adapters --strict` and `generate --lora` load;
# a run killed with SIGKILL and resumed (twice) that ends bit for bit where
# the uninterrupted run ends (checkpoint and adapter files identical); a
# corrupt newest checkpoint falling back to the previous one; PEFT export;
# fp16 with loss scaling; text-encoder training; and a clear message and
# exit status for bad input.
# Usage: cli_train.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
model="$src/tests/fixtures/models/sd1_tiny"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
same() { # same NAME FILE_A FILE_B
  if ! cmp -s "$2" "$3"; then echo "FAIL $1: $2 and $3 differ"; exit 1; fi
  pass=$((pass + 1))
}

check import 0 "3 images" -- "$lh" dataset import "$src/tests/fixtures/datasets/images" data.h5 \
  --resolution 32 --center-crop
cat > train.ini <<EOF
[model]
path = $model
[backend]
threads = 1
[train]
dataset = data.h5
steps = 12
batch_size = 2
gradient_accumulation_steps = 2
learning_rate = 1e-3
lr_scheduler = cosine
lr_warmup_steps = 2
rank = 4
alpha = 2
seed = 5
save_every = 4
keep_checkpoints = 2
snr_gamma = 5
noise_offset = 0.05
EOF

# ---- an uninterrupted run ----
check run 0 "done: a/lora.safetensors (kohya form)" -- "$lh" train --config train.ini --output a
for f in a/lora.safetensors a/loss.svg a/checkpoints/checkpoint-00000012.safetensors \
         a/checkpoints/checkpoint-00000008.safetensors a/checkpoints/checkpoints.json; do
  [[ -s $f ]] || { echo "FAIL run: $f missing"; exit 1; }
done
[[ ! -e a/checkpoints/checkpoint-00000004.safetensors ]] || { echo "FAIL keep: step 4 kept"; exit 1; }
pass=$((pass + 1))
check loads 0 "tensors: 144 of 144 used, 0 unmatched" -- "$lh" adapters --strict --model "$model" \
  a/lora.safetensors
check generate 0 "g.png" -- "$lh" generate --model "$model" --width 32 --height 32 --steps 2 \
  --threads 1 --prompt "a cat" --lora a/lora.safetensors -o g.png

# ---- killed (SIGKILL) and resumed until done: the same files ----
kills=0
for attempt in 1 2 3; do
  "$lh" train --config train.ini --output b $([[ $attempt -gt 1 ]] && echo --resume) --quiet &
  pid=$!
  # kill once a checkpoint newer than the last one seen exists (or the run ends)
  seen=$(ls b/checkpoints/checkpoint-*.safetensors 2>/dev/null | tail -1 || true)
  for _ in $(seq 1 400); do
    now=$(ls b/checkpoints/checkpoint-*.safetensors 2>/dev/null | tail -1 || true)
    [[ -n $now && $now != "$seen" ]] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.01
  done
  if [[ $attempt -lt 3 ]] && kill -9 $pid 2>/dev/null; then kills=$((kills + 1)); fi
  wait $pid 2>/dev/null || true
done
[[ $kills -ge 1 ]] || { echo "FAIL kill: the run was never interrupted"; exit 1; }
check resume_done 0 "" -- "$lh" train --config train.ini --output b --resume --quiet
same resume_ckpt a/checkpoints/checkpoint-00000012.safetensors \
  b/checkpoints/checkpoint-00000012.safetensors
same resume_adapter a/lora.safetensors b/lora.safetensors

# ---- a corrupt newest checkpoint: the previous one, with a message ----
cp -r a c
printf 'garbage' | dd of=c/checkpoints/checkpoint-00000012.safetensors bs=1 seek=200 \
  conv=notrunc 2>/dev/null
check fallback 0 "checkpoint-00000012.safetensors" -- "$lh" train --config train.ini --output c \
  --resume
same fallback_result a/lora.safetensors c/lora.safetensors

# ---- other settings ----
check peft 0 "(PEFT form)" -- "$lh" train --config train.ini --output p --set train.steps=2 \
  --set train.save_format=peft
check peft_loads 0 "peft" -- "$lh" adapters --strict --model "$model" p/lora.safetensors
check loha 0 "loha/linear 48" -- bash -c "\"$lh\" train --config train.ini --output deep/dir/l \
  --set train.steps=2 --set train.adapter=loha && \
  \"$lh\" adapters --strict --model \"$model\" deep/dir/l/lora.safetensors"
check loha_peft 1 "which PEFT form cannot hold" -- "$lh" train --config train.ini --output lp \
  --set train.steps=1 --set train.adapter=loha --set train.save_format=peft
check fp16 0 "done" -- "$lh" train --config train.ini --output h --set train.steps=3 \
  --set train.mixed_precision=fp16 --set train.gradient_checkpointing=true
check te 0 "12 text encoder" -- bash -c "\"$lh\" train --config train.ini --output t \
  --set train.steps=2 --set train.train_text_encoder=true && \
  \"$lh\" adapters --strict --model \"$model\" t/lora.safetensors"

check samples 0 "step 2: samples" -- "$lh" train --config train.ini --output s --set train.steps=2 \
  --set train.sample_every=2 --set "train.sample_prompts=a cat | a red dog, small" \
  --set train.sample_steps=2
for f in s/samples/step-00000002-0.png s/samples/step-00000002-1.png; do
  [[ -s $f ]] || { echo "FAIL samples: $f missing"; exit 1; }
done

check full 0 "f/unet (a diffusers U-Net folder)" -- "$lh" train --config train.ini --output f \
  --set train.steps=3 --set train.full_parameter=true
cp -r "$model" m2 && rm -rf m2/unet && cp -r f/unet m2/unet
check full_loads 0 "full.png" -- "$lh" generate --model m2 --width 32 --height 32 --steps 2 \
  --threads 1 --prompt "a cat" -o full.png
check full_fp16 1 "full_parameter trains the U-Net's own float32 weights" -- "$lh" train \
  --config train.ini --output x --set train.full_parameter=true --set train.mixed_precision=fp16

# ---- bad input ----
check no_dataset 1 "nope.h5" -- "$lh" train --config train.ini --output x --dataset nope.h5
check bad_value 1 "train.rank" -- "$lh" train --config train.ini --output x --set train.rank=0
check bad_target 1 "no U-Net layer matches the targets (to_nothing)" -- "$lh" train \
  --config train.ini --output x --set train.target_modules=to_nothing
check other_settings 1 "other settings" -- "$lh" train --config train.ini --output a --resume \
  --set train.rank=8
check usage 2 "unknown option" -- "$lh" train --config train.ini --bogus
check bad_device 2 "unknown device 'tpu'" -- "$lh" train --config train.ini --output x --device tpu
# no GPU here (CI): the cuda backend refuses, naming why (module missing, or no device)
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  check cuda 1 "train: device cuda: cuda backend:" -- "$lh" train --config train.ini --output x \
    --device cuda
fi
check no_model 2 "give the model" -- "$lh" train --dataset data.h5 --output x
echo "cli_train: $pass checks passed (killed $kills times)"
