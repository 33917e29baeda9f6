"""Training diagnostics (makemore part 3): is the network healthy at init and while it trains?

- ``ActivationRecorder``: forward hooks on the nonlinearities (Tanh, LeakyReLU, ...) that keep, per layer, the
  output's mean, std and saturation (fraction with |tanh| > 0.97, where tanh's gradient is below 6% and
  learning stalls), its histogram, and the same statistics of the gradient flowing back into that output.
- ``weight_grad_stats``: per weight matrix, the gradient's mean, std, histogram and grad:data ratio
  std(grad) / std(w).
- ``UpdateTracker``: optimizer hooks that log, every step and per weight matrix, the update:data ratio
  log10(std(lr * grad) / std(w)) (makemore's guide: about -3) and the ratio of the update the optimizer actually
  made, log10(std(w_after - w_before) / std(w_before)) (the same number for plain SGD; not for AdamW).
- ``initial_loss``: the first loss against -ln(1/V), the loss of a uniform guess.

``pygpt viz diagnostics`` trains a model for a few steps with the Trainer and writes the plots.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

SATURATION = 0.97   # |tanh(x)| above this counts as saturated
NONLINEARITIES = (nn.Tanh, nn.LeakyReLU, nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid)
BINS = 60


@dataclass
class TensorStats:
    name: str
    mean: float
    std: float
    saturation: float | None  # fraction with |x| > SATURATION; None where it means nothing (not a tanh output)
    hist: list[float]         # density over the bins
    edges: list[float]        # bin edges (len(hist) + 1)

    def label(self) -> str:
        text = f"{self.name}: mean {self.mean:+.2f}, std {self.std:.2e}"
        return text + (f", saturated {100 * self.saturation:.1f}%" if self.saturation is not None else "")


def tensor_stats(name: str, x: torch.Tensor, saturating: bool = False, bins: int = BINS) -> TensorStats:
    """Mean, std (torch's, unbiased), saturation if ``saturating`` and a density histogram of ``x``."""
    x = x.detach().float().flatten().cpu()
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    saturation = float((x.abs() > SATURATION).float().mean()) if saturating else None
    return TensorStats(name, float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0, saturation,
                       (counts / (counts.sum() * width)).tolist(), torch.linspace(lo, hi, bins + 1).tolist())


class ActivationRecorder:
    """Record the outputs of ``layer_types`` modules (and the gradients into them) during one forward/backward.

    >>> with ActivationRecorder(model) as rec:
    ...     model(x, y)[1].backward()
    >>> rec.activation_stats(), rec.gradient_stats()
    """

    def __init__(self, model: nn.Module, layer_types: tuple[type[nn.Module], ...] = NONLINEARITIES):
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, layer_types)]
        if not self.layers:
            names = ", ".join(t.__name__ for t in layer_types)
            raise ValueError(f"ActivationRecorder: the model has no layer of type {names}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> ActivationRecorder:
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self.outputs[name] = output.detach()
            if output.requires_grad:
                output.register_hook(lambda grad: self.grads.__setitem__(name, grad.detach()))
        return hook

    def _title(self, name: str, module: nn.Module) -> str:
        return f"{name} ({type(module).__name__})"

    def activation_stats(self) -> list[TensorStats]:
        return [tensor_stats(self._title(n, m), self.outputs[n], saturating=isinstance(m, nn.Tanh))
                for n, m in self.layers if n in self.outputs]

    def gradient_stats(self) -> list[TensorStats]:
        return [tensor_stats(self._title(n, m), self.grads[n]) for n, m in self.layers if n in self.grads]


def weight_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters with >= 2 dimensions (weights and embeddings; not biases or norm gains)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


@dataclass
class WeightStats:
    name: str
    shape: list[int]
    grad: TensorStats
    grad_to_data: float  # std(grad) / std(w)


def weight_grad_stats(model: nn.Module) -> list[WeightStats]:
    """Gradient statistics of every weight matrix (after a backward pass)."""
    out = []
    for name, p in weight_matrices(model):
        if p.grad is None:
            continue
        out.append(WeightStats(name, list(p.shape), tensor_stats(f"{name} {tuple(p.shape)}", p.grad),
                               float(p.grad.std() / p.detach().std())))
    return out


class UpdateTracker:
    """Per-step update:data ratios of every weight matrix, from hooks on ``optimizer.step``.

    ``lr_grad[name][i]`` = log10(std(lr * grad) / std(w)) at step i (grads as the optimizer sees them, after
    clipping); ``actual[name][i]`` = log10(std(w_after - w_before) / std(w_before)).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.weights = weight_matrices(model)
        lrs = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._groups = {name: lrs[id(p)] for name, p in self.weights if id(p) in lrs}
        self.lr_grad: dict[str, list[float]] = {name: [] for name, _ in self.weights}
        self.actual: dict[str, list[float]] = {name: [] for name, _ in self.weights}
        self._before: dict[str, torch.Tensor] = {}
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, optimizer, args, kwargs) -> None:
        for name, p in self.weights:
            w = p.detach()
            self._before[name] = w.clone()
            lr = self._groups[name]["lr"] if name in self._groups else 0.0
            ratio = (lr * p.grad).std() / w.std() if p.grad is not None else torch.tensor(0.0)
            self.lr_grad[name].append(_log10(float(ratio)))

    def _post(self, optimizer, args, kwargs) -> None:
        for name, p in self.weights:
            before = self._before.pop(name)
            self.actual[name].append(_log10(float((p.detach() - before).std() / before.std())))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else float("-inf")


@torch.no_grad()
def initial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss of the model on x, y in its current mode, -ln(1/V): what a uniform guess scores)."""
    logits, loss = model(x, y)
    return float(loss), math.log(logits.size(-1))


@dataclass
class Snapshot:
    """The statistics of one forward/backward pass on the probe batch."""
    step: int
    loss: float
    activations: list[TensorStats]
    gradients: list[TensorStats]
    weights: list[WeightStats]


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> Snapshot:
    """Forward and backward on (x, y) in training mode, leaving the model as it was (no grads, same buffers)."""
    state = copy.deepcopy(model.state_dict())  # BatchNorm's running statistics would move
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    with ActivationRecorder(model) as recorder:
        _, loss = model(x, y)
        loss.backward()
    snapshot = Snapshot(step, loss.item(), recorder.activation_stats(), recorder.gradient_stats(),
                        weight_grad_stats(model))
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    model.train(was_training)
    return snapshot


@dataclass
class DiagnosticsReport:
    model_type: str
    initial_loss: float
    uniform_loss: float
    init: Snapshot
    final: Snapshot
    lr_grad: dict[str, list[float]] = field(default_factory=dict)
    actual: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"initial loss {self.initial_loss:.4f} (uniform guess -ln(1/V) = {self.uniform_loss:.4f})",
                 f"{'layer':<28} {'init mean':>9} {'std':>6} {'sat%':>6}   "
                 f"{'step':>5} {'mean':>6} {'std':>6} {'sat%':>6}"]
        for a, b in zip(self.init.activations, self.final.activations):
            lines.append(f"{a.name:<28} {a.mean:+9.3f} {a.std:6.3f} {_percent(a.saturation)}   "
                         f"{self.final.step:5d} {b.mean:+6.3f} {b.std:6.3f} {_percent(b.saturation)}")
        lines.append(f"{'weight':<28} {'grad:data init':>14} {'final':>8}   "
                     "log10 update:data, last 10% of steps")
        for a, b in zip(self.init.weights, self.final.weights):
            lines.append(f"{a.grad.name:<28} {a.grad_to_data:14.2e} {b.grad_to_data:8.2e}   "
                         f"lr*grad {_tail_mean(self.lr_grad.get(a.name, [])):6.2f}, "
                         f"actual {_tail_mean(self.actual.get(a.name, [])):6.2f}")
        return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return f"{100 * fraction:6.2f}" if fraction is not None else "     -"


def _tail_mean(values: list[float]) -> float:
    """Mean of the last 10% of a series (nan if empty)."""
    tail = values[-max(1, len(values) // 10):]
    return sum(tail) / len(tail) if tail else float("nan")


# -- plots ---------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_hists(ax, stats: list[TensorStats], title: str) -> None:
    for s in stats:
        centers = [(a + b) / 2 for a, b in zip(s.edges[:-1], s.edges[1:])]
        ax.plot(centers, s.hist, label=s.label())
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def plot_histograms(before: list[TensorStats], after: list[TensorStats], what: str, path: str | Path,
                    steps: tuple[int, int] = (0, 0)) -> Path:
    """Two panels of per-layer histograms (at ``steps[0]`` and ``steps[1]``), saved as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    _plot_hists(axes[0], before, f"{what}, step {steps[0]}")
    _plot_hists(axes[1], after, f"{what}, step {steps[1]}")
    return _save(fig, path)


def plot_weight_grads(snapshot: Snapshot, path: str | Path) -> Path:
    """Histograms of the weight gradients, with each matrix's grad:data ratio in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for w in snapshot.weights:
        s = w.grad
        centers = [(a + b) / 2 for a, b in zip(s.edges[:-1], s.edges[1:])]
        ax.plot(centers, s.hist, label=f"{s.name}: grad std {s.std:.2e}, grad:data {w.grad_to_data:.2e}")
    ax.set_title(f"weight gradients, step {snapshot.step}", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_update_ratios(report: DiagnosticsReport, path: str | Path) -> Path:
    """log10 update:data ratio per weight matrix over the steps, with makemore's -3 guide line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), sharey=True)
    for ax, series, title in ((axes[0], report.lr_grad, "log10 std(lr·grad) / std(w)"),
                              (axes[1], report.actual, "log10 std(Δw) / std(w), the optimizer's update")):
        for name, values in series.items():
            ax.plot(range(1, len(values) + 1), values, linewidth=0.8, label=name)
        ax.axhline(-3, color="k", linestyle="--", linewidth=1, label="-3")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def write_plots(report: DiagnosticsReport, out_dir: str | Path, prefix: str = "diag_") -> list[Path]:
    """The four PNGs and a JSON with every number: <out_dir>/<prefix>{activations,gradients,weights,updates}."""
    out_dir = Path(out_dir)
    steps = (report.init.step, report.final.step)
    paths = [
        plot_histograms(report.init.activations, report.final.activations, "activations",
                        out_dir / f"{prefix}activations.png", steps),
        plot_histograms(report.init.gradients, report.final.gradients, "gradients of the activations",
                        out_dir / f"{prefix}gradients.png", steps),
        plot_weight_grads(report.init, out_dir / f"{prefix}weights.png"),
        plot_update_ratios(report, out_dir / f"{prefix}updates.png"),
    ]
    json_path = out_dir / f"{prefix}stats.json"
    json_path.write_text(json.dumps(report.to_dict()) + "\n")
    return paths + [json_path]


# -- the run -------------------------------------------------------------------------------------------------
def diagnose(trainer, steps: int) -> DiagnosticsReport:
    """Probe the trainer's model at init, train ``steps`` steps with update tracking, probe again."""
    model = trainer.model
    x, y = trainer.train_sampler.get_batch()
    model.train()
    state = copy.deepcopy(model.state_dict())  # a forward in train mode moves BatchNorm's running statistics
    with torch.no_grad():
        first, uniform = initial_loss(model, x, y)
    model.load_state_dict(state)
    init = probe(model, x, y, step=trainer.step)
    tracker = UpdateTracker(model, trainer.optimizer)
    try:
        trainer.fit(stop_after=steps)
    finally:
        tracker.remove()
    final = probe(model, x, y, step=trainer.step)
    return DiagnosticsReport(model.model_type, first, uniform, init, final, tracker.lr_grad, tracker.actual)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train a model for a few steps and plot its health: activations, gradients, "
                          "grad:data and update:data ratios, the initial loss. Writes PNGs and a JSON.")
    parser.add_argument("--model", default="mlp", help="model type, as for `pygpt train` (default: mlp)")
    parser.add_argument("--data", default="", help="text file or word list (default: Tiny Shakespeare)")
    parser.add_argument("--dataset", default="auto", choices=("auto", "text", "words"))
    parser.add_argument("--config", default="lite", help="training preset or JSON file (default: lite)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model or train setting, e.g. --set init=naive --set n_layer=4 --set lr=0.01")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    parser.add_argument("--out", default="diagnostics", help="output directory (default: ./diagnostics)")
    parser.add_argument("--prefix", default="diag_", help="file name prefix (default: diag_)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from pygpt.commands.train import (build_model_config, classic_defaults, load_training_data,
                                      split_model_overrides, training_streams, word_trainer_args)
    from pygpt.data.words import WordDataset
    from pygpt.models import MODEL_TYPES
    from pygpt.train import Trainer, load_config

    if args.steps < 1:
        raise SystemExit(f"pygpt viz diagnostics: --steps must be >= 1, got {args.steps}")
    if args.model not in MODEL_TYPES:
        raise SystemExit(f"pygpt viz diagnostics: unknown --model {args.model!r} (available: "
                         f"{', '.join(MODEL_TYPES)})")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_sets, overrides = split_model_overrides(args.model, args.set)
            fixed = [f"max_iters={args.steps}", f"eval_interval={args.steps}", "eval_iters=2", "log_dir=",
                     "time_limit=0", "schedule_by_time=false", "progress=false", "full_val=false",
                     f"out_dir={tmp}", f"device={args.device}"]
            defaults = classic_defaults(args.model) if args.model != "gpt" else []
            cfg = load_config(args.config, defaults + overrides + fixed)
            data = load_training_data(args.data, args.dataset)
            vocab = data.tokenizer.vocab_size
            if args.model == "gpt":
                cfg.model.vocab_size = vocab
            else:
                cfg.model = build_model_config(args.model, vocab, model_sets, text=not isinstance(data, WordDataset))
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"pygpt viz diagnostics: {err}") from None
        torch.manual_seed(cfg.train.seed)
        model = MODEL_TYPES[args.model][0](cfg.model)
        if not any(p.requires_grad for p in model.parameters()):
            raise SystemExit(f"pygpt viz diagnostics: --model {args.model} has nothing to train")
        if not any(isinstance(m, NONLINEARITIES) for m in model.modules()):
            raise SystemExit(f"pygpt viz diagnostics: --model {args.model} has no nonlinearity to record ("
                             + ", ".join(t.__name__ for t in NONLINEARITIES) + "); try --model mlp")
        words = data if isinstance(data, WordDataset) else None
        trainer = Trainer(model, *training_streams(data), data.tokenizer, cfg.train,
                          **(word_trainer_args(words, cfg.train) if words else {}))
        report = diagnose(trainer, args.steps)
    print(report.summary())
    for path in write_plots(report, args.out, args.prefix):
        print(f"wrote {path}")
    return 0
