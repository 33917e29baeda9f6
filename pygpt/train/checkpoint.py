"""Checkpoints: a directory with `model.safetensors` (weights), `config.json` (model type and config, tokenizer
vocabulary, training settings and metadata) and, for resuming, `trainer_state.pt` (optimizer, step, RNG states;
tensors and plain containers only, loaded with weights_only=True).

Writes are atomic: everything goes to a temporary sibling directory, flushed to disk and renamed .NAME.new-PID
once complete, which then replaces the old one (moved aside to .NAME.old-PID, two renames: a directory cannot be
swapped in one). A crash or a power cut between those renames leaves no NAME, but both complete siblings: the
next load or save of NAME renames the new one (else the old one) back into place. So NAME is never
half-written, and never lost. Loading never executes pickled code.
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
    _recover(path)
    for kind in ("tmp", "new", "old"):  # what interrupted saves left behind
        for leftover in _siblings(path, kind):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    new = old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a checkpoint is an ordinary directory
        save_model(_unwrap(model), str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        fsync_tree_files(tmp)  # the files' contents reach the disk before the renames make them the checkpoint
        new = path.parent / f".{path.name}.new-{os.getpid()}"
        os.replace(tmp, new)  # complete: from here a crash leaves it for _recover
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(new, path)
        fsync_dir(path.parent)  # and the renames themselves
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # interrupted between the two renames: put the previous checkpoint back
            old = None
        for leftover in (tmp, new):
            if leftover is not None and leftover != path:
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    finally:
        if old is not None and path.exists():
            shutil.rmtree(old, ignore_errors=True)
    return path


def _siblings(path: Path, kind: str) -> list[Path]:
    """Directories .NAME.<kind>-* beside ``path`` (left by saves of it), newest first."""
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.glob(f".{path.name}.{kind}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether a checkpoint directory is at ``path`` (finishing a save that a crash interrupted first)."""
    path = Path(path)
    _recover(path)
    return path.is_dir()


def _recover(path: Path) -> None:
    """Finish a save of ``path`` that a crash cut between its renames: ``path`` is missing, but its complete
    successor (.NAME.new-*) or predecessor (.NAME.old-*) is there; rename it back into place."""
    if path.exists():
        return
    for candidate in _siblings(path, "new") + _siblings(path, "old"):
        try:
            os.replace(candidate, path)
        except OSError:  # (read-only, or another process got there first)
            continue
        fsync_dir(path.parent)
        return


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    _recover(path)
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
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"checkpoint {path}: {CONFIG} is not a {FORMAT} (format={found!r})")
    for key, kind in (("model_type", str), ("model", dict), ("tokenizer", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"checkpoint {path}: {CONFIG} needs a {key!r} entry ({kind.__name__}), got "
                             f"{config.get(key)!r}")
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
    try:
        tokenizer = CharTokenizer.from_dict(config["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: its tokenizer entry is corrupt ({err!r})") from err
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise ValueError(f"checkpoint {path}: its tokenizer has {tokenizer.vocab_size} tokens, its model "
                         f"vocab_size {vocab_size}")
    return Checkpoint(model.to(device).eval(), tokenizer, config, path)


def load_trainer_state(path: str | os.PathLike) -> dict:
    state_file = Path(path) / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {TRAINER_STATE}; it cannot be resumed")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # (torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file)
        raise ValueError(f"checkpoint {path}: {TRAINER_STATE} is corrupt ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: {TRAINER_STATE} holds a {type(state).__name__}, not a trainer state")
    return state
