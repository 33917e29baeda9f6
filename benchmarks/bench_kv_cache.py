"""Time one token of cache upkeep - append the new k/v rows and evict the oldest entry - for a contiguous cache
that Torch shifts by one position against pygpt's ring buffer (kv_append + kv_evict), in the same run.

    python benchmarks/bench_kv_cache.py                 # CUDA (bf16) when available: both CUDA-graphed
    python benchmarks/bench_kv_cache.py --device cpu --threads 2
    python benchmarks/bench_kv_cache.py --cuda-backend cuda   # the CUDA C++ kernels instead of Triton

The Torch side is the obvious sliding cache (B, Hkv, L, D): drop position 0 by moving every other row one slot
left, write the new row last - its cost grows with the cache. The ring buffer writes the new rows at their slot
and moves two counters, whatever the cache size. GB/s is not shown: the ring buffer moves one row, not the cache.
"""

import torch

import pygpt.ops as ops
from pygpt.benchmark import Comparison, apply_benchmark_args, benchmark_parser, cuda_graphed, print_comparisons, time_ms
from pygpt.ops.kv_cache import kv_append_reference, kv_evict_reference

# (B, Hkv, D, L): the KV-cache issue's Torch figure is the shift of B32 H32 D128 L4096
GPU_CASES = [(1, 6, 64, 256), (32, 32, 128, 1024), (32, 32, 128, 4096), (32, 32, 128, 16384)]
CPU_CASES = [(1, 4, 32, 128), (1, 6, 64, 256), (8, 8, 64, 1024), (32, 32, 128, 512)]


def torch_shift(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Evict the oldest position of a full contiguous cache (B, Hkv, L, D) by shifting, append k, v (B, 1, Hkv, D)."""
    for cache, row in ((k_cache, k), (v_cache, v)):
        cache[:, :, :-1] = cache[:, :, 1:].clone()  # overlapping copy: through a temporary
        cache[:, :, -1] = row[:, 0]


def ring_step(k_cache, v_cache, lengths, starts, k, v, one) -> None:
    """Append one token to every sequence of the ring buffer, then evict its oldest entry."""
    ops.kv_append(k_cache, v_cache, lengths, starts, k, v)
    ops.kv_evict(lengths, starts, one)


def check_ring_step(B, Hkv, D, L, device, dtype) -> None:
    """The kernels' append + evict leave the same cache and counters as the references."""
    k, v = (torch.randn(B, 1, Hkv, D, device=device, dtype=dtype) for _ in range(2))
    state = [torch.randn(B, Hkv, L, D, device=device, dtype=dtype) for _ in range(2)]
    state += [torch.full((B,), L - 1, device=device, dtype=torch.int32),
              torch.zeros(B, device=device, dtype=torch.int32)]
    one = torch.ones(B, device=device, dtype=torch.int32)
    expected = [t.clone() for t in state]
    ring_step(*state, k, v, one)
    kv_append_reference(*expected, k, v)
    kv_evict_reference(*expected[2:], one)
    for got, want in zip(state, expected):
        if not torch.equal(got, want):
            raise AssertionError(f"kv_append + kv_evict differ from the reference at B{B} H{Hkv} D{D} L{L}")


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    device, dtype, kernel = apply_benchmark_args(args)

    rows = []
    for B, Hkv, D, L in GPU_CASES if device.type == "cuda" else CPU_CASES:
        check_ring_step(B, Hkv, D, L, device, dtype)
        k, v = (torch.randn(B, 1, Hkv, D, device=device, dtype=dtype) for _ in range(2))
        k_cache, v_cache = (torch.randn(B, Hkv, L, D, device=device, dtype=dtype) for _ in range(2))
        lengths = torch.full((B,), L, device=device, dtype=torch.int32)
        starts = torch.zeros_like(lengths)
        one = torch.ones_like(lengths)
        shift = time_ms(cuda_graphed(lambda: torch_shift(k_cache, v_cache, k, v), device), device)
        ring = time_ms(cuda_graphed(lambda: ring_step(k_cache, v_cache, lengths, starts, k, v, one), device), device)
        rows.append(Comparison(f"B{B} H{Hkv} D{D} L{L}", shift, ring))
    graphs = ", CUDA-graphed" if device.type == "cuda" else ""
    print_comparisons(f"KV cache upkeep per token (append + evict 1), {str(dtype).removeprefix('torch.')}{graphs}",
                      device, rows, kernel)


if __name__ == "__main__":
    main()
