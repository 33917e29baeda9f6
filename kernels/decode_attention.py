"""rope_decode_attention in Triton: the decode step against the ring-buffer KV cache, flash-decoding style.

Stage 1 (_partial, grid B*Hkv x splits): the query rows of one kv head - every new token t < Tn times every query
head of the group, so each cached key is read once for the whole group - are rotated at their positions
lengths + t; the program walks its share of the cached keys (positions [lo, lengths) at slot p % C, read in the
cache's dtype and fed to tensor-core dots as stored), and the last split also the Tn new keys, rotated in the
kernel; with the online softmax, each split writes a partial (acc, max, sum).
Stage 2 (_merge, grid B*Hkv): combines the splits into the output and appends the rotated new keys and the
values to the cache. With one split (caches of at most ONE_SPLIT_MAX_KEYS, or B*Hkv large enough to fill the
GPU) stage 1 does this itself, after its last read, and stage 2 is not launched. The counters advance in a last
tiny launch (kernels/kv_cache.py), after every read - only in the last layer, when the layers share them.

The split count depends only on the capacity (never on the lengths, which live on the device), so the step
can be captured in a CUDA graph. Each new token at position p sees the positions (p - C, p] still valid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import small_tiles
from .kv_cache import advance_counters_triton, ring_slot

LOG2E = 1.4426950408889634
ONE_SPLIT_MAX_KEYS = 512  # caches up to this capacity are read by one program per (row, kv head), in one launch
MAX_QUERY_ROWS = 64  # new tokens x query heads of a kv head that one program holds; longer prompts go in chunks


@triton.jit
def _rotate(x1, x2, pos, INV_FREQ, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, ROPE: tl.constexpr):
    """Rotate halves (rows, BLOCK_HALF) at positions pos (rows,)."""
    if ROPE:
        i = tl.arange(0, BLOCK_HALF)
        inv_freq = tl.load(INV_FREQ + i, mask=i < HALF, other=0.0)
        angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]
        c = tl.cos(angle)
        s = tl.sin(angle)
        return x1 * c - x2 * s, x2 * c + x1 * s
    return x1, x2


@triton.jit
def _attend_tile(q1, q2, k1, k2, v, visible, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One online-softmax step of the query rows (BLOCK_R, .) over a key tile; scores in log2 units."""
    s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION) + tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _partial(Q, KN, VN, KC, VC, LEN, START, INV_FREQ, WS_ACC, WS_ML, OUT,
             sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
             Hkv, C, Tn, GROUPS, qk_scale, CHUNK, NSPLIT,
             HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ROPE: tl.constexpr,
             PRECISION: tl.constexpr, FUSED: tl.constexpr):
    """FUSED (one split): also the merge's work - the output and the append - with no workspace."""
    bhk = tl.program_id(0)
    split = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    b64 = b.to(tl.int64)
    length = tl.load(LEN + b)
    start = tl.load(START + b)
    lo = tl.maximum(start, length - C + 1)  # oldest position any new token can see
    n_old = length - lo
    ty = KC.dtype.element_ty

    r = tl.arange(0, BLOCK_R)
    t = r // GROUPS
    h = hk * GROUPS + r % GROUPS
    r_mask = t < Tn
    p_row = length + t  # positions of the query rows
    i = tl.arange(0, BLOCK_HALF)
    hmask = i < HALF
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    q_ptr = Q + b64 * sqb + t[:, None] * sqt + h[:, None] * sqh + i[None, :]
    qm = r_mask[:, None] & hmask[None, :]
    q1 = tl.load(q_ptr, mask=qm, other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + HALF, mask=qm, other=0.0).to(tl.float32)
    q1, q2 = _rotate(q1, q2, p_row, INV_FREQ, HALF, BLOCK_HALF, ROPE)
    # In the cache's dtype, so the dots run on tensor cores against keys read as they are stored.
    q1 = (q1 * qk_scale).to(ty)
    q2 = (q2 * qk_scale).to(ty)

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    cache_base = (b64 * Hkv + hk) * C
    # The cached keys (already rotated): old position lo + j at slot (lo + j) % C, this split's share of them.
    for j0 in range(split * CHUNK, tl.minimum((split + 1) * CHUNK, n_old), BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        kp = lo + j
        row = (cache_base + ring_slot(kp, C))[:, None] * D
        km = (j < n_old)[:, None] & hmask[None, :]
        k1 = tl.load(KC + row + i[None, :], mask=km, other=0.0)
        k2 = tl.load(KC + row + HALF + i[None, :], mask=km, other=0.0)
        v = tl.load(VC + row + d[None, :], mask=(j < n_old)[:, None] & dmask[None, :], other=0.0)
        # Every old key precedes every query row; a later row no longer sees the keys C or more behind it.
        visible = (j < n_old)[None, :] & r_mask[:, None] & (kp[None, :] > p_row[:, None] - C)
        m_i, l_i, acc = _attend_tile(q1, q2, k1, k2, v, visible, m_i, l_i, acc, PRECISION)
    # The Tn new keys, rotated here at positions length + t: once, by the last split.
    if split == NSPLIT - 1:
        tt = tl.arange(0, BLOCK_T)
        t_mask = tt < Tn
        k_ptr = KN + b64 * skb + tt[:, None] * skt + hk * skh + i[None, :]
        nm = t_mask[:, None] & hmask[None, :]
        k1 = tl.load(k_ptr, mask=nm, other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + HALF, mask=nm, other=0.0).to(tl.float32)
        k1, k2 = _rotate(k1, k2, length + tt, INV_FREQ, HALF, BLOCK_HALF, ROPE)
        v = tl.load(VN + b64 * svb + tt[:, None] * svt + hk * svh + d[None, :],
                    mask=t_mask[:, None] & dmask[None, :], other=0.0).to(ty)
        visible = t_mask[None, :] & r_mask[:, None] & (tt[None, :] <= t[:, None]) & (tt[None, :] > t[:, None] - C)
        m_i, l_i, acc = _attend_tile(q1, q2, k1.to(ty), k2.to(ty), v, visible, m_i, l_i, acc, PRECISION)
        if FUSED:
            # Every read of the cache is done (the new tokens' slots held keys the earlier rows still saw).
            tl.debug_barrier()
            _append_tokens(KC, VC, k1, k2, v, cache_base, length, tt, t_mask, i, hmask, d, dmask, C, HALF, D)
    if FUSED:
        _store_out(OUT, acc, l_i, b64, t, h, d, Tn, D, sob, sot, soh)
    else:
        ws = (bhk * NSPLIT + split).to(tl.int64)
        tl.store(WS_ACC + (ws * BLOCK_R + r[:, None]) * BLOCK_D + d[None, :], acc)
        tl.store(WS_ML + (ws * 2) * BLOCK_R + r, m_i)
        tl.store(WS_ML + (ws * 2 + 1) * BLOCK_R + r, l_i)


@triton.jit
def _merge(OUT, KN, VN, KC, VC, LEN, INV_FREQ, WS_ACC, WS_ML,
           sob, sot, soh, skb, skt, skh, svb, svt, svh,
           Hkv, C, Tn, GROUPS, NSPLIT,
           HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
           BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, ROPE: tl.constexpr):
    bhk = tl.program_id(0)
    b = bhk // Hkv
    hk = bhk % Hkv
    b64 = b.to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(0, NSPLIT):
        ws = (bhk * NSPLIT + s).to(tl.int64)
        m = tl.maximum(m, tl.load(WS_ML + (ws * 2) * BLOCK_R + r))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(0, NSPLIT):
        ws = (bhk * NSPLIT + s).to(tl.int64)
        w = tl.exp2(tl.load(WS_ML + (ws * 2) * BLOCK_R + r) - m_safe)
        l += w * tl.load(WS_ML + (ws * 2 + 1) * BLOCK_R + r)
        acc += w[:, None] * tl.load(WS_ACC + (ws * BLOCK_R + r[:, None]) * BLOCK_D + d[None, :])
    _store_out(OUT, acc, l, b64, r // GROUPS, hk * GROUPS + r % GROUPS, d, Tn, D, sob, sot, soh)

    # Append the new tokens: rotated keys and values at slots (lengths + t) % C.
    length = tl.load(LEN + b)
    tt = tl.arange(0, BLOCK_T)
    t_mask = tt < Tn
    i = tl.arange(0, BLOCK_HALF)
    hmask = i < HALF
    dmask = d < D
    km = t_mask[:, None] & hmask[None, :]
    k_ptr = KN + b64 * skb + tt[:, None] * skt + hk * skh + i[None, :]
    k1 = tl.load(k_ptr, mask=km, other=0.0).to(tl.float32)
    k2 = tl.load(k_ptr + HALF, mask=km, other=0.0).to(tl.float32)
    k1, k2 = _rotate(k1, k2, length + tt, INV_FREQ, HALF, BLOCK_HALF, ROPE)
    v = tl.load(VN + b64 * svb + tt[:, None] * svt + hk * svh + d[None, :], mask=t_mask[:, None] & dmask[None, :],
                other=0.0)
    _append_tokens(KC, VC, k1, k2, v, (b64 * Hkv + hk) * C, length, tt, t_mask, i, hmask, d, dmask, C, HALF, D)


@triton.jit
def _store_out(OUT, acc, l, b64, t, h, d, Tn, D: tl.constexpr, sob, sot, soh):
    """The normalised output of the query rows (token t, head h) of one kv head."""
    out = acc / tl.where(l == 0.0, 1.0, l)[:, None]
    omask = (t < Tn)[:, None] & (d[None, :] < D)
    tl.store(OUT + b64 * sob + t[:, None] * sot + h[:, None] * soh + d[None, :],
             out.to(OUT.dtype.element_ty), mask=omask)


@triton.jit
def _append_tokens(KC, VC, k1, k2, v, cache_base, length, tt, t_mask, i, hmask, d, dmask, C, HALF: tl.constexpr,
                   D: tl.constexpr):
    """The new tokens' rotated key halves (fp32) and values into the cache, at slots (lengths + t) % C."""
    slot = (cache_base + ring_slot(length + tt, C))[:, None] * D
    km = t_mask[:, None] & hmask[None, :]
    ty = KC.dtype.element_ty
    tl.store(KC + slot + i[None, :], k1.to(ty), mask=km)
    tl.store(KC + slot + HALF + i[None, :], k2.to(ty), mask=km)
    tl.store(VC + slot + d[None, :], v.to(VC.dtype.element_ty), mask=t_mask[:, None] & dmask[None, :])


def _tile(dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_N keys a step, num_warps) of _partial, as compiled for sm_90 by pygpt.triton_aot: no spills in
    fp16/bf16; fp32's exact IEEE dots (no tensor cores) spill a little at any tile, least with these."""
    if small_tiles():
        return 16, 1
    return (16, 8) if dtype == torch.float32 else (64, 4)


def rope_decode_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                                 v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, scale: float,
                                 inv_freq: torch.Tensor, rope: bool, splits: int | None = None,
                                 advance: bool = True) -> torch.Tensor:
    """q (B, Tn, H, D), k, v (B, Tn, Hkv, D) -> out (B, Tn, H, D); appends to the cache. inv_freq (D/2,) fp32.
    splits: of the cached keys (default: by the capacity and B * Hkv; tests set it to run both launch plans)."""
    B, Tn, H, D = q.shape
    if D % 2:  # the kernels hold q and k as two halves (RoPE's pairs), with or without the rotation
        raise ValueError(f"pygpt.rope_decode_attention: the Triton kernel needs an even head_dim, got {D} "
                         "(pygpt.ops.rope_decode_attention runs the reference for it)")
    Hkv, C = k_cache.shape[1], k_cache.shape[2]
    groups = H // Hkv
    tokens = max(1, MAX_QUERY_ROWS // groups)
    if Tn > tokens:
        # A prompt (prefill through the cache) holds Tn x groups query rows a program: beyond MAX_QUERY_ROWS they
        # would not fit in shared memory / registers. Run it in chunks of new tokens, each chunk attending over
        # the cache the chunks before it appended: the same result as one launch, since a token at position p
        # sees positions (p - C, p] and the chunks before it overwrote only slots of positions <= p - C.
        if not advance:
            lengths, starts = lengths.clone(), starts.clone()  # the chunks advance a copy; the caller's stay
        return torch.cat([rope_decode_attention_triton(q[:, i:i + tokens], k[:, i:i + tokens], v[:, i:i + tokens],
                                                       k_cache, v_cache, lengths, starts, scale, inv_freq, rope,
                                                       splits, advance=True)
                          for i in range(0, Tn, tokens)], dim=1)
    out = torch.empty_like(q)
    half = D // 2
    block_half = max(16, triton.next_power_of_2(half))
    block_d = 2 * block_half if 2 * half == D else max(16, triton.next_power_of_2(D))
    block_r = max(16, triton.next_power_of_2(Tn * groups))
    block_n, warps = _tile(q.dtype)
    block_t = max(16, triton.next_power_of_2(Tn))
    # Splits of the C - 1 cached keys a step can see: enough programs to fill the GPU for long caches, fixed by
    # the capacity alone (graph-safe). The last split also takes the Tn new keys.
    # A short cache (the presets' 256) is one split: the partial kernel then writes the output and appends
    # itself, and the merge launch and its workspace go.
    if splits is None:
        splits = 1 if C <= ONE_SPLIT_MAX_KEYS else max(1, 256 // max(1, B * Hkv))
    chunk = max(block_n, triton.cdiv(triton.cdiv(C, splits), block_n) * block_n)
    nsplit = triton.cdiv(C, chunk)
    fused = nsplit == 1
    ws_acc = out if fused else torch.empty(B * Hkv * nsplit * block_r * block_d, device=q.device,
                                           dtype=torch.float32)
    ws_ml = out if fused else torch.empty(B * Hkv * nsplit * 2 * block_r, device=q.device, dtype=torch.float32)
    common = dict(HALF=half, BLOCK_HALF=block_half, D=D, BLOCK_D=block_d, BLOCK_R=block_r, ROPE=rope)
    _partial[(B * Hkv, nsplit)](
        q, k, v, k_cache, v_cache, lengths, starts, inv_freq, ws_acc, ws_ml, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        Hkv, C, Tn, groups, scale * LOG2E, chunk, nsplit,
        BLOCK_N=block_n, BLOCK_T=block_t, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FUSED=fused,
        num_warps=warps, **common)
    if not fused:
        _merge[(B * Hkv,)](
            out, k, v, k_cache, v_cache, lengths, inv_freq, ws_acc, ws_ml,
            out.stride(0), out.stride(1), out.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), Hkv, C, Tn, groups, nsplit,
            BLOCK_T=block_t, num_warps=warps, **common)
    if advance:
        advance_counters_triton(lengths, starts, Tn, C)
    return out
