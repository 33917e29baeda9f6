// tests/cuda_sim: the device guard of a simulated launch does nothing (there is one simulated device).
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
