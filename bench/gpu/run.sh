#!/usr/bin/env bash
# The GPU suite, for a machine with an NVIDIA GPU: the CUDA parity suites
# (every op, model component and training step against the cpu backend;
# CK_FORK=no), compute-sanitizer memcheck and racecheck over the op suites,
# the U-Net benchmark against diffusers and the adapter training benchmark
# against diffusers + PEFT; prints a summary table.
# Usage: [LH_GPU_STEPS="parity bench train memcheck"] bash bench/gpu/run.sh [BUILD_DIR]
#   The device tool allows 10 minutes a command and 15 minutes a session,
#   machine start included: the default runs parity and bench (about 5
#   minutes, each step under its own timeout), a second call
#   LH_GPU_STEPS=train, and memcheck (several times slower) only when time
#   is left.
#   BUILD_DIR: a Release build with the cuda module (-DLH_CUDA=ON); without
#   one, what bench/gpu/pack.sh packed (.gpu/gpu.tar.xz) is unpacked and used.
#   Logs go to $OUT (the device tool's) or /tmp/lh-gpu-out.
set -uo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/lh-gpu-out}"
mkdir -p "$out"
if [[ $# -ge 1 ]]; then
  build="$1"
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
lh() { LD_LIBRARY_PATH="$lhlib" "$@"; }
if [[ -d "$src/.gpu/wheels" ]]; then
  "$py" -m pip install -q --no-index --no-deps --target "$src/.gpu/py" "$src"/.gpu/wheels/*.whl \
    && export PYTHONPATH="$src/.gpu/py:${PYTHONPATH:-}"
fi
export CK_FORK=no LH_SOURCE_DIR="$src"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
steps="${LH_GPU_STEPS:-parity bench}"
want() { [[ " $steps " == *" $1 "* ]]; }
status=0
summary=()
want parity && for t in "$build"/tests/test_cuda_parity_*; do
  name="$(basename "$t")"
  s=$(date +%s)
  (cd "$build/tests" && lh timeout 150 "$t") >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) r=pass ;;
    77) r="NOT RUN: $(grep -m1 SKIP "$out/$name.log")" ;; # on a GPU machine, a failure too
    *) r="FAIL ($rc): $(grep -m1 -E '^FAIL |:F:|:E:' "$out/$name.log" | cut -c1-160)" ;;
  esac
  summary+=("| $name | $r | $(( $(date +%s) - s )) s |")
  [[ $rc == 0 ]] || status=1
done
# the attention forward's other implementations through the same suites:
# cuBLAS + softmax, and the float32 flash kernel where the default (auto)
# takes the tensor-core one (F16/BF16 activations)
want parity && for att in gemm flash; do
  for name in test_cuda_parity_ops test_cuda_parity_model; do
    t="$build/tests/$name"
    [[ -x "$t" ]] || continue
    s=$(date +%s)
    (cd "$build/tests" && LORAHOST_CUDA_ATTENTION=$att lh timeout 150 "$t") >"$out/$name.$att.log" 2>&1
    rc=$?
    r=$([[ $rc == 0 ]] && echo pass || echo "FAIL ($rc): $(grep -m1 -E '^FAIL |:F:|:E:' "$out/$name.$att.log" | cut -c1-160)")
    summary+=("| $name, attention=$att | $r | $(( $(date +%s) - s )) s |")
    [[ $rc == 0 ]] || status=1
  done
done
# the model and training suites with half-held convolution weights widened
# into float32 convolutions (the fallback of conv2d_hw)
want parity && for name in test_cuda_parity_model test_cuda_parity_train; do
  t="$build/tests/$name"
  [[ -x "$t" ]] || continue
  s=$(date +%s)
  (cd "$build/tests" && LORAHOST_CUDA_HALF_CONV=0 lh timeout 150 "$t") >"$out/$name.f32conv.log" 2>&1
  rc=$?
  r=$([[ $rc == 0 ]] && echo pass || echo "FAIL ($rc): $(grep -m1 -E '^FAIL |:F:|:E:' "$out/$name.f32conv.log" | cut -c1-160)")
  summary+=("| $name, LORAHOST_CUDA_HALF_CONV=0 | $r | $(( $(date +%s) - s )) s |")
  [[ $rc == 0 ]] || status=1
done
# convolutions a batch chunk (one image) at a time, as cuDNN gets tensors
# of 2^31 elements or more (the VAE decoding 8 images at 1024x1024)
want parity && [[ -x "$build/tests/test_cuda_parity_dense" ]] && {
  s=$(date +%s)
  (cd "$build/tests" && LH_CUDA_CONV_ONE_IMAGE=1 lh timeout 150 "$build/tests/test_cuda_parity_dense") \
    >"$out/test_cuda_parity_dense.one_image.log" 2>&1
  rc=$?
  r=$([[ $rc == 0 ]] && echo pass || echo "FAIL ($rc): $(grep -m1 -E '^FAIL |:F:|:E:' "$out/test_cuda_parity_dense.one_image.log" | cut -c1-160)")
  summary+=("| test_cuda_parity_dense, one image per cuDNN call | $r | $(( $(date +%s) - s )) s |")
  [[ $rc == 0 ]] || status=1
}
# memcheck, and racecheck for the kernels' shared-memory reductions (norm,
# bias and attention backwards); four runs of at most 140 s fit one call
if want memcheck && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    for name in test_cuda_parity_dense test_cuda_parity_ops; do
      [[ -x "$build/tests/$name" ]] || continue
      s=$(date +%s)
      (cd "$build/tests" && LH_PARITY_SMALL=1 lh timeout 140 compute-sanitizer --tool "$tool" \
        --error-exitcode 9 "$build/tests/$name") >"$out/${tool}_$name.log" 2>&1
      rc=$?
      summary+=("| $tool $name | $([[ $rc == 0 ]] && echo clean || echo "FAIL ($rc)") | $(( $(date +%s) - s )) s |")
      [[ $rc == 0 ]] || status=1
    done
  done
fi
if want bench; then
  s=$(date +%s)
  timeout 300 "$py" "$src/bench/gpu/unet_gpu.py" --build "$build" >"$out/unet.log" 2>&1
  rc=$?
  summary+=("| U-Net step and VAE decode vs diffusers | $([[ $rc == 0 ]] && echo ran || echo "FAIL ($rc)") | $(( $(date +%s) - s )) s |")
  s=$(date +%s)
  timeout 150 "$py" "$src/bench/gpu/attention_gpu.py" --build "$build" >"$out/attention.log" 2>&1
  rc=$?
  summary+=("| attention alone vs torch SDPA (flash, cuDNN, efficient) | $([[ $rc == 0 ]] && echo ran || echo "FAIL ($rc)") | $(( $(date +%s) - s )) s |")
fi
if want train; then
  s=$(date +%s)
  timeout 300 "$py" "$src/bench/gpu/train_gpu.py" --build "$build" >"$out/train.log" 2>"$out/train.err"
  rc=$?
  summary+=("| LoRA training step vs diffusers + PEFT | $([[ $rc == 0 ]] && echo ran || echo "FAIL ($rc)") | $(( $(date +%s) - s )) s |")
fi
# the summary, also as $out/summary.md for bench/RESULTS.md
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
  [[ -f "$out/train.log" ]] && cat "$out/train.log"
  grep -h "ERROR SUMMARY\|Invalid\|hazard" "$out"/memcheck_*.log "$out"/racecheck_*.log 2>/dev/null | head -20
} | tee "$out/summary.md"
exit $status
