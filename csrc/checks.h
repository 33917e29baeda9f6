// Argument checks shared by every op: each failure names the op, the argument and what was expected, so a
// user never sees a segfault or a silent wrong answer for a bad input.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <utility>

namespace pygpt {

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, "pygpt.", op, ": ", name, " must have ", ndim, " dimensions, got shape ",
              t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, "pygpt.", op,
              ": ", name, " must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(t.is_contiguous(), "pygpt.", op, ": ", name, " must be contiguous (call .contiguous())");
}

inline void check_index_tensor(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kLong || dt == at::kInt, "pygpt.", op, ": ", name, " must be int32 or int64, got ", dt);
  TORCH_CHECK(t.is_contiguous(), "pygpt.", op, ": ", name, " must be contiguous (call .contiguous())");
}

inline void check_same_device(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                              const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), "pygpt.", op, ": ", b_name, " must be on ", a_name, "'s device ",
              a.device(), ", got ", b.device());
}

// x (B, T, H, D) with D even; positions (B, T) or (T,) integer absolute positions.
inline void check_rotary_args(const at::Tensor& x, const at::Tensor& positions) {
  check_float_tensor("rotary", "x", x, 4);
  TORCH_CHECK(x.size(3) % 2 == 0, "pygpt.rotary: x's head_dim (last dimension) must be even, got ", x.size(3));
  check_index_tensor("rotary", "positions", positions);
  check_same_device("rotary", "x", x, "positions", positions);
  const bool per_batch = positions.dim() == 2 && positions.size(0) == x.size(0) && positions.size(1) == x.size(1);
  const bool shared = positions.dim() == 1 && positions.size(0) == x.size(1);
  TORCH_CHECK(per_batch || shared, "pygpt.rotary: positions must have shape (B, T) = (", x.size(0), ", ",
              x.size(1), ") or (T,) = (", x.size(1), ",), got ", positions.sizes());
}

// sample: logits (B, V) float, per-row parameter tensors (B,) (top_k int32, the rest float32), rng_state int64 (2,).
// Shapes, dtypes and devices only: the values are checked per row by the kernels.
inline void check_sample_args(const char* op, const at::Tensor& logits, const at::Tensor& temperature,
                       const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& min_p,
                       const at::Tensor& rng_state) {
  TORCH_CHECK(logits.dim() == 2, "pygpt.", op, ": logits must have 2 dimensions (B, V), got shape ",
              logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, "pygpt.", op,
              ": logits must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(logits.size(1) > 0, "pygpt.", op, ": logits has an empty vocabulary dimension, shape ",
              logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) == 1, "pygpt.", op,
              ": logits' last dimension must be contiguous (stride 1), got strides ", logits.strides());
  const int64_t B = logits.size(0);
  const std::pair<const char*, const at::Tensor*> rows[] = {
      {"temperature", &temperature}, {"top_k", &top_k}, {"top_p", &top_p}, {"min_p", &min_p}};
  for (const auto& [name, t] : rows) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "pygpt.", op, ": ", name, " must have shape (", B,
                ",), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == (t == &top_k ? at::kInt : at::kFloat), "pygpt.", op, ": ", name,
                " must be ", (t == &top_k ? "int32" : "float32"), ", got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), "pygpt.", op, ": ", name, " must be contiguous");
    check_same_device(op, "logits", logits, name, *t);
  }
  TORCH_CHECK(rng_state.dim() == 1 && rng_state.size(0) == 2 && rng_state.scalar_type() == at::kLong &&
                  rng_state.is_contiguous(),
              "pygpt.", op, ": rng_state must be a contiguous int64 tensor of shape (2,) [seed, offset], got ",
              rng_state.scalar_type(), " of shape ", rng_state.sizes());
  check_same_device(op, "logits", logits, "rng_state", rng_state);
}

}  // namespace pygpt
