#!/usr/bin/env bash
# Prepare a GPU run on this machine (Debian 12 with nvcc): the GPU image has
# CUDA, PyTorch and CMake but not lorahost's C libraries nor diffusers, and
# reaches no package registry. So build here for sm_90 (.gpu/full), pack
# what runs there (stripped programs, library, plugins, the cuda module, the
# parity suites, the bench programs) with the shared libraries the image
# lacks into .gpu/gpu.tar.xz (the device tool carries 64 MiB in all), and diffusers'
# wheel into .gpu/wheels. .gpu/ is ignored (.git/info/exclude); carry
# .gpu/gpu.tar.xz and .gpu/wheels and run on the device
#   bash bench/gpu/run.sh
# Usage: bash bench/gpu/pack.sh [ARCH]   (default 90)
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
arch="${1:-90}"
cd "$src"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>"$(git rev-parse --git-path info/exclude)"
export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B .gpu/full -DCMAKE_BUILD_TYPE=Release -DLH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null
cmake --build .gpu/full -j "$(nproc)" >/dev/null
# what runs there: the programs, the library, plugins, the cuda module, the
# parity suites and the bench programs, stripped, in the build's layout
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/tests" "$stage/build/bench" "$stage/lib"
cp -a .gpu/full/bin .gpu/full/lib "$stage/build/"
rm -f "$stage"/build/lib/*.a
cp .gpu/full/tests/test_cuda_parity_* "$stage/build/tests/"
cp .gpu/full/bench/bench_unet .gpu/full/bench/bench_vae .gpu/full/bench/bench_train \
  .gpu/full/bench/bench_attention .gpu/full/bench/bench_adapters "$stage/build/bench/"
find "$stage/build" -type f \( -name '*.so*' -o -perm -u+x \) -exec strip --strip-unneeded {} + 2>/dev/null || true
# the shared libraries they need that the GPU image lacks (not glibc, CUDA, cuDNN)
find "$stage/build" -type f \( -name '*.so*' -o -perm -u+x \) -exec ldd {} + 2>/dev/null |
  awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux|libcuda|libcudart|libcublas|libcublasLt|libcudnn[^/]*|libnvrtc|libnvJitLink|liblorahost)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
rm -f .gpu/gpu.tar.xz
tar -C "$stage" -cJf .gpu/gpu.tar.xz build lib
# diffusers for the benchmark's reference (pure Python; torch is there)
mkdir -p .gpu/wheels
if [[ -x "$HOME/ref/bin/pip" ]]; then
  "$HOME/ref/bin/pip" download -q --no-deps -d .gpu/wheels diffusers >/dev/null
fi
du -sh .gpu/gpu.tar.xz .gpu/wheels
echo "carry .gpu/gpu.tar.xz and .gpu/wheels; on the device: bash bench/gpu/run.sh"
