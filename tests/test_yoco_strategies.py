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
