// The jWAE regularizer in one operator: the operator, written once for every device
// (csrc/wae_loss.cpp); each device registers it with its element kernels (wae_backend.h) through
// OnDevice (registration.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "registration.h"
#include "wae_backend.h"

namespace jwae {

using WaeLossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

// (total, terms, grad_img_rec, grad_dec_hidden, grad_vocab_weight, grad_vocab_bias,
//  grad_d_logits_img, grad_d_logits_txt); grad_mask selects (img_feat or img_rec, dec_hidden,
// vocab_weight, vocab_bias, d_logits_img, d_logits_txt). d total / d img_feat = -grad_img_rec.
// Absent discriminator logits (WAE-MMD training) make their adversarial term 0.
WaeLossOutputs wae_loss_op(const WaeBackend& backend, const at::Tensor& img_feat,
                           const at::Tensor& img_rec, const at::Tensor& dec_hidden,
                           const at::Tensor& vocab_weight, const at::Tensor& targets,
                           const std::optional<at::Tensor>& d_logits_img,
                           const std::optional<at::Tensor>& d_logits_txt,
                           const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                           std::array<double, 4> weights, std::string_view recon,
                           int64_t ignore_index, std::array<bool, 6> grad_mask);

}  // namespace jwae
