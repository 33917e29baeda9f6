"""pygpt.gmm.GaussianMixture against scikit-learn: same EM, iteration by iteration (float64)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn_mixture = pytest.importorskip("sklearn.mixture")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from pygpt.gmm.mixture import GaussianMixture  # noqa: E402
from pygpt.gmm.synthetic import make_mixture  # noqa: E402

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _sk_fit(model, X):
    """Fit a scikit-learn model single-threaded: its OpenMP/BLAS pools stall on a busy 2-core
    machine, and results do not depend on the thread count. Only the reference fit is limited:
    pygpt manages its own threads (see GaussianMixture's n_threads)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        return model.fit(X)
RTOL_LL = 1e-8


def _iris() -> np.ndarray:
    return sklearn_datasets.load_iris().data


def _wine() -> np.ndarray:
    return sklearn_datasets.load_wine().data


def _synthetic() -> np.ndarray:
    X, _, _ = make_mixture(600, dim=3, k=4, seed=3, noise=0.2)
    return X


def _shared_init(X: np.ndarray, k: int, cov_type: str, seed: int = 0) -> dict:
    """A deliberately rough starting point (random data points as means, inflated global
    precisions), so EM takes many iterations and every one of them is compared."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    means = X[rng.choice(n, size=k, replace=False)]
    weights = rng.dirichlet(np.full(k, 5.0))
    var = X.var(axis=0)
    prec_diag = 1.0 / (4.0 * var)
    if cov_type == "full":
        prec = np.stack([np.diag(prec_diag * s) for s in rng.uniform(0.5, 1.5, size=k)])
    elif cov_type == "tied":
        prec = np.diag(prec_diag)
    elif cov_type == "diag":
        prec = prec_diag[None, :] * rng.uniform(0.5, 1.5, size=(k, 1))
    else:
        prec = np.full(k, prec_diag.mean()) * rng.uniform(0.5, 1.5, size=k)
    return {"weights_init": weights, "means_init": means, "precisions_init": prec}


def _assert_params_close(ours: GaussianMixture, ref, rtol: float = 1e-7) -> None:
    scale = lambda a: max(1.0, float(np.abs(a).max()))  # noqa: E731
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        a, b = np.asarray(getattr(ours, name)), np.asarray(getattr(ref, name))
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale(b), err_msg=name)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("data", ["iris", "synthetic"])
def test_every_iteration_matches_sklearn(cov_type: str, data: str) -> None:
    """Step both implementations one EM iteration at a time (warm starts, max_iter=1) from the
    same initial weights/means/precisions: the mean log-likelihood of every iteration and the
    parameters after every M-step must agree."""
    X = _iris() if data == "iris" else _synthetic()
    k = 3 if data == "iris" else 4
    init = _shared_init(X, k, cov_type)
    kw = dict(covariance_type=cov_type, tol=0.0, max_iter=1, warm_start=True, **init)
    ours = GaussianMixture(k, **kw)
    ref = sklearn_mixture.GaussianMixture(k, **kw)
    n_steps = 30
    lls_ours, lls_ref = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=1 "did not converge" warnings, by design
        for _ in range(n_steps):
            ours.fit(X)
            _sk_fit(ref, X)
            lls_ours.append(ours.lower_bound_)
            lls_ref.append(ref.lower_bound_)
            _assert_params_close(ours, ref)
    np.testing.assert_allclose(lls_ours, lls_ref, rtol=RTOL_LL, atol=0)
    # The data set really took EM somewhere: the log-likelihood moved over the run.
    assert lls_ref[-1] - lls_ref[0] > 1e-2


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_single_fit_history_and_final_params_match_sklearn(cov_type: str) -> None:
    """One fit of a fixed number of iterations (tol=0): identical history and final parameters."""
    X = _wine()
    init = _shared_init(X, 3, cov_type, seed=1)
    kw = dict(covariance_type=cov_type, tol=0.0, max_iter=40, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GaussianMixture(3, **kw).fit(X)
        ref = _sk_fit(sklearn_mixture.GaussianMixture(3, **kw), X)
    assert ours.n_iter_ == ref.n_iter_ == 40
    assert ours.history_.shape == (40,)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=RTOL_LL)
    if hasattr(ref, "lower_bounds_"):  # scikit-learn >= 1.6 records the history too
        np.testing.assert_allclose(ours.history_, ref.lower_bounds_, rtol=RTOL_LL, atol=0)
    _assert_params_close(ours, ref, rtol=1e-6)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-7)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-8)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-8)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_tol_convergence_matches_sklearn(cov_type: str) -> None:
    """With the default tol the two stop at the same iteration with the same lower bound."""
    X = _iris()
    init = _shared_init(X, 3, cov_type, seed=2)
    kw = dict(covariance_type=cov_type, **init)
    ours = GaussianMixture(3, **kw).fit(X)
    ref = _sk_fit(sklearn_mixture.GaussianMixture(3, **kw), X)
    assert ours.converged_ and ref.converged_
    assert ours.n_iter_ == ref.n_iter_
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=RTOL_LL)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("data", ["iris", "wine", "synthetic"])
def test_own_init_reaches_sklearn_best_of_n(cov_type: str, data: str) -> None:
    """From its own initialisations the fit is as good as scikit-learn's best of 10."""
    X = {"iris": _iris, "wine": _wine, "synthetic": _synthetic}[data]()
    k = 4 if data == "synthetic" else 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _sk_fit(sklearn_mixture.GaussianMixture(k, covariance_type=cov_type, n_init=10, random_state=0), X)
        ours = GaussianMixture(k, covariance_type=cov_type, n_init=10, random_state=0).fit(X)
    # Mean log-likelihood per sample, of the returned parameters: allow 0.5% of a nat.
    assert ours.score(X) >= ref.score(X) - 5e-3


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("init", ["k-means++", "random_from_data"])
def test_seed_point_inits_start_where_sklearn_does(cov_type: str, init: str) -> None:
    """'k-means++' and 'random_from_data' start as scikit-learn's do: each seed point is alone in its
    component. Given the seeds pygpt chose, scikit-learn's own initialisation from them gives the same
    parameters, and EM from there the same log-likelihood at every iteration."""
    X = _synthetic()
    k = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = GaussianMixture(k, covariance_type=cov_type, init_params=init, max_iter=0, random_state=3).fit(X)
    # Recover the seed rows from the initial means (each is a data point, divided by 1 + 10 eps).
    dist = ((start.means_[:, None, :] - X[None]) ** 2).sum(-1)
    seeds = dist.argmin(1)
    np.testing.assert_allclose(start.means_, X[seeds], rtol=1e-14)
    assert len(set(seeds.tolist())) == k
    resp = np.zeros((len(X), k))
    resp[seeds, np.arange(k)] = 1.0
    ref = sklearn_mixture.GaussianMixture(k, covariance_type=cov_type, reg_covar=1e-6)
    ref._initialize(X, resp)
    # scikit-learn divides these initial weights by N, so they sum to K / N (its M-steps renormalise); ours sum to 1.
    ref.weights_ = ref.weights_ / ref.weights_.sum()
    pc = ref.precisions_cholesky_  # (its _initialize leaves precisions_ to the end of fit)
    ref.precisions_ = pc @ np.swapaxes(pc, -1, -2) if cov_type in ("full", "tied") else pc**2
    if cov_type == "tied":
        # scikit-learn's tied estimate, (X^T X - sum_k n_k m_k m_k^T) / sum_k n_k, assumes every row's
        # responsibilities sum to 1; from seed points alone it sums x x^T over all N points but divides by K.
        # Here the seeds' own scatter, reg_covar I, is kept: the means and weights are compared.
        np.testing.assert_allclose(start.weights_, ref.weights_, rtol=1e-12)
        np.testing.assert_allclose(start.means_, ref.means_, rtol=1e-12)
        np.testing.assert_allclose(start.covariances_, 1e-6 * np.eye(X.shape[1]), rtol=1e-9, atol=1e-20)
        return
    # (covariances are reg_covar, 1e-6: scikit-learn's E[x^2] - E[x]^2 leaves ~1e-14 of rounding on them)
    _assert_params_close(start, ref, rtol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GaussianMixture(k, covariance_type=cov_type, init_params=init, max_iter=20, tol=0.0,
                               random_state=3).fit(X)
        params = {"weights_init": ref.weights_, "means_init": ref.means_, "precisions_init": ref.precisions_}
        theirs = _sk_fit(sklearn_mixture.GaussianMixture(k, covariance_type=cov_type, max_iter=20, tol=0.0,
                                                         **params), X)
    np.testing.assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=RTOL_LL)
