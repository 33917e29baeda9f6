"""Autoregressive generation by full recompute (no KV cache yet): each step runs the model on the last
block_size tokens and samples the next one."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

import pygpt.ops as ops
from pygpt.data import CharTokenizer


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next-token batches (B,) after the prompt idx (B, T0)."""
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"generate: idx must be (B, T) with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens <= 0:
        raise ValueError(f"generate: max_new_tokens must be > 0, got {max_new_tokens}")
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        context = idx[:, -block_size:]
        logits, _ = model(context)
        next_id = ops.sample(logits[:, -1, :], temperature, top_k, top_p, generator=generator)
        idx = torch.cat([idx, next_id[:, None]], dim=1)
        yield next_id


def generate_text(model: nn.Module, tokenizer: CharTokenizer, prompt: str = "", length: int = 500,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                  device: torch.device | str = "cpu") -> Iterator[str]:
    """Stream the characters generated after ``prompt`` (a newline when the prompt is empty)."""
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    start = tokenizer.encode(prompt) if prompt else tokenizer.encode("\n") if "\n" in tokenizer.stoi else [0]
    idx = torch.tensor([start], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    for next_id in generate(model, idx, length, temperature, top_k, top_p, generator):
        yield tokenizer.decode([int(next_id[0])])
