"""Speculative Jacobi decoding samples from exactly the target's processed distribution: on an
8-token vocabulary the joint distribution of 3 generated tokens is enumerated from full forwards of
the target through HF's own processors (the oracle), and tens of thousands of SJD samples (one
batched call, fixed seed) pass a chi-square test against it. Rounds mix fresh guesses (q one-hot)
and re-sampled iterates (q = the previous iteration's p). A wrong criterion, put in place of the
acceptance rule the strategy hands the verify loop, fails the same test."""
import itertools

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper

import decoding
from exact_dist import chi2_pvalue
from decoding import sampling
from decoding.strategies import jacobi
from decoding.verify import sample_accept, tracing
from hf_tiny import left_pad, tiny
from models import DecoderConfig, LlamaDecoder

V, DRAWS, NEW = 8, 20000, 3
PROMPT = [1, 5, 3, 5]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds sync cost (4x slower here beside a training job)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    model = LlamaDecoder(DecoderConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, max_seq_len=32,
                                       eos_token_id=7, pad_token_id=0)).eval()
    with torch.no_grad():  # larger weights than init: peaked, varied distributions
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.6)
    return model


def joint(model, temperature=1.0, top_k=0, repetition_penalty=1.0):
    """Exact probability of every NEW-token continuation, (V**NEW,) in row-major token order."""
    probs = torch.ones(1)
    for step in range(NEW):
        ids = torch.tensor([PROMPT + list(p) for p in itertools.product(range(V), repeat=step)])
        with torch.no_grad():
            s = model.forward_train(ids)[:, -1].float()
        if repetition_penalty != 1.0:
            s = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, s)
        if temperature != 1.0:
            s = TemperatureLogitsWarper(temperature)(ids, s)
        if top_k:
            s = TopKLogitsWarper(top_k)(ids, s)
        probs = (probs[:, None] * s.softmax(-1)).flatten()
    return probs


def sjd_cells(target, draws=DRAWS, **kw):
    """The first NEW tokens of DRAWS samples as cell indices, and the rounds. The run goes on for
    block_size more tokens, so that no round is capped short of max_new_tokens before the first NEW
    tokens are out (their distribution does not depend on what comes after them)."""
    with tracing() as rounds:
        out = decoding.generate(target, torch.tensor([PROMPT]), strategy="sjd", do_sample=True,
                                num_return_sequences=draws, max_new_tokens=NEW + kw["block_size"],
                                eos_token_id=None, seed=1234, **kw)
    new = out.sequences[:, len(PROMPT):len(PROMPT) + NEW]
    return (new * V ** torch.arange(NEW - 1, -1, -1)).sum(1), rounds


SETTINGS = [
    dict(block_size=2, jacobi_init="pad"),
    dict(block_size=3, jacobi_init="repeat", temperature=0.8, top_k=5, repetition_penalty=1.4),
]


@pytest.mark.parametrize("kw", SETTINGS, ids=["pad", "repeat+processors"])
def test_sjd_samples_follow_the_target(target, kw):
    cells, rounds = sjd_cells(target, **kw)
    probs = joint(target, **{k: v for k, v in kw.items() if k not in ("block_size", "jacobi_init")})
    assert chi2_pvalue(cells, probs) > 1e-3
    # round 2 tests re-sampled iterates (q = round 1's p): both outcomes must be common
    assert rounds[1].draft.shape[1] >= 1 and 0.05 < float((rounds[1].accepted > 0).float().mean()) < 0.95


def resample_from_p(proposal, scores, generator=None):
    """Wrong: a rejected guess is resampled from p, not from norm(max(0, p - q))."""
    p = scores.float().softmax(-1)
    accepted, _ = sampling.rejection_sample(proposal.tokens, p, proposal.q, proposal.valid, generator)
    p_n = p.gather(1, accepted[:, None, None].expand(-1, 1, p.shape[-1])).squeeze(1)
    return accepted, sampling.multinomial(p_n, generator)


def ratio_ignores_q(proposal, scores, generator=None):
    """Wrong: an iterate is accepted with probability p(x), as if it were a fixed guess, although it
    was drawn from q; the rejection is still resampled from norm(max(0, p - q))."""
    p = scores.float().softmax(-1)
    K = proposal.tokens.shape[1]
    if K == 0:
        return sample_accept(proposal, scores, generator)
    accepted, _ = sampling.rejection_sample(proposal.tokens, p, None, proposal.valid, generator)
    at = accepted.clamp(max=K - 1)[:, None, None].expand(-1, 1, p.shape[-1])
    p_n = p.gather(1, accepted[:, None, None].expand(-1, 1, p.shape[-1])).squeeze(1)
    q_n = proposal.q.gather(1, at).squeeze(1) * (accepted < K)[:, None]
    return accepted, sampling.multinomial(sampling.residual(p_n, q_n), generator)


@pytest.mark.parametrize("wrong", [resample_from_p, ratio_ignores_q], ids=lambda f: f.__name__)
def test_a_wrong_criterion_fails(target, monkeypatch, wrong):
    monkeypatch.setattr(jacobi, "sample_accept", wrong)
    cells, _ = sjd_cells(target, draws=6000, **SETTINGS[0])  # p ~ 1e-25 and below: fewer draws do
    assert chi2_pvalue(cells, joint(target)) < 1e-6


def test_hf_batch_is_seeded_and_left_padding_safe():
    hf = tiny("llama")
    ids, mask = left_pad([[5, 17, 23, 8, 41], [11, 4]])
    kw = dict(strategy="sjd", do_sample=True, block_size=4, jacobi_init="ngram", max_new_tokens=10, eos_token_id=None)
    a = decoding.generate(hf, ids, attention_mask=mask, seed=7, **kw)
    b = decoding.generate(hf, ids, attention_mask=mask, seed=7, **kw)
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape == (2, 5 + 10)
    assert a.stats.new_tokens == 20 and a.stats.target_forwards <= 10
