// Fused linear cross-entropy: hidden states (T x H) times the vocabulary matrix (V x H), plus
// bias, then cross-entropy against T targets, without ever holding the T x V logits.
//
// The drivers (chunk loop, GEMM order, target validation) are device-agnostic and written against
// a backend: the dense primitives and the per-row softmax pass that csrc/linear_cross_entropy.cpp
// (CPU) and csrc/cuda/linear_cross_entropy.cu (CUDA) provide. csrc/wae_loss.cpp reuses them for
// the caption term.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "dtypes.h"
#include "registration.h"

namespace jwae {

// Dense primitives shared by the fused losses. Accumulation is fp32 (fp64 for fp64 inputs), and
// every reduction runs in an order fixed by the shapes alone.
struct DenseOps {
  // out = a @ b (accumulate=false) or out += a @ b. `out` has a's dtype, or float32 when a and b
  // are float16/bfloat16; it may be a row slice of a larger contiguous tensor.
  void (*gemm)(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);
  // acc (cols,) += the column sums of the contiguous 2-D `m` (rows x cols), same dtype.
  void (*add_column_sums)(const at::Tensor& m, const at::Tensor& acc);
  // The sum of the contiguous 1-D `v`, as a 0-d tensor of its dtype.
  at::Tensor (*sum)(const at::Tensor& v);
};

// One chunk of token rows for the row pass, none of them ignored (the chunk loop leaves those out).
// All tensors are contiguous, in the accumulation dtype (float32, or float64 for float64 inputs)
// except `target` (int64).
struct XentRows {
  at::Tensor logits;      // rows x V; overwritten with d total / d logits when grad_scale is set
  at::Tensor target;      // rows
  at::Tensor lse;         // rows: log-sum-exp, written when `loss` is set, read otherwise
  at::Tensor loss;        // rows: lse - logit[target]; undefined in backward
  at::Tensor grad_scale;  // rows: d total / d loss_row; undefined when no gradient is wanted
};

struct XentBackend {
  DenseOps dense;
  // For each row: the log-sum-exp and loss (or read lse), then in place
  // grad_scale * (softmax - onehot(target)).
  void (*rows)(const XentRows& rows);
};

const XentBackend& xent_cpu_backend();
const XentBackend& xent_cuda_backend();  // defined only in CUDA builds

enum class Reduction { Sum, Mean, None };
Reduction parse_reduction(std::string_view reduction);

// Gradients with respect to hidden (T x H), weight (V x H) and bias (V); undefined where not asked.
struct XentGrads {
  at::Tensor hidden, weight, bias;
};

struct XentForward {
  at::Tensor loss;  // 0-d for sum/mean, (T,) for none; accumulation dtype
  at::Tensor lse;   // (T,) accumulation dtype, 0 at ignored rows
  XentGrads grads;  // d(grad_multiplier * loss)/d(input) for the inputs in grad_mask (sum/mean)
};

// How the caller names the inputs, for error messages (wae_loss has its own names).
struct XentNames {
  const char* hidden = "hidden";
  const char* weight = "weight";
  const char* target = "target";
  const char* bias = "bias";
};

// The loss, and, for reduction sum/mean, the gradients of grad_multiplier * loss with respect to
// the inputs selected by grad_mask (hidden, weight, bias), computed in the same chunk loop.
XentForward linear_cross_entropy_forward(const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& target, const std::optional<at::Tensor>& bias,
                                int64_t ignore_index, Reduction reduction,
                                std::array<bool, 3> grad_mask, double grad_multiplier,
                                const XentBackend& backend, const XentNames& names = {});

// Gradients of sum_t grad_loss[t] * loss[t] (reduction none), recomputing the logits chunk by
// chunk from the saved log-sum-exp.
XentGrads linear_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& hidden,
                               const at::Tensor& weight, const at::Tensor& target,
                               const std::optional<at::Tensor>& bias, const at::Tensor& lse,
                               int64_t ignore_index, std::array<bool, 3> grad_mask,
                               const XentBackend& backend);

// The operators (schemas in csrc/ops.cpp), registered by each device with its backend (OnDevice,
// registration.h); grads not asked for are returned as empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_op(
    const XentBackend& backend, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& target, const std::optional<at::Tensor>& bias, int64_t ignore_index,
    std::string_view reduction, std::array<bool, 3> grad_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_op(
    const XentBackend& backend, const at::Tensor& grad_loss, const at::Tensor& hidden,
    const at::Tensor& weight, const at::Tensor& target, const std::optional<at::Tensor>& bias,
    const at::Tensor& lse, int64_t ignore_index, std::array<bool, 3> grad_mask);

// Registers both operators for one device.
template <const XentBackend& (*backend)()>
void register_linear_cross_entropy(torch::Library& m) {
  m.impl("linear_cross_entropy", &OnDevice<linear_cross_entropy_op, backend>::call);
  m.impl("linear_cross_entropy_backward",
         &OnDevice<linear_cross_entropy_backward_op, backend>::call);
}

// `t` when defined, else an empty placeholder (an operator output that was not asked for).
inline at::Tensor or_empty(const at::Tensor& t, const at::TensorOptions& options) {
  return t.defined() ? t : at::empty({0}, options);
}

}  // namespace jwae
