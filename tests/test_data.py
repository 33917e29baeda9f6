import hashlib
import urllib.error

import pytest
import torch

from pygpt.data import BatchSampler, CharTokenizer, load_corpus, split_train_val
from pygpt.data import text as text_module


def test_tokenizer_round_trip_and_sorted_vocab():
    tok = CharTokenizer.from_text("hello, world!")
    assert tok.chars == sorted(set("hello, world!"))
    assert tok.decode(tok.encode("low, dew!")) == "low, dew!"
    assert CharTokenizer.from_dict(tok.to_dict()) == tok


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(at index 2\) is not in the vocabulary"):
        tok.encode("abz")


@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_id_is_named(bad):
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(torch.tensor([2, 0])) == "ca"
    with pytest.raises(ValueError, match=f"token id {bad} is out of range for a vocabulary of 3"):
        tok.decode([0, bad])


def test_tiny_shakespeare_split_follows_eval_md(shakespeare):
    assert hashlib.sha256(shakespeare.read_bytes()).hexdigest() == text_module.TINY_SHAKESPEARE_SHA256
    corpus = load_corpus(str(shakespeare))
    assert len(corpus.text) == 1_115_394
    assert corpus.tokenizer.vocab_size == 65
    assert len(corpus.val_ids) == 111_540
    assert len(corpus.train_ids) + len(corpus.val_ids) == len(corpus.text)


def test_split_is_first_ninety_percent():
    train, val = split_train_val(torch.arange(100))
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))


def test_sampler_windows_are_shifted_slices_of_the_data():
    ids = torch.arange(1000)
    sampler = BatchSampler(ids, block_size=16, batch_size=8, seed=3)
    x, y = sampler.get_batch()
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.long))  # contiguous windows
    assert int(y.max()) < 1000


def test_sampler_is_seeded_and_resumable():
    ids = torch.arange(500)
    a, b = BatchSampler(ids, 8, 4, seed=7), BatchSampler(ids, 8, 4, seed=7)
    a.get_batch()
    state = a.state_dict()
    next_a = a.get_batch()
    b.load_state_dict(state)
    assert torch.equal(b.get_batch()[0], next_a[0])


def test_sampler_rejects_too_short_data():
    with pytest.raises(ValueError, match="need at least block_size"):
        BatchSampler(torch.arange(5), block_size=8, batch_size=2)


def test_download_offline_gives_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(text_module.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="--input FILE"):
        text_module.download_tiny_shakespeare(tmp_path)


def test_download_rejects_wrong_hash(tmp_path, monkeypatch):
    class Response:
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def read(self):
            return b"not shakespeare"
    monkeypatch.setattr(text_module.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(ValueError, match="sha256"):
        text_module.download_tiny_shakespeare(tmp_path)
    assert not (tmp_path / "tinyshakespeare.txt").exists()


def test_missing_text_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pygpt prepare"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_non_utf8_text_file_error(tmp_path):
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\n\x82 not utf-8")
    with pytest.raises(ValueError, match=r"bin.txt: not UTF-8 text \(byte 0x82 at offset 3"):
        text_module.read_text(binary)
