"""The benchmark scripts' own Torch baselines and checks: a baseline that computed something else would make
every ratio it prints meaningless, so each is compared with the op's reference here (CPU, small shapes)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pygpt.benchmark import Comparison, print_comparisons
from pygpt.ops.kv_cache import rope_decode_attention_reference
from pygpt.testing import assert_close

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("B, H, Hkv, D, C, length, start", [
    (1, 4, 4, 32, 16, 16, 0),   # full cache: the step overwrites the oldest slot
    (3, 8, 2, 16, 12, 5, 0),    # partly filled, GQA
    (2, 4, 1, 8, 10, 37, 30),   # wrapped several times, with evicted entries
])
def test_torch_decode_step_matches_the_reference(B, H, Hkv, D, C, length, start):
    bench = load("bench_decode_attention")
    torch.manual_seed(0)
    q = torch.randn(B, 1, H, D, dtype=torch.float64)
    k, v = torch.randn(B, 1, Hkv, D, dtype=torch.float64), torch.randn(B, 1, Hkv, D, dtype=torch.float64)
    cache = [torch.randn(B, Hkv, C, D, dtype=torch.float64) for _ in range(2)]
    cache += [torch.full((B,), length, dtype=torch.int32), torch.full((B,), start, dtype=torch.int32)]
    expected_cache = [t.clone() for t in cache]
    expected = rope_decode_attention_reference(q, k, v, *expected_cache)
    out = bench.torch_decode_step(q, k, v, *cache)
    assert_close(out, expected, torch.float64)
    for got, want in zip(cache, expected_cache):
        assert torch.equal(got, want)  # same slots written, same counters


def test_decode_benchmark_check_passes_for_the_cpu_kernel():
    bench = load("bench_decode_attention")
    q = torch.randn(2, 1, 4, 16)
    k, v = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    bench.check_step(q, k, v, bench.full_cache(2, 2, 16, 24, "cpu", torch.float32), torch.float32)


def test_torch_shift_drops_the_oldest_and_appends():
    bench = load("bench_kv_cache")
    k_cache, v_cache = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    before = k_cache.clone(), v_cache.clone()
    bench.torch_shift(k_cache, v_cache, k, v)
    for cache, old, row in ((k_cache, before[0], k), (v_cache, before[1], v)):
        assert torch.equal(cache[:, :, :-1], old[:, :, 1:])
        assert torch.equal(cache[:, :, -1], row[:, 0])


def test_kv_benchmark_check_passes_for_the_cpu_kernels():
    load("bench_kv_cache").check_ring_step(2, 3, 8, 6, "cpu", torch.float32)


def test_comparison_table_shows_the_share_of_copy_bandwidth(capsys):
    rows = [Comparison("case a", 2.0, 1.0, bytes_moved=3_000_000), Comparison("case b", 1.0, 4.0)]
    print_comparisons("demo", "cpu", rows, "cpp", peak_gbs=6.0)
    lines = capsys.readouterr().out.splitlines()
    assert "6.0 GB/s" in lines[1]
    assert lines[3].split()[-3:] == ["2.00x", "3.0", "50.0%"]  # 3 MB in 1 ms = 3 GB/s = half of 6
    assert lines[4].split()[-3:] == ["0.25x", "-", "-"]


def test_attention_tile_sweep_checks_and_times_every_candidate(needs_triton, capsys):
    """The sweep's own run (tiny shapes, interpreted tiles): every kernel, every candidate timed against the table
    tile, which is marked; nothing flagged wrong (the candidates compute the same attention)."""
    sweep = load("sweep_attention_tiles")
    if torch.cuda.is_available():
        pytest.skip("the smoke sweep runs interpreted; on a GPU run the sweep itself")
    assert sweep.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for kernel in ("fwd", "dkdv", "dq"):
        block = out.split(f"{kernel} B1 T33")[1].split("table tile")[1].splitlines()[1:4]
        assert len(block) == len(sweep.candidates(smoke=True)) and all(" ms " in row for row in block), block
        assert sum("<- table" in row for row in block) == 1
    assert "WRONG" not in out and "failed" not in out


def test_attention_tile_sweep_rejects_a_wrong_or_nan_candidate():
    sweep = load("sweep_attention_tiles")
    want = (torch.randn(4, 8), torch.randn(4))
    assert sweep.agrees(tuple(t + 1e-6 for t in want), want, torch.float32)
    assert not sweep.agrees((want[0] * 1.01, want[1]), want, torch.float32)
    assert not sweep.agrees((want[0], want[1].flip(0)), want, torch.bfloat16)
    nan = want[0].clone()
    nan[1, 2] = float("nan")
    assert not sweep.agrees((nan, want[1]), want, torch.bfloat16)
