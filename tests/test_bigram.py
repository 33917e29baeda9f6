"""Bigram models: the count model against hand-computed probabilities, the shared contract, training through
the Trainer (counting without optimizer steps), checkpoints, and makemore's count-bigram loss on names."""

import math
import random
import re
from pathlib import Path

import pytest
import torch

from pygpt.cli import main
from pygpt.data import load_corpus
from pygpt.models import (MODEL_TYPES, Bigram, BigramConfig, BigramMLPConfig, CountBigram, CountBigramConfig,
                          EmbBigramMLP, OneHotBigramMLP, lm_loss)
from pygpt.train import TrainConfig, Trainer, full_val, load_checkpoint, save_checkpoint

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"
BIGRAMS = ["bigram-count", "bigram", "bigram-onehot", "bigram-emb"]


@pytest.fixture
def names() -> Path:
    if not NAMES.is_file():
        pytest.skip(f"names.txt not found at {NAMES}")
    return NAMES


def _model(name: str, vocab_size: int = 7) -> torch.nn.Module:
    model_cls, config_cls = MODEL_TYPES[name]
    return model_cls(config_cls(vocab_size=vocab_size))


def test_counts_give_the_hand_computed_add_k_probabilities():
    model = CountBigram(CountBigramConfig(vocab_size=3, smoothing=1.0))
    model.count_stream(torch.tensor([0, 1, 1, 2, 0, 1]))  # pairs 0>1, 1>1, 1>2, 2>0, 0>1
    assert model.counts.tolist() == [[0, 2, 0], [0, 1, 1], [1, 0, 0]]
    expected = torch.tensor([[1, 3, 1], [1, 2, 2], [2, 1, 1]]) / torch.tensor([[5], [5], [4]])
    logits, loss = model(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, 0]]))
    assert torch.allclose(logits[0].exp(), expected)
    nll = -(math.log(3 / 5) + math.log(2 / 5) + math.log(2 / 4)) / 3
    assert loss.item() == pytest.approx(nll, rel=1e-6)


def test_count_skips_ignored_targets_and_k_zero_gives_frequencies():
    model = CountBigram(CountBigramConfig(vocab_size=3, smoothing=0.0))
    model.count(torch.tensor([[0, 0, 1]]), torch.tensor([[1, -100, 2]]))
    assert model.counts.sum() == 2
    probs = model.log_probs().exp()
    assert probs[0].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(probs[2], torch.full((3,), 1 / 3))  # a row never seen is uniform
    with pytest.raises(ValueError, match="same shape"):
        model.count(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", BIGRAMS)
def test_contract_shapes_and_one_token_context(name):
    model = _model(name)
    if name == "bigram-count":
        model.count_stream(torch.randint(0, 7, (200,)))
    idx, targets = torch.randint(0, 7, (3, 9)), torch.randint(0, 7, (3, 9))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 9, 7) and model.config.block_size == 1
    assert torch.allclose(loss, lm_loss(logits, targets))
    # Each position only sees its own token: scoring tokens one by one gives the same logits.
    alone, _ = model(idx.reshape(-1, 1))
    assert torch.allclose(alone.reshape(3, 9, 7), logits, atol=1e-6)


@pytest.mark.parametrize("name", ["bigram", "bigram-onehot", "bigram-emb"])
def test_learned_bigrams_start_at_the_uniform_loss(name):
    model = _model(name, vocab_size=27)
    idx = torch.randint(0, 27, (8, 32))
    _, loss = model(idx, torch.randint(0, 27, (8, 32)))
    assert abs(loss.item() - math.log(27)) < 0.05


def test_one_hot_input_picks_a_column_like_an_embedding():
    model = OneHotBigramMLP(BigramMLPConfig(vocab_size=5, n_hidden=4))
    idx = torch.tensor([[3, 0]])
    hidden = model.hidden(model.features(idx))
    assert torch.allclose(hidden[0, 0], model.hidden.weight[:, 3] + model.hidden.bias)
    assert isinstance(model.act, torch.nn.LeakyReLU) and model.config.n_hidden == 4
    assert isinstance(EmbBigramMLP(BigramMLPConfig(vocab_size=5)).act, torch.nn.LeakyReLU)


@pytest.mark.parametrize("name", BIGRAMS)
def test_checkpoint_round_trip(tmp_path, name, tiny_text):
    corpus = load_corpus(str(tiny_text))
    model = _model(name, corpus.tokenizer.vocab_size).eval()
    if name == "bigram-count":
        model.count_stream(corpus.train_ids)
    save_checkpoint(tmp_path / "ck", model, corpus.tokenizer)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert type(ckpt.model) is type(model) and ckpt.config["model_type"] == name
    idx = torch.randint(0, corpus.tokenizer.vocab_size, (2, 5))
    assert torch.equal(model(idx)[0], ckpt.model(idx)[0])


def test_count_bigram_goes_through_the_trainer_without_steps(tiny_text, tmp_path):
    corpus = load_corpus(str(tiny_text))
    model = CountBigram(CountBigramConfig(vocab_size=corpus.tokenizer.vocab_size))
    model.count_stream(corpus.train_ids)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), log_dir="", max_iters=0, progress=False, eval_iters=2)
    result = Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg).fit()
    assert result.steps == 0 and result.full_val is not None
    assert result.full_val.loss == pytest.approx(full_val(model, corpus.val_ids, 1).loss)
    best = load_checkpoint(tmp_path / "run" / "best")
    assert torch.equal(best.model.counts, model.counts)


def test_learned_table_gets_close_to_the_counts(tiny_text, tmp_path):
    corpus = load_corpus(str(tiny_text))
    V = corpus.tokenizer.vocab_size
    counts = CountBigram(CountBigramConfig(vocab_size=V, smoothing=0.1))
    counts.count_stream(corpus.train_ids)
    target = full_val(counts, corpus.val_ids, 32).loss
    torch.manual_seed(0)
    table = Bigram(BigramConfig(vocab_size=V, block_size=32))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), log_dir="", max_iters=300, lr=0.1, min_lr=0.01,
                      warmup_iters=10, weight_decay=0.0, eval_interval=300, eval_iters=2, progress=False, threads=1)
    result = Trainer(table, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg).fit()
    assert result.full_val.loss < target + 0.05, (result.full_val.loss, target)


def test_count_bigram_on_names_matches_makemore(names, tmp_path, capsys):
    """makemore's add-1 count bigram scores about 2.45 nats; here on the dev split of its 80/10/10 split."""
    assert main(["train", "--model", "bigram-count", "--data", str(names), "--out", str(tmp_path / "run"),
                 "--no-progress", "--set", "log_dir="]) == 0
    out = capsys.readouterr().out
    dev = float(re.search(r"dev loss (\d+\.\d+)", out).group(1))
    assert 2.45 <= dev <= 2.50, out
    assert "no optimizer steps" in out and "22,655 examples" in out


def test_eval_of_a_word_list_model_scores_its_dev_and_test_splits(tmp_path, capsys):
    """`pygpt eval` on a word list scores the dev and test splits the model was trained on (it used to read the
    list as one text stream), and prints the line `pygpt train` ended with."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words) + "\n")
    assert main(["train", "--model", "bigram-count", "--data", str(path), "--out", str(tmp_path / "run"),
                 "--no-progress", "--set", "log_dir="]) == 0
    trained = re.search(r"dev loss .*", capsys.readouterr().out).group(0)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best"), "--data", str(path)]) == 0
    assert capsys.readouterr().out.strip() == trained
    path.write_text("\n".join(w + "x" for w in words) + "\n")  # a character the model never saw
    with pytest.raises(SystemExit, match="'x'"):
        main(["eval", "--checkpoint", str(tmp_path / "run" / "best"), "--data", str(path)])
