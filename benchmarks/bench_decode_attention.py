"""Time the decode step - rotate q and k at their positions, append k and v to the ring-buffer KV cache, attend
over every valid cache entry - as Torch does it against pygpt's fused rope_decode_attention, in the same run.

    python benchmarks/bench_decode_attention.py            # CUDA (bf16) when available: both CUDA-graphed
    python benchmarks/bench_decode_attention.py --device cpu --threads 2

The Torch step is what a Torch user writes for one new token per sequence: rotate-half RoPE, an index_put into
the ring slot, scaled_dot_product_attention over the whole cache with a mask of the valid slots. On CUDA both
steps are captured in a CUDA graph and timed as replays, as a decode loop runs them. The cache starts full
(steady state of a long generation: every step overwrites the oldest slot). GB/s counts the K and V cache read
once; '% copy' compares it with the same run's device-to-device copy.
"""

import torch
import torch.nn.functional as F

import pygpt.ops as ops
from pygpt.benchmark import (Comparison, apply_benchmark_args, benchmark_parser, copy_bandwidth_gbs, cuda_graphed,
                             print_comparisons, time_ms)
from pygpt.ops.kv_cache import rope_decode_attention_reference
from pygpt.ops.rotary import rotary_reference
from pygpt.testing import assert_close

# (B, H, Hkv, D, C): the attention issue's three decode targets, then a GQA case
GPU_CASES = [(1, 32, 32, 128, 32768), (1, 6, 6, 64, 256), (32, 32, 32, 128, 4096), (8, 32, 8, 128, 8192)]
CPU_CASES = [(1, 4, 4, 32, 128), (1, 6, 6, 64, 256), (8, 8, 2, 64, 1024), (1, 32, 32, 128, 4096)]
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def torch_decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """One token per sequence in plain Torch: q (B, 1, H, D), k, v (B, 1, Hkv, D), cache (B, Hkv, C, D) ->
    (B, 1, H, D); mutates the cache and counters exactly like rope_decode_attention, with no host sync."""
    B, _, H, D = q.shape
    Hkv, C = k_cache.shape[1], k_cache.shape[2]
    pos = lengths.long()
    q, k = rotary_reference(q, pos[:, None]), rotary_reference(k, pos[:, None])
    batch, slot = torch.arange(B, device=q.device), pos % C
    k_cache[batch, :, slot] = k[:, 0]
    v_cache[batch, :, slot] = v[:, 0]
    lengths += 1
    torch.maximum(starts, lengths - C, out=starts)
    # Slot s holds the newest position p' <= pos with p' = s (mod C); it is valid from starts on.
    slot_pos = pos[:, None] - (pos[:, None] - torch.arange(C, device=q.device)) % C
    valid = slot_pos >= starts.long()[:, None]  # (B, C)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache, attn_mask=valid[:, None, None, :],
                                         enable_gqa=H != Hkv)
    return out.transpose(1, 2)


def full_cache(B, Hkv, D, C, device, dtype):
    k_cache = torch.randn(B, Hkv, C, D, device=device, dtype=dtype)
    v_cache = torch.randn(B, Hkv, C, D, device=device, dtype=dtype)
    lengths = torch.full((B,), C, device=device, dtype=torch.int32)
    return k_cache, v_cache, lengths, torch.zeros_like(lengths)


def check_step(q, k, v, cache, dtype) -> None:
    """Both steps against the reference on copies of the cache, before any timing."""
    expected = rope_decode_attention_reference(q, k, v, *(t.clone() for t in cache))
    for name, step in (("pygpt", ops.rope_decode_attention), ("torch", torch_decode_step)):
        assert_close(step(q, k, v, *(t.clone() for t in cache)), expected, dtype, tol=TOL, msg=name)


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    device, dtype, kernel = apply_benchmark_args(args)

    rows = []
    for B, H, Hkv, D, C in GPU_CASES if device.type == "cuda" else CPU_CASES:
        q = torch.randn(B, 1, H, D, device=device, dtype=dtype)
        k, v = (torch.randn(B, 1, Hkv, D, device=device, dtype=dtype) for _ in range(2))
        cache = full_cache(B, Hkv, D, C, device, dtype)
        check_step(q, k, v, cache, dtype)
        cache_bytes = 2 * cache[0].numel() * cache[0].element_size()
        times = [time_ms(cuda_graphed(lambda step=step: step(q, k, v, *cache), device), device)
                 for step in (torch_decode_step, ops.rope_decode_attention)]
        rows.append(Comparison(f"B{B} H{H}/{Hkv} D{D} cache {C}", *times, cache_bytes))
    graphs = ", CUDA-graphed" if device.type == "cuda" else ""
    print_comparisons(f"decode step (rotate + append + attend), {str(dtype).removeprefix('torch.')}{graphs}",
                      device, rows, kernel, copy_bandwidth_gbs(device))


if __name__ == "__main__":
    main()
