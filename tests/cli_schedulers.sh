#!/usr/bin/env bash
# `lorahost schedulers` end to end: listing, a schedule by A1111 name, the
# model's own scheduler_config.json, and exit status plus a one-line message
# for each kind of bad input. Usage: cli_schedulers.sh BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
lh="$1/bin/lorahost"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/model/scheduler"
cat > "$work/model/scheduler/scheduler_config.json" <<'JSON'
{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
 "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000,
 "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}
JSON
check list 0 "Sampler names (A1111 / ComfyUI):" -- "$lh" schedulers
check list_aliases 0 "aliases: \"Euler a\"" -- "$lh" schedulers
check a1111 0 "scheduler DPM++ 2M Karras (plugin dpmsolver_multistep), 4 steps" -- \
  "$lh" schedulers "DPM++ 2M Karras" --steps 4
check karras_sigma 0 "3.16861105" -- "$lh" schedulers "DPM++ 2M Karras" --steps 4 \
  --model "$work/model"
check model_default 0 "scheduler ddim (plugin ddim), 4 steps" -- \
  "$lh" schedulers --model "$work/model" --steps 4
check model_offset 0 "751.000000" -- "$lh" schedulers --model "$work/model" --steps 4
check set_key 0 "999.000000" -- "$lh" schedulers ddim --steps 4 --set timestep_spacing=trailing
check set_section 0 "999.000000" -- "$lh" schedulers ddim --steps 4 \
  --set scheduler.timestep_spacing=trailing
check json 0 '"plugin": "euler_ancestral"' -- "$lh" schedulers "Euler a" --steps 3 --json
check unknown_name 1 "unknown scheduler 'Euler b'" -- "$lh" schedulers "Euler b" --steps 4
check unknown_key 1 "unknown key 'etta' for plugin 'ddim'; did you mean 'eta'?" -- \
  "$lh" schedulers ddim --steps 4 --set etta=1
check steps_zero 1 "steps must be at least 1, got 0" -- "$lh" schedulers ddim --steps 0
check steps_huge 1 "exceed what the schedule allows" -- "$lh" schedulers ddim --steps 5000
check betas 1 "beta_end" -- "$lh" schedulers euler --set beta_start=0.1 --set beta_end=0.01
check schedule 1 "beta_schedule: unknown value 'cosine'" -- \
  "$lh" schedulers lms --set beta_schedule=cosine
check steps_text 2 "--steps: expected an integer, got 'ten'" -- "$lh" schedulers ddim --steps ten
check missing_model 1 "scheduler_config.json: cannot open" -- \
  "$lh" schedulers --model "$work/nope" --steps 4
echo "cli schedulers: $pass passed, 0 failed"
