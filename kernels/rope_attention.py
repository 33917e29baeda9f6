"""rope_attention in Triton: causal (or full) softmax attention with RoPE applied to the q and k tiles as they
are loaded (rotated q/k and the T x T scores never touch memory), forward and backward (FlashAttention-2).

    q~ = rot(q), k~ = rot(k) at their positions;  out = softmax(q~ k~^T * scale + mask) v

Layout: q (B, T, H, D), k and v (B, T, Hkv, D), each with a contiguous last dimension and free other strides;
query head h reads kv head h // (H / Hkv). The rotation is done on the two halves of the head (rotate-half), so
q~ k~^T = q~1 k~1^T + q~2 k~2^T and any even head_dim works (each half is padded to a power of two and masked).
cos/sin come from a small (B or 1, T, D/2) fp32 table made once per call (pygpt.ops.rope_cos_sin), which stays
in L2: computing sin/cos of every key tile for every query block would cost more than the attention itself.

Kernels: _fwd (grid: query blocks x B*H; writes out and the log-sum-exp), _bwd_preprocess (delta = rowsum(dO*O)),
_bwd_dkdv (grid: key blocks x B*Hkv; loops over the query blocks of every query head of the group, so dk/dv
need no atomics), _bwd_dq (grid: query blocks x B*H).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import small_tiles

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _load_rotated_halves(ptr, rows, row_stride, row_mask, cos_ptr, sin_ptr, HALF: tl.constexpr,
                         BLOCK_HALF: tl.constexpr, ROPE: tl.constexpr):
    """Load the two halves of a (rows, D) tile and rotate them: (x1 c - x2 s, x2 c + x1 s), in fp32."""
    i = tl.arange(0, BLOCK_HALF)
    mask = row_mask[:, None] & (i[None, :] < HALF)
    base = ptr + rows[:, None] * row_stride + i[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        table = rows[:, None] * HALF + i[None, :]
        c = tl.load(cos_ptr + table, mask=mask, other=0.0)
        s = tl.load(sin_ptr + table, mask=mask, other=0.0)
        return x1 * c - x2 * s, x2 * c + x1 * s
    return x1, x2


@triton.jit
def _load_query_halves(ptr, rows, row_stride, row_mask, cos_ptr, sin_ptr, qk_scale, HALF: tl.constexpr,
                       BLOCK_HALF: tl.constexpr, ROPE: tl.constexpr):
    """The rotated q halves times scale * log2(e), in q's dtype: scores come out in log2 units, for exp2."""
    q1, q2 = _load_rotated_halves(ptr, rows, row_stride, row_mask, cos_ptr, sin_ptr, HALF, BLOCK_HALF, ROPE)
    ty = ptr.dtype.element_ty
    return (q1 * qk_scale).to(ty), (q2 * qk_scale).to(ty)


@triton.jit
def _query_block(T, H, GROUPS, BLOCK_M: tl.constexpr):
    """This program's (batch, head) and query rows, for the kernels with grid (query blocks, B * H)."""
    bh = tl.program_id(1)
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    return bh, (bh // H).to(tl.int64), h, h // GROUPS, offs_m, offs_m < T


@triton.jit
def _key_tile_scores(q1, q2, k_base, skt, start_n, offs_m, T, cos_b, sin_b, HALF: tl.constexpr,
                     BLOCK_HALF: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, ROPE: tl.constexpr,
                     PRECISION: tl.constexpr):
    """Scores (BLOCK_M, BLOCK_N) of the query tile against the key tile at start_n, which of them are real keys
    (inside T, causal), the tile's rotated keys in q's dtype, and its key rows."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < T
    k1, k2 = _load_rotated_halves(k_base, offs_n, skt, n_mask, cos_b, sin_b, HALF, BLOCK_HALF, ROPE)
    k1 = k1.to(q1.dtype)
    k2 = k2.to(q1.dtype)
    s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
    s += tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
    valid = n_mask[None, :]
    if CAUSAL:
        valid = valid & (offs_m[:, None] >= offs_n[None, :])
    return s, valid, k1, k2, offs_n, n_mask


@triton.jit
def _fwd_tile(q1, q2, k_base, v_base, skt, svt, start_n, offs_m, offs_d, T, cos_b, sin_b, m_i, l_i, acc,
              HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, ROPE: tl.constexpr, PRECISION: tl.constexpr,
              MASKED: tl.constexpr):
    """One step of the online softmax over the key tile at start_n. MASKED=False for a tile every query row of
    the block sees whole (inside T, and before the block's first row when causal): no mask on the scores, and
    every row's running max is finite (the softmax's elementwise work is what bounds this loop on Hopper)."""
    s, valid, k1, k2, offs_n, n_mask = _key_tile_scores(q1, q2, k_base, skt, start_n, offs_m, T, cos_b, sin_b,
                                                        HALF, BLOCK_HALF, BLOCK_N, CAUSAL, ROPE, PRECISION)
    if MASKED:
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row may see no key of the tile yet
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = m_new
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :],
                mask=n_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _fwd(Q, K, V, COS, SIN, OUT, LSE,
         sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, scb,
         T, H, GROUPS, qk_scale,
         HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, ROPE: tl.constexpr,
         PRECISION: tl.constexpr):
    bh, b64, h, hk, offs_m, m_mask = _query_block(T, H, GROUPS, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    cos_b = COS + b64 * scb
    sin_b = SIN + b64 * scb
    q1, q2 = _load_query_halves(Q + b64 * sqb + h * sqh, offs_m, sqt, m_mask, cos_b, sin_b, qk_scale,
                                HALF, BLOCK_HALF, ROPE)
    dtype = V.dtype.element_ty

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key tiles [0, whole) are seen whole by every row of the block: unmasked; [whole, hi) are masked (the
    # diagonal when causal, the tile that crosses T). The masked loop has at most BLOCK_M / BLOCK_N + 1 tiles and
    # is not software-pipelined: pipelining both loops took the sm_90 build from 200 to 236 registers at the
    # prefill shape and made the heavy shape spill (python -m pygpt.triton_aot --only attention).
    if CAUSAL:
        hi = tl.minimum(T, (tl.program_id(0) + 1) * BLOCK_M)
        whole = (tl.program_id(0) * BLOCK_M // BLOCK_N) * BLOCK_N
    else:
        hi = T
        whole = (T // BLOCK_N) * BLOCK_N
    k_base = K + b64 * skb + hk * skh
    v_base = V + b64 * svb + hk * svh
    for start_n in range(0, whole, BLOCK_N):
        m_i, l_i, acc = _fwd_tile(q1, q2, k_base, v_base, skt, svt, start_n, offs_m, offs_d, T, cos_b, sin_b,
                                  m_i, l_i, acc, HALF, BLOCK_HALF, D, BLOCK_N, CAUSAL, ROPE, PRECISION,
                                  MASKED=False)
    for start_n in tl.range(whole, hi, BLOCK_N, num_stages=1):
        m_i, l_i, acc = _fwd_tile(q1, q2, k_base, v_base, skt, svt, start_n, offs_m, offs_d, T, cos_b, sin_b,
                                  m_i, l_i, acc, HALF, BLOCK_HALF, D, BLOCK_N, CAUSAL, ROPE, PRECISION,
                                  MASKED=True)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + b64 * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(dtype),
             mask=m_mask[:, None] & (offs_d[None, :] < D))
    # Natural-log LSE of the scaled scores: (m + log2 l) * ln 2.
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=m_mask)


@triton.jit
def _bwd_preprocess(OUT, DO, DELTA, sob, sot, soh, sdb, sdt, sdh, T, H,
                    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    o = tl.load(OUT + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _unrotate_store(ptr, rows, row_stride, row_mask, g1, g2, cos_ptr, sin_ptr, mult,
                    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, ROPE: tl.constexpr):
    """Store mult * rot^T(g) for a gradient g = (g1, g2) with respect to the rotated halves."""
    i = tl.arange(0, BLOCK_HALF)
    mask = row_mask[:, None] & (i[None, :] < HALF)
    if ROPE:
        table = rows[:, None] * HALF + i[None, :]
        c = tl.load(cos_ptr + table, mask=mask, other=0.0)
        s = tl.load(sin_ptr + table, mask=mask, other=0.0)
        g1, g2 = g1 * c + g2 * s, g2 * c - g1 * s
    base = ptr + rows[:, None] * row_stride + i[None, :]
    ty = ptr.dtype.element_ty
    tl.store(base, (g1 * mult).to(ty), mask=mask)
    tl.store(base + HALF, (g2 * mult).to(ty), mask=mask)


@triton.jit
def _bwd_dkdv(Q, K, V, COS, SIN, DO, LSE, DELTA, DK, DV,
              sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, scb,
              sdkb, sdkt, sdkh, sdvb, sdvt, sdvh,
              T, H, HKV, GROUPS, qk_scale, sm_scale,
              HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, ROPE: tl.constexpr,
              PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    b64 = b.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < T
    cos_b = COS + b64 * scb
    sin_b = SIN + b64 * scb
    dtype = V.dtype.element_ty
    k1, k2 = _load_rotated_halves(K + b64 * skb + hk * skh, offs_n, skt, n_mask, cos_b, sin_b, HALF, BLOCK_HALF, ROPE)
    k1 = k1.to(dtype)
    k2 = k2.to(dtype)
    v = tl.load(V + b64 * svb + hk * svh + offs_n[:, None] * svt + offs_d[None, :],
                mask=n_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    dk1 = tl.zeros([BLOCK_N, BLOCK_HALF], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_HALF], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        q_base = Q + b64 * sqb + h * sqh
        do_base = DO + b64 * sdb + h * sdh
        row_base = (b64 * H + h) * T
        for start_m in range(lo, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_mask = offs_m < T
            q1, q2 = _load_query_halves(q_base, offs_m, sqt, m_mask, cos_b, sin_b, qk_scale, HALF, BLOCK_HALF, ROPE)
            # s^T (keys x queries), in log2 units
            st = tl.dot(k1, tl.trans(q1), input_precision=PRECISION)
            st += tl.dot(k2, tl.trans(q2), input_precision=PRECISION)
            lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
            valid = n_mask[:, None] & m_mask[None, :]
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            pt = tl.where(valid, tl.exp2(st - lse[None, :]), 0.0)
            do = tl.load(do_base + offs_m[:, None] * sdt + offs_d[None, :],
                         mask=m_mask[:, None] & (offs_d[None, :] < D), other=0.0)
            dv += tl.dot(pt.to(dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
            dst = (pt * (dpt - delta[None, :])).to(dtype)
            # d(scores)/d(k~) = scale * q~ ; q1/q2 above carry scale * log2(e), so divide the log2(e) back out.
            dk1 += tl.dot(dst, q1, input_precision=PRECISION)
            dk2 += tl.dot(dst, q2, input_precision=PRECISION)
    _unrotate_store(DK + b64 * sdkb + hk * sdkh, offs_n, sdkt, n_mask, dk1, dk2, cos_b, sin_b, 0.6931471805599453,
                    HALF, BLOCK_HALF, ROPE)
    tl.store(DV + b64 * sdvb + hk * sdvh + offs_n[:, None] * sdvt + offs_d[None, :], dv.to(dtype),
             mask=n_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dq(Q, K, V, COS, SIN, DO, LSE, DELTA, DQ,
            sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, scb,
            sdqb, sdqt, sdqh,
            T, H, GROUPS, qk_scale, sm_scale,
            HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, ROPE: tl.constexpr,
            PRECISION: tl.constexpr):
    bh, b64, h, hk, offs_m, m_mask = _query_block(T, H, GROUPS, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    cos_b = COS + b64 * scb
    sin_b = SIN + b64 * scb
    dtype = V.dtype.element_ty
    q1, q2 = _load_query_halves(Q + b64 * sqb + h * sqh, offs_m, sqt, m_mask, cos_b, sin_b, qk_scale,
                                HALF, BLOCK_HALF, ROPE)
    do = tl.load(DO + b64 * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :],
                 mask=m_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    row_base = bh.to(tl.int64) * T
    lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
    dq1 = tl.zeros([BLOCK_M, BLOCK_HALF], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_HALF], tl.float32)
    hi = tl.minimum(T, (tl.program_id(0) + 1) * BLOCK_M) if CAUSAL else T
    k_base = K + b64 * skb + hk * skh
    v_base = V + b64 * svb + hk * svh
    for start_n in range(0, hi, BLOCK_N):
        s, valid, k1, k2, offs_n, n_mask = _key_tile_scores(q1, q2, k_base, skt, start_n, offs_m, T, cos_b, sin_b,
                                                            HALF, BLOCK_HALF, BLOCK_N, CAUSAL, ROPE, PRECISION)
        p = tl.where(valid & m_mask[:, None], tl.exp2(s - lse[:, None]), 0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :],
                    mask=n_mask[:, None] & (offs_d[None, :] < D), other=0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = (p * (dp - delta[:, None])).to(dtype)
        dq1 += tl.dot(ds, k1, input_precision=PRECISION)
        dq2 += tl.dot(ds, k2, input_precision=PRECISION)
    _unrotate_store(DQ + b64 * sdqb + h * sdqh, offs_m, sdqt, m_mask, dq1, dq2, cos_b, sin_b, sm_scale,
                    HALF, BLOCK_HALF, ROPE)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, by head dim and dtype, for Hopper. Chosen so that no
# kernel needs more shared memory than a block may have (227 KB) and none spills registers, as compiled ahead of
# time for sm_90 by pygpt.triton_aot (`python -m pygpt.triton_aot --only attention` prints what each one costs).
# fp32 runs its dots in exact IEEE fp32 (no tensor cores): small tiles. _bwd_dkdv holds BLOCK_N keys and loops
# over BLOCK_M queries; _bwd_dq holds BLOCK_M queries and loops over BLOCK_N keys.
Config = tuple[int, int, int, int]
_CONFIGS: dict[str, dict[tuple[int, bool], Config]] = {
    #            (head dim up to, fp32?): config
    "fwd": {(64, False): (128, 64, 4, 3), (128, False): (128, 64, 8, 3), (256, False): (64, 32, 8, 3),
            (64, True): (32, 32, 4, 2), (128, True): (32, 16, 4, 2), (256, True): (16, 16, 8, 2)},
    "dkdv": {(64, False): (64, 64, 8, 3), (128, False): (32, 64, 8, 2), (256, False): (16, 32, 8, 2),
             (64, True): (16, 64, 8, 2), (128, True): (16, 16, 4, 2), (256, True): (16, 16, 8, 2)},
    "dq": {(64, False): (64, 64, 4, 3), (128, False): (64, 64, 8, 3), (256, False): (32, 32, 8, 2),
           (64, True): (64, 32, 8, 2), (128, True): (32, 16, 4, 2), (256, True): (16, 16, 8, 2)},
}


def _config(kernel: str, D: int, dtype: torch.dtype) -> Config:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of ``kernel`` in {fwd, dkdv, dq}. Small tiles under the CPU
    interpreter, where each tile op is a numpy call (see small_tiles)."""
    if small_tiles():
        return 16, 16, 1, 1
    fp32 = dtype == torch.float32
    return next(config for (max_d, is_fp32), config in _CONFIGS[kernel].items() if D <= max_d and is_fp32 == fp32)


MAX_GRID_Y = 65535  # a CUDA grid's second axis, which holds B * H here


def _common(q: torch.Tensor, cos: torch.Tensor | None):
    B, T, H, D = q.shape
    if B * H > MAX_GRID_Y:
        raise ValueError(f"pygpt.rope_attention: the Triton kernels take B * n_head <= {MAX_GRID_Y}, got "
                         f"{B} * {H} = {B * H} (split the batch)")
    if D % 2:  # the kernels hold q and k as two halves (RoPE's pairs), with or without the rotation
        raise ValueError(f"pygpt.rope_attention: the Triton kernels need an even head_dim, got {D} "
                         "(pygpt.ops.rope_attention runs the reference for it)")
    half = D // 2
    block_half = max(16, triton.next_power_of_2(half))  # tl.dot needs >= 16
    block_d = 2 * block_half if 2 * half == D else max(16, triton.next_power_of_2(D))
    rope = cos is not None
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return B, T, H, D, half, block_half, block_d, rope, precision


def _dummy_table(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(1, device=q.device, dtype=torch.float32)


def rope_attention_fwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
                              sin: torch.Tensor | None, scale: float,
                              causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, T, H, D) and lse (B, H, T) fp32. cos/sin: (Bc, T, D/2) fp32 tables (Bc = B or 1), or None."""
    B, T, H, D, half, block_half, block_d, rope, precision = _common(q, cos)
    Hkv = k.shape[2]
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return out, lse
    cos = cos if rope else _dummy_table(q)
    sin = sin if rope else cos
    scb = cos.stride(0) if rope and cos.shape[0] > 1 else 0
    block_m, block_n, warps, stages = _config("fwd", D, q.dtype)
    grid = (triton.cdiv(T, block_m), B * H)
    _fwd[grid](q, k, v, cos, sin, out, lse,
               q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), scb,
               T, H, H // Hkv, scale * LOG2E,
               HALF=half, BLOCK_HALF=block_half, D=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
               CAUSAL=causal, ROPE=rope, PRECISION=precision, num_warps=warps,
               num_stages=stages)
    return out, lse


def rope_attention_bwd_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              cos: torch.Tensor | None, sin: torch.Tensor | None, out: torch.Tensor,
                              lse: torch.Tensor, scale: float, causal: bool):
    """dq, dk, dv with respect to the un-rotated q and k (and v), same shapes and dtypes as the inputs."""
    B, T, H, D, half, block_half, block_d, rope, precision = _common(q, cos)
    Hkv = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    cos = cos if rope else _dummy_table(q)
    sin = sin if rope else cos
    scb = cos.stride(0) if rope and cos.shape[0] > 1 else 0
    delta = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    rows = 16 if small_tiles() else 64
    _bwd_preprocess[(triton.cdiv(T, rows), B * H)](
        out, grad_out, delta, out.stride(0), out.stride(1), out.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), T, H,
        D=D, BLOCK_D=block_d, BLOCK_M=rows, num_warps=1 if small_tiles() else 4)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), scb)
    meta = dict(HALF=half, BLOCK_HALF=block_half, D=D, BLOCK_D=block_d, CAUSAL=causal, ROPE=rope,
                PRECISION=precision)
    block_m, block_n, warps, stages = _config("dkdv", D, q.dtype)
    _bwd_dkdv[(triton.cdiv(T, block_n), B * Hkv)](
        q, k, v, cos, sin, grad_out, lse, delta, dk, dv, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        T, H, Hkv, H // Hkv, scale * LOG2E, scale, **meta,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    block_m, block_n, warps, stages = _config("dq", D, q.dtype)
    _bwd_dq[(triton.cdiv(T, block_m), B * H)](
        q, k, v, cos, sin, grad_out, lse, delta, dq, *strides, dq.stride(0), dq.stride(1), dq.stride(2),
        T, H, H // Hkv, scale * LOG2E, scale, **meta,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    return dq, dk, dv
