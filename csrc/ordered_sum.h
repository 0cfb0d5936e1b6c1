// A parallel CPU sum whose result does not depend on the number of threads: fixed blocks, each
// summed in order by one thread, then the block sums in order.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <numeric>
#include <vector>

namespace jwae {

// sum_{i < n} term(i) in double; `term` may also write per-element outputs (gradients).
template <typename Term>
double ordered_sum(int64_t n, const Term& term) {
  constexpr int64_t kBlock = int64_t{1} << 14;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double s = 0;
      for (int64_t i = b * kBlock, stop = std::min(n, i + kBlock); i < stop; ++i) s += term(i);
      partial[b] = s;
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

}  // namespace jwae
