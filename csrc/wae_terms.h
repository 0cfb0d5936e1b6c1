// Per-element math of the jWAE terms, shared by the CPU (csrc/wae_backend.cpp) and CUDA
// (csrc/cuda/wae_backend.cu) element kernels so both backends evaluate exactly the same formulas.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace jwae {

// softplus(u) = log(1 + e^u), without overflow for large |u|.
template <typename T>
C10_HOST_DEVICE inline T softplus(T u) {
  return (u > T(0) ? u : T(0)) + std::log1p(std::exp(-std::abs(u)));
}

// sigmoid(u) = 1 / (1 + e^-u), without overflow for large |u|.
template <typename T>
C10_HOST_DEVICE inline T sigmoid(T u) {
  if (u >= T(0)) return T(1) / (T(1) + std::exp(-u));
  const T e = std::exp(u);
  return e / (T(1) + e);
}

// One element of the feature reconstruction error: |rec - feat| or (rec - feat)^2. Writes
// grad_scale times its derivative with respect to rec when `grad` is set.
template <typename scalar_t, typename acc_t>
struct ReconstructionTerm {
  const scalar_t* feat;
  const scalar_t* rec;
  scalar_t* grad;  // nullptr: no gradient
  acc_t grad_scale;
  bool squared;

  C10_HOST_DEVICE acc_t operator()(int64_t i) const {
    const acc_t d = static_cast<acc_t>(rec[i]) - static_cast<acc_t>(feat[i]);
    if (grad != nullptr) {
      const acc_t sign = d > acc_t(0) ? acc_t(1) : d < acc_t(0) ? acc_t(-1) : acc_t(0);
      grad[i] = static_cast<scalar_t>(grad_scale * (squared ? acc_t(2) * d : sign));
    }
    return squared ? d * d : std::abs(d);
  }
};

// One element of softplus(sign * logit): with sign -1, -log sigmoid(logit) (BCE-with-logits
// against label 1); with sign +1, -log(1 - sigmoid(logit)) (label 0). Writes grad_scale times its
// derivative with respect to the logit when `grad` is set. (CUDA's; the CPU runs the vectorized
// loop of softplus_cpu.h.)
template <typename scalar_t, typename acc_t>
struct SoftplusTerm {
  const scalar_t* logits;
  scalar_t* grad;  // nullptr: no gradient
  acc_t grad_scale;
  acc_t sign;

  C10_HOST_DEVICE acc_t operator()(int64_t i) const {
    const acc_t u = sign * static_cast<acc_t>(logits[i]);
    if (grad != nullptr) grad[i] = static_cast<scalar_t>(grad_scale * sign * sigmoid(u));
    return softplus(u);
  }
};

// The inverse multiquadratic kernel summed over scales, k(d2) = sum_c c / (c + d2), and its
// derivative with respect to the squared distance d2.
template <typename T>
struct ImqValue {
  T k;
  T dk;
};

template <typename T>
C10_HOST_DEVICE inline ImqValue<T> imq(T d2, const T* scales, int64_t num_scales) {
  ImqValue<T> out{T(0), T(0)};
  for (int64_t s = 0; s < num_scales; ++s) {
    const T c = scales[s];
    const T inv = T(1) / (c + d2);
    out.k += c * inv;
    out.dk -= c * inv * inv;
  }
  return out;
}

// Squared distance from squared norms and a dot product; rounding can make it slightly negative.
// The comparison is written so that a NaN (from a NaN or infinite input) passes through instead of
// being clamped to 0, which would report the closest possible pair.
template <typename T>
C10_HOST_DEVICE inline T squared_distance(T norm_a, T norm_b, T dot) {
  const T d2 = norm_a + norm_b - T(2) * dot;
  return d2 < T(0) ? T(0) : d2;
}

}  // namespace jwae
