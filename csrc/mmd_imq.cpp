// WAE-MMD prior matching for every device: the unbiased MMD^2 with the IMQ kernel from Gram
// matrices (the dense GEMMs) and the device's pair kernel, without an n x m x d temporary.
#include "mmd_imq.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <utility>

namespace jwae {

namespace {


// sum over pairs (i, j) of rows of A and B (i != j when `same`, then B is A) of k(|a_i - b_j|^2),
// from their Gram matrix and squared norms; adds coef times its gradient into gA / gB (when
// defined). d/da_i sum_j k(|a_i - b_j|^2) = 2 sum_j k'_ij (a_i - b_j): two GEMMs, no n x m x d.
at::Tensor imq_pair_sum(const at::Tensor& A, const at::Tensor& B, const at::Tensor& gram,
                        const at::Tensor& norms_a, const at::Tensor& norms_b, bool same,
                        const at::Tensor& scales, double coef, const at::Tensor& gA,
                        const at::Tensor& gB, const WaeBackend& backend) {
  const auto options = gram.options();
  const auto row_k = at::empty({A.size(0)}, options);
  const auto row_dk = gA.defined() || gB.defined() ? at::empty({A.size(0)}, options) : at::Tensor();
  backend.imq_pairs(gram, norms_a, norms_b, scales, same, row_k, row_dk);  // gram := k'
  // With B = A each pair appears twice, (i, j) and (j, i): the gradient doubles.
  const double factor = 2.0 * coef * (same ? 2.0 : 1.0);
  if (gA.defined()) {
    gA.addcmul_(row_dk.unsqueeze(1), A, factor);
    gA.addmm_(gram, B, 1.0, -factor);
  }
  if (gB.defined()) {
    const auto col_dk = at::zeros({B.size(0)}, options);
    backend.xent->dense.add_column_sums(gram, col_dk);
    gB.addcmul_(col_dk.unsqueeze(1), B, factor);
    gB.addmm_(gram.t(), A, 1.0, -factor);
  }
  return backend.xent->dense.sum(row_k);
}

// The Gram matrix a @ a^T and its diagonal (the squared norms, consistent with the GEMM).
std::pair<at::Tensor, at::Tensor> gram_and_norms(const at::Tensor& a, const DenseOps& dense) {
  auto gram = at::empty({a.size(0), a.size(0)}, a.options());
  dense.gemm(a, a.t(), gram, false);
  auto norms = gram.diagonal().clone();
  return {gram, norms};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_op(const WaeBackend& backend,
                                                          const at::Tensor& z,
                                                          const at::Tensor& prior_samples,
                                                          at::ArrayRef<double> scales,
                                                          std::array<bool, 2> grad_mask) {
  const c10::OptionalDeviceGuard guard(at::device_of(z));
  check_dim(z, 2, "z", "codes x latent size");
  check_dim(prior_samples, 2, "prior_samples", "samples x latent size");
  check_float_dtype(z, "z");
  check_same_dtype(z, "z", prior_samples, "prior_samples");
  check_same_device(z, "z", prior_samples, "prior_samples");
  TORCH_CHECK_VALUE(prior_samples.size(1) == z.size(1), "jwae_ext: argument 'prior_samples' ",
                    "must have ", z.size(1), " columns (the latent size of 'z'), got shape ",
                    prior_samples.sizes());
  check_nonempty(z, "z");
  for (const auto& [t, name] : {std::pair{&z, "z"}, std::pair{&prior_samples, "prior_samples"}}) {
    TORCH_CHECK_VALUE(t->size(0) >= 2, "jwae_ext: argument '", name, "' must have at least 2 ",
                      "rows (the unbiased MMD averages over distinct pairs), got ", t->size(0));
  }
  TORCH_CHECK_VALUE(!scales.empty(), "jwae_ext: argument 'scales' must hold at least one scale");
  for (size_t i = 0; i < scales.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(scales[i]) && scales[i] > 0, "jwae_ext: argument 'scales' ",
                      "must hold positive finite numbers, got ", scales[i], " at position ", i);
  }

  const auto acc = accumulation_dtype(z.scalar_type());
  const auto X = z.to(acc).contiguous(), Y = prior_samples.to(acc).contiguous();
  const auto scale_tensor = at::tensor(scales, at::kDouble).to(X.options());
  const double n = static_cast<double>(X.size(0)), m = static_cast<double>(Y.size(0));
  const auto gX = grad_mask[0] ? at::zeros_like(X) : at::Tensor();
  const auto gY = grad_mask[1] ? at::zeros_like(Y) : at::Tensor();
  const auto& dense = backend.xent->dense;

  const auto [gram_xx, norms_x] = gram_and_norms(X, dense);
  const auto sum_xx = imq_pair_sum(X, X, gram_xx, norms_x, norms_x, true, scale_tensor,
                                   1.0 / (n * (n - 1)), gX, at::Tensor(), backend);
  const auto [gram_yy, norms_y] = gram_and_norms(Y, dense);
  const auto sum_yy = imq_pair_sum(Y, Y, gram_yy, norms_y, norms_y, true, scale_tensor,
                                   1.0 / (m * (m - 1)), gY, at::Tensor(), backend);
  auto gram_xy = at::empty({X.size(0), Y.size(0)}, X.options());
  dense.gemm(X, Y.t(), gram_xy, false);
  const auto sum_xy = imq_pair_sum(X, Y, gram_xy, norms_x, norms_y, false, scale_tensor,
                                   -2.0 / (n * m), gX, gY, backend);

  const auto mmd = sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - sum_xy * (2.0 / (n * m));
  return {mmd, gX.defined() ? gX.to(z.scalar_type()) : at::empty({0}, z.options()),
          gY.defined() ? gY.to(prior_samples.scalar_type()) : at::empty({0}, z.options())};
}

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  m.impl("mmd_imq", &OnDevice<mmd_imq_op, wae_cpu_backend>::call);
}

}  // namespace jwae
