"""`pygpt sort`: minGPT's sorting demo. Trains a small GPT (with the Trainer) to read 6 digits from {0, 1, 2} and
emit them sorted, then decodes every held-out sequence greedily and counts how many come out sorted."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--max-iters", type=int, default=2000, help="training steps (default: 2000)")
    parser.add_argument("--length", type=int, default=6, help="digits per sequence (default: 6)")
    parser.add_argument("--digits", type=int, default=3, help="distinct digits (default: 3)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--samples", type=int, default=5000,
                        help="also score this many random held-out draws, as minGPT reports (default: 5000)")
    parser.add_argument("--out", default="out/sort", help="checkpoint directory (default: out/sort)")
    parser.add_argument("--log-dir", default="", help="tensorboard log directory (default: none)")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from pygpt.tasks.sorting import sort_accuracy, train_sorter

    if args.max_iters < 1:
        raise SystemExit(f"pygpt sort: --max-iters must be >= 1, got {args.max_iters}")
    start = time.perf_counter()
    try:
        trained = train_sorter(args.out, args.max_iters, args.length, args.digits, seed=args.seed, log_dir=args.log_dir)
    except ValueError as err:
        raise SystemExit(f"pygpt sort: {err}") from None
    seconds = time.perf_counter() - start
    held, n_held = sort_accuracy(trained.model, trained.held_out)
    train, n_train = sort_accuracy(trained.model, trained.train)
    draws = trained.held_out[torch.randint(n_held, (args.samples,), generator=torch.Generator().manual_seed(0))]
    drawn, n_drawn = sort_accuracy(trained.model, draws)
    print(f"trained {trained.result.steps} steps in {seconds:.0f} s; held-out loss {trained.result.full_val.loss:.4f}")
    print(f"held-out: {held}/{n_held} distinct sequences sorted; {drawn}/{n_drawn} random held-out draws "
          f"(minGPT's figure: 5000/5000); train: {train}/{n_train}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pygpt.commands.sort")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
