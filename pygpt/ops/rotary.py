"""rotary: rotate-half RoPE applied to x at absolute positions.

For head dimension D and frequency index i < D/2, the angle of a token at position p is
``p * base^(-2i/D)`` (the inverse frequency computed in float64 and rounded to float32, the product in float32,
the same on every backend). With x1 = x[..., :D/2] and x2 = x[..., D/2:]:

    out[..., :D/2] = x1 * cos - x2 * sin
    out[..., D/2:] = x2 * cos + x1 * sin

The shared building block of the attention and KV-cache kernels.
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from ._library import backend_for, extension

OP = "rotary"


def rope_inv_freq(head_dim: int, base: float = 10000.0, device: torch.device | str | None = None) -> torch.Tensor:
    """(D/2,) float32 inverse frequencies base^(-2i/D), computed in float64 then rounded."""
    i = torch.arange(head_dim // 2, dtype=torch.float64, device=device)
    return (base ** (-2.0 * i / head_dim)).float()


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(..., D/2) float32 angles for integer ``positions`` of any shape."""
    return positions.float()[..., None] * rope_inv_freq(head_dim, base, positions.device)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (Bc, T, D/2) float32 of ``positions`` (B, T) or (T,) (Bc = B or 1), contiguous."""
    angles = rope_angles(positions if positions.dim() == 2 else positions[None], head_dim, base)
    return angles.cos().contiguous(), angles.sin().contiguous()


def rotary_reference(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0,
                     inverse: bool = False) -> torch.Tensor:
    """The plain Torch rotary: x (B, T, H, D), positions (B, T) or (T,) -> (B, T, H, D) in x's dtype.

    Computes in float32 (float64 for float64 input, with cos/sin of the float32 angles taken in float64).
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = rope_angles(positions, x.shape[-1], base).to(compute)  # (B, T, D/2) or (T, D/2)
    if angles.dim() == 2:
        angles = angles[None]
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]  # (B, T, 1, D/2)
    return rotate_pairs(x, cos, -sin if inverse else sin).to(x.dtype)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE with given tables: [x1 cos - x2 sin, x2 cos + x1 sin] for x's halves x1, x2 (..., D/2),
    computed and returned in cos's dtype; cos and sin broadcast against x1. -sin rotates back."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def check_rotary_args(x: torch.Tensor, positions: torch.Tensor) -> None:
    """Raise a clear error unless x is (B, T, H, D) float with D even and positions is (B, T) or (T,) int."""
    check_tensor(OP, "x", x, ndim=4, dtypes=FLOAT_DTYPES)
    if x.shape[-1] % 2:
        raise ValueError(f"pygpt.{OP}: x's head_dim (last dimension) must be even, got {x.shape[-1]}")
    check_tensor(OP, "positions", positions, ndim=(1, 2), dtypes=INDEX_DTYPES, device=x.device)
    B, T = x.shape[:2]
    check_shape(OP, "positions", positions, (B, T), (T,))


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, inverse: bool = False) -> torch.Tensor:
    """Apply RoPE to x (B, T, H, D) at absolute ``positions`` (B, T) or (T,); differentiable.

    Runs the C++ kernel on CPU and the Triton (or CUDA C++) kernel on CUDA; the reference when forced
    (PYGPT_BACKEND=reference) or when the extension is unavailable.
    """
    check_rotary_args(x, positions)
    if backend_for(x.device) == "reference":
        return rotary_reference(x, positions, base, inverse)
    return torch.ops.pygpt.rotary(x, positions, base, inverse)


def _rotary_fake(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0,
                 inverse: bool = False) -> torch.Tensor:
    return torch.empty_like(x)


def _rotary_on_cuda(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0,
                    inverse: bool = False) -> torch.Tensor:
    if backend_for(x.device) == "cuda":
        return torch.ops.pygpt.rotary_cuda(x, positions, base, inverse)
    from pygpt.kernels.rotary import rotary_triton

    return rotary_triton(x, positions, base, inverse)


def _setup_context(ctx, inputs, output) -> None:
    _, positions, base, inverse = inputs
    ctx.save_for_backward(positions)
    ctx.base, ctx.inverse = base, inverse


def _backward(ctx, grad_out: torch.Tensor):
    # A rotation's adjoint is the rotation by the negative angle.
    (positions,) = ctx.saved_tensors
    grad_x = torch.ops.pygpt.rotary(grad_out.contiguous(), positions, ctx.base, not ctx.inverse)
    return grad_x, None, None, None


def _register() -> None:
    torch.library.register_fake("pygpt::rotary")(_rotary_fake)
    torch.library.register_fake("pygpt::rotary_cuda")(_rotary_fake)
    torch.library.register_kernel("pygpt::rotary", "cuda")(_rotary_on_cuda)
    torch.library.register_autograd("pygpt::rotary", _backward, setup_context=_setup_context)


if extension() is not None:
    _register()
