"""Loss curves from the tensorboard logs the Trainer writes (tags ``loss/train``, every 10 steps, and
``loss/val``, the random-batch estimate at every eval). One run is a folder holding an events file; LOGDIR may be
a run or a folder of runs (the Trainer's log_dir): every run found under it is drawn in its own colour.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

TRAIN, VAL = "loss/train", "loss/val"


@dataclass
class Curves:
    run: str
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # tag -> (steps, values)


def find_runs(logdir: str | Path) -> list[Path]:
    """The folders under (or equal to) ``logdir`` that hold a tensorboard events file, sorted."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise FileNotFoundError(f"log directory not found: {logdir}")
    runs = sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")})
    if not runs:
        raise FileNotFoundError(f"no tensorboard logs under {logdir} (train with --set log_dir=DIR)")
    return runs


def read_curves(run_dir: str | Path, tags: tuple[str, ...] = (TRAIN, VAL), name: str | None = None) -> Curves:
    """The scalar series ``tags`` of one run (tags it never logged are left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    logged = set(events.Tags().get("scalars", []))
    curves = Curves(name or run_dir.name)
    for tag in tags:
        if tag in logged:
            points = events.Scalars(tag)
            curves.series[tag] = ([p.step for p in points], [p.value for p in points])
    return curves


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased like tensorboard's slider (weight 0: unchanged)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def plot_curves(curves: list[Curves], path: str | Path, smoothing: float = 0.0, title: str = "loss",
                logy: bool = False, ymax: float | None = None) -> Path:
    """Train (line) and val (line with markers) loss of each run against the step; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        if TRAIN in c.series:
            steps, values = c.series[TRAIN]
            if smoothing > 0:
                ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, smooth(values, smoothing), color=color, linewidth=1.2, label=f"{c.run} train")
        if VAL in c.series:
            steps, values = c.series[VAL]
            ax.plot(steps, values, color=color, linestyle="--", marker="o", markersize=3, label=f"{c.run} val")
            best = min(range(len(values)), key=values.__getitem__)
            ax.annotate(f"{values[best]:.3f}", (steps[best], values[best]), fontsize=7, color=color,
                        textcoords="offset points", xytext=(0, -10), ha="center")
    if logy:
        ax.set_yscale("log")
    if ymax is not None:
        ax.set_ylim(top=ymax)  # a huge first loss (a bad init) would squash the rest
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("logdir", help="a run's log folder, or a folder of runs (e.g. ./logs)")
    parser.add_argument("--out", help="PNG to write (default: LOGDIR/loss.png)")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="EMA weight in [0, 1) for the train curve (default: 0, raw)")
    parser.add_argument("--title", default="loss")
    parser.add_argument("--logy", action="store_true", help="logarithmic loss axis")
    parser.add_argument("--ymax", type=float, help="top of the loss axis (default: fit every point)")


def run(args: argparse.Namespace) -> int:
    try:
        runs = find_runs(args.logdir)
        root = Path(args.logdir)
        curves = [read_curves(r, name=str(r.relative_to(root)) if r != root else r.name) for r in runs]
        if not any(c.series for c in curves):
            raise ValueError(f"no {TRAIN} or {VAL} scalars in the logs under {root}")
        path = plot_curves(curves, args.out or root / "loss.png", args.smooth, args.title, args.logy,
                           args.ymax)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt viz loss: {err}") from None
    for c in curves:
        parts = [f"{tag} {len(c.series[tag][0])} points, last {c.series[tag][1][-1]:.4f}" for tag in c.series]
        print(f"{c.run}: {'; '.join(parts) or 'no loss scalars'}")
    print(f"wrote {path}")
    return 0
