// The per-pair epilogue of the CPU cross-attention kernels: from one tile of word-region products
// to the SCAN scores of the tile's (image, caption) pairs, and back to the gradient of those
// products, without the attended vectors (docs/design.md#scan).
//
// A tile holds rows × cols products s(q, k) = query_q · context_k: the query items (words for t2i,
// regions for i2t) are its rows, the context items its columns. Rows are cut into row segments
// and columns into column segments (one caption's words, one image's regions); pair (a, b) is the
// block of row segment a and column segment b. Per pair, SCAN's computation is:
//   s̄ = raw_feature_norm(s) over the rows q of the block, for each column k;
//   α(q, ·) = softmax over the block's columns of λ_softmax · s̄(q, ·);
//   e_q · a_q = Σ_k α(q, k) s(q, k);  ‖a_q‖² = α(q, ·)ᵀ G α(q, ·), G the Gram of the context items;
//   r_q = (e_q · a_q) / max(‖e_q‖ ‖a_q‖, eps);  score = aggregate over the block's rows of r.
// The raw norm of a row segment does not depend on the column segments, so it runs over the whole
// width at once; exp runs over the whole tile in one vectorized loop. Every value is computed
// the same way wherever its pair sits in the tile, so a duplicated caption or image scores
// exactly like its copy (ties stay ties, as in one score matrix).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "uniform_exp.h"
#include "xattn_scores.h"

// The elementwise loops below may evaluate comparisons for every lane (no floating-point trap is
// ever checked): without this GCC keeps selects such as the LeakyReLU as branches and does not
// vectorize them. Only code defined in this header is affected (std:: helpers are avoided in the
// hot loops for that reason: functions compiled with other options are not inlined here).
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

namespace jwae::xattn {

// max(a, b) defined here, so that it is inlined into the loops below.
template <typename T>
inline T larger(T a, T b) {
  return a < b ? b : a;
}

// Reductions over a block row in 8 interleaved partial results, combined in a fixed order: the
// compiler vectorizes them (a plain left-to-right sum it may not reorder), and the result depends
// only on the values, not on where the block row sits in the tile.
constexpr int kLanes = 8;

template <typename T>
inline T combine(const T* lane) {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

template <typename T>
inline T lane_sum(const T* x, int64_t n) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += x[i + j];
  }
  for (int j = 0; i + j < n; ++j) lane[j] += x[i + j];
  return combine(lane);
}

template <typename T>
inline T lane_dot(const T* x, const T* y, int64_t n) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += x[i + j] * y[i + j];
  }
  for (int j = 0; i + j < n; ++j) lane[j] += x[i + j] * y[i + j];
  return combine(lane);
}

template <typename T>
inline T lane_max(const T* x, int64_t n) {
  T lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = x[0];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] = larger(lane[j], x[i + j]);
  }
  for (int j = 0; i + j < n; ++j) lane[j] = larger(lane[j], x[i + j]);
  return larger(larger(larger(lane[0], lane[1]), larger(lane[2], lane[3])),
                larger(larger(lane[4], lane[5]), larger(lane[6], lane[7])));
}

// One tile as the epilogue sees it.
template <typename T>
struct TileView {
  const T* s;  // rows × cols products, rows contiguous
  int64_t rows;
  int64_t cols;
  const int64_t* row_offsets;  // row_segments + 1 offsets
  int64_t row_segments;
  const int64_t* col_offsets;  // col_segments + 1 offsets
  int64_t col_segments;
  const T* query_norms;                 // ‖query_q‖ per row
  const std::vector<at::Tensor>* grams;  // per column segment: its context items' Gram matrix
};

template <typename T>
class PairMath {
 public:
  // Tiles of at most max_elements products, max_side rows or columns, max_segments column
  // segments.
  PairMath(const Options& options, int64_t max_elements, int64_t max_side, int64_t max_segments,
           const at::TensorOptions& tensor_options)
      : o_(options),
        lambda_(static_cast<T>(options.lambda_softmax)),
        alpha_(at::empty({max_elements}, tensor_options)),
        product_(at::empty({max_elements}, tensor_options)),
        grad_(at::empty({max_elements}, tensor_options)),
        column_(2 * max_side),
        per_row_(4 * max_side * max_segments) {}

  // Pair (a, b)'s score into scores[a * col_segments + b].
  void forward(const TileView<T>& t, T* scores) {
    attend(t);
    for (int64_t a = 0; a < t.row_segments; ++a) {
      for (int64_t b = 0; b < t.col_segments; ++b) {
        scores[a * t.col_segments + b] = aggregate(t, a, b);
      }
    }
  }

  // The gradient of Σ grad_scores[a * col_segments + b] · score(a, b) with respect to the tile's
  // products, as a rows × cols tensor (valid until the next call). Also accumulates, when given,
  // the gradient with respect to each row's query norm into query_norm_grads[q] and with respect
  // to each column segment's Gram matrix into gram_grads[b].
  at::Tensor backward(const TileView<T>& t, const T* grad_scores, T* query_norm_grads,
                      const std::vector<at::Tensor>* gram_grads) {
    attend(t);
    const int64_t nb = t.col_segments;
    const int64_t cols = t.cols;
    const T* alpha = alpha_.const_data_ptr<T>();
    T* product = product_.mutable_data_ptr<T>();
    T* g = grad_.mutable_data_ptr<T>();
    T* d_num = per_row(0);  // reused for dr first
    T* d_q2 = per_row(3);
    for (int64_t a = 0; a < t.row_segments; ++a) {
      for (int64_t b = 0; b < nb; ++b) aggregate_backward(t, a, b, grad_scores[a * nb + b], d_num);
    }
    const T eps = static_cast<T>(kEps);
    for (int64_t q = 0; q < t.rows; ++q) {
      const T qn = t.query_norms[q];
      T qn_grad = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = q * nb + b;
        const T dr = d_num[i];
        const T an = attended_norm()[i];
        const T prod = qn * an;
        const T den = larger(prod, eps);
        d_num[i] = dr / den;
        d_q2[i] = 0;
        if (prod >= eps) {  // the clamp passes its gradient only there
          const T d_den = -dr * ratio()[i] / den;
          qn_grad += d_den * an;
          d_q2[i] = an > 0 ? d_den * qn / (2 * an) : T(0);
        }
      }
      if (query_norm_grads != nullptr) query_norm_grads[q] += qn_grad;
    }
    // dα = d_num · s + 2 d_q2 · (αG), then back through the softmax (times λ_softmax).
    for (int64_t q = 0; q < t.rows; ++q) {
      const T* s = t.s + q * cols;
      const T* al = alpha + q * cols;
      const T* p = product + q * cols;
      T* gq = g + q * cols;
      for (int64_t b = 0; b < nb; ++b) {
        const T dn = d_num[q * nb + b];
        const T dq = 2 * d_q2[q * nb + b];
        T dot = 0;
        for (int64_t k = t.col_offsets[b]; k < t.col_offsets[b + 1]; ++k) {
          gq[k] = dn * s[k] + dq * p[k];
          dot += al[k] * gq[k];
        }
        for (int64_t k = t.col_offsets[b]; k < t.col_offsets[b + 1]; ++k) {
          gq[k] = lambda_ * al[k] * (gq[k] - dot);
        }
      }
    }
    if (gram_grads != nullptr) accumulate_gram_grads(t, d_q2, *gram_grads);
    for (int64_t a = 0; a < t.row_segments; ++a) {
      const int64_t r0 = t.row_offsets[a];
      raw_norm_backward(t.s + r0 * cols, t.row_offsets[a + 1] - r0, cols, g + r0 * cols);
    }
    // The products also enter e_q · a_q directly.
    for (int64_t q = 0; q < t.rows; ++q) {
      for (int64_t b = 0; b < nb; ++b) {
        const T dn = d_num[q * nb + b];
        for (int64_t k = t.col_offsets[b]; k < t.col_offsets[b + 1]; ++k) {
          g[q * cols + k] += dn * alpha[q * cols + k];
        }
      }
    }
    return grad_.narrow(0, 0, t.rows * cols).view({t.rows, cols});
  }

 private:
  // Per (row, column segment) values, laid out [q * col_segments + b]: 0 e·a, 1 ‖a‖, 2 r, 3 spare.
  T* per_row(int64_t which) { return per_row_.data() + which * per_row_.size() / 4; }
  T* attended_norm() { return per_row(1); }
  T* ratio() { return per_row(2); }

  // α into alpha_, αG into product_, and e·a, ‖a‖ and r per (row, column segment).
  void attend(const TileView<T>& t) {
    const int64_t cols = t.cols;
    const int64_t nb = t.col_segments;
    T* alpha = alpha_.mutable_data_ptr<T>();
    for (int64_t a = 0; a < t.row_segments; ++a) {
      const int64_t r0 = t.row_offsets[a];
      raw_norm_forward(t.s + r0 * cols, t.row_offsets[a + 1] - r0, cols, alpha + r0 * cols);
    }
    for (int64_t q = 0; q < t.rows; ++q) {  // softmax shift: the max of each block row
      T* x = alpha + q * cols;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = t.col_offsets[b], k1 = t.col_offsets[b + 1];
        const T m = lane_max(x + k0, k1 - k0);
        for (int64_t k = k0; k < k1; ++k) x[k] -= m;
      }
    }
    uniform_exp_inplace(alpha, t.rows * cols);
    T* num = per_row(0);
    for (int64_t q = 0; q < t.rows; ++q) {
      T* x = alpha + q * cols;
      const T* s = t.s + q * cols;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = t.col_offsets[b], k1 = t.col_offsets[b + 1];
        const T inv = T(1) / lane_sum(x + k0, k1 - k0);
        for (int64_t k = k0; k < k1; ++k) x[k] *= inv;
        num[q * nb + b] = lane_dot(x + k0, s + k0, k1 - k0);
      }
    }
    const at::Tensor alpha_2d = alpha_.narrow(0, 0, t.rows * cols).view({t.rows, cols});
    const at::Tensor product_2d = product_.narrow(0, 0, t.rows * cols).view({t.rows, cols});
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = t.col_offsets[b], len = t.col_offsets[b + 1] - k0;
        at::Tensor out = product_2d.narrow(1, k0, len);
        at::mm_out(out, alpha_2d.narrow(1, k0, len), (*t.grams)[b]);
      }
    }
    const T* product = product_.const_data_ptr<T>();
    const T eps = static_cast<T>(kEps);
    for (int64_t q = 0; q < t.rows; ++q) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = t.col_offsets[b];
        const T q2 = lane_dot(alpha + q * cols + k0, product + q * cols + k0,
                              t.col_offsets[b + 1] - k0);
        const T an = std::sqrt(larger(q2, T(0)));  // αᵀGα >= 0 up to rounding
        const int64_t i = q * nb + b;
        attended_norm()[i] = an;
        ratio()[i] = num[i] / larger(t.query_norms[q] * an, eps);
      }
    }
  }

  T leaky(T x) const { return x > 0 ? x : static_cast<T>(kLeakySlope) * x; }
  T leaky_slope(T x) const { return x > 0 ? T(1) : static_cast<T>(kLeakySlope); }
  bool clips() const { return o_.norm == RawNorm::clipped || o_.norm == RawNorm::clipped_l2norm; }

  // out = λ_softmax · raw_feature_norm(s) for n rows of the full width, normalized over the rows.
  void raw_norm_forward(const T* s, int64_t n, int64_t cols, T* out) {
    switch (o_.norm) {
      case RawNorm::no_norm:
        for (int64_t i = 0; i < n * cols; ++i) out[i] = lambda_ * s[i];
        return;
      case RawNorm::clipped:
        for (int64_t i = 0; i < n * cols; ++i) out[i] = lambda_ * leaky(s[i]);
        return;
      case RawNorm::l2norm:
        l2_normalize<false>(s, n, cols, out);
        return;
      case RawNorm::clipped_l2norm:
        l2_normalize<true>(s, n, cols, out);
        return;
      case RawNorm::softmax:
        softmax_over_rows(s, n, cols, out);
        for (int64_t i = 0; i < n * cols; ++i) out[i] *= lambda_;
        return;
    }
  }

  // out = λ_softmax · t / (‖t‖ + eps) with t = s (or LeakyReLU(s)), the norm over the n rows.
  template <bool clip>
  void l2_normalize(const T* s, int64_t n, int64_t cols, T* out) {
    T* acc = column_.data();
    const T eps = static_cast<T>(kEps);
    for (int64_t k = 0; k < cols; ++k) acc[k] = 0;
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t k = 0; k < cols; ++k) {
        const T x = clip ? leaky(s[q * cols + k]) : s[q * cols + k];
        acc[k] += x * x;
      }
    }
    for (int64_t k = 0; k < cols; ++k) acc[k] = lambda_ / (std::sqrt(acc[k]) + eps);
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t k = 0; k < cols; ++k) {
        const T x = clip ? leaky(s[q * cols + k]) : s[q * cols + k];
        out[q * cols + k] = x * acc[k];
      }
    }
  }

  // out(q, k) = softmax over the n rows q of s(·, k).
  void softmax_over_rows(const T* s, int64_t n, int64_t cols, T* out) {
    T* top = column_.data();
    T* sum = column_.data() + cols;
    std::fill_n(top, cols, -std::numeric_limits<T>::infinity());
    std::fill_n(sum, cols, T(0));
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t k = 0; k < cols; ++k) top[k] = larger(top[k], s[q * cols + k]);
    }
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t k = 0; k < cols; ++k) {
        out[q * cols + k] = uniform_exp(s[q * cols + k] - top[k]);
        sum[k] += out[q * cols + k];
      }
    }
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t k = 0; k < cols; ++k) out[q * cols + k] /= sum[k];
    }
  }

  // g: the gradient w.r.t. the normalized products s̄ (n rows, full width) in, w.r.t. s out.
  void raw_norm_backward(const T* s, int64_t n, int64_t cols, T* g) {
    T* norm = column_.data();
    T* coef = column_.data() + cols;
    const T eps = static_cast<T>(kEps);
    switch (o_.norm) {
      case RawNorm::no_norm:
        return;
      case RawNorm::clipped:
        for (int64_t i = 0; i < n * cols; ++i) g[i] *= leaky_slope(s[i]);
        return;
      case RawNorm::l2norm:
      case RawNorm::clipped_l2norm:
        // s̄ = t / (N + eps), N = ‖t‖ over the rows: dt = g / (N + eps) - t (Σ g t) / (N (N + eps)²).
        std::fill_n(norm, cols, T(0));
        std::fill_n(coef, cols, T(0));
        for (int64_t q = 0; q < n; ++q) {
          for (int64_t k = 0; k < cols; ++k) {
            const T x = clips() ? leaky(s[q * cols + k]) : s[q * cols + k];
            norm[k] += x * x;
            coef[k] += g[q * cols + k] * x;
          }
        }
        for (int64_t k = 0; k < cols; ++k) {
          const T nk = std::sqrt(norm[k]);
          const T dk = nk + eps;
          coef[k] = nk > 0 ? coef[k] / (nk * dk * dk) : T(0);
          norm[k] = T(1) / dk;
        }
        for (int64_t q = 0; q < n; ++q) {
          for (int64_t k = 0; k < cols; ++k) {
            const T raw = s[q * cols + k];
            const T x = clips() ? leaky(raw) : raw;
            const T dt = g[q * cols + k] * norm[k] - x * coef[k];
            g[q * cols + k] = clips() ? dt * leaky_slope(raw) : dt;
          }
        }
        return;
      case RawNorm::softmax: {
        // u = softmax over the rows: ds = u (g - Σ_rows u g). u goes to the spare product_ buffer.
        T* u = product_.mutable_data_ptr<T>();
        softmax_over_rows(s, n, cols, u);
        std::fill_n(coef, cols, T(0));
        for (int64_t q = 0; q < n; ++q) {
          for (int64_t k = 0; k < cols; ++k) coef[k] += u[q * cols + k] * g[q * cols + k];
        }
        for (int64_t q = 0; q < n; ++q) {
          for (int64_t k = 0; k < cols; ++k) {
            g[q * cols + k] = u[q * cols + k] * (g[q * cols + k] - coef[k]);
          }
        }
        return;
      }
    }
  }

  // gram_grads[b] += Σ_q d_q2(q, b) α(q, ·)ᵀ α(q, ·) over the block's columns, as one GEMM per
  // column segment (product_ is free once dα is formed and holds the scaled α).
  void accumulate_gram_grads(const TileView<T>& t, const T* d_q2,
                             const std::vector<at::Tensor>& gram_grads) {
    const int64_t cols = t.cols;
    const int64_t nb = t.col_segments;
    const T* alpha = alpha_.const_data_ptr<T>();
    T* scaled = product_.mutable_data_ptr<T>();
    for (int64_t q = 0; q < t.rows; ++q) {
      for (int64_t b = 0; b < nb; ++b) {
        const T w = d_q2[q * nb + b];
        for (int64_t k = t.col_offsets[b]; k < t.col_offsets[b + 1]; ++k) {
          scaled[q * cols + k] = w * alpha[q * cols + k];
        }
      }
    }
    const at::Tensor alpha_2d = alpha_.narrow(0, 0, t.rows * cols).view({t.rows, cols});
    const at::Tensor scaled_2d = product_.narrow(0, 0, t.rows * cols).view({t.rows, cols});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = t.col_offsets[b], len = t.col_offsets[b + 1] - k0;
      at::Tensor target = gram_grads[b];
      target.addmm_(alpha_2d.narrow(1, k0, len).t(), scaled_2d.narrow(1, k0, len));
    }
  }

  // The score of pair (a, b): r aggregated over the rows of row segment a.
  T aggregate(const TileView<T>& t, int64_t a, int64_t b) {
    const int64_t nb = t.col_segments;
    const int64_t q0 = t.row_offsets[a], q1 = t.row_offsets[a + 1];
    const T* r = ratio();
    switch (o_.agg) {
      case Agg::lse: {
        const T lam = static_cast<T>(o_.lambda_lse);
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t q = q0; q < q1; ++q) m = larger(m, lam * r[q * nb + b]);
        T sum = 0;
        for (int64_t q = q0; q < q1; ++q) sum += std::exp(lam * r[q * nb + b] - m);
        return (m + std::log(sum)) / lam;
      }
      case Agg::max: {
        T m = r[q0 * nb + b];
        for (int64_t q = q0 + 1; q < q1; ++q) m = larger(m, r[q * nb + b]);
        return m;
      }
      case Agg::mean:
      case Agg::sum: {
        T sum = 0;
        for (int64_t q = q0; q < q1; ++q) sum += r[q * nb + b];
        return o_.agg == Agg::sum ? sum : sum / static_cast<T>(q1 - q0);
      }
    }
    return 0;
  }

  // dr(q, b) for the rows of segment a, given the pair's score gradient.
  void aggregate_backward(const TileView<T>& t, int64_t a, int64_t b, T grad, T* dr) {
    const int64_t nb = t.col_segments;
    const int64_t q0 = t.row_offsets[a], q1 = t.row_offsets[a + 1];
    const T* r = ratio();
    switch (o_.agg) {
      case Agg::lse: {  // the softmax of λ_lse r over the rows
        const T lam = static_cast<T>(o_.lambda_lse);
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t q = q0; q < q1; ++q) m = larger(m, lam * r[q * nb + b]);
        T sum = 0;
        for (int64_t q = q0; q < q1; ++q) sum += std::exp(lam * r[q * nb + b] - m);
        for (int64_t q = q0; q < q1; ++q) {
          dr[q * nb + b] = grad * std::exp(lam * r[q * nb + b] - m) / sum;
        }
        return;
      }
      case Agg::max: {  // to the first maximum, as torch.max's gradient
        int64_t best = q0;
        for (int64_t q = q0 + 1; q < q1; ++q) {
          if (r[q * nb + b] > r[best * nb + b]) best = q;
        }
        for (int64_t q = q0; q < q1; ++q) dr[q * nb + b] = q == best ? grad : T(0);
        return;
      }
      case Agg::mean:
      case Agg::sum: {
        const T each = o_.agg == Agg::sum ? grad : grad / static_cast<T>(q1 - q0);
        for (int64_t q = q0; q < q1; ++q) dr[q * nb + b] = each;
        return;
      }
    }
  }

  Options o_;
  T lambda_;
  at::Tensor alpha_;    // α, rows × cols
  at::Tensor product_;  // αG (then scratch)
  at::Tensor grad_;     // the backward's result
  std::vector<T> column_;
  std::vector<T> per_row_;
};

}  // namespace jwae::xattn

#pragma GCC pop_options
