"""A GPT's decode step on fused ops: the model's forward on a KV cache, with every Linear fused with its
neighbours (pygpt.ops.fused_linear).

Per block, model.forward issues norm, (cast,) GEMM, decode attention, GEMM, add, norm, (cast,) GEMM, GELU, GEMM,
add - each a kernel launch on a GPU and a trip through the dispatcher on CPU, at sizes where that overhead, not
arithmetic, is the cost of a token. Here a block is five ops:

    qkv = norm1+qkv           y = decode attention (rotate, attend, append)     x = proj(y) + x
    h   = norm2+up+act        x = down(h) + x

and the head is one (norm_f + lm_head, on the last position only). The weights are read from the model as they
are (bound once, see pygpt.ops.FusedLinear): under autocast the engine hands in its bf16 twin (precast.py), so no
weight is cast per step. The numbers are model.forward's up to rounding order (an activation is rounded once
instead of twice); tests/test_engine.py compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import pygpt.ops as ops
from pygpt.models.layers import LayerNorm, RMSNorm

from .cache import KVCache


def _norm_args(norm: nn.Module) -> dict:
    """fused_linear's norm arguments for one of the model's norm modules."""
    if isinstance(norm, LayerNorm):
        return {"norm": "layernorm", "norm_weight": norm.weight, "norm_bias": norm.bias, "eps": norm.eps}
    if isinstance(norm, RMSNorm):
        return {"norm": "rmsnorm", "norm_weight": norm.weight, "eps": norm.eps}
    raise TypeError(f"FusedDecoder: unsupported norm {type(norm).__name__}")


@dataclass
class _FusedBlock:
    """One transformer block as four fused Linears around the decode attention."""
    qkv: ops.FusedLinear   # norm1 + qkv
    proj: ops.FusedLinear  # proj (+ the residual)
    up: ops.FusedLinear    # norm2 + up + GELU / SwiGLU
    down: ops.FusedLinear  # down (+ the residual)
    attend: ops.DecodeAttention  # rotate, attend over the cache, append
    n_head: int
    n_kv_head: int
    head_dim: int

    @classmethod
    def of(cls, block: nn.Module) -> _FusedBlock:
        attn, mlp = block.attn, block.mlp
        return cls(qkv=ops.FusedLinear(attn.qkv.weight, attn.qkv.bias, **_norm_args(block.norm1)),
                   proj=ops.FusedLinear(attn.proj.weight, attn.proj.bias),
                   up=ops.FusedLinear(mlp.up.weight, mlp.up.bias, act=mlp.kind, **_norm_args(block.norm2)),
                   down=ops.FusedLinear(mlp.down.weight, mlp.down.bias),
                   attend=ops.DecodeAttention(attn.head_dim, base=attn.rope_base, rope=attn.rope),
                   n_head=attn.n_head, n_kv_head=attn.n_kv_head, head_dim=attn.head_dim)

    def __call__(self, x: torch.Tensor, B: int, cache) -> torch.Tensor:
        """x (B*T, C) rows of B sequences -> (B*T, C), attending over and appending to ``cache`` (a LayerCache).
        (Rows, not (B, T, C): the fused ops take rows, and every reshape is a few microseconds on CPU.)"""
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        y = self.attend(q.view(B, -1, H, D), k.view(B, -1, Hkv, D), v.view(B, -1, Hkv, D), *cache)
        x = self.proj(y.view(x.shape[0], H * D), residual=x)
        return self.down(self.up(x), residual=x)


class FusedDecoder:
    """``decoder(idx, cache)`` = ``model(idx, kv_cache=cache)[0][:, -1]`` for a pygpt GPT in eval mode: idx (B, T)
    new tokens -> the last position's logits (B, V), appending the tokens to ``cache``."""

    def __init__(self, model: nn.Module):
        if getattr(model, "model_type", None) != "gpt":
            raise TypeError(f"FusedDecoder: needs a pygpt GPT, got {type(model).__name__}")
        self.model = model
        self.blocks = [_FusedBlock.of(block) for block in model.blocks]
        self.head = ops.FusedLinear(model.lm_head.weight, **_norm_args(model.norm_f))

    def __call__(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        positions = None if self.model.config.pos == "rope" else cache.positions(idx.shape[1])
        B, T = idx.shape
        x = self.model.embed(idx, positions).view(B * T, -1)  # (B*T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, B, cache.layer(i))
        return self.head(x.view(B, T, -1)[:, -1])  # (B, V)
