// CPU kernels of the retrieval-ranking family: own scores and rank counts from the GEMM tiles of
// csrc/tiling.h (never the N×M score matrix, never a sort), and exact top-k search.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <functional>
#include <span>
#include <type_traits>
#include <utility>
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

// A candidate as one unsigned 128-bit integer that orders as the results do: the score's
// order-preserving key in the high half, the complement of its gallery index in the low half. A
// larger integer is a better candidate: a higher score (torch.sort's descending order, NaN above
// every number), or an equal score at a lower index. Why: the per-query selection and sort then
// compare plain integers (no NaN branches in the comparator), and the filter is branch-free.
using Packed = unsigned __int128;

template <typename scalar_t>
using ScoreBits = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;

// Order-preserving: a < b (as numbers) gives key(a) < key(b); -0 and +0 give one key (they tie,
// as in a sort), every NaN the largest key.
template <typename scalar_t>
ScoreBits<scalar_t> score_key(scalar_t score) {
  using Bits = ScoreBits<scalar_t>;
  constexpr Bits sign = Bits{1} << (8 * sizeof(Bits) - 1);
  if (score != score) return ~Bits{0};
  const Bits bits = std::bit_cast<Bits>(score + scalar_t(0));  // -0 + 0 is +0
  return (bits & sign) ? ~bits : (bits | sign);
}

// The inverse of score_key (NaN comes back as a NaN, -0 as +0).
template <typename scalar_t>
scalar_t key_score(ScoreBits<scalar_t> key) {
  using Bits = ScoreBits<scalar_t>;
  constexpr Bits sign = Bits{1} << (8 * sizeof(Bits) - 1);
  return std::bit_cast<scalar_t>((key & sign) ? (key & ~sign) : ~key);
}

template <typename scalar_t>
Packed pack(scalar_t score, int64_t index) {
  return (Packed{score_key(score)} << 64) | Packed{~static_cast<uint64_t>(index)};
}

template <typename scalar_t>
scalar_t packed_score(Packed p) {
  return key_score<scalar_t>(static_cast<ScoreBits<scalar_t>>(p >> 64));
}

inline int64_t packed_index(Packed p) { return static_cast<int64_t>(~static_cast<uint64_t>(p)); }

// Sorts items[0, n) best first with an LSD radix sort (8-bit digits, linear, branch-free, where
// std::sort's comparisons mispredict) over the bytes that can differ: the low `index_bytes` bytes
// of the index complement, then the score key's `key_bytes`. `scratch` holds n items.
inline void radix_sort_best_first(Packed* items, int64_t n, Packed* scratch, int index_bytes,
                                  int key_bytes) {
  Packed* from = items;
  Packed* to = scratch;
  // Digits are complemented so that the ascending counting sort puts larger values first.
  const auto pass = [&](int shift) {
    const auto digit = [shift](Packed p) { return 255 - (static_cast<uint32_t>(p >> shift) & 255); };
    int64_t start[256] = {};
    for (int64_t i = 0; i < n; ++i) ++start[digit(from[i])];
    int64_t offset = 0;
    for (int64_t& s : start) offset += std::exchange(s, offset);
    for (int64_t i = 0; i < n; ++i) to[start[digit(from[i])]++] = from[i];
    std::swap(from, to);
  };
  for (int b = 0; b < index_bytes; ++b) pass(8 * b);
  for (int b = 0; b < key_bytes; ++b) pass(64 + 8 * b);
  if (from != items) std::copy(from, from + n, items);
}

// One query's best k of the gallery items offered so far, offered in ascending index order.
// Holds up to 2k candidates; when full, it keeps at least the best k (shrink) and from then on
// admits only candidates whose score reaches the floor it set. Until the first shrink every score
// is admitted (-inf and NaN included), so k offers give k results. Scores are taken in chunks: a
// chunk with no score at the floor (the common case once the first tiles have set it) costs one
// vectorized comparison per score; in the others, the positions that reach the floor as numbers
// are gathered branch-free and only those are packed and compared exactly.
template <typename scalar_t>
class RunningTopK {
 public:
  static constexpr int64_t kChunk = 64;
  using Key = ScoreBits<scalar_t>;

  // Indices offered are below `index_bound`.
  RunningTopK(int64_t k, int64_t index_bound)
      : k_(k), index_bytes_(bytes_to_hold(index_bound - 1)), items_(2 * k + kChunk) {}

  void offer(const scalar_t* scores, int64_t count, int64_t first_index) {
    for (int64_t c = 0; c < count; c += kChunk) {
      const int64_t n = std::min(kChunk, count - c);
      const scalar_t* s = scores + c;
      if (!has_floor_) {
        for (int64_t j = 0; j < n; ++j) items_[size_ + j] = pack(s[j], first_index + c + j);
        size_ += n;
      } else if (any_reaches_floor(s, n)) {
        int32_t maybe[kChunk];
        int64_t m = 0;
        for (int64_t j = 0; j < n; ++j) {
          maybe[m] = static_cast<int32_t>(j);
          m += !(s[j] < floor_score_);
        }
        for (int64_t t = 0; t < m; ++t) {
          const Packed candidate = pack(s[maybe[t]], first_index + c + maybe[t]);
          items_[size_] = candidate;
          size_ += candidate >= floor_;
        }
      }
      if (size_ >= 2 * k_) shrink();
    }
  }

  // The best min(k, offered) candidates, best first; `scratch` is the sort's work space.
  std::span<const Packed> finish(std::vector<Packed>& scratch) {
    if (size_ > k_) shrink();
    if (scratch.size() < static_cast<size_t>(size_)) scratch.resize(size_);
    radix_sort_best_first(items_.data(), size_, scratch.data(), index_bytes_, sizeof(Key));
    return {items_.data(), static_cast<size_t>(std::min(size_, k_))};
  }

 private:
  static Key key_of(Packed p) { return static_cast<Key>(p >> 64); }

  // Whether some score may reach the floor: not below its score (NaN is not below anything; a
  // NaN floor lets every chunk through to the exact comparison).
  bool any_reaches_floor(const scalar_t* scores, int64_t n) const {
    const scalar_t floor = floor_score_;
    bool any = false;
#pragma omp simd reduction(| : any)
    for (int64_t j = 0; j < n; ++j) any |= !(scores[j] < floor);
    return any;
  }

  // Keeps at least the best k: every candidate whose score key reaches a new floor, the lower edge
  // of the k-th's bucket in a histogram of the keys, refined while that bucket holds many; where
  // one key holds many (ties), the exact k-th (ties by index). Branch-free passes over the
  // candidates, where a selection's comparisons would mispredict (measured: 2x faster at k = 1024).
  void shrink() {
    Key lo = ~Key{0};
    Key hi = 0;
    for (int64_t i = 0; i < size_; ++i) {
      lo = std::min(lo, key_of(items_[i]));
      hi = std::max(hi, key_of(items_[i]));
    }
    int64_t above = 0;  // candidates with keys above hi: all kept
    for (;;) {
      const int shift = std::max(0, static_cast<int>(std::bit_width(hi - lo)) - 8);
      uint32_t count[258] = {};  // 256: below lo, 257: above hi
      for (int64_t i = 0; i < size_; ++i) {
        const Key key = key_of(items_[i]);
        ++count[key < lo ? 256 : key > hi ? 257 : (key - lo) >> shift];
      }
      int b = static_cast<int>((hi - lo) >> shift);
      int64_t at_least = above;
      for (; b > 0 && at_least + count[b] < k_; --b) at_least += count[b];
      at_least += count[b];
      const Key edge = lo + (static_cast<Key>(b) << shift);
      if (at_least <= k_ + k_ / 8) {
        floor_ = Packed{edge} << 64;  // below every candidate with that key
        break;
      }
      if (shift == 0) {
        std::nth_element(items_.begin(), items_.begin() + (k_ - 1), items_.begin() + size_,
                         std::greater<Packed>());
        floor_ = items_[k_ - 1];
        break;
      }
      above = at_least - count[b];
      lo = edge;
      hi = edge + ((Key{1} << shift) - 1);
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < size_; ++i) {
      items_[kept] = items_[i];
      kept += items_[i] >= floor_;
    }
    size_ = kept;
    floor_score_ = key_score<scalar_t>(key_of(floor_));
    has_floor_ = true;
  }

  static int bytes_to_hold(int64_t value) {
    int bytes = 1;
    while (bytes < 8 && (static_cast<uint64_t>(value) >> (8 * bytes)) != 0) ++bytes;
    return bytes;
  }

  int64_t k_;
  int index_bytes_;
  int64_t size_ = 0;
  bool has_floor_ = false;
  Packed floor_ = 0;
  scalar_t floor_score_{};
  std::vector<Packed> items_;
};

template <typename scalar_t>
void write_result(std::span<const Packed> best, int64_t k, scalar_t* scores, int64_t* indices) {
  for (int64_t t = 0; t < k; ++t) {
    scores[t] = packed_score<scalar_t>(best[t]);
    indices[t] = packed_index(best[t]);
  }
}

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
    // With several parts, each part's best k per query land here before the final merge.
    std::vector<std::vector<Packed>> part_best(parts > 1 ? n_queries * parts : 0);
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
      for (int64_t r = 0; r < rows; ++r) best.emplace_back(k, gallery.size(0));
      worker.row_block(row_block, part * col_blocks / parts, (part + 1) * col_blocks / parts,
                       [&](const ScoreTile<scalar_t>& tile, at::Tensor&) {
                         for (int64_t r = 0; r < rows; ++r) {
                           best[r].offer(tile.row(r), tile.cols, tile.col0);
                         }
                       });
      std::vector<Packed> scratch;
      for (int64_t r = 0; r < rows; ++r) {
        const std::span<const Packed> found = best[r].finish(scratch);
        const int64_t q = row0 + r;
        if (parts > 1) {
          part_best[q * parts + part].assign(found.begin(), found.end());
        } else {
          write_result(found, k, score_out + q * k, index_out + q * k);
        }
      }
    });
    if (parts == 1) return;
    at::parallel_for(0, n_queries, 1, [&](int64_t first, int64_t last) {
      for (int64_t q = first; q < last; ++q) {
        std::vector<Packed> merged;
        for (int64_t p = 0; p < parts; ++p) {
          const std::vector<Packed>& found = part_best[q * parts + p];
          merged.insert(merged.end(), found.begin(), found.end());
        }
        std::partial_sort(merged.begin(), merged.begin() + k, merged.end(),
                          std::greater<Packed>());
        write_result<scalar_t>(merged, k, score_out + q * k, index_out + q * k);
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
