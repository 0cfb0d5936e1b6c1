// The jWAE regularizer in one operator, on CUDA: the operator of csrc/wae_loss.cpp with the CUDA
// element kernels (wae_backend.cu).
#include <torch/library.h>

#include "../wae_loss.h"

namespace jwae {

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("wae_loss", &OnDevice<wae_loss_op, wae_cuda_backend>::call);
}

}  // namespace jwae
