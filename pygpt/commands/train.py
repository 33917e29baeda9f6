"""`pygpt train`: train a model with a preset (lite: CPU minutes; heavy: GPU) or a JSON config, overridable with
--set key=value. Writes out_dir/best (best val) and out_dir/last (resumable), logs to logs/ for tensorboard,
and ends with the full-val score of the best checkpoint."""

from __future__ import annotations

import argparse
import shutil


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--config", default="lite", help="preset name (lite, heavy) or a JSON file (default: lite)")
    parser.add_argument("--model", default="gpt",
                        help="gpt (default), bigram-count (add-k counts, no optimizer), bigram (learned table), "
                             "bigram-onehot / bigram-emb (LeakyReLU MLP bigrams) or mlp (Bengio et al. 2003); "
                             "--set takes the chosen model's settings (e.g. --set context=3 --set batchnorm=true)")
    parser.add_argument("--data", help="training text file or word list (default: Tiny Shakespeare)")
    parser.add_argument("--dataset", default="auto", choices=("auto", "text", "words"),
                        help="text: one character stream split 90/10; words: one word per line, makemore's "
                             "seeded 80/10/10 split, '.' as start/end token; auto (default): words when every "
                             "line of --data is a single word")
    parser.add_argument("--out", help="output directory (overrides out_dir)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--max-iters", type=int, help="training steps (overrides max_iters)")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds of training")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/last")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an out_dir that already holds a run (its best/ and last/ are replaced)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any model or train setting, e.g. --set n_layer=4 --set lr=3e-4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pygpt.data.words import WordDataset
    from pygpt.models import MODEL_TYPES
    from pygpt.train import Trainer, load_config, resolve_device
    from pygpt.train.checkpoint import checkpoint_exists

    if args.model not in MODEL_TYPES:
        raise SystemExit(f"pygpt train: unknown --model {args.model!r} (available: {', '.join(MODEL_TYPES)})")
    try:
        for flag, value in (("--max-iters", args.max_iters), ("--time-limit", args.time_limit)):
            if value is not None and not value >= 0:  # (NaN too)
                raise ValueError(f"{flag} must be >= 0, got {value}")
        model_sets, overrides = split_model_overrides(args.model, args.set)
        if args.model != "gpt":
            overrides[:0] = classic_defaults(args.model)  # (a later --set or flag wins)
        for flag, key in ((args.data, "data"), (args.out, "out_dir"), (args.device, "device"),
                          (args.max_iters, "max_iters"), (args.time_limit, "time_limit")):
            if flag is not None:
                overrides.append(f"{key}={flag}")
        if args.no_progress:
            overrides.append("progress=false")
        cfg = load_config(args.config, overrides)
        resolve_device(cfg.train.device)  # an unusable device fails here, not in the Trainer after the data is read
        data = load_training_data(cfg.train.data, args.dataset)
        if args.model != "gpt":
            cfg.model = build_model_config(args.model, data.tokenizer.vocab_size, model_sets,
                                           text=not isinstance(data, WordDataset))
            cfg.model_type = args.model
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"pygpt train: {err}") from None
    words = data if isinstance(data, WordDataset) else None

    import torch

    torch.manual_seed(cfg.train.seed)  # the initial weights follow the seed too: a run is reproducible
    if args.model == "gpt":
        from pygpt.models import GPT

        cfg.model.vocab_size = data.tokenizer.vocab_size
        model = GPT(cfg.model)
    else:
        model = MODEL_TYPES[args.model][0](cfg.model)
    train_ids, val_ids = training_streams(data)
    out_dir = Path(cfg.train.out_dir)
    try:
        if not words:
            check_split_lengths(train_ids, val_ids, model.config.block_size)
        elif args.model == "gpt":  # a batch is whole words: '.' + word (the inputs of word + '.')
            longest = max(len(w) for w in words.train + words.dev + words.test)
            if longest + 1 > model.config.block_size:
                raise ValueError(f"the longest word has {longest} characters: a GPT on this word list needs "
                                 f"--set block_size={longest + 1} or more (got {model.config.block_size})")
        if not (args.resume or args.overwrite) and any((out_dir / name).exists() for name in ("best", "last")):
            raise ValueError(f"{out_dir} already holds a run (best/, last/): --resume continues it, --overwrite "
                             "starts over and replaces it, --out DIR trains elsewhere")
    except ValueError as err:
        raise SystemExit(f"pygpt train: {err}") from None
    if args.model == "bigram-count":  # training is counting: no optimizer steps
        model.count_stream(train_ids)
        cfg.train.max_iters = 0
    trainer = Trainer(model, train_ids, val_ids, data.tokenizer, cfg.train, run_config=cfg.to_dict(),
                      **(word_trainer_args(words, cfg.train) if words else {}))
    if args.overwrite and not args.resume and trainer.is_main:
        for name in ("best", "last"):  # the old run goes now: its best must never pass for this run's
            shutil.rmtree(out_dir / name, ignore_errors=True)
    if args.resume:
        last = out_dir / "last"
        if not checkpoint_exists(last):  # (load_checkpoint's own message is for generate/eval: a hint to train one)
            raise SystemExit(f"pygpt train --resume: no run to resume in {out_dir} (no {last}); train one there "
                             "without --resume, or pass the --out DIR of the run to continue")
        try:
            trainer.resume(last)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"pygpt train --resume: {err}") from None
        print(f"resumed from {last} at step {trainer.step}")
    if trainer.is_main:
        if args.model == "gpt" and not words:
            print(f"training {model.num_params():,}-parameter GPT on {data.source} ({len(data.train_ids):,} train "
                  f"chars) on {trainer.device}, {trainer.world_size} process(es)")
        else:
            what = f"{len(words.train):,} train words" if words else f"{len(data.train_ids):,} train chars"
            if args.model == "bigram-count":
                print(f"counted {int(model.counts.sum()):,} bigrams of {data.source} ({what}); no optimizer steps")
            else:
                n_params = sum(p.numel() for p in model.parameters())
                print(f"training {n_params:,}-parameter {args.model} on {data.source} ({what}) on "
                      f"{trainer.device}, {trainer.world_size} process(es)")
    result = trainer.fit()
    if trainer.is_main:
        print(f"stopped after {result.steps} steps ({result.stopped_because}), {result.train_seconds:.0f} s; best val "
              f"estimate {result.best_val:.4f} at step {result.best_step} ({result.seconds_to_best:.0f} s)")
        if result.full_val is not None and words:
            from pygpt.data.words import dev_test_line, evaluate_words
            from pygpt.train import load_checkpoint

            best = load_checkpoint(Path(cfg.train.out_dir) / "best", device=trainer.device)
            with trainer.autocast():  # (as the dev split was scored)
                test = evaluate_words(best.model, words.test, words.tokenizer)
            print(dev_test_line(result.full_val, test))
        elif result.full_val is not None:
            print(result.full_val)
        if result.best_step >= 0:
            print(f"best checkpoint: {Path(cfg.train.out_dir) / 'best'}")
        else:
            print("no eval gave a finite val loss: no best checkpoint (lower lr? check the data)")
        if result.stopped_because == "interrupted":
            print(f"interrupted: `pygpt train ... --resume` continues from {out_dir / 'last'}")
            return 130
    return 0


def check_split_lengths(train_ids, val_ids, block_size: int) -> None:
    """A clear error, before training starts, when a split is too short for one window of block_size + 1."""
    for name, ids in (("train", train_ids), ("val", val_ids)):
        if len(ids) < block_size + 1:
            raise ValueError(f"the {name} split has {len(ids):,} characters, fewer than block_size + 1 = "
                             f"{block_size + 1}: use a longer text, or a smaller --set block_size=N")


def classic_defaults(model_type: str) -> list[str]:
    """Train settings a classic model takes instead of the GPT preset's: its own out_dir; a step-based schedule
    of 5000 steps (the lite preset runs on a 19-minute clock); one thread (for matrices this small a second
    thread only adds synchronisation: 2000 MLP steps took 75 s with 2 threads, 2 s with 1, on the dev box)."""
    return [f"out_dir=out/{model_type}", "max_iters=5000", "time_limit=0", "schedule_by_time=false", "threads=1"]


def split_model_overrides(model_type: str, settings: list[str]) -> tuple[list[str], list[str]]:
    """Split --set items into the classic model's settings and the rest (train settings; for the GPT, all)."""
    if model_type == "gpt":
        return [], list(settings)
    from dataclasses import fields

    from pygpt.models import MODEL_TYPES
    from pygpt.train import TrainConfig

    model_names = {f.name for f in fields(MODEL_TYPES[model_type][1])}
    train_names = {f.name for f in fields(TrainConfig)}
    model_sets, rest = [], []
    for item in settings:
        if "=" not in item:
            rest.append(item)  # load_config says what is wrong with it
            continue
        key = item.split("=", 1)[0]
        section, _, name = key.rpartition(".")
        if name in model_names and section in ("", "model"):
            model_sets.append(item)
        elif name in train_names and section in ("", "train"):
            rest.append(item)
        else:
            raise ValueError(f"--set {key}: unknown setting for --model {model_type}; valid settings: "
                             f"{', '.join(sorted(model_names - {'vocab_size'}))} (model), "
                             f"{', '.join(sorted(train_names))} (train)")
    return model_sets, rest


TEXT_WINDOW = 128  # the MLP's default window on a text stream (see build_model_config)


def build_model_config(model_type: str, vocab_size: int, settings: list[str], text: bool = False):
    """The config of a classic model: its defaults, the data's vocab_size, then the key=value settings.

    On a text stream (``text``) the MLP's window defaults to TEXT_WINDOW tokens: each window's first context - 1
    targets see a padded context, which with the bare default (window = context) was all but one target of
    every window - the loss reported was ~0.2 nats above the model's, and it trained on made-up contexts."""
    from dataclasses import fields

    from pygpt.models import MODEL_TYPES
    from pygpt.train.config import field_types, parse_setting

    config_cls = MODEL_TYPES[model_type][1]
    defaults = {f.name: f.default for f in fields(config_cls)}
    types = field_types(config_cls)
    values = {"vocab_size": vocab_size}
    for item in settings:
        key, value = item.split("=", 1)
        name = key.rpartition(".")[2]
        try:
            values[name] = parse_setting(value, types[name])
        except ValueError as err:
            raise ValueError(f"--set {key}: {err}") from None
    if text and model_type == "mlp" and "block_size" not in values:
        values["block_size"] = max(TEXT_WINDOW, values.get("context", defaults["context"]))
    return config_cls(**values)


def load_training_data(path: str, dataset: str = "auto"):
    """A Corpus (one character stream) or, for a word list, a WordDataset (makemore's split)."""
    from pygpt.data import load_corpus
    from pygpt.data.words import load_words, looks_like_words

    if dataset == "auto":
        dataset = "words" if path and looks_like_words(path) else "text"
    if dataset == "words":
        if not path:
            raise ValueError("--dataset words needs a word list: --data FILE (one word per line)")
        return load_words(path)
    return load_corpus(path)


def training_streams(data):
    """(train ids, val ids) as 1-D streams; for a word list '.emma.olivia.' (every bigram of its words once)."""
    from pygpt.data.words import WordDataset, word_stream

    if isinstance(data, WordDataset):
        return word_stream(data.train, data.tokenizer), word_stream(data.dev, data.tokenizer)
    return data.train_ids, data.val_ids


def word_trainer_args(words, train_cfg) -> dict:
    """Trainer arguments for a word list: whole-word batches, and the exact dev loss as the final score."""
    import os

    from pygpt.data.words import WordSampler, evaluate_words
    from pygpt.train import resolve_device

    device = resolve_device(train_cfg.device)
    rank = int(os.environ.get("RANK", 0))
    return {
        "train_sampler": WordSampler(words.train, words.tokenizer, train_cfg.batch_size, train_cfg.seed + rank, device),
        "val_sampler": WordSampler(words.dev, words.tokenizer, train_cfg.batch_size, seed=0, device=device),
        "evaluator": lambda model: evaluate_words(model, words.dev, words.tokenizer),
    }
