"""Speculative sampling of one row on the host (decoding/strategies/row_sampling.py) draws from exactly
the target's processed distribution. Unit level: a round's acceptance and residual, with score rows
that do not depend on the prefix (so the emitted tokens' oracle is the product of HF-processed
softmaxes), tens of thousands of rounds against a chi-square test; a draft guess, a deterministic
guess (prompt lookup) and an invalid one. End to end: batch-1 generate() calls, which take this
path, against the enumerated joint distribution of test_speculative_exact. A wrong residual fails
the same tests."""
import numpy as np
import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper

import decoding
from decoding.processors import Warpers
from decoding.strategies import row_sampling
from exact_dist import chi2_pvalue
from test_speculative_exact import PROMPT, V, joint, tiny_native
from test_speculative_row import row_path

ROUNDS = 30000


class Cfg:
    top_p = min_p = None

    def __init__(self, temperature=1.0, top_k=0):
        self.temperature, self.top_k = temperature, top_k


def hf_probs(scores: torch.Tensor, temperature=1.0, top_k=0) -> torch.Tensor:
    s = TemperatureLogitsWarper(temperature)(None, scores) if temperature != 1.0 else scores
    return (TopKLogitsWarper(top_k)(None, s) if top_k else s).softmax(-1).double()


def rounds(target: torch.Tensor, draft: torch.Tensor | None, K: int, warp, seed=0, valid=None):
    """The first two tokens each round emits: guesses drawn from the draft's rows (None: a fixed
    deterministic guess, as prompt lookup's), then row_sampling.accept on the target's rows."""
    g = torch.Generator().manual_seed(seed)
    s = row_sampling.scores(target[None], V, warp)
    qs = None if draft is None else [row_sampling.support(r, warp) for r in row_sampling.scores(draft[None], V, warp)]
    cells = []
    for _ in range(ROUNDS):
        u = row_sampling.uniforms(2 * K + 2, g)  # guesses, the K + 1 of accept, one more
        guesses = np.array([row_sampling.draw(q, u[j]) for j, q in enumerate(qs)] if qs else [3, 1][:K])
        a, nxt = row_sampling.accept(guesses, s, warp, qs, valid, u[K:2 * K + 1])
        out = list(guesses[:a]) + [nxt]
        if len(out) < 2:  # the second token of a rejected round: a fresh draw from p_1 (the rows ignore the prefix)
            out.append(row_sampling.draw(row_sampling.support(s[1], warp), float(u[-1])))
        cells.append(out[0] * V + out[1])
    return torch.tensor(cells)


def product(target: torch.Tensor, **kw) -> torch.Tensor:
    p = hf_probs(target, **kw)
    return (p[0][:, None] * p[1][None]).flatten()


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(0)
    return 1.5 * torch.randn(3, V, generator=g), 1.5 * torch.randn(2, V, generator=g)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=5), dict(top_k=3)],
                         ids=["plain", "temperature+top_k", "top_k"])
def test_draft_rounds_follow_the_target(rows, kw):
    target, draft = rows
    warp = Warpers(Cfg(**kw))
    warp = warp if warp.active else None
    cells = rounds(target, draft, 2, warp)
    assert chi2_pvalue(cells, product(target, **kw)) > 1e-3


def test_deterministic_and_invalid_guesses_follow_the_target(rows):
    target = rows[0]
    assert chi2_pvalue(rounds(target, None, 2, None), product(target)) > 1e-3
    # an invalid first guess is never accepted: the round's token comes from p_0 itself
    cells = rounds(target, None, 2, None, valid=np.array([False, True]))
    assert chi2_pvalue(cells, product(target)) > 1e-3


def test_a_wrong_residual_fails(rows, monkeypatch):
    monkeypatch.setattr(row_sampling, "residual", lambda p, q, token: p)
    target, draft = rows
    assert chi2_pvalue(rounds(target, draft, 2, None), product(target)) < 1e-6


def test_the_kept_set_is_the_warpers(rows):
    """Ties at the k-th score and a temperature: the support is what HF's warpers keep."""
    s = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, -1.0, 2.0, 0.5]])
    for kw in (dict(top_k=3), dict(top_k=2), dict(temperature=0.3, top_k=4), dict(top_k=V + 2)):
        warp = Warpers(Cfg(**kw))
        d = row_sampling.support(row_sampling.scores(s[None], V, warp)[0], warp)
        ref = hf_probs(s, **kw)[0]
        assert d.ids.tolist() == torch.nonzero(ref > 0).flatten().tolist()
        assert np.allclose(d.probs, ref[ref > 0].numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("proposer", ["draft", "lookup"])
def test_generate_one_row_follows_the_target(proposer):
    """Batch-1 calls (the host path, checked taken) of a draft pair or prompt lookup: the joint of 2 tokens."""
    target = tiny_native(0)
    kw = dict(assistant_model=tiny_native(1), num_assistant_tokens=2, assistant_confidence_threshold=0) \
        if proposer == "draft" else dict(prompt_lookup_num_tokens=2, max_matching_ngram_size=1)
    top_k = 6 if proposer == "draft" else 0  # lookup's guess 3 lies outside the top 6 after the prompt
    with row_path() as called:
        g = torch.Generator().manual_seed(5)
        n, cells, took = 3000, [], []
        for _ in range(n):
            out = decoding.generate(target, [PROMPT], do_sample=True, top_k=top_k, generator=g, max_new_tokens=2,
                                    eos_token_id=None, **kw)
            new = out.sequences[0, len(PROMPT):].tolist()
            cells.append(new[0] * V + new[1])
            took += out.stats.accept_rate_by_position[:1]
    assert len(called) == n
    assert 0 < sum(took) < len(took), "the test needs both acceptances and rejections"
    assert chi2_pvalue(torch.tensor(cells), joint(target, 2, top_k=top_k)) > 1e-3
