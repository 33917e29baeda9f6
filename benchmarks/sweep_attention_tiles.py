"""Time every candidate tile of the Triton attention kernels on a GPU against the tile in use.

    python benchmarks/sweep_attention_tiles.py                    # fwd, dkdv and dq at the attention issue's shapes
    python benchmarks/sweep_attention_tiles.py --kernel fwd --jobs 16
    python benchmarks/sweep_attention_tiles.py --aot              # no GPU: compile each candidate for sm_90 and
                                                                  # print its registers, spills and shared memory

The tile tables in kernels/rope_attention.py (_CONFIGS: BLOCK_M, BLOCK_N, num_warps, num_stages per kernel, head
dim and dtype) were chosen on a CPU, by what compiles for sm_90 within the limits; none was ever timed. This
sweep times them. Each candidate replaces the table's entry for one kernel (the others keep theirs), runs the
op's launcher (the forward alone for fwd; the whole backward for dkdv and dq, whose other launches stay the
same), is checked against the launcher with the table's own tile, and is timed with triton's do_bench (median).
Candidates compile first into Triton's cache in --jobs processes (pygpt.triton_aot), so the timing loop mostly
launches. Those that do not fit (shared memory, registers) are listed as such. Copy a winner into _CONFIGS by
hand, with the figure that chose it.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pygpt.benchmark import device_name, time_ms
from pygpt.kernels import rope_attention as kernels
from pygpt.ops.rotary import rope_cos_sin

Config = tuple[int, int, int, int]  # BLOCK_M, BLOCK_N, num_warps, num_stages


@dataclass(frozen=True)
class Sweep:
    kernel: str  # fwd | dkdv | dq
    shape: tuple[int, int, int, int, int]  # B, T, H, Hkv, D
    dtype: torch.dtype

    @property
    def name(self) -> str:
        B, T, H, Hkv, D = self.shape
        return f"{self.kernel} B{B} T{T} H{H}/{Hkv} D{D} {str(self.dtype).removeprefix('torch.')}"


# The attention issue's targets: prefill forward B8 H32 T2048 D128 and forward + backward at the heavy preset's
# B64 H6 T256 D64, both bf16.
SWEEPS = [Sweep("fwd", (8, 2048, 32, 32, 128), torch.bfloat16), Sweep("fwd", (64, 256, 6, 6, 64), torch.bfloat16),
          Sweep("dkdv", (64, 256, 6, 6, 64), torch.bfloat16), Sweep("dq", (64, 256, 6, 6, 64), torch.bfloat16)]
SMOKE = [Sweep(kernel, (1, 33, 2, 1, 16), torch.float32) for kernel in ("fwd", "dkdv", "dq")]


def candidates(smoke: bool = False) -> list[Config]:
    if smoke:  # under the CPU interpreter: a few small tiles
        return [(16, 16, 1, 1), (32, 16, 1, 1), (16, 32, 1, 1)]
    return [c for c in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
            if not (c[0] == 32 and c[2] == 8)]  # 32 rows over 8 warps leaves most of each warp idle


def table_config(sweep: Sweep) -> Config:
    return kernels._config(sweep.kernel, sweep.shape[-1], sweep.dtype)


def _patched(sweep: Sweep, config: Config | None):
    """A context in which kernels._config returns ``config`` for the sweep's kernel (None: the table's)."""
    import contextlib

    @contextlib.contextmanager
    def patch():
        original = kernels._config
        if config is not None:
            kernels._config = lambda kernel, D, dtype: config if kernel == sweep.kernel else original(kernel, D, dtype)
        try:
            yield
        finally:
            kernels._config = original
    return patch()


def make_run(sweep: Sweep, device: str | torch.device, empty: bool = False) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The launcher call the sweep times: the forward for fwd, the backward (given a forward's out and lse) for
    dkdv and dq. empty: uninitialised CPU tensors, for compiling only."""
    B, T, H, Hkv, D = sweep.shape
    make = torch.empty if empty else torch.randn
    qkv = make(B, T, (H + 2 * Hkv) * D, device=device).to(sweep.dtype)  # views of one projection, as the model
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
    cos, sin = rope_cos_sin(torch.arange(T, device=device)[None], D, 10000.0)
    scale = D ** -0.5
    if sweep.kernel == "fwd":
        return lambda: kernels.rope_attention_fwd_triton(q, k, v, cos, sin, scale, True)
    if empty:  # the backward's inputs as the forward would make them, without running it
        out, lse = torch.empty_like(q), torch.empty(B, H, T)
    else:
        with _patched(sweep, None):
            out, lse = kernels.rope_attention_fwd_triton(q, k, v, cos, sin, scale, True)
    grad = make(out.shape, device=device).to(sweep.dtype)
    return lambda: kernels.rope_attention_bwd_triton(grad, q, k, v, cos, sin, out, lse, scale, True)


def _compile(job: tuple[Sweep, Config, bool]) -> tuple[Config, str]:
    """Compile one candidate for sm_90 (into Triton's cache when warm); '' or what went wrong, with its cost."""
    from pygpt.triton_aot import compile_cases

    sweep, config, warm = job
    run = make_run(sweep, "cpu", empty=True)

    def launch():
        with _patched(sweep, config):
            run()
    try:
        records = compile_cases({sweep.name: launch}, warm=warm)
    except Exception as error:  # Triton's resource errors, or a tile its compiler rejects
        return config, f"does not compile: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    wanted = {"fwd": "_fwd", "dkdv": "_bwd_dkdv", "dq": "_bwd_dq"}[sweep.kernel]
    record = next(r for r in records if r.kernel == wanted)
    problems = record.problems()
    cost = f"shared {record.shared} B" + ("" if warm else f", {record.registers} regs, spill {record.spill_bytes} B")
    return config, ("does not fit: " + "; ".join(problems) if problems else "") + f" ({cost})"


def compile_all(sweep: Sweep, configs: list[Config], jobs: int, warm: bool) -> dict[Config, str]:
    work = [(sweep, c, warm) for c in configs]
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            return dict(pool.map(_compile, work, chunksize=1))
    return dict(map(_compile, work))


def agrees(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], dtype: torch.dtype) -> bool:
    """Whether a candidate's outputs match the table tile's: the same math in another order, so within a few
    roundings of the dtype (relative to each output's scale); NaN never agrees."""
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for a, b in zip(got, want):
        if not torch.isfinite(a).all():
            return False
        scale = b.double().abs().max().clamp(min=1.0)
        if ((a.double() - b.double()).abs().max() / scale).item() > tol:
            return False
    return True


def sweep_one(sweep: Sweep, device: torch.device, configs: list[Config], jobs: int,
              timer: Callable[[Callable[[], object]], float]) -> list[str]:
    current = table_config(sweep)
    notes = compile_all(sweep, configs, jobs, warm=True) if device.type == "cuda" else {}
    run = make_run(sweep, device)
    with _patched(sweep, current):
        want = run()
        base_ms = timer(run)
    rows = [(base_ms, current, "")]
    for config in configs:
        note = notes.get(config, "")
        if config == current:
            continue
        if note.startswith("does not"):
            rows.append((float("inf"), config, note))
            continue
        try:
            with _patched(sweep, config):
                ok = agrees(run(), want, sweep.dtype)
                ms = timer(run) if ok else float("inf")
        except Exception as error:  # out of resources at launch
            rows.append((float("inf"), config, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"))
            continue
        rows.append((ms, config, "" if ok else "WRONG: differs from the table tile's output"))
    rows.sort(key=lambda r: r[0])
    lines = [f"{sweep.name}: table tile {current} {base_ms:.4f} ms"]
    for ms, config, note in rows:
        mark = " <- table" if config == current else ""
        timing = f"{ms:9.4f} ms {base_ms / ms:6.2f}x" if ms != float("inf") else f"{'-':>12} {'':7}"
        lines.append(f"  {str(config):20} {timing}{mark} {note}".rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=["fwd", "dkdv", "dq"], default=None, help="one kernel (default: all)")
    parser.add_argument("--jobs", type=int, default=8, help="processes compiling candidates (default 8)")
    parser.add_argument("--aot", action="store_true", help="no GPU: compile the candidates for sm_90, report costs")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and tiles (CPU interpreter), for tests")
    args = parser.parse_args(argv)
    sweeps = [s for s in (SMOKE if args.smoke else SWEEPS) if args.kernel in (None, s.kernel)]
    configs = candidates(args.smoke)
    if args.aot:
        for sweep in sweeps:
            print(f"{sweep.name}: table tile {table_config(sweep)}, compiled for sm_90", flush=True)
            for config, note in sorted(compile_all(sweep, configs, args.jobs, warm=False).items()):
                print(f"  {str(config):20} {note}")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        print("no GPU here: time the tiles on one, pass --aot to compile them for sm_90, or --smoke with "
              "TRITON_INTERPRET=1 to run the sweep itself on tiny shapes", file=sys.stderr)
        return 2
    print(f"attention tile sweep on {device_name(device)} (torch {torch.__version__}); "
          f"{len(configs)} candidates per kernel; median times (triton's do_bench on CUDA)", flush=True)
    if args.smoke:  # interpreted: a couple of calls say that it runs, not how fast
        def timer(fn):
            return time_ms(fn, device, warmup=0, rep=2)
    else:
        def timer(fn):
            return time_ms(fn, device)
    for sweep in sweeps:
        print("\n".join(sweep_one(sweep, device, configs, args.jobs, timer)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
