"""`pygpt tune`: hyper-parameter search over the trainer with Optuna (TPE, multivariate): model and trainer
settings, every trial trained for the same --trial-time seconds and scored by its full-val loss, poor trials
pruned from their val estimates (median or Hyperband), the study kept in SQLite and resumed when run again with
the same --storage/--study. Each study keeps its files in OUT/STUDY (trial checkpoints in OUT/STUDY/trials), so
studies can share OUT. Ends with a table of the best trials and OUT/STUDY/best_config.json, which
`pygpt train --config OUT/STUDY/best_config.json` trains (with the base config's budget). Ctrl-C stops the study
(exit code 130); the same command resumes it. Needs Optuna: pip install 'pygpt[tune]'."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import pygpt.tune as tune_module

    doc = tune_module.__doc__ or ""
    parser.description = __doc__
    parser.epilog = doc[doc.find("Search space file"):] if "Search space file" in doc else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", default="lite", help="base config: preset (lite, heavy) or JSON file "
                        "(default: lite); the settings not searched keep its values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base setting, as in pygpt train")
    parser.add_argument("--trials", type=int, help="trained trials to run now (invalid draws don't count); "
                        "default 10 unless --timeout is given")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (a running "
                        "trial finishes)")
    parser.add_argument("--trial-time", type=float, default=60.0, metavar="SECONDS",
                        help="training time of every trial (time_limit with schedule_by_time; default 60; 0: no "
                             "time limit, the base config's max_iters only)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N trials at once, in N processes sharing the storage (default 1); each gets "
                             "cpu_count/N torch threads unless --set threads=K")
    parser.add_argument("--space", metavar="FILE", help="search space, JSON or TOML (format below)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db, shared by the "
                        "studies in OUT)")
    parser.add_argument("--study", help="study name (default: tune-<config name>); an existing study is resumed")
    parser.add_argument("--data", help="training text file (default: Tiny Shakespeare)")
    parser.add_argument("--out", default="out/tune", help="output directory (default: out/tune); each study's "
                        "files go to OUT/STUDY")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                        help="pruner (default: median)")
    parser.add_argument("--prune-after", type=int, default=3, metavar="N",
                        help="the median pruner acts once N trials have finished (default 3)")
    parser.add_argument("--reports", type=int, default=5, metavar="N",
                        help="val estimates reported per trial, evenly over its budget (default 5; they take "
                             "eval_iters batches each out of the budget); none is pruned in the first fifth")
    parser.add_argument("--random-trials", type=int, default=10, metavar="N",
                        help="random trials before TPE models the space (default 10)")
    parser.add_argument("--enqueue-base", action="store_true",
                        help="train the base config's own values of the searched settings as the next trial, so "
                             "the table compares the finds with it under the same trial budget")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random)")
    parser.add_argument("--top", type=int, default=5, help="rows in the table of best trials (default 5)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every trial's checkpoints (default: only the best trial's)")
    parser.add_argument("--show-space", action="store_true", help="print the search space and exit")
    parser.add_argument("--verbose", action="store_true", help="Optuna's own log lines too")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pygpt.tune import OptunaMissing, load_space, parse_space, require_optuna

    try:
        space = load_space(args.space) if args.space else None
        params = parse_space(space)
    except ValueError as err:
        raise SystemExit(f"pygpt tune: {err}") from None
    if args.show_space:
        print("\n".join(str(p) for p in params.values()))
        return 0
    try:
        optuna = require_optuna()
    except OptunaMissing as err:
        raise SystemExit(f"pygpt tune: {err}") from None

    from pygpt.data import load_corpus
    from pygpt.train import load_config
    from pygpt.tune import base_departures, base_settings, default_storage, trial_dir, tune

    overrides = list(args.set)
    for flag, key in ((args.data, "data"), (args.device, "device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    try:
        base = load_config(args.config, overrides)
        corpus = load_corpus(base.train.data)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"pygpt tune: {err}") from None
    if args.trial_time < 0:
        raise SystemExit("pygpt tune: --trial-time must be >= 0")
    if args.jobs < 1:
        raise SystemExit(f"pygpt tune: --jobs must be >= 1, got {args.jobs}")
    trials = args.trials if args.trials is not None or args.timeout is not None else 10
    if args.enqueue_base:
        for reason in base_departures(params, base):
            print(f"warning: the base trial will differ from --config {args.config}: {reason}")
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.ERROR)
    study = args.study or f"tune-{Path(args.config).stem}"
    print(f"tuning on {corpus.source} ({len(corpus.train_ids):,} train chars): study {study!r}, "
          f"{trials if trials is not None else 'unlimited'} trials of {args.trial_time:g} s"
          + (f", timeout {args.timeout:g} s" if args.timeout else ""))
    resume = (f"interrupted: run the same command again to resume study {study!r} "
              f"(kept in {args.storage or default_storage(args.out)})")
    try:
        result = tune(base, space, trials=trials, timeout=args.timeout, trial_time=args.trial_time,
                      storage=args.storage, study_name=study, out_dir=args.out, corpus=corpus, reports=args.reports,
                      pruner=args.pruner, prune_after=args.prune_after, random_trials=args.random_trials,
                      seed=args.seed, top=args.top, keep_checkpoints=args.keep_checkpoints, jobs=args.jobs,
                      enqueue=[base_settings(params, base)] if args.enqueue_base else None)
    except ValueError as err:
        raise SystemExit(f"pygpt tune: {err}") from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a trial's training
        print(f"\n{resume}")
        return 130
    print()
    print(result.table)
    if result.best_config_path is None:
        print("no trial completed: no best config")
    else:
        best = min((t for t in result.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                   key=lambda t: t.value)
        print(f"best config: {result.best_config_path} (trial {best.number}; checkpoint "
              f"{trial_dir(result.study_dir, best.number) / 'best'})")
        print(f"train it: pygpt train --config {result.best_config_path}")
    if result.interrupted:
        print(resume)
        return 130
    return 0 if result.best_config_path is not None else 1
