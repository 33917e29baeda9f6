"""Training: configs and presets, the Trainer, checkpoints and the full-val evaluator."""

from .checkpoint import Checkpoint, bundled_checkpoint, load_checkpoint, save_checkpoint
from .config import PRESETS, RunConfig, TrainConfig, apply_overrides, load_config
from .evaluate import EvalResult, full_val
from .trainer import Trainer, TrainResult, amp_autocast, resolve_device

__all__ = [
    "Checkpoint", "bundled_checkpoint", "load_checkpoint", "save_checkpoint", "PRESETS", "RunConfig",
    "TrainConfig", "apply_overrides", "load_config", "EvalResult", "full_val", "Trainer", "TrainResult",
    "amp_autocast", "resolve_device",
]
