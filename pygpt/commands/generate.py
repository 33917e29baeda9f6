"""`pygpt generate`: sample text from a checkpoint (default: the bundled model), streamed to stdout as it is
produced. Temperature, top-k, top-p (nucleus) and min-p sampling; --seed makes it reproducible; --num-samples N
generates N continuations in one batch (printed one after another once they are done). Uses the KV-cache engine
(CUDA-graphed decode step on GPU); --no-cache recomputes the whole context every token."""

from __future__ import annotations

import argparse
import sys

SEPARATOR = "\n---------------\n"  # between samples, as nanoGPT's sample.py prints them


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled lite model)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    parser.add_argument("--length", type=int, default=500, help="characters to generate (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    parser.add_argument("--min-p", type=float, default=0.0,
                        help="drop tokens less likely than min-p times the most likely one (0: off)")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="continuations to generate, as one batch (default: 1, streamed)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", default=None, help="stop once the generated text ends with this string")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole context every token")
    parser.add_argument("--no-cuda-graph", action="store_true", help="don't capture the decode step on CUDA")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step: the first run compiles (tens of seconds, then cached "
                             "on disk); pays off for long generations (see `pygpt bench generate`)")


def run(args: argparse.Namespace) -> int:
    from pygpt.infer import Engine
    from pygpt.train import load_checkpoint, resolve_device

    try:
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        if args.length < 1:
            raise ValueError(f"--length must be >= 1, got {args.length}")
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint, device=device)
        engine = Engine(ckpt.model, ckpt.tokenizer, use_cache=not args.no_cache, cuda_graph=not args.no_cuda_graph,
                        compile=args.compile)
        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        seed=args.seed, stop=args.stop)
        if args.num_samples == 1:
            pieces = engine.stream(args.prompt, args.length, **sampling)  # checks the prompt before it is echoed
            sys.stdout.write(args.prompt)
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        else:
            texts = engine.generate([args.prompt] * args.num_samples, args.length, **sampling)
            sys.stdout.write(SEPARATOR.join(args.prompt + text for text in texts))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt generate: {err}") from None
    sys.stdout.write("\n")
    return 0
