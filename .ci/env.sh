# Sourced by the .ci scripts: common settings.
LH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LH_JOBS="${LH_JOBS:-$(nproc)}"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
