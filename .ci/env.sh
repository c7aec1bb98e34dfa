# Sourced by the .ci scripts: common settings.
LH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LH_JOBS="${LH_JOBS:-$(nproc)}"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
# The CPU backend pins OpenBLAS to one thread (OpenMP does the parallel
# work), so OpenBLAS's own pool is never used; not starting it at load also
# avoids a race between its threads and ASan/LSan at process exit (seen as
# silent SIGABRTs of short-lived CLI runs under load).
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
