"""User-facing argument checks shared by every op: each error names the op, the argument and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(op: str, name: str, t: object, *, ndim: int | Sequence[int] | None = None,
                 dtypes: Sequence[torch.dtype] | None = None, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """Raise TypeError/ValueError naming ``op`` and ``name`` unless ``t`` is a tensor meeting every constraint."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pygpt.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"pygpt.{op}: {name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"pygpt.{op}: {name} must be one of {_names(dtypes)}, "
                        f"got {str(t.dtype).removeprefix('torch.')}")
    if device is not None and t.device != device:
        raise ValueError(f"pygpt.{op}: {name} must be on {device} (like the other inputs), got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"pygpt.{op}: {name} must be contiguous (call .contiguous())")


def check_shape(op: str, name: str, t: torch.Tensor, *expected: tuple[int, ...]) -> None:
    """Raise ValueError unless ``t.shape`` equals one of the ``expected`` shapes."""
    if tuple(t.shape) not in expected:
        want = " or ".join(str(s) for s in expected)
        raise ValueError(f"pygpt.{op}: {name} must have shape {want}, got {tuple(t.shape)}")
