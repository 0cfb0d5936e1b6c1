// exp over an array with the same bits for an element wherever it sits in the array.
//
// Why not at::exp_: its vectorized loop leaves the last elements of an array to the scalar
// std::exp, whose result can differ in the last bit from the vector one, so an element's value
// would depend on its position in a tile. The cross-attention epilogue needs position-independent
// values: a duplicated caption or image must tie exactly with its copy, as in one score matrix.
// This is one straight-line computation per element (no branches, no libm call) that the compiler
// vectorizes, its vector body and scalar remainder performing the same IEEE operations.
//
// Method: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a Taylor polynomial for e^r
// (degree 7 for float, 13 for double: within 1-2 ulp), and 2^n assembled from its bits. Inputs
// below the range of normal results give 0 (the epilogue only exponentiates x - max(x) <= 0,
// where such terms are below rounding next to exp(0) = 1); NaN stays NaN.
#pragma once

#include <cstdint>

namespace jwae {

namespace detail {

template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  using Bits = int32_t;
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr float kLowest = -87.0f;      // exp below is under the normal range
  static constexpr float kHighest = 88.0f;
  static constexpr int kMantissa = 23;
  static constexpr Bits kBias = 127;
  static constexpr int kDegree = 7;
};

template <>
struct ExpConstants<double> {
  using Bits = int64_t;
  static constexpr double kLog2e = 1.4426950408889634074;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kLowest = -708.0;
  static constexpr double kHighest = 709.0;
  static constexpr int kMantissa = 52;
  static constexpr Bits kBias = 1023;
  static constexpr int kDegree = 13;
};

}  // namespace detail

// Floating-point comparisons may be evaluated for every lane (no trap is ever checked here);
// without this GCC keeps the selects below as branches and does not vectorize the loop.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

template <typename T>
inline T uniform_exp(T x) {
  using C = detail::ExpConstants<T>;
  using Bits = typename C::Bits;
  // (Not std::min/max: functions outside this options region would not be inlined.)
  const T low = x < C::kLowest ? C::kLowest : x;
  const T clamped = low > C::kHighest ? C::kHighest : low;
  const T shifted = clamped * C::kLog2e + C::kRound;
  const T n = shifted - C::kRound;
  const T r = (clamped - n * C::kLn2Hi) - n * C::kLn2Lo;
  // Horner form of the Taylor series: 1 + r (1 + r/2 (1 + r/3 (...))).
  T p = 1;
#pragma GCC unroll 16
  for (int k = C::kDegree; k >= 1; --k) p = T(1) + p * (r * (T(1) / T(k)));
  // The low mantissa bits of `shifted` hold n: rebuild 2^n's exponent field from them.
  // (The builtin, not std::bit_cast, for the same reason as the selects above.)
  const Bits n_bits = __builtin_bit_cast(Bits, shifted) - __builtin_bit_cast(Bits, C::kRound);
  const T scale = __builtin_bit_cast(T, static_cast<Bits>((n_bits + C::kBias) << C::kMantissa));
  const T y = p * scale;
  return x < C::kLowest ? T(0) : (x != x ? x : y);
}

// x[i] = exp(x[i]) for i < n.
template <typename T>
inline void uniform_exp_inplace(T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = uniform_exp(x[i]);
}

#pragma GCC pop_options

}  // namespace jwae
