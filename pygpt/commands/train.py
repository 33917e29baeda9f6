"""`pygpt train`: train a model with a preset (lite: CPU minutes; heavy: GPU) or a JSON config, overridable with
--set key=value. Writes out_dir/best (best val) and out_dir/last (resumable), logs to logs/ for tensorboard,
and ends with the full-val score of the best checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--config", default="lite", help="preset name (lite, heavy) or a JSON file (default: lite)")
    parser.add_argument("--model", default="gpt", help="model type (default: gpt)")
    parser.add_argument("--data", help="training text file (default: Tiny Shakespeare)")
    parser.add_argument("--out", help="output directory (overrides out_dir)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--max-iters", type=int, help="training steps (overrides max_iters)")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds of training")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/last")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any model or train setting, e.g. --set n_layer=4 --set lr=3e-4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pygpt.data import load_corpus
    from pygpt.train import Trainer, load_config

    overrides = list(args.set)
    for flag, key in ((args.data, "data"), (args.out, "out_dir"), (args.device, "device"),
                      (args.max_iters, "max_iters"), (args.time_limit, "time_limit")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.no_progress:
        overrides.append("progress=false")
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"pygpt train: {err}") from None
    if args.model != "gpt":
        raise SystemExit(f"pygpt train: unknown --model {args.model!r} (available: gpt)")
    corpus = load_corpus(cfg.train.data)
    cfg.model.vocab_size = corpus.tokenizer.vocab_size

    from pygpt.models import GPT

    model = GPT(cfg.model)
    trainer = Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg.train, run_config=cfg.to_dict())
    if args.resume:
        last = Path(cfg.train.out_dir) / "last"
        trainer.resume(last)
        print(f"resumed from {last} at step {trainer.step}")
    if trainer.is_main:
        print(f"training {model.num_params():,}-parameter GPT on {corpus.source} ({len(corpus.train_ids):,} train "
              f"chars) on {trainer.device}, {trainer.world_size} process(es)")
    result = trainer.fit()
    if trainer.is_main:
        print(f"stopped after {result.steps} steps ({result.stopped_because}), {result.train_seconds:.0f} s; best val "
              f"estimate {result.best_val:.4f} at step {result.best_step} ({result.seconds_to_best:.0f} s)")
        if result.full_val is not None:
            print(result.full_val)
        print(f"best checkpoint: {Path(cfg.train.out_dir) / 'best'}")
    return 0
