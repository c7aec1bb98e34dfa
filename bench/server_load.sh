#!/usr/bin/env bash
# Load test of `lorahost serve` on loopback: starts it on the shipped tiny
# model with server.qps=Q, measures one request's time at 1 request/s, then
# offers 2*Q requests/s of small /generate requests (bench/server_load.c,
# open loop) for the duration; prints the client's table, cross-checks its
# 200 and 429 counts with the server's /metrics, stops the server with
# SIGTERM and checks that it exits 0. Exits 1 if any of that fails.
# Usage: bash bench/server_load.sh BUILD_DIR [--qps Q] [--duration S] [--steps N]
#          [--size PX] [--connections C] [--json-out FILE] [--no-calibrate]
#          [--set SECTION.KEY=VALUE ...] (more server settings)
#   (defaults: Q 10, 20 s, 2 steps, 32x32, 32 connections; tests/cli_serve_load.sh
#    runs it short; docs/server.md; the numbers are in bench/RESULTS.md)
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:?usage: server_load.sh BUILD_DIR [--qps Q] [--duration S] ...}"
shift
qps=10 duration=20 steps=2 size=32 conns=32 json_out="" calibrate=1
extra=()
while (($#)); do
  case "$1" in
    --qps) qps="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --connections) conns="$2"; shift 2 ;;
    --json-out) json_out="$2"; shift 2 ;;
    --no-calibrate) calibrate=0; shift ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "server_load.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[[ "$qps" =~ ^[1-9][0-9]*$ ]] || { echo "server_load.sh: --qps: a whole number >= 1 (server.qps is an integer)" >&2; exit 2; }
lh="$build/bin/lorahost"
client="$build/bench/server_load"
for f in "$lh" "$client"; do
  [[ -x "$f" ]] || { echo "server_load.sh: $f not built (cmake --build $build)" >&2; exit 1; }
done
work="$(mktemp -d)"
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
[[ -n "$json_out" ]] || json_out="$work/load.json"
# a JSON number of the client's --json-out (one field per line)
jnum() { sed -n "s/^ *\"$2\": \([-0-9.]*\),\{0,1\}$/\1/p" "$1"; }
fail() { echo "server_load.sh: FAIL: $*"; [[ -s "$work/serve.err" ]] && tail -n 20 "$work/serve.err"; exit 1; }

# ---- Start the server (the port it chose is on its first stdout line) ----
: >"$work/serve.out" # there before the loop below reads it, however late the child runs
"$lh" serve --model "$src/examples/model/shapes-tiny" --port 0 --quiet \
  --set server.qps="$qps" --set server.queue=256 --set server.queue_timeout_s=120 \
  ${extra[@]+"${extra[@]}"} >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
port=""
for _ in $(seq 600); do # model load: well under a second in Release, more under ASan
  port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/serve.out")"
  [[ -n "$port" ]] && break
  kill -0 "$pid" 2>/dev/null || fail "lorahost serve exited at start"
  sleep 0.1
done
[[ -n "$port" ]] || fail "lorahost serve did not print its port within 60 s"
url="http://127.0.0.1:$port"
body="{\"prompt\": \"a red circle on a blue background\", \"steps\": $steps, \"cfg_scale\": 1,
 \"width\": $size, \"height\": $size, \"seed\": 1}"
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status"; }

# ---- One request's time, unloaded: is 1/Q well above it? ----
cal_200=0
if ((calibrate)); then
  "$client" --url "$url/generate" --rate 1 --duration 4 --connections 2 --timeout 60 \
    --body-json "$body" --json-out "$work/cal.json" >/dev/null
  cal_200="$(jnum "$work/cal.json" status_200)"
  [[ "$cal_200" == 4 ]] || fail "calibration: $cal_200 of 4 requests got 200"
  p50="$(jnum "$work/cal.json" p50_ms_200)"
  awk -v p="$p50" -v q="$qps" 'BEGIN { printf "one request (%s steps, %sx%s, no CFG), unloaded: p50 %.1f ms -> the worker manages ~%.0f/s; Q = %d/s uses %.0f%% of it\n", "'"$steps"'", "'"$size"'", "'"$size"'", p, 1000 / p, q, 100 * q * p / 1000 }'
  sleep 1 # the token bucket fills up again
fi
rss0="$(rss)"

# ---- The load: 2*Q requests/s ----
rate=$((2 * qps))
echo "offering $rate requests/s for $duration s to $url/generate (server.qps=$qps)"
"$client" --url "$url/generate" --rate "$rate" --duration "$duration" --connections "$conns" \
  --timeout 120 --body-json "$body" --json-out "$json_out"
rss1="$(rss)"

# ---- Cross-check with /metrics, then SIGTERM ----
"$client" --get "$url/metrics" >"$work/metrics.txt" || fail "GET /metrics"
metric() {
  sed -n "s/^lorahost_http_requests_total{route=\"\/generate\",status=\"$1\"} \([0-9]*\)$/\1/p" \
    "$work/metrics.txt"
}
m200="$(metric 200)" m429="$(metric 429)"
c200="$(jnum "$json_out" status_200)" c429="$(jnum "$json_out" status_429)"
echo "/metrics: /generate 200 ${m200:-0} (client: $c200 + $cal_200 calibration), 429 ${m429:-0} (client: $c429)"
((${m200:-0} == c200 + cal_200)) || fail "/metrics counts ${m200:-0} 200s, the client $c200 + $cal_200"
((${m429:-0} == c429)) || fail "/metrics counts ${m429:-0} 429s, the client $c429"
echo "server RSS: $rss0 kB before the load, $rss1 kB after"
kill -TERM "$pid"
rc=0
for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "lorahost serve still running 60 s after SIGTERM"
wait "$pid" || rc=$?
pid=""
((rc == 0)) || fail "lorahost serve exited with status $rc after SIGTERM"
grep -q "lorahost serve: stopped" "$work/serve.err" || fail "no 'stopped' line from the server"
echo "lorahost serve: exited 0 on SIGTERM"
