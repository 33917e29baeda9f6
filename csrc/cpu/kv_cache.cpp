// KV cache ops, CPU: kv_append / kv_evict (ring-buffer bookkeeping, never a shift of the cache) and the decode
// step rope_decode_attention (rotate the new q and k, attend over the cache window, append).
//
// Cache layout (see csrc/ops.cpp): k_cache, v_cache (B, Hkv, C, D), position p of sequence b in slot p % C;
// lengths (B,) int32 = tokens appended so far; starts (B,) int32 = oldest valid position. Valid positions are
// [starts, lengths), at most C of them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "common.h"
#include "gemm.h"

namespace pygpt {
namespace {

using namespace cpu;

void check_cache_args(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& lengths, const at::Tensor& starts) {
  check_float_tensor(op, "k_cache", k_cache, 4);
  TORCH_CHECK(k_cache.size(1) > 0 && k_cache.size(2) > 0, "pygpt.", op, ": k_cache must have at least one head "
              "and one slot, got shape ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == k_cache.scalar_type() &&
                  v_cache.is_contiguous(),
              "pygpt.", op, ": v_cache must be a contiguous tensor like k_cache ", k_cache.sizes(), " ",
              k_cache.scalar_type());
  for (auto [name, t] : {std::pair{"lengths", &lengths}, {"starts", &starts}}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->dim() == 1 && t->size(0) == k_cache.size(0) && t->is_contiguous(),
                "pygpt.", op, ": ", name, " must be a contiguous int32 tensor of shape (B,) = (", k_cache.size(0),
                ",), got ", t->scalar_type(), " ", t->sizes());
    check_same_device(op, "k_cache", k_cache, name, *t);
  }
}

// The counters' values (host memory here, so checking them is cheap): a negative position would index before the
// cache, and lengths + Tn must stay an int32.
void check_counter_values(const char* op, const at::Tensor& lengths, const at::Tensor& starts, int64_t Tn) {
  const int32_t* len = lengths.data_ptr<int32_t>();
  const int32_t* st = starts.data_ptr<int32_t>();
  for (int64_t b = 0; b < lengths.size(0); ++b) {
    TORCH_CHECK(0 <= st[b] && st[b] <= len[b], "pygpt.", op, ": sequence ", b, " needs 0 <= starts <= lengths, got ",
                "starts ", st[b], ", lengths ", len[b]);
    TORCH_CHECK(len[b] <= std::numeric_limits<int32_t>::max() - Tn, "pygpt.", op, ": sequence ", b,
                " would pass 2^31 - 1 positions");
  }
}

void check_new_rows(const char* op, const at::Tensor& k_cache, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = k_cache.size(0), Hkv = k_cache.size(1), C = k_cache.size(2), D = k_cache.size(3);
  for (auto [name, t] : {std::pair{"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == B && t->size(2) == Hkv && t->size(3) == D, "pygpt.", op, ": ", name,
                " must have shape (B, Tn, Hkv, D) = (", B, ", Tn, ", Hkv, ", ", D, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type(), "pygpt.", op, ": ", name, " must have the cache's dtype ",
                k_cache.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->stride(3) == 1, "pygpt.", op, ": ", name, "'s last dimension must be contiguous");
    check_same_device(op, "k_cache", k_cache, name, *t);
  }
  TORCH_CHECK(v.size(1) == k.size(1), "pygpt.", op, ": v must have k's number of new tokens ", k.size(1), ", got ",
              v.size(1));
  TORCH_CHECK(k.size(1) <= C, "pygpt.", op, ": cannot append ", k.size(1), " tokens at once to a cache of ", C,
              " slots");
}

// Advance the bookkeeping of every sequence by Tn appended tokens.
void advance(at::Tensor& lengths, at::Tensor& starts, int64_t Tn, int64_t C) {
  int32_t* len = lengths.data_ptr<int32_t>();
  int32_t* st = starts.data_ptr<int32_t>();
  for (int64_t b = 0; b < lengths.size(0); ++b) {
    len[b] += static_cast<int32_t>(Tn);
    st[b] = std::max<int32_t>(st[b], len[b] - static_cast<int32_t>(C));
  }
}

template <typename scalar_t>
void write_rows(at::Tensor& cache, const at::Tensor& rows, const int32_t* len) {
  const int64_t B = cache.size(0), Hkv = cache.size(1), C = cache.size(2), D = cache.size(3), Tn = rows.size(1);
  scalar_t* c = cache.data_ptr<scalar_t>();
  const scalar_t* r = rows.data_ptr<scalar_t>();
  at::parallel_for(0, B * Tn, std::max<int64_t>(16, 4096 / std::max<int64_t>(1, Hkv * D)), [&](int64_t begin,
                                                                                          int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / Tn, t = bt % Tn, slot = (len[b] + t) % C;
      for (int64_t h = 0; h < Hkv; ++h) {
        const scalar_t* src = r + b * rows.stride(0) + t * rows.stride(1) + h * rows.stride(2);
        std::copy(src, src + D, c + ((b * Hkv + h) * C + slot) * D);
      }
    }
  });
}

void kv_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& lengths, at::Tensor& starts,
                   const at::Tensor& k, const at::Tensor& v) {
  check_cache_args("kv_append", k_cache, v_cache, lengths, starts);
  check_new_rows("kv_append", k_cache, k, v);
  check_counter_values("kv_append", lengths, starts, k.size(1));
  const int32_t* len = lengths.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "kv_append_cpu", [&] {
    write_rows<scalar_t>(k_cache, k, len);
    write_rows<scalar_t>(v_cache, v, len);
  });
  advance(lengths, starts, k.size(1), k_cache.size(2));
}

void kv_evict_cpu(at::Tensor& lengths, at::Tensor& starts, const at::Tensor& counts) {
  TORCH_CHECK(lengths.scalar_type() == at::kInt && starts.scalar_type() == at::kInt && lengths.dim() == 1 &&
                  starts.sizes() == lengths.sizes() && lengths.is_contiguous() && starts.is_contiguous(),
              "pygpt.kv_evict: lengths and starts must be contiguous int32 tensors of shape (B,)");
  TORCH_CHECK(counts.scalar_type() == at::kInt && counts.sizes() == lengths.sizes() && counts.is_contiguous(),
              "pygpt.kv_evict: counts must be a contiguous int32 tensor of shape (B,) = ", lengths.sizes(), ", got ",
              counts.scalar_type(), " ", counts.sizes());
  int32_t* len = lengths.data_ptr<int32_t>();
  int32_t* st = starts.data_ptr<int32_t>();
  const int32_t* n = counts.data_ptr<int32_t>();
  for (int64_t b = 0; b < lengths.size(0); ++b) {
    if (n[b] < 0) {
      len[b] = st[b] = 0;  // free the sequence's slot for reuse
    } else {
      st[b] += std::min(n[b], len[b] - st[b]);  // (not min(st + n, len): st + n may overflow)
    }
  }
}

// ---- decode attention ---------------------------------------------------------------------------------------

constexpr int64_t kDecodeKeyTile = 256;  // keys per step of the online softmax

template <typename scalar_t>
struct DecodeArgs {
  using acc_t = at::opmath_type<scalar_t>;
  Rows<const scalar_t> Q, Kn, Vn;  // the new tokens' q (B, Tn, H, D), k and v (B, Tn, Hkv, D)
  Rows<scalar_t> O, Kr;            // the output; the rotated new keys, appended after the attention
  const scalar_t *kc, *vc;         // the caches (B, Hkv, C, D)
  const int32_t *len, *st;
  const RopeTable<acc_t>* rope_tables;  // per sequence: positions len[b] .. len[b] + Tn (disabled without RoPE)
  int64_t Tn, Hkv, C, D, groups;
  acc_t scale;
};

template <typename acc_t>
struct DecodeScratch {
  std::vector<acc_t> q, kn, vn, s, acc, m, l;
  DecodeScratch(int64_t rows, int64_t Tn, int64_t D)
      : q(rows * D), kn(Tn * D), vn(Tn * D), s(rows * padded(kDecodeKeyTile)), acc(rows * D), m(rows), l(rows) {}
};

// One online-softmax step of every query row over kt keys at consecutive positions pos0.., rows of K and V
// D apart (a run of ring slots of the cache, or the new tokens). Query row r is token r / groups at position
// first_pos + r / groups = p and sees the keys of (p - C, p]. Keys are converted as they are read (bf16/fp16
// caches are never copied to float). Several rows (GQA, or Tn > 1) over float keys: two small GEMMs (torch's
// BLAS), scores S = Q K^T for all rows at once and O += P V, so each key is read once for the whole group.
template <typename key_t, typename acc_t>
PYGPT_INLINE void attend_keys(const key_t* __restrict__ K, const key_t* __restrict__ V, int64_t kt, int64_t pos0,
                              int64_t first_pos, int64_t groups, int64_t rows, int64_t C, int64_t D,
                              DecodeScratch<acc_t>& w) {
  const auto visible = [&](int64_t r) {  // the keys [lo, hi) of the tile that row r sees
    const int64_t p = first_pos + r / groups;
    return std::pair{std::max<int64_t>(p - C + 1 - pos0, 0), std::min<int64_t>(p + 1 - pos0, kt)};
  };
  if constexpr (std::is_same_v<key_t, acc_t>) {
    if (rows > 1) {
      const int64_t ld = padded(kDecodeKeyTile);
      acc_t* __restrict__ S = w.s.data();
      cpu::gemm(false, true, rows, kt, D, acc_t(1), w.q.data(), D, K, D, acc_t(0), S, ld);
      for (int64_t r = 0; r < rows; ++r) {
        const auto [lo, hi] = visible(r);
        const acc_t rescale = softmax_update(S + r * ld, padded(kt), lo, hi, w.m[r], w.l[r]);  // 0 outside
        acc_t* __restrict__ o = w.acc.data() + r * D;
        if (rescale != acc_t(1))
          for (int64_t d = 0; d < D; ++d) o[d] *= rescale;
      }
      cpu::gemm(false, false, rows, D, kt, acc_t(1), S, ld, V, D, acc_t(1), w.acc.data(), D);
      return;
    }
  }
  acc_t* __restrict__ s = w.s.data();
  for (int64_t r = 0; r < rows; ++r) {
    const auto [lo, hi] = visible(r);
    if (lo >= hi) continue;
    const acc_t* __restrict__ q = w.q.data() + r * D;
    for (int64_t j = lo; j < hi; ++j) {
      const key_t* k = K + j * D;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += q[d] * static_cast<acc_t>(k[d]);
      s[j] = dot;
    }
    const acc_t rescale = softmax_update(s, padded(hi), lo, hi, w.m[r], w.l[r]);
    acc_t* __restrict__ o = w.acc.data() + r * D;
    if (rescale != acc_t(1))
      for (int64_t d = 0; d < D; ++d) o[d] *= rescale;
    for (int64_t j = lo; j < hi; ++j) {
      const acc_t pj = s[j];
      const key_t* v = V + j * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += pj * static_cast<acc_t>(v[d]);
    }
  }
}

// One task: (b, kv head hk), the Tn new tokens of every query head of the group, over the window of the cache
// and the new keys themselves.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
PYGPT_INLINE void decode_task(const DecodeArgs<scalar_t>& a, int64_t task, DecodeScratch<acc_t>& w) {
  const int64_t b = task / a.Hkv, hk = task % a.Hkv, Tn = a.Tn, D = a.D, C = a.C, groups = a.groups;
  const int64_t rows = groups * Tn, len = a.len[b];
  const RopeTable<acc_t>& table = a.rope_tables[b];
  for (int64_t t = 0; t < Tn; ++t) {
    for (int64_t g = 0; g < groups; ++g)
      load_rotated(a.Q.row(b, t, hk * groups + g), D, table, t, a.scale, w.q.data() + (t * groups + g) * D);
    load_rotated(a.Kn.row(b, t, hk), D, table, t, acc_t(1), w.kn.data() + t * D);
    const scalar_t* vr = a.Vn.row(b, t, hk);
    scalar_t* kr = a.Kr.row(b, t, hk);
    for (int64_t d = 0; d < D; ++d) {
      w.vn[t * D + d] = static_cast<acc_t>(vr[d]);
      kr[d] = static_cast<scalar_t>(w.kn[t * D + d]);
    }
  }
  std::fill(w.acc.begin(), w.acc.end(), acc_t(0));
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<acc_t>::infinity());
  std::fill(w.l.begin(), w.l.end(), acc_t(0));
  // Cached positions [lo, len): runs of consecutive ring slots, cut where the ring wraps and into tiles.
  const int64_t lo = std::max<int64_t>(a.st[b], len - C + 1);  // the oldest position any new token sees
  const scalar_t* kc = a.kc + (b * a.Hkv + hk) * C * D;
  const scalar_t* vc = a.vc + (b * a.Hkv + hk) * C * D;
  for (int64_t p0 = lo; p0 < len;) {
    const int64_t slot = p0 % C, kt = std::min({kDecodeKeyTile, len - p0, C - slot});
    attend_keys(kc + slot * D, vc + slot * D, kt, p0, len, groups, rows, C, D, w);
    p0 += kt;
  }
  for (int64_t j0 = 0; j0 < Tn; j0 += kDecodeKeyTile)  // the new tokens, causally among themselves
    attend_keys(w.kn.data() + j0 * D, w.vn.data() + j0 * D, std::min(kDecodeKeyTile, Tn - j0), len + j0, len,
                groups, rows, C, D, w);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r = t * groups + g;
      const acc_t inv_l = acc_t(1) / w.l[r];
      scalar_t* o = a.O.row(b, t, hk * groups + g);
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(w.acc[r * D + d] * inv_l);
    }
}

PYGPT_CLONED_TASKS(run_decode_task, decode_task, DecodeArgs, DecodeScratch)

template <typename scalar_t>
void decode_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                 const at::Tensor& v_cache, const int32_t* len, const int32_t* st, double scale, double base,
                 bool rope, at::Tensor& out, at::Tensor& k_rot) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), Tn = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(1), C = k_cache.size(2), groups = H / Hkv;
  std::vector<RopeTable<acc_t>> tables(B);  // once per sequence, shared by its kv heads' tasks
  if (rope)
    for (int64_t b = 0; b < B; ++b) tables[b] = RopeTable<acc_t>(Tn, D, base, [&](int64_t t) { return len[b] + t; });
  const DecodeArgs<scalar_t> args{
      Rows<const scalar_t>{q.data_ptr<scalar_t>(), q.stride(0), q.stride(1), q.stride(2)},
      Rows<const scalar_t>{k.data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.stride(2)},
      Rows<const scalar_t>{v.data_ptr<scalar_t>(), v.stride(0), v.stride(1), v.stride(2)},
      rows_of<scalar_t>(out), rows_of<scalar_t>(k_rot), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
      len, st, tables.data(), Tn, Hkv, C, D, groups, static_cast<acc_t>(scale)};
  // A decode step is tiny (one token): run it on the calling thread unless there is real work to share.
  const int64_t work_per_task = (std::min<int64_t>(C, 1 + len[0]) + Tn) * groups * Tn * D;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    DecodeScratch<acc_t> scratch(groups * Tn, Tn, D);
    for (int64_t task = begin; task < end; ++task) run_decode_task(args, task, scratch);
  });
}

at::Tensor rope_decode_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& lengths,
                                     at::Tensor& starts, double scale, double base, bool rope,
                                     bool advance_counters) {
  const char* op = "rope_decode_attention";
  check_cache_args(op, k_cache, v_cache, lengths, starts);
  check_new_rows(op, k_cache, k, v);
  check_counter_values(op, lengths, starts, k.size(1));
  TORCH_CHECK(q.dim() == 4 && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3) &&
                  q.size(2) % k_cache.size(1) == 0,
              "pygpt.", op, ": q must have shape (B, Tn, H, D) with H a multiple of the cache's ", k_cache.size(1),
              " heads, got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.stride(3) == 1, "pygpt.", op,
              ": q must have the cache's dtype and a contiguous last dimension");
  TORCH_CHECK(!rope || q.size(3) % 2 == 0, "pygpt.", op, ": head_dim must be even for RoPE, got ", q.size(3));
  auto out = at::empty(q.sizes(), q.options());
  auto k_rot = at::empty(k.sizes(), k.options());
  TORCH_CHECK(q.size(2) > 0 && q.size(3) > 0, "pygpt.", op, ": q must have at least one head and head_dim > 0, "
              "got ", q.sizes());
  if (q.numel() == 0) return out;  // no sequence or no new token: nothing to attend, append or advance
  const int32_t* len = lengths.data_ptr<int32_t>();
  const int32_t* st = starts.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rope_decode_attention_cpu", [&] {
    decode_impl<scalar_t>(q, k, v, k_cache, v_cache, len, st, scale, base, rope, out, k_rot);
    write_rows<scalar_t>(k_cache, k_rot, len);
    write_rows<scalar_t>(v_cache, v, len);
  });
  if (advance_counters) advance(lengths, starts, k.size(1), k_cache.size(2));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("kv_append", &kv_append_cpu);
  m.impl("kv_evict", &kv_evict_cpu);
  m.impl("rope_decode_attention", &rope_decode_attention_cpu);
}

}  // namespace pygpt
