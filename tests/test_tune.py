"""`pygpt tune`: Optuna studies over tiny models on a tiny text (seconds each)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pygpt.data import load_corpus
from pygpt.models import GPTConfig
from pygpt.train import RunConfig, TrainConfig, load_config
from pygpt.tune import DEFAULT_SPACE, INSTALL_HINT, load_space, parse_space


def _base(tiny_text, **train) -> RunConfig:
    settings = dict(data=str(tiny_text), batch_size=8, max_iters=40, eval_iters=2, warmup_iters=0, lr=3e-3,
                    min_lr=3e-4, threads=1, seed=1)
    settings.update(train)
    return RunConfig(model=GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16), train=TrainConfig(**settings))


def _tune(tiny_text, tmp_path, space, **kwargs):
    from pygpt.tune import tune

    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lines = []
    kwargs.setdefault("trial_time", 0)  # steps only (max_iters): deterministic trials
    kwargs.setdefault("reports", 4)
    kwargs.setdefault("seed", 0)
    base = kwargs.pop("base", None) or _base(tiny_text)
    result = tune(base, space, out_dir=tmp_path / "out", corpus=load_corpus(str(tiny_text)), log=lines.append,
                  **kwargs)
    return result, lines


def _states(study):
    return [(t.number, t.state.name) for t in study.get_trials(deepcopy=False)]


def test_tiny_study_from_the_command_line_writes_a_loadable_best_config(tiny_text, tmp_path, capsys):
    pytest.importorskip("optuna")
    from pygpt.cli import main

    space = tmp_path / "space.toml"
    space.write_text('inherit = false\nn_embd = [16, 32]\n[lr]\nlow = 1e-3\nhigh = 1e-2\nlog = true\n')
    out = tmp_path / "out"
    sets = ["threads=1", "eval_iters=2", "batch_size=8", "block_size=16", "n_layer=1", "n_head=2", "n_embd=16",
            "warmup_iters=0"]
    argv = ["tune", "--config", "lite", "--data", str(tiny_text), "--space", str(space), "--trials", "3",
            "--trial-time", "1", "--out", str(out), "--seed", "0", "--reports", "4"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "study 'tune-lite': 3 trials" in printed and "full-val" in printed and "pygpt train --config" in printed

    import optuna

    study = optuna.load_study(study_name="tune-lite", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done  # nothing can be pruned before 3 trials have finished
    for t in done:  # every trial trained for the same time budget, scored by its full-val loss
        cfg = t.user_attrs["config"]["train"]
        assert cfg["time_limit"] == 1.0 and cfg["schedule_by_time"] is True
        assert t.user_attrs["stopped_because"] == "time_limit"
        assert t.user_attrs["full_val_loss"] == t.value
    best = min(done, key=lambda t: t.value)

    path = out / "tune-lite" / "best_config.json"  # the study's own folder
    cfg = load_config(str(path))
    assert cfg.to_dict() == json.loads(path.read_text())
    assert cfg.train.lr == pytest.approx(best.params["lr"]) and cfg.model.n_embd == best.params["n_embd"]
    assert cfg.train.min_lr == pytest.approx(best.params["lr"] / 10)  # lite's min_lr/lr ratio
    assert cfg.train.time_limit == 1140.0  # the base's budget, not the trial's
    assert cfg.train.data == str(tiny_text.resolve())
    assert cfg.train.out_dir == str(out / "tune-lite" / "best_run")
    trials = out / "tune-lite" / "trials"
    assert (trials / f"{best.number:04d}" / "best").is_dir()  # the best trial's checkpoint is kept
    assert sorted(p.name for p in trials.iterdir()) == [f"{best.number:04d}"]
    assert f"checkpoint {trials / f'{best.number:04d}' / 'best'}" in printed


def test_pruning_stops_a_bad_trial_early(tiny_text, tmp_path):
    space = {"inherit": False, "lr": [1e-2, 1e-7]}
    result, lines = _tune(tiny_text, tmp_path, space, trials=3, prune_after=2, reports=4,
                          base=_base(tiny_text, max_iters=48), enqueue=[{"lr": 1e-2}, {"lr": 1e-2}, {"lr": 1e-7}])
    good1, good2, bad = result.study.get_trials(deepcopy=False)
    assert (good1.state.name, good2.state.name, bad.state.name) == ("COMPLETE", "COMPLETE", "PRUNED")
    assert good1.user_attrs["steps"] == 48
    assert bad.user_attrs["steps"] < 48 and bad.user_attrs["stopped_because"] == "callback"
    assert bad.user_attrs["pruned_at"]["step"] == bad.user_attrs["steps"]
    assert max(bad.intermediate_values) < max(good1.intermediate_values)
    assert "full_val_loss" not in bad.user_attrs  # a pruned trial isn't scored
    assert any(line.startswith("trial 2: pruned at") for line in lines)


def test_resumed_study_continues_its_trial_count(tiny_text, tmp_path):
    space = {"inherit": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}}
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    kwargs = dict(trials=2, storage=storage, study_name="again", base=_base(tiny_text, max_iters=8), pruner="none")
    first, _ = _tune(tiny_text, tmp_path / "a", space, **kwargs)
    assert [t.number for t in first.trials] == [0, 1]
    second, lines = _tune(tiny_text, tmp_path / "b", space, **kwargs)
    assert any("resuming study 'again'" in line and "2 trials so far" in line for line in lines)
    assert [t.number for t in second.trials] == [2, 3]
    assert _states(second.study) == [(n, "COMPLETE") for n in range(4)]
    assert "4 trials (4 complete" in second.table


def test_failed_trials_and_invalid_draws_do_not_stop_the_study(tiny_text, tmp_path):
    space = {"inherit": False, "block_size": [16, 4096], "lr": [1e-2, 1e30], "n_embd": [16, 30, 36],
             "n_head": [2, 4]}
    enqueue = [dict(block_size=4096, lr=1e-2, n_embd=16, n_head=2),   # longer than the val split: raises
               dict(block_size=16, lr=1e30, n_embd=16, n_head=2),     # loss turns NaN
               dict(block_size=16, lr=1e-2, n_embd=30, n_head=4),     # n_embd not a multiple of n_head
               dict(block_size=16, lr=1e-2, n_embd=36, n_head=4),     # odd head_dim
               dict(block_size=16, lr=1e-2, n_embd=16, n_head=2)]
    result, lines = _tune(tiny_text, tmp_path, space, trials=3, base=_base(tiny_text, max_iters=8),
                          enqueue=enqueue)
    assert _states(result.study) == [(0, "FAIL"), (1, "FAIL"), (2, "PRUNED"), (3, "PRUNED"), (4, "COMPLETE")]
    t = result.study.get_trials(deepcopy=False)
    assert "block_size + 1 = 4097" in t[0].user_attrs["fail_reason"]
    assert t[1].user_attrs["fail_reason"].startswith("FloatingPointError: non-finite")
    assert "multiple of n_head" in t[2].user_attrs["invalid"] and "even head_dim" in t[3].user_attrs["invalid"]
    assert not t[2].intermediate_values and "steps" not in t[2].user_attrs  # never trained
    assert "2 failed, 2 invalid draws" in result.table and result.best_config.model.n_embd == 16
    assert lines[-1].startswith("trial 4: full-val")


def test_missing_optuna_says_how_to_install_it(monkeypatch):
    from pygpt.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--trials", "1"])
    assert INSTALL_HINT in str(exc.value.code)


def test_cli_help_does_not_import_optuna_and_exits_nonzero_without_it():
    code = ("import sys; import pygpt, pygpt.cli as cli; cli.build_parser(); "
            "assert 'optuna' not in sys.modules, 'optuna imported'; "
            "sys.modules['optuna'] = None; sys.exit(cli.main(['tune', '--trials', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'pygpt[tune]'" in proc.stderr


def test_space_files_json_and_toml(tmp_path):
    default = parse_space(None)
    assert set(default) == set(DEFAULT_SPACE)
    assert default["lr"].kind == "float" and default["lr"].log
    assert default["n_layer"].kind == "int" and default["warmup_iters"].step == 50
    assert default["n_head"].kind == "categorical"

    (tmp_path / "s.json").write_text(json.dumps({"exclude": ["dropout"], "model.n_layer": [3, 4], "n_kv_head": 1,
                                                 "train.lr": {"low": 1e-3, "high": 5e-3, "log": True},
                                                 "beta2": {"low": 0.95, "high": 0.999}}))
    (tmp_path / "s.toml").write_text('exclude = ["dropout"]\nn_layer = [3, 4]\nn_kv_head = 1\n'
                                     '[lr]\nlow = 1e-3\nhigh = 5e-3\nlog = true\n[beta2]\nlow = 0.95\nhigh = 0.999\n')
    from_json, from_toml = parse_space(load_space(tmp_path / "s.json")), parse_space(load_space(tmp_path / "s.toml"))
    assert from_json == from_toml
    assert "dropout" not in from_json and from_json["n_layer"].choices == (3, 4)
    assert from_json["n_kv_head"].kind == "fixed" and from_json["beta2"].kind == "float"
    assert parse_space({"inherit": False, "lr": [1e-3]}).keys() == {"lr"}

    for bad, message in [({"n_layers": [2]}, "not a setting"), ({"lr": {"low": 1}}, "both 'low' and 'high'"),
                         ({"n_layer": {"low": 1.5, "high": 3}}, "whole low and high"),
                         ({"lr": {"low": 0, "high": 1, "log": True}}, "low > 0"),
                         ({"data": ["x"]}, "set by pygpt tune"), ({"pos": {"low": 0, "high": 1}}, "choices"),
                         ({"lr": {"choices": []}}, "non-empty"), ({"exclude": "lr"}, "list of setting names")]:
        with pytest.raises(ValueError, match=message):
            parse_space(bad)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_space(tmp_path / "broken.json")


def test_base_settings_take_the_base_values_inside_the_space(tiny_text):
    from pygpt.tune import base_settings

    space = parse_space({"inherit": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}, "n_embd": [16, 32],
                         "n_layer": {"low": 2, "high": 4}, "dropout": 0.1})
    base = _base(tiny_text)  # lr 3e-3, n_embd 16, n_layer 1 (outside 2..4)
    assert base_settings(space, base) == {"lr": 3e-3, "n_embd": 16}  # n_layer left to the sampler; dropout fixed


def test_base_departures_name_fixed_and_out_of_space_values(tiny_text):
    from pygpt.tune import base_departures

    space = parse_space({"inherit": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}, "n_embd": [32, 64],
                         "n_layer": {"low": 2, "high": 4}, "n_head": 4, "batch_size": 8})
    reasons = base_departures(space, _base(tiny_text))  # n_embd 16, n_layer 1, n_head 2, batch_size 8
    assert len(reasons) == 3
    assert "n_embd 16 is not among the choices" in reasons[0]
    assert "n_layer 1 is outside 2..4" in reasons[1]
    assert "n_head is fixed at 4 (base: 2)" in reasons[2]


def test_enqueue_base_runs_the_base_config_as_the_first_trial(tiny_text, tmp_path, capsys):
    pytest.importorskip("optuna")
    from pygpt.cli import main

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"inherit": False, "lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                 "n_embd": [16, 32, 48]}))
    argv = ["tune", "--config", "lite", "--data", str(tiny_text), "--space", str(space), "--trials", "2",
            "--trial-time", "0", "--out", str(tmp_path / "out"), "--seed", "3", "--enqueue-base", "--pruner", "none"]
    for item in ["threads=1", "eval_iters=2", "batch_size=8", "block_size=16", "n_layer=1", "n_head=2",
                 "n_embd=32", "warmup_iters=0", "max_iters=6", "lr=0.002"]:
        argv += ["--set", item]
    assert main(argv) == 0
    import optuna

    study = optuna.load_study(study_name="tune-lite", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    first, second = study.trials
    assert first.params == {"lr": 0.002, "n_embd": 32}
    assert second.params != first.params  # then the sampler takes over
    assert "trial 0: full-val" in capsys.readouterr().out


def test_best_config_of_the_default_corpus_names_no_file(tiny_text, tmp_path):
    base = _base(tiny_text, data="", max_iters=8)  # "" = Tiny Shakespeare wherever the config is trained
    result, _ = _tune(tiny_text, tmp_path, {"inherit": False, "lr": [3e-3]}, trials=1, base=base, pruner="none")
    assert result.best_config.train.data == ""
    assert json.loads(result.best_config_path.read_text())["train"]["data"] == ""


def test_parallel_jobs_share_one_study_and_keep_only_the_best_checkpoint(tiny_text, tmp_path):
    # Time-limited trials (3 s each) so that worker 1 has started (a fresh interpreter) before worker 0
    # could have run all six alone.
    result, lines = _tune(tiny_text, tmp_path, {"inherit": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
                          trials=6, jobs=2, trial_time=3, pruner="none",
                          base=_base(tiny_text, max_iters=100_000, threads=0))
    trials = result.study.get_trials(deepcopy=False)
    assert 6 <= len(trials) <= 7  # a worker finishing its running trial may overshoot by one
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    assert all(t.user_attrs["config"]["train"]["threads"] >= 1 for t in trials)  # cpu_count // 2 each
    assert "2 trials at a time" in lines[0]
    best = min(trials, key=lambda t: t.value).number
    kept = sorted(p.name for p in (tmp_path / "out" / "pygpt-tune" / "trials").iterdir())
    assert kept == [f"{best:04d}"]
    assert result.best_config_path.is_file()


def test_jobs_must_be_positive(tiny_text, tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        _tune(tiny_text, tmp_path, {"inherit": False, "lr": [3e-3]}, trials=1, jobs=0)


def test_the_shipped_configs_load():
    """configs/: the README's search spaces parse, and the config the study found trains as a --config file."""
    if sys.version_info < (3, 11):
        pytest.importorskip("tomli")
    configs = Path(__file__).resolve().parents[1] / "configs"
    spaces = sorted(configs.glob("*.toml"))
    assert spaces
    for path in spaces:
        assert parse_space(load_space(path))
    tuned = load_config(str(configs / "lite-tuned.json"))
    assert (tuned.model.n_layer, tuned.model.n_embd, tuned.train.time_limit) == (3, 160, 1140.0)


def test_studies_sharing_an_out_folder_keep_their_files_apart(tiny_text, tmp_path):
    # Both studies number their trials from 0 and share out/study.db; b's best is its trial 1, so a sweep of one
    # trials/ folder would delete a's best checkpoint (trials/0000) and b's best_config.json would replace a's.
    base = _base(tiny_text, max_iters=8)
    a, _ = _tune(tiny_text, tmp_path, {"inherit": False, "lr": [3e-3]}, trials=1, study_name="a", base=base,
                 pruner="none")
    b, _ = _tune(tiny_text, tmp_path, {"inherit": False, "lr": [1e-7, 1e-2]}, trials=2, study_name="b", base=base,
                 pruner="none", enqueue=[{"lr": 1e-7}, {"lr": 1e-2}])
    out = tmp_path / "out"
    assert _states(a.study) == [(0, "COMPLETE")] and [t.number for t in b.trials] == [0, 1]
    assert min(b.trials, key=lambda t: t.value).number == 1
    assert (a.best_config_path, b.best_config_path) == (out / "a" / "best_config.json", out / "b" / "best_config.json")
    assert json.loads(a.best_config_path.read_text())["train"]["lr"] == 3e-3
    assert json.loads(b.best_config_path.read_text())["train"]["lr"] == 1e-2
    assert a.best_config.train.out_dir == str(out / "a" / "best_run")
    a_best = json.loads((out / "a" / "trials" / "0000" / "best" / "config.json").read_text())
    assert a_best["train"]["lr"] == 3e-3  # a's checkpoint, neither overwritten nor swept by b
    assert sorted(p.name for p in (out / "b" / "trials").iterdir()) == ["0001"]

    again, lines = _tune(tiny_text, tmp_path, {"inherit": False, "lr": [3e-3]}, trials=1, study_name="a", base=base,
                         pruner="none")  # the same study again: resumed, in the same folder
    assert any("resuming study 'a'" in line for line in lines) and [t.number for t in again.trials] == [1]
    assert again.study_dir == out / "a" and again.best_config_path == a.best_config_path

    from pygpt.tune import study_dir

    odd = [study_dir(out, name) for name in ("x/y", "x_y", "..", "")]
    assert len(set(odd)) == 4 and all(p.parent == out and not p.name.startswith(".") for p in odd)


def _interrupt_trial(monkeypatch, number: int, at_step: int = 2) -> None:
    """Trials train with a Trainer that gets a Ctrl-C (SIGINT) at step ``at_step`` of trial ``number``."""
    import pygpt.train

    class Trainer(pygpt.train.Trainer):
        def fit(self, *args, **kwargs):
            if Path(self.cfg.out_dir).name == f"{number:04d}":
                self.add_callback("on_step_end", lambda trainer, step, loss: step == at_step
                                  and os.kill(os.getpid(), signal.SIGINT))
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(pygpt.train, "Trainer", Trainer)


def test_ctrl_c_stops_the_study_and_the_same_command_resumes_it(tiny_text, tmp_path, capsys, monkeypatch):
    pytest.importorskip("optuna")
    from pygpt.cli import main

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"inherit": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}}))
    argv = ["tune", "--config", "lite", "--data", str(tiny_text), "--space", str(space), "--trials", "3",
            "--trial-time", "0", "--out", str(tmp_path / "out"), "--seed", "0", "--pruner", "none"]
    for item in ["threads=1", "eval_iters=2", "batch_size=8", "block_size=16", "n_layer=1", "n_head=2",
                 "n_embd=16", "warmup_iters=0", "max_iters=6"]:
        argv += ["--set", item]
    _interrupt_trial(monkeypatch, 1)
    assert main(argv) == 130  # the Trainer's clean stop ends the study, not just the trial
    printed = capsys.readouterr().out
    assert "trial 1: interrupted" in printed and "1 interrupted" in printed
    assert "interrupted: run the same command again to resume study 'tune-lite'" in printed

    import optuna

    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    study = optuna.load_study(study_name="tune-lite", storage=storage)
    assert _states(study) == [(0, "COMPLETE"), (1, "FAIL")]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    assert study.trials[1].user_attrs["stopped_because"] == "interrupted"

    assert main(argv) == 0  # the same command: resumed, 3 more trained trials
    assert "resuming study 'tune-lite'" in capsys.readouterr().out
    study = optuna.load_study(study_name="tune-lite", storage=storage)
    assert _states(study) == [(0, "COMPLETE"), (1, "FAIL")] + [(n, "COMPLETE") for n in (2, 3, 4)]


def test_a_second_ctrl_c_records_the_trial_as_interrupted(tiny_text, tmp_path, monkeypatch):
    import pygpt.train

    def fit(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pygpt.train.Trainer, "fit", fit)
    from pygpt.tune import tune

    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(KeyboardInterrupt):
        tune(_base(tiny_text), {"inherit": False, "lr": [3e-3]}, trials=2, trial_time=0, storage=storage,
             out_dir=tmp_path / "out", corpus=load_corpus(str(tiny_text)), log=lambda line: None)
    (trial,) = optuna.load_study(study_name="pygpt-tune", storage=storage).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"


def test_a_trial_that_used_its_budget_is_scored_not_pruned(tiny_text, tmp_path):
    # The third trial trains 1 step (its max_iters): its only report is its last one (4/4), which it reaches
    # with a worse val loss than the others had at 4/4 - the median pruner would prune it there.
    space = {"inherit": False, "max_iters": [48, 1], "lr": [1e-2, 1e-7]}
    enqueue = [{"max_iters": 48, "lr": 1e-2}, {"max_iters": 48, "lr": 1e-2}, {"max_iters": 1, "lr": 1e-7}]
    result, _ = _tune(tiny_text, tmp_path, space, trials=3, prune_after=2, reports=4,
                      base=_base(tiny_text, max_iters=48), enqueue=enqueue)
    good1, good2, short = result.study.get_trials(deepcopy=False)
    assert short.intermediate_values.keys() == {4} and short.intermediate_values[4] > good1.intermediate_values[4]
    assert (good1.state.name, good2.state.name, short.state.name) == ("COMPLETE", "COMPLETE", "COMPLETE")
    assert short.user_attrs["steps"] == 1 and short.user_attrs["full_val_loss"] == short.value


def test_space_files_reject_bad_ranges_and_wrong_types(tmp_path):
    (tmp_path / "inf.json").write_text('{"lr": {"low": 1e-3, "high": Infinity}}')
    (tmp_path / "nan.json").write_text('{"lr": {"low": NaN, "high": 1e-2}}')
    for name in ("inf.json", "nan.json"):
        with pytest.raises(ValueError, match="space: lr: low and high must be finite"):
            parse_space(load_space(tmp_path / name))
    for bad, message in [({"lr": {"low": 1e-3, "high": 1e-2, "log": "false"}}, "lr: log must be true or false"),
                         ({"n_layer": {"low": 1, "high": 4, "step": 0.5}}, "n_layer: an int range needs a whole step"),
                         ({"n_layer": {"low": 1, "high": 4, "step": 1.5}}, "n_layer: an int range needs a whole step"),
                         ({"n_layer": "2"}, r"n_layer: fixed value '2' is not of the setting's type \(int\)"),
                         ({"n_layer": 2.0}, "n_layer: fixed value 2.0 is not"), ({"bias": 1}, "bias: fixed value 1"),
                         ({"dropout": "0.1"}, "dropout: fixed value"), ({"pos": 1}, "pos: fixed value"),
                         ({"n_embd": [16, "32"]}, "n_embd: choice '32' is not"),
                         ({"lr": [1e-3, float("nan")]}, "lr: choice nan is not finite"),
                         ({"lr": {"low": 1e-2, "high": 1e-2}}, "lr: low .* must be below high"),
                         ({"lr": {"low": 1e-2, "high": 1e-3}}, "lr: low .* must be below high"),
                         ({"n_layer": {"low": 1, "high": 4, "type": "float"}}, "n_layer: an int setting cannot"),
                         ({"bias": {"low": 0, "high": 1, "type": "int"}}, "bias: a bool setting takes choices")]:
        with pytest.raises(ValueError, match=message):
            parse_space(bad)
    ok = parse_space({"inherit": False, "dropout": 0, "n_layer": {"low": 1, "high": 5, "step": 2.0},
                      "lr": {"low": 1e-3, "high": 1e-2, "log": False}, "bias": [True, False]})
    assert ok["n_layer"].step == 2 and ok["dropout"].value == 0 and not ok["lr"].log


def test_a_trial_whose_sampling_fails_records_why(tiny_text, tmp_path):
    # An enqueued value outside the choices: Optuna's suggest raises (the trial fails, with its reason).
    result, lines = _tune(tiny_text, tmp_path, {"inherit": False, "n_embd": [16, 32]}, trials=1,
                          base=_base(tiny_text, max_iters=8), enqueue=[{"n_embd": 17}])
    (trial,) = result.study.get_trials(deepcopy=False)
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"].startswith("ValueError: ")
    assert "17" in trial.user_attrs["fail_reason"] and lines[-1].startswith("trial 0: failed: ValueError")
