// Max-of-hinges loss, CUDA kernels. S = img·txtᵀ is computed in row tiles spanning every column
// (cuBLAS into one reused buffer of ~32 MB, fp32 — also for fp16/bf16 inputs — or fp64, so a tile
// mostly stays in L2), each followed by epilogue kernels on the same stream: a row's result is
// final within its tile, a column's is a per-tile partial merged afterwards in tile order. Every
// reduction is a fixed tree or follows the total order of `beats` (hinge.h), so results are
// deterministic. The max_violation backward gathers rows through the inverse of the hardest
// indices (no atomics); the sum-of-hinges backward recomputes each tile, turns it into the hinge
// gradient in place and multiplies it by the embeddings with cuBLAS, accumulating in tile order.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "../mh_loss.h"

namespace jwae::hinge {
namespace {

using Ids = std::optional<at::Tensor>;
using Costs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

constexpr int kThreads = 256;       // row kernels, elementwise kernels
constexpr int kColsPerBlock = 32;   // column kernels: one warp-wide stripe of columns ...
constexpr int kRowLanes = 8;        // ... read by 8 row lanes, merged in lane order
constexpr int64_t kTileElements = int64_t{1} << 23;  // 32 MB of fp32 scores per tile
constexpr unsigned kFullMask = 0xffffffffu;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t tile_rows_for(int64_t batch) {
  return std::clamp<int64_t>(kTileElements / batch, 1, batch);
}

// One row tile of the score matrix: rows [row0, row0 + rows) and every column; `part` numbers
// the tiles, in order.
template <typename scalar_t>
struct RowTile {
  const scalar_t* data;
  int64_t ld;
  int64_t row0;
  int64_t rows;
  int64_t part;
};

// ---- block reductions ------------------------------------------------------------------------

template <typename acc_t>
__device__ void keep_hardest(acc_t& best, int64_t& arg, acc_t value, int64_t index) {
  if (beats(value, index, best, arg)) {
    best = value;
    arg = index;
  }
}

// The hardest candidate of the block lands in thread 0. Any tree gives the same result: `beats`
// is a total order.
template <typename acc_t>
__device__ void block_hardest(acc_t& best, int64_t& arg) {
  __shared__ acc_t values[32];
  __shared__ int64_t indices[32];
  for (int offset = 16; offset > 0; offset /= 2) {
    keep_hardest(best, arg, __shfl_down_sync(kFullMask, best, offset),
                 __shfl_down_sync(kFullMask, arg, offset));
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = arg;
  }
  __syncthreads();
  if (warp == 0) {
    const bool filled = lane < blockDim.x / 32;
    best = filled ? values[lane] : acc_t(0);
    arg = filled ? indices[lane] : int64_t{-1};
    for (int offset = 16; offset > 0; offset /= 2) {
      keep_hardest(best, arg, __shfl_down_sync(kFullMask, best, offset),
                   __shfl_down_sync(kFullMask, arg, offset));
    }
  }
}

// Sums of the block land in thread 0, always added in the same tree order.
template <typename acc_t>
__device__ void block_sum(acc_t& sum, int64_t& count) {
  __shared__ acc_t sums[32];
  __shared__ int64_t counts[32];
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(kFullMask, sum, offset);
    count += __shfl_down_sync(kFullMask, count, offset);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    sums[warp] = sum;
    counts[warp] = count;
  }
  __syncthreads();
  if (warp == 0) {
    const bool filled = lane < blockDim.x / 32;
    sum = filled ? sums[lane] : acc_t(0);
    count = filled ? counts[lane] : int64_t{0};
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(kFullMask, sum, offset);
      count += __shfl_down_sync(kFullMask, count, offset);
    }
  }
}

// ---- kernels ---------------------------------------------------------------------------------

// S_kk = img_k·txt_k, one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void positive_scores_kernel(const scalar_t* __restrict__ img,
                                       const scalar_t* __restrict__ txt, int64_t batch,
                                       int64_t dim, acc_t* __restrict__ out) {
  const int64_t row = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= batch) return;  // whole warps leave together
  acc_t sum = 0;
  for (int64_t f = lane; f < dim; f += 32) {
    sum += static_cast<acc_t>(img[row * dim + f]) * static_cast<acc_t>(txt[row * dim + f]);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(kFullMask, sum, offset);
  if (lane == 0) out[row] = sum;
}

// Hardest negative of each tile row (one block per row; the tile spans all `cols` columns).
template <typename scalar_t, typename acc_t>
__global__ void row_hardest_kernel(const scalar_t* __restrict__ tile, int64_t ld, int64_t row0,
                                   int64_t cols, Pairing pairing, acc_t* __restrict__ value,
                                   int64_t* __restrict__ index) {
  const int64_t i = row0 + blockIdx.x;
  const scalar_t* s = tile + int64_t{blockIdx.x} * ld;
  acc_t best = 0;
  int64_t arg = -1;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (pairing.negative(i, j)) keep_hardest(best, arg, static_cast<acc_t>(s[j]), j);
  }
  block_hardest(best, arg);
  if (threadIdx.x == 0) {
    value[i] = best;
    index[i] = arg;
  }
}

// Hardest negative of each column over the tile's rows: block (kColsPerBlock, kRowLanes), lanes
// stride over rows (coalesced across the warp), then merge in lane order.
template <typename scalar_t, typename acc_t>
__global__ void col_hardest_kernel(const scalar_t* __restrict__ tile, int64_t ld, int64_t row0,
                                   int64_t rows, int64_t cols, Pairing pairing,
                                   acc_t* __restrict__ value, int64_t* __restrict__ index) {
  __shared__ acc_t values[kRowLanes][kColsPerBlock];
  __shared__ int64_t indices[kRowLanes][kColsPerBlock];
  const int64_t j = int64_t{blockIdx.x} * kColsPerBlock + threadIdx.x;
  acc_t best = 0;
  int64_t arg = -1;
  if (j < cols) {
    for (int64_t ii = threadIdx.y; ii < rows; ii += kRowLanes) {
      const int64_t i = row0 + ii;
      if (pairing.negative(i, j)) keep_hardest(best, arg, static_cast<acc_t>(tile[ii * ld + j]), i);
    }
  }
  values[threadIdx.y][threadIdx.x] = best;
  indices[threadIdx.y][threadIdx.x] = arg;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int lane = 1; lane < kRowLanes; ++lane) {
      keep_hardest(best, arg, values[lane][threadIdx.x], indices[lane][threadIdx.x]);
    }
    value[j] = best;
    index[j] = arg;
  }
}

// Hinge sum and active count of each tile row.
template <typename scalar_t, typename acc_t>
__global__ void row_hinge_sum_kernel(const scalar_t* __restrict__ tile, int64_t ld, int64_t row0,
                                     int64_t cols, Pairing pairing, acc_t margin,
                                     const acc_t* __restrict__ positive, acc_t* __restrict__ sums,
                                     int64_t* __restrict__ counts) {
  const int64_t i = row0 + blockIdx.x;
  const scalar_t* s = tile + int64_t{blockIdx.x} * ld;
  const acc_t own = positive[i];
  acc_t sum = 0;
  int64_t count = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (!pairing.negative(i, j)) continue;
    const acc_t h = hinge(margin, static_cast<acc_t>(s[j]), own);
    sum += h;
    count += h > acc_t(0);
  }
  block_sum(sum, count);
  if (threadIdx.x == 0) {
    sums[i] = sum;
    counts[i] = count;
  }
}

// Hinge sum and active count of each column over the tile's rows (layout as col_hardest_kernel).
template <typename scalar_t, typename acc_t>
__global__ void col_hinge_sum_kernel(const scalar_t* __restrict__ tile, int64_t ld, int64_t row0,
                                     int64_t rows, int64_t cols, Pairing pairing, acc_t margin,
                                     const acc_t* __restrict__ positive, acc_t* __restrict__ sums,
                                     int64_t* __restrict__ counts) {
  __shared__ acc_t lane_sums[kRowLanes][kColsPerBlock];
  __shared__ int64_t lane_counts[kRowLanes][kColsPerBlock];
  const int64_t j = int64_t{blockIdx.x} * kColsPerBlock + threadIdx.x;
  acc_t sum = 0;
  int64_t count = 0;
  if (j < cols) {
    const acc_t own = positive[j];
    for (int64_t ii = threadIdx.y; ii < rows; ii += kRowLanes) {
      if (!pairing.negative(row0 + ii, j)) continue;
      const acc_t h = hinge(margin, static_cast<acc_t>(tile[ii * ld + j]), own);
      sum += h;
      count += h > acc_t(0);
    }
  }
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  lane_counts[threadIdx.y][threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int lane = 1; lane < kRowLanes; ++lane) {
      sum += lane_sums[lane][threadIdx.x];
      count += lane_counts[lane][threadIdx.x];
    }
    sums[j] = sum;
    counts[j] = count;
  }
}

// Merges each query's per-tile hardest candidates in tile order into its cost and support.
template <typename acc_t, typename out_t>
__global__ void finish_hardest_kernel(const acc_t* __restrict__ value,
                                      const int64_t* __restrict__ index, int64_t parts,
                                      int64_t batch, const acc_t* __restrict__ positive,
                                      acc_t margin, out_t* __restrict__ cost,
                                      int64_t* __restrict__ hardest) {
  const int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (k >= batch) return;
  acc_t best = 0;
  int64_t arg = -1;
  for (int64_t p = 0; p < parts; ++p) {
    keep_hardest(best, arg, value[p * batch + k], index[p * batch + k]);
  }
  const acc_t c = arg < 0 ? acc_t(0) : hinge(margin, best, positive[k]);
  cost[k] = static_cast<out_t>(c);
  hardest[k] = c == acc_t(0) ? -1 : arg;
}

template <typename acc_t, typename out_t>
__global__ void finish_sums_kernel(const acc_t* __restrict__ sums,
                                   const int64_t* __restrict__ counts, int64_t parts, int64_t batch, out_t* __restrict__ cost,
                                   int64_t* __restrict__ active) {
  const int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (k >= batch) return;
  acc_t sum = 0;
  int64_t count = 0;
  for (int64_t p = 0; p < parts; ++p) {
    sum += sums[p * batch + k];
    count += counts[p * batch + k];
  }
  cost[k] = static_cast<out_t>(sum);
  active[k] = count;
}

// d(sum-of-hinges costs)/dS over rows [row0, row0 + rows) and all `cols` columns; `out` may
// alias `s` (each element is read, then written, by one thread).
template <typename scalar_t, typename acc_t>
__global__ void hinge_grad_kernel(const scalar_t* s, int64_t lds, acc_t* out, int64_t ldo,
                                  int64_t row0, int64_t rows, int64_t cols, Pairing pairing,
                                  acc_t margin, const acc_t* __restrict__ positive,
                                  const acc_t* __restrict__ w_i2t,
                                  const acc_t* __restrict__ w_t2i) {
  const int64_t n = rows * cols;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t ii = e / cols;
    const int64_t j = e % cols;
    const int64_t i = row0 + ii;
    const acc_t v = static_cast<acc_t>(s[ii * lds + j]);
    out[ii * ldo + j] = pairing.negative(i, j)
                            ? hinge_grad(margin, v, positive[i], positive[j], w_i2t[i], w_t2i[j])
                            : acc_t(0);
  }
}

// One row of a hardest-negative gradient (see GatherFn in hinge.h): one block per row k, the
// contributions added in a fixed order (own row, hardest negative, inverse list in query order).
template <typename scalar_t, typename acc_t>
__global__ void gather_hardest_kernel(const scalar_t* __restrict__ y, int64_t dim,
                                      const acc_t* __restrict__ w_self,
                                      const int64_t* __restrict__ hardest_self,
                                      const acc_t* __restrict__ w_other,
                                      const int64_t* __restrict__ offsets,
                                      const int64_t* __restrict__ sources,
                                      scalar_t* __restrict__ out) {
  const int64_t k = blockIdx.x;
  const acc_t self = w_self[k];
  const acc_t diagonal = -(self + w_other[k]);
  const int64_t hard = hardest_self[k];
  const int64_t begin = offsets[k];
  const int64_t end = offsets[k + 1];
  for (int64_t f = threadIdx.x; f < dim; f += blockDim.x) {
    acc_t sum = diagonal * static_cast<acc_t>(y[k * dim + f]);
    if (hard >= 0) sum += self * static_cast<acc_t>(y[hard * dim + f]);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t s = sources[p];
      sum += w_other[s] * static_cast<acc_t>(y[s * dim + f]);
    }
    out[k * dim + f] = static_cast<scalar_t>(sum);
  }
}

// ---- host side -------------------------------------------------------------------------------

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

unsigned grid_for(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= std::numeric_limits<int32_t>::max(),
              "jwae_ext: mh_loss: launch of ", blocks, " blocks is out of range");
  return static_cast<unsigned>(blocks);
}

// tile = a·bᵀ in the tile's dtype: fp16/bf16 inputs accumulate into an fp32 tile.
void score_tile(at::Tensor& tile, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == tile.scalar_type()) {
    at::mm_out(tile, a, b.t());
  } else {
    at::mm_out(tile, a, b.t(), tile.scalar_type());
  }
}

at::Tensor positive_scores(const at::Tensor& img, const at::Tensor& txt) {
  const int64_t batch = img.size(0);
  at::Tensor out = at::empty({batch}, img.options().dtype(accumulate_dtype(img.scalar_type())));
  const auto dtype = img.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_positive", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    constexpr int rows_per_block = kThreads / 32;
    positive_scores_kernel<scalar_t, acc_t>
        <<<grid_for(ceil_div(batch, rows_per_block)), kThreads, 0, stream()>>>(
            img.const_data_ptr<scalar_t>(), txt.const_data_ptr<scalar_t>(), batch, img.size(1),
            out.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Calls `epilogue(const RowTile<acc_t>&, at::Tensor& tile)` on every row tile of img·txtᵀ, in
// order, computed into one buffer (stream order keeps a tile alive until its epilogue is done).
template <typename acc_t, typename Epilogue>
void for_each_gemm_tile(const at::Tensor& img, const at::Tensor& txt, Epilogue&& epilogue) {
  const int64_t batch = img.size(0);
  const int64_t tile_rows = tile_rows_for(batch);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor buffer = at::empty({tile_rows, batch}, img.options().dtype(acc));
  for (int64_t part = 0, row0 = 0; row0 < batch; ++part, row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, batch - row0);
    at::Tensor tile = buffer.narrow(0, 0, rows);
    score_tile(tile, img.narrow(0, row0, rows), txt);
    epilogue(RowTile<acc_t>{tile.const_data_ptr<acc_t>(), batch, row0, rows, part}, tile);
  }
}

int64_t gemm_tiles(int64_t batch) { return ceil_div(batch, tile_rows_for(batch)); }

template <typename tile_t, typename acc_t, typename out_t, typename EachTile>
Costs hardest_costs(EachTile&& each_tile, int64_t parts, const Pairing& pairing,
                    const at::Tensor& positive, double margin, at::ScalarType out_dtype) {
  const int64_t batch = positive.size(0);
  const auto acc = positive.options();
  const auto index = acc.dtype(at::kLong);
  at::Tensor row_value = at::empty({batch}, acc);
  at::Tensor row_index = at::empty({batch}, index);
  at::Tensor col_value = at::empty({parts, batch}, acc);
  at::Tensor col_index = at::empty({parts, batch}, index);
  each_tile([&](const RowTile<tile_t>& t, at::Tensor&) {
    row_hardest_kernel<tile_t, acc_t><<<grid_for(t.rows), kThreads, 0, stream()>>>(
        t.data, t.ld, t.row0, batch, pairing, row_value.data_ptr<acc_t>(),
        row_index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    col_hardest_kernel<tile_t, acc_t>
        <<<grid_for(ceil_div(batch, kColsPerBlock)), dim3(kColsPerBlock, kRowLanes), 0, stream()>>>(
            t.data, t.ld, t.row0, t.rows, batch, pairing,
            col_value.data_ptr<acc_t>() + t.part * batch,
            col_index.data_ptr<int64_t>() + t.part * batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor cost_i2t = at::empty({batch}, acc.dtype(out_dtype));
  at::Tensor cost_t2i = at::empty({batch}, acc.dtype(out_dtype));
  at::Tensor hard_i2t = at::empty({batch}, index);
  at::Tensor hard_t2i = at::empty({batch}, index);
  const unsigned blocks = grid_for(ceil_div(batch, kThreads));
  const acc_t m = static_cast<acc_t>(margin);
  finish_hardest_kernel<acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      row_value.const_data_ptr<acc_t>(), row_index.const_data_ptr<int64_t>(), 1, batch,
      positive.const_data_ptr<acc_t>(), m, cost_i2t.data_ptr<out_t>(),
      hard_i2t.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_hardest_kernel<acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      col_value.const_data_ptr<acc_t>(), col_index.const_data_ptr<int64_t>(), parts, batch,
      positive.const_data_ptr<acc_t>(), m, cost_t2i.data_ptr<out_t>(),
      hard_t2i.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {cost_i2t, cost_t2i, hard_i2t, hard_t2i};
}

template <typename tile_t, typename acc_t, typename out_t, typename EachTile>
Costs hinge_sum_costs(EachTile&& each_tile, int64_t parts, const Pairing& pairing,
                      const at::Tensor& positive, double margin, at::ScalarType out_dtype) {
  const int64_t batch = positive.size(0);
  const auto acc = positive.options();
  const auto index = acc.dtype(at::kLong);
  const acc_t m = static_cast<acc_t>(margin);
  at::Tensor row_sum = at::empty({batch}, acc);
  at::Tensor row_count = at::empty({batch}, index);
  at::Tensor col_sum = at::empty({parts, batch}, acc);
  at::Tensor col_count = at::empty({parts, batch}, index);
  each_tile([&](const RowTile<tile_t>& t, at::Tensor&) {
    row_hinge_sum_kernel<tile_t, acc_t><<<grid_for(t.rows), kThreads, 0, stream()>>>(
        t.data, t.ld, t.row0, batch, pairing, m, positive.const_data_ptr<acc_t>(),
        row_sum.data_ptr<acc_t>(), row_count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    col_hinge_sum_kernel<tile_t, acc_t>
        <<<grid_for(ceil_div(batch, kColsPerBlock)), dim3(kColsPerBlock, kRowLanes), 0, stream()>>>(
            t.data, t.ld, t.row0, t.rows, batch, pairing, m, positive.const_data_ptr<acc_t>(),
            col_sum.data_ptr<acc_t>() + t.part * batch,
            col_count.data_ptr<int64_t>() + t.part * batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor cost_i2t = at::empty({batch}, acc.dtype(out_dtype));
  at::Tensor cost_t2i = at::empty({batch}, acc.dtype(out_dtype));
  at::Tensor active_i2t = at::empty({batch}, index);
  at::Tensor active_t2i = at::empty({batch}, index);
  const unsigned blocks = grid_for(ceil_div(batch, kThreads));
  finish_sums_kernel<acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      row_sum.const_data_ptr<acc_t>(), row_count.const_data_ptr<int64_t>(), 1, batch,
      cost_i2t.data_ptr<out_t>(), active_i2t.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_sums_kernel<acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      col_sum.const_data_ptr<acc_t>(), col_count.const_data_ptr<int64_t>(), parts, batch,
      cost_t2i.data_ptr<out_t>(), active_t2i.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {cost_i2t, cost_t2i, active_i2t, active_t2i};
}

// Writes the hinge gradient of rows [row0, row0 + rows) of `s` into `out` (acc dtype).
template <typename tile_t, typename acc_t>
void write_hinge_grad(const tile_t* s, int64_t lds, acc_t* out, int64_t ldo, int64_t row0,
                int64_t rows, int64_t cols, const Pairing& pairing, double margin,
                const at::Tensor& positive, const at::Tensor& w_i2t, const at::Tensor& w_t2i) {
  const int64_t blocks = std::min<int64_t>(ceil_div(rows * cols, kThreads), int64_t{1} << 20);
  hinge_grad_kernel<tile_t, acc_t><<<grid_for(blocks), kThreads, 0, stream()>>>(
      s, lds, out, ldo, row0, rows, cols, pairing, static_cast<acc_t>(margin),
      positive.const_data_ptr<acc_t>(), w_i2t.const_data_ptr<acc_t>(),
      w_t2i.const_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> hinge_sum_backward(const at::Tensor& grad_i2t,
                                                      const at::Tensor& grad_t2i,
                                                      const at::Tensor& img, const at::Tensor& txt,
                                                      double margin, const Pairing& pairing,
                                                      const at::Tensor& active_i2t,
                                                      const at::Tensor& active_t2i) {
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t batch = img.size(0);
  const at::Tensor positive = positive_scores(img, txt);
  const at::Tensor w_i2t = grad_i2t.to(acc).contiguous();
  const at::Tensor w_t2i = grad_t2i.to(acc).contiguous();
  const at::Tensor img_acc = img.to(acc);  // GEMM operands next to the fp32/fp64 gradient tiles
  const at::Tensor txt_acc = txt.to(acc);
  at::Tensor grad_img = at::empty_like(img_acc);
  at::Tensor grad_txt = at::zeros_like(txt_acc);
  for_each_gemm_tile<acc_t>(img, txt, [&](const RowTile<acc_t>& t, at::Tensor& tile) {
    // The tile buffer becomes the gradient tile G in place.
    write_hinge_grad<acc_t, acc_t>(t.data, t.ld, tile.data_ptr<acc_t>(), t.ld, t.row0, t.rows,
                                   batch, pairing, margin, positive, w_i2t, w_t2i);
    at::Tensor rows = grad_img.narrow(0, t.row0, t.rows);
    at::mm_out(rows, tile, txt_acc);
    grad_txt.addmm_(tile.t(), img_acc.narrow(0, t.row0, t.rows));
  });
  const at::Tensor diagonal =
      positive_grad(grad_i2t, grad_t2i, active_i2t, active_t2i, acc).unsqueeze(1);
  grad_img.addcmul_(diagonal, txt_acc);
  grad_txt.addcmul_(diagonal, img_acc);
  return {grad_img.to(img.scalar_type()), grad_txt.to(txt.scalar_type())};
}

at::Tensor gather_cuda(const at::Tensor& y, const at::Tensor& w_self,
                       const at::Tensor& hardest_self, const at::Tensor& w_other,
                       const Inverse& inverse_other) {
  at::Tensor out = at::empty_like(y);
  const int64_t dim = y.size(1);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(dim, 32) * 32));
  const auto dtype = y.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_gather", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    gather_hardest_kernel<scalar_t, acc_t><<<grid_for(y.size(0)), threads, 0, stream()>>>(
        y.const_data_ptr<scalar_t>(), dim, w_self.const_data_ptr<acc_t>(),
        hardest_self.const_data_ptr<int64_t>(), w_other.const_data_ptr<acc_t>(),
        inverse_other.offsets.const_data_ptr<int64_t>(),
        inverse_other.sources.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---- operators -------------------------------------------------------------------------------

Costs mh_loss_cuda(const at::Tensor& img_emb, const at::Tensor& txt_emb, double margin,
                   bool max_violation, const Ids& img_ids, const Ids& txt_ids) {
  const auto ids = check_embeddings(img_emb, txt_emb, img_ids, txt_ids);
  check_margin(margin);
  const c10::cuda::CUDAGuard guard(img_emb.device());
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const at::Tensor img = img_emb.detach().contiguous();
  const at::Tensor txt = txt_emb.detach().contiguous();
  const int64_t parts = gemm_tiles(img.size(0));
  const at::Tensor positive = positive_scores(img, txt);
  const auto dtype = img.scalar_type();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    auto each_tile = [&](auto&& epilogue) { for_each_gemm_tile<acc_t>(img, txt, epilogue); };
    return max_violation ? hardest_costs<acc_t, acc_t, scalar_t>(each_tile, parts, pairing,
                                                                 positive, margin, dtype)
                         : hinge_sum_costs<acc_t, acc_t, scalar_t>(each_tile, parts, pairing,
                                                                   positive, margin, dtype);
  });
}

std::tuple<at::Tensor, at::Tensor> mh_loss_backward_cuda(
    const at::Tensor& grad_i2t, const at::Tensor& grad_t2i, const at::Tensor& img_emb,
    const at::Tensor& txt_emb, double margin, bool max_violation, const Ids& img_ids,
    const Ids& txt_ids, const at::Tensor& support_i2t, const at::Tensor& support_t2i) {
  const auto ids = check_embeddings(img_emb, txt_emb, img_ids, txt_ids);
  check_margin(margin);
  check_backward_inputs(grad_i2t, grad_t2i, support_i2t, support_t2i, img_emb.size(0), img_emb);
  const c10::cuda::CUDAGuard guard(img_emb.device());
  if (max_violation) {
    check_hardest_indices(support_i2t, support_t2i);
    return hardest_backward(grad_i2t, grad_t2i, img_emb, txt_emb, support_i2t, support_t2i,
                            &gather_cuda);
  }
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const at::Tensor img = img_emb.detach().contiguous();
  const at::Tensor txt = txt_emb.detach().contiguous();
  if (img.scalar_type() == at::kDouble) {
    return hinge_sum_backward<double>(grad_i2t, grad_t2i, img, txt, margin, pairing, support_i2t,
                                      support_t2i);
  }
  return hinge_sum_backward<float>(grad_i2t, grad_t2i, img, txt, margin, pairing, support_i2t,
                                   support_t2i);
}

Costs mh_loss_from_scores_cuda(const at::Tensor& scores_in, double margin, bool max_violation,
                               const Ids& img_ids, const Ids& txt_ids) {
  const auto ids = check_scores(scores_in, img_ids, txt_ids);
  check_margin(margin);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const at::Tensor scores = scores_in.detach().contiguous();
  const int64_t batch = scores.size(0);
  const at::Tensor positive =
      scores.diagonal().to(accumulate_dtype(scores.scalar_type())).contiguous();
  const auto dtype = scores.scalar_type();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_scores", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    // The given matrix is one tile holding every row.
    auto whole = [&](auto&& epilogue) {
      at::Tensor tile = scores;
      epilogue(RowTile<scalar_t>{scores.const_data_ptr<scalar_t>(), batch, 0, batch, 0}, tile);
    };
    return max_violation
               ? hardest_costs<scalar_t, acc_t, scalar_t>(whole, 1, pairing, positive, margin,
                                                          dtype)
               : hinge_sum_costs<scalar_t, acc_t, scalar_t>(whole, 1, pairing, positive, margin,
                                                            dtype);
  });
}

at::Tensor mh_loss_from_scores_backward_cuda(const at::Tensor& grad_i2t,
                                             const at::Tensor& grad_t2i,
                                             const at::Tensor& scores_in, double margin,
                                             bool max_violation, const Ids& img_ids,
                                             const Ids& txt_ids, const at::Tensor& support_i2t,
                                             const at::Tensor& support_t2i) {
  const auto ids = check_scores(scores_in, img_ids, txt_ids);
  check_margin(margin);
  const int64_t batch = scores_in.size(0);
  check_backward_inputs(grad_i2t, grad_t2i, support_i2t, support_t2i, batch, scores_in);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  if (max_violation) {
    check_hardest_indices(support_i2t, support_t2i);
    return from_scores_hardest_backward(grad_i2t, grad_t2i, scores_in, support_i2t, support_t2i);
  }
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const at::Tensor scores = scores_in.detach().contiguous();
  const auto acc = accumulate_dtype(scores.scalar_type());
  at::Tensor grad = at::empty({batch, batch}, scores.options().dtype(acc));
  const at::Tensor positive = scores.diagonal().to(acc).contiguous();
  const at::Tensor w_i2t = grad_i2t.to(acc).contiguous();
  const at::Tensor w_t2i = grad_t2i.to(acc).contiguous();
  const auto dtype = scores.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_scores_bwd", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    write_hinge_grad<scalar_t, acc_t>(scores.const_data_ptr<scalar_t>(), batch,
                                      grad.data_ptr<acc_t>(), batch, 0, batch, batch, pairing,
                                      margin, positive, w_i2t, w_t2i);
  });
  grad.diagonal().add_(positive_grad(grad_i2t, grad_t2i, support_i2t, support_t2i, acc));
  return grad.to(dtype);
}

}  // namespace
}  // namespace jwae::hinge

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("mh_loss", &jwae::hinge::mh_loss_cuda);
  m.impl("mh_loss_backward", &jwae::hinge::mh_loss_backward_cuda);
  m.impl("mh_loss_from_scores", &jwae::hinge::mh_loss_from_scores_cuda);
  m.impl("mh_loss_from_scores_backward", &jwae::hinge::mh_loss_from_scores_backward_cuda);
}
