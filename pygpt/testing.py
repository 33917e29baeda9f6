"""Helpers for comparing kernels with their references, with tolerances stated per dtype."""

from __future__ import annotations

import torch

# (atol, rtol) for an op whose result is computed in float32 and rounded once to the output dtype; compared
# against a float64 reference on the same (already rounded) inputs. bf16 keeps 8 bits of mantissa (one rounding
# is up to 2^-8 relative), fp16 keeps 11 (2^-11); two roundings may land one unit apart.
ELEMENTWISE_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 tol: dict[torch.dtype, tuple[float, float]] = ELEMENTWISE_TOL, msg: str = "") -> None:
    """Assert ``actual`` matches ``expected`` (compared in float64) with ``tol[dtype]``; NaN never passes."""
    dtype = dtype or actual.dtype
    atol, rtol = tol[dtype]
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{msg} result has NaN/inf")
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol, msg=msg or None)
