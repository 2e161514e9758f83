"""Beam search token-identical to HF 5.x `generate(num_beams=...)` (the oracle) on four HF families
and the native model; beam search with one beam is greedy; with num_beams = V^2 on a 3-token search
it finds the exact best sequences of a brute-force enumeration; bad settings fail before any work."""
import itertools

import pytest
import torch
import transformers

import decoding
from decoding.strategies import beam, greedy
from hf_tiny import left_pad, tiny
from models.hf_weights import from_hf

FAMILIES = ["llama", "qwen2", "gpt2", "gpt_neox"]
ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70]]
N = 10
# (num_beams, length_penalty, early_stopping, num_return_sequences)
GRID = [(4, 1.0, False, 1), (4, 0.0, True, 2), (3, -1.0, "never", 3), (5, 2.0, "never", 2),
        (2, 1.0, True, 2), (4, -0.5, False, 4)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models on 2 shared cores: a second intra-op thread only waits, 10x slower under load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_beam(hf, ids, mask, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, do_sample=False, output_scores=True,
                           return_dict_in_generate=True, **kw)


def early_eos(hf, ids, mask) -> int:
    """Row 1's 4th greedy token: beams meet it early, so some finish before max_new_tokens."""
    with torch.no_grad():
        free = hf.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, eos_token_id=None)
    return int(free[1, ids.shape[1] + 3])


def assert_same(out, ref, atol=1e-5, rtol=1e-5):
    # sequences_scores sum up to N log-probs (times a length factor): ~200 in magnitude, so float32
    # sums in another order (BLAS blocking, thread count) differ by ~1e-4; the tolerance is relative
    assert torch.equal(out.sequences, ref.sequences), (out.sequences, ref.sequences)
    assert torch.allclose(out.sequences_scores, ref.sequences_scores, atol=atol, rtol=rtol), \
        (out.sequences_scores, ref.sequences_scores)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_equals_hf(family):
    hf = tiny(family)
    ids, mask = left_pad(ROWS)
    eos = early_eos(hf, ids, mask)
    finished_early = 0
    for nb, lp, early, n in GRID:
        kw = dict(max_new_tokens=N, num_beams=nb, length_penalty=lp, early_stopping=early, num_return_sequences=n,
                  eos_token_id=eos)
        ref = hf_beam(hf, ids, mask, **kw)
        out = decoding.generate(hf, ids, attention_mask=mask, output_scores=True, **kw)
        assert_same(out, ref)
        new = ref.sequences[:, ids.shape[1]:]
        finished_early += int((new[:, :-1] == eos).any())
        ends = (new == eos).int().argmax(1)
        assert out.stats.new_tokens == int(torch.where((new == eos).any(1), ends + 1, new.shape[1]).sum())
        assert out.stats.target_forwards == len(ref.scores)
    assert finished_early, "eos should end some returned beams before max_new_tokens"


@pytest.mark.parametrize("kw", [
    dict(repetition_penalty=1.5), dict(min_new_tokens=6), dict(max_length=20),
    dict(pad_token_id=0, length_penalty=-1.0),
    dict(pad_token_id=7, length_penalty=-1.0, num_return_sequences=3), dict(eos_token_id="list"),
    dict(eos_token_id=None),
])
def test_beam_arguments_equal_hf(kw):
    """Processors on log-probs, eos lists, and HF 5.x's fill: pad_token_id, or eos when it is 0."""
    hf = tiny("llama")
    ids, mask = left_pad(ROWS)
    eos = early_eos(hf, ids, mask)
    kw = {"max_new_tokens": N, "eos_token_id": eos, "num_beams": 3, **kw}
    if kw["eos_token_id"] == "list":
        kw["eos_token_id"] = [eos, 50]
    if "max_length" in kw:
        del kw["max_new_tokens"]
    ref = hf_beam(hf, ids, mask, **kw)
    out = decoding.generate(hf, ids, attention_mask=mask, output_scores=True, **kw)
    assert_same(out, ref)
    if "pad_token_id" in kw:  # rows that finished early are filled with pad, or with eos when pad is 0
        new = out.sequences[:, ids.shape[1]:]
        after_eos = (new == eos).int().cumsum(1).roll(1, 1).clamp(max=1).bool()
        after_eos[:, 0] = False
        assert after_eos.any() and (new[after_eos] == (kw["pad_token_id"] or eos)).all()


def test_beam_user_processor_equals_hf():
    hf = tiny("gpt2")
    ids, mask = left_pad(ROWS)

    def no_small_ids(input_ids, scores):  # HF-style callable: sees (B*N, T + step) ids
        assert input_ids.shape[0] == scores.shape[0] == 3 * 3
        return scores.masked_fill(torch.arange(scores.shape[1]) < 10, -float("inf"))

    kw = dict(max_new_tokens=6, num_beams=3, eos_token_id=None)
    ref = hf_beam(hf, ids, mask, logits_processor=transformers.LogitsProcessorList([no_small_ids]), **kw)
    out = decoding.generate(hf, ids, attention_mask=mask, logits_processor=[no_small_ids], output_scores=True, **kw)
    assert_same(out, ref)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_native_beam_equals_hf(name):
    hf = tiny(name)
    native = from_hf(hf).eval()
    ids, mask = left_pad(ROWS)
    eos = early_eos(hf, ids, mask)
    for nb, lp, early, n in GRID[:4]:
        kw = dict(max_new_tokens=N, num_beams=nb, length_penalty=lp, early_stopping=early, num_return_sequences=n,
                  eos_token_id=eos)
        ref = hf_beam(hf, ids, mask, **kw)
        out = decoding.generate(native, ids, attention_mask=mask, output_scores=True, **kw)
        # another model implementation: logits agree to ~1e-6, so the scores to 1e-5 relative
        assert_same(out, ref)


def test_one_beam_is_greedy():
    hf = tiny("qwen2")
    ids, mask = left_pad(ROWS)
    eos = early_eos(hf, ids, mask)
    model = decoding.api.as_decoder(hf)
    for kw in (dict(eos_token_id=None), dict(eos_token_id=eos, early_stopping=True, pad_token_id=7)):
        # HF routes num_beams=1 to greedy; run the beam algorithm itself with a single beam (pad 7:
        # with pad 0, beam search fills finished rows with eos, greedy with 0)
        cfg, _ = decoding.config.resolve(model, dict(max_new_tokens=N, num_beams=2, **kw))
        cfg.num_beams = 1
        prompt = decoding.api.prepare_prompt(ids, mask, model, cfg)
        with torch.inference_mode():
            beamed = beam.run(model, prompt, cfg).sequences
            greedily = greedy.run(model, prompt, cfg).sequences
        assert torch.equal(beamed, greedily), kw
    assert (greedily[:, ids.shape[1]:-1] == eos).any()


def test_beam_finds_the_brute_force_optimum():
    """V = 4, 3 new tokens: num_beams = V^2 keeps every 2-token prefix, so the search is exact."""
    V, steps = 4, 3
    hf = tiny("llama", vocab_size=V)
    ids, mask = left_pad([[3, 1, 2, 0, 3], [2, 1]])
    with torch.no_grad():
        best = []
        for b in range(ids.shape[0]):
            prompt = ids[b][mask[b].bool()]
            tails = torch.tensor(list(itertools.product(range(V), repeat=steps)))  # (V^3, 3)
            seqs = torch.cat([prompt.expand(len(tails), -1), tails], 1)
            logp = hf(seqs).logits.log_softmax(-1)[:, len(prompt) - 1:-1]  # (V^3, 3, V)
            total = logp.gather(2, tails[:, :, None]).sum((1, 2))
            order = total.argsort(descending=True)[:V * V]
            best.append((tails[order], total[order] / steps))
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=steps, num_beams=V * V,
                            num_return_sequences=V * V, eos_token_id=None, output_scores=True)
    got = out.sequences[:, ids.shape[1]:].view(2, V * V, steps)
    scores = out.sequences_scores.view(2, V * V)
    for b, (tails, mean) in enumerate(best):
        assert torch.equal(got[b], tails)
        assert torch.allclose(scores[b], mean, atol=1e-5)


class NoForward:
    """A model that must never run: errors have to come before any work."""
    vocab_size = 96
    device = torch.device("cpu")

    def new_cache(self, *a, **k):
        raise AssertionError("a cache was made before the error")

    def forward(self, *a, **k):
        raise AssertionError("a forward ran before the error")


@pytest.mark.parametrize("kw,exc,pattern", [
    (dict(num_beams=2, num_beam_groups=4, diversity_penalty=1.0), ValueError, "num_beam_groups.*<= `num_beams`"),
    (dict(num_beams=6, num_beam_groups=4, diversity_penalty=1.0), ValueError, "divisible by `num_beam_groups`"),
    (dict(num_beams=4, num_return_sequences=5), ValueError, "num_return_sequences.*<= `num_beams`"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True), ValueError, "do_sample=False"),
    (dict(num_beams=4, early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(num_beams=4, length_penalty="long"), ValueError, "length_penalty"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=-1.0), ValueError, "diversity_penalty"),
    (dict(num_beams=4, num_beam_groups=0), ValueError, "num_beam_groups"),
])
def test_bad_beam_settings_fail_before_work(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        decoding.generate(NoForward(), [[5, 6, 7]], max_new_tokens=4, **kw)


def test_beam_only_settings_warn_when_idle():
    hf = tiny("gpt2")
    with pytest.warns(UserWarning, match="diversity_penalty"):
        decoding.generate(hf, [[5, 6]], max_new_tokens=2, num_beams=2, diversity_penalty=1.0)
    with pytest.warns(UserWarning, match="length_penalty"):
        decoding.generate(hf, [[5, 6]], max_new_tokens=2, length_penalty=2.0)
