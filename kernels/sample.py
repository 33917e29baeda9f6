"""sample in Triton: next-token ids (B,) from logits (B, V), no sort and no host sync; one launch, or three for
a small batch on a GPU (the split path).

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
1/8 (tl.histogram; z below -15.875 is not counted) and, without top-k, the row's mass; from it a bin edge L is
chosen such that every token that can be kept has z >= L: the bin holding the k-th largest z (top-k), else the
first bin above which top_p of the mass surely lies (bounds of each bin's mass from its edges), or min-p's.
When at most CAP tokens lie above L, pass 3 compacts them (key << 32 | id) into a per-row scratch buffer, and
the rest happens on that tile in registers: the same top-k / top-p bisections as the general path, min-p,
and an inverse-CDF draw (tl.cumsum) with one uniform. Three passes over the row in all. Otherwise (a flat row,
or settings that keep most of the vocabulary) the general path runs, in the same launch.

Split path (CUDA, B small next to the number of multiprocessors): one program a row leaves most of the GPU idle,
and each pass over a 128K-entry row is then a long chain of dependent loads in one SM. Each row is cut into S
segments (about two programs a multiprocessor, segments of >= 2048 columns), and the fast path runs as three
launches: per-segment max / histogram / mass, per-segment compaction at offsets every segment computes from
the histograms, and the tile draw (or the general path) one program a row - see the comment above _split_plan.
Without top-k, the tokens that are surely kept (the top bins under top-p / min-p; every token in plain
sampling) stay out of the tile: their mass is summed per segment, and a draw that lands among them walks that
one segment. So a nucleus larger than the tile (top-p 0.9 of 128K logits: ~1300 tokens) is three launches too.
When both paths take the tile, the kept tokens, their order and the uniform are the same, so the ids are too,
up to summation order (top-p alone sums the row's mass per segment; non-kept extra candidates of the split
path's slack bin shift the tile's sums). Its cut differs slightly (bins of x, one bin of slack), so one path may
take the tile where the other falls back to the general path: valid draws, different ids.

The general path's draw is one pass of weighted reservoir sampling over the chunks: in chunk c (mass w_c) a
candidate is drawn by inverse CDF (tl.cumsum) with a uniform u1, and replaces the current choice with
probability w_c / W_c (W_c the mass of chunks 0..c) with a second uniform u2; the result is distributed as p
restricted to the kept set. Uniforms come from Philox-4x32-10 keyed by the seed with counter (offset lo,
offset hi, row, chunk), so the ids depend only on (seed, offset, row) and the launch configuration (BLOCK_V,
ROWS, and the split count), never on timing.

Rows are never raised on (a GPU kernel cannot): the id is -3 when the row's temperature / top_k / top_p / min_p
is out of range, else -1 for NaN logits, else -2 for a row of all -inf. The Python wrapper reports them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import sm_count, small_tiles

NUM_PIVOTS = 16
KEY_MAX = tl.constexpr(0x7F800000)  # key(-inf); every key of a valid z is in [0, KEY_MAX]
NUM_BINS = 128  # fast-path histogram: bin b holds -z in [b/8, (b+1)/8) (about); the last one everything below
FAST_CAP = 1024  # the most candidates the fast path holds in registers (2048 spills at 8 warps)
INV_BIN_W = tl.constexpr(8.0)
BIN_W = tl.constexpr(0.125)
SPLIT_MIN_SEG = 2048  # the split path's shortest segment (columns a program)
SPLIT_MAX_TILE = 4096  # and its chunk: a segment is read in chunks of at most this
SPLIT_MAX = 64  # segments a row at most: each program of launch 2 holds the (segments, NUM_BINS) histograms


def _key_passes(num_pivots: int) -> int:
    """Bisection passes that shrink (lo, hi) = (-1, KEY_MAX) to hi = lo + 1 with num_pivots pivots a pass."""
    width, passes = KEY_MAX.value + 1, 0
    while width > 1:
        width = -(-width // (num_pivots + 1))
        passes += 1
    return passes


@triton.jit
def _load_chunk(logits_ptr, row_off, rmask, start, V, BLOCK_V: tl.constexpr):
    """x (fp32, -inf outside the row), the mask of the row's columns and their indices, of one chunk."""
    c = start + tl.arange(0, BLOCK_V)
    cmask = rmask[:, None] & (c < V)[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + c[None, :], mask=cmask, other=float("-inf")).to(tl.float32)
    return x, cmask, c


@triton.jit
def _z_key(x, cmask, m, t, inf_row):
    """z and its key (KEY_MAX + 1 outside the row: never counted)."""
    z = (x - m[:, None]) / t[:, None]
    z = tl.where(inf_row[:, None], tl.where(x == float("inf"), 0.0, float("-inf")), z)
    key = z.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return z, tl.where(cmask, key, KEY_MAX + 1)


@triton.jit
def _chunk(logits_ptr, row_off, rmask, start, V, m, t, inf_row, BLOCK_V: tl.constexpr):
    """z, its key and the column indices of one chunk."""
    x, cmask, c = _load_chunk(logits_ptr, row_off, rmask, start, V, BLOCK_V)
    z, key = _z_key(x, cmask, m, t, inf_row)
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
def _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, rows, rmask):
    """The rows' parameters, which of them are out of range (written so that NaN fails) and which are greedy."""
    t = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
    k = tl.load(topk_ptr + rows, mask=rmask, other=0)
    top_p = tl.load(topp_ptr + rows, mask=rmask, other=1.0)
    min_p = tl.load(minp_ptr + rows, mask=rmask, other=0.0)
    bad_param = ~((t >= 0.0) & (k >= 0) & (top_p > 0.0) & (top_p <= 1.0) & (min_p >= 0.0) & (min_p < 1.0))
    greedy = (t == 0.0) | (k == 1)
    return t, k, top_p, min_p, bad_param, greedy


@triton.jit
def _max_argmax_nan(logits_ptr, row_off, rmask, lo, hi, BLOCK_V: tl.constexpr):
    """Over columns [lo, hi): the max (NaN ignored), its first index (the greedy answer) and whether a NaN is there."""
    m = tl.full(rmask.shape, float("-inf"), tl.float32)
    argmax = tl.zeros(rmask.shape, tl.int32) + lo
    nan = tl.zeros(rmask.shape, tl.int32)
    for start in range(lo, hi, BLOCK_V):
        x, cmask, c = _load_chunk(logits_ptr, row_off, rmask, start, hi, BLOCK_V)
        is_nan = x != x
        nan = tl.maximum(nan, tl.max(is_nan.to(tl.int32), axis=1))
        x = tl.where(is_nan, float("-inf"), x)
        cmax = tl.max(x, axis=1)
        cidx = tl.min(tl.where((x == cmax[:, None]) & cmask, c[None, :], hi), axis=1)
        argmax = tl.where(cmax > m, cidx, argmax)
        m = tl.maximum(m, cmax)
    return m, argmax, nan


@triton.jit
def _tile_draw(scratch, count, mass, certain, rows, k_s, tp, mp, need_k, seed, off_lo, off_hi, CAP: tl.constexpr,
               NP: tl.constexpr, KEY_PASSES: tl.constexpr):
    """The fast path's last step for one row: its `count` candidates (key << 32 | id, in id order) from scratch
    into registers, the same threshold searches as the general path on them, min-p and the inverse-CDF draw.
    mass: the row's sum of p (used by top-p without top-k); certain: the mass of the tokens surely kept that are
    not in the tile (split path; 0 on the one-program path), which come first in the draw's order.
    -> (ids (1,), goal): ids -1 when the draw's goal (a uniform times the kept mass) is below `certain`."""
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
    target = tl.where(need_k, tp * tl.sum(p_k, axis=1), tp * mass - certain)
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
    goal = _uniform(r0) * (certain + tl.sum(w, axis=1))
    in_tile = goal - certain
    pick = tl.min(tl.where(keep & (tl.cumsum(w, axis=1) > in_tile[:, None]), j, CAP), axis=1)
    pick = tl.where(pick < CAP, pick, tl.max(tl.where(keep, j, -1), axis=1))  # rounding: the last kept
    ids = tl.sum(tl.where(j == pick[:, None], idx_t, 0), axis=1)
    return tl.where(in_tile >= 0.0, ids, -1), goal


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
    mass = tl.sum(total, axis=0)
    # The highest bin edge below every token that can be kept.
    b_sel = _cut_bin(hist, mass, k_s, tp, mp, need_k, V, 1.0, 1.0, NB, 0)
    count = tl.sum(tl.where(bins <= b_sel, hist, 0), axis=0)
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
        ids, _goal = _tile_draw(scratch, count, mass, 0.0, rows, k_s, tp, mp, need_k, seed, off_lo, off_hi, CAP,
                                NP, KEY_PASSES)
    return ids, ok


@triton.jit
def _bin_mass_bounds(hist, f_lo, f_hi, NB: tl.constexpr):
    """(NB,) lower and upper bounds of each bin's mass: a token of bin g has -z / BIN_W in (g + f - 1, g + f]
    with f_lo <= f <= f_hi, so e^-(g + f_hi) BIN_W <= p < e^-(g + f_lo - 1) BIN_W."""
    bins = tl.arange(0, NB).to(tl.float32)
    count = hist.to(tl.float32)
    return count * tl.exp(-(bins + f_hi) * BIN_W), count * tl.exp(-(bins + f_lo - 1.0) * BIN_W)


@triton.jit
def _x_bin(x, top, inv_tw):
    """The split path's bin of logits x: floor(x * 8 / T) counted down from `top` (-inf: +inf, in no bin). Every
    kernel bins through this, so that launch 2's candidates are exactly the ones launch 1's histograms counted."""
    return top - tl.floor(x * inv_tw)


@triton.jit
def _cut_bin(hist, mass, k_s, tp, mp, need_k, n, f_lo, f_hi, NB: tl.constexpr, SLACK: tl.constexpr):
    """The fast path's cut: the last bin that can hold a kept token, from the histogram (NB,) of a row of n
    tokens and its mass, with _bin_mass_bounds (one program a row: bins of z, f = 1; split path: bins of x, f
    the row max's place in its bin, widened by fp32's rounding).
    top-k: the bin of the k-th largest z. top-p: the first bin b such that the tokens of bins <= b surely hold
    top_p of the mass - their mass's lower bound reaches it, or the upper bound of the mass below them (bins > b
    and the tokens below the histogram) leaves it; each bound alone is loose by e^BIN_W a token, so the lower
    one alone never reaches a top_p near 0.9 when the mass is spread over bins. min-p: the last bin whose
    upper bound reaches min_p, plus one for tl.log / tl.exp rounding. SLACK bins are added (split path: fp32
    keys that tie, so that both stay, may straddle an x-bin edge)."""
    bins = tl.arange(0, NB)
    cum = tl.cumsum(hist, axis=0)
    b_k = tl.min(tl.where(cum >= k_s, bins, NB), axis=0)
    lower, upper = _bin_mass_bounds(hist, f_lo, f_hi, NB)
    lower = tl.cumsum(lower, axis=0)
    below = tl.sum(upper, axis=0) - tl.cumsum(upper, axis=0)  # bins > b
    below += (n - tl.sum(hist, axis=0)).to(tl.float32) * tl.exp(-(NB - 2.0 + f_lo) * BIN_W)
    surely = (lower >= tp * mass * 1.0001) | (below <= mass * (1.0 - tp * 1.0001))
    b_p = tl.min(tl.where(surely, bins, NB), axis=0)
    b_p = tl.where(tp < 1.0, b_p, NB)
    reach = -tl.log(tl.maximum(mp, 1e-30)) * INV_BIN_W + 1.0 - f_lo  # bins g < reach may hold p >= min_p
    b_m = tl.minimum(reach, NB * 1.0).to(tl.int32) + 1
    b_m = tl.where(mp > 0.0, b_m, NB)
    return tl.minimum(tl.where(need_k, b_k, tl.minimum(b_p, b_m)) + SLACK, NB)


@triton.jit
def _certain_bin(hist, mass, tp, mp, need_k, f_lo, f_hi, NB: tl.constexpr):
    """The split path's first bin that may hold a token that is not kept (+inf: every token is kept): the tokens
    of lower bins are surely kept, need not be in the tile, and only their mass counts (bounds as in _cut_bin).
    top-p: a token of bin g is kept when the mass of the tokens above it - all in bins <= g, as the bins are
    monotone in x - is below top_p of the mass: bounded by the bins' upper bounds, and by the mass less the
    lower bounds below. min-p: its lower bound e^-(g + f_hi) BIN_W >= min_p, one bin of margin. With top-k:
    none (the tile's top-k search needs all the candidates)."""
    bins = tl.arange(0, NB).to(tl.float32)
    lower, upper = _bin_mass_bounds(hist, f_lo, f_hi, NB)
    up_to = tl.minimum(tl.cumsum(upper, axis=0), mass - (tl.sum(lower, axis=0) - tl.cumsum(lower, axis=0)))
    b_p = tl.min(tl.where(up_to >= tp * mass * 0.9999, bins, NB * 1.0), axis=0)
    b_p = tl.where(tp < 1.0, b_p, float("inf"))
    b_m = tl.where(mp > 0.0, tl.floor(-tl.log(tl.maximum(mp, 1e-30)) * INV_BIN_W - f_hi), float("inf"))
    return tl.where(need_k, 0.0, tl.minimum(b_p, b_m))


# ----------------------------------------------------------------------------------------------- split path
# With few rows, one program a row leaves most of the GPU idle and each pass is latency-bound. The split path
# spreads a row over S programs of SEG columns in three launches:
#   1. _split_stats_kernel: a segment's max, first argmax, NaN, its mass relative to its own max and a histogram
#      of its columns' bins. Bins are floor(x * 8 / T) counted down from the segment's top bin: aligned across
#      segments, so that the row's histogram is the segments' ones shifted by whole bins.
#   2. _split_compact_kernel: every segment recomputes the row's cut from the partials (cheap: S x NB ints):
#      bins < b_c hold tokens surely kept (_certain_bin), bins b_c..b_sel the candidates, the rest nothing kept.
#      When the candidates fit the tile, it writes its own at its offset (the candidates of the segments before
#      it) - the row's candidates in id order - and the mass of its surely kept tokens. Segment 0 also stores
#      the row's plan: the candidates' count, whether they fit, b_c.
#   3. _sample_kernel (SP > 0): the row's max / argmax / NaN / mass from the partials, then the draw over the
#      surely kept tokens (segment by segment, in id order) followed by the tile: a goal below the surely kept
#      mass picks a segment by those masses and walks it; else the tile draw. Or the general path on the whole
#      row when the candidates did not fit. The plan is read, never recomputed: it must be the one the
#      candidates were written with. A large nucleus (top-p 0.9 of 128K logits: ~1300 tokens, more than the
#      tile) or plain sampling (every token surely kept) runs here in three launches too.
@triton.jit
def _row_stats(part_max_ptr, part_arg_ptr, part_nan_ptr, part_mass_ptr, row, S, V, t, SP: tl.constexpr):
    """The row's max, first argmax, NaN and mass from its segments' partials; whether the row can use bins (finite
    max, T > 0); which segments hold a finite value, their max (the row's where not) and the row's temperature
    (1 where it cannot be used)."""
    s = tl.arange(0, SP)
    smask = s < S
    part = row * S + s
    m_s = tl.load(part_max_ptr + part, mask=smask, other=float("-inf"))
    m = tl.max(m_s, axis=0)
    argmax = tl.min(tl.where(smask & (m_s == m), tl.load(part_arg_ptr + part, mask=smask, other=V), V), axis=0)
    nan = tl.max(tl.load(part_nan_ptr + part, mask=smask, other=0), axis=0)
    finite = (m > float("-inf")) & (m < float("inf")) & (t > 0.0)  # else the row does not use what follows
    live = tl.where(finite, smask & (m_s > float("-inf")), False)
    t = tl.where(finite, t, 1.0)
    m_f = tl.where(finite, m, 0.0)
    m_s = tl.where(live, m_s, m_f)
    mass_s = tl.load(part_mass_ptr + part, mask=smask, other=0.0)
    mass = tl.sum(tl.where(live, mass_s * tl.exp((m_s - m_f) / t), 0.0), axis=0)
    return m, argmax, nan, mass, finite, live, m_s, m_f, t


@triton.jit
def _split_plan(part_max_ptr, part_arg_ptr, part_nan_ptr, part_mass_ptr, part_hist_ptr, row, S, V, t, k_s, tp,
                mp, SP: tl.constexpr, NB: tl.constexpr, CAP: tl.constexpr):
    """_row_stats, then the row's top bin and 8 / T, the cut bin, the candidates in the segments before each
    one (SP,), their count and whether the fast path can run (the cut in range, the candidates fit the tile,
    bins exact in fp32, no +inf)."""
    m, argmax, nan, mass, finite, live, m_s, m_f, t = _row_stats(part_max_ptr, part_arg_ptr, part_nan_ptr,
                                                                   part_mass_ptr, row, S, V, t, SP)
    inv_tw = INV_BIN_W / t
    top_s = tl.floor(m_s * inv_tw)
    top = tl.floor(m_f * inv_tw)
    # Segment s's bin r is the row's bin r + top - top_s.
    s = tl.arange(0, SP)
    part = row * S + s
    g = tl.arange(0, NB)
    r = g[None, :] - (top - top_s)[:, None]
    use = live[:, None] & (r >= 0.0) & (r < NB - 1.0)
    hs = tl.load(part_hist_ptr + part.to(tl.int64)[:, None] * NB + tl.where(use, r, 0.0).to(tl.int32), mask=use,
                 other=0)
    need_k = (k_s > 0) & (k_s < V)
    # The bins are monotone in x, so bin-level bounds hold as on the one-program path; one bin of slack for ties.
    hist = tl.sum(hs, axis=0)
    # The row max's place in its bin, widened by fp32's rounding of m * 8 / T and x * 8 / T (|top| < 2^22).
    f = m_f * inv_tw - top
    slop = 0.02 + tl.abs(top) * 4.8e-7
    b_sel = _cut_bin(hist, mass, k_s, tp, mp, need_k, V, f - slop, f + slop, NB, 1)
    b_c = _certain_bin(hist, mass, tp, mp, need_k, f - slop, f + slop, NB)
    seg_count = tl.sum(tl.where((g[None, :] >= b_c) & (g[None, :] <= b_sel), hs, 0), axis=1)  # (SP,)
    count = tl.sum(seg_count, axis=0)
    fits = (b_c == float("inf")) | ((b_sel < NB - 1) & (count <= CAP))  # +inf: no candidates, all kept
    ok = finite & fits & (tl.abs(top) < 4194304.0)  # 2^22: bins exact in fp32
    return m, nan, top, inv_tw, b_c, b_sel, seg_count, count, ok


@triton.jit
def _split_stats_kernel(logits_ptr, stride_b, temp_ptr, topk_ptr, topp_ptr, minp_ptr, part_max_ptr, part_arg_ptr,
                        part_nan_ptr, part_mass_ptr, part_hist_ptr, V, S, SEG, TILE: tl.constexpr,
                        NB: tl.constexpr):
    """Launch 1 of the split path, one program a (row, segment): the partials _split_plan combines."""
    row = tl.program_id(0)
    seg = tl.program_id(1)
    rows = row + tl.zeros([1], tl.int32)
    rmask = rows >= 0
    row_off = rows.to(tl.int64) * stride_b
    lo = seg * SEG
    hi = tl.minimum(lo + SEG, V)
    m, argmax, nan = _max_argmax_nan(logits_ptr, row_off, rmask, lo, hi, TILE)
    t, k, top_p, min_p, bad_param, greedy = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, rows, rmask)
    hist = tl.zeros([NB], tl.int32)
    mass = tl.zeros([1], tl.float32)
    draws = ~bad_param & ~greedy & (nan == 0) & (m > float("-inf")) & (m < float("inf"))
    if tl.max(draws.to(tl.int32), axis=0) > 0:
        inv_tw = INV_BIN_W / t
        top = tl.floor(m * inv_tw)
        for start in range(lo, hi, TILE):  # the segment again: from L2
            x, cmask, c = _load_chunk(logits_ptr, row_off, rmask, start, hi, TILE)
            r = _x_bin(x, top[:, None], inv_tw[:, None])  # -inf and padding: +inf
            b = tl.minimum(r, NB - 1.0).to(tl.int32)
            hist += tl.histogram(tl.reshape(b, [TILE]), NB, mask=tl.reshape(b < NB - 1, [TILE]))
            mass += tl.sum(tl.where(cmask, tl.exp((x - m[:, None]) / t[:, None]), 0.0), axis=1)
    part = row * S + seg
    tl.store(part_max_ptr + part + tl.zeros([1], tl.int32), m)
    tl.store(part_arg_ptr + part + tl.zeros([1], tl.int32), argmax)
    tl.store(part_nan_ptr + part + tl.zeros([1], tl.int32), nan)
    tl.store(part_mass_ptr + part + tl.zeros([1], tl.int32), mass)
    tl.store(part_hist_ptr + part.to(tl.int64) * NB + tl.arange(0, NB), hist)


@triton.jit
def _split_compact_kernel(logits_ptr, stride_b, temp_ptr, topk_ptr, topp_ptr, minp_ptr, part_max_ptr,
                          part_arg_ptr, part_nan_ptr, part_mass_ptr, part_hist_ptr, part_cert_ptr, plan_ptr,
                          scratch_ptr, V, S, SEG, TILE: tl.constexpr, SP: tl.constexpr, NB: tl.constexpr,
                          CAP: tl.constexpr):
    """Launch 2 of the split path, one program a (row, segment): its candidates into the row's scratch and the
    mass of its surely kept tokens; segment 0 stores the row's plan [count, fast path taken, bits of b_c, 0] at
    plan_ptr + 4 * row."""
    row = tl.program_id(0)
    seg = tl.program_id(1)
    rows = row + tl.zeros([1], tl.int32)
    rmask = rows >= 0
    row_off = rows.to(tl.int64) * stride_b
    t, k, top_p, min_p, bad_param, greedy = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, rows, rmask)
    t_s = tl.max(t, axis=0)
    m, nan, top, inv_tw, b_c, b_sel, seg_count, count, ok = _split_plan(
        part_max_ptr, part_arg_ptr, part_nan_ptr, part_mass_ptr, part_hist_ptr, row, S, V, t_s, tl.max(k, axis=0),
        tl.max(top_p, axis=0), tl.max(min_p, axis=0), SP, NB, CAP)
    m_row = tl.zeros([1], tl.float32) + m
    active = ~bad_param & ~greedy & ((tl.zeros([1], tl.int32) + nan) == 0) & (m_row > float("-inf"))
    fast = ok & (tl.max(active.to(tl.int32), axis=0) > 0)
    if seg == 0:
        q = tl.arange(0, 4)
        b_c_bits = b_c.to(tl.int32, bitcast=True)
        tl.store(plan_ptr + 4 * row + q, tl.where(q == 0, count, tl.where(q == 1, fast.to(tl.int32),
                                                                           tl.where(q == 2, b_c_bits, 0))))
    certain = tl.zeros([1], tl.float32)
    if fast:
        scratch = scratch_ptr + rows.to(tl.int64)[:, None] * CAP
        base = tl.zeros([1], tl.int32) + tl.sum(tl.where(tl.arange(0, SP) < seg, seg_count, 0), axis=0)
        lo = seg * SEG
        hi = tl.minimum(lo + SEG, V)
        for start in range(lo, hi, TILE):
            x, cmask, c = _load_chunk(logits_ptr, row_off, rmask, start, hi, TILE)
            z, key = _z_key(x, cmask, m_row, t, rmask & False)
            g = _x_bin(x, top, inv_tw)  # -inf and padding: +inf, never a candidate nor surely kept
            cand = cmask & (g >= b_c) & (g <= b_sel)
            certain += tl.sum(tl.where(cmask & (g < b_c), tl.exp(z), 0.0), axis=1)
            pos = base[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
            tl.store(scratch + pos, (key.to(tl.int64) << 32) | c[None, :].to(tl.int64), mask=cand & (pos < CAP))
            base += tl.sum(cand.to(tl.int32), axis=1)
    tl.store(part_cert_ptr + row * S + seg + tl.zeros([1], tl.int32), certain)


@triton.jit
def _certain_draw(logits_ptr, row_off, rmask, cert_s, goal, m, t, b_c, S, SEG, V, SP: tl.constexpr,
                  TILE: tl.constexpr):
    """The split path's draw among the surely kept tokens (bins < b_c) for a goal below their mass: the segment
    where the goal falls (cert_s (SP,): each segment's surely kept mass), then inverse CDF along it. -> id (1,)"""
    s = tl.arange(0, SP)
    cum = tl.cumsum(cert_s, axis=0)
    g = tl.max(goal, axis=0)
    seg = tl.min(tl.where((cum > g) & (cert_s > 0.0), s, SP), axis=0)
    seg = tl.where(seg < SP, seg, tl.max(tl.where(cert_s > 0.0, s, -1), axis=0))  # rounding: the last one
    rest = g - tl.sum(tl.where(s < seg, cert_s, 0.0), axis=0)
    inv_tw = INV_BIN_W / t
    top = tl.floor(m * inv_tw)
    lo = seg * SEG
    hi = tl.minimum(lo + SEG, V)
    run = tl.zeros([1], tl.float32)
    pick = tl.full([1], -1, tl.int32)
    last = tl.full([1], -1, tl.int32)
    for start in range(lo, hi, TILE):
        x, cmask, c = _load_chunk(logits_ptr, row_off, rmask, start, hi, TILE)
        z, key = _z_key(x, cmask, m, t, rmask & False)
        kept = cmask & (_x_bin(x, top[:, None], inv_tw[:, None]) < b_c)
        w = tl.where(kept, tl.exp(z), 0.0)
        first = tl.min(tl.where(kept & (run[:, None] + tl.cumsum(w, axis=1) > rest), c[None, :], V), axis=1)
        pick = tl.where((pick < 0) & (first < V), first, pick)
        last = tl.maximum(last, tl.max(tl.where(kept, c[None, :], -1), axis=1))
        run += tl.sum(w, axis=1)
    return tl.where(pick >= 0, pick, last)


@triton.jit
def _sample_kernel(logits_ptr, stride_b, temp_ptr, topk_ptr, topp_ptr, minp_ptr, rng_ptr, out_ptr, scratch_ptr,
                   part_max_ptr, part_arg_ptr, part_nan_ptr, part_mass_ptr, part_cert_ptr, plan_ptr, B, V, S, SEG,
                   ROWS: tl.constexpr, BLOCK_V: tl.constexpr, NP: tl.constexpr, KEY_PASSES: tl.constexpr,
                   NB: tl.constexpr, CAP: tl.constexpr, SP: tl.constexpr, SEG_TILE: tl.constexpr):
    """One program a ROWS rows. SP > 0: launch 3 of the split path (ROWS == 1, S segments a row, partials and
    candidates written by launches 1 and 2)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < B
    row_off = rows.to(tl.int64) * stride_b
    t, k, top_p, min_p, bad_param, greedy = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, rows, rmask)
    if SP > 0:
        m_r, arg_r, nan_r, row_mass, _finite, _live, _m_s, _m_f, _t = _row_stats(
            part_max_ptr, part_arg_ptr, part_nan_ptr, part_mass_ptr, tl.program_id(0), S, V, tl.max(t, axis=0), SP)
        count = tl.load(plan_ptr + 4 * tl.program_id(0))
        split_fast = tl.load(plan_ptr + 4 * tl.program_id(0) + 1) != 0
        b_c = tl.load(plan_ptr + 4 * tl.program_id(0) + 2).to(tl.float32, bitcast=True)
        m = tl.zeros([ROWS], tl.float32) + m_r
        argmax = tl.zeros([ROWS], tl.int32) + arg_r
        nan = tl.zeros([ROWS], tl.int32) + nan_r
    else:
        # Pass 1: max, its first index (the greedy answer), NaN.
        m, argmax, nan = _max_argmax_nan(logits_ptr, row_off, rmask, 0, V, BLOCK_V)

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
    if SP > 0:
        if split_fast:
            k_s = tl.max(k, axis=0)
            scratch = scratch_ptr + rows.to(tl.int64)[:, None] * CAP
            seg_ids = tl.arange(0, SP)
            cert_s = tl.load(part_cert_ptr + tl.program_id(0) * S + seg_ids, mask=seg_ids < S, other=0.0)
            sel, goal = _tile_draw(scratch, count, row_mass, tl.sum(cert_s, axis=0), rows, k_s,
                                   tl.max(top_p, axis=0), tl.max(min_p, axis=0), (k_s > 0) & (k_s < V), seed,
                                   off_lo, off_hi, CAP, NP, KEY_PASSES)
            if tl.max(sel, axis=0) < 0:
                sel = _certain_draw(logits_ptr, row_off, rmask, cert_s, goal, m_shift, t, b_c, S, SEG, V, SP,
                                    SEG_TILE)
            done = active
    elif CAP > 0:  # ROWS == 1
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


def split_count(B: int, V: int, sm_count: int) -> int:
    """Segments a row for the split path on a GPU of sm_count multiprocessors: enough programs for about two a
    multiprocessor, segments of at least SPLIT_MIN_SEG columns; 1 (one program a row) for large batches."""
    return max(1, min(triton.cdiv(V, SPLIT_MIN_SEG), 2 * sm_count // B, SPLIT_MAX))


def sample_triton(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, rng_state: torch.Tensor, block_v: int | None = None,
                  rows: int | None = None, splits: int | None = None) -> torch.Tensor:
    """logits (B, V) (last dim contiguous), per-row temperature/top_p/min_p (B,) fp32, top_k (B,) int32,
    rng_state (2,) int64 [seed, offset] -> ids (B,) int64 (negative for bad rows, see the module docstring).

    block_v (a power of two >= 16), rows (a power of two) and splits override the chunk size, the rows a program
    and the segments a row (tests use them to run many chunks a row, the fast path and the split path under the
    interpreter). Arguments are checked by pygpt.ops.sample; this launcher assumes them valid.
    """
    B, V = logits.shape
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B == 0:
        return out
    # Compiled: about 1K elements a tile (times NP in the bisection passes). Interpreted (tests on CPU): bigger
    # tiles, so that a batch of many short rows is a few programs.
    tile = 65536 if small_tiles() else 1024
    if splits is None:
        splits = split_count(B, V, sm_count(logits.device)) if logits.is_cuda else 1
    splits = min(splits, SPLIT_MAX)
    if splits > 1:
        seg_tile = block_v or max(16, min(SPLIT_MAX_TILE, triton.next_power_of_2(triton.cdiv(V, splits))))
        seg = triton.cdiv(triton.cdiv(V, splits), seg_tile) * seg_tile
        if triton.cdiv(V, seg) > 1:
            return _sample_split(logits, temperature, top_k, top_p, min_p, rng_state, out, seg, seg_tile,
                                 block_v or min(triton.next_power_of_2(V), 1024))
    block_v = block_v or max(16, min(triton.next_power_of_2(V), tile))
    rows = rows or max(1, min(triton.next_power_of_2(B), tile // block_v))
    grid = (triton.cdiv(B, rows),)
    fast = rows == 1 and V > block_v
    cap = min(FAST_CAP, triton.next_power_of_2(V)) if fast else 0
    scratch = torch.empty(B * cap, dtype=torch.int64, device=logits.device) if fast else out
    _sample_kernel[grid](
        logits, logits.stride(0), temperature, top_k, top_p, min_p, rng_state, out, scratch, out, out, out, out, out,
        out, B, V, 1, 1, ROWS=rows, BLOCK_V=block_v, NP=NUM_PIVOTS, KEY_PASSES=_key_passes(NUM_PIVOTS),
        NB=NUM_BINS, CAP=cap, SP=0, SEG_TILE=16, num_warps=8 if fast or rows * block_v >= 1024 else 4)
    return out


def _sample_split(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, rng_state: torch.Tensor, out: torch.Tensor, seg: int, seg_tile: int,
                  block_v: int, plan: torch.Tensor | None = None) -> torch.Tensor:
    """The split path (see the comment above _split_plan): segments of `seg` columns read in `seg_tile` chunks;
    block_v: the chunk of the general path, if a row falls back to it. plan (B, 4) int32, if given, receives each
    row's [candidates, fast path taken, bits of b_c (fp32), 0] (tests check which path ran)."""
    B, V = logits.shape
    S = triton.cdiv(V, seg)
    device = logits.device
    # Partials, one int32 buffer: max (f32), argmax, NaN, mass (f32), surely kept mass (f32) per (row, segment),
    # the histograms, then the plan per row; each slice 16-byte aligned (n a multiple of 4: Triton specialises).
    n = -(-B * S // 4) * 4
    end = n * (5 + NUM_BINS)
    part = torch.empty(end + 4 * B, dtype=torch.int32, device=device)
    part_max, part_arg, part_nan = part[:n].view(torch.float32), part[n:2 * n], part[2 * n:3 * n]
    part_mass, part_cert = part[3 * n:4 * n].view(torch.float32), part[4 * n:5 * n].view(torch.float32)
    part_hist = part[5 * n:end]
    plan = part[end:] if plan is None else plan
    cap = min(FAST_CAP, triton.next_power_of_2(V))
    scratch = torch.empty(B * cap, dtype=torch.int64, device=device)
    warps = 8 if seg_tile >= 2048 else 4
    params = (temperature, top_k, top_p, min_p)
    partials = (part_max, part_arg, part_nan, part_mass, part_hist)
    _split_stats_kernel[(B, S)](logits, logits.stride(0), *params, *partials, V, S, seg, TILE=seg_tile,
                                NB=NUM_BINS, num_warps=warps)
    sp = triton.next_power_of_2(S)
    _split_compact_kernel[(B, S)](logits, logits.stride(0), *params, *partials, part_cert, plan, scratch, V, S, seg,
                                  TILE=seg_tile, SP=sp, NB=NUM_BINS, CAP=cap, num_warps=warps)
    _sample_kernel[(B,)](
        logits, logits.stride(0), *params, rng_state, out, scratch, *partials[:4], part_cert, plan, B, V, S, seg,
        ROWS=1, BLOCK_V=block_v, NP=NUM_PIVOTS, KEY_PASSES=_key_passes(NUM_PIVOTS), NB=NUM_BINS, CAP=cap, SP=sp,
        SEG_TILE=seg_tile, num_warps=8)
    return out
