"""`pygpt viz`: the subcommand dispatch and `pygpt viz loss` on the Trainer's own tensorboard logs."""

import pytest
import torch

from pygpt.cli import main
from pygpt.commands.viz import SUBCOMMANDS
from pygpt.data import load_corpus
from pygpt.models import Bigram, BigramConfig
from pygpt.train import TrainConfig, Trainer
from pygpt.viz.loss import TRAIN, VAL, find_runs, read_curves, smooth

PNG = b"\x89PNG\r\n\x1a\n"


def test_viz_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SUBCOMMANDS) and {"diagnostics", "loss"} <= set(SUBCOMMANDS)


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", "histogram"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_subcommand_help_comes_from_its_module(capsys):
    with pytest.raises(SystemExit):
        main(["viz", "loss", "--help"])
    assert "usage: pygpt viz loss" in capsys.readouterr().out


def test_loss_curves_from_trainer_logs(tmp_path, tiny_text, capsys):
    corpus = load_corpus(str(tiny_text))
    model = Bigram(BigramConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), log_dir=str(tmp_path / "logs"), max_iters=40, eval_interval=20,
                      eval_iters=2, lr=0.05, progress=False, full_val=False, threads=1)
    trainer = Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg)
    trainer.fit()
    runs = find_runs(tmp_path / "logs")
    assert len(runs) == 1 and runs[0].name.startswith("run-")
    curves = read_curves(runs[0])
    assert curves.series[TRAIN][0] == [10, 20, 30, 40]
    assert curves.series[VAL][0] == [0, 20, 40]
    assert curves.series[VAL][1] == pytest.approx([h["val"] for h in trainer.history], rel=1e-6)

    out = tmp_path / "loss.png"
    assert main(["viz", "loss", str(tmp_path / "logs"), "--out", str(out), "--smooth", "0.5"]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size < 150_000
    assert "loss/train 4 points" in capsys.readouterr().out


def test_loss_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="log directory not found"):
        main(["viz", "loss", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no tensorboard logs under"):
        main(["viz", "loss", str(tmp_path / "empty")])
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "other"))
    writer.add_scalar("lr", 0.1, 1)
    writer.close()
    with pytest.raises(SystemExit, match="no loss/train or loss/val scalars"):
        main(["viz", "loss", str(tmp_path / "other")])


def test_smoothing():
    assert smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert smooth([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)  # debiased: no pull towards zero
    with pytest.raises(ValueError, match=r"smoothing weight must be in \[0, 1\)"):
        smooth([1.0], 1.0)
    assert torch.tensor(smooth([0.0, 10.0], 0.5)).tolist()[1] == pytest.approx(10 * 0.5 / 0.75)


def test_diagnostics_on_a_gpt_and_on_a_model_without_nonlinearity(tmp_path, tiny_text, capsys):
    """The GPT's MLP activation (a GELU module) is recorded; a bigram has none: a clear error, not a traceback."""
    args = ["viz", "diagnostics", "--data", str(tiny_text), "--steps", "2", "--out", str(tmp_path)]
    assert main([*args, "--model", "gpt", "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2",
                 "--set", "block_size=16"]) == 0
    assert "GELU" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--model bigram has no nonlinearity to record"):
        main([*args, "--model", "bigram"])
