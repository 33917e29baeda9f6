"""`pygpt bench generate`: generation speed per ../shared/EVAL.md - batch 1, a 1-character prompt, 1000 new
characters at temperature 0.8 and top-k 10, after a 50-token warm-up - as ms/token, for full recompute (no
cache), the KV cache (decode steps on fused ops; "-unfused": model.forward on the cache), the KV cache with the
decode step torch.compile'd (its compile time, part of the warm-up, printed apart), and on CUDA the same with
the decode step CUDA-graphed."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("what", choices=["generate"], help="what to time")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled lite model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--modes", default="", help="comma-separated subset of no-cache,cache,cache-unfused,"
                                                    "cache+compile (and on CUDA cache+graph,cache+graph-unfused,"
                                                    "cache+graph+compile)")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from pygpt.benchmark import device_name
    from pygpt.infer import Engine
    from pygpt.train import load_checkpoint, resolve_device

    if args.tokens < 1:
        raise SystemExit(f"pygpt bench: --tokens must be >= 1, got {args.tokens}")
    if args.threads < 0:
        raise SystemExit(f"pygpt bench: --threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt bench: {err}") from None
    gpt = getattr(ckpt.model, "model_type", None) == "gpt"
    modes = {"no-cache": dict(use_cache=False, cuda_graph=False), "cache": dict(use_cache=True, cuda_graph=False),
             "cache-unfused": dict(use_cache=True, cuda_graph=False, fused=False),
             "cache+compile": dict(use_cache=True, cuda_graph=False, compile=True)}
    if device.type == "cuda":
        modes["cache+graph"] = dict(use_cache=True, cuda_graph=True)
        modes["cache+graph-unfused"] = dict(use_cache=True, cuda_graph=True, fused=False)
        modes["cache+graph+compile"] = dict(use_cache=True, cuda_graph=True, compile=True)
    if args.modes:
        unknown = sorted(set(args.modes.split(",")) - set(modes))
        if unknown:
            raise SystemExit(f"pygpt bench: unknown --modes {unknown} on {device.type} (choose from {list(modes)})")
        modes = {m: modes[m] for m in args.modes.split(",")}
    cfg = ckpt.model.config
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    if gpt:
        what = f"{n_params:,}-parameter GPT ({cfg.n_layer} layers, {cfg.n_embd} dims, block {cfg.block_size})"
    else:  # the classic models have no KV cache: every mode would time the same recompute loop
        what = f"{n_params:,}-parameter {ckpt.model.model_type} (no KV cache: no-cache only)"
        modes = {"no-cache": modes.get("no-cache", dict(use_cache=False, cuda_graph=False))}
    print(f"generate on {device_name(device)}: {what}, batch 1, {args.tokens} tokens, T 0.8, top-k 10")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, options in modes.items():
        engine = Engine(ckpt.model, ckpt.tokenizer, **options)
        start = time.perf_counter()
        for _ in engine.generate_ids([[0]], 50, temperature=0.8, top_k=10, seed=0):  # warm-up
            pass
        sync()
        warm_up = time.perf_counter() - start
        start = time.perf_counter()
        for _ in engine.generate_ids([[0]], args.tokens, temperature=0.8, top_k=10, seed=0):
            pass
        sync()
        ms = (time.perf_counter() - start) * 1e3 / args.tokens
        compiled = f"   (compile + 50-token warm-up: {warm_up:.1f} s)" if options.get("compile") else ""
        print(f"{name:<20} {ms:8.3f} ms/token{compiled}")
    return 0
