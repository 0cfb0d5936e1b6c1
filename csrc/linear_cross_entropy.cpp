// Fused linear cross-entropy: the device-agnostic chunk loop, and the CPU backend.
//
// Per chunk of token rows (the counted ones: ignored tokens are left out): one GEMM into a reused
// logits buffer (see kChunkBytes), a row pass (log-sum-exp in the accumulation dtype, the loss,
// and when gradients are wanted grad_scale * (softmax - onehot) in place), then the two GEMMs that
// accumulate the gradients of hidden and weight. With the gradients computed alongside the loss
// the whole forward+backward costs the three GEMMs of the unfused version and no T x V buffer.
#include "linear_cross_entropy.h"

#include <ATen/DeviceGuard.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "checks.h"
#include "ordered_sum.h"
#include "single_threaded_blas.h"
#include "tile_grid.h"

namespace jwae {

Reduction parse_reduction(std::string_view reduction) {
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "jwae_ext: argument 'reduction' must be one of 'sum', 'mean', 'none', ",
                    "got '", std::string(reduction), "'");
}

namespace {

// The logits of one chunk (rows x V, accumulation dtype) stay within this budget, unless that
// leaves fewer than kMinChunkRows rows: each chunk's GEMMs stream the whole V x H weight, and
// below a few hundred rows that traffic, not the arithmetic, sets their speed.
constexpr int64_t kChunkBytes = int64_t{32} << 20;
constexpr int64_t kMinChunkRows = 512;

struct XentInputs {
  at::Tensor hidden;  // T x H, contiguous
  at::Tensor weight;  // V x H, contiguous
  at::Tensor target;  // T, contiguous int64, every value in [0, V) or ignore_index
  std::optional<at::Tensor> bias;  // V, contiguous
  int64_t ignore_index;
};

XentInputs checked_inputs(const at::Tensor& hidden, const at::Tensor& weight,
                          const at::Tensor& target, const std::optional<at::Tensor>& bias,
                          int64_t ignore_index, const XentNames& names) {
  check_dim(hidden, 2, names.hidden, "tokens x hidden size");
  check_dim(weight, 2, names.weight, "vocabulary size x hidden size");
  check_nonempty(hidden, names.hidden);
  check_nonempty(weight, names.weight);
  check_float_dtype(hidden, names.hidden);
  check_same_device(hidden, names.hidden, weight, names.weight);
  check_same_device(hidden, names.hidden, target, names.target);
  check_same_dtype(hidden, names.hidden, weight, names.weight);
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1), "jwae_ext: argument '", names.weight,
                    "' must have ", hidden.size(1), " columns (the hidden size of '",
                    names.hidden, "'), got shape ", weight.sizes());
  check_index_vector(target, hidden.size(0), names.target, names.hidden);
  const int64_t V = weight.size(0);
  if (bias.has_value()) {
    check_same_device(hidden, names.hidden, *bias, names.bias);
    check_same_dtype(hidden, names.hidden, *bias, names.bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == V, "jwae_ext: argument '", names.bias,
                      "' must have shape (", V, ",) (one entry per row of '", names.weight,
                      "'), got shape ", bias->sizes());
  }
  check_ids_in_range(target, V, names.target, "token ids", ignore_index);
  return {hidden.contiguous(), weight.contiguous(), target.contiguous(),
          bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt,
          ignore_index};
}

void check_grad_mask(const XentInputs& in, std::array<bool, 3> grad_mask,
                     const XentNames& names) {
  TORCH_CHECK_VALUE(!grad_mask[2] || in.bias.has_value(), "jwae_ext: grad_mask asks for the ",
                    "gradient of '", names.bias, "', which was not given");
}

// Rows per chunk: equal chunks of at most max(kChunkBytes of logits, kMinChunkRows) rows.
int64_t chunk_rows(int64_t T, int64_t V, int64_t element_size) {
  const int64_t max_rows = std::max(kMinChunkRows, kChunkBytes / (V * element_size));
  const int64_t chunks = (T + max_rows - 1) / max_rows;
  return (T + chunks - 1) / chunks;
}

// The chunk loop. `loss` undefined: read `lse` instead of computing it (backward). `grad_scale`
// undefined: no gradients.
XentGrads run_chunks(const XentInputs& in, const at::Tensor& lse, const at::Tensor& loss,
                     const at::Tensor& grad_scale, std::array<bool, 3> grad_mask,
                     const XentBackend& backend) {
  const int64_t T = in.hidden.size(0), H = in.hidden.size(1), V = in.weight.size(0);
  const auto options = in.hidden.options();
  const auto acc = accumulation_dtype(in.hidden.scalar_type());
  const bool low_precision = acc != in.hidden.scalar_type();
  const bool any_grad = grad_scale.defined();

  const int64_t rows = chunk_rows(T, V, at::elementSize(acc));
  const auto logits_buffer = at::empty({rows, V}, options.dtype(acc));
  // fp16/bf16 GEMMs take their operands in that dtype: d loss / d logits is rounded into it.
  const auto grad_buffer =
      any_grad && low_precision ? at::empty({rows, V}, options) : at::Tensor();

  XentGrads grads;
  at::Tensor weight_acc, bias_acc;
  if (any_grad && grad_mask[0]) grads.hidden = at::empty({T, H}, options);
  if (any_grad && grad_mask[1]) weight_acc = at::empty({V, H}, options.dtype(acc));
  if (any_grad && grad_mask[2]) bias_acc = at::zeros({V}, options.dtype(acc));

  const auto weight_t = in.weight.t();
  for (int64_t start = 0; start < T; start += rows) {
    const int64_t n = std::min(rows, T - start);
    const auto hidden = in.hidden.narrow(0, start, n);
    const auto logits = logits_buffer.narrow(0, 0, n);
    if (in.bias.has_value()) {
      logits.copy_(in.bias->expand({n, V}));
    }
    backend.dense.gemm(hidden, weight_t, logits, in.bias.has_value());
    backend.rows({logits, in.target.narrow(0, start, n), lse.narrow(0, start, n),
                  loss.defined() ? loss.narrow(0, start, n) : at::Tensor(),
                  any_grad ? grad_scale.narrow(0, start, n) : at::Tensor()});
    if (!any_grad) continue;
    const auto grad_logits =
        low_precision ? grad_buffer.narrow(0, 0, n).copy_(logits) : logits;
    if (grad_mask[0]) {
      backend.dense.gemm(grad_logits, in.weight, grads.hidden.narrow(0, start, n), false);
    }
    if (grad_mask[1]) {
      backend.dense.gemm(grad_logits.t(), hidden, weight_acc, /*accumulate=*/start > 0);
    }
    if (grad_mask[2]) {
      backend.dense.add_column_sums(logits, bias_acc);
    }
  }
  if (weight_acc.defined()) grads.weight = weight_acc.to(in.weight.scalar_type());
  if (bias_acc.defined()) grads.bias = bias_acc.to(in.bias->scalar_type());
  return grads;
}

// The chunk loop over the counted tokens only: an ignored token (padding) needs no logits, its
// loss, log-sum-exp and gradients are 0. Its rows are left out of the GEMMs (as in Cut Cross-
// Entropy), and the per-token results scattered back.
// The tokens not equal to ignore_index (one device sync on CUDA).
int64_t counted_tokens(const XentInputs& in) {
  return in.target.ne(in.ignore_index).sum().item<int64_t>();
}

// `n`: counted_tokens(in).
XentGrads run_counted_chunks(const XentInputs& in, int64_t n, const at::Tensor& lse,
                             const at::Tensor& loss, const at::Tensor& grad_scale,
                             std::array<bool, 3> grad_mask, const XentBackend& backend) {
  if (n == in.target.size(0)) return run_chunks(in, lse, loss, grad_scale, grad_mask, backend);

  const auto rows = in.target.ne(in.ignore_index).nonzero().squeeze(1);
  const auto pick = [&](const at::Tensor& t) {
    return t.defined() ? t.index_select(0, rows) : at::Tensor();
  };
  const bool forward = loss.defined();
  const auto kept_lse = forward ? at::empty({n}, lse.options()) : pick(lse);
  const auto kept_loss = forward ? at::empty({n}, loss.options()) : at::Tensor();
  XentGrads grads;
  if (n > 0) {
    const XentInputs kept{pick(in.hidden), in.weight, pick(in.target), in.bias, in.ignore_index};
    grads = run_chunks(kept, kept_lse, kept_loss, pick(grad_scale), grad_mask, backend);
  } else if (grad_scale.defined()) {
    if (grad_mask[1]) grads.weight = at::zeros_like(in.weight);
    if (grad_mask[2]) grads.bias = at::zeros_like(*in.bias);
  }
  if (forward) {
    lse.zero_().index_copy_(0, rows, kept_lse);
    loss.zero_().index_copy_(0, rows, kept_loss);
  }
  if (grad_scale.defined() && grad_mask[0]) {
    auto hidden = at::zeros_like(in.hidden);
    if (n > 0) hidden.index_copy_(0, rows, grads.hidden);
    grads.hidden = hidden;
  }
  return grads;
}

}  // namespace

XentForward linear_cross_entropy_forward(const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& target, const std::optional<at::Tensor>& bias,
                                int64_t ignore_index, Reduction reduction,
                                std::array<bool, 3> grad_mask, double grad_multiplier,
                                const XentBackend& backend, const XentNames& names) {
  const auto in = checked_inputs(hidden, weight, target, bias, ignore_index, names);
  check_grad_mask(in, grad_mask, names);
  const bool any_grad = grad_mask[0] || grad_mask[1] || grad_mask[2];
  TORCH_CHECK_VALUE(!any_grad || reduction != Reduction::None,
                    "jwae_ext: grad_mask must be all false for reduction='none' (its gradients ",
                    "come from linear_cross_entropy_backward, which weights each token)");
  const int64_t T = in.hidden.size(0);
  const auto options = in.hidden.options().dtype(accumulation_dtype(in.hidden.scalar_type()));
  // Mean over the non-ignored tokens; over none it is 0 (the sum is 0), not NaN.
  const int64_t counted = counted_tokens(in);
  const int64_t divisor = reduction == Reduction::Mean ? std::max<int64_t>(1, counted) : 1;

  XentForward out;
  out.lse = at::empty({T}, options);
  const auto loss_rows = at::empty({T}, options);
  const auto grad_scale = any_grad ? at::full({T}, grad_multiplier / divisor, options)
                                   : at::Tensor();
  out.grads = run_counted_chunks(in, counted, out.lse, loss_rows, grad_scale, grad_mask, backend);
  if (reduction == Reduction::None) {
    out.loss = loss_rows;
  } else {
    out.loss = backend.dense.sum(loss_rows);
    if (divisor > 1) out.loss.div_(divisor);
  }
  return out;
}

XentGrads linear_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& hidden,
                               const at::Tensor& weight, const at::Tensor& target,
                               const std::optional<at::Tensor>& bias, const at::Tensor& lse,
                               int64_t ignore_index, std::array<bool, 3> grad_mask,
                               const XentBackend& backend) {
  const auto in = checked_inputs(hidden, weight, target, bias, ignore_index, XentNames{});
  check_grad_mask(in, grad_mask, XentNames{});
  const int64_t T = in.hidden.size(0);
  const auto acc = accumulation_dtype(in.hidden.scalar_type());
  for (const auto& [t, name] : {std::pair{&grad_loss, "grad_loss"}, std::pair{&lse, "lse"}}) {
    check_same_device(hidden, "hidden", *t, name);
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == T, "jwae_ext: argument '", name,
                      "' must have shape (", T, ",) (one entry per token), got shape ",
                      t->sizes());
    check_float_dtype(*t, name);
  }
  if (!(grad_mask[0] || grad_mask[1] || grad_mask[2])) return {};
  return run_counted_chunks(in, counted_tokens(in), lse.to(acc).contiguous(), at::Tensor(),
                            grad_loss.to(acc).contiguous(), grad_mask, backend);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_op(
    const XentBackend& backend, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& target, const std::optional<at::Tensor>& bias, int64_t ignore_index,
    std::string_view reduction, std::array<bool, 3> grad_mask) {
  const c10::OptionalDeviceGuard guard(at::device_of(hidden));
  const auto out = linear_cross_entropy_forward(hidden, weight, target, bias, ignore_index,
                                                parse_reduction(reduction), grad_mask, 1.0,
                                                backend);
  const auto options = hidden.options();
  return {out.loss, out.lse, or_empty(out.grads.hidden, options),
          or_empty(out.grads.weight, options), or_empty(out.grads.bias, options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_op(
    const XentBackend& backend, const at::Tensor& grad_loss, const at::Tensor& hidden,
    const at::Tensor& weight, const at::Tensor& target, const std::optional<at::Tensor>& bias,
    const at::Tensor& lse, int64_t ignore_index, std::array<bool, 3> grad_mask) {
  const c10::OptionalDeviceGuard guard(at::device_of(hidden));
  const auto g = linear_cross_entropy_backward(grad_loss, hidden, weight, target, bias, lse,
                                               ignore_index, grad_mask, backend);
  const auto options = hidden.options();
  return {or_empty(g.hidden, options), or_empty(g.weight, options), or_empty(g.bias, options)};
}

// ---------------------------------------------------------------------------------------------
// CPU backend

namespace {

// out (+)= a @ b in output tiles of a fixed grid (tile_grid.h), spread over threads, each one
// single-threaded BLAS call over the whole inner dimension. Why not one multi-threaded GEMM: MKL
// picks its algorithm, and so the summation order, by the thread count, and the loss and gradients
// must not change with torch.set_num_threads (measured: d hidden differed in the last bit between
// 1 and 2 threads). The grid, not the thread count, fixes every tile's GEMM.
void gemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const TileGrid grid{out.size(0), out.size(1)};
  at::parallel_for(0, grid.tiles(), 1, [&](int64_t first, int64_t last) {
    const SingleThreadedBlas blas;
    // Below autograd on worker threads too (the dispatcher's guard is per thread): inputs that
    // require grad must not make the out= and in-place variants refuse to run.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t t = first; t < last; ++t) {
      const TileBounds tile = tile_bounds(grid, t / grid.col_blocks(), t % grid.col_blocks());
      at::Tensor target = out.narrow(0, tile.row0, tile.rows).narrow(1, tile.col0, tile.cols);
      const at::Tensor rows = a.narrow(0, tile.row0, tile.rows);
      const at::Tensor cols = b.narrow(1, tile.col0, tile.cols);
      if (accumulate) {
        target.addmm_(rows, cols);
      } else {
        at::mm_out(target, rows, cols);
      }
    }
  });
}

void add_column_sums_cpu(const at::Tensor& m, const at::Tensor& acc) {
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "add_column_sums_cpu", [&] {
    const int64_t rows = m.size(0), cols = m.size(1);
    const scalar_t* src = m.const_data_ptr<scalar_t>();
    scalar_t* dst = acc.mutable_data_ptr<scalar_t>();
    // Each column is summed by one thread, row by row: the order does not depend on threads.
    at::parallel_for(0, cols, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = src + r * cols;
        for (int64_t c = begin; c < end; ++c) dst[c] += row[c];
      }
    });
  });
}

at::Tensor sum_cpu(const at::Tensor& v) {
  return AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "sum_cpu", [&] {
    const scalar_t* x = v.const_data_ptr<scalar_t>();
    return at::scalar_tensor(ordered_sum(v.numel(), [x](int64_t i) { return double(x[i]); }),
                             v.options());
  });
}

// Independent partial sums over kLanes strided slices, combined in a fixed order: the compiler
// can vectorise it (it is not a reassociation of one running sum) and it is more accurate.
constexpr int kLanes = 16;

template <typename T>
T row_max(const T* x, int64_t n) {
  T m = x[0];
  for (int64_t j = 1; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// sum_j exp(x_j - shift), storing exp(x_j - shift) into x when `store`.
template <typename T, bool store>
T sum_exp(T* x, int64_t n, T shift) {
  T lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T e = std::exp(x[j + l] - shift);
      if constexpr (store) x[j + l] = e;
      lanes[l] += e;
    }
  }
  for (; j < n; ++j) {
    const T e = std::exp(x[j] - shift);
    if constexpr (store) x[j] = e;
    lanes[j % kLanes] += e;
  }
  T total = 0;
  for (T lane : lanes) total += lane;
  return total;
}

template <typename T>
void xent_rows_cpu_typed(const XentRows& a) {
  const int64_t rows = a.logits.size(0), V = a.logits.size(1);
  T* logits = a.logits.mutable_data_ptr<T>();
  const int64_t* target = a.target.const_data_ptr<int64_t>();
  T* lse = a.lse.mutable_data_ptr<T>();
  T* loss = a.loss.defined() ? a.loss.mutable_data_ptr<T>() : nullptr;
  const T* scale = a.grad_scale.defined() ? a.grad_scale.const_data_ptr<T>() : nullptr;
  // Rows are independent, so threads never change a row's result.
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / V), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* x = logits + r * V;
      const int64_t t = target[r];
      if (loss == nullptr) {  // backward: exp(x - lse) is the softmax
        const T s = scale[r], l = lse[r];
        for (int64_t j = 0; j < V; ++j) x[j] = std::exp(x[j] - l) * s;
        x[t] -= s;
        continue;
      }
      const T target_logit = x[t];
      const T m = row_max(x, V);
      if (scale == nullptr) {
        lse[r] = m + std::log(sum_exp<T, false>(x, V, m));
        loss[r] = lse[r] - target_logit;
        continue;
      }
      const T total = sum_exp<T, true>(x, V, m);  // x now holds exp(x - m)
      lse[r] = m + std::log(total);
      loss[r] = lse[r] - target_logit;
      const T s = scale[r], factor = s / total;
      for (int64_t j = 0; j < V; ++j) x[j] *= factor;
      x[t] -= s;
    }
  });
}

void xent_rows_cpu(const XentRows& rows) {
  AT_DISPATCH_FLOATING_TYPES(rows.logits.scalar_type(), "xent_rows_cpu",
                             [&] { xent_rows_cpu_typed<scalar_t>(rows); });
}

}  // namespace

const XentBackend& xent_cpu_backend() {
  static const XentBackend backend{{gemm_cpu, add_column_sums_cpu, sum_cpu}, xent_rows_cpu};
  return backend;
}

TORCH_LIBRARY_IMPL(jwae_ext, CPU, m) { register_linear_cross_entropy<xent_cpu_backend>(m); }

}  // namespace jwae
