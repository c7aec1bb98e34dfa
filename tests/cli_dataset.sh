#!/usr/bin/env bash
# `lorahost dataset import|info|cache` on the tiny fixtures
# (tests/fixtures/datasets, tests/fixtures/models/sd1_tiny): import in each
# crop mode, info in text and JSON, cache, and exit status plus a one-line
# message for each kind of bad input.
# Usage: cli_dataset.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
fx="$src/tests/fixtures/datasets"
model="$src/tests/fixtures/models/sd1_tiny"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

check import 0 "3 images (0 skipped, 1 without a caption)" -- "$lh" dataset import "$fx/images" c.h5 --resolution 24
check import_warns 0 "c.png: no caption file" -- "$lh" dataset import "$fx/images" c.h5 --resolution 24 --center-crop
check import_plain_progress 0 "import 3/3 c.png" -- "$lh" dataset import "$fx/images" c.h5 --resolution 24
ls "$work" | grep -q tmp && { echo "FAIL: temporary file left behind"; exit 1; }
check info 0 "items: 3" -- "$lh" dataset info c.h5
check info_sizes 0 "sizes (1): 24x24 (3)" -- "$lh" dataset info c.h5
check info_captions 0 "captions: 0 to 21 characters" -- "$lh" dataset info c.h5
check info_nocache 0 "latents: not cached" -- "$lh" dataset info c.h5
check info_json 0 '"count": 3' -- "$lh" dataset info c.h5 --json
"$lh" dataset info c.h5 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["version"]==1 and d["crop"]=="center" and d["latents"] is None, d'
pass=$((pass + 1))

check random 0 "3 images" -- "$lh" dataset import "$fx/images" r.h5 --resolution 24 --random-crop
check random_info 0 "crop: random (stored resized, uncropped" -- "$lh" dataset info r.h5
check random_sizes 0 "32x24 (1)" -- "$lh" dataset info r.h5
check buckets 0 "3 images" -- "$lh" dataset import "$fx/images" b.h5 --resolution 128 --buckets
check buckets_info 0 "192x64 (1)" -- "$lh" dataset info b.h5
check buckets_yes 0 "buckets: yes" -- "$lh" dataset info b.h5

check cache 0 "cached from $model" -- "$lh" dataset cache r.h5 --model "$model" --threads 1
check cache_info 0 "latents: cached from $model (scaling factor 0.18215, of the center crop)" -- "$lh" dataset info r.h5
check cache_text 0 "text embeddings: cached from $model ([77, 32] per item)" -- "$lh" dataset info r.h5

# bad input
check no_args 2 "usage" -- "$lh" dataset
check bad_sub 2 "unknown subcommand" -- "$lh" dataset frobnicate
check no_res 2 "--resolution" -- "$lh" dataset import "$fx/images" x.h5
check two_crops 2 "exclude each other" -- "$lh" dataset import "$fx/images" x.h5 --resolution 24 --random-crop --buckets
check bad_res 1 "multiple of 8" -- "$lh" dataset import "$fx/images" x.h5 --resolution 20
check bad_res_buckets 1 "multiple of 64" -- "$lh" dataset import "$fx/images" x.h5 --resolution 96 --buckets
check bad_image 1 "broken.png" -- "$lh" dataset import "$fx/bad" x.h5 --resolution 16
[[ -e x.h5 ]] && { echo "FAIL: x.h5 written after an error"; exit 1; }
check skip_bad 0 "1 images (1 skipped" -- "$lh" dataset import "$fx/bad" x.h5 --resolution 16 --skip-bad
check no_dir 1 "nodir" -- "$lh" dataset import nodir x.h5 --resolution 16
mkdir empty
check empty_dir 1 "no .png, .jpg or .jpeg images" -- "$lh" dataset import empty x.h5 --resolution 16
check info_missing 1 "missing.h5" -- "$lh" dataset info missing.h5
check info_not_h5 1 "not an HDF5 file" -- "$lh" dataset info "$fx/images/a.txt"
head -c 2000 c.h5 > cut.h5
check info_truncated 1 "cut.h5" -- "$lh" dataset info cut.h5
check cache_no_model 2 "--model" -- "$lh" dataset cache c.h5
check cache_bad_model 1 "nomodel" -- "$lh" dataset cache c.h5 --model nomodel
echo "cli_dataset: $pass checks passed"
