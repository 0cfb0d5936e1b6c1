// The jWAE regularizer: wae_loss (feature reconstruction + caption NLL through the fused linear
// cross-entropy + adversarial terms), discriminator_loss, and mmd_imq (WAE-MMD prior matching).
//
// Drivers are device-agnostic (csrc/wae.cpp); the element kernels come from a backend
// (csrc/wae.cpp for CPU, csrc/cuda/wae.cu for CUDA). Each op computes the gradients of its scalar
// output in the forward, for the inputs in its grad_mask; backward only scales them.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

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

using WaeLossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

// (total, terms, grad_img_rec, grad_dec_hidden, grad_vocab_weight, grad_vocab_bias,
//  grad_d_logits_img, grad_d_logits_txt); grad_mask selects (img_feat or img_rec, dec_hidden,
// vocab_weight, vocab_bias, d_logits_img, d_logits_txt). d total / d img_feat = -grad_img_rec.
// Absent discriminator logits (WAE-MMD training) make their adversarial term 0.
WaeLossOutputs wae_loss_op(const at::Tensor& img_feat, const at::Tensor& img_rec,
                           const at::Tensor& dec_hidden, const at::Tensor& vocab_weight,
                           const at::Tensor& targets,
                           const std::optional<at::Tensor>& d_logits_img,
                           const std::optional<at::Tensor>& d_logits_txt,
                           const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                           std::array<double, 4> weights, std::string_view recon,
                           int64_t ignore_index, std::array<bool, 6> grad_mask,
                           const WaeBackend& backend);

// (loss, grad_real, grad_fake): mean softplus(-real) + mean softplus(fake).
std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_op(
    const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake, std::array<bool, 2> grad_mask,
    const WaeBackend& backend);

// (mmd, grad_z, grad_prior_samples): the unbiased MMD^2 with the IMQ kernel summed over scales.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_op(const at::Tensor& z,
                                                          const at::Tensor& prior_samples,
                                                          at::ArrayRef<double> scales,
                                                          std::array<bool, 2> grad_mask,
                                                          const WaeBackend& backend);

}  // namespace jwae
