// The CPU tile traversal of the cross-attention kernels: the word-by-region product matrix
// S = words · regionsᵀ (all real words of all captions, in a traversal order, by all regions of all
// images) cut into tiles of whole captions × whole images, so that every (image, caption) pair lies
// in exactly one tile and its epilogue never leaves it.
//
// A caption group's words are packed into a per-thread buffer (padding never enters a GEMM), and
// the tile is one GEMM of the packed words by the image group's regions (a contiguous slice of the
// images) — or of the regions by the words, when the epilogue wants regions as rows (i2t). Tile
// sizes are fixed (never derived from the thread count) and every traversal computes a tile the
// same way (same packing, same GEMM shape and operands), so a tile has the same bits whichever
// traversal computed it: a pre-pass over a few tiles can derive thresholds that a later full pass
// compares against consistently, and per-group accumulations are the same on any machine.
//
// This is tiling.h's row-block × column-block traversal with variable-sized row blocks (caption
// groups); ScoreTile describes a computed tile as it does there.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "single_threaded_blas.h"
#include "tiling.h"

namespace jwae::xattn {

// Words of a caption group (a longer caption forms a group of its own) and regions of an image
// group (at least one whole image): a 512 × 576 fp32 tile is 1.1 MiB, one core's L2 (2 MiB here)
// holds it with the epilogue's rows. Measured (2 cores, MKL, d = 1024): the tiles' GEMMs take
// 1.21x the whole-matrix GEMM at 256 × 504, 1.16x at 512 × 504; wider tiles gain little more and
// make the epilogue miss L2. 576 regions (16 images of SCAN's 36, 64 of the embedded data's 9)
// fill MKL's 48-wide panels: per product, 512 x 576 tiles ran 5-11 % faster than 512 x 504
// (one thread, three interleaved runs).
constexpr int64_t kGroupWords = 512;
constexpr int64_t kGroupRegions = 576;

// How the pairs are cut into tiles.
struct PairGrid {
  int64_t n_images = 0;
  int64_t regions = 0;  // R, per image
  int64_t images_per_group = 1;
  std::vector<int64_t> order;        // caption ids in traversal order
  std::vector<int64_t> group_first;  // caption group g is order[group_first[g] .. group_first[g+1])
  std::vector<int64_t> word_first;   // words before group g in traversal order (g = groups: all)
  std::vector<int64_t> lengths;      // real words of each caption, by caption id
  int64_t max_group_words = 0;
  int64_t max_group_captions = 0;

  int64_t caption_groups() const { return static_cast<int64_t>(group_first.size()) - 1; }
  int64_t image_groups() const { return (n_images + images_per_group - 1) / images_per_group; }
  int64_t max_group_regions() const { return images_per_group * regions; }
  int64_t group_of_image(int64_t image) const { return image / images_per_group; }
};

// Captions `order` (ids) with `lengths` (by id), packed greedily in that order.
inline PairGrid make_grid(int64_t n_images, int64_t regions, std::vector<int64_t> lengths,
                          std::vector<int64_t> order) {
  PairGrid g;
  g.n_images = n_images;
  g.regions = regions;
  g.images_per_group = std::max<int64_t>(1, kGroupRegions / regions);
  g.lengths = std::move(lengths);
  g.order = std::move(order);
  g.group_first.push_back(0);
  g.word_first.push_back(0);
  int64_t words = 0;
  int64_t total = 0;
  for (int64_t k = 0; k < static_cast<int64_t>(g.order.size()); ++k) {
    const int64_t n = g.lengths[g.order[k]];
    if (words > 0 && words + n > kGroupWords) {
      g.group_first.push_back(k);
      g.word_first.push_back(total);
      words = 0;
    }
    words += n;
    total += n;
    g.max_group_words = std::max(g.max_group_words, words);
  }
  g.group_first.push_back(static_cast<int64_t>(g.order.size()));
  g.word_first.push_back(total);
  for (int64_t c = 0; c < g.caption_groups(); ++c) {
    g.max_group_captions = std::max(g.max_group_captions, g.group_first[c + 1] - g.group_first[c]);
  }
  return g;
}

// One computed tile, valid inside the epilogue call.
template <typename scalar_t>
struct PairTile {
  // Rows × columns of S: words × regions, or regions × words when regions are the rows. Its
  // row/column origins are positions in the traversal's word order and in the region order.
  ScoreTile<scalar_t> scores;
  int64_t caption_group;
  int64_t image_group;
  const int64_t* captions;      // caption ids of the group
  int64_t n_captions;
  const int64_t* word_offsets;  // n_captions + 1 offsets of each caption's words in `words`
  const at::Tensor* words;      // the group's packed words, (word_offsets[n_captions], d)
  int64_t image0;               // first image of the group
  int64_t n_images;
};

// A thread's tile maker: packs caption groups on demand and computes tiles into its buffer.
template <typename scalar_t>
class PairTiler {
 public:
  PairTiler(const PairGrid& grid, const at::Tensor& regions, const at::Tensor& captions,
            bool regions_as_rows)
      : grid_(grid), regions_(regions), captions_(captions), regions_as_rows_(regions_as_rows) {
    const int64_t d = regions.size(1);
    words_ = at::empty({grid.max_group_words, d}, regions.options());
    buffer_ = at::empty({grid.max_group_words * grid.max_group_regions()}, regions.options());
    offsets_.reserve(grid.max_group_captions + 1);
  }

  PairTile<scalar_t> compute(int64_t caption_group, int64_t image_group) {
    if (caption_group != packed_) pack(caption_group);
    const int64_t image0 = image_group * grid_.images_per_group;
    const int64_t n_images = std::min(grid_.images_per_group, grid_.n_images - image0);
    const int64_t n_words = offsets_.back();
    const at::Tensor words = words_.narrow(0, 0, n_words);
    const at::Tensor regions = regions_.narrow(0, image0 * grid_.regions, n_images * grid_.regions);
    const at::Tensor& rows = regions_as_rows_ ? regions : words;
    const at::Tensor& cols = regions_as_rows_ ? words : regions;
    at::Tensor out = buffer_.narrow(0, 0, rows.size(0) * cols.size(0)).view({rows.size(0), -1});
    {
      // Kernels register their backward separately; below autograd, inputs that require grad do
      // not make mm_out refuse to run (the guard is per thread, and this runs on worker threads).
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::mm_out(out, rows, cols.t());
    }
    const int64_t word0 = grid_.word_first[caption_group];
    const int64_t region0 = image0 * grid_.regions;
    ScoreTile<scalar_t> s{out.const_data_ptr<scalar_t>(),
                          out.size(1),
                          regions_as_rows_ ? region0 : word0,
                          out.size(0),
                          regions_as_rows_ ? image_group : caption_group,
                          regions_as_rows_ ? word0 : region0,
                          out.size(1),
                          regions_as_rows_ ? caption_group : image_group};
    const int64_t* ids = grid_.order.data() + grid_.group_first[caption_group];
    return {s,
            caption_group,
            image_group,
            ids,
            static_cast<int64_t>(offsets_.size()) - 1,
            offsets_.data(),
            &packed_words_,
            image0,
            n_images};
  }

 private:
  // Copies the real words of the group's captions into consecutive rows of `words_`.
  void pack(int64_t caption_group) {
    const int64_t first = grid_.group_first[caption_group];
    const int64_t last = grid_.group_first[caption_group + 1];
    const int64_t d = captions_.size(2);
    const int64_t max_words = captions_.size(1);
    const scalar_t* src = captions_.const_data_ptr<scalar_t>();
    scalar_t* dst = words_.mutable_data_ptr<scalar_t>();
    offsets_.assign(1, 0);
    for (int64_t k = first; k < last; ++k) {
      const int64_t caption = grid_.order[k];
      const int64_t n = grid_.lengths[caption];
      std::copy_n(src + caption * max_words * d, n * d, dst + offsets_.back() * d);
      offsets_.push_back(offsets_.back() + n);
    }
    packed_words_ = words_.narrow(0, 0, offsets_.back());
    packed_ = caption_group;
  }

  const PairGrid& grid_;
  const at::Tensor& regions_;   // (n_images * regions, d), contiguous
  const at::Tensor& captions_;  // (n_captions, max_words, d), contiguous
  bool regions_as_rows_;
  at::Tensor words_;
  at::Tensor packed_words_;
  at::Tensor buffer_;
  std::vector<int64_t> offsets_;
  int64_t packed_ = -1;
  SingleThreadedBlas blas_;  // a tile's bits must not depend on the thread count
};

// The tiles that `keep(caption_group, image_group)` accepts, one thread owning each caption group
// (Sweep::by_row_block: its tiles visited in image-group order) or each image group
// (Sweep::by_col_block: caption groups in order). Each thread makes its own epilogue with
// `make_epilogue()`, calls `epilogue(tile)` for every kept tile of an owned group and then
// `epilogue.group_done(group)`. State owned by the group (its captions' or its images' results
// and gradients) is then written by one thread in a fixed order: deterministic, whatever the
// thread count. Shared state needs order-independent updates (integer counts, atomically).
// A pass over a few tiles (say, those holding the positive pairs) and a later full pass compute
// those tiles identically, so they can be compared bit for bit.
template <typename scalar_t, typename Keep, typename MakeEpilogue>
void for_each_pair_tile(const PairGrid& grid, const at::Tensor& regions,
                        const at::Tensor& captions, bool regions_as_rows, Sweep sweep, Keep&& keep,
                        MakeEpilogue&& make_epilogue) {
  const bool by_captions = sweep == Sweep::by_row_block;
  const int64_t n_owned = by_captions ? grid.caption_groups() : grid.image_groups();
  const int64_t n_inner = by_captions ? grid.image_groups() : grid.caption_groups();
  if (n_inner == 0) return;
  // One thread's tile maker and epilogue.
  struct Worker {
    PairTiler<scalar_t> tiler;
    decltype(make_epilogue()) epilogue;
  };
  parallel_items(
      n_owned, [&] { return Worker{{grid, regions, captions, regions_as_rows}, make_epilogue()}; },
      [&](Worker& w, int64_t owned) {
        for (int64_t inner = 0; inner < n_inner; ++inner) {
          const int64_t caption_group = by_captions ? owned : inner;
          const int64_t image_group = by_captions ? inner : owned;
          if (keep(caption_group, image_group)) {
            w.epilogue(w.tiler.compute(caption_group, image_group));
          }
        }
        w.epilogue.group_done(owned);
      });
}

}  // namespace jwae::xattn
