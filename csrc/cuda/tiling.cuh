// The CUDA GEMM-tile traversal that every tiled CUDA kernel uses (mh_loss, the retrieval ranks and
// counts, top-k search): one tile-size policy, one guarded score GEMM, one loop. Tiles are computed
// by cuBLAS into one reused buffer and handed, in order, to an epilogue that launches its kernels
// on the same stream, so stream order keeps a tile alive until they are done. See
// docs/design.md#tiling.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../dtypes.h"
#include "../tile_grid.h"

namespace jwae {

// The one tile-size policy: tiles as wide as max_cols (at most every column), then as many rows
// (at most max_rows) as keep the tile, plus `extra_per_row` values a caller holds per row beside it
// (top-k candidates, say), within `elements` score values of the accumulation dtype.
struct TileBudget {
  int64_t elements;
  int64_t max_rows = std::numeric_limits<int64_t>::max();
  int64_t max_cols = std::numeric_limits<int64_t>::max();
  int64_t extra_per_row = 0;
};

inline TileGrid budget_grid(int64_t rows, int64_t cols, const TileBudget& budget) {
  TileGrid grid{rows, cols};
  grid.tile_cols = std::max<int64_t>(1, std::min(cols, budget.max_cols));
  const int64_t fit = budget.elements / (grid.tile_cols + budget.extra_per_row);
  const int64_t most = std::max<int64_t>(1, std::min(rows, budget.max_rows));
  grid.tile_rows = std::clamp<int64_t>(fit, 1, most);
  return grid;
}

// out = a·bᵀ in out's dtype, the accumulation dtype: fp16/bf16 inputs multiply on tensor cores
// into fp32. Below autograd: inputs that require grad must not make the out= variant refuse to run.
inline void score_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (out.scalar_type() != a.scalar_type()) {
    at::mm_out(out, a, b.t(), out.scalar_type());
  } else {
    at::mm_out(out, a, b.t());
  }
}

// Where a computed tile lies in S, and which block it is.
struct DeviceTile {
  int64_t row0, rows, row_block;
  int64_t col0, cols, col_block;
};

// Computes the tiles `tile_ids` (row_block * col_blocks + col_block) of S = a·bᵀ (a, b
// contiguous) in the given order and calls `epilogue(const DeviceTile&, at::Tensor& tile)` on each,
// the tile a contiguous rows×cols tensor of the accumulation dtype that the epilogue may overwrite.
// Every pass computes a tile by the same call, so it has the same bits in every pass.
template <typename Epilogue>
void for_each_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                   const std::vector<int64_t>& tile_ids, Epilogue&& epilogue) {
  const auto options = a.options().dtype(accumulation_dtype(a.scalar_type()));
  at::Tensor buffer = at::empty({grid.tile_rows * grid.tile_cols}, options);
  const int64_t n_col_blocks = grid.col_blocks();
  for (const int64_t t : tile_ids) {
    const int64_t row_block = t / n_col_blocks;
    const int64_t col_block = t % n_col_blocks;
    const TileBounds bounds = tile_bounds(grid, row_block, col_block);
    at::Tensor tile =
        buffer.narrow(0, 0, bounds.rows * bounds.cols).view({bounds.rows, bounds.cols});
    score_gemm(tile, a.narrow(0, bounds.row0, bounds.rows), b.narrow(0, bounds.col0, bounds.cols));
    epilogue(DeviceTile{bounds.row0, bounds.rows, row_block, bounds.col0, bounds.cols, col_block},
             tile);
  }
}

// The same over every tile, row block by row block, each left to right.
template <typename Epilogue>
void for_each_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                   Epilogue&& epilogue) {
  std::vector<int64_t> all(grid.tiles());
  for (size_t t = 0; t < all.size(); ++t) all[t] = static_cast<int64_t>(t);
  for_each_tile(a, b, grid, all, epilogue);
}

}  // namespace jwae
