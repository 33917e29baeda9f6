// rotary, CUDA C++: one block per (b, t) row; threads walk the H * D/2 rotation pairs of the row. The
// alternative to the Triton kernel (kernels/rotary.py), selected with PYGPT_CUDA_BACKEND=cuda.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../checks.h"

namespace pygpt {
namespace {

template <typename scalar_t, typename index_t>
__global__ void rotary_kernel(const scalar_t* __restrict__ x, const index_t* __restrict__ pos,
                              scalar_t* __restrict__ out, int64_t T, int H, int D, int64_t pos_batch_stride,
                              double log_base, float sign) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = blockIdx.x;
  const int64_t b = row / T, t = row % T;
  const float p = static_cast<float>(pos[b * pos_batch_stride + t]);
  const int half = D / 2;
  const scalar_t* xr = x + row * H * D;
  scalar_t* outr = out + row * H * D;
  for (int j = threadIdx.x; j < H * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    // base^(-2i/D) in double rounded to float, then fp32 angles: the same values as every other backend.
    const float inv_freq = static_cast<float>(exp(-2.0 * i / D * log_base));
    // fp32 angles; their cos and sin in acc_t (double for float64 x, as the reference and the CPU kernel).
    const float angle = p * inv_freq;
    acc_t s, c;
    if constexpr (std::is_same_v<acc_t, double>) {
      sincos(static_cast<double>(angle), &s, &c);
    } else {
      sincosf(angle, &s, &c);
    }
    s *= sign;
    const acc_t a = static_cast<acc_t>(xr[h * D + i]), d = static_cast<acc_t>(xr[h * D + i + half]);
    outr[h * D + i] = static_cast<scalar_t>(a * c - d * s);
    outr[h * D + i + half] = static_cast<scalar_t>(d * c + a * s);
  }
}

at::Tensor rotary_cuda(const at::Tensor& x, const at::Tensor& positions, double base, bool inverse) {
  check_rotary_args(x, positions);
  TORCH_CHECK(x.is_cuda(), "pygpt.rotary_cuda: x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t rows = B * T;
  if (rows == 0 || H == 0 || D == 0) return out;
  const int64_t pos_batch_stride = positions.dim() == 2 ? T : 0;
  const int threads = static_cast<int>(std::min<int64_t>(256, ((H * D / 2 + 31) / 32) * 32));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_cuda", [&] {
    if (positions.scalar_type() == at::kLong) {
      rotary_kernel<scalar_t, int64_t><<<rows, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), positions.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), T, H, D,
          pos_batch_stride, std::log(base), inverse ? -1.f : 1.f);
    } else {
      rotary_kernel<scalar_t, int32_t><<<rows, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), positions.data_ptr<int32_t>(), out.data_ptr<scalar_t>(), T, H, D,
          pos_batch_stride, std::log(base), inverse ? -1.f : 1.f);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) { m.impl("rotary_cuda", &rotary_cuda); }

}  // namespace pygpt
