"""K-means clustering on torch: greedy k-means++ seeding and Lloyd iterations.

Used on its own and as the default initialisation of `GaussianMixture`.
Shapes: X (N, D), centres (K, D), labels (N,).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ._ops import min0, cpu_threads
from ._rng import RandomState, make_generator, next_seed, sample_index
from ._validation import (
    ConvergenceWarning,
    NotFittedError,
    as_2d_tensor,
    check_float,
    check_int,
    chunk_rows,
    resolve_device,
    resolve_dtype,
    to_output,
)

__all__ = ["KMeans", "kmeans_plusplus"]


def _sq_dist_t(Xt: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances (M, n) from centres c (M, D) to the columns of Xt (D, n).

    Uses ||x||^2 - 2 c.x + ||c||^2 (one matmul); component-major so the min over centres
    vectorises along n.
    """
    d = torch.addmm((c * c).sum(1, keepdim=True), c, Xt, alpha=-2.0)
    return d.add_(x_sq).clamp_(min=0.0)


def centred(Xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Xt - mean, mean (D, 1)) for Xt (D, N), the mean taken in float64. Distances as ||c||^2 - 2 c.x lose the
    digits that tell centres apart when the data sit far from the origin (in float32, the CUDA default, data at
    +300 with spread 0.01 all went to one cluster): k-means works on centred data, as scikit-learn's does."""
    mean = Xt.to(torch.float64).mean(1, keepdim=True).to(Xt.dtype)
    return Xt - mean, mean


def _assign_t(
    Xt: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor, step: int, need_dist: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest centre of each column of Xt (D, N): labels (N,) and, if asked, squared distances (N,)."""
    N = Xt.shape[1]
    labels = torch.empty(N, dtype=torch.long, device=Xt.device)
    mind = torch.empty(N, dtype=Xt.dtype, device=Xt.device) if need_dist else None
    c_sq = (centres * centres).sum(1, keepdim=True)
    for a in range(0, N, step):
        b = min(N, a + step)
        # argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 c_k.x): ||x||^2 only matters for distances.
        d = torch.addmm(c_sq, centres, Xt[:, a:b], alpha=-2.0)
        m, labels[a:b] = min0(d)
        if need_dist:
            mind[a:b] = m
    if need_dist:
        mind.add_(x_sq).clamp_(min=0.0)
    return labels, mind


def kmeans_plusplus(
    Xt: torch.Tensor, n_clusters: int, gen: torch.Generator, n_local_trials: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding on the columns of Xt (D, N) (pass ``X.mT.contiguous()``).

    Each new centre is the best (lowest total potential) of ``n_local_trials`` candidates drawn
    with probability proportional to the squared distance to the nearest chosen centre.
    Returns centres (K, D) and their row indices (K,).
    """
    D, N = Xt.shape
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    x_sq = (Xt * Xt).sum(0)
    indices = torch.empty(n_clusters, dtype=torch.long, device=Xt.device)
    first = int(torch.randint(0, N, (1,), generator=gen).item())
    indices[0] = first
    closest = _sq_dist_t(Xt, Xt[:, first : first + 1].mT, x_sq).squeeze(0)
    for c in range(1, n_clusters):
        cand = sample_index(closest, gen, n_local_trials)
        d = torch.minimum(_sq_dist_t(Xt, Xt[:, cand].mT, x_sq), closest)  # (trials, N)
        best = int(torch.argmin(d.sum(1)).item())
        indices[c] = cand[best]
        closest = d[best].contiguous()
    return Xt[:, indices].mT.contiguous(), indices


class KMeans:
    """K-means with k-means++ seeding and Lloyd iterations, on CPU or GPU.

    Parameters
    ----------
    n_clusters : number of centres K.
    init : 'k-means++' (greedy D^2 seeding), 'random' (K distinct random rows) or an array (K, D).
    n_init : number of restarts; the run with the lowest inertia is kept.
    max_iter : Lloyd iterations per run.
    tol : convergence threshold on the squared centre shift, relative to the mean per-feature
        variance of X (so it is scale free); a run also stops when no label changes.
    random_state : int, numpy/torch generator or None.
    device, dtype : compute device and dtype (float64 on CPU by default, float32 on CUDA).
    chunk_size : rows per distance block (None: automatic).
    n_threads : torch CPU threads while a method runs (None: 1; see `GaussianMixture`).

    Attributes (numpy)
    ------------------
    cluster_centers_ (K, D), labels_ (N,), inertia_ (sum of squared distances to the nearest
    centre), n_iter_ (Lloyd iterations of the kept run).
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | Any = "k-means++",
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: RandomState = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        chunk_size: int | None = None,
        n_threads: int | None = None,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.n_threads = n_threads

    def _check(self) -> None:
        check_int("n_clusters", self.n_clusters, 1)
        check_int("n_init", self.n_init, 1)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
        if self.n_threads is not None:
            check_int("n_threads", self.n_threads, 1)
        check_int("max_iter", self.max_iter, 1)
        check_float("tol", self.tol)
        if isinstance(self.init, str) and self.init not in ("k-means++", "random"):
            raise ValueError("init must be 'k-means++', 'random' or an array of shape (n_clusters, n_features); "
                             f"got {self.init!r}")

    def fit(self, X: Any, y: Any = None) -> "KMeans":
        """Cluster X (N, D). Returns self."""
        self._check()
        device = resolve_device(self.device, X)
        dtype = resolve_dtype(self.dtype, device)
        Xr = as_2d_tensor(X, device=device, dtype=dtype)
        with cpu_threads(self.n_threads, device):
            self._fit_t(Xr.mT.contiguous())
        return self

    def _fit_t(self, Xt: torch.Tensor) -> torch.Tensor:
        """Fit on already validated, transposed data Xt (D, N); returns labels as a tensor (N,)."""
        D, N = Xt.shape
        K = self.n_clusters
        if N < K:
            raise ValueError(f"n_samples={N} must be >= n_clusters={K}")
        device, dtype = Xt.device, Xt.dtype
        gen = make_generator(self.random_state)
        Xt, mean = centred(Xt)
        x_sq = (Xt * Xt).sum(0)
        step = chunk_rows(N, K, self.chunk_size, device)
        # Scale-free tolerance: relative to the average per-feature variance.
        tol = self.tol * float(Xt.var(1, correction=0).mean())
        explicit = None if isinstance(self.init, str) else self.init
        best = None
        for _ in range(1 if explicit is not None else self.n_init):
            sub = torch.Generator().manual_seed(next_seed(gen))
            if explicit is not None:
                centres = as_2d_tensor(explicit, name="init", device=device, dtype=dtype, n_features=D)
                if centres.shape[0] != K:
                    raise ValueError(f"init must have shape (n_clusters={K}, {D}); got {tuple(centres.shape)}")
                centres = centres - mean.mT
            elif self.init == "k-means++":
                centres, _ = kmeans_plusplus(Xt, K, sub)
            else:
                idx = torch.randperm(N, generator=sub)[:K].to(device)
                centres = Xt[:, idx].mT.contiguous()
            run = self._lloyd(Xt, x_sq, centres, tol, step)
            if best is None or run[2] < best[2]:
                best = run
        centres, labels, inertia, n_iter, converged = best
        if not converged:
            warnings.warn(
                f"KMeans did not converge within max_iter={self.max_iter} iterations; "
                "increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.cluster_centers_ = (centres + mean.mT).cpu().numpy()
        self._mean = mean.mT.cpu()  # (1, D): predict centres its data the same way
        self.labels_ = labels.cpu().numpy()
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self.n_features_in_ = D
        self._device, self._dtype = device, dtype
        return labels

    def _lloyd(self, Xt, x_sq, centres, tol, step):
        """Lloyd iterations from ``centres``; returns (centres, labels, inertia, n_iter, converged)."""
        D, N = Xt.shape
        K = centres.shape[0]
        labels = None
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            new_labels, _ = _assign_t(Xt, centres, x_sq, step, need_dist=False)
            counts = torch.bincount(new_labels, minlength=K)
            # Per-centre sums as a (K, N) x (N, D) product would cost K*N; index_add is O(N*D).
            sums = torch.zeros((D, K), dtype=Xt.dtype, device=Xt.device).index_add_(1, new_labels, Xt)
            new_centres = sums.mT / counts.clamp(min=1).to(Xt.dtype).unsqueeze(1)
            empty = counts == 0
            if bool(empty.any()):
                new_centres = torch.where(empty.unsqueeze(1), centres, new_centres)
                _, mind = _assign_t(Xt, new_centres, x_sq, step)
                new_centres = self._relocate_empty(Xt, new_centres, empty, mind)
            same_labels = labels is not None and bool(torch.equal(new_labels, labels))
            shift = float(((new_centres - centres) ** 2).sum())
            centres, labels = new_centres, new_labels
            if same_labels or shift <= tol:
                converged = True
                break
        # Final assignment so labels_ and inertia_ describe the returned centres exactly.
        labels, _ = _assign_t(Xt, centres, x_sq, step, need_dist=False)
        inertia = float(((Xt - centres.mT[:, labels]) ** 2).sum())
        return centres, labels, inertia, n_iter, converged

    @staticmethod
    def _relocate_empty(Xt, centres, empty, mind):
        """Move empty clusters onto the points farthest from their centre (unless all are at 0)."""
        far = torch.topk(mind, int(empty.sum())).indices
        keep = mind[far] > 0
        slots = torch.nonzero(empty).reshape(-1)
        centres = centres.clone()
        centres[slots[keep]] = Xt[:, far[keep]].mT
        return centres

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("This KMeans instance is not fitted yet; call fit(X) first.")

    def predict(self, X: Any) -> Any:
        """Index of the nearest centre for each row of X (N, D): (N,) int64, numpy or tensor like X."""
        self._check_fitted()
        Xr = as_2d_tensor(X, device=self._device, dtype=self._dtype, n_features=self.n_features_in_)
        mean = getattr(self, "_mean", torch.zeros(1, self.n_features_in_)).to(self._device, self._dtype)
        c = torch.as_tensor(self.cluster_centers_).to(self._device, self._dtype) - mean
        Xt = (Xr - mean).mT.contiguous()
        step = chunk_rows(Xt.shape[1], c.shape[0], self.chunk_size, self._device)
        with cpu_threads(self.n_threads, self._device):
            labels, _ = _assign_t(Xt, c, (Xt * Xt).sum(0), step, need_dist=False)
        return to_output(labels, X)

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the cluster of each row (N,)."""
        self.fit(X)
        return to_output(torch.from_numpy(self.labels_), X)

    def __repr__(self) -> str:
        return f"KMeans(n_clusters={self.n_clusters}, init={self.init!r}, n_init={self.n_init})"
