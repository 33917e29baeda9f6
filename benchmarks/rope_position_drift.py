"""How far RoPE's float32 angles move a model's predictions as absolute positions grow (why the generation engine
rebases its KV cache, pygpt.infer.KVCache.rebase).

The same 128-character windows of validation text are run through the bundled lite model with their positions
starting at 0 and at offset P (the KV cache's counters set to P before the prefill). RoPE depends only on the
distance between query and key, so exact arithmetic would give identical logits; the table shows what float32
angles P * inv_freq make of them: the largest logit difference and the mean KL divergence of the next-token
distributions, in nats.

    python benchmarks/rope_position_drift.py [--checkpoint DIR] [--data FILE] [--windows 8]
"""

from __future__ import annotations

import argparse

import torch

from pygpt.data import load_corpus
from pygpt.infer import KVCache
from pygpt.train import load_checkpoint

OFFSETS = (10**3, 10**4, 1 << 14, 10**5, 10**6, 10**7, 1 << 24)


@torch.no_grad()
def logits_at(model, windows: torch.Tensor, offset: int) -> torch.Tensor:
    """(N, T, V) float64 logits of each window (N, T) prefilled at positions offset .. offset + T - 1."""
    out = []
    for row in windows:
        cache = KVCache.for_model(model, 1)
        cache.lengths.fill_(offset)
        cache.starts.fill_(offset)
        logits, _ = model(row[None], kv_cache=cache)
        out.append(logits[0].double())
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a RoPE GPT checkpoint (default: the bundled lite model)")
    parser.add_argument("--data", default="", help="text file (default: Tiny Shakespeare)")
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    if getattr(ckpt.model.config, "pos", None) != "rope":
        raise SystemExit("rope_position_drift: the checkpoint's model has no RoPE positions")
    T = ckpt.model.config.block_size
    try:
        val = load_corpus(args.data, tokenizer=ckpt.tokenizer).val_ids
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"rope_position_drift: {err}") from None
    step = max(T, (len(val) - T) // args.windows)
    windows = torch.stack([val[i:i + T] for i in range(0, len(val) - T + 1, step)][:args.windows])
    base = logits_at(ckpt.model, windows, 0)
    base_logp = base.log_softmax(-1)
    print(f"{windows.shape[0]} windows of {T} tokens of {args.data or 'Tiny Shakespeare'}'s validation split, "
          f"{ckpt.path}; against the same windows at positions 0 .. {T - 1}")
    print(f"{'offset P':>10}  {'max |logit diff|':>16}  {'mean KL (nats)':>14}")
    for offset in OFFSETS:
        logits = logits_at(ckpt.model, windows, offset)
        kl = (base_logp.exp() * (base_logp - logits.log_softmax(-1))).sum(-1).mean()
        print(f"{offset:>10}  {float((logits - base).abs().max()):>16.4f}  {float(kl):>14.2e}")


if __name__ == "__main__":
    main()
