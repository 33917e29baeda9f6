"""A text corpus ready for training: the text, its tokenizer, and the train/val id split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batches import split_train_val
from .text import find_tiny_shakespeare, read_text
from .tokenizer import CharTokenizer


@dataclass
class Corpus:
    text: str
    tokenizer: CharTokenizer
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    source: str


def load_corpus(path: str = "", tokenizer: CharTokenizer | None = None, train_fraction: float = 0.9) -> Corpus:
    """Read ``path`` (default: Tiny Shakespeare found locally) and split it 90/10 as EVAL.md says.

    The vocabulary is the sorted set of all characters of the whole file, unless a ``tokenizer`` is given (to
    score a checkpoint on new text; a character outside its vocabulary is then an error naming it).
    """
    if not path:
        found = find_tiny_shakespeare()
        if found is None:
            raise FileNotFoundError("no training text: run `pygpt prepare` (downloads Tiny Shakespeare into "
                                    "./data) or pass a file with --data FILE")
        path = str(found)
    text = read_text(path)
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    train_ids, val_ids = split_train_val(ids, train_fraction)
    return Corpus(text, tokenizer, train_ids, val_ids, path)
