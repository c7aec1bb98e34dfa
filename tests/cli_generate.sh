#!/usr/bin/env bash
# `lorahost generate` end to end on the tiny SD 1.x model: txt2img, batches,
# PNG parameters, --init-noise, --save-latents, img2img, --config defaults,
# single-file checkpoints (SD 1.x and 2.x: the same PNG as their directories),
# and exit status plus a one-line message for each kind of bad input.
# Usage: cli_generate.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
model="$src/tests/fixtures/models/sd1_tiny"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
has() { # has NAME FILE TEXT: FILE (binary) contains TEXT
  if ! grep -aqF -- "$3" "$2"; then echo "FAIL $1: $2 lacks '$3'"; exit 1; fi
  pass=$((pass + 1))
}
# a safetensors file with one F32 tensor `noise` of shape $2 (zeros, $3 floats)
noise_file() { tensor_file "$1" "$2" "$3" noise; }
# the same with the tensor named $4
tensor_file() {
  local hdr="{\"$4\":{\"dtype\":\"F32\",\"shape\":[$2],\"data_offsets\":[0,$(($3 * 4))]}}"
  while (( ${#hdr} % 8 )); do hdr+=" "; done
  local n=${#hdr}
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((n & 255)) $((n >> 8 & 255)) \
    $((n >> 16 & 255)) $((n >> 24 & 255)))" > "$1"
  printf '%s' "$hdr" >> "$1"
  head -c $(($3 * 4)) /dev/zero >> "$1"
}
gen=("$lh" generate --model "$model" --width 32 --height 32 --steps 3 --threads 1)

check txt2img 0 "out.png" -- "${gen[@]}" --prompt "a red house" --negative-prompt "blurry" --seed 42
has params out.png $'a red house\nNegative prompt: blurry\nSteps: 3, Sampler: PNDMScheduler, CFG scale: 7.5, Seed: 42, Size: 32x32, Model: sd1_tiny'
check progress 0 "step 3/3" -- "${gen[@]}" --prompt "a red house" --seed 42 -o p.png --scheduler ddim
check quiet 0 "q.png" -- "${gen[@]}" --prompt x --quiet -o q.png
check batch 0 "b-1.png" -- "${gen[@]}" --prompt "a cat" --batch-size 2 --scheduler "Euler a" -o b.png
has batch_params b-1.png "Sampler: Euler a, CFG scale: 7.5"
[[ -f b.png ]] && pass=$((pass + 1))
check karras 0 "k.png" -- "${gen[@]}" --prompt x --scheduler euler --set use_karras_sigmas=true -o k.png
# fp16 with the U-Net's weights held in f16 (auto) or float32: the same image, byte for byte
check f16_half_weights 0 "h.png" -- "${gen[@]}" --prompt x --seed 3 --set model.dtype=f16 -o h.png
check f16_f32_weights 0 "w.png" -- "${gen[@]}" --prompt x --seed 3 --set model.dtype=f16 \
  --set model.weight_storage=f32 -o w.png
cmp -s h.png w.png || { echo "FAIL weight_storage: f16 and f32 weight storage differ"; exit 1; }
pass=$((pass + 1))
noise_file n.safetensors "1,4,4,4" 64
check init_noise 0 "n.png" -- "${gen[@]}" --prompt x --init-noise n.safetensors -o n.png \
  --save-latents lat.safetensors --scheduler ddim
check latents_file 0 "latents" -- "$lh" inspect lat.safetensors
check img2img 0 "i.png" -- "$lh" generate --model "$model" --steps 4 --threads 1 --prompt "a cat" \
  --init-image out.png --strength 0.6 -o i.png
has img2img_params i.png "Denoising strength: 0.6"
cat > cfg.ini <<'INI'
[generate]
prompt = a boat
steps = 2
width = 64
height = 64
seed = 5
output = c.png
[plugins]
scheduler = ddim
INI
check config 0 "c.png" -- "$lh" generate --model "$model" --config cfg.ini --threads 1
has config_params c.png "Steps: 2, Sampler: ddim, CFG scale: 7.5, Seed: 5, Size: 64x64"
check config_set 0 "c.png" -- "$lh" generate --model "$model" --config cfg.ini --threads 1 \
  --set generate.steps=1
has config_set_params c.png "Steps: 1,"

# single files: the tiny models need their directories' tokenizer and configs
sf=("$lh" generate --model "$src/tests/fixtures/models/sd1_tiny.safetensors" --width 32 --height 32
    --steps 3 --threads 1)
check sf_txt2img 0 "sf.png" -- "${sf[@]}" --tokenizer "$model/tokenizer" --model-config "$model" \
  --prompt "a red house" --negative-prompt "blurry" --seed 42 -o sf.png
cmp -s out.png sf.png && pass=$((pass + 1)) || { echo "FAIL sf_same: sf.png differs from out.png"; exit 1; }
sd2="$src/tests/fixtures/models/sd2_tiny"
gen2=(generate --width 32 --height 32 --steps 3 --threads 1 --prompt "a cat" --seed 3
      --tokenizer "$sd2/tokenizer" --model-config "$sd2" --model "$sd2.safetensors")
check sd2_guess 0 "assuming epsilon" -- "$lh" "${gen2[@]}" -o e.png
check sd2_v 0 "v.png" -- "$lh" "${gen2[@]}" --set scheduler.prediction_type=v_prediction -o v.png
if "$lh" "${gen2[@]}" --set scheduler.prediction_type=v_prediction -o v.png 2>&1 | grep -q assuming; then
  echo "FAIL sd2_v_quiet: the epsilon notice after --set prediction_type"; exit 1; fi
"$lh" generate --model "$sd2" --width 32 --height 32 --steps 3 --threads 1 --prompt "a cat" \
  --seed 3 -o d2.png --quiet >/dev/null
cmp -s v.png d2.png && pass=$((pass + 1)) || { echo "FAIL sd2_same: v.png differs from d2.png"; exit 1; }
cmp -s v.png e.png && { echo "FAIL sd2_pred: v_prediction changed nothing"; exit 1; }
pass=$((pass + 1))
check sf_inspect 0 "SD 2.x (U-Net, VAE, text encoder)" -- "$lh" inspect "$sd2.safetensors"

# bad input
mkdir -p novae && for c in unet text_encoder tokenizer scheduler model_index.json; do
  ln -s "$model/$c" "novae/$c"; done
check missing_component 1 "component 'vae' is missing" -- "$lh" generate --model novae --prompt x
check no_model 2 "no model" -- "$lh" generate --prompt x
check not_a_model 1 "no such file or directory" -- "$lh" generate --model nope --prompt x
check component_file 1 "diffusers names" -- \
  "$lh" generate --model "$model/unet/diffusion_pytorch_model.safetensors" --prompt x
tensor_file xl.safetensors 1 1 conditioner.embedders.0.transformer.text_model.x
check sdxl_file 1 "an SDXL checkpoint" -- "$lh" generate --model xl.safetensors --prompt x
check big_vocab 1 "vocab.json has 49408 tokens but the text encoder's vocab_size is 1000" -- \
  "${sf[@]}" --model-config "$model" --prompt x
check no_tokenizer 1 "tokenizer nodir has no vocab.json" -- \
  "${sf[@]}" --model-config "$model" --tokenizer nodir --prompt x
check no_model_config 1 "--model-config DIR" -- "${sf[@]}" --tokenizer "$model/tokenizer" --prompt x
check tokenizer_dir 2 "--tokenizer is for single-file checkpoints" -- \
  "${gen[@]}" --tokenizer "$model/tokenizer" --prompt x
check width 1 "width must be a multiple of 8 in 8..8192, got 36" -- "${gen[@]}" --prompt x --width 36
check height_factor 1 "height 40: this model needs a multiple of 16" -- "${gen[@]}" --prompt x --height 40
check steps_zero 1 "steps must be in 1..1000, got 0" -- "${gen[@]}" --prompt x --steps 0
check steps_huge 1 "steps must be in 1..1000, got 1001" -- "${gen[@]}" --prompt x --steps 1001
check steps_text 2 "--steps: expected an integer, got 'ten'" -- "${gen[@]}" --prompt x --steps ten
check utf8 1 "prompt is not valid UTF-8 (byte 4)" -- "${gen[@]}" --prompt $'cat \xff'
check cfg_nan 2 "--cfg-scale: expected a number, got 'nan'" -- "${gen[@]}" --prompt x --cfg-scale nan
echo "not a png" > bad.png
check bad_image 1 "--init-image: bad.png: not a PNG file" -- "${gen[@]}" --prompt x --init-image bad.png
check missing_image 1 "--init-image: none.png: cannot open" -- "${gen[@]}" --prompt x --init-image none.png
check image_size 1 "is 32x32 but --width/--height ask for 64x64" -- \
  "$lh" generate --model "$model" --prompt x --init-image out.png --width 64 --height 64
check strength 1 "leaves no step to run" -- "${gen[@]}" --prompt x --init-image out.png --strength 0.1 --scheduler ddim
noise_file n2.safetensors "1,4,8,8" 256
check noise_shape 1 "tensor 'noise' has shape [1, 4, 8, 8], expected [1, 4, 4, 4]" -- \
  "${gen[@]}" --prompt x --init-noise n2.safetensors
check noise_batch 1 "expected [2, 4, 4, 4]" -- "${gen[@]}" --prompt x --init-noise n.safetensors --batch-size 2
# no GPU here (CI): the cuda backend refuses, naming why (module missing, or no device)
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  check cuda 1 "--device cuda: cuda backend:" -- "${gen[@]}" --prompt x --device cuda
fi
check bad_device 2 "unknown device 'tpu'" -- "${gen[@]}" --prompt x --device tpu
if [[ -f "$2/lib/lorahost/backends/lh_backend_cuda.so" ]]; then
  check bad_attention 1 "LORAHOST_CUDA_ATTENTION must be auto, flash or gemm, not: fast" -- \
    env LORAHOST_CUDA_ATTENTION=fast "${gen[@]}" --prompt x --device cuda
  check bad_graphs 1 "LORAHOST_CUDA_GRAPHS must be 0 or 1, not: off" -- \
    env LORAHOST_CUDA_GRAPHS=off "${gen[@]}" --prompt x --device cuda
fi
check bad_dtype 1 "model.dtype" -- "${gen[@]}" --prompt x --set model.dtype=f8
check bad_vae_dtype 1 "model.vae_dtype" -- "${gen[@]}" --prompt x --set model.vae_dtype=f8
check bad_weight_storage 1 "model.weight_storage" -- "${gen[@]}" --prompt x --set model.weight_storage=f16
# [model] dtype=f16: the U-Net in half precision, close to the float32 image
check dtype_f16 0 "" -- "${gen[@]}" --prompt "a red square" --seed 3 --output f32.png
check dtype_f16 0 "" -- "${gen[@]}" --prompt "a red square" --seed 3 --output f16.png --set model.dtype=f16
if cmp -s f32.png f16.png; then echo "FAIL dtype_f16: f16 gave the float32 image bit for bit"; exit 1; fi
check bad_cuda_index 1 "expected cuda or cuda:N" -- "${gen[@]}" --prompt x --device cuda:x
# a module built against another backend table is refused, not misread
check stale_module 1 "was built for backend ABI 1.8" -- \
  env LORAHOST_BACKEND_PATH="$2/tests/stale_backend" "${gen[@]}" --prompt x --device cuda
check unknown_sched 1 "unknown scheduler 'Euler b'" -- "${gen[@]}" --prompt x --scheduler "Euler b"
check unknown_key 1 "unknown key 'etta' for plugin 'ddim'" -- "${gen[@]}" --prompt x --scheduler ddim --set etta=1
check unknown_opt 2 "unknown option '--colour'" -- "${gen[@]}" --prompt x --colour red
check bad_output 1 "cannot create" -- "${gen[@]}" --prompt x -o nodir/x.png
[[ ! -e nodir ]] && pass=$((pass + 1))
echo "cli generate: $pass passed, 0 failed"
