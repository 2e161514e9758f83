"""Blockwise decoding of one row on the host (decoding/strategies/speculative_row.py, heads given)
gives what the general batched loop gives (the same tokens, statistics, streamed chunks and traced
rounds), and exact acceptance gives greedy's tokens: independent and hydra heads, every block size,
max_new_tokens cutting a round, an eos inside a block, the lossy top-k rule. Calls with processors
take the general loop."""
import pytest
import torch

import decoding
from test_blockwise import fitted_hydra, random_heads, tiny
from test_speculative_row import _both, _same, row_path, same_rounds

ROW = [5, 9, 3, 17, 22, 8, 4, 30, 11]


@pytest.fixture(scope="module", params=["independent", "hydra"])
def pair(request):
    m = tiny()
    return m, random_heads(m) if request.param == "independent" else fitted_hydra(m)


def _greedy(model, ids, n, eos=None):
    return decoding.generate(model, ids, max_new_tokens=n, eos_token_id=eos).sequences


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("max_new", [1, 4, 24])
def test_exact_equals_the_general_loop_and_greedy(pair, k, max_new):
    model, heads = pair
    ids = torch.tensor([ROW])
    fast, general, chunks = _both(model, ids, strategy="blockwise", heads=heads, block_size=k,
                                  max_new_tokens=max_new, eos_token_id=None)
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert torch.equal(fast.sequences, _greedy(model, ids, max_new))
    if max_new == 24:
        assert 0 < fast.stats.accept_rate_by_position[0] and fast.stats.tau > 1


@pytest.mark.parametrize("top", [1, 2, 3])
def test_topk_equals_the_general_loop(pair, top):
    model, heads = pair
    fast, general, _ = _both(model, torch.tensor([ROW]), strategy="blockwise", heads=heads, acceptance="topk",
                             acceptance_top_k=top, max_new_tokens=24, eos_token_id=None)
    _same(fast, general)
    if top == 1:
        assert torch.equal(fast.sequences, _greedy(model, torch.tensor([ROW]), 24))


def test_eos_inside_a_block(pair):
    model, heads = pair
    ids = torch.tensor([ROW])
    free = _greedy(model, ids, 24)[0, len(ROW):].tolist()
    eos = next(t for i, t in enumerate(free) if i > 2 and t not in free[:i])
    fast, general, chunks = _both(model, ids, strategy="blockwise", heads=heads, max_new_tokens=24, eos_token_id=eos)
    _same(fast, general)
    assert chunks[0] == chunks[1]
    assert torch.equal(fast.sequences, _greedy(model, ids, 24, eos)) and int(fast.sequences[0, -1]) == eos


def test_traced_rounds_equal_the_general_loop(pair):
    model, heads = pair
    same_rounds(model, [ROW], strategy="blockwise", heads=heads, block_size=3, max_new_tokens=16, eos_token_id=None)


@pytest.mark.parametrize("case", ["batch2", "processor"])
def test_other_calls_take_the_general_loop(pair, case):
    model, heads = pair
    ids, kw = torch.tensor([ROW]), dict(strategy="blockwise", heads=heads, max_new_tokens=4, eos_token_id=None)
    if case == "batch2":
        ids = torch.tensor([ROW, ROW[::-1]])
    else:
        kw["repetition_penalty"] = 1.3
    with row_path() as called:
        decoding.generate(model, ids, **kw)
    assert not called
