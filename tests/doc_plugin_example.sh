#!/usr/bin/env bash
# Builds the scheduler plugin printed in docs/plugins.md exactly as the doc
# says, loads it with `lorahost plugins`, and checks it is listed: the guide
# must stay a working recipe. Usage: doc_plugin_example.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$1" build="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
awk '/^```c$/{on=1; next} /^```$/{if(on) exit} on' "$src/docs/plugins.md" > "$work/my_sched.c"
grep -q lorahost_plugin_entry "$work/my_sched.c"
${CC:-cc} -std=c11 -O2 -Wall -Werror -shared -fPIC -fvisibility=hidden -I"$src/include" \
  "$work/my_sched.c" -o "$work/my_sched.so" -lm
chmod 755 "$work"
out="$("$build/bin/lorahost" plugins --plugin-dir "$work" --no-builtin)"
echo "$out"
grep -Eq "^my_sched +scheduler +0\.1\.0 +$work/my_sched.so$" <<<"$out"
grep -q "aliases: My Sampler" <<<"$out"
grep -q "config keys: num_train_timesteps" <<<"$out"
grep -q "^1 plugin(s)$" <<<"$out"
echo "doc example: 1 passed, 0 failed"
