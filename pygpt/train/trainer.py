"""The Trainer: one loop for every model (GPT, bigrams, MLP).

Owns optimizer groups, warmup + cosine LR, gradient clipping, bf16 autocast on CUDA, optional torch.compile,
periodic val estimates, the best-val checkpoint (`out_dir/best`) and a resumable one (`out_dir/last`), early
stopping, exact resume, callbacks, tensorboard logs and a progress bar. Under `torchrun` it trains with
DistributedDataParallel (nccl on CUDA, gloo on CPU); rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from pygpt.data import BatchSampler, CharTokenizer
from pygpt.models import lm_loss

from .checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from .config import TrainConfig
from .evaluate import EvalResult, full_val
from .optim import configure_optimizer, cosine_lr

EVENTS = ("on_step_end", "on_eval", "on_checkpoint", "on_train_end")


def amp_autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` (TrainConfig.amp), else nothing: what training and its scores run under."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp else contextlib.nullcontext()


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' or None (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'; a ValueError naming --device for
    anything else or a device this machine does not have (the commands print it as one line)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N (pygpt runs on CPUs and CUDA GPUs)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class TrainResult:
    steps: int
    best_val: float                   # best random-batch val estimate
    best_step: int
    train_seconds: float
    seconds_to_best: float
    full_val: EvalResult | None = None
    stopped_because: str = "max_iters"
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train_ids`` with val estimates on ``val_ids``; see TrainConfig for the settings.

    Callbacks: ``trainer.add_callback(event, fn)`` with event in EVENTS; ``fn(trainer, **info)``. A callback
    may set ``trainer.should_stop = True``.

    Datasets that are not one stream of ids (a word list, a task) inject their own samplers, objects with
    ``get_batch() -> (x, y)`` and ``state_dict()`` / ``load_state_dict()``: ``train_sampler`` replaces the
    random windows of train_ids, ``val_sampler`` those of val_ids (rewound before every estimate, so each eval
    sees the same batches), and ``evaluator(model) -> EvalResult`` replaces full_val for the final score.
    """

    def __init__(self, model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, tokenizer: CharTokenizer,
                 cfg: TrainConfig, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss,
                 run_config: dict | None = None, train_sampler=None, val_sampler=None,
                 evaluator: Callable[[nn.Module], EvalResult] | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.loss_fn = loss_fn
        self.run_config = run_config or {"train": cfg.to_dict()}
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.should_stop = False

        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank, self.world_size = 0, 1
        if self.distributed:
            self._init_distributed()
        else:
            self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + self.rank)  # (each rank its own dropout masks; DDP syncs the weights)

        self.model = model.to(self.device)
        self.block_size = model.config.block_size
        if train_sampler is None:
            train_sampler = BatchSampler(train_ids, self.block_size, cfg.batch_size, cfg.seed + self.rank, self.device)
        self.train_sampler = train_sampler
        self.val_ids = val_ids
        self.val_sampler = val_sampler
        self._val_sampler_start = val_sampler.state_dict() if val_sampler is not None else None
        self.evaluator = evaluator
        self.optimizer = configure_optimizer(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                             self.device.type)
        self.train_model: nn.Module = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.train_model,
                                   device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0
        self.best_val = float("inf")
        self.best_step = -1
        self.evals_since_best = 0
        self.seconds_to_best = 0.0
        self.last_eval_step = -1
        self._start_time: float | None = None
        self._seconds_before = 0.0  # training time of the run this one resumed (its clock goes on from there)
        self._warmup_seconds: float | None = None  # the clock at the end of warmup (the time schedule's start)
        self._interrupted = False
        self.history: list[dict] = []

    # -- setup -------------------------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and self.cfg.device != "cpu"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def add_callback(self, event: str, fn: Callable) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}; events: {', '.join(EVENTS)}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str, **info) -> None:
        for fn in self.callbacks[event]:
            fn(self, **info)

    # -- pieces of the loop ------------------------------------------------------------------------------------
    def autocast(self):
        return amp_autocast(self.device, self.cfg.amp)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.schedule_by_time and cfg.time_limit and step >= cfg.warmup_iters:
            # Cosine over the time budget instead of the steps: the schedule ends when the time does, on any machine
            # - or when the steps do, on a machine fast enough to reach max_iters first. Both count from the end of
            # warmup, as the step schedule does (so the decay starts at lr, whatever warmup took).
            if self._warmup_seconds is None:
                self._warmup_seconds = self._elapsed()
            decay = cfg.lr_decay_iters or cfg.max_iters
            spent = self._elapsed() - self._warmup_seconds
            progress = max(spent / max(1e-9, cfg.time_limit - self._warmup_seconds),
                           (step - cfg.warmup_iters) / max(1, decay - cfg.warmup_iters))
            return cosine_lr(1 + int(1e6 * min(1.0, progress)), cfg.lr, cfg.min_lr, 1, 1 + int(1e6))
        decay = cfg.lr_decay_iters or cfg.max_iters
        return cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, decay)

    def _elapsed(self) -> float:
        """Seconds of training so far, the resumed run's included."""
        if self._start_time is None:
            return self._seconds_before
        return time.perf_counter() - self._start_time

    @torch.no_grad()
    def estimate_val_loss(self) -> float:
        """Mean loss over eval_iters random val batches, drawn with a fixed seed (the same batches every eval)."""
        if self.val_sampler is not None:
            self.val_sampler.load_state_dict(self._val_sampler_start)
            sampler = self.val_sampler
        else:
            sampler = BatchSampler(self.val_ids, self.block_size, self.cfg.batch_size, seed=0, device=self.device)
        self.model.eval()
        losses = []
        for _ in range(self.cfg.eval_iters):
            x, y = sampler.get_batch()
            with self.autocast():
                logits, _ = self.model(x)
            losses.append(self.loss_fn(logits, y).item())
        self.model.train()
        return sum(losses) / len(losses)

    def trainer_state(self) -> dict:
        state = {
            "step": torch.tensor(self.step), "best_val": torch.tensor(self.best_val),
            "best_step": torch.tensor(self.best_step), "evals_since_best": torch.tensor(self.evals_since_best),
            "seconds_to_best": torch.tensor(self.seconds_to_best), "train_seconds": torch.tensor(self._elapsed()),
            "warmup_seconds": torch.tensor(-1.0 if self._warmup_seconds is None else self._warmup_seconds),
            "last_eval_step": torch.tensor(self.last_eval_step), "optimizer": self.optimizer.state_dict(),
            "sampler": self.train_sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)  # the dropout stream of this rank's device
        if self.distributed:
            # Every rank draws its own batches and dropout: keep each one's stream (a collective: all ranks call it).
            ranks: list = [None] * self.world_size
            mine = {key: state[key] for key in ("sampler", "torch_rng", "cuda_rng") if key in state}
            dist.all_gather_object(ranks, mine)
            state["ranks"] = ranks
        return state

    def _load_trainer_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.best_val, self.best_step = float(state["best_val"]), int(state["best_step"])
        self.evals_since_best = int(state["evals_since_best"])
        self.seconds_to_best = float(state["seconds_to_best"])
        # (checkpoints from before train_seconds was saved: their clock is known only up to the best eval)
        self._seconds_before = float(state.get("train_seconds", state["seconds_to_best"]))
        self.last_eval_step = int(state["last_eval_step"])
        warmup_seconds = float(state.get("warmup_seconds", -1.0))  # -1: not reached (or not kept)
        if warmup_seconds < 0 and self.step > self.cfg.warmup_iters:
            warmup_seconds = 0.0  # a checkpoint from before 2026-12-08: its time schedule counted from 0
        self._warmup_seconds = warmup_seconds if warmup_seconds >= 0 else None
        self.optimizer.load_state_dict(state["optimizer"])
        ranks = state.get("ranks", [state])  # each process's data stream (one: the state's own)
        if len(ranks) != self.world_size:
            raise ValueError(f"resume: the checkpoint was saved by {len(ranks)} process(es), this run has "
                             f"{self.world_size}: resume with as many")
        streams = ranks[self.rank]
        self.train_sampler.load_state_dict(streams["sampler"])
        torch.set_rng_state(streams["torch_rng"])
        cuda_rng = streams.get("cuda_rng")
        if isinstance(cuda_rng, (list, tuple)):  # (checkpoints before 2026-12-08 kept rank 0's list of all devices)
            cuda_rng = cuda_rng[self.device.index or 0] if len(cuda_rng) > (self.device.index or 0) else None
        if self.device.type == "cuda" and isinstance(cuda_rng, torch.Tensor):
            torch.cuda.set_rng_state(cuda_rng, self.device)

    def save(self, name: str, with_state: bool) -> Path | None:
        state = self.trainer_state() if with_state else None  # (on every rank: it gathers their data streams)
        if not self.is_main:
            return None
        metadata = {"step": self.step, "best_val_estimate": self.best_val, "best_step": self.best_step}
        path = save_checkpoint(Path(self.cfg.out_dir) / name, self.model, self.tokenizer,
                               train=self.run_config.get("train"), metadata=metadata,
                               trainer_state=state)
        self._fire("on_checkpoint", path=path, name=name)
        return path

    def resume(self, checkpoint_dir: str | os.PathLike) -> None:
        """Continue exactly where a run saved ``checkpoint_dir`` (normally out_dir/last)."""
        ckpt = load_checkpoint(checkpoint_dir, device=self.device)
        if ckpt.tokenizer != self.tokenizer:
            raise ValueError(f"resume: checkpoint {checkpoint_dir} was trained on a different vocabulary")
        mine, theirs = self.model.config.to_dict(), ckpt.config["model"]
        if mine != theirs:
            changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ValueError(f"resume: checkpoint {checkpoint_dir} holds another model ("
                             + ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in changed)
                             + "); resume with the settings it was trained with")
        self.model.load_state_dict(ckpt.model.state_dict())
        state = load_trainer_state(checkpoint_dir)
        try:
            self._load_trainer_state(state)
        except KeyError as err:
            raise ValueError(f"resume: checkpoint {checkpoint_dir}'s trainer state lacks {err}; it cannot be "
                             "resumed") from err

    def _agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank is true on all (one all-reduce): the ranks stop together, at the same step,
        whichever rank a signal or the time limit reached first."""
        if not self.distributed:
            return tuple(bool(f) for f in flags)
        reduced = torch.tensor([float(bool(f)) for f in flags], device=self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return tuple(bool(f) for f in reduced.tolist())

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until max_iters (or the time limit, early stopping, or ``stop_after`` more steps).

        Returns the result; the best-val model is in out_dir/best, the resumable state in out_dir/last.
        """
        cfg = self.cfg
        writer = self._tensorboard() if self.is_main and cfg.log_dir else None
        progress = None
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.max_iters, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        start_time = time.perf_counter() - self._seconds_before  # a resumed run's clock goes on
        self._start_time = start_time
        stop_step = cfg.max_iters if stop_after is None else min(cfg.max_iters, self.step + stop_after)
        self.train_model.train()
        self._interrupted = False
        with self._ctrl_c_stops_at_a_step():
            stopped_because = self._loop(writer, progress, start_time, stop_step)
        if stop_after is not None and self.step == stop_step and stop_step < cfg.max_iters:
            stopped_because = "stop_after"
        train_seconds = time.perf_counter() - start_time
        self._seconds_before, self._start_time = train_seconds, None  # (a later fit's clock goes on from here)
        if progress is not None:
            progress.close()
        self.save("last", with_state=True)
        result = TrainResult(self.step, self.best_val, self.best_step, train_seconds, self.seconds_to_best,
                             stopped_because=stopped_because, history=self.history)
        # (best_step < 0: no eval gave a finite loss, and out_dir/best is not this run's - there is nothing to score)
        if cfg.full_val and self.is_main and stopped_because not in ("stop_after", "interrupted") and \
                self.best_step >= 0:
            result.full_val = self.score_best()
            if writer is not None:
                writer.add_scalar("full_val/loss", result.full_val.loss, self.step)
                writer.add_scalar("full_val/top5", result.full_val.top5, self.step)
        if writer is not None:
            writer.close()
        self._fire("on_train_end", result=result)
        return result

    @contextlib.contextmanager
    def _ctrl_c_stops_at_a_step(self):
        """While fit runs (in the main thread): a first Ctrl-C (SIGINT) or SIGTERM stops the loop after the current
        step, which then saves out_dir/last as any stop does (an interrupt inside an optimizer step would leave
        weights that match no step); a second one interrupts at once. Under torchrun every rank gets the signal
        (torchrun passes it on) and the ranks agree on the step to stop at (_agree), then save together."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            if self.is_main:
                print(f"\n{signal.Signals(signum).name}: stopping after this step and saving out_dir/last "
                      "(again to quit now)", file=sys.stderr, flush=True)
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, writer, progress, start_time: float, stop_step: int) -> str:
        """The training loop proper; returns why it stopped."""
        cfg = self.cfg
        if self.out_of_patience():  # a resumed run that had stopped early
            return "early_stopping"
        stopped_because = "max_iters"
        while True:
            due = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters
            if due and self.step != self.last_eval_step:  # (a resumed run doesn't redo its last eval)
                stopped_because = self._evaluate(writer, start_time) or stopped_because
            if self.step >= stop_step:
                break
            interrupted, stop = self._agree(self._interrupted, self.should_stop or stopped_because != "max_iters" or (
                cfg.time_limit and time.perf_counter() - start_time > cfg.time_limit))
            if interrupted:
                return "interrupted"
            if stop:
                if stopped_because == "max_iters":
                    stopped_because = "callback" if self.should_stop else "time_limit"
                    if self.step != self.last_eval_step:  # score the final weights too
                        self._evaluate(writer, start_time)
                break
            loss = self._train_step()
            self.step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", best_val=f"{self.best_val:.4f}")
            if writer is not None and self.step % 10 == 0:
                writer.add_scalar("loss/train", loss, self.step)
                writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.step)  # (the step just taken)
            self._fire("on_step_end", step=self.step, loss=loss)
        return stopped_because

    def _train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        x, y = self.train_sampler.get_batch()
        with self.autocast():
            logits, _ = self.train_model(x)
            loss = self.loss_fn(logits, y)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def _evaluate(self, writer, start_time: float) -> str | None:
        """Val estimate, best checkpoint, early stopping; returns a reason to stop, if any."""
        val = self.estimate_val_loss()
        self.last_eval_step = self.step
        elapsed = time.perf_counter() - start_time
        self.history.append({"step": self.step, "val": val, "seconds": elapsed})
        if writer is not None:
            writer.add_scalar("loss/val", val, self.step)
        improved = val < self.best_val
        if improved:
            self.best_val, self.best_step, self.evals_since_best = val, self.step, 0
            self.seconds_to_best = elapsed
            self.save("best", with_state=False)
        else:
            self.evals_since_best += 1
        self._fire("on_eval", step=self.step, val_loss=val, improved=improved)
        self.save("last", with_state=True)  # resumable after a crash, at every eval
        if not math.isfinite(val):
            return "non_finite_val_loss"  # diverged (or no data): more steps cannot bring it back
        return "early_stopping" if self.out_of_patience() else None

    def out_of_patience(self) -> bool:
        """Whether early stopping ends the run after the eval just made (patience evals without a new best)."""
        return bool(self.cfg.patience and self.evals_since_best >= self.cfg.patience)

    def score_best(self) -> EvalResult:
        """Full-val score (EVAL.md) of the best checkpoint, also recorded in its config.json metadata."""
        best_dir = Path(self.cfg.out_dir) / "best"
        ckpt = load_checkpoint(best_dir, device=self.device)
        with self.autocast():
            if self.evaluator is not None:
                result = self.evaluator(ckpt.model)
            else:
                result = full_val(ckpt.model, self.val_ids, self.block_size)
        metadata = dict(ckpt.metadata, full_val_loss=result.loss, full_val_top5=result.top5,
                        seconds_to_best=self.seconds_to_best)
        save_checkpoint(best_dir, ckpt.model, ckpt.tokenizer, train=ckpt.config.get("train"), metadata=metadata)
        return result

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        run_name = Path(self.cfg.out_dir).name + time.strftime("-%Y%m%d-%H%M%S")
        return SummaryWriter(str(Path(self.cfg.log_dir) / run_name))
