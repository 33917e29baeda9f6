"""rope_attention: causal softmax attention with RoPE applied to q and k at absolute positions.

    out = softmax(rot(q) rot(k)^T * scale + causal mask) v

q (B, T, H, D); k, v (B, T, Hkv, D) with H a multiple of Hkv (grouped-query attention); positions (B, T) or (T,)
absolute positions, or None for no rotation (models with learned or sinusoidal positions). The last dimension
of each input must be contiguous; other strides are free (q, k, v may be views of one fused projection).

The fused kernels (Triton/C++, issue #4) are not written yet: every device runs the reference below, which is
the rotary op followed by torch's scaled_dot_product_attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from .rotary import rotary

OP = "rope_attention"


def check_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4, dtypes=FLOAT_DTYPES, device=q.device, contiguous=False)
        if t.stride(-1) != 1:
            raise ValueError(f"pygpt.{OP}: {name}'s last dimension must be contiguous (stride 1)")
        if t.dtype != q.dtype:
            raise TypeError(f"pygpt.{OP}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    B, T, H, D = q.shape
    check_shape(OP, "k", k, (B, T, k.shape[2], D))
    check_shape(OP, "v", v, tuple(k.shape))
    if k.shape[2] == 0 or H % k.shape[2]:
        raise ValueError(f"pygpt.{OP}: q's heads ({H}) must be a multiple of k's heads ({k.shape[2]})")
    if positions is not None:
        check_tensor(OP, "positions", positions, ndim=(1, 2), dtypes=INDEX_DTYPES, device=q.device)
        check_shape(OP, "positions", positions, (B, T), (T,))


def rope_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None,
                             causal: bool = True, scale: float | None = None, base: float = 10000.0) -> torch.Tensor:
    """The plain Torch path: rotary on q and k, then scaled_dot_product_attention. Returns (B, T, H, D)."""
    if positions is not None:
        q = rotary(q.contiguous(), positions, base)
        k = rotary(k.contiguous(), positions, base)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return out.transpose(1, 2)  # (B, T, H, D)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None = None,
                   causal: bool = True, scale: float | None = None, base: float = 10000.0) -> torch.Tensor:
    """Causal attention with RoPE at ``positions`` (None: no rotation); differentiable. Returns (B, T, H, D)."""
    check_attention_args(q, k, v, positions)
    return rope_attention_reference(q, k, v, positions, causal, scale, base)
