// A parallel CPU sum whose result does not depend on the number of threads: fixed blocks, each
// summed in order by one thread, then the block sums in order.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace jwae {

// sum over the fixed blocks [begin, end) of [0, n) of block_sum(begin, end) (a double), in block
// order; for element loops that sum a block themselves (vectorized, say).
template <typename BlockSum>
double ordered_block_sum(int64_t n, const BlockSum& block_sum) {
  constexpr int64_t kBlock = int64_t{1} << 14;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      partial[b] = block_sum(b * kBlock, std::min(n, (b + 1) * kBlock));
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

// sum_{i < n} term(i) in double; `term` may also write per-element outputs (gradients).
template <typename Term>
double ordered_sum(int64_t n, const Term& term) {
  return ordered_block_sum(n, [&](int64_t begin, int64_t end) {
    double s = 0;
    for (int64_t i = begin; i < end; ++i) s += term(i);
    return s;
  });
}

}  // namespace jwae
