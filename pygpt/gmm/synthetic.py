"""Synthetic Gaussian-mixture data with known parameters (for tests, demos and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import check_choice, check_float, check_int

__all__ = ["MixtureParams", "make_mixture"]

_COV_TYPES = ("full", "tied", "diag", "spherical")


@dataclass(frozen=True)
class MixtureParams:
    """True parameters of a generated mixture (numpy): weights (K,), means (K, D), covariances (K, D, D).

    ``covariances`` are those of the clean components; with ``noise = s`` the observed points
    have covariances ``covariances + s**2 * I``.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    noise: float = 0.0


def _random_covariances(rng: np.random.Generator, k: int, dim: int, scale: float, cov_type: str) -> np.ndarray:
    """(K, D, D) covariances with the structure of ``cov_type`` and standard deviations in [0.3, 1] * scale."""
    if cov_type == "spherical":
        sd = rng.uniform(0.3, 1.0, size=k) * scale
        return sd[:, None, None] ** 2 * np.eye(dim)
    if cov_type == "diag":
        sd = rng.uniform(0.3, 1.0, size=(k, dim)) * scale
        return np.stack([np.diag(s**2) for s in sd])
    n_distinct = 1 if cov_type == "tied" else k
    covs = []
    for _ in range(n_distinct):
        # Random rotation (QR of a Gaussian matrix, sign-fixed) times random axis lengths.
        q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
        q *= np.sign(np.diag(r))
        sd = rng.uniform(0.3, 1.0, size=dim) * scale
        covs.append((q * sd**2) @ q.T)
    covs = np.stack(covs)
    return np.repeat(covs, k, axis=0) if cov_type == "tied" else covs


def _spread_out_means(rng: np.random.Generator, k: int, dim: int, half: float, n_candidates: int = 30) -> np.ndarray:
    """K means in [-half, half]^D, each the farthest of n_candidates uniform draws from those
    already placed (best-candidate sampling): well separated without rejection loops."""
    means = [rng.uniform(-half, half, size=dim)]
    for _ in range(1, k):
        cand = rng.uniform(-half, half, size=(n_candidates, dim))
        dist = np.min(np.linalg.norm(cand[:, None, :] - np.asarray(means)[None], axis=-1), axis=1)
        means.append(cand[np.argmax(dist)])
    return np.asarray(means)


def make_mixture(
    n: int,
    dim: int = 2,
    k: int = 3,
    *,
    means: Any = None,
    covariances: Any = None,
    weights: Any = None,
    covariance_type: str = "full",
    spread: float | None = None,
    scale: float = 1.0,
    noise: float = 0.0,
    shuffle: bool = True,
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, MixtureParams]:
    """Draw ``n`` points in ``dim`` dimensions from a ``k``-component Gaussian mixture.

    Parameters
    ----------
    n, dim, k : number of points N, dimension D, number of components K.
    means : (K, D) or None (random in [-spread, spread]^D, spread apart by best-candidate sampling).
    covariances : (K, D, D) or None (random with the structure of ``covariance_type``, standard
        deviations between 0.3 and 1 times ``scale``).
    weights : (K,) summing to 1, or None (random, Dirichlet(4), so no component is negligible).
    covariance_type : structure of random covariances: 'full', 'tied', 'diag' or 'spherical'.
    spread : half-width of the box holding random means; default ``2.5 * scale * k ** (1 / dim)``
        keeps components mostly separated as K grows.
    noise : standard deviation of isotropic Gaussian noise added to every point.
    shuffle : shuffle the points (otherwise they are grouped by component).
    seed : int, numpy Generator or None.

    Returns
    -------
    X : (N, D) float64 points; y : (N,) int64 true component of each point;
    params : MixtureParams with the true weights, means and covariances.
    """
    n = check_int("n", n, 1)
    dim = check_int("dim", dim, 1)
    k = check_int("k", k, 1)
    check_choice("covariance_type", covariance_type, _COV_TYPES)
    scale = check_float("scale", scale)
    noise = check_float("noise", noise)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    if weights is None:
        w = rng.dirichlet(np.full(k, 4.0))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights must be {k} non-negative numbers summing to 1; got {w!r}")
    if means is None:
        half = spread if spread is not None else 2.5 * max(scale, 1e-12) * k ** (1.0 / dim)
        mu = _spread_out_means(rng, k, dim, half)
    else:
        mu = np.asarray(means, dtype=np.float64)
        if mu.shape != (k, dim):
            raise ValueError(f"means must have shape ({k}, {dim}); got {mu.shape}")
    if covariances is None:
        cov = _random_covariances(rng, k, dim, scale, covariance_type)
    else:
        cov = np.asarray(covariances, dtype=np.float64)
        if cov.shape != (k, dim, dim):
            raise ValueError(f"covariances must have shape ({k}, {dim}, {dim}); got {cov.shape}")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as exc:
        raise ValueError("covariances must be symmetric positive definite") from exc

    counts = rng.multinomial(n, w)
    y = np.repeat(np.arange(k), counts)
    X = rng.standard_normal((n, dim))
    start = 0
    for j, c in enumerate(counts):  # per component: O(N D) memory even for N = 1e7
        X[start : start + c] = X[start : start + c] @ chol[j].T + mu[j]
        start += c
    if noise > 0:
        X += noise * rng.standard_normal((n, dim))
    if shuffle:
        order = rng.permutation(n)
        X, y = X[order], y[order]
    return X, y.astype(np.int64), MixtureParams(w, mu, cov, noise)
