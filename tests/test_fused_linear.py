"""fused_linear: the C++ CPU kernel and the Triton kernel (interpreted on CPU, compiled on GPU) against the Torch
reference computed in float64, over every norm x activation, bias and residual, odd sizes, several rows, and the
dtypes; the reference itself against the model's own unfused layers; argument errors; opcheck and torch.compile.

Tolerance (FlashAttention's rule, as for attention): the kernel's largest and mean error against the float64
truth may be at most 3x those of the reference run in the op's own precision (which rounds the normalised row
and the result to the weight dtype, as the kernel does), plus a small absolute slack per dtype."""

import pytest
import torch

import pygpt.ops as ops
from pygpt.models.layers import MLP, LayerNorm, RMSNorm
from pygpt.ops.linear import ACTS, NORMS, fused_linear_reference

SLACK = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
SHAPES = [(1, 40, 65), (3, 128, 96), (2, 200, 33), (5, 17, 1)]  # (M rows, K in, N out): odd sizes, N = 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COMBOS = [(n, a) for n in NORMS for a in ACTS]


def _inputs(M, K, N, dtype, norm, act, bias=True, residual=True, device="cpu", seed=0):
    """x in float32 (the residual stream), weights in ``dtype``, a residual in float32 (or dtype for fp32/fp64)."""
    g = torch.Generator().manual_seed(seed)
    x_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    n_w = 2 * N if act == "swiglu" else N
    kw = {"norm": norm, "act": act}
    if norm != "none":
        kw["norm_weight"] = (1 + 0.3 * rand(K)).to(device)
        if norm == "layernorm":
            kw["norm_bias"] = (0.1 * rand(K)).to(device)
    x = (2 + 3 * rand(M, K)).to(x_dtype).to(device)  # a mean and a spread for the norm to remove
    weight = (rand(n_w, K) / K ** 0.5).to(dtype).to(device)
    b = (0.1 * rand(n_w)).to(dtype).to(device) if bias else None
    if residual:
        kw["residual"] = rand(M, N).to(x_dtype).to(device)
    return x, weight, b, kw


def _truth(x, weight, bias, kw):
    """The reference in float64 on the same (already rounded) inputs: no rounding anywhere."""
    d = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return fused_linear_reference(x.double(), weight.double(), None if bias is None else bias.double(), **d)


def _check(out, x, weight, bias, kw):
    lowp = fused_linear_reference(x, weight, bias, **kw)
    assert out.shape == lowp.shape and out.dtype == lowp.dtype
    assert torch.isfinite(out).all(), "NaN/inf in the result"
    truth = _truth(x, weight, bias, kw)
    err, base = (out.double().cpu() - truth.cpu()).abs(), (lowp.double().cpu() - truth.cpu()).abs()
    slack = SLACK[weight.dtype]
    assert err.max() <= 3 * base.max() + slack, (err.max().item(), base.max().item())
    assert err.mean() <= 3 * base.mean() + slack, (err.mean().item(), base.mean().item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("norm,act", COMBOS)
def test_cpp_matches_reference(shape, dtype, norm, act):
    M, K, N = shape
    with_extras = (M + K) % 2 == 0  # bias and residual in half of the shapes, both absent in the others
    x, weight, bias, kw = _inputs(M, K, N, dtype, norm, act, bias=with_extras, residual=with_extras)
    _check(ops.fused_linear(x, weight, bias, **kw), x, weight, bias, kw)


@pytest.mark.parametrize("shape", SHAPES)  # (5, 17, 1): an odd K that is no multiple of BLOCK_K, and N = 1
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,act", COMBOS)
def test_triton_matches_reference(shape, dtype, norm, act, needs_triton):
    from pygpt.kernels.fused_linear import fused_linear_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    M, K, N = shape
    with_extras = shape != SHAPES[1]
    x, weight, bias, kw = _inputs(M, K, N, dtype, norm, act, bias=with_extras, residual=with_extras, device=device)
    out = fused_linear_triton(x, weight, bias, kw.get("norm_weight"), kw.get("norm_bias"), NORMS[norm], 1e-5,
                              ACTS[act], kw.get("residual"))
    _check(out, x, weight, bias, kw)


def test_leading_dims_bf16_residual_and_fused_linear_layer():
    """x (B, T, K) keeps its leading dims; a residual in the weight's dtype; FusedLinear == fused_linear."""
    x, weight, bias, kw = _inputs(6, 48, 40, torch.bfloat16, "rmsnorm", "gelu")
    x3, res3 = x.view(2, 3, 48).to(torch.bfloat16), kw.pop("residual").view(2, 3, 40).to(torch.bfloat16)
    out = ops.fused_linear(x3, weight, bias, residual=res3, **kw)
    assert out.shape == (2, 3, 40) and out.dtype == torch.bfloat16
    _check(out, x3, weight, bias, {**kw, "residual": res3})
    layer = ops.FusedLinear(weight, bias, **kw)
    assert torch.equal(layer(x3, residual=res3), out)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_reference_is_the_models_unfused_layers(norm, mlp):
    """In float64 (no rounding) the reference is norm -> Linear -> activation (-> + residual) exactly as the
    model's own modules compute them."""
    torch.manual_seed(1)
    K = 24
    norm_mod = (LayerNorm(K, bias=True) if norm == "layernorm" else RMSNorm(K)).double()
    with torch.no_grad():
        norm_mod.weight.normal_()
        if getattr(norm_mod, "bias", None) is not None:
            norm_mod.bias.normal_()
    block = MLP(K, kind=mlp, bias=True).double().eval()
    x, res = torch.randn(3, K, dtype=torch.float64), torch.randn(3, K, dtype=torch.float64)
    norm_kw = {"norm": norm, "norm_weight": norm_mod.weight, "eps": norm_mod.eps}
    if norm == "layernorm":
        norm_kw["norm_bias"] = norm_mod.bias
    with torch.no_grad():
        hidden = ops.fused_linear_reference(x, block.up.weight, block.up.bias, act=mlp, **norm_kw)
        out = ops.fused_linear_reference(hidden, block.down.weight, block.down.bias, residual=res)
        expected = res + block(norm_mod(x))
    tol = 1e-12 if norm == "layernorm" else 1e-6  # (the model's RMSNorm computes in float32 even for float64)
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_gradients_flow_through_the_reference():
    x, weight, bias, kw = _inputs(2, 16, 8, torch.float32, "layernorm", "gelu")
    weight.requires_grad_(True)
    ops.fused_linear(x, weight, bias, **kw).sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_opcheck():
    x, weight, bias, kw = _inputs(3, 20, 12, torch.float32, "layernorm", "swiglu")
    args = (x, weight, bias, kw["norm_weight"], kw["norm_bias"], NORMS["layernorm"], 1e-5, ACTS["swiglu"],
            kw["residual"])
    torch.library.opcheck(torch.ops.pygpt.fused_linear.default, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    x, weight, bias, kw = _inputs(2, 32, 16, torch.float32, "rmsnorm", "gelu")
    compiled = torch.compile(lambda a: ops.fused_linear(a, weight, bias, **kw) * 2.0, fullgraph=True,
                             backend="eager")
    out = compiled(x)
    _check(out / 2.0, x, weight, bias, kw)  # against the references (halving is exact)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_nan_input_propagates(impl, request):
    """A NaN in a row's input poisons that row's norm and every output of it (never silently dropped), and no
    other row."""
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    x, weight, bias, kw = _inputs(2, 16, 8, torch.float32, "layernorm", "none", residual=False, device=device)
    x[1, 3] = float("nan")
    if impl == "triton":
        request.getfixturevalue("needs_triton")
        from pygpt.kernels.fused_linear import fused_linear_triton

        out = fused_linear_triton(x, weight, bias, kw["norm_weight"], kw["norm_bias"], NORMS["layernorm"], 1e-5,
                                  ACTS["none"], None)
    else:
        out = ops.fused_linear(x, weight, bias, **kw)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_fused_linear_on_cuda_routing_on_cpu_tensors(needs_triton):
    """_fused_linear_on_cuda (the op's CUDA kernel: plain Python around the Triton launcher) called directly on CPU
    tensors under the interpreter: its argument order (norm_weight / norm_bias, norm / act codes, eps, residual)
    against the reference, with a non-default eps so that a dropped eps shows."""
    from pygpt.ops.linear import _fused_linear_on_cuda

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, weight, bias, kw = _inputs(3, 24, 10, torch.float32, "layernorm", "swiglu", device=device)
    kw["eps"] = 0.5
    out = _fused_linear_on_cuda(x, weight, bias, kw["norm_weight"], kw["norm_bias"], NORMS["layernorm"], kw["eps"],
                                ACTS["swiglu"], kw["residual"])
    _check(out, x, weight, bias, kw)


# (change to a good call, the error's text, whether FusedLinear's construction checks it too)
BAD_CALLS = [
    (lambda a: a.update(x=torch.randn(2, 5)), r"x must have shape \(\.\.\., K\) with K = weight.shape\[1\] = 16",
     False),
    (lambda a: a.update(weight=torch.randn(8, 16, 1)), "weight must have 2 dimensions", True),
    (lambda a: a.update(weight=torch.randn(16, 8).t()), "weight must be contiguous", True),
    (lambda a: a.update(weight=torch.randint(0, 3, (8, 16))), "weight must be one of", True),
    (lambda a: a.update(bias=torch.randn(9)), r"bias must have shape \(8,\)", True),
    (lambda a: a.update(norm="batchnorm"), "norm must be one of", True),
    (lambda a: a.update(act="relu"), "act must be one of", True),
    (lambda a: a.update(norm="layernorm"), r"norm='layernorm' needs norm_weight of shape \(16,\)", True),
    (lambda a: a.update(norm="layernorm", norm_weight=torch.ones(15)), r"norm_weight must have shape \(16,\)", True),
    (lambda a: a.update(norm="rmsnorm", norm_weight=torch.ones(16), norm_bias=torch.ones(16)),
     "norm_bias is for norm='layernorm'", True),
    (lambda a: a.update(norm_weight=torch.ones(16)), "given with norm='none'", True),
    (lambda a: a.update(act="swiglu", weight=torch.randn(7, 16), bias=None), "even first dimension", True),
    (lambda a: a.update(residual=torch.randn(2, 7)), r"residual must have shape \(2, 8\)", False),
    (lambda a: a.update(residual=torch.randn(2, 8, dtype=torch.float64)), "residual must be one of float32", False),
]


@pytest.mark.parametrize("change,match,bound", BAD_CALLS)
def test_bad_arguments_raise_clear_errors(change, match, bound):
    args = {"x": torch.randn(2, 16), "weight": torch.randn(8, 16), "bias": torch.randn(8), "norm": "none",
            "act": "none"}
    change(args)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.fused_linear(**args)
    if bound:  # the bound layer checks its weights once, with the same errors
        with pytest.raises((ValueError, TypeError), match=match):
            ops.FusedLinear(**{k: v for k, v in args.items() if k not in ("x", "residual")})
    else:
        layer = ops.FusedLinear(args["weight"], args["bias"])
        with pytest.raises((ValueError, RuntimeError), match="x must|residual must"):
            layer(args["x"], residual=args.get("residual"))


def test_cpp_kernel_checks_direct_calls():
    """The op called straight through torch.ops (skipping the Python checks) still names what is wrong."""
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="pygpt.fused_linear: x must be"):
        torch.ops.pygpt.fused_linear(torch.randn(2, 5), w, None, None, None, 0, 1e-5, 0, None)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        torch.ops.pygpt.fused_linear(x, w, None, None, None, 0, 1e-5, 0, torch.randn(2, 9))
    with pytest.raises(RuntimeError, match="a norm needs norm_weight"):
        torch.ops.pygpt.fused_linear(x, w, None, None, None, 1, 1e-5, 0, None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 384, 1152), (1, 384, 1536), (1, 1536, 384), (8, 384, 65), (64, 4096, 333)])
def test_gpu_matches_reference_at_model_sizes(shape, dtype):
    M, K, N = shape
    for norm, act in [("layernorm", "none"), ("rmsnorm", "swiglu"), ("none", "gelu")]:
        x, weight, bias, kw = _inputs(M, K, N, dtype, norm, act, device="cuda")
        _check(ops.fused_linear(x, weight, bias, **kw), x, weight, bias, kw)
