"""Make Triton's CPU interpreter (TRITON_INTERPRET=1) compute bfloat16 as a GPU does, for the tests.

The interpreter holds a bfloat16 tensor as its raw 16-bit patterns (numpy has no bfloat16), and two of its ops
then differ from a GPU:
  * a float32 -> bfloat16 cast truncates the mantissa, where a GPU rounds to nearest even: every rounding is
    biased towards zero, and in a long sum (attention's dV over a GQA group) the bias adds up past tolerances;
  * tl.dot on bfloat16 operands multiplies the bit patterns as integers: garbage.
Kernels are written for the GPU; rather than carry workarounds for both in every kernel, the tests run them on
an interpreter patched here to do what the GPU does (tests/test_triton_interpreter.py checks the patch).
"""

from __future__ import annotations

import numpy as np
import torch


def _bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def round_bfloat16_like_a_gpu() -> None:
    """Patch the interpreter's float32 -> bfloat16 cast (to round to nearest even) and its bfloat16 dot (to
    multiply values). Raises RuntimeError if this Triton's interpreter is not built the way the patch expects."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not all(hasattr(builder, name) for name in ("cast_impl", "create_dot")):
        raise RuntimeError("tests/triton_interpreter.py: this Triton's interpreter has no InterpreterBuilder."
                           "cast_impl / create_dot to patch; update the patch for it")
    if getattr(builder, "_pygpt_bf16_like_a_gpu", False):
        return
    cast_impl, create_dot = builder.cast_impl, builder.create_dot

    def cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            # torch's own float32 -> bfloat16 conversion rounds to nearest even (and keeps NaN a NaN)
            values = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(bits.reshape(np.shape(src.data)), dst_type.scalar)
        return cast_impl(self, src, dst_type)

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16 or b.dtype.scalar == tl.bfloat16:
            def widened(x):
                return interpreter.TensorHandle(_bf16_bits_to_float32(x.data) if x.dtype.scalar == tl.bfloat16
                                                else x.data.astype(np.float32), tl.float32)
            a, b = widened(a), widened(b)
        return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.cast_impl, builder.create_dot = cast, dot
    builder._pygpt_bf16_like_a_gpu = True
