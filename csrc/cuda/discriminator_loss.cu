// The WAE-GAN discriminator's loss, on CUDA: the device guard, then the operator of
// csrc/discriminator_loss.cpp with
// the CUDA element kernels (wae_backend.cu).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../discriminator_loss.h"

namespace jwae {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cuda(
    const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake,
    std::array<bool, 2> grad_mask) {
  const c10::cuda::OptionalCUDAGuard guard(d_logits_real.device());
  return discriminator_loss_op(d_logits_real, d_logits_fake, grad_mask, wae_cuda_backend());
}

}  // namespace

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) { m.impl("discriminator_loss", &discriminator_loss_cuda); }

}  // namespace jwae
