"""The compiled CPU step with blockwise heads' guesses (models/compiled_cpu.py, NativeDecoder.guessing_on).
Oracle: the eager forward and the eager heads (HeadsProposer's greedy picks on the eager hidden state).
Its logits are the eager forward's (same argmax, |diff| < 1e-5) and its guesses the eager heads' at every
kept position, for independent and hydra heads (and independent heads on a YOCO target); blockwise decoding through it gives greedy's tokens and
the statistics, streamed chunks and traced rounds of the eager one-row path; a prompt wider than the
library takes the eager heads for its round; a library is never used for heads written to since, and a
new heads.first(k) module over the same heads finds the loaded one."""
import copy

import pytest
import torch

import decoding
import models.compiled_cpu as cc
from models import library_cache
from models.heads import save_heads
from models.yoco import YOCOConfig, YOCODecoder
from decoding.strategies import speculative_row
from decoding.verify import tracing
from test_blockwise import fitted_hydra, random_heads, tiny
from test_speculative_row import Chunks, STATS

K = 2  # heads a round (block_size): one library per kind
ROW = [5, 9, 3, 17, 22, 8, 4, 30, 11]


def tiny_yoco():
    torch.manual_seed(1)
    m = YOCODecoder(YOCOConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, window=4,
                               max_rollback=6, max_seq_len=128)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module", params=["independent", "hydra", "yoco_independent"])
def pair(request, tmp_path_factory):
    """(compiled target, eager copy, heads with k = 4, directory of the built library)."""
    m = tiny_yoco() if request.param.startswith("yoco") else tiny()
    heads = fitted_hydra(m) if request.param == "hydra" else random_heads(m)
    with torch.no_grad():  # values a directory keeps (save_heads writes fp16): its heads find this library
        for p in heads.parameters():
            p.copy_(p.half())
    eager = copy.deepcopy(m)
    eager.compile_step = False
    m.compile_step = True
    d = tmp_path_factory.mktemp(f"guessing_{request.param}")
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setenv(library_cache.CACHE_ENV, str(d))
        step = m.guessing_on(m.new_cache(1, 16), heads.first(K))
        if step is None or step(torch.tensor([ROW[:3]]), 1) is None:
            pytest.fail("the compiled CPU step with heads did not build on this machine (see the warning)")
    return m, eager, heads, d


@pytest.fixture
def served(pair, monkeypatch):
    """The built library's directory as the cache; no build from here on (a build fails the test
    unless the test allows it); yields the list of steps the guessing library served."""
    monkeypatch.setenv(library_cache.CACHE_ENV, str(pair[3]))
    monkeypatch.setattr(cc.CompiledStep, "_build", lambda self, *a: pytest.fail("rebuilt"))
    calls, call = [], cc.CompiledStep.__call__

    def spy(self, ids, cache, keep=0):
        out = call(self, ids, cache, keep)
        if self.heads is not None and out is not None:
            calls.append(ids.shape[1])
        return out
    monkeypatch.setattr(cc.CompiledStep, "__call__", spy)
    return calls


def _eager_guesses(heads, target, hidden, logits):
    """HeadsProposer's greedy picks after each row: hidden (N, dim), logits (N, V)."""
    return heads.propose(hidden, logits.argmax(-1), target, lambda j, scores, so_far: scores.argmax(-1))


def _decisive(scores: torch.Tensor) -> torch.Tensor:
    """Rows whose best score leads the second by more than rounding can close (> 1e-4)."""
    top = scores.topk(2, -1).values
    return top[..., 0] - top[..., 1] > 1e-4


def test_step_equals_the_eager_forward_and_heads(pair, served):
    model, eager, heads, _ = pair
    sub = heads.first(K)
    cache, ecache = model.new_cache(1, 48), eager.new_cache(1, 48)
    g = torch.Generator().manual_seed(3)
    compared = total = 0
    with torch.no_grad():
        step = model.guessing_on(cache, sub)
        # a prompt (its last position), verify blocks of K + 1, a rollback, a decode step
        for T, keep, cut in [(9, 1, 0), (3, 3, 0), (3, 3, 2), (1, 1, 0), (3, 3, 1), (3, 3, 0)]:
            ids = torch.randint(4, 64, (1, T), generator=g)
            logits, guesses = step(ids, keep)
            want, hidden = eager(ids, ecache, return_hidden=True)
            want, hidden = want[0, -keep:], hidden[0, -keep:]
            assert logits.shape == (1, keep, 64) and guesses.shape == (1, keep, K)
            assert torch.equal(logits[0].argmax(-1), want.argmax(-1))
            assert (logits[0] - want).abs().max() < 1e-5
            expect = _eager_guesses(sub, eager, hidden, want)
            # each head's logits, to skip the near-ties where rounding may pick either token
            head_scores = _head_scores(sub, eager, hidden, want)
            ok = _decisive(head_scores).all(-1)
            assert torch.equal(guesses[0][ok], expect[ok])
            compared, total = compared + int(ok.sum()), total + keep
            cache.truncate(cut)
            ecache.truncate(cut)
    assert served and compared >= 0.8 * total


def _head_scores(heads, target, hidden, logits):
    """(N, k, V): each head's logits after the eager picks."""
    if hasattr(heads, "features"):
        return heads(hidden[:, None], target.lm_head)[:, 0]
    s, tok, out = hidden, logits.argmax(-1), []
    for j in range(heads.k):
        s, f = heads.step(j, s, target.embed(tok))
        out.append(target.lm_head(f))
        tok = out[-1].argmax(-1)
    return torch.stack(out, 1)


def _blockwise(model, heads, ids, **kw):
    """(output, streamed chunks, traced rounds) of one blockwise call of K heads a round."""
    streamer = Chunks()
    with tracing() as rounds:
        out = decoding.generate(model, ids, streamer=streamer, strategy="blockwise", heads=heads, block_size=K,
                                max_new_tokens=24, eos_token_id=None, **kw)
    return out, streamer.got, rounds


def _same_run(a, b):
    (x, xc, xr), (y, yc, yr) = a, b
    assert torch.equal(x.sequences, y.sequences) and xc == yc
    for f in STATS:
        assert getattr(x.stats, f) == getattr(y.stats, f), f
    assert len(xr) == len(yr) > 3
    for r, s in zip(xr, yr):
        for f in ("draft", "accepted", "tokens", "kept", "ran"):
            assert torch.equal(getattr(r, f), getattr(s, f)), f


@pytest.mark.parametrize("acceptance", [{}, dict(acceptance="topk", acceptance_top_k=2)], ids=["exact", "top2"])
def test_blockwise_through_it_equals_the_eager_row_path(pair, served, acceptance):
    model, eager, heads, _ = pair
    ids = torch.tensor([ROW])
    fast = _blockwise(model, heads, ids, **acceptance)
    assert served and all(T <= K + 1 or T == len(ROW) for T in served)
    _same_run(fast, _blockwise(eager, heads, ids, **acceptance))
    if not acceptance:
        greedy = decoding.generate(eager, ids, max_new_tokens=24, eos_token_id=None).sequences
        assert torch.equal(fast[0].sequences, greedy)


def test_wide_prompt_takes_the_eager_heads_for_its_round(pair, served, monkeypatch):
    model, eager, heads, _ = pair
    wide = ROW * 2 + [7, 7]  # past the plain step's 16 tokens: the prompt runs eagerly, verify blocks compiled
    monkeypatch.setattr(cc, "PROMPT_ROWS", len(wide) - 1)
    eager_guess, picked = speculative_row._heads_guess, []
    monkeypatch.setattr(speculative_row, "_heads_guess", lambda *a: picked.append(1) or eager_guess(*a))
    ids = torch.tensor([wide])
    fast = _blockwise(model, heads, ids)
    assert picked == [1] and served and len(wide) not in served
    _same_run(fast, _blockwise(eager, heads, ids))


def test_heads_written_to_are_never_served_and_new_first_k_finds_the_loaded_one(pair, served, monkeypatch):
    model, eager, heads, _ = pair
    ids = torch.tensor([ROW])
    _blockwise(model, heads, ids)
    loaded = dict(model._guessing)
    _blockwise(model, heads, ids)  # blockwise's heads.first(K) is a new module each call
    assert model._guessing == loaded
    builds = []
    monkeypatch.setattr(cc.CompiledStep, "_build", lambda self, *a: builds.append(a[1]) or 1 / 0)
    saved, before = heads.w2.detach().clone(), library_cache.values_hash(heads.first(K))
    try:
        with torch.no_grad():
            heads.w2.add_(0.5)
        with pytest.warns(UserWarning, match="compiled CPU step unavailable"):
            fast = _blockwise(model, heads, ids)  # the build fails here: the eager heads guess
        # (the plain step, which the eager heads' rounds take, is not in this directory either)
        built = [key["heads"]["values"] for key in builds if "heads" in key]
        assert built == [library_cache.values_hash(heads.first(K))] and built[0] != before
        _same_run(fast, _blockwise(eager, heads, ids))
    finally:
        with torch.no_grad():
            heads.w2.copy_(saved)


def test_a_round_reads_the_logits_and_the_guesses(pair, served, monkeypatch):
    """docs/DESIGN.md 6: 2 host reads a round in decoding/ (numpy views of the verify's logits and of
    its guesses), none in models/ but YOCO's truncate; rounds counted at each library call."""
    from test_host_syncs import HostReads
    model, _, heads, _ = pair
    reads, call = HostReads(), cc.CompiledStep.__call__

    def marked(self, *a, **kw):
        reads.next_round()
        return call(self, *a, **kw)
    monkeypatch.setattr(cc.CompiledStep, "__call__", marked)
    with reads:
        decoding.generate(model, torch.tensor([ROW]), strategy="blockwise", heads=heads, block_size=K,
                          max_new_tokens=16, eos_token_id=None)
    steady = reads.rounds[2:-1]
    assert len(steady) >= 2 and len(served) == len(reads.rounds) - 1
    truncate = 1 if isinstance(model, YOCODecoder) else 0  # YOCO's: range, floor and longest in one read
    assert max(r["decoding"] for r in steady) == 2 and max(r["models"] for r in steady) == truncate


def test_heads_from_a_directory_find_the_library_in_every_call(pair, served, tmp_path):
    """generate() loads heads=PATH anew in every call, as tensors made under inference_mode: the
    library of their values serves every call, loaded once."""
    model, eager, heads, _ = pair
    d = save_heads(heads.first(K), tmp_path / "heads")
    ids = torch.tensor([ROW])
    model._guessing.clear()  # other tests' heads
    for _ in range(2):
        fast = _blockwise(model, str(d), ids)
        assert served and len(model._guessing) == 1
        steps = set(map(id, model._guessing.values()))
        served.clear()
    assert steps == set(map(id, model._guessing.values()))
    _same_run(fast, _blockwise(eager, str(d), ids))
