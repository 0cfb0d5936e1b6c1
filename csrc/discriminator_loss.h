// The WAE-GAN discriminator's loss: the device-agnostic operator (csrc/discriminator_loss.cpp),
// called by each device's registration
// with its element kernels (wae_backend.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "wae_backend.h"

namespace jwae {

// (loss, grad_real, grad_fake): mean softplus(-real) + mean softplus(fake).
std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_op(
    const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake, std::array<bool, 2> grad_mask,
    const WaeBackend& backend);

}  // namespace jwae
