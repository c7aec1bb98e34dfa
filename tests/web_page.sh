#!/usr/bin/env bash
# The web page (host/web/index.html) end to end in headless Chromium against
# `lorahost serve` with the shipped tiny model and its style adapter: the page
# fills its lists, generates from its query string, and shows the very PNG a
# direct POST /generate?format=png returns; a bad field shows the server's
# message. Exits 77 (skipped) without chromium or curl.
# Usage: web_page.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$1"
lh="$2/bin/lorahost"
model="$src/examples/model/shapes-tiny"

chrome=""
for c in chromium chromium-browser; do
  if command -v "$c" >/dev/null; then chrome="$(command -v "$c")"; break; fi
done
if [[ -z $chrome ]]; then
  echo "web_page: skipped: no chromium (Debian: apt-get install chromium; .ci/setup installs it)"
  exit 77
fi
if ! command -v curl >/dev/null; then
  echo "web_page: skipped: no curl"
  exit 77
fi

work="$(mktemp -d)"
srv=""
srv_status=0
stop_server() { # SIGTERM (a graceful stop), SIGKILL if it is not gone in 20 s
  [[ -n $srv ]] || return 0
  kill "$srv" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$srv" 2>/dev/null || true
  srv_status=0
  wait "$srv" 2>/dev/null || srv_status=$?
  srv=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL $*"
  echo "--- server log:"; cat "$work/serve.log" 2>/dev/null || true
  exit 1
}
pass=0

mkdir "$work/adapters"
cp "$src/examples/model/striped.safetensors" "$work/adapters/"
: >"$work/serve.log" # there before the background job opens it, for the loop below
"$lh" serve --model "$model" --port 0 --set "adapters.dirs=$work/adapters" \
  >"$work/serve.log" 2>&1 &
srv=$!
# The port from its "listening on http://127.0.0.1:PORT" line (at most 60 s).
port=""
for ((i = 0; i < 600; i++)); do
  port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$work/serve.log" || true)"
  [[ -n $port ]] && break
  kill -0 "$srv" 2>/dev/null || fail "serve exited before listening"
  sleep 0.1
done
[[ -n $port ]] || fail "serve printed no 'listening on' line in 60 s"
base="http://127.0.0.1:$port"
CURL=(curl -sS --max-time 60)

code="$("${CURL[@]}" -o "$work/load.json" -w '%{http_code}' -X POST "$base/adapters" \
  -H 'Content-Type: application/json' \
  -d '{"file": "striped.safetensors", "name": "striped", "active": false}')"
[[ $code == 201 ]] || fail "POST /adapters: status $code: $(cat "$work/load.json")"

# The page as served: HTML, no key needed to load it.
code="$("${CURL[@]}" -o "$work/page.html" -w '%{http_code} %{content_type}' "$base/")"
[[ $code == "200 text/html; charset=utf-8" ]] || fail "GET /: $code"
cmp -s "$work/page.html" "$src/host/web/index.html" || fail "GET / is not host/web/index.html"
pass=$((pass + 1))

# dump_dom NAME QUERY: the page's DOM once its requests are done (virtual
# time stands still while a fetch is pending, so the budget covers the
# generation whatever it takes in real time).
dump_dom() {
  local out="$work/$1.html" rc=0
  timeout -k 5 120 "$chrome" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$work/chrome-$1" --virtual-time-budget=60000 \
    --dump-dom "$base/?$2" >"$out" 2>"$work/$1.chrome.log" || rc=$?
  if ((rc)); then cat "$work/$1.chrome.log"; fail "$1: chromium failed (status $rc)"; fi
  [[ -s $out ]] || { cat "$work/$1.chrome.log"; fail "$1: chromium dumped no DOM"; }
}

# ---- A generation from the query string ----
prompt="a red circle on a blue background"
dump_dom ok "prompt=a%20red%20circle%20on%20a%20blue%20background&steps=4&width=32&height=32&seed=7&adapters=striped:0.5&generate=1"
dom="$work/ok.html"
body="$(grep -o '<body[^>]*>' "$dom")"
[[ $body == *'data-state="done"'* ]] || fail "ok: state not done: $body; status: $(grep -o 'id="status"[^<]*' "$dom")"
imgs="$(grep -o '<img class="result"[^>]*>' "$dom" || true)"
[[ $(grep -c . <<<"$imgs") -eq 1 && -n $imgs ]] || fail "ok: want one img.result, got: ${imgs:0:300}"
[[ $imgs == *'data-seed="7"'* ]] || fail "ok: the image's data-seed is not 7: ${imgs:0:200}"
b64="$(sed -n 's|.* src="data:image/png;base64,\([A-Za-z0-9+/=]*\)".*|\1|p' <<<"$imgs")"
[[ -n $b64 ]] || fail "ok: the image's src is not a data:image/png;base64 URL: ${imgs:0:200}"
base64 -d <<<"$b64" >"$work/page.png" || fail "ok: the image's base64 does not decode"
pass=$((pass + 1))
# every scheduler of GET /schedulers is an option of the list
"${CURL[@]}" "$base/schedulers" >"$work/schedulers.json"
ids="$(grep -o '"id":"[^"]*"' "$work/schedulers.json" | cut -d'"' -f4)"
[[ -n $ids ]] || fail "GET /schedulers lists no scheduler: $(head -c 300 "$work/schedulers.json")"
for id in $ids; do
  grep -qF "<option value=\"$id\">" "$dom" || fail "ok: scheduler $id is not in the list"
done
grep -qF '<optgroup label="Samplers (A1111 names)">' "$dom" || fail "ok: no sampler names"
# the adapter, with its slider at the scale the query gave
grep -qF 'aria-label="scale of striped"' "$dom" || fail "ok: no scale slider for striped"
grep -qF '<output for="adapter-scale-0">0.5</output>' "$dom" || fail "ok: striped's scale is not 0.5"
grep -qF 'striped 0.5' "$dom" || fail "ok: the caption does not name striped 0.5"
pass=$((pass + 1))

# The same request straight to the server: the same PNG, byte for byte.
code="$("${CURL[@]}" -o "$work/direct.png" -w '%{http_code}' -X POST "$base/generate?format=png" \
  -H 'Content-Type: application/json' \
  -d "{\"prompt\": \"$prompt\", \"steps\": 4, \"width\": 32, \"height\": 32, \"seed\": 7,
       \"adapters\": [{\"name\": \"striped\", \"scale\": 0.5}]}")"
[[ $code == 200 ]] || fail "POST /generate?format=png: status $code"
cmp "$work/page.png" "$work/direct.png" || fail "the page's PNG differs from POST /generate's"
pass=$((pass + 1))

# ---- A field the server refuses ----
dump_dom bad "prompt=x&steps=0&width=32&height=32&generate=1"
body="$(grep -o '<body[^>]*>' "$work/bad.html")"
[[ $body == *'data-state="error"'* ]] || fail "bad: state not error: $body"
[[ $body == *'data-field="steps"'* ]] || fail "bad: the error names no field steps: $body"
grep -q 'id="status"[^>]*>HTTP 400: steps: must be in 1\.\.1000' "$work/bad.html" ||
  fail "bad: status shows no message naming steps: $(grep -o 'id="status"[^<]*' "$work/bad.html")"
grep -qF 'id="steps"' "$work/bad.html" && grep -q '<input id="steps"[^>]*aria-invalid="true"' \
  "$work/bad.html" || fail "bad: the steps field is not marked invalid"
if grep -q '<img class="result"' "$work/bad.html"; then fail "bad: an image in the gallery"; fi
pass=$((pass + 1))

# The server stops cleanly (status 0; under the sanitizers: no report).
stop_server
[[ $srv_status -eq 0 ]] || fail "lorahost serve exited with status $srv_status on SIGTERM"
pass=$((pass + 1))

echo "web_page: $pass checks passed"
