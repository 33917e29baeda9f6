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
    """torchrun with 2 processes (gloo): DDP keeps the replicas identical while each rank draws its own batches,
    and a resume gives every rank back its own data stream (the next batch of each rank is the one it would have
    drawn without the interruption)."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
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
        if sys.argv[1] == "resume":
            trainer.resume({str(tmp_path / 'run' / 'last')!r})
        else:
            result = trainer.fit(stop_after=3)
        x, _ = trainer.train_sampler.get_batch()  # the batch the next step would train on
        line = " ".join(map(str, ("rank", trainer.rank, "of", trainer.world_size, "step", trainer.step, "next",
                                  int((x * torch.arange(x.numel()).view_as(x)).sum()), "checksum",
                                  round(sum(p.double().sum().item() for p in model.parameters()), 6))))
        with open(f"{{sys.argv[1]}}-{{trainer.rank}}.txt", "w") as f:  # (one file a rank: prints interleave)
            f.write(line)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def torchrun(mode):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                              str(script), mode], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [(tmp_path / f"{mode}-{rank}.txt").read_text().split() for rank in range(2)]
        assert [line[:6] for line in lines] == [
            ["rank", str(r), "of", "2", "step", "3"] for r in range(2)]
        return {int(line[1]): (line[7], line[9]) for line in lines}  # rank -> (next batch, weights)

    trained = torchrun("fit")
    assert trained[0][1] == trained[1][1]  # identical replicas
    assert trained[0][0] != trained[1][0]  # different data on each rank
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert torchrun("resume") == trained


def _record_lr(trainer):
    """The learning rate of every step, as the optimizer used it."""
    lrs = []
    trainer.add_callback("on_step_end", lambda t, step, loss: lrs.append(t.optimizer.param_groups[0]["lr"]))
    return lrs


def test_time_limit_with_time_schedule(tiny_text, tmp_path):
    trainer = _trainer(tiny_text, tmp_path, max_iters=100_000, time_limit=3.0, schedule_by_time=True,
                       warmup_iters=2, lr=1e-3, min_lr=1e-4)
    lrs = _record_lr(trainer)
    result = trainer.fit()
    assert result.stopped_because == "time_limit" and result.steps > 2
    assert trainer.history[-1]["step"] == result.steps  # the final weights were scored
    assert lrs[2] > 9e-4 and lrs[-1] < 1.5e-4  # the schedule ended with the clock
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_time_schedule_also_ends_at_max_iters(tiny_text, tmp_path):
    """On a machine fast enough to reach max_iters before the time limit, the cosine still ends at min_lr."""
    trainer = _trainer(tiny_text, tmp_path, max_iters=40, time_limit=600.0, schedule_by_time=True,
                       warmup_iters=2, lr=1e-3, min_lr=1e-4)
    lrs = _record_lr(trainer)
    assert trainer.fit().stopped_because == "max_iters"
    assert lrs[-1] < 1.1e-4


def test_resume_keeps_the_clock(tiny_text, tmp_path):
    """A time-limited run resumed goes on with its elapsed training time (its LR schedule and limit continue),
    instead of restarting the clock at its best eval."""
    settings = dict(max_iters=100_000, time_limit=4.0, schedule_by_time=True, warmup_iters=2, lr=1e-3, min_lr=1e-4,
                    eval_interval=1000)  # one eval, at step 0: the best is at 0 s
    first = _trainer(tiny_text, tmp_path, **settings)
    first_lrs = _record_lr(first)
    first.fit(stop_after=200)
    elapsed = first._elapsed()
    resumed = _trainer(tiny_text, tmp_path, **settings)
    resumed.resume(tmp_path / "run" / "last")
    lrs = _record_lr(resumed)
    result = resumed.fit()
    assert lrs[0] <= first_lrs[-1] * 1.0001  # the cosine goes on: no jump back to the peak
    assert result.stopped_because == "time_limit" and result.train_seconds < 4.0 + 1.0
    assert result.train_seconds >= elapsed


def test_time_schedule_of_a_step_limited_run_warms_up_to_the_peak(tiny_text, tmp_path):
    """With schedule_by_time and max_iters reached first, the LR is the step schedule's: it reaches lr at the end
    of warmup and decays over the steps after it (the warmup's steps used to count as decay: a drop at warmup's
    end, from 1.98e-3 to 1.74e-3 in lite's 400-step run)."""
    from pygpt.train.optim import cosine_lr

    trainer = _trainer(tiny_text, tmp_path, max_iters=40, time_limit=600.0, schedule_by_time=True,
                       warmup_iters=10, lr=1e-3, min_lr=1e-4, eval_interval=40)
    lrs = _record_lr(trainer)
    trainer.fit()
    expected = [cosine_lr(step, 1e-3, 1e-4, 10, 40) for step in range(40)]
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-6  # (the clock's share of 600 s is tiny here)
    assert lrs[10] > 0.999e-3


def test_a_run_whose_val_loss_is_not_finite_stops_and_scores_nothing(tiny_text, tmp_path):
    """NaN weights (a diverged run): the first eval stops it; no eval improved on inf, so out_dir/best is not this
    run's (here an older run's, as `--overwrite` leaves it) and nothing is scored as if it were."""
    _trainer(tiny_text, tmp_path, max_iters=4, full_val=True).fit()
    older_best = load_checkpoint(tmp_path / "run" / "best").metadata
    trainer = _trainer(tiny_text, tmp_path, max_iters=40, full_val=True)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    result = trainer.fit()
    assert result.stopped_because == "non_finite_val_loss" and result.steps == 0
    assert result.best_step == -1 and result.full_val is None
    assert load_checkpoint(tmp_path / "run" / "best").metadata == older_best  # the older run's, untouched


def test_resuming_a_run_that_stopped_early_stops_at_once(tiny_text, tmp_path):
    kw = dict(lr=0.0, min_lr=0.0, patience=2, max_iters=100, eval_interval=2)
    first = _trainer(tiny_text, tmp_path, **kw)
    stopped = first.fit()
    assert stopped.stopped_because == "early_stopping"
    resumed = _trainer(tiny_text, tmp_path, **kw)
    resumed.resume(tmp_path / "run" / "last")
    result = resumed.fit()
    assert result.stopped_because == "early_stopping" and result.steps == stopped.steps


def test_a_second_fit_continues_the_clock(tiny_text, tmp_path):
    import time

    trainer = _trainer(tiny_text, tmp_path)
    trainer.add_callback("on_step_end", lambda t, step, loss: time.sleep(0.3) if step <= 3 else None)
    first = trainer.fit(stop_after=3)
    assert first.train_seconds >= 0.9
    second = trainer.fit()
    assert second.steps == 12 and second.train_seconds >= first.train_seconds
    assert trainer.history[-1]["seconds"] >= first.train_seconds


def test_ctrl_c_under_torchrun_saves_last_on_the_step_all_ranks_agree(tiny_text, tmp_path):
    """SIGINT reaching one rank only (torchrun passes Ctrl-C to every rank, not at the same instant): every rank
    stops after the same step and out_dir/last holds it (it used to stop nothing and save nothing)."""
    script = tmp_path / "ddp_int.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import torch
        from pygpt.data import load_corpus
        from pygpt.models import GPT, GPTConfig
        from pygpt.train import TrainConfig, Trainer
        corpus = load_corpus({str(tiny_text)!r})
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
        cfg = TrainConfig(out_dir={str(tmp_path / 'run')!r}, log_dir="", batch_size=4, max_iters=1000,
                          eval_interval=500, eval_iters=1, progress=False, full_val=False, device="cpu", threads=1)
        trainer = Trainer(model, corpus.train_ids, corpus.val_ids, corpus.tokenizer, cfg)
        def interrupt(t, step, loss):
            if t.rank == 1 and step == 5:
                os.kill(os.getpid(), signal.SIGINT)
        trainer.add_callback("on_step_end", interrupt)
        result = trainer.fit()
        with open(f"rank-{{trainer.rank}}.txt", "w") as f:
            f.write(f"{{result.stopped_because}} {{result.steps}}")
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [(tmp_path / f"rank-{r}.txt").read_text().split() for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0][0] == "interrupted", ranks
    assert load_checkpoint(tmp_path / "run" / "last").metadata["step"] == int(ranks[0][1]) >= 5
