"""What the launchers size their grids and tiles by: the GPU's multiprocessor count, and whether Triton's CPU
interpreter runs the kernels (the tests without a GPU) rather than a compiler."""

from __future__ import annotations

import functools
import os

import torch

HOPPER_SMS = 132  # an H100's (an H200 has as many): what pygpt.triton_aot sizes launches for


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; HOPPER_SMS for any other (pygpt.triton_aot compiles from CPU tensors)."""
    if device.type != "cuda":
        return HOPPER_SMS
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def interpreting() -> bool:
    """Whether Triton's CPU interpreter runs the kernels (TRITON_INTERPRET=1), whose numerics need workarounds."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def small_tiles() -> bool:
    """Whether launchers pick small tiles: under the interpreter, where each tile op is a numpy call, unless
    PYGPT_GPU_TILES=1 asks for the tiles compiled for a GPU (slower, but their masks and loops get checked)."""
    return interpreting() and os.environ.get("PYGPT_GPU_TILES") != "1"
