"""The generation engine: prefill the prompt into a KV cache, then a decode loop of one token per step (the fused
decode attention + append in every layer, then the sampling op), streaming tokens as they come.

With RoPE the cache is a ring buffer that keeps working once full: the oldest position is overwritten and
generation goes on forever with a sliding window of block_size positions. With learned (or sinusoidal) absolute
positions it cannot slide; past the window the engine recomputes the cropped context each step, as nanoGPT does,
and says so once. On CUDA the decode step is captured once in a CUDA graph and replayed.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

import pygpt.ops as ops
from pygpt.data import CharTokenizer

from .cache import KVCache


class Engine:
    """Generate from ``model`` (a pygpt GPT). ``use_cache=False`` recomputes the whole context every step;
    ``cuda_graph`` captures the decode step on CUDA (ignored on CPU)."""

    def __init__(self, model: nn.Module, tokenizer: CharTokenizer | None = None, use_cache: bool = True,
                 cuda_graph: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # Only the GPT has a KV cache; the classic models (bigrams, MLP) recompute their short context each step.
        self.use_cache = use_cache and getattr(model, "model_type", None) == "gpt"
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.block_size = model.config.block_size
        self.sliding = getattr(model.config, "pos", None) == "rope"
        self._warned_recompute = False

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _cache_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device.type == "cuda" else next(self.model.parameters()).dtype

    # -- ids in, ids out -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int | None = None) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens batches of next ids (B,) after the prompts (lists of ids, lengths may differ)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: every prompt needs at least one token")
        if max_new_tokens <= 0:
            raise ValueError(f"generate: max_new_tokens must be > 0, got {max_new_tokens}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return ops.sample(logits.float(), temperature, top_k, top_p, generator=generator)

        if not self.use_cache:
            yield from self._recompute_loop(prompts, max_new_tokens, pick)
            return
        B = len(prompts)
        cache = KVCache.for_model(self.model, B, dtype=self._cache_dtype())
        with self._autocast():
            last = torch.stack([self._prefill(cache.rows(b), ids) for b, ids in enumerate(prompts)])  # (B, V)
        # Only a model that cannot slide needs the ids on the host (to recompute its cropped context); a RoPE
        # model's loop never reads a device value back, so on CUDA the next step is queued while this one runs.
        history = None if self.sliding else [list(p) for p in prompts]
        step = self._make_step(cache)
        for i in range(max_new_tokens):
            next_ids = pick(last)
            yield next_ids
            if i == max_new_tokens - 1:
                break
            if history is not None:
                for b in range(B):
                    history[b].append(int(next_ids[b]))
                if int(cache.lengths.max()) >= self.block_size:
                    last = self._recompute_last(history)  # learned positions can't slide
                    continue
            last = step(next_ids)

    def _prefill(self, cache_row: KVCache, ids: list[int]) -> torch.Tensor:
        """Run the (cropped) prompt through the model into one sequence's cache; return its last logits (V,)."""
        ids = ids[-self.block_size:]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, _ = self.model(idx, kv_cache=cache_row)
        return logits[0, -1]

    def _make_step(self, cache: KVCache) -> Callable[[torch.Tensor], torch.Tensor]:
        """One decode step: ids (B,) -> last logits (B, V). Captured in a CUDA graph on CUDA."""
        def step(ids: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                logits, _ = self.model(ids[:, None], kv_cache=cache)
            return logits[:, -1]

        if not self.cuda_graph:
            return step
        static_ids = torch.zeros(cache.batch_size, dtype=torch.long, device=self.device)
        graph, static_out = None, None

        def graphed(ids: torch.Tensor) -> torch.Tensor:
            nonlocal graph, static_out
            static_ids.copy_(ids)
            if graph is None:
                # Capture after the first eager step has warmed up every kernel (and Triton's compile cache).
                out = step(static_ids)
                graph = torch.cuda.CUDAGraph()
                saved = cache.lengths.clone(), cache.starts.clone()
                with torch.cuda.graph(graph):
                    static_out = step(static_ids)
                cache.lengths.copy_(saved[0])  # capture advanced them
                cache.starts.copy_(saved[1])
                return out
            graph.replay()
            return static_out

        return graphed

    def _recompute_last(self, history: list[list[int]]) -> torch.Tensor:
        if not self._warned_recompute:
            warnings.warn(f"this model uses {self.model.config.pos} positions, so its KV cache cannot slide past "
                          f"block_size={self.block_size}; recomputing the last {self.block_size} tokens each step",
                          RuntimeWarning, stacklevel=3)
            self._warned_recompute = True
        with self._autocast():
            return torch.stack([self.model(torch.tensor([h[-self.block_size:]], device=self.device))[0][0, -1]
                                for h in history])

    def _recompute_loop(self, prompts: list[list[int]], max_new_tokens: int, pick) -> Iterator[torch.Tensor]:
        """No cache: run the whole cropped context every step (nanoGPT's generate)."""
        history = [list(p) for p in prompts]
        for _ in range(max_new_tokens):
            with self._autocast():
                last = torch.stack([self.model(torch.tensor([h[-self.block_size:]], device=self.device))[0][0, -1]
                                    for h in history])
            next_ids = pick(last)
            for b in range(len(history)):
                history[b].append(int(next_ids[b]))
            yield next_ids

    # -- text in, text out ---------------------------------------------------------------------------------------
    def stream(self, prompt: str = "", max_new_tokens: int = 500, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: str | None = None) -> Iterator[str]:
        """Stream the characters generated after ``prompt`` (one sequence); stops early at ``stop``."""
        for texts in self.stream_batch([prompt], max_new_tokens, temperature, top_k, top_p, seed, stop):
            yield texts[0]

    def stream_batch(self, prompts: list[str], max_new_tokens: int = 500, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int | None = None, stop: str | None = None) -> Iterator[list[str]]:
        """Yield, per step, the new character of every sequence ('' once a sequence has hit ``stop``)."""
        tok = self.tokenizer
        if tok is None:
            raise ValueError("Engine: a tokenizer is needed to generate text")
        start = tok.encode("\n") if "\n" in tok.stoi else [0]
        encoded = [tok.encode(p) if p else start for p in prompts]
        produced = ["" for _ in prompts]
        done = [False] * len(prompts)
        for next_ids in self.generate_ids(encoded, max_new_tokens, temperature, top_k, top_p, seed):
            pieces = []
            for b, i in enumerate(next_ids.tolist()):
                piece = "" if done[b] else tok.decode([i])
                produced[b] += piece
                done[b] = done[b] or (stop is not None and produced[b].endswith(stop))
                pieces.append(piece)
            yield pieces
            if all(done):
                return

    def generate(self, prompts: list[str], max_new_tokens: int = 500, **kwargs) -> list[str]:
        """The whole continuation of each prompt."""
        out = ["" for _ in prompts]
        for pieces in self.stream_batch(prompts, max_new_tokens, **kwargs):
            out = [o + p for o, p in zip(out, pieces)]
        return out


def write_stream(pieces: Iterator[str], file=sys.stdout) -> None:
    for piece in pieces:
        file.write(piece)
        file.flush()
