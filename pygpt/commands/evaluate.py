"""`pygpt eval`: the full-val score of ../shared/EVAL.md for a checkpoint (default: the bundled model) on the
validation split (last 10%) of a text (default: Tiny Shakespeare); for a word list (one word per line, as
`pygpt train` takes it), the dev and test loss of makemore's 80/10/10 split, the split the model was trained on."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled lite model)")
    parser.add_argument("--data", default="", help="text file (default: Tiny Shakespeare)")
    parser.add_argument("--dataset", default="auto", choices=("auto", "text", "words"),
                        help="how to read --data: one text stream, or a word list (auto: by its lines)")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from pygpt.data import load_corpus
    from pygpt.data.words import dev_test_line, evaluate_words, load_words, looks_like_words
    from pygpt.train import amp_autocast, full_val, load_checkpoint, resolve_device

    device = resolve_device(args.device)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=device)
        amp = ckpt.config.get("train", {}).get("amp", True)  # score as training did (bf16 autocast on CUDA)
        words = args.dataset == "words" or (args.dataset == "auto" and args.data and looks_like_words(args.data))
        if words:
            if not args.data:
                raise ValueError("--dataset words needs a word list: --data FILE (one word per line)")
            # The same seeded shuffle and split as training, scored with the checkpoint's own vocabulary.
            split = load_words(args.data)
            with amp_autocast(device, amp):
                dev, test = (evaluate_words(ckpt.model, part, ckpt.tokenizer) for part in (split.dev, split.test))
            print(dev_test_line(dev, test))
        else:
            corpus = load_corpus(args.data, tokenizer=ckpt.tokenizer)
            with amp_autocast(device, amp):
                print(full_val(ckpt.model, corpus.val_ids, ckpt.model.config.block_size, device=device))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt eval: {err}") from None
    return 0
