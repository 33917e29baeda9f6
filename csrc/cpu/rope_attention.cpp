// rope_attention, CPU: causal softmax attention with RoPE applied to q and k as they are loaded, never writing
// rotated q/k or a T x T score matrix to memory. Forward and backward follow FlashAttention-2's recurrences.
//
// Layout: q (B, T, H, D), k and v (B, T, Hkv, D), last dimension contiguous, other strides free (q, k, v may be
// views of one fused projection). H is a multiple of Hkv: query head h reads key/value head h / (H / Hkv).
//
// Work split: forward tasks are (b, kv head, block of 64 query rows); the rows of all query heads sharing the
// kv head are stacked into one (groups * 64) x D tile, so each key tile is rotated once and used by the whole
// group. Keys stream in tiles of 256 with an online softmax. Backward tasks are (b, kv head): each owns dK/dV
// of its kv head and dQ of its query heads, so no two threads write the same memory. The block products are
// GEMMs (csrc/cpu/gemm.h: torch's BLAS); rotation, masking and softmax are loops the compiler vectorises,
// compiled for AVX-512, AVX2 and baseline x86-64 and picked at run time (target_clones).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "../checks.h"
#include "common.h"
#include "gemm.h"

namespace pygpt {
namespace {

using namespace cpu;

constexpr int64_t kQueryBlock = 64;  // query rows per task (per head)
constexpr int64_t kKeyTile = 256;    // keys per step of the online softmax

// ---- softmax pieces (multiversioned) ---------------------------------------------------------------------

// Online-softmax update of one score row s[0..n) with `valid` unmasked entries: s becomes p = exp(s - m_new)
// (0 where masked); returns the factor exp(m_old - m_new) that rescales the running sum l and output row.
template <typename acc_t>
PYGPT_INLINE acc_t softmax_update(acc_t* __restrict__ s, int64_t n, int64_t valid, acc_t& m, acc_t& l) {
  acc_t tile_max = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < valid; ++j) tile_max = std::max(tile_max, s[j]);
  const acc_t m_new = std::max(m, tile_max);
  const acc_t rescale = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : exp_vec(m - m_new);
  acc_t sum = 0;
  for (int64_t j = 0; j < valid; ++j) {
    s[j] = exp_vec(s[j] - m_new);
    sum += s[j];
  }
  std::fill(s + valid, s + n, acc_t(0));
  m = m_new;
  l = l * rescale + sum;
  return rescale;
}

// Backward: p = exp(s - lse) on the valid entries (0 elsewhere), then ds = p * (dp - delta).
template <typename acc_t>
PYGPT_INLINE void softmax_grad(acc_t* __restrict__ s, acc_t* __restrict__ dp, int64_t n, int64_t valid, acc_t lse,
                               acc_t delta) {
  for (int64_t j = 0; j < valid; ++j) s[j] = exp_vec(s[j] - lse);
  std::fill(s + valid, s + n, acc_t(0));
  for (int64_t j = 0; j < n; ++j) dp[j] = s[j] * (dp[j] - delta);
}

PYGPT_MULTIVERSION float softmax_update_f32(float* s, int64_t n, int64_t valid, float& m, float& l) {
  return softmax_update<float>(s, n, valid, m, l);
}
PYGPT_MULTIVERSION void softmax_grad_f32(float* s, float* dp, int64_t n, int64_t valid, float lse, float delta) {
  softmax_grad<float>(s, dp, n, valid, lse, delta);
}
inline float softmax_update_any(float* s, int64_t n, int64_t valid, float& m, float& l) {
  return softmax_update_f32(s, n, valid, m, l);
}
inline double softmax_update_any(double* s, int64_t n, int64_t valid, double& m, double& l) {
  return softmax_update<double>(s, n, valid, m, l);
}
inline void softmax_grad_any(float* s, float* dp, int64_t n, int64_t valid, float lse, float delta) {
  softmax_grad_f32(s, dp, n, valid, lse, delta);
}
inline void softmax_grad_any(double* s, double* dp, int64_t n, int64_t valid, double lse, double delta) {
  softmax_grad<double>(s, dp, n, valid, lse, delta);
}

// ---- argument checks ----------------------------------------------------------------------------------------

void check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& positions) {
  for (auto [name, t] : {std::pair{"q", &q}, {"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->dim() == 4, "pygpt.", op, ": ", name, " must have 4 dimensions (B, T, heads, D), got shape ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "pygpt.", op, ": ", name, " must have q's dtype ",
                q.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->stride(3) == 1, "pygpt.", op, ": ", name, "'s last dimension must be contiguous");
    check_same_device(op, "q", q, name, *t);
  }
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, "pygpt.", op,
              ": q must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), "pygpt.", op,
              ": k must have shape (B, T, Hkv, D) matching q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "pygpt.", op, ": v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, "pygpt.", op, ": q's heads (", q.size(2),
              ") must be a multiple of k's heads (", k.size(2), ")");
  if (positions.has_value()) {
    TORCH_CHECK(q.size(3) % 2 == 0, "pygpt.", op, ": head_dim must be even for RoPE, got ", q.size(3));
    check_index_tensor(op, "positions", *positions);
    check_same_device(op, "q", q, "positions", *positions);
    const auto& p = *positions;
    const bool ok = (p.dim() == 2 && p.size(0) == q.size(0) && p.size(1) == q.size(1)) ||
                    (p.dim() == 1 && p.size(0) == q.size(1));
    TORCH_CHECK(ok, "pygpt.", op, ": positions must have shape (B, T) = (", q.size(0), ", ", q.size(1),
                ") or (T,), got ", p.sizes());
  }
}

// ---- forward ------------------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& positions, double scale, double base, bool causal, at::Tensor& out,
                  at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), D = q.size(3);
  const int64_t groups = H / Hkv;
  const int64_t n_qblocks = (T + kQueryBlock - 1) / kQueryBlock;
  const auto Q = rows_of<scalar_t>(q), Kr = rows_of<scalar_t>(k), Vr = rows_of<scalar_t>(v);
  const auto O = rows_of<scalar_t>(out);
  acc_t* lse_p = lse.data_ptr<acc_t>();  // (B, H, T)
  const RopeTables<acc_t> tables(positions, B, T, D, base);

  at::parallel_for(0, B * Hkv * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t max_rows = groups * kQueryBlock;
    std::vector<acc_t> Qt(max_rows * D), Ot(max_rows * D), S(max_rows * kKeyTile), Kt(kKeyTile * D),
        Vt(kKeyTile * D), m(max_rows), l(max_rows);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % n_qblocks, hk = (task / n_qblocks) % Hkv, b = task / (n_qblocks * Hkv);
      const RopeTable<acc_t>& rope = tables[b];
      const int64_t i0 = qb * kQueryBlock, nr = std::min(T, i0 + kQueryBlock) - i0, M = groups * nr;
      // Row r = g * nr + (i - i0) holds query i of head hk * groups + g.
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t r = 0; r < nr; ++r)
          load_rotated(Q.row(b, i0 + r, hk * groups + g), D, rope, i0 + r, static_cast<acc_t>(scale),
                       Qt.data() + (g * nr + r) * D);
      std::fill(Ot.begin(), Ot.begin() + M * D, acc_t(0));
      std::fill(m.begin(), m.begin() + M, -std::numeric_limits<acc_t>::infinity());
      std::fill(l.begin(), l.begin() + M, acc_t(0));
      const int64_t nk = causal ? i0 + nr : T;  // keys this block can see
      for (int64_t j0 = 0; j0 < nk; j0 += kKeyTile) {
        const int64_t kt = std::min(kKeyTile, nk - j0);
        for (int64_t j = 0; j < kt; ++j) {
          load_rotated(Kr.row(b, j0 + j, hk), D, rope, j0 + j, acc_t(1), Kt.data() + j * D);
          const scalar_t* vj = Vr.row(b, j0 + j, hk);
          for (int64_t d = 0; d < D; ++d) Vt[j * D + d] = static_cast<acc_t>(vj[d]);
        }
        cpu::gemm(false, true, M, kt, D, acc_t(1), Qt.data(), D, Kt.data(), D, acc_t(0), S.data(), kt);  // Q K^T
        for (int64_t row = 0; row < M; ++row) {
          const int64_t i = i0 + row % nr;
          const int64_t valid = causal ? std::clamp<int64_t>(i + 1 - j0, 0, kt) : kt;
          const acc_t rescale = softmax_update_any(S.data() + row * kt, kt, valid, m[row], l[row]);
          if (rescale != acc_t(1))
            for (int64_t d = 0; d < D; ++d) Ot[row * D + d] *= rescale;
        }
        cpu::gemm(false, false, M, D, kt, acc_t(1), S.data(), kt, Vt.data(), D, acc_t(1), Ot.data(), D);  // += P V
      }
      for (int64_t row = 0; row < M; ++row) {
        const int64_t g = row / nr, i = i0 + row % nr, h = hk * groups + g;
        const acc_t inv_l = acc_t(1) / l[row];
        scalar_t* o = O.row(b, i, h);
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(Ot[row * D + d] * inv_l);
        lse_p[(b * H + h) * T + i] = m[row] + std::log(l[row]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rope_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& positions, double scale,
                                                      double base, bool causal) {
  check_attention_args("rope_attention", q, k, v, positions);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2);
  auto out = at::empty(q.sizes(), q.options());
  // The log-sum-exp is kept in the compute precision: float32, or float64 for float64 inputs.
  auto lse = at::empty({B, H, T}, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return {out, lse};
  std::optional<at::Tensor> pos;
  if (positions.has_value()) pos = positions->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rope_attention_cpu", [&] {
    forward_impl<scalar_t>(q, k, v, pos, scale, base, causal, out, lse);
  });
  return {out, lse};
}

// ---- backward -----------------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& positions, const at::Tensor& out, const at::Tensor& lse,
                   double scale, double base, bool causal, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), D = q.size(3);
  const int64_t groups = H / Hkv;
  const auto Q = rows_of<scalar_t>(q), Kr = rows_of<scalar_t>(k), Vr = rows_of<scalar_t>(v);
  const auto O = rows_of<scalar_t>(out), dO = rows_of<scalar_t>(grad_out);
  const auto dQ = rows_of<scalar_t>(dq), dKr = rows_of<scalar_t>(dk), dVr = rows_of<scalar_t>(dv);
  const acc_t* lse_p = lse.data_ptr<acc_t>();
  const RopeTables<acc_t> tables(positions, B, T, D, base);

  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    const int64_t max_rows = groups * kQueryBlock;
    std::vector<acc_t> K(T * D), V(T * D), dK(T * D), dV(T * D);
    std::vector<acc_t> Qt(max_rows * D), dOt(max_rows * D), dQt(max_rows * D), P(max_rows * kKeyTile),
        dS(max_rows * kKeyTile), row_lse(max_rows), delta(max_rows), tmp(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t hk = task % Hkv, b = task / Hkv;
      const RopeTable<acc_t>& rope = tables[b];
      for (int64_t j = 0; j < T; ++j) {
        load_rotated(Kr.row(b, j, hk), D, rope, j, acc_t(1), K.data() + j * D);
        const scalar_t* vj = Vr.row(b, j, hk);
        for (int64_t d = 0; d < D; ++d) V[j * D + d] = static_cast<acc_t>(vj[d]);
      }
      std::fill(dK.begin(), dK.end(), acc_t(0));
      std::fill(dV.begin(), dV.end(), acc_t(0));
      for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
        const int64_t nr = std::min(kQueryBlock, T - i0), M = groups * nr;
        for (int64_t row = 0; row < M; ++row) {
          const int64_t i = i0 + row % nr, h = hk * groups + row / nr;
          load_rotated(Q.row(b, i, h), D, rope, i, static_cast<acc_t>(scale), Qt.data() + row * D);
          const scalar_t* go = dO.row(b, i, h);
          const scalar_t* o = O.row(b, i, h);
          acc_t dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dOt[row * D + d] = static_cast<acc_t>(go[d]);
            dot += dOt[row * D + d] * static_cast<acc_t>(o[d]);
          }
          delta[row] = dot;
          row_lse[row] = lse_p[(b * H + h) * T + i];
        }
        std::fill(dQt.begin(), dQt.begin() + M * D, acc_t(0));
        const int64_t nk = causal ? i0 + nr : T;
        for (int64_t j0 = 0; j0 < nk; j0 += kKeyTile) {
          const int64_t kt = std::min(kKeyTile, nk - j0);
          const acc_t* Kt = K.data() + j0 * D;
          const acc_t* Vt = V.data() + j0 * D;
          cpu::gemm(false, true, M, kt, D, acc_t(1), Qt.data(), D, Kt, D, acc_t(0), P.data(), kt);     // S = Q K^T
          cpu::gemm(false, true, M, kt, D, acc_t(1), dOt.data(), D, Vt, D, acc_t(0), dS.data(), kt);   // dP = dO V^T
          for (int64_t row = 0; row < M; ++row) {
            const int64_t i = i0 + row % nr;
            const int64_t valid = causal ? std::clamp<int64_t>(i + 1 - j0, 0, kt) : kt;
            softmax_grad_any(P.data() + row * kt, dS.data() + row * kt, kt, valid, row_lse[row], delta[row]);
          }
          cpu::gemm(true, false, kt, D, M, acc_t(1), P.data(), kt, dOt.data(), D, acc_t(1), dV.data() + j0 * D, D);
          cpu::gemm(false, false, M, D, kt, acc_t(1), dS.data(), kt, Kt, D, acc_t(1), dQt.data(), D);
          cpu::gemm(true, false, kt, D, M, acc_t(1), dS.data(), kt, Qt.data(), D, acc_t(1), dK.data() + j0 * D, D);
        }
        for (int64_t row = 0; row < M; ++row) {  // dq = scale * rot^T(dq~)
          const int64_t i = i0 + row % nr, h = hk * groups + row / nr;
          load_rotated(dQt.data() + row * D, D, rope, i, static_cast<acc_t>(scale), tmp.data(), acc_t(-1));
          scalar_t* gq = dQ.row(b, i, h);
          for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<scalar_t>(tmp[d]);
        }
      }
      for (int64_t j = 0; j < T; ++j) {
        load_rotated(dK.data() + j * D, D, rope, j, acc_t(1), tmp.data(), acc_t(-1));
        scalar_t* gk = dKr.row(b, j, hk);
        scalar_t* gv = dVr.row(b, j, hk);
        for (int64_t d = 0; d < D; ++d) {
          gk[d] = static_cast<scalar_t>(tmp[d]);
          gv[d] = static_cast<scalar_t>(dV[j * D + d]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& positions, const at::Tensor& out, const at::Tensor& lse, double scale,
    double base, bool causal) {
  check_attention_args("rope_attention_backward", q, k, v, positions);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && grad_out.stride(3) == 1 && grad_out.scalar_type() == q.scalar_type(),
              "pygpt.rope_attention_backward: grad_out must match q's shape and dtype with a contiguous last dim");
  TORCH_CHECK(out.sizes() == q.sizes() && out.stride(3) == 1, "pygpt.rope_attention_backward: out must match q");
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == lse_dtype &&
                  lse.sizes() == at::IntArrayRef({q.size(0), q.size(2), q.size(1)}),
              "pygpt.rope_attention_backward: lse must be a contiguous (B, H, T) tensor of dtype ", lse_dtype);
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0) return {dq, dk.zero_(), dv.zero_()};
  std::optional<at::Tensor> pos;
  if (positions.has_value()) pos = positions->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rope_attention_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_out, q, k, v, pos, out, lse, scale, base, causal, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("rope_attention", &rope_attention_cpu);
  m.impl("rope_attention_backward", &rope_attention_backward_cpu);
}

}  // namespace pygpt
