# Sourced by the tests/cli_*.sh scripts: the one assertion they share.
# check NAME EXPECTED_STATUS EXPECTED_TEXT -- command...
#   runs the command, and fails the script (printing its output) unless it
#   exits with EXPECTED_STATUS and its stdout+stderr contain EXPECTED_TEXT;
#   counts passes in $pass.
pass=0
check() {
  local name="$1" want="$2" text="$3"; shift 4
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  if [[ $rc -ne $want ]] || ! grep -qF -- "$text" <<<"$out"; then
    echo "FAIL $name: status $rc (want $want), output:"; echo "$out"; exit 1
  fi
  pass=$((pass + 1))
}
