"""`pygpt prepare`: get the training text. Downloads Tiny Shakespeare (verifying its sha256) into --dir, or
copies a local --input file there; prints the vocabulary and the train/val split."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--input", help="use this local text file instead of downloading")
    parser.add_argument("--dir", default="data", help="where to put the text (default: ./data)")


def run(args: argparse.Namespace) -> int:
    from pygpt.data import download_tiny_shakespeare, load_corpus

    dest_dir = Path(args.dir)
    if args.input:
        src = Path(args.input)
        if not src.is_file():
            raise SystemExit(f"pygpt prepare: --input {src} does not exist")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / src.name
        if src.resolve() != dest.resolve():
            shutil.copyfile(src, dest)
    else:
        try:
            dest = download_tiny_shakespeare(dest_dir)
        except (ConnectionError, ValueError) as err:
            raise SystemExit(f"pygpt prepare: {err}") from None
    try:
        corpus = load_corpus(str(dest))
    except ValueError as err:
        raise SystemExit(f"pygpt prepare: {err}") from None
    vocab = "".join(corpus.tokenizer.chars)
    print(f"{dest}: {len(corpus.text):,} characters, vocabulary of {corpus.tokenizer.vocab_size}: {vocab!r}")
    print(f"train {len(corpus.train_ids):,} / val {len(corpus.val_ids):,} characters")
    print(f"train with: pygpt train --config lite --data {dest}")
    return 0
