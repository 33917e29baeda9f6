"""Loading the compiled extension and choosing a backend per op and device.

Backends:
  * ``reference`` - the plain Torch code in ``pygpt.ops`` (the ground truth; works everywhere)
  * ``cpp``       - the C++ CPU kernels of ``pygpt._C`` (CPU tensors)
  * ``triton``    - the Triton kernels of ``pygpt.kernels`` (CUDA tensors; the default there)
  * ``cuda``      - the CUDA C++ kernels of ``pygpt._C`` (CUDA tensors, when compiled in)

``PYGPT_BACKEND=reference`` forces the reference everywhere (for debugging); ``PYGPT_CUDA_BACKEND=cuda``
picks the CUDA C++ kernels over Triton where both exist. Both are read once at import; ``set_backend`` changes
them at run time.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType

import torch

_BACKENDS = ("auto", "reference")
_CUDA_BACKENDS = ("triton", "cuda")


@dataclass
class _Choice:
    backend: str = field(default_factory=lambda: os.environ.get("PYGPT_BACKEND", "auto"))
    cuda_backend: str = field(default_factory=lambda: os.environ.get("PYGPT_CUDA_BACKEND", "triton"))

    def __post_init__(self) -> None:
        _validate(self.backend, self.cuda_backend)


def _validate(backend: str, cuda_backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"PYGPT_BACKEND must be one of {_BACKENDS}, got {backend!r}")
    if cuda_backend not in _CUDA_BACKENDS:
        raise ValueError(f"PYGPT_CUDA_BACKEND must be one of {_CUDA_BACKENDS}, got {cuda_backend!r}")


_choice = _Choice()


def set_backend(backend: str | None = None, cuda_backend: str | None = None) -> None:
    """Switch backends at run time: ``backend`` in {'auto', 'reference'}, ``cuda_backend`` in {'triton', 'cuda'}."""
    new_backend = _choice.backend if backend is None else backend
    new_cuda = _choice.cuda_backend if cuda_backend is None else cuda_backend
    _validate(new_backend, new_cuda)
    _choice.backend, _choice.cuda_backend = new_backend, new_cuda


def _load_extension() -> ModuleType | None:
    """``pygpt._C`` if it is built and matches the running torch, else None (ops then use the reference).

    An extension compiled against another torch can fail to load with undefined symbols, or load and crash
    later, so we compare versions before importing it.
    """
    if importlib.util.find_spec("pygpt._C") is None:
        _why_no_extension.append("pygpt._C is not built (install with `pip install .`)")
        return None
    try:
        from pygpt import _build_info
    except ImportError:
        _why_no_extension.append("pygpt/_build_info.py is missing (a broken install?)")
        return None
    running = torch.__version__.split("+")[0]
    built = _build_info.TORCH_VERSION.split("+")[0]
    if running != built:
        msg = (f"pygpt._C was built against torch {built} but torch {running} is running; using the Torch "
               "reference ops. Rebuild with `pip install --no-build-isolation .` against this torch.")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        _why_no_extension.append(msg)
        return None
    try:
        return importlib.import_module("pygpt._C")
    except (ImportError, OSError) as err:  # e.g. a missing shared library
        _why_no_extension.append(f"pygpt._C failed to load: {err}")
        return None


_why_no_extension: list[str] = []
# Loaded once at import, so the per-call backend choice below reads plain globals (cheap, and traceable by
# torch.compile).
_EXTENSION = _load_extension()
_TRITON = importlib.util.find_spec("triton") is not None


def extension() -> ModuleType | None:
    """The loaded ``pygpt._C`` module, or None when it is unavailable (see `extension_status`)."""
    return _EXTENSION


def extension_status() -> str:
    """One line for `pygpt info`: whether _C loaded, and with CUDA or not."""
    ext = extension()
    if ext is None:
        return "not loaded: " + "; ".join(_why_no_extension)
    return f"loaded (built against torch {ext.built_against_torch()}, " \
           f"CUDA kernels {'on' if ext.built_with_cuda() else 'off'}, OpenMP {'on' if ext.openmp() else 'off'})"


def triton_available() -> bool:
    """Whether Triton is importable (its kernels then run on CUDA tensors)."""
    return _TRITON


def backend_for(device: torch.device) -> str:
    """The backend an op runs with for tensors on ``device``: 'reference', 'cpp', 'triton' or 'cuda'.

    The compiled ops are registered by pygpt._C, so without it every op runs its reference.
    """
    if _choice.backend == "reference" or _EXTENSION is None:
        return "reference"
    if device.type == "cpu":
        return "cpp"
    if device.type == "cuda":
        cuda_cpp = _EXTENSION.built_with_cuda()
        if (_choice.cuda_backend == "cuda" and cuda_cpp) or not _TRITON:
            return "cuda" if cuda_cpp else "reference"
        return "triton"
    return "reference"
