import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pygpt.data import load_corpus
from pygpt.models import GPT, GPTConfig
from pygpt.train import TrainConfig, Trainer, load_checkpoint


def _trainer(tiny_text, tmp_path, **overrides):
    corpus = load_corpus(str(tiny_text))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32,
                          dropout=0.1))
    settings = dict(out_dir=str(tmp_path / "run"), log_dir="", batch_size=8, max_iters=12, eval_interval=4,
                    eval_iters=2, warmup_iters=2, progress=False, full_val=False, seed=5)
    settings.update(overrides)
    return Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, TrainConfig(**settings))


def test_resume_equals_uninterrupted_run(tiny_text, tmp_path):
    straight = _trainer(tiny_text, tmp_path / "a")
    straight.fit()

    first = _trainer(tiny_text, tmp_path / "b")
    first.fit(stop_after=6)  # interrupted half way (not on an eval step)
    assert first.step == 6
    resumed = _trainer(tiny_text, tmp_path / "b")
    resumed.resume(tmp_path / "b" / "run" / "last")
    assert resumed.step == 6
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["val"] for h in straight.history] == [h["val"] for h in first.history + resumed.history]


def test_best_checkpoint_full_val_and_callbacks(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path, full_val=True, lr=3e-3)
    events = []
    trainer.add_callback("on_eval", lambda t, step, val_loss, improved: events.append(("eval", step)))
    trainer.add_callback("on_checkpoint", lambda t, path, name: events.append(("ckpt", name)))
    result = trainer.fit()
    assert ("eval", 0) in events and ("eval", 12) in events and ("ckpt", "best") in events
    assert result.full_val is not None and result.full_val.loss < 3.0
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.metadata["best_step"] == result.best_step
    assert abs(best.metadata["full_val_loss"] - result.full_val.loss) < 1e-9
    with pytest.raises(ValueError, match="unknown callback event"):
        trainer.add_callback("on_epoch", print)


def test_early_stopping(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path, lr=0.0, min_lr=0.0, patience=2, max_iters=100, eval_interval=2)
    result = trainer.fit()
    assert result.stopped_because == "early_stopping"
    assert result.steps < 100


def test_callback_can_stop_training(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path)
    def stop(t, step, loss):
        t.should_stop = step >= 3
    trainer.add_callback("on_step_end", stop)
    assert trainer.fit().steps == 3


def test_weight_decay_only_on_matrices(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path)
    decayed, plain = trainer.optimizer.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] > 0
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0


def test_lr_schedule_warmup_then_cosine(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path, lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    lrs = [trainer.lr_at(s) for s in range(120)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert max(lrs) <= 1.0 and abs(lrs[110] - 0.1) < 1e-12
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_torchrun_two_processes_on_cpu(tiny_text, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from pygpt.data import load_corpus
        from pygpt.models import GPT, GPTConfig
        from pygpt.train import TrainConfig, Trainer
        corpus = load_corpus({str(tiny_text)!r})
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
        cfg = TrainConfig(out_dir={str(tmp_path / 'run')!r}, log_dir="", batch_size=4, max_iters=4, eval_interval=2,
                          eval_iters=1, progress=False, full_val=False, device="cpu", threads=1)
        trainer = Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg)
        result = trainer.fit()
        # DDP keeps the replicas identical: print a weight checksum from every rank.
        print("rank", trainer.rank, "of", trainer.world_size, "steps", result.steps,
              "checksum", round(sum(p.double().sum().item() for p in model.parameters()), 6))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("rank"))
    assert len(lines) == 2 and "of 2 steps 4" in lines[0]
    assert lines[0].split("checksum")[1] == lines[1].split("checksum")[1]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_time_limit_with_time_schedule(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path, max_iters=100_000, time_limit=3.0, schedule_by_time=True,
                       warmup_iters=2, lr=1e-3, min_lr=1e-4)
    result = trainer.fit()
    assert result.stopped_because == "time_limit" and result.steps > 2
    assert trainer.history[-1]["step"] == result.steps  # the final weights were scored
    assert abs(trainer.lr_at(result.steps) - 1e-4) < 2e-5  # the schedule ended with the clock
