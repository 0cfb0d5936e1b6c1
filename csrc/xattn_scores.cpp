// CPU kernels of the stacked cross-attention scores: the scores, their gradient for both inputs
// and exact retrieval ranks, from the tiles of xattn_tiling.h with the epilogue of
// xattn_epilogue.h. Never the attended vectors, never more than one tile of products per thread.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <numeric>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "xattn_epilogue.h"
#include "xattn_scores.h"
#include "xattn_tiling.h"

namespace jwae::xattn {
namespace {

// The inputs made contiguous, the grid, and what the epilogue needs of the images.
struct Problem {
  Options options;
  at::Tensor images;    // (N_i, R, d)
  at::Tensor regions;   // (N_i * R, d) view of images
  at::Tensor captions;  // (N_c, L, d)
  PairGrid grid;
  bool i2t;
  at::Tensor region_grams;  // t2i: (N_i, R, R), each image's Gram of its regions
  at::Tensor region_norms;  // i2t: (N_i * R,) ‖v‖ of every region
};

// ‖x_i‖ of each row of a (n, d) contiguous matrix, one fixed summation order per row.
template <typename T>
void row_norms(const T* x, int64_t n, int64_t d, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    T sum = 0;
    for (int64_t j = 0; j < d; ++j) sum += x[i * d + j] * x[i * d + j];
    out[i] = std::sqrt(sum);
  }
}

// Each image's Gram matrix of its regions, one single-threaded GEMM per image: its bits depend
// neither on the thread count nor on the other images of the call, so Grams computed once by
// xattn_region_grams give the scores the same bits as Grams computed with them. Small problems
// stay on the calling thread (waking the pool costs more than they do).
at::Tensor region_grams_cpu(const at::Tensor& images) {
  const at::Tensor v = images.contiguous();
  const int64_t n_images = v.size(0), R = v.size(1), d = v.size(2);
  at::Tensor grams = at::empty({n_images, R, R}, v.options());
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / (R * R * d));
  at::parallel_for(0, n_images, grain, [&](int64_t first, int64_t last) {
    const SingleThreadedBlas blas;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t i = first; i < last; ++i) {
      at::Tensor out = grams[i];
      at::mm_out(out, v[i], v[i].t());
    }
  });
  return grams;
}

Problem make_problem(const at::Tensor& images, const at::Tensor& captions,
                     const at::Tensor& cap_lens, const Options& options,
                     std::vector<int64_t> order,
                     const std::optional<at::Tensor>& region_grams = std::nullopt) {
  Problem p{options};
  p.images = images.contiguous();
  p.captions = captions.contiguous();
  p.regions = p.images.view({-1, p.images.size(2)});
  p.i2t = options.direction == Direction::i2t;
  const at::Tensor lens = cap_lens.to(at::kCPU).contiguous();
  const int64_t* len = lens.const_data_ptr<int64_t>();
  if (order.empty()) {
    order.resize(lens.numel());
    std::iota(order.begin(), order.end(), 0);
  }
  p.grid = make_grid(p.images.size(0), p.images.size(1),
                     std::vector<int64_t>(len, len + lens.numel()), std::move(order));
  const int64_t n_images = p.images.size(0), R = p.images.size(1), d = p.images.size(2);
  if (p.i2t) {
    p.region_norms = at::empty({n_images * R}, p.images.options());
    AT_DISPATCH_FLOATING_TYPES(p.images.scalar_type(), "xattn_region_norms", [&] {
      const scalar_t* x = p.regions.const_data_ptr<scalar_t>();
      scalar_t* out = p.region_norms.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n_images * R, 256, [&](int64_t first, int64_t last) {
        row_norms(x + first * d, last - first, d, out + first);
      });
    });
  } else {
    p.region_grams = region_grams.has_value() ? region_grams->contiguous()
                                              : region_grams_cpu(p.images);
  }
  return p;
}

// A thread's view of the tiles: turns a PairTile into the epilogue's TileView (segments, query
// norms, context Grams), keeping what depends on the packed caption group until the group
// changes, and maps pairs to (image, caption).
template <typename T>
class TileContext {
 public:
  explicit TileContext(const Problem& p)
      : p_(p),
        math_(p.options, p.grid.max_group_words * p.grid.max_group_regions(),
              std::max(p.grid.max_group_words, p.grid.max_group_regions()),
              std::max(p.grid.max_group_captions, p.grid.images_per_group), p.images.options()) {
    image_offsets_.resize(p.grid.images_per_group + 1);
    for (int64_t i = 0; i <= p.grid.images_per_group; ++i) image_offsets_[i] = i * p.grid.regions;
    word_norms_.resize(p.grid.max_group_words);
  }

  PairMath<T>& math() { return math_; }

  TileView<T> view(const PairTile<T>& tile) {
    if (tile.caption_group != group_) load_group(tile);
    grams_.clear();
    const int64_t n_img = tile.n_images;
    TileView<T> v{tile.scores.data, tile.scores.rows, tile.scores.cols};
    if (p_.i2t) {
      v.row_offsets = image_offsets_.data();
      v.row_segments = n_img;
      v.col_offsets = tile.word_offsets;
      v.col_segments = tile.n_captions;
      v.query_norms = p_.region_norms.const_data_ptr<T>() + tile.image0 * p_.grid.regions;
      v.grams = &word_grams_;
    } else {
      v.row_offsets = tile.word_offsets;
      v.row_segments = tile.n_captions;
      v.col_offsets = image_offsets_.data();
      v.col_segments = n_img;
      v.query_norms = word_norms_.data();
      for (int64_t i = 0; i < n_img; ++i) grams_.push_back(p_.region_grams[tile.image0 + i]);
      v.grams = &grams_;
    }
    return v;
  }

  // The (image, caption) of pair (a, b) of a tile.
  std::pair<int64_t, int64_t> pair(const PairTile<T>& tile, int64_t a, int64_t b) const {
    return p_.i2t ? std::pair{tile.image0 + a, tile.captions[b]}
                  : std::pair{tile.image0 + b, tile.captions[a]};
  }

 private:
  // Word norms (t2i) or each caption's word Gram (i2t) of a newly packed group. Computed the
  // same way in every traversal, so a tile's scores have the same bits in every pass.
  void load_group(const PairTile<T>& tile) {
    group_ = tile.caption_group;
    const at::Tensor& words = *tile.words;
    if (!p_.i2t) {
      row_norms(words.const_data_ptr<T>(), words.size(0), words.size(1), word_norms_.data());
      return;
    }
    word_grams_.clear();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t c = 0; c < tile.n_captions; ++c) {
      const at::Tensor w =
          words.narrow(0, tile.word_offsets[c], tile.word_offsets[c + 1] - tile.word_offsets[c]);
      word_grams_.push_back(at::mm(w, w.t()));
    }
  }

  const Problem& p_;
  PairMath<T> math_;
  std::vector<int64_t> image_offsets_;
  std::vector<T> word_norms_;
  std::vector<at::Tensor> word_grams_;
  std::vector<at::Tensor> grams_;
  int64_t group_ = -1;
};

// Runs `on_pair(image, caption, score)` for every pair of every tile the filter keeps. Callers'
// `on_pair` may run on any thread (each pair's slot is its own, counts are added atomically), so
// the sweep only decides how evenly the threads share the work: by caption group (each thread
// packs its groups' words once) when there are enough groups to share out, else by image group
// (a search's few queries form one or two caption groups: one thread would do nearly all).
template <typename T, typename Keep, typename OnPair>
void for_each_score(const Problem& p, Keep&& keep, OnPair&& on_pair) {
  struct Epilogue {
    TileContext<T> context;
    std::vector<T> scores;
    OnPair& on_pair;
    void operator()(const PairTile<T>& tile) {
      const TileView<T> v = context.view(tile);
      context.math().forward(v, scores.data());
      for (int64_t a = 0; a < v.row_segments; ++a) {
        for (int64_t b = 0; b < v.col_segments; ++b) {
          const auto [image, caption] = context.pair(tile, a, b);
          on_pair(image, caption, scores[a * v.col_segments + b]);
        }
      }
    }
    void group_done(int64_t) {}
  };
  const int64_t max_pairs = p.grid.max_group_captions * p.grid.images_per_group;
  const bool enough_caption_groups = p.grid.caption_groups() >= 4 * at::get_num_threads();
  const Sweep sweep = enough_caption_groups ? Sweep::by_row_block : Sweep::by_col_block;
  for_each_pair_tile<T>(p.grid, p.regions, p.captions, p.i2t, sweep, keep, [&] {
    return Epilogue{TileContext<T>(p), std::vector<T>(max_pairs), on_pair};
  });
}

at::Tensor xattn_scores_cpu(const at::Tensor& images, const at::Tensor& captions,
                            const at::Tensor& cap_lens, std::string_view direction,
                            double lambda_softmax, std::string_view agg, double lambda_lse,
                            std::string_view raw_feature_norm,
                            const std::optional<at::Tensor>& region_grams) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_inputs(images, captions, cap_lens);
  if (region_grams.has_value()) check_region_grams(*region_grams, images, options);
  const Problem p = make_problem(images, captions, cap_lens, options, {}, region_grams);
  const int64_t n_captions = captions.size(0);
  at::Tensor scores = at::empty({images.size(0), n_captions}, p.images.options());
  AT_DISPATCH_FLOATING_TYPES(p.images.scalar_type(), "xattn_scores", [&] {
    scalar_t* out = scores.mutable_data_ptr<scalar_t>();
    // Each pair lies in one tile: tiles write disjoint entries.
    for_each_score<scalar_t>(
        p, [](int64_t, int64_t) { return true; },
        [&](int64_t image, int64_t caption, scalar_t s) { out[image * n_captions + caption] = s; });
  });
  return scores;
}

// ---- backward -----------------------------------------------------------------------------------

// The gradient sweep of one input. Owning a caption group (or an image group), a thread visits its
// tiles in order, accumulates the products' gradient into the owned rows with one GEMM per tile
// (d words += dS·regions or dSᵀ·regions; d regions likewise with the words), plus the owned items'
// query-norm or Gram terms, and writes the owned slice of the input's gradient when the group is
// done. Deterministic: every owned value is summed in the same order by one thread.
template <typename T>
class GradEpilogue {
 public:
  GradEpilogue(const Problem& p, const at::Tensor& grad_scores, at::Tensor& grad_images,
               at::Tensor& grad_captions, bool captions_owned)
      : p_(p),
        context_(p),
        grad_scores_(grad_scores.const_data_ptr<T>()),
        grad_images_(grad_images),
        grad_captions_(grad_captions),
        captions_owned_(captions_owned),
        dscore_(p.grid.max_group_captions * p.grid.images_per_group),
        norm_grads_(std::max(p.grid.max_group_words, p.grid.max_group_regions())) {
    if (captions_owned) {
      grad_words_ = at::zeros({p.grid.max_group_words, p.images.size(2)}, p.images.options());
    } else if (!p.i2t) {  // the regions are the context: their Gram's gradient
      gram_grads_ = at::zeros({p.grid.images_per_group, p.grid.regions, p.grid.regions},
                              p.images.options());
    }
  }

  void operator()(const PairTile<T>& tile) {
    const TileView<T> v = context_.view(tile);
    if (!have_group_) start_group(tile);
    const int64_t n_captions = p_.captions.size(0);
    for (int64_t a = 0; a < v.row_segments; ++a) {
      for (int64_t b = 0; b < v.col_segments; ++b) {
        const auto [image, caption] = context_.pair(tile, a, b);
        dscore_[a * v.col_segments + b] = grad_scores_[image * n_captions + caption];
      }
    }
    // The owned input's items are the query (rows) or the context (columns) of the tile.
    const bool rows_owned = captions_owned_ != p_.i2t;
    const bool norms_here = rows_owned;
    const at::Tensor ds = context_.math().backward(v, dscore_.data(),
                                                   norms_here ? norm_grads_.data() : nullptr,
                                                   norms_here ? nullptr : &gram_grad_views_);
    const at::Tensor words = *tile.words;
    const at::Tensor regions =
        p_.regions.narrow(0, tile.image0 * p_.grid.regions, tile.n_images * p_.grid.regions);
    const at::Tensor& other = captions_owned_ ? regions : words;
    at::Tensor target = owned_rows(tile);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    target.addmm_(rows_owned ? ds : ds.t(), other);
  }

  void group_done(int64_t) {
    have_group_ = false;
    if (captions_owned_) {
      finish_captions();
    } else {
      finish_images();
    }
  }

 private:
  at::Tensor owned_rows(const PairTile<T>& tile) {
    if (captions_owned_) return grad_words_.narrow(0, 0, tile.words->size(0));
    return grad_images_.view({-1, p_.images.size(2)})
        .narrow(0, tile.image0 * p_.grid.regions, tile.n_images * p_.grid.regions);
  }

  void start_group(const PairTile<T>& tile) {
    have_group_ = true;
    image0_ = tile.image0;
    n_images_ = tile.n_images;
    words_ = *tile.words;
    captions_.assign(tile.captions, tile.captions + tile.n_captions);
    offsets_.assign(tile.word_offsets, tile.word_offsets + tile.n_captions + 1);
    std::fill(norm_grads_.begin(), norm_grads_.end(), T(0));
    gram_grad_views_.clear();
    if (captions_owned_) {
      grad_words_.zero_();
      // The words are the context (i2t): each caption's word Gram gets a gradient.
      for (int64_t c = 0; p_.i2t && c < tile.n_captions; ++c) {
        const int64_t n = offsets_[c + 1] - offsets_[c];
        gram_grad_views_.push_back(at::zeros({n, n}, p_.images.options()));
      }
    } else if (!p_.i2t) {
      gram_grads_.zero_();
      for (int64_t i = 0; i < tile.n_images; ++i) gram_grad_views_.push_back(gram_grads_[i]);
    }
  }

  // d x_q += (d‖x_q‖ / ‖x_q‖) x_q for rows x of a matrix (0 where ‖x_q‖ = 0, as torch.norm).
  static void add_norm_grads(T* grad, const T* x, const T* norms, const T* norm_grads, int64_t n,
                             int64_t d) {
    for (int64_t q = 0; q < n; ++q) {
      if (norms[q] == 0) continue;
      const T w = norm_grads[q] / norms[q];
      for (int64_t j = 0; j < d; ++j) grad[q * d + j] += w * x[q * d + j];
    }
  }

  // Words: query norms (t2i) or word Grams (i2t); then the packed rows go to their captions.
  void finish_captions() {
    const int64_t d = p_.images.size(2);
    const int64_t n_words = words_.size(0);
    at::Tensor grad = grad_words_.narrow(0, 0, n_words);
    if (!p_.i2t) {
      std::vector<T> norms(n_words);
      row_norms(words_.const_data_ptr<T>(), n_words, d, norms.data());
      add_norm_grads(grad.mutable_data_ptr<T>(), words_.const_data_ptr<T>(), norms.data(),
                     norm_grads_.data(), n_words, d);
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (size_t c = 0; c < captions_.size(); ++c) {
        const int64_t n = offsets_[c + 1] - offsets_[c];
        const at::Tensor& dg = gram_grad_views_[c];
        grad.narrow(0, offsets_[c], n).addmm_(dg + dg.t(), words_.narrow(0, offsets_[c], n));
      }
    }
    const T* src = grad.const_data_ptr<T>();
    T* dst = grad_captions_.mutable_data_ptr<T>();
    const int64_t max_words = p_.captions.size(1);
    for (size_t c = 0; c < captions_.size(); ++c) {
      const int64_t n = offsets_[c + 1] - offsets_[c];
      std::copy_n(src + offsets_[c] * d, n * d, dst + captions_[c] * max_words * d);
    }
  }

  // Regions: region Grams (t2i) or query norms (i2t), into the owned slice of grad_images.
  void finish_images() {
    const int64_t d = p_.images.size(2);
    const int64_t R = p_.grid.regions;
    at::Tensor grad = grad_images_.narrow(0, image0_, n_images_);
    const at::Tensor x = p_.images.narrow(0, image0_, n_images_);
    if (p_.i2t) {
      add_norm_grads(grad.mutable_data_ptr<T>(), x.const_data_ptr<T>(),
                     p_.region_norms.const_data_ptr<T>() + image0_ * R, norm_grads_.data(),
                     n_images_ * R, d);
      return;
    }
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t i = 0; i < n_images_; ++i) {
      const at::Tensor dg = gram_grads_[i];
      grad[i].addmm_(dg + dg.t(), x[i]);
    }
  }

  const Problem& p_;
  TileContext<T> context_;
  const T* grad_scores_;
  at::Tensor& grad_images_;
  at::Tensor& grad_captions_;
  bool captions_owned_;
  std::vector<T> dscore_;
  std::vector<T> norm_grads_;   // per owned query item (packed words or the group's regions)
  at::Tensor grad_words_;       // captions owned: the packed words' gradient
  at::Tensor gram_grads_;       // images owned (t2i): per image of the group
  std::vector<at::Tensor> gram_grad_views_;  // per context segment of the owned group
  bool have_group_ = false;
  int64_t image0_ = 0, n_images_ = 0;
  at::Tensor words_;
  std::vector<int64_t> captions_;
  std::vector<int64_t> offsets_;
};

std::tuple<at::Tensor, at::Tensor> xattn_scores_backward_cpu(
    const at::Tensor& grad, const at::Tensor& images, const at::Tensor& captions,
    const at::Tensor& cap_lens, std::string_view direction, double lambda_softmax,
    std::string_view agg, double lambda_lse, std::string_view raw_feature_norm,
    std::array<bool, 2> grad_mask) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_backward_inputs(grad, images, captions, cap_lens);
  const Problem p = make_problem(images, captions, cap_lens, options, {});
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_images = grad_mask[0] ? at::zeros_like(p.images) : at::Tensor();
  at::Tensor grad_captions = grad_mask[1] ? at::zeros_like(p.captions) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(p.images.scalar_type(), "xattn_scores_backward", [&] {
    for (const bool captions_owned : {true, false}) {
      if (!grad_mask[captions_owned ? 1 : 0]) continue;
      const Sweep sweep = captions_owned ? Sweep::by_row_block : Sweep::by_col_block;
      for_each_pair_tile<scalar_t>(
          p.grid, p.regions, p.captions, p.i2t, sweep, [](int64_t, int64_t) { return true; },
          [&] { return GradEpilogue<scalar_t>(p, g, grad_images, grad_captions, captions_owned); });
    }
  });
  // An input left out of grad_mask gets an empty (0,) tensor, as the other backward operators.
  if (!grad_mask[0]) grad_images = at::empty({0}, p.images.options());
  if (!grad_mask[1]) grad_captions = at::empty({0}, p.images.options());
  return {grad_images, grad_captions};
}

// ---- ranks --------------------------------------------------------------------------------------

// Integer counts merged from concurrent tiles: the sum does not depend on the order.
inline void atomic_add(int64_t* target, int64_t value) {
  if (value != 0) __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
}

// Exact ranks (docs/design.md#retrieval-ranks) in two passes over disjoint tiles: first the tiles
// that hold an own pair (captions are grouped by image, so they form a staircase of few tiles),
// keeping every score they produce; the thresholds follow from the own pairs' scores. Then the
// other tiles are computed and counted, and the kept scores counted too. Every tile is computed
// once, and a pair's score is the one every other score is compared with: ties count as in one
// score matrix, against the query (§3.3), and are counted apart as well.
// Part `part` of `parts` computes every threshold (the own tiles are few) but counts only the
// pairs of its caption groups: the counts of all parts sum to those of one part, exactly, since
// every part computes the same tiles with the same bits (a distributed evaluation).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> xattn_ranks_cpu(
    const at::Tensor& images, const at::Tensor& captions, const at::Tensor& cap_lens,
    const at::Tensor& cap_to_img, std::string_view direction, double lambda_softmax,
    std::string_view agg, double lambda_lse, std::string_view raw_feature_norm, int64_t part,
    int64_t parts) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_rank_inputs(images, captions, cap_lens, cap_to_img);
  check_part(part, parts);
  const int64_t n_images = images.size(0), n_captions = captions.size(0);
  const at::Tensor owner_t = cap_to_img.to(at::kCPU).contiguous();
  const int64_t* owner = owner_t.const_data_ptr<int64_t>();
  const Problem p = make_problem(images, captions, cap_lens, options, captions_by_image(owner_t));
  const PairGrid& grid = p.grid;
  // The image groups of each caption group's own pairs, and where each caption keeps the scores
  // of its group's own tiles: images_per_group slots per own image group.
  std::vector<std::vector<int64_t>> own_groups(grid.caption_groups());
  std::vector<int64_t> kept_first(n_captions);
  std::vector<int64_t> group_of_caption(n_captions);
  for (int64_t g = 0; g < grid.caption_groups(); ++g) {
    auto& groups = own_groups[g];
    for (int64_t k = grid.group_first[g]; k < grid.group_first[g + 1]; ++k) {
      const int64_t ig = grid.group_of_image(owner[grid.order[k]]);
      if (std::find(groups.begin(), groups.end(), ig) == groups.end()) groups.push_back(ig);
    }
  }
  int64_t n_kept = 0;
  for (int64_t g = 0; g < grid.caption_groups(); ++g) {
    for (int64_t k = grid.group_first[g]; k < grid.group_first[g + 1]; ++k) {
      const int64_t c = grid.order[k];
      group_of_caption[c] = g;
      kept_first[c] = n_kept;
      n_kept += static_cast<int64_t>(own_groups[g].size()) * grid.images_per_group;
    }
  }
  auto kept_slot = [&](int64_t image, int64_t caption) {
    const auto& groups = own_groups[group_of_caption[caption]];
    const int64_t ig = grid.group_of_image(image);
    const int64_t which = std::find(groups.begin(), groups.end(), ig) - groups.begin();
    return kept_first[caption] + which * grid.images_per_group + image % grid.images_per_group;
  };
  auto holds_own_pair = [&](int64_t cg, int64_t ig) {
    const auto& groups = own_groups[cg];
    return std::find(groups.begin(), groups.end(), ig) != groups.end();
  };
  const std::pair<int64_t, int64_t> own_part = part_range(grid.caption_groups(), part, parts);
  auto counted = [&](int64_t cg) { return cg >= own_part.first && cg < own_part.second; };
  at::Tensor i2t = at::zeros({n_images}, owner_t.options());
  at::Tensor t2i = at::zeros({n_captions}, owner_t.options());
  at::Tensor i2t_ties = at::zeros({n_images}, owner_t.options());
  at::Tensor t2i_ties = at::zeros({n_captions}, owner_t.options());
  AT_DISPATCH_FLOATING_TYPES(p.images.scalar_type(), "xattn_ranks", [&] {
    std::vector<scalar_t> kept(n_kept);
    std::vector<scalar_t> cap_thr(n_captions);
    for_each_score<scalar_t>(p, holds_own_pair, [&](int64_t image, int64_t caption, scalar_t s) {
      kept[kept_slot(image, caption)] = s;  // each pair in one tile, each slot one pair
      if (owner[caption] == image) cap_thr[caption] = s;
    });
    std::vector<scalar_t> img_thr(n_images, -std::numeric_limits<scalar_t>::infinity());
    for (int64_t c = 0; c < n_captions; ++c) {
      img_thr[owner[c]] = std::max(img_thr[owner[c]], cap_thr[c]);
    }
    int64_t* img_count = i2t.mutable_data_ptr<int64_t>();
    int64_t* cap_count = t2i.mutable_data_ptr<int64_t>();
    int64_t* img_ties = i2t_ties.mutable_data_ptr<int64_t>();
    int64_t* cap_ties = t2i_ties.mutable_data_ptr<int64_t>();
    auto count = [&](int64_t image, int64_t caption, scalar_t s) {
      if (owner[caption] == image) return;
      if (s >= img_thr[image]) atomic_add(img_count + image, 1);
      if (s == img_thr[image]) atomic_add(img_ties + image, 1);
      if (s >= cap_thr[caption]) atomic_add(cap_count + caption, 1);
      if (s == cap_thr[caption]) atomic_add(cap_ties + caption, 1);
    };
    // Image counts are shared between the threads sweeping caption groups, so both counts are
    // added atomically (one rule for the concurrent pass and the kept scores' serial one).
    for_each_score<scalar_t>(
        p, [&](int64_t cg, int64_t ig) { return counted(cg) && !holds_own_pair(cg, ig); }, count);
    for (int64_t c = 0; c < n_captions; ++c) {
      if (!counted(group_of_caption[c])) continue;
      for (const int64_t ig : own_groups[group_of_caption[c]]) {
        const int64_t first = ig * grid.images_per_group;
        const int64_t last = std::min(first + grid.images_per_group, n_images);
        for (int64_t image = first; image < last; ++image) {
          count(image, c, kept[kept_slot(image, c)]);
        }
      }
    }
  });
  return {i2t.to(images.device()), t2i.to(images.device()), i2t_ties.to(images.device()),
          t2i_ties.to(images.device())};
}

at::Tensor xattn_region_grams_cpu(const at::Tensor& images) {
  check_region_images(images);
  return region_grams_cpu(images);
}

}  // namespace
}  // namespace jwae::xattn

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  m.impl("xattn_region_grams", &jwae::xattn::xattn_region_grams_cpu);
  m.impl("xattn_scores", &jwae::xattn::xattn_scores_cpu);
  m.impl("xattn_scores_backward", &jwae::xattn::xattn_scores_backward_cpu);
  m.impl("xattn_ranks", &jwae::xattn::xattn_ranks_cpu);
}

// Ranks and Grams are not differentiated: their outputs do not require grad, even for inputs that
// do (xattn_scores' backward recomputes the Grams it needs).
TORCH_LIBRARY_IMPL(jwae_ext, Autograd, m) {
  m.impl("xattn_ranks", torch::CppFunction::makeFallthrough());
  m.impl("xattn_region_grams", torch::CppFunction::makeFallthrough());
}
