"""`pygpt info`: versions, whether the compiled extension loaded, Triton/GPU availability, and the backend each
op will use on each device."""

from __future__ import annotations

import argparse
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__


def run(args: argparse.Namespace) -> int:
    import torch

    import pygpt
    import pygpt.ops as ops

    print(f"pygpt      {pygpt.__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()})")
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
          f"{torch.get_num_threads()} CPU threads")
    try:
        import triton

        triton_line = f"{triton.__version__}"
    except ImportError:
        triton_line = "not installed (needed for the GPU kernels: pip install triton)"
    print(f"triton     {triton_line}")
    if torch.cuda.is_available():
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"GPU        {gpus}")
    else:
        print("GPU        none (CPU kernels in use)")
    print(f"pygpt._C   {ops.extension_status()}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"backend    {device.type}: {ops.backend_for(device)}")
    return 0
