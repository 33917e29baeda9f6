"""The Bengio MLP: contexts, initialisation, BatchNorm's running statistics, checkpoints, the train/eval/generate
command line, and a short run on names."""

import math
import re
from pathlib import Path

import pytest
import torch

from pygpt.cli import main
from pygpt.data.words import WordSampler, evaluate_words, load_words
from pygpt.models import BengioMLP, BengioMLPConfig
from pygpt.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"
SMALL = dict(vocab_size=11, context=3, n_embd=4, n_hidden=32)


@pytest.fixture
def names() -> Path:
    if not NAMES.is_file():
        pytest.skip(f"names.txt not found at {NAMES}")
    return NAMES


def test_contexts_are_left_padded_windows():
    model = BengioMLP(BengioMLPConfig(vocab_size=10, context=3, pad_id=9))
    assert model.contexts(torch.tensor([[5, 6, 7]])).tolist() == [[[9, 9, 5], [9, 5, 6], [5, 6, 7]]]


def test_shapes_causality_and_window():
    model = BengioMLP(BengioMLPConfig(**SMALL)).eval()
    idx = torch.randint(0, 11, (2, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 12, 11) and loss.ndim == 0
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 11
    new, _ = model(changed)
    assert torch.equal(new[:, :8], logits[:, :8])          # the past doesn't see the future
    assert torch.equal(new[:, 11:], logits[:, 11:])        # nor what is more than `context` back
    assert not torch.equal(new[:, 8:11], logits[:, 8:11])


def test_config_defaults_round_trip_and_errors():
    cfg = BengioMLPConfig(context=5)
    assert cfg.block_size == 5  # 0 means "the context"
    assert BengioMLPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"block_size \(2\) must be >= context \(3\)"):
        BengioMLPConfig(context=3, block_size=2)
    with pytest.raises(ValueError, match="init must be one of"):
        BengioMLPConfig(init="xavier")
    with pytest.raises(ValueError, match="pad_id must be a token id"):
        BengioMLPConfig(vocab_size=5, pad_id=5)
    with pytest.raises(ValueError, match="unknown keys"):
        BengioMLPConfig.from_dict({"contxt": 3})


def test_initial_loss_kaiming_versus_naive():
    idx, targets = torch.randint(0, 27, (32, 8)), torch.randint(0, 27, (32, 8))
    torch.manual_seed(0)
    kaiming = BengioMLP(BengioMLPConfig())
    assert abs(kaiming(idx, targets)[1].item() - math.log(27)) < 0.02  # -ln(1/27) = 3.2958
    first = kaiming.hidden[0]
    assert first.weight.std().item() == pytest.approx((5 / 3) / math.sqrt(30), rel=0.05)
    naive = BengioMLP(BengioMLPConfig(init="naive"))
    assert naive(idx, targets)[1].item() > 10


def test_batchnorm_trains_on_batch_statistics_and_evaluates_on_running_ones():
    model = BengioMLP(BengioMLPConfig(**SMALL, batchnorm=True, bn_momentum=0.5))
    bn = model.hidden[1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and model.hidden[0].bias is None
    idx = torch.randint(0, 11, (4, 6))
    model.train()
    model(idx)
    assert bn.num_batches_tracked == 1 and bn.running_mean.abs().sum() > 0
    model.eval()
    alone, _ = model(idx[:1])
    together, _ = model(idx)
    assert torch.allclose(alone[0], together[0], atol=1e-6)  # eval: a row doesn't depend on its batch
    model.train()
    assert not torch.allclose(model(idx[:2])[0][0], model(idx)[0][0])


def test_checkpoint_keeps_batchnorm_statistics(tmp_path, tiny_text):
    from pygpt.data import load_corpus

    corpus = load_corpus(str(tiny_text))
    model = BengioMLP(BengioMLPConfig(**dict(SMALL, vocab_size=corpus.tokenizer.vocab_size), batchnorm=True))
    model(corpus.train_ids[:64].view(4, 16))  # moves the running statistics
    model.eval()
    save_checkpoint(tmp_path / "ck", model, corpus.tokenizer)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.config["model_type"] == "mlp" and ckpt.model.config == model.config
    idx = corpus.train_ids[:40].view(2, 20)
    assert torch.equal(model(idx)[0], ckpt.model(idx)[0])


def test_short_run_on_names_beats_the_count_bigram(names, tmp_path):
    ds = load_words(names)
    torch.manual_seed(0)
    model = BengioMLP(BengioMLPConfig(vocab_size=ds.tokenizer.vocab_size))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), log_dir="", batch_size=128, max_iters=600, lr=1e-2,
                      min_lr=1e-3, warmup_iters=20, weight_decay=0.01, eval_interval=600, eval_iters=2,
                      progress=False, threads=1, full_val=False)
    stream = torch.zeros(0, dtype=torch.long)  # unused: the word samplers stand in for the id streams
    Trainer(model, stream, stream, ds.tokenizer, cfg, train_sampler=WordSampler(ds.train, ds.tokenizer, 128, seed=1),
            val_sampler=WordSampler(ds.dev, ds.tokenizer, 128, seed=0)).fit()
    assert evaluate_words(model, ds.dev, ds.tokenizer).loss < 2.40  # the count bigram: 2.4533


def test_train_eval_generate_cli_on_text(tmp_path, tiny_text, capsys):
    out = tmp_path / "mlp"
    assert main(["train", "--model", "mlp", "--data", str(tiny_text), "--out", str(out), "--max-iters", "30",
                 "--no-progress", "--set", "n_hidden=32", "--set", "block_size=8", "--set", "eval_interval=15",
                 "--set", "eval_iters=1", "--set", "log_dir="]) == 0
    text = capsys.readouterr().out
    assert re.search(r"training [\d,]+-parameter mlp", text) and re.search(r"full-val loss \d+\.\d{4}", text)
    assert main(["eval", "--checkpoint", str(out / "best"), "--data", str(tiny_text)]) == 0
    assert re.fullmatch(r"full-val loss \d+\.\d{4} top5 \d+\.\d{2}%\n", capsys.readouterr().out)


@pytest.mark.parametrize("name", ["mlp", "bigram-count", "bigram-emb"])
def test_generate_samples_from_a_classic_checkpoint(tmp_path, tiny_text, capsys, name):
    """`pygpt generate` (the Engine) on classic models: no KV cache, the short context recomputed each step."""
    out = tmp_path / name
    assert main(["train", "--model", name, "--data", str(tiny_text), "--out", str(out), "--max-iters", "5",
                 "--no-progress", "--set", "eval_interval=5", "--set", "eval_iters=1", "--set", "log_dir="]) == 0
    capsys.readouterr()
    args = ["generate", "--checkpoint", str(out / "best"), "--prompt", "the ", "--length", "20", "--seed", "1"]
    assert main(args) == 0
    sampled = capsys.readouterr().out
    assert sampled.startswith("the ") and len(sampled) == len("the ") + 20 + 1
    assert main(args) == 0 and capsys.readouterr().out == sampled  # seeded


def test_cli_settings_are_checked_per_model(tiny_text):
    with pytest.raises(SystemExit, match="n_head: unknown setting for --model mlp"):
        main(["train", "--model", "mlp", "--data", str(tiny_text), "--set", "n_head=2"])
    with pytest.raises(SystemExit, match="unknown --model 'rnn'"):
        main(["train", "--model", "rnn", "--data", str(tiny_text)])
    with pytest.raises(SystemExit, match="block_size .* must be >= context"):
        main(["train", "--model", "mlp", "--data", str(tiny_text), "--set", "context=4", "--set", "block_size=2"])


def test_text_window_defaults_past_the_context():
    """On a text stream the MLP's window defaults to 128 tokens (with window = context, every target but one of a
    window was predicted from a padded context); an explicit block_size and word lists keep theirs."""
    from pygpt.commands.train import TEXT_WINDOW, build_model_config

    assert build_model_config("mlp", 30, [], text=True).block_size == TEXT_WINDOW
    assert build_model_config("mlp", 30, ["block_size=16"], text=True).block_size == 16
    assert build_model_config("mlp", 30, ["context=200"], text=True).block_size == 200
    words = build_model_config("mlp", 30, [], text=False)
    assert words.block_size == words.context


def test_too_short_word_list_is_a_clear_error(tmp_path):
    short = tmp_path / "w5.txt"
    short.write_text("emma\nolivia\nava\nisabella\nsophia\n")
    with pytest.raises(SystemExit, match="5 words leave the dev split empty"):
        main(["train", "--model", "mlp", "--data", str(short), "--out", str(tmp_path / "run")])
