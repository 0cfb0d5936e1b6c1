// CUDA kernels of the stacked cross-attention scores, with the CPU kernel's structure: tiles of
// (the real words of a range of captions) × (the regions of a range of images) from one GEMM, and
// an epilogue kernel with one thread block per (image, caption) pair that turns the tile into
// scores with e·a = Σ α s and ‖a‖² = αᵀ G α (docs/design.md#scan), or into the gradient of the tile's
// products; the backward recomputes the tiles and accumulates the inputs' gradients with two GEMMs
// per tile. Everything runs in the accumulation dtype: fp16/bf16 inputs are converted to fp32 once
// (a copy of the inputs), fp32 and fp64 are used as given. Gradient accumulation into norms and
// Grams uses atomics: results are not bitwise reproducible on CUDA (they are on CPU).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>
#include <tuple>
#include <vector>

#include "../xattn_scores.h"

namespace jwae::xattn {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kTileWords = 4096;     // words per tile (whole captions; more for one long one)
constexpr int64_t kTileRegions = 8192;   // regions per tile (whole images)

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

// The inputs in the accumulation dtype, the real words packed (padding never enters a GEMM), and
// the tiles: caption ranges by word count, image ranges by region count.
struct Problem {
  Options options;
  at::Tensor regions;       // (N_i * R, d)
  at::Tensor words;         // (W, d) packed real words, caption by caption
  std::vector<int64_t> word_first;  // per caption (host), N_c + 1
  at::Tensor word_first_d;  // the same on the device
  at::Tensor lengths_d;     // (N_c,) on the device
  std::vector<int64_t> caption_tiles;  // caption ranges: [caption_tiles[t], caption_tiles[t + 1])
  int64_t n_images, regions_per_image, images_per_tile;
  int64_t max_words;        // longest caption
  bool i2t;
  at::Tensor query_norms;   // t2i: per packed word; i2t: per region
  at::Tensor context_grams; // t2i: (N_i, R, R); i2t: flat, caption c's n×n Gram at gram_first[c]
  at::Tensor gram_first_d;  // i2t: (N_c + 1,) offsets into context_grams

  int64_t image_tiles() const { return (n_images + images_per_tile - 1) / images_per_tile; }
};

// Each image's Gram matrix of its regions (the regions in the accumulation dtype).
at::Tensor region_grams_cuda(const at::Tensor& regions) {
  return at::bmm(regions, regions.transpose(1, 2)).contiguous();
}

Problem make_problem(const at::Tensor& images, const at::Tensor& captions,
                     const at::Tensor& cap_lens, const Options& options,
                     const std::optional<at::Tensor>& region_grams = std::nullopt) {
  Problem p;
  p.options = options;
  p.i2t = options.direction == Direction::i2t;
  const auto acc = accumulation_dtype(images.scalar_type());
  const int64_t n_images = images.size(0), R = images.size(1), d = images.size(2);
  const int64_t n_captions = captions.size(0), L = captions.size(1);
  p.n_images = n_images;
  p.regions_per_image = R;
  p.images_per_tile = std::max<int64_t>(1, kTileRegions / R);
  p.regions = images.to(acc).contiguous().view({-1, d});
  const at::Tensor lens = cap_lens.to(at::kCPU).contiguous();
  const int64_t* len = lens.const_data_ptr<int64_t>();
  p.word_first.assign(1, 0);
  std::vector<int64_t> rows;  // flat row of every real word in captions.view(-1, d)
  std::vector<int64_t> gram_first(1, 0);
  p.caption_tiles.assign(1, 0);
  p.max_words = 0;
  int64_t tile_words = 0;
  for (int64_t c = 0; c < n_captions; ++c) {
    for (int64_t w = 0; w < len[c]; ++w) rows.push_back(c * L + w);
    p.word_first.push_back(p.word_first.back() + len[c]);
    gram_first.push_back(gram_first.back() + len[c] * len[c]);
    p.max_words = std::max(p.max_words, len[c]);
    if (tile_words > 0 && tile_words + len[c] > kTileWords) {
      p.caption_tiles.push_back(c);
      tile_words = 0;
    }
    tile_words += len[c];
  }
  p.caption_tiles.push_back(n_captions);
  const auto device = images.device();
  const auto long_options = at::TensorOptions().dtype(at::kLong);
  const at::Tensor row_index = at::tensor(rows, long_options).to(device);
  p.words = captions.reshape({-1, d}).index_select(0, row_index).to(acc).contiguous();
  p.word_first_d = at::tensor(p.word_first, long_options).to(device);
  p.lengths_d = cap_lens.contiguous();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (p.i2t) {
    p.query_norms = at::linalg_vector_norm(p.regions, 2, at::IntArrayRef{1}, false, std::nullopt);
    p.context_grams = at::empty({gram_first.back()}, p.words.options());
    for (int64_t c = 0; c < n_captions; ++c) {
      const at::Tensor w = p.words.narrow(0, p.word_first[c], len[c]);
      at::Tensor out = p.context_grams.narrow(0, gram_first[c], len[c] * len[c]).view({len[c], len[c]});
      at::mm_out(out, w, w.t());
    }
    p.gram_first_d = at::tensor(gram_first, long_options).to(device);
  } else {
    p.query_norms = at::linalg_vector_norm(p.words, 2, at::IntArrayRef{1}, false, std::nullopt);
    p.context_grams = region_grams.has_value()
                          ? region_grams->contiguous()
                          : region_grams_cuda(p.regions.view({n_images, R, d}));
  }
  return p;
}

// One tile: captions [c0, c1) by images [i0, i1); X = words · regionsᵀ (rows: the tile's words).
struct Tile {
  int64_t c0, c1, i0, i1;
  int64_t w0, n_words;
};

Tile tile_at(const Problem& p, int64_t ct, int64_t it) {
  Tile t;
  t.c0 = p.caption_tiles[ct];
  t.c1 = p.caption_tiles[ct + 1];
  t.i0 = it * p.images_per_tile;
  t.i1 = std::min(p.n_images, t.i0 + p.images_per_tile);
  t.w0 = p.word_first[t.c0];
  t.n_words = p.word_first[t.c1] - t.w0;
  return t;
}

at::Tensor tile_products(const Problem& p, const Tile& t, at::Tensor& buffer) {
  const int64_t R = p.regions_per_image;
  const int64_t cols = (t.i1 - t.i0) * R;
  at::Tensor out = buffer.narrow(0, 0, t.n_words * cols).view({t.n_words, cols});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::mm_out(out, p.words.narrow(0, t.w0, t.n_words), p.regions.narrow(0, t.i0 * R, cols).t());
  return out;
}

// ---- the per-pair epilogue (one block per pair) ----------------------------------------------

// Everything a pair's block reads, in device memory.
template <typename T>
struct PairArgs {
  const T* x;            // the tile, rows = words, ld = cols
  int64_t cols;
  const int64_t* word_first;  // global word offsets per caption
  int64_t w0;            // the tile's first word
  int64_t c0, i0;        // the tile's first caption and image
  int64_t n_tile_images;
  int64_t R;
  bool i2t;
  int norm;              // RawNorm
  int agg;               // Agg
  T lambda_softmax, lambda_lse;
  const T* query_norms;      // t2i: per global word; i2t: per global region
  const T* context_grams;    // t2i: (N_i, R, R); i2t: flat per caption
  const int64_t* gram_first; // i2t only
};

// The pair of block b: caption c0 + b / n_tile_images, image i0 + b % n_tile_images.
template <typename T>
struct Pair {
  int64_t caption, image, nq, nk;
  int64_t word0;  // first word of the caption in the tile
  const T* gram;  // context Gram, nk × nk
  const T* qnorm; // nq query norms

  // s(q, k): words are the query (t2i) or the context (i2t).
  __device__ T s(const PairArgs<T>& a, int64_t q, int64_t k) const {
    const int64_t word = a.i2t ? k : q;
    const int64_t region = a.i2t ? q : k;
    return a.x[(word0 + word) * a.cols + (image - a.i0) * a.R + region];
  }
};

template <typename T>
__device__ Pair<T> pair_of(const PairArgs<T>& a) {
  Pair<T> p;
  p.caption = a.c0 + blockIdx.x / a.n_tile_images;
  p.image = a.i0 + blockIdx.x % a.n_tile_images;
  const int64_t n = a.word_first[p.caption + 1] - a.word_first[p.caption];
  p.word0 = a.word_first[p.caption] - a.w0;
  p.nq = a.i2t ? a.R : n;
  p.nk = a.i2t ? n : a.R;
  p.gram = a.i2t ? a.context_grams + a.gram_first[p.caption] : a.context_grams + p.image * a.R * a.R;
  p.qnorm = a.i2t ? a.query_norms + p.image * a.R : a.query_norms + a.word_first[p.caption];
  return p;
}

template <typename T>
__device__ T leaky(T x) { return x > T(0) ? x : T(kLeakySlope) * x; }

template <typename T>
__device__ T leaky_slope(T x) { return x > T(0) ? T(1) : T(kLeakySlope); }

// Shared memory layout: alpha[nq*nk], work[nq*nk], row[4*nq].
// Fills alpha = α and work = αG; row = (e·a, ‖a‖, r, spare) per query item.
template <typename T>
__device__ void attend(const PairArgs<T>& a, const Pair<T>& p, T* alpha, T* work, T* row) {
  const T eps = T(kEps);
  const auto norm = static_cast<RawNorm>(a.norm);
  for (int64_t k = threadIdx.x; k < p.nk; k += blockDim.x) {  // raw norm over q, per column
    T scale = a.lambda_softmax;
    if (norm == RawNorm::l2norm || norm == RawNorm::clipped_l2norm) {
      T acc = 0;
      for (int64_t q = 0; q < p.nq; ++q) {
        const T x = norm == RawNorm::clipped_l2norm ? leaky(p.s(a, q, k)) : p.s(a, q, k);
        acc += x * x;
      }
      scale = a.lambda_softmax / (sqrt(acc) + eps);
    }
    T top = -std::numeric_limits<T>::infinity(), sum = 0;
    if (norm == RawNorm::softmax) {
      for (int64_t q = 0; q < p.nq; ++q) top = max(top, p.s(a, q, k));
      for (int64_t q = 0; q < p.nq; ++q) sum += exp(p.s(a, q, k) - top);
      scale = a.lambda_softmax / sum;
    }
    for (int64_t q = 0; q < p.nq; ++q) {
      const T s = p.s(a, q, k);
      T x = s;
      if (norm == RawNorm::clipped || norm == RawNorm::clipped_l2norm) x = leaky(s);
      if (norm == RawNorm::softmax) x = exp(s - top);
      alpha[q * p.nk + k] = x * scale;
    }
  }
  __syncthreads();
  for (int64_t q = threadIdx.x; q < p.nq; q += blockDim.x) {  // softmax over k, per row
    T* x = alpha + q * p.nk;
    T top = x[0];
    for (int64_t k = 1; k < p.nk; ++k) top = max(top, x[k]);
    T sum = 0;
    for (int64_t k = 0; k < p.nk; ++k) {
      x[k] = exp(x[k] - top);
      sum += x[k];
    }
    T dot = 0;
    for (int64_t k = 0; k < p.nk; ++k) {
      x[k] /= sum;
      dot += x[k] * p.s(a, q, k);
    }
    row[q] = dot;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.nq * p.nk; i += blockDim.x) {  // αG
    const int64_t q = i / p.nk, k = i % p.nk;
    T acc = 0;
    for (int64_t j = 0; j < p.nk; ++j) acc += alpha[q * p.nk + j] * p.gram[k * p.nk + j];
    work[i] = acc;
  }
  __syncthreads();
  for (int64_t q = threadIdx.x; q < p.nq; q += blockDim.x) {
    T q2 = 0;
    for (int64_t k = 0; k < p.nk; ++k) q2 += alpha[q * p.nk + k] * work[q * p.nk + k];
    const T an = sqrt(max(q2, T(0)));
    row[p.nq + q] = an;
    row[2 * p.nq + q] = row[q] / max(p.qnorm[q] * an, eps);
  }
  __syncthreads();
}

template <typename T>
__device__ T aggregate(const PairArgs<T>& a, const Pair<T>& p, const T* r) {
  const auto agg = static_cast<Agg>(a.agg);
  if (agg == Agg::lse) {
    T top = -std::numeric_limits<T>::infinity(), sum = 0;
    for (int64_t q = 0; q < p.nq; ++q) top = max(top, a.lambda_lse * r[q]);
    for (int64_t q = 0; q < p.nq; ++q) sum += exp(a.lambda_lse * r[q] - top);
    return (top + log(sum)) / a.lambda_lse;
  }
  if (agg == Agg::max) {
    T top = r[0];
    for (int64_t q = 1; q < p.nq; ++q) top = max(top, r[q]);
    return top;
  }
  T sum = 0;
  for (int64_t q = 0; q < p.nq; ++q) sum += r[q];
  return agg == Agg::sum ? sum : sum / T(p.nq);
}

// scores[b] for the tile's pairs (caption-major: b = (c - c0) * n_tile_images + (i - i0)).
template <typename T>
__global__ void pair_scores_kernel(PairArgs<T> a, T* __restrict__ scores) {
  extern __shared__ unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const Pair<T> p = pair_of(a);
  T* alpha = smem;
  T* work = alpha + p.nq * p.nk;
  T* row = work + p.nq * p.nk;
  attend(a, p, alpha, work, row);
  if (threadIdx.x == 0) scores[blockIdx.x] = aggregate(a, p, row + 2 * p.nq);
}

// The gradient of Σ grad[b] score_b w.r.t. the tile's products (into dx, same layout as x), and
// atomically the gradients w.r.t. the query norms and the context Grams.
template <typename T>
__global__ void pair_backward_kernel(PairArgs<T> a, const T* __restrict__ grad_scores,
                                     int64_t grad_ld, T* __restrict__ dx, T* query_norm_grads,
                                     T* gram_grads) {
  extern __shared__ unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const Pair<T> p = pair_of(a);
  T* alpha = smem;
  T* work = alpha + p.nq * p.nk;
  T* row = work + p.nq * p.nk;
  attend(a, p, alpha, work, row);
  const T g = grad_scores[p.image * grad_ld + p.caption];
  const T eps = T(kEps);
  T* r = row + 2 * p.nq;
  T* d_num = row;              // e·a is no longer needed
  T* d_q2 = row + 3 * p.nq;
  if (threadIdx.x == 0) {      // dr, then d(e·a) and d‖a‖², per query item
    const auto agg = static_cast<Agg>(a.agg);
    T top = -std::numeric_limits<T>::infinity(), sum = 0;
    int64_t best = 0;
    for (int64_t q = 0; q < p.nq; ++q) {
      top = max(top, a.lambda_lse * r[q]);
      if (r[q] > r[best]) best = q;
    }
    if (agg == Agg::lse) {
      for (int64_t q = 0; q < p.nq; ++q) sum += exp(a.lambda_lse * r[q] - top);
    }
    for (int64_t q = 0; q < p.nq; ++q) {
      T dr = g;
      if (agg == Agg::lse) dr = g * exp(a.lambda_lse * r[q] - top) / sum;
      if (agg == Agg::mean) dr = g / T(p.nq);
      if (agg == Agg::max) dr = q == best ? g : T(0);
      const T an = row[p.nq + q];
      const T prod = p.qnorm[q] * an;
      const T den = max(prod, eps);
      d_q2[q] = 0;
      if (prod >= eps) {
        const T d_den = -dr * r[q] / den;
        const int64_t item = a.i2t ? p.image * a.R + q : a.word_first[p.caption] + q;
        atomicAdd(query_norm_grads + item, d_den * an);
        d_q2[q] = an > 0 ? d_den * p.qnorm[q] / (2 * an) : T(0);
      }
      d_num[q] = dr / den;
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.nq * p.nk; i += blockDim.x) {  // dα
    const int64_t q = i / p.nk, k = i % p.nk;
    work[i] = d_num[q] * p.s(a, q, k) + 2 * d_q2[q] * work[i];
  }
  __syncthreads();
  for (int64_t q = threadIdx.x; q < p.nq; q += blockDim.x) {  // through the softmax
    T dot = 0;
    for (int64_t k = 0; k < p.nk; ++k) dot += alpha[q * p.nk + k] * work[q * p.nk + k];
    for (int64_t k = 0; k < p.nk; ++k) {
      work[q * p.nk + k] = a.lambda_softmax * alpha[q * p.nk + k] * (work[q * p.nk + k] - dot);
    }
  }
  T* dgram = a.i2t ? gram_grads + a.gram_first[p.caption] : gram_grads + p.image * a.R * a.R;
  for (int64_t i = threadIdx.x; i < p.nk * p.nk; i += blockDim.x) {  // Σ_q d‖a_q‖² α_q α_qᵀ
    const int64_t k = i / p.nk, j = i % p.nk;
    T acc = 0;
    for (int64_t q = 0; q < p.nq; ++q) acc += d_q2[q] * alpha[q * p.nk + k] * alpha[q * p.nk + j];
    atomicAdd(dgram + i, acc);
  }
  __syncthreads();
  const auto norm = static_cast<RawNorm>(a.norm);
  for (int64_t k = threadIdx.x; k < p.nk; k += blockDim.x) {  // through the raw norm, per column
    T nk = 0, coef = 0, top = -std::numeric_limits<T>::infinity(), sum = 0;
    const bool clip = norm == RawNorm::clipped || norm == RawNorm::clipped_l2norm;
    if (norm == RawNorm::l2norm || norm == RawNorm::clipped_l2norm) {
      for (int64_t q = 0; q < p.nq; ++q) {
        const T x = clip ? leaky(p.s(a, q, k)) : p.s(a, q, k);
        nk += x * x;
        coef += work[q * p.nk + k] * x;
      }
      nk = sqrt(nk);
      const T dk = nk + eps;
      coef = nk > 0 ? coef / (nk * dk * dk) : T(0);
      nk = T(1) / dk;
    }
    if (norm == RawNorm::softmax) {
      for (int64_t q = 0; q < p.nq; ++q) top = max(top, p.s(a, q, k));
      for (int64_t q = 0; q < p.nq; ++q) sum += exp(p.s(a, q, k) - top);
      for (int64_t q = 0; q < p.nq; ++q) {
        coef += exp(p.s(a, q, k) - top) / sum * work[q * p.nk + k];
      }
    }
    for (int64_t q = 0; q < p.nq; ++q) {
      const T s = p.s(a, q, k);
      T g_in = work[q * p.nk + k];
      if (norm == RawNorm::l2norm || norm == RawNorm::clipped_l2norm) {
        g_in = g_in * nk - (clip ? leaky(s) : s) * coef;
      } else if (norm == RawNorm::softmax) {
        g_in = exp(s - top) / sum * (g_in - coef);
      }
      if (clip) g_in *= leaky_slope(s);
      const T total = g_in + d_num[q] * alpha[q * p.nk + k];
      const int64_t word = a.i2t ? k : q;
      const int64_t region = a.i2t ? q : k;
      dx[(p.word0 + word) * a.cols + (p.image - a.i0) * a.R + region] = total;
    }
  }
}

template <typename T>
PairArgs<T> pair_args(const Problem& p, const Tile& t, const at::Tensor& x) {
  PairArgs<T> a;
  a.x = x.const_data_ptr<T>();
  a.cols = x.size(1);
  a.word_first = p.word_first_d.const_data_ptr<int64_t>();
  a.w0 = t.w0;
  a.c0 = t.c0;
  a.i0 = t.i0;
  a.n_tile_images = t.i1 - t.i0;
  a.R = p.regions_per_image;
  a.i2t = p.i2t;
  a.norm = static_cast<int>(p.options.norm);
  a.agg = static_cast<int>(p.options.agg);
  a.lambda_softmax = static_cast<T>(p.options.lambda_softmax);
  a.lambda_lse = static_cast<T>(p.options.lambda_lse);
  a.query_norms = p.query_norms.const_data_ptr<T>();
  a.context_grams = p.context_grams.const_data_ptr<T>();
  a.gram_first = p.i2t ? p.gram_first_d.const_data_ptr<int64_t>() : nullptr;
  return a;
}

// Dynamic shared memory of a block: two nq × nk matrices and four values per query item.
template <typename T, typename Kernel>
size_t shared_bytes(const Problem& p, Kernel kernel) {
  const int64_t n = p.max_words * p.regions_per_image;
  const size_t bytes = (2 * n + 4 * std::max(p.max_words, p.regions_per_image)) * sizeof(T);
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(bytes <= static_cast<size_t>(limit), "jwae_ext: xattn_scores on CUDA holds ",
                    "a pair's words x regions attention in shared memory: ", p.max_words, " x ",
                    p.regions_per_image, " needs ", bytes, " bytes, the device has ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  return bytes;
}

// Scores of every pair of tile t into a (captions × images) block of `block`.
template <typename T>
at::Tensor tile_scores(const Problem& p, const Tile& t, at::Tensor& buffer, at::Tensor& block,
                       size_t smem) {
  const at::Tensor x = tile_products(p, t, buffer);
  const int64_t n_pairs = (t.c1 - t.c0) * (t.i1 - t.i0);
  at::Tensor out = block.narrow(0, 0, n_pairs).view({t.c1 - t.c0, t.i1 - t.i0});
  pair_scores_kernel<T><<<n_pairs, kThreads, smem, stream()>>>(pair_args<T>(p, t, x),
                                                               out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

int64_t max_tile_elements(const Problem& p) {
  int64_t words = 0;
  for (size_t t = 0; t + 1 < p.caption_tiles.size(); ++t) {
    words = std::max(words, p.word_first[p.caption_tiles[t + 1]] - p.word_first[p.caption_tiles[t]]);
  }
  return words * std::min(p.n_images, p.images_per_tile) * p.regions_per_image;
}

int64_t max_tile_pairs(const Problem& p) {
  int64_t captions = 0;
  for (size_t t = 0; t + 1 < p.caption_tiles.size(); ++t) {
    captions = std::max(captions, p.caption_tiles[t + 1] - p.caption_tiles[t]);
  }
  return captions * std::min(p.n_images, p.images_per_tile);
}

// Calls fn(tile, scores block (captions × images)) for the tiles keep(caption tile, image tile)
// accepts; every pass computes a tile by the same calls, so its scores have the same bits.
template <typename T, typename Keep, typename Fn>
void for_each_scored_tile(const Problem& p, Keep&& keep, Fn&& fn) {
  const size_t smem = shared_bytes<T>(p, pair_scores_kernel<T>);
  at::Tensor buffer = at::empty({max_tile_elements(p)}, p.regions.options());
  at::Tensor block = at::empty({max_tile_pairs(p)}, p.regions.options());
  for (int64_t ct = 0; ct + 1 < static_cast<int64_t>(p.caption_tiles.size()); ++ct) {
    for (int64_t it = 0; it < p.image_tiles(); ++it) {
      if (!keep(ct, it)) continue;
      const Tile t = tile_at(p, ct, it);
      fn(t, tile_scores<T>(p, t, buffer, block, smem));
    }
  }
}

at::Tensor xattn_scores_cuda(const at::Tensor& images, const at::Tensor& captions,
                             const at::Tensor& cap_lens, std::string_view direction,
                             double lambda_softmax, std::string_view agg, double lambda_lse,
                             std::string_view raw_feature_norm,
                             const std::optional<at::Tensor>& region_grams) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_inputs(images, captions, cap_lens);
  if (region_grams.has_value()) check_region_grams(*region_grams, images, options);
  const c10::cuda::CUDAGuard guard(images.device());
  const Problem p = make_problem(images, captions, cap_lens, options, region_grams);
  at::Tensor scores = at::empty({images.size(0), captions.size(0)}, p.regions.options());
  AT_DISPATCH_FLOATING_TYPES(p.regions.scalar_type(), "xattn_scores_cuda", [&] {
    for_each_scored_tile<scalar_t>(
        p, [](int64_t, int64_t) { return true; },
        [&](const Tile& t, const at::Tensor& block) {
          scores.narrow(0, t.i0, t.i1 - t.i0).narrow(1, t.c0, t.c1 - t.c0).copy_(block.t());
        });
  });
  return scores;
}

std::tuple<at::Tensor, at::Tensor> xattn_scores_backward_cuda(
    const at::Tensor& grad, const at::Tensor& images, const at::Tensor& captions,
    const at::Tensor& cap_lens, std::string_view direction, double lambda_softmax,
    std::string_view agg, double lambda_lse, std::string_view raw_feature_norm,
    std::array<bool, 2> grad_mask) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_backward_inputs(grad, images, captions, cap_lens);
  const c10::cuda::CUDAGuard guard(images.device());
  const Problem p = make_problem(images, captions, cap_lens, options);
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_regions = at::zeros_like(p.regions);
  at::Tensor grad_words = at::zeros_like(p.words);
  at::Tensor norm_grads = at::zeros_like(p.query_norms);
  at::Tensor gram_grads = at::zeros_like(p.context_grams);
  AT_DISPATCH_FLOATING_TYPES(p.regions.scalar_type(), "xattn_scores_backward_cuda", [&] {
    const size_t smem = shared_bytes<scalar_t>(p, pair_backward_kernel<scalar_t>);
    at::Tensor buffer = at::empty({max_tile_elements(p)}, p.regions.options());
    at::Tensor dbuffer = at::empty({max_tile_elements(p)}, p.regions.options());
    const int64_t R = p.regions_per_image;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t ct = 0; ct + 1 < static_cast<int64_t>(p.caption_tiles.size()); ++ct) {
      for (int64_t it = 0; it < p.image_tiles(); ++it) {
        const Tile t = tile_at(p, ct, it);
        const at::Tensor x = tile_products(p, t, buffer);
        at::Tensor dx = dbuffer.narrow(0, 0, x.numel()).view(x.sizes());
        const int64_t n_pairs = (t.c1 - t.c0) * (t.i1 - t.i0);
        pair_backward_kernel<scalar_t><<<n_pairs, kThreads, smem, stream()>>>(
            pair_args<scalar_t>(p, t, x), g.const_data_ptr<scalar_t>(), g.size(1),
            dx.mutable_data_ptr<scalar_t>(), norm_grads.mutable_data_ptr<scalar_t>(),
            gram_grads.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const at::Tensor regions = p.regions.narrow(0, t.i0 * R, (t.i1 - t.i0) * R);
        const at::Tensor words = p.words.narrow(0, t.w0, t.n_words);
        if (grad_mask[1]) grad_words.narrow(0, t.w0, t.n_words).addmm_(dx, regions);
        if (grad_mask[0]) grad_regions.narrow(0, t.i0 * R, (t.i1 - t.i0) * R).addmm_(dx.t(), words);
      }
    }
    // The query norms' and context Grams' terms.
    const at::Tensor query = p.i2t ? p.regions : p.words;
    at::Tensor grad_query = p.i2t ? grad_regions : grad_words;
    const at::Tensor scale =
        at::where(p.query_norms > 0, norm_grads / p.query_norms, at::zeros_like(norm_grads));
    grad_query.add_(query * scale.unsqueeze(1));
    if (!p.i2t) {
      const at::Tensor v = p.regions.view({p.n_images, R, -1});
      const at::Tensor dg = gram_grads;
      grad_regions.view({p.n_images, R, -1}).baddbmm_(dg + dg.transpose(1, 2), v);
    } else {
      const at::Tensor lens = cap_lens.to(at::kCPU).contiguous();
      const int64_t* len = lens.const_data_ptr<int64_t>();
      int64_t offset = 0;
      for (int64_t c = 0; c < captions.size(0); ++c) {
        const int64_t n = len[c];
        const at::Tensor dg = gram_grads.narrow(0, offset, n * n).view({n, n});
        const at::Tensor w = p.words.narrow(0, p.word_first[c], n);
        grad_words.narrow(0, p.word_first[c], n).addmm_(dg + dg.t(), w);
        offset += n * n;
      }
    }
  });
  at::Tensor grad_images = at::empty({0}, images.options());
  at::Tensor grad_captions = at::empty({0}, images.options());
  if (grad_mask[0]) grad_images = grad_regions.view(images.sizes()).to(images.scalar_type());
  if (grad_mask[1]) {
    grad_captions = at::zeros(captions.sizes(), images.options());
    std::vector<int64_t> rows;
    const at::Tensor lens = cap_lens.to(at::kCPU).contiguous();
    const int64_t* len = lens.const_data_ptr<int64_t>();
    for (int64_t c = 0; c < captions.size(0); ++c) {
      for (int64_t w = 0; w < len[c]; ++w) rows.push_back(c * captions.size(1) + w);
    }
    const at::Tensor index = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(images.device());
    grad_captions.view({-1, captions.size(2)}).index_copy_(0, index, grad_words.to(images.scalar_type()));
  }
  return {grad_images, grad_captions};
}

// Exact ranks: own pairs' scores from the tiles holding one, then one counting pass over every
// tile (the same tiles, the same bits). The CPU kernel keeps the own tiles' scores instead of
// computing those tiles twice; here they are recomputed (a few tiles on a GPU). A tie counts
// against the query (§3.3), and is counted apart as well. Part `part` of `parts` computes every
// threshold and counts the pairs of its caption tiles only (as on the CPU).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> xattn_ranks_cuda(
    const at::Tensor& images, const at::Tensor& captions, const at::Tensor& cap_lens,
    const at::Tensor& cap_to_img, std::string_view direction, double lambda_softmax,
    std::string_view agg, double lambda_lse, std::string_view raw_feature_norm, int64_t part,
    int64_t parts) {
  const Options options =
      parse_options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm);
  check_rank_inputs(images, captions, cap_lens, cap_to_img);
  check_part(part, parts);
  const int64_t n_images = images.size(0), n_captions = captions.size(0);
  const c10::cuda::CUDAGuard guard(images.device());
  const Problem p = make_problem(images, captions, cap_lens, options);
  const at::Tensor owner_host = cap_to_img.to(at::kCPU).contiguous();
  const int64_t* owner = owner_host.const_data_ptr<int64_t>();
  const int64_t n_caption_tiles = static_cast<int64_t>(p.caption_tiles.size()) - 1;
  std::vector<std::vector<int64_t>> own_tiles(n_caption_tiles);
  for (int64_t ct = 0; ct < n_caption_tiles; ++ct) {
    for (int64_t c = p.caption_tiles[ct]; c < p.caption_tiles[ct + 1]; ++c) {
      own_tiles[ct].push_back(owner[c] / p.images_per_tile);
    }
  }
  auto holds_own_pair = [&](int64_t ct, int64_t it) {
    return std::find(own_tiles[ct].begin(), own_tiles[ct].end(), it) != own_tiles[ct].end();
  };
  const at::Tensor owner_d = cap_to_img.contiguous();
  at::Tensor cap_thr = at::empty({n_captions}, p.regions.options());
  at::Tensor i2t = at::zeros({n_images}, owner_d.options());
  at::Tensor t2i = at::zeros({n_captions}, owner_d.options());
  at::Tensor i2t_ties = at::zeros({n_images}, owner_d.options());
  at::Tensor t2i_ties = at::zeros({n_captions}, owner_d.options());
  auto own_mask = [&](const Tile& t) {  // (captions × images) of the tile: the own pairs
    const at::Tensor images_of = at::arange(t.i0, t.i1, owner_d.options());
    return owner_d.narrow(0, t.c0, t.c1 - t.c0).unsqueeze(1) == images_of.unsqueeze(0);
  };
  AT_DISPATCH_FLOATING_TYPES(p.regions.scalar_type(), "xattn_ranks_cuda", [&] {
    for_each_scored_tile<scalar_t>(p, holds_own_pair, [&](const Tile& t, const at::Tensor& s) {
      const at::Tensor own = own_mask(t);
      const at::Tensor has = own.any(1);
      const at::Tensor value = s.masked_fill(own.logical_not(), 0).sum(1);  // one own per row
      at::Tensor target = cap_thr.narrow(0, t.c0, t.c1 - t.c0);
      target.copy_(at::where(has, value, target));
    });
    const at::Tensor img_thr =
        at::full({n_images}, -std::numeric_limits<double>::infinity(), p.regions.options())
            .scatter_reduce_(0, owner_d, cap_thr, "amax", /*include_self=*/true);
    const std::pair<int64_t, int64_t> counted = part_range(n_caption_tiles, part, parts);
    for_each_scored_tile<scalar_t>(
        p, [&](int64_t ct, int64_t) { return ct >= counted.first && ct < counted.second; },
        [&](const Tile& t, const at::Tensor& s) {
          const at::Tensor other = own_mask(t).logical_not();
          const at::Tensor img_t = img_thr.narrow(0, t.i0, t.i1 - t.i0).unsqueeze(0);
          const at::Tensor cap_t = cap_thr.narrow(0, t.c0, t.c1 - t.c0).unsqueeze(1);
          i2t.narrow(0, t.i0, t.i1 - t.i0).add_((s >= img_t).logical_and(other).sum(0));
          t2i.narrow(0, t.c0, t.c1 - t.c0).add_((s >= cap_t).logical_and(other).sum(1));
          i2t_ties.narrow(0, t.i0, t.i1 - t.i0).add_((s == img_t).logical_and(other).sum(0));
          t2i_ties.narrow(0, t.c0, t.c1 - t.c0).add_((s == cap_t).logical_and(other).sum(1));
        });
  });
  return {i2t, t2i, i2t_ties, t2i_ties};
}

at::Tensor xattn_region_grams_cuda(const at::Tensor& images) {
  check_region_images(images);
  const c10::cuda::CUDAGuard guard(images.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return region_grams_cuda(images.to(accumulation_dtype(images.scalar_type())).contiguous());
}

}  // namespace
}  // namespace jwae::xattn

TORCH_LIBRARY_IMPL(jwae_ext, CUDA, m) {
  m.impl("xattn_region_grams", &jwae::xattn::xattn_region_grams_cuda);
  m.impl("xattn_scores", &jwae::xattn::xattn_scores_cuda);
  m.impl("xattn_scores_backward", &jwae::xattn::xattn_scores_backward_cuda);
  m.impl("xattn_ranks", &jwae::xattn::xattn_ranks_cuda);
}
