// CPU kernels of the retrieval-ranking family: own scores and rank counts from the GEMM tiles of
// csrc/tiling.h (never the N×M score matrix, never a sort), and exact top-k search.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "retrieval.h"
#include "tiling.h"

namespace jwae::ranking {
namespace {

// The tile grid of every pass over S = img·capᵀ: own scores and counts must come from the same
// tiles (see ranking.h).
TileGrid score_grid(const at::Tensor& img, const at::Tensor& cap) {
  return TileGrid{img.size(0), cap.size(0)};
}

// Integer counts merged from concurrent tiles: the sum does not depend on the order.
inline void atomic_add(int64_t* target, int64_t value) {
  if (value != 0) __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
}

at::Tensor own_scores_cpu(const at::Tensor& img, const at::Tensor& cap, const at::Tensor& owner) {
  const TileGrid grid = score_grid(img, cap);
  const std::vector<int64_t> tiles =
      own_score_tiles(owner, grid.tile_rows, grid.tile_cols, grid.col_blocks());
  at::Tensor own = at::empty({cap.size(0)}, img.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "retrieval_own_scores", [&] {
    const int64_t* image_of = owner.const_data_ptr<int64_t>();
    scalar_t* out = own.mutable_data_ptr<scalar_t>();
    // Each own score lies in exactly one tile, so tiles write disjoint entries.
    for_each_score_tile<scalar_t>(img, cap, grid, tiles, [&](const ScoreTile<scalar_t>& tile) {
      for (int64_t c = 0; c < tile.cols; ++c) {
        const int64_t r = image_of[tile.col0 + c] - tile.row0;
        if (r >= 0 && r < tile.rows) out[tile.col0 + c] = tile.row(r)[c];
      }
    });
  });
  return own;
}

// A tile's counts: per row and per column, the scores at least as high as its threshold (hits)
// and exactly as high (ties).
struct TileCounts {
  std::vector<int32_t> row_hits, col_hits, row_ties, col_ties;
  TileCounts(int64_t rows, int64_t cols)
      : row_hits(rows), col_hits(cols, 0), row_ties(rows), col_ties(cols, 0) {}
};

// Per row r and column c of a tile: hits += S >= threshold, ties += S == threshold, for the row's
// and the column's threshold. The hot loop of the counting pass, kept branch-free so that it
// vectorises.
template <typename scalar_t>
void count_tile(const ScoreTile<scalar_t>& tile, const scalar_t* row_thr, const scalar_t* col_thr,
                TileCounts& counts) {
  int32_t* col_hits = counts.col_hits.data();
  int32_t* col_ties = counts.col_ties.data();
  for (int64_t r = 0; r < tile.rows; ++r) {
    const scalar_t* s = tile.row(r);
    const scalar_t threshold = row_thr[r];
    int32_t hits = 0;
    int32_t ties = 0;
#pragma omp simd reduction(+ : hits, ties)
    for (int64_t c = 0; c < tile.cols; ++c) {
      hits += s[c] >= threshold;
      ties += s[c] == threshold;
      col_hits[c] += s[c] >= col_thr[c];
      col_ties[c] += s[c] == col_thr[c];
    }
    counts.row_hits[r] = hits;
    counts.row_ties[r] = ties;
  }
}

RankCounts count_at_least_cpu(const at::Tensor& img, const at::Tensor& cap, const at::Tensor& owner,
                              const at::Tensor& img_thresholds, const at::Tensor& cap_thresholds) {
  const TileGrid grid = score_grid(img, cap);
  at::Tensor img_counts = at::zeros({img.size(0)}, owner.options());
  at::Tensor cap_counts = at::zeros({cap.size(0)}, owner.options());
  at::Tensor img_ties = at::zeros({img.size(0)}, owner.options());
  at::Tensor cap_ties = at::zeros({cap.size(0)}, owner.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "retrieval_count_at_least", [&] {
    const int64_t* image_of = owner.const_data_ptr<int64_t>();
    const scalar_t* img_thr = img_thresholds.const_data_ptr<scalar_t>();
    const scalar_t* cap_thr = cap_thresholds.const_data_ptr<scalar_t>();
    int64_t* img_out = img_counts.mutable_data_ptr<int64_t>();
    int64_t* cap_out = cap_counts.mutable_data_ptr<int64_t>();
    int64_t* img_ties_out = img_ties.mutable_data_ptr<int64_t>();
    int64_t* cap_ties_out = cap_ties.mutable_data_ptr<int64_t>();
    for_each_score_tile<scalar_t>(img, cap, grid, [&](const ScoreTile<scalar_t>& tile) {
      TileCounts counts(tile.rows, tile.cols);
      const scalar_t* row_thr = img_thr + tile.row0;
      const scalar_t* col_thr = cap_thr + tile.col0;
      count_tile(tile, row_thr, col_thr, counts);
      // An image's own captions and a caption's own image never count (each ties with its own
      // threshold): take back what the loop above counted for the own pairs in this tile.
      for (int64_t c = 0; c < tile.cols; ++c) {
        const int64_t r = image_of[tile.col0 + c] - tile.row0;
        if (r < 0 || r >= tile.rows) continue;
        const scalar_t s = tile.row(r)[c];
        counts.row_hits[r] -= s >= row_thr[r];
        counts.row_ties[r] -= s == row_thr[r];
        counts.col_hits[c] -= s >= col_thr[c];
        counts.col_ties[c] -= s == col_thr[c];
      }
      for (int64_t r = 0; r < tile.rows; ++r) {
        atomic_add(img_out + tile.row0 + r, counts.row_hits[r]);
        atomic_add(img_ties_out + tile.row0 + r, counts.row_ties[r]);
      }
      for (int64_t c = 0; c < tile.cols; ++c) {
        atomic_add(cap_out + tile.col0 + c, counts.col_hits[c]);
        atomic_add(cap_ties_out + tile.col0 + c, counts.col_ties[c]);
      }
    });
  });
  return {img_counts, cap_counts, img_ties, cap_ties};
}

// ---- top-k search ---------------------------------------------------------------------------

template <typename scalar_t>
struct Candidate {
  scalar_t score;
  int64_t index;
};

// Scores in torch.sort's descending order: NaN above every number. Finite embeddings can still
// overflow to NaN (or ±inf) scores; every one of them must take a defined place in the result.
template <typename scalar_t>
bool score_above(scalar_t a, scalar_t b) {
  return a > b || (a != a && b == b);
}

// The order of the results: higher score first, ties (NaNs tie with each other) by lower index.
template <typename scalar_t>
bool ranks_before(const Candidate<scalar_t>& a, const Candidate<scalar_t>& b) {
  return score_above(a.score, b.score) || (!score_above(b.score, a.score) && a.index < b.index);
}

// One query's best k of the gallery items offered so far, offered in ascending index order.
// Holds up to 2k candidates; once it first fills, keeps the best k and from then on admits only
// scores above the k-th: an equal score comes later, so it has a higher index and loses the tie.
// Until then every score is admitted (-inf and NaN included), so k offers always give k results.
template <typename scalar_t>
class RunningTopK {
 public:
  explicit RunningTopK(int64_t k) : k_(k) { items_.reserve(2 * k); }

  void offer(const scalar_t* scores, int64_t count, int64_t first_index) {
    for (int64_t c = 0; c < count; ++c) {
      if (has_floor_ && !score_above(scores[c], floor_)) continue;
      items_.push_back({scores[c], first_index + c});
      if (static_cast<int64_t>(items_.size()) == 2 * k_) shrink();
    }
  }

  // The best min(k, offered) candidates, best first.
  const std::vector<Candidate<scalar_t>>& finish() {
    if (static_cast<int64_t>(items_.size()) > k_) shrink();
    std::sort(items_.begin(), items_.end(), ranks_before<scalar_t>);
    return items_;
  }

 private:
  void shrink() {
    std::nth_element(items_.begin(), items_.begin() + (k_ - 1), items_.end(),
                     ranks_before<scalar_t>);
    items_.resize(k_);
    floor_ = items_[k_ - 1].score;
    has_floor_ = true;
  }

  int64_t k_;
  bool has_floor_ = false;
  scalar_t floor_{};
  std::vector<Candidate<scalar_t>> items_;
};

// Candidate slots per work item: bounds the running top-k state (2k candidates per query) when k
// is large by taking fewer queries per tile.
constexpr int64_t kCandidateBudget = int64_t{1} << 20;

std::tuple<at::Tensor, at::Tensor> topk_search_cpu(const at::Tensor& queries,
                                                   const at::Tensor& gallery, int64_t k) {
  const int64_t n_queries = queries.size(0);
  TileGrid grid{n_queries, gallery.size(0)};
  grid.tile_rows = std::clamp<int64_t>(kCandidateBudget / (2 * k), 1, grid.tile_rows);
  // Work items are (query block, gallery part): few query blocks are split along the gallery so
  // that every thread has work. The result does not depend on the split (the order is total).
  const int64_t row_blocks = grid.row_blocks();
  const int64_t col_blocks = grid.col_blocks();
  const int64_t threads = at::get_num_threads();
  const int64_t parts =
      row_blocks >= threads ? 1 : std::min(col_blocks, (threads + row_blocks - 1) / row_blocks);

  at::Tensor scores = at::empty({n_queries, k}, queries.options());
  at::Tensor indices = at::empty({n_queries, k}, queries.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "topk_search", [&] {
    using Cand = Candidate<scalar_t>;
    // With several parts, each part's best k per query land here before the final merge.
    std::vector<std::vector<Cand>> part_best(parts > 1 ? n_queries * parts : 0);
    scalar_t* score_out = scores.mutable_data_ptr<scalar_t>();
    int64_t* index_out = indices.mutable_data_ptr<int64_t>();
    parallel_tiles<scalar_t>(queries, gallery, grid, row_blocks * parts,
                             [&](TileWorker<scalar_t>& worker, int64_t item) {
      const int64_t row_block = item / parts;
      const int64_t part = item % parts;
      const int64_t row0 = row_block * grid.tile_rows;
      const int64_t rows = std::min(grid.tile_rows, n_queries - row0);
      std::vector<RunningTopK<scalar_t>> best;
      best.reserve(rows);
      for (int64_t r = 0; r < rows; ++r) best.emplace_back(k);
      worker.row_block(row_block, part * col_blocks / parts, (part + 1) * col_blocks / parts,
                       [&](const ScoreTile<scalar_t>& tile, at::Tensor&) {
                         for (int64_t r = 0; r < rows; ++r) {
                           best[r].offer(tile.row(r), tile.cols, tile.col0);
                         }
                       });
      for (int64_t r = 0; r < rows; ++r) {
        const std::vector<Cand>& found = best[r].finish();
        if (parts > 1) {
          part_best[(row0 + r) * parts + part] = found;
          continue;
        }
        for (int64_t t = 0; t < k; ++t) {
          score_out[(row0 + r) * k + t] = found[t].score;
          index_out[(row0 + r) * k + t] = found[t].index;
        }
      }
    });
    if (parts == 1) return;
    at::parallel_for(0, n_queries, 1, [&](int64_t first, int64_t last) {
      for (int64_t q = first; q < last; ++q) {
        std::vector<Cand> merged;
        for (int64_t p = 0; p < parts; ++p) {
          const std::vector<Cand>& found = part_best[q * parts + p];
          merged.insert(merged.end(), found.begin(), found.end());
        }
        std::partial_sort(merged.begin(), merged.begin() + k, merged.end(),
                          ranks_before<scalar_t>);
        for (int64_t t = 0; t < k; ++t) {
          score_out[q * k + t] = merged[t].score;
          index_out[q * k + t] = merged[t].index;
        }
      }
    });
  });
  return {scores, indices};
}

// ---- operator entry points --------------------------------------------------------------------

const RetrievalKernels& cpu_kernels() {
  static const RetrievalKernels kernels{own_scores_cpu, count_at_least_cpu, topk_search_cpu};
  return kernels;
}

}  // namespace
}  // namespace jwae::ranking

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  jwae::ranking::register_retrieval<jwae::ranking::cpu_kernels>(m);
}
