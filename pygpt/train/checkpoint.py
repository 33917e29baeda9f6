"""Checkpoints: a directory with `model.safetensors` (weights), `config.json` (model type and config, tokenizer
vocabulary, training settings and metadata) and, for resuming, `trainer_state.pt` (optimizer, step, RNG states;
tensors and plain containers only, loaded with weights_only=True).

Writes are atomic: everything goes to a temporary sibling directory, flushed to disk, which then replaces the old
one, so neither a crash nor a power cut leaves a half-written checkpoint behind. Loading never executes pickled
code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from pygpt._fs import fsync_dir, fsync_tree_files
from pygpt.data import CharTokenizer

FORMAT = "pygpt-checkpoint"
VERSION = 1
WEIGHTS, CONFIG, TRAINER_STATE = "model.safetensors", "config.json", "trainer_state.pt"


@dataclass
class Checkpoint:
    model: nn.Module
    tokenizer: CharTokenizer
    config: dict          # the whole config.json
    path: Path

    @property
    def metadata(self) -> dict:
        return self.config.get("metadata", {})


def bundled_checkpoint() -> Path:
    """The small lite-preset model that ships inside the package (the default for generate/eval)."""
    return Path(__file__).resolve().parents[1] / "checkpoints" / "lite"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, tokenizer: CharTokenizer, *, train: dict | None = None,
                    metadata: dict | None = None, trainer_state: dict | None = None) -> Path:
    """Atomically write a checkpoint directory at ``path`` (replacing any previous one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT, "version": VERSION,
        "model_type": model.model_type, "model": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(), "train": train or {}, "metadata": metadata or {},
    }
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a checkpoint is an ordinary directory
        save_model(_unwrap(model), str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        fsync_tree_files(tmp)  # the files' contents reach the disk before the rename makes them the checkpoint
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None and not path.exists():
                os.replace(old, path)  # interrupted between the two renames: put the previous checkpoint back
            raise
        fsync_dir(path.parent)  # and the rename itself
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `pygpt train`, or omit "
                                "--checkpoint to use the bundled model)")
    config_file = path / CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {CONFIG}; is it a pygpt checkpoint directory?")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path}: {CONFIG} is corrupt ({err})") from err
    if config.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: {CONFIG} is not a {FORMAT} (format={config.get('format')!r})")
    return config


def build_model(model_type: str, model_config: dict) -> nn.Module:
    from pygpt.models import MODEL_TYPES

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    model_cls, config_cls = MODEL_TYPES[model_type]
    return model_cls(config_cls.from_dict(model_config))


def load_checkpoint(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (default: the bundled model) onto ``device``, in eval mode."""
    path = Path(path) if path is not None else bundled_checkpoint()
    config = read_config(path)
    model = build_model(config["model_type"], config["model"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {WEIGHTS}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: {WEIGHTS} is corrupt or doesn't match its config ({err})") from err
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: weights don't match the config (missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)})")
    tokenizer = CharTokenizer.from_dict(config["tokenizer"])
    return Checkpoint(model.to(device).eval(), tokenizer, config, path)


def load_trainer_state(path: str | os.PathLike) -> dict:
    state_file = Path(path) / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {TRAINER_STATE}; it cannot be resumed")
    return torch.load(state_file, map_location="cpu", weights_only=True)
