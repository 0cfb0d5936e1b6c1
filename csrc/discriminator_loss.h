// The WAE-GAN discriminator's loss: the operator, written once for every device
// (csrc/discriminator_loss.cpp); each device registers it with its element kernels (wae_backend.h)
// through OnDevice (registration.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "registration.h"
#include "wae_backend.h"

namespace jwae {

// (loss, grad_real, grad_fake): mean softplus(-real) + mean softplus(fake).
std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_op(
    const WaeBackend& backend, const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake,
    std::array<bool, 2> grad_mask);

}  // namespace jwae
