"""KV-cache ops against their Torch references: kv_append / kv_evict (bookkeeping and copies must be exact) and
the decode step rope_decode_attention (attention over the ring buffer's window, then append), across dtypes,
batch > 1 with different lengths, GQA, and wrap-around."""

import importlib.util

import pytest
import torch

import pygpt.ops as ops
from pygpt.ops.kv_cache import kv_append_reference, kv_evict_reference, rope_decode_attention_reference
from pygpt.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Decode tolerance (FlashAttention's rule, as in test_rope_attention.py): the kernel's max error against the float64
# reference may be at most 3x the error of the Torch reference run in the same low precision, plus a small
# per-dtype floor (about one rounding of the output, whose entries reach ~2 here).
DECODE_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run (interpreted on CPU)


def random_cache(B, Hkv, C, D, dtype, device="cpu", seed=0):
    """A cache in a random reachable state: some sequences empty, some wrapped around several times."""
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(B, Hkv, C, D, generator=g).to(dtype).to(device)
    v_cache = torch.randn(B, Hkv, C, D, generator=g).to(dtype).to(device)
    lengths = torch.randint(0, 3 * C, (B,), generator=g, dtype=torch.int32)
    lengths[0] = 0
    filled = torch.minimum(lengths, torch.tensor(C, dtype=torch.int32))
    starts = lengths - (torch.rand(B, generator=g) * (filled + 1).float()).floor().int().clamp(max=filled)
    return k_cache, v_cache, lengths.to(device), starts.to(device)


def clone_all(*tensors):
    return [t.clone() for t in tensors]


def exact_copy(*cache):
    """The cache in float64 for the exact reference: always copies (``.double()`` of a float64 tensor would not)."""
    return [t.double().clone() if t.is_floating_point() else t.clone() for t in cache]


def check_decode(got, lowp, exact, dtype, what="out"):
    """got (a kernel) against exact (float64 reference) with the 3x-the-low-precision-reference rule."""
    assert got.shape == exact.shape and got.dtype == dtype, (got.shape, got.dtype)
    assert torch.isfinite(got).all(), f"{what}: NaN/inf"
    assert torch.isfinite(exact).all() and torch.isfinite(lowp).all(), f"{what}: NaN/inf in the reference"
    exact = exact.double().cpu()
    err = (got.double().cpu() - exact).abs().max().item()
    ref_err = (lowp.double().cpu() - exact).abs().max().item()
    assert err <= 3 * ref_err + DECODE_FLOOR[dtype], f"{what}: error {err:.3g} vs torch's own {ref_err:.3g}"


def triton_decode(q, k, v, *cache, scale=None, base=10000.0, rope=True, splits=None, advance=True):
    """The Triton launcher with ops.rope_decode_attention's defaults (scale D^-0.5, inv_freq from base)."""
    from pygpt.kernels.decode_attention import rope_decode_attention_triton
    from pygpt.ops.rotary import rope_inv_freq

    D = q.shape[-1]
    return rope_decode_attention_triton(q, k, v, *cache, D ** -0.5 if scale is None else scale,
                                        rope_inv_freq(D, base, device=q.device), rope, splits=splits,
                                        advance=advance)


def decode_impl(impl, request):
    """decode(q, k, v, *cache, scale=, base=) of one backend that runs here (Triton: on DEVICE's tensors)."""
    if impl.startswith("triton"):
        request.getfixturevalue("needs_triton")
        splits = 3 if impl == "triton-split" else None
        return lambda *a, **kw: triton_decode(*a, splits=splits, **kw)
    return ops.rope_decode_attention if impl == "cpp" else rope_decode_attention_reference


def impl_device(impl):
    return DEVICE if impl.startswith("triton") else "cpu"


def evict_impl(impl):
    if impl.startswith("triton"):
        from pygpt.kernels.kv_cache import kv_evict_triton

        return kv_evict_triton
    return ops.kv_evict if impl == "cpp" else kv_evict_reference


@pytest.mark.parametrize("impl", ["cpp", "cuda-sim"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("B, Hkv, C, D, Tn", [(3, 2, 8, 16, 1), (4, 1, 5, 40, 5), (2, 3, 17, 8, 4),
                                             (2, 2, 7, 300, 3)])
def test_kv_append_matches_reference(impl, dtype, B, Hkv, C, D, Tn, request):
    """Wrap-around (random_cache's lengths reach 3 C), Tn = C, a head_dim above the CUDA kernel's 256 threads.
    "cuda-sim": the CUDA C++ kernel on the CPU simulator of tests/cuda_sim."""
    append = ops.kv_append if impl == "cpp" else request.getfixturevalue("cuda_sim").kv_append_cuda
    cache = random_cache(B, Hkv, C, D, dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D).to(dtype)
    expected = clone_all(*cache)
    kv_append_reference(*expected, k, v)
    append(*cache, k, v)
    for got, want in zip(cache, expected):
        assert torch.equal(got, want)


def test_kv_append_strided_rows():
    cache = random_cache(2, 2, 6, 8, torch.float32)
    kv = torch.randn(2, 3, 2, 16)  # k and v as views of one projection
    k, v = kv[..., :8], kv[..., 8:]
    expected = clone_all(*cache)
    kv_append_reference(*expected, k, v)
    ops.kv_append(*cache, k, v)
    assert all(torch.equal(a, b) for a, b in zip(cache, expected))


def test_kv_evict_matches_reference():
    for seed in range(5):
        _, _, lengths, starts = random_cache(6, 1, 7, 4, torch.float32, seed=seed)
        counts = torch.tensor([0, 1, 3, 100, -1, 2], dtype=torch.int32)
        want = clone_all(lengths, starts)
        kv_evict_reference(*want, counts)
        ops.kv_evict(lengths, starts, counts)
        assert torch.equal(lengths, want[0]) and torch.equal(starts, want[1])
    assert int(lengths[4]) == 0 and int(starts[4]) == 0  # freed for reuse


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
def test_evict_then_decode_sees_only_the_window(impl, request):
    """kv_evict moves the counters and leaves the cache tensors alone; the next decode step then attends to the
    window left, exactly as on a cache to which the evicted tokens were never appended."""
    decode, evict = decode_impl(impl, request), evict_impl(impl)
    B, H, Hkv, C, D, T = 2, 4, 2, 8, 16, 8
    first = torch.tensor([0, 3], dtype=torch.int32)  # sequence 1 wraps around
    drop = torch.tensor([3, 5], dtype=torch.int32)
    keys, values = torch.randn(2, B, T, Hkv, D)
    rotated = ops.rotary_reference(keys, first.long()[:, None] + torch.arange(T))

    def cache_from(skip):  # a zero cache holding sequence b's tokens skip[b]: (positions first[b] + skip[b] on)
        k_cache, v_cache = torch.zeros(2, B, Hkv, C, D)
        lengths, starts = first + skip, first + skip
        for b in range(B):
            n = int(skip[b])
            kv_append_reference(k_cache[b:b + 1], v_cache[b:b + 1], lengths[b:b + 1], starts[b:b + 1],
                                rotated[b:b + 1, n:], values[b:b + 1, n:])
        return [k_cache, v_cache, lengths, starts]

    dev = impl_device(impl)
    evicted = [t.to(dev) for t in cache_from(torch.zeros(B, dtype=torch.int32))]
    kept = clone_all(*evicted)
    tensors = clone_all(*evicted[:2])
    evict(evicted[2], evicted[3], drop.to(dev))
    assert torch.equal(evicted[0], tensors[0]) and torch.equal(evicted[1], tensors[1])  # bookkeeping only
    fresh = [t.to(dev) for t in cache_from(drop)]
    assert torch.equal(evicted[2], fresh[2]) and torch.equal(evicted[3], fresh[3])

    q = torch.randn(B, 2, H, D, device=dev)
    k, v = torch.randn(2, B, 2, Hkv, D, device=dev)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*fresh))
    lowp = rope_decode_attention_reference(q, k, v, *clone_all(*fresh))
    got = decode(q, k, v, *evicted)
    check_decode(got, lowp, exact, torch.float32)
    assert torch.equal(got, decode(q, k, v, *fresh))  # the evicted tokens are not read at all
    assert not torch.allclose(got, decode(q, k, v, *kept), atol=1e-3)  # and eviction did change the window


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("B, H, Hkv, C, D, Tn, rope, scale, base", [
    (3, 4, 2, 8, 16, 1, True, None, 10000.0), (2, 6, 3, 5, 40, 3, True, 0.37, 500.0),
    (4, 8, 1, 16, 8, 1, False, None, 10000.0), (2, 2, 2, 7, 32, 7, True, 0.37, 500.0),
    (2, 4, 2, 9, 7, 2, False, 0.37, 10000.0), (1, 2, 1, 6, 33, 1, False, None, 10000.0),  # odd head_dim, no RoPE
])
def test_decode_matches_reference(dtype, B, H, Hkv, C, D, Tn, rope, scale, base):
    cache = random_cache(B, Hkv, C, D, dtype)
    q = torch.randn(B, Tn, H, D).to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D).to(dtype)
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache),
                                            scale=scale, base=base, rope=rope)
    lowp = rope_decode_attention_reference(q, k, v, *expected_cache, scale=scale, base=base, rope=rope)
    got = ops.rope_decode_attention(q, k, v, *cache, scale=scale, base=base, rope=rope)
    check_decode(got, lowp, exact, dtype)
    assert torch.equal(cache[2], expected_cache[2]) and torch.equal(cache[3], expected_cache[3])
    # Rotated keys: cos/sin may differ by an ulp between libm and torch; values are copied exactly.
    assert_close(cache[0], expected_cache[0].double(), dtype)
    assert torch.equal(cache[1], expected_cache[1])


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_bound_decode_attention_is_the_op(backend):
    """DecodeAttention (the decode loop's unchecked call) == rope_decode_attention, outputs and cache; bad settings
    and, on CPU, bad tensors still raise (from the C++ kernel)."""
    ops.set_backend("reference" if backend == "reference" else "auto")
    try:
        for scale, base, rope in [(None, 10000.0, True), (0.3, 500.0, True), (None, 10000.0, False)]:
            cache = random_cache(3, 2, 8, 16, torch.float32, seed=1)
            q = torch.randn(3, 2, 4, 16)
            k, v = torch.randn(2, 3, 2, 2, 16)
            expected_cache = clone_all(*cache)
            want = ops.rope_decode_attention(q, k, v, *expected_cache, scale=scale, base=base, rope=rope)
            got = ops.DecodeAttention(16, scale=scale, base=base, rope=rope)(q, k, v, *cache)
            assert torch.equal(got, want)
            assert all(torch.equal(a, b) for a, b in zip(cache, expected_cache))
    finally:
        ops.set_backend("auto")
    with pytest.raises(ValueError, match="head_dim must be even"):
        ops.DecodeAttention(15)
    cache = random_cache(3, 2, 8, 16, torch.float32)
    with pytest.raises(RuntimeError, match="rope_decode_attention"):
        ops.DecodeAttention(16)(torch.randn(3, 1, 4, 16), torch.randn(3, 1, 3, 16), torch.randn(3, 1, 3, 16), *cache)


def test_window_slides_past_capacity():
    """Appending one token at a time past C keeps exactly the last C positions visible."""
    B, H, C, D = 1, 2, 4, 8
    k_cache, v_cache = torch.zeros(2, B, H, C, D)
    lengths, starts = torch.zeros(B, dtype=torch.int32), torch.zeros(B, dtype=torch.int32)
    keys, values, queries = torch.randn(3, 10, B, 1, H, D)
    for t in range(10):
        out = ops.rope_decode_attention(queries[t], keys[t], values[t], k_cache, v_cache, lengths, starts)
        lo = max(0, t - C + 1)
        pos = torch.arange(lo, t + 1)
        kk = ops.rotary_reference(torch.cat(list(keys[lo:t + 1]), 1), pos)  # (1, n, H, D)
        qq = ops.rotary_reference(queries[t], torch.tensor([t]))
        att = torch.einsum("bthd,bnhd->bhtn", qq, kk) * D ** -0.5
        want = torch.einsum("bhtn,bnhd->bthd", att.softmax(-1), torch.cat(list(values[lo:t + 1]), 1))
        assert_close(out, want.double(), torch.float32)
    assert int(lengths[0]) == 10 and int(starts[0]) == 6


@pytest.mark.parametrize("call, match", [
    (lambda c: ops.kv_append(*c, torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8)),
     r"k must have shape \(B, Tn, Hkv, D\)"),
    (lambda c: ops.kv_append(*c, torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)), "cannot append 9 tokens"),
    (lambda c: ops.kv_append(c[0], c[1], c[2].long(), c[3], torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)),
     "lengths must be one of int32"),
    (lambda c: ops.rope_decode_attention(torch.randn(2, 1, 3, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), *c),
     "q must have shape"),
    (lambda c: ops.kv_append(*c, torch.randn(2, 1, 2, 8).half(), torch.randn(2, 1, 2, 8).half()),
     "k must be one of float32"),
])
def test_bad_inputs(call, match):
    cache = random_cache(2, 2, 8, 8, torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        call(cache)


def _bad_counters(c):
    c[3][1] = -5  # starts < 0: positions before the cache
    return c


@pytest.mark.parametrize("make, match", [
    # v with fewer new tokens than k (read past v's end before)
    (lambda c: (torch.randn(2, 3, 4, 8), torch.randn(2, 3, 2, 8), torch.randn(2, 1, 2, 8), *c),
     "v must have k's number of new tokens 3, got 1"),
    (lambda c: (torch.randn(2, 1, 4, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), *_bad_counters(c)),
     "needs 0 <= starts <= lengths"),
    # no kv head (a division by zero before)
    (lambda c: (torch.randn(2, 1, 2, 8), torch.randn(2, 1, 0, 8), torch.randn(2, 1, 0, 8),
                torch.zeros(2, 0, 8, 8), torch.zeros(2, 0, 8, 8), c[2], c[3]), "at least one head and one slot"),
    (lambda c: (torch.randn(2, 1, 0, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), *c),
     "q must have at least one head"),
])
@pytest.mark.parametrize("entry", ["op", "bound", "public"])
def test_decode_rejects_what_would_crash(make, match, entry):
    """Inputs that made the C++ decode step read or write out of bounds (or divide by zero) are errors on every
    path: the public op, DecodeAttention (which leaves the checks to the kernel) and the raw op."""
    args = make(random_cache(2, 2, 8, 8, torch.float32))
    call = {"op": lambda: torch.ops.pygpt.rope_decode_attention(*args, 0.35, 1e4, True, True),
            "bound": lambda: ops.DecodeAttention(8)(*args),
            "public": lambda: ops.rope_decode_attention(*args)}[entry]
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


def test_append_and_evict_keep_the_counters_in_range():
    cache = random_cache(2, 2, 8, 8, torch.float32)
    with pytest.raises(RuntimeError, match="v must have k's number of new tokens"):
        torch.ops.pygpt.kv_append(*cache, torch.randn(2, 1, 2, 8), torch.randn(2, 3, 2, 8))
    cache[2][0], cache[3][0] = 2**31 - 2, 2**31 - 10
    with pytest.raises(RuntimeError, match="would pass 2\\^31 - 1 positions"):
        torch.ops.pygpt.kv_append(*cache, torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 8))
    # "Evict everything" with a huge count: starts + counts overflowed int32 into a negative start before.
    for impl in ("cpp", "reference") + (("triton",) if importlib.util.find_spec("triton") else ()):
        lengths, starts = (torch.tensor(v, dtype=torch.int32, device=impl_device(impl)) for v in ([10, 7], [2, 0]))
        evict_impl(impl)(lengths, starts, torch.tensor([2**31 - 1, 3], dtype=torch.int32, device=lengths.device))
        assert starts.tolist() == [10, 3] and lengths.tolist() == [10, 7], impl


def test_opcheck():
    cache = random_cache(2, 2, 8, 8, torch.float32)
    k, v = torch.randn(2, 2, 1, 2, 8)
    torch.library.opcheck(torch.ops.pygpt.kv_append.default, (*cache, k, v),
                          test_utils=("test_schema", "test_faketensor"))
    q = torch.randn(2, 1, 4, 8)
    torch.library.opcheck(torch.ops.pygpt.rope_decode_attention.default, (q, k, v, *cache, 0.3, 1e4, True),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.pygpt.rope_decode_attention.default, (q, k, v, *cache, 0.3, 1e4, True, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
def test_decode_without_advance_leaves_the_counters(impl, request):
    """advance=False (every layer but the last, when the layers share one pair of counters): the same output and
    cache writes as advance=True, the counters untouched."""
    if impl == "triton":
        request.getfixturevalue("needs_triton")
        from pygpt.kernels.decode_attention import rope_decode_attention_triton
        from pygpt.ops.rotary import rope_inv_freq

        def decode(*args, advance):
            return rope_decode_attention_triton(*args, 8 ** -0.5, rope_inv_freq(8, device=DEVICE), True,
                                                advance=advance)
    else:
        decode = ops.rope_decode_attention if impl == "cpp" else rope_decode_attention_reference
    dev = impl_device(impl)  # the Triton kernel needs CUDA tensors where it is compiled
    q = torch.randn(3, 2, 4, 8, device=dev)
    k, v = torch.randn(2, 3, 2, 2, 8, device=dev)
    held, moved = (random_cache(3, 2, 8, 8, torch.float32, device=dev) for _ in range(2))
    counters = clone_all(*held[2:])
    out_held = decode(q, k, v, *held, advance=False)
    out_moved = decode(q, k, v, *moved, advance=True)
    assert torch.equal(held[2], counters[0]) and torch.equal(held[3], counters[1])
    assert not torch.equal(moved[2], counters[0])
    assert torch.equal(out_held, out_moved)
    assert torch.equal(held[0], moved[0]) and torch.equal(held[1], moved[1])


# ---- the CUDA C++ kernels, on the CPU simulator of tests/cuda_sim (on a GPU: test_gpu_append_evict_backends) --
def test_kv_append_cuda_strided_rows_and_bad_input(cuda_sim):
    cache = random_cache(2, 2, 6, 8, torch.float32)
    kv = torch.randn(2, 3, 2, 16)  # k and v as views of one projection
    expected = clone_all(*cache)
    kv_append_reference(*expected, kv[..., :8], kv[..., 8:])
    cuda_sim.kv_append_cuda(*cache, kv[..., :8], kv[..., 8:])
    assert all(torch.equal(a, b) for a, b in zip(cache, expected))
    with pytest.raises(RuntimeError, match="cannot append 7 tokens at once to a cache of 6 slots"):
        cuda_sim.kv_append_cuda(*cache, torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8))
    with pytest.raises(RuntimeError, match="k must be .* in the cache's dtype"):
        cuda_sim.kv_append_cuda(*cache, torch.randn(2, 1, 2, 8).double(), torch.randn(2, 1, 2, 8))
    empty = [torch.zeros(0, 2, 6, 8), torch.zeros(0, 2, 6, 8), torch.zeros(0, dtype=torch.int32),
             torch.zeros(0, dtype=torch.int32)]
    cuda_sim.kv_append_cuda(*empty, torch.randn(0, 1, 2, 8), torch.randn(0, 1, 2, 8))  # B = 0: no launch


def test_kv_evict_cuda_matches_reference(cuda_sim):
    for seed in range(5):
        _, _, lengths, starts = random_cache(300, 1, 7, 4, torch.float32, seed=seed)  # > one block of 256
        counts = torch.randint(-1, 12, (300,), dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
        counts[:3] = torch.tensor([0, 2**31 - 1, -1], dtype=torch.int32)  # (starts + counts would overflow)
        want = clone_all(lengths, starts)
        kv_evict_reference(*want, counts)
        cuda_sim.kv_evict_cuda(lengths, starts, counts)
        assert torch.equal(lengths, want[0]) and torch.equal(starts, want[1])


# ---- corrupt counters: the GPU kernels trust them (checking would cost a host sync), but stay inside the cache --
@pytest.mark.parametrize("impl", ["triton-append", "triton-decode", "triton-decode-split", "cuda-sim-append"])
@pytest.mark.parametrize("length, start", [(-5, -5), (-3, -7), (2**31 - 2, 2**31 - 9)])
def test_corrupt_counters_never_touch_memory_outside_the_cache(impl, length, start, request):
    """A negative length, or one about to wrap int32, puts the new rows somewhere in the sequence's own ring (%
    keeps the dividend's sign: such slots were negative, writing into the tensor before the cache)."""
    Hkv, C, D, Tn = 2, 7, 16, 3
    device = "cpu" if impl.startswith("cuda-sim") else DEVICE
    if impl.startswith("triton"):
        request.getfixturevalue("needs_triton")
    guards = torch.full((2, 3, Hkv, C, D), 7.0, device=device)  # (k, v) x (guard, cache, guard)
    k_cache, v_cache = guards[0, 1:2], guards[1, 1:2]  # contiguous views between the guards
    lengths = torch.tensor([length], dtype=torch.int32, device=device)
    starts = torch.tensor([start], dtype=torch.int32, device=device)
    k, v = torch.randn(2, 1, Tn, Hkv, D, device=device)
    if impl == "triton-append":
        from pygpt.kernels.kv_cache import kv_append_triton

        kv_append_triton(k_cache, v_cache, lengths, starts, k, v)
    elif impl == "cuda-sim-append":
        request.getfixturevalue("cuda_sim").kv_append_cuda(k_cache, v_cache, lengths, starts, k, v)
    else:
        q = torch.randn(1, Tn, 2 * Hkv, D, device=device)
        triton_decode(q, k, v, k_cache, v_cache, lengths, starts, splits=3 if impl.endswith("split") else None)
    assert (guards[:, [0, 2]] == 7.0).all(), "a write landed outside the cache"
    assert (k_cache != 7.0).any(dim=-1).sum() == Tn * Hkv  # each new row went to a slot of its own


# ---- Triton kernels: through the CPU interpreter here, compiled on a GPU -----------------------------------


@pytest.mark.parametrize("B, Hkv, C, D, Tn", [(3, 2, 8, 16, 1), (2, 1, 5, 40, 5)])
def test_triton_append_and_evict(B, Hkv, C, D, Tn, needs_triton):
    from pygpt.kernels.kv_cache import kv_append_triton, kv_evict_triton

    cache = [t.to(DEVICE) for t in random_cache(B, Hkv, C, D, torch.float32)]
    k, v = torch.randn(2, B, Tn, Hkv, D, device=DEVICE)
    expected = clone_all(*cache)
    kv_append_reference(*expected, k, v)
    kv_append_triton(*cache, k, v)
    assert all(torch.equal(a, b) for a, b in zip(cache, expected))
    counts = torch.tensor([1, -1, 2][:B], dtype=torch.int32, device=DEVICE)
    kv_evict_reference(expected[2], expected[3], counts)
    kv_evict_triton(cache[2], cache[3], counts)
    assert torch.equal(cache[2], expected[2]) and torch.equal(cache[3], expected[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, Hkv, C, D, Tn, rope, splits, scale, base", [
    (3, 4, 2, 8, 16, 1, True, None, None, 10000.0), (2, 2, 1, 20, 40, 3, True, None, 0.37, 500.0),
    (2, 2, 2, 6, 8, 1, False, None, 0.37, 10000.0),
    (3, 8, 2, 70, 24, 2, True, None, None, 10000.0),  # one program per kv head (the default), GQA 4, wrapped
    (3, 8, 2, 70, 24, 2, True, 5, 0.37, 500.0),  # 5 splits (16-key tiles here) and the merge launch
    (2, 2, 1, 20, 40, 3, True, 2, None, 10000.0),
])
def test_triton_decode_matches_reference(dtype, B, H, Hkv, C, D, Tn, rope, splits, scale, base, needs_triton):
    cache = [t.to(DEVICE) for t in random_cache(B, Hkv, C, D, dtype, seed=3)]
    q = torch.randn(B, Tn, H, D, device=DEVICE).to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D, device=DEVICE).to(dtype)
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache),
                                            scale=scale, base=base, rope=rope)
    lowp = rope_decode_attention_reference(q, k, v, *expected_cache, scale=scale, base=base, rope=rope)
    got = triton_decode(q, k, v, *cache, scale=scale, base=base, rope=rope, splits=splits)
    check_decode(got, lowp, exact, dtype)
    assert_close(cache[0], expected_cache[0].double(), dtype)
    assert torch.equal(cache[1], expected_cache[1])
    assert torch.equal(cache[2], expected_cache[2]) and torch.equal(cache[3], expected_cache[3])


@pytest.mark.parametrize("advance", [True, False])
def test_triton_decode_long_prompt_in_chunks(advance, needs_triton):
    """A prompt of more than MAX_QUERY_ROWS query rows (new tokens x group) runs in chunks of new tokens, each over
    the cache the ones before it appended: the same output, cache and counters as the reference's one pass (with
    advance=False the counters stay, though the chunks advanced a copy). GQA 4, 20 tokens: chunks of 16 + 4, a
    wrapped cache."""
    from pygpt.kernels import decode_attention

    B, H, Hkv, C, D, Tn = 2, 8, 2, 24, 16, 20
    assert Tn * H // Hkv > decode_attention.MAX_QUERY_ROWS
    cache = [t.to(DEVICE) for t in random_cache(B, Hkv, C, D, torch.float32, seed=5)]
    q = torch.randn(B, Tn, H, D, device=DEVICE)
    k, v = torch.randn(2, B, Tn, Hkv, D, device=DEVICE)
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache),
                                            scale=0.37, base=500.0, advance=advance)
    lowp = rope_decode_attention_reference(q, k, v, *expected_cache, scale=0.37, base=500.0, advance=advance)
    got = triton_decode(q, k, v, *cache, scale=0.37, base=500.0, advance=advance)
    check_decode(got, lowp, exact, torch.float32)
    assert_close(cache[0], expected_cache[0].double(), torch.float32)
    assert torch.equal(cache[1], expected_cache[1])
    assert torch.equal(cache[2], expected_cache[2]) and torch.equal(cache[3], expected_cache[3])


def _garbage_outside_the_window(cache):
    """The cache with NaN in every slot outside [starts, lengths) (mod C): what an empty (torch.empty) or
    evicted cache may hold."""
    k_cache, v_cache, lengths, starts = clone_all(*cache)
    C = k_cache.shape[2]
    for b in range(k_cache.shape[0]):
        valid = torch.zeros(C, dtype=torch.bool)
        valid[torch.arange(int(starts[b]), int(lengths[b])) % C] = True
        k_cache[b][:, ~valid] = float("nan")
        v_cache[b][:, ~valid] = float("nan")
    return [k_cache, v_cache, lengths, starts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["cpp", "reference", "triton", "triton-split"])
def test_decode_ignores_garbage_outside_the_window(impl, dtype, request):
    """Slots outside the valid window (never written, or evicted) may hold NaN: every backend must never read
    them. Sequences: empty, partly evicted, wrapped and partly evicted, fully evicted; Tn = 3 (the new tokens
    overwrite some garbage slots)."""
    decode = decode_impl(impl, request)
    B, H, Hkv, C, D, Tn = 4, 4, 2, 40, 16, 3
    clean = random_cache(B, Hkv, C, D, dtype, seed=5)
    clean[2].copy_(torch.tensor([0, 25, 100, 60]))
    clean[3].copy_(torch.tensor([0, 10, 70, 60]))
    dirty = _garbage_outside_the_window(clean)
    assert torch.isnan(dirty[0]).any(dim=(1, 2, 3)).all()  # garbage in every sequence
    dev = impl_device(impl)
    clean, dirty = [t.to(dev) for t in clean], [t.to(dev) for t in dirty]
    q = torch.randn(B, Tn, H, D, device=dev).to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D, device=dev).to(dtype)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*clean))
    lowp = rope_decode_attention_reference(q, k, v, *clone_all(*clean))
    got = decode(q, k, v, *dirty)
    check_decode(got, lowp, exact, dtype)
    assert torch.equal(got, decode(q, k, v, *clean))  # clean is now advanced like dirty
    assert torch.equal(dirty[2], clean[2]) and torch.equal(dirty[3], clean[3])
    clean, dirty = [t.cpu() for t in clean], [t.cpu() for t in dirty]
    for b in range(B):  # the window after the step (old entries and the new tokens) is the clean run's
        window = torch.arange(int(clean[3][b]), int(clean[2][b])) % C
        assert torch.equal(dirty[0][b][:, window], clean[0][b][:, window])
        assert torch.equal(dirty[1][b][:, window], clean[1][b][:, window])


def test_cuda_routing_functions_on_cpu_tensors(needs_triton):
    """_decode_on_cuda / _append_on_cuda / _evict_on_cuda (registered for CUDA tensors; plain Python around the
    Triton launchers) called directly on CPU tensors under the interpreter: argument order, base -> inv_freq,
    scale and advance, against the references."""
    from pygpt.ops.kv_cache import _append_on_cuda, _decode_on_cuda, _evict_on_cuda

    B, H, Hkv, C, D, Tn = 3, 4, 2, 8, 16, 2
    cache = random_cache(B, Hkv, C, D, torch.float32, device=DEVICE, seed=2)
    q = torch.randn(B, Tn, H, D, device=DEVICE)
    k, v = torch.randn(2, B, Tn, Hkv, D, device=DEVICE)
    for advance in (True, False):
        got_cache, expected_cache = clone_all(*cache), clone_all(*cache)
        exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache),
                                                scale=0.37, base=500.0, advance=advance)
        lowp = rope_decode_attention_reference(q, k, v, *expected_cache, scale=0.37, base=500.0, advance=advance)
        got = _decode_on_cuda(q, k, v, *got_cache, 0.37, 500.0, True, advance)
        check_decode(got, lowp, exact, torch.float32)
        assert_close(got_cache[0], expected_cache[0].double(), torch.float32)
        assert all(torch.equal(a, b) for a, b in zip(got_cache[1:], expected_cache[1:]))
    expected = clone_all(*cache)
    kv_append_reference(*expected, k, v)
    _append_on_cuda(*cache, k, v)
    assert all(torch.equal(a, b) for a, b in zip(cache, expected))
    counts = torch.tensor([2, -1, 1], dtype=torch.int32, device=DEVICE)
    kv_evict_reference(expected[2], expected[3], counts)
    _evict_on_cuda(cache[2], cache[3], counts)
    assert torch.equal(cache[2], expected[2]) and torch.equal(cache[3], expected[3])


def test_triton_decode_rejects_odd_head_dim(needs_triton):
    """The Triton kernel holds q and k as two halves: an odd head_dim is an error there (ops.rope_decode_attention
    runs the reference for it on CUDA), never a wrong answer."""
    from pygpt.kernels.decode_attention import rope_decode_attention_triton

    cache = [t.to(DEVICE) for t in random_cache(2, 1, 8, 7, torch.float32)]
    q, k, v = torch.randn(3, 2, 1, 1, 7, device=DEVICE)
    with pytest.raises(ValueError, match="even head_dim, got 7"):
        rope_decode_attention_triton(q, k, v, *cache, 7 ** -0.5, torch.ones(3, device=DEVICE), False)


@pytest.mark.gpu
def test_gpu_decode_odd_head_dim_runs_the_reference():
    cache = [t.cuda() for t in random_cache(3, 2, 16, 33, torch.float32)]
    q = torch.randn(3, 2, 4, 33, device="cuda")
    k, v = torch.randn(2, 3, 2, 2, 33, device="cuda")
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache), rope=False)
    lowp = rope_decode_attention_reference(q, k, v, *expected_cache, rope=False)
    check_decode(ops.rope_decode_attention(q, k, v, *cache, rope=False), lowp, exact, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(cache, expected_cache))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, Tn, scale, base", [(64, 1, None, 10000.0), (1024, 3, 0.37, 500.0)])
def test_gpu_decode_op(dtype, C, Tn, scale, base):
    """ops.rope_decode_attention on CUDA (the Triton kernel by default): C = 64 takes the one-split launch plan,
    C = 1024 (past ONE_SPLIT_MAX_KEYS) the splits + merge plan; the output, the cache and the counters."""
    from pygpt.kernels.decode_attention import ONE_SPLIT_MAX_KEYS

    assert (C > ONE_SPLIT_MAX_KEYS) == (C == 1024)
    B, H, Hkv, D = 4, 8, 2, 64
    cache = [t.cuda() for t in random_cache(B, Hkv, C, D, dtype)]
    q = torch.randn(B, Tn, H, D, device="cuda").to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D, device="cuda").to(dtype)
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(), *exact_copy(*cache),
                                            scale=scale, base=base)
    lowp = rope_decode_attention_reference(q, k, v, *expected_cache, scale=scale, base=base)
    got = ops.rope_decode_attention(q, k, v, *cache, scale=scale, base=base)
    check_decode(got, lowp, exact, dtype)
    assert_close(cache[0], expected_cache[0].double(), dtype)  # rotated keys: cos/sin may differ by an ulp
    assert torch.equal(cache[1], expected_cache[1])
    assert torch.equal(cache[2], expected_cache[2]) and torch.equal(cache[3], expected_cache[3])


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_backend", ["triton", "cuda"])
def test_gpu_append_evict_backends(cuda_backend):
    if cuda_backend == "cuda" and not ops.extension().built_with_cuda():
        pytest.skip("CUDA C++ kernels not compiled in")
    try:
        ops.set_backend(cuda_backend=cuda_backend)
        cache = [t.cuda() for t in random_cache(4, 2, 16, 64, torch.bfloat16)]
        k, v = torch.randn(2, 4, 3, 2, 64, device="cuda").to(torch.bfloat16)
        expected = clone_all(*cache)
        kv_append_reference(*expected, k, v)
        ops.kv_append(*cache, k, v)
        assert all(torch.equal(a, b) for a, b in zip(cache, expected))
        counts = torch.tensor([0, 2, -1, 30], dtype=torch.int32, device="cuda")
        kv_evict_reference(expected[2], expected[3], counts)
        ops.kv_evict(cache[2], cache[3], counts)
        assert torch.equal(cache[2], expected[2]) and torch.equal(cache[3], expected[3])
    finally:
        ops.set_backend(cuda_backend="triton")
