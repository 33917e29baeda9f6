"""Every Triton kernel compiles for sm_90 (an H100/H200) and fits its per-block limits, checked here without a GPU:
pygpt.triton_aot runs each launcher at the benchmarks' and presets' shapes with the launch swapped for Triton's
compiler (ptxas ships with Triton). The interpreter tests check the kernels' numbers; this checks what the
interpreter cannot: that the compiled kernels exist and can launch."""

import importlib.util
import os
import subprocess
import sys

import pytest

from pygpt.triton_aot import CompiledLaunch, _ptxas_usage

HAS_NVIDIA_BACKEND = importlib.util.find_spec("triton") is not None and \
    importlib.util.find_spec("triton.backends.nvidia") is not None


def test_limits_flag_what_cannot_launch():
    fits = CompiledLaunch("c", "k", "", num_warps=8, num_stages=3, shared=196608, registers=255, spill_bytes=0)
    assert fits.problems() == []
    too_much_shared = CompiledLaunch("c", "k", "", 4, 3, shared=295424, registers=32, spill_bytes=0)
    assert "shared memory" in too_much_shared.problems()[0]
    # 255 registers x 1024 threads is 4x the register file of one SM.
    too_many_regs = CompiledLaunch("c", "k", "", 32, 1, shared=0, registers=255, spill_bytes=0)
    assert "registers" in too_many_regs.problems()[0]


def test_ptxas_log_parsing():
    log = ("ptxas info    : Function properties for _fwd\n"
           "    0 bytes stack frame, 240 bytes spill stores, 236 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 240 bytes cumulative stack size\n")
    assert _ptxas_usage(log) == (255, 240)
    with pytest.raises(RuntimeError, match="no register count"):
        _ptxas_usage("nothing useful")


@pytest.mark.skipif(not HAS_NVIDIA_BACKEND, reason="triton with its NVIDIA backend is not installed")
def test_every_kernel_compiles_for_sm90_within_limits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Run outside the checkout: `python -m` puts the working directory first on sys.path, and the source tree's
    # pygpt/ has no kernels/ (the wheel maps them in).
    run = subprocess.run([sys.executable, "-m", "pygpt.triton_aot"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=1200)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert " 0 exceed the sm_90 limits" in report, report[-4000:]
    assert "_fwd" in report and "_bwd_dkdv" in report and "_partial" in report and "_sample_kernel" in report


WARM_THEN_LAUNCH = """
import os
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from pygpt import triton_aot

case = "rotary B2 H3 T5 D40 fp32"
triton_aot.compile_cases({case: triton_aot.default_cases()[case]}, warm=True)
warmed = len(os.listdir(os.environ["TRITON_CACHE_DIR"]))

class NoGpu:  # enough of a driver for JITFunction.run to bind and compile; it stops at the launch itself
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_current_target(self): return GPUTarget("cuda", 90, 32)
    def __getattr__(self, name): raise RuntimeError("no GPU here: " + name)

driver.set_active(NoGpu())
try:
    triton_aot.default_cases()[case]()
except RuntimeError as e:
    assert "no GPU here" in str(e), e
print(warmed, len(os.listdir(os.environ["TRITON_CACHE_DIR"])))
"""


@pytest.mark.skipif(not HAS_NVIDIA_BACKEND, reason="triton with its NVIDIA backend is not installed")
def test_warm_cache_has_the_key_of_the_real_launch(tmp_path):
    """--warm on a GPU machine is only useful if Triton's own launch path then finds the kernel in its cache:
    run that path (as far as it goes without a GPU) after warming and check it compiled nothing new."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run([sys.executable, "-c", WARM_THEN_LAUNCH], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    warmed, after_launch = map(int, run.stdout.split()[-2:])
    assert warmed >= 1 and after_launch == warmed
