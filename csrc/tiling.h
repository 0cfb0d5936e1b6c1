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

namespace detail {

struct TileBounds {
  int64_t row0, rows, col0, cols;
};

inline TileBounds tile_bounds(const TileGrid& grid, int64_t row_block, int64_t col_block) {
  const int64_t row0 = row_block * grid.tile_rows;
  const int64_t col0 = col_block * grid.tile_cols;
  return {row0, std::min(grid.tile_rows, grid.rows - row0), col0,
          std::min(grid.tile_cols, grid.cols - col0)};
}

// Computes tile (row_block, col_block) of S = a·bᵀ into `buffer` (at least tile_rows×tile_cols
// elements) and describes it. Every traversal below goes through here, so a tile has the same
// bits whichever traversal computed it (same GEMM shape, same operands).
template <typename scalar_t>
ScoreTile<scalar_t> compute_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                                 int64_t row_block, int64_t col_block, at::Tensor& buffer,
                                 at::Tensor& out) {
  const TileBounds t = tile_bounds(grid, row_block, col_block);
  out = buffer.view({-1}).narrow(0, 0, t.rows * t.cols).view({t.rows, t.cols});
  // Kernels register their backward separately; below autograd, inputs that require grad do not
  // make mm_out refuse to run (the guard is per thread, and this runs on worker threads).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::mm_out(out, a.narrow(0, t.row0, t.rows), b.narrow(0, t.col0, t.cols).t());
  return {out.const_data_ptr<scalar_t>(), t.cols, t.row0, t.rows, row_block, t.col0, t.cols,
          col_block};
}

// Runs tiles tile_id(0) .. tile_id(count - 1) (ids row_block * col_blocks + col_block), spread
// over threads in contiguous runs.
template <typename scalar_t, typename TileId, typename Epilogue>
void run_tiles(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid, int64_t count,
               TileId&& tile_id, Epilogue&& epilogue) {
  if (count == 0) return;
  const int64_t n_col_blocks = grid.col_blocks();
  at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
    // One buffer per thread; the BLAS call inside a parallel region runs single-threaded.
    at::Tensor buffer = at::empty({grid.tile_rows, grid.tile_cols}, a.options());
    at::Tensor out;
    for (int64_t k = first; k < last; ++k) {
      const int64_t t = tile_id(k);
      epilogue(compute_tile<scalar_t>(a, b, grid, t / n_col_blocks, t % n_col_blocks, buffer, out));
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
  detail::run_tiles<scalar_t>(
      a, b, grid, grid.row_blocks() * grid.col_blocks(), [](int64_t k) { return k; }, epilogue);
}

// The same for a subset of the tiles: `tile_ids` (row_block * col_blocks + col_block). A tile
// computed here has the same bits as in the full loop, so a pre-pass over a few tiles can derive
// per-row or per-column values (thresholds, say) that a later full pass compares its tiles
// against consistently.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                         const std::vector<int64_t>& tile_ids, Epilogue&& epilogue) {
  detail::run_tiles<scalar_t>(
      a, b, grid, static_cast<int64_t>(tile_ids.size()), [&](int64_t k) { return tile_ids[k]; },
      epilogue);
}

// Which blocks of S one thread owns in for_each_score_tile_in_order.
enum class Sweep { by_row_block, by_col_block };

// Like for_each_score_tile, but one thread handles every tile of a row block (visited left to
// right) or of a column block (top to bottom), and the epilogue also gets the tile as a writable
// rows×cols tensor (the thread's buffer) to transform in place:
// `epilogue(const ScoreTile<scalar_t>&, at::Tensor& tile)`. Floating-point accumulation into
// state owned by the block (a gradient slice, say) is then race-free and in a fixed order, so
// deterministic. Each tile is the same GEMM as in for_each_score_tile, so it has the same bits.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile_in_order(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                                  Sweep sweep, Epilogue&& epilogue) {
  const bool by_rows = sweep == Sweep::by_row_block;
  const int64_t n_owned = by_rows ? grid.row_blocks() : grid.col_blocks();
  const int64_t n_inner = by_rows ? grid.col_blocks() : grid.row_blocks();
  if (n_owned == 0 || n_inner == 0) return;
  at::parallel_for(0, n_owned, 1, [&](int64_t first, int64_t last) {
    at::Tensor buffer = at::empty({grid.tile_rows, grid.tile_cols}, a.options());
    at::Tensor out;
    for (int64_t owned = first; owned < last; ++owned) {
      for (int64_t inner = 0; inner < n_inner; ++inner) {
        const int64_t row_block = by_rows ? owned : inner;
        const int64_t col_block = by_rows ? inner : owned;
        const auto tile =
            detail::compute_tile<scalar_t>(a, b, grid, row_block, col_block, buffer, out);
        epilogue(tile, out);
      }
    }
  });
}

// Hands the tiles of an already computed matrix (rows×cols, rows contiguous) to the same kind of
// epilogue as for_each_score_tile, with the same concurrency rules, so one epilogue serves both
// fused and precomputed scores.
template <typename scalar_t, typename Epilogue>
void for_each_tile_of(const at::Tensor& scores, const TileGrid& grid, Epilogue&& epilogue) {
  const int64_t n_col_blocks = grid.col_blocks();
  const int64_t n_tiles = grid.row_blocks() * n_col_blocks;
  if (n_tiles == 0) return;
  const int64_t ld = scores.stride(0);
  const scalar_t* data = scores.const_data_ptr<scalar_t>();
  at::parallel_for(0, n_tiles, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t row_block = t / n_col_blocks;
      const int64_t col_block = t % n_col_blocks;
      const detail::TileBounds b = detail::tile_bounds(grid, row_block, col_block);
      epilogue(ScoreTile<scalar_t>{data + b.row0 * ld + b.col0, ld, b.row0, b.rows, row_block,
                                   b.col0, b.cols, col_block});
    }
  });
}

}  // namespace jwae
