// KV cache ops, CUDA C++: kv_append (one block per (b, t, head) row copy, then a counter update once every row
// has read lengths) and kv_evict (counters only). The alternatives to kernels/kv_cache.py, selected with
// PYGPT_CUDA_BACKEND=cuda. Neither touches more than the new rows, so both cost the same at any cache size.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"

namespace pygpt {
namespace {

template <typename scalar_t>
__global__ void append_rows_kernel(scalar_t* __restrict__ k_cache, scalar_t* __restrict__ v_cache,
                                   const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                   const int32_t* __restrict__ lengths, int64_t skb, int64_t skt, int64_t skh,
                                   int64_t svb, int64_t svt, int64_t svh, int Tn, int Hkv, int C, int D) {
  const int64_t row = blockIdx.x;  // (b, t, h)
  const int h = row % Hkv, t = (row / Hkv) % Tn;
  const int64_t b = row / (static_cast<int64_t>(Hkv) * Tn);
  // In [0, C) whatever the counters hold (% keeps the dividend's sign): a negative length from a caller's
  // corrupted counters must not write outside the cache.
  int slot = static_cast<int>((static_cast<int64_t>(lengths[b]) + t) % C);
  slot += slot < 0 ? C : 0;
  const int64_t dst = ((b * Hkv + h) * C + slot) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    k_cache[dst + d] = k[b * skb + t * skt + h * skh + d];
    v_cache[dst + d] = v[b * svb + t * svt + h * svh + d];
  }
}

__global__ void advance_kernel(int32_t* lengths, int32_t* starts, int B, int Tn, int C) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int32_t length = lengths[b] + Tn;
  lengths[b] = length;
  starts[b] = max(starts[b], length - C);
}

__global__ void evict_kernel(int32_t* lengths, int32_t* starts, const int32_t* counts, int B) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  if (counts[b] < 0) {
    lengths[b] = 0;
    starts[b] = 0;
  } else {
    starts[b] += min(counts[b], lengths[b] - starts[b]);  // (starts + counts may overflow)
  }
}

void check_counters(const char* op, const at::Tensor& lengths, const at::Tensor& starts, int64_t B) {
  for (auto [name, t] : {std::pair{"lengths", &lengths}, {"starts", &starts}}) {
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kInt && t->dim() == 1 && t->size(0) == B &&
                    t->is_contiguous(),
                "pygpt.", op, ": ", name, " must be a contiguous CUDA int32 tensor of shape (", B, ",)");
  }
}

void kv_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& lengths, at::Tensor& starts,
                    const at::Tensor& k, const at::Tensor& v) {
  check_float_tensor("kv_append", "k_cache", k_cache, 4);
  TORCH_CHECK(k_cache.is_cuda() && v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "pygpt.kv_append: k_cache and v_cache must be contiguous CUDA tensors of one shape and dtype");
  const int64_t B = k_cache.size(0), Hkv = k_cache.size(1), C = k_cache.size(2), D = k_cache.size(3);
  check_counters("kv_append", lengths, starts, B);
  for (auto [name, t] : {std::pair{"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == B && t->size(2) == Hkv && t->size(3) == D && t->stride(3) == 1 &&
                    t->scalar_type() == k_cache.scalar_type(),
                "pygpt.kv_append: ", name, " must be (B, Tn, Hkv, D) = (", B, ", Tn, ", Hkv, ", ", D,
                ") in the cache's dtype with a contiguous last dim, got ", t->sizes());
    check_same_device("kv_append", "k_cache", k_cache, name, *t);
  }
  const int64_t Tn = k.size(1);
  TORCH_CHECK(Tn <= C, "pygpt.kv_append: cannot append ", Tn, " tokens at once to a cache of ", C, " slots");
  const c10::cuda::CUDAGuard guard(k_cache.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (B * Tn > 0) {
    const int threads = static_cast<int>(std::min<int64_t>(256, ((D + 31) / 32) * 32));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "kv_append_cuda", [&] {
      append_rows_kernel<scalar_t><<<B * Tn * Hkv, threads, 0, stream>>>(
          k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          lengths.data_ptr<int32_t>(), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
          static_cast<int>(Tn), static_cast<int>(Hkv), static_cast<int>(C), static_cast<int>(D));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (B == 0) return;  // (a grid of zero blocks is a launch error)
  advance_kernel<<<(B + 255) / 256, 256, 0, stream>>>(lengths.data_ptr<int32_t>(), starts.data_ptr<int32_t>(),
                                                      static_cast<int>(B), static_cast<int>(Tn), static_cast<int>(C));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void kv_evict_cuda(at::Tensor& lengths, at::Tensor& starts, const at::Tensor& counts) {
  const int64_t B = lengths.size(0);
  check_counters("kv_evict", lengths, starts, B);
  TORCH_CHECK(counts.is_cuda() && counts.scalar_type() == at::kInt && counts.sizes() == lengths.sizes() &&
                  counts.is_contiguous(),
              "pygpt.kv_evict: counts must be a contiguous CUDA int32 tensor of shape (", B, ",)");
  if (B == 0) return;  // (a grid of zero blocks is a launch error)
  const c10::cuda::CUDAGuard guard(lengths.device());
  evict_kernel<<<(B + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      lengths.data_ptr<int32_t>(), starts.data_ptr<int32_t>(), counts.data_ptr<int32_t>(), static_cast<int>(B));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) {
  m.impl("kv_append_cuda", &kv_append_cuda);
  m.impl("kv_evict_cuda", &kv_evict_cuda);
}

}  // namespace pygpt
