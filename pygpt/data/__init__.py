"""Text sources, the char tokenizer and the random-window batch sampler."""

from .batches import BatchSampler, split_train_val
from .corpus import Corpus, load_corpus
from .text import (TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_URL, download_tiny_shakespeare, find_tiny_shakespeare,
                   read_text)
from .tokenizer import CharTokenizer

__all__ = [
    "BatchSampler", "split_train_val", "Corpus", "load_corpus", "CharTokenizer", "read_text",
    "download_tiny_shakespeare", "find_tiny_shakespeare", "TINY_SHAKESPEARE_URL", "TINY_SHAKESPEARE_SHA256",
]
