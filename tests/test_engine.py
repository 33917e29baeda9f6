"""The generation engine: cached decoding against full recompute and against the sliding-window reference,
batches with different prompt lengths, streaming, stop strings, seeds and bad inputs."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import pygpt.ops as ops
from pygpt.data import CharTokenizer
from pygpt.infer import Engine, KVCache
from pygpt.models import GPT, GPTConfig


def _model(pos="rope", block_size=16, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=20, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos=pos)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
@torch.no_grad()
def test_cached_logits_equal_full_recompute_within_the_window(pos):
    model = _model(pos)
    idx = torch.randint(0, 20, (3, 16))
    full, _ = model(idx)
    cache = KVCache.for_model(model, 3)
    pieces = [model(idx[:, :5], kv_cache=cache)[0]]  # prefill, then one token at a time
    for t in range(5, 16):
        pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=2e-5, rtol=2e-5)


def sliding_window_logits(model: GPT, idx: torch.Tensor, window: int) -> torch.Tensor:
    """The reference past the window: every query attends to the previous `window` keys (itself included), keys
    rotated at their own absolute positions - plain Torch, float64."""
    model = model.double()
    B, T = idx.shape
    positions = torch.arange(T)
    band = (positions[None, :] <= positions[:, None]) & (positions[None, :] > positions[:, None] - window)
    x = model.wte(idx)
    for block in model.blocks:
        attn = block.attn
        h = block.norm1(x)
        H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
        q, k, v = attn.qkv(h).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = ops.rotary_reference(q.reshape(B, T, H, D), positions).transpose(1, 2)
        k = ops.rotary_reference(k.reshape(B, T, Hkv, D), positions).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        v = v.reshape(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        x = x + attn.proj(y.transpose(1, 2).reshape(B, T, H * D))
        x = x + block.mlp(block.norm2(x))
    logits = model.lm_head(model.norm_f(x))
    model.float()
    return logits


@torch.no_grad()
def test_rope_cache_slides_past_the_window():
    model = _model("rope", block_size=8)
    idx = torch.randint(0, 20, (2, 30))
    cache = KVCache.for_model(model, 2)
    pieces = [model(idx[:, :3], kv_cache=cache)[0]]
    for t in range(3, 30):
        pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    expected = sliding_window_logits(model, idx, window=8)
    torch.testing.assert_close(torch.cat(pieces, 1).double(), expected, atol=2e-5, rtol=2e-5)
    assert int(cache.lengths[0]) == 30 and int(cache.starts[0]) == 22


def _lively_model(**kw) -> GPT:
    """A random model whose greedy text varies (at init scale a random model repeats one token forever, which
    would hide a wrong attention past the first steps)."""
    model = _model("rope", block_size=16, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
    return model


# (float64 too is only as exact as RoPE's angles, which are float32 products of position and frequency)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 2e-5), (torch.bfloat16, 0.05)])
@torch.no_grad()
def test_rebased_cache_attends_as_before(dtype, tol):
    """KVCache.rebase shifts each sequence's positions down by a multiple of C (its own, from its oldest
    position) and rotates every layer's cached keys back to match: the next decode step's output is unchanged in
    every layer, every position keeps its slot, and the positions end below 2C."""
    B, H, Hkv, C, D, L = 3, 4, 2, 16, 8, 2
    cache = KVCache(L, B, Hkv, C, D, "cpu", dtype)
    for b, n in enumerate((5, 37, 50)):  # a different history per sequence: starts 0, 21 and 34
        row = cache.rows(b)
        for _ in range(n):
            for layer in range(L):  # (the last layer's op advances the shared counters)
                ops.rope_decode_attention(torch.randn(1, 1, H, D, dtype=dtype),
                                          torch.randn(1, 1, Hkv, D, dtype=dtype),
                                          torch.randn(1, 1, Hkv, D, dtype=dtype), *row.layer(layer)[:4],
                                          base=100.0, advance=layer == L - 1)
    q, k, v = torch.randn(B, 1, H, D, dtype=dtype), torch.randn(B, 1, Hkv, D, dtype=dtype), \
        torch.randn(B, 1, Hkv, D, dtype=dtype)
    v_before = [t.clone() for t in cache.v]
    expected = [ops.rope_decode_attention(  # (on copies: the op appends to the cache it is given)
        q, k, v, *(t.clone() for t in (cache.k[i], cache.v[i], cache.lengths, cache.starts)), base=100.0)
        for i in range(L)]
    shift = cache.rebase(base=100.0)
    assert shift.tolist() == [0, 16, 32]
    assert cache.lengths.tolist() == [5, 21, 18] and cache.starts.tolist() == [0, 5, 2]
    assert int(cache.lengths.max()) < 2 * C
    for i in range(L):
        assert torch.equal(cache.v[i], v_before[i])  # values are not rotated
        got = ops.rope_decode_attention(q, k, v, cache.k[i].clone(), cache.v[i].clone(), cache.lengths.clone(),
                                        cache.starts.clone(), base=100.0)
        torch.testing.assert_close(got.double(), expected[i].double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=1.0, seed=5)])
def test_long_rope_generation_keeps_positions_small(monkeypatch, kw):
    """The engine rebases a RoPE cache before its positions reach REBASE_AT (here 64, block 16): the text is the
    one generated without rebasing (float64, where the positions' float32 angles are still exact; greedy and
    sampled; prompts shorter and longer than the block), and the positions never grow past the threshold."""
    import pygpt.infer.engine as engine_module

    model = _lively_model().double()
    prompts = [[1, 2, 3], list(range(20)) * 2, [4, 5, 6, 7, 8, 9, 10]]
    plain = torch.stack(list(Engine(model).generate_ids(prompts, 300, **kw)))
    assert len(plain[:, 0].unique()) > 5  # the text varies (a wrong attention shows)
    monkeypatch.setattr(engine_module, "REBASE_AT", 64)
    seen, rebase = [], KVCache.rebase

    def recording(cache, base):
        seen.append(int(cache.lengths.max()))
        return rebase(cache, base)
    monkeypatch.setattr(KVCache, "rebase", recording)
    rebased = torch.stack(list(Engine(model).generate_ids(prompts, 300, **kw)))
    assert torch.equal(rebased, plain)
    assert len(seen) >= 4 and max(seen) <= 64  # every ~32 tokens, before any position passes 64


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_greedy_is_identical_with_and_without_cache(pos):
    model = _model(pos, block_size=32)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]  # different lengths in one batch
    cached = torch.stack(list(Engine(model).generate_ids(prompts, 20, temperature=0)))
    recomputed = torch.stack(list(Engine(model, use_cache=False).generate_ids(prompts, 20, temperature=0)))
    assert torch.equal(cached, recomputed)


def test_learned_positions_recompute_past_the_window_and_say_so_once():
    model = _model("learned", block_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = list(Engine(model).generate_ids([[1, 2]], 20, temperature=0))
    assert len(ids) == 20
    assert sum("cannot slide" in str(w.message) for w in caught) == 1
    recomputed = list(Engine(model, use_cache=False).generate_ids([[1, 2]], 20, temperature=0))
    assert torch.equal(torch.stack(ids), torch.stack(recomputed))


def test_text_streaming_stop_and_seed():
    tok = CharTokenizer("abcdefghijklmnopqrs\n")
    engine = Engine(_model(), tok)
    first = "".join(engine.stream("abc", 40, temperature=1.0, seed=3))
    assert len(first) == 40
    assert "".join(engine.stream("abc", 40, temperature=1.0, seed=3)) == first
    assert "".join(engine.stream("abc", 40, temperature=1.0, seed=4)) != first
    stop = first[5:7]
    cut = "".join(engine.stream("abc", 40, temperature=1.0, seed=3, stop=stop))
    assert cut.endswith(stop) and len(cut) <= first.index(stop) + 2
    batch = engine.generate(["ab", "cdefg"], 10, temperature=1.0, seed=1)
    assert [len(t) for t in batch] == [10, 10]


def test_arguments_are_checked_at_the_call_and_stop_strings():
    """Errors come when generate is called, not at the first next(); an empty stop string is an error (it ended
    every text after one character); a stop string is matched in the generated text only."""
    tok = CharTokenizer("abcdefghijklmnopqrs\n")
    engine = Engine(_model(), tok)
    with pytest.raises(ValueError, match="max_new_tokens must be > 0"):
        engine.stream("abc", 0)  # no next() needed
    with pytest.raises(ValueError, match="token id 20 is outside the vocabulary \\[0, 20\\)"):
        engine.generate_ids([[1, 20]], 5)
    with pytest.raises(ValueError, match="stop must be a non-empty string"):
        engine.generate(["abc"], 5, stop="")
    free = engine.generate(["abc", "de"], 40, temperature=1.0, seed=3)
    stop = free[0][10:12]
    cut = engine.generate(["abc" + stop, "de"], 40, temperature=1.0, seed=3, stop=stop)
    first = engine.generate(["abc" + stop, "de"], 40, temperature=1.0, seed=3)
    for text, full in zip(cut, first):  # each row cut right after the stop string's first appearance, if any
        assert text == (full[:full.index(stop) + len(stop)] if stop in full else full)


def test_min_p_reaches_the_sampler():
    """min_p near 1 keeps only the most likely token: sampling at temperature 1 is then greedy decoding."""
    tok = CharTokenizer("abcdefghijklmnopqrs\n")
    engine = Engine(_model(), tok)
    greedy = engine.generate(["abc", "de"], 30, temperature=0.0)
    assert engine.generate(["abc", "de"], 30, temperature=1.0, seed=2, min_p=0.9999) == greedy
    assert engine.generate(["abc", "de"], 30, temperature=1.0, seed=2) != greedy
    with pytest.raises(ValueError, match="min_p"):
        list(engine.stream("a", 5, min_p=1.5))


def test_bad_inputs():
    tok = CharTokenizer("abc\n")
    engine = Engine(_model(vocab_size=4), tok)
    with pytest.raises(ValueError, match="character 'z'"):
        list(engine.stream("az", 5))
    with pytest.raises(ValueError, match="max_new_tokens must be > 0"):
        list(engine.stream("a", 0))
    with pytest.raises(ValueError, match="batch_size and capacity must be > 0"):
        KVCache.for_model(engine.model, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("pos", ["rope", "learned"])
@torch.no_grad()
def test_gpu_cached_decode_matches_full_recompute(pos):
    """On CUDA (the Triton decode kernel, fp32 cache): inside the window against the full forward, and for RoPE
    past it against the banded float64 reference."""
    model = _model(pos, block_size=8).cuda()
    idx = torch.randint(0, 20, (3, 8 if pos == "learned" else 30), device="cuda")
    cache = KVCache.for_model(model, 3)
    pieces = [model(idx[:, :3], kv_cache=cache)[0]]
    for t in range(3, idx.shape[1]):
        pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    got = torch.cat(pieces, 1).double().cpu()
    if pos == "learned":
        expected = model(idx)[0].double().cpu()
    else:
        expected = sliding_window_logits(model.cpu(), idx.cpu(), window=8)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_gpu_cuda_graph_replays_the_eager_decode_step(pos):
    """The graphed decode loop (bf16 cache, autocast, sampling inside the graph) gives exactly the ids of the same
    loop run eagerly, greedy and sampled with one seed, over a batch of different prompt lengths and past the
    window (a learned / sinusoidal model recomputes its context there); torch.compile'd too (RoPE). The capture
    must not read a device value on the host (the position bound check in GPT.embed is skipped there)."""
    model = _model(pos, block_size=16).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    for compile in ((False, True) if pos == "rope" else (False,)):  # (compiled and eager may round differently)
        for kw in (dict(temperature=0), dict(temperature=0.9, top_k=5, seed=7)):
            graphed, eager = (torch.stack(list(Engine(model, cuda_graph=graph, compile=compile)
                                               .generate_ids(prompts, 40, **kw))) for graph in (True, False))
            assert torch.equal(graphed, eager), (compile, kw)


@pytest.mark.gpu
def test_gpu_rebase_between_graph_replays(monkeypatch):
    """The cache rebase runs between CUDA-graph replays, in place on the tensors the graph reads: with rebases
    every ~32 tokens the graphed loop gives the eager loop's ids, in fp32 and under bf16 autocast (the default),
    greedy and sampled."""
    import pygpt.infer.engine as engine_module

    model = _lively_model().cuda()
    prompts = [[1, 2, 3], list(range(20)) * 2]
    monkeypatch.setattr(engine_module, "REBASE_AT", 64)
    for amp in (False, True):
        for kw in (dict(temperature=0), dict(temperature=1.0, seed=5)):
            graphed, eager = (torch.stack(list(Engine(model, amp=amp, cuda_graph=graph)
                                               .generate_ids(prompts, 300, **kw))) for graph in (True, False))
            assert torch.equal(graphed, eager), (amp, kw)
            assert len(graphed[:, 0].unique()) > 5


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [dict(n_embd=36, n_head=4, n_kv_head=2, pos="learned"), dict(dtype=torch.float64)])
def test_gpu_engine_without_a_decode_kernel_does_not_capture(kw):
    """An odd head_dim (9) or a float64 model decodes on the reference (which reads the counters on the host):
    the engine must run it eagerly (a capture failed), greedy ids as the same model's on the CPU."""
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    model = _model(**kw).to(dtype)
    on_cpu = torch.stack(list(Engine(model, amp=False).generate_ids([[1, 2, 3]], 20, temperature=0)))
    engine = Engine(model.cuda(), amp=False)
    assert not engine._decode_has_gpu_kernel()
    ids = torch.stack(list(engine.generate_ids([[1, 2, 3]], 20, temperature=0)))
    assert torch.equal(ids.cpu(), on_cpu)


# -- the engine's CUDA recipe (bf16 autocast, precast weights, launch count), checked on CPU ------------------
@torch.no_grad()
def test_precast_twin_gives_the_autocast_logits_bit_for_bit():
    """The twin's bf16 Linear weights are the values autocast casts to, so its logits under autocast are the
    source's exactly; it shares every other parameter, keeps the tied embedding fp32 and follows the source
    after refresh()."""
    from pygpt.infer.precast import PrecastModel

    model = _model(bias=True)
    twin = PrecastModel(model)
    idx = torch.randint(0, 20, (2, 9))

    def logits(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(idx)[0]

    assert torch.equal(logits(twin.model), logits(model))
    assert (twin.model.lm_head.weight.dtype == torch.bfloat16
            and twin.model.blocks[0].attn.qkv.bias.dtype == torch.bfloat16)
    assert model.lm_head.weight is model.wte.weight and model.wte.weight.dtype == torch.float32  # source untouched
    assert twin.model.wte.weight is model.wte.weight and twin.model.norm_f.weight is model.norm_f.weight
    model.blocks[1].mlp.down.weight.mul_(3)
    model.wte.weight.add_(0.5)  # tied: the twin's LM head follows only after refresh
    assert not torch.equal(logits(twin.model), logits(model))
    twin.refresh()
    assert torch.equal(logits(twin.model), logits(model))


def _ops_per_step(model, **engine_kw) -> dict[str, float]:
    """Ops dispatched per decode step (the difference between 11 and 1 generated tokens, over 10)."""
    from pygpt.testing import KernelCount

    counts = []
    for n in (1, 11):
        engine = Engine(model, cuda_graph=False, **engine_kw)
        with KernelCount() as count:
            for _ in engine.generate_ids([[1, 2, 3]], n, temperature=0.8, top_k=5, seed=0):
                pass
        counts.append(count.ops)
    return {op: (counts[1][op] - counts[0][op]) / 10 for op in counts[1] if counts[1][op] != counts[0][op]}


def test_decode_step_launch_budget():
    """A batch-1 decode step is bound by kernel launches, so their number is the budget to keep. On fused ops
    (the default), per layer: norm1+qkv, the decode attention, proj+residual, norm2+up+GELU, down+residual; per
    step: the embedding, norm_f+LM head, sampling and its RNG advance (+ CPU's error check: min, item). No casts
    (the twin holds bf16 weights, the kernels round as autocast would) and no position ids (the decode op reads
    the cache's counters)."""
    n_layer = 3
    model = _model(n_layer=n_layer, block_size=32)
    for amp in (True, False):
        per_step = _ops_per_step(model, amp=amp)
        assert per_step["pygpt.fused_linear"] == 4 * n_layer + 1
        assert per_step["pygpt.rope_decode_attention"] == n_layer
        assert sum(per_step.values()) == 5 * n_layer + 6, per_step
    # model.forward on the cache (fused=False): two norms, two activation casts to bf16 (the norms run in fp32
    # under autocast), four Linear GEMMs, the decode attention, GELU, two residual adds per layer.
    unfused = _ops_per_step(model, amp=True, fused=False)
    assert unfused["aten.linear"] == 4 * n_layer + 1
    assert unfused["aten.to.dtype"] == 2 * n_layer + 1, unfused  # activations only
    assert "aten.arange" not in unfused, unfused
    assert sum(unfused.values()) == 12 * n_layer + 8, unfused


FUSED_CONFIGS = [
    dict(pos="rope"),
    dict(pos="rope", n_kv_head=1, mlp="swiglu", bias=True),
    dict(pos="learned", bias=True),
    dict(pos="sinusoidal", norm="rmsnorm", mlp="swiglu"),
]


@pytest.mark.parametrize("cfg", FUSED_CONFIGS)
@pytest.mark.parametrize("amp", [False, True])
@torch.inference_mode()
def test_fused_decoder_equals_model_forward_on_the_cache(cfg, amp):
    """Decode steps on fused ops give model.forward's logits on the cache (fp32: to rounding order; under bf16
    autocast from the engine's bf16 twin: to bf16 rounding) and write the same cache, for every position kind,
    norm, MLP, bias and GQA, batch 2 with different histories."""
    from pygpt.infer.decoder import FusedDecoder
    from pygpt.infer.precast import PrecastModel

    model = _model(**cfg)
    runner = PrecastModel(model).model if amp else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)
    dtype = torch.bfloat16 if amp else torch.float32
    caches = [KVCache.for_model(model, 2, dtype=dtype) for _ in range(2)]
    prompt = torch.randint(0, 20, (2, 5))
    with autocast:
        for cache in caches:
            runner(prompt, kv_cache=cache)
    decoder = FusedDecoder(runner)
    ids = torch.randint(0, 20, (2, 1))
    tol = {"atol": 3e-2, "rtol": 3e-2} if amp else {"atol": 1e-5, "rtol": 1e-5}
    for _ in range(6):
        with autocast:
            expected = runner(ids, kv_cache=caches[0])[0][:, -1]
        fused = decoder(ids, caches[1])
        assert fused.dtype == expected.dtype and torch.isfinite(fused).all()
        torch.testing.assert_close(fused.float(), expected.float(), **tol)
        ids = expected.float().argmax(-1, keepdim=True)
    for a, b in zip(caches[0].k + caches[0].v + [caches[0].lengths], caches[1].k + caches[1].v + [caches[1].lengths]):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_fused_and_unfused_engines_generate_the_same_text():
    model = _model("rope", block_size=8)
    kw = dict(temperature=0.9, top_k=5, seed=3)
    fused = torch.stack(list(Engine(model).generate_ids([[1, 2, 3], [4, 5]], 20, **kw)))
    unfused = torch.stack(list(Engine(model, fused=False).generate_ids([[1, 2, 3], [4, 5]], 20, **kw)))
    assert torch.equal(fused, unfused)


def test_bf16_engine_on_cpu_generates_and_is_seeded():
    model = _model()
    engine = Engine(model, CharTokenizer("abcdefghijklmnopqrs\n"), amp=True)
    first = engine.generate(["abc", "de"], 30, temperature=1.0, seed=5)
    assert [len(t) for t in first] == [30, 30]
    assert engine.generate(["abc", "de"], 30, temperature=1.0, seed=5) == first


def test_compiled_decode_step_gives_the_eager_ids_and_compiles_once():
    """The torch.compile'd step (Inductor fuses each residual add with the next norm; the ops stay extern calls
    that update the cache and the RNG state in place) gives the eager engine's ids, greedy and sampled, over a
    batch of different prompt lengths and past the window; a second generation reuses the compiled code."""
    from torch._dynamo.utils import counters

    model = _model("rope", block_size=8)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    engine = Engine(model, compile=True)
    kw = dict(temperature=0.9, top_k=5, seed=7)
    eager = torch.stack(list(Engine(model).generate_ids(prompts, 20, **kw)))
    compiled = torch.stack(list(engine.generate_ids(prompts, 20, **kw)))
    assert torch.equal(compiled, eager)
    graphs = counters["stats"]["unique_graphs"]
    again = torch.stack(list(engine.generate_ids(prompts, 20, **kw)))
    assert torch.equal(again, compiled) and counters["stats"]["unique_graphs"] == graphs
    # Other settings and prompts: the same compiled step (its settings are tensors the engine refills).
    other = dict(temperature=0.5, top_k=3, top_p=0.9, seed=1)
    new_prompts = [[2, 2], [9, 1, 9, 1, 9, 1, 9]]
    eager = torch.stack(list(Engine(model).generate_ids(new_prompts, 20, **other)))
    assert torch.equal(torch.stack(list(engine.generate_ids(new_prompts, 20, **other))), eager)
    assert counters["stats"]["unique_graphs"] == graphs


# Calls of one engine in a row: the same batch size with other prompt lengths, settings and seeds, another
# batch size, then the first call again (the prompts run past the lively model's window of 16).
REUSE_CALLS = [([[1, 2, 3], [4, 5, 6, 7, 8]], dict(temperature=0.9, top_k=5, seed=7)),
               ([[9, 8], [7, 6, 5, 4, 3, 2, 1, 0, 1, 2]], dict(temperature=1.2, top_p=0.8, min_p=0.02, seed=3)),
               ([[1]], dict(temperature=0)),
               ([[1, 2, 3], [4, 5, 6, 7, 8]], dict(temperature=0.9, top_k=5, seed=7))]


def test_engine_reuses_its_decode_state_across_calls():
    """A later generation of a batch size runs on the earlier one's KV cache and decode step (on CUDA it replays
    that call's graph), refilled in place: every call gives what a fresh engine gives."""
    model = _lively_model()
    engine = Engine(model)
    kept = {}
    for prompts, kw in REUSE_CALLS:
        got = torch.stack(list(engine.generate_ids(prompts, 30, **kw)))
        fresh = torch.stack(list(Engine(model).generate_ids(prompts, 30, **kw)))
        assert torch.equal(got, fresh), kw
        assert len(got.unique()) > 3
        state = engine._states[len(prompts)]
        assert kept.setdefault(len(prompts), state) is state  # one state per batch size, kept


def test_interleaved_and_abandoned_generations_of_one_engine():
    """Two generations of one batch size iterated in turn each get their own state (neither resets the other's
    cache); one stopped early leaves its state whole for the next call."""
    model = _lively_model()
    engine = Engine(model)
    calls = [([[1, 2, 3]], dict(temperature=1.0, seed=1)), ([[4, 5]], dict(temperature=1.0, top_k=4, seed=2))]
    want = [torch.stack(list(Engine(model).generate_ids(p, 25, **kw))) for p, kw in calls]
    list(engine.generate_ids([[7]], 5))  # a kept state of batch size 1, for both to want
    both = zip(*(engine.generate_ids(p, 25, **kw) for p, kw in calls))
    got = [torch.stack(ids) for ids in zip(*both)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    partial = engine.generate_ids(*calls[1][:1], 25, **calls[1][1])
    next(partial), next(partial)
    partial.close()
    assert torch.equal(torch.stack(list(engine.generate_ids(calls[0][0], 25, **calls[0][1]))), want[0])


@pytest.mark.gpu
def test_gpu_graph_is_captured_once_per_batch_size(monkeypatch):
    """Later calls replay the first call's CUDA graph with their own prompts, settings and seeds: the ids of an
    eager engine, and one capture per batch size."""
    captures = []
    graph_type = torch.cuda.CUDAGraph
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda *a, **kw: captures.append(1) or graph_type(*a, **kw))
    model = _lively_model().cuda()
    engine = Engine(model)
    for prompts, kw in REUSE_CALLS:
        got = torch.stack(list(engine.generate_ids(prompts, 30, **kw)))
        eager = torch.stack(list(Engine(model, cuda_graph=False).generate_ids(prompts, 30, **kw)))
        assert torch.equal(got, eager), kw
    assert len(captures) == 2


@pytest.mark.parametrize("use_cache", [True, False])
def test_nan_logits_raise_a_clear_error(use_cache):
    model = _model()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="logits contain NaN"):
        list(Engine(model, use_cache=use_cache).generate_ids([[1, 2]], 5))


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_gpu_nan_logits_raise_instead_of_faulting(cuda_graph):
    """On CUDA the sampler reports NaN logits as negative ids; the engine must raise a clear error, and must not
    feed an id of -1 to the embedding (a device-side assert that kills the CUDA context)."""
    model = _model().cuda()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="logits contain NaN"):
        list(Engine(model, cuda_graph=cuda_graph).generate_ids([[1, 2]], 100))
    ops.check_sample_errors()  # nothing stale is left to fail a later sample call
    assert int(torch.ones(3, device="cuda").sum()) == 3  # the context still works
