"""`pygpt gmm`: fit a Gaussian mixture with EM (synthetic data or --input data.csv), print the fit and the
chosen K with --k auto, and plot it (see pygpt.gmm.cli for every option)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pygpt.gmm import cli

    cli.add_arguments(parser)
    parser.description = __doc__


def run(args: argparse.Namespace) -> int:
    from pygpt.gmm import cli

    return cli.run(args)
