"""Training configuration, the named presets, and overrides from the command line (`--set key=value`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_type: str = "gpt"

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return cls(model=GPTConfig.from_dict(d.get("model", {})), train=TrainConfig(**d.get("train", {})),
                   model_type=d.get("model_type", "gpt"))


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


def _parse_value(text: str, like: object) -> object:
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


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
        target[name] = _parse_value(value, target[name])
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
            cfg = RunConfig.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {name_or_path}: not valid JSON ({err})") from None
        except TypeError as err:  # a key the dataclasses don't take
            raise ValueError(f"--config {name_or_path}: {err}") from None
    return apply_overrides(cfg, overrides or [])
