"""Compile pygpt's Triton kernels ahead of time for a GPU that is not here, and report what each one costs.

Every CI machine and most dev boxes have no GPU, and the interpreter (TRITON_INTERPRET=1) checks a kernel's
numbers but never its compiled form: a kernel can pass every interpreted test and still fail to compile for
sm_90, or need more shared memory than an H100 block may have, or spill registers. Here each host launcher in
``pygpt.kernels`` runs on CPU tensors of the real shapes, but the launch itself is swapped for Triton's own
compiler (through ptxas, which ships with Triton) targeting the chosen architecture; nothing executes.

    python -m pygpt.triton_aot            # every kernel at the benchmarks' and presets' shapes, for sm_90

Must run without TRITON_INTERPRET (under it @triton.jit makes interpreted functions that cannot compile).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# Hopper (sm_90) per-block limits: 227 KB of opt-in shared memory, 64K 32-bit registers, 255 per thread.
SHARED_LIMIT = 232448
REGISTERS_PER_BLOCK = 65536
REGISTERS_PER_THREAD = 255


@dataclass(frozen=True)
class CompiledLaunch:
    """One specialisation of one kernel as the compiler produced it for the target."""

    case: str
    kernel: str
    constexprs: str
    num_warps: int
    num_stages: int
    shared: int  # bytes of shared memory per block
    registers: int  # per thread
    spill_bytes: int  # register spill stores per thread

    def problems(self) -> list[str]:
        """What would stop this launch on the target (an empty list when it fits)."""
        found = []
        if self.shared > SHARED_LIMIT:
            found.append(f"shared memory {self.shared} B > {SHARED_LIMIT} B")
        if self.registers * 32 * self.num_warps > REGISTERS_PER_BLOCK:
            found.append(f"{self.registers} registers x {32 * self.num_warps} threads > {REGISTERS_PER_BLOCK}")
        return found


def _ptxas_usage(log: str) -> tuple[int, int]:
    """(registers per thread, spill stores in bytes) from the ``ptxas -v`` log Triton prints when asked."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if regs is None:
        raise RuntimeError(f"no register count in the ptxas log:\n{log}")
    return int(regs.group(1)), int(spills.group(1)) if spills else 0


def _format_constexprs(constexprs: dict) -> str:
    return " ".join(f"{path[0] if isinstance(path, tuple) else path}={value}" for path, value in constexprs.items())


# Every specialisation compiled in this process (the same launch in several cases is compiled once).
_COMPILED: dict[tuple, tuple[str, object, str]] = {}


@contextlib.contextmanager
def compile_instead_of_launch(arch: int = 90, fresh_cache: bool = True) -> Iterator[list[tuple[str, object, str]]]:
    """Within the block, ``kernel[grid](...)`` compiles the kernel for sm_``arch`` and returns without running it.

    Yields a list that collects (constexprs, triton CompiledKernel, ptxas log) per launch, in launch order.
    fresh_cache=False compiles into Triton's own cache instead (no log for what was there already): on a GPU
    machine that warms the cache for the real launches of the same shapes, which then skip compiling.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("pygpt.triton_aot: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binders: dict[int, Callable] = {}
    compiled: list[tuple[str, object, str]] = []

    def run(self, *args, grid, warmup, **kwargs):
        # The options JITFunction.run adds before binding (which ones depends on the Triton version), so that a
        # kernel compiled here has the cache key of the real launch.
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
            if hasattr(knobs.compilation, name):
                kwargs[name] = getattr(knobs.compilation, name)
        binder = binders.setdefault(id(self), jit.create_function_from_signature(self.signature, self.params,
                                                                                 backend))
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        key = (self.fn.__module__, self.fn.__qualname__, arch,
               *(repr(x) for x in (signature, constexprs, attrs, sorted(options.__dict__.items()))))
        if key not in _COMPILED:
            log = io.StringIO()
            with contextlib.redirect_stdout(log):  # Triton prints ptxas's -v log (registers, spills) when asked
                kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
            _COMPILED[key] = (_format_constexprs(constexprs), kernel, log.getvalue())
        compiled.append(_COMPILED[key])
        return None

    original = jit.JITFunction.run
    saved = knobs.cache.dir, knobs.nvidia.dump_ptxas_log
    with tempfile.TemporaryDirectory() as cache:
        # A fresh cache so that every kernel really goes through ptxas (a cache hit prints no log).
        if fresh_cache:
            knobs.cache.dir, knobs.nvidia.dump_ptxas_log = cache, True
        jit.JITFunction.run = run
        try:
            yield compiled
        finally:
            jit.JITFunction.run = original
            knobs.cache.dir, knobs.nvidia.dump_ptxas_log = saved


# --------------------------------------------------------------------------------------------- the launches
def _rotary(B: int, T: int, H: int, D: int, dtype: torch.dtype) -> Callable[[], None]:
    def launch():
        from pygpt.kernels.rotary import rotary_triton

        rotary_triton(torch.empty(B, T, H, D, dtype=dtype), torch.zeros(B, T, dtype=torch.int64))
    return launch


def _attention(B: int, T: int, H: int, Hkv: int, D: int, dtype: torch.dtype, backward: bool) -> Callable[[], None]:
    def launch():
        from pygpt.kernels.rope_attention import rope_attention_bwd_triton, rope_attention_fwd_triton
        from pygpt.ops.rotary import rope_cos_sin

        q = torch.empty(B, T, H, D, dtype=dtype)
        k, v = torch.empty(B, T, Hkv, D, dtype=dtype), torch.empty(B, T, Hkv, D, dtype=dtype)
        cos, sin = rope_cos_sin(torch.arange(T)[None], D, 10000.0)
        out, lse = rope_attention_fwd_triton(q, k, v, cos, sin, D ** -0.5, True)
        if backward:
            rope_attention_bwd_triton(torch.empty_like(out), q, k, v, cos, sin, out, lse, D ** -0.5, True)
    return launch


def _decode(B: int, Tn: int, H: int, Hkv: int, D: int, C: int, dtype: torch.dtype) -> Callable[[], None]:
    def launch():
        from pygpt.kernels.decode_attention import rope_decode_attention_triton
        from pygpt.ops.rotary import rope_inv_freq

        q = torch.empty(B, Tn, H, D, dtype=dtype)
        k, v = torch.empty(B, Tn, Hkv, D, dtype=dtype), torch.empty(B, Tn, Hkv, D, dtype=dtype)
        cache = torch.empty(B, Hkv, C, D, dtype=dtype)
        counters = torch.zeros(B, dtype=torch.int64)
        rope_decode_attention_triton(q, k, v, cache, cache, counters, counters, D ** -0.5,
                                     rope_inv_freq(D, 10000.0, torch.device("cpu")), True)
    return launch


def _kv_cache(B: int, Tn: int, Hkv: int, D: int, C: int, dtype: torch.dtype) -> Callable[[], None]:
    def launch():
        from pygpt.kernels.kv_cache import kv_append_triton, kv_evict_triton

        cache = torch.empty(B, Hkv, C, D, dtype=dtype)
        counters = torch.zeros(B, dtype=torch.int64)
        kv_append_triton(cache, cache, counters, counters, torch.empty(B, Tn, Hkv, D, dtype=dtype),
                         torch.empty(B, Tn, Hkv, D, dtype=dtype))
        kv_evict_triton(counters, counters, counters)
    return launch


def _sample(B: int, V: int, dtype: torch.dtype) -> Callable[[], None]:
    def launch():
        from pygpt.kernels._device import HOPPER_SMS
        from pygpt.kernels.sample import sample_triton, split_count

        rows = torch.empty(B, dtype=torch.float32)
        sample_triton(torch.empty(B, V, dtype=dtype), rows, torch.empty(B, dtype=torch.int32), rows, rows,
                      torch.zeros(2, dtype=torch.int64), splits=split_count(B, V, HOPPER_SMS))
    return launch


def _fused_linear(M: int, K: int, N: int, dtype: torch.dtype, norm: str, act: str, bias: bool,
                  residual: torch.dtype | None) -> Callable[[], None]:
    def launch():
        from pygpt.kernels.fused_linear import fused_linear_triton
        from pygpt.ops.linear import ACTS, NORMS

        weight = torch.empty(2 * N if act == "swiglu" else N, K, dtype=dtype)
        vec = torch.empty(K)
        fused_linear_triton(torch.empty(M, K), weight, torch.empty(weight.shape[0], dtype=dtype) if bias else None,
                            None if norm == "none" else vec, vec if norm == "layernorm" else None, NORMS[norm],
                            1e-5, ACTS[act], None if residual is None else torch.empty(M, N, dtype=residual))
    return launch


def default_cases() -> dict[str, Callable[[], None]]:
    """The shapes the benchmarks, the presets and the tests' odd sizes launch, one entry per distinct config."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    cases = {
        "rotary B8 H32 T2048 D128 bf16": _rotary(8, 2048, 32, 128, bf16),
        "rotary B2 H3 T5 D40 fp32": _rotary(2, 5, 3, 40, fp32),
        "rotary B1 H4 T1 D256 fp16": _rotary(1, 1, 4, 256, fp16),
        "rotary B2 H3 T5 D40 fp64": _rotary(2, 5, 3, 40, torch.float64),
        "attention fwd B8 H32 T2048 D128 bf16": _attention(8, 2048, 32, 32, 128, bf16, backward=False),
        "attention fwd+bwd B64 H6 T256 D64 bf16 (heavy)": _attention(64, 256, 6, 6, 64, bf16, backward=True),
        "attention fwd+bwd B2 H8/2 T100 D128 fp32": _attention(2, 100, 8, 2, 128, fp32, backward=True),
        "attention fwd+bwd B1 H4 T33 D256 bf16": _attention(1, 33, 4, 4, 256, bf16, backward=True),
        "attention fwd+bwd B2 H4/1 T17 D80 fp16": _attention(2, 17, 4, 1, 80, fp16, backward=True),
        "attention fwd+bwd B1 H2 T9 D40 fp32": _attention(1, 9, 2, 2, 40, fp32, backward=True),
        "decode B1 H32 D128 cache 32768 bf16": _decode(1, 1, 32, 32, 128, 32768, bf16),
        "decode B1 H6 D64 cache 256 bf16 (heavy)": _decode(1, 1, 6, 6, 64, 256, bf16),
        "decode B32 H32 D128 cache 4096 bf16": _decode(32, 1, 32, 32, 128, 4096, bf16),
        "decode B4 Tn3 H32/4 D96 cache 1000 fp32": _decode(4, 3, 32, 4, 96, 1000, fp32),
        # Prompts prefilled through the cache: chunks of at most MAX_QUERY_ROWS query rows a program.
        "decode prefill B1 Tn256 H6 D64 cache 256 bf16 (heavy)": _decode(1, 256, 6, 6, 64, 256, bf16),
        "decode prefill B2 Tn200 H8/2 D64 cache 256 fp32": _decode(2, 200, 8, 2, 64, 256, fp32),
        "kv append+evict B32 H32 D128 cache 4096 bf16": _kv_cache(32, 1, 32, 128, 4096, bf16),
        "kv append+evict B3 Tn5 H2 D40 cache 7 fp32": _kv_cache(3, 5, 2, 40, 7, fp32),
    }
    # The heavy model's decode step (6 x 384, vocab 65) under bf16, lite's in fp32, and the other variants.
    cases.update({
        "fused_linear B1 K384 N1152 bf16 layernorm (qkv)": _fused_linear(1, 384, 1152, bf16, "layernorm", "none",
                                                                          False, None),
        "fused_linear B1 K384 N384 bf16 +res (proj)": _fused_linear(1, 384, 384, bf16, "none", "none", False, fp32),
        "fused_linear B1 K384 N1536 bf16 layernorm gelu (up)": _fused_linear(1, 384, 1536, bf16, "layernorm",
                                                                              "gelu", False, None),
        "fused_linear B1 K1536 N384 bf16 +res (down)": _fused_linear(1, 1536, 384, bf16, "none", "none", False,
                                                                      fp32),
        "fused_linear B1 K384 N65 bf16 layernorm (head)": _fused_linear(1, 384, 65, bf16, "layernorm", "none",
                                                                         False, None),
        "fused_linear B1 K128 N512 fp32 layernorm gelu": _fused_linear(1, 128, 512, fp32, "layernorm", "gelu",
                                                                        False, None),
        "fused_linear B4 K200 N333 fp16 rmsnorm swiglu bias": _fused_linear(4, 200, 333, fp16, "rmsnorm", "swiglu",
                                                                             True, fp16),
        "fused_linear B64 K4096 N4096 bf16 layernorm": _fused_linear(64, 4096, 4096, bf16, "layernorm", "none",
                                                                      False, fp32),
    })
    for V in (65, 32000, 128256):
        for B in (1, 64):
            cases[f"sample B{B} V{V} fp32"] = _sample(B, V, fp32)
    cases["sample B8 V50257 bf16"] = _sample(8, 50257, bf16)
    cases["sample B1 V256000 fp32"] = _sample(1, 256000, fp32)  # the largest vocabulary: 64 segments
    return cases


def compile_cases(cases: dict[str, Callable[[], None]], arch: int = 90, warm: bool = False) -> list[CompiledLaunch]:
    """Run each case's launcher with launches compiled for sm_``arch`` instead of run; one record per launch.
    warm: into Triton's own cache (see compile_instead_of_launch); registers and spills are then -1."""
    records = []
    for case, launch in cases.items():
        with compile_instead_of_launch(arch, fresh_cache=not warm) as compiled:
            launch()
        for constexprs, kernel, log in compiled:
            regs, spills = (-1, -1) if warm else _ptxas_usage(log)
            records.append(CompiledLaunch(case, kernel.metadata.name, constexprs, kernel.metadata.num_warps,
                                          kernel.metadata.num_stages, kernel.metadata.shared, regs, spills))
    return records


def _compile_default_case(job: tuple[str, int, bool]) -> list[CompiledLaunch]:
    name, arch, warm = job
    return compile_cases({name: default_cases()[name]}, arch, warm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pygpt.triton_aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability without the dot (default 90)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--jobs", type=int, default=1, help="compile the cases in this many processes")
    parser.add_argument("--warm", action="store_true",
                        help="compile into Triton's own cache (on a GPU machine: the real launches then skip it)")
    args = parser.parse_args(argv)
    import multiprocessing

    import triton
    from triton import knobs

    names = [name for name in default_cases() if args.only in name]
    print(f"triton {triton.__version__}, target sm_{args.arch}; {len(names)} cases", flush=True)
    jobs = [(name, args.arch, args.warm) for name in names]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            records = [r for rs in pool.map(_compile_default_case, jobs, chunksize=1) for r in rs]
    else:
        records = [r for job in jobs for r in _compile_default_case(job)]
    print(f"{'case':48} {'kernel':20} {'warps':>5} {'stages':>6} {'shared B':>9} {'regs':>4} {'spill B':>7}")
    failures = 0
    for r in records:
        problems = r.problems()
        failures += bool(problems)
        print(f"{r.case:48.48} {r.kernel:20.20} {r.num_warps:5} {r.num_stages:6} {r.shared:9} {r.registers:4} "
              f"{r.spill_bytes:7}" + (f"  PROBLEM: {'; '.join(problems)}" if problems else ""))
    spills = "" if args.warm else f"; {sum(r.spill_bytes > 0 for r in records)} spill registers to local memory"
    where = f" into Triton's cache ({knobs.cache.dir})" if args.warm else ""
    print(f"{len(records)} launches compiled{where}; {failures} exceed the sm_{args.arch} limits{spills}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
