"""The CPU simulator of tests/cuda_sim, which runs the CUDA C++ kernels (csrc/cuda/*.cu) in the tests without a
GPU: its intrinsics against their definitions; broken kernels (a barrier some threads skip or meet at another
line, a shuffle over a partial warp, bad launch configurations) fail as they would, or should, on a GPU; and
missing barriers show as wrong results (at once, or under some CUDA_SIM_SCHEDULE_SEED). The kernels themselves
are tested on it next to their other implementations (test_rotary.py, test_kv_cache.py, test_sampling.py)."""

import pytest
import torch

from pygpt.testing import assert_close


@pytest.mark.parametrize("threads, signs", [(32, "mixed"), (96, "mixed"), (512, "mixed"), (64, "negative")])
def test_simulated_intrinsics(cuda_sim, threads, signs):
    x = torch.randn(threads)
    x = -x.abs() if signs == "negative" else x
    out = cuda_sim.sim_intrinsics(x)
    lanes = x.view(-1, 32)
    bits = (lanes > 0).long() * (2 ** torch.arange(32))
    source = (7 * torch.arange(32) + 3) % 32
    want = torch.stack([
        lanes.sum(1, keepdim=True).expand(-1, 32).reshape(-1),
        lanes.cumsum(1).reshape(-1),
        bits.sum(1, keepdim=True).expand(-1, 32).reshape(-1).float(),
        lanes[:, source].reshape(-1),
        torch.full((threads,), float((x > 0).any())),
        torch.full((threads,), float(x.sum())),
    ], 1)
    assert_close(out, want.double(), torch.float32)


@pytest.mark.parametrize("which, blocks, match", [
    (0, 3, "deadlock: 32 of 64 threads wait at a barrier"),
    (1, 1, "__shfl_xor_sync needs a full mask"),
    (2, 1, r"block \(2048, 1, 1\) \(2048 threads a block"),
    (0, 0, "invalid launch configuration: 0 in a grid or block"),
    (3, 2, r"threads wait at different barriers: __syncthreads at .*selftest.cu:\d+ and another at"),
    (4, 1, r"block \(2, 1, 65\)"),
    (4, 70000, r"grid \(1, 70000, 1\)"),
])
def test_simulator_rejects_broken_kernels(cuda_sim, which, blocks, match):
    with pytest.raises(RuntimeError, match=match):
        cuda_sim.sim_broken(which, blocks)
    cuda_sim.sim_intrinsics(torch.ones(64))  # and the next launch runs


def test_simulator_shows_missing_barriers(cuda_sim, monkeypatch):
    """Shared memory is filled with NaN bytes when a block starts and threads run until they wait: a thread
    that reads what others have not written yet, or what another block wrote, gets NaN (a GPU may give stale
    data). A thread reading its predecessor's write passes in the default order, and fails under a drawn one."""
    monkeypatch.delenv("CUDA_SIM_SCHEDULE_SEED", raising=False)
    x = torch.rand(256) + 1.0
    for _ in range(2):  # (the second call too: nothing is left over from the first)
        assert torch.isnan(cuda_sim.sim_racy(0, x, 1)[0])
    out = cuda_sim.sim_racy(2, x, 4)
    assert out[0] == x[0] and torch.isnan(out[1:4]).all()
    want = torch.cat([torch.zeros(1), x[:-1]])
    assert torch.equal(cuda_sim.sim_racy(1, x, 1), want)
    caught = 0
    for seed in range(10):
        monkeypatch.setenv("CUDA_SIM_SCHEDULE_SEED", str(seed))
        caught += not torch.equal(cuda_sim.sim_racy(1, x, 1), want)
    assert caught >= 5, caught
