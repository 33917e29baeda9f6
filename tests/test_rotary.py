"""rotary: the C++ CPU kernel and the Triton kernel (interpreted on CPU, compiled on GPU) against the Torch
reference computed in float64, over odd shapes, dtypes, batch > 1 and both position layouts."""

import subprocess
import sys

import pytest
import torch

import pygpt.ops as ops
from pygpt.ops.rotary import rotary_reference
from pygpt.testing import assert_close

SHAPES = [  # (B, T, H, D): odd head dims, T = 1, T not a multiple of any block, batch > 1
    (1, 1, 1, 2),
    (2, 7, 3, 40),
    (3, 1, 4, 80),
    (2, 37, 2, 96),
    (1, 65, 5, 128),
    (4, 13, 6, 64),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device="cpu", per_batch=True, index_dtype=torch.int64):
    B, T, H, D = shape
    x = torch.randn(shape, device=device).to(dtype)
    pos_shape = (B, T) if per_batch else (T,)
    positions = torch.randint(0, 4096, pos_shape, device=device, dtype=index_dtype)
    return x, positions


INDEX_DTYPES = [torch.int32, torch.int64]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("per_batch", [True, False])
def test_cpp_matches_reference(shape, dtype, per_batch):
    i = SHAPES.index(shape)  # both index dtypes with both layouts; RoPE base 500 in a third of the shapes
    index_dtype, base = INDEX_DTYPES[i % 2], 500.0 if i % 3 == 2 else 10000.0
    x, positions = _inputs(shape, dtype, per_batch=per_batch, index_dtype=index_dtype)
    out = torch.ops.pygpt.rotary(x, positions, base, False)
    assert out.dtype == dtype
    assert_close(out, rotary_reference(x.double(), positions, base), dtype)


@pytest.mark.parametrize("impl", ["triton", "cuda-sim"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_gpu_kernels_match_reference(impl, shape, dtype, request):
    """The Triton kernel (interpreted on CPU, compiled on a GPU) and the CUDA C++ kernel (on the CPU simulator of
    tests/cuda_sim; compiled by nvcc and run on a GPU by test_gpu_op_matches_reference)."""
    if impl == "triton":
        request.getfixturevalue("needs_triton")
        from pygpt.kernels.rotary import rotary_triton as kernel

        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kernel, device = request.getfixturevalue("cuda_sim").rotary_cuda, "cpu"
    i = SHAPES.index(shape)  # per-batch positions for even B: each layout with each index dtype, and base 500
    index_dtype, base = INDEX_DTYPES[(i // 2) % 2], 500.0 if i % 3 == 2 else 10000.0
    x, positions = _inputs(shape, dtype, device=device, per_batch=shape[0] % 2 == 0, index_dtype=index_dtype)
    for inverse in (False, True):
        out = kernel(x, positions, base, inverse)
        assert out.dtype == dtype
        assert_close(out, rotary_reference(x.double(), positions, base, inverse=inverse), dtype)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
@pytest.mark.parametrize("per_batch", [True, False])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_position_dtypes_layouts_and_base(impl, per_batch, index_dtype, request):
    """Every (positions layout, index dtype) pair on both kernels, each at the default and a non-default base,
    forward and inverse (small shape: cheap under the interpreter)."""
    if impl == "triton":
        request.getfixturevalue("needs_triton")
        from pygpt.kernels.rotary import rotary_triton as kernel
    else:
        kernel = torch.ops.pygpt.rotary
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    x, positions = _inputs((2, 5, 3, 40), torch.float32, device=device, per_batch=per_batch,
                           index_dtype=index_dtype)
    for base in (10000.0, 500.0):
        for inverse in (False, True):
            out = kernel(x, positions, base, inverse)
            assert_close(out, rotary_reference(x.double(), positions.long(), base, inverse), torch.float32)


def test_rotary_on_cuda_routing_on_cpu_tensors(needs_triton):
    """_rotary_on_cuda (the op's CUDA kernel; Triton unless the CUDA C++ backend is picked) called directly on CPU
    tensors under the interpreter: argument order and base, against the reference."""
    from pygpt.ops.rotary import _rotary_on_cuda

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, positions = _inputs((2, 6, 3, 16), torch.float32, device=device, index_dtype=torch.int32)
    for inverse in (False, True):
        out = _rotary_on_cuda(x, positions, 500.0, inverse)
        assert_close(out, rotary_reference(x.double(), positions, 500.0, inverse), torch.float32)


def test_inverse_undoes_rotation():
    x, positions = _inputs((2, 9, 3, 40), torch.float64)
    back = ops.rotary(ops.rotary(x, positions), positions, inverse=True)
    assert_close(back, x, torch.float64)


def test_relative_position_property():
    """q~ . k~ depends only on m - n: the reason RoPE lets the KV cache slide."""
    q = torch.randn(1, 1, 1, 64, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 64, dtype=torch.float64)
    def score(m, n):
        return (ops.rotary(q, torch.tensor([m])) * ops.rotary(k, torch.tensor([n]))).sum()
    assert abs(score(10, 3) - score(107, 100)) < 1e-5
    assert abs(score(10, 3) - score(10, 4)) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_matches_reference(dtype):
    x, positions = _inputs((2, 11, 3, 40), dtype)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    (g_op,) = torch.autograd.grad(ops.rotary(x, positions), x, grad)
    (g_ref,) = torch.autograd.grad(rotary_reference(x, positions), x, grad)
    assert_close(g_op, g_ref.double(), dtype)


def test_gradcheck():
    x, positions = _inputs((1, 5, 2, 8), torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.rotary(t, positions), (x,))


def test_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        x, positions = _inputs((2, 5, 3, 40), dtype)
        torch.library.opcheck(torch.ops.pygpt.rotary.default, (x.requires_grad_(True), positions, 10000.0, False))


def test_torch_compile_fullgraph():
    x, positions = _inputs((2, 6, 3, 40), torch.float32)
    compiled = torch.compile(lambda a, p: ops.rotary(a, p) * 2.0, fullgraph=True, backend="eager")
    assert_close(compiled(x, positions), 2.0 * rotary_reference(x.double(), positions), torch.float32)


def test_reference_backend_can_be_forced():
    x, positions = _inputs((1, 3, 2, 8), torch.float32)
    try:
        ops.set_backend("reference")
        assert ops.backend_for(x.device) == "reference"
        assert torch.equal(ops.rotary(x, positions), rotary_reference(x, positions))
    finally:
        ops.set_backend("auto")
    assert ops.backend_for(x.device) == "cpp"


def test_environment_switch(tmp_path):
    code = "import torch, pygpt.ops as o; print(o.backend_for(torch.device('cpu')))"
    def backend_with(env):  # run away from the source tree so the installed pygpt (with _C) is imported
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert backend_with({"PYGPT_BACKEND": "reference"}) == "reference"
    assert backend_with({}) == "cpp"
    with pytest.raises(ValueError, match="PYGPT_BACKEND"):
        ops.set_backend("fastest")


@pytest.mark.parametrize("make_args, error, match", [
    (lambda: (torch.randn(2, 3, 8), torch.arange(3)), ValueError, "x must have 4 dimensions"),
    (lambda: (torch.randn(1, 3, 2, 7), torch.arange(3)), ValueError, "head_dim .* must be even"),
    (lambda: (torch.randint(0, 5, (1, 3, 2, 8)), torch.arange(3)), TypeError, "x must be one of float32"),
    (lambda: (torch.randn(1, 3, 8, 2).transpose(2, 3), torch.arange(3)), ValueError, "x must be contiguous"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.arange(4)), ValueError, r"positions must have shape \(1, 3\) or \(3,\)"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.arange(3.0)), TypeError, "positions must be one of int32, int64"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.arange(3, device="meta")), ValueError, "positions must be on cpu"),
    (lambda: ([1.0], torch.arange(3)), TypeError, "x must be a torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(make_args, error, match):
    with pytest.raises(error, match=match):
        ops.rotary(*make_args())


def test_cpp_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="head_dim .* must be even"):
        torch.ops.pygpt.rotary(torch.randn(1, 3, 2, 7), torch.arange(3), 10000.0, False)
    with pytest.raises(RuntimeError, match="positions must have shape"):
        torch.ops.pygpt.rotary(torch.randn(1, 3, 2, 8), torch.arange(5), 10000.0, False)


# ---- the CUDA C++ kernel, on the CPU simulator of tests/cuda_sim --------------------------------------------
def test_rotary_cuda_checks_its_arguments(cuda_sim):
    with pytest.raises(RuntimeError, match="head_dim .* must be even"):
        cuda_sim.rotary_cuda(torch.randn(1, 3, 2, 7), torch.arange(3), 10000.0, False)
    assert cuda_sim.rotary_cuda(torch.randn(0, 3, 2, 8), torch.arange(3), 10000.0, False).shape == (0, 3, 2, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_gpu_op_matches_reference(cuda_backend, dtype):
    if cuda_backend == "cuda" and not ops.extension().built_with_cuda():
        pytest.skip("CUDA C++ kernels not compiled in")
    try:
        ops.set_backend(cuda_backend=cuda_backend)
        for shape in SHAPES:
            x, positions = _inputs(shape, dtype, device="cuda")
            x.requires_grad_(True)
            out = ops.rotary(x, positions)
            assert_close(out, rotary_reference(x.double(), positions), dtype)
            (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
            assert_close(g, rotary_reference(torch.ones_like(x).double(), positions, inverse=True), dtype)
    finally:
        ops.set_backend(cuda_backend="triton")
