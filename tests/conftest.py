import os

import pytest
import torch

# Without a GPU, run every Triton kernel through Triton's CPU interpreter (must be set before triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# tests/cuda_sim (the CPU simulator that runs the CUDA C++ kernels here) imports as `cuda_sim`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_sim import sim_ops  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1":
    from triton_interpreter import round_bfloat16_like_a_gpu  # noqa: E402

    round_bfloat16_like_a_gpu()  # bfloat16 casts and dots as on a GPU (tests/triton_interpreter.py)


def pytest_configure(config):
    # Triton's interpreter before 3.7 turns a one-element numpy array into an int, which numpy >= 2.4 refuses
    # (triton-lang/triton#9171): every interpreted kernel would fail with "only 0-dimensional arrays can be
    # converted to Python scalars". Torch 2.11's triton 3.6 with the newest numpy is such a pair: say so once.
    if os.environ.get("TRITON_INTERPRET") != "1" or not HAS_TRITON:
        return
    import numpy
    import triton
    from packaging.version import Version

    triton_v, numpy_v = Version(triton.__version__), Version(numpy.__version__)
    if triton_v < Version("3.7") and numpy_v >= Version("2.4"):
        raise pytest.UsageError(
            f"triton {triton_v}'s CPU interpreter (TRITON_INTERPRET=1, used by the tests without a GPU) fails with "
            f"numpy {numpy_v}: install numpy<2.4 (pip install 'numpy<2.4') or triton>=3.7")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cuda_sim():
    """torch.ops.pygpt_cuda_sim: the CUDA C++ kernels built for the CPU simulator (tests/cuda_sim)."""
    return sim_ops()


@pytest.fixture
def needs_triton():
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install .[test])")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    """A small, learnable text file (a few KB) for training smoke tests."""
    lines = [f"the {a} {b} sat on the {c}.\n" for a in ("cat", "dog", "owl") for b in ("quietly", "happily")
             for c in ("mat", "log", "hat", "rug")]
    path = tmp_path / "tiny.txt"
    path.write_text("".join(lines) * 12)
    return path


@pytest.fixture
def shakespeare() -> Path:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path}")
    return path
