"""Time rotary: the Torch reference against pygpt's kernel (Triton on CUDA, C++ on CPU) in the same run.

    python benchmarks/bench_rotary.py                 # CUDA if available, else CPU
    python benchmarks/bench_rotary.py --device cpu --threads 2
    python benchmarks/bench_rotary.py --cuda-backend cuda   # the CUDA C++ kernel instead of Triton

The op is memory bound: GB/s counts x read + out written (positions are negligible); on CUDA, '% copy' compares
it with the same run's device-to-device copy (the foundation issue aims at >= 80%).
"""

import torch

import pygpt.ops as ops
from pygpt.benchmark import (Comparison, apply_benchmark_args, benchmark_parser, copy_bandwidth_gbs, print_comparisons,
                             time_ms)
from pygpt.ops.rotary import rotary_reference
from pygpt.testing import assert_close

GPU_SHAPES = [(8, 2048, 32, 128), (64, 256, 6, 64), (1, 1, 32, 128), (4, 4096, 8, 80)]
CPU_SHAPES = [(32, 128, 4, 32), (64, 256, 6, 64), (1, 1, 4, 32), (8, 1024, 8, 80)]


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    device, dtype, kernel = apply_benchmark_args(args)

    rows = []
    for B, T, H, D in GPU_SHAPES if device.type == "cuda" else CPU_SHAPES:
        x = torch.randn(B, T, H, D, device=device, dtype=dtype)
        positions = torch.arange(T, device=device).expand(B, T).contiguous()
        assert_close(ops.rotary(x, positions), rotary_reference(x.double(), positions), dtype)
        ref = time_ms(lambda: rotary_reference(x, positions), device)
        ker = time_ms(lambda: ops.rotary(x, positions), device)
        rows.append(Comparison(f"B{B} T{T} H{H} D{D}", ref, ker, 2 * x.numel() * x.element_size()))
    print_comparisons(f"rotary, {str(dtype).removeprefix('torch.')}", device, rows, kernel, copy_bandwidth_gbs(device))


if __name__ == "__main__":
    main()
