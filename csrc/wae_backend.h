// What the jWAE regularizer's operators (wae_loss, discriminator_loss, mmd_imq: one file each,
// csrc/<op>.cpp and csrc/cuda/<op>.cu) share: the element kernels a device supplies
// (csrc/wae_backend.cpp for CPU, csrc/cuda/wae_backend.cu for CUDA) and small argument helpers.
// Each operator computes the gradients of its scalar output in the forward, for the inputs in its
// grad_mask; backward only scales them.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "linear_cross_entropy.h"

namespace jwae {

struct WaeBackend {
  const XentBackend* xent;
  // sum over elements of |rec - feat| (or (rec - feat)^2 when squared) as a 0-d accumulation-
  // dtype tensor; writes grad_scale * d/d rec into `grad` (contiguous, rec's shape) when defined.
  at::Tensor (*reconstruction)(const at::Tensor& feat, const at::Tensor& rec, bool squared,
                               double grad_scale, const at::Tensor& grad);
  // mean over elements of softplus(sign * logits) as a 0-d accumulation-dtype tensor; writes
  // grad_scale * d/d logits into `grad` when defined.
  at::Tensor (*softplus_mean)(const at::Tensor& logits, double sign, double grad_scale,
                              const at::Tensor& grad);
  // For gram (n x m, contiguous, accumulation dtype) holding a_i . b_j: writes to row_k (n) the
  // row sums of k(|a_i - b_j|^2) (the IMQ kernel over `scales`), skipping j == i when `same`.
  // When row_dk is defined, also overwrites gram with dk/d(distance^2) (0 where skipped) and
  // writes its row sums to row_dk.
  void (*imq_pairs)(const at::Tensor& gram, const at::Tensor& sq_norms_a,
                    const at::Tensor& sq_norms_b, const at::Tensor& scales, bool same,
                    const at::Tensor& row_k, const at::Tensor& row_dk);
};

const WaeBackend& wae_cpu_backend();
const WaeBackend& wae_cuda_backend();  // defined only in CUDA builds

// The dtype of returned loss values: float64 when any input is float64, float32 otherwise.
inline at::ScalarType result_dtype(const std::vector<at::Tensor>& inputs) {
  const bool any_double = std::any_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) {
    return t.scalar_type() == at::kDouble;
  });
  return any_double ? at::kDouble : at::kFloat;
}

inline void check_floats_on(const at::Tensor& t, const char* name, const at::Tensor& anchor,
                     const char* anchor_name) {
  check_nonempty(t, name);
  check_float_dtype(t, name);
  check_same_device(anchor, anchor_name, t, name);
}

// A contiguous buffer for d total / d t when wanted, else undefined.
inline at::Tensor grad_buffer(bool wanted, const at::Tensor& t) {
  return wanted ? at::empty(t.sizes(), t.options()) : at::Tensor();
}


}  // namespace jwae
