"""Inference: token generation (streaming)."""

from .generate import generate, generate_text

__all__ = ["generate", "generate_text"]
