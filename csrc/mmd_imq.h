// WAE-MMD prior matching (unbiased MMD^2, IMQ kernel): the operator, written once for every device
// (csrc/mmd_imq.cpp); each device registers it with its element kernels (wae_backend.h) through
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

// (mmd, grad_z, grad_prior_samples): the unbiased MMD^2 with the IMQ kernel summed over scales.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_op(const WaeBackend& backend,
                                                          const at::Tensor& z,
                                                          const at::Tensor& prior_samples,
                                                          at::ArrayRef<double> scales,
                                                          std::array<bool, 2> grad_mask);

}  // namespace jwae
