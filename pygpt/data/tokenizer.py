"""Character-level tokenizer: the sorted set of characters of a text is its vocabulary."""

from __future__ import annotations

import torch


class CharTokenizer:
    """Maps each character of a fixed, sorted vocabulary to its index.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.decode(tok.encode("hell"))
    'hell'
    """

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer: the vocabulary is empty")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has repeated characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises ValueError naming the first character outside the vocabulary."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            bad = err.args[0]
            where = text.index(bad)
            raise ValueError(f"character {bad!r} (at index {where}) is not in the vocabulary of "
                             f"{self.vocab_size} characters") from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:  # (a negative id would index from the end: a wrong character, not an error)
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {self.vocab_size}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("type") != "char":
            raise ValueError(f"unknown tokenizer type {d.get('type')!r} (expected 'char')")
        return cls(list(d["chars"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars
