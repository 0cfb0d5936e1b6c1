// The dtype the operators accumulate in (and return scores and losses in), on every device; the
// Python side's twin is jwae_ext/ops/_dtypes.py.
#pragma once

#include <c10/core/ScalarType.h>

namespace jwae {

// float64 stays float64; float32, float16 and bfloat16 accumulate in float32.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace jwae
