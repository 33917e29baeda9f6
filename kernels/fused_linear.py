"""fused_linear in Triton: out = residual + act(norm(x) @ W^T + bias) for the few rows of a decode step.

One program per (block of BLOCK_N outputs, row). Each program computes its row's norm statistics itself (the row
is K values, read from L2 by every program: cheaper than a separate launch), then streams its BLOCK_N weight rows
once, normalising each BLOCK_K slice of x on the fly, and applies bias, activation, the rounding to the weight
dtype and the residual add before its one store. At batch 1 the layer is a GEMV bound by reading the weights,
so BLOCK_N is sized to give every multiprocessor about two programs. Numerics: pygpt/ops/linear.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import sm_count

# Matches pygpt.ops.linear.NORMS / ACTS (constexpr: a kernel may read no other globals).
NORM_NONE, NORM_LAYER, NORM_RMS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
ACT_NONE, ACT_GELU, ACT_SWIGLU = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _rounded(x, ty: tl.constexpr):
    """x rounded to dtype ty (to nearest even), kept in x's dtype."""
    return x.to(ty).to(x.dtype)


@triton.jit
def _normalised(x_row, g_ptr, beta_ptr, offs, kmask, shift, scale, NORM: tl.constexpr, HAS_BETA: tl.constexpr,
                w_ty: tl.constexpr, acc_ty: tl.constexpr):
    """The slice offs of norm(x), rounded to the weight dtype (what autocast feeds a matmul), 0 outside K."""
    h = tl.load(x_row + offs, mask=kmask, other=0.0).to(acc_ty)
    if NORM != NORM_NONE:
        h = (h - shift) * scale * tl.load(g_ptr + offs, mask=kmask, other=0.0).to(acc_ty)
        if HAS_BETA:
            h += tl.load(beta_ptr + offs, mask=kmask, other=0.0).to(acc_ty)
    return tl.where(kmask, _rounded(h, w_ty), 0.0)


@triton.jit
def _row_dot(w_ptr, rows, row_mask, offs, kmask, h, K):
    """(BLOCK_N,) partial dot products of weight rows `rows` (int64) with h over the slice offs."""
    w = tl.load(w_ptr + rows[:, None] * K + offs[None, :], mask=row_mask[:, None] & kmask[None, :], other=0.0)
    return tl.sum(w.to(h.dtype) * h[None, :], axis=1)


@triton.jit
def _fused_linear_kernel(x_ptr, w_ptr, b_ptr, g_ptr, beta_ptr, res_ptr, out_ptr, N, K, eps,
                         NORM: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BETA: tl.constexpr,
                         HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One flat grid axis (a grid's second axis stops at 65535 rows): the N blocks of row 0, then of row 1, ...
    n_blocks = tl.cdiv(N, BLOCK_N)
    row = (tl.program_id(0) // n_blocks).to(tl.int64)
    cols = ((tl.program_id(0) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_mask = cols < N
    w_ty: tl.constexpr = w_ptr.dtype.element_ty
    acc_ty: tl.constexpr = tl.float64 if w_ty == tl.float64 else tl.float32
    x_row = x_ptr + row * K

    # The row's norm statistics, two passes over its K values (the mean first: no cancellation).
    shift = 0.0
    scale = 1.0
    if NORM == NORM_LAYER:
        total = tl.zeros([BLOCK_K], dtype=acc_ty)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            total += tl.load(x_row + offs, mask=offs < K, other=0.0).to(acc_ty)
        shift = tl.sum(total, axis=0) / K
    if NORM != NORM_NONE:
        squares = tl.zeros([BLOCK_K], dtype=acc_ty)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            d = tl.where(offs < K, tl.load(x_row + offs, mask=offs < K, other=0.0).to(acc_ty) - shift, 0.0)
            squares += d * d
        scale = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)

    acc = tl.zeros([BLOCK_N], dtype=acc_ty)
    acc_up = tl.zeros([BLOCK_N], dtype=acc_ty)  # swiglu's second half (unused otherwise)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        kmask = offs < K
        h = _normalised(x_row, g_ptr, beta_ptr, offs, kmask, shift, scale, NORM, HAS_BETA, w_ty, acc_ty)
        acc += _row_dot(w_ptr, cols, col_mask, offs, kmask, h, K)
        if ACT == ACT_SWIGLU:
            acc_up += _row_dot(w_ptr, cols + N, col_mask, offs, kmask, h, K)

    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(acc_ty)
        if ACT == ACT_SWIGLU:
            acc_up += tl.load(b_ptr + N + cols, mask=col_mask, other=0.0).to(acc_ty)
    if ACT == ACT_GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == ACT_SWIGLU:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    y = _rounded(acc, w_ty)  # the matmul's output dtype
    out_ty = out_ptr.dtype.element_ty
    if HAS_RES:
        y = _rounded(tl.load(res_ptr + row * N + cols, mask=col_mask, other=0.0).to(acc_ty) + y, out_ty)
    tl.store(out_ptr + row * N + cols, y.to(out_ty), mask=col_mask)


def launch_config(M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): the widest output block that still gives about two programs per multiprocessor."""
    block_k = min(triton.next_power_of_2(K), 128)
    block_n = 64
    while block_n > 8 and triton.cdiv(N, block_n) * M < 2 * sms:
        block_n //= 2
    return block_n, block_k


def fused_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None, norm: int, eps: float,
                        act: int, residual: torch.Tensor | None) -> torch.Tensor:
    """x (M, K), weight (N_w, K) contiguous -> (M, N) in weight's dtype (the residual's with one).

    Arguments are checked by pygpt.ops.fused_linear; this launcher assumes them valid.
    """
    M, K = x.shape
    N = weight.shape[0] // 2 if act == ACT_SWIGLU.value else weight.shape[0]
    out = torch.empty((M, N), device=x.device, dtype=weight.dtype if residual is None else residual.dtype)
    if M == 0 or N == 0:
        return out
    block_n, block_k = launch_config(M, N, K, sm_count(x.device))
    has_norm, layer_norm = norm != NORM_NONE.value, norm == NORM_LAYER.value
    _fused_linear_kernel[(triton.cdiv(N, block_n) * M,)](
        x, weight, bias if bias is not None else weight, norm_weight if has_norm else weight,
        norm_bias if (layer_norm and norm_bias is not None) else weight,
        residual if residual is not None else out, out, N, K, float(eps),
        NORM=norm, ACT=act, HAS_BIAS=bias is not None, HAS_BETA=layer_norm and norm_bias is not None,
        HAS_RES=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out
