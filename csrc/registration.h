// How a device registers an operator that is written once for every device. Such an operator
// takes its device's kernels as its first argument, `op(const Kernels& kernels, args...)`;
// OnDevice<op, kernels>::call is `op` with that argument bound to one device's kernels, the
// function the device registers (TORCH_LIBRARY_IMPL), so no device writes a wrapper of its own.
// The operators set the device guard themselves (c10::OptionalDeviceGuard: a no-op on the CPU).
#pragma once

namespace jwae {

template <auto op, auto kernels>
struct OnDevice;

template <typename R, typename Kernels, typename... Args, R (*op)(const Kernels&, Args...),
          const Kernels& (*kernels)()>
struct OnDevice<op, kernels> {
  static R call(Args... args) { return op(kernels(), args...); }
};

}  // namespace jwae
