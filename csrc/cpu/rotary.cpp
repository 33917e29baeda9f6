// rotary, CPU: one parallel task per chunk of (b, t) rows; the D/2 angles of a row are computed once and shared
// by its H heads, and the inner loop over frequency pairs is contiguous so the compiler vectorises it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace pygpt {
namespace {

template <typename scalar_t, typename index_t>
void rotary_rows(const scalar_t* x, const index_t* pos, scalar_t* out, int64_t T, int64_t H, int64_t D,
                 int64_t pos_batch_stride, double base, bool inverse, int64_t row_begin, int64_t row_end) {
  // Half and bfloat16 compute in float; float64 stays in double so gradcheck-style tests stay exact.
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t half = D / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    // base^(-2i/D) in double rounded to float: the same value on every backend.
    inv_freq[i] = static_cast<float>(std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D)));
  }
  std::vector<acc_t> cos_v(half), sin_v(half);
  const acc_t sign = inverse ? acc_t(-1) : acc_t(1);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / T, t = row % T;
    const float p = static_cast<float>(pos[b * pos_batch_stride + t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = p * inv_freq[i];  // fp32 angles, as the reference
      cos_v[i] = std::cos(static_cast<acc_t>(angle));
      sin_v[i] = sign * std::sin(static_cast<acc_t>(angle));
    }
    const scalar_t* xr = x + row * H * D;
    scalar_t* outr = out + row * H * D;
    for (int64_t h = 0; h < H; ++h) {
      const scalar_t* x1 = xr + h * D;
      const scalar_t* x2 = x1 + half;
      scalar_t* o1 = outr + h * D;
      scalar_t* o2 = o1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const acc_t a = static_cast<acc_t>(x1[i]), c = static_cast<acc_t>(x2[i]);
        o1[i] = static_cast<scalar_t>(a * cos_v[i] - c * sin_v[i]);
        o2[i] = static_cast<scalar_t>(c * cos_v[i] + a * sin_v[i]);
      }
    }
  }
}

at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& positions, double base, bool inverse) {
  check_rotary_args(x, positions);
  TORCH_CHECK(x.device().is_cpu(), "pygpt.rotary: x must be a CPU tensor for the CPU kernel, got ", x.device());
  auto out = at::empty_like(x);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t rows = B * T;
  if (rows == 0 || H == 0 || D == 0) return out;
  const int64_t pos_batch_stride = positions.dim() == 2 ? T : 0;
  // Enough rows per task to amortise the angle computation and task overhead.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H * D));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (positions.scalar_type() == at::kLong) {
      const int64_t* pp = positions.data_ptr<int64_t>();
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        rotary_rows(xp, pp, op, T, H, D, pos_batch_stride, base, inverse, begin, end);
      });
    } else {
      const int32_t* pp = positions.data_ptr<int32_t>();
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        rotary_rows(xp, pp, op, T, H, D, pos_batch_stride, base, inverse, begin, end);
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) { m.impl("rotary", &rotary_cpu); }

}  // namespace pygpt
