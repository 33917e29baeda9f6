// Kernels that check the simulator itself (tests/test_cuda_sim.py): the intrinsics against their definitions,
// and what it must catch in broken kernels - errors a GPU gives (or should give), and reads that a GPU may
// serve with stale or foreign data.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace pygpt {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// Per thread of one block of x.numel() threads: [xor-shuffle warp sum, inclusive warp scan (shfl_up), the
// ballot of x > 0, the value of lane (7 lane + 3) % 32 (shfl), __syncthreads_or of x > 0, the block sum
// through shared memory].
__global__ void intrinsics_kernel(const float* x, float* out) {
  __shared__ float part[32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const float v = x[t];
  float sum = v;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
  float scan = v;
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(kFull, scan, o);
    if (lane >= o) scan += n;
  }
  const unsigned ballot = __ballot_sync(kFull, v > 0.f);
  const float other = __shfl_sync(kFull, v, (7 * lane + 3) & 31);
  const int any = __syncthreads_or(v > 0.f);
  if (lane == 0) part[warp] = sum;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += part[w];
  float* o = out + 6 * t;
  o[0] = sum;
  o[1] = scan;
  o[2] = static_cast<float>(ballot);
  o[3] = other;
  o[4] = static_cast<float>(any);
  o[5] = total;
}

// The first warp returns early, the rest wait at a barrier it never reaches.
__global__ void divergent_return_kernel(float* out) {
  if (threadIdx.x < 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// A shuffle over a partial warp (the block has 48 threads).
__global__ void partial_warp_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(kFull, 1.f, 1); }

// Two halves of the block wait at two different barriers.
__global__ void split_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Missing barriers: 0, thread 0 sums what the others write without waiting for them; 1, each thread reads what
// the thread before it wrote; 2, every block reads what only block 0 wrote (shared memory is per block).
__global__ void racy_kernel(int which, const float* x, float* out) {
  __shared__ float vals[1024];
  __shared__ float first;
  const unsigned t = threadIdx.x;
  vals[t] = x[t];
  if (which == 0 && t == 0) {
    float s = 0.f;
    for (unsigned i = 0; i < blockDim.x; ++i) s += vals[i];
    out[0] = s;
  }
  if (which == 1) out[t] = t > 0 ? vals[t - 1] : 0.f;
  if (which == 2) {
    if (blockIdx.x == 0 && t == 0) first = x[0];
    __syncthreads();
    if (t == 0) out[blockIdx.x] = first;
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
  if (which == 0) divergent_return_kernel<<<blocks, 64, 0, stream>>>(out.data_ptr<float>());
  if (which == 1) partial_warp_kernel<<<blocks, 48>>>(out.data_ptr<float>());
  if (which == 2) divergent_return_kernel<<<blocks, 2048, 0>>>(out.data_ptr<float>());
  if (which == 3) split_barrier_kernel<<<dim3(blocks), dim3(64), 0, stream>>>(out.data_ptr<float>());
  if (which == 4) split_barrier_kernel<<<dim3(1, blocks), dim3(2, 1, 65), 0, stream>>>(out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sim_racy(int64_t which, const at::Tensor& x, int64_t blocks) {
  auto out = at::zeros({std::max<int64_t>(x.numel(), blocks)}, x.options());
  racy_kernel<<<blocks, x.numel(), 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<int>(which), x.data_ptr<float>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pygpt_cuda_sim, m) {
  m.def("sim_intrinsics", &sim_intrinsics);
  m.def("sim_broken", &sim_broken);
  m.def("sim_racy", &sim_racy);
}

}  // namespace pygpt
