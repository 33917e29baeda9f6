"""Figures for Gaussian-mixture fits (matplotlib, Agg, no pyplot state). Numpy in, PNG out.

Every function writes a PNG to ``path`` (creating parent folders) and returns the path.
Shapes: X (N, D), labels (N,), means (K, D), covariances (K, D, D).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "plot_mixture_2d",
    "plot_mixture_3d",
    "plot_history",
    "plot_criteria",
    "plot_fit",
    "full_covariances",
]


def _figure(figsize: tuple[float, float]):
    # Figure + Agg canvas directly: no global backend switch, no pyplot figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out


def _colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _subsample(X: np.ndarray, labels: np.ndarray | None, max_points: int, seed: int = 0):
    """Keep at most max_points points (uniformly at random) so the PNG stays small."""
    if X.shape[0] <= max_points:
        return X, labels
    idx = np.random.default_rng(seed).choice(X.shape[0], max_points, replace=False)
    return X[idx], (labels[idx] if labels is not None else None)


def full_covariances(covariances: Any, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    """Any fitted covariance layout as (K, D, D) matrices."""
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.broadcast_to(cov, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    if covariance_type == "spherical":
        return cov[:, None, None] * np.eye(n_features)
    raise ValueError(f"covariance_type must be one of 'full', 'tied', 'diag', 'spherical'; got {covariance_type!r}")


def _ellipse(ax, mean, cov, n_std: float, **kwargs) -> None:
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))  # direction of the major axis
    width, height = 2.0 * n_std * np.sqrt(vals[::-1])
    ax.add_patch(Ellipse(xy=mean, width=width, height=height, angle=angle, fill=False, **kwargs))


def plot_mixture_2d(
    X: Any,
    labels: Any,
    means: Any,
    covariances: Any,
    path: str | Path,
    *,
    true_means: Any = None,
    true_covariances: Any = None,
    title: str | None = None,
    max_points: int = 4000,
    dpi: int = 100,
) -> Path:
    """2D points coloured by component with 1-sigma and 2-sigma ellipses of the fit (solid) and,
    when given, of the truth (dashed black)."""
    X = np.asarray(X, dtype=np.float64)
    labels = None if labels is None else np.asarray(labels)
    means = np.asarray(means, dtype=np.float64)
    covs = np.asarray(covariances, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must have shape (N, 2) for a 2D plot; got {X.shape}")
    colors = _colors(means.shape[0])
    fig = _figure((6.4, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    Xs, ls = _subsample(X, labels, max_points)
    point_colors = "0.5" if ls is None else [colors[int(i) % len(colors)] for i in ls]
    ax.scatter(Xs[:, 0], Xs[:, 1], s=4, c=point_colors, alpha=0.5, linewidths=0)
    if true_means is not None and true_covariances is not None:
        for m, c in zip(np.asarray(true_means), np.asarray(true_covariances)):
            for n_std in (1.0, 2.0):
                _ellipse(ax, m, c, n_std, edgecolor="black", linestyle="--", linewidth=1.0)
        ax.plot([], [], "k--", linewidth=1.0, label="truth (1σ, 2σ)")
    for k, (m, c) in enumerate(zip(means, covs)):
        for n_std, lw in ((1.0, 2.0), (2.0, 1.2)):
            _ellipse(ax, m, c, n_std, edgecolor=colors[k], linewidth=lw)
        ax.plot(*m, marker="x", color=colors[k], markersize=8, markeredgewidth=2)
    ax.plot([], [], "-", color=colors[0], linewidth=2.0, label="fit (1σ, 2σ)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"Gaussian mixture fit, K={means.shape[0]}")
    fig.tight_layout()
    return _save(fig, path, dpi)


def _ellipsoid_mesh(mean: np.ndarray, cov: np.ndarray, n_std: float, resolution: int = 14):
    """x, y, z grids of the n_std-sigma ellipsoid surface of a 3D Gaussian."""
    u = np.linspace(0.0, 2.0 * np.pi, resolution)
    v = np.linspace(0.0, np.pi, resolution // 2 + 1)
    sphere = np.stack([np.outer(np.cos(u), np.sin(v)), np.outer(np.sin(u), np.sin(v)),
                       np.outer(np.ones_like(u), np.cos(v))])
    vals, vecs = np.linalg.eigh(cov)
    A = vecs * (n_std * np.sqrt(np.clip(vals, 0.0, None)))  # maps the unit sphere onto the ellipsoid
    pts = np.tensordot(A, sphere, axes=1) + mean[:, None, None]
    return pts[0], pts[1], pts[2]


def plot_mixture_3d(
    X: Any,
    labels: Any,
    means: Any,
    covariances: Any,
    path: str | Path,
    *,
    true_means: Any = None,
    true_covariances: Any = None,
    n_std: float = 2.0,
    title: str | None = None,
    max_points: int = 2500,
    dpi: int = 100,
) -> Path:
    """3D scatter coloured by component with the fit's n_std-sigma ellipsoids as wireframes
    (and the truth's as thin black wireframes when given)."""
    X = np.asarray(X, dtype=np.float64)
    labels = None if labels is None else np.asarray(labels)
    means = np.asarray(means, dtype=np.float64)
    covs = np.asarray(covariances, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3:
        raise ValueError(f"X must have shape (N, 3) for a 3D plot; got {X.shape}")
    colors = _colors(means.shape[0])
    fig = _figure((6.4, 5.6))
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    Xs, ls = _subsample(X, labels, max_points)
    point_colors = "0.5" if ls is None else [colors[int(i) % len(colors)] for i in ls]
    ax.scatter(Xs[:, 0], Xs[:, 1], Xs[:, 2], s=4, c=point_colors, alpha=0.6, linewidths=0, depthshade=False)
    if true_means is not None and true_covariances is not None:
        for m, c in zip(np.asarray(true_means), np.asarray(true_covariances)):
            ax.plot_wireframe(*_ellipsoid_mesh(m, c, n_std, 10), color="black", linewidth=0.6, alpha=0.8,
                              linestyles="--")
    for k, (m, c) in enumerate(zip(means, covs)):
        ax.plot_wireframe(*_ellipsoid_mesh(m, c, n_std), color=colors[k], linewidth=0.8)
    ax.set_box_aspect(tuple(np.maximum(np.ptp(X, axis=0), 1e-12)))  # true proportions, not a cube
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_zlabel("x3")
    suffix = ", truth in black" if true_means is not None else ""
    ax.set_title(title or f"Gaussian mixture fit, K={means.shape[0]} ({n_std:g}σ ellipsoids{suffix})")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_history(history: Sequence[float], path: str | Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Mean log-likelihood per EM iteration."""
    h = np.asarray(history, dtype=np.float64)
    fig = _figure((5.6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(1, h.size + 1), h, marker="o", markersize=3)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "EM convergence")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_criteria(table: Sequence[dict], path: str | Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """BIC and AIC against K, from the table of `select_n_components` (rows with k, bic, aic)."""
    ks = np.array([row["k"] for row in table])
    fig = _figure((5.6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for key, marker in (("bic", "o"), ("aic", "s")):
        vals = np.array([row[key] for row in table], dtype=np.float64)
        ax.plot(ks, vals, marker=marker, label=key.upper())
        best = int(np.argmin(vals))
        ax.plot(ks[best], vals[best], marker="*", markersize=14, color="black")
    ax.set_xlabel("number of components K")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_xticks(ks)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "Model selection")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_fit(gmm: Any, X: Any, path: str | Path, *, labels: Any = None, truth: Any = None, **kwargs: Any) -> Path:
    """Plot a fitted GaussianMixture on X (N, 2 or 3): picks the 2D or 3D figure.

    ``truth`` may be an object with ``means`` and ``covariances`` (e.g. `MixtureParams`).
    ``labels`` default to ``gmm.predict(X)``.
    """
    X = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X, dtype=np.float64)
    means = np.asarray(gmm.means_)
    K, D = means.shape
    covs = full_covariances(gmm.covariances_, gmm.covariance_type, K, D)
    if labels is None:
        labels = gmm.predict(X)
    extra = {}
    if truth is not None:
        extra = {"true_means": truth.means, "true_covariances": truth.covariances}
    if D == 2:
        return plot_mixture_2d(X, labels, means, covs, path, **extra, **kwargs)
    if D == 3:
        return plot_mixture_3d(X, labels, means, covs, path, **extra, **kwargs)
    raise ValueError(f"plot_fit draws 2D or 3D data; got n_features={D}")
