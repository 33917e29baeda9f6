"""pygpt.gmm: API, shapes and types, errors, degenerate data, k-means, sampling, criteria."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pygpt.gmm._validation import ConvergenceWarning, NotFittedError
from pygpt.gmm.kmeans import KMeans
from pygpt.gmm.mixture import GaussianMixture
from pygpt.gmm.plots import full_covariances
from pygpt.gmm.selection import select_n_components
from pygpt.gmm.synthetic import make_mixture

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def blobs():
    X, y, truth = make_mixture(1500, dim=2, k=3, seed=0)
    return X, y, truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Labels a and b describe the same clustering up to renaming."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of points whose label's majority true class is their own (renaming-invariant)."""
    hits = 0
    for k in np.unique(labels):
        hits += np.bincount(truth[labels == k]).max()
    return hits / len(labels)


# ----------------------------------------------------------------------------- synthetic data


def test_make_mixture_shapes_seed_and_params():
    X, y, p = make_mixture(500, dim=5, k=4, seed=1)
    assert X.shape == (500, 5) and X.dtype == np.float64
    assert y.shape == (500,) and y.dtype == np.int64 and set(y.tolist()) <= set(range(4))
    assert p.weights.shape == (4,) and p.means.shape == (4, 5) and p.covariances.shape == (4, 5, 5)
    assert p.weights.sum() == pytest.approx(1.0)
    assert np.all(np.linalg.eigvalsh(p.covariances) > 0)
    X2, y2, _ = make_mixture(500, dim=5, k=4, seed=1)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _, _ = make_mixture(500, dim=5, k=4, seed=2)
    assert not np.allclose(X, X3)


def test_make_mixture_given_params_noise_and_structure():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    covs = np.stack([np.eye(2), 4 * np.eye(2)])
    X, y, p = make_mixture(20000, dim=2, k=2, means=means, covariances=covs, weights=[0.25, 0.75], seed=0)
    assert np.mean(y == 1) == pytest.approx(0.75, abs=0.02)
    np.testing.assert_allclose(X[y == 1].mean(0), [10, 0], atol=0.06)
    np.testing.assert_allclose(np.cov(X[y == 1].T), 4 * np.eye(2), atol=0.15)
    Xn, yn, _ = make_mixture(20000, dim=2, k=2, means=means, covariances=covs, weights=[0.25, 0.75], noise=1.0, seed=0)
    np.testing.assert_allclose(np.cov(Xn[yn == 1].T), 5 * np.eye(2), atol=0.2)  # cov + noise^2 I
    _, _, pd = make_mixture(10, dim=3, k=3, covariance_type="diag", seed=0)
    assert np.allclose(pd.covariances, np.stack([np.diag(np.diag(c)) for c in pd.covariances]))
    _, _, pt = make_mixture(10, dim=3, k=3, covariance_type="tied", seed=0)
    assert np.allclose(pt.covariances, pt.covariances[0])
    with pytest.raises(ValueError, match="means"):
        make_mixture(10, dim=2, k=2, means=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="weights"):
        make_mixture(10, dim=2, k=2, weights=[0.5, 0.6])


# ----------------------------------------------------------------------------- API and types


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fit_attributes_shapes_and_history(blobs, cov_type):
    X, _, _ = blobs
    g = GaussianMixture(3, covariance_type=cov_type, random_state=0)
    assert g.fit(X) is g
    K, D = 3, 2
    shapes = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}
    assert g.weights_.shape == (K,) and g.means_.shape == (K, D)
    assert g.covariances_.shape == shapes[cov_type]
    assert g.precisions_cholesky_.shape == shapes[cov_type]
    assert g.precisions_.shape == shapes[cov_type]
    assert isinstance(g.weights_, np.ndarray) and g.weights_.dtype == np.float64
    assert g.weights_.sum() == pytest.approx(1.0)
    assert g.converged_ and 1 <= g.n_iter_ <= g.max_iter
    assert g.history_.shape == (g.n_iter_,) and g.history_[-1] == g.lower_bound_
    # EM never decreases the likelihood (up to rounding).
    assert np.all(np.diff(g.history_) > -1e-10)
    assert g.score(X) >= g.lower_bound_ - 1e-10
    if cov_type in ("full", "tied"):
        prec = g.precisions_cholesky_ @ np.swapaxes(g.precisions_cholesky_, -1, -2)
        np.testing.assert_allclose(prec @ g.covariances_, np.broadcast_to(np.eye(D), prec.shape), atol=1e-8)


def test_predict_types_follow_input(blobs):
    X, y, _ = blobs
    g = GaussianMixture(3, random_state=0).fit(X)
    labels = g.predict(X)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64 and labels.shape == (len(X),)
    assert _agreement(labels, y) > 0.95
    Xt = torch.from_numpy(X)
    lt = g.predict(Xt)
    assert isinstance(lt, torch.Tensor) and lt.dtype == torch.int64
    np.testing.assert_array_equal(lt.numpy(), labels)
    proba = g.predict_proba(Xt.float())
    assert isinstance(proba, torch.Tensor) and proba.shape == (len(X), 3)
    torch.testing.assert_close(proba.sum(1), torch.ones(len(X), dtype=proba.dtype))
    ss = g.score_samples(X)
    assert ss.shape == (len(X),) and np.all(np.isfinite(ss))
    assert g.score(X) == pytest.approx(ss.mean())
    np.testing.assert_array_equal(g.fit_predict(X), g.predict(X))
    assert isinstance(g.fit_predict(Xt), torch.Tensor)
    assert g.predict(X.tolist()).shape == (len(X),)  # plain lists are accepted too


def test_chunking_and_float32(blobs):
    X, _, _ = blobs
    a = GaussianMixture(3, random_state=0).fit(X)
    b = GaussianMixture(3, random_state=0, chunk_size=7).fit(X)
    np.testing.assert_allclose(a.history_, b.history_, rtol=1e-12)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.score_samples(X), b.score_samples(X), rtol=1e-12)
    c = GaussianMixture(3, random_state=0, dtype=torch.float32).fit(X)
    assert c.means_.dtype == np.float32
    assert c.score(X) == pytest.approx(a.score(X), abs=1e-3)


def test_random_state_n_init_and_inits(blobs):
    X, _, _ = blobs
    a = GaussianMixture(3, random_state=5, init_params="random").fit(X)
    b = GaussianMixture(3, random_state=5, init_params="random").fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    for init in ("kmeans", "k-means++", "random", "random_from_data"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            g = GaussianMixture(3, init_params=init, n_init=3, random_state=0, max_iter=300).fit(X)
        assert np.isfinite(g.lower_bound_), init


def test_n_init_keeps_the_best_restart(monkeypatch):
    """n_init keeps the restart with the highest final log-likelihood: each restart's initial parameters are
    recorded and refitted alone (the user-init path runs the same EM), and the kept lower bound is their maximum
    - on data where the restarts end in different optima."""
    X, _, _ = make_mixture(600, dim=2, k=6, seed=3)
    inits = []
    original = GaussianMixture._initialize

    def recording(self, Xt, gen):
        params = original(self, Xt, gen)
        inits.append(params)
        return params
    monkeypatch.setattr(GaussianMixture, "_initialize", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = GaussianMixture(6, init_params="random", n_init=5, random_state=0, max_iter=500).fit(X)
        monkeypatch.undo()
        alone = [GaussianMixture(6, max_iter=500, weights_init=p.weights.numpy(), means_init=p.means.numpy(),
                                 precisions_init=(p.precisions_cholesky @ p.precisions_cholesky.mT).numpy()
                                 ).fit(X).lower_bound_ for p in inits]
    assert len(inits) == 5 and max(alone) - min(alone) > 1e-3  # the restarts really differ
    assert best.lower_bound_ == pytest.approx(max(alone), rel=1e-9)


@pytest.mark.parametrize("shift, scale", [(300.0, 0.01), (1e5, 1.0)])
def test_float32_kmeans_and_init_far_from_the_origin(shift, scale):
    """k-means (and so the GMM's k-means init) in float32, the CUDA default, on data far from the origin: the
    same clusters as float64 (before, ||c||^2 - 2 c.x on raw data lost the digits that tell centres apart)."""
    X, y, _ = make_mixture(3000, dim=2, k=3, seed=1)
    X = X * scale + shift
    km32 = KMeans(3, dtype=torch.float32, random_state=0).fit(X)
    km64 = KMeans(3, random_state=0).fit(X)
    assert _same_partition(km32.labels_, km64.labels_)
    assert (km32.predict(X) == km32.labels_).all()
    np.testing.assert_allclose(km32.cluster_centers_, km64.cluster_centers_, rtol=1e-5, atol=1e-3 * scale)
    g32 = GaussianMixture(3, dtype=torch.float32, random_state=0).fit(X)
    g64 = GaussianMixture(3, random_state=0).fit(X)
    assert _same_partition(g32.predict(X), g64.predict(X))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_a_model_fitted_on_a_gpu_predicts_on_a_cpu_only_machine(blobs):
    X, _, _ = blobs
    g = GaussianMixture(3, random_state=0).fit(X)
    labels = g.predict(X)
    g._fit_device = torch.device("cuda", 0)  # as unpickled from a GPU machine
    assert (g.predict(X) == labels).all() and g.sample(5)[0].shape == (5, 2)


@pytest.mark.parametrize("change", [dict(n_components=4), dict(covariance_type="diag")])
def test_warm_start_with_another_shape_is_a_clear_error(blobs, change):
    X, _, _ = blobs
    g = GaussianMixture(3, warm_start=True, random_state=0).fit(X)
    g.set_params(**change)
    with pytest.raises(ValueError, match="warm_start: the fitted model has 3 components"):
        g.fit(X)


def test_warm_start_and_max_iter_zero(blobs):
    X, _, _ = blobs
    full = GaussianMixture(3, random_state=0, tol=0.0, max_iter=8)
    with pytest.warns(ConvergenceWarning):
        full.fit(X)
    steps = GaussianMixture(3, random_state=0, tol=0.0, max_iter=1, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(8):
            steps.fit(X)
    np.testing.assert_allclose(steps.means_, full.means_, rtol=1e-10)
    assert steps.lower_bound_ == pytest.approx(full.lower_bound_, rel=1e-12)
    # max_iter=0 keeps the initial parameters (here: the user's).
    w, mu = np.full(3, 1 / 3), X[:3]
    prec = np.stack([np.diag([4.0, 0.25]), np.eye(2), [[2.0, 0.5], [0.5, 1.0]]])  # covariances are the inverses
    g0 = GaussianMixture(3, max_iter=0, weights_init=w, means_init=mu, precisions_init=prec).fit(X)
    np.testing.assert_allclose(g0.means_, mu)
    np.testing.assert_allclose(g0.covariances_, np.linalg.inv(prec), atol=1e-12)
    assert g0.n_iter_ == 0


def test_not_fitted_and_feature_mismatch(blobs):
    X, _, _ = blobs
    with pytest.raises(NotFittedError):
        GaussianMixture(2).predict(X)
    g = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        g.predict(np.zeros((4, 3)))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(blobs, bad):
    X = blobs[0].copy()
    X[7, 1] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixture(2).fit(torch.from_numpy(X))
    with pytest.raises(ValueError, match="NaN or infinity"):
        KMeans(2).fit(X)
    g = GaussianMixture(2, random_state=0).fit(blobs[0])
    for method in (g.predict, g.predict_proba, g.score, g.score_samples):
        with pytest.raises(ValueError, match="NaN or infinity"):
            method(X)


@pytest.mark.parametrize("shape", [(10,), (2, 5, 2), ()])
def test_wrong_ndim_is_rejected(shape):
    with pytest.raises(ValueError, match=r"X must be a 2-D array of shape \(n_samples, n_features\)"):
        GaussianMixture(1).fit(np.ones(shape))


def test_parameter_errors_name_the_argument(blobs):
    X = blobs[0]
    with pytest.raises(ValueError, match=r"n_samples=3 must be >= n_components=4"):
        GaussianMixture(4).fit(X[:3])
    with pytest.raises(ValueError,
                       match=r"covariance_type must be one of 'full', 'tied', 'diag', 'spherical'; got 'fuller'"):
        GaussianMixture(2, covariance_type="fuller").fit(X)
    with pytest.raises(ValueError,
                       match=r"init_params must be one of 'kmeans', 'k-means\+\+', 'random', 'random_from_data'"):
        GaussianMixture(2, init_params="best").fit(X)
    for kwargs, name in [
        ({"n_components": 0}, "n_components"),
        ({"tol": -1.0}, "tol"),
        ({"reg_covar": -1e-3}, "reg_covar"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"n_threads": 0}, "n_threads"),
    ]:
        args = {"n_components": 2, **kwargs}
        with pytest.raises(ValueError, match=name):
            GaussianMixture(**args).fit(X)
    with pytest.raises(ValueError, match="weights_init"):
        GaussianMixture(2, weights_init=[0.5, 0.6]).fit(X)
    with pytest.raises(ValueError, match="means_init"):
        GaussianMixture(2, means_init=np.zeros((3, 2))).fit(X)
    with pytest.raises(ValueError, match="precisions_init"):
        GaussianMixture(2, covariance_type="diag", precisions_init=np.ones((2, 3))).fit(X)
    with pytest.raises(ValueError, match="precisions_init"):
        GaussianMixture(2, precisions_init=np.stack([-np.eye(2)] * 2)).fit(X)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            GaussianMixture(2, device="cuda").fit(X)
    with pytest.raises(ValueError, match="Invalid parameter"):
        GaussianMixture(2).set_params(colour="red")


# ----------------------------------------------------------------------------- degenerate data


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_duplicate_points_are_regularised(cov_type):
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, -2.0]]), 20, axis=0)
    g = GaussianMixture(3, covariance_type=cov_type, random_state=0).fit(X)
    assert np.isfinite(g.lower_bound_) and np.all(np.isfinite(g.history_))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(g, name))), name
    assert np.all(np.isfinite(g.score_samples(X)))
    assert _same_partition(g.predict(X), np.repeat([0, 1, 2], 20))


def test_more_components_than_distinct_points():
    X = np.repeat(np.array([[0.0, 0.0], [3.0, 3.0]]), 10, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for init in ("kmeans", "k-means++", "random", "random_from_data"):
            g = GaussianMixture(5, init_params=init, random_state=0).fit(X)
            assert np.isfinite(g.lower_bound_), init
            assert np.all(np.isfinite(g.means_)) and np.all(np.isfinite(g.covariances_)), init
            assert np.isfinite(g.score(X)), init


def test_collapsing_component_without_regularisation_is_a_clear_error():
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, -2.0]]), 20, axis=0)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(3, reg_covar=0.0, random_state=0).fit(X)
    # A single isolated point grabbed by one component: reg_covar keeps it finite.
    Y, _, _ = make_mixture(300, dim=2, k=2, seed=4)
    Y = np.vstack([Y, [[50.0, 50.0]]])
    g = GaussianMixture(3, random_state=0).fit(Y)
    assert np.isfinite(g.lower_bound_)
    assert np.min(np.linalg.eigvalsh(g.covariances_)) >= 1e-6 * (1 - 1e-6)


# ----------------------------------------------------------------------------- k-means


def test_kmeans_matches_sklearn_on_separated_blobs():
    sk_cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, y, _ = make_mixture(3000, dim=3, k=5, spread=20.0, seed=2)
    km = KMeans(5, n_init=3, random_state=0).fit(X)
    with threadpoolctl.threadpool_limits(1):
        ref = sk_cluster.KMeans(5, n_init=3, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)
    assert _same_partition(km.labels_, ref.labels_) and _same_partition(km.labels_, y)
    assert km.cluster_centers_.shape == (5, 3) and km.labels_.shape == (3000,)
    order = lambda c: c[np.lexsort(c.T)]  # noqa: E731
    np.testing.assert_allclose(order(km.cluster_centers_), order(ref.cluster_centers_), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert isinstance(km.predict(torch.from_numpy(X)), torch.Tensor)
    assert km.n_iter_ >= 1


def test_kmeans_init_options_and_errors():
    X, _, _ = make_mixture(400, dim=2, k=3, seed=5)
    a = KMeans(3, init="random", n_init=4, random_state=1).fit(X)
    b = KMeans(3, init=a.cluster_centers_).fit(X)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-12)
    assert b.n_iter_ == 1
    with pytest.raises(ValueError, match="n_clusters"):
        KMeans(500).fit(X)
    with pytest.raises(ValueError, match="init"):
        KMeans(3, init="best").fit(X)
    with pytest.raises(NotFittedError):
        KMeans(3).predict(X)


# ----------------------------------------------------------------------------- sampling and criteria


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_shape_and_statistics(cov_type):
    X, _, _ = make_mixture(2000, dim=2, k=2, spread=6.0, covariance_type=cov_type, seed=6)
    g = GaussianMixture(2, covariance_type=cov_type, random_state=0).fit(X)
    S, y = g.sample(40000)
    assert S.shape == (40000, 2) and y.shape == (40000,) and S.dtype == np.float64
    np.testing.assert_allclose(np.bincount(y, minlength=2) / 40000, g.weights_, atol=0.01)
    covs = full_covariances(g.covariances_, cov_type, 2, 2)
    for k in range(2):
        np.testing.assert_allclose(S[y == k].mean(0), g.means_[k], atol=0.05 * np.sqrt(covs[k].max()) + 0.02)
        np.testing.assert_allclose(np.cov(S[y == k].T), covs[k], atol=0.06 * covs[k].max())
    St, yt = g.sample(5, as_tensor=True)
    assert isinstance(St, torch.Tensor) and St.shape == (5, 2) and yt.shape == (5,)
    np.testing.assert_array_equal(g.sample(10)[0], g.sample(10)[0])  # int random_state: reproducible


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_bic_aic_formula(blobs, cov_type):
    X, _, _ = blobs
    g = GaussianMixture(3, covariance_type=cov_type, random_state=0).fit(X)
    n, d, k = X.shape[0], 2, 3
    n_cov = {"full": k * d * (d + 1) / 2, "tied": d * (d + 1) / 2, "diag": k * d, "spherical": k}[cov_type]
    p = n_cov + k * d + k - 1
    ll = g.score(X) * n
    assert g.bic(X) == pytest.approx(-2 * ll + p * np.log(n), rel=1e-12)
    assert g.aic(X) == pytest.approx(-2 * ll + 2 * p, rel=1e-12)
    sk_mixture = pytest.importorskip("sklearn.mixture")
    ref = sk_mixture.GaussianMixture(3, covariance_type=cov_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(ref, name, getattr(g, name))
    ref.n_features_in_ = 2
    assert g.bic(X) == pytest.approx(ref.bic(X), rel=1e-10)
    assert g.aic(X) == pytest.approx(ref.aic(X), rel=1e-10)


def test_select_n_components_finds_true_k():
    X, _, _ = make_mixture(1200, dim=2, k=4, spread=12.0, seed=7)
    sel = select_n_components(X, range(1, 7), "bic", random_state=0)
    assert sel.best_k == 4
    assert [row["k"] for row in sel.table] == list(range(1, 7))
    assert set(sel.table[0]) >= {"k", "bic", "aic", "log_likelihood", "n_iter", "converged"}
    assert sel.best_model.n_components == 4
    assert sel.table[3]["bic"] == pytest.approx(sel.best_model.bic(X), rel=1e-10)
    best_aic = select_n_components(X, [2, 3, 4, 5], "aic", covariance_type="diag", random_state=0)
    assert best_aic.best_k in (4, 5)
    with pytest.raises(ValueError, match="criterion"):
        select_n_components(X, [1, 2], "hqic")
    with pytest.raises(ValueError, match="k_range"):
        select_n_components(X, [])
