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
