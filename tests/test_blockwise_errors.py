"""strategy="blockwise": wrong heads, block sizes, acceptance settings and model kinds are clear errors
raised before the first forward; blockwise settings without the strategy only warn."""
import pytest
import torch

import decoding
from models import DecoderConfig, LlamaDecoder
from models.heads import BlockwiseHeads, HeadsConfig, save_heads
from recompute_model import RecomputeModel

ROWS = [[5, 9, 3, 17], [11, 30]]


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, pad_token_id=0)
    cfg.update(kw)
    return LlamaDecoder(DecoderConfig(**cfg)).eval()


@pytest.fixture
def model():
    m = tiny()
    m.forwards = 0

    def count(*_):
        m.forwards += 1
    m.register_forward_pre_hook(count)
    return m


def heads_for(m, k=3):
    return BlockwiseHeads(m.config.dim, k, config=HeadsConfig.for_target(m, k))


def fails(model, exc, match, **kw):
    with pytest.raises(exc, match=match):
        decoding.generate(model, ROWS, strategy="blockwise", max_new_tokens=4, **kw)
    assert getattr(model, "forwards", 0) == 0  # before any work


@pytest.mark.parametrize("kw,exc,match", [
    (dict(block_size=4), ValueError, r"block_size=4 exceeds the 3 proposal heads"),
    (dict(acceptance="topk", acceptance_top_k=0), ValueError, "acceptance_top_k"),
    (dict(acceptance="nearly"), ValueError, "acceptance"),
    (dict(num_beams=2), ValueError, "does not combine with beam search"),
    (dict(do_sample=True), ValueError, "do_sample=False"),
    (dict(block_size=0), ValueError, "block_size"),
])
def test_bad_settings(model, kw, exc, match):
    fails(model, exc, match, heads=heads_for(model), **kw)


def test_heads_for_another_target(model, tmp_path):
    other = tiny(dim=48, n_heads=4)
    fails(model, ValueError, "trained for a target with vocab_size=64, dim=48", heads=heads_for(other))
    save_heads(heads_for(tiny(vocab_size=80)), tmp_path)
    fails(model, ValueError, "trained for a target with vocab_size=80", heads=str(tmp_path))


def test_heads_required_off_the_shipped_target(model, tmp_path):
    fails(model, ValueError, "needs heads=PATH")
    fails(model, FileNotFoundError, "not a heads directory", heads=str(tmp_path))
    fails(model, TypeError, "heads must be a directory path", heads=3)


def test_hf_models_are_refused():
    from hf_tiny import tiny as hf_tiny
    hf = hf_tiny("llama")
    with pytest.raises(NotImplementedError, match="native decoders only"):
        decoding.generate(hf, ROWS, strategy="blockwise", max_new_tokens=4)


def test_model_without_hidden_states(model):
    with pytest.raises(NotImplementedError, match="return_hidden"):
        decoding.generate(RecomputeModel(model), ROWS, strategy="blockwise", heads=heads_for(model), max_new_tokens=4)


@pytest.mark.parametrize("kw", [dict(heads="x"), dict(acceptance="topk"), dict(acceptance_top_k=2), dict(block_size=3)])
def test_settings_without_the_strategy_warn(model, kw):
    with pytest.warns(UserWarning, match=f"`{next(iter(kw))}="):
        decoding.generate(model, ROWS, max_new_tokens=2, **kw)


def test_top_k_with_exact_acceptance_warns(model):
    with pytest.warns(UserWarning, match="acceptance_top_k"):
        decoding.generate(model, ROWS, strategy="blockwise", heads=heads_for(model), acceptance_top_k=2,
                          max_new_tokens=2)
