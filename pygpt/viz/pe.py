"""`pygpt viz pe`: pictures of positional encodings - the sinusoidal table and its similarities, RoPE's angles
and its relative-position scores, and learned absolute position embeddings from a checkpoint (or from a small
model trained for a minute when none is given). The numbers come from pygpt.viz.positions."""

from __future__ import annotations

from pathlib import Path

import torch

from . import positions as pe


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_sinusoidal(out: Path, n_positions: int = 128, dim: int = 128) -> list[Path]:
    plt = _pyplot()
    table = pe.sinusoidal(n_positions, dim)
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    ax.set(title=f"sinusoidal encoding ({n_positions} positions x {dim} dims)", xlabel="dimension", ylabel="position")
    fig.colorbar(im, ax=ax)
    paths = [_save(fig, out / "pe_sinusoidal.png")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, cosine in zip(axes, (False, True)):
        im = ax.imshow(pe.similarity(table, cosine).numpy(), cmap="viridis")
        ax.set(title=f"sinusoidal: {'cosine similarity' if cosine else 'dot product'} of positions",
               xlabel="position n", ylabel="position m")
        fig.colorbar(im, ax=ax)
    paths.append(_save(fig, out / "pe_sinusoidal_similarity.png"))
    return paths


def plot_rope(out: Path, head_dim: int = 64, n_positions: int = 128, seed: int = 0) -> list[Path]:
    plt = _pyplot()
    angles = pe.rope_angle_table(n_positions, head_dim)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    im = axes[0].imshow(torch.sin(angles).numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    axes[0].set(title="RoPE: sin(angle) per frequency pair", xlabel="frequency pair i", ylabel="position")
    fig.colorbar(im, ax=axes[0])
    for i in (0, 2, 8, head_dim // 2 - 1):
        axes[1].plot(angles[:, i].numpy(), label=f"pair {i}")
    axes[1].set(title="RoPE: rotation angle grows linearly with position", xlabel="position", ylabel="angle (rad)",
                yscale="symlog")
    axes[1].legend()
    paths = [_save(fig, out / "pe_rope_angles.png")]

    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, head_dim, generator=g, dtype=torch.float64)
    scores = pe.rope_scores(q, k, n_positions)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    im = axes[0].imshow(scores.numpy(), cmap="RdBu")
    axes[0].set(title="RoPE: q.k of fixed q at m, k at n (constant along diagonals)", xlabel="n", ylabel="m")
    fig.colorbar(im, ax=axes[0])
    decay = pe.rope_decay(head_dim, 1024)
    axes[1].plot(decay.numpy())
    axes[1].set(title="RoPE: |score| of all-ones q, k decays with distance", xlabel="m - n", ylabel="|score| / D",
                xscale="symlog")
    paths.append(_save(fig, out / "pe_rope_scores.png"))
    return paths


def plot_learned(out: Path, table: torch.Tensor, source: str) -> list[Path]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for ax, cosine in zip(axes[:2], (False, True)):
        im = ax.imshow(pe.similarity(table, cosine).numpy(), cmap="viridis")
        ax.set(title=f"learned: {'cosine similarity' if cosine else 'dot product'}", xlabel="position n",
               ylabel="position m")
        fig.colorbar(im, ax=ax)
    coords, explained = pe.pca_2d(table)
    sc = axes[2].scatter(coords[:, 0].numpy(), coords[:, 1].numpy(), c=range(len(coords)), cmap="plasma", s=12)
    axes[2].plot(coords[:, 0].numpy(), coords[:, 1].numpy(), lw=0.4, color="grey")
    axes[2].set(title=f"learned: 2-D PCA ({100 * explained.sum():.0f}% of variance)", xlabel="PC 1", ylabel="PC 2")
    fig.colorbar(sc, ax=axes[2], label="position")
    fig.suptitle(f"learned position embeddings of {source}")
    return [_save(fig, out / "pe_learned.png")]


def train_learned_model(data: str = "", seconds: float = 60.0, out_dir: str | None = None):
    """A small GPT with learned positions trained for ``seconds`` (the default source of the learned plots). Its
    checkpoints go to ``out_dir``, by default a temporary directory (only the model is needed; it used to write
    out/pe-learned wherever the command ran)."""
    import tempfile

    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return train_learned_model(data, seconds, tmp)
    from pygpt.data import load_corpus
    from pygpt.models import GPT, GPTConfig
    from pygpt.train import TrainConfig, Trainer

    corpus = load_corpus(data)
    model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64,
                          pos="learned"))
    cfg = TrainConfig(out_dir=out_dir, log_dir="", batch_size=32, max_iters=100_000, time_limit=seconds,
                      schedule_by_time=True, lr=3e-3, min_lr=3e-4, eval_interval=200, eval_iters=5, progress=False,
                      full_val=False, device="cpu")
    Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg).fit()
    return model


def write_pe_plots(out: str | Path = "docs", checkpoint: str | None = None, data: str = "",
                   train_seconds: float = 60.0) -> list[Path]:
    """Write every positional-encoding plot into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = plot_sinusoidal(out) + plot_rope(out)
    if checkpoint:
        from pygpt.train import load_checkpoint

        model, source = load_checkpoint(checkpoint).model, str(checkpoint)
    else:
        model, source = train_learned_model(data, train_seconds), f"a 2-layer GPT trained for {train_seconds:.0f} s"
    return paths + plot_learned(out, pe.learned_positions(model), source)


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--checkpoint", help="a checkpoint trained with --set pos=learned (default: train a small "
                                             "one for --train-seconds)")
    parser.add_argument("--out", default="docs", help="output directory for the PNGs (default: docs)")
    parser.add_argument("--data", default="", help="text for the small model (default: Tiny Shakespeare)")
    parser.add_argument("--train-seconds", type=float, default=60.0)


def run(args) -> int:
    try:
        paths = write_pe_plots(args.out, args.checkpoint, args.data, args.train_seconds)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pygpt viz pe: {err}") from None
    for path in paths:
        print(path)
    return 0
