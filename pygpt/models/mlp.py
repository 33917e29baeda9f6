"""The MLP language model of Bengio et al. (2003), as makemore builds it.

The next token is predicted from the previous ``context`` tokens: each is looked up in an embedding table C
(V x E), the n embeddings are concatenated, go through tanh hidden layer(s) (optionally Linear -> BatchNorm ->
tanh) and a linear layer gives the logits.

Same contract as the GPT: forward(idx (B, T), targets=None) -> (logits (B, T, V), loss or None). Position t is
predicted from idx[t - n + 1 .. t]; before the start of idx the context is filled with ``pad_id`` (the start
token '.' for a word list, as makemore does; '\\n', id 0, for Tiny Shakespeare).

Initialisation (``init``):
- 'kaiming': hidden weights N(0, (5/3)^2 / fan_in) (the tanh gain), zero biases, output layer scaled down so
  that the first loss is close to -ln(1/V).
- 'naive': every weight and bias N(0, 1), the first attempt of makemore: a huge first loss and saturated tanh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bigram import ClassicConfig
from .gpt import lm_loss

INITS = ("kaiming", "naive")
TANH_GAIN = 5.0 / 3.0
OUT_SCALE = 0.1  # the output layer's weights are this times a fan-in-scaled normal under 'kaiming'


@dataclass
class BengioMLPConfig(ClassicConfig):
    vocab_size: int = 27
    context: int = 3           # n: tokens the prediction depends on
    block_size: int = 0        # window sampled / scored / fed to the generator (>= context); 0 means context
    n_embd: int = 10           # embedding size of each token (C is vocab_size x n_embd)
    n_hidden: int = 200        # tanh units per hidden layer
    n_layer: int = 1           # hidden layers
    batchnorm: bool = False    # Linear (no bias) -> BatchNorm1d -> tanh; running statistics in eval mode
    bn_momentum: float = 0.01  # weight of each batch in the running statistics
    init: str = "kaiming"      # 'kaiming' | 'naive'
    pad_id: int = 0            # fills the context before the first token

    def __post_init__(self) -> None:
        if self.block_size == 0:
            self.block_size = self.context
        self._require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        self._require(self.context >= 1, f"context must be >= 1, got {self.context}")
        self._require(self.block_size >= self.context,
                      f"block_size ({self.block_size}) must be >= context ({self.context}): the generator feeds "
                      "block_size tokens")
        self._require(self.n_embd > 0 and self.n_hidden > 0,
                      f"n_embd and n_hidden must be > 0, got {self.n_embd} and {self.n_hidden}")
        self._require(self.n_layer >= 1, f"n_layer must be >= 1, got {self.n_layer}")
        self._require(0.0 < self.bn_momentum <= 1.0, f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        self._require(self.init in INITS, f"init must be one of {INITS}, got {self.init!r}")
        self._require(0 <= self.pad_id < self.vocab_size,
                      f"pad_id must be a token id in [0, {self.vocab_size}), got {self.pad_id}")


class BengioMLP(nn.Module):
    model_type = "mlp"

    def __init__(self, cfg: BengioMLPConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # the table C
        layers: list[nn.Module] = []
        fan_in = cfg.context * cfg.n_embd
        for _ in range(cfg.n_layer):
            layers.append(nn.Linear(fan_in, cfg.n_hidden, bias=not cfg.batchnorm))  # BN's shift replaces a bias
            if cfg.batchnorm:
                layers.append(nn.BatchNorm1d(cfg.n_hidden, momentum=cfg.bn_momentum))
            layers.append(nn.Tanh())
            fan_in = cfg.n_hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, cfg.vocab_size)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.wte.weight)
        linears = [m for m in self.hidden if isinstance(m, nn.Linear)]
        for layer in [*linears, self.head]:
            if self.config.init == "naive":
                nn.init.normal_(layer.weight)
                if layer.bias is not None:
                    nn.init.normal_(layer.bias)
                continue
            scale = OUT_SCALE if layer is self.head else TANH_GAIN
            nn.init.normal_(layer.weight, std=scale / math.sqrt(layer.in_features))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def contexts(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> (B, T, n): row t holds the n tokens ending at t, padded on the left with pad_id."""
        n = self.config.context
        padded = F.pad(idx, (n - 1, 0), value=self.config.pad_id)  # (B, T + n - 1)
        return padded.unfold(1, n, 1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); loss against targets (B, T) if given (-100 targets are skipped)."""
        B, T = idx.shape
        x = self.wte(self.contexts(idx)).reshape(B * T, -1)  # (B*T, n*E): the concatenated embeddings
        logits = self.head(self.hidden(x)).view(B, T, -1)     # (B, T, V)
        return logits, None if targets is None else lm_loss(logits, targets)
