"""A GPT language model: token embeddings -> n_layer pre-norm transformer blocks -> norm -> tied LM head.

Positions are RoPE (rotated inside attention, the default), learned absolute embeddings, or the fixed sinusoidal
table. Attention is grouped-query (n_kv_head key/value heads shared by n_head query heads) and goes through
pygpt.ops.rope_attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

import pygpt.ops as ops

from .layers import MLP, make_norm, sinusoidal_table

if TYPE_CHECKING:
    from pygpt.infer.cache import LayerCache

POSITIONS = ("rope", "learned", "sinusoidal")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256      # longest context seen in training (and the learned/sinusoidal table size)
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0         # key/value heads for grouped-query attention; 0 means n_head (plain MHA)
    n_embd: int = 384
    dropout: float = 0.0       # on the residual branches (attention output, MLP output) and the embeddings
    bias: bool = False         # biases in Linear and LayerNorm layers
    pos: str = "rope"          # 'rope' | 'learned' | 'sinusoidal'
    norm: str = "layernorm"    # 'layernorm' | 'rmsnorm'
    mlp: str = "gelu"          # 'gelu' | 'swiglu'
    tie_weights: bool = True   # share the token embedding with the LM head
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"GPTConfig: {message}")

        require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        require(self.block_size > 0, f"block_size must be > 0, got {self.block_size}")
        require(self.n_head > 0 and self.n_embd > 0 and self.n_embd % self.n_head == 0,
                f"n_embd ({self.n_embd}) must be a positive multiple of n_head ({self.n_head})")
        require(self.n_kv_head >= 0 and self.n_head % self.kv_heads == 0,
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        require(self.pos in POSITIONS, f"pos must be one of {POSITIONS}, got {self.pos!r}")
        require(self.pos != "rope" or self.head_dim % 2 == 0, f"RoPE needs an even head_dim, got {self.head_dim}")
        require(self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        require(self.mlp in ("gelu", "swiglu"), f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.rope = cfg.pos == "rope"
        self.rope_base = cfg.rope_base
        # One projection for q, k and v (one GEMM); GQA makes k and v narrower than q.
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.proj.residual_init = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None, cache: LayerCache | None = None
                ) -> torch.Tensor:
        """x (B, T, C); positions (T,) or (B, T) (unused with a cache: the decode op reads its counters)."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
        if cache is not None:  # decode: attend over this layer's KV cache (a LayerCache), then append k, v to it
            y = ops.rope_decode_attention(q, k, v, cache.k, cache.v, cache.lengths, cache.starts, base=self.rope_base,
                                          rope=self.rope, advance=cache.advance)
        else:
            y = ops.rope_attention(q, k, v, positions if self.rope else None, causal=True, base=self.rope_base)
        return self.dropout(self.proj(y.reshape(B, T, H * D)))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.mlp, cfg.bias, cfg.dropout)
        self.mlp.down.residual_init = True

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None, cache: LayerCache | None = None
                ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions, cache)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    model_type = "gpt"

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos == "sinusoidal":
            self.register_buffer("wpe_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # Residual projections are scaled down so the residual stream's variance doesn't grow with depth.
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_init", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_weights:
            n -= self.wte.weight.numel()
        if non_embedding and self.config.pos == "learned":
            n -= self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                kv_cache=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy against targets (B, T) if given.

        positions (T,) or (B, T) are the tokens' absolute positions (default 0..T-1, or the next positions of
        ``kv_cache``). With learned or sinusoidal positions they must be < block_size. With a
        pygpt.infer.KVCache the tokens are decoded against it and appended to it.
        """
        B, T = idx.shape
        # A RoPE model decoding on a cache needs no positions: the decode op rotates at the cache's own counters
        # (computing them anyway would be three more kernels in every decode step).
        if positions is None and (kv_cache is None or self.config.pos != "rope"):
            positions = kv_cache.positions(T) if kv_cache is not None else torch.arange(T, device=idx.device)
        x = self.drop(self.embed(idx, positions))
        for i, block in enumerate(self.blocks):
            x = block(x, positions, kv_cache.layer(i) if kv_cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss

    def embed(self, idx: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """idx (B, T) -> (B, T, C): token embeddings, plus the position table's rows at ``positions`` (T,) or
        (B, T) for learned or sinusoidal positions (RoPE rotates inside attention instead)."""
        x = self.wte(idx)
        if self.config.pos != "rope":
            # (The bound check reads positions on the host: skipped while torch.compile traces or a CUDA graph
            # captures, where a host read is not allowed; the engine bounds its positions on the host.)
            if not _tracing_or_capturing(positions) and int(positions.max()) >= self.config.block_size:
                raise ValueError(f"GPT: positions must be < block_size ({self.config.block_size}) with "
                                 f"pos={self.config.pos!r}")
            table = self.wpe.weight if self.config.pos == "learned" else self.wpe_table
            x = x + table[positions]
        return x


def _tracing_or_capturing(t: torch.Tensor) -> bool:
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
