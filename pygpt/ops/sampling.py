"""sample: logits -> next token ids with temperature, top-k, top-p (nucleus), min-p, or greedy.

The reference here is the obvious Torch code (topk/sort, softmax, cumsum, multinomial). The fused kernels
(issue #6) are not written yet, so every device runs it.
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_tensor

OP = "sample"


def check_sample_args(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> None:
    check_tensor(OP, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    if logits.shape[1] == 0:
        raise ValueError(f"pygpt.{OP}: logits has an empty vocabulary dimension, shape {tuple(logits.shape)}")
    if temperature < 0:
        raise ValueError(f"pygpt.{OP}: temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"pygpt.{OP}: top_k must be >= 0 (0: no top-k), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"pygpt.{OP}: top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p < 1.0:
        raise ValueError(f"pygpt.{OP}: min_p must be in [0, 1), got {min_p}")


def sample_reference(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,) int64. temperature 0 or top_k 1: greedy (argmax, ties to the lowest id)."""
    logits = logits.float()
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens before it already reach top_p (the first token always stays).
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (B,) from logits (B, V); arguments are checked and NaN logits rejected."""
    check_sample_args(logits, temperature, top_k, top_p, min_p)
    if torch.isnan(logits).any():
        raise ValueError(f"pygpt.{OP}: logits contain NaN")
    return sample_reference(logits, temperature, top_k, top_p, min_p, generator)
