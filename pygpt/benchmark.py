"""Timing helpers shared by benchmarks/ and `pygpt bench`: the reference and the kernel timed in the same run,
reported side by side with their ratio, the device name and the dtype (see ../shared/EVAL.md)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def time_ms(fn: Callable[[], object], device: torch.device | str, warmup: int = 5, rep: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds, synchronising the device around each call.

    On CUDA this is triton.testing.do_bench (median; it also flushes L2 between calls) when Triton is present.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except ImportError:
            pass
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(rep):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cuda_graphed(fn: Callable[[], object], device: torch.device | str) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph (a replay runs all its launches with no launch gaps), as a decode loop
    runs it; on a CPU device, ``fn`` itself. ``fn`` must not sync with the host; it runs 3 times to warm up
    (Triton compiles, cuBLAS handles) on a side stream before the capture."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth_gbs(device: torch.device | str, megabytes: int = 1024) -> float | None:
    """Measured device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written: the ceiling
    that a memory-bound kernel's GB/s is compared with (None on a CPU device)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    src = torch.randn(megabytes * 2**20 // 4, device=device)  # random, not zeros (see ../shared/EVAL.md)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / ms / 1e6


@dataclass
class Comparison:
    case: str
    reference_ms: float
    kernel_ms: float
    bytes_moved: int | None = None

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.kernel_ms

    @property
    def kernel_gbs(self) -> float | None:
        return self.bytes_moved / self.kernel_ms / 1e6 if self.bytes_moved else None

    def row(self, peak_gbs: float | None = None) -> str:
        gbs = self.kernel_gbs
        line = (f"{self.case:<34} {self.reference_ms:11.4f} {self.kernel_ms:11.4f} {self.speedup:8.2f}x "
                + (f"{gbs:9.1f}" if gbs else f"{'-':>9}"))
        if peak_gbs:
            line += f" {100 * gbs / peak_gbs:7.1f}%" if gbs else f" {'-':>8}"
        return line


def print_comparisons(title: str, device: torch.device | str, rows: list[Comparison], kernel_label: str,
                      peak_gbs: float | None = None) -> None:
    """The table of one benchmark; with ``peak_gbs`` (copy_bandwidth_gbs) also each kernel's share of it."""
    print(f"{title} on {device_name(device)} (torch {torch.__version__})")
    header = f"{'case':<34} {'torch ms':>11} {kernel_label + ' ms':>11} {'speedup':>9} {'GB/s':>9}"
    if peak_gbs:
        print(f"device-to-device copy: {peak_gbs:.1f} GB/s (read + write); '% copy' is the kernel's share of it")
        header += f" {'% copy':>8}"
    print(header)
    for r in rows:
        print(r.row(peak_gbs))


def benchmark_parser(doc: str | None, with_dtype: bool = True):
    """The options every benchmark script takes: --device, --threads, --cuda-backend (and --dtype)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if with_dtype:
        parser.add_argument("--dtype", default=None, help="float32|float16|bfloat16 (default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--cuda-backend", default="triton", choices=["triton", "cuda"])
    return parser


def apply_benchmark_args(args) -> tuple[torch.device, torch.dtype | None, str]:
    """Set threads and the CUDA backend from parsed benchmark options; return (device, dtype, kernel backend)."""
    import pygpt.ops as ops

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None
    if hasattr(args, "dtype"):
        dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    ops.set_backend(cuda_backend=args.cuda_backend)
    return device, dtype, ops.backend_for(device)
