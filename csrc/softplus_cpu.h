// The CPU element loop of mean softplus(sign * logits) and its gradient (the discriminator's
// BCE-with-logits, wae_loss's adversarial terms), written so that the compiler vectorizes it.
//
// Why not SoftplusTerm (wae_terms.h) as CUDA uses it: on the CPU its libm calls (exp, log1p, exp
// again for the sigmoid, in double) run one element at a time, and the fused operator took 3.7x
// the time of the two vectorized F.binary_cross_entropy_with_logits it replaces (2^20 logits).
// Here one exp per element (uniform_exp.h, branch-free) serves both the softplus and the sigmoid,
// log1p is a short series, everything in the input's dtype (as the reference), and only the sum
// is carried in double. One function body is compiled for AVX-512, AVX2 and the baseline ISA
// (target_clones), picked once at load time by the CPU.
#pragma once

#include <cstdint>

#include "uniform_exp.h"

namespace jwae {

namespace detail {

// Terms of the series below: (1/9)^n / (2n + 1) under half an ulp (float: 2^-24, double: 2^-53).
template <typename T>
inline constexpr int kLog1pTerms = sizeof(T) == 4 ? 8 : 17;

}  // namespace detail

// Same options as uniform_exp (whose body must inline here): branch-free selects vectorize.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

// log1p(e) for e in [0, 1] (and NaN): 2 atanh(s) with s = e / (2 + e) <= 1/3, as the odd series
// 2 (s + s^3/3 + s^5/5 + ...), which converges by a factor 1/9 per term. No cancellation: s has
// e's relative precision even where e is far below the rounding of 1 + e.
template <typename T>
inline T log1p_unit(T e) {
  const T s = e / (T(2) + e);
  const T t = s * s;
  T p = 0;
#pragma GCC unroll 20
  for (int k = detail::kLog1pTerms<T> - 1; k >= 0; --k) p = T(1) / T(2 * k + 1) + t * p;
  return T(2) * s * p;
}

// Sum over [begin, end) of softplus(sign * x[i]) in double; writes grad[i] = grad_scale * sign *
// sigmoid(sign * x[i]) when grad is not null. softplus(u) = max(u, 0) + log1p(e^-|u|) and
// sigmoid(u) = (u >= 0 ? 1 : e^-|u|) / (1 + e^-|u|): one exp for both; NaN stays NaN, +-inf give
// the limits (inf and 1, 0 and 0).
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) double softplus_block(const T* x, T* grad,
                                                                         int64_t begin,
                                                                         int64_t end, T sign,
                                                                         T grad_scale) {
  double sum = 0;
  if (grad == nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; ++i) {
      const T u = sign * x[i];
      const T e = uniform_exp(u > T(0) ? -u : u);
      sum += static_cast<double>((u > T(0) ? u : T(0)) + log1p_unit(e));
    }
    return sum;
  }
  const T scale = grad_scale * sign;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = begin; i < end; ++i) {
    const T u = sign * x[i];
    const T e = uniform_exp(u > T(0) ? -u : u);
    grad[i] = scale * ((u >= T(0) ? T(1) : e) / (T(1) + e));
    sum += static_cast<double>((u > T(0) ? u : T(0)) + log1p_unit(e));
  }
  return sum;
}

#pragma GCC pop_options

}  // namespace jwae
