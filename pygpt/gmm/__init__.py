"""Gaussian mixtures fitted with EM on torch (CPU or GPU), plus k-means, synthetic data,
model selection and plots.

    from pygpt.gmm import GaussianMixture, make_mixture
    X, y, truth = make_mixture(5000, dim=2, k=4, seed=0)
    gmm = GaussianMixture(4, covariance_type="full", random_state=0).fit(X)
    gmm.weights_, gmm.means_, gmm.covariances_, gmm.lower_bound_, gmm.bic(X)

Submodules: ``synthetic`` (make_mixture), ``kmeans`` (KMeans), ``mixture`` (GaussianMixture),
``selection`` (select_n_components), ``plots`` (matplotlib figures), ``cli`` (``pygpt gmm``).

Importing this package is cheap: torch, numpy and matplotlib load when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_mixture": "synthetic",
    "MixtureParams": "synthetic",
    "KMeans": "kmeans",
    "GaussianMixture": "mixture",
    "select_n_components": "selection",
    "Selection": "selection",
    "NotFittedError": "_validation",
    "ConvergenceWarning": "_validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy attribute access (PEP 562) keeps `import pygpt.gmm` free of heavy imports.
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
