"""`pygpt viz SUBCOMMAND`: figures. `diagnostics` trains a model for a few steps and plots its activations,
gradients and update:data ratios; `loss` plots train/val curves from the Trainer's tensorboard logs."""

from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments(parser) and run(args), one-line help). A new figure is a module under
# pygpt/viz/ and one line here. The module is imported only when its subcommand runs (`pygpt --help` stays fast).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "diagnostics": ("pygpt.viz.diagnostics", "activation/gradient statistics and update ratios of a short run"),
    "loss": ("pygpt.viz.loss", "train/val loss curves from tensorboard logs (tags loss/train, loss/val)"),
    "pe": ("pygpt.viz.pe", "positional encodings: sinusoidal, RoPE angles and scores, learned embeddings"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = "subcommands:\n" + "\n".join(f"  {name:<12} {help_text}" for name, (_, help_text)
                                                 in SUBCOMMANDS.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("subcommand", choices=sorted(SUBCOMMANDS), metavar="SUBCOMMAND",
                        help=f"one of: {', '.join(SUBCOMMANDS)} (`pygpt viz SUBCOMMAND --help` for its options)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    module_name, help_text = SUBCOMMANDS[args.subcommand]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"pygpt viz {args.subcommand}", description=help_text)
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.args))
