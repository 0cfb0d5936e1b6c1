// WAE-MMD prior matching, on CUDA: the operator of csrc/mmd_imq.cpp with the CUDA element kernels
// (wae_backend.cu).
#include <torch/library.h>

#include "../mmd_imq.h"

namespace jwae {

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("mmd_imq", &OnDevice<mmd_imq_op, wae_cuda_backend>::call);
}

}  // namespace jwae
