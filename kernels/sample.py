"""sample in Triton: next-token ids (B,) from logits (B, V) in one launch, no sort and no host sync.

One program owns ROWS rows (ROWS = 1 for a large vocabulary, more when V is small) and streams the vocabulary
in BLOCK_V chunks. With m the row max and T the temperature, z = (x - m) / T <= 0 and p = exp(z) <= 1
(the max has p = 1). A row holding +inf samples uniformly among its +inf entries (z = 0 there, -inf elsewhere).

Thresholds live on the integer key(z) = bits(|z|) (as int32), which increases as z decreases, so "the k
largest" is "key <= K". Each threshold is the smallest K with F(K) >= target for a non-decreasing F, found by
a multi-pivot bisection: a pass over the row evaluates F at NP pivots spread over the open interval (lo, hi),
which shrinks it by NP + 1; KEY_PASSES passes pin K exactly (8 for NP = 16 over the 31-bit key range).
  * top-k:  F(K) = #{key <= K},                        target = k   (ties with the k-th value all stay)
  * top-p:  F(K) = sum of p over key <= min(K, K_k),   target = top_p * sum over key <= K_k
            (the shortest prefix, by decreasing p, whose mass reaches top_p - the reference's rule)
  * min-p:  p >= min_p (relative to the max, whose p is 1)
The passes are skipped when no row of the program needs them.

Fast path (one row a program, the row longer than a chunk): pass 2 builds a histogram of z in bins of width
1/4 (tl.histogram; z below -15.75 is not counted) and, without top-k, the row's mass; from it a bin edge L is
chosen such that every token that can be kept has z >= L: the bin holding the k-th largest z (top-k), else the
first bin whose mass lower bound (count * exp(bin's low edge)) reaches top_p of the mass, or the min-p cut.
When at most CAP tokens lie above L, pass 3 compacts them (key << 32 | id) into a per-row scratch buffer, and
the rest happens on that tile in registers: the same top-k / top-p bisections as the general path, min-p,
and an inverse-CDF draw (tl.cumsum) with one uniform. Three passes over the row in all. Otherwise (a flat row,
or settings that keep most of the vocabulary) the general path runs, in the same launch.

The general path's draw is one pass of weighted reservoir sampling over the chunks: in chunk c (mass w_c) a
candidate is drawn by inverse CDF (tl.cumsum) with a uniform u1, and replaces the current choice with
probability w_c / W_c (W_c the mass of chunks 0..c) with a second uniform u2; the result is distributed as p
restricted to the kept set. Uniforms come from Philox-4x32-10 keyed by the seed with counter (offset lo,
offset hi, row, chunk), so the ids depend only on (seed, offset, row) and the launch configuration (BLOCK_V,
ROWS), never on timing.

Rows are never raised on (a GPU kernel cannot): the id is -3 when the row's temperature / top_k / top_p / min_p
is out of range, else -1 for NaN logits, else -2 for a row of all -inf. The Python wrapper reports them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

NUM_PIVOTS = 16
KEY_MAX = tl.constexpr(0x7F800000)  # key(-inf); every key of a valid z is in [0, KEY_MAX]
NUM_BINS = 64  # fast-path histogram: bin b holds -z in [b/4, (b+1)/4); the last one everything below
FAST_CAP = 1024  # the most candidates the fast path holds in registers (2048 spills at 8 warps)
INV_BIN_W = tl.constexpr(4.0)
BIN_W = tl.constexpr(0.25)


def _key_passes(num_pivots: int) -> int:
    """Bisection passes that shrink (lo, hi) = (-1, KEY_MAX) to hi = lo + 1 with num_pivots pivots a pass."""
    width, passes = KEY_MAX.value + 1, 0
    while width > 1:
        width = -(-width // (num_pivots + 1))
        passes += 1
    return passes


@triton.jit
def _chunk(logits_ptr, row_off, rmask, start, V, m, t, inf_row, BLOCK_V: tl.constexpr):
    """z, its key (KEY_MAX + 1 outside the row: never counted) and the column indices of one chunk."""
    c = start + tl.arange(0, BLOCK_V)
    cmask = rmask[:, None] & (c < V)[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + c[None, :], mask=cmask, other=float("-inf")).to(tl.float32)
    z = (x - m[:, None]) / t[:, None]
    z = tl.where(inf_row[:, None], tl.where(x == float("inf"), 0.0, float("-inf")), z)
    key = z.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    key = tl.where(cmask, key, KEY_MAX + 1)
    return z, key, c


@triton.jit
def _pivots(lo, hi, NP: tl.constexpr):
    j = (tl.arange(0, NP) + 1).to(tl.int64)
    return (lo[:, None] + (j[None, :] * (hi - lo)[:, None]) // (NP + 1)).to(tl.int32)  # in [-1, KEY_MAX]


@triton.jit
def _narrow(lo, hi, piv, ok):
    """The pivots where F >= target bound the answer from above, the others from below."""
    piv = piv.to(tl.int64)
    new_hi = tl.min(tl.where(ok, piv, hi[:, None]), axis=1)
    new_lo = tl.max(tl.where(ok, lo[:, None], piv), axis=1)
    return new_lo, new_hi


@triton.jit
def _uniform(r):
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)  # 24 bits -> [0, 1)


@triton.jit
def _fast_draw(logits_ptr, row_off, rmask, rows, V, m_shift, t, inf_row, k, top_p, min_p, seed, off_lo, off_hi,
               scratch_ptr, BLOCK_V: tl.constexpr, NB: tl.constexpr, CAP: tl.constexpr, NP: tl.constexpr,
               KEY_PASSES: tl.constexpr):
    """The fast path for one active row (ROWS == 1): (id, ok); ok is False when the candidate set is not small
    (or the cut falls below the histogram's range), and the caller then runs the general path."""
    k_s = tl.max(k, axis=0)
    tp = tl.max(top_p, axis=0)
    mp = tl.max(min_p, axis=0)
    need_k = (k_s > 0) & (k_s < V)
    need_total = (k_s == 0) | (k_s >= V)
    hist = tl.zeros([NB], tl.int32)
    total = tl.zeros([1], tl.float32)
    for start in range(0, V, BLOCK_V):
        z, key, c = _chunk(logits_ptr, row_off, rmask, start, V, m_shift, t, inf_row, BLOCK_V)
        b = tl.minimum(-z * INV_BIN_W, NB - 1.0).to(tl.int32)  # -inf and padding: NB - 1
        hist += tl.histogram(tl.reshape(b, [BLOCK_V]), NB, mask=tl.reshape(b < NB - 1, [BLOCK_V]))
        if need_total:
            total += tl.sum(tl.where(key <= KEY_MAX, tl.exp(z), 0.0), axis=1)
    bins = tl.arange(0, NB)
    cum = tl.cumsum(hist, axis=0)
    mass = tl.sum(total, axis=0)
    # The highest bin edge below every token that can be kept.
    b_k = tl.min(tl.where(cum >= k_s, bins, NB), axis=0)
    lower = tl.cumsum(hist.to(tl.float32) * tl.exp(-(bins + 1).to(tl.float32) * BIN_W), axis=0)
    b_p = tl.min(tl.where(lower >= tp * mass * 1.0001, bins, NB), axis=0)
    b_p = tl.where(tp < 1.0, b_p, NB)
    b_m = tl.where(mp > 0.0, tl.minimum(-tl.log(tl.maximum(mp, 1e-30)) * INV_BIN_W, NB * 1.0).to(tl.int32), NB)
    b_sel = tl.where(need_k, b_k, tl.minimum(b_p, b_m))
    count = tl.sum(tl.where(bins == b_sel, cum, 0), axis=0)
    ok = (b_sel < NB - 1) & (count <= CAP)
    ids = tl.full([1], -1, tl.int32)
    if ok:
        # Pass 3: compact the candidates (key << 32 | id) into this row's scratch.
        scratch = scratch_ptr + rows.to(tl.int64)[:, None] * CAP
        base = tl.zeros([1], tl.int32)
        for start in range(0, V, BLOCK_V):
            z, key, c = _chunk(logits_ptr, row_off, rmask, start, V, m_shift, t, inf_row, BLOCK_V)
            cand = tl.minimum(-z * INV_BIN_W, NB - 1.0).to(tl.int32) <= b_sel
            pos = base[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
            tl.store(scratch + pos, (key.to(tl.int64) << 32) | c[None, :].to(tl.int64), mask=cand)
            base += tl.sum(cand.to(tl.int32), axis=1)
        tl.debug_barrier()
        # The candidates, in id order, in registers; the same threshold searches as the general path on them.
        j = tl.arange(0, CAP)[None, :]
        valid = j < count
        tile = tl.load(scratch + j, mask=valid, other=0)
        key_t = tl.where(valid, (tile >> 32).to(tl.int32), KEY_MAX + 1)
        idx_t = (tile & 0xFFFFFFFF).to(tl.int32)
        p_t = tl.where(valid, tl.exp(-tl.where(valid, key_t, 0).to(tl.float32, bitcast=True)), 0.0)  # key: |z|
        k_k = tl.full([1], KEY_MAX, tl.int64)
        if need_k:
            lo = tl.full([1], -1, tl.int64)
            hi = tl.full([1], KEY_MAX, tl.int64)
            for _ in range(KEY_PASSES):
                piv = _pivots(lo, hi, NP)
                cnt = tl.sum((key_t[:, :, None] <= piv[:, None, :]).to(tl.int32), axis=1)
                lo, hi = _narrow(lo, hi, piv, cnt >= k_s)
            k_k = hi
        p_k = tl.where(key_t.to(tl.int64) <= k_k[:, None], p_t, 0.0)
        # Without top-k the target is top_p of the whole row's mass; when the tile's mass does not reach it the
        # nucleus covers the tile (a prefix of the row by value) and the search keeps hi = all of it.
        target = tp * tl.where(need_k, tl.sum(p_k, axis=1), mass)
        k_p = k_k
        if tp < 1.0:
            lo = tl.full([1], -1, tl.int64)
            hi = k_k
            for _ in range(KEY_PASSES):
                piv = _pivots(lo, hi, NP)
                cut = tl.sum(tl.where(key_t[:, :, None] <= piv[:, None, :], p_k[:, :, None], 0.0), axis=1)
                lo, hi = _narrow(lo, hi, piv, cut >= target[:, None])
            k_p = hi
        keep = (key_t.to(tl.int64) <= k_p[:, None]) & (p_t >= mp) & (p_t > 0.0)
        w = tl.where(keep, p_t, 0.0)
        r0, _, _, _ = tl.philox(seed, off_lo, off_hi, rows.to(tl.uint32), off_lo * 0)
        goal = _uniform(r0) * tl.sum(w, axis=1)
        pick = tl.min(tl.where(keep & (tl.cumsum(w, axis=1) > goal[:, None]), j, CAP), axis=1)
        pick = tl.where(pick < CAP, pick, tl.max(tl.where(keep, j, -1), axis=1))  # rounding: the last kept
        ids = tl.sum(tl.where(j == pick[:, None], idx_t, 0), axis=1)
    return ids, ok


@triton.jit
def _sample_kernel(logits_ptr, stride_b, temp_ptr, topk_ptr, topp_ptr, minp_ptr, rng_ptr, out_ptr, scratch_ptr, B,
                   V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr, NP: tl.constexpr, KEY_PASSES: tl.constexpr,
                   NB: tl.constexpr, CAP: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < B
    row_off = rows.to(tl.int64) * stride_b
    t = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
    k = tl.load(topk_ptr + rows, mask=rmask, other=0)
    top_p = tl.load(topp_ptr + rows, mask=rmask, other=1.0)
    min_p = tl.load(minp_ptr + rows, mask=rmask, other=0.0)
    # Comparisons written so that NaN parameters fail.
    bad_param = ~((t >= 0.0) & (k >= 0) & (top_p > 0.0) & (top_p <= 1.0) & (min_p >= 0.0) & (min_p < 1.0))
    greedy = (t == 0.0) | (k == 1)

    # Pass 1: max, its first index (the greedy answer), NaN.
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    argmax = tl.zeros([ROWS], tl.int32)
    nan = tl.zeros([ROWS], tl.int32)
    for start in range(0, V, BLOCK_V):
        c = start + cols
        cmask = rmask[:, None] & (c < V)[None, :]
        x = tl.load(logits_ptr + row_off[:, None] + c[None, :], mask=cmask, other=float("-inf")).to(tl.float32)
        is_nan = x != x
        nan = tl.maximum(nan, tl.max(is_nan.to(tl.int32), axis=1))
        x = tl.where(is_nan, float("-inf"), x)
        cmax = tl.max(x, axis=1)
        cidx = tl.min(tl.where((x == cmax[:, None]) & cmask, c[None, :], V), axis=1)
        argmax = tl.where(cmax > m, cidx, argmax)
        m = tl.maximum(m, cmax)

    active = rmask & ~bad_param & (nan == 0) & (m > float("-inf")) & ~greedy
    inf_row = m == float("inf")
    t = tl.where(active, t, 1.0)
    m_shift = tl.where(active & ~inf_row, m, 0.0)  # no inf - inf in rows that do not use z
    seed = tl.load(rng_ptr)
    offset = tl.load(rng_ptr + 1)
    zero = tl.zeros([ROWS], tl.uint32)
    off_lo = zero + (offset & 0xFFFFFFFF).to(tl.uint32)
    off_hi = zero + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    sel = argmax
    done = tl.zeros([ROWS], tl.int1)  # rows finished by the fast path
    if CAP > 0:  # ROWS == 1
        if tl.max(active.to(tl.int32), axis=0) > 0:
            fast_id, ok = _fast_draw(logits_ptr, row_off, rmask, rows, V, m_shift, t, inf_row, k, top_p, min_p,
                                     seed, off_lo, off_hi, scratch_ptr, BLOCK_V, NB, CAP, NP, KEY_PASSES)
            done = active & ok
            sel = tl.where(done, fast_id, sel)
    if tl.max((active & ~done).to(tl.int32), axis=0) > 0:
        # General path. top-k threshold K_k: the smallest key with at least k keys <= it.
        active = active & ~done
        need_k = active & (k > 0) & (k < V)
        k_k = tl.full([ROWS], KEY_MAX, tl.int64)
        if tl.max(need_k.to(tl.int32), axis=0) > 0:
            lo = tl.full([ROWS], -1, tl.int64)
            hi = tl.full([ROWS], KEY_MAX, tl.int64)
            for _ in range(KEY_PASSES):
                piv = _pivots(lo, hi, NP)
                cnt = tl.zeros([ROWS, NP], tl.int32)
                for start in range(0, V, BLOCK_V):
                    z, key, c = _chunk(logits_ptr, row_off, rmask, start, V, m_shift, t, inf_row, BLOCK_V)
                    cnt += tl.sum((key[:, :, None] <= piv[:, None, :]).to(tl.int32), axis=1)
                lo, hi = _narrow(lo, hi, piv, cnt >= k[:, None])
            k_k = tl.where(need_k, hi, k_k)

        # top-p threshold K: the smallest key whose mass (within top-k) reaches top_p of the top-k mass.
        need_p = active & (top_p < 1.0)
        k_all = k_k
        if tl.max(need_p.to(tl.int32), axis=0) > 0:
            lo = tl.full([ROWS], -1, tl.int64)
            hi = k_k
            for _ in range(KEY_PASSES):
                piv = _pivots(lo, hi, NP)
                mass = tl.zeros([ROWS, NP], tl.float32)
                total = tl.zeros([ROWS], tl.float32)
                for start in range(0, V, BLOCK_V):
                    z, key, c = _chunk(logits_ptr, row_off, rmask, start, V, m_shift, t, inf_row, BLOCK_V)
                    p = tl.where(key.to(tl.int64) <= k_k[:, None], tl.exp(z), 0.0)
                    total += tl.sum(p, axis=1)
                    mass += tl.sum(tl.where(key[:, :, None] <= piv[:, None, :], p[:, :, None], 0.0), axis=1)
                lo, hi = _narrow(lo, hi, piv, mass >= (top_p * total)[:, None])
            k_all = tl.where(need_p, hi, k_k)

        # The draw: weighted reservoir sampling over chunks, inverse CDF inside a chunk.
        row_ctr = rows.to(tl.uint32)
        weight = tl.zeros([ROWS], tl.float32)
        chosen = argmax
        chunk_id = 0
        for start in range(0, V, BLOCK_V):
            z, key, c = _chunk(logits_ptr, row_off, rmask, start, V, m_shift, t, inf_row, BLOCK_V)
            p = tl.exp(z)
            keep = (key.to(tl.int64) <= k_all[:, None]) & (p >= min_p[:, None]) & (p > 0.0)
            w = tl.where(keep, p, 0.0)
            w_chunk = tl.sum(w, axis=1)
            cum = tl.cumsum(w, axis=1)
            r0, r1, _, _ = tl.philox(seed, off_lo, off_hi, row_ctr, zero + chunk_id)
            u1 = _uniform(r0)
            u2 = _uniform(r1)
            first = tl.min(tl.where(keep & (cum > (u1 * w_chunk)[:, None]), c[None, :], V), axis=1)
            last = tl.max(tl.where(keep, c[None, :], -1), axis=1)
            cand = tl.where(first < V, first, last)  # rounding: the target landed on the chunk's total
            weight += w_chunk
            take = (w_chunk > 0.0) & (u2 * weight < w_chunk)
            chosen = tl.where(take, cand, chosen)
            chunk_id += 1
        sel = tl.where(active, chosen, sel)

    ids = sel.to(tl.int64)
    ids = tl.where(m == float("-inf"), -2, ids)
    ids = tl.where(nan > 0, -1, ids)
    ids = tl.where(bad_param, -3, ids)
    tl.store(out_ptr + rows, ids, mask=rmask)


def sample_triton(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, rng_state: torch.Tensor, block_v: int | None = None,
                  rows: int | None = None) -> torch.Tensor:
    """logits (B, V) (last dim contiguous), per-row temperature/top_p/min_p (B,) fp32, top_k (B,) int32,
    rng_state (2,) int64 [seed, offset] -> ids (B,) int64 (negative for bad rows, see the module docstring).

    block_v (a power of two >= 16) and rows (a power of two) override the chunk size and the rows a program
    (tests use them to run many chunks a row, and the fast path, under the interpreter).
    Arguments are checked by pygpt.ops.sample; this launcher assumes them valid.
    """
    B, V = logits.shape
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B == 0:
        return out
    # Compiled: about 1K elements a tile (times NP in the bisection passes). Interpreted (tests on CPU): bigger
    # tiles, so that a batch of many short rows is a few programs.
    tile = 65536 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
    block_v = block_v or max(16, min(triton.next_power_of_2(V), tile))
    rows = rows or max(1, min(triton.next_power_of_2(B), tile // block_v))
    grid = (triton.cdiv(B, rows),)
    fast = rows == 1 and V > block_v
    cap = min(FAST_CAP, triton.next_power_of_2(V)) if fast else 0
    scratch = torch.empty(B * cap, dtype=torch.int64, device=logits.device) if fast else out
    _sample_kernel[grid](
        logits, logits.stride(0), temperature, top_k, top_p, min_p, rng_state, out, scratch, B, V,
        ROWS=rows, BLOCK_V=block_v, NP=NUM_PIVOTS, KEY_PASSES=_key_passes(NUM_PIVOTS), NB=NUM_BINS, CAP=cap,
        num_warps=8 if fast or rows * block_v >= 1024 else 4)
    return out
