"""rope_attention: causal softmax attention with RoPE applied to q and k at absolute positions.

    out = softmax(rot(q) rot(k)^T * scale + causal mask) v

q (B, T, H, D); k, v (B, T, Hkv, D) with H a multiple of Hkv (grouped-query attention); positions (B, T) or (T,)
absolute positions, or None for no rotation (models with learned or sinusoidal positions). The last dimension
of each input must be contiguous; other strides are free (q, k, v may be views of one fused projection).

Backends: the C++ kernel on CPU (csrc/cpu/rope_attention.cpp) and the Triton kernel on CUDA
(kernels/rope_attention.py), forward and backward; the reference below (rotate-half RoPE in Torch, then
scaled_dot_product_attention) when forced, on other devices, and on CUDA for float64 or an odd head_dim (the
Triton kernels hold q and k as RoPE's two halves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from ._library import backend_for, extension
from .rotary import rope_cos_sin, rotary_reference

OP = "rope_attention"


def gpu_kernels_take(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the GPU attention kernels (prefill and decode) take q of ``dtype`` and ``head_dim``: not float64,
    and an even head_dim (they hold q and k as RoPE's two halves); pygpt.ops runs the reference otherwise."""
    return dtype != torch.float64 and head_dim % 2 == 0


def check_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4, dtypes=FLOAT_DTYPES, device=q.device, contiguous=False)
        if t.stride(-1) != 1:
            raise ValueError(f"pygpt.{OP}: {name}'s last dimension must be contiguous (stride 1)")
        if t.dtype != q.dtype:
            raise TypeError(f"pygpt.{OP}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    B, T, H, D = q.shape
    check_shape(OP, "k", k, (B, T, k.shape[2], D))
    if positions is not None and D % 2:
        raise ValueError(f"pygpt.{OP}: head_dim must be even for RoPE, got {D}")
    check_shape(OP, "v", v, tuple(k.shape))
    if k.shape[2] == 0 or H % k.shape[2]:
        raise ValueError(f"pygpt.{OP}: q's heads ({H}) must be a multiple of k's heads ({k.shape[2]})")
    if positions is not None:
        check_tensor(OP, "positions", positions, ndim=(1, 2), dtypes=INDEX_DTYPES, device=q.device)
        check_shape(OP, "positions", positions, (B, T), (T,))


def rope_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None,
                             causal: bool = True, scale: float | None = None, base: float = 10000.0) -> torch.Tensor:
    """The plain Torch path: rotate-half RoPE on q and k, then scaled_dot_product_attention. Returns (B, T, H, D)."""
    if positions is not None:
        q = rotary_reference(q, positions, base)
        k = rotary_reference(k, positions, base)
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
    backend = backend_for(q.device)
    if backend == "reference" or (backend != "cpp" and not gpu_kernels_take(q.dtype, q.shape[-1])):
        return rope_attention_reference(q, k, v, positions, causal, scale, base)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.pygpt.rope_attention(q, k, v, positions, scale, base, causal)[0]


def _fake(q, k, v, positions, scale, base=10000.0, causal=True):
    B, T, H, _ = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=lse_dtype)


def _fake_backward(grad_out, q, k, v, positions, out, lse, scale, base=10000.0, causal=True):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, positions, scale, base, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, positions, out, lse)
    ctx.scale, ctx.base, ctx.causal = scale, base, causal


def _backward(ctx, grad_out, grad_lse):
    q, k, v, positions, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.pygpt.rope_attention_backward(grad_out.contiguous(), q, k, v, positions, out, lse,
                                                         ctx.scale, ctx.base, ctx.causal)
    return dq, dk, dv, None, None, None, None


def _tables(q: torch.Tensor, positions: torch.Tensor | None, base: float):
    if positions is None:
        return None, None
    return rope_cos_sin(positions, q.shape[-1], base)


def _check_cuda_dtype(q: torch.Tensor) -> None:
    if q.dtype == torch.float64:
        raise TypeError(f"pygpt.{OP}: the CUDA kernel takes float32, float16 or bfloat16, got float64")


def _forward_on_cuda(q, k, v, positions, scale, base=10000.0, causal=True):
    from pygpt.kernels.rope_attention import rope_attention_fwd_triton

    _check_cuda_dtype(q)
    return rope_attention_fwd_triton(q, k, v, *_tables(q, positions, base), scale, causal)


def _backward_on_cuda(grad_out, q, k, v, positions, out, lse, scale, base=10000.0, causal=True):
    from pygpt.kernels.rope_attention import rope_attention_bwd_triton

    _check_cuda_dtype(q)
    return rope_attention_bwd_triton(grad_out, q, k, v, *_tables(q, positions, base), out, lse, scale, causal)


def _register() -> None:
    torch.library.register_fake("pygpt::rope_attention")(_fake)
    torch.library.register_fake("pygpt::rope_attention_backward")(_fake_backward)
    torch.library.register_kernel("pygpt::rope_attention", "cuda")(_forward_on_cuda)
    torch.library.register_kernel("pygpt::rope_attention_backward", "cuda")(_backward_on_cuda)
    torch.library.register_autograd("pygpt::rope_attention", _backward, setup_context=_setup_context)


if extension() is not None:
    _register()
