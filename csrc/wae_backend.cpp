// The CPU element kernels of the jWAE regularizer's operators (wae_backend.h): sums over
// elements with ordered_sum (double accumulation, independent of the thread count).
#include "wae_backend.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "ordered_sum.h"
#include "softplus_cpu.h"
#include "wae_terms.h"

namespace jwae {
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
    const int64_t n = logits.numel();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* g = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    const auto s = static_cast<scalar_t>(sign);
    const auto scale = static_cast<scalar_t>(grad_scale / static_cast<double>(n));
    const double sum = ordered_block_sum(
        n, [&](int64_t begin, int64_t end) { return softplus_block(x, g, begin, end, s, scale); });
    return at::scalar_tensor(sum / static_cast<double>(n), logits.options());
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

}  // namespace

const WaeBackend& wae_cpu_backend() {
  static const WaeBackend backend{&xent_cpu_backend(), reconstruction_cpu, softplus_mean_cpu,
                                  imq_pairs_cpu};
  return backend;
}

}  // namespace jwae
