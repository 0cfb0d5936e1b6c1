// The CPU GEMM-tile traversal that every tiled CPU kernel uses (mh_loss, the retrieval ranks and
// counts, top-k search): the score matrix S = A·Bᵀ is produced one cache-sized tile at a time and
// handed to an epilogue while it is hot, so no kernel ever holds S whole. docs/design.md#tiling.
//
// Why this shape: on these CPUs a single-threaded BLAS GEMM per tile, with tiles spread over
// threads, runs as fast as one multi-threaded GEMM of the whole matrix, and the epilogue then reads
// the tile from L2 instead of from memory (measured: 4096×4096×1024 fp32, 2 cores, MKL — tiles of
// 256×1024 with a row-and-column max epilogue take 0.92–0.97x the time of the bare torch.mm).
// Values can differ from one whole-matrix GEMM in the last bit (BLAS picks kernels by shape), but a
// tile has the same bits whichever thread, traversal or thread count computed it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "single_threaded_blas.h"
#include "tile_grid.h"

namespace jwae {

// One computed tile: element (i, j) is S[row0 + i][col0 + j]. Only valid inside the epilogue.
template <typename scalar_t>
struct ScoreTile {
  const scalar_t* data;
  int64_t ld;  // distance between consecutive rows of `data`
  int64_t row0, rows, row_block;
  int64_t col0, cols, col_block;

  const scalar_t* row(int64_t i) const { return data + i * ld; }
};

// One thread's means of computing tiles of S = a·bᵀ (a: rows×d, b: cols×d, contiguous, same
// dtype, CPU): a tile buffer and single-threaded BLAS. Every tile goes through compute(), so a tile
// has the same bits whichever traversal computed it (same GEMM shape, same operands).
template <typename scalar_t>
class TileWorker {
 public:
  TileWorker(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid)
      : a_(a),
        b_(b),
        grid_(grid),
        buffer_(at::empty({grid.tile_rows, grid.tile_cols}, a.options())) {}

  // The traversal over a row block and a column range: tiles (row_block, c) for c in
  // [col_begin, col_end), left to right. `epilogue(const ScoreTile<scalar_t>&, at::Tensor& tile)`
  // also gets the tile as a writable rows×cols tensor (this worker's buffer) to transform in place.
  template <typename Epilogue>
  void row_block(int64_t row_block, int64_t col_begin, int64_t col_end, Epilogue&& epilogue) {
    for (int64_t c = col_begin; c < col_end; ++c) epilogue(compute(row_block, c), tile_);
  }

  // The same down a column block: tiles (r, col_block) for r in [row_begin, row_end).
  template <typename Epilogue>
  void col_block(int64_t col_block, int64_t row_begin, int64_t row_end, Epilogue&& epilogue) {
    for (int64_t r = row_begin; r < row_end; ++r) epilogue(compute(r, col_block), tile_);
  }

 private:
  ScoreTile<scalar_t> compute(int64_t row_block, int64_t col_block) {
    const TileBounds t = tile_bounds(grid_, row_block, col_block);
    tile_ = buffer_.view({-1}).narrow(0, 0, t.rows * t.cols).view({t.rows, t.cols});
    // Kernels register their backward separately; below autograd, inputs that require grad do not
    // make mm_out refuse to run (the guard is per thread, and this runs on worker threads).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::mm_out(tile_, a_.narrow(0, t.row0, t.rows), b_.narrow(0, t.col0, t.cols).t());
    return {tile_.const_data_ptr<scalar_t>(), t.cols, t.row0, t.rows, row_block, t.col0, t.cols,
            col_block};
  }

  const at::Tensor& a_;
  const at::Tensor& b_;
  const TileGrid& grid_;
  at::Tensor buffer_;
  at::Tensor tile_;
  SingleThreadedBlas blas_;
};

// Runs `work(worker, item)` for every item in [0, count), spread over threads in contiguous runs,
// each thread with its own worker from `make_worker()` (its tile buffer, its BLAS guard). What an
// item is (a tile, a row block, a row block's share of the columns, a caption group) is the
// caller's; so is the rule that its epilogues write only state owned by the item, which makes the
// result independent of the thread count.
template <typename MakeWorker, typename Work>
void parallel_items(int64_t count, MakeWorker&& make_worker, Work&& work) {
  if (count <= 0) return;
  at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
    auto worker = make_worker();
    for (int64_t item = first; item < last; ++item) work(worker, item);
  });
}

// parallel_items with TileWorkers of S = a·bᵀ.
template <typename scalar_t, typename Work>
void parallel_tiles(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid, int64_t count,
                    Work&& work) {
  parallel_items(count, [&] { return TileWorker<scalar_t>(a, b, grid); }, work);
}

// Computes the tiles `tile_ids` (row_block * col_blocks + col_block) of S = a·bᵀ and calls
// `epilogue(const ScoreTile<scalar_t>&)` on each. Tiles run concurrently on different threads, so
// the epilogue may only write state owned by its tile: per-row results of its row range into a
// slot for its col_block, per-column results into a slot for its row_block (or, for reductions
// that are order-independent such as integer counts or max with lowest-index ties, into per-tile
// slots merged afterwards in any order). A pre-pass over a few tiles can so derive per-row or
// per-column values (thresholds, say) that a later full pass compares its tiles against
// consistently.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                         const std::vector<int64_t>& tile_ids, Epilogue&& epilogue) {
  const int64_t n_col_blocks = grid.col_blocks();
  parallel_tiles<scalar_t>(
      a, b, grid, static_cast<int64_t>(tile_ids.size()),
      [&](TileWorker<scalar_t>& worker, int64_t k) {
        const int64_t t = tile_ids[k];
        const int64_t col_block = t % n_col_blocks;
        worker.row_block(t / n_col_blocks, col_block, col_block + 1,
                         [&](const ScoreTile<scalar_t>& tile, at::Tensor&) { epilogue(tile); });
      });
}

// The same over every tile.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                         Epilogue&& epilogue) {
  std::vector<int64_t> all(grid.tiles());
  for (size_t t = 0; t < all.size(); ++t) all[t] = static_cast<int64_t>(t);
  for_each_score_tile<scalar_t>(a, b, grid, all, epilogue);
}

// Which blocks of S one thread owns in for_each_score_tile_in_order.
enum class Sweep { by_row_block, by_col_block };

// Like for_each_score_tile, but one thread handles every tile of a row block (visited left to
// right) or of a column block (top to bottom), and the epilogue gets the writable tile too:
// `epilogue(const ScoreTile<scalar_t>&, at::Tensor& tile)`. Floating-point accumulation into state
// owned by the block (a gradient slice, say) is then race-free and in a fixed order, so
// deterministic.
template <typename scalar_t, typename Epilogue>
void for_each_score_tile_in_order(const at::Tensor& a, const at::Tensor& b, const TileGrid& grid,
                                  Sweep sweep, Epilogue&& epilogue) {
  const bool by_rows = sweep == Sweep::by_row_block;
  if (grid.tiles() == 0) return;
  parallel_tiles<scalar_t>(a, b, grid, by_rows ? grid.row_blocks() : grid.col_blocks(),
                           [&](TileWorker<scalar_t>& worker, int64_t owned) {
                             if (by_rows) {
                               worker.row_block(owned, 0, grid.col_blocks(), epilogue);
                             } else {
                               worker.col_block(owned, 0, grid.row_blocks(), epilogue);
                             }
                           });
}

// Hands the tiles of an already computed matrix (rows×cols, rows contiguous) to the same kind of
// epilogue as for_each_score_tile, with the same concurrency rules, so one epilogue serves both
// fused and precomputed scores.
template <typename scalar_t, typename Epilogue>
void for_each_tile_of(const at::Tensor& scores, const TileGrid& grid, Epilogue&& epilogue) {
  const int64_t n_col_blocks = grid.col_blocks();
  const int64_t ld = scores.stride(0);
  const scalar_t* data = scores.const_data_ptr<scalar_t>();
  if (grid.tiles() == 0) return;
  at::parallel_for(0, grid.tiles(), 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t row_block = t / n_col_blocks;
      const int64_t col_block = t % n_col_blocks;
      const TileBounds b = tile_bounds(grid, row_block, col_block);
      epilogue(ScoreTile<scalar_t>{data + b.row0 * ld + b.col0, ld, b.row0, b.rows, row_block,
                                   b.col0, b.cols, col_block});
    }
  });
}

}  // namespace jwae
