// A guard that makes the calling thread's BLAS calls single-threaded, so that a GEMM's bits depend
// on its shape and operands only, never on the thread count (the CPU kernels' determinism
// contract, docs/design.md#tiling). Used by the tile traversal (tiling.h) and by the fused linear
// cross-entropy's GEMMs (linear_cross_entropy.cpp).
#pragma once

// MKL's C entry point (mkl_service.h). Weak: where torch's BLAS is not MKL the symbol is absent,
// the pointer null, and SingleThreadedBlas does nothing.
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

namespace jwae {

// While alive, the calling thread's BLAS calls run MKL's one-thread code. Why: MKL picks its GEMM
// algorithm, and with it the summation order (the last bits), from the number of threads it may
// use, which torch sets per calling thread to torch.get_num_threads(); inside a parallel region
// MKL then runs that algorithm on one thread. So the same tile came out differently with 1, 2 or
// 3 threads (measured: 256×1024 tiles of a 1100×1100×1024 fp32 product, and the 256×16 backward
// products over K = 1024) until every tile GEMM ran under this guard.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : active_(MKL_Set_Num_Threads_Local != nullptr) {
    if (active_) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);  // 0: back to MKL's global setting
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  bool active_;
  int previous_ = 0;
};

}  // namespace jwae
