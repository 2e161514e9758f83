"""Every strategy runs on YOCO (one global KV + window rings) exactly: each deterministic mode gives
the same tokens as on a wrapper that recomputes the whole sequence without any cache."""
import pytest
import torch

import decoding
from models.yoco import YOCOConfig, YOCODecoder
from recompute_model import RecomputeModel

PROMPTS = [[5, 9, 3, 17, 22, 8, 4], [11, 30], [7, 7, 40, 2, 19]]
COMMON = dict(max_new_tokens=14, eos_token_id=None, pad_token_id=0)


def yoco(seed=0, window=4, max_rollback=16):
    torch.manual_seed(seed)
    m = YOCODecoder(YOCOConfig(vocab_size=48, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, window=window,
                               max_rollback=max_rollback, max_seq_len=128)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.35)
    return m


def same(model, **kw):
    a = decoding.generate(model, PROMPTS, **COMMON, **kw).sequences
    b = decoding.generate(RecomputeModel(model), PROMPTS, **COMMON, **kw).sequences
    assert torch.equal(a, b), (a, b)
    return a


def test_greedy_on_yoco_equals_recompute():
    same(yoco(), do_sample=False)


def test_sampling_on_yoco_runs_and_is_seeded():
    m = yoco()
    a = decoding.generate(m, PROMPTS, do_sample=True, seed=3, **COMMON).sequences
    b = decoding.generate(m, PROMPTS, do_sample=True, seed=3, **COMMON).sequences
    assert torch.equal(a, b) and a.shape[1] == 7 + 14


def test_beam_on_yoco_equals_recompute():
    same(yoco(), num_beams=3, num_return_sequences=2, length_penalty=0.5)


def test_diverse_beam_on_yoco_equals_recompute():
    same(yoco(seed=1), num_beams=4, num_beam_groups=2, diversity_penalty=0.7)


def yoco_heads(model, k):
    from models.heads import BlockwiseHeads, HeadsConfig
    h = BlockwiseHeads(model.config.dim, k, config=HeadsConfig.for_target(model, k))
    with torch.no_grad():
        h.w2.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return h


def test_blockwise_on_yoco_equals_recompute_greedy():
    # the oracle cannot return hidden states: exact blockwise must give its greedy output
    m = yoco(window=3, max_rollback=4)
    a = decoding.generate(m, PROMPTS, strategy="blockwise", heads=yoco_heads(m, 4), **COMMON)
    b = decoding.generate(RecomputeModel(m), PROMPTS, **COMMON).sequences
    assert torch.equal(a.sequences, b), (a.sequences, b)
    assert a.stats.target_forwards < 14 + 1  # some proposals accepted


def test_blockwise_block_beyond_yoco_rollback_is_an_error():
    m = yoco(max_rollback=2)
    with pytest.raises(ValueError, match="max_rollback=2"):
        decoding.generate(m, PROMPTS, strategy="blockwise", heads=yoco_heads(m, 3), **COMMON)


@pytest.fixture
def one_thread():
    """Tiny models: a second thread only adds sync cost (several times slower beside a training job)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("strategy,init,n", [("jacobi", "ngram", 6), ("gs_jacobi", "repeat", 4)])
def test_jacobi_on_yoco_equals_recompute(strategy, init, n, one_thread):
    """Rollback through the window rings (max_rollback) at every iteration, rows ragged; the
    output is greedy's too."""
    m = yoco(seed=2)
    out = same(m, strategy=strategy, jacobi_init=init, block_size=n)
    assert torch.equal(out, decoding.generate(m, PROMPTS, **COMMON).sequences)


def test_jacobi_block_beyond_yoco_rollback_is_refused():
    with pytest.raises(ValueError, match="max_rollback"):
        decoding.generate(yoco(max_rollback=4), PROMPTS, strategy="jacobi", block_size=8, **COMMON)


def test_yoco_as_draft_keeps_target_greedy():
    target, draft = yoco(seed=2), yoco(seed=5)
    kw = dict(COMMON, do_sample=False)
    ref = decoding.generate(target, PROMPTS, **kw).sequences
    out = decoding.generate(target, PROMPTS, assistant_model=draft, num_assistant_tokens=3, **kw)
    assert torch.equal(out.sequences, ref)
    assert out.stats.draft_forwards > 0
