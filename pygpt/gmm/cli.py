"""Command-line front end for Gaussian-mixture fits (the ``pygpt gmm`` sub-command).

Embedding: ``add_arguments(subparser)`` then ``run(args)``. Standalone:

    python -m pygpt.gmm.cli --dim 2 --k 4 --cov full --n 2000 --seed 0 --plot out.png
    python -m pygpt.gmm.cli --dim 3 --k auto --k-max 8 --n 3000 --noise 0.1
    python -m pygpt.gmm.cli --input data.csv --k 3 --cov diag

Heavy imports (torch, matplotlib) happen in ``run`` so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

__all__ = ["add_arguments", "run", "main"]

_COV_TYPES = ("full", "tied", "diag", "spherical")
_INITS = ("kmeans", "k-means++", "random", "random_from_data")


def _k_value(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be a positive integer or 'auto'; got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"--k must be a positive integer or 'auto'; got {text!r}")
    return k


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the gmm options on ``parser``."""
    data = parser.add_argument_group("data (synthetic unless --input is given)")
    data.add_argument("--input", metavar="CSV", help="fit the rows of a numeric CSV file (a header line is skipped)")
    data.add_argument("--dim", type=int, choices=(2, 3), default=2, help="dimension of synthetic data (default 2)")
    data.add_argument("--n", type=int, default=2000, help="number of synthetic points (default 2000)")
    data.add_argument("--true-k", type=int, default=None,
                      help="components of synthetic data (default: --k, or 4 with --k auto)")
    data.add_argument("--noise", type=float, default=0.0, help="std of isotropic noise added to synthetic points")
    data.add_argument("--seed", type=int, default=0, help="seed for the data and the fit (default 0)")
    model = parser.add_argument_group("model")
    model.add_argument("--k", type=_k_value, default=4, help="number of components, or 'auto' to choose by --criterion")
    model.add_argument("--k-max", type=int, default=10, help="largest K tried with --k auto (default 10)")
    model.add_argument("--criterion", choices=("bic", "aic"), default="bic",
                       help="criterion for --k auto (default bic)")
    model.add_argument("--cov", choices=_COV_TYPES, default="full", help="covariance type (default full)")
    model.add_argument("--init", choices=_INITS, default="kmeans", help="initialisation (default kmeans)")
    model.add_argument("--n-init", type=int, default=1, help="number of initialisations (default 1)")
    model.add_argument("--max-iter", type=int, default=100, help="EM iterations per initialisation (default 100)")
    model.add_argument("--tol", type=float, default=1e-3, help="tolerance on the mean log-likelihood change")
    model.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="compute device (default cpu)")
    out = parser.add_argument_group("output")
    out.add_argument("--plot", metavar="PNG", help="write points and fitted ellipses (2D) / ellipsoids (3D)")
    out.add_argument("--plot-history", metavar="PNG", help="write the log-likelihood per EM iteration")
    out.add_argument("--plot-criteria", metavar="PNG", help="with --k auto: write BIC/AIC against K")


def _load_csv(path: str) -> Any:
    import numpy as np

    try:
        return np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError:
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)


def _fmt(a: Any) -> str:
    import numpy as np

    return np.array2string(np.asarray(a), precision=4, suppress_small=True, max_line_width=100)


def run(args: argparse.Namespace) -> int:
    """Generate or load data, fit, print the fit, write the requested plots. Returns an exit code."""
    from .mixture import GaussianMixture
    from .selection import select_n_components
    from .synthetic import make_mixture

    try:
        truth = None
        if args.input:
            X = _load_csv(args.input)
            print(f"data: {args.input}  N={X.shape[0]}  D={X.shape[1]}")
        else:
            true_k = args.true_k or (args.k if isinstance(args.k, int) else 4)
            X, _, truth = make_mixture(
                args.n, args.dim, true_k, covariance_type=args.cov, noise=args.noise, seed=args.seed
            )
            print(f"data: synthetic  N={args.n}  D={args.dim}  true K={true_k}  noise={args.noise:g}  seed={args.seed}")

        fit_kwargs = dict(
            init_params=args.init,
            n_init=args.n_init,
            max_iter=args.max_iter,
            tol=args.tol,
            random_state=args.seed,
            device=args.device,
        )
        selection = None
        if args.k == "auto":
            k_max = min(args.k_max, X.shape[0])
            selection = select_n_components(X, range(1, k_max + 1), args.criterion, covariance_type=args.cov,
                                            **fit_kwargs)
            print(f"model selection by {args.criterion.upper()} over K=1..{k_max}:")
            print("    K           BIC           AIC   mean log-lik  iters  converged")
            for row in selection.table:
                mark = "  <-" if row["k"] == selection.best_k else ""
                print(
                    f"  {row['k']:3d}  {row['bic']:12.3f}  {row['aic']:12.3f}  {row['log_likelihood']:13.6f}"
                    f"  {row['n_iter']:5d}  {str(row['converged']):>9}{mark}"
                )
            print(f"chosen K: {selection.best_k}")
            gmm = selection.best_model
        else:
            gmm = GaussianMixture(args.k, covariance_type=args.cov, **fit_kwargs).fit(X)

        print(f"fit: K={gmm.n_components}  covariance={gmm.covariance_type}  device={args.device}")
        print(f"weights:\n{_fmt(gmm.weights_)}")
        print(f"means:\n{_fmt(gmm.means_)}")
        print(f"mean log-likelihood: {gmm.score(X):.6f}  (lower bound {gmm.lower_bound_:.6f})")
        print(f"iterations: {gmm.n_iter_}  converged: {gmm.converged_}")
        print(f"BIC: {gmm.bic(X):.3f}  AIC: {gmm.aic(X):.3f}")

        if args.plot or args.plot_history or args.plot_criteria:
            from . import plots

            if args.plot:
                if X.shape[1] not in (2, 3):
                    print(f"error: --plot needs 2 or 3 features; the data has {X.shape[1]}", file=sys.stderr)
                    return 2
                print(f"plot: {plots.plot_fit(gmm, X, args.plot, truth=truth)}")
            if args.plot_history:
                print(f"plot: {plots.plot_history(gmm.history_, args.plot_history)}")
            if args.plot_criteria:
                if selection is None:
                    print("error: --plot-criteria needs --k auto", file=sys.stderr)
                    return 2
                print(f"plot: {plots.plot_criteria(selection.table, args.plot_criteria)}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pygpt.gmm.cli",
        description="Fit a Gaussian mixture with EM (torch, CPU or GPU) to synthetic or CSV data.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
