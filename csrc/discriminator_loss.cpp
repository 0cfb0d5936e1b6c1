// The WAE-GAN discriminator's loss, for every device: mean softplus(-real) + mean softplus(fake).
#include "discriminator_loss.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

namespace jwae {

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_op(
    const WaeBackend& backend, const at::Tensor& d_logits_real, const at::Tensor& d_logits_fake,
    std::array<bool, 2> grad_mask) {
  const c10::OptionalDeviceGuard guard(at::device_of(d_logits_real));
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

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) {
  m.impl("discriminator_loss", &OnDevice<discriminator_loss_op, wae_cpu_backend>::call);
}

}  // namespace jwae
