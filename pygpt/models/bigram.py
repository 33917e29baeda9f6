"""Bigram language models: the next token depends on the current one only.

Four of them, from counting to learning, all with the GPT's contract forward(idx (B, T), targets=None) ->
(logits (B, T, V), loss or None), so the same Trainer, full_val and generator serve them:

- CountBigram ('bigram-count'): P(b | a) = (N[a, b] + k) / (N[a, :] + k V) from counts N of the training data
  (add-k smoothing). Training is counting (``count``); it has no trainable parameter.
- Bigram ('bigram'): a learned V x V table of logits.
- OneHotBigramMLP ('bigram-onehot'): one_hot(a) -> Linear(V, H) -> LeakyReLU -> Linear(H, V).
- EmbBigramMLP ('bigram-emb'): Embedding(V, E) -> Linear(E, H) -> LeakyReLU -> Linear(H, V).

``config.block_size`` is the window the Trainer samples and full_val scores, and what the generator feeds:
1 by default; a wider window gives more targets per batch and changes nothing else (each position still only
sees its own token).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import lm_loss

IGNORE_INDEX = -100  # targets with this value are not scored (F.cross_entropy's default)


class ClassicConfig:
    """to_dict / from_dict shared by the configs of the classic models (dataclasses)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}: {message}")


@dataclass
class CountBigramConfig(ClassicConfig):
    vocab_size: int = 65
    block_size: int = 1        # window sampled / scored / fed to the generator; only the last token matters
    smoothing: float = 1.0     # k of add-k smoothing (0: raw frequencies, unseen pairs get probability 0)

    def __post_init__(self) -> None:
        self._require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        self._require(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        self._require(self.smoothing >= 0, f"smoothing must be >= 0, got {self.smoothing}")


@dataclass
class BigramConfig(ClassicConfig):
    vocab_size: int = 65
    block_size: int = 1

    def __post_init__(self) -> None:
        self._require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        self._require(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")


@dataclass
class BigramMLPConfig(ClassicConfig):
    vocab_size: int = 65
    block_size: int = 1
    n_embd: int = 8            # embedding size (bigram-emb only; the one-hot MLP's input is vocab_size wide)
    n_hidden: int = 8          # LeakyReLU units
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        self._require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        self._require(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        self._require(self.n_embd > 0, f"n_embd must be > 0, got {self.n_embd}")
        self._require(self.n_hidden > 0, f"n_hidden must be > 0, got {self.n_hidden}")
        self._require(self.negative_slope >= 0, f"negative_slope must be >= 0, got {self.negative_slope}")


class CountBigram(nn.Module):
    """Add-k smoothed bigram counts. ``count(x, y)`` adds the pairs (x -> y); the logits are log P(y | x)."""

    model_type = "bigram-count"

    def __init__(self, cfg: CountBigramConfig):
        super().__init__()
        self.config = cfg
        # A frozen parameter rather than a buffer: it is saved with the weights, and code that asks a model
        # for its device (next(model.parameters())) works. The optimizer skips it (requires_grad=False).
        self.counts = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.vocab_size), requires_grad=False)

    @torch.no_grad()
    def count(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the pairs x[i] -> y[i] (same shapes; targets equal to -100 are skipped)."""
        if x.shape != y.shape:
            raise ValueError(f"CountBigram.count: x and y must have the same shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        V = self.config.vocab_size
        keep = y != IGNORE_INDEX
        pairs = x[keep].long() * V + y[keep].long()
        self.counts += torch.bincount(pairs.cpu(), minlength=V * V).view(V, V).to(self.counts)

    @torch.no_grad()
    def count_stream(self, ids: torch.Tensor) -> None:
        """Count every consecutive pair of a 1-D id stream."""
        self.count(ids[:-1], ids[1:])

    def log_probs(self) -> torch.Tensor:
        """(V, V): row a is log P(. | a). A row never seen with k = 0 is uniform."""
        smoothed = self.counts + self.config.smoothing
        totals = smoothed.sum(1, keepdim=True)
        uniform = torch.full_like(smoothed, -math.log(self.config.vocab_size))
        return torch.where(totals > 0, (smoothed / totals.clamp_min(1e-30)).log(), uniform)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V) = log P(next | idx[b, t]); loss against targets (B, T) if given."""
        logits = self.log_probs()[idx]  # (B, T, V)
        return logits, None if targets is None else lm_loss(logits, targets)


class Bigram(nn.Module):
    """A learned table of next-token logits, one row per token; zero at init, so the first loss is ln V."""

    model_type = "bigram"

    def __init__(self, cfg: BigramConfig):
        super().__init__()
        self.config = cfg
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.zeros_(self.table.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); loss against targets (B, T) if given."""
        logits = self.table(idx)  # (B, T, V)
        return logits, None if targets is None else lm_loss(logits, targets)


class _BigramMLP(nn.Module):
    """features(idx) (B, T, F) -> Linear(F, H) -> LeakyReLU -> Linear(H, V). Subclasses define the features."""

    def __init__(self, cfg: BigramMLPConfig, n_features: int, fan_in: int):
        super().__init__()
        self.config = cfg
        self.hidden = nn.Linear(n_features, cfg.n_hidden)
        self.act = nn.LeakyReLU(cfg.negative_slope)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        gain = nn.init.calculate_gain("leaky_relu", cfg.negative_slope)
        nn.init.normal_(self.hidden.weight, std=gain / math.sqrt(fan_in))
        nn.init.zeros_(self.hidden.bias)
        # Small output weights: logits start near zero, so the first loss is about ln V.
        nn.init.normal_(self.head.weight, std=0.1 / math.sqrt(cfg.n_hidden))
        nn.init.zeros_(self.head.bias)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); loss against targets (B, T) if given."""
        logits = self.head(self.act(self.hidden(self.features(idx))))  # (B, T, V)
        return logits, None if targets is None else lm_loss(logits, targets)


class OneHotBigramMLP(_BigramMLP):
    """The token as a one-hot vector (V,) into a LeakyReLU MLP (one_hot @ W just picks a column of W)."""

    model_type = "bigram-onehot"

    def __init__(self, cfg: BigramMLPConfig):
        super().__init__(cfg, cfg.vocab_size, fan_in=1)  # a one-hot input has a single non-zero entry

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return F.one_hot(idx, self.config.vocab_size).float()  # (B, T, V)


class EmbBigramMLP(_BigramMLP):
    """The token's learned embedding (E,) into a LeakyReLU MLP."""

    model_type = "bigram-emb"

    def __init__(self, cfg: BigramMLPConfig):
        super().__init__(cfg, cfg.n_embd, fan_in=cfg.n_embd)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # N(0, 1) rows

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx)  # (B, T, E)
