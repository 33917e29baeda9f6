"""Hyper-parameter search over the Trainer with Optuna (`pygpt tune`).

Each trial samples model and trainer settings, trains a GPT for the same wall-clock budget (``trial_time``,
through TrainConfig.time_limit + schedule_by_time, so the cosine LR ends with the budget and trials are
comparable) and is scored by the full-val loss of its best checkpoint (EVAL.md). The sampler is TPE with
``multivariate=True``. Pruning (median or Hyperband) acts on the Trainer's periodic val estimates, reported
through its ``on_eval`` callback on a fixed grid over the budget: report k (1..``reports``) is the first
estimate within half a grid step of k/reports of the time, or of max_iters if that ends the trial first (the
untrained step-0 estimate is not reported). So a fast small model and a slow large one are compared at the same fraction
of their equal budgets, not at the same step. A pruned trial stops at once (``trainer.should_stop``). The
estimates take time out of each trial's budget (eval_iters batches each, about ``reports`` + 1 per trial): for
short trials on a CPU, ``--set eval_iters=10`` halves that.

Invalid combinations (n_embd not a multiple of n_head, an odd head_dim under RoPE, anything GPTConfig rejects)
are pruned before training with user attr ``invalid`` and a new trial is drawn; they do not count toward
``trials``. A trial that raises (out of memory, a non-finite loss, anything else) ends FAILED with its reason
in user attr ``fail_reason`` and the study goes on. A Ctrl-C (the Trainer's clean stop, or a second Ctrl-C) ends
the running trial FAILED with ``fail_reason`` "interrupted" and user attr ``interrupted``, and stops the study
(``TuneResult.interrupted``; `pygpt tune` exits 130): running the same command again resumes it.

Studies live in SQLite (default ``sqlite:///<out>/study.db``) and are resumed when the same storage and study
name are given again (``load_if_exists``). Each study keeps its files in its own folder ``<out>/<study>`` (the
study name, made safe as a folder name: ``study_dir``), so studies sharing ``<out>`` (and its study.db) don't
overwrite each other's: Optuna numbers every study's trials from 0. ``jobs`` > 1 trains that many trials at
once, in spawned processes that share the storage (each with cpu_count // jobs torch threads unless the base
config sets ``threads``); on a CPU, parallel 1-thread trials also match a 1-thread final run's speed better than
one 2-thread trial. Each trial records user attrs ``settings`` (what was sampled, plus derived values),
``worker`` (the process that ran it), ``config`` (its RunConfig.to_dict()), ``steps``, ``train_seconds``,
``best_val``, ``stopped_because``, ``n_params``, and for a finished trial ``full_val_loss`` / ``full_val_top5``.
At the end the best config is written as ``<out>/<study>/best_config.json`` (RunConfig.to_dict() shape: ``pygpt
train --config <out>/<study>/best_config.json``, which trains into ``<out>/<study>/best_run``); it keeps the base
config's budget (time_limit, max_iters, eval_interval), not the trial budget. The best trial's checkpoint stays
in ``<out>/<study>/trials/<number>/best``; other trials' are deleted unless ``keep_checkpoints``.

Optuna is optional (``pip install 'pygpt[tune]'``): this module imports it only when a study runs.

Search space file (--space FILE, JSON or TOML by its suffix)
  A mapping from a setting name (a GPTConfig or TrainConfig field, optionally written model.NAME or
  train.NAME) to one of:
    {"low": 1e-4, "high": 1e-2, "log": true}   a range: float or int after the setting's type
                                               ("type": "int" | "float" to force one); "step" optional
                                               (whole for an int range); finite low < high
    {"choices": [64, 128, 256]}                categorical
    [64, 128, 256]                             the same, shorter
    4                                          fixed: applied to every trial, not searched
  Choices and fixed values must have the setting's type (an int setting takes 2, not "2" or 2.0).
  Entries replace the built-in default space's entries of the same name and add new ones. Two reserved keys:
    "exclude": ["dropout", ...]   drop these from the space (they keep the base config's value)
    "inherit": false              start from an empty space instead of the default one
  The default space: lr 3e-4..1e-2 (log), weight_decay 0..0.2, dropout 0..0.2, warmup_iters 0..400 (step 50),
  n_embd {64, 96, 128, 192, 256}, n_layer 2..6, n_head {2, 4, 8}, block_size {64, 128, 256},
  batch_size {16, 32, 64}. When lr is searched and min_lr is not, min_lr keeps the base config's min_lr/lr
  ratio. Not searchable: vocab_size, data, out_dir, log_dir, device, progress, full_val, time_limit,
  schedule_by_time (the harness sets them).
  Example (TOML; top-level keys before any [table]):
    exclude = ["dropout"]
    n_layer = [3, 4]
    [lr]
    low = 1e-3
    high = 5e-3
    log = true
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from pygpt.data import Corpus
    from pygpt.train import RunConfig

INSTALL_HINT = ("pygpt tune needs Optuna, an optional dependency: pip install 'pygpt[tune]' "
                "(or: pip install 'optuna>=3.5')")

DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 0.0, "high": 0.2},
    "dropout": {"low": 0.0, "high": 0.2},
    "warmup_iters": {"low": 0, "high": 400, "step": 50},
    "n_embd": [64, 96, 128, 192, 256],
    "n_layer": {"low": 2, "high": 6},
    "n_head": [2, 4, 8],
    "block_size": [64, 128, 256],
    "batch_size": [16, 32, 64],
}

# Set by the harness for every trial (or meaningless to search).
NOT_SEARCHABLE = {"vocab_size", "data", "out_dir", "log_dir", "device", "progress", "full_val", "time_limit",
                  "schedule_by_time"}
RESERVED_KEYS = {"exclude", "inherit"}


class OptunaMissing(ImportError):
    """Optuna is not installed (the message says how to install it)."""


class TrialInterrupted(Exception):
    """A Ctrl-C stopped the trial's training (the Trainer's clean stop): the trial fails and the study stops."""


def require_optuna():
    try:
        import optuna
    except ImportError as err:
        raise OptunaMissing(INSTALL_HINT) from err
    return optuna


# -- the search space ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting."""

    name: str
    kind: str                      # 'float' | 'int' | 'categorical' | 'fixed'
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    def __str__(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}: one of {list(self.choices)}"
        if self.kind == "fixed":
            return f"{self.name}: fixed at {self.value!r}"
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step else "")
        return f"{self.name}: {self.kind} {self.low}..{self.high}{extra}"


def _setting_defaults() -> dict[str, Any]:
    """Every GPTConfig and TrainConfig field with its default (for its type)."""
    from dataclasses import MISSING, fields

    from pygpt.models import GPTConfig
    from pygpt.train import TrainConfig

    return {f.name: (None if f.default is MISSING else f.default) for cls in (GPTConfig, TrainConfig)
            for f in fields(cls)}


def _setting_name(key: str, known: dict) -> str:
    section, _, name = key.rpartition(".")
    if section not in ("", "model", "train"):
        raise ValueError(f"space: {key!r}: section must be 'model' or 'train', got {section!r}")
    if name not in known:
        raise ValueError(f"space: {key!r} is not a setting; settings: {', '.join(sorted(set(known) - NOT_SEARCHABLE))}")
    if name in NOT_SEARCHABLE:
        raise ValueError(f"space: {name!r} is set by pygpt tune and cannot be searched")
    return name


def _type_error(value: Any, like: Any) -> str | None:
    """Why ``value`` cannot be given to a setting whose default is ``like`` (None: it can). Checked when the space
    is read: a wrong type would otherwise fail every trial, only once its model or trainer is built."""
    if isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(like, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return f"{value!r} is not finite"
    else:
        ok = not isinstance(like, str) or isinstance(value, str)
    return None if ok else f"{value!r} is not of the setting's type ({type(like).__name__})"


def _param(name: str, spec: Any, like: Any) -> Param:
    def fail(message: str):
        raise ValueError(f"space: {name}: {message}")

    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        if not isinstance(spec, (bool, int, float, str)):
            fail(f"expected a range, a list of choices or a fixed value, got {spec!r}")
        if (error := _type_error(spec, like)) is not None:
            fail(f"fixed value {error}")
        return Param(name, "fixed", value=spec)
    unknown = set(spec) - {"low", "high", "log", "step", "type", "choices"}
    if unknown:
        fail(f"unknown key(s) {', '.join(sorted(unknown))} (use low/high/log/step/type or choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            fail("'choices' cannot be combined with low/high/log/step/type")
        if not isinstance(choices, list) or not choices:
            fail("'choices' must be a non-empty list")
        if any(not isinstance(c, (bool, int, float, str)) for c in choices):
            fail(f"choices must be numbers, strings or booleans, got {choices!r}")
        for choice in choices:
            if (error := _type_error(choice, like)) is not None:
                fail(f"choice {error}")
        return Param(name, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        fail("a range needs both 'low' and 'high' (or give 'choices')")
    low, high = spec["low"], spec["high"]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
        fail(f"low and high must be numbers, got {low!r}, {high!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        fail(f"low and high must be finite, got {low!r}, {high!r}")
    if isinstance(like, (bool, str)):
        fail(f"a {type(like).__name__} setting takes choices, not a range")
    kind = spec.get("type") or ("int" if isinstance(like, int) else "float")
    if kind not in ("int", "float"):
        fail(f"type must be 'int' or 'float', got {kind!r}")
    if kind == "float" and isinstance(like, int):
        fail("an int setting cannot take type 'float' (its trials would get fractions)")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):  # (bool("false") is True)
        fail(f"log must be true or false, got {log!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        fail(f"an int range needs whole low and high, got {low!r}, {high!r}")
    if low >= high:
        fail(f"low ({low}) must be below high ({high}) (a single value is given as a fixed value)")
    if log and low <= 0:
        fail(f"a log range needs low > 0, got {low}")
    if log and step is not None:
        fail("'log' and 'step' cannot be combined")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step)
                             or step <= 0):
        fail(f"step must be a positive number, got {step!r}")
    if kind == "int" and step is not None and not float(step).is_integer():
        fail(f"an int range needs a whole step, got {step!r}")
    if kind == "int":
        return Param(name, "int", int(low), int(high), log, int(step) if step is not None else None)
    return Param(name, "float", float(low), float(high), log, float(step) if step is not None else None)


def parse_space(spec: dict | None = None) -> dict[str, Param]:
    """The search space from a space-file mapping (see the module docstring); None: the default space."""
    spec = dict(spec or {})
    if not isinstance(spec, dict):
        raise ValueError(f"space: expected a mapping of settings, got {type(spec).__name__}")
    inherit = spec.pop("inherit", True)
    exclude = spec.pop("exclude", [])
    if not isinstance(inherit, bool):
        raise ValueError(f"space: 'inherit' must be true or false, got {inherit!r}")
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise ValueError(f"space: 'exclude' must be a list of setting names, got {exclude!r}")
    known = _setting_defaults()
    merged = dict(DEFAULT_SPACE) if inherit else {}
    for key, value in spec.items():
        merged[_setting_name(key, known)] = value
    for key in exclude:
        merged.pop(_setting_name(key, known), None)
    return {name: _param(name, value, known[name]) for name, value in merged.items()}


def load_space(path: str | Path) -> dict:
    """Read a space file: TOML when it ends in .toml, JSON otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"--space: cannot read {path}: {err.strerror or err}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise ValueError("--space: TOML needs Python 3.11+ or `pip install tomli`; "
                                     "or write the space as JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as err:
        if str(err).startswith("--space"):
            raise
        raise ValueError(f"--space: {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                         f"{err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--space: {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


# -- configs ---------------------------------------------------------------------------------------------------

def apply_settings(base: RunConfig, settings: dict[str, Any], **train_extra) -> RunConfig:
    """A copy of ``base`` with ``settings`` (bare field names) and ``train_extra`` applied; ValueError if the
    model config is invalid (GPTConfig validates itself)."""
    from pygpt.models import GPTConfig
    from pygpt.train import RunConfig, TrainConfig

    model, train = base.model.to_dict(), base.train.to_dict()
    for name, value in {**settings, **train_extra}.items():
        if name in model:
            model[name] = value
        elif name in train:
            train[name] = value
        else:
            raise ValueError(f"unknown setting {name!r}")
    return RunConfig(model=GPTConfig.from_dict(model), train=TrainConfig(**train), model_type=base.model_type)


def _base_departure(param: Param, value: Any) -> str | None:
    """Why the enqueued base trial cannot take the base config's ``value`` of ``param`` (None: it can)."""
    if param.kind == "fixed":
        return None if param.value == value else f"{param.name} is fixed at {param.value!r} (base: {value!r})"
    if param.kind == "categorical" and value not in param.choices:
        return f"{param.name} {value!r} is not among the choices (the sampler draws it)"
    if param.kind in ("int", "float") and not param.low <= value <= param.high:
        return f"{param.name} {value!r} is outside {param.low}..{param.high} (the sampler draws it)"
    return None


def base_settings(space: dict[str, Param], base: RunConfig) -> dict[str, Any]:
    """The base config's own values of the searched settings, for enqueueing it as a trial (so the study
    compares its finds with the config it started from, under the same trial budget). A value outside its
    range or choices is left out (the sampler draws that one); see base_departures."""
    values = {**base.model.to_dict(), **base.train.to_dict()}
    return {name: values[name] for name, param in space.items()
            if param.kind != "fixed" and _base_departure(param, values[name]) is None}


def base_departures(space: dict[str, Param], base: RunConfig) -> list[str]:
    """Where the enqueued base trial differs from the base config (fixed values, values outside the space):
    then it is not the base config, and the study's comparison with it says less."""
    values = {**base.model.to_dict(), **base.train.to_dict()}
    return [reason for name, param in space.items() if (reason := _base_departure(param, values[name]))]


def sample_settings(trial, space: dict[str, Param], base: RunConfig) -> dict[str, Any]:
    settings = {name: param.suggest(trial) for name, param in space.items()}
    if "lr" in settings and "min_lr" not in settings and base.train.lr > 0:
        settings["min_lr"] = settings["lr"] * base.train.min_lr / base.train.lr
    return settings


# -- one trial -------------------------------------------------------------------------------------------------

class _Monitor:
    """Trainer callbacks of one trial: NaN checks, the eval interval, reports to Optuna and pruning."""

    def __init__(self, trial, train_cfg, reports: int):
        self.trial, self.cfg, self.reports = trial, train_cfg, reports
        self.t0 = self.t1 = time.perf_counter()
        self.calibrated = False
        self.reported: set[int] = set()
        self.pruned: dict | None = None
        self.failure: str | None = None

    def progress(self, step: int) -> float:
        """Fraction of the trial's budget used: time or steps, whichever runs out first."""
        parts = [step / self.cfg.max_iters] if self.cfg.max_iters else []
        if self.cfg.time_limit:
            parts.append((time.perf_counter() - self.t0) / self.cfg.time_limit)
        return min(1.0, max(parts, default=1.0))

    def _stop(self, trainer) -> None:
        trainer.should_stop = True
        trainer.cfg.full_val = False  # no final full-val score for a trial that won't count

    def on_step_end(self, trainer, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            if self.failure is None:
                self.failure = f"non-finite training loss ({loss}) at step {step}"
            self._stop(trainer)
            return
        if self.calibrated or not self.cfg.time_limit:
            return
        now = time.perf_counter()
        if step == 1:
            self.t1 = now
        elif step >= 11 or now - self.t1 >= self.cfg.time_limit / (2 * self.reports):
            # Aim for `reports` evals over the budget at the speed of this model on this machine.
            expected = min(self.cfg.max_iters or math.inf, (step - 1) / max(now - self.t1, 1e-9) * self.cfg.time_limit)
            self.cfg.eval_interval = max(1, round(expected / self.reports))
            self.calibrated = True

    @staticmethod
    def _last_eval(trainer) -> bool:
        """Whether the trainer stops after this eval (a callback's stop, early stopping)."""
        return trainer.should_stop or trainer.out_of_patience()

    def on_eval(self, trainer, step: int, val_loss: float, improved: bool) -> None:
        if self.failure is not None or self.pruned is not None or step == 0:
            return  # (the untrained model's estimate says nothing about the settings)
        if not math.isfinite(val_loss):
            self.failure = f"non-finite val loss ({val_loss}) at step {step}"
            self._stop(trainer)
            return
        at = round(self.progress(step) * self.reports)
        if at in self.reported:
            return
        self.reported.add(at)
        self.trial.report(val_loss, at)
        if at >= self.reports or self._last_eval(trainer):
            return  # the trial used its budget (or ends anyway): it is scored, not pruned
        if self.trial.should_prune():
            self.pruned = {"step": step, "report": at, "val": val_loss}
            self._stop(trainer)


class _Objective:
    def __init__(self, base: RunConfig, space: dict[str, Param], corpus: Corpus, trial_time: float,
                 out_dir: Path, reports: int, worker: int = 0):
        self.base, self.space, self.corpus = base, space, corpus
        self.trial_time, self.out_dir, self.reports, self.worker = trial_time, out_dir, reports, worker

    def trial_config(self, settings: dict, number: int) -> RunConfig:
        max_iters = self.base.train.max_iters
        return apply_settings(
            self.base, settings, vocab_size=self.corpus.tokenizer.vocab_size, data=self.corpus.source,
            out_dir=str(trial_dir(self.out_dir, number)), log_dir="", progress=False, full_val=True,
            time_limit=float(self.trial_time), schedule_by_time=bool(self.trial_time),
            eval_interval=max(1, max_iters // self.reports))

    def __call__(self, trial) -> float:
        optuna = require_optuna()
        trial.set_user_attr("worker", self.worker)
        try:
            settings = sample_settings(trial, self.space, self.base)  # (Optuna may reject an enqueued value)
            trial.set_user_attr("settings", settings)
            try:
                cfg = self.trial_config(settings, trial.number)
            except (ValueError, TypeError) as err:
                trial.set_user_attr("invalid", str(err))
                raise optuna.TrialPruned(f"invalid settings: {err}") from None
            trial.set_user_attr("config", cfg.to_dict())
            return self._train(trial, cfg)
        except optuna.TrialPruned:
            raise
        except (TrialInterrupted, KeyboardInterrupt):
            # Optuna records it FAILED (it has no other state for it); trial_kind tells it from a failure.
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:1000])
            raise
        finally:
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - cleanup only
                pass

    def _train(self, trial, cfg: RunConfig) -> float:
        import torch

        from pygpt.models import GPT
        from pygpt.train import Trainer

        optuna = require_optuna()
        torch.manual_seed(cfg.train.seed)  # the same init for the same shape: trials differ by their settings
        model = GPT(cfg.model)
        trial.set_user_attr("n_params", model.num_params())
        trainer = Trainer(model, self.corpus.train_ids, self.corpus.val_ids, self.corpus.tokenizer, cfg.train,
                          run_config=cfg.to_dict())
        monitor = _Monitor(trial, trainer.cfg, self.reports)
        trainer.add_callback("on_step_end", monitor.on_step_end)
        trainer.add_callback("on_eval", monitor.on_eval)
        monitor.t0 = time.perf_counter()
        result = trainer.fit()
        for key, value in (("steps", result.steps), ("train_seconds", round(result.train_seconds, 3)),
                           ("best_val", result.best_val if math.isfinite(result.best_val) else None),
                           ("best_step", result.best_step), ("stopped_because", result.stopped_because)):
            trial.set_user_attr(key, value)
        if result.stopped_because == "interrupted":
            raise TrialInterrupted("interrupted")
        if monitor.failure is not None:
            raise FloatingPointError(monitor.failure)
        if monitor.pruned is not None:
            trial.set_user_attr("pruned_at", monitor.pruned)
            p = monitor.pruned
            raise optuna.TrialPruned(f"pruned at report {p['report']}/{self.reports} (step {p['step']}, "
                                     f"val {p['val']:.4f})")
        if result.full_val is None:
            raise RuntimeError("the trial produced no full-val score")
        trial.set_user_attr("full_val_loss", result.full_val.loss)
        trial.set_user_attr("full_val_top5", result.full_val.top5)
        return result.full_val.loss


# -- the study -------------------------------------------------------------------------------------------------

def make_pruner(kind: str, reports: int, prune_after: int):
    optuna = require_optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=max(1, reports // 5))
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, reports // 5), max_resource=reports,
                                              reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be median, hyperband or none, got {kind!r}")


def open_study(storage: str, study_name: str, pruner, seed: int | None = None, random_trials: int = 10,
               worker: int = 0):
    """Create or resume (load_if_exists) a minimising study with a multivariate TPE sampler. ``worker`` numbers
    the processes of a parallel study (each gets its own sampler seed)."""
    optuna = require_optuna()
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Parallel workers write to one file: wait for its lock instead of failing at once.
        storage = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 120}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", pruner=pruner,
                                    load_if_exists=True)
        # Seeded after loading: a resumed study must not replay the first run's random draws.
        offset = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(
            multivariate=True, n_startup_trials=random_trials,
            seed=None if seed is None else seed + offset + 7919 * worker)
    return study


def trial_kind(trial) -> str:
    """'complete', 'pruned', 'invalid', 'failed', 'interrupted' (by Ctrl-C: FAILED in Optuna) or 'running'."""
    state = trial.state.name
    if state == "PRUNED":
        return "invalid" if "invalid" in trial.user_attrs else "pruned"
    if state == "FAIL" and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return {"COMPLETE": "complete", "FAIL": "failed"}.get(state, state.lower())


def describe_trial(trial, reports: int) -> str:
    kind, attrs = trial_kind(trial), trial.user_attrs
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    if kind == "complete":
        what = (f"full-val {trial.value:.4f} top5 {100 * attrs.get('full_val_top5', 0):.2f}% after "
                f"{attrs.get('steps')} steps, {attrs.get('train_seconds', 0):.0f} s")
    elif kind == "pruned":
        p = attrs.get("pruned_at", {})
        what = (f"pruned at {p.get('report')}/{reports} of its budget (step {p.get('step')}, val "
                f"{p.get('val', float('nan')):.4f})")
    elif kind == "invalid":
        what = f"invalid draw, resampled ({attrs['invalid']})"
    elif kind == "interrupted":
        what = "interrupted (Ctrl-C): recorded as failed; the study stops"
    else:
        what = f"failed: {attrs.get('fail_reason', 'unknown reason')}"
    return f"trial {trial.number}: {what} | {params}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def best_table(study, top: int = 5) -> str:
    """The best ``top`` finished trials of ``study``, best first, with their searched settings."""
    trials = study.get_trials(deepcopy=False)
    counts = {k: 0 for k in ("complete", "pruned", "failed", "invalid")}
    for t in trials:
        kind = trial_kind(t)
        counts[kind] = counts.get(kind, 0) + 1
    done = sorted((t for t in trials if trial_kind(t) == "complete"), key=lambda t: t.value)
    header = (f"study {study.study_name!r}: {len(trials)} trials ({counts['complete']} complete, "
              f"{counts['pruned']} pruned, {counts['failed']} failed, {counts['invalid']} invalid draws"
              + (f", {counts['interrupted']} interrupted)" if counts.get("interrupted") else ")"))
    if not done:
        return header + "\nno complete trial yet"
    names: list[str] = []
    for t in done[:top]:
        names += [n for n in t.params if n not in names]
    columns = ["trial", "full-val", "top5", "steps", "secs", "params"] + names
    rows = []
    for t in done[:top]:
        a = t.user_attrs
        rows.append([str(t.number), f"{t.value:.4f}", f"{100 * a.get('full_val_top5', 0):.2f}%",
                     str(a.get("steps", "")), f"{a.get('train_seconds', 0):.0f}",
                     f"{a.get('n_params', 0) / 1e6:.2f}M"] + [_fmt(t.params[n]) if n in t.params else "-"
                                                                for n in names])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [header, f"best {len(rows)}, by full-val loss (lower is better):",
             "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def best_config(study, base: RunConfig, data: str = "", out_dir: str = "") -> RunConfig | None:
    """``base`` with the best complete trial's settings (keeping the base's budget); None if none completed."""
    done = [t for t in study.get_trials(deepcopy=False) if trial_kind(t) == "complete"]
    if not done:
        return None
    best = min(done, key=lambda t: t.value)
    settings = dict(best.user_attrs.get("settings") or best.params)
    extra = {"data": data} if data else {}
    if out_dir:
        extra["out_dir"] = out_dir
    cfg = apply_settings(base, settings, **extra)
    vocab = best.user_attrs.get("config", {}).get("model", {}).get("vocab_size")
    if vocab:
        cfg.model.vocab_size = vocab
    return cfg


@dataclass
class TuneResult:
    study: Any
    table: str
    best_config: RunConfig | None
    best_config_path: Path | None
    trials: list = field(default_factory=list)   # the trials this process ran (FrozenTrial), invalid draws included
    study_dir: Path | None = None                # out_dir/<study>: trials/<number>/, best_config.json, best_run/
    interrupted: bool = False                    # a Ctrl-C stopped this call (run it again to resume the study)


@dataclass
class _Run:
    """What every worker process of one `tune` call needs (picklable: sent to spawned workers)."""

    base: RunConfig
    params: dict[str, Param]
    corpus: Corpus
    trial_time: float
    out: Path              # the study's folder (study_dir)
    reports: int
    storage: str
    study_name: str
    pruner: str
    prune_after: int
    random_trials: int
    seed: int | None
    trials: int | None
    timeout: float | None
    keep_checkpoints: bool
    max_invalid: int
    first_number: int      # trials numbered from here on belong to this call (for the `trials` count)


def _optimize(run: _Run, worker: int = 0, log: Callable[[str], None] = print) -> list:
    """One worker's share of a study: train trials until ``run.trials`` trained trials of this call exist
    (counted over all workers, through the storage) or ``run.timeout`` passes. Returns the trials it ran."""
    optuna = require_optuna()
    study = open_study(run.storage, run.study_name, make_pruner(run.pruner, run.reports, run.prune_after),
                       run.seed, run.random_trials, worker)
    objective = _Objective(run.base, run.params, run.corpus, run.trial_time, run.out, run.reports, worker)
    ran: list = []
    invalid_in_a_row = [0]

    def trained_enough() -> bool:
        if run.trials is None:
            return False
        trained = [t for t in study.get_trials(deepcopy=False) if t.number >= run.first_number
                   and t.state.is_finished() and trial_kind(t) not in ("invalid", "interrupted")]
        return len(trained) >= run.trials

    def after_trial(study, trial) -> None:
        ran.append(trial)
        kind = trial_kind(trial)
        log(describe_trial(trial, run.reports))
        if kind == "invalid":
            invalid_in_a_row[0] += 1
            if invalid_in_a_row[0] >= run.max_invalid:
                log(f"stopping: {run.max_invalid} invalid draws in a row; check the space (n_embd must be a "
                    "multiple of n_head with an even head_dim)")
                study.stop()
            return
        invalid_in_a_row[0] = 0
        if not run.keep_checkpoints:
            # Keep the best trial's `best` checkpoint only (the end of the study sweeps what a later best
            # supersedes).
            folder = trial_dir(run.out, trial.number)
            shutil.rmtree(folder / "last" if _best_number(study) == trial.number else folder, ignore_errors=True)
        # A Ctrl-C (here, or in another worker: then this one stops after its running trial) ends the study.
        if trained_enough() or _interrupted(study, run.first_number):
            study.stop()

    if trained_enough():  # a worker that started late: the others have done the work
        return ran
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=None, timeout=run.timeout, catch=(Exception,), callbacks=[after_trial],
                       gc_after_trial=True)
    return ran


def _worker_main(run: _Run, worker: int) -> None:
    """Entry point of a spawned worker process."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        _optimize(run, worker, log=lambda line: print(f"[worker {worker}] {line}", flush=True))
    except KeyboardInterrupt:  # (Ctrl-C reaches every worker; its trial is recorded as interrupted)
        pass


def _run_workers(run: _Run, jobs: int, log: Callable[[str], None]) -> list:
    """This process is worker 0; jobs - 1 more are spawned (fresh interpreters: no forked torch/OpenMP state)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=_worker_main, args=(run, worker), daemon=True) for worker in range(1, jobs)]
    for process in others:
        process.start()
    try:
        ran = _optimize(run, 0, log)
        for process in others:
            process.join()
    finally:
        for process in others:
            if process.is_alive():
                process.terminate()
                process.join()
    for worker, process in enumerate(others, start=1):
        if process.exitcode != 0:
            log(f"worker {worker} exited with code {process.exitcode}")
    return ran


def _sweep_checkpoints(study, out: Path) -> None:
    """Delete the checkpoints of every finished trial of ``study`` but the best one (``out``: its study_dir)."""
    best = _best_number(study)
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for folder in sorted((out / "trials").glob("[0-9]*")):
        number = int(folder.name) if folder.name.isdigit() else None
        if number in finished and number != best:
            shutil.rmtree(folder, ignore_errors=True)


def study_dir(out_dir: str | Path, study_name: str) -> Path:
    """The folder of one study's files, out_dir/<study name>: studies sharing out_dir (and its study.db) keep
    their trials apart, as Optuna numbers every study's trials from 0. A name that is not a plain folder name
    (a '/', a leading '.', ...) gets its odd characters replaced and a hash of it appended (distinct names,
    distinct folders)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    if name != study_name or name.startswith(".") or not name:
        name = f"{name.lstrip('.')}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"
    return Path(out_dir) / name


def trial_dir(out: Path, number: int) -> Path:
    """A trial's out_dir (its `best` and `last` checkpoints) in its study's folder ``out``."""
    return out / "trials" / f"{number:04d}"


def default_storage(out_dir: str | Path) -> str:
    """The SQLite file of the studies whose files are in out_dir (each in its study_dir)."""
    return f"sqlite:///{Path(out_dir) / 'study.db'}"


def _interrupted(study, first_number: int) -> bool:
    """Whether a trial numbered from ``first_number`` on (one of this call's) was interrupted by Ctrl-C."""
    return any(t.number >= first_number and trial_kind(t) == "interrupted" for t in study.get_trials(deepcopy=False))


def tune(base: RunConfig, space: dict | None = None, *, trials: int | None = None, timeout: float | None = None,
         trial_time: float = 60.0, storage: str | None = None, study_name: str = "pygpt-tune",
         out_dir: str | Path = "out/tune", corpus: Corpus | None = None, reports: int = 5, pruner: str = "median",
         prune_after: int = 3, random_trials: int = 10, seed: int | None = None, top: int = 5,
         keep_checkpoints: bool = False, max_invalid: int = 100, enqueue: list[dict] | None = None,
         jobs: int = 1, log: Callable[[str], None] = print) -> TuneResult:
    """Run (or resume) a study: ``trials`` more trained trials and/or until ``timeout`` seconds; see the module
    docstring. ``space`` is a space-file mapping (None: the default space); ``enqueue`` forces the settings of
    the next trials (Optuna's enqueue_trial). ``jobs`` trials train at once, in that many processes sharing the
    storage, each with cpu_count // jobs threads unless the base config sets ``threads``. Returns the study, the
    table, and the best config (also written to out_dir/<study>/best_config.json: see study_dir). A Ctrl-C stops
    the study after recording the running trial as interrupted (``interrupted`` in the result); a second one, or
    one outside training, raises KeyboardInterrupt. Either way the same call resumes the study."""
    require_optuna()  # a clear error now, before any work, when optuna is missing
    if trials is None and timeout is None:
        raise ValueError("give trials and/or timeout")
    if reports < 2:
        raise ValueError(f"reports must be >= 2, got {reports}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    params = parse_space(space)
    out = study_dir(out_dir, study_name)
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        from pygpt.data import load_corpus

        corpus = load_corpus(base.train.data)
    storage = storage or default_storage(out_dir)  # (shared by the studies in out_dir)
    if jobs > 1 and storage.startswith("sqlite:///:memory:"):
        raise ValueError("jobs > 1 needs a storage the worker processes share (an SQLite file, a database URL)")
    trial_base = base
    if jobs > 1 and not base.train.threads:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        trial_base = apply_settings(base, {}, threads=threads)
        log(f"{jobs} trials at a time, {threads} thread(s) each")
    study = open_study(storage, study_name, make_pruner(pruner, reports, prune_after), seed, random_trials)
    before = len(study.get_trials(deepcopy=False))
    if before:
        log(f"resuming study {study_name!r} in {storage}: {before} trials so far")
    log("search space:\n  " + "\n  ".join(str(p) for p in params.values()))
    for settings in enqueue or []:
        study.enqueue_trial(settings, skip_if_exists=False)

    run = _Run(trial_base, params, corpus, trial_time, out, reports, storage, study_name, pruner, prune_after,
               random_trials, seed, trials, timeout, keep_checkpoints, max_invalid, first_number=before)
    ran = _run_workers(run, jobs, log) if jobs > 1 else _optimize(run, 0, log)
    if not keep_checkpoints:
        _sweep_checkpoints(study, out)

    table = best_table(study, top)
    # The same text for the best run: a given file by its absolute path; the default corpus stays the default
    # (found on whichever machine trains the config).
    data = base.train.data
    if data and corpus.source and Path(corpus.source).is_file():
        data = str(Path(corpus.source).resolve())
    cfg = best_config(study, base, data=data, out_dir=str(out / "best_run"))
    path = None
    if cfg is not None:
        path = out / "best_config.json"
        path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return TuneResult(study, table, cfg, path, ran, study_dir=out, interrupted=_interrupted(study, before))


def _best_number(study) -> int | None:
    done = [t for t in study.get_trials(deepcopy=False) if trial_kind(t) == "complete"]
    return min(done, key=lambda t: t.value).number if done else None
