// The jWAE regularizer in one operator: argument checks and the order of the terms, for every
// device; the caption term runs through the fused linear cross-entropy.
#include "wae_loss.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace jwae {

WaeLossOutputs wae_loss_op(const WaeBackend& backend, const at::Tensor& img_feat,
                           const at::Tensor& img_rec, const at::Tensor& dec_hidden,
                           const at::Tensor& vocab_weight, const at::Tensor& targets,
                           const std::optional<at::Tensor>& d_logits_img,
                           const std::optional<at::Tensor>& d_logits_txt,
                           const std::optional<at::Tensor>& vocab_bias, int64_t batch_size,
                           std::array<double, 4> weights, std::string_view recon,
                           int64_t ignore_index, std::array<bool, 6> grad_mask) {
  const c10::OptionalDeviceGuard guard(at::device_of(dec_hidden));
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

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  m.impl("wae_loss", &OnDevice<wae_loss_op, wae_cpu_backend>::call);
}

}  // namespace jwae
