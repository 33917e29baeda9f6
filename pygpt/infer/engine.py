"""The generation engine: prefill the prompt into a KV cache, then a decode loop of one token per step (the fused
decode attention + append in every layer, then the sampling op), streaming tokens as they come.

With RoPE the cache is a ring buffer that keeps working once full: the oldest position is overwritten and
generation goes on with a sliding window of block_size positions, for as long as asked: when positions reach
REBASE_AT the cache's are shifted back below 2 x block_size and its keys rotated to match (KVCache.rebase), since
positions enter RoPE's angles in float32, whose precision runs out in the millions. With
learned (or sinusoidal) absolute positions it cannot slide; past the window the engine recomputes the cropped
context each step, as nanoGPT does, and says so once.

A decode step runs the GPT on fused ops (decoder.py: five ops a block instead of about twelve). On CUDA the step
(forward, then sampling, whose RNG state lives on the device) is captured once in a CUDA graph and replayed: one
replay per token, nothing read back to the host. The model runs under bf16 autocast from a twin holding bf16
Linear weights (precast.py), so no weight is cast per step.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

import pygpt.ops as ops
from pygpt.ops.attention import gpu_kernels_take
from pygpt.data import CharTokenizer

from .cache import KVCache
from .decoder import FusedDecoder
from .precast import PrecastModel

CHECK_EVERY = 64  # steps between the CUDA engine's reads of its error flag (one host sync each)
KEPT_STATES = 4  # decode states (KV cache, graph) an engine keeps between calls: one per batch size, newest kept
# A RoPE cache's positions are shifted back (KVCache.rebase) when they reach this (or 4 x block_size): at 2^14
# float32 angles move the lite model's logits by up to 0.004, at 10^6 by 0.13 (benchmarks/rope_position_drift.py).
REBASE_AT = 1 << 14


def _raise_for_error(code: int) -> None:
    """Raise for an error id (< 0) of the sampling op."""
    if code < 0:
        ops.check_sample_errors()  # the op's own pending CUDA checks first: they name the row, and none stay stale
        raise ValueError(f"generate: sampling failed: {ops.sampling.describe_error(code)} (from the model: a "
                         "diverged or corrupt checkpoint?)")


def _host_ids(ids: torch.Tensor) -> list[int]:
    """ids (B,) as Python ints, for the loops that read them anyway; an error id raises instead."""
    values = ids.tolist()
    _raise_for_error(min(values))
    return values


class _DecodeState:
    """What a decode loop's steps read and write, for one batch size: the KV cache, the sampling settings (B,)
    and RNG state, the smallest id sampled (CUDA: the error check), and the step over them (captured in a CUDA
    graph on its first use). The engine keeps it between calls: a graph reads these very tensors, so the next
    call of the same batch size refills them in place and replays the graph instead of capturing another."""

    def __init__(self, cache: KVCache | None, settings: tuple[torch.Tensor, ...], rng_state: torch.Tensor,
                 smallest: torch.Tensor | None):
        self.cache, self.settings, self.rng_state, self.smallest = cache, settings, rng_state, smallest
        self.step: Callable[[torch.Tensor], torch.Tensor] | None = None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        ids = ops.sample(logits, *self.settings, rng_state=self.rng_state)
        if self.smallest is not None:
            torch.minimum(self.smallest, ids.amin(), out=self.smallest)
        return ids

    def refill(self, settings: tuple[torch.Tensor, ...], rng_state: torch.Tensor) -> None:
        """Start a new generation: an empty cache, these settings and RNG state (copied into the same tensors)."""
        if self.cache is not None:
            self.cache.reset()  # (the rows left in the ring buffers lie outside every window now)
        for mine, new in zip(self.settings, settings):
            mine.copy_(new)
        self.rng_state.copy_(rng_state)
        if self.smallest is not None:
            self.smallest.zero_()


class Engine:
    """Generate from ``model`` (a pygpt GPT). ``use_cache=False`` recomputes the whole context every step;
    ``cuda_graph`` captures the decode step on CUDA (ignored on CPU, and with the reference backend, whose
    checks read values on the host). ``amp``: run under bf16 autocast with a bf16 KV cache (default: on CUDA;
    on CPU it is for testing what a CUDA run does). ``compile``: torch.compile the decode step (forward and
    sampling, fusing each residual add with the next norm and its cast): the first step in a process compiles
    (tens of seconds, then cached on disk by Inductor; a new batch size compiles again).
    ``fused``: decode steps on pygpt.ops.fused_linear (decoder.py); False runs model.forward on the cache.

    The KV cache and the decode step (its CUDA graph, its compiled code) of the last few batch sizes are kept
    between calls and reused; generations running at the same time (interleaved iterators) each get their own."""

    def __init__(self, model: nn.Module, tokenizer: CharTokenizer | None = None, use_cache: bool = True,
                 cuda_graph: bool = True, amp: bool | None = None, compile: bool = False, fused: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # Only the GPT has a KV cache; the classic models (bigrams, MLP) recompute their short context each step.
        self.use_cache = use_cache and getattr(model, "model_type", None) == "gpt"
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.block_size = model.config.block_size
        self.sliding = getattr(model.config, "pos", None) == "rope"
        self._warned_recompute = False
        self.amp = self.device.type == "cuda" if amp is None else amp
        self.compile = compile
        # Under autocast the model runs from a twin whose Linear weights are cast once per generation instead
        # of once per step (see precast.py).
        self._precast = PrecastModel(model, torch.bfloat16) if self.amp else None
        self._runner = self._precast.model if self._precast is not None else model
        self._decoder = FusedDecoder(self._runner) if fused and self.use_cache else None
        self._states: dict[int, _DecodeState] = {}  # idle decode states by batch size, oldest first

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _cache_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp else next(self.model.parameters()).dtype

    def _forward_last(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the last position's logits (B, V)."""
        with self._autocast():  # (the classic models take no cache argument)
            logits, _ = self._runner(idx) if kv_cache is None else self._runner(idx, kv_cache=kv_cache)
        return logits[:, -1]

    # -- ids in, ids out -----------------------------------------------------------------------------------------
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int | None = None, *, min_p: float = 0.0) -> Iterator[torch.Tensor]:
        """An iterator of max_new_tokens batches of next ids (B,) after the prompts (lists of ids, lengths may
        differ). Sampling as pygpt.ops.sample: temperature (0: greedy), top_k (0: off), top_p (1: off), min_p
        (0: off). The arguments are checked here, before anything is generated (not at the first next())."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: every prompt needs at least one token")
        vocab_size = self.model.config.vocab_size
        bad = next((i for p in prompts for i in p if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise ValueError(f"generate: token id {bad} is outside the vocabulary [0, {vocab_size})")
        if max_new_tokens <= 0:
            raise ValueError(f"generate: max_new_tokens must be > 0, got {max_new_tokens}")
        # The settings as the op's (B,) tensors, made once: a captured graph reads these very tensors.
        settings = ops.sampling_rows(len(prompts), temperature, top_k, top_p, min_p, self.device)
        return self._generate_ids(prompts, max_new_tokens, settings, seed)

    @torch.inference_mode()
    def _generate_ids(self, prompts: list[list[int]], max_new_tokens: int, settings: tuple[torch.Tensor, ...],
                      seed: int | None) -> Iterator[torch.Tensor]:
        if self._precast is not None:
            self._precast.refresh()
        # The sampler's state lives on the device and the op advances it there, so a CUDA graph can hold the
        # sampling too: a graphed step is one replay, with nothing read back.
        rng_state = ops.make_rng_state(seed if seed is not None else int(torch.randint(2**62, (1,))), self.device)
        state = self._take_state(len(prompts), settings, rng_state)
        steps = self._cached_loop(prompts, max_new_tokens, state) if self.use_cache else \
            self._recompute_loop(prompts, max_new_tokens, state.pick)
        # On CUDA the op reports NaN logits as negative ids, checked later on the host (pygpt.ops.sampling);
        # the state keeps the smallest id on the device, the step clamps what it feeds back (an id of -1 would
        # fault in the embedding), and it is read every CHECK_EVERY steps and at the end.
        smallest = state.smallest
        reusable = False
        try:
            for i, ids in enumerate(steps):
                if smallest is not None and (i + 1) % CHECK_EVERY == 0:
                    _raise_for_error(int(smallest))
                yield ids
            if smallest is not None:
                _raise_for_error(int(smallest))
            reusable = True
        except GeneratorExit:  # the caller stopped early, between steps: the state is whole
            reusable = True
            raise
        finally:
            if reusable and self.use_cache:
                self._give_back(state)

    def _take_state(self, B: int, settings: tuple[torch.Tensor, ...], rng_state: torch.Tensor) -> _DecodeState:
        """The idle state of batch size B, refilled, or a new one. Taken out of the engine while in use, so a
        generation started meanwhile (an interleaved iterator) makes its own."""
        state = self._states.pop(B, None)
        if state is not None:
            state.refill(settings, rng_state)
            return state
        cache = KVCache.for_model(self.model, B, dtype=self._cache_dtype()) if self.use_cache else None
        smallest = torch.zeros((), dtype=torch.int64, device=self.device) if self.device.type == "cuda" else None
        return _DecodeState(cache, settings, rng_state, smallest)

    def _give_back(self, state: _DecodeState) -> None:
        self._states.pop(state.cache.batch_size, None)
        self._states[state.cache.batch_size] = state  # the newest last
        while len(self._states) > KEPT_STATES:
            del self._states[next(iter(self._states))]

    def _cached_loop(self, prompts: list[list[int]], max_new_tokens: int, state: _DecodeState
                     ) -> Iterator[torch.Tensor]:
        cache, pick = state.cache, state.pick
        last = torch.cat([self._prefill(cache.rows(b), ids) for b, ids in enumerate(prompts)])  # (B, V)
        next_ids = pick(last)
        # Only a model that cannot slide needs the ids on the host (to recompute its cropped context); a RoPE
        # model's loop never reads a device value back, so on CUDA the next step is queued while this one runs.
        history = None if self.sliding else [list(p) for p in prompts]
        if state.step is None:
            state.step = self._make_step(cache, pick)
        step = state.step
        # A RoPE cache is rebased (cache.rebase) before any position reaches rebase_at, so the positions entering
        # the float32 angles stay small however long the generation; counted here, nothing is read back.
        rebase_at = max(REBASE_AT, 4 * cache.capacity)
        newest = max(min(len(p), self.block_size) for p in prompts)  # > every position in the cache
        for i in range(max_new_tokens):
            yield next_ids
            if i == max_new_tokens - 1:
                break
            if self.sliding:
                if newest >= rebase_at:
                    cache.rebase(self.model.config.rope_base)
                    newest = 2 * cache.capacity  # rebased positions are below 2C
                newest += 1
            if history is not None:
                for b, token in enumerate(_host_ids(next_ids)):
                    history[b].append(token)
                if int(cache.lengths.max()) >= self.block_size:
                    next_ids = pick(self._recompute_last(history))  # learned positions can't slide
                    continue
            next_ids = step(next_ids)

    def _prefill(self, cache_row: KVCache, ids: list[int]) -> torch.Tensor:
        """Run the (cropped) prompt through the model into one sequence's cache; return its last logits (1, V)."""
        idx = torch.tensor([ids[-self.block_size:]], dtype=torch.long, device=self.device)
        return self._forward_last(idx, cache_row)

    def _make_step(self, cache: KVCache, pick: Callable[[torch.Tensor], torch.Tensor]
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
        """One decode step, ids (B,) -> the next ids (B,): the model on the cache, then sampling. Captured in a
        CUDA graph on CUDA (forward and sampling both: a step is one replay)."""
        clamp = self.device.type == "cuda"  # see generate_ids: an error id must not reach the embedding

        def step(ids: torch.Tensor) -> torch.Tensor:
            ids = ids.clamp(min=0) if clamp else ids
            if self._decoder is not None:
                return pick(self._decoder(ids[:, None], cache))
            return pick(self._forward_last(ids[:, None], cache))

        if self.compile:
            step = torch.compile(step, fullgraph=True, dynamic=False)
        if not self.cuda_graph or not self._decode_has_gpu_kernel():
            return step  # (the reference decode reads the cache's counters on the host: not capturable)
        static_ids = torch.zeros(cache.batch_size, dtype=torch.long, device=self.device)
        graph, static_out = None, None

        def graphed(ids: torch.Tensor) -> torch.Tensor:
            nonlocal graph, static_out
            static_ids.copy_(ids)
            if graph is None:
                # Capture after a first eager step has warmed up every kernel (Triton's compile cache, the
                # sampler's cached parameter tensors). Capturing records kernels without running them, so the
                # cache's counters and the sampler's state are left as the eager step advanced them.
                out = step(static_ids)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = step(static_ids)
                return out
            graph.replay()
            return static_out.clone()  # the next replay overwrites static_out; the caller may keep these ids

        return graphed

    def _decode_has_gpu_kernel(self) -> bool:
        """Whether the decode step runs compiled kernels on this device: not when the reference is forced, nor
        for float64 or an odd head_dim, which rope_decode_attention sends to its reference on a GPU."""
        return (ops.backend_for(self.device) != "reference"
                and gpu_kernels_take(self._cache_dtype(), self.model.config.head_dim))

    def _recompute_last(self, history: list[list[int]]) -> torch.Tensor:
        if not self._warned_recompute:
            warnings.warn(f"this model uses {self.model.config.pos} positions, so its KV cache cannot slide past "
                          f"block_size={self.block_size}; recomputing the last {self.block_size} tokens each step",
                          RuntimeWarning, stacklevel=3)
            self._warned_recompute = True
        return self._context_logits(history)

    def _context_logits(self, history: list[list[int]]) -> torch.Tensor:
        """The last logits (B, V) of every sequence's cropped context, recomputed without a cache."""
        return torch.cat([self._forward_last(torch.tensor([h[-self.block_size:]], device=self.device))
                          for h in history])

    def _recompute_loop(self, prompts: list[list[int]], max_new_tokens: int,
                        pick: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
        """No cache: run the whole cropped context every step (nanoGPT's generate)."""
        history = [list(p) for p in prompts]
        for _ in range(max_new_tokens):
            next_ids = pick(self._context_logits(history))
            for b, token in enumerate(_host_ids(next_ids)):
                history[b].append(token)
            yield next_ids

    # -- text in, text out ---------------------------------------------------------------------------------------
    def stream(self, prompt: str = "", max_new_tokens: int = 500, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: str | None = None, *,
               min_p: float = 0.0) -> Iterator[str]:
        """Stream the characters generated after ``prompt`` (one sequence); stops early at ``stop``."""
        return (texts[0] for texts in self.stream_batch([prompt], max_new_tokens, temperature, top_k, top_p, seed,
                                                        stop, min_p=min_p))

    def stream_batch(self, prompts: list[str], max_new_tokens: int = 500, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int | None = None, stop: str | None = None, *,
                     min_p: float = 0.0) -> Iterator[list[str]]:
        """An iterator of, per step, the new character of every sequence ('' once a sequence has generated
        ``stop``, which is matched against the generated text only). Arguments are checked here."""
        tok = self.tokenizer
        if tok is None:
            raise ValueError("Engine: a tokenizer is needed to generate text")
        if stop is not None and not stop:
            raise ValueError("generate: stop must be a non-empty string (or None)")
        start = tok.encode("\n") if "\n" in tok.stoi else [0]
        encoded = [tok.encode(p) if p else start for p in prompts]
        steps = self.generate_ids(encoded, max_new_tokens, temperature, top_k, top_p, seed, min_p=min_p)
        return self._texts(steps, len(prompts), stop)

    def _texts(self, steps: Iterator[torch.Tensor], B: int, stop: str | None) -> Iterator[list[str]]:
        tails = ["" for _ in range(B)]  # the last len(stop) characters of each sequence, all stop needs
        done = [False] * B
        for next_ids in steps:
            pieces = []
            for b, i in enumerate(_host_ids(next_ids)):
                piece = "" if done[b] else self.tokenizer.decode([i])
                if stop is not None and piece:
                    tails[b] = (tails[b] + piece)[-len(stop):]
                    done[b] = tails[b] == stop
                pieces.append(piece)
            yield pieces
            if all(done):
                return

    def generate(self, prompts: list[str], max_new_tokens: int = 500, **kwargs) -> list[str]:
        """The whole continuation of each prompt."""
        out: list[list[str]] = [[] for _ in prompts]
        for pieces in self.stream_batch(prompts, max_new_tokens, **kwargs):
            for parts, piece in zip(out, pieces):
                parts.append(piece)
        return ["".join(parts) for parts in out]


def write_stream(pieces: Iterator[str], file=sys.stdout) -> None:
    for piece in pieces:
        file.write(piece)
        file.flush()
