// tests/cuda_sim: simulated launches run at once on the calling thread, so there is one (empty) stream.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
