#!/usr/bin/env bash
# `lorahost serve` under a bounded load on loopback (bench/server_load.sh, short):
# 2*Q requests/s for 5 s at server.qps=Q. The excess gets 429 with
# Retry-After, every accepted request gets 200 with an image, no other
# status and no transport error, /metrics agrees with the client, and the
# server exits 0 on SIGTERM (under the ASan build: with no leak). Then the
# load client's own bad input.
# Usage: cli_serve_load.sh SOURCE_DIR BUILD_DIR   (LH_LOAD_QPS=Q changes Q, default 5)
set -euo pipefail
source "$(dirname "$0")/cli_lib.sh" # check
src="$1"
build="$2"
client="$build/bench/server_load"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
jnum() { sed -n "s/^ *\"$2\": \([-0-9.]*\),\{0,1\}$/\1/p" "$1"; }

# Q = 5 with 1 step at 16x16: one request is ~80 ms under ASan + UBSan (Debug)
# and far less in Release, so the worker keeps up with Q/s. Were it to fall
# behind (a busy machine), the accepted requests only wait longer (queue 256,
# timeouts 120 s): the 429 count depends on the arrival times alone. The
# circuit breaker is off for that reason (test_server's test_breaker covers it).
qps="${LH_LOAD_QPS:-5}" duration=5
out="$(bash "$src/bench/server_load.sh" "$build" --qps "$qps" --duration "$duration" --steps 1 \
  --size 16 --connections 64 --no-calibrate --json-out "$work/load.json" \
  --set server.breaker_p95_ms=0 2>&1)" || {
  echo "FAIL load: bench/server_load.sh failed:"; echo "$out"; exit 1
}
echo "$out"
pass=$((pass + 1))
j="$work/load.json"
n="$(jnum "$j" requests)"
[[ -n "$n" ]] || { echo "FAIL json: no requests in the client's --json-out"; exit 1; }
for k in sent status_200 status_429 status_503 status_other errors not_sent \
  retry_after_missing bad_body_200; do
  v="$(jnum "$j" "$k")"
  [[ -n "$v" ]] || { echo "FAIL json: no $k in the client's --json-out"; cat "$j"; exit 1; }
  declare "$k=$v"
done
expect() { # NAME CONDITION...
  local name="$1"; shift
  if ! (("$@")); then echo "FAIL $name: $*"; echo "$out"; exit 1; fi
  pass=$((pass + 1))
}
expect all_sent "sent == n && not_sent == 0"
expect no_errors "errors == 0"
expect no_other "status_other == 0 && status_503 == 0"
expect only_200_429 "status_200 + status_429 == n"
expect retry_after "retry_after_missing == 0"
expect images "bad_body_200 == 0"
# The bucket starts full (a burst of Q) and refills at Q/s: of 2*Q*D requests
# over D s about Q + Q*D are accepted, so the refused fraction is about
# (D - 1) / (2 D) = 0.4 for D = 5; within 0.1 of that (5 requests of 50 at Q = 5).
frac="$(awk -v r="$status_429" -v n="$n" 'BEGIN { printf "%.3f", r / n }')"
want="$(awk -v d="$duration" 'BEGIN { printf "%.3f", (d - 1) / (2 * d) }')"
awk -v f="$frac" -v w="$want" 'BEGIN { exit !(f >= w - 0.1 && f <= w + 0.1) }' || {
  echo "FAIL refused_fraction: $status_429 of $n got 429 ($frac), expected $want +- 0.1"
  exit 1
}
pass=$((pass + 1))
echo "refused $status_429 of $n ($frac; expected $want +- 0.1)"

# ---- The client's bad input ----
check no_url 2 "give exactly one of --url URL" -- "$client" --rate 1 --duration 1
check https 2 "must start with http://" -- "$client" --url https://127.0.0.1:1/ --rate 1 --duration 1
check bad_port 2 "the port must be 1..65535" -- "$client" --url http://127.0.0.1:99999/ --rate 1 --duration 1
check rate 2 "--rate: expected a number in" -- "$client" --url http://127.0.0.1:1/ --rate 0 --duration 1
check conns 2 "--connections: expected a whole number" -- \
  "$client" --url http://127.0.0.1:1/ --rate 1 --duration 1 --connections 2.5
check no_rate 2 "needs --rate R and --duration S" -- "$client" --url http://127.0.0.1:1/
check two_bodies 2 "not both" -- "$client" --url http://127.0.0.1:1/ --rate 1 --duration 1 \
  --body "$work/x" --body-json '{}'
check no_body_file 2 "$work/none.json" -- "$client" --url http://127.0.0.1:1/ --rate 1 --duration 1 \
  --body "$work/none.json"
check option 2 "--frobnicate: unknown option" -- "$client" --frobnicate 1
# nothing listens on port 1: every request is a transport error, and the run still ends
check refused 0 "| transport errors | 2 |" -- "$client" --url http://127.0.0.1:1/ --rate 4 \
  --duration 0.5 --connections 2 --timeout 2
echo "cli_serve_load: $pass checks passed"
