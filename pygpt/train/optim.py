"""Optimizer groups and the learning-rate schedule (kept outside the model, so every model shares them)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                        device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (>= 2-D) only; biases and norm gains are not decayed."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)


def cosine_lr(step: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup to ``lr`` over warmup_iters, then cosine decay to ``min_lr`` at decay_iters, then flat."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
