"""The KV cache of a whole model: per layer, ring buffers k, v (B, Hkv, C, D); one pair of lengths/starts
counters (B,) for all layers (see pygpt.ops.kv_cache), since every layer appends the same positions. Each
layer's decode op reads them and the last layer's advances them: one counter update a step, not one a layer.

``rebase`` keeps a long RoPE generation's positions small: RoPE attention depends only on the distance between
query and key, so every position may be shifted by the same amount if the cached keys (stored rotated) are
rotated back by it. Without it positions grow without bound, and they enter RoPE's angles in float32: the lite
model's next-token distribution moves by a KL of 1.4e-5 nats at a million positions, 7e-3 at ten million and
becomes noise near 2^24 (benchmarks/rope_position_drift.py)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pygpt.ops.rotary import rope_inv_freq, rotate_pairs


class LayerCache(NamedTuple):
    """What layer i's decode op takes: its ring buffers, the shared counters, and whether it advances them."""
    k: torch.Tensor
    v: torch.Tensor
    lengths: torch.Tensor
    starts: torch.Tensor
    advance: bool


class KVCache:
    """Preallocated cache for ``batch_size`` sequences of up to ``capacity`` positions each (a sliding window)."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, capacity: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        if batch_size <= 0 or capacity <= 0:
            raise ValueError(f"KVCache: batch_size and capacity must be > 0, got {batch_size} and {capacity}")
        self.batch_size, self.capacity = batch_size, capacity
        shape = (batch_size, n_kv_head, capacity, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lengths = torch.zeros(batch_size, device=device, dtype=torch.int32)  # (B,) the next position
        self.starts = torch.zeros(batch_size, device=device, dtype=torch.int32)  # (B,) the oldest valid one

    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> KVCache:
        cfg = model.config
        param = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.kv_heads, capacity or cfg.block_size, cfg.head_dim,
                   device or param.device, dtype or param.dtype)

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.k[i], self.v[i], self.lengths, self.starts, advance=i == len(self.k) - 1)

    def rows(self, b: int) -> KVCache:
        """A view of sequence b alone (batch of one); writes go to this cache."""
        view = object.__new__(KVCache)
        view.batch_size, view.capacity = 1, self.capacity
        view.k = [t[b:b + 1] for t in self.k]
        view.v = [t[b:b + 1] for t in self.v]
        view.lengths = self.lengths[b:b + 1]
        view.starts = self.starts[b:b + 1]
        return view

    def positions(self, n_new: int) -> torch.Tensor:
        """(B, n_new) absolute positions of the next n_new tokens of every sequence (on the device)."""
        return self.lengths.long()[:, None] + torch.arange(n_new, device=self.lengths.device)

    @torch.no_grad()
    def rebase(self, base: float = 10000.0) -> torch.Tensor:
        """Shift every sequence's positions down by the largest multiple of C not above its oldest one (so each
        position keeps its slot p mod C), and rotate the cached keys back by the same angle: attention over
        the cache is unchanged (RoPE is relative) and positions stay below 2C. For caches of RoPE keys (base =
        the model's rope_base). Returns the shifts (B,) int64. On the device, nothing read back to the host.

        The angle shift * inv_freq is taken in float64 (the shift can be large), the rotation in float32
        (float64 for a float64 cache); each key is rounded to the cache dtype once more.
        """
        C = self.capacity
        shift = torch.div(self.starts.long(), C, rounding_mode="floor") * C  # (B,)
        D = self.k[0].shape[-1]
        angles = shift.double()[:, None] * rope_inv_freq(D, base, shift.device).double()[None]  # (B, D/2)
        compute = torch.float64 if self.k[0].dtype == torch.float64 else torch.float32
        cos = angles.cos().to(compute)[:, None, None, :]  # (B, 1, 1, D/2)
        sin = angles.sin().to(compute)[:, None, None, :]
        for k in self.k:
            k.copy_(rotate_pairs(k, cos, -sin))  # the inverse rotation by the shift's angle
        self.lengths.sub_(shift.to(self.lengths.dtype))
        self.starts.sub_(shift.to(self.starts.dtype))
        return shift

    def reset(self) -> None:
        self.lengths.zero_()
        self.starts.zero_()
