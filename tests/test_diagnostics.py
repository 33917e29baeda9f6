"""Diagnostics: the recorded statistics against a hand computation on a tiny tanh network, the saturation of
naive / Kaiming / BatchNorm MLPs, and the `pygpt viz diagnostics` plots."""

import json
import math

import pytest
import torch
import torch.nn as nn

from pygpt.cli import main
from pygpt.models import BengioMLP, BengioMLPConfig
from pygpt.viz.diagnostics import (ActivationRecorder, UpdateTracker, initial_loss, probe, tensor_stats,
                                   weight_grad_stats)

PNG = b"\x89PNG\r\n\x1a\n"


class TinyTanhNet(nn.Module):
    """x (N, 3) -> tanh(W1 x + b1) (N, 4) -> tanh(W2 h + b2) (N, 2); loss = mean squared error."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(3, 4), nn.Tanh()
        self.fc2, self.act2 = nn.Linear(4, 2), nn.Tanh()

    def forward(self, x, targets=None):
        out = self.act2(self.fc2(self.act1(self.fc1(x))))
        return out, None if targets is None else ((out - targets) ** 2).mean()


def _tiny():
    net = TinyTanhNet()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.2, -0.1], [-3.0, 1.0, 2.0], [0.0, 0.5, 0.5]]))
        net.fc1.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        net.fc2.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.25], [-0.5, 0.1, 1.5, -1.0]]))
        net.fc2.bias.copy_(torch.tensor([0.05, -0.05]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0], [-1.0, 0.0, 1.0], [2.0, 1.0, 0.0], [0.0, -2.0, 0.5]])
    y = torch.tensor([[0.5, -0.5], [0.0, 1.0], [-1.0, 0.2], [0.3, 0.3], [1.0, -1.0]])
    return net, x, y


def _by_hand(net, x, y):
    """Forward and backward of TinyTanhNet written out with the chain rule."""
    W1, b1, W2, b2 = (p.detach() for p in (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias))
    h1 = torch.tanh(x @ W1.T + b1)
    h2 = torch.tanh(h1 @ W2.T + b2)
    d_h2 = 2 * (h2 - y) / y.numel()          # d mean((h2 - y)^2) / d h2
    d_z2 = d_h2 * (1 - h2 ** 2)
    d_h1 = d_z2 @ W2
    d_z1 = d_h1 * (1 - h1 ** 2)
    return {"h1": h1, "h2": h2, "d_h1": d_h1, "d_h2": d_h2, "d_W1": d_z1.T @ x, "d_W2": d_z2.T @ h1}


def test_activation_and_gradient_statistics_match_a_hand_computation():
    net, x, y = _tiny()
    hand = _by_hand(net, x, y)
    with ActivationRecorder(net) as rec:
        net(x, y)[1].backward()
    acts, grads = rec.activation_stats(), rec.gradient_stats()
    assert [s.name for s in acts] == ["act1 (Tanh)", "act2 (Tanh)"]
    for stats, h in zip(acts, (hand["h1"], hand["h2"])):
        assert stats.mean == pytest.approx(h.mean().item(), abs=1e-6)
        assert stats.std == pytest.approx(h.std().item(), abs=1e-6)
        assert stats.saturation == pytest.approx((h.abs() > 0.97).float().mean().item())
        assert sum(d * (b - a) for d, a, b in zip(stats.hist, stats.edges[:-1], stats.edges[1:])) == pytest.approx(1)
    assert 0 < acts[0].saturation < 1  # the weights were picked so that some units saturate
    for stats, g in zip(grads, (hand["d_h1"], hand["d_h2"])):
        assert stats.mean == pytest.approx(g.mean().item(), abs=1e-7)
        assert stats.std == pytest.approx(g.std().item(), rel=1e-5)
        assert stats.saturation is None
    weights = {w.name: w for w in weight_grad_stats(net)}
    assert set(weights) == {"fc1.weight", "fc2.weight"}  # matrices only
    for name, grad in (("fc1.weight", hand["d_W1"]), ("fc2.weight", hand["d_W2"])):
        w = dict(net.named_parameters())[name].detach()
        assert weights[name].grad.std == pytest.approx(grad.std().item(), rel=1e-5)
        assert weights[name].grad_to_data == pytest.approx((grad.std() / w.std()).item(), rel=1e-5)


def test_update_ratio_with_sgd_is_log10_of_lr_grad_over_data():
    net, x, y = _tiny()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    tracker = UpdateTracker(net, opt)
    expected = []
    for _ in range(3):
        hand = _by_hand(net, x, y)
        expected.append(math.log10((0.3 * hand["d_W2"]).std().item() / net.fc2.weight.detach().std().item()))
        net(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    tracker.remove()
    assert tracker.lr_grad["fc2.weight"] == pytest.approx(expected, abs=1e-5)
    assert tracker.actual["fc2.weight"] == pytest.approx(expected, abs=1e-4)  # plain SGD: the update is lr * grad
    assert len(tracker.lr_grad["fc1.weight"]) == 3


def test_initial_loss_check():
    model = BengioMLP(BengioMLPConfig())
    loss, uniform = initial_loss(model, torch.randint(0, 27, (16, 8)), torch.randint(0, 27, (16, 8)))
    assert uniform == pytest.approx(math.log(27)) and abs(loss - uniform) < 0.02


def test_probe_leaves_the_model_untouched():
    model = BengioMLP(BengioMLPConfig(batchnorm=True)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = probe(model, torch.randint(0, 27, (8, 6)), torch.randint(0, 27, (8, 6)), step=0)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.name for s in snapshot.activations] == ["hidden.2 (Tanh)"]


def test_diagnose_moves_batchnorm_statistics_only_by_the_training_steps(tmp_path, tiny_text):
    """The initial-loss forward and the probes run in train mode but must not count as batches: after diagnose
    with 3 steps BatchNorm has seen exactly 3 (it saw 4: the initial-loss forward moved the statistics)."""
    from pygpt.data import load_corpus
    from pygpt.train import TrainConfig, Trainer
    from pygpt.viz.diagnostics import diagnose

    corpus = load_corpus(str(tiny_text))
    model = BengioMLP(BengioMLPConfig(vocab_size=corpus.tokenizer.vocab_size, batchnorm=True, block_size=8))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), log_dir="", batch_size=8, max_iters=3, eval_interval=3,
                      eval_iters=1, progress=False, full_val=False, time_limit=0, schedule_by_time=False)
    diagnose(Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg), 3)
    tracked = [m.num_batches_tracked.item() for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert tracked and all(n == 3 for n in tracked)


@pytest.mark.parametrize("settings, low, high", [
    (dict(init="naive"), 0.5, 1.0),
    (dict(init="kaiming"), 0.0, 0.15),
    (dict(init="naive", batchnorm=True), 0.0, 0.05),
    (dict(init="kaiming", batchnorm=True), 0.0, 0.05),
])
def test_saturation_at_init(settings, low, high):
    """Mean saturation over 3 hidden layers of 100 at init: naive N(0, 1) weights saturate most units."""
    torch.manual_seed(0)
    model = BengioMLP(BengioMLPConfig(n_layer=3, n_hidden=100, **settings))
    idx = torch.randint(0, 27, (32, 8))
    saturation = [s.saturation for s in probe(model, idx, idx, step=0).activations]
    assert low <= sum(saturation) / len(saturation) <= high, saturation


def test_tensor_stats_of_a_constant():
    stats = tensor_stats("c", torch.full((10,), 0.5), saturating=True)
    assert stats.mean == 0.5 and stats.std == 0 and stats.saturation == 0 and len(stats.edges) == len(stats.hist) + 1


def test_viz_diagnostics_writes_the_plots(tmp_path, tiny_text, capsys):
    out = tmp_path / "diag"
    assert main(["viz", "diagnostics", "--model", "mlp", "--data", str(tiny_text), "--steps", "6",
                 "--set", "n_hidden=16", "--set", "n_layer=2", "--out", str(out), "--prefix", "t_"]) == 0
    text = capsys.readouterr().out
    assert "initial loss" in text and "hidden.1 (Tanh)" in text and "hidden.3 (Tanh)" in text
    for kind in ("activations", "gradients", "weights", "updates"):
        path = out / f"t_{kind}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size < 150_000
    stats = json.loads((out / "t_stats.json").read_text())
    assert stats["model_type"] == "mlp" and stats["final"]["step"] == 6
    assert all(len(v) == 6 for v in stats["lr_grad"].values())


def test_viz_diagnostics_errors(tiny_text):
    with pytest.raises(SystemExit, match="has nothing to train"):
        main(["viz", "diagnostics", "--model", "bigram-count", "--data", str(tiny_text), "--steps", "2"])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        main(["viz", "diagnostics", "--data", str(tiny_text), "--steps", "0"])
