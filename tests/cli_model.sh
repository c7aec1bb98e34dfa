#!/usr/bin/env bash
# `lorahost model init` end to end: the example tiny pixel-space model is
# written, read back (model info) and generates a 32x32 PNG; same seed, same
# files; exit status plus a one-line message for each kind of bad input.
# Usage: cli_model.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
U="$src/examples/model/unet_config.json"
T="$src/examples/model/text_encoder_config.json"

check init 0 "pixel-space model, seed 3, F16 weights" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --seed 3 --dtype f16 "$work/m"
check init_again 0 "seed 3" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --seed 3 --dtype f16 "$work/m2"
for f in unet/diffusion_pytorch_model.safetensors text_encoder/model.safetensors model_index.json; do
  cmp "$work/m/$f" "$work/m2/$f" || { echo "FAIL same seed, different $f"; exit 1; }
done
pass=$((pass + 1))
check info 0 "SD 1.x (pixel space)" -- "$lh" model info "$work/m"
check info_vae 0 "none (the U-Net denoises RGB)" -- "$lh" model info "$work/m"
check generate 0 "" -- "$lh" generate --model "$work/m" --width 32 --height 32 --steps 2 \
  --prompt "a red circle" --seed 1 --output "$work/out.png"
[[ -s "$work/out.png" ]] || { echo "FAIL generate wrote no PNG"; exit 1; }
check generate_size 1 "multiple of 4 (the U-Net's factor" -- "$lh" generate --model "$work/m" \
  --width 30 --height 32 --steps 1 --prompt x --output "$work/bad.png"

# training on a plain imported dataset (images read directly, no latents);
# caching latents is refused
check import 0 "3 images" -- "$lh" dataset import "$src/tests/fixtures/datasets/images" \
  "$work/data.h5" --resolution 32 --center-crop --quiet
check cache_refused 1 "is pixel-space (no VAE): there are no latents" -- \
  "$lh" dataset cache "$work/data.h5" --model "$work/m" --quiet
cat > "$work/train.ini" <<INI
[model]
path = $work/m
[backend]
threads = 1
[train]
dataset = $work/data.h5
steps = 2
batch_size = 2
learning_rate = 1e-3
rank = 4
seed = 5
INI
check train 0 "lora.safetensors" -- "$lh" train --config "$work/train.ini" --output "$work/t"
# the same run with malloc'd memory filled differently: the same adapter (a
# read past an image's 3 channels once made pixel-space training depend on it)
MALLOC_PERTURB_=165 "$lh" train --config "$work/train.ini" --output "$work/t2" --quiet
if ! cmp -s "$work/t/lora.safetensors" "$work/t2/lora.safetensors"; then
  echo "FAIL perturb: pixel-space training depends on uninitialised memory"; exit 1
fi
pass=$((pass + 1))
check train_generate 0 "" -- "$lh" generate --model "$work/m" --lora "$work/t/lora.safetensors" \
  --width 32 --height 32 --steps 2 --prompt "a red circle" --output "$work/lora.png"

# errors
check no_unet 2 "--unet-config is required" -- \
  "$lh" model init --text-encoder-config "$T" "$work/e1"
check no_out 2 "OUT_DIR is required" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T"
check missing_config 1 "$work/nope.json" -- \
  "$lh" model init --unet-config "$work/nope.json" --text-encoder-config "$T" "$work/e2"
printf '{"in_channels": 3,\n' > "$work/bad.json"
check bad_json 1 "$work/bad.json:" -- \
  "$lh" model init --unet-config "$work/bad.json" --text-encoder-config "$T" "$work/e3"
sed 's/"in_channels": 3/"in_channels": 4/' "$U" > "$work/latent.json"
check latent_unet 1 "in_channels 4, out_channels 3: model init makes pixel-space models" -- \
  "$lh" model init --unet-config "$work/latent.json" --text-encoder-config "$T" "$work/e4"
sed 's/"freq_shift": 0/"freq_shift": 0, "addition_embed_type": "text_time"/' "$U" > "$work/xl.json"
check unsupported_field 1 "addition_embed_type" -- \
  "$lh" model init --unet-config "$work/xl.json" --text-encoder-config "$T" "$work/e5"
sed 's/"hidden_size": 32/"hidden_size": 16/' "$T" > "$work/te32.json"
check width_mismatch 1 "does not match cross_attention_dim 32" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$work/te32.json" "$work/e6"
check exists 1 "already exists" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" "$work/m"
check bad_dtype 2 "--dtype takes f32 or f16" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --dtype bf8 "$work/e7"
check bad_seed 2 "--seed takes a non-negative integer" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --seed -1 "$work/e8"
check bad_option 2 "unknown option '--vae'" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --vae x "$work/e9"
check no_tokenizer 1 "$work/notok" -- \
  "$lh" model init --unet-config "$U" --text-encoder-config "$T" --tokenizer "$work/notok" "$work/e10"
for e in e1 e2 e3 e4 e5 e6 e7 e8 e9 e10; do
  [[ ! -e "$work/$e" ]] || { echo "FAIL $e written after an error"; exit 1; }
done
if ls "$work" | grep -q '\.tmp\.'; then echo "FAIL temporary directory left"; exit 1; fi
echo "cli_model: $pass checks passed"
