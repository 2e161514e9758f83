"""The fixed-shape step (models/compiled.py) and the compiled CPU step (models/compiled_cpu.py)
against an independent oracle: the same weights in float64, every position recomputed from the
row's whole history by the cache-free forward_train (tests/recompute_model.py). Decode steps,
verify blocks and a per-row truncation, for Llama (GQA, sliding window) and YOCO.

The compiled tests build one library per architecture (tiny configs) into a temporary cache dir;
nothing else in the suite compiles (tests/conftest.py sets DECODING_COMPILE=0)."""
import contextlib
import copy
import json
import shutil
import warnings

import pytest
import torch

import models.compiled_cpu as cc
from models import DecoderConfig, LlamaDecoder, aoti_interface, kernel_units, library_cache
from models.attention import AttentionBatch, fused_attention
from models.compiled import GraphedStep, static_forward
from models.yoco import YOCOConfig, YOCODecoder
from recompute_model import RecomputeModel

V = 64
CONFIGS = {
    "llama": lambda: LlamaDecoder(DecoderConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                sliding_window=5, max_seq_len=64)),
    "yoco": lambda: YOCODecoder(YOCOConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, window=4,
                                           max_rollback=6, max_seq_len=64)),
}
STEPS = [1, 1, 4, 1, 3]  # decode steps and verify blocks
CUT = [2, 0, 3]  # per-row truncation (a speculative rollback)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = CONFIGS[name]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # decisive argmaxes
    return model


def same_argmax(out, ref, tol: float) -> bool:
    """Equal argmax wherever ref's best logit leads its second by more than tol."""
    top = ref.double().topk(2, dim=-1).values
    clear = (top[..., 0] - top[..., 1]) > tol
    return torch.equal(out.argmax(-1)[clear], ref.argmax(-1)[clear])


def script(model, step, *, check_eager: bool = False, hidden: bool = False, poison: bool = False,
           atol: float = 1e-4, eager_atol: float = 1e-5, tie: float = 0):
    """Prefill, STEPS, truncation CUT, two more steps; every step's logits against the float64 oracle
    (|diff| < atol, same argmax) and, with check_eager, against the eager forward on its own cache
    (same argmax, |diff| < eager_atol).
    hidden: the step returns (logits, final-norm hidden states), both checked. poison: the cache's
    slots from 24 on (past any row's length in this script, short of the capacity 40) hold NaN, so a
    step that reads keys past the longest row (masked or not) turns its output NaN. tie: argmaxes
    are compared only where the reference's top two logits are more than `tie` apart (half
    precision: a near tie may flip)."""
    oracle = RecomputeModel(copy.deepcopy(model).double())
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, V, (3, 7), generator=g)
    cache, ocache = model.new_cache(3, 40), oracle.new_cache(3, 40)
    eager = model.new_cache(3, 40) if check_eager else None
    with torch.no_grad():
        for c in (cache, eager) if check_eager else (cache,):
            model(prompt, c, attention_mask=torch.ones_like(prompt))  # an eager prefill
        oracle(prompt, ocache)
        if poison:
            kv = getattr(cache, "kv", cache)  # YOCO: the shared cross-decoder cache
            for t in kv.k + kv.v:
                t[:, :, 24:] = float("nan")
        for i, T in enumerate(STEPS + [None, 2, 1]):
            if T is None:
                for c in (cache, ocache, eager):
                    if c is not None:
                        c.truncate(torch.tensor(CUT, dtype=torch.int32))
                continue
            ids = torch.randint(0, V, (3, T), generator=g)
            out, ref = step(ids, cache), (oracle.with_hidden if hidden else oracle)(ids, ocache)
            if hidden:
                (out, h), (ref, ref_h) = out, ref
                assert h.shape == ref_h.shape and torch.allclose(h, ref_h, atol=1e-4), (i, (h - ref_h).abs().max())
            assert out.shape == ref.shape
            assert (out.double() - ref).abs().max() < atol, (i, (out.double() - ref).abs().max())
            assert same_argmax(out, ref, tie)
            assert cache.lengths.tolist() == ocache.lengths.tolist()
            if check_eager:
                model.compile_step = False
                e = model(ids, eager)
                model.compile_step = True
                assert same_argmax(out, e, tie) and (out - e).abs().max() < eager_atol


@pytest.mark.parametrize("name", ["llama", "yoco"])
def test_static_step_matches_float64_oracle(name):
    model = build(name)
    script(model, lambda ids, c: static_forward(model, ids, c))


def test_graphed_step_on_cpu_matches_oracle():
    model = build("llama")

    def step(ids, c):
        c.reserve(ids.shape[1])
        return GraphedStep(model)(ids, c)  # CPU: the static step, lengths advanced in place
    script(model, step)


@pytest.mark.parametrize("Hq,Hkv,T,window", [(4, 2, 1, 0), (4, 1, 3, 0), (2, 2, 4, 3)],
                         ids=["gqa-decode", "mqa-verify", "mha-window"])
def test_fused_attention_matches_float64(Hq, Hkv, T, window):
    """The compiled step's attention (models/attention.fused_attention), run eagerly, against softmax
    attention written out per query in float64; rows of different lengths, keys past a row's end
    (finite garbage) masked, a sliding window."""
    g = torch.Generator().manual_seed(0)
    B, L, D, scale = 2, 9, 8, 0.3
    q = torch.randn(B, T, Hq, D, generator=g)
    k, v = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    slots = torch.stack([torch.arange(L - T, L), torch.arange(4, 4 + T)])  # row 1 ends at slot 3 + T
    batch = AttentionBatch(slots, slots[:, -1] + 1, None, L)  # the mask of the static step's layout
    out = fused_attention(q, k, v, batch.mask(window), scale)
    ref = torch.empty(B, T, Hq, D, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            n, at = torch.arange(L), int(slots[b, t])
            seen = (n <= at) & ((n > at - window) if window else True)
            for h in range(Hq):
                kv = h // (Hq // Hkv)
                s = (k[b, kv].double() @ q[b, t, h].double()) * scale
                p = torch.softmax(s.masked_fill(~seen, float("-inf")), 0)
                ref[b, t, h] = p @ v[b, kv].double()
    assert torch.allclose(out.double(), ref, atol=1e-5), (out.double() - ref).abs().max()


# -- the compiled CPU step -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """(name, frozen) -> directory holding the compiled library of build(name) (built once per module):
    frozen, its weights prepacked in; else the architecture's, weights as inputs."""
    built = {}

    def get(name, frozen=True):
        if (name, frozen) not in built:
            d = tmp_path_factory.mktemp(f"compiled_{name}_{'frozen' if frozen else 'inputs'}")
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(library_cache.CACHE_ENV, str(d))
                split, whole_build = [], aoti_interface.build_wrapper  # how each wrapper object was built
                mp.setattr(aoti_interface, "build_wrapper", lambda *a: split.append(whole_build(*a)) or split[-1])
                units, whole_kernels = [], kernel_units.build_kernels  # and each kernels' object
                mp.setattr(kernel_units, "build_kernels", lambda *a: units.append(whole_kernels(*a)) or units[-1])
                model = build(name)
                model.compile_frozen = frozen
                model.compile_step = True
                with torch.no_grad():
                    c = model.new_cache(1, 8)
                    model(torch.tensor([[1]]), c)
                    model(torch.ones(1, cc.WIDE_ROWS, dtype=torch.long), c)  # and the wide library
                compiled = model._compiled
                if compiled is None or compiled.run is None or (compiled.blocking and compiled.wide is None):
                    pytest.fail("the compiled CPU step did not build on this machine (see the warning)")
                assert split and all(split), "a wrapper compiled whole, not as its code + the runtime interface"
                assert units and all(units), "a kernels' object compiled whole, not as two units"
                # one interface object: the one compiled beside the headers served every build
                assert len(list((d / "aoti_interface").glob("interface-*.o"))) == 1
            built[name, frozen] = d
        return built[name, frozen]
    return get


def files(directory):
    """A cache dir's libraries and their JSON (not the runtime interface's folder)."""
    return [f for f in directory.iterdir() if f.is_file()]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(library_cache.CACHE_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def half_libraries(tmp_path_factory):
    return tmp_path_factory.mktemp("half_libraries")


@pytest.fixture
def half_cache(half_libraries, monkeypatch):
    """One disk cache for the half-precision tests, which build the same fp16 model: its libraries
    are built once (each build is ~25 s on a 2-core AVX2 machine)."""
    monkeypatch.setenv(library_cache.CACHE_ENV, str(half_libraries))
    return half_libraries


def no_build(monkeypatch):
    calls = []
    monkeypatch.setattr(cc.CompiledStep, "_build", lambda self, *a: calls.append(a) or pytest.fail("recompiled"))
    return calls


def spy_libraries(monkeypatch) -> list:
    """Logs (which library, rows) of every compiled step from now on."""
    served, library = [], cc.CompiledStep.library

    def logged(self, rows, cache):
        run = library(self, rows, cache)
        served.append(("wide" if run is not None and run is self.wide else "default", rows))
        return run
    monkeypatch.setattr(cc.CompiledStep, "library", logged)
    return served


# weights as inputs: the HF-native route's kind (Llama-family and GPT-2 models), so on the Llama decoder
@pytest.mark.parametrize("name,frozen", [("llama", True), ("llama", False), ("yoco", True)],
                         ids=["llama-frozen", "llama-inputs", "yoco-frozen"])
def test_compiled_step_matches_oracle_and_eager(name, frozen, library, cache_dir, monkeypatch):
    for f in files(library(name, frozen)):
        shutil.copy(f, cache_dir)
    no_build(monkeypatch)  # a fresh model loads the library from disk: no compile
    # frozen: the same weights (a fresh copy of them); inputs: other weights, same architecture
    model = build(name, seed=0 if frozen else 2)
    model.compile_frozen = frozen
    model.compile_step = True

    served = spy_libraries(monkeypatch)

    def step(ids, c):
        out = model(ids, c)
        assert model._compiled is not None and model._compiled.run is not None  # it ran compiled
        return out
    script(model, step, check_eager=True, poison=True)  # the library reads keys up to the host bound only
    # steps of WIDE_ROWS (3) rows on (B = 3, T = 1: 3; verify blocks: 6, 9, 12) ran the wide library, on a
    # CPU with a wide blocking and for a frozen library (else the default one served them too)
    wide = frozen and cc.WIDE_BLOCKING.get(torch.backends.cpu.get_cpu_capability()) is not None
    assert served == [("wide" if wide and r >= cc.WIDE_ROWS else "default", r) for r in (3, 3, 12, 3, 9, 6, 3)]

    calls, run = [], cc.CompiledStep.__call__
    monkeypatch.setattr(cc.CompiledStep, "__call__", lambda self, *a: calls.append(1) or run(self, *a))

    def step_hidden(ids, c):  # blockwise's verify: logits and the hidden states its heads read
        n = len(calls)
        out = model(ids, c, return_hidden=True)
        assert len(calls) == n + 1  # through the library, not the eager forward
        return out
    script(model, step_hidden, hidden=True)


@pytest.mark.parametrize("change", ["in place", "replaced", "data"])
def test_frozen_library_never_serves_changed_weights(change, library, cache_dir, monkeypatch):
    """A weight written in place, replaced by a new Parameter, or swapped under `.data` after the
    frozen library loaded: the next step runs the new weights (the float64 oracle of the changed
    model), through a library built for them."""
    for f in files(library("llama")):
        shutil.copy(f, cache_dir)
    model = build("llama")
    model.compile_step = True
    with torch.no_grad():
        model(torch.tensor([[1, 2]]), model.new_cache(1, 8))
        first = model._compiled
        assert first.run is not None and first.frozen
        new = model.lm_head.weight.detach().flip(0).contiguous()  # another weight of the same shape
        if change == "in place":
            model.lm_head.weight.copy_(new)
        elif change == "replaced":
            model.lm_head.weight = torch.nn.Parameter(new)
        else:
            model.lm_head.weight.data = new
    built = []

    def no_library(self, *a):  # asked for a library of the new weights: say none builds here (eager)
        built.append(1)
        raise RuntimeError("not built in this test")
    monkeypatch.setattr(cc.CompiledStep, "_build", no_library)
    monkeypatch.setattr(cc, "_failed", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script(model, lambda ids, c: model(ids, c))
    assert built and model._compiled is not first  # the old library was dropped, a new one asked for


def test_weights_made_under_inference_mode(library, cache_dir, monkeypatch):
    """Weights created under torch.inference_mode (a model loaded inside it, as generate() loads
    blockwise heads from a directory) have no version counter: the library still loads for them (by
    their values) and its steps match the float64 oracle."""
    for f in files(library("llama")):
        shutil.copy(f, cache_dir)
    no_build(monkeypatch)
    with torch.inference_mode():
        model = build("llama")
    assert model.lm_head.weight.is_inference()
    model.compile_step = True
    script(model, lambda ids, c: model(ids, c))
    assert model._compiled is not None and model._compiled.run is not None


def test_wide_library_returns_the_default_librarys_bits(library, cache_dir, monkeypatch):
    """The wide library (AVX2: 8 x 8 blocking, its 3-6-row blocks on micro_gemm.row_panels) returns
    bitwise the default library's logits and cache writes at 3-6 rows (the default's 4 x 16
    micro-kernel there): each output the same fmadd chain, k in order, in another blocking. Both
    libraries come with library("llama"): nothing is built. A CPU with no wide blocking has none."""
    for f in files(library("llama")):
        shutil.copy(f, cache_dir)
    no_build(monkeypatch)
    served = spy_libraries(monkeypatch)
    model = build("llama")
    model.compile_step = True
    g = torch.Generator().manual_seed(4)
    for B, widths in ((1, (3, 4, 5, 6)), (3, (1, 2))):  # one row's verify blocks; a batch's steps
        prompt = torch.randint(0, V, (B, 7), generator=g)
        caches = [model.new_cache(B, 40) for _ in range(2)]
        with torch.no_grad():
            for c in caches:
                model(prompt, c, attention_mask=torch.ones_like(prompt))  # an eager prefill
            for T in widths:
                ids = torch.randint(0, V, (B, T), generator=g)
                outs = []
                for c, rows in zip(caches, (99, 3)):  # every width on the default library, then the wide one
                    monkeypatch.setattr(cc, "WIDE_ROWS", rows)
                    outs.append(model(ids, c))
                assert torch.equal(outs[0], outs[1])
        assert all(torch.equal(a, b) for a, b in zip(*[[c.lengths, *c.k, *c.v] for c in caches]))
    wide = torch.backends.cpu.get_cpu_capability() in cc.WIDE_BLOCKING
    assert [w for w, _ in served] == ["default", "wide" if wide else "default"] * 6
    assert (model._compiled.wide is not None) == wide


def test_bad_id_leaves_the_cache_as_it_was(library, cache_dir, monkeypatch):
    for f in files(library("llama")):
        shutil.copy(f, cache_dir)
    model = build("llama")
    model.compile_step = True
    with torch.no_grad():
        cache = model.new_cache(2, 16)
        model(torch.tensor([[1, 2], [3, 4]]), cache)
        contents = lambda: [cache.lengths, *cache.k, *cache.v]
        before = [t.clone() for t in contents()]
        with pytest.raises(ValueError, match="token id 64 outside the vocabulary"):
            model(torch.tensor([[5], [64]]), cache)
    assert model._compiled.run is not None
    assert all(torch.equal(a, b) for a, b in zip(before, contents()))


@pytest.mark.parametrize("how", ["corrupt", "stale"])
def test_corrupt_or_stale_library_is_rebuilt_never_used(how, library, cache_dir, monkeypatch):
    good = library("llama")
    for f in files(good):
        shutil.copy(f, cache_dir)
    # the default library's pair (a 1-row step loads it; the wide library's pair stays good)
    meta = next(m for m in cache_dir.glob("*.json") if "blocking" not in json.loads(m.read_text())["key"])
    pt2 = meta.with_suffix(".pt2")
    if how == "corrupt":
        data = bytearray(pt2.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pt2.write_bytes(bytes(data))
    else:  # built by another torch: same file name, key no longer matches
        info = json.loads(meta.read_text())
        info["key"]["torch"] = "0.0.0"
        meta.write_text(json.dumps(info))
    rebuilt = []

    def rebuild(self, cache, key, path, meta_path):
        assert not path.exists()  # the bad file was removed, never loaded
        rebuilt.append(key)
        for f in files(good):
            shutil.copy(f, cache_dir)
        return library_cache.open_library(path)
    monkeypatch.setattr(cc.CompiledStep, "_build", rebuild)
    model = build("llama")
    model.compile_step = True
    with torch.no_grad():
        c = model.new_cache(1, 8)
        model(torch.tensor([[1]]), c)
    assert len(rebuilt) == 1 and model._compiled.run is not None


def test_switch_off_runs_eager(cache_dir, monkeypatch):
    built = []
    monkeypatch.setattr(cc.CompiledStep, "_load", lambda self, cache: built.append(1) or False)
    model = build("llama")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for switch, env in ((False, "1"), (None, "0")):
            monkeypatch.setenv(cc.ENV, env)
            model.compile_step = switch
            model(ids, model.new_cache(1, 8))
            assert model._compiled is None and not built
        monkeypatch.setenv(cc.ENV, "1")
        model.compile_step = None
        model(ids, model.new_cache(1, 8))
    assert built  # the env var turns it on


def test_unavailable_compiler_falls_back_to_eager(cache_dir, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch.export, "export", fail)
    monkeypatch.setattr(cc, "_failed", set())
    model = build("llama")
    model.compile_step = True
    with pytest.warns(UserWarning, match="compiled CPU step unavailable"):
        script(model, lambda ids, c: model(ids, c))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then eager without retrying
        with torch.no_grad():
            model(torch.tensor([[1]]), model.new_cache(1, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_runs_the_library_by_default(dtype, half_cache, monkeypatch):
    """A half-precision model (a draft in its checkpoint's own dtype) takes the compiled step with the
    switch at its default; its steps stay within half precision's rounding of the float64 oracle on
    the same (half) weights and of the eager step; as a draft it leaves speculative decoding's
    output the fp32 target's greedy tokens, on the one-row and the batched path."""
    monkeypatch.delenv(cc.ENV, raising=False)
    model = build("llama").to(dtype)
    assert model.compile_step is None
    eps = torch.finfo(dtype).eps  # 2^-10 (fp16), 2^-7 (bf16); logits here reach ~1.3. Measured: the
    # library within 1.5 eps of the oracle and 3.5 eps of the eager step; in bf16 argmaxes flipped
    # where the top two were at most 1 eps apart
    script(model, lambda ids, c: model(ids, c), check_eager=True, poison=True, atol=8 * eps, eager_atol=8 * eps,
           tie=2 * eps)
    assert model._compiled is not None and model._compiled.run is not None  # it ran compiled
    assert model._compiled.wide is None  # the wide blocking limits fp32 kernels only: no second build
    import decoding
    target = build("llama", seed=3)  # fp32, eager: the reference greedy
    target.compile_step = False
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    greedy = decoding.generate(target, prompt, max_new_tokens=12, do_sample=False, eos_token_id=None).sequences
    calls, run = [], cc.CompiledStep.__call__
    monkeypatch.setattr(cc.CompiledStep, "__call__", lambda self, *a: calls.append(self.dtype) or run(self, *a))
    for rows in (prompt[:1], prompt):
        out = decoding.generate(target, rows, assistant_model=model, num_assistant_tokens=3, do_sample=False,
                                assistant_confidence_threshold=0, max_new_tokens=12, eos_token_id=None)
        assert torch.equal(out.sequences, greedy[:len(rows)])
    assert calls and set(calls) == {dtype}  # the draft's steps ran its library


def test_half_precision_prompt_too_wide_for_one_step_runs_in_chunks(half_cache, monkeypatch):
    """A half-precision model's mask-free prompt of more than PROMPT_ROWS rows runs the library in
    chunks of PROMPT_ROWS // B tokens (its eager matmuls are slow on a CPU): the kept logits and hidden
    states (all, the last, a span across the chunks) within rounding of the float64 oracle and of the
    eager forward, the cache as long as the prompt."""
    model = build("llama").half()
    model.compile_step = True
    oracle = RecomputeModel(copy.deepcopy(model).double())
    B, T = 4, 40  # 160 rows: chunks of 32 and 8 tokens
    assert B * T > cc.PROMPT_ROWS and T <= cc.MAX_TOKENS
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(6))
    calls, run = [], cc.CompiledStep.__call__
    monkeypatch.setattr(cc.CompiledStep, "__call__", lambda self, x, *a: calls.append(x.shape) or run(self, x, *a))
    eps = torch.finfo(torch.float16).eps
    with torch.no_grad():
        for keep, hidden in ((0, False), (1, False), (10, True)):
            cache, ocache, twin = model.new_cache(B, 48), oracle.new_cache(B, 48), model.new_cache(B, 48)
            n = len(calls)
            out = model(ids, cache, logits_to_keep=keep, return_hidden=hidden)
            assert calls[n:] == [(B, 32), (B, 8)]  # through the library, two chunks
            model.compile_step = False
            eager = model(ids, twin, logits_to_keep=keep, return_hidden=hidden)
            model.compile_step = True
            ref = oracle.with_hidden(ids, ocache) if hidden else oracle(ids, ocache)
            for o, e, r in zip(*((x if hidden else (x,)) for x in (out, eager, ref))):
                r = r[:, -(keep or T):]
                assert o.shape == e.shape == r.shape
                assert (o.double() - r).abs().max() < 8 * eps and (o - e).abs().max() < 8 * eps
            assert cache.lengths.tolist() == [T] * B


def copy_default_library(src, dst) -> None:
    for meta in src.glob("*.json"):
        if "blocking" not in json.loads(meta.read_text())["key"]:
            shutil.copy(meta, dst)
            shutil.copy(meta.with_suffix(".pt2"), dst)


def test_prompt_does_not_build_the_wide_library(library, cache_dir, monkeypatch):
    """A prompt of WIDE_ROWS+ rows into an empty cache (a step once per call) runs the default library
    and builds nothing; the first wide step after it asks for the wide library."""
    copy_default_library(library("llama"), cache_dir)
    monkeypatch.setitem(cc.WIDE_BLOCKING, torch.backends.cpu.get_cpu_capability(), (8, 8))  # any CPU
    asked = []
    monkeypatch.setattr(cc.CompiledStep, "_build", lambda self, cache, key, *a: asked.append(key.get("blocking")) or
                        library_cache.open_library(next(library("llama").glob("*.pt2"))))  # any library: not run here
    served = spy_libraries(monkeypatch)
    model = build("llama")
    model.compile_step = True
    with torch.no_grad():
        cache = model.new_cache(2, 16)
        model(torch.randint(0, V, (2, 6)), cache)
        assert served == [("default", 12)] and asked == []
        model._compiled.library(2 * 3, cache)  # a 3-token verify: now the wide library is asked for
    assert asked == [[8, 8]]


@pytest.mark.parametrize("name", ["llama", "yoco"])
def test_prompt_of_up_to_prompt_rows_runs_the_library(name, library, cache_dir, monkeypatch):
    """A pad-free prompt longer than step_max_tokens and of at most PROMPT_ROWS rows (batch x T) runs
    the library, which returns the kept rows only (YOCO: only they pass the cross-decoder): logits
    against the float64 oracle and the eager forward, then a decode step that reads the K/V the
    prompt wrote. More rows, or a mask, run eagerly."""
    for f in files(library(name)):
        shutil.copy(f, cache_dir)
    no_build(monkeypatch)
    monkeypatch.setattr(cc, "PROMPT_ROWS", 40)
    served = spy_libraries(monkeypatch)
    model = build(name)
    model.compile_step = True
    oracle = RecomputeModel(copy.deepcopy(model).double())
    g = torch.Generator().manual_seed(3)
    for B, T, keep, compiled, mask in ((2, 20, 1, True, False), (1, 33, 0, True, False), (2, 18, 3, True, False),
                                       (3, 20, 1, False, False), (2, 20, 1, False, True)):
        ids = torch.randint(0, V, (B, T), generator=g)
        cache, eager, ocache = model.new_cache(B, 48), model.new_cache(B, 48), oracle.new_cache(B, 48)
        n = len(served)
        with torch.no_grad():
            out = model(ids, cache, logits_to_keep=keep, attention_mask=torch.ones_like(ids) if mask else None)
            assert len(served) == n + compiled
            ref = oracle(ids, ocache)[:, -keep if keep else 0:]
            model.compile_step = False
            e = model(ids, eager, logits_to_keep=keep)
            model.compile_step = True
            for got in (out, e):
                assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4), (B, T, (got - ref).abs().max())
                assert torch.equal(got.argmax(-1), ref.argmax(-1))
            assert (out - e).abs().max() < 1e-5
            nxt = torch.randint(0, V, (B, 1), generator=g)
            out, ref = model(nxt, cache), oracle(nxt, ocache)
            assert torch.allclose(out, ref, atol=1e-4) and torch.equal(out.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("name", ["llama", "yoco"])
def test_forward_on_a_cache_is_the_forward_without_its_per_step_checks(name, library, cache_dir, monkeypatch):
    """forward_on(cache), the strategies' step: for decode and verify steps (hidden states too) the
    library straight, its checks done once when bound (no wanted / matches / check_inputs per
    step), same logits as the forward on a twin cache and the float64 oracle; a masked step is the
    forward itself."""
    for f in files(library(name)):
        shutil.copy(f, cache_dir)
    no_build(monkeypatch)
    model = build(name)
    model.compile_step = True
    oracle = RecomputeModel(copy.deepcopy(model).double())
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, V, (2, 6), generator=g)
    cache, twin, ocache = model.new_cache(2, 40), model.new_cache(2, 40), oracle.new_cache(2, 40)
    with torch.no_grad():
        for c in (cache, twin, ocache):
            (oracle if c is ocache else model)(prompt, c)
        step = model.forward_on(cache)
        checks = []
        for f in ("wanted", "check_inputs"):
            target = cc if f == "wanted" else type(model)
            real = getattr(target, f)
            monkeypatch.setattr(target, f, lambda *a, real=real, f=f: checks.append(f) or real(*a))
        for T, keep, hidden, mask in ((1, 0, False, False), (4, 0, True, False), (1, 1, False, True), (3, 2, False, False)):
            ids = torch.randint(0, V, (2, T), generator=g)
            m = torch.ones_like(ids) if mask else None
            n = len(checks)
            out = step(ids, m, keep, return_hidden=hidden)
            assert (len(checks) > n) == mask  # only the masked step went through the forward
            ref = model(ids, twin, attention_mask=m, logits_to_keep=keep, return_hidden=hidden)
            o = oracle(ids, ocache)[:, -keep if keep else 0:]
            (out, ref) = (out[0], ref[0]) if hidden else (out, ref)
            assert out.shape == ref.shape == o.shape and (out - ref).abs().max() < 1e-5
            assert torch.allclose(out, o, atol=1e-4) and torch.equal(out.argmax(-1), o.argmax(-1))
            assert cache.lengths.tolist() == twin.lengths.tolist() == ocache.lengths.tolist()


def test_failed_wide_build_leaves_the_default_library_serving(library, cache_dir, monkeypatch):
    """The wide library does not build (no compiler, or this torch lacks the kernel): one warning,
    never retried, and steps of every width run the default library (still the oracle's logits)."""
    copy_default_library(library("llama"), cache_dir)
    monkeypatch.setitem(cc.WIDE_BLOCKING, torch.backends.cpu.get_cpu_capability(), (8, 8))  # any CPU
    monkeypatch.setattr(cc, "_failed", set())
    asked = []

    def fail(self, cache, key, *a):
        asked.append(key.get("blocking"))
        raise RuntimeError("no such kernel here")
    monkeypatch.setattr(cc.CompiledStep, "_build", fail)
    served = spy_libraries(monkeypatch)
    model = build("llama")
    model.compile_step = True
    with pytest.warns(UserWarning, match="for wide steps unavailable.*run the default library"):
        script(model, lambda ids, c: model(ids, c))
    assert asked == [[8, 8]]
    assert [which for which, _ in served] == ["default"] * 7


@pytest.mark.parametrize("name", ["llama", "yoco"])
def test_cpu_decode_steps_read_nothing_back(name, monkeypatch):
    """Eager decode and verify steps on CPU read no tensor value back to the host: ids are checked
    by the embedding, lengths by the cache's host bound (a step still sees every key: the oracle)."""
    model = build(name)
    oracle = RecomputeModel(copy.deepcopy(model).double())
    reads, counting = [], [False]
    with torch.no_grad():
        cache, ocache = model.new_cache(2, 32), oracle.new_cache(2, 32)
        prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3))
        model(prompt, cache), oracle(prompt, ocache)
        for attr in ("item", "tolist", "__bool__", "__int__", "__index__", "__float__"):
            orig = getattr(torch.Tensor, attr)
            monkeypatch.setattr(torch.Tensor, attr, lambda self, *a, _o=orig, _n=attr: (counting[0] and reads.append(_n)) or _o(self, *a))
        outs = []
        for T in (1, 1, 3, 1):
            ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
            counting[0] = True
            out = model(ids, cache)
            counting[0] = False
            outs.append((out, oracle(ids, ocache)))
        monkeypatch.undo()
    assert reads == []
    for out, ref in outs:
        assert torch.allclose(out, ref, atol=1e-4)


def test_k_loop_edits_apply_to_this_torch_and_are_undone():
    """models/micro_gemm's edits of inductor's fp32 micro-kernel find their text in this torch's
    template (else the frozen library would silently lose them), and the template is restored after
    the build. The edited kernel's values: every frozen library of this file runs it (oracle tests)."""
    from models import micro_gemm
    cls = micro_gemm._micro_gemm_module().CppMicroGemmFP32Vec
    before = cls.TEMPLATE_KERNEL
    assert [before.count(old) for old, _ in micro_gemm._EDITS] == [1] * len(micro_gemm._EDITS)
    with micro_gemm.streamlined_k_loop():
        edited = cls.TEMPLATE_KERNEL
    assert all(new in edited and old not in edited for old, new in micro_gemm._EDITS if old not in new)
    assert cls.TEMPLATE_KERNEL == before


def test_row_panel_edits_apply_to_this_torch_and_are_undone():
    """models/micro_gemm.row_panels finds its text in this torch's GEMM template (else steps of a
    few rows would silently lose it) and leaves the template and the micro-kernel class as they were."""
    from models import micro_gemm
    cls = micro_gemm._micro_gemm_module().CppMicroGemmFP32Vec
    from torch._inductor.codegen import cpp_gemm_template as t
    names = ("GEMM_TEMPLATE", "GEMM_TEMPLATE_INIT_BLOCKING_EXTENDED")
    before = [getattr(t, n) for n in names] + [cls.TEMPLATE_ENTRY]
    assert [b.count(old) for b, (old, _) in zip(before, (micro_gemm._PANEL_LOOP, micro_gemm._ROW_BLOCKING))] == [1, 1]
    with micro_gemm.row_panels():
        assert micro_gemm._PANEL_LOOP[1] in t.GEMM_TEMPLATE and micro_gemm._ROW_BLOCKING[1] in t.GEMM_TEMPLATE_INIT_BLOCKING_EXTENDED
        assert cls.TEMPLATE_ENTRY.endswith(micro_gemm._ROW_PANELS_KERNEL) and hasattr(cls, "row_panels")
    assert [getattr(t, n) for n in names] + [cls.TEMPLATE_ENTRY] == before
    assert not hasattr(cls, "row_panels") and not hasattr(cls, "row_panels_rows")


def test_few_row_steps_read_weight_panels_together_with_the_micro_kernels_sums(tmp_path, monkeypatch):
    """A step of a few rows of a frozen library multiplies by several prepacked weight panels at once
    (micro_gemm.row_panels): its logits are bitwise those of the library built without it (the
    micro-kernel's sums, one panel at a time) and the float64 oracle's within 1e-4. Shapes: q 6
    panels (a group and panels left), gate/up 69, down K = 1100, past the K block of any L1 up to
    64 KiB (later K blocks add to the first's sums); steps of 1, 2 and 3 tokens of one row, all on
    the default library (3 rows: its micro-kernel). The wide library's 3-6-row blocks are checked
    bitwise against the default library in test_wide_library_returns_the_default_librarys_bits."""
    from models import micro_gemm
    torch.manual_seed(0)
    model = LlamaDecoder(DecoderConfig(vocab_size=V, dim=96, n_layers=1, n_heads=4, n_kv_heads=2,
                                       hidden_dim=1100, max_seq_len=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.compile_step = True
    oracle = RecomputeModel(copy.deepcopy(model).double())
    ids = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(1))
    spans = [(4, 5), (5, 6), (6, 8), (8, 11), (11, 12), (12, 14)]
    sources, halves = [], kernel_units.halves
    monkeypatch.setattr(kernel_units, "halves", lambda text: sources.append(text) or halves(text))
    monkeypatch.setattr(cc, "WIDE_BLOCKING", {})  # one library a build: the default one at every width

    def run(directory):
        monkeypatch.setenv(library_cache.CACHE_ENV, str(directory))
        model._compiled = None
        cache, outs = model.new_cache(1, 24), []
        with torch.no_grad():
            model(ids[:, :4], cache, attention_mask=torch.ones(1, 4, dtype=torch.long))  # an eager prefill
            for a, b in spans:
                outs.append(model(ids[:, a:b], cache))
                assert model._compiled is not None and model._compiled.run is not None  # it ran compiled
        return torch.cat(outs, 1)
    panels = run(tmp_path / "panels")
    assert sources and all("_row_panels<1, " in s and "_row_panels<2, " in s for s in sources)  # the kernels call it
    with monkeypatch.context() as mp:
        mp.setattr(micro_gemm, "row_panels", contextlib.nullcontext)
        sources.clear()
        one_by_one = run(tmp_path / "micro_kernel")
        assert sources and not any("_row_panels<" in s for s in sources)
    assert torch.equal(panels, one_by_one)
    with torch.no_grad():
        ocache = oracle.new_cache(1, 24)
        oracle(ids[:, :4], ocache)
        ref = torch.cat([oracle(ids[:, a:b], ocache) for a, b in spans], 1)
    assert (panels.double() - ref).abs().max() < 1e-4
