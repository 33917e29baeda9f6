"""rope_attention: the fused kernels against the reference (rotate-half RoPE, then softmax attention) computed
in float64, for the output and all three gradients.

Tolerance (FlashAttention's oracle): the kernel's max error against the float64 reference may be at most
3x the error of the Torch reference computed in the same low precision, plus a small per-dtype floor."""

import pytest
import torch

import pygpt.ops as ops
from pygpt.ops.attention import rope_attention_reference

SHAPES = [  # (B, T, H, Hkv, D): T = 1, odd T, T past the 256-key tile, GQA 1..8, non-power-of-2 head dims
    (1, 1, 1, 1, 2),
    (2, 7, 4, 2, 40),
    (3, 65, 6, 3, 80),
    (2, 130, 8, 1, 96),
    (1, 300, 2, 2, 32),
    (2, 33, 2, 2, 128),
    (1, 20, 8, 8, 256),
]
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _inputs(B, T, H, Hkv, D, dtype, positions="per_batch", fused=True, device="cpu"):
    """q, k, v as views of one fused projection (B, T, (H + 2 Hkv) D), as the model makes them."""
    if fused:
        qkv = torch.randn(B, T, (H + 2 * Hkv) * D, device=device).to(dtype)
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
        q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
    else:
        q = torch.randn(B, T, H, D, device=device).to(dtype)
        k, v = (torch.randn(B, T, Hkv, D, device=device).to(dtype) for _ in range(2))
    if positions == "per_batch":
        pos = torch.randint(0, 50, (B, 1), device=device) + torch.arange(T, device=device)  # per-sequence offsets
    elif positions == "shared":
        pos = torch.arange(T, device=device) + 7
    else:
        pos = None
    return q, k, v, pos


def _check(kernel_out, lowp_ref, exact, dtype, what):
    assert torch.isfinite(kernel_out).all(), f"{what}: NaN/inf"
    err = (kernel_out.double() - exact).abs().max().item()
    ref_err = (lowp_ref.double() - exact).abs().max().item()
    assert err <= 3 * ref_err + FLOOR[dtype], f"{what}: error {err:.3g} vs torch's own {ref_err:.3g}"


def _check_against_references(q, k, v, pos, dtype, causal, out, grad, grads, scale=None, base=10000.0):
    """Check a kernel's out and (dq, dk, dv) for upstream gradient ``grad`` against the references."""
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    ref = rope_attention_reference(*ref_leaves, pos, causal=causal, scale=scale, base=base)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)

    exact_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    exact = rope_attention_reference(*exact_leaves, pos, causal=causal, scale=scale, base=base)
    exact_grads = torch.autograd.grad(exact, exact_leaves, grad.double())

    _check(out, ref, exact, dtype, "out")
    for name, g, rg, eg in zip("qkv", grads, ref_grads, exact_grads):
        assert g.shape == eg.shape and g.dtype == dtype
        _check(g, rg, eg, dtype, f"d{name}")


def _compare(q, k, v, pos, dtype, causal=True, scale=None, base=10000.0):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = ops.rope_attention(*leaves, pos, causal=causal, scale=scale, base=base)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    _check_against_references(q, k, v, pos, dtype, causal, out, grad, grads, scale, base)


# A non-default scale and RoPE base, for a share of the comparisons (a kernel that dropped either would differ).
CUSTOM = {"scale": 0.37, "base": 500.0}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cpu_kernel_matches_reference(shape, dtype):
    positions = ["per_batch", "shared", None][sum(shape) % 3]
    custom = CUSTOM if shape[1] % 2 else {}  # odd T: per-batch, shared and no positions
    _compare(*_inputs(*shape, dtype, positions=positions, fused=shape[0] % 2 == 0), dtype, **custom)


@pytest.mark.parametrize("positions", ["per_batch", "shared", None])
def test_cpu_kernel_position_layouts_and_full_attention(positions):
    q, k, v, pos = _inputs(2, 41, 4, 2, 40, torch.float32, positions=positions)
    _compare(q, k, v, pos, torch.float32, causal=True)
    _compare(q, k, v, pos, torch.float32, causal=False)
    _compare(q, k, v, pos, torch.float32, causal=False, **CUSTOM)


@pytest.mark.parametrize("D", [7, 33])
@pytest.mark.parametrize("causal", [True, False])
def test_odd_head_dim_without_rope(D, causal):
    """Without RoPE any head_dim works: the C++ kernel here; on CUDA the op runs the reference for it (below)."""
    q, k, v, _ = _inputs(2, 19, 4, 2, D, torch.float32, positions=None)
    _compare(q, k, v, None, torch.float32, causal=causal)


def test_zero_head_dim_gives_the_log_of_the_keys_seen():
    """D = 0: every score is 0, so the log-sum-exp is log(number of visible keys) (it was left uninitialised)."""
    q = torch.zeros(2, 5, 3, 0)
    for causal, seen in ((True, torch.arange(1.0, 6.0)), (False, torch.full((5,), 5.0))):
        out, lse = torch.ops.pygpt.rope_attention(q, q, q, None, 1.0, 1e4, causal)
        assert out.shape == q.shape
        torch.testing.assert_close(lse, seen.log().expand(2, 3, 5))


def test_float64_is_exact():
    q, k, v, pos = _inputs(2, 70, 4, 2, 40, torch.float64)
    out = ops.rope_attention(q, k, v, pos)
    torch.testing.assert_close(out, rope_attention_reference(q, k, v, pos), atol=1e-12, rtol=1e-12)


def test_gradcheck():
    q, k, v, pos = (t.requires_grad_(True) if t is not None and t.is_floating_point() else t
                    for t in _inputs(1, 5, 2, 1, 4, torch.float64, fused=False))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.rope_attention(a, b, c, pos), (q, k, v))


def test_opcheck():
    q, k, v, pos = _inputs(2, 9, 4, 2, 8, torch.float32, fused=False)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.pygpt.rope_attention.default, (q, k, v, pos, 0.35, 10000.0, True))
    torch.library.opcheck(torch.ops.pygpt.rope_attention.default, (q, k, v, None, 0.35, 10000.0, False))


def test_torch_compile_fullgraph():
    q, k, v, pos = _inputs(2, 12, 4, 2, 16, torch.float32)
    compiled = torch.compile(lambda a, b, c, p: ops.rope_attention(a, b, c, p).sum(-1), fullgraph=True,
                             backend="eager")
    torch.testing.assert_close(compiled(q, k, v, pos), rope_attention_reference(q, k, v, pos).sum(-1),
                               atol=1e-5, rtol=1e-5)


def test_reference_backend_still_selectable():
    q, k, v, pos = _inputs(1, 5, 2, 2, 8, torch.float32)
    try:
        ops.set_backend("reference")
        assert torch.equal(ops.rope_attention(q, k, v, pos), rope_attention_reference(q, k, v, pos))
    finally:
        ops.set_backend("auto")


@pytest.mark.parametrize("make, error, match", [
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), None), ValueError,
     "q must have 4 dimensions"),
    (lambda: (torch.randn(1, 3, 3, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8), None), ValueError,
     r"q's heads \(3\) must be a multiple of k's heads \(2\)"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), None), ValueError,
     "k must have shape"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8).half(), torch.randn(1, 3, 2, 8), None), TypeError,
     "k must have q's dtype"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 8, 2).transpose(2, 3), None),
     ValueError, "v's last dimension must be contiguous"),
    (lambda: (torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8), torch.arange(4)),
     ValueError, "positions must have shape"),
    (lambda: (torch.randn(1, 3, 2, 7), torch.randn(1, 3, 2, 7), torch.randn(1, 3, 2, 7), torch.arange(3)),
     ValueError, "head_dim must be even"),
])
def test_bad_inputs(make, error, match):
    with pytest.raises(error, match=match):
        ops.rope_attention(*make())


def test_cpp_op_rejects_bad_inputs_itself():
    q = torch.randn(1, 3, 2, 8)
    with pytest.raises(RuntimeError, match="must be a multiple of k's heads"):
        torch.ops.pygpt.rope_attention(q, torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8), None, 1.0, 1e4, True)


# ---- Triton: through its CPU interpreter here (small shapes), compiled on a GPU ----------------------------

TRITON_SHAPES = [(1, 1, 1, 1, 2), (2, 19, 4, 2, 40), (1, 33, 2, 1, 16), (2, 17, 8, 1, 24)]
S0, S1, S2, S3 = TRITON_SHAPES
# Every (positions layout, causal) pair twice, each shape three times (a product would double the runtime), a
# non-default scale / base in one case of each pair that has positions (and the scale in one without).
TRITON_CASES = [
    (S0, "per_batch", True, {}), (S3, "per_batch", True, {}),
    (S1, "per_batch", False, CUSTOM), (S2, "per_batch", False, {}),
    (S1, "shared", True, {}), (S2, "shared", True, CUSTOM),
    (S0, "shared", False, {}), (S3, "shared", False, CUSTOM),
    (S2, None, True, {}), (S3, None, True, {"scale": 0.37}),
    (S0, None, False, {}), (S1, None, False, {}),
]


def _triton_compare(shape, dtype, positions, causal, device, scale=None, base=10000.0):
    from pygpt.kernels.rope_attention import rope_attention_bwd_triton, rope_attention_fwd_triton
    from pygpt.ops.rotary import rope_cos_sin

    q, k, v, pos = _inputs(*shape, dtype, positions=positions, fused=True, device=device)
    D = shape[-1]
    kernel_scale = D ** -0.5 if scale is None else scale
    cos, sin = rope_cos_sin(pos, D, base) if pos is not None else (None, None)
    out, lse = rope_attention_fwd_triton(q, k, v, cos, sin, kernel_scale, causal)
    grad = torch.randn_like(out)
    grads = rope_attention_bwd_triton(grad, q, k, v, cos, sin, out, lse, kernel_scale, causal)
    _check_against_references(q, k, v, pos, dtype, causal, out, grad, grads, scale, base)


@pytest.mark.parametrize("shape, positions, causal, custom", TRITON_CASES, ids=[
    f"{'x'.join(map(str, c[0]))}-{c[1]}-{'causal' if c[2] else 'full'}{'-custom' if c[3] else ''}"
    for c in TRITON_CASES])
def test_triton_kernel_matches_reference(shape, positions, causal, custom, needs_triton):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _triton_compare(shape, torch.float32, positions, causal, device, **custom)


def test_cuda_routing_functions_on_cpu_tensors(needs_triton):
    """_forward_on_cuda / _backward_on_cuda (the ops' CUDA kernels: plain Python around the Triton launchers)
    called directly on CPU tensors under the interpreter: argument order and the cos/sin tables built from base,
    against the references; float64 is refused there (the op runs the reference for it)."""
    from pygpt.ops.attention import _backward_on_cuda, _forward_on_cuda

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, pos = _inputs(2, 9, 4, 2, 16, torch.float32, positions="per_batch", device=device)
    out, lse = _forward_on_cuda(q, k, v, pos, 0.37, 500.0, False)
    grad = torch.randn_like(out)
    grads = _backward_on_cuda(grad, q, k, v, pos, out, lse, 0.37, 500.0, False)
    _check_against_references(q, k, v, pos, torch.float32, False, out, grad, grads, 0.37, 500.0)
    with pytest.raises(TypeError, match="float64"):
        _forward_on_cuda(q.double(), k.double(), v.double(), pos, 0.37, 500.0, False)


def test_triton_rejects_odd_head_dim(needs_triton):
    """The Triton kernels hold q and k as RoPE's two halves: an odd head_dim is an error there, never a silent
    wrong answer (ops.rope_attention sends it to the reference on CUDA)."""
    from pygpt.kernels.rope_attention import rope_attention_bwd_triton, rope_attention_fwd_triton

    q, k, v, _ = _inputs(1, 5, 2, 1, 7, torch.float32, positions=None)
    with pytest.raises(ValueError, match="even head_dim, got 7"):
        rope_attention_fwd_triton(q, k, v, None, None, 7 ** -0.5, True)
    with pytest.raises(ValueError, match="even head_dim, got 7"):
        rope_attention_bwd_triton(q.clone(), q, k, v, None, None, q.clone(), torch.zeros(1, 2, 5), 0.4, True)


def test_triton_rejects_a_grid_too_tall(needs_triton):
    """B * n_head programs go on the grid's second axis (at most 65535): beyond, a clear error, not a launch
    failure. (Stride-0 views: nothing is allocated or launched.)"""
    from pygpt.kernels.rope_attention import rope_attention_fwd_triton

    q = torch.zeros(()).expand(4097, 1, 16, 8)
    with pytest.raises(ValueError, match="B \\* n_head <= 65535, got 4097 \\* 16"):
        rope_attention_fwd_triton(q, q, q, None, None, 0.3, True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_odd_head_dim_runs_the_reference(dtype):
    _compare(*_inputs(2, 19, 4, 2, 33, dtype, positions=None, device="cuda"), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(4, 300, 8, 2, 128), (2, 513, 4, 4, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_op_matches_reference(shape, dtype):
    _compare(*_inputs(*shape, dtype, device="cuda"), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, positions, causal", [((2, 19, 4, 2, 40), "per_batch", True),
                                                      ((1, 33, 2, 1, 16), None, False),
                                                      ((1, 150, 2, 1, 64), "shared", True),
                                                      ((1, 150, 2, 1, 64), None, False)])
def test_triton_kernel_low_precision(dtype, shape, positions, causal, needs_triton):
    """The low-precision path (q~, k~ and p rounded to the input dtype before the dots; the interpreter rounds and
    multiplies bf16 as a GPU does, tests/triton_interpreter.py). T = 150 spans
    several tiles at the GPU's sizes too (PYGPT_GPU_TILES=1: 128 x 64), so the forward's unmasked key tiles (those
    before the diagonal or inside T) and its masked ones both run."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _triton_compare(shape, dtype, positions, causal, device)
