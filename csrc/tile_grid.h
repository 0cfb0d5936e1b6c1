// How a score matrix S = A·Bᵀ (rows × cols) is cut into tiles: the grid every tiled kernel walks,
// on the CPU (tiling.h) and on CUDA (cuda/tiling.cuh). Device-agnostic; see
// docs/design.md#tiling for the contract.
#pragma once

#include <algorithm>
#include <cstdint>

namespace jwae {

// Tile sizes are fixed by the caller, never derived from the thread count, so that per-tile
// partial results reduced in tile order are the same on every machine. A caller whose rows or
// columns come in groups that a tile must not split (the words of a caption, the regions of an
// image) picks sizes that are multiples of that unit (in_units).
struct TileGrid {
  int64_t rows;             // rows of S (rows of A)
  int64_t cols;             // columns of S (rows of B)
  int64_t tile_rows = 256;  // CPU default: 256×1024 fp32 = 1 MiB, one tile sits in a core's L2
  int64_t tile_cols = 1024;

  int64_t row_blocks() const { return (rows + tile_rows - 1) / tile_rows; }
  int64_t col_blocks() const { return (cols + tile_cols - 1) / tile_cols; }
  int64_t tiles() const { return row_blocks() * col_blocks(); }
};

// The largest multiple of `unit` that is at most `target`, and at least one unit.
inline int64_t in_units(int64_t target, int64_t unit) {
  return std::max<int64_t>(1, target / unit) * unit;
}

// Where tile (row_block, col_block) lies in S; the last row and column blocks may be short.
struct TileBounds {
  int64_t row0, rows, col0, cols;
};

inline TileBounds tile_bounds(const TileGrid& grid, int64_t row_block, int64_t col_block) {
  const int64_t row0 = row_block * grid.tile_rows;
  const int64_t col0 = col_block * grid.tile_cols;
  return {row0, std::min(grid.tile_rows, grid.rows - row0), col0,
          std::min(grid.tile_cols, grid.cols - col0)};
}

}  // namespace jwae
