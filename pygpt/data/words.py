"""Line-per-word datasets (names.txt and the like), built the way makemore builds them.

- Every word is its own sequence '.' + word + '.': the start/end token '.' is token id 0, the letters follow in
  sorted order (27 tokens for names.txt).
- The words are shuffled with ``random.Random(seed)`` (seed 42) and split 80/10/10 into train/dev/test: the
  same split as makemore's, so losses can be compared with its numbers.
- An example is (the ``n`` tokens before a position, the token at it), the context padded with '.' at the start
  of the word. A model with the GPT contract reads a whole word (B, L + 1) and predicts every position of it,
  which gives exactly these examples (the Bengio MLP pads its context with '.' = id 0).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pygpt.train.evaluate import EvalResult

from .text import read_text
from .tokenizer import CharTokenizer

START = "."  # the start and end token, id 0
IGNORE_INDEX = -100


def read_words(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of ``path``, stripped."""
    words = [line.strip() for line in read_text(path).splitlines()]
    words = [w for w in words if w]
    if not words:
        raise ValueError(f"word list {path} has no words")
    return words


def looks_like_words(path: str | os.PathLike) -> bool:
    """True for a word list: at least 2 lines, each one token without whitespace or '.'."""
    lines = [line.strip() for line in read_text(path).splitlines()]
    lines = [line for line in lines if line]
    return len(lines) >= 2 and not any(START in w or any(c.isspace() for c in w) for w in lines)


@dataclass
class WordDataset:
    tokenizer: CharTokenizer
    train: list[str]
    dev: list[str]
    test: list[str]
    source: str

    def split(self, name: str) -> list[str]:
        if name not in ("train", "dev", "test"):
            raise ValueError(f"split must be 'train', 'dev' or 'test', got {name!r}")
        return getattr(self, name)


def load_words(path: str | os.PathLike, seed: int = 42, train_fraction: float = 0.8,
               dev_fraction: float = 0.1) -> WordDataset:
    """Read a word list and split it as makemore does: shuffle with ``seed``, then 80% / 10% / 10%."""
    words = read_words(path)
    bad = next((w for w in words if START in w or any(c.isspace() for c in w)), None)
    if bad is not None:
        raise ValueError(f"word list {path}: {bad!r} contains whitespace or the start token {START!r}")
    if not (0 < train_fraction and 0 <= dev_fraction and train_fraction + dev_fraction <= 1):
        raise ValueError(f"train_fraction ({train_fraction}) and dev_fraction ({dev_fraction}) must be >= 0 "
                         "and sum to at most 1")
    tokenizer = CharTokenizer([START] + sorted(set("".join(words))))
    words = list(words)
    random.Random(seed).shuffle(words)
    n1 = int(train_fraction * len(words))
    n2 = int((train_fraction + dev_fraction) * len(words))
    for name, size in (("train", n1), ("dev", n2 - n1), ("test", len(words) - n2)):
        if size == 0:
            raise ValueError(f"word list {path}: {len(words)} words leave the {name} split empty "
                             f"({train_fraction:g} / {dev_fraction:g} / rest); use a longer list")
    return WordDataset(tokenizer, words[:n1], words[n1:n2], words[n2:], str(Path(path)))


def encode_words(words: list[str], tokenizer: CharTokenizer) -> list[torch.Tensor]:
    """Each word as ids of '.' + word + '.' (length L + 2)."""
    return [torch.tensor(tokenizer.encode(START + w + START), dtype=torch.long) for w in words]


def word_stream(words: list[str], tokenizer: CharTokenizer) -> torch.Tensor:
    """'.emma.olivia.' as one id stream: every bigram of every word exactly once (neighbours share a '.')."""
    return torch.tensor(tokenizer.encode(START + START.join(words) + START), dtype=torch.long)


def context_examples(words: list[str], tokenizer: CharTokenizer, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """makemore's examples: X (N, context) the previous tokens ('.'-padded), Y (N,) the next token."""
    xs, ys = [], []
    for word in words:
        window = [0] * context
        for token in tokenizer.encode(word + START):
            xs.append(window)
            ys.append(token)
            window = window[1:] + [token]
    return torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long)


class WordSampler:
    """Batches of whole words that all have the same length, so every position is a real example (no padding,
    nothing for BatchNorm to average over that isn't data).

    ``get_batch()`` picks a length with probability proportional to its number of examples, then about
    ``batch_size / (L + 1)`` words of that length: x, y of shape (b, L + 1), y = x shifted by one. Seeded and
    resumable like BatchSampler.
    """

    def __init__(self, words: list[str], tokenizer: CharTokenizer, batch_size: int, seed: int = 1337,
                 device: torch.device | str = "cpu"):
        if not words:
            raise ValueError("WordSampler: words is empty")
        if batch_size < 1:
            raise ValueError(f"WordSampler: batch_size must be >= 1, got {batch_size}")
        by_length: dict[int, list[torch.Tensor]] = {}
        for seq in encode_words(words, tokenizer):
            by_length.setdefault(len(seq), []).append(seq)
        self.buckets = [torch.stack(by_length[n]) for n in sorted(by_length)]  # each (words, L + 2)
        self.weights = torch.tensor([b.shape[0] * (b.shape[1] - 1) for b in self.buckets], dtype=torch.float)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bucket = self.buckets[int(torch.multinomial(self.weights, 1, generator=self.generator))]
        n_words = max(1, round(self.batch_size / (bucket.shape[1] - 1)))
        rows = bucket[torch.randint(bucket.shape[0], (n_words,), generator=self.generator)]
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def padded_words(words: list[str], tokenizer: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """All words in one batch: x (N, Lmax + 1) padded with '.', y padded with -100 (not scored)."""
    seqs = encode_words(words, tokenizer)
    width = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    y = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for i, seq in enumerate(seqs):
        x[i, : len(seq) - 1] = seq[:-1]
        y[i, : len(seq) - 1] = seq[1:]
    return x, y


@torch.no_grad()
def evaluate_words(model: nn.Module, words: list[str], tokenizer: CharTokenizer, batch_size: int = 1024,
                   device: torch.device | str | None = None) -> EvalResult:
    """Mean cross-entropy (nats/token) and top-5 accuracy over every example of every word, in eval mode:
    makemore's split loss. Padding is never scored (and in eval mode BatchNorm uses running statistics, so the
    padded rows don't touch the real ones)."""
    if not words:
        raise ValueError("evaluate_words: words is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    words = sorted(words, key=len)  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    total_loss, total_top5, total = 0.0, 0, 0
    try:
        for start in range(0, len(words), batch_size):
            x, y = padded_words(words[start:start + batch_size], tokenizer)
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            logits = logits.float().reshape(-1, logits.size(-1))
            y = y.reshape(-1)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            scored = y != IGNORE_INDEX
            top5 = logits[scored].topk(min(5, logits.size(-1)), dim=-1).indices
            total_top5 += (top5 == y[scored, None]).any(-1).sum().item()
            total += int(scored.sum())
    finally:
        model.train(was_training)
    return EvalResult(total_loss / total, total_top5 / total, total)


def dev_test_line(dev: EvalResult, test: EvalResult) -> str:
    """The one-line report of a word-list model: its dev and test scores."""
    return (f"dev loss {dev.loss:.4f} top5 {100 * dev.top5:.2f}% ({dev.n_targets:,} examples); "
            f"test loss {test.loss:.4f} top5 {100 * test.top5:.2f}% ({test.n_targets:,} examples)")
