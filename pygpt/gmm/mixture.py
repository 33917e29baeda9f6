"""Gaussian mixture model fitted by expectation-maximisation, on torch (CPU or GPU).

The API follows scikit-learn's ``GaussianMixture`` (same parameter names, attribute names and
per-iteration semantics), so a fit can be checked iteration by iteration against it.

Shapes: X (N, D); weights_ (K,); means_ (K, D); covariances_ per covariance_type:
full (K, D, D), tied (D, D), diag (K, D), spherical (K,); precisions_cholesky_ the same shapes.

Types: fitted attributes are numpy arrays (in the model dtype); ``predict``, ``predict_proba``
and ``score_samples`` return a tensor (on the input's device) when given a tensor, numpy otherwise.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np
import torch

from . import _gaussian as G
from ._ops import argmax0, cpu_threads
from ._rng import RandomState, make_generator, next_seed, rand, randn
from ._validation import (
    ConvergenceWarning,
    NotFittedError,
    as_2d_tensor,
    check_choice,
    check_float,
    check_int,
    resolve_device,
    resolve_dtype,
    to_output,
)
from .kmeans import KMeans, centred, kmeans_plusplus

__all__ = ["GaussianMixture", "INIT_PARAMS", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = G.COVARIANCE_TYPES
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _precision_shape(covariance_type: str, K: int, D: int) -> tuple[int, ...]:
    """The shape of the precisions (and their Cholesky factors) of K components in D dimensions."""
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


class GaussianMixture:
    """Gaussian mixture with EM, batched over components, log-space E-step, Cholesky densities.

    Parameters
    ----------
    n_components : number of components K.
    covariance_type : 'full', 'tied', 'diag' or 'spherical'.
    tol : stop when the mean log-likelihood changes by less than this between iterations.
    reg_covar : added to covariance diagonals; keeps collapsing components positive definite.
    max_iter : EM iterations per initialisation (0 keeps the initial parameters).
    n_init : number of initialisations; the one with the highest final log-likelihood is kept.
    init_params : how responsibilities are initialised when not all of weights_init / means_init /
        precisions_init are given:

        * 'kmeans': labels of a full k-means run (k-means++ seeding, Lloyd iterations);
        * 'k-means++': k-means++ seeds, each the only point of its component (mean the seed, covariance
          reg_covar), as scikit-learn; for 'tied', scikit-learn's estimate sums over every point, ours
          over the seeds;
        * 'random_from_data': K distinct random points as seeds, likewise;
        * 'random': uniformly random responsibilities.
    weights_init (K,), means_init (K, D), precisions_init : user initial parameters; precisions
        are inverse covariances with the covariance_type's shape. Given all three, no data-driven
        initialisation runs (so the fit can start from exactly scikit-learn's starting point).
    random_state : int, numpy/torch generator, or None.
    warm_start : if True and fitted, ``fit`` continues from the current parameters (n_init is 1).
    device : 'cpu', 'cuda', a torch.device, or None (a tensor X's device, else CPU).
    dtype : torch.float64 or torch.float32; None means float64 on CPU and float32 on CUDA.
    chunk_size : rows per chunk in the E/M steps (None: automatic, bounds temporary memory).
    n_threads : torch CPU threads while a method runs (None: 1, restored afterwards; the
        kernels are memory-bound and one thread is immune to barrier stalls on a busy machine).
        Pass ``torch.get_num_threads()`` to leave the process-wide setting untouched.
    verbose : 1 prints one line per EM iteration.

    Attributes (numpy arrays unless noted)
    --------------------------------------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : fitted parameters.
    converged_ (bool), n_iter_ (int) : of the kept initialisation.
    lower_bound_ (float) : mean log-likelihood computed at the last E-step of the kept run
        (i.e. of the parameters before the last M-step, as in scikit-learn).
    history_ (n_iter_,) : mean log-likelihood at each EM iteration of the kept run
        (``history_[-1] == lower_bound_``). Also available as ``lower_bounds_``.
    n_features_in_ (int).
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: RandomState = None,
        warm_start: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        chunk_size: int | None = None,
        n_threads: int | None = None,
        verbose: int = 0,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments, as in scikit-learn (for cloning and grid searches)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> "GaussianMixture":
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for GaussianMixture; expected one of {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, covariance_type={self.covariance_type!r}, "
            f"init_params={self.init_params!r}, n_init={self.n_init}, device={self.device!r})"
        )

    def _check_parameters(self) -> None:
        check_int("n_components", self.n_components, 1)
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_choice("init_params", self.init_params, INIT_PARAMS)
        check_float("tol", self.tol)
        check_float("reg_covar", self.reg_covar)
        check_int("max_iter", self.max_iter, 0)
        check_int("n_init", self.n_init, 1)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
        if self.n_threads is not None:
            check_int("n_threads", self.n_threads, 1)

    # ------------------------------------------------------------------ initialisation

    def _user_init(self, D: int, device: torch.device, dtype: torch.dtype):
        """Validated (weights, means, precisions_cholesky) from *_init arguments (None where absent)."""
        K, ct = self.n_components, self.covariance_type
        w = mu = pc = None
        if self.weights_init is not None:
            w = torch.as_tensor(np.asarray(self.weights_init, dtype=np.float64)).to(device, dtype)
            if w.shape != (K,):
                raise ValueError(f"weights_init must have shape ({K},); got {tuple(w.shape)}")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError("weights_init must be finite and non-negative")
            if abs(float(w.sum()) - 1.0) > 1e-5:
                raise ValueError(f"weights_init must sum to 1; got sum {float(w.sum()):.6g}")
            w = w / w.sum()
        if self.means_init is not None:
            mu = torch.as_tensor(np.asarray(self.means_init, dtype=np.float64)).to(device, dtype)
            if mu.shape != (K, D):
                raise ValueError(f"means_init must have shape ({K}, {D}); got {tuple(mu.shape)}")
            if not bool(torch.isfinite(mu).all()):
                raise ValueError("means_init must be finite")
        if self.precisions_init is not None:
            p = torch.as_tensor(np.asarray(self.precisions_init, dtype=np.float64)).to(device, dtype)
            expected = _precision_shape(ct, K, D)
            if tuple(p.shape) != expected:
                raise ValueError(f"precisions_init for covariance_type={ct!r} must have shape {expected}; "
                                 f"got {tuple(p.shape)}")
            if not bool(torch.isfinite(p).all()):
                raise ValueError("precisions_init must be finite")
            if ct in ("full", "tied") and not torch.allclose(p, p.mT, rtol=1e-8, atol=1e-10):
                raise ValueError("precisions_init must be symmetric")
            pc = G.precision_cholesky_from_precisions(p, ct)
        return w, mu, pc

    def _init_resp(self, Xt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Initial responsibilities (K, N) per init_params, from Xt (D, N)."""
        N = Xt.shape[1]
        K = self.n_components
        if self.init_params == "random":
            resp = rand((K, N), gen, Xt.device, Xt.dtype)
            return resp / resp.sum(0, keepdim=True)
        resp = torch.zeros((K, N), dtype=Xt.dtype, device=Xt.device)
        if self.init_params == "kmeans":
            km = KMeans(K, n_init=1, random_state=next_seed(gen), chunk_size=self.chunk_size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                labels = km._fit_t(Xt)
            return resp.scatter_(0, labels.unsqueeze(0), 1.0)
        # As scikit-learn: each seed point alone is its component (mean = the point, covariance = reg_covar);
        # the first E-step then assigns every point to its nearest seed.
        if self.init_params == "k-means++":
            # (on centred data, as KMeans: the choice doesn't depend on the origin, its float32 precision does)
            _, seeds = kmeans_plusplus(centred(Xt)[0], K, gen)
        else:
            seeds = torch.randperm(N, generator=gen)[:K].to(Xt.device)
        resp[torch.arange(K, device=Xt.device), seeds] = 1.0
        return resp

    def _initialize(self, Xt: torch.Tensor, gen: torch.Generator) -> G.Params:
        ct = self.covariance_type
        w, mu, pc = self._user_init(Xt.shape[0], Xt.device, Xt.dtype)
        if w is not None and mu is not None and pc is not None:
            return G.Params(w, mu, None, pc)
        est = G.m_step(Xt, self._init_resp(Xt, gen), ct, self.reg_covar, self.chunk_size)
        if pc is None:
            pc = est.precisions_cholesky
        return G.Params(est.weights if w is None else w, est.means if mu is None else mu, None, pc)

    def _current_params(self, device: torch.device, dtype: torch.dtype) -> G.Params:
        """The fitted numpy attributes as tensors (re-read each call, so edits to them count)."""
        self._check_fitted()
        t = lambda a: torch.as_tensor(np.asarray(a)).to(device=device, dtype=dtype)  # noqa: E731
        return G.Params(t(self.weights_), t(self.means_), None, t(self.precisions_cholesky_))

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any = None) -> "GaussianMixture":
        """Estimate the parameters with EM from X (N, D). Returns self.

        Runs ``n_init`` initialisations (1 with a warm start) and keeps the one with the highest
        final mean log-likelihood. Each run stops when the change of the mean log-likelihood is
        below ``tol`` or after ``max_iter`` iterations (ConvergenceWarning if that happens).
        """
        self._fit(X)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the component of each row (N,), like ``fit(X).predict(X)``."""
        Xt = self._fit(X)
        with self._threads(Xt):
            wlp = G.weighted_log_prob_t(Xt, self._current_params(Xt.device, Xt.dtype), self.covariance_type,
                                        self.chunk_size)
            return to_output(argmax0(wlp), X)

    def _fit(self, X: Any) -> torch.Tensor:
        self._check_parameters()
        device = resolve_device(self.device, X)
        dtype = resolve_dtype(self.dtype, device)
        Xt = G.transpose(as_2d_tensor(X, device=device, dtype=dtype))  # (D, N)
        D, N = Xt.shape
        K = self.n_components
        if N < K:
            raise ValueError(f"n_samples={N} must be >= n_components={K}; got fewer samples than components")
        if N < 2:
            raise ValueError(f"X must have at least 2 samples to fit a mixture; got {N}")
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        if warm and self.n_features_in_ != D:
            raise ValueError(f"X has {D} features, but the warm-started model has {self.n_features_in_}")
        if warm:
            shape = _precision_shape(self.covariance_type, K, D)
            if np.shape(self.means_) != (K, D) or np.shape(self.precisions_cholesky_) != shape:
                raise ValueError(f"warm_start: the fitted model has {np.shape(self.means_)[0]} components and "
                                 f"precisions of shape {np.shape(self.precisions_cholesky_)}, but n_components="
                                 f"{K}, covariance_type={self.covariance_type!r} need {shape}; set "
                                 "warm_start=False to fit from scratch")
        with cpu_threads(self.n_threads, device):
            self._em(Xt, warm)
        return Xt

    def _em(self, Xt: torch.Tensor, warm: bool) -> None:
        """Run the n_init EM restarts on Xt (D, N) and store the best one."""
        D, N = Xt.shape
        K, ct = self.n_components, self.covariance_type
        device, dtype = Xt.device, Xt.dtype
        gen = make_generator(self.random_state)
        resp = torch.empty((K, N), dtype=dtype, device=device)  # reused by every iteration
        best: tuple | None = None
        for _ in range(1 if warm else self.n_init):
            if warm:
                params = self._current_params(device, dtype)
                lower_bound = float(self.lower_bound_)
            else:
                params = self._initialize(Xt, torch.Generator().manual_seed(next_seed(gen)))
                lower_bound = -math.inf
            history: list[float] = []
            converged = False
            for n_iter in range(1, self.max_iter + 1):
                prev = lower_bound
                ll = G.e_step(Xt, params, ct, resp, self.chunk_size)
                params = G.m_step(Xt, resp, ct, self.reg_covar, self.chunk_size)
                lower_bound = float(ll)
                if not math.isfinite(lower_bound):
                    raise ValueError(
                        f"EM produced a non-finite log-likelihood ({lower_bound}) at iteration {n_iter}; "
                        "the data may be degenerate for this model: increase reg_covar or decrease n_components"
                    )
                history.append(lower_bound)
                if self.verbose:
                    print(f"  iter {n_iter:3d}  mean log-likelihood {lower_bound:.10g}  "
                          f"change {lower_bound - prev:.3g}")
                if abs(lower_bound - prev) < self.tol:
                    converged = True
                    break
            n_done = len(history)
            if best is None or lower_bound > best[0]:
                best = (lower_bound, params, n_done, converged, history)
        lower_bound, params, n_iter, converged, history = best
        if not converged and self.max_iter > 0:
            warnings.warn(
                "EM did not converge: the best initialisation stopped at max_iter before the "
                "log-likelihood change fell below tol. Increase max_iter or tol, or check the data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set_fitted(params, D, lower_bound, n_iter, converged, history)

    def _set_fitted(self, params: G.Params, D: int, lower_bound: float, n_iter: int, converged: bool,
                    history: list[float]) -> None:
        ct = self.covariance_type
        cov = params.covariances
        if cov is None:  # parameters straight from the user (max_iter=0)
            cov = G.covariances_from_precision_cholesky(params.precisions_cholesky, ct)
        npy = lambda t: t.detach().cpu().numpy()  # noqa: E731
        self.weights_ = npy(params.weights)
        self.means_ = npy(params.means)
        self.covariances_ = npy(cov)
        self.precisions_cholesky_ = npy(params.precisions_cholesky)
        self.precisions_ = npy(G.precisions_from_cholesky(params.precisions_cholesky, ct))
        self.lower_bound_ = lower_bound
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.history_ = np.asarray(history, dtype=np.float64)
        self.lower_bounds_ = self.history_
        self.n_features_in_ = D
        self._fit_device, self._fit_dtype = params.means.device, params.means.dtype

    # ------------------------------------------------------------------ inference

    def _fitted_device(self) -> torch.device | None:
        """Where the model was fitted, if that device exists here (a model fitted on a GPU and unpickled on a
        CPU-only machine predicts on the CPU)."""
        device = getattr(self, "_fit_device", None)
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            return None
        return device

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("This GaussianMixture instance is not fitted yet; call fit(X) first.")

    def _prepare(self, X: Any) -> tuple[torch.Tensor, G.Params]:
        self._check_fitted()
        # Compute where the model was fitted (outputs still follow X's type and device).
        device = self._fitted_device() or resolve_device(self.device, X)
        dtype = getattr(self, "_fit_dtype", None) or resolve_dtype(self.dtype, device)
        Xr = as_2d_tensor(X, device=device, dtype=dtype, n_features=self.n_features_in_)
        return G.transpose(Xr), self._current_params(device, dtype)

    def _threads(self, Xt: torch.Tensor):
        return cpu_threads(self.n_threads, Xt.device)

    def _log_prob_t(self, X: Any) -> torch.Tensor:
        """Weighted log-densities (K, N) of X under the fitted parameters."""
        Xt, p = self._prepare(X)
        with self._threads(Xt):
            return G.weighted_log_prob_t(Xt, p, self.covariance_type, self.chunk_size)

    def _score_samples_t(self, X: Any) -> torch.Tensor:
        Xt, p = self._prepare(X)
        with self._threads(Xt):
            return G.score_samples(Xt, p, self.covariance_type, self.chunk_size)

    def score_samples(self, X: Any) -> Any:
        """Log-density log p(x_n) of each row under the mixture, (N,)."""
        return to_output(self._score_samples_t(X), X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of X (N, D) under the model."""
        return float(self._score_samples_t(X).mean())

    def predict(self, X: Any) -> Any:
        """Most probable component of each row, (N,) int64."""
        return to_output(argmax0(self._log_prob_t(X)), X)

    def predict_proba(self, X: Any) -> Any:
        """Posterior probabilities of the components, (N, K); rows sum to 1."""
        return to_output(torch.softmax(self._log_prob_t(X), dim=0).mT.contiguous(), X)

    def sample(self, n_samples: int = 1, *, as_tensor: bool = False) -> tuple[Any, Any]:
        """Draw n_samples points from the fitted mixture.

        Returns (X (n, D), y (n,)) grouped by component, as numpy arrays (tensors on the model's
        device with ``as_tensor=True``). Reproducible for an int ``random_state``.
        """
        self._check_fitted()
        check_int("n_samples", n_samples, 1)
        device = self._fitted_device() or resolve_device(self.device)
        dtype = getattr(self, "_fit_dtype", None) or resolve_dtype(self.dtype, device)
        p = self._current_params(device, dtype)
        K, D = p.means.shape
        cov = torch.as_tensor(np.asarray(self.covariances_)).to(device, dtype)
        L = torch.linalg.cholesky(G.full_covariances(cov, self.covariance_type, K, D))
        gen = make_generator(self.random_state)
        w = p.weights.to(torch.float64).cpu()
        labels = torch.multinomial(w / w.sum(), n_samples, replacement=True, generator=gen).sort().values
        counts = torch.bincount(labels, minlength=K).tolist()
        z = randn((n_samples, D), gen, device, dtype)
        out = torch.empty((n_samples, D), dtype=dtype, device=device)
        start = 0
        for k, c in enumerate(counts):  # K small matmuls: sampling is not a hot path
            out[start : start + c] = p.means[k] + z[start : start + c] @ L[k].mT
            start += c
        y = labels.to(device)
        if as_tensor:
            return out, y
        return out.cpu().numpy(), y.cpu().numpy()

    # ------------------------------------------------------------------ model selection

    def _n_parameters(self) -> int:
        K, D = np.asarray(self.means_).shape
        return G.n_parameters(self.covariance_type, K, D)

    def _total_log_likelihood(self, X: Any) -> tuple[float, int]:
        ll = self._score_samples_t(X)
        return float(ll.sum()), ll.shape[0]

    def bic(self, X: Any) -> float:
        """Bayesian information criterion: -2 log L + p log N (lower is better)."""
        total, n = self._total_log_likelihood(X)
        return -2.0 * total + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion: -2 log L + 2 p (lower is better)."""
        total, _ = self._total_log_likelihood(X)
        return -2.0 * total + 2.0 * self._n_parameters()
