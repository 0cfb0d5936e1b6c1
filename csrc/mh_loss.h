// Max-of-hinges loss (VSE++): what the CPU kernels (csrc/mh_loss.cpp) and the CUDA kernels
// (csrc/cuda/mh_loss.cu) share — which pairs are negatives, the hinge and the hardest-negative
// order
// (host and device code), the argument checks, and the device-generic parts of the backward
// (csrc/hinge_common.cpp).
//
// S = img_emb·txt_embᵀ (B×B), row i paired with column i. Query i of direction i2t is image i
// (its row of S), query j of t2i is caption j (its column). The forward ops return per-query
// costs for both directions and a per-query "support" (int64): with max_violation the index of
// the hardest negative, or -1 where the cost is 0 (nothing to differentiate); for the sum of
// hinges the number of active hinges, which the backward needs for the positive's gradient.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "registration.h"

namespace jwae::hinge {

// Which (image i, caption j) pairs are negatives: every pair off the diagonal except, when ids
// are given, pairs with equal ids. The diagonal is always the positive, whatever the ids say.
struct Pairing {
  const int64_t* img_ids = nullptr;  // null: no ids, only the diagonal is positive
  const int64_t* txt_ids = nullptr;

  C10_HOST_DEVICE bool negative(int64_t i, int64_t j) const {
    return i != j && (img_ids == nullptr || img_ids[i] != txt_ids[j]);
  }
};

// Pointers into ids that check_ids has made contiguous; they must outlive the Pairing.
inline Pairing pairing_of(const std::optional<at::Tensor>& img_ids,
                          const std::optional<at::Tensor>& txt_ids) {
  if (!img_ids.has_value()) return {};
  return {img_ids->const_data_ptr<int64_t>(), txt_ids->const_data_ptr<int64_t>()};
}

// [margin + score - positive]_+ with NaN kept: a NaN anywhere must surface as a NaN loss, and a
// plain max(h, 0) can turn it into 0.
template <typename T>
C10_HOST_DEVICE inline T hinge(T margin, T score, T positive) {
  const T h = margin + score - positive;
  return (h > T(0) || h != h) ? h : T(0);
}

// The total order that picks the hardest negative: any candidate beats none (index -1), NaN beats
// every number, a larger score beats a smaller one, and on ties the lower index wins. Being a
// total order, merging partial results in any order (threads, tiles, tree reductions) gives the
// same answer.
template <typename T>
C10_HOST_DEVICE inline bool beats(T value, int64_t index, T best, int64_t best_index) {
  if (index < 0) return false;
  if (best_index < 0) return true;
  const bool value_nan = value != value;
  const bool best_nan = best != best;
  if (value_nan != best_nan) return value_nan;
  if (!value_nan && value != best) return value > best;
  return index < best_index;
}

// d(sum-of-hinges costs)/d(S_ij) for a negative pair: the i2t weight of image i if its hinge on
// caption j is active, plus the t2i weight of caption j if its hinge on image i is active.
template <typename T>
C10_HOST_DEVICE inline T hinge_grad(T margin, T score, T positive_i, T positive_j, T weight_i,
                                    T weight_j) {
  return (margin + score - positive_i > T(0) ? weight_i : T(0)) +
         (margin + score - positive_j > T(0) ? weight_j : T(0));
}

// ---- per-query partial results ---------------------------------------------------------------
// A query's result over some of its negatives, merged over tiles and blocks in a fixed order. Both
// have one shape: merge() combines two partials, cost() turns the final one into the query's cost
// and support() into its support. Aggregates, so that CUDA can keep them in shared memory.

// max_violation: the hardest negative so far (index -1: none yet).
template <typename T>
struct Hardest {
  T value;
  int64_t index;

  C10_HOST_DEVICE static Hardest none() { return {T(0), -1}; }
  C10_HOST_DEVICE void offer(T candidate, int64_t candidate_index) {
    if (beats(candidate, candidate_index, value, index)) {
      value = candidate;
      index = candidate_index;
    }
  }
  C10_HOST_DEVICE void merge(const Hardest& other) { offer(other.value, other.index); }
  C10_HOST_DEVICE T cost(T margin, T positive) const {
    return index < 0 ? T(0) : hinge(margin, value, positive);
  }
  // The hardest index, or -1 where the cost is 0 (nothing to differentiate).
  C10_HOST_DEVICE int64_t support(T cost) const { return cost == T(0) ? -1 : index; }
};

// Sum of hinges: their sum and how many are active (the positive's gradient needs the count).
template <typename T>
struct HingeSum {
  T sum;
  int64_t count;

  C10_HOST_DEVICE static HingeSum none() { return {T(0), 0}; }
  C10_HOST_DEVICE void add(T h) {
    sum += h;
    count += h > T(0);
  }
  C10_HOST_DEVICE void merge(const HingeSum& other) {
    sum += other.sum;
    count += other.count;
  }
  C10_HOST_DEVICE T cost(T, T) const { return sum; }
  C10_HOST_DEVICE int64_t support(T) const { return count; }
};

// Query k's partial results over `blocks` blocks, stored as two arrays (block b's value at
// values[b * batch + k], its index or count at indices[b * batch + k]), merged in block order: how
// every device finishes a direction.
template <typename P, typename V>
C10_HOST_DEVICE inline P merged(const V* values, const int64_t* indices, int64_t blocks,
                                int64_t batch, int64_t k) {
  P total = P::none();
  for (int64_t b = 0; b < blocks; ++b) {
    total.merge(P{values[b * batch + k], indices[b * batch + k]});
  }
  return total;
}

// ---- the backward's device-generic parts that kernels share --------------------------------

// For each target k, the queries whose hardest negative is k, in increasing order:
// sources[offsets[k] : offsets[k + 1]] (offsets has B + 1 entries). A fixed visiting order makes
// the scatter of the hardest-negative gradient a deterministic gather, without atomics.
struct Inverse {
  at::Tensor offsets;
  at::Tensor sources;
};

// One side's gradient of the hardest-negative loss, written by the device's kernel. For
// grad_img (y = txt_emb, "self" = i2t, "other" = t2i):
//   out_k = w_self[k]·y[hardest_self[k]] - (w_self[k] + w_other[k])·y[k]
//           + Σ_{s : hardest_other[s] = k} w_other[s]·y[s]
// where w is the cost's gradient on active queries and 0 elsewhere. grad_txt is the same with
// y = img_emb and the directions swapped.
using GatherFn = at::Tensor (*)(const at::Tensor& y, const at::Tensor& w_self,
                                const at::Tensor& hardest_self, const at::Tensor& w_other,
                                const Inverse& inverse_other);

// The sum-of-hinges gradient reaching the positive score S_kk:
// -(grad_i2t[k]·active_i2t[k] + grad_t2i[k]·active_t2i[k]), in `dtype`.
at::Tensor positive_grad(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                         const at::Tensor& active_i2t, const at::Tensor& active_t2i,
                         at::ScalarType dtype);

// ---- the operators, once for every device ----------------------------------------------------

using Costs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Ids = std::optional<at::Tensor>;

// The scores a forward reduces: the fused GEMM of embeddings (img, txt set) or a given matrix
// (scores set); contiguous and detached.
struct ScoreSource {
  at::Tensor img, txt, scores;

  bool fused() const { return !scores.defined(); }
};

// What a device supplies. Everything around these (checks, pairing, layout, the max_violation
// branch of the backward) is the operators' own, in csrc/mh_loss.cpp.
struct MhLossKernels {
  // (cost_i2t, cost_t2i, support_i2t, support_t2i) of every query.
  Costs (*costs)(const ScoreSource& source, const Pairing& pairing, double margin,
                 bool max_violation);
  // One side of the max_violation backward (see GatherFn).
  GatherFn gather;
  // The sum-of-hinges backward of the fused loss: (grad_img, grad_txt).
  std::tuple<at::Tensor, at::Tensor> (*hinge_sum_backward)(
      const at::Tensor& grad_i2t, const at::Tensor& grad_t2i, const at::Tensor& img,
      const at::Tensor& txt, double margin, const Pairing& pairing, const at::Tensor& active_i2t,
      const at::Tensor& active_t2i);
  // d(sum-of-hinges costs)/dS of a score matrix at its negatives, 0 elsewhere, in the
  // accumulation dtype; positive, w_i2t and w_t2i are in that dtype too.
  at::Tensor (*hinge_grad_of_scores)(const at::Tensor& scores, const Pairing& pairing,
                                     double margin, const at::Tensor& positive,
                                     const at::Tensor& w_i2t, const at::Tensor& w_t2i);
};

// The operators (schemas in csrc/ops.cpp); each device registers them with its kernels
// (OnDevice, registration.h).
Costs mh_loss_op(const MhLossKernels& kernels, const at::Tensor& img_emb,
                 const at::Tensor& txt_emb, double margin, bool max_violation, const Ids& img_ids,
                 const Ids& txt_ids);

std::tuple<at::Tensor, at::Tensor> mh_loss_backward_op(
    const MhLossKernels& kernels, const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
    const at::Tensor& img_emb, const at::Tensor& txt_emb, double margin, bool max_violation,
    const Ids& img_ids, const Ids& txt_ids, const at::Tensor& support_i2t,
    const at::Tensor& support_t2i);

Costs mh_loss_from_scores_op(const MhLossKernels& kernels, const at::Tensor& scores,
                             double margin, bool max_violation, const Ids& img_ids,
                             const Ids& txt_ids);

at::Tensor mh_loss_from_scores_backward_op(const MhLossKernels& kernels,
                                           const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                                           const at::Tensor& scores, double margin,
                                           bool max_violation, const Ids& img_ids,
                                           const Ids& txt_ids, const at::Tensor& support_i2t,
                                           const at::Tensor& support_t2i);

// Registers the four operators for one device.
template <const MhLossKernels& (*kernels)()>
void register_mh_loss(torch::Library& m) {
  m.impl("mh_loss", &OnDevice<mh_loss_op, kernels>::call);
  m.impl("mh_loss_backward", &OnDevice<mh_loss_backward_op, kernels>::call);
  m.impl("mh_loss_from_scores", &OnDevice<mh_loss_from_scores_op, kernels>::call);
  m.impl("mh_loss_from_scores_backward",
         &OnDevice<mh_loss_from_scores_backward_op, kernels>::call);
}

}  // namespace jwae::hinge
