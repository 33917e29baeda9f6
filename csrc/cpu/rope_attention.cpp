// rope_attention, CPU: causal softmax attention with RoPE applied to q and k as they are loaded, never writing
// rotated q/k or a T x T score matrix to memory. Forward and backward follow FlashAttention-2's recurrences.
//
// Layout: q (B, T, H, D), k and v (B, T, Hkv, D), last dimension contiguous, other strides free (q, k, v may be
// views of one fused projection). H is a multiple of Hkv: query head h reads key/value head h / (H / Hkv).
//
// Work split: forward tasks are (b, kv head, block of 64 query rows); the rows of all query heads sharing the
// kv head are stacked into one (groups * 64) x D tile, so each key serves the whole group; a thread keeps the
// rotated keys of its current (b, kv head), so each key is rotated once per thread, not once per query block.
// Keys stream in tiles of 256 with an online softmax. Backward tasks are (b, kv head): each owns dK/dV
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

// ---- softmax pieces ----------------------------------------------------------------------------------------

// Backward: p = exp(s - lse) on the valid entries (0 elsewhere), then ds = p * (dp - delta); n padded as for
// softmax_update (common.h), the forward's online update.
template <typename acc_t>
PYGPT_INLINE void softmax_grad(acc_t* __restrict__ s, acc_t* __restrict__ dp, int64_t n, int64_t valid, acc_t lse,
                               acc_t delta) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = exp_vec(s[j] - lse);
    s[j] = j < valid ? p : acc_t(0);
    dp[j] = s[j] * (dp[j] - delta);
  }
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

// ---- loading keys and values ---------------------------------------------------------------------------------

// Rotated keys and converted values of rows [from, to) of (b, kv head hk), into K and V (row j at j * D). The
// rows are strided in memory (views of one fused projection) and are read once, so the loads are latency
// bound: the rows kPrefetchRows ahead are prefetched.
constexpr int64_t kPrefetchRows = 4;

template <typename scalar_t, typename acc_t>
PYGPT_INLINE void load_keys_values(const Rows<scalar_t>& Kin, const Rows<scalar_t>& Vin, int64_t b, int64_t hk,
                                   const RopeTable<acc_t>& rope, int64_t from, int64_t to, int64_t D, acc_t* K,
                                   acc_t* V) {
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t j = from; j < to; ++j) {
    if (j + kPrefetchRows < to)
      for (int64_t offset = 0; offset < row_bytes; offset += 64) {
        __builtin_prefetch(reinterpret_cast<const char*>(Kin.row(b, j + kPrefetchRows, hk)) + offset);
        __builtin_prefetch(reinterpret_cast<const char*>(Vin.row(b, j + kPrefetchRows, hk)) + offset);
      }
    load_rotated(Kin.row(b, j, hk), D, rope, j, acc_t(1), K + j * D);
    const scalar_t* vj = Vin.row(b, j, hk);
    for (int64_t d = 0; d < D; ++d) V[j * D + d] = static_cast<acc_t>(vj[d]);
  }
}

// ---- forward ------------------------------------------------------------------------------------------------

// One call's operands and shape, shared by all of its tasks.
template <typename scalar_t>
struct ForwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  Rows<scalar_t> Q, K, V, O;
  acc_t* lse;  // (B, H, T)
  const RopeTables<acc_t>* tables;
  int64_t T, H, Hkv, D, groups, n_qblocks;
  acc_t scale;
  bool causal;
};

// Per-thread buffers of the forward tasks. K and V hold the rotated keys and the values of one (b, kv head),
// rows [0, rows): a thread runs consecutive tasks, which mostly share (b, kv head), so each key is rotated
// and converted once per thread rather than once per query block.
template <typename acc_t>
struct ForwardScratch {
  std::vector<acc_t> Qt, Ot, S, K, V, m, l;
  int64_t b = -1, hk = -1, rows = 0;
  ForwardScratch(int64_t T, int64_t groups, int64_t D)
      : Qt(groups * kQueryBlock * D), Ot(groups * kQueryBlock * D), S(groups * kQueryBlock * kKeyTile),
        K(T * D), V(T * D), m(groups * kQueryBlock), l(groups * kQueryBlock) {}
};

// One task: (b, kv head hk, block qb of query rows) for every query head of the group.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
PYGPT_INLINE void forward_task(const ForwardArgs<scalar_t>& a, int64_t task, ForwardScratch<acc_t>& w) {
  const int64_t T = a.T, D = a.D, groups = a.groups;
  const int64_t qb = task % a.n_qblocks, hk = (task / a.n_qblocks) % a.Hkv, b = task / (a.n_qblocks * a.Hkv);
  const RopeTable<acc_t>& rope = (*a.tables)[b];
  const int64_t i0 = qb * kQueryBlock, nr = std::min(T, i0 + kQueryBlock) - i0, M = groups * nr;
  acc_t *Qt = w.Qt.data(), *Ot = w.Ot.data(), *S = w.S.data(), *K = w.K.data(), *V = w.V.data();
  // Row r = g * nr + (i - i0) holds query i of head hk * groups + g.
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = 0; r < nr; ++r)
      load_rotated(a.Q.row(b, i0 + r, hk * groups + g), D, rope, i0 + r, a.scale, Qt + (g * nr + r) * D);
  std::fill(Ot, Ot + M * D, acc_t(0));
  std::fill(w.m.begin(), w.m.begin() + M, -std::numeric_limits<acc_t>::infinity());
  std::fill(w.l.begin(), w.l.begin() + M, acc_t(0));
  const int64_t nk = a.causal ? i0 + nr : T;  // keys this block can see
  if (w.b != b || w.hk != hk) {  // a new (b, kv head): its keys are not loaded yet
    w.b = b;
    w.hk = hk;
    w.rows = 0;
  }
  load_keys_values(a.K, a.V, b, hk, rope, w.rows, nk, D, K, V);
  w.rows = std::max(w.rows, nk);
  for (int64_t j0 = 0; j0 < nk; j0 += kKeyTile) {
    const int64_t kt = std::min(kKeyTile, nk - j0), ld = padded(kt);
    cpu::gemm(false, true, M, kt, D, acc_t(1), Qt, D, K + j0 * D, D, acc_t(0), S, ld);  // Q K^T
    for (int64_t row = 0; row < M; ++row) {
      const int64_t i = i0 + row % nr;
      const int64_t valid = a.causal ? std::clamp<int64_t>(i + 1 - j0, 0, kt) : kt;
      const acc_t rescale = softmax_update(S + row * ld, ld, 0, valid, w.m[row], w.l[row]);
      if (rescale != acc_t(1))
        for (int64_t d = 0; d < D; ++d) Ot[row * D + d] *= rescale;
    }
    cpu::gemm(false, false, M, D, kt, acc_t(1), S, ld, V + j0 * D, D, acc_t(1), Ot, D);  // += P V
  }
  for (int64_t row = 0; row < M; ++row) {
    const int64_t g = row / nr, i = i0 + row % nr, h = hk * groups + g;
    const acc_t inv_l = acc_t(1) / w.l[row];
    scalar_t* o = a.O.row(b, i, h);
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(Ot[row * D + d] * inv_l);
    a.lse[(b * a.H + h) * T + i] = w.m[row] + std::log(w.l[row]);
  }
}

// The tasks are compiled for AVX-512, AVX2 and baseline x86-64 and picked at run time (the loops around the
// GEMMs - rotation, conversion, softmax - are a large share of the time at small head_dim): PYGPT_CLONED_TASK.
PYGPT_CLONED_TASKS(run_forward_task, forward_task, ForwardArgs, ForwardScratch)

template <typename scalar_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& positions, double scale, double base, bool causal, at::Tensor& out,
                  at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), D = q.size(3);
  const RopeTables<acc_t> tables(positions, B, T, D, base);
  const ForwardArgs<scalar_t> args{rows_of<scalar_t>(q), rows_of<scalar_t>(k), rows_of<scalar_t>(v),
                                   rows_of<scalar_t>(out), lse.data_ptr<acc_t>(), &tables, T, H, Hkv, D, H / Hkv,
                                   (T + kQueryBlock - 1) / kQueryBlock, static_cast<acc_t>(scale), causal};
  at::parallel_for(0, B * Hkv * args.n_qblocks, 1, [&](int64_t begin, int64_t end) {
    ForwardScratch<acc_t> scratch(T, args.groups, D);
    for (int64_t task = begin; task < end; ++task) run_forward_task(args, task, scratch);
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
  if (out.numel() == 0) {
    // head_dim 0 (or an empty batch): every score is 0, so lse = log(the number of keys a query sees).
    if (lse.numel() > 0) {
      const auto seen = causal ? at::arange(1, T + 1, lse.options()) : at::full({T}, static_cast<double>(T),
                                                                                lse.options());
      lse.copy_(seen.log().expand_as(lse));
    }
    return {out, lse};
  }
  std::optional<at::Tensor> pos;
  if (positions.has_value()) pos = positions->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rope_attention_cpu", [&] {
    forward_impl<scalar_t>(q, k, v, pos, scale, base, causal, out, lse);
  });
  return {out, lse};
}

// ---- backward -----------------------------------------------------------------------------------------------

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  Rows<scalar_t> Q, K, V, O, dO, dQ, dK, dV;
  const acc_t* lse;  // (B, H, T)
  const RopeTables<acc_t>* tables;
  int64_t T, H, Hkv, D, groups;
  acc_t scale;
  bool causal;
};

template <typename acc_t>
struct BackwardScratch {
  std::vector<acc_t> K, V, dK, dV, Qt, dOt, dQt, P, dS, row_lse, delta, tmp;
  BackwardScratch(int64_t T, int64_t groups, int64_t D)
      : K(T * D), V(T * D), dK(T * D), dV(T * D), Qt(groups * kQueryBlock * D), dOt(groups * kQueryBlock * D),
        dQt(groups * kQueryBlock * D), P(groups * kQueryBlock * kKeyTile), dS(groups * kQueryBlock * kKeyTile),
        row_lse(groups * kQueryBlock), delta(groups * kQueryBlock), tmp(D) {}
};

// One task: (b, kv head hk). It owns dK/dV of the kv head and dQ of the group's query heads, so no two tasks
// write the same memory.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
PYGPT_INLINE void backward_task(const BackwardArgs<scalar_t>& a, int64_t task, BackwardScratch<acc_t>& w) {
  const int64_t T = a.T, D = a.D, groups = a.groups;
  const int64_t hk = task % a.Hkv, b = task / a.Hkv;
  const RopeTable<acc_t>& rope = (*a.tables)[b];
  acc_t *K = w.K.data(), *V = w.V.data(), *dK = w.dK.data(), *dV = w.dV.data(), *Qt = w.Qt.data(),
        *dOt = w.dOt.data(), *dQt = w.dQt.data(), *P = w.P.data(), *dS = w.dS.data(), *tmp = w.tmp.data();
  load_keys_values(a.K, a.V, b, hk, rope, 0, T, D, K, V);
  std::fill(dK, dK + T * D, acc_t(0));
  std::fill(dV, dV + T * D, acc_t(0));
  for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
    const int64_t nr = std::min(kQueryBlock, T - i0), M = groups * nr;
    for (int64_t row = 0; row < M; ++row) {
      const int64_t i = i0 + row % nr, h = hk * groups + row / nr;
      load_rotated(a.Q.row(b, i, h), D, rope, i, a.scale, Qt + row * D);
      const scalar_t* go = a.dO.row(b, i, h);
      const scalar_t* o = a.O.row(b, i, h);
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) {
        dOt[row * D + d] = static_cast<acc_t>(go[d]);
        dot += static_cast<acc_t>(go[d]) * static_cast<acc_t>(o[d]);
      }
      w.delta[row] = dot;
      w.row_lse[row] = a.lse[(b * a.H + h) * T + i];
    }
    std::fill(dQt, dQt + M * D, acc_t(0));
    const int64_t nk = a.causal ? i0 + nr : T;
    for (int64_t j0 = 0; j0 < nk; j0 += kKeyTile) {
      const int64_t kt = std::min(kKeyTile, nk - j0), ld = padded(kt);
      const acc_t* Kt = K + j0 * D;
      const acc_t* Vt = V + j0 * D;
      cpu::gemm(false, true, M, kt, D, acc_t(1), Qt, D, Kt, D, acc_t(0), P, ld);     // S = Q K^T
      cpu::gemm(false, true, M, kt, D, acc_t(1), dOt, D, Vt, D, acc_t(0), dS, ld);   // dP = dO V^T
      for (int64_t row = 0; row < M; ++row) {
        const int64_t i = i0 + row % nr;
        const int64_t valid = a.causal ? std::clamp<int64_t>(i + 1 - j0, 0, kt) : kt;
        softmax_grad(P + row * ld, dS + row * ld, ld, valid, w.row_lse[row], w.delta[row]);
      }
      cpu::gemm(true, false, kt, D, M, acc_t(1), P, ld, dOt, D, acc_t(1), dV + j0 * D, D);   // dV += P^T dO
      cpu::gemm(false, false, M, D, kt, acc_t(1), dS, ld, Kt, D, acc_t(1), dQt, D);         // dQ~ += dS K
      cpu::gemm(true, false, kt, D, M, acc_t(1), dS, ld, Qt, D, acc_t(1), dK + j0 * D, D);  // dK~ += dS^T Q
    }
    for (int64_t row = 0; row < M; ++row) {  // dq = scale * rot^T(dq~)
      const int64_t i = i0 + row % nr, h = hk * groups + row / nr;
      load_rotated(dQt + row * D, D, rope, i, a.scale, tmp, acc_t(-1));
      scalar_t* gq = a.dQ.row(b, i, h);
      for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<scalar_t>(tmp[d]);
    }
  }
  for (int64_t j = 0; j < T; ++j) {
    load_rotated(dK + j * D, D, rope, j, acc_t(1), tmp, acc_t(-1));
    scalar_t* gk = a.dK.row(b, j, hk);
    scalar_t* gv = a.dV.row(b, j, hk);
    for (int64_t d = 0; d < D; ++d) {
      gk[d] = static_cast<scalar_t>(tmp[d]);
      gv[d] = static_cast<scalar_t>(dV[j * D + d]);
    }
  }
}

PYGPT_CLONED_TASKS(run_backward_task, backward_task, BackwardArgs, BackwardScratch)

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& positions, const at::Tensor& out, const at::Tensor& lse,
                   double scale, double base, bool causal, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), D = q.size(3);
  const RopeTables<acc_t> tables(positions, B, T, D, base);
  const BackwardArgs<scalar_t> args{rows_of<scalar_t>(q),  rows_of<scalar_t>(k),        rows_of<scalar_t>(v),
                                    rows_of<scalar_t>(out), rows_of<scalar_t>(grad_out), rows_of<scalar_t>(dq),
                                    rows_of<scalar_t>(dk), rows_of<scalar_t>(dv),         lse.data_ptr<acc_t>(),
                                    &tables, T, H, Hkv, D, H / Hkv, static_cast<acc_t>(scale), causal};
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    BackwardScratch<acc_t> scratch(T, args.groups, D);
    for (int64_t task = begin; task < end; ++task) run_backward_task(args, task, scratch);
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
