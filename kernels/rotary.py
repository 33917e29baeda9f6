"""rotary in Triton: one program per (b, t) row and block of heads.

out[..., :D/2] = x1*cos - x2*sin ; out[..., D/2:] = x2*cos + x1*sin, with angle = pos * inv_freq[i] in fp32
(inv_freq = base^(-2i/D) from pygpt.ops.rope_inv_freq, so every backend uses the very same frequencies).
fp16 / bf16 / fp32 compute in fp32; fp64 in fp64 (cos and sin of the same fp32 angles), as the reference.
The op is memory bound: each element is read and written once; cos/sin are computed once per row and block
of heads with tl.cos/tl.sin (full-precision sinf/cosf on NVIDIA, not the approximate
instructions: angles reach tens of thousands of radians).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(x_ptr, pos_ptr, inv_freq_ptr, out_ptr, T, H, pos_batch_stride, sign,
                   D: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
                   COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * T + t; int64 so offsets never overflow
    b = row // T
    t = row % T
    p = tl.load(pos_ptr + b * pos_batch_stride + t).to(tl.float32)
    i = tl.arange(0, BLOCK_HALF)
    inv_freq = tl.load(inv_freq_ptr + i, mask=i < HALF, other=0.0)
    angle = (p * inv_freq).to(COMPUTE)
    cos = tl.cos(angle)[None, :]
    sin = (tl.sin(angle) * sign)[None, :]
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (h[:, None] < H) & (i[None, :] < HALF)
    offs = row * H * D + h[:, None] * D + i[None, :]
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    x2 = tl.load(x_ptr + offs + HALF, mask=mask, other=0.0).to(COMPUTE)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + offs, (x1 * cos - x2 * sin).to(out_ty), mask=mask)
    tl.store(out_ptr + offs + HALF, (x2 * cos + x1 * sin).to(out_ty), mask=mask)


@functools.cache
def _inv_freq(head_dim: int, base: float, device: torch.device) -> torch.Tensor:
    # Cached per shape and device: no allocation or host->device copy per call (so the call can be graphed).
    from pygpt.ops.rotary import rope_inv_freq

    return rope_inv_freq(head_dim, base, device)


def rotary_triton(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0,
                  inverse: bool = False) -> torch.Tensor:
    """x (B, T, H, D) contiguous fp32/fp16/bf16/fp64, positions (B, T) or (T,) int -> rotated (B, T, H, D).

    Arguments are checked by pygpt.ops.rotary; this launcher assumes them valid.
    """
    B, T, H, D = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    half = D // 2
    block_half = triton.next_power_of_2(half)
    # About 4K elements per half-tile: big enough to stream, small enough to keep registers low at D=256.
    block_h = max(1, min(triton.next_power_of_2(H), 4096 // block_half))
    grid = (B * T, triton.cdiv(H, block_h))
    _rotary_kernel[grid](
        x, positions, _inv_freq(D, float(base), x.device), out, T, H,
        T if positions.dim() == 2 else 0, -1.0 if inverse else 1.0,
        D=D, HALF=half, BLOCK_H=block_h, BLOCK_HALF=block_half,
        COMPUTE=tl.float64 if x.dtype == torch.float64 else tl.float32, num_warps=4)
    return out
