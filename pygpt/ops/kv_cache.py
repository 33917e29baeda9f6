"""KV-cache ops: kv_append, kv_evict and the decode step rope_decode_attention.

The cache of one layer is a ring buffer per sequence: k_cache, v_cache (B, Hkv, C, D), the key of position p of
sequence b in slot p % C (stored after RoPE); lengths (B,) int32 counts the tokens appended so far (the next
position) and starts (B,) int32 is the oldest valid position. Valid positions are [starts, lengths), at most C.

Because each cached key carries its own rotation and RoPE scores depend only on q/k distance, a full cache keeps
working: appending position p overwrites slot p % C (position p - C, the oldest), and decoding goes on with a
sliding window of C positions. Positions enter the rotation as float32 angles, which lose precision in the
millions: pygpt.infer.KVCache.rebase shifts them back (rotating the cached keys to match), as the generation
engine does every 2^14 tokens. Eviction is bookkeeping (move starts), never a shift of the cache.

rope_decode_attention: for Tn new tokens at positions lengths .. lengths + Tn - 1, rotate q and k, attend each
new token over the positions (p - C, p] that are valid (old cache entries and the new tokens up to itself), then
append the rotated keys and the values.
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_tensor
from ._library import backend_for, extension
from .attention import gpu_kernels_take
from .rotary import rotary_reference

# ---- references (the ground truth) --------------------------------------------------------------------------


def kv_append_reference(k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                        k: torch.Tensor, v: torch.Tensor) -> None:
    """Write k, v (B, Tn, Hkv, D) at positions lengths .. lengths + Tn - 1 (slots mod C); advance the counters."""
    B, Tn = k.shape[:2]
    C = k_cache.shape[2]
    slots = (lengths.long()[:, None] + torch.arange(Tn, device=k.device)) % C  # (B, Tn)
    batch = torch.arange(B, device=k.device)[:, None]
    k_cache[batch, :, slots] = k  # advanced indices first: the indexed view is (B, Tn, Hkv, D)
    v_cache[batch, :, slots] = v
    lengths += Tn
    torch.maximum(starts, lengths - C, out=starts)


def kv_evict_reference(lengths: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor) -> None:
    """Drop the oldest counts[b] entries of each sequence; counts[b] < 0 frees sequence b (lengths = starts = 0)."""
    free = counts < 0
    starts += torch.minimum(counts.clamp(min=0), lengths - starts)  # (not min(starts + counts, ...): may overflow)
    starts.masked_fill_(free, 0)
    lengths.masked_fill_(free, 0)


def rope_decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                                    v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                                    scale: float | None = None, base: float = 10000.0, rope: bool = True,
                                    advance: bool = True) -> torch.Tensor:
    """The decode step in plain Torch (a loop over sequences); mutates the cache like the kernels."""
    B, Tn, H, D = q.shape
    Hkv, C = k_cache.shape[1], k_cache.shape[2]
    scale = D ** -0.5 if scale is None else scale
    positions = lengths.long()[:, None] + torch.arange(Tn, device=q.device)  # (B, Tn)
    if rope:
        q, k = rotary_reference(q, positions, base), rotary_reference(k, positions, base)
    out = torch.empty_like(q)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    for b in range(B):
        old = torch.arange(int(starts[b]), int(lengths[b]), device=q.device)
        keys = torch.cat([k_cache[b][:, old % C], k[b].transpose(0, 1)], dim=1).to(compute)  # (Hkv, n, D)
        values = torch.cat([v_cache[b][:, old % C], v[b].transpose(0, 1)], dim=1).to(compute)
        key_pos = torch.cat([old, positions[b]])
        p = positions[b][:, None]
        visible = (key_pos[None, :] <= p) & (key_pos[None, :] > p - C)  # (Tn, n)
        keys = keys.repeat_interleave(H // Hkv, dim=0)  # (H, n, D)
        values = values.repeat_interleave(H // Hkv, dim=0)
        scores = torch.einsum("thd,hnd->htn", q[b].to(compute), keys) * scale
        scores = scores.masked_fill(~visible[None], float("-inf"))
        out[b] = torch.einsum("htn,hnd->thd", scores.softmax(-1), values).to(q.dtype)
    if advance:
        kv_append_reference(k_cache, v_cache, lengths, starts, k, v)
    else:
        kv_append_reference(k_cache, v_cache, lengths.clone(), starts.clone(), k, v)
    return out


# ---- argument checks and public functions -------------------------------------------------------------------


def check_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                starts: torch.Tensor) -> None:
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    if k_cache.shape[1] == 0 or k_cache.shape[2] == 0:
        raise ValueError(f"pygpt.{op}: k_cache must have at least one head and one slot, got shape "
                         f"{tuple(k_cache.shape)}")
    check_tensor(op, "v_cache", v_cache, ndim=4, dtypes=(k_cache.dtype,), device=k_cache.device)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"pygpt.{op}: v_cache must have k_cache's shape {tuple(k_cache.shape)}, "
                         f"got {tuple(v_cache.shape)}")
    for name, t in (("lengths", lengths), ("starts", starts)):
        check_tensor(op, name, t, ndim=1, dtypes=(torch.int32,), device=k_cache.device)
        if t.shape[0] != k_cache.shape[0]:
            raise ValueError(f"pygpt.{op}: {name} must have shape ({k_cache.shape[0]},), got {tuple(t.shape)}")


def check_new_rows(op: str, k_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    B, Hkv, C, D = k_cache.shape
    for name, t in (("k", k), ("v", v)):
        check_tensor(op, name, t, ndim=4, dtypes=(k_cache.dtype,), device=k_cache.device, contiguous=False)
        if t.shape[0] != B or t.shape[2:] != (Hkv, D):
            raise ValueError(f"pygpt.{op}: {name} must have shape (B, Tn, Hkv, D) = ({B}, Tn, {Hkv}, {D}), "
                             f"got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"pygpt.{op}: {name}'s last dimension must be contiguous")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"pygpt.{op}: v must have k's number of new tokens {k.shape[1]}, got {v.shape[1]}")
    if k.shape[1] > C:
        raise ValueError(f"pygpt.{op}: cannot append {k.shape[1]} tokens at once to a cache of {C} slots")


def kv_append(k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor) -> None:
    """Append k, v (B, Tn, Hkv, D) to the cache in place (see the module docstring)."""
    check_cache("kv_append", k_cache, v_cache, lengths, starts)
    check_new_rows("kv_append", k_cache, k, v)
    if backend_for(k_cache.device) == "reference":
        return kv_append_reference(k_cache, v_cache, lengths, starts, k, v)
    torch.ops.pygpt.kv_append(k_cache, v_cache, lengths, starts, k, v)


def kv_evict(lengths: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor) -> None:
    """Drop the oldest counts[b] entries of sequence b, in place; counts[b] < 0 frees the sequence."""
    check_tensor("kv_evict", "lengths", lengths, ndim=1, dtypes=(torch.int32,))
    check_tensor("kv_evict", "starts", starts, ndim=1, dtypes=(torch.int32,), device=lengths.device)
    check_tensor("kv_evict", "counts", counts, ndim=1, dtypes=(torch.int32,), device=lengths.device)
    if not (starts.shape == counts.shape == lengths.shape):
        raise ValueError(f"pygpt.kv_evict: lengths, starts and counts must all have shape (B,), got "
                         f"{tuple(lengths.shape)}, {tuple(starts.shape)}, {tuple(counts.shape)}")
    if backend_for(lengths.device) == "reference":
        return kv_evict_reference(lengths, starts, counts)
    torch.ops.pygpt.kv_evict(lengths, starts, counts)


def rope_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                          scale: float | None = None, base: float = 10000.0, rope: bool = True,
                          advance: bool = True) -> torch.Tensor:
    """Decode Tn new tokens: q (B, Tn, H, D), k, v (B, Tn, Hkv, D) -> (B, Tn, H, D); appends to the cache.

    advance=False leaves lengths / starts as they are: layers sharing one pair of counters pass True in the
    last layer only (one counter update a step instead of one a layer)."""
    op = "rope_decode_attention"
    check_cache(op, k_cache, v_cache, lengths, starts)
    check_new_rows(op, k_cache, k, v)
    check_tensor(op, "q", q, ndim=4, dtypes=(k_cache.dtype,), device=k_cache.device, contiguous=False)
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"pygpt.{op}: q must have shape (B, Tn, H, D) matching k {tuple(k.shape)} with H a "
                         f"multiple of {k.shape[2]}, got {tuple(q.shape)}")
    if q.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"pygpt.{op}: q must have at least one head and head_dim > 0, got {tuple(q.shape)}")
    if q.stride(-1) != 1:
        raise ValueError(f"pygpt.{op}: q's last dimension must be contiguous")
    if rope and q.shape[-1] % 2:
        raise ValueError(f"pygpt.{op}: head_dim must be even for RoPE, got {q.shape[-1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _decode(q, k, v, k_cache, v_cache, lengths, starts, scale, base, rope, advance)


def _decode(q, k, v, k_cache, v_cache, lengths, starts, scale: float, base: float, rope: bool,
            advance: bool) -> torch.Tensor:
    """A checked (or vouched-for) decode call: the reference when forced (and off the CPU for float64 or an odd
    head_dim, which the GPU kernel doesn't take), else the compiled op."""
    gpu_unsupported = q.device.type != "cpu" and not gpu_kernels_take(q.dtype, q.shape[-1])
    if backend_for(q.device) == "reference" or gpu_unsupported:
        return rope_decode_attention_reference(q, k, v, k_cache, v_cache, lengths, starts, scale, base, rope,
                                               advance)
    return torch.ops.pygpt.rope_decode_attention.default(q, k, v, k_cache, v_cache, lengths, starts, scale, base,
                                                         rope, advance)


class DecodeAttention:
    """rope_decode_attention with its settings bound, for a decode loop: ``attend(q, k, v, k_cache, v_cache,
    lengths, starts, advance)`` is ``rope_decode_attention(q, k, v, k_cache, v_cache, lengths, starts, scale,
    base, rope, advance)``.

    At a small model's sizes rope_decode_attention's Python checks take twice as long as the C++ kernel (~11 us
    against ~5 per call on a 2-core CPU), so per call nothing is checked here: on CPU the C++ kernel checks every
    argument itself; on CUDA the caller vouches for them (the engine's decoder makes q, k, v and the cache).
    """

    def __init__(self, head_dim: int, scale: float | None = None, base: float = 10000.0, rope: bool = True):
        if head_dim <= 0 or (rope and head_dim % 2):
            raise ValueError(f"pygpt.rope_decode_attention: head_dim must be {'even and ' if rope else ''}> 0, "
                             f"got {head_dim}")
        self.scale = head_dim ** -0.5 if scale is None else float(scale)
        self.base, self.rope = float(base), rope

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                 advance: bool = True) -> torch.Tensor:
        """q (B, Tn, H, D), k, v (B, Tn, Hkv, D) -> (B, Tn, H, D); appends to the cache (B, Hkv, C, D)."""
        return _decode(q, k, v, k_cache, v_cache, lengths, starts, self.scale, self.base, self.rope, advance)


# ---- registration -------------------------------------------------------------------------------------------


def _append_on_cuda(k_cache, v_cache, lengths, starts, k, v) -> None:
    if backend_for(k_cache.device) == "cuda":
        return torch.ops.pygpt.kv_append_cuda(k_cache, v_cache, lengths, starts, k, v)
    from pygpt.kernels.kv_cache import kv_append_triton

    kv_append_triton(k_cache, v_cache, lengths, starts, k, v)


def _evict_on_cuda(lengths, starts, counts) -> None:
    if backend_for(lengths.device) == "cuda":
        return torch.ops.pygpt.kv_evict_cuda(lengths, starts, counts)
    from pygpt.kernels.kv_cache import kv_evict_triton

    kv_evict_triton(lengths, starts, counts)


def _decode_on_cuda(q, k, v, k_cache, v_cache, lengths, starts, scale, base=10000.0, rope=True, advance=True):
    from pygpt.kernels.decode_attention import rope_decode_attention_triton
    from pygpt.kernels.rotary import _inv_freq

    return rope_decode_attention_triton(q, k, v, k_cache, v_cache, lengths, starts, scale,
                                        _inv_freq(q.shape[-1], float(base), q.device), rope, advance=advance)


def _register() -> None:
    torch.library.register_kernel("pygpt::kv_append", "cuda")(_append_on_cuda)
    torch.library.register_kernel("pygpt::kv_evict", "cuda")(_evict_on_cuda)
    torch.library.register_kernel("pygpt::rope_decode_attention", "cuda")(_decode_on_cuda)
    torch.library.register_fake("pygpt::kv_append")(lambda *args: None)
    torch.library.register_fake("pygpt::kv_append_cuda")(lambda *args: None)
    torch.library.register_fake("pygpt::kv_evict")(lambda *args: None)
    torch.library.register_fake("pygpt::kv_evict_cuda")(lambda *args: None)
    torch.library.register_fake("pygpt::rope_decode_attention")(lambda q, *args: torch.empty_like(q))


if extension() is not None:
    _register()
