"""The full-validation score of ../shared/EVAL.md: every target of the val split, non-overlapping windows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class EvalResult:
    loss: float        # mean cross-entropy, nats/char
    top5: float        # fraction of targets among the 5 highest logits
    n_targets: int

    def __str__(self) -> str:
        return f"full-val loss {self.loss:.4f} top5 {100 * self.top5:.2f}%"


@torch.no_grad()
def full_val(model: nn.Module, val_ids: torch.Tensor, block_size: int, batch_size: int = 64,
             device: torch.device | str | None = None) -> EvalResult:
    """Cut val_ids into windows of block_size + 1 (dropping the ragged tail); score every target in eval mode."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_windows = len(val_ids) // (block_size + 1)
    if n_windows == 0:
        raise ValueError(f"full_val: need at least block_size + 1 = {block_size + 1} val ids, got {len(val_ids)}")
    windows = val_ids[: n_windows * (block_size + 1)].view(n_windows, block_size + 1).long()
    was_training = model.training
    model.eval()
    total_loss, total_top5, total = 0.0, 0, 0
    try:
        for start in range(0, n_windows, batch_size):
            batch = windows[start:start + batch_size].to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            logits, _ = model(x)
            logits = logits.float()
            total_loss += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            k = min(5, logits.size(-1))
            top5 = logits.topk(k, dim=-1).indices
            total_top5 += (top5 == y[..., None]).any(-1).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    return EvalResult(total_loss / total, total_top5 / total, total)
