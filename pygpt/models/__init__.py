"""Language models sharing one contract: forward(idx (B, T), targets=None) -> (logits (B, T, V), loss or None)."""

from .gpt import GPT, GPTConfig, lm_loss

MODEL_TYPES = {"gpt": (GPT, GPTConfig)}

__all__ = ["GPT", "GPTConfig", "lm_loss", "MODEL_TYPES"]
