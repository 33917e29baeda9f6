"""The numbers behind `pygpt viz pe`: sinusoidal encodings, RoPE angles and scores, learned position embeddings.

Kept apart from the plotting so they are tested as numbers (tests/test_viz_pe.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pygpt.models.layers import sinusoidal_table
from pygpt.ops.rotary import rope_angles, rotary_reference


def sinusoidal(n_positions: int, dim: int) -> torch.Tensor:
    """(P, dim) table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...)."""
    return sinusoidal_table(n_positions, dim)


def similarity(table: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """(P, P) dot products (or cosine similarities) between all pairs of rows of a (P, dim) table."""
    table = table.double()
    if cosine:
        table = F.normalize(table, dim=-1)
    return table @ table.T


def rope_angle_table(n_positions: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(P, D/2) rotation angle (radians, not wrapped) of each frequency pair at each position."""
    return rope_angles(torch.arange(n_positions), head_dim, base).double()


def rope_scores(q: torch.Tensor, k: torch.Tensor, n_positions: int, base: float = 10000.0) -> torch.Tensor:
    """(P, P) scores rot(q, m) . rot(k, n) for fixed vectors q, k (D,) placed at every pair of positions m, n."""
    positions = torch.arange(n_positions)
    q_rot = rotary_reference(q.double().expand(1, n_positions, 1, -1).contiguous(), positions, base)[0, :, 0]
    k_rot = rotary_reference(k.double().expand(1, n_positions, 1, -1).contiguous(), positions, base)[0, :, 0]
    return q_rot @ k_rot.T


def rope_decay(head_dim: int, max_distance: int, base: float = 10000.0) -> torch.Tensor:
    """(max_distance,) mean |score| of all-ones q and k at relative distance 0..max_distance-1, over D/2 pairs:
    the long-range decay of RoPE (the score is sum_i cos(d * theta_i), normalised to 1 at distance 0)."""
    half = head_dim // 2
    ones = torch.ones(head_dim, dtype=torch.float64)
    scores = rope_scores(ones, ones, max_distance, base)[0]  # q at 0, k at d: depends on d only
    return scores.abs() / (2 * half)


def pca_2d(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (P, dim) rows on their first two principal components: (P, 2) coordinates and the (2,) fraction
    of variance each explains."""
    centred = table.double() - table.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    explained = s**2 / (s**2).sum()
    return centred @ v[:2].T, explained[:2]


def learned_positions(model) -> torch.Tensor:
    """(block_size, n_embd) learned absolute position embeddings of a GPT trained with pos='learned'."""
    if getattr(model.config, "pos", None) != "learned":
        raise ValueError(f"the model uses pos={getattr(model.config, 'pos', None)!r}; learned position embeddings "
                         "need a checkpoint trained with --set pos=learned")
    return model.wpe.weight.detach().double().cpu()
