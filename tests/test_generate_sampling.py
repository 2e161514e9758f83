"""Sampling draws from exactly the processed distribution: empirical counts of thousands of draws
(fixed seed) pass a chi-square test against the distribution computed with HF's own processors
(the oracle), and a deliberately wrong processor fails the same test."""
import pytest
import torch
from scipy.stats import chisquare
from transformers import (MinNewTokensLengthLogitsProcessor, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

import decoding
import decoding.processors
import decoding.sampling
from hf_tiny import left_pad, tiny

DRAWS = 20000
REAL_TOP_K = decoding.processors.top_k
PROMPT = torch.tensor([[3, 7, 5, 9]])


@pytest.fixture(scope="module")
def model16():
    return tiny("llama", vocab_size=16)


def oracle(logits, input_ids, temperature=1.0, top_k=50, top_p=1.0, min_p=None, repetition_penalty=1.0,
           min_new_tokens=0, eos_token_id=2, prompt_len=None):
    """HF's processors in HF's order -> probabilities (N, V)."""
    s = logits.float()
    if repetition_penalty != 1.0:
        s = RepetitionPenaltyLogitsProcessor(repetition_penalty)(input_ids, s)
    if min_new_tokens:
        s = MinNewTokensLengthLogitsProcessor(prompt_len, min_new_tokens, eos_token_id)(input_ids, s)
    if temperature != 1.0:
        s = TemperatureLogitsWarper(temperature)(input_ids, s)
    if top_k:
        s = TopKLogitsWarper(top_k)(input_ids, s)
    if top_p < 1.0:
        s = TopPLogitsWarper(top_p)(input_ids, s)
    if min_p is not None:
        s = MinPLogitsWarper(min_p)(input_ids, s)
    return s.softmax(-1)


def chi2_pvalue(samples, probs):
    """samples (N,) of cell indices, probs (C,): p-value; cells of zero probability must stay empty."""
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token the processors removed"
    expected = probs[support].double() * samples.numel()
    counts = counts[support]
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = expected * counts.sum() / expected.sum()
    return chisquare(counts.numpy(), expected.numpy()).pvalue


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_draws_follow_exact_probabilities(draw):
    """Both samplers (the exponential race of plain sampling, the inverse transform of speculative
    sampling and SJD) against the exact law of rows that do not sum to 1, with zeros at the ends and
    inside (never drawn) and a token of probability ~1e-4."""
    draw = getattr(decoding.sampling, draw)
    probs = torch.tensor([[0, 0, 3, 1, 0, 2e-3, 4, 0], [5, 0, 0, 0, 0, 0, 0, 5e-4]])
    g = torch.Generator().manual_seed(0)
    for row in probs:
        samples = draw(row.expand(DRAWS, -1), g)
        assert samples.shape == (DRAWS,) and samples.dtype == torch.long
        assert chi2_pvalue(samples, row / row.sum()) > 1e-3


def first_tokens(model, **kw):
    out = decoding.generate(model, PROMPT, do_sample=True, num_return_sequences=DRAWS, max_new_tokens=1, seed=1234,
                            **kw)
    return out.sequences[:, -1]


SETTINGS = [
    dict(), dict(temperature=0.7), dict(temperature=1.6, top_k=0), dict(top_k=5), dict(top_p=0.8),
    dict(min_p=0.15), dict(temperature=1.3, top_k=8, top_p=0.9), dict(temperature=0.8, top_p=0.95, min_p=0.05),
    dict(temperature=1.2, repetition_penalty=1.4), dict(min_new_tokens=1, eos_token_id=14),
]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_first_token_distribution(model16, kw):
    with torch.no_grad():
        logits = model16(PROMPT).logits[:, -1]
    probs = oracle(logits, PROMPT, prompt_len=PROMPT.shape[1], **kw)[0]
    assert chi2_pvalue(first_tokens(model16, **kw), probs) > 1e-3


def wrong_top_p(scores, p, min_keep=1):
    """Off by one: also drops the token that crosses the mass p."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    mass = sorted_scores.softmax(-1).cumsum(-1)
    drop = mass >= p
    drop[..., 0] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@pytest.mark.parametrize("name,wrong,kw", [
    ("temperature", lambda s, t: s, dict(temperature=0.7)),  # temperature ignored
    ("top_p", wrong_top_p, dict(top_p=0.8)),
    ("top_k", lambda s, k: REAL_TOP_K(s, k - 1), dict(top_k=5)),
])
def test_a_wrong_processor_fails_the_same_test(model16, monkeypatch, name, wrong, kw):
    with torch.no_grad():
        logits = model16(PROMPT).logits[:, -1]
    probs = oracle(logits, PROMPT, **kw)[0]
    monkeypatch.setattr(decoding.processors, name, wrong)
    samples = first_tokens(model16, **kw)
    counts = torch.bincount(samples, minlength=16)
    assert counts[probs == 0].sum() > 0 or chi2_pvalue(samples, probs) < 1e-6


def test_two_token_joint_distribution():
    """Prefill, cache fan-out and a decode step: the pair (t1, t2) follows p(t1) p(t2 | t1)."""
    model = tiny("llama", vocab_size=8, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw = dict(temperature=1.3, top_k=6, repetition_penalty=1.2)
    out = decoding.generate(model, PROMPT % 8, do_sample=True, num_return_sequences=DRAWS, max_new_tokens=2,
                            eos_token_id=None, seed=7, **kw)
    pairs = out.sequences[:, -2] * 8 + out.sequences[:, -1]
    with torch.no_grad():
        p1 = oracle(model(PROMPT % 8).logits[:, -1], PROMPT % 8, **kw)[0]  # (8,)
        ctx = torch.cat([(PROMPT % 8).repeat(8, 1), torch.arange(8)[:, None]], 1)  # every first token
        p2 = oracle(model(ctx).logits[:, -1], ctx, **kw)  # (8, 8)
    assert chi2_pvalue(pairs, (p1[:, None] * p2).flatten()) > 1e-3


def test_same_seed_same_output_and_generator():
    model = tiny("gpt2")
    rows = [[5, 17, 23, 8, 41], [11, 4], [6, 55, 21]]
    kw = dict(do_sample=True, max_new_tokens=12, temperature=1.1, top_p=0.95)
    a = decoding.generate(model, rows, seed=11, **kw).sequences
    b = decoding.generate(model, rows, seed=11, **kw).sequences
    c = decoding.generate(model, rows, seed=12, **kw).sequences
    g = torch.Generator().manual_seed(11)
    d = decoding.generate(model, rows, generator=g, **kw).sequences
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.equal(a, c)


def test_num_return_sequences_layout():
    model = tiny("qwen2")
    ids, mask = left_pad([[5, 17, 23, 8, 41], [11, 4]])
    out = decoding.generate(model, ids, attention_mask=mask, do_sample=True, num_return_sequences=3,
                            max_new_tokens=8, eos_token_id=None, seed=3)
    assert out.sequences.shape == (6, ids.shape[1] + 8)
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids.repeat_interleave(3, 0))  # HF's row order
    assert len({tuple(r) for r in out.sequences[:3, ids.shape[1]:].tolist()}) > 1  # draws differ
    assert out.stats.new_tokens == 6 * 8 and out.stats.prefill_tokens == 7  # one prefill per prompt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_top_k_keeps_what_hf_keeps(dtype):
    """processors.top_k (numpy's selection of the k-th value for float32 on CPU, torch.topk
    otherwise) against HF's TopKLogitsWarper: ties at the k-th value, removed tokens, k past the
    vocabulary, a strided row."""
    g = torch.Generator().manual_seed(0)
    for V in (1, 7, 4096):
        for k in (1, 2, 5, V, V + 3):
            s = torch.randint(-3, 4, (6, V), generator=g).to(dtype)
            s[0, :V // 2] = float("-inf")
            ref = TopKLogitsWarper(k)(None, s)
            assert torch.equal(REAL_TOP_K(s, k), ref), (V, k)
            assert torch.equal(REAL_TOP_K(s.t().contiguous().t(), k), ref), (V, k)
