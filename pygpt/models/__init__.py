"""Language models sharing one contract: forward(idx (B, T), targets=None) -> (logits (B, T, V), loss or None)."""

from .gpt import GPT, GPTConfig, lm_loss
from .bigram import Bigram, BigramConfig, BigramMLPConfig, CountBigram, CountBigramConfig, EmbBigramMLP, OneHotBigramMLP
from .mlp import BengioMLP, BengioMLPConfig

MODEL_TYPES = {
    "gpt": (GPT, GPTConfig),
    "bigram-count": (CountBigram, CountBigramConfig),
    "bigram": (Bigram, BigramConfig),
    "bigram-onehot": (OneHotBigramMLP, BigramMLPConfig),
    "bigram-emb": (EmbBigramMLP, BigramMLPConfig),
    "mlp": (BengioMLP, BengioMLPConfig),
}

__all__ = ["GPT", "GPTConfig", "lm_loss", "MODEL_TYPES"]
