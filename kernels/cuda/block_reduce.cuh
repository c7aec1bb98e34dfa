/* Block-wide sums for the cuda backend's reduction kernels (norm.cu,
 * gemm.cu, conv.cu): warp shuffles, then one value per warp through shared
 * memory. Fixed order for a given block size, so results are reproducible
 * run to run. Private to kernels/cuda/. */
#ifndef LH_KERNELS_CUDA_BLOCK_REDUCE_CUH
#define LH_KERNELS_CUDA_BLOCK_REDUCE_CUH

template <typename T> __device__ __forceinline__ T lh__warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The sum of v over a 1-D block (blockDim.x a multiple of 32, at most
 * 1024), returned to every thread. `shm` holds 32 values; consecutive calls
 * may share it (the leading barrier keeps the previous call's reads safe). */
template <typename T> __device__ __forceinline__ T lh__block_sum(T v, T *shm) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = lh__warp_sum(v);
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    v = lane < warps ? shm[lane] : (T)0;
    return lh__warp_sum(v);
}

#endif
