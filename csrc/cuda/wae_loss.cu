// The jWAE regularizer in one operator, on CUDA: the device guard, then the operator of
// csrc/wae_loss.cpp with
// the CUDA element kernels (wae_backend.cu).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../wae_loss.h"

namespace jwae {
namespace {

WaeLossOutputs wae_loss_cuda(const at::Tensor& img_feat, const at::Tensor& img_rec,
                             const at::Tensor& dec_hidden, const at::Tensor& vocab_weight,
                             const at::Tensor& targets,
                             const std::optional<at::Tensor>& d_logits_img,
                             const std::optional<at::Tensor>& d_logits_txt,
                             const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                             std::array<double, 4> weights, std::string_view recon,
                             int64_t ignore_index, std::array<bool, 6> grad_mask) {
  const c10::cuda::OptionalCUDAGuard guard(dec_hidden.device());
  return wae_loss_op(img_feat, img_rec, dec_hidden, vocab_weight, targets, d_logits_img,
                     d_logits_txt, vocab_bias, batch_size, weights, recon, ignore_index,
                     grad_mask, wae_cuda_backend());
}

}  // namespace

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) { m.impl("wae_loss", &wae_loss_cuda); }

}  // namespace jwae
