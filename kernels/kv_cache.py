"""KV-cache kernels in Triton: append (write new rows at their ring-buffer slots), the counter update, evict.

Cache layout (pygpt.ops.kv_cache): k_cache, v_cache (B, Hkv, C, D); lengths, starts (B,) int32. Appending reads
lengths to find the slots, so the counters advance in a second launch once every row is written. Eviction only
moves counters. Neither ever shifts the cache, so both cost the same at any cache size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def ring_slot(position, C):
    """The slot of ``position`` in a ring of C slots: in [0, C) for any position, so that counters a caller
    corrupted (a negative length; int32 wrap-around) cannot index outside the cache (% keeps the dividend's sign)."""
    slot = position % C
    return tl.where(slot < 0, slot + C, slot)


@triton.jit
def _append_rows(KC, VC, K, V, LEN, skb, skt, skh, svb, svt, svh, Tn, Hkv, C,
                 D: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)  # one program per (b, t, head)
    h = pid % Hkv
    t = (pid // Hkv) % Tn
    b = pid // (Hkv * Tn)
    slot = ring_slot(tl.load(LEN + b) + t, C)
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    b64 = b.to(tl.int64)
    dst = ((b64 * Hkv + h) * C + slot) * D + d
    tl.store(KC + dst, tl.load(K + b64 * skb + t * skt + h * skh + d, mask=mask), mask=mask)
    tl.store(VC + dst, tl.load(V + b64 * svb + t * svt + h * svh + d, mask=mask), mask=mask)


@triton.jit
def _advance(LEN, START, B, Tn, C, BLOCK_B: tl.constexpr):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = b < B
    length = tl.load(LEN + b, mask=mask) + Tn
    start = tl.maximum(tl.load(START + b, mask=mask), length - C)
    tl.store(LEN + b, length, mask=mask)
    tl.store(START + b, start, mask=mask)


@triton.jit
def _evict(LEN, START, COUNTS, B, BLOCK_B: tl.constexpr):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = b < B
    length = tl.load(LEN + b, mask=mask)
    start = tl.load(START + b, mask=mask)
    n = tl.load(COUNTS + b, mask=mask)
    free = n < 0
    start = tl.where(free, 0, start + tl.minimum(tl.maximum(n, 0), length - start))  # (start + n may overflow)
    tl.store(START + b, start, mask=mask)
    tl.store(LEN + b, tl.where(free, 0, length), mask=mask)


def advance_counters_triton(lengths: torch.Tensor, starts: torch.Tensor, n_new: int, capacity: int) -> None:
    B = lengths.shape[0]
    _advance[(triton.cdiv(B, 256),)](lengths, starts, B, n_new, capacity, BLOCK_B=256)


def kv_append_triton(k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor) -> None:
    """Write k, v (B, Tn, Hkv, D) at slots (lengths + t) % C, then advance lengths/starts. In place."""
    B, Hkv, C, D = k_cache.shape
    Tn = k.shape[1]
    if B * Tn:
        _append_rows[(B * Tn * Hkv,)](k_cache, v_cache, k, v, lengths, k.stride(0), k.stride(1), k.stride(2),
                                      v.stride(0), v.stride(1), v.stride(2), Tn, Hkv, C,
                                      D=D, BLOCK_D=triton.next_power_of_2(D))
    advance_counters_triton(lengths, starts, Tn, C)


def kv_evict_triton(lengths: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor) -> None:
    B = lengths.shape[0]
    _evict[(triton.cdiv(B, 256),)](lengths, starts, counts, B, BLOCK_B=256)
