// The WAE-GAN discriminator's loss, on CUDA: the operator of csrc/discriminator_loss.cpp with the
// CUDA element kernels (wae_backend.cu).
#include <torch/library.h>

#include "../discriminator_loss.h"

namespace jwae {

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("discriminator_loss", &OnDevice<discriminator_loss_op, wae_cuda_backend>::call);
}

}  // namespace jwae
