"""`pygpt eval`: the full-val score of ../shared/EVAL.md for a checkpoint (default: the bundled model) on the
validation split (last 10%) of a text (default: Tiny Shakespeare)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled lite model)")
    parser.add_argument("--data", default="", help="text file (default: Tiny Shakespeare)")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from pygpt.data import load_corpus
    from pygpt.train import full_val, load_checkpoint, resolve_device

    device = resolve_device(args.device)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=device)
        corpus = load_corpus(args.data, tokenizer=ckpt.tokenizer)
        with _autocast(device):
            print(full_val(ckpt.model, corpus.val_ids, ckpt.model.config.block_size, device=device))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt eval: {err}") from None
    return 0


def _autocast(device):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
