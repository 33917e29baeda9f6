"""pygpt.gmm on CUDA: same EM as on CPU. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pygpt.gmm.kmeans import KMeans
from pygpt.gmm.mixture import GaussianMixture
from pygpt.gmm.synthetic import make_mixture

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def data():
    X, y, _ = make_mixture(4000, dim=3, k=4, seed=0, noise=0.1)
    return X, y


def _init(X: np.ndarray, k: int, cov_type: str) -> dict:
    rng = np.random.default_rng(0)
    d = X.shape[1]
    prec = {"full": np.stack([np.eye(d)] * k), "tied": np.eye(d), "diag": np.ones((k, d)),
            "spherical": np.ones(k)}[cov_type]
    return {"weights_init": np.full(k, 1 / k), "means_init": X[rng.choice(len(X), k, replace=False)],
            "precisions_init": prec}


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_cuda_float64_matches_cpu_every_iteration(data, cov_type):
    X, _ = data
    kw = dict(covariance_type=cov_type, tol=0.0, max_iter=25, **_init(X, 4, cov_type))
    with pytest.warns(Warning):
        cpu = GaussianMixture(4, **kw).fit(X)
    with pytest.warns(Warning):
        gpu = GaussianMixture(4, device="cuda", dtype=torch.float64, **kw).fit(X)
    np.testing.assert_allclose(gpu.history_, cpu.history_, rtol=1e-8)
    np.testing.assert_allclose(gpu.means_, cpu.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.covariances_, cpu.covariances_, rtol=1e-7, atol=1e-9)


def test_cuda_tensor_in_tensor_out_and_float32_default(data):
    X, _ = data
    Xc = torch.from_numpy(X).cuda()
    g = GaussianMixture(4, random_state=0).fit(Xc)  # device taken from the tensor
    assert g.means_.dtype == np.float32  # float32 is the CUDA default
    labels = g.predict(Xc)
    assert isinstance(labels, torch.Tensor) and labels.is_cuda and labels.shape == (len(X),)
    proba = g.predict_proba(Xc)
    assert proba.is_cuda and torch.allclose(proba.sum(1), torch.ones_like(proba[:, 0]), atol=1e-5)
    ref = GaussianMixture(4, random_state=0).fit(X)
    assert g.score(X) == pytest.approx(ref.score(X), abs=5e-3)
    S, y = g.sample(100, as_tensor=True)
    assert S.is_cuda and S.shape == (100, 3)


def test_cuda_kmeans_matches_cpu(data):
    X, _ = data
    cpu = KMeans(4, random_state=0).fit(X)
    gpu = KMeans(4, random_state=0, device="cuda", dtype=torch.float64).fit(X)
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-9)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)


def test_cuda_large_chunked_fit():
    X, _, _ = make_mixture(200_000, dim=3, k=8, seed=1)
    g = GaussianMixture(8, device="cuda", dtype=torch.float64, random_state=0, chunk_size=16384).fit(X)
    ref = GaussianMixture(8, device="cuda", dtype=torch.float64, random_state=0).fit(X)
    assert g.n_iter_ == ref.n_iter_
    assert g.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9)
    cpu = GaussianMixture(8, random_state=0).fit(X)
    assert g.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-9)
