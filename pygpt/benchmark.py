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


@dataclass
class Comparison:
    case: str
    reference_ms: float
    kernel_ms: float
    bytes_moved: int | None = None

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.kernel_ms

    def row(self) -> str:
        bw = f"{self.bytes_moved / self.kernel_ms / 1e6:9.1f}" if self.bytes_moved else f"{'-':>9}"
        return f"{self.case:<34} {self.reference_ms:11.4f} {self.kernel_ms:11.4f} {self.speedup:8.2f}x {bw}"


def print_comparisons(title: str, device: torch.device | str, rows: list[Comparison], kernel_label: str) -> None:
    print(f"{title} on {device_name(device)} (torch {torch.__version__})")
    print(f"{'case':<34} {'torch ms':>11} {kernel_label + ' ms':>11} {'speedup':>9} {'GB/s':>9}")
    for r in rows:
        print(r.row())
