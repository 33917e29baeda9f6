"""Building blocks shared by the models: norms, MLPs, the sinusoidal position table."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's has no bias=False before 2.1)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return LayerNorm(dim, bias)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class MLP(nn.Module):
    """GELU: down(gelu(up(x))) with a 4x hidden layer. SwiGLU: down(silu(gate(x)) * up(x)) with a hidden layer
    of 8/3 x (rounded up to a multiple of 8), so both have about the same parameter count."""

    def __init__(self, dim: int, kind: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {kind!r}")
        self.kind = kind
        hidden = 4 * dim if kind == "gelu" else 8 * math.ceil(8 * dim / 3 / 8)
        self.up = nn.Linear(dim, hidden * (2 if kind == "swiglu" else 1), bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = nn.GELU() if kind == "gelu" else nn.SiLU()  # (a module, so diagnostics can hook its output)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.down(h))


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """(n_positions, dim) table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : dim // 2]
    return table.float()
