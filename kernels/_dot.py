"""The tensor-core dot of the attention kernels, with a switch for Triton's CPU interpreter."""

import torch
import triton
import triton.language as tl

from ._device import interpreting


def dot_f32(dtype: torch.dtype) -> bool:
    """The DOT_F32 flag of ``dot`` for operands of ``dtype``: bf16 under Triton's CPU interpreter only."""
    return dtype == torch.bfloat16 and interpreting()


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
    """a @ b accumulated in fp32. DOT_F32 widens the operands first (exactly): Triton's CPU interpreter multiplies
    the bit patterns of bf16 operands, so the bf16 tests under it need it; compiled kernels never set it."""
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)
