"""Reductions over the leading (component) axis of a (K, n) tensor.

torch's CPU ``argmin``/``argmax`` over a non-innermost axis do not vectorise (about 10x slower
than ``amin`` on a (8, 16384) float64 tensor), so the index is recovered from the fast
``amin``/``amax``: the first row that attains the extreme value.
"""

from __future__ import annotations

import contextlib

import torch


def _first_index(hit: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    # Row numbers where hit, K elsewhere; the float min is vectorised, the int64 one is not.
    rows = torch.arange(k, dtype=dtype, device=hit.device).unsqueeze(1)
    return torch.where(hit, rows, float(k)).amin(0).long()


def min0(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the minimum over axis 0 of d (K, n); ties go to the first row."""
    m = d.amin(0, keepdim=True)
    return m.squeeze(0), _first_index(d == m, d.shape[0], d.dtype)


def argmax0(d: torch.Tensor) -> torch.Tensor:
    """Index of the maximum over axis 0 of d (K, n); ties go to the first row."""
    return _first_index(d == d.amax(0, keepdim=True), d.shape[0], d.dtype)


@contextlib.contextmanager
def cpu_threads(n_threads: int | None, device: torch.device):
    """Run a CPU computation with ``n_threads`` torch threads (default 1), then restore the count.

    The chunked E/M-step kernels are memory-bound: a second thread buys ~15% on an idle
    2-core machine, while every multi-threaded op (MKL enters an OpenMP region even for tiny
    matmuls) must wait at a barrier for its workers; on a busy machine each wait can last a
    scheduler tick, making a fit tens of times slower. One thread avoids that. Note that
    torch's thread count is process-wide while the call runs.
    """
    wanted = 1 if n_threads is None else int(n_threads)
    previous = torch.get_num_threads()
    if device.type != "cpu" or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
