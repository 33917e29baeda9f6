"""sample: logits -> next token ids with temperature, top-k, top-p (nucleus), min-p, or greedy.

Semantics (every backend), per row of logits (B, V):
  * temperature 0 or top_k 1: greedy, the argmax (ties to the lowest id);
  * otherwise p ~ softmax(logits / temperature), truncated in this order: top-k (top_k 0 or >= V: off; tokens
    tied with the k-th value stay), top-p (the shortest run of most likely tokens whose mass reaches top_p, and
    the tokens tied with its last; 1: off), min-p (drop p < min_p * max p; 0: off), renormalised and sampled;
  * -inf logits are never sampled; a row holding +inf samples uniformly among its +inf entries; NaN logits and
    rows of all -inf are errors.

Backends: the Torch reference here (topk/sort, softmax, cumsum, multinomial), the C++ CPU kernel
(csrc/cpu/sample.cpp), the Triton kernel (kernels/sample.py, the default on CUDA) and the CUDA C++ kernel
(csrc/cuda/sample.cu, PYGPT_CUDA_BACKEND=cuda). The kernels find the top-k / top-p thresholds without sorting
the vocabulary and draw with a counter-based generator (Philox-4x32-10) from ``rng_state`` = int64 [seed,
offset] on the logits' device: the same state gives the same ids on a given backend, whatever the launch order.
``sample`` advances the offset in place on the device (no host sync), so a decode step that calls it can be
captured in a CUDA graph.

Errors on data (NaN logits, a row of all -inf, per-row parameter tensors out of range) come back from the kernels
as negative ids (-1 NaN, -2 all -inf, -3 bad parameter) instead of a host sync. ``sample`` turns them into a
ValueError naming the cause:
  * on CPU at once (no device to wait for);
  * on CUDA lazily: the smallest id is copied to pinned host memory behind an event, and the error is raised by
    a later ``sample`` call once that copy has landed, or by ``check_sample_errors()`` (which waits);
  * not at all while a CUDA graph is being captured or under torch.compile: the negative ids are the signal.
Python-number parameters are checked on the host before any launch.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from dataclasses import dataclass

import torch

from ._checks import FLOAT_DTYPES, check_tensor
from ._library import backend_for, extension

OP = "sample"
_INT32_MAX = 2**31 - 1
_ERRORS = {-1: "logits contain NaN", -2: "a logits row is all -inf (nothing can be sampled)",
           -3: "a sampling parameter is out of range"}

Param = float | int | torch.Tensor


# ----------------------------------------------------------------------------------------------- rng state
def make_rng_state(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The int64 (2,) tensor [seed, 0] that ``sample(..., rng_state=)`` reads and advances by one per call."""
    seed = operator.index(seed) & (2**64 - 1)
    if seed >= 2**63:  # keep all 64 bits, as a signed int64
        seed -= 2**64
    return torch.tensor([seed, 0], dtype=torch.int64, device=device)


def _draw_rng_state(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A fresh [seed, offset] from ``generator`` (or torch's global RNG for ``device``), on ``device``."""
    if generator is None:
        return torch.empty(2, dtype=torch.int64, device=device).random_()
    state = torch.empty(2, dtype=torch.int64, device=generator.device).random_(generator=generator)
    return state.to(device, non_blocking=True)


def _check_rng_state(rng_state: object, device: torch.device) -> None:
    check_tensor(OP, "rng_state", rng_state, ndim=1, dtypes=(torch.int64,), device=device)
    if rng_state.shape[0] != 2:
        raise ValueError(f"pygpt.{OP}: rng_state must have shape (2,) [seed, offset] (see make_rng_state), "
                         f"got {tuple(rng_state.shape)}")


# ----------------------------------------------------------------------------------------------- arguments
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_RULES = {  # name -> (test that passes for valid values (and fails for NaN), what is expected)
    "temperature": (lambda v: v >= 0, ">= 0 (0: greedy)"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: no top-k)"),
    "top_p": (lambda v: (v > 0) & (v <= 1), "in (0, 1] (1: no top-p)"),
    "min_p": (lambda v: (v >= 0) & (v < 1), "in [0, 1) (0: no min-p)"),
}


def _check_number(name: str, value: object) -> None:
    if name == "top_k":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"pygpt.{OP}: top_k must be an int or a tensor, got {type(value).__name__}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"pygpt.{OP}: {name} must be a float or a tensor, got {type(value).__name__}")
    test, expected = _RULES[name]
    if not test(value):
        raise ValueError(f"pygpt.{OP}: {name} must be {expected}, got {value}")


def _check_param_tensor(name: str, value: torch.Tensor, B: int, device: torch.device) -> None:
    if value.dim() not in (0, 1) or (value.dim() == 1 and value.shape[0] != B):
        raise ValueError(f"pygpt.{OP}: {name} must be a number or a tensor of shape ({B},) (one per row), "
                         f"got shape {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"pygpt.{OP}: {name} must be on {device} (like logits), got {value.device}")
    integral = not (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool)
    if name == "top_k" and not integral:
        raise TypeError(f"pygpt.{OP}: top_k must be an integer tensor, got {str(value.dtype).removeprefix('torch.')}")
    if name != "top_k" and not (value.dtype.is_floating_point or integral):
        raise TypeError(f"pygpt.{OP}: {name} must be a real tensor, got {str(value.dtype).removeprefix('torch.')}")


def _check_param_values(params: dict[str, Param]) -> None:
    """Value checks of tensor parameters (syncs on CUDA: used by the reference path and to explain errors)."""
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            test, expected = _RULES[name]
            bad = ~test(value.double() if name != "top_k" else value)
            if bool(bad.any()):
                rows = bad.reshape(-1).nonzero().flatten()
                row = int(rows[0])
                shown = value.reshape(-1)[row].item()
                where = f" (row {row})" if value.dim() == 1 else ""
                raise ValueError(f"pygpt.{OP}: {name} must be {expected}, got {shown}{where}")


def check_sample_args(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
                      min_p: Param = 0.0) -> None:
    """Raise a clear error for a bad logits tensor or bad Python-number parameters, and for the shape, dtype
    and device of tensor parameters (their values are checked by the kernels, see the module docstring)."""
    check_tensor(OP, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    if logits.shape[1] == 0:
        raise ValueError(f"pygpt.{OP}: logits has an empty vocabulary dimension, shape {tuple(logits.shape)}")
    params = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            _check_param_tensor(name, value, logits.shape[0], logits.device)
        else:
            _check_number(name, value)


@functools.lru_cache(maxsize=256)
def _full_cached(B: int, value: float | int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Read-only to the op; cached so a decode loop with fixed settings allocates nothing per step.
    return torch.full((B,), value, dtype=dtype, device=device)


def _rows(value: Param, B: int, V: int, dtype: torch.dtype, device: torch.device, cache: bool) -> torch.Tensor:
    """The (B,) tensor of ``dtype`` the op takes, from a number or a () / (B,) tensor (top_k clamped to V)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == dtype and value.shape == (B,) and value.is_contiguous():
            return value  # as the op takes it (a top_k >= V means no top-k to every kernel)
        if dtype == torch.int32:
            # >= V means no top-k, so the upper clamp keeps the meaning; a negative one stays negative (an error)
            value = value.clamp(min=-1, max=min(V, _INT32_MAX))
        return value.to(dtype).expand(B).contiguous()
    if dtype == torch.int32:
        value = min(int(value), V, _INT32_MAX)
    elif math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)  # what float32 rounds it to (torch.full refuses to: "overflow")
    return _full_cached(B, value, dtype, device) if cache else torch.full((B,), value, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------- reference
def sample_reference(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
                     min_p: Param = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,) int64: the plain Torch code (topk, softmax, sort + cumsum, multinomial).

    Parameters are numbers or (B,) tensors. temperature 0 or top_k 1: greedy (argmax, ties to the lowest id).
    Arguments are not checked (see ``sample``).
    """
    B, V = logits.shape
    x = logits.float()
    dev = x.device
    t = _rows(temperature, B, V, torch.float32, dev, cache=False)
    k = _rows(top_k, B, V, torch.int32, dev, cache=False).long()
    p = _rows(top_p, B, V, torch.float32, dev, cache=False)
    mp = _rows(min_p, B, V, torch.float32, dev, cache=False)
    greedy = (t == 0) | (k == 1)
    argmax = x.argmax(dim=-1)
    if bool(greedy.all()):
        return argmax
    # A row holding +inf samples among its +inf entries (softmax would give NaN).
    pos_inf = x == float("inf")
    x = torch.where(pos_inf.any(dim=-1, keepdim=True), torch.where(pos_inf, 0.0, float("-inf")), x)
    # (logits - max) / T: the same softmax as logits / T, without overflow at small temperatures.
    z = (x - x.amax(dim=-1, keepdim=True)) / torch.where(greedy, 1.0, t)[:, None]
    use_k = (k > 0) & (k < V)
    if bool(use_k.any()):
        kk = torch.where(use_k, k, 1)
        kth = torch.topk(z, int(kk.max()), dim=-1).values.gather(1, (kk - 1)[:, None])
        z = z.masked_fill(use_k[:, None] & (z < kth), float("-inf"))
    probs = torch.softmax(z, dim=-1)
    use_p = p < 1.0
    if bool(use_p.any()):
        sorted_probs = probs.sort(dim=-1, descending=True).values
        # Keep the shortest prefix (by decreasing p) whose mass reaches top_p, and every token tied with its last
        # one (as top-k keeps ties): drop the tokens less likely than that last one.
        last = (sorted_probs.cumsum(dim=-1) < p[:, None]).sum(dim=-1, keepdim=True).clamp(max=V - 1)
        probs = probs.masked_fill(use_p[:, None] & (probs < sorted_probs.gather(1, last)), 0.0)
    if bool((mp > 0).any()):
        probs = probs.masked_fill(probs < mp[:, None] * probs.amax(dim=-1, keepdim=True), 0.0)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(greedy, argmax, sampled)


def _reference_generator(rng_state: torch.Tensor) -> torch.Generator:
    """A torch.Generator on rng_state's device seeded from (seed, offset) (a host read: reference only)."""
    seed, offset = rng_state.tolist()
    g = torch.Generator(device=rng_state.device)
    g.manual_seed(((seed * 0x9E3779B97F4A7C15) ^ (offset * 0xC2B2AE3D27D4EB4F)) & (2**63 - 1))
    return g


# ----------------------------------------------------------------------------------------------- errors
@dataclass
class _Pending:
    """A CUDA call whose smallest id is on its way to pinned host memory."""
    smallest: torch.Tensor  # pinned, 0-dim int64
    done: torch.cuda.Event
    ids: torch.Tensor
    params: dict[str, Param]


_pending: list[_Pending] = []
_MAX_PENDING = 64


def _row_error(ids: torch.Tensor, params: dict[str, Param]) -> ValueError:
    bad = (ids < 0).nonzero().flatten()
    row = int(bad[0])
    code = int(ids[row])
    if code == -3:
        try:
            _check_param_values({n: v[row] if isinstance(v, torch.Tensor) and v.dim() == 1 else v
                                 for n, v in params.items()})
        except ValueError as err:
            return ValueError(f"{err} (row {row})")
    return ValueError(f"pygpt.{OP}: {describe_error(code)} (row {row})")


def describe_error(code: int) -> str:
    """What a negative id from the kernels means (-1 NaN, -2 all -inf, -3 a parameter out of range)."""
    return _ERRORS.get(code, f"error code {code}")


def _raise_landed(wait: bool = False) -> None:
    """Raise the first error among the pending CUDA checks whose copy has landed (all of them if ``wait``)."""
    while _pending and (wait or _pending[0].done.query()):
        rec = _pending.pop(0)
        rec.done.synchronize()
        if int(rec.smallest) < 0:
            _pending.clear()
            raise _row_error(rec.ids, rec.params)


def check_sample_errors() -> None:
    """Wait for the pending checks of earlier CUDA ``sample`` calls and raise the first error (NaN logits, a
    row of all -inf, a parameter tensor out of range). CPU calls raise at once and leave nothing pending."""
    _raise_landed(wait=True)


def _check_ids(ids: torch.Tensor, params: dict[str, Param]) -> None:
    if ids.numel() == 0:
        return
    if ids.device.type == "cpu":
        if int(ids.min()) < 0:
            raise _row_error(ids, params)
        return
    if ids.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return
    smallest = torch.empty((), dtype=torch.int64, pin_memory=True)
    smallest.copy_(ids.amin(), non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    _pending.append(_Pending(smallest, done, ids, params))
    if len(_pending) > _MAX_PENDING:  # never hold more than a bounded backlog
        _raise_landed(wait=True)


def sampling_rows(B: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (B,) temperature, top_k, top_p, min_p tensors ``sample`` takes, from checked numbers, made once.

    A decode loop passes these every step: sample then allocates nothing, and a CUDA graph that captured the loop
    reads tensors the loop owns (not entries of sample's own cache, which a long-lived process may evict).
    """
    params = (("temperature", temperature, torch.float32), ("top_k", top_k, torch.int32),
              ("top_p", top_p, torch.float32), ("min_p", min_p, torch.float32))
    for name, value, _ in params:
        _check_number(name, value)
    # (V unknown here: top_k is only capped at int32's range; a top_k >= V means no top-k to every kernel)
    return tuple(_rows(value, B, _INT32_MAX, dtype, device, cache=False) for _, value, dtype in params)


# ----------------------------------------------------------------------------------------------- public op
def sample(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
           min_p: Param = 0.0, *, rng_state: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (B,) int64 from logits (B, V) (fp32/fp16/bf16/fp64, any row stride).

    temperature, top_k, top_p, min_p: Python numbers or (B,) tensors on the logits' device (one per row).
    rng_state: int64 (2,) [seed, offset] on the logits' device (see ``make_rng_state``); read by the kernel and
    then advanced by one in place. Without it the state is drawn from ``generator`` (or torch's global RNG).
    Errors on the data are raised as described in the module docstring.
    """
    check_sample_args(logits, temperature, top_k, top_p, min_p)
    device = logits.device
    if rng_state is not None:
        _check_rng_state(rng_state, device)
    params = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    if backend_for(device) == "reference":
        _check_param_values(params)
        if bool(torch.isnan(logits).any()):
            raise ValueError(f"pygpt.{OP}: logits contain NaN")
        if bool((logits == float("-inf")).all(dim=-1).any()):
            raise ValueError(f"pygpt.{OP}: {_ERRORS[-2]}")
        if rng_state is not None:
            generator = _reference_generator(rng_state)
            rng_state[1:].add_(1)
        return sample_reference(logits, temperature, top_k, top_p, min_p, generator)

    B, V = logits.shape
    if V > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    compiling = torch.compiler.is_compiling()
    if device.type == "cuda" and not compiling and _pending and not torch.cuda.is_current_stream_capturing():
        _raise_landed()
    cache = not compiling
    ids = torch.ops.pygpt.sample(
        logits,
        _rows(temperature, B, V, torch.float32, device, cache),
        _rows(top_k, B, V, torch.int32, device, cache),
        _rows(top_p, B, V, torch.float32, device, cache),
        _rows(min_p, B, V, torch.float32, device, cache),
        rng_state if rng_state is not None else _draw_rng_state(generator, device))
    if rng_state is not None:
        rng_state[1:].add_(1)
    if not compiling:
        _check_ids(ids, params)
    return ids


# ----------------------------------------------------------------------------------------------- registration
def _sample_fake(logits, temperature, top_k, top_p, min_p, rng_state):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


def _sample_on_cuda(logits, temperature, top_k, top_p, min_p, rng_state):
    if backend_for(logits.device) == "cuda":
        return torch.ops.pygpt.sample_cuda(logits, temperature, top_k, top_p, min_p, rng_state)
    from pygpt.kernels.sample import sample_triton

    return sample_triton(logits, temperature, top_k, top_p, min_p, rng_state)


def _register() -> None:
    torch.library.register_fake("pygpt::sample")(_sample_fake)
    torch.library.register_fake("pygpt::sample_cuda")(_sample_fake)
    torch.library.register_kernel("pygpt::sample", "cuda")(_sample_on_cuda)


if extension() is not None:
    _register()
