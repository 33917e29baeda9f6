"""sample: the C++ CPU kernel and the Triton kernel (interpreted on CPU, compiled on GPU) against the exact
truncated-and-renormalised distribution computed in float64: greedy is exact, nothing outside the top-k / top-p
/ min-p set is ever drawn, chi-square goodness of fit over 10^5 draws, determinism of the counter-based RNG,
+-inf and NaN handling, argument errors, opcheck and torch.compile; the same on the GPU for Triton and CUDA C++."""

import functools

import pytest
import torch

import pygpt.ops as ops
from pygpt.ops.sampling import sample_reference

INF = float("inf")


# ----------------------------------------------------------------------------------------------- helpers
def _rows(B, temperature, top_k, top_p, min_p, device="cpu"):
    """The (B,) parameter tensors the op takes."""
    def full(v, dt):
        return v.to(device=device, dtype=dt) if isinstance(v, torch.Tensor) else torch.full((B,), v, dtype=dt,
                                                                                              device=device)
    return (full(temperature, torch.float32), full(top_k, torch.int32), full(top_p, torch.float32),
            full(min_p, torch.float32))


def _kernel(name):
    """A callable (logits, T, k, p, min_p, rng_state) -> ids running one kernel directly (no wrapper).
    "triton-chunks": the Triton kernel with 64-wide chunks, so that a row spans many of them;
    "triton-fast": also one row a program, which takes the fast path (histogram, compaction) for V > 64;
    "triton-split": each row over 3 programs (the split path the GPU takes for small batches);
    "cuda-sim": the CUDA C++ kernel on the CPU simulator of tests/cuda_sim."""
    if name == "cpp":
        return torch.ops.pygpt.sample
    if name == "cuda-sim":
        from cuda_sim import sim_ops

        return sim_ops().sample_cuda
    if name.startswith("triton"):
        pytest.importorskip("triton")
        from pygpt.kernels.sample import sample_triton

        if name == "triton":
            return sample_triton
        if name == "triton-split":  # small chunks under the interpreter: segments of several chunks
            return functools.partial(sample_triton, splits=3, block_v=None if torch.cuda.is_available() else 64)
        return functools.partial(sample_triton, block_v=64, rows=1 if name == "triton-fast" else None)
    return torch.ops.pygpt.sample_cuda


def _device(name):
    if name in ("cpp", "cuda-sim") or (name.startswith("triton") and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


def exact_probs(logits, temperature, top_k, top_p, min_p):
    """(B, V) float64 probabilities of the truncated-and-renormalised distribution (rows sampled, not greedy).

    Follows the reference: top-k (ties stay), softmax, top-p (shortest prefix by decreasing p reaching top_p, and
    the tokens tied with its last), min-p relative to the max; a +inf row is uniform over its +inf entries.
    """
    B, V = logits.shape
    t, k, p, mp = (v.double().cpu() for v in _rows(B, temperature, top_k, top_p, min_p))
    x = logits.double().cpu()
    pos_inf = x == INF
    x = torch.where(pos_inf.any(-1, keepdim=True), torch.where(pos_inf, 0.0, -INF), x)
    z = (x - x.amax(-1, keepdim=True)) / t[:, None]
    use_k = (k > 0) & (k < V)
    kth = z.sort(-1, descending=True).values.gather(1, (torch.where(use_k, k, 1).long() - 1)[:, None])
    z = z.masked_fill(use_k[:, None] & (z < kth), -INF)
    probs = torch.softmax(z, -1)
    sorted_p = probs.sort(-1, descending=True).values
    last = (sorted_p.cumsum(-1) < p[:, None]).sum(-1, keepdim=True).clamp(max=V - 1)  # the prefix's last token
    probs = probs.masked_fill((p < 1)[:, None] & (probs < sorted_p.gather(1, last)), 0.0)
    probs = probs.masked_fill(probs < mp[:, None] * probs.amax(-1, keepdim=True), 0.0)
    return probs / probs.sum(-1, keepdim=True)


def allowed(logits, temperature, top_k, top_p, min_p, slack=1e-5):
    """(B, V) bool: the tokens that may be drawn, with `slack` on the top-p / min-p cuts for fp32 rounding."""
    B = logits.shape[0]
    t, k, p, mp = _rows(B, temperature, top_k, top_p, min_p)
    p = torch.where(p < 1, (p + slack).clamp(max=1.0), p)
    return exact_probs(logits, t, k, p, mp * (1 - slack)) > 0


def chi2_pvalue(ids, probs):
    """p-value of the chi-square goodness of fit of the drawn ids to probs (V,); zero-probability ids fail.
    The least likely tokens are pooled into one cell until it expects >= 5 draws."""
    counts = torch.bincount(ids.cpu(), minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, f"drew tokens of probability 0: {(~support & (counts > 0)).nonzero()}"
    order = probs[support].argsort(descending=True)
    expected = counts.sum() * probs[support][order]
    observed = counts[support][order]
    tail = len(order)
    while tail > 1 and expected[tail - 1:].sum() < 5:
        tail -= 1
    if tail < len(order):
        expected = torch.cat([expected[:tail - 1], expected[tail - 1:].sum()[None]])
        observed = torch.cat([observed[:tail - 1], observed[tail - 1:].sum()[None]])
    assert len(expected) > 1 and expected.min() >= 5, "chi-square needs >= 5 expected counts per cell"
    stat = ((observed - expected) ** 2 / expected).sum()
    dof = len(expected) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2.0))


def first_argmax(logits):
    x = logits.double()
    is_max = x == x.amax(-1, keepdim=True)
    return torch.where(is_max, torch.arange(x.shape[1]), x.shape[1]).amin(-1)


KERNELS = ["cpp", "triton", "triton-chunks", "triton-fast", "triton-split", "cuda-sim"]
CHI2_ROW = torch.tensor([2.0, 1.5, 1.4, 0.9, 0.7, 0.3, 0.1, -0.2, -0.5, -1.0, 1.8, -2.0, -INF, 1.0, 0.5, 0.0])
# (temperature, top_k, top_p, min_p): every truncation on its own and together.
CHI2_CASES = [(1.0, 0, 1.0, 0.0), (0.8, 6, 1.0, 0.0), (1.3, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.2), (0.8, 9, 0.85, 0.05)]


# ----------------------------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_is_exact_argmax_with_ties_to_lowest_id(kernel, dtype):
    device = _device(kernel)
    B, V = 7, 301
    # Few distinct values, so most rows tie; a strided view (row stride 320) as logits[:, -1, :] would be.
    wide = torch.randint(-3, 4, (B, 320)).to(dtype)
    wide[3, 5:] = -INF  # max at a tie of few
    wide[4, 100] = INF  # +inf wins
    logits = wide[:, :V].to(device)
    want = first_argmax(logits.cpu())
    state = ops.make_rng_state(0, device)
    for t, k in [(0.0, 0), (1.0, 1), (0.0, 7)]:
        ids = _kernel(kernel)(logits, *_rows(B, t, k, 1.0, 0.0, device), state)
        assert torch.equal(ids.cpu(), want), (t, k)
    assert torch.equal(sample_reference(logits.cpu(), 0.0), want)


# ----------------------------------------------------------------------------------------------- support
def _batch(kernel, B):
    """Fewer rows for the one-row-a-program fast path under the interpreter (a program costs ~0.1 s there) and
    for the simulated CUDA C++ kernel (a block of 512 simulated threads costs 1-10 ms)."""
    if kernel == "cuda-sim":
        return min(B, 600)
    return min(B, 8) if kernel == "triton-fast" and not torch.cuda.is_available() else B


NEVER_OUTSIDE = [(kernel, V) for kernel in ("cpp", "triton", "cuda-sim") for V in (1, 2, 37, 1000, 3001)] + \
    [("triton-chunks", 37), ("triton-chunks", 1000), ("triton-fast", 100), ("triton-fast", 300)]


@pytest.mark.parametrize("kernel, V", NEVER_OUTSIDE)
def test_never_samples_outside_the_truncated_set(kernel, V):
    device = _device(kernel)
    B = _batch(kernel, 96)
    logits = torch.randn(B, V) * 3
    logits[::5, ::3] = -INF
    logits[::5, 0] = 1.0  # rows with -inf entries keep a finite one
    # Per-row settings cycling through every truncation and mixes of them, greedy rows among them.
    settings = [(1.0, 0, 1.0, 0.0), (0.7, 5, 1.0, 0.0), (1.0, 0, 0.6, 0.0), (1.5, 0, 1.0, 0.1),
                (0.9, 20, 0.9, 0.05), (0.0, 0, 1.0, 0.0), (2.0, 3, 0.5, 0.3), (1.0, V + 5, 0.95, 0.0)]
    cols = list(zip(*[settings[i % len(settings)] for i in range(B)]))
    params = [torch.tensor(c) for c in cols]
    ok = allowed(logits, *params)
    greedy = params[0] == 0
    ok[greedy] = torch.nn.functional.one_hot(first_argmax(logits[greedy]), V).bool()
    draws = 1 if (kernel.startswith("triton") and device == "cpu") or kernel == "cuda-sim" else 40
    state = ops.make_rng_state(123, device)
    logits_d = logits.to(device)
    args = _rows(B, *params, device=device)
    for _ in range(draws):
        ids = _kernel(kernel)(logits_d, *args, state).cpu()
        state[1] += 1
        assert ((ids >= 0) & (ids < V)).all()
        assert ok[torch.arange(B), ids].all(), f"rows {(~ok[torch.arange(B), ids]).nonzero().flatten().tolist()}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_infinite_logits(kernel):
    device = _device(kernel)
    V = 50
    logits = torch.randn(4, V)
    logits[0, [3, 17, 40]] = INF  # uniform among the +inf entries
    logits[1, :] = -INF
    logits[1, [7, 9]] = torch.tensor([0.0, 0.5])  # -inf never drawn
    logits[2, [1, 2]] = INF
    logits[2, 3:] = -INF
    B = _batch(kernel, 4000)
    rows = torch.arange(B) % 4
    x = logits[rows].to(device)
    for case in [(1.0, 0, 1.0, 0.0), (1.0, 5, 1.0, 0.0), (0.5, 0, 0.5, 0.0)]:  # fast path: b_k, b_p
        ids = _kernel(kernel)(x, *_rows(B, *case, device=device), ops.make_rng_state(5, device)).cpu()
        ok = allowed(logits, *_rows(4, *case))
        assert ok[rows, ids].all(), f"rows {(~ok[rows, ids]).nonzero().flatten().tolist()}"
        assert set(ids[rows == 1].tolist()) <= {7, 9}  # (-inf never drawn, whatever the oracle says)
    if B < 4000:
        return
    assert set(ids[rows == 0].tolist()) == {3, 17, 40}  # top-p 0.5 of three tied +inf: all three stay
    assert torch.bincount(ids[rows == 0], minlength=V)[[3, 17, 40]].min() > 250  # ~333 each
    ids = _kernel(kernel)(x, *_rows(B, 1.0, 0, 1.0, 0.0, device), ops.make_rng_state(5, device)).cpu()
    assert set(ids[rows == 1].tolist()) == {7, 9}
    assert set(ids[rows == 2].tolist()) == {1, 2}


# ----------------------------------------------------------------------------------------------- distribution
@pytest.mark.parametrize("case", CHI2_CASES)
def test_cpp_distribution_chi_square(case):
    B = 100_000
    logits = CHI2_ROW[None].expand(B, -1)  # row stride 0: one row drawn 10^5 times in one call
    ids = torch.ops.pygpt.sample(logits, *_rows(B, *case), ops.make_rng_state(2024))
    assert chi2_pvalue(ids, exact_probs(CHI2_ROW[None], *case)[0]) > 1e-3


def test_cpp_distribution_large_vocab_paths():
    """No top-k over a large vocabulary (the histogram top-p search), and top-k with > 4096 tied candidates."""
    B, V = 20_000, 5000
    row = torch.linspace(-5.0, -7.0, V)
    row[:8] = torch.tensor([3.0, 2.5, 2.4, 2.0, 1.0, 0.5, 0.2, 0.0])
    case = (1.0, 0, 0.9, 0.0)
    ids = torch.ops.pygpt.sample(row[None].expand(B, V), *_rows(B, *case), ops.make_rng_state(7))
    probs = exact_probs(row[None], *case)[0]
    assert probs[8:].sum() > 0.05 and (probs[8:] == 0).sum() > 100  # the cut lands deep in the tail
    assert allowed(row[None], *case)[0, ids].all()
    head = torch.cat([probs[:8], probs[8:].sum()[None]])
    assert chi2_pvalue(ids.clamp(max=8), head) > 1e-3
    ties = torch.zeros(V)
    ids = torch.ops.pygpt.sample(ties[None].expand(B, V), *_rows(B, 1.0, 10, 1.0, 0.0), ops.make_rng_state(8))
    coarse = torch.bincount(ids // 500, minlength=10)  # uniform over all V tied tokens
    assert chi2_pvalue(ids // 500, torch.full((10,), 0.1, dtype=torch.float64)) > 1e-3, coarse


def test_triton_distribution_chi_square(needs_triton):
    """All truncations at once, 10^5 identical rows in one (interpreted) launch."""
    from pygpt.kernels.sample import sample_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = CHI2_CASES[-1]
    B = 100_000
    ids = sample_triton(CHI2_ROW[None].expand(B, -1).to(device), *_rows(B, *case, device=device),
                        ops.make_rng_state(2024, device))
    assert chi2_pvalue(ids, exact_probs(CHI2_ROW[None], *case)[0]) > 1e-3


def test_triton_distribution_across_chunks(needs_triton):
    """A row spanning 2 chunks (the reservoir draw across chunks), 10^4 rows in one interpreted launch."""
    from pygpt.kernels.sample import sample_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 1.5  # distinct values: no ties at a cut
    case = (1.2, 40, 0.95, 0.02)
    B = 10_000
    ids = sample_triton(row[None].expand(B, -1).to(device), *_rows(B, *case, device=device),
                        ops.make_rng_state(77, device), block_v=32)
    assert chi2_pvalue(ids, exact_probs(row[None], *case)[0]) > 1e-3


def test_negative_int64_top_k_is_an_error_not_a_wrapped_int32():
    """-2^32 + 1 as int32 would be 1 (greedy): the value must reach the kernel's range check negative."""
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        ops.sample(torch.randn(2, 100), 1.0, torch.full((2,), -2**32 + 1, dtype=torch.int64))


def test_sampling_rows_are_what_the_op_takes():
    """sampling_rows: checked numbers -> the op's (B,) tensors, passed through as they are (no per-call copy) and
    drawing the same ids as the numbers."""
    from pygpt.ops.sampling import _rows

    rows = ops.sampling_rows(3, 0.8, 5, 0.9, 0.05)
    assert [r.dtype for r in rows] == [torch.float32, torch.int32, torch.float32, torch.float32]
    assert all(_rows(r, 3, 100, r.dtype, r.device, cache=True) is r for r in rows)
    logits = torch.randn(3, 100)
    assert torch.equal(ops.sample(logits, *rows, rng_state=ops.make_rng_state(1)),
                       ops.sample(logits, 0.8, 5, 0.9, 0.05, rng_state=ops.make_rng_state(1)))
    with pytest.raises(ValueError, match="top_p must be in"):
        ops.sampling_rows(2, top_p=1.5)
    with pytest.raises(TypeError, match="top_k must be an int"):
        ops.sampling_rows(2, top_k=2.5)


TIED_ROWS = torch.tensor([[1.0, 1.0, 1.0] + [-5.0] * 13, [-1.0, 2.0, 0.5, 2.0, 2.0, 0.5] + [-3.0] * 10])


@pytest.mark.parametrize("kernel", ["reference", *KERNELS])
def test_top_p_keeps_ties_at_the_cut(kernel):
    """Tokens tied with the last one top-p keeps all stay, equally likely (as top-k keeps ties): three equal logits
    and top-p 0.5 draw each of the three a third of the time, never the rest. (Random rows have no ties.)"""
    B = _batch(kernel, 6000)
    rows = torch.arange(B) % 2
    case = (1.0, 0, 0.5, 0.0)
    if kernel == "reference":
        ids = sample_reference(TIED_ROWS[rows], *_rows(B, *case), generator=torch.Generator().manual_seed(0))
    else:
        device = _device(kernel)
        ids = _kernel(kernel)(TIED_ROWS[rows].to(device), *_rows(B, *case, device=device),
                              ops.make_rng_state(9, device)).cpu()
    probs = exact_probs(TIED_ROWS, *_rows(2, *case))
    assert (probs > 0).sum(-1).tolist() == [3, 3]
    for r in range(2):
        if B >= 600:  # (>= 300 draws a row: >= 100 expected a token)
            assert chi2_pvalue(ids[rows == r], probs[r]) > 1e-3
        else:  # a few rows under the interpreter's one-program path: support only
            assert (probs[r, ids[rows == r]] > 0).all()


def test_reference_distribution_chi_square():
    B = 100_000
    case = CHI2_CASES[-1]
    g = torch.Generator().manual_seed(0)
    ids = sample_reference(CHI2_ROW[None].expand(B, -1), *_rows(B, *case), generator=g)
    assert chi2_pvalue(ids, exact_probs(CHI2_ROW[None], *case)[0]) > 1e-3


# ----------------------------------------------------------------------------------------------- rng
@pytest.mark.parametrize("kernel", KERNELS)
def test_same_seed_same_ids_and_offset_advances(kernel):
    device = _device(kernel)
    B, V = (4 if kernel in ("triton-fast", "triton-split") else 33), 257
    logits = torch.randn(B, V, device=device)
    args = _rows(B, 1.0, 0, 1.0, 0.0, device)
    run = _kernel(kernel)
    a = run(logits, *args, ops.make_rng_state(11, device))
    assert torch.equal(a, run(logits, *args, ops.make_rng_state(11, device)))
    assert not torch.equal(a, run(logits, *args, ops.make_rng_state(12, device)))
    state = ops.make_rng_state(11, device)
    assert torch.equal(run(logits, *args, state), a)
    assert state.tolist() == [11, 0]  # the kernel only reads it
    # Rows of one call draw independently: identical rows give different ids.
    same = run(logits[:1].expand(B, V), *args, ops.make_rng_state(11, device))
    assert len(set(same.tolist())) > min(5, B - 2)


TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel called directly: compiled on a GPU


def test_triton_fast_path_falls_back_per_row(needs_triton):
    """Rows whose candidate set overflows the fast path's tile, or whose settings keep the whole vocabulary, take
    the general path inside the same launch; the result is still within the truncated set."""
    from pygpt.kernels import sample as kernels

    V = 1500  # > FAST_CAP candidates possible
    logits = torch.randn(4, V)
    logits[1] = 0.01 * torch.randn(V)  # flat: top-p 0.9 keeps ~1350 tokens (> the tile)
    params = [torch.tensor(v) for v in ([1.0, 1.0, 0.7, 1.0], [1200, 0, 20, 0], [1.0, 0.9, 0.9, 1.0],
                                         [0.0, 0.0, 0.0, 0.0])]
    assert (exact_probs(logits, *params) > 0).sum(-1)[:2].min() > kernels.FAST_CAP
    ids = kernels.sample_triton(logits.to(TRITON_DEVICE), *_rows(4, *params, device=TRITON_DEVICE),
                                ops.make_rng_state(3, TRITON_DEVICE), block_v=256, rows=1).cpu()
    assert allowed(logits, *params)[torch.arange(4), ids].all()


@pytest.mark.parametrize("splits, block_v", [(2, 256), (7, 128)])
def test_triton_split_path_matches_one_program_a_row(needs_triton, splits, block_v):
    """The split path (a row over several programs: partial max / histogram, compaction per segment) draws the
    ids of the one-program fast path on these rows with top-k, where both take the tile (or both the general
    path: +inf, bins beyond fp32's exact range), and flags the same bad rows. Without top-k the split path draws
    the surely kept tokens (top-p / min-p) in another order than the tile, so those draws are checked against
    the truncated set instead."""
    from pygpt.kernels.sample import sample_triton

    g = torch.Generator().manual_seed(5)
    B, V = 14, 1500
    logits = torch.randn(B, V, generator=g) * 2
    logits[1] = 0.01 * torch.randn(V, generator=g)  # flat: top-p 0.9 overflows the tile
    logits[2, 700] = INF
    logits[3, 5] = float("nan")
    logits[4] = -INF
    logits[5, 1400:] += 6  # the head in the last segment
    logits[6] *= 50  # at T = 1e-5 the bins are beyond fp32's exact integers
    logits[9, 100:110] = logits[9, 100]  # ties at the top-k cut
    params = [torch.tensor(v) for v in (
        [0.8, 1.0, 1.0, 1.0, 1.0, 0.7, 1e-5, 0.0, 1.3, 0.9, 1.0, -1.0, 0.5, 0.9],
        [50, 0, 10, 10, 5, 3, 20, 0, 0, 200, 1, 5, 0, 0],
        [0.9, 0.9, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.01, 0.3])]  # 12, 13: min-p alone
    mass_dependent = (params[1] == 0) & ((params[2] < 1) | (params[3] > 0))
    ok = allowed(logits.nan_to_num(nan=0.0), *params)
    for seed in range(2):
        args = (logits.to(TRITON_DEVICE), *_rows(B, *params, device=TRITON_DEVICE),
                ops.make_rng_state(seed, TRITON_DEVICE))
        one = sample_triton(*args, block_v=block_v, rows=1).cpu()
        split = sample_triton(*args, block_v=block_v, splits=splits).cpu()
        assert torch.equal(split[~mass_dependent], one[~mass_dependent]), (split, one)
        assert one[[2, 3, 4, 7, 10, 11]].tolist() == [700, -1, -2, int(logits[7].argmax()), int(logits[10].argmax()),
                                                       -3]
        rows = mass_dependent.nonzero()[:, 0]
        assert ok[rows, split[rows]].all()


def test_triton_split_path_min_p_cut_at_a_bin_edge(needs_triton):
    """The split path's bins are floor(8 x / T), not bins of z: with the max on a bin edge, a token at z = -1.1
    (p = 0.333 >= min_p 0.33) lies in bin 9 while -8 log(min_p) = 8.87; the cut must still keep it."""
    from pygpt.kernels.sample import sample_triton

    B, V = 32, 1500
    logits = torch.full((B, V), -INF)
    logits[:, [3, 900, 1200, 10]] = torch.tensor([0.0, -1.1, -0.5, -3.0])
    args = (logits.to(TRITON_DEVICE), *_rows(B, 1.0, 0, 1.0, 0.33, TRITON_DEVICE),
            ops.make_rng_state(9, TRITON_DEVICE))
    split = sample_triton(*args, block_v=256, splits=3).cpu()
    assert set(split.tolist()) == {3, 900, 1200}


def _split_run(logits, params, seed, seg, tile):
    """The split path on logits (B, V) in segments of `seg` columns read `tile` at a time (general-path chunks of
    1024) -> (its plan (B, 4) [candidates, fast path taken, bits of b_c, 0], ids (B,)), on the CPU."""
    from pygpt.kernels import sample as kernels

    B = logits.shape[0]
    plan = torch.zeros(B, 4, dtype=torch.int32, device=TRITON_DEVICE)
    out = torch.empty(B, dtype=torch.int64, device=TRITON_DEVICE)
    kernels._sample_split(logits.to(TRITON_DEVICE), *(p.to(TRITON_DEVICE) for p in params),
                          ops.make_rng_state(seed, TRITON_DEVICE), out, seg, tile, 1024, plan=plan)
    return plan.cpu(), out.cpu()


def test_triton_split_path_takes_the_tile_for_top_p_09(needs_triton):
    """top-p 0.9 over a row whose mass is spread over many bins (the benchmark's logits): the bins' mass lower
    bounds add up to ~0.85 of the mass and never reach 0.9, so the cut also uses the upper bound of the mass
    below it; the candidates then fit the tile and the fast path runs (it fell back to the general path)."""
    from pygpt.kernels import sample as kernels

    B, V = 3, 3000
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(0)) * 3
    params = _rows(B, 0.8, 0, 0.9, 0.0)
    plan, out = _split_run(logits, params, 0, 1024, 1024)
    assert plan[:, 1].tolist() == [1, 1, 1], plan
    assert (plan[:, 0] < kernels.FAST_CAP).all()
    assert allowed(logits, *params)[torch.arange(B), out].all()


@pytest.mark.parametrize("case", [(0.8, 50, 0.9, 0.0), (0.8, 0, 0.9, 0.0)])
def test_triton_split_path_plan_for_the_benchmark_rows(needs_triton, case):
    """bench_sample's B1 V128256 rows (randn * 3, T 0.8), split as on an H100: both settings take the fast path
    (top-p alone: a ~1000-token nucleus, its boundary bins in the tile and the top bins surely kept)."""
    from pygpt.kernels import sample as kernels

    V = 128256
    S = kernels.split_count(1, V, 132)
    seg = -(-V // S)  # as sample_triton sizes the segments and their chunks
    tile = min(kernels.SPLIT_MAX_TILE, 1 << (seg - 1).bit_length())
    seg = -(-seg // tile) * tile
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 3
    params = _rows(1, *case)
    plan, out = _split_run(logits, params, 0, seg, tile)
    assert plan[0, 1] == 1 and 0 < plan[0, 0] < kernels.FAST_CAP, plan
    assert allowed(logits, *params)[0, out[0]]


@pytest.mark.parametrize("case", [(1.0, 0, 1.0, 0.0), (0.9, 0, 0.9, 0.0), (1.2, 0, 1.0, 0.03),
                                  (1.0, 0, 0.7, 0.02)])
def test_triton_split_path_surely_kept_tokens(needs_triton, case):
    """Without top-k the split path leaves the tokens that are surely kept (plain sampling: all; top-p / min-p:
    the top bins) out of the tile and draws them segment by segment: every draw is in the truncated set, the
    likely tokens all come up, and the plan shows that this path ran. (The chi-square of it runs on the GPU, at
    10^5 draws: test_gpu_distribution_chi_square with triton-split.)"""
    B, V = 40, 40
    logits = (torch.randn(V, generator=torch.Generator().manual_seed(1)) * 0.8)[None].expand(B, V).contiguous()
    params = _rows(B, *case)
    plan, out = _split_run(logits, params, 5, 16, 16)
    surely_kept_bins = plan[:, 2].view(torch.float32)
    assert (plan[:, 1] == 1).all() and (surely_kept_bins > 0).all(), plan
    assert allowed(logits, *params)[torch.arange(B), out].all()
    likely = (exact_probs(logits[:1], *params)[0] > 0.1).nonzero()[:, 0]  # P(missed in 40 draws) < 0.015 each
    assert set(likely.tolist()) <= set(out.tolist())


def test_public_sample_rng_state_and_generator():
    B, V = 16, 100
    logits = torch.randn(B, V)
    state = ops.make_rng_state(42)
    first = ops.sample(logits, 0.9, 20, 0.9, rng_state=state)
    assert state.tolist() == [42, 1]
    second = ops.sample(logits, 0.9, 20, 0.9, rng_state=state)
    assert state.tolist() == [42, 2]
    assert not torch.equal(first, second)
    assert torch.equal(ops.sample(logits, 0.9, 20, 0.9, rng_state=torch.tensor([42, 1])), second)
    # generator= keeps working and is reproducible
    draws = [ops.sample(logits, 1.0, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*draws)
    assert ops.sample(logits).shape == (B,)  # torch's global RNG
    big = 2**64 - 5  # any 64-bit seed
    assert ops.make_rng_state(big).tolist() == [big - 2**64, 0]


def test_per_row_parameter_tensors():
    B, V = 6, 40
    logits = torch.randn(B, V)
    t = torch.tensor([0.0, 1.0, 0.5, 1.0, 2.0, 1.0])
    k = torch.tensor([0, 1, 3, 0, 0, 2])
    ids = ops.sample(logits, t, k, torch.tensor(0.9), min_p=0.0, rng_state=ops.make_rng_state(1))
    argmax = first_argmax(logits)
    assert ids[0] == argmax[0] and ids[1] == argmax[1]
    assert ids[2] in logits[2].topk(3).indices and ids[5] in logits[5].topk(2).indices


def test_reference_backend_matches_semantics():
    B, V = 64, 30
    logits = torch.randn(B, V)
    try:
        ops.set_backend("reference")
        state = ops.make_rng_state(9)
        ids = ops.sample(logits, 0.8, 5, 0.9, 0.05, rng_state=state)
        assert state.tolist() == [9, 1]
        assert torch.equal(ids, ops.sample(logits, 0.8, 5, 0.9, 0.05, rng_state=torch.tensor([9, 0])))
        with pytest.raises(ValueError, match="top_p must be in"):
            ops.sample(logits, top_p=torch.full((B,), 1.5))
    finally:
        ops.set_backend("auto")
    assert allowed(logits, 0.8, 5, 0.9, 0.05)[torch.arange(B), ids].all()


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(logits=torch.randn(2, 3, 4)), ValueError, "logits must have 2 dimensions"),
    (dict(logits=torch.randn(2, 0)), ValueError, "empty vocabulary"),
    (dict(logits=torch.randint(0, 5, (2, 4))), TypeError, "logits must be one of float32"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(min_p=1.0), ValueError, r"min_p must be in \[0, 1\)"),
    (dict(min_p=-0.1), ValueError, r"min_p must be in \[0, 1\)"),
    (dict(temperature=-1.0), ValueError, "temperature must be >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature must be >= 0"),
    (dict(temperature=torch.ones(3)), ValueError, r"temperature must be a number or a tensor of shape \(2,\)"),
    (dict(top_k=torch.ones(2)), TypeError, "top_k must be an integer tensor"),
    (dict(top_k=torch.tensor([3, -1])), ValueError, r"top_k must be >= 0 .*got -1 \(row 1\)"),
    (dict(min_p=torch.tensor([0.5, 1.0])), ValueError, r"min_p must be in \[0, 1\).*\(row 1\)"),
    (dict(top_p=torch.ones(2, device="meta")), ValueError, "top_p must be on cpu"),
    (dict(logits=torch.tensor([[0.0, float("nan")], [1.0, 2.0]])), ValueError, r"logits contain NaN \(row 0\)"),
    (dict(logits=torch.tensor([[0.0, 1.0], [-INF, -INF]])), ValueError, r"all -inf .*\(row 1\)"),
    (dict(logits=torch.tensor([[0.0, 1.0], [-INF, -INF]]), temperature=0.0), ValueError, "all -inf"),
    (dict(rng_state=torch.zeros(3, dtype=torch.int64)), ValueError, r"rng_state must have shape \(2,\)"),
    (dict(rng_state=torch.zeros(2)), TypeError, "rng_state must be one of int64"),
])
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    kwargs = {"logits": torch.randn(2, 5), **kwargs}
    with pytest.raises(error, match=match):
        ops.sample(**kwargs)


def test_a_temperature_beyond_float32_is_float32s_infinity():
    """A Python temperature above float32's range is what float32 rounds it to, +inf (a uniform draw over the
    kept tokens), not an overflow error from building the (B,) parameter tensor."""
    logits = torch.randn(4, 50)
    huge = ops.sample(logits, temperature=1e39, top_k=7, rng_state=ops.make_rng_state(3))
    infinite = ops.sample(logits, temperature=float("inf"), top_k=7, rng_state=ops.make_rng_state(3))
    assert torch.equal(huge, infinite)
    assert torch.equal(ops.sampling_rows(2, temperature=1e39)[0], torch.full((2,), float("inf")))


def test_op_checks_shapes_and_flags_bad_rows():
    logits = torch.randn(3, 8)
    args = list(_rows(3, 1.0, 0, 1.0, 0.0))
    state = ops.make_rng_state(0)
    with pytest.raises(RuntimeError, match="top_k must be int32"):
        torch.ops.pygpt.sample(logits, args[0], args[1].long(), args[2], args[3], state)
    with pytest.raises(RuntimeError, match=r"temperature must have shape \(3,\)"):
        torch.ops.pygpt.sample(logits, args[0][:2], *args[1:], state)
    with pytest.raises(RuntimeError, match="last dimension must be contiguous"):
        torch.ops.pygpt.sample(torch.randn(8, 3).t(), *args, state)
    # Data errors never raise inside the op: -3 bad parameter, -1 NaN, -2 all -inf.
    logits[1, 2] = float("nan")
    logits[2] = -INF
    args[2] = torch.tensor([1.5, 1.0, 1.0])
    assert torch.ops.pygpt.sample(logits, *args, state).tolist() == [-3, -1, -2]


def test_strided_and_low_precision_logits():
    B, V = 5, 70
    full = torch.randn(B, 3, V)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = full.to(dtype)[:, -1, :]  # row stride 3V
        ids = ops.sample(x, 0.7, 4, rng_state=ops.make_rng_state(3))
        assert allowed(x.float(), 0.7, 4, 1.0, 0.0)[torch.arange(B), ids].all()
    y = torch.randn(B, V, 2)[:, :, 0]  # last dim not contiguous: copied
    assert torch.equal(ops.sample(y, 0.0), first_argmax(y))


@pytest.mark.parametrize("kernel", KERNELS)
def test_low_precision_logits_sample_as_their_float32_values(kernel):
    """The kernels widen logits to float32 as they load them, so bf16 / fp16 logits and their float32 upcast give
    the same ids for the same state (the engine samples the model's bf16 logits without a cast)."""
    device = _device(kernel)
    B, V = (6 if kernel == "cpp" or torch.cuda.is_available() else 2), 257  # (the interpreter is slow)
    for dtype in (torch.bfloat16, torch.float16):
        logits = (torch.randn(B, V) * 3).to(dtype).to(device)
        for t, k, p, mp in [(0.8, 0, 1.0, 0.0), (1.0, 10, 0.9, 0.05)]:
            args = _rows(B, t, k, p, mp, device)
            low = _kernel(kernel)(logits, *args, ops.make_rng_state(11, device))
            wide = _kernel(kernel)(logits.float(), *args, ops.make_rng_state(11, device))
            assert torch.equal(low, wide), (dtype, t, k, p, mp)


# ----------------------------------------------------------------------------------------------- torch.library
def test_opcheck():
    logits = torch.randn(4, 33)
    for dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(torch.ops.pygpt.sample.default,
                              (logits.to(dtype), *_rows(4, 0.8, 5, 0.9, 0.0), ops.make_rng_state(1)))


def test_torch_compile_fullgraph():
    logits = torch.randn(8, 64)
    t = torch.full((8,), 0.8)

    def step(x, state):
        return ops.sample(x * 1.0, t, 10, 0.9, 0.0, rng_state=state)

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    state = ops.make_rng_state(4)
    ids = compiled(logits, state)
    assert state.tolist() == [4, 1]
    assert torch.equal(ids, ops.sample(logits, t, 10, 0.9, rng_state=ops.make_rng_state(4)))


# ----------------------------------------------------------------------------------------------- CUDA C++ simulated
# The kernel's paths: V <= 512 (one element a thread) goes to the general path (bisection of the thresholds
# over the key range); a longer row tries the fast path (histogram, compaction, bitonic sort) and falls back
# to the general one when more than 1024 candidates remain. The kernel-generic tests above run it as "cuda-sim"
# (greedy, support, +-inf, ties, determinism); here the distributions.
def test_sample_cuda_general_path_distribution(cuda_sim):
    case = (0.8, 9, 0.85, 0.05)  # every truncation at once
    B = 1500
    ids = cuda_sim.sample_cuda(CHI2_ROW[None].expand(B, -1), *_rows(B, *case), ops.make_rng_state(2024))
    assert chi2_pvalue(ids, exact_probs(CHI2_ROW[None], *case)[0]) > 1e-3


LARGE_ROW = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 0.5
LARGE_ROW[:12] += torch.linspace(9, 5, 12)


@pytest.mark.parametrize("case", [(1.0, 20, 0.9, 0.0), (0.7, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.01),
                                  (1.0, 0, 0.95, 0.0)])
def test_sample_cuda_large_vocab_distribution(cuda_sim, case):
    """Top-k, a sharp top-p and min-p keep few tokens (the fast path); top-p 0.95 keeps most of the tail (more
    candidates than the fast path sorts: the general path)."""
    B = 3000 if case[2] < 0.95 else 1000  # (the general path costs ~6 ms a row here, the fast path ~1 ms)
    ids = cuda_sim.sample_cuda(LARGE_ROW[None].expand(B, -1), *_rows(B, *case), ops.make_rng_state(3))
    probs = exact_probs(LARGE_ROW[None], *case)[0]
    assert allowed(LARGE_ROW[None], *case)[0, ids].all()
    assert chi2_pvalue(ids.clamp(max=12), torch.cat([probs[:12], probs[12:].sum()[None]])) > 1e-3


def test_sample_cuda_bad_rows_and_greedy_over_blocks(cuda_sim):
    logits = torch.randn(5, 2000)
    logits[1, 7] = float("nan")
    logits[2] = -INF
    args = list(_rows(5, 0.0, 0, 1.0, 0.0))
    args[2] = torch.tensor([1.0, 1.0, 1.0, 1.5, 1.0])  # row 3: top_p out of range
    ids = cuda_sim.sample_cuda(logits, *args, ops.make_rng_state(0))
    assert ids[1:4].tolist() == [-1, -2, -3]
    assert ids[[0, 4]].tolist() == first_argmax(logits[[0, 4]]).tolist()


def test_sample_cuda_results_do_not_depend_on_the_thread_schedule(cuda_sim, monkeypatch):
    """Under drawn schedules (CUDA_SIM_SCHEDULE_SEED: block, thread and warp orders) the ids stay the same: no
    barrier is missing."""
    logits = torch.randn(6, 3000) * 2
    cases = [(0.8, 50, 0.9, 0.0), (1.0, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05)]
    small = torch.randn(6, 100)
    runs = []
    for seed in ("", "1", "2"):
        monkeypatch.setenv("CUDA_SIM_SCHEDULE_SEED", seed)
        runs.append([cuda_sim.sample_cuda(x, *_rows(6, *case), ops.make_rng_state(4)) for x in (logits, small)
                     for case in cases])
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


# ----------------------------------------------------------------------------------------------- GPU
GPU_KERNELS = ["triton", "triton-split", "cuda"]


def _gpu_kernel_or_skip(kernel):
    if kernel == "cuda" and not ops.extension().built_with_cuda():
        pytest.skip("CUDA C++ kernels not compiled in")
    return _kernel(kernel)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", GPU_KERNELS)
def test_gpu_greedy_support_and_determinism(kernel):
    run = _gpu_kernel_or_skip(kernel)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for V in (1, 65, 32000, 128256):
            B = 64
            logits = (torch.randn(B, V) * 4).to(dtype)
            if V > 1:  # some rows half -inf (a one-token row of -inf would be an error row)
                logits[::7, ::2] = -INF
                logits[::7, 1] = 0.0
            x = logits.cuda()
            greedy = run(x, *_rows(B, 0.0, 0, 1.0, 0.0, "cuda"), ops.make_rng_state(0, "cuda"))
            assert torch.equal(greedy.cpu(), first_argmax(logits.float()))
            for case in [(0.8, 50, 0.9, 0.0), (1.0, 0, 0.9, 0.0), (1.2, 0, 1.0, 0.05), (0.6, 7, 0.5, 0.1)]:
                ok = allowed(logits.float(), *case)
                state = ops.make_rng_state(V, "cuda")
                ids = run(x, *_rows(B, *case, device="cuda"), state)
                assert ok[torch.arange(B), ids.cpu()].all(), (dtype, V, case)
                assert torch.equal(ids, run(x, *_rows(B, *case, device="cuda"), state))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", GPU_KERNELS)
@pytest.mark.parametrize("case", CHI2_CASES)
def test_gpu_distribution_chi_square(kernel, case):
    run = _gpu_kernel_or_skip(kernel)
    B = 200_000
    ids = run(CHI2_ROW.cuda()[None].expand(B, -1), *_rows(B, *case, device="cuda"), ops.make_rng_state(1, "cuda"))
    assert chi2_pvalue(ids, exact_probs(CHI2_ROW[None], *case)[0]) > 1e-3
    # A large vocabulary, where a row spans many chunks (Triton) / segments (CUDA C++): top-p alone keeps most of
    # the tail (the general path); top-k, or a sharper top-p, keeps few tokens (the fast path).
    V = 50_000
    row = torch.randn(V, generator=torch.Generator().manual_seed(0)) * 0.5
    row[:12] += torch.linspace(9, 5, 12)
    B = 100_000
    for big_case in [(1.0, 0, 0.95, 0.0), (1.0, 20, 0.9, 0.0), (0.7, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.01)]:
        # (expand on the device: a stride-0 view, not 20 GB of copies through the host)
        ids = run(row.cuda()[None].expand(B, V), *_rows(B, *big_case, device="cuda"), ops.make_rng_state(2, "cuda"))
        probs = exact_probs(row[None], *big_case)[0]
        head = torch.cat([probs[:12], probs[12:].sum()[None]])
        assert allowed(row[None], *big_case)[0, ids.cpu()].all()
        assert chi2_pvalue(ids.clamp(max=12), head) > 1e-3, big_case


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_backend", GPU_KERNELS)
def test_gpu_public_sample_graph_capture_and_lazy_errors(cuda_backend):
    """"triton-split": a row long enough (and a batch small enough) for the Triton kernel's split path."""
    _gpu_kernel_or_skip(cuda_backend)
    try:
        ops.set_backend(cuda_backend="cuda" if cuda_backend == "cuda" else "triton")
        B, V = 8, (8192 if cuda_backend == "triton-split" else 1000)
        if cuda_backend == "triton-split":
            from pygpt.kernels._device import sm_count
            from pygpt.kernels.sample import split_count

            assert split_count(B, V, sm_count(torch.device("cuda"))) > 1
        logits = torch.randn(B, V, device="cuda")
        t = torch.full((B,), 0.9, device="cuda")
        state = ops.make_rng_state(5, "cuda")
        ops.sample(logits, t, 20, 0.9, rng_state=state)  # warm up (Triton compiles) outside the capture
        state.copy_(ops.make_rng_state(5, "cuda"))
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.cuda.graph(graph):
            out = ops.sample(logits, t, 20, 0.9, rng_state=state)
        torch.cuda.current_stream().wait_stream(stream)
        state.copy_(ops.make_rng_state(5, "cuda"))
        graph.replay()
        first = out.clone()
        graph.replay()
        assert state.tolist() == [5, 2]
        assert torch.equal(first, ops.sample(logits, t, 20, 0.9, rng_state=ops.make_rng_state(5, "cuda")))
        assert not torch.equal(first, out)
        bad = logits.clone()
        bad[3, 7] = float("nan")
        ids = ops.sample(bad, 1.0)  # no sync here; the error surfaces lazily
        with pytest.raises(ValueError, match=r"logits contain NaN \(row 3\)"):
            ops.check_sample_errors()
        assert int(ids[3]) == -1
    finally:
        ops.set_backend(cuda_backend="triton")
