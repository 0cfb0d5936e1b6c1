// Fused linear cross-entropy: the CUDA backend (the chunk loop is shared,
// csrc/linear_cross_entropy.cpp).
//
// GEMMs go to cuBLAS: through ATen for float32/float64, through cublasGemmEx with fp32 compute
// for float16/bfloat16 (so the logits and the weight gradient accumulate in fp32 buffers; ATen's
// fp32-output GEMM cannot accumulate into its output). cublasGemmEx resolves against the cuBLAS
// that libtorch_cuda loads (neither setup.py nor CMakeLists.txt links cuBLAS). The row pass is one
// block per row.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <cublas_v2.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../linear_cross_entropy.h"
#include "block_reduce.cuh"

namespace jwae {
namespace {

constexpr int kRowThreads = 256;

cudaDataType_t blas_dtype(at::ScalarType t) {
  TORCH_CHECK_TYPE(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat,
                   "jwae_ext: no fp32-accumulating GEMM for dtype ", t);
  return t == at::kHalf ? CUDA_R_16F : t == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

// How column-major cuBLAS reads an r x c operand as stored: a row-major view (stride(1) == 1) is
// its transpose with leading dimension stride(0); a transposed view (stride(0) == 1) is the matrix
// itself with leading dimension stride(1).
struct BlasOperand {
  const void* data;
  cublasOperation_t op;  // turns the stored matrix into the transpose of the row-major operand
  int64_t ld;
};

BlasOperand blas_operand(const at::Tensor& m) {
  if (m.stride(1) == 1 && m.stride(0) >= std::max<int64_t>(1, m.size(1))) {
    return {m.const_data_ptr(), CUBLAS_OP_N, m.stride(0)};
  }
  TORCH_INTERNAL_ASSERT(m.stride(0) == 1 && m.stride(1) >= std::max<int64_t>(1, m.size(0)),
                        "jwae_ext: GEMM operand is neither row- nor column-major: strides ",
                        m.strides());
  return {m.const_data_ptr(), CUBLAS_OP_T, m.stride(1)};
}

// out (M x N, row-major) = a (M x K) @ b (K x N) (+ out), fp32 compute. Row-major out^T = b^T a^T
// is what column-major cuBLAS computes from the operands as stored.
void gemm_fp32_accumulate(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                          bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const BlasOperand A = blas_operand(a), B = blas_operand(b);
  TORCH_INTERNAL_ASSERT(out.stride(1) == 1 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  TORCH_CUDABLAS_CHECK(cublasGemmEx(
      at::cuda::getCurrentCUDABlasHandle(), B.op, A.op, static_cast<int>(N), static_cast<int>(M),
      static_cast<int>(K), &alpha, B.data, blas_dtype(b.scalar_type()), static_cast<int>(B.ld),
      A.data, blas_dtype(a.scalar_type()), static_cast<int>(A.ld), &beta, out.data_ptr(),
      blas_dtype(out.scalar_type()), static_cast<int>(std::max<int64_t>(1, out.stride(0))),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const auto t = a.scalar_type();
  if (t == at::kHalf || t == at::kBFloat16) {
    gemm_fp32_accumulate(a, b, out, accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::Tensor target = out;
    at::mm_out(target, a, b);
  }
}

void add_column_sums_cuda(const at::Tensor& m, const at::Tensor& acc) { acc.add_(m.sum(0)); }

at::Tensor sum_cuda(const at::Tensor& v) { return v.sum(); }

// One block per row: the max and the sum of exp (block reductions), the log-sum-exp and the
// loss, then, when scale is given, scale * (softmax - onehot) written over the logits.
template <typename T>
__global__ void xent_rows_kernel(T* __restrict__ logits, const int64_t* __restrict__ target,
                                 T* __restrict__ lse, T* __restrict__ loss,
                                 const T* __restrict__ scale, int64_t V) {
  const int64_t r = blockIdx.x;
  T* x = logits + r * V;
  const int64_t t = target[r];
  T row_lse;
  if (loss != nullptr) {
    const T target_logit = x[t];  // read before any thread overwrites the row
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = max(m, x[j]);
    m = block_max(m);
    T s = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += exp(x[j] - m);
    s = block_sum(s);  // ends with a barrier: the row may be overwritten from here on
    row_lse = m + log(s);
    if (threadIdx.x == 0) {
      lse[r] = row_lse;
      loss[r] = row_lse - target_logit;
    }
  } else {
    row_lse = lse[r];
  }
  if (scale == nullptr) return;
  const T s = scale[r];
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    x[j] = exp(x[j] - row_lse) * s - (j == t ? s : T(0));
  }
}

void xent_rows_cuda(const XentRows& a) {
  const int64_t rows = a.logits.size(0), V = a.logits.size(1);
  if (rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "xent_rows_cuda", [&] {
    xent_rows_kernel<scalar_t><<<rows, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.logits.mutable_data_ptr<scalar_t>(), a.target.const_data_ptr<int64_t>(),
        a.lse.mutable_data_ptr<scalar_t>(),
        a.loss.defined() ? a.loss.mutable_data_ptr<scalar_t>() : nullptr,
        a.grad_scale.defined() ? a.grad_scale.const_data_ptr<scalar_t>() : nullptr, V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

const XentBackend& xent_cuda_backend() {
  static const XentBackend backend{{gemm_cuda, add_column_sums_cuda, sum_cuda}, xent_rows_cuda};
  return backend;
}

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) { register_linear_cross_entropy<xent_cuda_backend>(m); }

}  // namespace jwae
