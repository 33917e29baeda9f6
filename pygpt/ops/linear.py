"""fused_linear: a decode step's Linear layer with its neighbours fused in - the norm before it, the bias and
activation after it, and the residual add after that - for the few rows (B * T) of a decode step:

    out = residual + act(norm(x) @ weight^T + bias)

A decode step at batch 1 is bound by kernel launches, not arithmetic: the model's Block issues a norm, a cast, a
GEMM, an activation and an add as five launches (and five trips through the dispatcher on CPU); this op is one.

Numerics, the same on every backend (they mirror the unfused layers under autocast):
  * ``norm`` ('none' | 'layernorm' | 'rmsnorm') over x's last dimension is computed in float32 (float64 for
    float64 weights), with ``norm_weight`` (K,) and, for 'layernorm', an optional ``norm_bias`` (K,);
  * the normalised row is rounded to weight's dtype (what autocast feeds the matmul) and the products are
    accumulated in float32 (float64);
  * ``bias`` is added and ``act`` ('none' | 'gelu', erf form | 'swiglu') applied to the accumulator; 'swiglu'
    takes weight (2N, K) and gives silu(first N outputs) * (last N outputs), as pygpt.models.layers.MLP;
  * the result is rounded to weight's dtype (the matmul's output dtype under autocast) and, given a
    ``residual``, added to it in the residual's dtype (weight's dtype, or float32 for fp16/bf16 weights).

Inference only: with gradients required it runs the (differentiable) reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, check_shape, check_tensor
from ._library import backend_for, extension

OP = "fused_linear"
NORMS = {"none": 0, "layernorm": 1, "rmsnorm": 2}
ACTS = {"none": 0, "gelu": 1, "swiglu": 2}


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def fused_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                           norm: str = "none", norm_weight: torch.Tensor | None = None,
                           norm_bias: torch.Tensor | None = None, eps: float = 1e-5, act: str = "none",
                           residual: torch.Tensor | None = None) -> torch.Tensor:
    """The plain Torch fused_linear: x (..., K), weight (N, K) or (2N, K) for swiglu -> (..., N)."""
    compute = _compute_dtype(weight)
    h = x.to(compute)
    if norm == "layernorm":
        h = F.layer_norm(h, (h.shape[-1],), norm_weight.to(compute),
                         None if norm_bias is None else norm_bias.to(compute), eps)
    elif norm == "rmsnorm":
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.to(compute)
    h = h.to(weight.dtype).to(compute)
    y = F.linear(h, weight.to(compute), None if bias is None else bias.to(compute))
    if act == "gelu":
        y = F.gelu(y)
    elif act == "swiglu":
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    y = y.to(weight.dtype)
    return y if residual is None else (residual.to(compute) + y.to(compute)).to(residual.dtype)


def _check_args(x, weight, bias, norm, norm_weight, norm_bias, act, residual) -> None:
    """Raise a clear error naming the argument unless the call is well formed."""
    if norm not in NORMS:
        raise ValueError(f"pygpt.{OP}: norm must be one of {tuple(NORMS)}, got {norm!r}")
    if act not in ACTS:
        raise ValueError(f"pygpt.{OP}: act must be one of {tuple(ACTS)}, got {act!r}")
    check_tensor(OP, "weight", weight, ndim=2, dtypes=FLOAT_DTYPES)
    N_w, K = weight.shape
    check_tensor(OP, "x", x, dtypes=FLOAT_DTYPES, device=weight.device, contiguous=False)
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"pygpt.{OP}: x must have shape (..., K) with K = weight.shape[1] = {K}, "
                         f"got {tuple(x.shape)}")
    if act == "swiglu" and N_w % 2:
        raise ValueError(f"pygpt.{OP}: act='swiglu' needs weight (2N, K) with an even first dimension, got "
                         f"{tuple(weight.shape)}")
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=weight.device)
        check_shape(OP, "bias", bias, (N_w,))
    if norm == "none":
        if norm_weight is not None or norm_bias is not None:
            raise ValueError(f"pygpt.{OP}: norm_weight / norm_bias given with norm='none'")
    else:
        if norm_weight is None:
            raise ValueError(f"pygpt.{OP}: norm={norm!r} needs norm_weight of shape ({K},)")
        check_tensor(OP, "norm_weight", norm_weight, ndim=1, dtypes=FLOAT_DTYPES, device=weight.device)
        check_shape(OP, "norm_weight", norm_weight, (K,))
        if norm_bias is not None:
            if norm != "layernorm":
                raise ValueError(f"pygpt.{OP}: norm_bias is for norm='layernorm', got norm={norm!r}")
            check_tensor(OP, "norm_bias", norm_bias, ndim=1, dtypes=FLOAT_DTYPES, device=weight.device)
            check_shape(OP, "norm_bias", norm_bias, (K,))
    if residual is not None:
        allowed = (weight.dtype,) if weight.dtype in (torch.float32, torch.float64) else (weight.dtype, torch.float32)
        check_tensor(OP, "residual", residual, dtypes=allowed, device=weight.device, contiguous=False)
        N = N_w // 2 if act == "swiglu" else N_w
        check_shape(OP, "residual", residual, (*x.shape[:-1], N))


def _bind(weight, bias, norm, norm_weight, norm_bias, eps, act) -> tuple[tuple, dict]:
    """(the compiled op's arguments after x, the reference's keyword arguments) of a checked call."""
    ref_kwargs = dict(norm=norm, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps, act=act)
    return (weight, bias, norm_weight, norm_bias, NORMS[norm], float(eps), ACTS[act]), ref_kwargs


def _run(x: torch.Tensor, residual: torch.Tensor | None, op_args: tuple, ref_kwargs: dict) -> torch.Tensor:
    """A checked call: the reference when forced, without the extension or when gradients are required, else the
    compiled op on x's rows (M, K)."""
    weight, bias = op_args[0], op_args[1]
    if backend_for(weight.device) == "reference" or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, *op_args[:4]))):
        return fused_linear_reference(x, weight, bias, residual=residual, **ref_kwargs)
    if x.dim() == 2 and (residual is None or residual.dim() == 2):  # already rows: a decode loop's common case
        return torch.ops.pygpt.fused_linear.default(x.contiguous(), *op_args,
                                                    None if residual is None else residual.contiguous())
    rows = x.reshape(-1, weight.shape[1]).contiguous()
    res = None if residual is None else residual.reshape(rows.shape[0], -1).contiguous()
    out = torch.ops.pygpt.fused_linear.default(rows, *op_args, res)
    return out.view(*x.shape[:-1], out.shape[-1])


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, norm: str = "none",
                 norm_weight: torch.Tensor | None = None, norm_bias: torch.Tensor | None = None, eps: float = 1e-5,
                 act: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
    """out (..., N) = residual + act(norm(x) @ weight^T + bias) for x (..., K) and weight (N, K) ((2N, K) for
    'swiglu'); see the module docstring for the numerics. Made for the few rows of a decode step (one program
    or task per row and block of outputs); use torch's Linear for large batches.

    Runs the C++ kernel on CPU and the Triton kernel on CUDA; the reference when forced (PYGPT_BACKEND=reference),
    without the extension, or when gradients are required.
    """
    _check_args(x, weight, bias, norm, norm_weight, norm_bias, act, residual)
    return _run(x, residual, *_bind(weight, bias, norm, norm_weight, norm_bias, eps, act))


class FusedLinear:
    """fused_linear with its weights bound and checked once: ``layer(x, residual=None)`` is
    ``fused_linear(x, weight, bias, ..., residual=residual)``.

    For hot loops such as a decode step, where fused_linear's per-call checks of every argument (a few
    microseconds of Python) would cost as much as the op itself on CPU: per call only x's last dimension is checked
    here, the rest by the C++ kernel on CPU (the caller vouches for x and residual on CUDA). The weights are held,
    not copied: updating them in place is seen.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, norm: str = "none",
                 norm_weight: torch.Tensor | None = None, norm_bias: torch.Tensor | None = None, eps: float = 1e-5,
                 act: str = "none"):
        _check_args(weight.new_empty(0, weight.shape[-1] if weight.dim() == 2 else 0), weight, bias, norm,
                    norm_weight, norm_bias, act, None)
        self.in_features = weight.shape[1]
        self._op_args, self._ref_kwargs = _bind(weight, bias, norm, norm_weight, norm_bias, eps, act)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) -> (..., N); residual (..., N) or None."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"pygpt.{OP}: x must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        return _run(x, residual, self._op_args, self._ref_kwargs)


def _fused_linear_fake(x, weight, bias, norm_weight, norm_bias, norm, eps, act, residual) -> torch.Tensor:
    N = weight.shape[0] // 2 if act == ACTS["swiglu"] else weight.shape[0]
    dtype = weight.dtype if residual is None else residual.dtype
    return x.new_empty((x.shape[0], N), dtype=dtype)


def _fused_linear_on_cuda(x, weight, bias, norm_weight, norm_bias, norm, eps, act, residual) -> torch.Tensor:
    from pygpt.kernels.fused_linear import fused_linear_triton

    return fused_linear_triton(x, weight, bias, norm_weight, norm_bias, norm, eps, act, residual)


def _register() -> None:
    torch.library.register_fake("pygpt::fused_linear")(_fused_linear_fake)
    torch.library.register_kernel("pygpt::fused_linear", "cuda")(_fused_linear_on_cuda)


if extension() is not None:
    _register()
