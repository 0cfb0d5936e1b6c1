// Block-wide reductions for every CUDA kernel (losses, hinge partials). The combination order
// depends only on blockDim (warp shuffles, then warp results in warp order), so results are
// reproducible.
#pragma once

#include <cuda_runtime.h>

#include <cstring>
#include <type_traits>

namespace jwae {

constexpr int kWarpSize = 32;

// __shfl_down_sync for numbers and for small aggregates (a partial result: value and index),
// the latter moved as 32-bit words.
template <typename T>
__device__ T shfl_down(T value, int offset) {
  if constexpr (std::is_arithmetic_v<T>) {
    return __shfl_down_sync(0xffffffffu, value, offset);
  } else {
    static_assert(sizeof(T) % sizeof(int) == 0 && std::is_trivially_copyable_v<T>,
                  "shfl_down moves aggregates as whole 32-bit words");
    int words[sizeof(T) / sizeof(int)];
    memcpy(words, &value, sizeof(T));
    for (int& word : words) word = __shfl_down_sync(0xffffffffu, word, offset);
    memcpy(&value, words, sizeof(T));
    return value;
  }
}

// Reduces `value` over the block with the associative `op`; every thread gets the result.
// blockDim.x must be a multiple of 32 and every thread of the block must call it.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op) {
  __shared__ T warp_results[kWarpSize];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, shfl_down(value, offset));
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  __syncthreads();  // the previous call's readers are done with warp_results
  if (lane == 0) warp_results[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = warp_results[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / kWarpSize); ++w) {
      total = op(total, warp_results[w]);
    }
    warp_results[0] = total;
  }
  __syncthreads();
  return warp_results[0];
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// For partial results with a merge() (csrc/mh_loss.h): any tree gives the same result where merge
// is a total order (the hardest negative), a fixed one where it is a sum.
struct MergeOp {
  template <typename T>
  __device__ T operator()(T a, const T& b) const {
    a.merge(b);
    return a;
  }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

template <typename T>
__device__ T block_sum(T value) {
  return block_reduce(value, SumOp{});
}

template <typename T>
__device__ T block_max(T value) {
  return block_reduce(value, MaxOp{});
}

}  // namespace jwae
