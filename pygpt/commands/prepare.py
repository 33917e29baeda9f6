"""`pygpt prepare`: get the training text. Downloads Tiny Shakespeare (verifying its sha256) into --dir, or
copies a local --input file there; prints the vocabulary and the train/val split."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--input", help="use this local text file instead of downloading")
    parser.add_argument("--dir", default="data", help="where to put the text (default: ./data)")
    parser.add_argument("--force", action="store_true",
                        help="with --input: replace a different file of the same name already in --dir")


def run(args: argparse.Namespace) -> int:
    from pygpt.data import download_tiny_shakespeare, load_corpus
    from pygpt._fs import write_bytes_atomically
    from pygpt.data.text import read_text

    dest_dir = Path(args.dir)
    if args.input:
        src = Path(args.input)
        if not src.is_file():
            raise SystemExit(f"pygpt prepare: --input {src} does not exist")
        dest = dest_dir / src.name
        try:
            read_text(src)  # a file training cannot read (not UTF-8, empty) is not copied
            payload = src.read_bytes()
            if src.resolve() == dest.resolve():
                pass  # (--input is the file in --dir already)
            elif dest.is_file() and dest.read_bytes() == payload:
                print(f"{dest} is already there (the same content)")
            elif dest.exists() and not args.force:
                raise ValueError(f"{dest} already exists and differs from --input {src}: --force replaces it, "
                                 "--dir DIR puts the copy elsewhere")
            else:
                dest_dir.mkdir(parents=True, exist_ok=True)
                write_bytes_atomically(dest, payload, mode=stat.S_IMODE(src.stat().st_mode))
        except (OSError, ValueError) as err:
            raise SystemExit(f"pygpt prepare: {err}") from None
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
