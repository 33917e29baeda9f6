"""Batched Gaussian-mixture math on torch tensors (no estimator state here).

Shapes: N samples, D features, K components. Parameter layouts per covariance type:

=============  ==================  ============================
type           covariances         precisions_cholesky
=============  ==================  ============================
``full``       (K, D, D)           (K, D, D), upper triangular
``tied``       (D, D)              (D, D), upper triangular
``diag``       (K, D)              (K, D)
``spherical``  (K,)                (K,)
=============  ==================  ============================

``precisions_cholesky`` is a factor ``U`` with precision ``P = U @ U.T``; the Mahalanobis
term of a point is then ``||(x - mu) @ U||**2`` and ``log det P = 2 * sum(log diag U)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validation import chunk_rows

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class Params:
    """Mixture parameters as tensors: weights (K,), means (K, D), covariances and their precision factors."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor | None
    precisions_cholesky: torch.Tensor


class DegenerateCovarianceError(ValueError):
    """A covariance matrix is not positive definite (collapsed component, duplicate points)."""


def _degenerate_message(what: str, dtype: torch.dtype) -> str:
    hint = (" In float32 (the CUDA default) this also happens to well-posed data whose features are nearly "
            "collinear: fit with dtype=torch.float64." if dtype == torch.float32 else "")
    return (
        f"{what} is not positive definite: a component collapsed onto too few distinct points "
        "(duplicate points, or more components than the data supports). Increase reg_covar "
        "or decrease n_components." + hint
    )


def precision_cholesky(cov: torch.Tensor, cov_type: str) -> torch.Tensor:
    """Upper factor U of the precision (P = U U^T) from covariances, batched over components."""
    if cov_type in ("full", "tied"):
        # cov = L L^T  =>  P = L^{-T} L^{-1}, so U = L^{-T} is upper triangular.
        L, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            bad = torch.nonzero(info.reshape(-1)).reshape(-1).tolist()
            what = "The tied covariance" if cov_type == "tied" else f"The covariance of component(s) {bad}"
            raise DegenerateCovarianceError(_degenerate_message(what, cov.dtype))
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(L)
        return torch.linalg.solve_triangular(L, eye, upper=False).mT.contiguous()
    if not bool((cov > 0).all()):
        raise DegenerateCovarianceError(_degenerate_message("A variance", cov.dtype))
    return torch.rsqrt(cov)


def precision_cholesky_from_precisions(prec: torch.Tensor, cov_type: str) -> torch.Tensor:
    """Upper factor U with P = U U^T from precision matrices (full/tied) or precisions (diag/spherical)."""
    if cov_type in ("full", "tied"):
        # Reverse the index order: chol(J P J) = M gives P = (J M J)(J M J)^T with J M J upper.
        flipped = prec.flip(-1, -2)
        M, info = torch.linalg.cholesky_ex(flipped)
        if bool((info != 0).any()):
            raise ValueError("precisions_init must be symmetric positive definite matrices")
        return M.flip(-1, -2).contiguous()
    if not bool((prec > 0).all()):
        raise ValueError("precisions_init must be strictly positive")
    return torch.sqrt(prec)


def covariances_from_precision_cholesky(pc: torch.Tensor, cov_type: str) -> torch.Tensor:
    """Covariances (inverse precisions) from the upper precision factor."""
    if cov_type in ("full", "tied"):
        eye = torch.eye(pc.shape[-1], dtype=pc.dtype, device=pc.device).expand_as(pc)
        inv = torch.linalg.solve_triangular(pc, eye, upper=True)  # U^{-1}
        return inv.mT @ inv  # (U U^T)^{-1} = U^{-T} U^{-1}
    return 1.0 / (pc * pc)


def precisions_from_cholesky(pc: torch.Tensor, cov_type: str) -> torch.Tensor:
    if cov_type in ("full", "tied"):
        return pc @ pc.mT
    return pc * pc


def full_covariances(cov: torch.Tensor, cov_type: str, n_components: int, n_features: int) -> torch.Tensor:
    """Expand any covariance layout to (K, D, D) matrices (for sampling and plotting)."""
    if cov_type == "full":
        return cov
    if cov_type == "tied":
        return cov.expand(n_components, n_features, n_features).clone()
    if cov_type == "diag":
        return torch.diag_embed(cov)
    eye = torch.eye(n_features, dtype=cov.dtype, device=cov.device)
    return cov[:, None, None] * eye


def log_det_precision_cholesky(pc: torch.Tensor, cov_type: str, n_features: int) -> torch.Tensor:
    """log det(U) per component, (K,) (a scalar for tied): half the log-determinant of the precision."""
    if cov_type in ("full", "tied"):
        return torch.log(torch.diagonal(pc, dim1=-2, dim2=-1)).sum(-1)
    if cov_type == "diag":
        return torch.log(pc).sum(-1)
    return n_features * torch.log(pc)


def n_parameters(cov_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of the mixture: covariances + means + (K - 1) weights."""
    K, D = n_components, n_features
    cov = {"full": K * D * (D + 1) // 2, "tied": D * (D + 1) // 2, "diag": K * D, "spherical": K}[cov_type]
    return cov + K * D + K - 1


class _LogProb:
    """Precomputed operands for the weighted log-densities log(w_k) + log N(x | mu_k, Sigma_k).

    Built once per E-step so the per-chunk work is a handful of large batched ops. Results are
    laid out component-major, (K, n): reductions over K then run across contiguous rows, which
    vectorises far better on CPU than reducing a length-K innermost axis.
    """

    def __init__(self, params: Params, cov_type: str):
        w, mu, pc = params.weights, params.means, params.precisions_cholesky
        K, D = mu.shape
        self.cov_type, self.K, self.D = cov_type, K, D
        log_det = log_det_precision_cholesky(pc, cov_type, D)
        bias = torch.log(w) + log_det - 0.5 * D * _LOG_2PI  # (K,)
        self.bias = bias.unsqueeze(1)  # (K, 1)
        if cov_type in ("full", "tied"):
            U = pc if cov_type == "full" else pc.expand(K, D, D)
            # Whitened offsets of all components at once: y = U_k^T (x - mu_k), stacked to (K*D, n)
            # by one matmul, then squared and block-summed (times -1/2, plus the bias) by a second.
            self.Wt = U.mT.reshape(K * D, D).contiguous()
            self.b = -(mu.unsqueeze(1) @ U).reshape(K * D, 1)
            blocks = torch.eye(K, dtype=mu.dtype, device=mu.device).repeat_interleave(D, dim=1)
            self.S = -0.5 * blocks  # (K, K*D)
        elif cov_type == "diag":
            self.pc = pc.unsqueeze(2)  # (K, D, 1)
            self.mupc = (mu * pc).unsqueeze(2)
        else:
            self.mu = mu.unsqueeze(2)  # (K, D, 1)
            self.half_prec = (-0.5 * pc * pc).unsqueeze(1)  # (K, 1)

    def weighted_t(self, Xt: torch.Tensor) -> torch.Tensor:
        """log(w_k) + log N(x_n | k) for a chunk given transposed, Xt (D, n); returns (K, n)."""
        if self.cov_type in ("full", "tied"):
            y = torch.addmm(self.b, self.Wt, Xt)
            return torch.addmm(self.bias, self.S, y.square_())
        if self.cov_type == "diag":
            y = torch.addcmul(-self.mupc, Xt.unsqueeze(0), self.pc)  # (K, D, n)
            return torch.add(self.bias, y.square_().sum(1), alpha=-0.5)
        y = Xt.unsqueeze(0) - self.mu
        return torch.addcmul(self.bias, y.square_().sum(1), self.half_prec)


def iter_chunks(n: int, step: int):
    for start in range(0, n, step):
        yield start, min(n, start + step)


def transpose(X: torch.Tensor) -> torch.Tensor:
    """(D, N) contiguous copy of X (N, D): the component-major kernels stream along N."""
    return X.mT.contiguous()


def weighted_log_prob_t(Xt: torch.Tensor, params: Params, cov_type: str, chunk_size: int | None = None) -> torch.Tensor:
    """(K, N) matrix of log(w_k) + log N(x_n | mu_k, Sigma_k) from Xt (D, N), in column chunks."""
    lp = _LogProb(params, cov_type)
    N = Xt.shape[1]
    out = torch.empty((lp.K, N), dtype=Xt.dtype, device=Xt.device)
    step = chunk_rows(N, lp.K * lp.D, chunk_size, Xt.device)
    for a, b in iter_chunks(N, step):
        out[:, a:b] = lp.weighted_t(Xt[:, a:b])
    return out


def _lse_t(wlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: wlp (K, n) becomes exp(wlp - max); returns (column sums, max) for logsumexp."""
    m = wlp.amax(0, keepdim=True)
    # A column that is -inf everywhere (weight 0 everywhere) must not turn into NaN via inf - inf.
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    wlp.sub_(m).exp_()
    return wlp.sum(0, keepdim=True), m


def score_samples(Xt: torch.Tensor, params: Params, cov_type: str, chunk_size: int | None = None) -> torch.Tensor:
    """log p(x_n) under the mixture, (N,), from Xt (D, N)."""
    lp = _LogProb(params, cov_type)
    N = Xt.shape[1]
    out = torch.empty((N,), dtype=Xt.dtype, device=Xt.device)
    step = chunk_rows(N, lp.K * lp.D, chunk_size, Xt.device)
    for a, b in iter_chunks(N, step):
        s, m = _lse_t(lp.weighted_t(Xt[:, a:b]))
        out[a:b] = (s.log_() + m).squeeze(0)
    return out


def e_step(
    Xt: torch.Tensor, params: Params, cov_type: str, resp_out: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Fill ``resp_out`` (K, N) with responsibilities from Xt (D, N); return the mean log-likelihood.

    Log-space throughout (max-shifted exponentials), so far-away points never give 0/0.
    Returns a 0-d tensor, so GPU work is not synchronised here.
    """
    lp = _LogProb(params, cov_type)
    N = Xt.shape[1]
    step = chunk_rows(N, lp.K * lp.D, chunk_size, Xt.device)
    total = torch.zeros((), dtype=Xt.dtype, device=Xt.device)
    for a, b in iter_chunks(N, step):
        e = lp.weighted_t(Xt[:, a:b])
        s, m = _lse_t(e)
        torch.div(e, s, out=resp_out[:, a:b])
        total += s.log_().sum() + m.sum()
    return total / N


def m_step(
    Xt: torch.Tensor, resp: torch.Tensor, cov_type: str, reg_covar: float, chunk_size: int | None = None
) -> Params:
    """Maximise the expected complete-data log-likelihood given Xt (D, N) and responsibilities (K, N).

    Scatter matrices are computed around the new means (two passes over X) rather than with
    the one-pass E[xx^T] - mu mu^T form, which cancels catastrophically for data far from 0.
    """
    D, N = Xt.shape
    K = resp.shape[0]
    # Tiny floor keeps empty components finite (mean 0, covariance reg_covar) instead of 0/0.
    nk = resp.sum(1) + 10 * torch.finfo(resp.dtype).eps
    means = (resp @ Xt.mT) / nk.unsqueeze(1)  # (K, D)
    mu = means.unsqueeze(2)  # (K, D, 1)
    step = chunk_rows(N, K * D, chunk_size, Xt.device)
    if cov_type in ("full", "tied"):
        scatter = torch.zeros((K, D, D), dtype=Xt.dtype, device=Xt.device)
        for a, b in iter_chunks(N, step):
            diff = Xt[:, a:b].unsqueeze(0) - mu  # (K, D, n)
            weighted = diff * resp[:, a:b].unsqueeze(1)
            scatter.baddbmm_(weighted, diff.mT)
        if cov_type == "full":
            cov = scatter / nk.view(K, 1, 1)
        else:
            cov = scatter.sum(0) / nk.sum()
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    else:
        sq = torch.zeros((K, D, 1), dtype=Xt.dtype, device=Xt.device)
        for a, b in iter_chunks(N, step):
            diff = Xt[:, a:b].unsqueeze(0) - mu  # (K, D, n)
            sq.baddbmm_(diff.square_(), resp[:, a:b].unsqueeze(2))
        cov = sq.squeeze(2) / nk.unsqueeze(1) + reg_covar
        if cov_type == "spherical":
            cov = cov.mean(1)
    weights = nk / nk.sum()
    return Params(weights, means, cov, precision_cholesky(cov, cov_type))
