// The CPU GEMM-tile loop shared by the max-of-hinges loss and the retrieval kernels: the score
// matrix S = A·Bᵀ is produced one cache-sized tile at a time and handed to an epilogue while it is
// hot, so no kernel ever holds S whole.
//
// Why this shape: on these CPUs a single-threaded BLAS GEMM per tile, with tiles spread over
// threads, runs as fast as one multi-threaded GEMM of the whole matrix, and the epilogue then reads
// the tile from L2 instead of from memory (measured: 4096×4096×1024 fp32, 2 cores, MKL — tiles of
// 256×1024 with a row-and-column max epilogue take 0.92–0.97x the time of the bare torch.mm).
// Values can differ from one whole-matrix GEMM in the last bit (BLAS picks kernels by shape).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace jwae {

// How S is cut. Tile sizes are fixed (never derived from the thread count) so that any
// per-tile partial results, reduced in tile order, are the same on every machine.
struct TileGrid {
  int64_t rows;             // rows of S (rows of A)
  int64_t cols;             // columns of S (rows of B)
  int64_t tile_rows = 256;  // 256×1024 fp32 = 1 MiB: one tile sits in a core's L2
  int64_t tile_cols = 1024;

  int64_t row_blocks() const { return (rows + tile_rows - 1) / tile_rows; }
  int64_t col_blocks() const { return (cols + tile_cols - 1) / tile_cols; }
};

// One computed tile: element (i, j) is S[row0 + i][col0 + j]. Only valid inside the epilogue.
template <typename scalar_t>
struct ScoreTile {
  const scalar_t* data;
  int64_t ld;  // distance between consecutive rows of `data`
  int64_t row0, rows, row_block;
  int64_t col0, cols, col_block;

  const scalar_t* row(int64_t i) const { return data + i * ld; }
};

// A buffer that holds any tile of `grid` (one per thread).
inline at::Tensor score_tile_buffer(const at::Tensor& a, const TileGrid& grid) {
  return at::empty({grid.tile_rows, grid.tile_cols}, a.options());
}

// Computes tile `tile_id` (row_block * col_blocks + col_block) of S = a·bᵀ into `buffer`. Every
// loop computes a tile through this one call (the same single-threaded GEMM on the same operands,
// which BLAS libraries compute deterministically), so a tile holds the same bits whichever loop
// computed it.
template <typename scalar_t>
ScoreTile<scalar_t> compute_score_tile(at::Tensor& buffer, const at::Tensor& a, const at::Tensor& b,
                                       const TileGrid& grid, int64_t tile_id) {
  const int64_t n_col_blocks = grid.col_blocks();
  const int64_t row_block = tile_id / n_col_blocks;
  const int64_t col_block = tile_id % n_col_blocks;
  const int64_t row0 = row_block * grid.tile_rows;
  const int64_t col0 = col_block * grid.tile_cols;
  const int64_t rows = std::min(grid.tile_rows, grid.rows - row0);
  const int64_t cols = std::min(grid.tile_cols, grid.cols - col0);
  at::Tensor out = buffer.view({-1}).narrow(0, 0, rows * cols).view({rows, cols});
  // Kernels register their backward separately; below autograd, inputs that require grad do not
  // make mm_out refuse to run (the guard is per thread, and this runs on worker threads).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::mm_out(out, a.narrow(0, row0, rows), b.narrow(0, col0, cols).t());
  return {out.const_data_ptr<scalar_t>(), cols, row0, rows, row_block, col0, cols, col_block};
}

namespace detail {

// Runs tiles tile_id(0) .. tile_id(count - 1), spread over threads in contiguous runs.
template <typename scalar_t, typename TileId, typename Epilogue>
void run_score_tiles(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid, int64_t count,
                     TileId&& tile_id, Epilogue&& epilogue) {
  if (count == 0) return;
  at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
    // One buffer per thread; the BLAS call inside a parallel region runs single-threaded.
    at::Tensor buffer = score_tile_buffer(a, grid);
    for (int64_t k = first; k < last; ++k) {
      epilogue(compute_score_tile<scalar_t>(buffer, a, b, grid, tile_id(k)));
    }
  });
}

}  // namespace detail

// Computes every tile of S = a·bᵀ (a: rows×d, b: cols×d, contiguous, same dtype, CPU) and calls
// `epilogue(const ScoreTile<scalar_t>&)` on it. Tiles run concurrently on different threads, so
// the epilogue may only write state owned by its tile: per-row results of its row range into a
// slot for its col_block, per-column results into a slot for its row_block (or, for reductions
// that are order-independent such as integer counts or max with lowest-index ties, into per-tile
// slots merged afterwards in any order).
template <typename scalar_t, typename Epilogue>
void for_each_score_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                         Epilogue&& epilogue) {
  detail::run_score_tiles<scalar_t>(
      a, b, grid, grid.row_blocks() * grid.col_blocks(), [](int64_t k) { return k; }, epilogue);
}

// The same for a subset of the tiles: `tile_ids` (row_block * col_blocks + col_block, in the
// order to run them). A tile computed here holds bit for bit the values the full loop computes
// for it (see compute_score_tile), so a pre-pass over a few tiles can derive
// per-row or per-column values (e.g. thresholds) that a later full pass compares against
// consistently.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                         const std::vector<int64_t>& tile_ids, Epilogue&& epilogue) {
  detail::run_score_tiles<scalar_t>(
      a, b, grid, static_cast<int64_t>(tile_ids.size()),
      [&](int64_t k) { return tile_ids[k]; }, epilogue);
}

}  // namespace jwae
