"""The HF adapter against HF's own forward and generate (the oracles).

This whole file is the transformers-5.17 compatibility subset: `.ci/run` runs it a second time with
transformers 5.17.0 (the GPU image's version) on the path, so keep it cheap and version-neutral.
"""
import pytest
import torch

import decoding
from hf_tiny import hf_positions, left_pad, tiny
from models.hf_adapter import HFModel

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "gemma", "phi3"]
ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70]]
ATOL = 1e-5


def hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    hf = tiny(request.param)
    return hf, HFModel(hf)


def feed(model, cache, chunks):
    """Run (ids, mask) chunks through the adapter; concatenated logits."""
    with torch.no_grad():
        return torch.cat([model(ids, cache, attention_mask=mask) for ids, mask in chunks], 1)


def test_logits_equal_hf_forward(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    ref = hf_logits(hf, ids, mask)
    T = ids.shape[1]
    cache = model.new_cache(3, 32)
    out = feed(model, cache, [(ids[:, :T - 3], mask[:, :T - 3]), (ids[:, T - 3:T - 1], None), (ids[:, T - 1:], None)])
    real = mask.bool()
    assert torch.allclose(out[real], ref[real], atol=ATOL)
    assert cache.lengths.tolist() == [len(r) for r in ROWS] and cache.nbytes() > 0


def test_per_row_truncate_then_decode_equals_never_decoded(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    block = torch.tensor([[31, 32, 33, 34], [41, 42, 43, 44], [51, 52, 53, 54]])
    nxt = torch.tensor([[61, 62], [71, 72], [81, 82]])
    drop = torch.tensor([3, 0, 2], dtype=torch.int32)
    cache = model.new_cache(3, 40)
    feed(model, cache, [(ids, mask), (block, None)])
    cache.truncate(drop)
    assert cache.lengths.tolist() == [len(r) + 4 - int(d) for r, d in zip(ROWS, drop)]
    out = feed(model, cache, [(nxt[:, :1], None), (nxt[:, 1:], None)])
    # oracle: each row alone, fed prompt + kept block + next tokens in one HF forward
    for b, row in enumerate(ROWS):
        seq = torch.tensor([row + block[b, :4 - int(drop[b])].tolist() + nxt[b].tolist()])
        with torch.no_grad():
            ref = hf(seq).logits[0, -2:]
        assert torch.allclose(out[b], ref, atol=ATOL), b


def test_uniform_truncate_crops_hf_cache(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    cache = model.new_cache(3, 40)
    feed(model, cache, [(ids, mask), (torch.full((3, 3), 7), None)])
    size = cache.size
    cache.truncate(2)
    assert cache.size == size - 2 and cache.lengths.tolist() == [len(r) + 1 for r in ROWS]
    cache.truncate(torch.tensor([1, 1, 1], dtype=torch.int32))
    out = feed(model, cache, [(torch.full((3, 1), 9), None)])
    ones = torch.ones(3, 1, dtype=torch.long)
    ref = hf_logits(hf, torch.cat([ids, 9 * ones], 1), torch.cat([mask, ones], 1))
    assert cache.size == size - 2 and torch.allclose(out[:, -1], ref[:, -1], atol=ATOL)


def test_reorder_repeat_select(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    step = torch.tensor([[3], [4], [5]])
    full = model.new_cache(3, 32)
    feed(model, full, [(ids, mask)])
    ref = feed(model, full, [(step, None)])[:, -1]  # (3, V)
    index = torch.tensor([2, 0, 1])
    for op in ("reorder", "select", "repeat"):
        cache = model.new_cache(3, 32)
        feed(model, cache, [(ids, mask)])
        if op == "reorder":
            cache.reorder(index)
            out, want = feed(model, cache, [(step[index], None)])[:, -1], ref[index]
        elif op == "select":
            cache.select(torch.tensor([2, 0]))
            out, want = feed(model, cache, [(step[[2, 0]], None)])[:, -1], ref[[2, 0]]
        else:
            cache.repeat(2)
            assert cache.batch_size == 6
            out, want = feed(model, cache, [(step.repeat_interleave(2, 0), None)])[:, -1], ref.repeat_interleave(2, 0)
        assert torch.allclose(out, want, atol=ATOL), op


def test_sliding_window_cache_refuses_rollback_once_full():
    model = HFModel(tiny("mistral", sliding_window=4))
    cache = model.new_cache(1, 16)
    feed(model, cache, [(torch.tensor([[5, 6, 7, 8, 9, 10]]), None)])
    with pytest.raises(RuntimeError, match="sliding-window"):
        cache.truncate(1)
    small = model.new_cache(2, 16)  # window not full yet: a uniform rollback is fine
    feed(model, small, [(torch.tensor([[5, 6], [7, 8]]), None)])
    small.truncate(1)
    with pytest.raises(RuntimeError, match="per-row"):
        small.truncate(torch.tensor([1, 0], dtype=torch.int32))


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma"])
def test_greedy_generate_equals_hf_generate(name):
    hf = tiny(name)
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        free = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, eos_token_id=None)
        eos = int(free[1, ids.shape[1] + 4])
        ref = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, eos_token_id=eos,
                          output_scores=True, return_dict_in_generate=True)
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos, output_scores=True)
    assert torch.equal(out.sequences, ref.sequences)
    assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(out.scores, ref.scores))
