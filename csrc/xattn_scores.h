// Stacked cross-attention scores (SCAN), as far as every backend shares it: the options, their
// parsing and the argument checks. The math lives in xattn_epilogue.h (CPU) and
// cuda/xattn_scores.cu; the tile traversal in xattn_tiling.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string_view>
#include <utility>
#include <vector>

#include "checks.h"
#include "dtypes.h"

namespace jwae::xattn {

// Which items attend: t2i, each word over the image's regions (the score aggregates over words);
// i2t, each region over the caption's words (aggregates over regions).
enum class Direction { t2i, i2t };
enum class Agg { lse, mean, max, sum };
// SCAN's raw_feature_norm: how the word-region products are normalized over the query items of
// each context item before the attention softmax.
enum class RawNorm { clipped_l2norm, l2norm, clipped, softmax, no_norm };

struct Options {
  Direction direction;
  double lambda_softmax;
  Agg agg;
  double lambda_lse;
  RawNorm norm;
};

// SCAN's constants: the eps of its l2norm (added to the norm) and of its cosine similarity
// (clamping the product of the norms), and the slope of its LeakyReLU.
constexpr double kEps = 1e-8;
constexpr double kLeakySlope = 0.1;

inline Options parse_options(std::string_view direction, double lambda_softmax,
                             std::string_view agg, double lambda_lse,
                             std::string_view raw_feature_norm) {
  Options o{};
  if (direction == "t2i") {
    o.direction = Direction::t2i;
  } else if (direction == "i2t") {
    o.direction = Direction::i2t;
  } else {
    TORCH_CHECK_VALUE(false, "jwae_ext: argument 'direction' must be 't2i' or 'i2t', got '",
                      direction, "'");
  }
  if (agg == "lse") {
    o.agg = Agg::lse;
  } else if (agg == "mean") {
    o.agg = Agg::mean;
  } else if (agg == "max") {
    o.agg = Agg::max;
  } else if (agg == "sum") {
    o.agg = Agg::sum;
  } else {
    TORCH_CHECK_VALUE(false, "jwae_ext: argument 'agg' must be one of 'lse', 'mean', 'max', ",
                      "'sum', got '", agg, "'");
  }
  if (raw_feature_norm == "clipped_l2norm") {
    o.norm = RawNorm::clipped_l2norm;
  } else if (raw_feature_norm == "l2norm") {
    o.norm = RawNorm::l2norm;
  } else if (raw_feature_norm == "clipped") {
    o.norm = RawNorm::clipped;
  } else if (raw_feature_norm == "softmax") {
    o.norm = RawNorm::softmax;
  } else if (raw_feature_norm == "no_norm") {
    o.norm = RawNorm::no_norm;
  } else {
    TORCH_CHECK_VALUE(false, "jwae_ext: argument 'raw_feature_norm' must be one of ",
                      "'clipped_l2norm', 'l2norm', 'clipped', 'softmax', 'no_norm', got '",
                      raw_feature_norm, "'");
  }
  TORCH_CHECK_VALUE(std::isfinite(lambda_softmax),
                    "jwae_ext: argument 'lambda_softmax' must be finite, got ", lambda_softmax);
  TORCH_CHECK_VALUE(std::isfinite(lambda_lse), "jwae_ext: argument 'lambda_lse' must be finite, ",
                    "got ", lambda_lse);
  TORCH_CHECK_VALUE(o.agg != Agg::lse || lambda_lse != 0.0,
                    "jwae_ext: argument 'lambda_lse' must not be 0 with agg='lse' (it divides the ",
                    "log-sum-exp), got 0");
  o.lambda_softmax = lambda_softmax;
  o.lambda_lse = lambda_lse;
  return o;
}

// images (N_i, R, d), non-empty, a float dtype (xattn_region_grams' argument; checked first by
// check_inputs).
inline void check_region_images(const at::Tensor& images) {
  check_dim(images, 3, "images", "(n_image, regions, d)");
  check_nonempty(images, "images");
  check_float_dtype(images, "images");
}

// images (N_i, R, d), captions (N_c, L, d) and cap_lens (N_c,) int64 in [1, L], all on one
// device; float dtypes as every operator.
inline void check_inputs(const at::Tensor& images, const at::Tensor& captions,
                         const at::Tensor& cap_lens) {
  check_region_images(images);
  check_dim(captions, 3, "captions", "(n_caption, max_words, d), padded");
  check_nonempty(captions, "captions");
  check_same_device(images, "images", captions, "captions");
  check_same_dtype(images, "images", captions, "captions");
  TORCH_CHECK_VALUE(images.size(2) == captions.size(2), "jwae_ext: arguments 'images' and ",
                    "'captions' must have the same feature size d (last dim), got ",
                    images.size(2), " and ", captions.size(2));
  check_dim(cap_lens, 1, "cap_lens", "one length per caption");
  TORCH_CHECK_TYPE(cap_lens.scalar_type() == at::kLong, "jwae_ext: argument 'cap_lens' must be ",
                   "int64, got ", cap_lens.scalar_type());
  TORCH_CHECK_VALUE(cap_lens.size(0) == captions.size(0), "jwae_ext: argument 'cap_lens' must ",
                    "have ", captions.size(0), " entries (one per caption), got ",
                    cap_lens.size(0));
  check_same_device(cap_lens, "cap_lens", captions, "captions");
  const auto [lo, hi] = at::aminmax(cap_lens);
  const int64_t shortest = lo.item<int64_t>();
  const int64_t longest = hi.item<int64_t>();
  TORCH_CHECK_VALUE(shortest >= 1 && longest <= captions.size(1), "jwae_ext: argument ",
                    "'cap_lens' must hold lengths in [1, ", captions.size(1), "] (words of ",
                    "'captions'), got values from ", shortest, " to ", longest);
}

// region_grams (N_i, R, R), for t2i, in the scores' dtype on the images' device: each image's
// Gram matrix of its regions as xattn_region_grams(images) gives it, passed so that a gallery
// scored again and again (a search index) does not recompute them.
inline void check_region_grams(const at::Tensor& grams, const at::Tensor& images,
                               const Options& options) {
  TORCH_CHECK_VALUE(options.direction == Direction::t2i, "jwae_ext: argument 'region_grams' ",
                    "is for direction='t2i' (the words attend over the regions), got 'i2t'");
  check_same_device(grams, "region_grams", images, "images");
  const at::ScalarType score_dtype = accumulation_dtype(images.scalar_type());
  TORCH_CHECK_TYPE(grams.scalar_type() == score_dtype, "jwae_ext: argument 'region_grams' must ",
                   "have the score dtype ", score_dtype, ", got ", grams.scalar_type());
  const int64_t n = images.size(0), R = images.size(1);
  TORCH_CHECK_VALUE(grams.dim() == 3 && grams.size(0) == n && grams.size(1) == R &&
                        grams.size(2) == R,
                    "jwae_ext: argument 'region_grams' must have shape (", n, ", ", R, ", ", R,
                    ") (xattn_region_grams(images)), got ", grams.sizes());
}

// The backward's arguments: the inputs as check_inputs, and grad (N_i, N_c) in the score dtype on
// their device.
inline void check_backward_inputs(const at::Tensor& grad, const at::Tensor& images,
                                  const at::Tensor& captions, const at::Tensor& cap_lens) {
  check_inputs(images, captions, cap_lens);
  check_dim(grad, 2, "grad", "(n_image, n_caption)");
  TORCH_CHECK_VALUE(grad.size(0) == images.size(0) && grad.size(1) == captions.size(0),
                    "jwae_ext: argument 'grad' must have shape (", images.size(0), ", ",
                    captions.size(0), "), got ", grad.sizes());
  check_same_device(grad, "grad", images, "images");
  const at::ScalarType score_dtype = accumulation_dtype(images.scalar_type());
  TORCH_CHECK_TYPE(grad.scalar_type() == score_dtype, "jwae_ext: argument 'grad' must have the ",
                   "score dtype ", score_dtype, ", got ", grad.scalar_type());
}

// cap_to_img (N_c,) int64 on the inputs' device, ids in [0, N_i), every image captioned.
inline void check_cap_to_img(const at::Tensor& cap_to_img, int64_t n_images, int64_t n_captions,
                             const at::Tensor& captions) {
  check_dim(cap_to_img, 1, "cap_to_img", "the image of each caption");
  TORCH_CHECK_TYPE(cap_to_img.scalar_type() == at::kLong, "jwae_ext: argument 'cap_to_img' ",
                   "must be int64, got ", cap_to_img.scalar_type());
  TORCH_CHECK_VALUE(cap_to_img.size(0) == n_captions, "jwae_ext: argument 'cap_to_img' must ",
                    "have ", n_captions, " entries (one per caption), got ", cap_to_img.size(0));
  check_same_device(cap_to_img, "cap_to_img", captions, "captions");
  const auto [lo, hi] = at::aminmax(cap_to_img);
  const int64_t min_id = lo.item<int64_t>();
  const int64_t max_id = hi.item<int64_t>();
  TORCH_CHECK_VALUE(min_id >= 0 && max_id < n_images, "jwae_ext: argument 'cap_to_img' must ",
                    "hold image ids in [0, ", n_images, ") (rows of 'images'), got values from ",
                    min_id, " to ", max_id);
  const at::Tensor uncaptioned = (at::bincount(cap_to_img, {}, n_images) == 0).nonzero();
  TORCH_CHECK_VALUE(uncaptioned.size(0) == 0, "jwae_ext: every image needs at least one caption ",
                    "in 'cap_to_img' (its i2t rank is undefined otherwise), but ",
                    uncaptioned.size(0), " of ", n_images, " images have none, the first is image ",
                    uncaptioned[0][0].item<int64_t>());
}

// The ranks' arguments: the inputs as check_inputs, and cap_to_img as check_cap_to_img.
inline void check_rank_inputs(const at::Tensor& images, const at::Tensor& captions,
                              const at::Tensor& cap_lens, const at::Tensor& cap_to_img) {
  check_inputs(images, captions, cap_lens);
  check_cap_to_img(cap_to_img, images.size(0), captions.size(0), captions);
}

// A part of the ranks' counting pass: 0 <= part < parts (see part_range).
inline void check_part(int64_t part, int64_t parts) {
  TORCH_CHECK_VALUE(parts >= 1, "jwae_ext: argument 'parts' must be >= 1, got ", parts);
  TORCH_CHECK_VALUE(part >= 0 && part < parts, "jwae_ext: argument 'part' must be in [0, ", parts,
                    ") ('parts'), got ", part);
}

// The caption groups (tiles) [first, last) of `groups` whose pairs part `part` of `parts` counts:
// contiguous, as even as whole groups allow; a part may get none.
inline std::pair<int64_t, int64_t> part_range(int64_t groups, int64_t part, int64_t parts) {
  return {groups * part / parts, groups * (part + 1) / parts};
}

// Captions in ascending order of their image (stable): the traversal order of the ranks, so that
// the own pairs fall into few tiles.
inline std::vector<int64_t> captions_by_image(const at::Tensor& cap_to_img) {
  const at::Tensor order =
      std::get<1>(at::sort(cap_to_img.to(at::kCPU), /*stable=*/true, 0, /*descending=*/false));
  const int64_t* p = order.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + order.numel());
}

}  // namespace jwae::xattn
