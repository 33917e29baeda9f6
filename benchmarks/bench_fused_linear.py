"""Time a decode step's Linear layers as Torch runs them (norm, cast, linear, activation, residual add: one op
each) against pygpt's fused_linear (one op), in the same run.

    python benchmarks/bench_fused_linear.py            # CUDA when available (bf16 weights): both CUDA-graphed
    python benchmarks/bench_fused_linear.py --device cpu --threads 2     # fp32, lite's and heavy's layers

The cases are the layers of one transformer block at batch 1 (heavy: 384 wide; on CUDA also a 4096-wide SwiGLU
block at batch 1 and 16), with the residual stream in float32 as under autocast. On CUDA both sides are
captured in a CUDA graph and timed as replays, as the decode loop runs them; GB/s counts the weights read once.
"""

import torch
import torch.nn.functional as F

import pygpt.ops as ops
from pygpt.benchmark import (Comparison, apply_benchmark_args, benchmark_parser, copy_bandwidth_gbs, cuda_graphed,
                             print_comparisons, time_ms)

# (name, rows M, K in, N out, norm, act, residual)
HEAVY = [("qkv: norm1+qkv", 1, 384, 1152, "layernorm", "none", False),
         ("proj+residual", 1, 384, 384, "none", "none", True),
         ("up: norm2+up+gelu", 1, 384, 1536, "layernorm", "gelu", False),
         ("down+residual", 1, 1536, 384, "none", "none", True),
         ("head: norm_f+lm_head V65", 1, 384, 65, "layernorm", "none", False)]
LITE = [("lite qkv: norm1+qkv", 1, 128, 384, "layernorm", "none", False),
        ("lite up: norm2+up+gelu", 1, 128, 512, "layernorm", "gelu", False),
        ("lite down+residual", 1, 512, 128, "none", "none", True)]
LARGE = [("4096 up: rms+swiglu B1", 1, 4096, 11008, "rmsnorm", "swiglu", False),
         ("4096 down+res B1", 1, 11008, 4096, "none", "none", True),
         ("4096 up: rms+swiglu B16", 16, 4096, 11008, "rmsnorm", "swiglu", False)]


def torch_linear(x, weight, norm_weight, norm, act, residual):
    """The unfused layers as the model runs them under autocast: norm in fp32, cast, GEMM, activation, add."""
    h = x
    if norm == "layernorm":
        h = F.layer_norm(h, (h.shape[-1],), norm_weight)
    elif norm == "rmsnorm":
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_weight
    y = F.linear(h.to(weight.dtype), weight)
    if act == "gelu":
        y = F.gelu(y)
    elif act == "swiglu":
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None else residual + y


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    device, dtype, kernel = apply_benchmark_args(args)
    cases = HEAVY + LARGE if device.type == "cuda" else LITE + HEAVY
    rows = []
    for name, M, K, N, norm, act, with_residual in cases:
        n_w = 2 * N if act == "swiglu" else N
        x = torch.randn(M, K, device=device)
        weight = (torch.randn(n_w, K, device=device) / K ** 0.5).to(dtype)
        norm_weight = None if norm == "none" else 1 + 0.1 * torch.randn(K, device=device)
        residual = torch.randn(M, N, device=device) if with_residual else None
        fused = ops.FusedLinear(weight, norm=norm, norm_weight=norm_weight, eps=1e-5, act=act)
        expected = torch_linear(x, weight, norm_weight, norm, act, residual)
        got = fused(x, residual=residual)
        tol = 2e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got.float(), expected.float(), atol=tol * max(1.0, expected.abs().max().item()),
                                   rtol=tol)
        with torch.inference_mode():
            ref = time_ms(cuda_graphed(lambda: torch_linear(x, weight, norm_weight, norm, act, residual), device),
                          device)
            ker = time_ms(cuda_graphed(lambda: fused(x, residual=residual), device), device)
        rows.append(Comparison(f"{name} K{K} N{N}", ref, ker, weight.numel() * weight.element_size()))
    print_comparisons(f"fused_linear, {str(dtype).removeprefix('torch.')} weights", device, rows, kernel,
                      copy_bandwidth_gbs(device))


if __name__ == "__main__":
    main()
