#!/usr/bin/env bash
# `lorahost generate` with adapters on the tiny SD 1.x model: --lora
# PATH[:SCALE] (repeatable), <lora:NAME:SCALE> prompt tags resolved through
# [adapters] dirs, --lora-mode runtime|merged, the load
# report, the prompt tags kept in the PNG parameters and giving the same
# latents as the flags, and exit status plus a
# one-line message for each kind of bad input.
# Usage: cli_adapters.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
model="$src/tests/fixtures/models/sd1_tiny"
ad="$src/tests/fixtures/adapters"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
has() { # has NAME FILE TEXT: FILE (binary) contains TEXT
  if ! grep -aqF -- "$3" "$2"; then echo "FAIL $1: $2 lacks '$3'"; exit 1; fi
  pass=$((pass + 1))
}
# the latents of a --save-latents file: its last 256 bytes ([1, 4, 4, 4] F32;
# the header before them holds the prompt)
latents() { tail -c 256 "$1" | od -An -tx1 | tr -d ' \n'; }
gen=("$lh" generate --model "$model" --width 32 --height 32 --steps 3 --threads 1 --seed 7
     --scheduler ddim)

check base 0 "base.png" -- "${gen[@]}" --prompt "a red house" -o base.png --save-latents base.st
check report 0 "adapter sd1_A_kohya (kohya; alpha: .alpha tensors): " -- \
  "${gen[@]}" --prompt "a red house" --lora "$ad/sd1_A_kohya.safetensors:0.7" \
  --lora "$ad/sd1_B_peft.safetensors:0.4" -o ab.png --save-latents ab.st
check report_kinds 0 "lora/conv" -- \
  "${gen[@]}" --prompt "a red house" --lora "$ad/sd1_A_kohya.safetensors:0.7" -o a.png
if [[ "$(latents base.st)" == "$(latents ab.st)" ]]; then
  echo "FAIL adapters_change_the_image"; exit 1
fi
pass=$((pass + 1))
check merged 0 "ab-merged.png" -- \
  "${gen[@]}" --prompt "a red house" --lora "$ad/sd1_A_kohya.safetensors:0.7" \
  --lora "$ad/sd1_B_peft.safetensors:0.4" --lora-mode merged -o ab-merged.png
cat > cfg.ini <<INI
[adapters]
dirs = $work/none, $ad
policy = strict
INI
check tags 0 "adapter sd1_B_peft (peft" -- \
  "${gen[@]}" --config cfg.ini --prompt "a red house <lora:sd1_A_kohya:0.7> <lora:sd1_B_peft:0.4>" \
  -o tags.png --save-latents tags.st
has tags_in_params tags.png "a red house <lora:sd1_A_kohya:0.7> <lora:sd1_B_peft:0.4>"
if [[ "$(latents tags.st)" != "$(latents ab.st)" ]]; then
  echo "FAIL tags_equal_flags: <lora:> tags and --lora give different latents"; exit 1
fi
pass=$((pass + 1))

# bad input: status and a message naming what is wrong
check missing_file 1 "adapter 'nope.safetensors': no such file" -- \
  "${gen[@]}" --prompt x --lora nope.safetensors
check unknown_tag 1 "adapter 'nope': no such file here or in [adapters] dirs" -- \
  "${gen[@]}" --config cfg.ini --prompt "x <lora:nope:1>"
check no_dirs 1 "no [adapters] dirs configured" -- "${gen[@]}" --prompt "x <lora:nope>"
check bad_tag 2 "is not a multiplier" -- "${gen[@]}" --prompt "x <lora:a:big>"
check open_tag 2 "has no closing '>'" -- "${gen[@]}" --prompt "x <lora:a:0.5"
check bad_mode 2 "--lora-mode 'fast': expected runtime or merged" -- \
  "${gen[@]}" --prompt x --lora "$ad/sd1_A_kohya.safetensors" --lora-mode fast
check bad_policy 2 "--lora-policy 'maybe'" -- "${gen[@]}" --prompt x --lora-policy maybe
check other_model 1 "for base weight" -- \
  "${gen[@]}" --prompt x --lora "$ad/sd2_C_kohya.safetensors"
check not_adapter 1 "matches a layer" -- \
  "${gen[@]}" --prompt x --lora "$src/tests/fixtures/models/sd1_tiny.safetensors"
check traversal 1 "no such file" -- "${gen[@]}" --config cfg.ini --prompt "x <lora:../adapters/sd1_B_peft>"
# `lorahost adapters`: the load report without generating
check report_cmd 0 "kinds: loha/linear 1, lora/conv 3" -- \
  "$lh" adapters --model "$model" "$ad/sd1_lycoris.safetensors" "$ad/sd1_B_olddiff.safetensors"
check report_old 0 "sd1_B_olddiff.safetensors: old diffusers keys; alpha: none (alpha = rank)" -- \
  "$lh" adapters --model "$model" "$ad/sd1_B_olddiff.safetensors"
check report_json 0 '"alpha_source":"PEFT config"' -- \
  "$lh" adapters --model "$model" --json "$ad/sd1_A_peft.safetensors"
check report_bad 1 '"error":' -- "$lh" adapters --model "$model" --json "$ad/sd2_C_kohya.safetensors"
check report_usage 2 "needs --model PATH and at least one adapter FILE" -- "$lh" adapters --model "$model"
printf 'x' > notlora.safetensors
check report_garbage 1 "notlora.safetensors" -- "$lh" adapters --model "$model" notlora.safetensors
echo "cli_adapters: $pass checks passed"
