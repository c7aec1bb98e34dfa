#!/usr/bin/env bash
# The out-of-tree example scheduler (examples/custom_scheduler, diffusers' TCD)
# builds against an *installed* lorahost only, loads, and matches diffusers:
# the recipe of docs/writing-a-scheduler.md, run end to end.
# Usage: custom_scheduler.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$(cd "$1" && pwd)" build="$(cd "$2" && pwd)"
unset LORAHOST_PLUGIN_PATH
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }

# 1. install the main build into a fresh prefix; the plugin header must be there
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
test -f "$work/prefix/include/lorahost/plugin.h"
test -x "$work/prefix/bin/lorahost"
ok "cmake --install put include/lorahost/plugin.h and bin/lorahost in the prefix"

# 2. a copy of the example, away from the source tree, configured against the
#    prefix only; first check that a wrong header location fails clearly
cp -R "$src/examples/custom_scheduler" "$work/sched_tcd"
if cmake -S "$work/sched_tcd" -B "$work/bad" -DLORAHOST_INCLUDE_DIR="$work/nowhere" \
    >"$work/bad.log" 2>&1; then
  echo "configuring with a missing header succeeded" >&2
  exit 1
fi
grep -q "lorahost/plugin.h not found" "$work/bad.log"
ok "a missing plugin.h stops the configure with a clear message"

cmake -S "$work/sched_tcd" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DSCHED_TCD_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >"$work/configure.log"
grep -qx "LORAHOST_INCLUDE_DIR:PATH=$work/prefix/include" "$work/build/CMakeCache.txt"
cmake --build "$work/build" >"$work/build.log"
if grep -q -- "-I$src/include" "$work/build/compile_commands.json"; then
  echo "the example was compiled against $src/include, not the installed header" >&2
  exit 1
fi
test -f "$work/build/sched_tcd.so"
ok "sched_tcd.so built out of tree against $work/prefix/include"

# 3. load it
mkdir -m 700 "$work/plugins"
install -m 755 "$work/build/sched_tcd.so" "$work/plugins/"
lh="$work/prefix/bin/lorahost"
out="$("$lh" plugins --plugin-dir "$work/plugins")"
echo "$out"
grep -Eq "^tcd +scheduler +1\.0\.0 +$work/plugins/sched_tcd.so$" <<<"$out"
ok "lorahost plugins lists tcd"

out="$("$lh" schedulers tcd --steps 4 --plugin-dir "$work/plugins")"
echo "$out"
grep -q "^scheduler tcd (plugin tcd), 4 steps" <<<"$out"
grep -Eq "^ +3 +259\.000000" <<<"$out"
ok "lorahost schedulers tcd --steps 4 prints diffusers' timesteps 999 759 499 259"

# 4. step for step against the diffusers fixture
out="$(cd "$build/tests" && LORAHOST_PLUGIN_PATH="$work/plugins" \
  LH_SCHED_FIXTURES="$src/tests/fixtures/custom_scheduler" LH_SCHED_ONLY=tcd \
  ./test_schedulers 2>&1)" || { echo "$out"; exit 1; }
echo "$out" | grep -v '^\[warn\] tcd: clip_sample'
grep -Eq "^tcd: [0-9]+ cases match diffusers$" <<<"$out"
ok "test_schedulers: $(grep -Eo '^tcd: [0-9]+ cases' <<<"$out" | cut -d' ' -f2) diffusers cases match"

echo "custom scheduler: $passed passed, 0 failed"
