// fused_linear, CPU: each row's norm is computed once into a small buffer (rounded to weight's dtype, as autocast
// rounds a matmul's input), then one task per block of output columns takes each weight row once, while it is in
// cache, against every row's buffer, and applies bias, activation and residual before the store. At a decode
// step's sizes the call is bound by per-op overhead, so what counts is one call instead of five; the dot products
// are contiguous loops compiled for AVX-512 / AVX2 / baseline.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "common.h"

namespace pygpt {
namespace {

constexpr const char* kOp = "fused_linear";
enum Norm : int64_t { kNoNorm = 0, kLayerNorm = 1, kRmsNorm = 2 };
enum Act : int64_t { kIdentity = 0, kGelu = 1, kSwiglu = 2 };

template <typename weight_t, typename acc_t>
struct LinearArgs {
  const weight_t* weight;  // (N_w, K)
  const acc_t* h;          // (M, K) the normalised rows, already rounded to weight_t
  const acc_t* bias;       // (N_w,) or null
  void* out;               // (M, N): weight_t, or the residual's dtype
  const void* residual;    // (M, N) or null
  bool residual_is_float;  // a float32 residual with fp16/bf16 weights (else it has weight's dtype)
  int64_t M, N, K, act;
};

// h . w[j] for kCols weight rows at once: one vector accumulator chain per row run side by side, so the FMAs are
// not serialised on one chain's latency (a single dot of K = 128 is 8 dependent FMAs), and h is loaded once.
constexpr int64_t kCols = 4;

template <typename weight_t, typename acc_t>
PYGPT_INLINE void dot4(const acc_t* __restrict__ h, const weight_t* __restrict__ w, int64_t K, acc_t* out) {
  const weight_t* __restrict__ w0 = w;
  const weight_t* __restrict__ w1 = w + K;
  const weight_t* __restrict__ w2 = w + 2 * K;
  const weight_t* __restrict__ w3 = w + 3 * K;
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t k = 0; k < K; ++k) {
    const acc_t hk = h[k];
    s0 += hk * static_cast<acc_t>(w0[k]);
    s1 += hk * static_cast<acc_t>(w1[k]);
    s2 += hk * static_cast<acc_t>(w2[k]);
    s3 += hk * static_cast<acc_t>(w3[k]);
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

template <typename weight_t, typename acc_t>
PYGPT_INLINE acc_t dot(const acc_t* __restrict__ h, const weight_t* __restrict__ w, int64_t K) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < K; ++k) sum += h[k] * static_cast<acc_t>(w[k]);
  return sum;
}

// out[m][j] = h[m] . w[n + j] for the kCols (or fewer, at the end) weight rows from n.
template <typename weight_t, typename acc_t>
PYGPT_INLINE void dots(const acc_t* h, const weight_t* w, int64_t n, int64_t cols, int64_t M, int64_t K,
                       acc_t (*out)[kCols]) {
  for (int64_t m = 0; m < M; ++m) {
    if (cols == kCols) {
      dot4(h + m * K, w + n * K, K, out[m]);
    } else {
      for (int64_t j = 0; j < cols; ++j) out[m][j] = dot(h + m * K, w + (n + j) * K, K);
    }
  }
}

template <typename acc_t>
PYGPT_INLINE acc_t gelu(acc_t y) {
  return acc_t(0.5) * y * (acc_t(1) + std::erf(y * acc_t(0.70710678118654752440)));
}

template <typename acc_t>
PYGPT_INLINE acc_t silu(acc_t y) {
  return y / (acc_t(1) + std::exp(-y));
}

// Output columns [n_begin, n_end) of every row, kCols at a time (a task's M rows reuse each weight row from L1).
template <typename weight_t, typename acc_t>
PYGPT_INLINE void columns_task(const LinearArgs<weight_t, acc_t>& a, int64_t n_begin, int64_t n_end) {
  const int64_t K = a.K, N = a.N, M = a.M;
  std::vector<acc_t> gate_buf(M * kCols), up_buf(M * kCols);
  auto* gate = reinterpret_cast<acc_t(*)[kCols]>(gate_buf.data());
  auto* up = reinterpret_cast<acc_t(*)[kCols]>(up_buf.data());
  for (int64_t n = n_begin; n < n_end; n += kCols) {
    const int64_t cols = std::min(kCols, n_end - n);
    dots(a.h, a.weight, n, cols, M, K, gate);
    if (a.act == kSwiglu) dots(a.h, a.weight, N + n, cols, M, K, up);  // the second half's rows
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t j = 0; j < cols; ++j) {
        acc_t y = gate[m][j] + (a.bias ? a.bias[n + j] : acc_t(0));
        if (a.act == kGelu) {
          y = gelu(y);
        } else if (a.act == kSwiglu) {
          y = silu(y) * (up[m][j] + (a.bias ? a.bias[N + n + j] : acc_t(0)));
        }
        const acc_t rounded = static_cast<acc_t>(static_cast<weight_t>(y));  // the matmul's output dtype
        const int64_t i = m * N + n + j;
        if (a.residual == nullptr) {
          static_cast<weight_t*>(a.out)[i] = static_cast<weight_t>(rounded);
        } else if (a.residual_is_float) {
          static_cast<float*>(a.out)[i] = static_cast<const float*>(a.residual)[i] + static_cast<float>(rounded);
        } else {
          const acc_t r = static_cast<acc_t>(static_cast<const weight_t*>(a.residual)[i]);
          static_cast<weight_t*>(a.out)[i] = static_cast<weight_t>(r + rounded);
        }
      }
    }
  }
}

// One clone set per weight dtype (target_clones needs concrete functions).
#define PYGPT_LINEAR_TASK(weight_t, acc_t)                                                                  \
  PYGPT_MULTIVERSION void run_columns(const LinearArgs<weight_t, acc_t>& a, int64_t begin, int64_t end) { \
    columns_task(a, begin, end);                                                                           \
  }
PYGPT_LINEAR_TASK(float, float)
PYGPT_LINEAR_TASK(double, double)
PYGPT_LINEAR_TASK(at::Half, float)
PYGPT_LINEAR_TASK(at::BFloat16, float)

// h (M, K) = norm(x), rounded to weight_t. x is already in acc_t.
template <typename weight_t, typename acc_t>
void normalise_rows(const acc_t* x, int64_t M, int64_t K, int64_t norm, const acc_t* gamma, const acc_t* beta,
                    double eps, acc_t* h) {
  for (int64_t m = 0; m < M; ++m) {
    const acc_t* xr = x + m * K;
    acc_t* hr = h + m * K;
    acc_t shift = 0, scale = 1;
    if (norm == kLayerNorm) {
      acc_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += xr[k];
      shift = sum / static_cast<acc_t>(K);
      acc_t sq = 0;
      for (int64_t k = 0; k < K; ++k) sq += (xr[k] - shift) * (xr[k] - shift);
      scale = acc_t(1) / std::sqrt(sq / static_cast<acc_t>(K) + static_cast<acc_t>(eps));
    } else if (norm == kRmsNorm) {
      acc_t sq = 0;
      for (int64_t k = 0; k < K; ++k) sq += xr[k] * xr[k];
      scale = acc_t(1) / std::sqrt(sq / static_cast<acc_t>(K) + static_cast<acc_t>(eps));
    }
    for (int64_t k = 0; k < K; ++k) {
      acc_t v = (xr[k] - shift) * scale;
      if (gamma) v *= gamma[k];
      if (beta) v += beta[k];
      hr[k] = static_cast<acc_t>(static_cast<weight_t>(v));
    }
  }
}

void check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                int64_t norm, int64_t act, const std::optional<at::Tensor>& residual) {
  check_float_tensor(kOp, "x", x, 2);
  check_float_tensor(kOp, "weight", weight, 2);
  check_same_device(kOp, "weight", weight, "x", x);
  TORCH_CHECK(norm >= kNoNorm && norm <= kRmsNorm, "pygpt.fused_linear: norm must be 0, 1 or 2, got ", norm);
  TORCH_CHECK(act >= kIdentity && act <= kSwiglu, "pygpt.fused_linear: act must be 0, 1 or 2, got ", act);
  const int64_t K = weight.size(1), N_w = weight.size(0);
  TORCH_CHECK(x.size(1) == K, "pygpt.fused_linear: x must be (M, K) with K = weight.size(1) = ", K, ", got ",
              x.sizes());
  TORCH_CHECK(act != kSwiglu || N_w % 2 == 0, "pygpt.fused_linear: swiglu needs weight (2N, K), got ",
              weight.sizes());
  if (bias) {
    check_float_tensor(kOp, "bias", *bias, 1);
    TORCH_CHECK(bias->size(0) == N_w, "pygpt.fused_linear: bias must have shape (", N_w, ",), got ", bias->sizes());
  }
  TORCH_CHECK(norm == kNoNorm || norm_weight, "pygpt.fused_linear: a norm needs norm_weight");
  for (const auto* t : {&norm_weight, &norm_bias}) {
    if (*t) {
      check_float_tensor(kOp, "norm_weight / norm_bias", **t, 1);
      TORCH_CHECK((*t)->size(0) == K, "pygpt.fused_linear: norm_weight / norm_bias must have shape (", K,
                  ",), got ", (*t)->sizes());
    }
  }
  if (residual) {
    const int64_t N = act == kSwiglu ? N_w / 2 : N_w;
    check_float_tensor(kOp, "residual", *residual, 2);
    TORCH_CHECK(residual->size(0) == x.size(0) && residual->size(1) == N, "pygpt.fused_linear: residual must "
                "have shape (", x.size(0), ", ", N, "), got ", residual->sizes());
    const auto dt = residual->scalar_type();
    const bool half = weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16;
    TORCH_CHECK(dt == weight.scalar_type() || (half && dt == at::kFloat), "pygpt.fused_linear: residual must "
                "have weight's dtype (or float32 with fp16/bf16 weights), got ", dt);
  }
}

at::Tensor fused_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                            int64_t norm, double eps, int64_t act, const std::optional<at::Tensor>& residual) {
  check_args(x, weight, bias, norm_weight, norm_bias, norm, act, residual);
  const int64_t M = x.size(0), K = weight.size(1);
  const int64_t N = act == kSwiglu ? weight.size(0) / 2 : weight.size(0);
  const auto acc_type = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({M, N}, x.options().dtype(residual ? residual->scalar_type() : weight.scalar_type()));
  if (M == 0 || N == 0) return out;
  // The small operands in the compute dtype (untouched when they already are: at a decode step's sizes even a
  // no-op dispatch is a noticeable share of the call).
  const auto as_acc = [&](const at::Tensor& t) { return t.scalar_type() == acc_type ? t : t.to(acc_type); };
  const auto in_acc = [&](const std::optional<at::Tensor>& t) {
    return t ? std::optional<at::Tensor>(as_acc(*t)) : std::nullopt;
  };
  const at::Tensor xa = as_acc(x);
  const auto bias_a = in_acc(bias), gamma = in_acc(norm_weight), beta = in_acc(norm_bias);
  // Enough multiply-adds per task to pay for handing it to a thread.
  const int64_t macs_per_column = M * K * (act == kSwiglu ? 2 : 1);
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, macs_per_column));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "fused_linear_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto data = [](const std::optional<at::Tensor>& t) { return t ? t->data_ptr<acc_t>() : nullptr; };
    std::vector<acc_t> h(M * K);
    normalise_rows<scalar_t, acc_t>(xa.data_ptr<acc_t>(), M, K, norm, norm == kNoNorm ? nullptr : data(gamma),
                                    norm == kLayerNorm ? data(beta) : nullptr, eps, h.data());
    const LinearArgs<scalar_t, acc_t> args{weight.data_ptr<scalar_t>(), h.data(), data(bias_a), out.data_ptr(),
                                           residual ? residual->data_ptr() : nullptr,
                                           residual && residual->scalar_type() != weight.scalar_type(),
                                           M, N, K, act};
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) { run_columns(args, begin, end); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) { m.impl("fused_linear", &fused_linear_cpu); }

}  // namespace pygpt
