// Max-of-hinges loss: the operators, written once for every device (argument checks, pairing,
// layout, the device-generic parts of the backward), and the CPU kernels they call (MhLossKernels,
// see mh_loss.h).
//
// CPU: the forward never holds S = img·txtᵀ: tiles of it (tiling.h) feed running hardest
// negatives (max_violation) or hinge sums per row and per column, written into per-block slots and
// merged in block order, so results do not depend on the thread count. The max_violation backward
// is an O(B·d) gather from the saved hardest indices; the sum-of-hinges backward recomputes the
// tiles and multiplies their hinge indicators by the embeddings, one thread per row block
// (grad_img) or column block (grad_txt).
#include "mh_loss.h"

#include <ATen/DeviceGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "dtypes.h"
#include "tiling.h"

namespace jwae::hinge {
namespace {

using OptionalIds = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

OptionalIds check_ids(const std::optional<at::Tensor>& img_ids,
                      const std::optional<at::Tensor>& txt_ids, int64_t batch,
                      const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(img_ids.has_value() == txt_ids.has_value(),
                    "jwae_ext: arguments 'img_ids' and 'txt_ids' must be given together, got "
                    "only '",
                    img_ids.has_value() ? "img_ids" : "txt_ids", "'");
  if (!img_ids.has_value()) return {};
  check_index_vector(*img_ids, batch, "img_ids", like_name);
  check_index_vector(*txt_ids, batch, "txt_ids", like_name);
  check_same_device(*img_ids, "img_ids", like, like_name);
  check_same_device(*txt_ids, "txt_ids", like, like_name);
  return {img_ids->contiguous(), txt_ids->contiguous()};
}

// The cost's gradient on queries whose hinge is active (support >= 0), 0 on the others.
at::Tensor active_weight(const at::Tensor& grad, const at::Tensor& hardest, at::ScalarType dtype) {
  return grad.to(dtype).masked_fill(hardest < 0, 0).contiguous();
}

// img_emb, txt_emb: B×d, same B, same d, same float dtype and device, non-empty; ids: both or
// neither, int64 vectors of length B on the same device. Returns the ids made contiguous.
OptionalIds check_embeddings(const at::Tensor& img_emb, const at::Tensor& txt_emb,
                             const std::optional<at::Tensor>& img_ids,
                             const std::optional<at::Tensor>& txt_ids) {
  check_dim(img_emb, 2, "img_emb", "batch x embedding size");
  check_dim(txt_emb, 2, "txt_emb", "batch x embedding size");
  check_same_device(img_emb, "img_emb", txt_emb, "txt_emb");
  check_float_dtype(img_emb, "img_emb");
  check_float_dtype(txt_emb, "txt_emb");
  check_same_dtype(img_emb, "img_emb", txt_emb, "txt_emb");
  check_nonempty(img_emb, "img_emb");
  check_nonempty(txt_emb, "txt_emb");
  TORCH_CHECK_VALUE(img_emb.size(1) == txt_emb.size(1),
                    "jwae_ext: arguments 'img_emb' and 'txt_emb' must have the same embedding "
                    "size (dim 1), got ",
                    img_emb.size(1), " and ", txt_emb.size(1));
  TORCH_CHECK_VALUE(img_emb.size(0) == txt_emb.size(0),
                    "jwae_ext: arguments 'img_emb' and 'txt_emb' must have the same batch size "
                    "(row i of img_emb is paired with row i of txt_emb), got ",
                    img_emb.size(0), " and ", txt_emb.size(0));
  return check_ids(img_ids, txt_ids, img_emb.size(0), img_emb, "img_emb");
}

// scores: square B×B float matrix, non-empty; ids as above.
OptionalIds check_scores(const at::Tensor& scores, const std::optional<at::Tensor>& img_ids,
                         const std::optional<at::Tensor>& txt_ids) {
  check_dim(scores, 2, "scores", "images x captions");
  check_float_dtype(scores, "scores");
  check_nonempty(scores, "scores");
  TORCH_CHECK_VALUE(scores.size(0) == scores.size(1),
                    "jwae_ext: argument 'scores' must be square (image i is paired with caption "
                    "i), got shape ",
                    scores.sizes());
  return check_ids(img_ids, txt_ids, scores.size(0), scores, "scores");
}

void check_margin(double margin) {
  TORCH_CHECK_VALUE(std::isfinite(margin), "jwae_ext: argument 'margin' must be finite, got ",
                    margin);
}

// The per-query inputs of a backward op: float gradients and int64 supports of length `queries`,
// on the device of `like`.
void check_backward_inputs(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                           const at::Tensor& support_i2t, const at::Tensor& support_t2i,
                           int64_t queries, const at::Tensor& like) {
  for (const auto& [t, name] : {std::pair{&grad_i2t, "grad_i2t"}, {&grad_t2i, "grad_t2i"}}) {
    check_dim(*t, 1, name, "one gradient per query");
    check_float_dtype(*t, name);
    TORCH_CHECK_VALUE(t->size(0) == queries, "jwae_ext: argument '", name, "' must have ",
                      queries, " entries (one per query), got ", t->size(0));
    check_same_device(*t, name, like, "the embeddings or scores");
  }
  check_index_vector(support_i2t, queries, "support_i2t", "img_emb");
  check_index_vector(support_t2i, queries, "support_t2i", "txt_emb");
  check_same_device(support_i2t, "support_i2t", like, "the embeddings or scores");
  check_same_device(support_t2i, "support_t2i", like, "the embeddings or scores");
}

// With max_violation the supports index rows of the embeddings: every value must be in [-1, B).
void check_hardest_indices(const at::Tensor& hardest_i2t, const at::Tensor& hardest_t2i) {
  const int64_t batch = hardest_i2t.size(0);
  for (const auto& [t, name] :
       {std::pair{&hardest_i2t, "support_i2t"}, {&hardest_t2i, "support_t2i"}}) {
    const auto [low, high] = at::aminmax(*t);
    TORCH_CHECK_VALUE(low.item<int64_t>() >= -1 && high.item<int64_t>() < batch,
                      "jwae_ext: argument '", name, "' must hold hardest-negative indices in [-1, ",
                      batch, ") as returned by the forward op, got values in [",
                      low.item<int64_t>(), ", ", high.item<int64_t>(), "]");
  }
}

// For each target k, the queries whose hardest negative is k (Inverse, mh_loss.h).
Inverse invert(const at::Tensor& hardest) {
  // A stable sort groups the queries by target and keeps each group in increasing query order;
  // queries without a target (-1) sort first. counts[t + 1] = queries targeting t, so the running
  // count at t is where t's group starts. (Integer adds: exact in any order, also on CUDA.)
  const at::Tensor order = at::argsort(hardest, /*stable=*/true);
  const at::Tensor counts = at::zeros({hardest.size(0) + 1}, hardest.options())
                                .index_add_(0, hardest + 1, at::ones_like(hardest));
  return {counts.cumsum(0), order};
}

// mh_loss_backward with max_violation: O(B·d), no GEMM.
std::tuple<at::Tensor, at::Tensor> hardest_backward(const at::Tensor& grad_i2t,
                                                    const at::Tensor& grad_t2i,
                                                    const at::Tensor& img_emb,
                                                    const at::Tensor& txt_emb,
                                                    const at::Tensor& hardest_i2t,
                                                    const at::Tensor& hardest_t2i,
                                                    GatherFn gather) {
  const at::Tensor img = img_emb.detach().contiguous();
  const at::Tensor txt = txt_emb.detach().contiguous();
  const at::Tensor hard_i2t = hardest_i2t.contiguous();
  const at::Tensor hard_t2i = hardest_t2i.contiguous();
  const auto dtype = accumulation_dtype(img.scalar_type());
  const at::Tensor w_i2t = active_weight(grad_i2t, hard_i2t, dtype);
  const at::Tensor w_t2i = active_weight(grad_t2i, hard_t2i, dtype);
  return {gather(txt, w_i2t, hard_i2t, w_t2i, invert(hard_t2i)),
          gather(img, w_t2i, hard_t2i, w_i2t, invert(hard_i2t))};
}

// mh_loss_from_scores_backward with max_violation: the dense B×B gradient, nonzero only at the
// positives and the hardest negatives. Each write touches distinct elements, so it is
// deterministic on every device.
at::Tensor from_scores_hardest_backward(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                                        const at::Tensor& scores, const at::Tensor& hardest_i2t,
                                        const at::Tensor& hardest_t2i) {
  const int64_t batch = scores.size(0);
  const auto dtype = accumulation_dtype(scores.scalar_type());
  const at::Tensor w_i2t = active_weight(grad_i2t, hardest_i2t, dtype);
  const at::Tensor w_t2i = active_weight(grad_t2i, hardest_t2i, dtype);
  const at::Tensor queries = at::arange(batch, hardest_i2t.options());
  // Inactive queries add their weight (0) onto their own diagonal element, which keeps every
  // index list free of duplicates without a data-dependent (synchronizing) filter.
  const at::Tensor col_i2t = at::where(hardest_i2t >= 0, hardest_i2t, queries);
  const at::Tensor row_t2i = at::where(hardest_t2i >= 0, hardest_t2i, queries);
  at::Tensor grad = at::zeros({batch, batch}, scores.options().dtype(dtype));
  grad.diagonal().copy_(-(w_i2t + w_t2i));
  grad.index_put_({queries, col_i2t}, w_i2t, /*accumulate=*/true);
  grad.index_put_({row_t2i, queries}, w_t2i, /*accumulate=*/true);
  return grad.to(scores.scalar_type());
}

}  // namespace

at::Tensor positive_grad(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                         const at::Tensor& active_i2t, const at::Tensor& active_t2i,
                         at::ScalarType dtype) {
  return -(grad_i2t.to(dtype) * active_i2t.to(dtype) + grad_t2i.to(dtype) * active_t2i.to(dtype));
}

// ---- the operators -----------------------------------------------------------------------------

Costs mh_loss_op(const MhLossKernels& kernels, const at::Tensor& img_emb,
                 const at::Tensor& txt_emb, double margin, bool max_violation, const Ids& img_ids,
                 const Ids& txt_ids) {
  const c10::OptionalDeviceGuard guard(at::device_of(img_emb));
  const auto ids = check_embeddings(img_emb, txt_emb, img_ids, txt_ids);
  check_margin(margin);
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const ScoreSource source{img_emb.detach().contiguous(), txt_emb.detach().contiguous(), {}};
  return kernels.costs(source, pairing, margin, max_violation);
}

std::tuple<at::Tensor, at::Tensor> mh_loss_backward_op(
    const MhLossKernels& kernels, const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
    const at::Tensor& img_emb, const at::Tensor& txt_emb, double margin, bool max_violation,
    const Ids& img_ids, const Ids& txt_ids, const at::Tensor& support_i2t,
    const at::Tensor& support_t2i) {
  const c10::OptionalDeviceGuard guard(at::device_of(img_emb));
  const auto ids = check_embeddings(img_emb, txt_emb, img_ids, txt_ids);
  check_margin(margin);
  check_backward_inputs(grad_i2t, grad_t2i, support_i2t, support_t2i, img_emb.size(0), img_emb);
  if (max_violation) {
    check_hardest_indices(support_i2t, support_t2i);
    return hardest_backward(grad_i2t, grad_t2i, img_emb, txt_emb, support_i2t, support_t2i,
                            kernels.gather);
  }
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  return kernels.hinge_sum_backward(grad_i2t, grad_t2i, img_emb.detach().contiguous(),
                                    txt_emb.detach().contiguous(), margin, pairing, support_i2t,
                                    support_t2i);
}

Costs mh_loss_from_scores_op(const MhLossKernels& kernels, const at::Tensor& scores,
                             double margin, bool max_violation, const Ids& img_ids,
                             const Ids& txt_ids) {
  const c10::OptionalDeviceGuard guard(at::device_of(scores));
  const auto ids = check_scores(scores, img_ids, txt_ids);
  check_margin(margin);
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const ScoreSource source{{}, {}, scores.detach().contiguous()};
  return kernels.costs(source, pairing, margin, max_violation);
}

at::Tensor mh_loss_from_scores_backward_op(const MhLossKernels& kernels,
                                           const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                                           const at::Tensor& scores_in, double margin,
                                           bool max_violation, const Ids& img_ids,
                                           const Ids& txt_ids, const at::Tensor& support_i2t,
                                           const at::Tensor& support_t2i) {
  const c10::OptionalDeviceGuard guard(at::device_of(scores_in));
  const auto ids = check_scores(scores_in, img_ids, txt_ids);
  check_margin(margin);
  check_backward_inputs(grad_i2t, grad_t2i, support_i2t, support_t2i, scores_in.size(0),
                        scores_in);
  if (max_violation) {
    check_hardest_indices(support_i2t, support_t2i);
    return from_scores_hardest_backward(grad_i2t, grad_t2i, scores_in, support_i2t, support_t2i);
  }
  const Pairing pairing = pairing_of(std::get<0>(ids), std::get<1>(ids));
  const at::Tensor scores = scores_in.detach().contiguous();
  const auto acc = accumulation_dtype(scores.scalar_type());
  at::Tensor grad = kernels.hinge_grad_of_scores(
      scores, pairing, margin, scores.diagonal().to(acc).contiguous(),
      grad_i2t.to(acc).contiguous(), grad_t2i.to(acc).contiguous());
  grad.diagonal().add_(positive_grad(grad_i2t, grad_t2i, support_i2t, support_t2i, acc));
  return grad.to(scores.scalar_type());
}

// ---- CPU kernels ------------------------------------------------------------------------------

namespace {

// Partial per-query results, blocks × B: row b holds every query's result over block b of the
// other dimension, written only by the tiles of that block.
template <typename value_t>
struct Slots {
  at::Tensor values;
  at::Tensor indices;  // argmax index or hinge count

  Slots(int64_t blocks, int64_t batch, at::ScalarType dtype)
      : values(at::empty({blocks, batch}, at::dtype(dtype))),
        indices(at::empty({blocks, batch}, at::dtype(at::kLong))) {}

  value_t* value(int64_t block) { return values.data_ptr<value_t>() + block * values.size(1); }
  int64_t* index(int64_t block) { return indices.data_ptr<int64_t>() + block * indices.size(1); }
};

// Rows of `dim` elements per parallel task: ATen's grain, so small batches stay on one thread.
int64_t rows_per_task(int64_t dim) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / dim); }

// img_k·txt_k for every k: the positive scores S_kk, without the full GEMM.
template <typename scalar_t>
at::Tensor positive_scores(const at::Tensor& img, const at::Tensor& txt) {
  const int64_t batch = img.size(0);
  const int64_t dim = img.size(1);
  at::Tensor out = at::empty({batch}, img.options());
  const scalar_t* a = img.const_data_ptr<scalar_t>();
  const scalar_t* b = txt.const_data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, batch, rows_per_task(dim), [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      double sum = 0;
      for (int64_t f = 0; f < dim; ++f) sum += double(a[k * dim + f]) * double(b[k * dim + f]);
      o[k] = static_cast<scalar_t>(sum);
    }
  });
  return out;
}

// ---- max_violation -------------------------------------------------------------------------

// Running hardest negative of each row and each column of one tile. The common case — a value no
// larger than the running best — costs one comparison; NaN fails `v <= best` and so always takes
// the slow path, where it wins once and then stays (first NaN kept). Strict comparisons in
// increasing index order keep the lowest index on ties.
template <typename scalar_t>
void hardest_in_tile(const ScoreTile<scalar_t>& tile, const Pairing& pairing,
                     Slots<scalar_t>& rows, Slots<scalar_t>& cols) {
  constexpr scalar_t lowest = -std::numeric_limits<scalar_t>::infinity();
  scalar_t* row_best = rows.value(tile.col_block) + tile.row0;
  int64_t* row_arg = rows.index(tile.col_block) + tile.row0;
  scalar_t* col_best = cols.value(tile.row_block) + tile.col0;
  int64_t* col_arg = cols.index(tile.row_block) + tile.col0;
  std::fill(col_best, col_best + tile.cols, lowest);
  std::fill(col_arg, col_arg + tile.cols, int64_t{-1});
  for (int64_t ii = 0; ii < tile.rows; ++ii) {
    const int64_t i = tile.row0 + ii;
    const scalar_t* s = tile.row(ii);
    scalar_t best = lowest;
    int64_t arg = -1;
    for (int64_t jj = 0; jj < tile.cols; ++jj) {
      const scalar_t v = s[jj];
      const int64_t j = tile.col0 + jj;
      if (!(v <= best) && best == best && pairing.negative(i, j)) {
        best = v;
        arg = j;
      }
      if (!(v <= col_best[jj]) && col_best[jj] == col_best[jj] && pairing.negative(i, j)) {
        col_best[jj] = v;
        col_arg[jj] = i;
      }
    }
    // Negatives scoring -inf never pass `v > best`; if they are all there is, take the first.
    for (int64_t jj = 0; arg < 0 && jj < tile.cols; ++jj) {
      if (pairing.negative(i, tile.col0 + jj)) {
        best = s[jj];
        arg = tile.col0 + jj;
      }
    }
    row_best[ii] = best;
    row_arg[ii] = arg;
  }
  for (int64_t jj = 0; jj < tile.cols; ++jj) {
    for (int64_t ii = 0; col_arg[jj] < 0 && ii < tile.rows; ++ii) {
      if (pairing.negative(tile.row0 + ii, tile.col0 + jj)) {
        col_best[jj] = tile.row(ii)[jj];
        col_arg[jj] = tile.row0 + ii;
      }
    }
  }
}

// Merges each query's per-block partials in block order (merged, mh_loss.h) into its cost and
// support.
template <typename P, typename value_t, typename scalar_t>
void finish(Slots<value_t>& slots, const scalar_t* positive, scalar_t margin, at::Tensor& cost,
            at::Tensor& support) {
  const int64_t batch = cost.size(0);
  const int64_t blocks = slots.values.size(0);
  const value_t* values = slots.value(0);
  const int64_t* indices = slots.index(0);
  scalar_t* c = cost.data_ptr<scalar_t>();
  int64_t* s = support.data_ptr<int64_t>();
  at::parallel_for(0, batch, rows_per_task(blocks), [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const P total = merged<P>(values, indices, blocks, batch, k);
      c[k] = static_cast<scalar_t>(total.cost(margin, positive[k]));
      s[k] = total.support(c[k]);
    }
  });
}

// Both directions' costs and supports: `in_tile(tile, rows, cols)` writes a tile's partials into
// per-block slots of partials P (value type value_t), which finish merges.
template <typename P, typename value_t, typename scalar_t, typename EachTile, typename InTile>
Costs reduce_tiles(EachTile&& each_tile, const TileGrid& grid, const at::Tensor& positive,
                   double margin, InTile&& in_tile) {
  const auto dtype = c10::CppTypeToScalarType<value_t>::value;
  Slots<value_t> rows(grid.col_blocks(), grid.rows, dtype);
  Slots<value_t> cols(grid.row_blocks(), grid.cols, dtype);
  each_tile([&](const ScoreTile<scalar_t>& tile) { in_tile(tile, rows, cols); });
  at::Tensor cost_i2t = at::empty_like(positive);
  at::Tensor cost_t2i = at::empty_like(positive);
  at::Tensor support_i2t = at::empty_like(positive, at::kLong);
  at::Tensor support_t2i = at::empty_like(positive, at::kLong);
  const scalar_t* pos = positive.const_data_ptr<scalar_t>();
  const auto m = static_cast<scalar_t>(margin);
  finish<P>(rows, pos, m, cost_i2t, support_i2t);
  finish<P>(cols, pos, m, cost_t2i, support_t2i);
  return {cost_i2t, cost_t2i, support_i2t, support_t2i};
}

// ---- sum of hinges -------------------------------------------------------------------------

// Hinge sums (accumulated in double) and active counts of each row and column of one tile.
template <typename scalar_t>
void hinge_sums_in_tile(const ScoreTile<scalar_t>& tile, const Pairing& pairing,
                        const scalar_t* positive, scalar_t margin, Slots<double>& rows,
                        Slots<double>& cols) {
  double* row_sum = rows.value(tile.col_block) + tile.row0;
  int64_t* row_count = rows.index(tile.col_block) + tile.row0;
  double* col_sum = cols.value(tile.row_block) + tile.col0;
  int64_t* col_count = cols.index(tile.row_block) + tile.col0;
  std::fill(col_sum, col_sum + tile.cols, 0.0);
  std::fill(col_count, col_count + tile.cols, int64_t{0});
  for (int64_t ii = 0; ii < tile.rows; ++ii) {
    const int64_t i = tile.row0 + ii;
    const scalar_t* s = tile.row(ii);
    double sum = 0;
    int64_t count = 0;
    for (int64_t jj = 0; jj < tile.cols; ++jj) {
      const int64_t j = tile.col0 + jj;
      if (!pairing.negative(i, j)) continue;
      const scalar_t by_image = hinge(margin, s[jj], positive[i]);
      const scalar_t by_caption = hinge(margin, s[jj], positive[j]);
      sum += by_image;
      count += by_image > 0;
      col_sum[jj] += by_caption;
      col_count[jj] += by_caption > 0;
    }
    row_sum[ii] = sum;
    row_count[ii] = count;
  }
}

Costs costs_cpu(const ScoreSource& source, const Pairing& pairing, double margin,
                bool max_violation) {
  const at::Tensor& like = source.fused() ? source.img : source.scores;
  return AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "mh_loss_cpu", [&] {
    const TileGrid grid = source.fused() ? TileGrid{source.img.size(0), source.txt.size(0)}
                                         : TileGrid{source.scores.size(0), source.scores.size(1)};
    const at::Tensor positive = source.fused()
                                    ? positive_scores<scalar_t>(source.img, source.txt)
                                    : source.scores.diagonal().contiguous();
    auto each_tile = [&](auto&& epilogue) {
      if (source.fused()) {
        for_each_score_tile<scalar_t>(source.img, source.txt, grid, epilogue);
      } else {
        for_each_tile_of<scalar_t>(source.scores, grid, epilogue);
      }
    };
    if (max_violation) {
      return reduce_tiles<Hardest<scalar_t>, scalar_t, scalar_t>(
          each_tile, grid, positive, margin,
          [&](const ScoreTile<scalar_t>& tile, Slots<scalar_t>& rows, Slots<scalar_t>& cols) {
            hardest_in_tile(tile, pairing, rows, cols);
          });
    }
    const scalar_t* pos = positive.const_data_ptr<scalar_t>();
    return reduce_tiles<HingeSum<double>, double, scalar_t>(
        each_tile, grid, positive, margin,
        [&](const ScoreTile<scalar_t>& tile, Slots<double>& rows, Slots<double>& cols) {
          hinge_sums_in_tile(tile, pairing, pos, static_cast<scalar_t>(margin), rows, cols);
        });
  });
}

// Writes d(costs)/dS for one tile's negatives (0 elsewhere, the positives' share is added by
// positive_grad) into `out`, which may be the tile's own buffer.
template <typename scalar_t>
struct HingeGradWriter {
  Pairing pairing;
  scalar_t margin;
  const scalar_t* positive;
  const scalar_t* w_i2t;
  const scalar_t* w_t2i;

  void operator()(const ScoreTile<scalar_t>& tile, scalar_t* out, int64_t ld_out) const {
    for (int64_t ii = 0; ii < tile.rows; ++ii) {
      const int64_t i = tile.row0 + ii;
      const scalar_t* s = tile.row(ii);
      scalar_t* o = out + ii * ld_out;
      for (int64_t jj = 0; jj < tile.cols; ++jj) {
        const int64_t j = tile.col0 + jj;
        o[jj] = pairing.negative(i, j) ? hinge_grad(margin, s[jj], positive[i], positive[j],
                                                    w_i2t[i], w_t2i[j])
                                       : scalar_t(0);
      }
    }
  }
};

template <typename scalar_t>
HingeGradWriter<scalar_t> hinge_grad_writer(const Pairing& pairing, double margin,
                                            const at::Tensor& positive, const at::Tensor& w_i2t,
                                            const at::Tensor& w_t2i) {
  return {pairing, static_cast<scalar_t>(margin), positive.const_data_ptr<scalar_t>(),
          w_i2t.const_data_ptr<scalar_t>(), w_t2i.const_data_ptr<scalar_t>()};
}

// grad_img = G·txt and grad_txt = Gᵀ·img, G = d(costs)/dS, one tile of G at a time: one pass owns
// row blocks (grad_img rows), one owns column blocks (grad_txt rows), each accumulating its
// tiles in order. The positives' share of G is a diagonal, applied last.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> hinge_sum_backward_typed(const at::Tensor& grad_i2t,
                                                      const at::Tensor& grad_t2i,
                                                      const at::Tensor& img, const at::Tensor& txt,
                                                      double margin, const Pairing& pairing,
                                                      const at::Tensor& active_i2t,
                                                      const at::Tensor& active_t2i) {
  const TileGrid grid{img.size(0), txt.size(0)};
  const at::Tensor positive = positive_scores<scalar_t>(img, txt);
  const at::Tensor w_i2t = grad_i2t.to(img.scalar_type()).contiguous();
  const at::Tensor w_t2i = grad_t2i.to(img.scalar_type()).contiguous();
  const auto write = hinge_grad_writer<scalar_t>(pairing, margin, positive, w_i2t, w_t2i);
  at::Tensor grad_img = at::zeros_like(img);
  at::Tensor grad_txt = at::zeros_like(txt);
  for_each_score_tile_in_order<scalar_t>(
      img, txt, grid, Sweep::by_row_block, [&](const ScoreTile<scalar_t>& tile, at::Tensor& g) {
        write(tile, g.data_ptr<scalar_t>(), tile.cols);
        grad_img.narrow(0, tile.row0, tile.rows).addmm_(g, txt.narrow(0, tile.col0, tile.cols));
      });
  for_each_score_tile_in_order<scalar_t>(
      img, txt, grid, Sweep::by_col_block, [&](const ScoreTile<scalar_t>& tile, at::Tensor& g) {
        write(tile, g.data_ptr<scalar_t>(), tile.cols);
        grad_txt.narrow(0, tile.col0, tile.cols)
            .addmm_(g.t(), img.narrow(0, tile.row0, tile.rows));
      });
  const at::Tensor diagonal =
      positive_grad(grad_i2t, grad_t2i, active_i2t, active_t2i, img.scalar_type()).unsqueeze(1);
  grad_img.addcmul_(diagonal, txt);
  grad_txt.addcmul_(diagonal, img);
  return {grad_img, grad_txt};
}

std::tuple<at::Tensor, at::Tensor> hinge_sum_backward_cpu(
    const at::Tensor& grad_i2t, const at::Tensor& grad_t2i, const at::Tensor& img,
    const at::Tensor& txt, double margin, const Pairing& pairing, const at::Tensor& active_i2t,
    const at::Tensor& active_t2i) {
  return AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "mh_loss_backward_cpu", [&] {
    return hinge_sum_backward_typed<scalar_t>(grad_i2t, grad_t2i, img, txt, margin, pairing,
                                              active_i2t, active_t2i);
  });
}

at::Tensor hinge_grad_of_scores_cpu(const at::Tensor& scores, const Pairing& pairing,
                                    double margin, const at::Tensor& positive,
                                    const at::Tensor& w_i2t, const at::Tensor& w_t2i) {
  const int64_t batch = scores.size(0);
  at::Tensor grad = at::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "mh_loss_from_scores_backward_cpu", [&] {
    const auto write = hinge_grad_writer<scalar_t>(pairing, margin, positive, w_i2t, w_t2i);
    scalar_t* out = grad.data_ptr<scalar_t>();
    const TileGrid grid{batch, batch};
    for_each_tile_of<scalar_t>(scores, grid, [&](const ScoreTile<scalar_t>& tile) {
      write(tile, out + tile.row0 * batch + tile.col0, batch);
    });
  });
  return grad;
}

// ---- max_violation backward: the gather -----------------------------------------------------

template <typename scalar_t>
void gather_rows(const at::Tensor& y, const at::Tensor& w_self, const at::Tensor& hardest_self,
                 const at::Tensor& w_other, const Inverse& inverse, at::Tensor& out) {
  const int64_t batch = y.size(0);
  const int64_t dim = y.size(1);
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* ws = w_self.const_data_ptr<scalar_t>();
  const scalar_t* wo = w_other.const_data_ptr<scalar_t>();
  const int64_t* hard = hardest_self.const_data_ptr<int64_t>();
  const int64_t* offsets = inverse.offsets.const_data_ptr<int64_t>();
  const int64_t* sources = inverse.sources.const_data_ptr<int64_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, batch, rows_per_task(dim), [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      scalar_t* row = o + k * dim;
      const scalar_t* own = yp + k * dim;
      const scalar_t self = ws[k];  // a local: `row` could alias ws as far as the compiler knows
      const scalar_t diagonal = -(self + wo[k]);
      for (int64_t f = 0; f < dim; ++f) row[f] = diagonal * own[f];
      if (hard[k] >= 0) {
        const scalar_t* negative = yp + hard[k] * dim;
        for (int64_t f = 0; f < dim; ++f) row[f] += self * negative[f];
      }
      for (int64_t p = offsets[k]; p < offsets[k + 1]; ++p) {
        const scalar_t* query = yp + sources[p] * dim;
        const scalar_t w = wo[sources[p]];
        for (int64_t f = 0; f < dim; ++f) row[f] += w * query[f];
      }
    }
  });
}

at::Tensor gather_cpu(const at::Tensor& y, const at::Tensor& w_self,
                      const at::Tensor& hardest_self, const at::Tensor& w_other,
                      const Inverse& inverse_other) {
  at::Tensor out = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mh_loss_gather_cpu", [&] {
    gather_rows<scalar_t>(y, w_self, hardest_self, w_other, inverse_other, out);
  });
  return out;
}

const MhLossKernels& cpu_kernels() {
  static const MhLossKernels kernels{costs_cpu, gather_cpu, hinge_sum_backward_cpu,
                                     hinge_grad_of_scores_cpu};
  return kernels;
}

}  // namespace
}  // namespace jwae::hinge

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  jwae::hinge::register_mh_loss<jwae::hinge::cpu_kernels>(m);
}
