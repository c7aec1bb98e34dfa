#!/usr/bin/env bash
# The checkpoint store under kill -9: tests/ckpt_writer (a toy trainer that
# checkpoints 32 MB every step) is killed at random points, mid-write included.
# Half the kills wait for a temp file to appear (mid-write by construction).
# After every kill the store must load a checkpoint at least as new as the last
# one committed, with exactly the data of that step; resumed to the end, the
# run's losses and final checkpoint equal an uninterrupted run's bit for bit.
# Usage: checkpoint_kill.sh BUILD_DIR
set -u
B=$1
W=$B/tests/ckpt_writer
T=$(mktemp -d "$B/tests/ckpt-kill-XXXXXX")
trap 'rm -rf "$T"' EXIT
NUMEL=${CKPT_KILL_NUMEL:-4000000}
FINAL=25
KEEP=2
fail() { echo "FAIL: $*" >&2; exit 1; }

"$W" run "$T/ref" $FINAL $NUMEL $KEEP >"$T/ref.log" || fail "uninterrupted run"
grep '^loss' "$T/ref.log" | sort >"$T/ref.losses"
[ "$(wc -l <"$T/ref.losses")" -eq $FINAL ] || fail "uninterrupted run: not $FINAL losses"

kills=0 mid=0 committed=-1 started=0 finished=0
: >"$T/all.log"
while (( kills < 6 || (mid < 2 && kills < 16) )); do
    "$W" run "$T/run" $FINAL $NUMEL $KEEP >"$T/out.log" 2>"$T/err.log" &
    pid=$!
    if (( kills % 2 )); then
        # Odd kills aim at a write: spin (shell builtins only, no process per
        # look) until a temp file shows, then kill at once. On a loaded machine
        # the write is a small part of a step, and random times miss it.
        end=$((SECONDS + 5))
        while (( SECONDS < end )) && kill -0 $pid 2>/dev/null; do
            set -- "$T"/run/*.tmp.*
            [ -e "$1" ] && break
        done
    else
        sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.1 + r / 32768 * 1.1 }')"
    fi
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    rc=$?
    cat "$T/out.log" >>"$T/all.log"
    last=$(grep '^committed' "$T/out.log" | tail -n 1 | cut -d' ' -f2)
    [ -n "$last" ] && committed=$last
    s=$(grep '^loss' "$T/out.log" | tail -n 1 | cut -d' ' -f2)
    [ -n "$s" ] && started=$s
    tmp=$(find "$T/run" -name '*.tmp.*' 2>/dev/null | wc -l)
    (( tmp > 0 )) && mid=$((mid + 1))
    got=$("$W" verify "$T/run" $NUMEL 2>"$T/verify.err") ||
        fail "after kill $kills: $(cat "$T/verify.err")"
    echo "kill $kills: exit $rc, last committed $committed, last started $started," \
         "temp files $tmp, loaded step $got"
    (( got >= committed )) || fail "after kill $kills: loaded step $got, but $committed was committed"
    (( got <= started )) || fail "after kill $kills: loaded step $got, never written"
    kills=$((kills + 1))
    if (( rc == 0 )); then finished=1; break; fi
done
(( finished || mid >= 2 )) || fail "only $mid of $kills kills hit a write in progress"

"$W" run "$T/run" $FINAL $NUMEL $KEEP >>"$T/all.log" 2>"$T/err.log" || fail "resumed run: $(cat "$T/err.log")"
[ "$("$W" verify "$T/run" $NUMEL)" = $FINAL ] || fail "final checkpoint is not step $FINAL"
# Every step's loss, from whichever run computed it (steps redone after a kill
# included), equals the uninterrupted run's.
grep '^loss' "$T/all.log" | sort -u >"$T/run.losses"
diff "$T/ref.losses" "$T/run.losses" >"$T/diff" || fail "losses differ: $(head -n 5 "$T/diff")"
name=$(printf 'checkpoint-%08d.safetensors' $FINAL)
cmp "$T/ref/$name" "$T/run/$name" || fail "final checkpoints differ"
[ -z "$(find "$T/run" -name '*.tmp.*')" ] || fail "temp files left after a clean run"
echo "ok: $kills kills ($mid mid-write), losses and final checkpoint bit-identical"
