// Max-of-hinges loss, CUDA kernels (the operators around them: csrc/mh_loss.cpp). S = img·txtᵀ is
// computed in row tiles spanning every column (tiling.cuh: cuBLAS into one reused buffer of
// ~32 MB, fp32 — also for fp16/bf16 inputs — or fp64, so a tile mostly stays in L2), each followed
// by epilogue kernels on the same stream: a row's partial result is final within its tile, a
// column's is a per-tile partial merged afterwards in tile order. Every reduction is a fixed tree
// (block_reduce.cuh) or follows the total order of `beats` (mh_loss.h), so results are
// deterministic. The max_violation backward gathers rows through the inverse of the hardest
// indices (no atomics); the sum-of-hinges backward recomputes each tile, turns it into the hinge
// gradient in place and multiplies it by the embeddings with cuBLAS, accumulating in tile order.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "../dtypes.h"
#include "../mh_loss.h"
#include "block_reduce.cuh"
#include "tiling.cuh"

namespace jwae::hinge {
namespace {

constexpr int kThreads = 256;       // row kernels, elementwise kernels
constexpr int kColsPerBlock = 32;   // column kernels: one warp-wide stripe of columns ...
constexpr int kRowLanes = 8;        // ... read by 8 row lanes, merged in lane order
constexpr unsigned kFullMask = 0xffffffffu;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row tiles spanning every column, 32 MB of fp32 scores each.
TileGrid row_tile_grid(int64_t batch) {
  return budget_grid(batch, batch, TileBudget{int64_t{1} << 23});
}

// One row tile of a score matrix: rows [row0, row0 + rows) and every column; `part` numbers the
// tiles, in order.
template <typename scalar_t>
struct RowTile {
  const scalar_t* data;
  int64_t ld;
  int64_t row0;
  int64_t rows;
  int64_t part;
};

// What one score S_ij adds to a query's partial result (Hardest or HingeSum, mh_loss.h): `query`
// is the partial's own index (i for a row, j for a column), `candidate` the other one.
template <typename acc_t>
struct OfferHardest {
  Pairing pairing;

  __device__ void operator()(Hardest<acc_t>& partial, int64_t i, int64_t j, int64_t,
                             int64_t candidate, acc_t score) const {
    if (pairing.negative(i, j)) partial.offer(score, candidate);
  }
};

template <typename acc_t>
struct OfferHinge {
  Pairing pairing;
  acc_t margin;
  const acc_t* positive;

  __device__ void operator()(HingeSum<acc_t>& partial, int64_t i, int64_t j, int64_t query,
                             int64_t, acc_t score) const {
    if (pairing.negative(i, j)) partial.add(hinge(margin, score, positive[query]));
  }
};

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

// The partial result of each tile row (one block per row; the tile spans all `cols` columns).
template <typename P, typename tile_t, typename acc_t, typename Offer>
__global__ void row_partials_kernel(const tile_t* __restrict__ tile, int64_t ld, int64_t row0,
                                    int64_t cols, Offer offer, acc_t* __restrict__ values,
                                    int64_t* __restrict__ indices) {
  const int64_t i = row0 + blockIdx.x;
  const tile_t* s = tile + int64_t{blockIdx.x} * ld;
  P partial = P::none();
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    offer(partial, i, j, i, j, static_cast<acc_t>(s[j]));
  }
  partial = block_reduce(partial, MergeOp{});
  if (threadIdx.x == 0) {
    const auto [value, index] = partial;
    values[i] = value;
    indices[i] = index;
  }
}

// The partial result of each column over the tile's rows: block (kColsPerBlock, kRowLanes), lanes
// stride over rows (coalesced across the warp), then merge in lane order.
template <typename P, typename tile_t, typename acc_t, typename Offer>
__global__ void col_partials_kernel(const tile_t* __restrict__ tile, int64_t ld, int64_t row0,
                                    int64_t rows, int64_t cols, Offer offer,
                                    acc_t* __restrict__ values, int64_t* __restrict__ indices) {
  __shared__ P lanes[kRowLanes][kColsPerBlock];
  const int64_t j = int64_t{blockIdx.x} * kColsPerBlock + threadIdx.x;
  P partial = P::none();
  if (j < cols) {
    for (int64_t ii = threadIdx.y; ii < rows; ii += kRowLanes) {
      const int64_t i = row0 + ii;
      offer(partial, i, j, j, i, static_cast<acc_t>(tile[ii * ld + j]));
    }
  }
  lanes[threadIdx.y][threadIdx.x] = partial;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int lane = 1; lane < kRowLanes; ++lane) partial.merge(lanes[lane][threadIdx.x]);
    const auto [value, index] = partial;
    values[j] = value;
    indices[j] = index;
  }
}

// Merges each query's per-tile partials in tile order into its cost and support.
template <typename P, typename acc_t, typename out_t>
__global__ void finish_kernel(const acc_t* __restrict__ values, const int64_t* __restrict__ indices,
                              int64_t parts, int64_t batch, const acc_t* __restrict__ positive,
                              acc_t margin, out_t* __restrict__ cost,
                              int64_t* __restrict__ support) {
  const int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (k >= batch) return;
  const P total = merged<P>(values, indices, parts, batch, k);
  const acc_t c = total.cost(margin, positive[k]);
  cost[k] = static_cast<out_t>(c);
  support[k] = total.support(c);
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

// One row of a hardest-negative gradient (see GatherFn in mh_loss.h): one block per row k, the
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

at::Tensor positive_scores(const at::Tensor& img, const at::Tensor& txt) {
  const int64_t batch = img.size(0);
  at::Tensor out = at::empty({batch}, img.options().dtype(accumulation_dtype(img.scalar_type())));
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

// Both directions' costs and supports from the row tiles `each_tile` hands over: per-row partials
// final in their tile, per-column partials one per tile (`parts` tiles), then finish.
template <typename P, typename tile_t, typename out_t, typename EachTile, typename Offer>
Costs reduce_tiles(EachTile&& each_tile, int64_t parts, const Offer& offer,
                   const at::Tensor& positive, double margin) {
  using acc_t = decltype(P::none().cost(0, 0));
  const int64_t batch = positive.size(0);
  const auto acc = positive.options();
  const auto index = acc.dtype(at::kLong);
  at::Tensor row_value = at::empty({batch}, acc);
  at::Tensor row_index = at::empty({batch}, index);
  at::Tensor col_value = at::empty({parts, batch}, acc);
  at::Tensor col_index = at::empty({parts, batch}, index);
  each_tile([&](const RowTile<tile_t>& t) {
    row_partials_kernel<P, tile_t, acc_t><<<grid_for(t.rows), kThreads, 0, stream()>>>(
        t.data, t.ld, t.row0, batch, offer, row_value.data_ptr<acc_t>(),
        row_index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    col_partials_kernel<P, tile_t, acc_t>
        <<<grid_for(ceil_div(batch, kColsPerBlock)), dim3(kColsPerBlock, kRowLanes), 0, stream()>>>(
            t.data, t.ld, t.row0, t.rows, batch, offer,
            col_value.data_ptr<acc_t>() + t.part * batch,
            col_index.data_ptr<int64_t>() + t.part * batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto out = acc.dtype(c10::CppTypeToScalarType<out_t>::value);
  at::Tensor cost_i2t = at::empty({batch}, out);
  at::Tensor cost_t2i = at::empty({batch}, out);
  at::Tensor support_i2t = at::empty({batch}, index);
  at::Tensor support_t2i = at::empty({batch}, index);
  const unsigned blocks = grid_for(ceil_div(batch, kThreads));
  const acc_t m = static_cast<acc_t>(margin);
  const acc_t* pos = positive.const_data_ptr<acc_t>();
  finish_kernel<P, acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      row_value.const_data_ptr<acc_t>(), row_index.const_data_ptr<int64_t>(), 1, batch, pos, m,
      cost_i2t.data_ptr<out_t>(), support_i2t.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<P, acc_t, out_t><<<blocks, kThreads, 0, stream()>>>(
      col_value.const_data_ptr<acc_t>(), col_index.const_data_ptr<int64_t>(), parts, batch, pos, m,
      cost_t2i.data_ptr<out_t>(), support_t2i.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {cost_i2t, cost_t2i, support_i2t, support_t2i};
}

template <typename scalar_t, typename tile_t, typename EachTile>
Costs costs_of(EachTile&& each_tile, int64_t parts, const Pairing& pairing,
               const at::Tensor& positive, double margin, bool max_violation) {
  using acc_t = at::acc_type<scalar_t, true>;
  if (max_violation) {
    return reduce_tiles<Hardest<acc_t>, tile_t, scalar_t>(each_tile, parts,
                                                           OfferHardest<acc_t>{pairing}, positive,
                                                           margin);
  }
  const OfferHinge<acc_t> offer{pairing, static_cast<acc_t>(margin),
                                positive.const_data_ptr<acc_t>()};
  return reduce_tiles<HingeSum<acc_t>, tile_t, scalar_t>(each_tile, parts, offer, positive,
                                                          margin);
}

Costs costs_cuda(const ScoreSource& source, const Pairing& pairing, double margin,
                 bool max_violation) {
  const at::Tensor& like = source.fused() ? source.img : source.scores;
  const int64_t batch = like.size(0);
  const auto dtype = like.scalar_type();
  const at::Tensor positive =
      source.fused() ? positive_scores(source.img, source.txt)
                     : source.scores.diagonal().to(accumulation_dtype(dtype)).contiguous();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mh_loss_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (source.fused()) {
      const TileGrid grid = row_tile_grid(batch);
      auto each_tile = [&](auto&& epilogue) {
        for_each_tile(source.img, source.txt, grid, [&](const DeviceTile& t, at::Tensor& tile) {
          epilogue(RowTile<acc_t>{tile.const_data_ptr<acc_t>(), t.cols, t.row0, t.rows,
                                  t.row_block});
        });
      };
      return costs_of<scalar_t, acc_t>(each_tile, grid.row_blocks(), pairing, positive, margin,
                                       max_violation);
    }
    // The given matrix is one tile holding every row.
    auto whole = [&](auto&& epilogue) {
      epilogue(RowTile<scalar_t>{source.scores.const_data_ptr<scalar_t>(), batch, 0, batch, 0});
    };
    return costs_of<scalar_t, scalar_t>(whole, 1, pairing, positive, margin, max_violation);
  });
}

// Writes the hinge gradient of rows [row0, row0 + rows) of `s` into `out` (acc dtype).
template <typename tile_t, typename acc_t>
void write_hinge_grad(const tile_t* s, int64_t lds, acc_t* out, int64_t ldo, int64_t row0,
                      int64_t rows, int64_t cols, const Pairing& pairing, double margin,
                      const at::Tensor& positive, const at::Tensor& w_i2t,
                      const at::Tensor& w_t2i) {
  const int64_t blocks = std::min<int64_t>(ceil_div(rows * cols, kThreads), int64_t{1} << 20);
  hinge_grad_kernel<tile_t, acc_t><<<grid_for(blocks), kThreads, 0, stream()>>>(
      s, lds, out, ldo, row0, rows, cols, pairing, static_cast<acc_t>(margin),
      positive.const_data_ptr<acc_t>(), w_i2t.const_data_ptr<acc_t>(),
      w_t2i.const_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> hinge_sum_backward_typed(const at::Tensor& grad_i2t,
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
  for_each_tile(img, txt, row_tile_grid(batch), [&](const DeviceTile& t, at::Tensor& tile) {
    // The tile buffer becomes the gradient tile G in place.
    acc_t* g = tile.data_ptr<acc_t>();
    write_hinge_grad<acc_t, acc_t>(g, batch, g, batch, t.row0, t.rows, batch, pairing, margin,
                                   positive, w_i2t, w_t2i);
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

std::tuple<at::Tensor, at::Tensor> hinge_sum_backward_cuda(
    const at::Tensor& grad_i2t, const at::Tensor& grad_t2i, const at::Tensor& img,
    const at::Tensor& txt, double margin, const Pairing& pairing, const at::Tensor& active_i2t,
    const at::Tensor& active_t2i) {
  if (img.scalar_type() == at::kDouble) {
    return hinge_sum_backward_typed<double>(grad_i2t, grad_t2i, img, txt, margin, pairing,
                                            active_i2t, active_t2i);
  }
  return hinge_sum_backward_typed<float>(grad_i2t, grad_t2i, img, txt, margin, pairing,
                                         active_i2t, active_t2i);
}

at::Tensor hinge_grad_of_scores_cuda(const at::Tensor& scores, const Pairing& pairing,
                                     double margin, const at::Tensor& positive,
                                     const at::Tensor& w_i2t, const at::Tensor& w_t2i) {
  const int64_t batch = scores.size(0);
  at::Tensor grad = at::empty({batch, batch}, positive.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "mh_loss_scores_bwd", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        write_hinge_grad<scalar_t, acc_t>(scores.const_data_ptr<scalar_t>(), batch,
                                          grad.data_ptr<acc_t>(), batch, 0, batch, batch, pairing,
                                          margin, positive, w_i2t, w_t2i);
      });
  return grad;
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

const MhLossKernels& cuda_kernels() {
  static const MhLossKernels kernels{costs_cuda, gather_cuda, hinge_sum_backward_cuda,
                                     hinge_grad_of_scores_cuda};
  return kernels;
}

}  // namespace
}  // namespace jwae::hinge

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  jwae::hinge::register_mh_loss<jwae::hinge::cuda_kernels>(m);
}
