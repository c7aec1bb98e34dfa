#!/usr/bin/env bash
# `lorahost generate` with safety checkers on the tiny SD 1.x model: the
# prompt filter refuses before any compute (status 3, naming the list and
# phrase), a clean prompt writes the PNG with A1111's "parameters" and the
# "lorahost_safety" JSON chunk, a checker that cannot be created stops
# start-up naming it and the file, and an image checker's blur, black and
# reject are applied and recorded (tests/plugins/flag_safety.c).
# Usage: cli_safety.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
lh="$2/bin/lorahost"
flagdir="$2/tests/plugins/safety"
model="$src/tests/fixtures/models/sd1_tiny"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
has() { # has NAME FILE TEXT: FILE (binary) contains TEXT
  if ! grep -aqF -- "$3" "$2"; then echo "FAIL $1: $2 lacks '$3'"; exit 1; fi
  pass=$((pass + 1))
}
cat > safety.ini <<INI
[plugins]
safety = prompt_filter
[safety_prompt_filter]
lists = $src/examples/safety/en.txt:reject:en, $src/examples/safety/zh.txt:reject:zh
INI
gen=("$lh" generate --model "$model" --width 32 --height 32 --steps 2 --threads 1 --seed 7
     --scheduler ddim --config safety.ini)

# refused before any compute: no model line, no step, no file
check reject_en 3 "prompt refused by safety checker 'safety_prompt_filter': list 'en' matched 'forbidden example'" -- \
  "${gen[@]}" --prompt "a FORBIDDEN   example house" -o no.png
out="$("${gen[@]}" --prompt "a ｆｏｒｂｉｄｄｅｎ　ｅｘａｍｐｌｅ" -o no.png 2>&1)" && { echo "FAIL full width passed"; exit 1; }
if grep -qE "model|step" <<<"$out" || [[ -e no.png ]]; then
  echo "FAIL reject_before_compute: $out"; exit 1
fi
pass=$((pass + 1))
check reject_zh 3 "list 'zh' matched '违禁示例'" -- "${gen[@]}" --prompt "一座 违 禁 示 例 房子" -o no.png
[[ ! -e no.png ]] || { echo "FAIL a refused prompt wrote a file"; exit 1; }

# a clean prompt: the PNG with both chunks, the verdict on standard error
check clean 0 "safety clean.png: safety_prompt_filter prompt: pass (en 0.00, zh 0.00)" -- \
  "${gen[@]}" --prompt "a red house" -o clean.png
has clean_params clean.png "parameters"
has clean_params_text clean.png "a red house"
has clean_json clean.png '{"flagged":false,"action":"pass","checkers":[{"checker":"safety_prompt_filter","stage":"prompt","flagged":false,"action":"pass","scores":{"en":0.0,"zh":0.0},"reason":""}]}'
has clean_key clean.png "lorahost_safety"

# none (the default) runs nothing and writes no safety chunk
check none 0 "none.png" -- "${gen[@]}" --set plugins.safety=none --prompt "forbidden example" -o none.png
if grep -aqF lorahost_safety none.png; then echo "FAIL none wrote a safety chunk"; exit 1; fi
pass=$((pass + 1))

# checkers that cannot be created stop start-up, naming checker and file
check missing_list 1 "safety checker 'safety_prompt_filter': list 'en': cannot open $work/nope.txt" -- \
  "${gen[@]}" --set "safety_prompt_filter.lists=$work/nope.txt:reject:en" --prompt x -o no.png
printf 'ok\nbad \xff line\n' > bad.txt
check bad_utf8 1 "bad.txt:2: not valid UTF-8" -- \
  "${gen[@]}" --set "safety_prompt_filter.lists=bad.txt:reject:bad" --prompt x -o no.png
check no_lists 1 "no phrase lists" -- "${gen[@]}" --set "safety_prompt_filter.lists=" --prompt x
check unknown_checker 1 "safety checker 'nope' ([plugins] safety) is not loaded" -- \
  "${gen[@]}" --set plugins.safety=prompt_filter,nope --prompt x
check unknown_key 1 "unknown key 'lsts' for plugin 'safety_prompt_filter'" -- \
  "${gen[@]}" --set safety_prompt_filter.lsts=x --prompt x
[[ ! -e no.png ]] || { echo "FAIL a failed start-up wrote a file"; exit 1; }

# image actions, after decode, in chain order
flag=("${gen[@]}" --plugin-dir "$flagdir" --set plugins.safety=prompt_filter,test_flag_all)
check pass_img 0 "test_flag_all image: pass, flagged (everything 0.75)" -- \
  "${flag[@]}" --set safety_test_flag_all.action=pass --prompt "a red house" -o pass.png
check blur 0 "safety blur.png: safety_prompt_filter prompt: pass (en 0.00, zh 0.00); test_flag_all image: blur, flagged (everything 0.75): image 0 of 32x32 flagged" -- \
  "${flag[@]}" --prompt "a red house" -o blur.png
has blur_json blur.png '"action":"blur","checkers":[{"checker":"safety_prompt_filter"'
has blur_json2 blur.png '{"checker":"test_flag_all","stage":"image","flagged":true,"action":"blur","scores":{"everything":0.75}'
if cmp -s pass.png blur.png; then echo "FAIL blur left the image as it was"; exit 1; fi
pass=$((pass + 1))
check black 0 "black.png" -- \
  "${flag[@]}" --set safety_test_flag_all.action=black --prompt "a red house" -o black.png
has black_json black.png '"flagged":true,"action":"black"'
check reject_img 3 "safety rej.png: rejected, not written: " -- \
  "${flag[@]}" --set safety_test_flag_all.action=reject --prompt "a red house" --batch-size 2 -o rej.png
[[ ! -e rej.png && ! -e rej-1.png ]] || { echo "FAIL a rejected image was written"; exit 1; }
pass=$((pass + 1))

# black is black: every decoded byte of the image data is zero (filter bytes included)
if command -v python3 >/dev/null; then
  python3 - black.png <<'PY' || { echo "FAIL black_pixels"; exit 1; }
import struct, sys, zlib
d = open(sys.argv[1], "rb").read()
i, idat = 8, b""
while i < len(d):
    n, t = struct.unpack(">I4s", d[i:i + 8])
    if t == b"IDAT":
        idat += d[i + 8:i + 8 + n]
    i += 12 + n
raw = zlib.decompress(idat)
sys.exit(0 if len(raw) == 32 * (1 + 32 * 3) and not any(raw) else 1)
PY
  pass=$((pass + 1))
fi
echo "cli_safety: $pass checks passed"
