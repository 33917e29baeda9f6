"""Choosing the number of mixture components with an information criterion."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, NamedTuple

from ._validation import ConvergenceWarning, check_choice
from .mixture import GaussianMixture

__all__ = ["Selection", "select_n_components"]


class Selection(NamedTuple):
    """Result of `select_n_components`.

    best_k : the K with the lowest criterion.
    table : one dict per K, in k_range order, with keys
        k, bic, aic, log_likelihood (mean per sample), n_iter, converged.
    best_model : the fitted GaussianMixture for best_k.
    """

    best_k: int
    table: list[dict[str, Any]]
    best_model: GaussianMixture


def select_n_components(
    X: Any,
    k_range: Iterable[int],
    criterion: str = "bic",
    *,
    covariance_type: str = "full",
    **gmm_kwargs: Any,
) -> Selection:
    """Fit one GaussianMixture per K in ``k_range`` on X (N, D); pick the K minimising BIC or AIC.

    Extra keyword arguments go to every ``GaussianMixture`` (e.g. ``n_init``, ``random_state``,
    ``device``). Ks larger than the number of samples are rejected with ValueError.
    Returns a `Selection` (best_k, table, best_model); ties go to the smaller K.
    """
    check_choice("criterion", criterion, ("bic", "aic"))
    ks = [int(k) for k in k_range]
    if not ks:
        raise ValueError("k_range must contain at least one number of components; got an empty range")
    if any(k < 1 for k in ks):
        raise ValueError(f"k_range must contain integers >= 1; got {ks}")
    table: list[dict[str, Any]] = []
    models: dict[int, GaussianMixture] = {}
    for k in ks:
        gmm = GaussianMixture(k, covariance_type=covariance_type, **gmm_kwargs)
        with warnings.catch_warnings():
            # Non-convergence is recorded in the table instead of warned once per K.
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(X)
        # One pass over X for all three numbers (bic/aic would each re-score X).
        ll, n = gmm.score(X), X.shape[0] if hasattr(X, "shape") else len(X)
        p = gmm._n_parameters()
        table.append(
            {
                "k": k,
                "bic": -2.0 * ll * n + p * math.log(n),
                "aic": -2.0 * ll * n + 2.0 * p,
                "log_likelihood": ll,
                "n_iter": gmm.n_iter_,
                "converged": gmm.converged_,
            }
        )
        models[k] = gmm
    best = min(table, key=lambda row: (row[criterion], row["k"]))
    return Selection(best["k"], table, models[best["k"]])
