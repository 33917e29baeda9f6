import math

import pytest
import torch

from pygpt.models import GPT, GPTConfig

VARIANTS = [
    dict(pos="rope"),
    dict(pos="learned", norm="rmsnorm"),
    dict(pos="sinusoidal", mlp="swiglu"),
    dict(pos="rope", n_kv_head=1, mlp="swiglu", norm="rmsnorm", bias=True),
    dict(pos="rope", tie_weights=False, dropout=0.1),
]


def _model(**kw):
    cfg = dict(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_loss(variant):
    model = _model(**variant)
    idx = torch.randint(0, 23, (3, 11))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 11, 23)
    assert loss.shape == () and torch.isfinite(loss)
    assert model(idx)[1] is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing the token at position t never changes logits before t."""
    model = _model(**variant).eval()
    idx = torch.randint(0, 23, (2, 12))
    t = 7
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 23
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4


def test_initial_loss_near_uniform():
    model = _model()
    idx, targets = torch.randint(0, 23, (2, 8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(23)) < 0.1


def test_weight_tying_and_residual_init():
    model = _model(n_layer=4)
    assert model.lm_head.weight is model.wte.weight
    std = model.blocks[0].attn.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(8)) < 0.002


def test_learned_positions_reject_out_of_range():
    model = _model(pos="learned")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad, match", [
    (dict(n_embd=30), "multiple of n_head"),
    (dict(n_head=0), "multiple of n_head"),
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(pos="alibi"), "pos must be one of"),
    (dict(norm="batchnorm"), "norm must be"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        _model(**bad)


def test_overfits_tiny_text_below_unigram_entropy(tiny_text):
    """A few seconds of training take the loss far below what a unigram model can do."""
    from pygpt.data import load_corpus

    corpus = load_corpus(str(tiny_text))
    ids = corpus.train_ids
    counts = torch.bincount(ids, minlength=corpus.tokenizer.vocab_size).float()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * p.log()).sum().item()

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=48))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(len(ids) - 33, (16,), generator=gen)
        batch = torch.stack([ids[s:s + 33] for s in starts.tolist()])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * unigram_entropy, (loss.item(), unigram_entropy)
