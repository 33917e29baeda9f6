"""The `pygpt` command line: one subcommand per job, each implemented in pygpt/commands/<name>.py and imported
only when it runs (so `pygpt --help` stays fast)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module under pygpt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "download Tiny Shakespeare (sha256-checked) or take a local text file"),
    "train": ("train", "train a model (presets lite/heavy, --set key=value overrides)"),
    "eval": ("evaluate", "full-val loss and top-5 accuracy of a checkpoint"),
    "generate": ("generate", "sample text from a checkpoint (default: the bundled model)"),
    "gmm": ("gmm", "fit Gaussian mixtures with EM (k-means init, 4 covariance types, BIC/AIC), plot them"),
    "bench": ("bench", "time generation (ms/token) with and without the KV cache"),
    "sort": ("sort", "minGPT's sorting task: train a GPT to sort digits, count held-out sequences sorted"),
    "info": ("info", "versions, compiled extension, GPU and the backend each op uses"),
    "tune": ("tune", "hyper-parameter search with Optuna (TPE, pruning, SQLite-resumable); writes the best config"),
    "viz": ("viz", "figures: training diagnostics (activations, gradients, update ratios) and loss curves"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pygpt", description="A small, fast, from-scratch GPT toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        importlib.import_module(f"pygpt.commands.{module}").add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"pygpt.commands.{COMMANDS[args.command][0]}")
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed stdout early (`pygpt generate | head`): stop quietly, as Unix tools do. Python would
        # flush stdout again at exit and fail once more, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, a shell's code for it


if __name__ == "__main__":
    sys.exit(main())
