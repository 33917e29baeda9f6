"""Smoke tests of the `pygpt` command line: prepare -> train -> eval -> generate, and its error messages."""

import re
import shutil
import subprocess

import pytest

from pygpt.cli import main

TINY_RUN = ["--config", "lite", "--max-iters", "6", "--no-progress", "--set", "block_size=16", "--set", "n_layer=1",
            "--set", "n_embd=32", "--set", "n_head=2", "--set", "eval_interval=3", "--set", "eval_iters=1",
            "--set", "batch_size=4", "--set", "log_dir="]


@pytest.fixture
def trained(tmp_path, tiny_text, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN]) == 0
    text = capsys.readouterr().out
    assert re.search(r"full-val loss \d+\.\d{4} top5 \d+\.\d{2}%", text), text
    return out / "best"


def test_train_is_reproducible_for_a_seed(tmp_path, tiny_text, capsys):
    """The seed fixes the initial weights as well as the batches: two runs print the same scores (the GPU suite's
    fused-vs-reference comparison relies on it), another seed does not."""
    def scores(seed):
        assert main(["train", "--data", str(tiny_text), "--out", str(tmp_path / f"s{seed}"), *TINY_RUN,
                     "--set", f"seed={seed}", "--overwrite"]) == 0
        return re.findall(r"(?:estimate|full-val loss) (\d+\.\d{4})", capsys.readouterr().out)

    first = scores(3)
    assert len(first) == 2 and scores(3) == first and scores(4) != first


def test_train_keeps_an_existing_run_and_resume_errors(trained, tiny_text, tmp_path, capsys):
    """A second `pygpt train` into the same out_dir must not replace the trained model with step 0's; resume
    errors (no run, another model) are clear messages."""
    out = trained.parent
    before = (trained / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run.*--resume.*--overwrite"):
        main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN])
    assert (trained / "model.safetensors").read_bytes() == before
    with pytest.raises(SystemExit, match="--resume: no run to resume in"):
        main(["train", "--data", str(tiny_text), "--out", str(tmp_path / "none"), *TINY_RUN, "--resume"])
    with pytest.raises(SystemExit, match="holds another model \\(n_embd: 32 there, 48 here\\)"):
        main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN, "--set", "n_embd=48", "--resume"])
    assert main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN, "--overwrite"]) == 0


def test_ctrl_c_stops_training_at_a_step_and_saves_last(tiny_text, tmp_path):
    """A first Ctrl-C ends training after the current step with out_dir/last saved (resumable), exit 130."""
    import json
    import signal
    import time

    out = tmp_path / "run"
    args = [shutil.which("pygpt"), "train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN]
    args[args.index("6")] = "1000000"  # --max-iters: only the interrupt ends it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last" / "trainer_state.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)  # the step-0 eval saved last: the loop is running
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopping after this step" in stderr and "--resume` continues" in stdout
    step = json.loads((out / "last" / "config.json").read_text())["metadata"]["step"]
    assert step > 0 and f"stopped after {step} steps (interrupted)" in stdout


def test_train_on_too_little_text_is_a_clear_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be, that is the question\n" * 2)
    with pytest.raises(SystemExit, match="the val split has 9 characters, fewer than block_size \\+ 1 = 17"):
        main(["train", "--data", str(short), "--out", str(tmp_path / "run"), *TINY_RUN])


def test_bad_data_and_config_files_are_clear_errors(tmp_path):
    empty, short, config = tmp_path / "empty.txt", tmp_path / "short.txt", tmp_path / "c.json"
    empty.write_text("")
    short.write_text("hello world\n")
    config.write_text('{"train": {"bogus": 1}}')
    with pytest.raises(SystemExit, match="pygpt prepare: text file is empty"):
        main(["prepare", "--input", str(empty), "--dir", str(tmp_path / "data")])
    with pytest.raises(SystemExit, match="pygpt eval: full_val: need at least block_size \\+ 1"):
        main(["eval", "--data", str(short)])
    with pytest.raises(SystemExit, match="pygpt train: --config .*c.json: .*'bogus'"):
        main(["train", "--config", str(config)])


def test_prepare_from_local_file(tmp_path, tiny_text, capsys):
    assert main(["prepare", "--input", str(tiny_text), "--dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "data" / "tiny.txt").is_file()
    assert "vocabulary of" in out and "train" in out


def test_eval_prints_one_full_val_line(trained, tiny_text, capsys):
    assert main(["eval", "--checkpoint", str(trained), "--data", str(tiny_text)]) == 0
    assert re.fullmatch(r"full-val loss \d+\.\d{4} top5 \d+\.\d{2}%\n", capsys.readouterr().out)


def test_generate_streams_and_is_seeded(trained, capsys):
    args = ["generate", "--checkpoint", str(trained), "--prompt", "the ", "--length", "30", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 30 + 1
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main([*args[:-1], "4"]) == 0
    assert capsys.readouterr().out != first


def test_generate_num_samples_and_min_p(trained, capsys):
    from pygpt.commands.generate import SEPARATOR

    args = ["generate", "--checkpoint", str(trained), "--prompt", "the ", "--length", "30", "--seed", "1"]
    assert main([*args, "--num-samples", "3"]) == 0
    samples = capsys.readouterr().out[:-1].split(SEPARATOR)
    assert len(samples) == 3 and all(s.startswith("the ") and len(s) == len("the ") + 30 for s in samples)
    assert len(set(samples)) == 3  # every row of the batch draws its own numbers
    # min-p near 1 keeps only the most likely character: the same text as greedy decoding
    assert main([*args, "--min-p", "0.9999", "--temperature", "1"]) == 0
    nucleus = capsys.readouterr().out
    assert main([*args, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == nucleus
    with pytest.raises(SystemExit, match="--num-samples must be >= 1"):
        main([*args, "--num-samples", "0"])


def test_generate_rejects_unknown_characters(trained, capsys):
    with pytest.raises(SystemExit, match="character 'Z'.*not in the vocabulary"):
        main(["generate", "--checkpoint", str(trained), "--prompt", "the Z"])
    assert capsys.readouterr().out == ""  # nothing echoed before the error


def test_bench_on_a_classic_model(tmp_path, tiny_text, capsys):
    """The classic models have no KV cache: bench times their recompute loop alone (it crashed on num_params)."""
    out = tmp_path / "bigram"
    assert main(["train", "--model", "bigram", "--data", str(tiny_text), "--out", str(out), "--max-iters", "2",
                 "--no-progress", "--set", "log_dir="]) == 0
    capsys.readouterr()
    assert main(["bench", "generate", "--checkpoint", str(out / "best"), "--tokens", "20"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines()[1:]]
    assert "parameter bigram (no KV cache: no-cache only)" in text and rows == ["no-cache"]
    with pytest.raises(SystemExit, match="--tokens must be >= 1"):
        main(["bench", "generate", "--tokens", "0"])


def test_generate_rejects_bad_length(trained):
    with pytest.raises(SystemExit, match="--length must be >= 1, got 0"):
        main(["generate", "--checkpoint", str(trained), "--length", "0"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(["generate", "--checkpoint", str(tmp_path / "missing")])


def test_unknown_setting_is_named(tiny_text):
    with pytest.raises(SystemExit, match="n_layers: unknown setting"):
        main(["train", "--data", str(tiny_text), "--set", "n_layers=2"])


def test_console_script_and_info():
    exe = shutil.which("pygpt")
    assert exe, "the pygpt console script is not installed"
    out = subprocess.run([exe, "info"], capture_output=True, text=True, check=True).stdout
    assert "pygpt._C   loaded" in out and "backend    cpu: cpp" in out


def test_generate_into_a_closed_pipe_stops_quietly():
    """`pygpt generate | head -c 20`: the reader leaves early; no traceback, the shell's SIGPIPE status."""
    exe = shutil.which("pygpt")
    proc = subprocess.Popen([exe, "generate", "--length", "100000", "--seed", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert len(proc.stdout.read(20)) == 20
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


def test_bundled_model_generates(capsys):
    assert main(["generate", "--length", "40", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out) == 41


@pytest.mark.parametrize("args, message", [
    (["--set", "eval_interval=0"], "eval_interval must be >= 1, got 0"),  # was a ZeroDivisionError
    (["--set", "eval_iters=0"], "eval_iters must be >= 1, got 0"),
    (["--set", "batch_size=0"], "batch_size must be >= 1, got 0"),  # trained on empty batches
    (["--set", "lr=-1"], "lr must be >= 0, got -1.0"),  # torch tracebacks
    (["--set", "threads=-1"], "threads must be >= 0, got -1"),
    (["--set", "beta2=1"], "beta2 must be in \\[0, 1\\), got 1.0"),
    (["--set", "min_lr=nan"], "min_lr: expected a finite number, got 'nan'"),
    (["--max-iters", "-1"], "--max-iters must be >= 0, got -1"),  # silently accepted
    (["--time-limit", "-5"], "--time-limit must be >= 0, got -5.0"),
])
def test_out_of_range_train_settings_are_clear_errors(tmp_path, tiny_text, args, message):
    with pytest.raises(SystemExit, match=f"^pygpt train: .*{message}$"):
        main(["train", "--data", str(tiny_text), "--out", str(tmp_path / "run"), *TINY_RUN, *args])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_config_validates_itself():
    from pygpt.train import TrainConfig

    for bad, message in ((dict(grad_clip=-1.0), "grad_clip must be >= 0"), (dict(patience=-1), "patience must be"),
                         (dict(warmup_iters=-1), "warmup_iters"), (dict(weight_decay=-0.1), "weight_decay"),
                         (dict(beta1=-0.1), "beta1 must be in"), (dict(time_limit=-1.0), "time_limit")):
        with pytest.raises(ValueError, match=f"TrainConfig: {message}"):
            TrainConfig(**bad)
    TrainConfig(max_iters=0, threads=0, time_limit=0.0, grad_clip=0.0, patience=0, warmup_iters=0, min_lr=0.0,
                weight_decay=0.0, beta1=0.0)  # every 0 that means "off" stays legal


def test_settings_are_parsed_by_their_declared_type(tmp_path, tiny_text):
    """--set and JSON values follow the field's type, not the type of the value it holds now, and a wrong one
    is named with what was expected."""
    import json

    from pygpt.train import load_config

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"time_limit": 600, "lr": 1, "amp": "false", "compile": "no",
                                            "full_val": 0}, "model": {"n_layer": 2}}))
    cfg = load_config(str(config), ["time_limit=5.0", "lr=3e-4", "progress=off"])  # were int('5.0'): errors
    assert cfg.train.time_limit == 5.0 and cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.amp is False and cfg.train.compile is False and cfg.train.full_val is False  # was 'false'
    assert cfg.train.progress is False and cfg.model.n_layer == 2
    run = ["--data", str(tiny_text), "--out", str(tmp_path / "run"), *TINY_RUN]  # (tiny, were one accepted)
    with pytest.raises(SystemExit, match="^pygpt train: --set n_layer: expected an integer, got 'abc'$"):
        main(["train", *run, "--set", "n_layer=abc"])  # was "invalid literal for int() with base 10: 'abc'"
    with pytest.raises(SystemExit, match="^pygpt train: --set amp: expected a boolean .*got 'maybe'$"):
        main(["train", *run, "--set", "amp=maybe"])
    config.write_text(json.dumps([1, 2]))  # was an AttributeError
    with pytest.raises(SystemExit, match="^pygpt train: --config .*c.json: expected a JSON object .* got list$"):
        main(["train", *run, "--config", str(config)])
    for data, message in (({"model": {"n_layer": "1"}}, "model.n_layer: expected an integer, got '1'"),
                          ({"train": {"lr": "1e-3"}}, "train.lr: expected a finite number, got '1e-3'"),
                          ({"train": {"amp": "sometimes"}}, "train.amp: expected a boolean"),
                          ({"train": {"max_iters": True}}, "train.max_iters: expected an integer, got True"),
                          ({"train": {"max_iters": 10.5}}, "train.max_iters: expected an integer, got 10.5"),
                          ({"train": {"data": 3}}, "train.data: expected a string, got 3"),
                          ({"train": [1]}, "train: expected an object of settings")):
        config.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=f"^--config .*c.json: {message}"):
            load_config(str(config))


def test_shipped_and_checkpoint_configs_still_load():
    from pathlib import Path

    import pygpt
    from pygpt.train import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    bundled = Path(pygpt.__file__).parent / "checkpoints" / "lite" / "config.json"
    assert configs and bundled.is_file()
    for path in [*configs, bundled]:
        cfg = load_config(str(path), ["n_layer=1", "lr=1e-3", "amp=false"])
        assert cfg.model.n_layer == 1 and cfg.train.lr == 1e-3 and cfg.train.amp is False


def _unusable_devices() -> list[str]:
    import torch

    return ["foo", "cuda:x", "mps"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", _unusable_devices())
@pytest.mark.parametrize("command", ["train", "eval", "generate", "bench"])
def test_unusable_device_is_one_clear_line(command, device, tmp_path, tiny_text):
    """Every command turns resolve_device's error into one `pygpt CMD: ...` line, not a traceback."""
    args = {"train": ["train", "--data", str(tiny_text), "--out", str(tmp_path / "run"), *TINY_RUN],
            "eval": ["eval"], "generate": ["generate", "--length", "5"], "bench": ["bench", "generate"]}[command]
    with pytest.raises(SystemExit) as raised:
        main([*args, "--device", device])
    message = str(raised.value)
    assert message.startswith(f"pygpt {'bench' if command == 'bench' else command}: ") and device in message
    assert "\n" not in message


def test_resume_without_a_run_says_so(tmp_path, tiny_text):
    """--resume with nothing in out_dir: a train message (load_checkpoint's hint is for generate/eval)."""
    with pytest.raises(SystemExit) as raised:
        main(["train", "--data", str(tiny_text), "--out", str(tmp_path / "none"), *TINY_RUN, "--resume"])
    message = str(raised.value)
    assert re.fullmatch(r"pygpt train --resume: no run to resume in \S*none \(no \S*none/last\).*", message)
    assert "omit --checkpoint" not in message


def test_resume_finishes_a_save_a_crash_interrupted(tmp_path, tiny_text):
    """A crash between a save's renames leaves out/last missing and its complete successor beside it: --resume
    finds it (it is not "no run to resume")."""
    out = tmp_path / "run"
    main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN])
    (out / "last").rename(out / ".last.new-12345")
    assert main(["train", "--data", str(tiny_text), "--out", str(out), *TINY_RUN, "--resume"]) == 0
    assert (out / "last").is_dir() and not (out / ".last.new-12345").exists()


def test_non_utf8_text_is_named_and_not_copied(tmp_path):
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x82\x00\xffnot text")
    data = tmp_path / "data"
    with pytest.raises(SystemExit, match="^pygpt prepare: .*bin.txt: not UTF-8 text"):
        main(["prepare", "--input", str(binary), "--dir", str(data)])
    assert not (data / "bin.txt").exists()  # was copied before the error
    with pytest.raises(SystemExit, match="^pygpt train: .*bin.txt: not UTF-8 text"):
        main(["train", "--data", str(binary), "--out", str(tmp_path / "run"), *TINY_RUN])


def test_prepare_keeps_a_different_file_unless_forced(tmp_path, tiny_text, capsys):
    data = tmp_path / "data"
    data.mkdir()
    mine = data / "tiny.txt"
    mine.write_text("my own text, not to be lost\n" * 20)
    with pytest.raises(SystemExit, match="tiny.txt already exists and differs .*--force"):
        main(["prepare", "--input", str(tiny_text), "--dir", str(data)])
    assert mine.read_text() == "my own text, not to be lost\n" * 20  # was silently overwritten
    assert main(["prepare", "--input", str(tiny_text), "--dir", str(data), "--force"]) == 0
    assert mine.read_bytes() == tiny_text.read_bytes()
    capsys.readouterr()
    assert main(["prepare", "--input", str(tiny_text), "--dir", str(data)]) == 0  # the same content: fine
    assert "already there" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == ["tiny.txt"]  # no temporary file left behind


def test_eval_defaults_to_the_checkpoint_training_text(trained, tiny_text, capsys):
    """Without --data, eval scores the text the checkpoint was trained on (train.data in its config), where it
    is still there, and says so; else the default text as before, with a note."""
    assert main(["eval", "--checkpoint", str(trained), "--data", str(tiny_text)]) == 0
    explicit = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(trained)]) == 0
    out = capsys.readouterr().out
    assert out == f"scoring {tiny_text} (the checkpoint's training text; --data FILE scores another)\n" + explicit
    tiny_text.rename(tiny_text.with_name("moved.txt"))
    with pytest.raises(SystemExit):  # (Tiny Shakespeare has characters this model's vocabulary lacks)
        main(["eval", "--checkpoint", str(trained)])
    assert f"trained on {tiny_text}, not found here" in capsys.readouterr().err
