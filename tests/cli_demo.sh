#!/usr/bin/env bash
# `lorahost demo` end to end on the shipped embedded model and style adapter:
# images and contact sheet written, the unloaded adapter leaves no drift;
# exit status plus a one-line message for each kind of bad input.
# Usage: cli_demo.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
model="$src/examples/model/shapes-tiny"
lora="$src/examples/model/striped.safetensors"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

check demo 0 "bit-identical to the first image (no drift)" -- \
  "$lh" demo --model "$model" --lora "$lora" --out "$work/out" --steps 8 \
  --prompts "a red circle on a blue background|a white star on a green background"
for f in demo-0-base.png demo-0-style.png demo-1-base.png demo-1-style.png contact-sheet.png; do
  [[ -s "$work/out/$f" ]] || { echo "FAIL demo wrote no $f"; exit 1; }
done
pass=$((pass + 1))
check steps 2 "--steps must be 1..1000" -- "$lh" demo --steps 0 --out "$work/x"
check prompts 2 "--prompts gave no prompt" -- "$lh" demo --prompts "||" --out "$work/x"
check option 2 "--frobnicate: unknown option" -- "$lh" demo --frobnicate
check no_model 1 "$work/nomodel" -- "$lh" demo --model "$work/nomodel" --lora "$lora" \
  --out "$work/x" --steps 1
check no_lora 1 "$work/none.safetensors" -- "$lh" demo --model "$model" \
  --lora "$work/none.safetensors" --out "$work/x" --steps 1 --prompts "a red circle"
echo "cli_demo: $pass checks passed"
