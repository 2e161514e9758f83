"""Speculative sampling draws from exactly the target's processed distribution: on an 8-token
vocabulary, the joint distribution of 2-3 generated tokens is enumerated from full forwards of the
target through HF's own processors (the oracle), and tens of thousands of speculative samples
(one batched call, fixed seed) pass a chi-square test against it. A wrong acceptance rule
(resampling a rejection from p instead of norm(max(0, p - q))) fails the same test."""
import copy
import itertools

import pytest
import torch
from transformers import (MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

import decoding
from exact_dist import chi2_pvalue
import decoding.sampling
from models import DecoderConfig, LlamaDecoder

V, DRAWS = 8, 20000
PROMPT = [1, 5, 3, 5]


def tiny_native(seed: int) -> LlamaDecoder:
    torch.manual_seed(seed)
    model = LlamaDecoder(DecoderConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, max_seq_len=32,
                                       eos_token_id=7, pad_token_id=0)).eval()
    with torch.no_grad():  # larger weights than init: peaked, varied distributions
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.6)
    return model


@pytest.fixture(scope="module")
def pair():
    return tiny_native(0), tiny_native(1)


def oracle_probs(model, prefixes, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                 min_new_tokens=0):
    """Processed next-token probabilities (N, V) after PROMPT + each prefix, with HF's processors."""
    ids = torch.tensor([PROMPT + list(p) for p in prefixes])
    with torch.no_grad():
        s = model.forward_train(ids)[:, -1].float()
    if repetition_penalty != 1.0:
        s = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, s)
    if min_new_tokens:
        s = MinNewTokensLengthLogitsProcessor(len(PROMPT), min_new_tokens, 7)(ids, s)
    if temperature != 1.0:
        s = TemperatureLogitsWarper(temperature)(ids, s)
    if top_k:
        s = TopKLogitsWarper(top_k)(ids, s)
    if top_p < 1.0:
        s = TopPLogitsWarper(top_p)(ids, s)
    return s.softmax(-1)


def joint(model, n, **kw):
    """Exact probability of every n-token continuation, (V**n,) in row-major token order."""
    probs = torch.ones(1)
    for step in range(n):
        prefixes = list(itertools.product(range(V), repeat=step))
        probs = (probs[:, None] * oracle_probs(model, prefixes, **kw)).flatten()
    return probs


def sample_cells(target, n, **kw):
    kw = {"eos_token_id": None, **kw}
    out = decoding.generate(target, torch.tensor([PROMPT]), do_sample=True, num_return_sequences=DRAWS,
                            max_new_tokens=n, seed=1234, **kw)
    new = out.sequences[:, len(PROMPT):]
    assert new.shape == (DRAWS, n)
    cells = torch.zeros(DRAWS, dtype=torch.long)
    for j in range(n):
        cells = cells * V + new[:, j]
    return cells, out.stats


PROCESSORS = [
    dict(),
    dict(temperature=0.7, top_k=5, top_p=0.9),
    dict(temperature=1.3, repetition_penalty=1.5, min_new_tokens=2),
]


@pytest.mark.parametrize("kw", PROCESSORS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_draft_samples_follow_the_target(pair, kw):
    target, draft = pair
    # eos only where min_new_tokens keeps it to the last token: every sample has 3 tokens
    eos = 7 if "min_new_tokens" in kw else None
    cells, stats = sample_cells(target, 3, assistant_model=draft, num_assistant_tokens=2, eos_token_id=eos,
                                assistant_confidence_threshold=0, **kw)
    probs = joint(target, 3, **kw)
    assert chi2_pvalue(cells, probs) > 1e-3
    rates = stats.accept_rate_by_position
    assert len(rates) == 2 and 0.01 < rates[0] < 0.99, "the test needs both acceptances and rejections"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_a_half_precision_draft_keeps_the_target_distribution(pair, dtype):
    """The draft in half precision (the CPU's fast draft: its checkpoint's own dtype) only changes the
    proposals q; the fp32 target's distribution is what comes out."""
    target, draft = pair
    half = copy.deepcopy(draft).to(dtype)
    cells, stats = sample_cells(target, 3, assistant_model=half, num_assistant_tokens=2,
                                assistant_confidence_threshold=0)
    assert chi2_pvalue(cells, joint(target, 3)) > 1e-3
    assert 0.01 < stats.accept_rate_by_position[0] < 0.99


def test_max_new_tokens_below_k(pair):
    target, draft = pair
    cells, stats = sample_cells(target, 2, assistant_model=draft, num_assistant_tokens=4,
                                assistant_confidence_threshold=0)
    assert chi2_pvalue(cells, joint(target, 2)) > 1e-3
    # k is capped at 1 so that no row guesses past max_new_tokens; rejected rows need a 2nd round
    assert len(stats.accept_rate_by_position) == 1 and stats.target_forwards == 2


def test_prompt_lookup_samples_follow_the_target(pair):
    target, _ = pair
    cells, stats = sample_cells(target, 3, prompt_lookup_num_tokens=2, max_matching_ngram_size=1)
    assert chi2_pvalue(cells, joint(target, 3)) > 1e-3
    assert 0 < stats.accept_rate_by_position[0] < 0.99  # both the accept and the reject path ran


def test_a_wrong_rejection_rule_fails(pair, monkeypatch):
    """Resampling a rejected position from p instead of norm(max(0, p - q)) over-weights the draft's
    favourite tokens; the same chi-square test must catch it."""
    target, draft = pair
    monkeypatch.setattr(decoding.sampling, "residual", lambda p, q: p)
    cells, _ = sample_cells(target, 3, assistant_model=draft, num_assistant_tokens=2,
                            assistant_confidence_threshold=0)
    assert chi2_pvalue(cells, joint(target, 3)) < 1e-6
