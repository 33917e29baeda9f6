"""Time sample: the Torch reference (topk, softmax, sort + cumsum, multinomial) against pygpt's fused kernel
(Triton on CUDA, C++ on CPU) in the same run, fp32 logits, temperature 0.8.

    python benchmarks/bench_sample.py                 # CUDA if available, else CPU
    python benchmarks/bench_sample.py --device cpu --threads 2
    python benchmarks/bench_sample.py --cuda-backend cuda   # the CUDA C++ kernel instead of Triton

The kernel is timed through the public ops.sample with an rng_state (what a decode loop calls: the op plus the
in-place offset advance; on CUDA also the lazy error check, which a captured CUDA graph leaves out). On CUDA each
case also has a "graph" row: the same call captured in a CUDA graph and replayed (what the decode loop does),
which leaves out the host's launch overhead - the split path for small batches is three launches.
GB/s counts the logits read once. Cases: top-k 50 alone and top-p 0.9 alone (the sampling issue's two targets),
and both together.
"""

import torch

import pygpt.ops as ops
from pygpt.benchmark import (Comparison, apply_benchmark_args, benchmark_parser, cuda_graphed, print_comparisons,
                             time_ms)
from pygpt.ops.sampling import sample_reference

SHAPES = [(1, 65), (64, 65), (1, 32000), (64, 32000), (1, 128256), (64, 128256)]
SETTINGS = [("k50", 50, 1.0), ("k50 p0.9", 50, 0.9), ("p0.9", 0, 0.9)]
TEMPERATURE = 0.8


def main() -> None:
    args = benchmark_parser(__doc__, with_dtype=False).parse_args()
    device, _, kernel = apply_benchmark_args(args)

    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    state = ops.make_rng_state(0, device)
    for label, top_k, top_p in SETTINGS:
        for B, V in SHAPES:
            logits = torch.randn(B, V, device=device) * 3
            ids = ops.sample(logits, TEMPERATURE, top_k, top_p, rng_state=state)
            if top_k:  # a cheap sanity check before timing: the draw is among each row's top k
                assert (logits.topk(top_k).indices == ids[:, None]).any(-1).all()
            ref = time_ms(lambda: sample_reference(logits, TEMPERATURE, top_k, top_p, generator=generator), device)
            ker = time_ms(lambda: ops.sample(logits, TEMPERATURE, top_k, top_p, rng_state=state), device)
            rows.append(Comparison(f"{label} B{B} V{V}", ref, ker, logits.numel() * logits.element_size()))
            if device.type == "cuda":  # the kernel as a decode loop runs it: replayed, no launch overhead
                graphed = cuda_graphed(lambda: ops.sample(logits, TEMPERATURE, top_k, top_p, rng_state=state), device)
                rows.append(Comparison(f"{label} B{B} V{V} graph", ref, time_ms(graphed, device),
                                       logits.numel() * logits.element_size()))
    ops.check_sample_errors()
    print_comparisons(f"sample, float32, T={TEMPERATURE}", device, rows, kernel)


if __name__ == "__main__":
    main()
