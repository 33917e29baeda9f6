// Pieces shared by the CPU attention kernels: strided row views, RoPE cos/sin tables and rotation on load, a
// vectorisable exp and the online-softmax update built on it, and the multiversioning macro (AVX-512 / AVX2 /
// baseline clones picked at run time).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYGPT_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYGPT_MULTIVERSION
#endif

#define PYGPT_INLINE inline __attribute__((always_inline))

// A kernel's per-task function compiled for AVX-512, AVX2 and baseline x86-64, picked at run time. target_clones
// needs concrete functions, not templates: one per (task, dtype).
#define PYGPT_CLONED_TASK(name, task_fn, Args, Scratch, scalar_t, acc_t) \
  PYGPT_MULTIVERSION void name(const Args<scalar_t>& a, int64_t task, Scratch<acc_t>& w) { task_fn(a, task, w); }
// ... for each dtype the kernels take (fp16/bf16 compute in float).
#define PYGPT_CLONED_TASKS(name, task_fn, Args, Scratch)                  \
  PYGPT_CLONED_TASK(name, task_fn, Args, Scratch, float, float)           \
  PYGPT_CLONED_TASK(name, task_fn, Args, Scratch, double, double)         \
  PYGPT_CLONED_TASK(name, task_fn, Args, Scratch, at::Half, float)        \
  PYGPT_CLONED_TASK(name, task_fn, Args, Scratch, at::BFloat16, float)

namespace pygpt::cpu {

// exp for float that the compiler vectorises (libm's expf is a scalar call, and softmax takes one per score):
// 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2 (Cody-Waite split), p a degree-7 minimax polynomial;
// relative error about 2e-7 (1-2 ulp). Inputs below -87 give ~1e-38 instead of underflowing to denormals.
PYGPT_INLINE float exp_vec(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}
PYGPT_INLINE double exp_vec(double x) { return std::exp(x); }

// ---- softmax pieces shared by the attention kernels ------------------------------------------------------------

// Score rows are padded to a multiple of kLanes (their row stride) and the loops below run over the padded
// width n, masking with a select: no scalar remainder loop, whose exp would cost more than the vector body.
// Entries outside the valid ones may hold anything (even NaN): they are computed on but never selected. The
// loops vectorise because the kernels are compiled with -fno-trapping-math (CMakeLists.txt: otherwise GCC
// keeps exp's floor and selects scalar), and `omp simd reduction` lets the compiler reorder the float sums.
constexpr int64_t kLanes = 16;
inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Online-softmax update of one score row s[0..n) whose entries [lo, hi) are valid (none when lo >= hi): s becomes
// p = exp(s - m_new) (0 outside [lo, hi)); returns the factor exp(m_old - m_new) that rescales the running sum
// l and the output row.
template <typename acc_t>
PYGPT_INLINE acc_t softmax_update(acc_t* __restrict__ s, int64_t n, int64_t lo, int64_t hi, acc_t& m, acc_t& l) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  acc_t tile_max = kNegInf;
#pragma omp simd reduction(max : tile_max)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t x = s[j];
    tile_max = std::max(tile_max, j >= lo && j < hi ? x : kNegInf);
  }
  const acc_t m_new = std::max(m, tile_max);
  const acc_t rescale = m == kNegInf ? acc_t(0) : exp_vec(m - m_new);
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = exp_vec(s[j] - m_new);
    s[j] = j >= lo && j < hi ? p : acc_t(0);
    sum += s[j];
  }
  m = m_new;
  l = l * rescale + sum;
  return rescale;
}

// Strided view of a (B, T, heads, D) tensor with a contiguous last dimension.
template <typename scalar_t>
struct Rows {
  scalar_t* data;
  int64_t sb, st, sh;
  scalar_t* row(int64_t b, int64_t t, int64_t h) const { return data + b * sb + t * st + h * sh; }
};

template <typename scalar_t>
Rows<scalar_t> rows_of(const at::Tensor& t) {
  return {t.data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2)};
}

// cos/sin tables (T x D/2) of the positions of one sequence; angles in fp32 as every backend computes them,
// their cos/sin in the compute precision.
template <typename acc_t>
struct RopeTable {
  std::vector<acc_t> cos, sin;
  int64_t half = 0;
  bool enabled = false;

  RopeTable() = default;
  // T positions given by position(t) (any integer-valued callable).
  template <typename PositionFn>
  RopeTable(int64_t T, int64_t D, double base, PositionFn position) : half(D / 2), enabled(true) {
    cos.resize(T * half);
    sin.resize(T * half);
    std::vector<float> inv_freq(half);
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = static_cast<float>(std::pow(base, -2.0 * i / D));
    for (int64_t t = 0; t < T; ++t) {
      const float pos = static_cast<float>(position(t));
      for (int64_t i = 0; i < half; ++i) {
        const acc_t angle = static_cast<acc_t>(pos * inv_freq[i]);
        cos[t * half + i] = std::cos(angle);
        sin[t * half + i] = std::sin(angle);
      }
    }
  }
  // Row b of positions p, (B, T) or (T,), int64 or int32.
  RopeTable(const at::Tensor& p, int64_t b, int64_t T, int64_t D, double base)
      : RopeTable(T, D, base, [&, offset = p.dim() == 2 ? b * T : 0](int64_t t) {
          return p.scalar_type() == at::kLong ? p.data_ptr<int64_t>()[offset + t]
                                              : static_cast<int64_t>(p.data_ptr<int32_t>()[offset + t]);
        }) {}
};

// The tables of every sequence, built once per call: one shared table for (T,) positions, B for (B, T);
// a single disabled table without positions.
template <typename acc_t>
struct RopeTables {
  std::vector<RopeTable<acc_t>> tables;

  RopeTables(const std::optional<at::Tensor>& positions, int64_t B, int64_t T, int64_t D, double base) {
    if (!positions.has_value()) {
      tables.resize(1);
      return;
    }
    const int64_t n = positions->dim() == 2 ? B : 1;
    tables.resize(n);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) tables[b] = RopeTable<acc_t>(*positions, b, T, D, base);
    });
  }
  const RopeTable<acc_t>& operator[](int64_t b) const { return tables[tables.size() == 1 ? 0 : b]; }
};

// dst = mult * rot(src) at row t (sign -1: the inverse rotation), converted to acc_t.
template <typename scalar_t, typename acc_t>
PYGPT_INLINE void load_rotated(const scalar_t* src, int64_t D, const RopeTable<acc_t>& rope, int64_t t, acc_t mult,
                               acc_t* dst, acc_t sign = 1) {
  if (!rope.enabled) {
    for (int64_t d = 0; d < D; ++d) dst[d] = mult * static_cast<acc_t>(src[d]);
    return;
  }
  const int64_t half = rope.half;
  const acc_t* c = rope.cos.data() + t * half;
  const acc_t* s = rope.sin.data() + t * half;
  for (int64_t i = 0; i < half; ++i) {
    const acc_t x1 = static_cast<acc_t>(src[i]), x2 = static_cast<acc_t>(src[i + half]);
    const acc_t ci = c[i], si = sign * s[i];
    dst[i] = mult * (x1 * ci - x2 * si);
    dst[i + half] = mult * (x2 * ci + x1 * si);
  }
}

}  // namespace pygpt::cpu
