"""Speculative decoding and prompt lookup of one row (decoding/strategies/speculative_row.py) give
what the general batched loop gives: the same tokens (greedy: and both HF's greedy output;
sampling with top-p or min-p: the same draws under a seed, the general loop being the one checked
against the exact distribution; with temperature and top-k only the row samples on the host,
tests/test_row_sampling.py, and is checked here for its rounds), the same statistics and the same streamed chunks, for a constant k, the confidence
threshold, the heuristic schedule, sampling's warpers, an eos inside a round, max_new_tokens cutting
a round and n-gram guesses past the vocabulary, on HF, native and YOCO pairs. It is taken exactly
where it applies, and records the same rounds under verify.tracing()."""
from contextlib import contextmanager

import pytest
import torch

import decoding
from decoding.strategies import speculative_row
from decoding.verify import tracing
from hf_tiny import hf_greedy, tiny
from models.cache import StaticCache
from models.hf_weights import from_hf
from test_speculative_greedy import char_tokenizer, noisy_copy, yoco_pair

ROW = [5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7]
STATS = ("new_tokens", "prefill_tokens", "target_forwards", "draft_forwards", "tau", "accept_rate_by_position",
         "kv_cache_bytes")


@pytest.fixture(scope="module")
def hf_pair():
    target = tiny("llama")
    return target, noisy_copy(target, "llama", 0.02)


class Chunks:
    def __init__(self):
        self.got = []

    def put(self, t):
        self.got.append(t.tolist())

    def end(self):
        self.got.append("end")


@contextmanager
def row_path(on: bool = True):
    """speculative_row taken where it applies (on) or nowhere; yields the list its runs append to."""
    called = []
    run, applies = speculative_row.run, speculative_row.applies

    def spy(*a, **k):
        called.append(1)
        return run(*a, **k)
    speculative_row.run = spy
    if not on:
        speculative_row.applies = lambda *a, **k: False
    try:
        yield called
    finally:
        speculative_row.run, speculative_row.applies = run, applies


def _both(target, ids, **kw):
    """(one-row path's output, general loop's output, their streamed chunks)."""
    outs, chunks = [], []
    for fast in (True, False):
        streamer = Chunks()
        with row_path(fast) as called:
            outs.append(decoding.generate(target, ids, streamer=streamer, **kw))
        assert bool(called) == fast, "the one-row path must be taken where it applies, and only then"
        chunks.append(streamer.got)
    return outs[0], outs[1], chunks


def same_rounds(target, rows, **kw) -> None:
    """verify.tracing() records the same Rounds on both paths."""
    traces = []
    for fast in (True, False):
        with row_path(fast), tracing() as rounds:
            decoding.generate(target, rows, **kw)
        traces.append(rounds)
    assert len(traces[0]) == len(traces[1]) > 3
    for a, b in zip(*traces):
        for f in ("draft", "scores", "accepted", "tokens", "kept", "ran"):
            x, y = getattr(a, f), getattr(b, f)
            assert x.dtype == y.dtype and torch.equal(x, y), f


def _same(a, b):
    assert torch.equal(a.sequences, b.sequences)
    for f in STATS:
        assert getattr(a.stats, f) == getattr(b.stats, f), f


SETTINGS = {
    "k3": dict(num_assistant_tokens=3, assistant_confidence_threshold=0),
    "threshold": dict(num_assistant_tokens=4, assistant_confidence_threshold=0.4),
    "heuristic": dict(num_assistant_tokens=2, num_assistant_tokens_schedule="heuristic",
                      assistant_confidence_threshold=0),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("max_new", [1, 3, 16])
def test_hf_pair_equals_the_general_loop_and_hf(hf_pair, setting, max_new):
    target, draft = hf_pair
    ids = torch.tensor([ROW])
    fast, general, chunks = _both(target, ids, assistant_model=draft, max_new_tokens=max_new, eos_token_id=None,
                                  **SETTINGS[setting])
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert torch.equal(fast.sequences, hf_greedy(target, ids, None, max_new, eos_token_id=None))
    if max_new == 16:
        assert 0 < fast.stats.accept_rate_by_position[0] < 1 and fast.stats.tau > 1


SAMPLING = {  # top-p / min-p: the general loop's torch arithmetic, so the same draws
    "warpers": dict(num_assistant_tokens=3, temperature=0.7, top_k=20, top_p=0.9, min_p=0.02,
                    assistant_confidence_threshold=0),
    "top_p_threshold": dict(num_assistant_tokens=4, top_p=0.95, assistant_confidence_threshold=0.3),
    "min_p_heuristic": dict(num_assistant_tokens=2, num_assistant_tokens_schedule="heuristic", min_p=0.01,
                            assistant_confidence_threshold=0),
}
HOST = {  # temperature / top-k only: row_sampling's arithmetic (tests/test_row_sampling.py: its distribution)
    "defaults": dict(num_assistant_tokens=4, assistant_confidence_threshold=0),  # the model's top_k 50
    "no_warper": dict(num_assistant_tokens=3, top_k=0, assistant_confidence_threshold=0),
    "threshold": dict(num_assistant_tokens=4, temperature=0.8, assistant_confidence_threshold=0.3),
    "heuristic": dict(num_assistant_tokens=2, num_assistant_tokens_schedule="heuristic",
                      assistant_confidence_threshold=0),
}


@pytest.mark.parametrize("setting", list(SAMPLING))
@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_draws_what_the_general_loop_draws(hf_pair, setting, seed):
    target, draft = hf_pair
    fast, general, chunks = _both(target, torch.tensor([ROW]), assistant_model=draft, max_new_tokens=16,
                                  eos_token_id=None, do_sample=True, seed=seed, **SAMPLING[setting])
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert 0 < fast.stats.accept_rate_by_position[0] < 1


@pytest.mark.parametrize("setting", list(HOST))
def test_host_sampling_rounds(hf_pair, setting):
    """The host arithmetic's calls: reproducible under a seed, streamed as returned, their statistics
    those of their rounds (traced), accepting some guesses and rejecting others."""
    target, draft = hf_pair
    kw = dict(assistant_model=draft, max_new_tokens=16, eos_token_id=None, do_sample=True, seed=3, **HOST[setting])
    outs = []
    for _ in range(2):
        streamer = Chunks()
        with tracing() as rounds:
            outs.append(decoding.generate(target, torch.tensor([ROW]), streamer=streamer, **kw))
        assert sum(streamer.got[1:-1], []) == outs[-1].sequences[0, len(ROW):].tolist()
    _same(*outs)
    stats = outs[0].stats
    assert stats.target_forwards == len(rounds) and stats.new_tokens == sum(int(r.kept[0]) for r in rounds) == 16
    proposed = [r for r in rounds if r.draft.shape[1]]
    assert stats.accept_rate_by_position[0] == sum(int(r.accepted[0]) > 0 for r in proposed) / len(proposed)
    assert 0 < stats.accept_rate_by_position[0] < 1


def test_sampling_with_eos_and_native_models():
    """An eos inside a round ends the row there, on both paths: each path's draws up to its first eos."""
    hf_target = tiny("llama")
    target, draft = from_hf(hf_target), from_hf(noisy_copy(hf_target, "llama", 0.05))
    ids = torch.tensor([ROW])
    for warpers in (dict(), dict(top_p=0.98)):  # the host arithmetic, the torch one
        kw = dict(assistant_model=draft, max_new_tokens=16, do_sample=True, seed=3, num_assistant_tokens=4,
                  assistant_confidence_threshold=0, **warpers)
        free = decoding.generate(target, ids, eos_token_id=None, **kw).sequences[0, len(ROW):].tolist()
        eos = free[6]  # the same draws up to the first eos: the row ends there
        fast, general, _ = _both(target, ids, eos_token_id=eos, **kw)
        assert fast.sequences[0, len(ROW):].tolist() == free[:free.index(eos) + 1]
        if warpers:
            _same(fast, general)


REPEATS = [5, 17, 23, 8, 41, 5, 17, 23, 9, 60, 5, 17, 33, 7, 41, 5, 17]  # n-grams that recur


@pytest.mark.parametrize("k,ngram", [(2, 2), (4, 1), (4, 3)])
def test_prompt_lookup_equals_the_general_loop_and_hf(hf_pair, k, ngram):
    target = hf_pair[0]
    ids = torch.tensor([REPEATS])
    fast, general, chunks = _both(target, ids, prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram,
                                  max_new_tokens=16, eos_token_id=None)
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert torch.equal(fast.sequences, hf_greedy(target, ids, None, 16, eos_token_id=None))
    assert fast.stats.accept_rate_by_position and fast.stats.draft_forwards == 0


def test_prompt_lookup_sampling_draws_what_the_general_loop_draws(hf_pair):
    fast, general, _ = _both(hf_pair[0], torch.tensor([REPEATS]), prompt_lookup_num_tokens=3, max_new_tokens=16,
                             eos_token_id=None, do_sample=True, seed=2, temperature=0.8, top_p=0.95)
    _same(fast, general)


def test_prompt_lookup_guesses_past_the_vocabulary(hf_pair):
    """An embedding padded past the LM head's vocabulary lets the prompt hold ids no logit scores:
    the n-gram guess marks them invalid (filler 0, never accepted), as the general proposer does.
    With every logit tied the target's argmax is 0, the filler itself: only the invalid mark keeps
    it from being accepted."""
    import copy
    target = copy.deepcopy(hf_pair[0])
    old = target.get_input_embeddings()
    V, dim = old.weight.shape
    padded = torch.nn.Embedding(V + 8, dim)
    with torch.no_grad():
        padded.weight[:V] = old.weight
    target.set_input_embeddings(padded)
    ids = torch.tensor([[5, 6, V + 3, 7, 9, 5, 6]])  # the tail 5, 6 recurs before an id >= V
    fast, general, _ = _both(target, ids, prompt_lookup_num_tokens=4, max_new_tokens=8, eos_token_id=None,
                             do_sample=True, seed=0, top_p=0.99)
    _same(fast, general)
    with torch.no_grad():
        target.get_output_embeddings().weight.zero_()
    fast, general, _ = _both(target, ids, prompt_lookup_num_tokens=4, max_new_tokens=8, eos_token_id=None)
    _same(fast, general)
    assert fast.sequences[0, ids.shape[1]:].tolist() == [0] * 8
    with tracing() as rounds:
        decoding.generate(target, ids, prompt_lookup_num_tokens=4, max_new_tokens=8, eos_token_id=None)
    assert rounds[0].draft.tolist() == [[0, 7, 9]] and rounds[0].accepted.tolist() == [0]  # [invalid, 7, 9]


def test_eos_inside_a_round(hf_pair):
    """An eos the target emits inside a round, with guesses accepted past it: the draft is the
    target itself, so every round takes its 4 guesses and the bonus (tokens 5r .. 5r + 4), and the
    eos is a token first emitted away from a round's end."""
    target = hf_pair[0]
    ids = torch.tensor([ROW])
    free = hf_greedy(target, ids, None, 16, eos_token_id=None)[0, len(ROW):].tolist()
    eos = next(t for i, t in enumerate(free) if i % 5 != 4 and t not in free[:i])
    ref = hf_greedy(target, ids, None, 16, eos_token_id=eos)
    fast, general, chunks = _both(target, ids, assistant_model=target, max_new_tokens=16, eos_token_id=eos,
                                  num_assistant_tokens=4, assistant_confidence_threshold=0)
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert torch.equal(fast.sequences, ref) and ref.shape[1] < len(ROW) + 16 and int(ref[0, -1]) == eos
    assert fast.stats.accept_rate_by_position == [1.0] * 4


def test_traced_rounds_equal_the_general_loop(hf_pair):
    """verify.tracing() (decoding/viz.py, bench.step_costs) records the same Rounds on both paths."""
    target, draft = hf_pair
    same_rounds(target, [ROW], assistant_model=draft, max_new_tokens=16, eos_token_id=None, num_assistant_tokens=3,
                assistant_confidence_threshold=0.4)


def test_native_and_yoco_pairs():
    hf_target = tiny("llama")
    target, draft = from_hf(hf_target), from_hf(noisy_copy(hf_target, "llama", 0.05))
    ids = torch.tensor([ROW])
    fast, general, _ = _both(target, ids, assistant_model=draft, max_new_tokens=16, eos_token_id=None,
                             num_assistant_tokens=3, assistant_confidence_threshold=0)
    _same(fast, general)
    assert torch.equal(fast.sequences, hf_greedy(hf_target, ids, None, 16, eos_token_id=None))
    yt, yd = yoco_pair()
    ids = torch.tensor([[5, 17, 23, 8, 41, 9, 7, 3, 12]])
    fast, general, _ = _both(yt, ids, assistant_model=yd, max_new_tokens=24, eos_token_id=None,
                             num_assistant_tokens=5, assistant_confidence_threshold=0)
    _same(fast, general)
    assert torch.equal(fast.sequences, decoding.generate(yt, ids, max_new_tokens=24, eos_token_id=None).sequences)
    assert fast.stats.tau > 1


@pytest.mark.parametrize("case", ["batch2", "padded", "processor", "sampling_processor", "scores", "stop"])
def test_other_calls_take_the_general_loop(hf_pair, case):
    target, draft = hf_pair
    ids, kw = torch.tensor([ROW]), dict(assistant_model=draft, max_new_tokens=4, eos_token_id=None)
    kw.update({"batch2": dict(input_ids=torch.tensor([ROW, ROW[::-1]])),
               "padded": dict(attention_mask=torch.tensor([[0] + [1] * (len(ROW) - 1)])),
               "sampling_processor": dict(do_sample=True, seed=0, min_new_tokens=2, eos_token_id=5),
               "processor": dict(repetition_penalty=1.3),
               "scores": dict(output_scores=True, return_dict_in_generate=True),
               "stop": dict(stop_strings=["x"], tokenizer=char_tokenizer())}[case])
    with row_path() as called:
        decoding.generate(target, kw.pop("input_ids", ids), **kw)
    assert not called


def test_one_row_truncate_by_a_host_int_equals_the_checked_one():
    """StaticCache.truncate(int) on one row with an exact bound skips the read-back: same lengths
    and bound as the tensor path, and the same error outside [0, length]."""
    caches = [StaticCache(2, 1, 2, 16, 4) for _ in range(2)]
    for c in caches:
        c.reserve(9)
        c.advance(9)
    caches[0].truncate(4)
    caches[1].truncate(torch.tensor([4]))
    assert caches[0].lengths.tolist() == caches[1].lengths.tolist() == [5]
    assert caches[0].longest == caches[1].longest == 5 and caches[0].exact
    for bad in (6, -1):
        with pytest.raises(ValueError, match=r"truncate\(n\): n must lie in \[0, length\]"):
            caches[0].truncate(bad)
    assert caches[0].lengths.tolist() == [5]
