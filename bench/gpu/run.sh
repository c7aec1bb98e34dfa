#!/usr/bin/env bash
# The GPU suite, for a machine with an NVIDIA GPU: the CUDA parity suites
# (every op, model component and training step against the cpu backend;
# CK_FORK=no), compute-sanitizer memcheck and racecheck over the op suites,
# the U-Net benchmark against diffusers and the adapter training benchmark
# against diffusers + PEFT; prints a summary table.
# Usage: [LH_GPU_STEPS="parity bench train memcheck"] bash bench/gpu/run.sh [BUILD_DIR]
#   The device tool allows 10 minutes a command and 15 minutes a session,
#   machine start included: the default runs parity and bench, a second
#   call LH_GPU_STEPS=train, and memcheck (several times slower) only when
#   time is left. Each step runs under its own timeout, cut to what is left
#   of LH_GPU_DEADLINE seconds (default 540) or skipped, in this order: the
#   four parity suites, the benchmarks, the suites' other paths, training,
#   the sanitizers; $OUT/summary.md is written after every step.
#   BUILD_DIR: a Release build with the cuda module (-DLH_CUDA=ON); without
#   one, what bench/gpu/pack.sh packed (.gpu/gpu.tar.xz) is unpacked and used.
#   Logs go to $OUT (the device tool's) or /tmp/lh-gpu-out.
set -uo pipefail
start=$(date +%s) # LH_GPU_DEADLINE counts from here
src="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/lh-gpu-out}"
mkdir -p "$out"
if [[ $# -ge 1 ]]; then
  build="$(cd "$1" && pwd)" || exit 1
else
  rm -rf /tmp/lh-gpu && mkdir -p /tmp/lh-gpu && tar -C /tmp/lh-gpu -xJf "$src/.gpu/gpu.tar.xz" || exit 1
  build=/tmp/lh-gpu/build
fi
# lorahost's programs get the packed libraries (Debian's; python must not)
lhlib="$build/lib:/tmp/lh-gpu/lib:/usr/local/cuda/lib64"
# cuDNN and cuBLAS from the image's PyTorch when the system has none
py="$(command -v python3)"
for mod in nvidia.cudnn nvidia.cublas nvidia.cuda_runtime nvidia.cu13; do
  d="$("$py" -c "import $mod, os; print(os.path.join(list($mod.__path__)[0], 'lib'))" 2>/dev/null)" &&
    [[ -d "$d" ]] && lhlib="$lhlib:$d"
done
export LH_LD_LIBRARY_PATH="$lhlib"
if [[ -d "$src/.gpu/wheels" ]]; then
  "$py" -m pip install -q --upgrade --no-index --no-deps --target "$src/.gpu/py" "$src"/.gpu/wheels/*.whl \
    && export PYTHONPATH="$src/.gpu/py:${PYTHONPATH:-}"
fi
export CK_FORK=no LH_SOURCE_DIR="$src"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
steps="${LH_GPU_STEPS:-parity bench}"
want() { [[ " $steps " == *" $1 "* ]]; }
# every step fits what is left of LH_GPU_DEADLINE seconds (default 540: the
# device tool stops a command at 600) or is skipped, so the command comes
# back with its summary; the summary is written again after each step
deadline="${LH_GPU_DEADLINE:-540}"
left() { echo $((deadline - ($(date +%s) - start))); }
status=0
summary=()
write_summary() {
  {
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${summary[@]}"
    echo
    # every comparison out of tolerance (the suites go on past them), then the measured errors
    grep -H "^FAIL " "$out"/test_cuda_parity_*.log 2>/dev/null | sed "s|^$out/||" | head -60
    echo
    grep -h "rel err\|rel L2\|worst pixel" "$out"/test_cuda_parity_*.log 2>/dev/null | sort | uniq | head -80
    echo
    [[ -f "$out/unet.log" ]] && grep -v '^{' "$out/unet.log"
    echo
    [[ -f "$out/attention.log" ]] && grep -v '^{' "$out/attention.log"
    echo
    [[ -f "$out/adapters.log" ]] && cat "$out/adapters.log"
    echo
    [[ -f "$out/train.log" ]] && cat "$out/train.log"
    grep -h "ERROR SUMMARY\|Invalid\|hazard" "$out"/memcheck_*.log "$out"/racecheck_*.log 2>/dev/null | head -20
  } >"$out/summary.md"
}
# step LABEL LOG BUDGET_S COMMAND...: run it under a timeout of at most
# BUDGET_S seconds (less when less is left; skipped under 30 s, which
# fails the run too), log to $out/LOG (and what it writes to $out/LOG's
# .err), add a summary row; ok=WORD names a success (default pass)
step() {
  local label="$1" log="$2" budget="$3" s rc r
  shift 3
  local t
  t=$(left)
  ((t < budget)) && budget=$t
  if ((budget < 30)); then
    summary+=("| $label | skipped: out of time | |")
    status=1
    write_summary
    return
  fi
  s=$(date +%s)
  timeout -k 10 "$budget" "$@" >"$out/$log" 2>&1
  rc=$?
  local logs=("$out/$log")
  [[ -f "$out/${log%.log}.err" ]] && logs+=("$out/${log%.log}.err")
  case $rc in
    0) r="${ok:-pass}" ;;
    77) r="NOT RUN: $(grep -h -m1 SKIP "${logs[@]}")" ;; # on a GPU machine, a failure too
    124 | 137) r="TIMEOUT after $budget s" ;;
    *) # a suite's first failed check, else the last error line (a Python traceback's)
      r="$(grep -h -m1 -E '^FAIL |:F:|:E:' "${logs[@]}" | head -1)"
      [[ -n "$r" ]] || r="$(grep -h -iE 'error|no such' "${logs[@]}" | tail -1)"
      r="FAIL ($rc): $(cut -c1-160 <<<"$r" | tr '|' '/')" ;;
  esac
  summary+=("| $label | $r | $(($(date +%s) - s)) s |")
  [[ $rc == 0 ]] || status=1
  write_summary
}
# a command in the build's tests directory, with environment settings
suite=(bash -c 'cd "$0" && exec env "$@"' "$build/tests")
# 1. the parity suites
want parity && for t in "$build"/tests/test_cuda_parity_*; do
  name="$(basename "$t")"
  step "$name" "$name.log" 150 "${suite[@]}" LD_LIBRARY_PATH="$lhlib" "$t"
done
# 2. the benchmarks: U-Net step, VAE decode and the op profile; attention alone
if want bench; then
  ok=ran step "U-Net step and VAE decode vs diffusers" unet.log 300 \
    "$py" -u "$src/bench/gpu/unet_gpu.py" --build "$build"
  ok=ran step "attention alone vs torch SDPA (flash, cuDNN, efficient)" attention.log 150 \
    "$py" -u "$src/bench/gpu/attention_gpu.py" --build "$build"
  ok=ran step "LoRA rank 32: runtime, merged, switch vs diffusers + PEFT" adapters.log 200 \
    bash -c '"$0" -u "$1" --build "$2" --device cuda --precision fp16 --ranks 32 --iters 10 \
      2>"$3"' "$py" "$src/bench/adapters_cpu.py" "$build" "$out/adapters.err"
fi
# 3. the parity suites' other paths: the attention forward's other
# implementations (cuBLAS + softmax, and the float32 flash kernel where the
# default takes the tensor-core one), half-held convolution weights widened
# into float32 convolutions (conv2d_hw's fallback), and convolutions one
# image per cuDNN call (as for tensors of 2^31 elements or more)
if want parity; then
  for att in gemm flash; do
    for name in test_cuda_parity_ops test_cuda_parity_model; do
      [[ -x "$build/tests/$name" ]] &&
        step "$name, attention=$att" "$name.$att.log" 150 \
          "${suite[@]}" LD_LIBRARY_PATH="$lhlib" LORAHOST_CUDA_ATTENTION=$att "$build/tests/$name"
    done
  done
  for name in test_cuda_parity_model test_cuda_parity_train; do
    [[ -x "$build/tests/$name" ]] &&
      step "$name, LORAHOST_CUDA_HALF_CONV=0" "$name.f32conv.log" 150 \
        "${suite[@]}" LD_LIBRARY_PATH="$lhlib" LORAHOST_CUDA_HALF_CONV=0 "$build/tests/$name"
  done
  [[ -x "$build/tests/test_cuda_parity_dense" ]] &&
    step "test_cuda_parity_dense, one image per cuDNN call" test_cuda_parity_dense.one_image.log 150 \
      "${suite[@]}" LD_LIBRARY_PATH="$lhlib" LH_CUDA_CONV_ONE_IMAGE=1 "$build/tests/test_cuda_parity_dense"
fi
# 4. the training benchmark (a call of its own: LH_GPU_STEPS=train)
# (LH_GPU_TRAIN_ARGS: train_gpu.py's options, e.g. "--precisions fp16 --batches 1" when
# little time is left)
want train && ok=ran step "LoRA training step vs diffusers + PEFT" train.log 400 \
  bash -c 'set -f; "$0" -u "$1" --build "$2" ${3:+$3} 2>"$4"' "$py" "$src/bench/gpu/train_gpu.py" "$build" \
  "${LH_GPU_TRAIN_ARGS:-}" "$out/train.err"
# 5. memcheck, and racecheck for the kernels' shared-memory reductions (norm,
# bias and attention backwards)
if want memcheck && ! command -v compute-sanitizer >/dev/null; then
  summary+=("| memcheck, racecheck | NOT RUN: no compute-sanitizer on the PATH | |")
  status=1
elif want memcheck; then
  for tool in memcheck racecheck; do
    for name in test_cuda_parity_dense test_cuda_parity_ops; do
      [[ -x "$build/tests/$name" ]] &&
        step "$tool $name" "${tool}_$name.log" 140 \
          "${suite[@]}" LD_LIBRARY_PATH="$lhlib" LH_PARITY_SMALL=1 compute-sanitizer --tool "$tool" \
          --error-exitcode 9 "$build/tests/$name"
    done
  done
fi
write_summary
cat "$out/summary.md"
exit $status
