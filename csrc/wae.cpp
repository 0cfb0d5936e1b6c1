// The jWAE regularizer: device-agnostic drivers (argument checks, the order of the terms, the
// MMD's GEMMs) and the CPU element kernels.
#include "wae.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "ordered_sum.h"
#include "wae_terms.h"

namespace jwae {
namespace {

// The dtype of returned loss values: float64 when any input is float64, float32 otherwise.
at::ScalarType result_dtype(const std::vector<at::Tensor>& inputs) {
  const bool any_double = std::any_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) {
    return t.scalar_type() == at::kDouble;
  });
  return any_double ? at::kDouble : at::kFloat;
}

void check_floats_on(const at::Tensor& t, const char* name, const at::Tensor& anchor,
                     const char* anchor_name) {
  check_nonempty(t, name);
  check_float_dtype(t, name);
  check_same_device(anchor, anchor_name, t, name);
}

// A contiguous buffer for d total / d t when wanted, else undefined.
at::Tensor grad_buffer(bool wanted, const at::Tensor& t) {
  return wanted ? at::empty(t.sizes(), t.options()) : at::Tensor();
}

}  // namespace

WaeLossOutputs wae_loss_op(const at::Tensor& img_feat, const at::Tensor& img_rec,
                           const at::Tensor& dec_hidden, const at::Tensor& vocab_weight,
                           const at::Tensor& targets,
                           const std::optional<at::Tensor>& d_logits_img,
                           const std::optional<at::Tensor>& d_logits_txt,
                           const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                           std::array<double, 4> weights, std::string_view recon,
                           int64_t ignore_index, std::array<bool, 6> grad_mask,
                           const WaeBackend& backend) {
  TORCH_CHECK_VALUE(recon == "l1" || recon == "l2",
                    "jwae_ext: argument 'recon' must be 'l1' or 'l2', got '", std::string(recon),
                    "'");
  TORCH_CHECK_VALUE(batch_size > 0, "jwae_ext: argument 'batch_size' must be positive, got ",
                    batch_size);
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(weights[i]), "jwae_ext: argument 'weights' must hold ",
                      "finite numbers, got ", weights[i], " at position ", i);
  }
  check_floats_on(img_feat, "img_feat", dec_hidden, "dec_hidden");
  check_floats_on(img_rec, "img_rec", dec_hidden, "dec_hidden");
  check_same_dtype(img_feat, "img_feat", img_rec, "img_rec");
  TORCH_CHECK_VALUE(img_rec.sizes() == img_feat.sizes(), "jwae_ext: argument 'img_rec' must ",
                    "have the shape of 'img_feat' ", img_feat.sizes(), ", got ", img_rec.sizes());
  TORCH_CHECK_VALUE(dec_hidden.dim() >= 2, "jwae_ext: argument 'dec_hidden' must be a ",
                    "(..., hidden size) tensor with at least 2 dimensions, got shape ",
                    dec_hidden.sizes());
  const auto token_shape = dec_hidden.sizes().slice(0, dec_hidden.dim() - 1);
  TORCH_CHECK_VALUE(targets.sizes() == token_shape, "jwae_ext: argument 'targets' must have ",
                    "shape ", token_shape, " (dec_hidden's without the hidden size), got ",
                    targets.sizes());
  const std::array<const std::optional<at::Tensor>*, 2> logits{&d_logits_img, &d_logits_txt};
  const std::array<const char*, 2> logit_names{"d_logits_img", "d_logits_txt"};
  for (size_t k = 0; k < 2; ++k) {
    if (logits[k]->has_value()) {
      check_floats_on(**logits[k], logit_names[k], dec_hidden, "dec_hidden");
    } else {
      TORCH_CHECK_VALUE(!grad_mask[4 + k], "jwae_ext: grad_mask asks for the gradient of '",
                        logit_names[k], "', which was not given");
    }
  }

  const double B = static_cast<double>(batch_size);
  const auto feat = img_feat.contiguous(), rec = img_rec.contiguous();
  const auto grad_rec = grad_buffer(grad_mask[0], rec);
  const auto recon_sum = backend.reconstruction(feat, rec, recon == "l2", weights[0] / B, grad_rec);

  const int64_t H = dec_hidden.size(-1);
  const auto xent = linear_cross_entropy_forward(
      dec_hidden.reshape({-1, H}), vocab_weight, targets.reshape({-1}), vocab_bias, ignore_index,
      Reduction::Sum, {grad_mask[1], grad_mask[2], grad_mask[3]}, weights[1] / B, *backend.xent,
      XentNames{"dec_hidden", "vocab_weight", "targets", "vocab_bias"});

  std::vector<at::Tensor> dtype_sources{img_feat, dec_hidden};
  std::array<at::Tensor, 2> adv, adv_grad;  // mean softplus(-logit); 0 without logits
  for (size_t k = 0; k < 2; ++k) {
    if (!logits[k]->has_value()) continue;
    const auto l = (*logits[k])->contiguous();
    adv_grad[k] = grad_buffer(grad_mask[4 + k], l);
    adv[k] = backend.softplus_mean(l, -1.0, weights[2 + k], adv_grad[k]);
    dtype_sources.push_back(l);
  }

  const auto dtype = result_dtype(dtype_sources);
  const auto as_term = [&](const at::Tensor& t) {
    return t.defined() ? t.to(dtype) : at::zeros({}, dec_hidden.options().dtype(dtype));
  };
  const auto terms = at::stack({recon_sum.to(dtype) / B, xent.loss.to(dtype) / B,
                                as_term(adv[0]), as_term(adv[1])});
  const auto total = terms[0] * weights[0] + terms[1] * weights[1] + terms[2] * weights[2] +
                     terms[3] * weights[3];
  const auto hidden_grad = xent.grads.hidden.defined()
                               ? xent.grads.hidden.view(dec_hidden.sizes())
                               : at::Tensor();
  return {total,
          terms,
          or_empty(grad_rec, img_rec.options()),
          or_empty(hidden_grad, dec_hidden.options()),
          or_empty(xent.grads.weight, vocab_weight.options()),
          or_empty(xent.grads.bias, vocab_weight.options()),
          or_empty(adv_grad[0], dec_hidden.options()),
          or_empty(adv_grad[1], dec_hidden.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_op(
    const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake, std::array<bool, 2> grad_mask,
    const WaeBackend& backend) {
  check_floats_on(d_logits_real, "d_logits_real", d_logits_real, "d_logits_real");
  check_floats_on(d_logits_fake, "d_logits_fake", d_logits_real, "d_logits_real");
  const auto real = d_logits_real.contiguous(), fake = d_logits_fake.contiguous();
  const auto grad_real = grad_buffer(grad_mask[0], real);
  const auto grad_fake = grad_buffer(grad_mask[1], fake);
  const auto dtype = result_dtype({d_logits_real, d_logits_fake});
  // Prior samples are labelled 1 (softplus(-logit)), codes 0 (softplus(logit)).
  const auto loss = backend.softplus_mean(real, -1.0, 1.0, grad_real).to(dtype) +
                    backend.softplus_mean(fake, 1.0, 1.0, grad_fake).to(dtype);
  return {loss, or_empty(grad_real, d_logits_real.options()),
          or_empty(grad_fake, d_logits_fake.options())};
}

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_op(const at::Tensor& z,
                                                          const at::Tensor& prior_samples,
                                                          at::ArrayRef<double> scales,
                                                          std::array<bool, 2> grad_mask,
                                                          const WaeBackend& backend) {
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

// ---------------------------------------------------------------------------------------------
// CPU backend: element kernels summed with ordered_sum (double accumulation, thread-independent)

namespace {

at::Tensor reconstruction_cpu(const at::Tensor& feat, const at::Tensor& rec, bool squared,
                              double grad_scale, const at::Tensor& grad) {
  return AT_DISPATCH_FLOATING_TYPES(rec.scalar_type(), "reconstruction_cpu", [&] {
    const ReconstructionTerm<scalar_t, double> term{
        feat.const_data_ptr<scalar_t>(), rec.const_data_ptr<scalar_t>(),
        grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr, grad_scale, squared};
    return at::scalar_tensor(ordered_sum(rec.numel(), term), rec.options());
  });
}

at::Tensor softplus_mean_cpu(const at::Tensor& logits, double sign, double grad_scale,
                             const at::Tensor& grad) {
  return AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softplus_mean_cpu", [&] {
    const double n = static_cast<double>(logits.numel());
    const SoftplusTerm<scalar_t, double> term{
        logits.const_data_ptr<scalar_t>(),
        grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr, grad_scale / n, sign};
    return at::scalar_tensor(ordered_sum(logits.numel(), term) / n, logits.options());
  });
}

void imq_pairs_cpu(const at::Tensor& gram, const at::Tensor& sq_norms_a,
                   const at::Tensor& sq_norms_b, const at::Tensor& scales, bool same,
                   const at::Tensor& row_k, const at::Tensor& row_dk) {
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "imq_pairs_cpu", [&] {
    const int64_t n = gram.size(0), m = gram.size(1), num_scales = scales.numel();
    scalar_t* g = gram.mutable_data_ptr<scalar_t>();
    const scalar_t* na = sq_norms_a.const_data_ptr<scalar_t>();
    const scalar_t* nb = sq_norms_b.const_data_ptr<scalar_t>();
    const scalar_t* c = scales.const_data_ptr<scalar_t>();
    scalar_t* rk = row_k.mutable_data_ptr<scalar_t>();
    scalar_t* rdk = row_dk.defined() ? row_dk.mutable_data_ptr<scalar_t>() : nullptr;
    // One thread per row, each row in column order: thread-independent.
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / m), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = g + i * m;
        double sum_k = 0, sum_dk = 0;
        for (int64_t j = 0; j < m; ++j) {
          if (same && j == i) {
            if (rdk) row[j] = 0;
            continue;
          }
          const auto v = imq(squared_distance(na[i], nb[j], row[j]), c, num_scales);
          sum_k += v.k;
          if (rdk) {
            row[j] = v.dk;
            sum_dk += v.dk;
          }
        }
        rk[i] = static_cast<scalar_t>(sum_k);
        if (rdk) rdk[i] = static_cast<scalar_t>(sum_dk);
      }
    });
  });
}

WaeLossOutputs wae_loss_cpu(const at::Tensor& img_feat, const at::Tensor& img_rec,
                            const at::Tensor& dec_hidden, const at::Tensor& vocab_weight,
                            const at::Tensor& targets,
                            const std::optional<at::Tensor>& d_logits_img,
                            const std::optional<at::Tensor>& d_logits_txt,
                            const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                            std::array<double, 4> weights, std::string_view recon,
                            int64_t ignore_index, std::array<bool, 6> grad_mask) {
  return wae_loss_op(img_feat, img_rec, dec_hidden, vocab_weight, targets, d_logits_img,
                     d_logits_txt, vocab_bias, batch_size, weights, recon, ignore_index,
                     grad_mask, wae_cpu_backend());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cpu(
    const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake,
    std::array<bool, 2> grad_mask) {
  return discriminator_loss_op(d_logits_real, d_logits_fake, grad_mask, wae_cpu_backend());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_imq_cpu(const at::Tensor& z,
                                                           const at::Tensor& prior_samples,
                                                           at::ArrayRef<double> scales,
                                                           std::array<bool, 2> grad_mask) {
  return mmd_imq_op(z, prior_samples, scales, grad_mask, wae_cpu_backend());
}

}  // namespace

const WaeBackend& wae_cpu_backend() {
  static const WaeBackend backend{&xent_cpu_backend(), reconstruction_cpu, softplus_mean_cpu,
                                  imq_pairs_cpu};
  return backend;
}

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  m.impl("wae_loss", &wae_loss_cpu);
  m.impl("discriminator_loss", &discriminator_loss_cpu);
  m.impl("mmd_imq", &mmd_imq_cpu);
}

}  // namespace jwae
