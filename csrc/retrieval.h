// The retrieval operators, written once for every device: argument checks and the composition of
// the ranks from two device kernels (own scores from the GEMM tiles, then one counting pass).
// csrc/retrieval.cpp and csrc/cuda/retrieval.cu supply the kernels (RetrievalKernels).
//
// Why thresholds come from the tiles: a rank compares other items' scores with the query's own
// score, and the same dot product computed by another routine (another GEMM shape, a plain dot)
// can differ in the last bit. Taking the own scores from the very tiles the counting pass computes
// again (the same GEMM calls) keeps every comparison between values of one computation, so exact
// ties, e.g. duplicate captions, count the same way as in one score matrix.
//
// The tie rule (DESIGN.md §3.3): a rank counts the other items scoring at least as high as the
// ground truth, so a model that gives several captions one code cannot rank first by it. The
// counting pass also counts, per query, the other items scoring exactly as high (its ties), for
// the tables to say how many queries tied.
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "dtypes.h"
#include "registration.h"

namespace jwae::ranking {

// Through the extremes (NaN propagates into them): one read, no input-sized temporaries
// (at::isfinite would allocate |t| and two masks).
inline void check_finite(const at::Tensor& t, const char* name) {
  const auto [lo, hi] = at::aminmax(t);
  TORCH_CHECK_VALUE(at::isfinite(at::stack({lo, hi})).all().item<bool>(), "jwae_ext: argument '",
                    name, "' must hold finite values only, got NaN or infinity");
}

// Two embedding matrices scored against each other: 2-D, non-empty, same width, dtype and device.
inline void check_embedding_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                                 const char* b_name) {
  check_dim(a, 2, a_name, "one embedding per row");
  check_dim(b, 2, b_name, "one embedding per row");
  check_nonempty(a, a_name);
  check_nonempty(b, b_name);
  check_same_device(a, a_name, b, b_name);
  check_float_dtype(a, a_name);
  check_same_dtype(a, a_name, b, b_name);
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), "jwae_ext: arguments '", a_name, "' and '", b_name,
                    "' must have the same embedding size, got ", a.size(1), " and ", b.size(1));
  check_finite(a, a_name);
  check_finite(b, b_name);
}

// cap_to_img: int64 (M,) on the embeddings' device with values in [lowest, N). lowest is 0 for the
// ranks; count_at_least also takes -1 for a caption whose image is not among img_emb (a shard).
inline void check_cap_to_img(const at::Tensor& cap_to_img, const at::Tensor& img_emb,
                             const at::Tensor& cap_emb, int64_t lowest) {
  check_index_vector(cap_to_img, cap_emb.size(0), "cap_to_img", "cap_emb");
  check_same_device(cap_to_img, "cap_to_img", img_emb, "img_emb");
  const auto [lo, hi] = at::aminmax(cap_to_img);
  const int64_t min_id = lo.item<int64_t>();
  const int64_t max_id = hi.item<int64_t>();
  TORCH_CHECK_VALUE(min_id >= lowest && max_id < img_emb.size(0), "jwae_ext: argument ",
                    "'cap_to_img' must hold image ids in [", lowest, ", ", img_emb.size(0),
                    ") (rows of img_emb), got values from ", min_id, " to ", max_id);
}

inline void check_every_image_captioned(const at::Tensor& cap_to_img, int64_t n_images) {
  const at::Tensor uncaptioned = (at::bincount(cap_to_img, {}, n_images) == 0).nonzero();
  // The message arguments are only evaluated when the check fails.
  TORCH_CHECK_VALUE(uncaptioned.size(0) == 0, "jwae_ext: every image needs at least one caption ",
                    "in 'cap_to_img' (its i2t rank is undefined otherwise), but ",
                    uncaptioned.size(0), " of ", n_images, " images have none, the first is image ",
                    uncaptioned[0][0].item<int64_t>());
}

// Per image and per caption: the other items scoring at least as high as its threshold, and of
// those, the ones scoring exactly as high. (img_counts, cap_counts, img_ties, cap_ties), int64.
using RankCounts = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline void check_thresholds(const at::Tensor& thresholds, const char* name, int64_t length,
                             const char* length_of, const at::Tensor& emb) {
  check_dim(thresholds, 1, name, "one threshold per row");
  TORCH_CHECK_VALUE(thresholds.size(0) == length, "jwae_ext: argument '", name, "' must have ",
                    length, " entries (one per row of ", length_of, "), got ",
                    thresholds.size(0));
  check_same_device(thresholds, name, emb, length_of);
  TORCH_CHECK_TYPE(thresholds.scalar_type() == accumulation_dtype(emb.scalar_type()),
                   "jwae_ext: argument '", name, "' must have the score dtype ",
                   accumulation_dtype(emb.scalar_type()), " (that of the embeddings, float32 for ",
                   "float16/bfloat16), got ", thresholds.scalar_type());
  TORCH_CHECK_VALUE(!at::isnan(thresholds).any().item<bool>(), "jwae_ext: argument '", name,
                    "' must not hold NaN");
}

inline void check_topk_arguments(const at::Tensor& queries, const at::Tensor& gallery, int64_t k) {
  check_embedding_pair(queries, "queries", gallery, "gallery");
  TORCH_CHECK_VALUE(k >= 1 && k <= gallery.size(0), "jwae_ext: argument 'k' must be in [1, ",
                    gallery.size(0), "] (rows of gallery), got ", k);
}

// Tiles of a rows×cols grid (ids row_block * col_blocks + col_block, ascending) that hold a
// caption's own score S[cap_to_img[j], j]. With captions grouped by image in ascending order they
// form a staircase of about row_blocks + col_blocks tiles.
inline std::vector<int64_t> own_score_tiles(const at::Tensor& cap_to_img, int64_t tile_rows,
                                            int64_t tile_cols, int64_t col_blocks) {
  const at::Tensor owner = cap_to_img.to(at::kCPU).contiguous();
  const int64_t* img = owner.const_data_ptr<int64_t>();
  std::vector<int64_t> tiles;
  tiles.reserve(owner.size(0));
  for (int64_t j = 0; j < owner.size(0); ++j) {
    if (img[j] >= 0) tiles.push_back((img[j] / tile_rows) * col_blocks + j / tile_cols);
  }
  std::sort(tiles.begin(), tiles.end());
  tiles.erase(std::unique(tiles.begin(), tiles.end()), tiles.end());
  return tiles;
}

// Each image's best own-caption score (-inf for an image without captions in cap_to_img).
inline at::Tensor best_own_scores(const at::Tensor& cap_thresholds, const at::Tensor& cap_to_img,
                                  int64_t n_images) {
  return at::full({n_images}, -std::numeric_limits<double>::infinity(), cap_thresholds.options())
      .scatter_reduce_(0, cap_to_img, cap_thresholds, "amax", /*include_self=*/true);
}

// ---- the operators, once for every device ----------------------------------------------------

// What a device supplies; inputs are checked and contiguous.
struct RetrievalKernels {
  // The own score S[cap_to_img[j], j] of every caption j, from the tiles that hold them.
  at::Tensor (*own_scores)(const at::Tensor& img, const at::Tensor& cap, const at::Tensor& owner);
  // Per image, captions of other images scoring at least img_thresholds; per caption, images
  // other than its own scoring at least cap_thresholds; and the ties among them.
  RankCounts (*count_at_least)(const at::Tensor& img, const at::Tensor& cap,
                               const at::Tensor& owner, const at::Tensor& img_thresholds,
                               const at::Tensor& cap_thresholds);
  // The exact top-k (scores, indices) of every query.
  std::tuple<at::Tensor, at::Tensor> (*topk)(const at::Tensor& queries, const at::Tensor& gallery,
                                             int64_t k);
};

// (best own score per image, own score per caption) of checked, contiguous inputs.
inline std::tuple<at::Tensor, at::Tensor> own_thresholds(const RetrievalKernels& kernels,
                                                         const at::Tensor& img,
                                                         const at::Tensor& cap,
                                                         const at::Tensor& owner) {
  at::Tensor cap_thresholds = kernels.own_scores(img, cap, owner);
  return {best_own_scores(cap_thresholds, owner, img.size(0)), cap_thresholds};
}

inline std::tuple<at::Tensor, at::Tensor> retrieval_thresholds_op(const RetrievalKernels& kernels,
                                                                  const at::Tensor& img_emb,
                                                                  const at::Tensor& cap_emb,
                                                                  const at::Tensor& cap_to_img) {
  const c10::OptionalDeviceGuard guard(at::device_of(img_emb));
  check_embedding_pair(img_emb, "img_emb", cap_emb, "cap_emb");
  check_cap_to_img(cap_to_img, img_emb, cap_emb, 0);
  return own_thresholds(kernels, img_emb.contiguous(), cap_emb.contiguous(),
                        cap_to_img.contiguous());
}

// Thresholds from the tiles + one counting pass over the same tiles. Captions not grouped by image
// in ascending order are first put in that order (one copy of cap_emb): the own-score pre-pass
// then touches only the staircase of tiles instead of nearly all of them, and counts do not depend
// on the order of the gallery.
inline RankCounts retrieval_ranks_op(const RetrievalKernels& kernels, const at::Tensor& img_emb,
                                     const at::Tensor& cap_emb, const at::Tensor& cap_to_img) {
  const c10::OptionalDeviceGuard guard(at::device_of(img_emb));
  check_embedding_pair(img_emb, "img_emb", cap_emb, "cap_emb");
  check_cap_to_img(cap_to_img, img_emb, cap_emb, 0);
  check_every_image_captioned(cap_to_img, img_emb.size(0));
  const int64_t m = cap_to_img.size(0);
  const bool grouped =
      m < 2 || (cap_to_img.slice(0, 1) >= cap_to_img.slice(0, 0, m - 1)).all().item<bool>();
  at::Tensor order;
  at::Tensor cap = cap_emb.contiguous();
  at::Tensor owner = cap_to_img.contiguous();
  if (!grouped) {
    order = std::get<1>(at::sort(owner, /*stable=*/true, /*dim=*/0, /*descending=*/false));
    cap = cap.index_select(0, order);
    owner = owner.index_select(0, order);
  }
  const at::Tensor img = img_emb.contiguous();
  const auto [img_thresholds, cap_thresholds] = own_thresholds(kernels, img, cap, owner);
  auto [i2t, t2i, i2t_ties, t2i_ties] =
      kernels.count_at_least(img, cap, owner, img_thresholds, cap_thresholds);
  if (!grouped) {
    t2i = at::empty_like(t2i).index_copy_(0, order, t2i);
    t2i_ties = at::empty_like(t2i_ties).index_copy_(0, order, t2i_ties);
  }
  return {i2t, t2i, i2t_ties, t2i_ties};
}

inline RankCounts retrieval_count_at_least_op(
    const RetrievalKernels& kernels, const at::Tensor& img_emb, const at::Tensor& cap_emb,
    const at::Tensor& cap_to_img, const at::Tensor& img_thresholds,
    const at::Tensor& cap_thresholds) {
  const c10::OptionalDeviceGuard guard(at::device_of(img_emb));
  check_embedding_pair(img_emb, "img_emb", cap_emb, "cap_emb");
  check_cap_to_img(cap_to_img, img_emb, cap_emb, -1);
  check_thresholds(img_thresholds, "img_thresholds", img_emb.size(0), "img_emb", img_emb);
  check_thresholds(cap_thresholds, "cap_thresholds", cap_emb.size(0), "cap_emb", cap_emb);
  return kernels.count_at_least(img_emb.contiguous(), cap_emb.contiguous(),
                                cap_to_img.contiguous(), img_thresholds.contiguous(),
                                cap_thresholds.contiguous());
}

inline std::tuple<at::Tensor, at::Tensor> topk_search_op(const RetrievalKernels& kernels,
                                                         const at::Tensor& queries,
                                                         const at::Tensor& gallery, int64_t k) {
  const c10::OptionalDeviceGuard guard(at::device_of(queries));
  check_topk_arguments(queries, gallery, k);
  return kernels.topk(queries.contiguous(), gallery.contiguous(), k);
}

// Registers the four operators for one device.
template <const RetrievalKernels& (*kernels)()>
void register_retrieval(torch::Library& m) {
  m.impl("retrieval_ranks", &OnDevice<retrieval_ranks_op, kernels>::call);
  m.impl("retrieval_thresholds", &OnDevice<retrieval_thresholds_op, kernels>::call);
  m.impl("retrieval_count_at_least", &OnDevice<retrieval_count_at_least_op, kernels>::call);
  m.impl("topk_search", &OnDevice<topk_search_op, kernels>::call);
}

}  // namespace jwae::ranking
