"""The CPU simulator of tests/cuda_sim, which runs the CUDA C++ kernels (csrc/cuda/*.cu) in the tests without a
GPU: its intrinsics against their definitions, and broken kernels (a barrier some threads skip, a shuffle over a
partial warp, a block too large, an empty grid, a missing barrier) fail as they would, or should, on a GPU. The
kernels themselves are tested on it next to their other implementations (test_rotary.py, test_kv_cache.py,
test_sampling.py)."""

import pytest
import torch

from pygpt.testing import assert_close


# ----------------------------------------------------------------------------------------------- the simulator
@pytest.mark.parametrize("threads", [32, 96, 512])
def test_simulated_intrinsics(cuda_sim, threads):
    x = torch.randn(threads)
    x[::3] = -x[::3].abs()
    out = cuda_sim.sim_intrinsics(x)
    lanes = x.view(-1, 32)
    bits = (lanes > 0).long() * (2 ** torch.arange(32))
    want = torch.stack([
        lanes.sum(1, keepdim=True).expand(-1, 32).reshape(-1),
        lanes.cumsum(1).reshape(-1),
        bits.sum(1, keepdim=True).expand(-1, 32).reshape(-1).float(),
        lanes[:, :1].expand(-1, 32).reshape(-1),
        torch.full((threads,), float((x > 0).any())),
        torch.full((threads,), float(x.sum())),
    ], 1)
    assert_close(out, want.double(), torch.float32)


@pytest.mark.parametrize("which, blocks, match", [
    (0, 3, "deadlock: 32 of 64 threads wait at a barrier"),
    (1, 1, "a warp intrinsic needs a full mask"),
    (2, 1, "2048 threads a block"),
    (0, 0, "invalid launch configuration: 0"),
])
def test_simulator_rejects_broken_kernels(cuda_sim, which, blocks, match):
    with pytest.raises(RuntimeError, match=match):
        cuda_sim.sim_broken(which, blocks)
    cuda_sim.sim_intrinsics(torch.ones(64))  # and the next launch runs


def test_simulator_does_not_hide_a_missing_barrier(cuda_sim):
    """Threads run until they wait, so one that reads shared memory without a barrier sees the others' writes
    missing, as a GPU may."""
    x = torch.rand(256) + 1.0
    assert abs(float(cuda_sim.sim_racy_sum(x)) - float(x.sum())) > 1.0
