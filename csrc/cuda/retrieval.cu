// CUDA kernels of the retrieval family. Score tiles come from the tile traversal of tiling.cuh
// (cuBLAS on the current stream, fp16/bf16 accumulated in fp32); own scores and rank counts are
// read off each tile by the kernels below (integer atomics: the counts do not depend
// on the order); top-k merges each tile into the running top-k with a stable sort.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../retrieval.h"
#include "tiling.cuh"

namespace jwae::ranking {
namespace {

constexpr int kThreads = 256;        // one column per thread
constexpr int kRowsPerBlock = 32;    // rows a block walks down its columns
constexpr int kWarps = kThreads / 32;

// Tiles of 1024 x 4096 (16 MiB in fp32): large enough to keep cuBLAS efficient, small enough
// that the own-score pre-pass (the tiles holding own pairs) stays a fraction of the work.
TileGrid score_grid(int64_t rows, int64_t cols) {
  return budget_grid(rows, cols, TileBudget{int64_t{1} << 22, 1024, 4096});
}

// own[j] = tile[owner[j] - row0][j - col0] for the captions whose image is in the tile's rows.
template <typename score_t>
__global__ void own_scores_kernel(const score_t* __restrict__ tile, int64_t row0, int64_t rows,
                                  int64_t col0, int64_t cols, const int64_t* __restrict__ owner,
                                  score_t* __restrict__ own) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r = owner[col0 + c] - row0;
  if (r >= 0 && r < rows) own[col0 + c] = tile[r * cols + c];
}

// Counts, over one tile, S >= img_thr[row] per row and S >= cap_thr[col] per column (hits), and
// S == the threshold (ties), skipping own pairs. A thread owns a column and walks kRowsPerBlock
// rows; per-row hits and ties are summed by warp ballots and a block reduction, then added with
// one atomic per row and per column.
template <typename score_t>
__global__ void count_at_least_kernel(const score_t* __restrict__ tile, int64_t row0,
                                      int64_t rows, int64_t col0, int64_t cols,
                                      const int64_t* __restrict__ owner,
                                      const score_t* __restrict__ img_thr,
                                      const score_t* __restrict__ cap_thr,
                                      unsigned long long* __restrict__ img_counts,
                                      unsigned long long* __restrict__ cap_counts,
                                      unsigned long long* __restrict__ img_ties,
                                      unsigned long long* __restrict__ cap_ties) {
  __shared__ int row_hits[kRowsPerBlock][kWarps];
  __shared__ int row_ties[kRowsPerBlock][kWarps];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = c < cols;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t r_end = r_begin + kRowsPerBlock < rows ? r_begin + kRowsPerBlock : rows;
  const score_t col_thr = active ? cap_thr[col0 + c] : score_t(0);
  const int64_t own_row = active ? owner[col0 + c] - row0 : -1;
  unsigned long long col_hits = 0;
  unsigned long long col_ties = 0;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const bool counted = active && r != own_row;
    const score_t s = counted ? tile[r * cols + c] : score_t(0);
    col_hits += counted && s >= col_thr;
    col_ties += counted && s == col_thr;
    const score_t row_thr = img_thr[row0 + r];
    const unsigned hit_ballot = __ballot_sync(0xffffffffu, counted && s >= row_thr);
    const unsigned tie_ballot = __ballot_sync(0xffffffffu, counted && s == row_thr);
    if (lane == 0) {
      row_hits[r - r_begin][warp] = __popc(hit_ballot);
      row_ties[r - r_begin][warp] = __popc(tie_ballot);
    }
  }
  __syncthreads();
  if (threadIdx.x < r_end - r_begin) {
    unsigned long long hits = 0;
    unsigned long long ties = 0;
    for (int w = 0; w < kWarps; ++w) {
      hits += row_hits[threadIdx.x][w];
      ties += row_ties[threadIdx.x][w];
    }
    if (hits) atomicAdd(img_counts + row0 + r_begin + threadIdx.x, hits);
    if (ties) atomicAdd(img_ties + row0 + r_begin + threadIdx.x, ties);
  }
  if (col_hits) atomicAdd(cap_counts + col0 + c, col_hits);
  if (col_ties) atomicAdd(cap_ties + col0 + c, col_ties);
}

at::Tensor own_scores_cuda(const at::Tensor& img, const at::Tensor& cap, const at::Tensor& owner) {
  const TileGrid grid = score_grid(img.size(0), cap.size(0));
  const std::vector<int64_t> tiles =
      own_score_tiles(owner, grid.tile_rows, grid.tile_cols, grid.col_blocks());
  const auto acc = accumulation_dtype(img.scalar_type());
  at::Tensor own = at::empty({cap.size(0)}, img.options().dtype(acc));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(own.scalar_type(), "retrieval_own_scores_cuda", [&] {
    for_each_tile(img, cap, grid, tiles, [&](const DeviceTile& t, const at::Tensor& tile) {
      const unsigned blocks = static_cast<unsigned>((t.cols + kThreads - 1) / kThreads);
      own_scores_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          tile.const_data_ptr<scalar_t>(), t.row0, t.rows, t.col0, t.cols,
          owner.const_data_ptr<int64_t>(), own.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return own;
}

RankCounts count_at_least_cuda(const at::Tensor& img, const at::Tensor& cap,
                               const at::Tensor& owner, const at::Tensor& img_thresholds,
                               const at::Tensor& cap_thresholds) {
  const TileGrid grid = score_grid(img.size(0), cap.size(0));
  at::Tensor img_counts = at::zeros({img.size(0)}, owner.options());
  at::Tensor cap_counts = at::zeros({cap.size(0)}, owner.options());
  at::Tensor img_ties = at::zeros({img.size(0)}, owner.options());
  at::Tensor cap_ties = at::zeros({cap.size(0)}, owner.options());
  auto counters = [](at::Tensor& t) {
    return reinterpret_cast<unsigned long long*>(t.mutable_data_ptr<int64_t>());
  };
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(img_thresholds.scalar_type(), "retrieval_count_at_least_cuda", [&] {
    for_each_tile(img, cap, grid, [&](const DeviceTile& t, const at::Tensor& tile) {
      // rows <= 1024 and cols <= 4096: at most 16 x 32 blocks.
      const dim3 blocks(static_cast<unsigned>((t.cols + kThreads - 1) / kThreads),
                        static_cast<unsigned>((t.rows + kRowsPerBlock - 1) / kRowsPerBlock));
      count_at_least_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          tile.const_data_ptr<scalar_t>(), t.row0, t.rows, t.col0, t.cols,
          owner.const_data_ptr<int64_t>(), img_thresholds.const_data_ptr<scalar_t>(),
          cap_thresholds.const_data_ptr<scalar_t>(), counters(img_counts), counters(cap_counts),
          counters(img_ties), counters(cap_ties));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {img_counts, cap_counts, img_ties, cap_ties};
}

// Candidates sorted per step: bounds the (running top-k + tile) rows when k is large.
constexpr int64_t kCandidateBudget = int64_t{1} << 24;

std::tuple<at::Tensor, at::Tensor> topk_search_cuda(const at::Tensor& queries,
                                                    const at::Tensor& gallery, int64_t k) {
  const int64_t n_queries = queries.size(0);
  const int64_t n_gallery = gallery.size(0);
  const TileGrid grid =
      budget_grid(n_queries, n_gallery, TileBudget{kCandidateBudget, 1024, 8192, k});
  const auto score_options = queries.options().dtype(accumulation_dtype(queries.scalar_type()));
  at::Tensor scores = at::empty({n_queries, k}, score_options);
  at::Tensor indices = at::empty({n_queries, k}, queries.options().dtype(at::kLong));
  const at::Tensor columns = at::arange(n_gallery, indices.options());
  at::Tensor best_scores, best_indices;  // the running top-k of the current row block
  for_each_tile(queries, gallery, grid, [&](const DeviceTile& t, const at::Tensor& tile) {
    if (t.col_block == 0) {
      best_scores = at::empty({t.rows, 0}, score_options);
      best_indices = at::empty({t.rows, 0}, indices.options());
    }
    // The running candidates have lower indices than the tile's, and the tile's columns are in
    // index order: a stable descending sort breaks every tie by lower index.
    const at::Tensor candidates = at::cat({best_scores, tile}, 1);
    const at::Tensor candidate_indices =
        at::cat({best_indices, columns.narrow(0, t.col0, t.cols).expand({t.rows, t.cols})}, 1);
    auto [sorted, order] = at::sort(candidates, /*stable=*/true, /*dim=*/1, /*descending=*/true);
    const int64_t keep = std::min(k, candidates.size(1));
    best_scores = sorted.narrow(1, 0, keep);
    best_indices = at::gather(candidate_indices, 1, order.narrow(1, 0, keep));
    if (t.col_block == grid.col_blocks() - 1) {
      scores.narrow(0, t.row0, t.rows).copy_(best_scores);
      indices.narrow(0, t.row0, t.rows).copy_(best_indices);
    }
  });
  return {scores, indices};
}

const RetrievalKernels& cuda_kernels() {
  static const RetrievalKernels kernels{own_scores_cuda, count_at_least_cuda, topk_search_cuda};
  return kernels;
}

}  // namespace
}  // namespace jwae::ranking

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  jwae::ranking::register_retrieval<jwae::ranking::cuda_kernels>(m);
}
