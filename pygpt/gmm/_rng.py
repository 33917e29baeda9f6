"""Seeding helpers.

All random draws are made by a CPU ``torch.Generator`` and moved to the compute device, so a
given ``random_state`` gives the same initialisation on CPU and on GPU.
"""

from __future__ import annotations

import numpy as np
import torch

RandomState = int | np.random.Generator | np.random.RandomState | torch.Generator | None


def make_generator(random_state: RandomState) -> torch.Generator:
    """A CPU torch.Generator from an int seed, a numpy generator, a torch generator or None."""
    if isinstance(random_state, torch.Generator):
        if random_state.device.type != "cpu":
            raise ValueError("random_state must be a CPU torch.Generator (draws are made on CPU)")
        return random_state
    if random_state is None:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    elif isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer; got {random_state}")
        seed = int(random_state)
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(0, 2**62))
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    else:
        raise ValueError(
            "random_state must be None, an int, a numpy Generator/RandomState or a CPU torch.Generator; "
            f"got {type(random_state).__name__}"
        )
    return torch.Generator().manual_seed(seed)


def next_seed(gen: torch.Generator) -> int:
    """Draw a fresh seed for a sub-procedure (one k-means run, one EM restart)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen).item())


def rand(shape: tuple[int, ...], gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on CPU, then moved: device-independent results."""
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def randn(shape: tuple[int, ...], gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def sample_index(weights: torch.Tensor, gen: torch.Generator, n: int = 1) -> torch.Tensor:
    """Draw ``n`` row indices with probability proportional to non-negative ``weights`` (N,).

    Uses an inverse-CDF lookup (cumsum + searchsorted) so only ``n`` uniforms cross devices.
    If all weights are zero (every point already chosen), falls back to uniform draws.
    """
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    total = cdf[-1]
    u = torch.rand((n,), generator=gen, dtype=torch.float64).to(weights.device)
    if not bool(total > 0):
        return torch.floor(u * weights.shape[0]).long().clamp_(max=weights.shape[0] - 1)
    idx = torch.searchsorted(cdf, u * total, right=True)
    return idx.clamp_(max=weights.shape[0] - 1)
