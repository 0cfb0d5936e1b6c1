// Argument checks shared by every operator. Each message names the argument, what was expected
// and what was given, so a user calling torch.ops.jwae_ext.* directly gets the same clarity as
// through the Python wrappers.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace jwae {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == dim, "jwae_ext: argument '", name, "' must be a ", dim,
                    "-D tensor (", what, "), got a ", t.dim(), "-D tensor of shape ", t.sizes());
}

inline void check_nonempty(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.numel() > 0, "jwae_ext: argument '", name,
                    "' must not be empty, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "jwae_ext: arguments '", a_name, "' and '", b_name,
                    "' must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "jwae_ext: arguments '", a_name,
                   "' and '", b_name, "' must have the same dtype, got ", a.scalar_type(),
                   " and ", b.scalar_type());
}

// fp32/fp64 everywhere; fp16/bf16 only on CUDA, where they are accumulated in fp32.
inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  const bool cpu_ok = st == at::kFloat || st == at::kDouble;
  const bool cuda_ok = cpu_ok || st == at::kHalf || st == at::kBFloat16;
  if (t.is_cuda()) {
    TORCH_CHECK_TYPE(cuda_ok, "jwae_ext: argument '", name,
                     "' must be float32, float64, float16 or bfloat16 on CUDA, got ", st);
  } else {
    TORCH_CHECK_TYPE(cpu_ok, "jwae_ext: argument '", name,
                     "' must be float32 or float64 on CPU (float16/bfloat16 are CUDA-only), got ",
                     st);
  }
}

inline void check_index_vector(const at::Tensor& t, int64_t length, const char* name,
                               const char* length_of) {
  check_dim(t, 1, name, "one id per row");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "jwae_ext: argument '", name,
                   "' must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == length, "jwae_ext: argument '", name, "' must have ", length,
                    " entries (one per row of ", length_of, "), got ", t.size(0));
}

// Every id in `ids` lies in [0, upper) or equals `ignore` (when given). Reports the first
// offending position and value. Costs one device synchronisation on CUDA.
inline void check_ids_in_range(const at::Tensor& ids, int64_t upper, const char* name,
                               const char* what, std::optional<int64_t> ignore = std::nullopt) {
  auto bad = ids.lt(0).logical_or_(ids.ge(upper));
  if (ignore.has_value()) {
    bad.logical_and_(ids.ne(*ignore));
  }
  if (!bad.any().item<bool>()) {
    return;
  }
  const int64_t pos = bad.flatten().nonzero().select(1, 0)[0].item<int64_t>();
  const int64_t value = ids.flatten()[pos].item<int64_t>();
  if (ignore.has_value()) {
    TORCH_CHECK_VALUE(false, "jwae_ext: argument '", name, "' must hold ", what, " in [0, ", upper,
                      ") or ignore_index (", *ignore, "), got ", value, " at position ", pos);
  }
  TORCH_CHECK_VALUE(false, "jwae_ext: argument '", name, "' must hold ", what, " in [0, ", upper,
                    "), got ", value, " at position ", pos);
}

}  // namespace jwae
