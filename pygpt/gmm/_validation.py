"""Input checks and array conversion shared by the estimators.

Conventions used across `pygpt.gmm`:

* Inputs may be numpy arrays (or anything `numpy.asarray` accepts) or torch tensors.
* Computation happens on torch tensors on the estimator's device, in its dtype
  (float64 on CPU unless told otherwise, float32 on CUDA).
* Fitted attributes are numpy arrays; methods that take ``X`` return the type of ``X``
  (a tensor input gives a tensor on the input's device, anything else gives numpy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "NotFittedError",
    "ConvergenceWarning",
    "resolve_device",
    "resolve_dtype",
    "as_2d_tensor",
    "to_output",
    "check_choice",
    "check_int",
    "check_float",
    "chunk_rows",
]


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needs a fitted estimator and ``fit`` has not run."""


class ConvergenceWarning(UserWarning):
    """EM or Lloyd iterations stopped at ``max_iter`` before reaching ``tol``."""


def resolve_device(device: str | torch.device | None, X: Any = None) -> torch.device:
    """The device to compute on: the explicit one, else a tensor input's device, else CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available; expected 'cpu'")
        return dev
    if isinstance(X, torch.Tensor):
        return X.device
    return torch.device("cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """float64 on CPU (exactness), float32 on accelerators (bandwidth) unless given."""
    if dtype is None:
        return torch.float64 if device.type == "cpu" else torch.float32
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        if name not in ("float32", "float64", "float", "double"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
        dtype = {"float": torch.float32, "double": torch.float64}.get(name, getattr(torch, name))
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    return dtype


def as_2d_tensor(
    X: Any,
    *,
    name: str = "X",
    device: torch.device,
    dtype: torch.dtype,
    n_features: int | None = None,
    min_samples: int = 1,
) -> torch.Tensor:
    """Convert ``X`` to a finite (N, D) tensor on ``device`` in ``dtype``.

    Raises ValueError naming ``name`` for the wrong number of dimensions, non-numeric or
    non-finite values, too few samples, or (when ``n_features`` is given) a feature mismatch.
    """
    if isinstance(X, torch.Tensor):
        if X.is_complex() or X.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers; got a tensor of dtype {X.dtype}")
        t = X.detach()
    else:
        arr = np.asarray(X)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be numeric; got an array of dtype {arr.dtype}") from exc
        if np.iscomplexobj(arr):
            raise ValueError(f"{name} must hold real numbers; got complex values")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64 if dtype == torch.float64 else np.float32))
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got ndim={t.ndim} "
            f"with shape {tuple(t.shape)} (reshape a single feature with X.reshape(-1, 1))"
        )
    if t.shape[0] < min_samples:
        raise ValueError(f"{name} must have at least {min_samples} sample(s); got shape {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature; got shape {tuple(t.shape)}")
    if n_features is not None and t.shape[1] != n_features:
        raise ValueError(f"{name} has {t.shape[1]} features, but the estimator was fitted with {n_features}")
    t = t.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinity; expected only finite values")
    return t.contiguous()


def to_output(t: torch.Tensor, like: Any) -> Any:
    """Return ``t`` as a tensor on ``like``'s device when ``like`` is a tensor, else as numpy."""
    if isinstance(like, torch.Tensor):
        return t.to(like.device)
    return t.detach().cpu().numpy()


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_float(name: str, value: Any, minimum: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number >= {minimum}; got {value!r}") from exc
    if not math.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}; got {value!r}")
    return v


def chunk_rows(n_rows: int, row_elems: int, chunk_size: int | None, device: torch.device) -> int:
    """Rows per chunk so that a (rows, row_elems) temporary stays small.

    On CPU the temporaries should stay near the cache (a few MB); on GPU larger chunks
    amortise kernel launches while still bounding memory for N = 1e7 and beyond.
    """
    if chunk_size is not None:
        return max(1, int(chunk_size))
    budget = (1 << 18) if device.type == "cpu" else (1 << 25)
    return max(256, min(n_rows, budget // max(1, row_elems)))
