"""pygpt's CUDA C++ kernels (csrc/cuda/*.cu) built for the CPU simulator in cuda_sim.h, so that the tests run
them on a machine without a GPU: ``load()`` registers each op as ``torch.ops.pygpt_cuda_sim.<name>`` (the name
of its CUDA registration), taking CPU tensors where the real op takes CUDA ones.

Each .cu file is translated, not copied: its launches ``kernel<<<grid, block, smem, stream>>>(args)`` become
``::cuda_sim::Launch(grid, block, smem, stream).with(&kernel)(args)``, its ``__shared__`` declarations
register their memory (poisoned when a block starts), its device checks (``is_cuda()``) accept the CPU, and its
``TORCH_LIBRARY_IMPL(pygpt, CUDA, m)`` block registers the kernels for CPU tensors in the ``pygpt_cuda_sim``
namespace, under the schemas csrc/ops.cpp gives the ``*_cuda`` ops. Everything else - the kernels, their launch
arithmetic, the argument checks - is the file's own.
The build (about a minute on 2 cores) is cached under ~/.cache/pygpt-cuda-sim.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"
SOURCES = [CSRC / "cuda" / name for name in ("rotary.cu", "kv_cache.cu", "sample.cu")] + [HERE / "selftest.cu"]
NAMESPACE = "pygpt_cuda_sim"

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[\w:, ]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_SHARED = re.compile(r"__shared__\s+([^;=()]+?)\s+(\w+)\s*((?:\[[^\]]*\])*)\s*;")
_REGISTRATION = "TORCH_LIBRARY_IMPL(pygpt, CUDA, m)"


def translate(path: Path) -> str:
    """The C++ that cuda_sim.h runs for the CUDA C++ file ``path``."""
    text, launches = _LAUNCH.subn(r"::cuda_sim::Launch(\2).with(&\1)(", path.read_text())
    if launches == 0 or (_REGISTRATION not in text and NAMESPACE not in text):
        raise RuntimeError(f"tests/cuda_sim: {path.name} no longer has the launches / registration the "
                           "translation expects; update tests/cuda_sim/__init__.py")
    # Shared memory registers itself, to be filled with 0xFF bytes when a block starts.
    text = _SHARED.sub(r"static \1 \2\3; static ::cuda_sim::SharedRegion \2_sim_region(&\2, sizeof(\2));", text)
    text = text.replace('#include "../checks.h"', f'#include "{CSRC / "checks.h"}"')
    text = re.sub(r"\bis_cuda\(\)", "is_cpu()", text)
    text = text.replace(_REGISTRATION, f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)")
    return f'#line 1 "{path}"\n' + text


def cuda_schemas() -> str:
    """A TORCH_LIBRARY block defining, in NAMESPACE, every *_cuda op of csrc/ops.cpp with its own schema (so
    that registering a translated kernel checks its signature against the schema, as a CUDA build does)."""
    defs = []
    for call in re.findall(r"m\.def\((.*?)\);", (CSRC / "ops.cpp").read_text(), re.S):
        schema = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call))
        if re.match(r"\w+_cuda\(", schema):
            defs.append(f'  m.def("{schema}");')
    if not defs:
        raise RuntimeError("tests/cuda_sim: no *_cuda op found in csrc/ops.cpp")
    return "#include <torch/library.h>\n\nTORCH_LIBRARY(" + NAMESPACE + ", m) {\n" + "\n".join(defs) + "\n}\n"


def _build_directory(key: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "pygpt-cuda-sim" / key


def supported() -> bool:
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def sim_ops():
    """torch.ops.pygpt_cuda_sim, built on first use; skips the calling test where the simulator cannot run."""
    import pytest

    from torch.utils import cpp_extension

    if not supported():
        pytest.skip("the CUDA simulator runs on x86-64 Linux only (its fibers switch stacks in assembly)")
    if not cpp_extension.is_ninja_available():
        pytest.skip("the CUDA simulator's build needs ninja (pip install '.[test]')")
    load()
    return torch.ops.pygpt_cuda_sim


@functools.cache
def load() -> None:
    """Build (or reuse) and load the simulated CUDA C++ ops into this process."""
    if not supported():
        raise RuntimeError("tests/cuda_sim runs on x86-64 Linux only (its fibers switch stacks in assembly)")
    from torch.utils import cpp_extension

    texts = {path.stem: translate(path) for path in SOURCES}
    texts["ops_schemas"] = cuda_schemas()
    digest = hashlib.sha256(torch.__version__.encode())
    for path in [HERE / "cuda_sim.h", CSRC / "checks.h", *sorted((HERE / "include").rglob("*.h"))]:
        digest.update(path.read_bytes())
    for text in texts.values():
        digest.update(text.encode())
    build = _build_directory(digest.hexdigest()[:16])
    build.mkdir(parents=True, exist_ok=True)
    sources = []
    for stem, text in texts.items():
        path = build / f"{stem}_sim.cpp"
        if not path.exists() or path.read_text() != text:  # (unchanged files keep their mtime: no rebuild)
            path.write_text(text)
        sources.append(str(path))
    cpp_extension.load(name=NAMESPACE, sources=sources, build_directory=str(build),
                       extra_include_paths=[str(HERE / "include")],
                       extra_cflags=["-O2", "-include", str(HERE / "cuda_sim.h")],
                       is_python_module=False, verbose=False)
