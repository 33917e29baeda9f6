"""Helpers for comparing kernels with their references, with tolerances stated per dtype."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class KernelCount(TorchDispatchMode):
    """Count the ops that would each launch a kernel on a GPU, by name: every aten/custom op run inside the
    ``with`` block that is not a view (``to`` and friends count only when they copy).

    Launches, not arithmetic, bound a small model's decode step, and a CPU run dispatches the same ops (under
    CPU autocast, the same casts) that a CUDA run launches: a launch budget can be tested without a GPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:  # `to` is a view op when it does not copy
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            outputs = out if isinstance(out, (tuple, list)) else [out]
            if all(o.untyped_storage().data_ptr() in inputs for o in outputs if isinstance(o, torch.Tensor)):
                return out
        elif func.__name__.startswith("dropout.") and not kwargs.get("train", args[2] if len(args) > 2 else True):
            return out  # eval-mode dropout returns its input
        self.ops[str(func).removesuffix(".default")] += 1
        return out
