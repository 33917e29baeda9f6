"""Time rope_attention: the Torch reference (rotate-half RoPE + scaled_dot_product_attention) against pygpt's
fused kernel, forward and forward + backward, in the same run.

    python benchmarks/bench_rope_attention.py --device cpu --threads 2
    python benchmarks/bench_rope_attention.py            # CUDA (bf16) when available

q, k, v are views of one fused projection (B, T, (H + 2 Hkv) D), as the GPT model makes them.
"""

import torch

import pygpt.ops as ops
from pygpt.benchmark import Comparison, apply_benchmark_args, benchmark_parser, print_comparisons, time_ms
from pygpt.ops.attention import rope_attention_reference
from pygpt.testing import assert_close

# (B, T, H, Hkv, D)
GPU_SHAPES = [(8, 2048, 32, 32, 128), (64, 256, 6, 6, 64), (4, 1024, 32, 8, 128)]
CPU_SHAPES = [(32, 128, 4, 4, 32), (8, 256, 6, 6, 64), (4, 512, 8, 2, 64)]
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def make_inputs(B, T, H, Hkv, D, device, dtype, requires_grad=False):
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, device=device, dtype=dtype, requires_grad=requires_grad)
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    positions = torch.arange(T, device=device)
    return qkv, (q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D), positions)


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    device, dtype, kernel = apply_benchmark_args(args)

    fwd_rows, bwd_rows = [], []
    for B, T, H, Hkv, D in GPU_SHAPES if device.type == "cuda" else CPU_SHAPES:
        case = f"B{B} T{T} H{H}/{Hkv} D{D}"
        _, inputs = make_inputs(B, T, H, Hkv, D, device, dtype)
        with torch.no_grad():
            out = ops.rope_attention(*inputs)
            expected = rope_attention_reference(*(t.double() if t.is_floating_point() else t for t in inputs))
            assert_close(out, expected, dtype, tol=TOL)
            fwd_rows.append(Comparison(case, time_ms(lambda: rope_attention_reference(*inputs), device),
                                       time_ms(lambda: ops.rope_attention(*inputs), device)))
        qkv, inputs = make_inputs(B, T, H, Hkv, D, device, dtype, requires_grad=True)
        grad = torch.randn(B, T, H, D, device=device, dtype=dtype)

        def step(fn):
            qkv.grad = None
            fn(*inputs).backward(grad)
        bwd_rows.append(Comparison(case, time_ms(lambda: step(rope_attention_reference), device),
                                   time_ms(lambda: step(ops.rope_attention), device)))
    dt = str(dtype).removeprefix("torch.")
    print_comparisons(f"rope_attention forward, {dt}", device, fwd_rows, kernel)
    print()
    print_comparisons(f"rope_attention forward + backward, {dt}", device, bwd_rows, kernel)


if __name__ == "__main__":
    main()
