"""Jacobi and Gauss-Seidel-Jacobi decoding are token-identical to greedy decoding, with HF generate
on the same weights as the oracle: three HF families through the adapter and the native model,
left-padded batches with eos inside a block, every jacobi_init, processors (repetition penalty,
min_new_tokens); rows run alone equal the batch."""
import pytest
import torch

import decoding
from decoding.jacobi_proposers import ngram_guess
from hf_tiny import hf_greedy, left_pad, mid_eos, tiny
from models.hf_weights import from_hf

ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70], [8, 8, 31]]
N = 16
MODES = [("jacobi", "pad", 4), ("jacobi", "ngram", 5), ("gs_jacobi", "repeat", 4), ("gs_jacobi", "ngram", 3)]
# each family: a Jacobi and a GS-Jacobi mode, the inits spread over the families
FAMILY_MODES = {"llama": [MODES[0], MODES[3]], "qwen2": [MODES[1], MODES[2]], "gpt2": [("jacobi", "repeat", 6),
                                                                                        MODES[3]]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds sync cost (4x slower here beside a training job)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("family", list(FAMILY_MODES))
def test_hf_batch_equals_greedy(family):
    hf = tiny(family)
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf_greedy(hf, ids, mask, N, eos_token_id=None), ids.shape[1])
    ref = hf_greedy(hf, ids, mask, N, eos_token_id=eos)
    assert (ref[:, ids.shape[1]:] == eos).any(1).sum() >= 1
    fixed = 0.0
    for strategy, init, n in FAMILY_MODES[family]:
        out = decoding.generate(hf, ids, attention_mask=mask, strategy=strategy, jacobi_init=init, block_size=n,
                                max_new_tokens=N, eos_token_id=eos)
        assert torch.equal(out.sequences, ref), (family, strategy, init)
        s = out.stats
        assert s.target_forwards <= N and s.tau >= 1 and len(s.accept_rate_by_position) == n
        fixed += sum(s.accept_rate_by_position)
    assert fixed > 0, "no guess was ever accepted: the multi-token path went untested"


def test_native_equals_greedy_with_processors():
    hf = tiny("llama")
    model = from_hf(hf)
    ids, mask = left_pad(ROWS)
    kw = dict(repetition_penalty=1.3, min_new_tokens=5, eos_token_id=[2, 9])
    ref = hf_greedy(hf, ids, mask, N, **kw)
    for strategy, init, n in MODES:
        out = decoding.generate(model, ids, attention_mask=mask, strategy=strategy, jacobi_init=init,
                                block_size=n, max_new_tokens=N, **kw)
        assert torch.equal(out.sequences, ref), (strategy, init, n)


def test_rows_alone_equal_the_batch():
    model = from_hf(tiny("qwen2"))
    ids, mask = left_pad(ROWS)
    for strategy in ("jacobi", "gs_jacobi"):
        kw = dict(strategy=strategy, jacobi_init="ngram", block_size=4, max_new_tokens=N, eos_token_id=None)
        batch = decoding.generate(model, ids, attention_mask=mask, **kw).sequences[:, ids.shape[1]:]
        for b, row in enumerate(ROWS):
            alone = decoding.generate(model, [row], **kw).sequences[0, len(row):]
            assert torch.equal(alone, batch[b]), (strategy, b)


def test_sjd_without_sampling_is_greedy_and_warns():
    hf = tiny("gpt2")
    ids, mask = left_pad(ROWS[:2])
    ref = hf_greedy(hf, ids, mask, N, eos_token_id=None)
    with pytest.warns(UserWarning, match="decodes greedily"):
        out = decoding.generate(hf, ids, attention_mask=mask, strategy="sjd", max_new_tokens=N, eos_token_id=None)
    assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("kw,match", [
    (dict(strategy="jacobi", do_sample=True), "strategy='sjd'"),
    (dict(strategy="gs_jacobi", num_beams=2), "beam search"),
    (dict(strategy="jacobi", block_size=0), "block_size"),
    (dict(strategy="jacobi", jacobi_init="random"), "jacobi_init"),
])
def test_bad_settings_are_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        decoding.generate(tiny("llama"), [[5, 6, 7]], max_new_tokens=4, **kw)


def test_jacobi_init_without_a_jacobi_strategy_warns():
    with pytest.warns(UserWarning, match="jacobi_init"):
        decoding.generate(tiny("llama"), [[5, 6, 7]], max_new_tokens=2, jacobi_init="ngram")


def test_ngram_guess_copies_the_latest_continuation():
    # row 0: "1 2 3 9 | 1 2" -> the last 2-gram "1 2" was followed by 3, 9, 1, 2, 3 ... (period 4)
    # row 1: the most recent of two matches of "7" wins; row 2: no match -> pad
    text = torch.tensor([[1, 2, 3, 9, 1, 2, 0], [7, 4, 7, 5, 7, 0, 0], [1, 2, 3, 4, 0, 0, 0]])
    end = torch.tensor([6, 5, 4])
    out = ngram_guess(text, end, torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0]), 5, pad=0)
    assert out[0].tolist() == [3, 9, 1, 2, 3]
    assert out[1, 1:].tolist() == [5, 7, 5, 7]  # fresh from column 1; "7 5" repeats with period 2
    assert out[2].tolist() == [0] * 5
