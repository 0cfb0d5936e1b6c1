// CUDA kernels of the retrieval-ranking family. Score tiles come from cuBLAS (at::mm_out on the
// current stream, fp16/bf16 accumulated in fp32) into one reused buffer; own scores and rank
// counts are read off each tile by the kernels below (integer atomics: the counts do not depend
// on the order); top-k merges each tile into the running top-k with a stable sort.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../retrieval.h"
#include "../tiling.h"

namespace jwae::ranking {
namespace {

constexpr int kThreads = 256;        // one column per thread
constexpr int kRowsPerBlock = 32;    // rows a block walks down its columns
constexpr int kWarps = kThreads / 32;

// Tiles of 1024 x 4096 (16 MiB in fp32): large enough to keep cuBLAS efficient, small enough
// that the own-score pre-pass (the tiles holding own pairs) stays a fraction of the work.
TileGrid cuda_score_grid(int64_t rows, int64_t cols) {
  TileGrid grid{rows, cols};
  grid.tile_rows = 1024;
  grid.tile_cols = 4096;
  return grid;
}

// out = a·bᵀ in the score dtype: fp16/bf16 inputs multiply on tensor cores into fp32.
void score_mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  // Below autograd: inputs that require grad must not make the out= variant refuse to run.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (out.scalar_type() != a.scalar_type()) {
    at::mm_out(out, a, b.t(), out.scalar_type());
  } else {
    at::mm_out(out, a, b.t());
  }
}

// Calls fn(tile, row0, rows, col0, cols) for each listed tile id (row_block * col_blocks +
// col_block) of S = a·bᵀ, computed into one buffer; every pass computes a tile by the same call.
template <typename Fn>
void for_each_cuda_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                        const std::vector<int64_t>& tile_ids, Fn&& fn) {
  const int64_t capacity = std::min(grid.tile_rows, grid.rows) * std::min(grid.tile_cols, grid.cols);
  at::Tensor buffer = at::empty({capacity}, a.options().dtype(score_dtype(a.scalar_type())));
  for (const int64_t t : tile_ids) {
    const int64_t row0 = (t / grid.col_blocks()) * grid.tile_rows;
    const int64_t col0 = (t % grid.col_blocks()) * grid.tile_cols;
    const int64_t rows = std::min(grid.tile_rows, grid.rows - row0);
    const int64_t cols = std::min(grid.tile_cols, grid.cols - col0);
    at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
    score_mm(tile, a.narrow(0, row0, rows), b.narrow(0, col0, cols));
    fn(tile, row0, rows, col0, cols);
  }
}

std::vector<int64_t> all_tiles(const TileGrid& grid) {
  std::vector<int64_t> ids(grid.row_blocks() * grid.col_blocks());
  for (size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<int64_t>(t);
  return ids;
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

// Counts, over one tile, S > img_thr[row] per row and S > cap_thr[col] per column, skipping own
// pairs. A thread owns a column and walks kRowsPerBlock rows; per-row hits are summed by warp
// ballots and a block reduction, then added with one atomic per row and per column.
template <typename score_t>
__global__ void count_above_kernel(const score_t* __restrict__ tile, int64_t row0, int64_t rows,
                                   int64_t col0, int64_t cols, const int64_t* __restrict__ owner,
                                   const score_t* __restrict__ img_thr,
                                   const score_t* __restrict__ cap_thr,
                                   unsigned long long* __restrict__ img_counts,
                                   unsigned long long* __restrict__ cap_counts) {
  __shared__ int row_hits[kRowsPerBlock][kWarps];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = c < cols;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t r_end = r_begin + kRowsPerBlock < rows ? r_begin + kRowsPerBlock : rows;
  const score_t col_thr = active ? cap_thr[col0 + c] : score_t(0);
  const int64_t own_row = active ? owner[col0 + c] - row0 : -1;
  unsigned long long col_hits = 0;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const bool counted = active && r != own_row;
    const score_t s = counted ? tile[r * cols + c] : score_t(0);
    col_hits += counted && s > col_thr;
    const unsigned ballot = __ballot_sync(0xffffffffu, counted && s > img_thr[row0 + r]);
    if (lane == 0) row_hits[r - r_begin][warp] = __popc(ballot);
  }
  __syncthreads();
  if (threadIdx.x < r_end - r_begin) {
    unsigned long long hits = 0;
    for (int w = 0; w < kWarps; ++w) hits += row_hits[threadIdx.x][w];
    if (hits) atomicAdd(img_counts + row0 + r_begin + threadIdx.x, hits);
  }
  if (col_hits) atomicAdd(cap_counts + col0 + c, col_hits);
}

at::Tensor own_scores_cuda(const at::Tensor& img, const at::Tensor& cap, const at::Tensor& owner) {
  const c10::cuda::CUDAGuard guard(img.device());
  const TileGrid grid = cuda_score_grid(img.size(0), cap.size(0));
  const std::vector<int64_t> tiles =
      own_score_tiles(owner, grid.tile_rows, grid.tile_cols, grid.col_blocks());
  at::Tensor own = at::empty({cap.size(0)}, img.options().dtype(score_dtype(img.scalar_type())));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(own.scalar_type(), "retrieval_own_scores_cuda", [&] {
    for_each_cuda_tile(img, cap, grid, tiles,
                       [&](const at::Tensor& tile, int64_t row0, int64_t rows, int64_t col0,
                           int64_t cols) {
                         const unsigned blocks = static_cast<unsigned>((cols + kThreads - 1) / kThreads);
                         own_scores_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
                             tile.const_data_ptr<scalar_t>(), row0, rows, col0, cols,
                             owner.const_data_ptr<int64_t>(), own.mutable_data_ptr<scalar_t>());
                         C10_CUDA_KERNEL_LAUNCH_CHECK();
                       });
  });
  return own;
}

std::tuple<at::Tensor, at::Tensor> count_above_cuda(const at::Tensor& img, const at::Tensor& cap,
                                                    const at::Tensor& owner,
                                                    const at::Tensor& img_thresholds,
                                                    const at::Tensor& cap_thresholds) {
  const c10::cuda::CUDAGuard guard(img.device());
  const TileGrid grid = cuda_score_grid(img.size(0), cap.size(0));
  at::Tensor img_counts = at::zeros({img.size(0)}, owner.options());
  at::Tensor cap_counts = at::zeros({cap.size(0)}, owner.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(img_thresholds.scalar_type(), "retrieval_count_above_cuda", [&] {
    for_each_cuda_tile(
        img, cap, grid, all_tiles(grid),
        [&](const at::Tensor& tile, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
          // rows <= 1024 and cols <= 4096: at most 16 x 32 blocks.
          const dim3 blocks(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                            static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
          count_above_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
              tile.const_data_ptr<scalar_t>(), row0, rows, col0, cols,
              owner.const_data_ptr<int64_t>(), img_thresholds.const_data_ptr<scalar_t>(),
              cap_thresholds.const_data_ptr<scalar_t>(),
              reinterpret_cast<unsigned long long*>(img_counts.mutable_data_ptr<int64_t>()),
              reinterpret_cast<unsigned long long*>(cap_counts.mutable_data_ptr<int64_t>()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
  return {img_counts, cap_counts};
}

// Candidates sorted per step: bounds the (running top-k + tile) rows when k is large.
constexpr int64_t kCandidateBudget = int64_t{1} << 24;

std::tuple<at::Tensor, at::Tensor> topk_search_cuda(const at::Tensor& queries_in,
                                                    const at::Tensor& gallery_in, int64_t k) {
  check_topk_arguments(queries_in, gallery_in, k);
  const c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor gallery = gallery_in.contiguous();
  const int64_t n_queries = queries.size(0);
  const int64_t n_gallery = gallery.size(0);
  const int64_t tile_cols = std::min<int64_t>(8192, n_gallery);
  const int64_t tile_rows = std::clamp<int64_t>(kCandidateBudget / (k + tile_cols), 1, 1024);
  const auto score_options = queries.options().dtype(score_dtype(queries.scalar_type()));
  at::Tensor scores = at::empty({n_queries, k}, score_options);
  at::Tensor indices = at::empty({n_queries, k}, queries.options().dtype(at::kLong));
  at::Tensor buffer = at::empty({tile_rows * tile_cols}, score_options);
  const at::Tensor columns = at::arange(n_gallery, indices.options());
  for (int64_t row0 = 0; row0 < n_queries; row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n_queries - row0);
    at::Tensor best_scores = at::empty({rows, 0}, score_options);
    at::Tensor best_indices = at::empty({rows, 0}, indices.options());
    for (int64_t col0 = 0; col0 < n_gallery; col0 += tile_cols) {
      const int64_t cols = std::min(tile_cols, n_gallery - col0);
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      score_mm(tile, queries.narrow(0, row0, rows), gallery.narrow(0, col0, cols));
      // The running candidates have lower indices than the tile's, and the tile's columns are
      // in index order: a stable descending sort breaks every tie by lower index.
      const at::Tensor candidates = at::cat({best_scores, tile}, 1);
      const at::Tensor candidate_indices =
          at::cat({best_indices, columns.narrow(0, col0, cols).expand({rows, cols})}, 1);
      auto [sorted, order] = at::sort(candidates, /*stable=*/true, /*dim=*/1, /*descending=*/true);
      const int64_t keep = std::min(k, candidates.size(1));
      best_scores = sorted.narrow(1, 0, keep);
      best_indices = at::gather(candidate_indices, 1, order.narrow(1, 0, keep));
    }
    scores.narrow(0, row0, rows).copy_(best_scores);
    indices.narrow(0, row0, rows).copy_(best_indices);
  }
  return {scores, indices};
}

std::tuple<at::Tensor, at::Tensor> retrieval_ranks_cuda(const at::Tensor& img_emb,
                                                        const at::Tensor& cap_emb,
                                                        const at::Tensor& cap_to_img) {
  return ranks_from(img_emb, cap_emb, cap_to_img, own_scores_cuda, count_above_cuda);
}

std::tuple<at::Tensor, at::Tensor> retrieval_thresholds_cuda(const at::Tensor& img_emb,
                                                             const at::Tensor& cap_emb,
                                                             const at::Tensor& cap_to_img) {
  return thresholds_from(img_emb, cap_emb, cap_to_img, own_scores_cuda);
}

std::tuple<at::Tensor, at::Tensor> retrieval_count_above_cuda(
    const at::Tensor& img_emb, const at::Tensor& cap_emb, const at::Tensor& cap_to_img,
    const at::Tensor& img_thresholds, const at::Tensor& cap_thresholds) {
  return checked_count_above(img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds,
                             count_above_cuda);
}

}  // namespace
}  // namespace jwae::ranking

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("retrieval_ranks", &jwae::ranking::retrieval_ranks_cuda);
  m.impl("retrieval_thresholds", &jwae::ranking::retrieval_thresholds_cuda);
  m.impl("retrieval_count_above", &jwae::ranking::retrieval_count_above_cuda);
  m.impl("topk_search", &jwae::ranking::topk_search_cuda);
}
