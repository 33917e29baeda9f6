// Kernels that check the simulator itself (tests/test_cuda_sim.py): the intrinsics against their definitions,
// and the errors a GPU would give (or, for a barrier that some threads skip, should give) for broken kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace pygpt {
namespace {

// Per thread of one block of x.numel() threads: [xor-shuffle warp sum, inclusive warp scan (shfl_up), the
// ballot of x > 0, lane 0's value (shfl), __syncthreads_or of x > 0, the block sum through shared memory].
__global__ void intrinsics_kernel(const float* x, float* out) {
  __shared__ float part[32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const float v = x[t];
  float sum = v;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  float scan = v;
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(0xffffffffu, scan, o);
    if (lane >= o) scan += n;
  }
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0.f);
  const float first = __shfl_sync(0xffffffffu, v, 0);
  const int any = __syncthreads_or(v > 0.f);
  if (lane == 0) part[warp] = sum;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += part[w];
  float* o = out + 6 * t;
  o[0] = sum;
  o[1] = scan;
  o[2] = static_cast<float>(ballot);
  o[3] = first;
  o[4] = static_cast<float>(any);
  o[5] = total;
}

// The first warp returns early, the rest wait at a barrier it never reaches.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// A shuffle over a partial warp (the block has 48 threads).
__global__ void partial_warp_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1); }

// A missing barrier: thread 0 sums what the others write without waiting for them.
__global__ void racy_sum_kernel(const float* x, float* out) {
  __shared__ float vals[1024];
  vals[threadIdx.x] = x[threadIdx.x];
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (unsigned i = 0; i < blockDim.x; ++i) s += vals[i];
    out[0] = s;
  }
}

at::Tensor sim_intrinsics(const at::Tensor& x) {
  auto out = at::zeros({x.numel(), 6}, x.options());
  intrinsics_kernel<<<1, x.numel(), 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(),
                                                                           out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sim_broken(int64_t which, int64_t blocks) {
  auto out = at::zeros({1024}, at::kFloat);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (which == 0) divergent_barrier_kernel<<<blocks, 64, 0, stream>>>(out.data_ptr<float>());
  if (which == 1) partial_warp_kernel<<<blocks, 48, 0, stream>>>(out.data_ptr<float>());
  if (which == 2) divergent_barrier_kernel<<<blocks, 2048, 0, stream>>>(out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sim_racy_sum(const at::Tensor& x) {
  auto out = at::zeros({1}, x.options());
  racy_sum_kernel<<<1, x.numel(), 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(),
                                                                         out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) {
  m.impl("sim_intrinsics", &sim_intrinsics);
  m.impl("sim_broken", &sim_broken);
  m.impl("sim_racy_sum", &sim_racy_sum);
}

}  // namespace pygpt
