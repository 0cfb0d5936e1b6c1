// WAE-MMD prior matching (unbiased MMD^2, IMQ kernel): the device-agnostic operator
// (csrc/mmd_imq.cpp), called by each device's registration
// with its element kernels (wae_backend.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "wae_backend.h"

namespace jwae {

// (mmd, grad_z, grad_prior_samples): the unbiased MMD^2 with the IMQ kernel summed over scales.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_op(const at::Tensor& z,
                                                          const at::Tensor& prior_samples,
                                                          at::ArrayRef<double> scales,
                                                          std::array<bool, 2> grad_mask,
                                                          const WaeBackend& backend);

}  // namespace jwae
