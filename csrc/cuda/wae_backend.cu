// The CUDA element kernels of the jWAE regularizer's operators (wae_backend.h; the operators are
// shared, csrc/wae_loss.cpp, csrc/discriminator_loss.cpp, csrc/mmd_imq.cpp). Sums are per-block
// partials over a grid fixed by the size, then their sum: reproducible run to run.
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

#include "../wae_backend.h"
#include "../wae_terms.h"
#include "block_reduce.cuh"

namespace jwae {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

template <typename acc_t, typename Term>
__global__ void partial_sums_kernel(Term term, int64_t n, acc_t* __restrict__ partial) {
  acc_t s = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    s += term(i);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// sum_{i < n} term(i) as a 0-d acc_t tensor; `term` may also write per-element gradients.
template <typename acc_t, typename Term>
at::Tensor sum_terms_cuda(const Term& term, int64_t n, const at::TensorOptions& options) {
  const int64_t blocks = std::min(kMaxBlocks, (n + kThreads - 1) / kThreads);
  const auto dtype = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor partial = at::empty({blocks}, options.dtype(dtype));
  partial_sums_kernel<acc_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      term, n, partial.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum();
}

at::Tensor reconstruction_cuda(const at::Tensor& feat, const at::Tensor& rec, bool squared,
                               double grad_scale, const at::Tensor& grad) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, rec.scalar_type(), "reconstruction_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const ReconstructionTerm<scalar_t, acc_t> term{
            feat.const_data_ptr<scalar_t>(), rec.const_data_ptr<scalar_t>(),
            grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
            static_cast<acc_t>(grad_scale), squared};
        return sum_terms_cuda<acc_t>(term, rec.numel(), rec.options());
      });
}

at::Tensor softplus_mean_cuda(const at::Tensor& logits, double sign, double grad_scale,
                              const at::Tensor& grad) {
  const double n = static_cast<double>(logits.numel());
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "softplus_mean_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const SoftplusTerm<scalar_t, acc_t> term{
            logits.const_data_ptr<scalar_t>(),
            grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
            static_cast<acc_t>(grad_scale / n), static_cast<acc_t>(sign)};
        return sum_terms_cuda<acc_t>(term, logits.numel(), logits.options()) / n;
      });
}

// One block per row i of the Gram matrix.
template <typename T>
__global__ void imq_pairs_kernel(T* __restrict__ gram, const T* __restrict__ norms_a,
                                 const T* __restrict__ norms_b, const T* __restrict__ scales,
                                 int64_t num_scales, int64_t m, bool same, T* __restrict__ row_k,
                                 T* __restrict__ row_dk) {
  const int64_t i = blockIdx.x;
  T* row = gram + i * m;
  T sum_k = 0, sum_dk = 0;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    if (same && j == i) {
      if (row_dk != nullptr) row[j] = T(0);
      continue;
    }
    const auto v = imq(squared_distance(norms_a[i], norms_b[j], row[j]), scales, num_scales);
    sum_k += v.k;
    if (row_dk != nullptr) {
      row[j] = v.dk;
      sum_dk += v.dk;
    }
  }
  sum_k = block_sum(sum_k);
  if (row_dk != nullptr) sum_dk = block_sum(sum_dk);  // the same branch for the whole block
  if (threadIdx.x == 0) {
    row_k[i] = sum_k;
    if (row_dk != nullptr) row_dk[i] = sum_dk;
  }
}

void imq_pairs_cuda(const at::Tensor& gram, const at::Tensor& sq_norms_a,
                    const at::Tensor& sq_norms_b, const at::Tensor& scales, bool same,
                    const at::Tensor& row_k, const at::Tensor& row_dk) {
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "imq_pairs_cuda", [&] {
    imq_pairs_kernel<scalar_t><<<gram.size(0), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gram.mutable_data_ptr<scalar_t>(), sq_norms_a.const_data_ptr<scalar_t>(),
        sq_norms_b.const_data_ptr<scalar_t>(), scales.const_data_ptr<scalar_t>(),
        scales.numel(), gram.size(1), same, row_k.mutable_data_ptr<scalar_t>(),
        row_dk.defined() ? row_dk.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

const WaeBackend& wae_cuda_backend() {
  static const WaeBackend backend{&xent_cuda_backend(), reconstruction_cuda, softplus_mean_cuda,
                                  imq_pairs_cuda};
  return backend;
}

}  // namespace jwae
