"""Positional encodings as numbers (what `pygpt viz pe` plots), and the plots themselves."""

import math

import pytest
import torch

from pygpt.viz import positions as pe


def test_sinusoidal_textbook_values():
    table = pe.sinusoidal(50, 16)
    assert table.shape == (50, 16)
    assert torch.allclose(table[0, 0::2], torch.zeros(8)) and torch.allclose(table[0, 1::2], torch.ones(8))
    p, i = 7, 3  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)
    angle = p / 10000 ** (2 * i / 16)
    assert abs(table[p, 2 * i].item() - math.sin(angle)) < 1e-6
    assert abs(table[p, 2 * i + 1].item() - math.cos(angle)) < 1e-6


def test_sinusoidal_similarity_depends_on_distance():
    sim = pe.similarity(pe.sinusoidal(64, 32))
    # sum_i cos((m - n) w_i): the same along every diagonal.
    assert torch.allclose(sim.diagonal(5), sim[5:, :-5].diagonal()[0].expand(59), atol=1e-9)
    cos = pe.similarity(pe.sinusoidal(64, 32), cosine=True)
    assert torch.allclose(cos.diagonal(), torch.ones(64, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_rope_scores_depend_only_on_relative_offset(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 32, generator=g, dtype=torch.float64)
    scores = pe.rope_scores(q, k, 40)
    for offset in (-7, 0, 3, 20):
        diag = scores.diagonal(offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-4), offset  # fp32 angles
    assert scores.diagonal(0).std() < 1e-4 < scores.diagonal(0)[0].abs()


def test_rope_angles_and_decay():
    angles = pe.rope_angle_table(10, 8)
    assert angles.shape == (10, 4) and torch.allclose(angles[3, 0], torch.tensor(3.0, dtype=torch.float64))
    decay = pe.rope_decay(64, 512)
    assert abs(decay[0].item() - 1.0) < 1e-9 and decay[256:].mean() < 0.5 * decay[:8].mean()


def test_pca_2d_on_a_line():
    t = torch.arange(20.0)[:, None] * torch.tensor([[1.0, 2.0, -1.0]])
    coords, explained = pe.pca_2d(t)
    assert coords.shape == (20, 2) and explained[0] > 0.999


def test_learned_matrix_is_read_from_the_checkpoint(tmp_path):
    from pygpt.data import CharTokenizer
    from pygpt.models import GPT, GPTConfig
    from pygpt.train import load_checkpoint, save_checkpoint

    model = GPT(GPTConfig(vocab_size=5, block_size=12, n_layer=1, n_head=2, n_embd=8, pos="learned"))
    save_checkpoint(tmp_path / "ck", model, CharTokenizer("abcde"))
    table = pe.learned_positions(load_checkpoint(tmp_path / "ck").model)
    assert torch.equal(table, model.wpe.weight.detach().double())
    with pytest.raises(ValueError, match="pos='rope'"):
        pe.learned_positions(GPT(GPTConfig(vocab_size=5, block_size=12, n_layer=1, n_head=2, n_embd=8)))


def test_plots_are_written(tmp_path, tiny_text):
    from PIL import Image

    from pygpt.viz.pe import write_pe_plots

    paths = write_pe_plots(tmp_path, data=str(tiny_text), train_seconds=2)
    names = sorted(p.name for p in paths)
    assert names == ["pe_learned.png", "pe_rope_angles.png", "pe_rope_scores.png", "pe_sinusoidal.png",
                     "pe_sinusoidal_similarity.png"]
    for p in paths:
        image = Image.open(p).convert("L")
        assert p.stat().st_size > 10_000 and image.size[0] > 500
        assert sum(1 for count in image.histogram() if count) > 20  # not a blank canvas


def test_viz_pe_command(tmp_path, tiny_text, capsys, monkeypatch):
    from pygpt.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the learned model's checkpoints must not land in the working directory
    assert main(["viz", "pe", "--out", str(tmp_path / "figs"), "--data", str(tiny_text), "--train-seconds", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert list(work.iterdir()) == []
    with pytest.raises(SystemExit, match="pos=learned"):
        from pygpt.data import CharTokenizer
        from pygpt.models import GPT, GPTConfig
        from pygpt.train import save_checkpoint

        save_checkpoint(tmp_path / "rope", GPT(GPTConfig(vocab_size=3, block_size=4, n_layer=1, n_head=1, n_embd=4)),
                        CharTokenizer("abc"))
        main(["viz", "pe", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "rope")])
