"""Line-per-word datasets: makemore's split and examples, whole-word batches, the exact split loss."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pygpt.data.words import (WordSampler, context_examples, encode_words, evaluate_words, load_words,
                              looks_like_words, padded_words, word_stream)
from pygpt.models import BengioMLP, BengioMLPConfig

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"


@pytest.fixture
def names() -> Path:
    if not NAMES.is_file():
        pytest.skip(f"names.txt not found at {NAMES}")
    return NAMES


@pytest.fixture
def word_file(tmp_path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("ab\nbca\nc\nabc\nba\nca\ncab\nb\nac\nbb\n")
    return path


def test_makemore_split_of_names(names):
    ds = load_words(names)
    assert (len(ds.train), len(ds.dev), len(ds.test)) == (25626, 3203, 3204)
    assert ds.tokenizer.chars[0] == "." and ds.tokenizer.vocab_size == 27
    # makemore's example counts for context 3 (Xtr, Xdev, Xte)
    sizes = [len(context_examples(ds.split(s), ds.tokenizer, 3)[1]) for s in ("train", "dev", "test")]
    assert sizes == [182625, 22655, 22866]
    assert ds.train[:3] == ["yuheng", "diondre", "xavien"]  # the order random.Random(42).shuffle gives


def test_split_is_seeded_and_complete(word_file):
    a, b, c = load_words(word_file), load_words(word_file), load_words(word_file, seed=1)
    assert (a.train, a.dev, a.test) == (b.train, b.dev, b.test)
    assert (a.train, a.dev, a.test) != (c.train, c.dev, c.test)
    assert sorted(a.train + a.dev + a.test) == sorted(word_file.read_text().split())
    assert (len(a.train), len(a.dev), len(a.test)) == (8, 1, 1)


def test_words_with_the_start_token_are_rejected(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("ann\njo.hn\n")
    with pytest.raises(ValueError, match="'jo.hn' contains whitespace or the start token"):
        load_words(path)
    assert not looks_like_words(path)


def test_auto_detection(word_file, tiny_text):
    assert looks_like_words(word_file)
    assert not looks_like_words(tiny_text)


def test_stream_examples_and_encoding(word_file):
    ds = load_words(word_file)
    tok = ds.tokenizer
    assert tok.decode(word_stream(["ab", "c"], tok)) == ".ab.c."
    assert tok.decode(encode_words(["ab"], tok)[0]) == ".ab."
    X, Y = context_examples(["ab"], tok, 2)
    a, b = tok.stoi["a"], tok.stoi["b"]
    assert X.tolist() == [[0, 0], [0, a], [a, b]] and Y.tolist() == [a, b, 0]


def test_sampler_gives_whole_words_of_one_length(names):
    ds = load_words(names)
    sampler = WordSampler(ds.train, ds.tokenizer, batch_size=64, seed=3)
    for _ in range(20):
        x, y = sampler.get_batch()
        assert x.shape == y.shape and (x[:, 0] == 0).all() and (y[:, -1] == 0).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert (y[:, :-1] != 0).all()  # no padding: '.' only at the ends
        assert abs(x.numel() - 64) <= x.shape[1] // 2 + 1 or x.shape[0] == 1
        for row in x:
            assert ds.tokenizer.decode(row[1:]) in set(ds.train)
    state = sampler.state_dict()
    first = sampler.get_batch()
    sampler.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(first, sampler.get_batch()))


def test_evaluate_words_is_the_mean_over_makemore_examples(word_file):
    """The padded whole-word evaluation equals the loss over the context examples, one by one."""
    ds = load_words(word_file)
    torch.manual_seed(0)
    model = BengioMLP(BengioMLPConfig(vocab_size=ds.tokenizer.vocab_size, context=3, n_embd=4, n_hidden=16,
                                      batchnorm=True)).eval()
    words = ds.train + ds.dev + ds.test
    X, Y = context_examples(words, ds.tokenizer, 3)
    # Each example alone: the model reads its 3-token context and the last position's logits are the prediction.
    logits = model(X)[0][:, -1]
    expected = F.cross_entropy(logits, Y).item()
    model.train()  # evaluate_words must score in eval mode (BatchNorm's running statistics) and give it back
    result = evaluate_words(model, words, ds.tokenizer, batch_size=3)
    assert result.loss == pytest.approx(expected, rel=1e-5) and result.n_targets == len(Y)
    assert model.training
    x, y = padded_words(words, ds.tokenizer)
    assert (y == -100).sum() == x.numel() - len(Y)


def test_gpt_block_size_shorter_than_a_word_is_a_clear_error(word_file, tmp_path):
    from pygpt.cli import main

    ds = load_words(word_file)
    longest = max(len(w) for w in ds.train + ds.dev + ds.test)
    with pytest.raises(SystemExit, match=f"longest word has {longest} characters.*block_size={longest + 1}"):
        main(["train", "--data", str(word_file), "--out", str(tmp_path / "run"), "--set", f"block_size={longest}",
              "--set", "pos=learned", "--max-iters", "2", "--no-progress"])
