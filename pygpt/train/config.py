"""Training configuration, the named presets, and overrides from the command line (`--set key=value`)."""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pygpt.models import GPTConfig


@dataclass
class TrainConfig:
    data: str = ""                 # text file; empty means Tiny Shakespeare (found locally, see pygpt.data.text)
    out_dir: str = "out/run"       # checkpoints go to out_dir/best (best val) and out_dir/last (for resume)
    log_dir: str = "logs"          # tensorboard logs under log_dir/<run name>
    device: str = "auto"           # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    seed: int = 1337
    batch_size: int = 32
    max_iters: int = 2000
    time_limit: float = 0.0        # seconds of training after which the run stops (0: no limit)
    schedule_by_time: bool = False # with time_limit: the cosine LR decays over the time budget, not the steps
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0        # cosine decay to min_lr over this many steps; 0 means max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0         # 0 disables
    eval_interval: int = 250
    eval_iters: int = 50           # random batches per periodic val estimate
    patience: int = 0              # stop after this many evals without a new best val loss (0: never)
    threads: int = 0               # CPU threads for torch (0: torch's default)
    compile: bool = False          # torch.compile the model
    amp: bool = True               # bf16 autocast on CUDA (ignored on CPU)
    progress: bool = True          # tqdm progress bar
    full_val: bool = True          # score the best checkpoint on the full validation split at the end

    def __post_init__(self) -> None:
        # Out-of-range values otherwise fail deep in the trainer (a ZeroDivisionError for eval_interval=0, a torch
        # traceback for lr=-1) or, worse, train quietly on nothing (batch_size=0).
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        for name in ("batch_size", "eval_interval", "eval_iters"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "patience", "threads"):  # (0: off, see the fields)
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(self.lr >= 0, f"lr must be >= 0, got {self.lr}")  # (0: frozen weights, for tests and probes)
        for name in ("min_lr", "weight_decay", "grad_clip", "time_limit"):  # (written so that NaN fails too)
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            require(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_type: str = "gpt"

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "model": self.model.to_dict(), "train": self.train.to_dict()}


PRESETS: dict[str, dict] = {
    # A 2-core CPU in 19 minutes: the LR schedule runs on the clock, so a faster machine just takes more steps.
    "lite": {
        "model": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        "train": dict(batch_size=32, max_iters=100_000, time_limit=1140.0, schedule_by_time=True, lr=2e-3,
                      min_lr=2e-4, warmup_iters=100, eval_interval=250, eval_iters=20, weight_decay=0.1,
                      out_dir="out/lite"),
    },
    # nanoGPT's shakespeare_char on one GPU.
    "heavy": {
        "model": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        "train": dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100, eval_interval=250,
                      eval_iters=200, weight_decay=0.1, beta2=0.99, out_dir="out/heavy", patience=8),
    },
}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a finite number", str: "a string"}


def field_types(cls: type) -> dict[str, type]:
    """The declared type of every field of the dataclass ``cls`` (the annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_setting(value: object, kind: type, text: bool = True) -> object:
    """``value`` as a setting of type ``kind``: a --set string (``text``) is parsed, a JSON value (not ``text``)
    checked - an int is a float too, a bool may be written true/false/yes/no/on/off/1/0 (in JSON quoted or not),
    a number in quotes is a mistake there. ValueError "expected ..., got ..." otherwise; the caller puts the
    setting's name in front. The declared type decides, not the value the setting holds now: a JSON config's
    `"lr": 1` must not make `--set lr=3e-4` an integer."""
    def is_number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if kind is bool:
        if isinstance(value, bool):
            return value
        if is_number(value) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and text:
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        number = value
        if isinstance(value, str) and text:
            try:
                number = float(value)
            except ValueError:
                pass
        if is_number(number) and math.isfinite(number):  # (no setting means anything by inf or nan)
            return float(number)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value  # (no such field today: left as given)
    raise ValueError(f"expected {_TYPE_NAMES[kind]}, got {value!r}")


def _from_json(section: object, cls: type, where: str) -> dict:
    """A JSON config's section (``where``: 'model' or 'train') as keyword arguments of ``cls``, each value
    checked against the field's declared type."""
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected an object of settings, got {section!r}")
    types = field_types(cls)
    values = {}
    for name, value in section.items():
        if name not in types:
            raise ValueError(f"unknown {where} setting {name!r}; valid {where} settings: {', '.join(sorted(types))}")
        try:
            values[name] = parse_setting(value, types[name], text=False)
        except ValueError as err:
            raise ValueError(f"{where}.{name}: {err}") from None
    return values


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply 'key=value' strings: key is a GPTConfig or TrainConfig field (or 'model.key' / 'train.key')."""
    model, train = cfg.model.to_dict(), cfg.train.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        section, _, name = key.rpartition(".")
        targets = {"model": model, "train": train}
        if section:
            if section not in targets:
                raise ValueError(f"--set {key}: section must be 'model' or 'train', got {section!r}")
            target = targets[section]
        else:
            target = next((t for t in (model, train) if name in t), None)
        if target is None or name not in target:
            valid = sorted(model) + sorted(train)
            raise ValueError(f"--set {key}: unknown setting; valid settings: {', '.join(valid)}")
        types = field_types(GPTConfig if target is model else TrainConfig)
        try:
            target[name] = parse_setting(value, types[name])
        except ValueError as err:
            raise ValueError(f"--set {key}: {err}") from None
    return RunConfig(model=GPTConfig.from_dict(model), train=TrainConfig(**train), model_type=cfg.model_type)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset by name ('lite', 'heavy') or a JSON file written by `pygpt tune` / a checkpoint's config."""
    if name_or_path in PRESETS:
        preset = PRESETS[name_or_path]
        cfg = RunConfig(model=GPTConfig(**preset["model"]), train=TrainConfig(**preset["train"]))
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"--config: {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) "
                                    "nor a JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {name_or_path}: not valid JSON ({err})") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"--config {name_or_path}: not UTF-8 text ({err})") from None
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object with 'model' and 'train' settings, got "
                                 f"{type(data).__name__}")
            # (other top-level keys - a checkpoint's tokenizer, metadata - are not settings: ignored)
            cfg = RunConfig(model=GPTConfig(**_from_json(data.get("model", {}), GPTConfig, "model")),
                            train=TrainConfig(**_from_json(data.get("train", {}), TrainConfig, "train")),
                            model_type=data.get("model_type", "gpt"))
        except ValueError as err:
            raise ValueError(f"--config {name_or_path}: {err}") from None
    return apply_overrides(cfg, overrides or [])
