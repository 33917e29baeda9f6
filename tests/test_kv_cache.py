"""KV-cache ops against their Torch references: kv_append / kv_evict (bookkeeping and copies must be exact) and
the decode step rope_decode_attention (attention over the ring buffer's window, then append), across dtypes,
batch > 1 with different lengths, GQA, and wrap-around."""

import pytest
import torch

import pygpt.ops as ops
from pygpt.ops.kv_cache import kv_append_reference, kv_evict_reference, rope_decode_attention_reference
from pygpt.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


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


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("B, Hkv, C, D, Tn", [(3, 2, 8, 16, 1), (4, 1, 5, 40, 5), (2, 3, 17, 8, 4)])
def test_kv_append_matches_reference(dtype, B, Hkv, C, D, Tn):
    cache = random_cache(B, Hkv, C, D, dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D).to(dtype)
    expected = clone_all(*cache)
    kv_append_reference(*expected, k, v)
    ops.kv_append(*cache, k, v)
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


def test_eviction_is_bookkeeping_only():
    cache = random_cache(2, 1, 4, 8, torch.float32)
    before = cache[0].clone()
    ops.kv_evict(cache[2], cache[3], torch.tensor([1, 1], dtype=torch.int32))
    assert torch.equal(cache[0], before)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("B, H, Hkv, C, D, Tn, rope", [
    (3, 4, 2, 8, 16, 1, True), (2, 6, 3, 5, 40, 3, True), (4, 8, 1, 16, 8, 1, False), (2, 2, 2, 7, 32, 7, True),
    (2, 4, 2, 9, 7, 2, False), (1, 2, 1, 6, 33, 1, False),  # odd head_dim without RoPE
])
def test_decode_matches_reference(dtype, B, H, Hkv, C, D, Tn, rope):
    cache = random_cache(B, Hkv, C, D, dtype)
    q = torch.randn(B, Tn, H, D).to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D).to(dtype)
    expected_cache = clone_all(*cache)
    want = rope_decode_attention_reference(q, k, v, *expected_cache, rope=rope)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(),
                                            *[t.double() if t.is_floating_point() else t.clone()
                                              for t in clone_all(*cache)], rope=rope)
    got = ops.rope_decode_attention(q, k, v, *cache, rope=rope)
    assert_close(got, exact, dtype, tol={dtype: {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5),
                                                 torch.float16: (3e-3, 3e-3), torch.bfloat16: (3e-2, 3e-2)}[dtype]})
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
    (lambda c: ops.kv_append(*c, torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8)), r"k must have shape \(B, Tn, Hkv, D\)"),
    (lambda c: ops.kv_append(*c, torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)), "cannot append 9 tokens"),
    (lambda c: ops.kv_append(c[0], c[1], c[2].long(), c[3], torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)),
     "lengths must be one of int32"),
    (lambda c: ops.rope_decode_attention(torch.randn(2, 1, 3, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), *c),
     "q must have shape"),
    (lambda c: ops.kv_append(*c, torch.randn(2, 1, 2, 8).half(), torch.randn(2, 1, 2, 8).half()), "k must be one of float32"),
])
def test_bad_inputs(call, match):
    cache = random_cache(2, 2, 8, 8, torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        call(cache)


def test_opcheck():
    cache = random_cache(2, 2, 8, 8, torch.float32)
    k, v = torch.randn(2, 2, 1, 2, 8)
    torch.library.opcheck(torch.ops.pygpt.kv_append.default, (*cache, k, v), test_utils=("test_schema", "test_faketensor"))
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
            return rope_decode_attention_triton(*args, 8 ** -0.5, rope_inv_freq(8), True, advance=advance)
    else:
        decode = ops.rope_decode_attention if impl == "cpp" else rope_decode_attention_reference
    q = torch.randn(3, 2, 4, 8)
    k, v = torch.randn(2, 3, 2, 2, 8)
    held, moved = random_cache(3, 2, 8, 8, torch.float32), random_cache(3, 2, 8, 8, torch.float32)
    counters = clone_all(*held[2:])
    out_held = decode(q, k, v, *held, advance=False)
    out_moved = decode(q, k, v, *moved, advance=True)
    assert torch.equal(held[2], counters[0]) and torch.equal(held[3], counters[1])
    assert not torch.equal(moved[2], counters[0])
    assert torch.equal(out_held, out_moved)
    assert torch.equal(held[0], moved[0]) and torch.equal(held[1], moved[1])


# ---- Triton kernels: through the CPU interpreter here, compiled on a GPU -----------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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


DECODE_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (3e-2, 3e-2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, Hkv, C, D, Tn, rope, splits", [
    (3, 4, 2, 8, 16, 1, True, None), (2, 2, 1, 20, 40, 3, True, None), (2, 2, 2, 6, 8, 1, False, None),
    (3, 8, 2, 70, 24, 2, True, None),  # one program per kv head (the default for short caches), GQA 4, wrapped
    (3, 8, 2, 70, 24, 2, True, 5),  # 5 splits (16-key tiles here) and the merge launch
    (2, 2, 1, 20, 40, 3, True, 2),
])
def test_triton_decode_matches_reference(dtype, B, H, Hkv, C, D, Tn, rope, splits, needs_triton):
    from pygpt.kernels.decode_attention import rope_decode_attention_triton
    from pygpt.ops.rotary import rope_inv_freq

    cache = [t.to(DEVICE) for t in random_cache(B, Hkv, C, D, dtype, seed=3)]
    q = torch.randn(B, Tn, H, D, device=DEVICE).to(dtype)
    k, v = torch.randn(2, B, Tn, Hkv, D, device=DEVICE).to(dtype)
    expected_cache = clone_all(*cache)
    exact = rope_decode_attention_reference(q.double(), k.double(), v.double(),
                                            *[t.double() if t.is_floating_point() else t.clone()
                                              for t in expected_cache], rope=rope)
    rope_decode_attention_reference(q, k, v, *expected_cache, rope=rope)
    got = rope_decode_attention_triton(q, k, v, *cache, D ** -0.5, rope_inv_freq(D, device=DEVICE), rope,
                                       splits=splits)
    assert_close(got, exact, dtype, tol={dtype: DECODE_TOL[dtype]})
    assert_close(cache[0], expected_cache[0].double(), dtype)
    assert torch.equal(cache[1], expected_cache[1])
    assert torch.equal(cache[2], expected_cache[2]) and torch.equal(cache[3], expected_cache[3])


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
    want = rope_decode_attention_reference(q.double(), k.double(), v.double(), *[
        t.double() if t.is_floating_point() else t for t in expected_cache], rope=False)
    assert_close(ops.rope_decode_attention(q, k, v, *cache, rope=False), want, torch.float32)
    assert torch.equal(cache[1], expected_cache[1]) and torch.equal(cache[2], expected_cache[2])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_decode_op(dtype):
    cache = [t.cuda() for t in random_cache(4, 2, 64, 64, dtype)]
    q = torch.randn(4, 1, 8, 64, device="cuda").to(dtype)
    k, v = torch.randn(2, 4, 1, 2, 64, device="cuda").to(dtype)
    expected_cache = clone_all(*cache)
    want = rope_decode_attention_reference(q.double(), k.double(), v.double(),
                                           *[t.double() if t.is_floating_point() else t for t in expected_cache])
    got = ops.rope_decode_attention(q, k, v, *cache)
    assert_close(got, want, dtype, tol={dtype: DECODE_TOL[dtype]})


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
