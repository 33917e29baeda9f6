"""minGPT's sorting task: read ``length`` digits from {0, .., digits - 1}, then emit them sorted.

A sequence and its sorted copy are one example: x = (seq + sorted)[:-1], y = (seq + sorted)[1:], with the
targets of the input half set to -100 so that the loss only counts the sorted half (predicting the input
digits is impossible). All digits**length sequences are split once, with a seed, into train and held-out
(25%), so held-out sequences are never seen in training. At test time the model reads a held-out sequence and
decodes ``length`` tokens greedily (pygpt's generation engine at temperature 0); it is right when they are the
sorted sequence.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pygpt.data import CharTokenizer
from pygpt.infer import Engine
from pygpt.models import GPT, GPTConfig
from pygpt.train import EvalResult, TrainConfig, Trainer, TrainResult

LENGTH, DIGITS = 6, 3
IGNORE_INDEX = -100


def all_sequences(length: int = LENGTH, digits: int = DIGITS) -> torch.Tensor:
    """Every sequence of ``length`` digits, (digits**length, length), in lexicographic order."""
    if length < 1 or not 2 <= digits <= 10:
        raise ValueError(f"need length >= 1 and 2 <= digits <= 10, got length={length}, digits={digits}")
    return torch.tensor(list(itertools.product(range(digits), repeat=length)), dtype=torch.long)


def split_sequences(length: int = LENGTH, digits: int = DIGITS, held_out: float = 0.25,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) sequences: a seeded permutation of all of them, the last ``held_out`` fraction apart."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    seqs = all_sequences(length, digits)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(held_out * len(seqs)))
    return seqs[order[n_test:]], seqs[order[:n_test]]


def make_examples(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """seqs (N, L) -> x, y (N, 2L - 1): input then sorted output, y shifted by one, input half not scored."""
    L = seqs.shape[1]
    full = torch.cat([seqs, seqs.sort(dim=1).values], dim=1)  # (N, 2L)
    x, y = full[:, :-1].clone(), full[:, 1:].clone()
    y[:, : L - 1] = IGNORE_INDEX
    return x, y


class SortSampler:
    """Random batches of examples from a fixed set of sequences (seeded, resumable like BatchSampler)."""

    def __init__(self, seqs: torch.Tensor, batch_size: int, seed: int = 1337, device: torch.device | str = "cpu"):
        if len(seqs) == 0:
            raise ValueError("SortSampler: no sequences")
        self.x, self.y = make_examples(seqs)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        return self.x[rows].to(self.device), self.y[rows].to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def sort_tokenizer(digits: int = DIGITS) -> CharTokenizer:
    return CharTokenizer([str(d) for d in range(digits)])


def sort_model_config(length: int = LENGTH, digits: int = DIGITS, **overrides) -> GPTConfig:
    """minGPT's 'gpt-nano' (3 layers, 3 heads, 48 dims, dropout 0.1) over a vocabulary of ``digits``, block 2L - 1.

    Learned absolute positions, as minGPT: nothing marks where the input ends but the position, and with RoPE
    alone (relative positions) the same recipe sorted 177-181 of the 182 held-out sequences, not all of them.
    """
    settings = dict(vocab_size=digits, block_size=2 * length - 1, n_layer=3, n_head=3, n_embd=48, dropout=0.1,
                    pos="learned")
    settings.update(overrides)
    return GPTConfig(**settings)


def greedy_sort(model: nn.Module, seqs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(N, L) sequences -> the model's (N, L) greedy continuations, decoded by the Engine (eval mode)."""
    was_training = model.training
    engine = Engine(model)  # (puts the model in eval mode)
    outputs = []
    try:
        for start in range(0, len(seqs), batch_size):
            prompts = seqs[start:start + batch_size].tolist()
            steps = list(engine.generate_ids(prompts, seqs.shape[1], temperature=0.0))
            outputs.append(torch.stack(steps, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def sort_accuracy(model: nn.Module, seqs: torch.Tensor) -> tuple[int, int]:
    """(how many of seqs the model sorts exactly by greedy decoding, how many there are)."""
    predicted = greedy_sort(model, seqs)
    return int((predicted == seqs.sort(dim=1).values).all(dim=1).sum()), len(seqs)


@torch.no_grad()
def output_loss(model: nn.Module, seqs: torch.Tensor) -> EvalResult:
    """Mean cross-entropy over the sorted half of every sequence in ``seqs`` (eval mode)."""
    device = next(model.parameters()).device
    x, y = make_examples(seqs)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(x.to(device))
    finally:
        model.train(was_training)
    logits, y = logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1)
    scored = y != IGNORE_INDEX
    top = logits[scored].topk(min(5, logits.size(-1)), dim=-1).indices
    return EvalResult(F.cross_entropy(logits, y).item(), (top == y[scored, None]).any(-1).float().mean().item(),
                      int(scored.sum()))


@dataclass
class SortRun:
    model: GPT
    result: TrainResult
    train: torch.Tensor      # the training sequences
    held_out: torch.Tensor   # never seen in training


def train_sorter(out_dir: str | Path, max_iters: int = 2000, length: int = LENGTH, digits: int = DIGITS,
                 seed: int = 1337, split_seed: int = 0, model: dict | None = None, **train) -> SortRun:
    """Train a GPT on the train sequences with the Trainer (val estimates on train sequences too: held-out
    ones are only for the final test). ``model`` overrides sort_model_config, ``train`` TrainConfig.

    minGPT's settings: AdamW at a constant 5e-4, betas (0.9, 0.95), weight decay 0.1, batch 64, 2000 steps.
    """
    train_seqs, held_out = split_sequences(length, digits, seed=split_seed)
    settings = dict(out_dir=str(out_dir), log_dir="", batch_size=64, max_iters=max_iters, lr=5e-4, min_lr=5e-4,
                    warmup_iters=0, beta2=0.95, eval_interval=max(1, max_iters // 4), eval_iters=4,
                    weight_decay=0.1, threads=1, seed=seed, progress=False)
    settings.update(train)
    cfg = TrainConfig(**settings)
    torch.manual_seed(seed)
    gpt = GPT(sort_model_config(length, digits, **(model or {})))
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    empty = torch.empty(0, dtype=torch.long)  # no id stream: the samplers below stand in for it
    trainer = Trainer(gpt, empty, empty, sort_tokenizer(digits), cfg,
                      train_sampler=SortSampler(train_seqs, cfg.batch_size, seed, device),
                      val_sampler=SortSampler(train_seqs, cfg.batch_size, 0, device),
                      evaluator=lambda m: output_loss(m, held_out))
    result = trainer.fit()
    return SortRun(trainer.model, result, train_seqs, held_out)
