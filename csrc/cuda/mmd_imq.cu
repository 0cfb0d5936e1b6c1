// WAE-MMD prior matching, on CUDA: the device guard, then the operator of csrc/mmd_imq.cpp with
// the CUDA element kernels (wae_backend.cu).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../mmd_imq.h"

namespace jwae {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_cuda(const at::Tensor& z,
                                                            const at::Tensor& prior_samples,
                                                            at::ArrayRef<double> scales,
                                                            std::array<bool, 2> grad_mask) {
  const c10::cuda::OptionalCUDAGuard guard(z.device());
  return mmd_imq_op(z, prior_samples, scales, grad_mask, wae_cuda_backend());
}

}  // namespace

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) { m.impl("mmd_imq", &mmd_imq_cuda); }

}  // namespace jwae
