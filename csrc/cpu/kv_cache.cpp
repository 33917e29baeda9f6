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
#include <vector>

#include "../checks.h"
#include "common.h"

namespace pygpt {
namespace {

using namespace cpu;

void check_cache_args(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& lengths, const at::Tensor& starts) {
  check_float_tensor(op, "k_cache", k_cache, 4);
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
      st[b] = std::min(st[b] + n[b], len[b]);
    }
  }
}

// ---- decode attention ---------------------------------------------------------------------------------------

template <typename scalar_t>
void decode_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                 at::Tensor& v_cache, const int32_t* len, const int32_t* st, double scale, double base, bool rope,
                 at::Tensor& out, at::Tensor& k_rot) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), Tn = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(1), C = k_cache.size(2), groups = H / Hkv;
  const auto Q = Rows<const scalar_t>{q.data_ptr<scalar_t>(), q.stride(0), q.stride(1), q.stride(2)};
  const auto Kn = Rows<const scalar_t>{k.data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.stride(2)};
  const auto Vn = Rows<const scalar_t>{v.data_ptr<scalar_t>(), v.stride(0), v.stride(1), v.stride(2)};
  const auto O = rows_of<scalar_t>(out);
  const auto Kr = rows_of<scalar_t>(k_rot);  // rotated new keys (B, Tn, Hkv, D), appended afterwards
  const scalar_t* kc = k_cache.data_ptr<scalar_t>();
  const scalar_t* vc = v_cache.data_ptr<scalar_t>();

  // A decode step is tiny (one token): run it on the calling thread unless there is real work to share.
  const int64_t work_per_task = (std::min<int64_t>(C, 1 + len[0]) + Tn) * groups * Tn * D;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    const int64_t R = groups * Tn;  // query rows of one task: every (token, head of the group)
    std::vector<acc_t> qs(R * D), kn(Tn * D), vn(Tn * D), acc(R * D), m(R), l(R), s(R), row(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, hk = task % Hkv;
      // RoPE tables for the Tn new positions of this sequence.
      std::optional<at::Tensor> pos;
      if (rope) pos = at::arange(len[b], len[b] + Tn, at::TensorOptions().dtype(at::kLong));
      const RopeTable<acc_t> table = rope ? RopeTable<acc_t>(*pos, 0, Tn, D, base) : RopeTable<acc_t>();
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t g = 0; g < groups; ++g)
          load_rotated(Q.row(b, t, hk * groups + g), D, table, t, static_cast<acc_t>(scale),
                       qs.data() + (t * groups + g) * D);
        load_rotated(Kn.row(b, t, hk), D, table, t, acc_t(1), kn.data() + t * D);
        const scalar_t* vr = Vn.row(b, t, hk);
        for (int64_t d = 0; d < D; ++d) vn[t * D + d] = static_cast<acc_t>(vr[d]);
        scalar_t* kr = Kr.row(b, t, hk);
        for (int64_t d = 0; d < D; ++d) kr[d] = static_cast<scalar_t>(kn[t * D + d]);
      }
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(l.begin(), l.end(), acc_t(0));
      // Online softmax over one key (position kp) for every row that can see it.
      auto visit = [&](int64_t kp, const acc_t* key, const auto* value, int64_t first_t) {
        for (int64_t t = first_t; t < Tn; ++t) {
          const int64_t p = len[b] + t;
          if (kp > p || kp <= p - C) continue;  // causal, and inside the window of the last C positions
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t r = t * groups + g;
            const acc_t* qr = qs.data() + r * D;
            acc_t dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += qr[d] * key[d];
            const acc_t m_new = std::max(m[r], dot);
            const acc_t rescale = std::exp(m[r] - m_new), w = std::exp(dot - m_new);
            l[r] = l[r] * rescale + w;
            acc_t* a = acc.data() + r * D;
            for (int64_t d = 0; d < D; ++d) a[d] = a[d] * rescale + w * static_cast<acc_t>(value[d]);
            m[r] = m_new;
          }
        }
      };
      const int64_t lo = std::max<int64_t>(st[b], len[b] - C + 1);  // oldest position any new token sees
      for (int64_t kp = lo; kp < len[b]; ++kp) {
        const int64_t slot = ((b * Hkv + hk) * C + kp % C) * D;
        for (int64_t d = 0; d < D; ++d) row[d] = static_cast<acc_t>(kc[slot + d]);
        visit(kp, row.data(), vc + slot, 0);
      }
      for (int64_t t = 0; t < Tn; ++t) visit(len[b] + t, kn.data() + t * D, vn.data() + t * D, t);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t r = t * groups + g;
          scalar_t* o = O.row(b, t, hk * groups + g);
          for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[r * D + d] / l[r]);
        }
    }
  });
}

at::Tensor rope_decode_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& lengths,
                                     at::Tensor& starts, double scale, double base, bool rope) {
  const char* op = "rope_decode_attention";
  check_cache_args(op, k_cache, v_cache, lengths, starts);
  check_new_rows(op, k_cache, k, v);
  TORCH_CHECK(q.dim() == 4 && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3) &&
                  q.size(2) % k_cache.size(1) == 0,
              "pygpt.", op, ": q must have shape (B, Tn, H, D) with H a multiple of the cache's ", k_cache.size(1),
              " heads, got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.stride(3) == 1, "pygpt.", op,
              ": q must have the cache's dtype and a contiguous last dimension");
  TORCH_CHECK(!rope || q.size(3) % 2 == 0, "pygpt.", op, ": head_dim must be even for RoPE, got ", q.size(3));
  auto out = at::empty(q.sizes(), q.options());
  auto k_rot = at::empty(k.sizes(), k.options());
  if (q.numel() == 0) return out;
  const int32_t* len = lengths.data_ptr<int32_t>();
  const int32_t* st = starts.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rope_decode_attention_cpu", [&] {
    decode_impl<scalar_t>(q, k, v, k_cache, v_cache, len, st, scale, base, rope, out, k_rot);
    write_rows<scalar_t>(k_cache, k_rot, len);
    write_rows<scalar_t>(v_cache, v, len);
  });
  advance(lengths, starts, k.size(1), k_cache.size(2));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("kv_append", &kv_append_cpu);
  m.impl("kv_evict", &kv_evict_cpu);
  m.impl("rope_decode_attention", &rope_decode_attention_cpu);
}

}  // namespace pygpt
