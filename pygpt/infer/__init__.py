"""Inference: the KV cache and the generation engine (prefill, decode loop, CUDA graphs, streaming)."""

from .cache import KVCache
from .engine import Engine

__all__ = ["KVCache", "Engine"]
