"""`pygpt eval`: the full-val score of ../shared/EVAL.md for a checkpoint (default: the bundled model) on the
validation split (last 10%) of a text (default: the text the checkpoint was trained on, where its config records
one that is still there, else Tiny Shakespeare); for a word list (one word per line, as `pygpt train` takes it),
the dev and test loss of makemore's 80/10/10 split, the split the model was trained on."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled lite model)")
    parser.add_argument("--data", default="",
                        help="text file (default: the checkpoint's training text where it recorded one that is "
                             "still there, else Tiny Shakespeare)")
    parser.add_argument("--dataset", default="auto", choices=("auto", "text", "words"),
                        help="how to read --data: one text stream, or a word list (auto: by its lines)")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pygpt.data import load_corpus
    from pygpt.data.words import dev_test_line, evaluate_words, load_words, looks_like_words
    from pygpt.train import amp_autocast, full_val, load_checkpoint, resolve_device

    try:
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint, device=device)
        amp = ckpt.config.get("train", {}).get("amp", True)  # score as training did (bf16 autocast on CUDA)
        data = args.data
        trained_on = ckpt.config.get("train", {}).get("data") or ""
        if not data and trained_on:
            # Score the text the model was trained on (its val split), not Tiny Shakespeare, where it is still
            # there (a relative path: from here, as training was usually run from the same directory).
            if Path(trained_on).is_file():
                data = trained_on
                print(f"scoring {data} (the checkpoint's training text; --data FILE scores another)")
            else:
                print(f"note: the checkpoint was trained on {trained_on}, not found here: scoring the default text "
                      "(--data FILE picks one)", file=sys.stderr)
        words = args.dataset == "words" or (args.dataset == "auto" and data and looks_like_words(data))
        if words:
            if not data:
                raise ValueError("--dataset words needs a word list: --data FILE (one word per line)")
            # The same seeded shuffle and split as training, scored with the checkpoint's own vocabulary.
            split = load_words(data)
            with amp_autocast(device, amp):
                dev, test = (evaluate_words(ckpt.model, part, ckpt.tokenizer) for part in (split.dev, split.test))
            print(dev_test_line(dev, test))
        else:
            corpus = load_corpus(data, tokenizer=ckpt.tokenizer)
            with amp_autocast(device, amp):
                print(full_val(ckpt.model, corpus.val_ids, ckpt.model.config.block_size, device=device))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt eval: {err}") from None
    return 0
