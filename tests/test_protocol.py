"""Every model the engine accepts declares the protocol's capabilities (models/protocol.py), and each
declaration is true: the oracle is the model's own behaviour (a cache that refuses a rollback past
max_rollback, a window that forgets keys, a forward that does or does not return hidden states,
a cache that refuses more than max_positions slots)."""
import pytest
import torch

import decoding
from hf_tiny import tiny as hf_tiny
from models import DecoderConfig, LlamaDecoder, as_decoder
from models.adapt import Declared
from models.protocol import CAPABILITIES, Cache, DecoderModel
from models.yoco import YOCOConfig, YOCODecoder
from recompute_model import RecomputeModel


def llama():
    torch.manual_seed(0)
    return LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
                                      eos_token_id=2, pad_token_id=0)).eval()


def yoco():
    torch.manual_seed(0)
    return YOCODecoder(YOCOConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, window=4,
                                  max_rollback=3, max_seq_len=48, eos_token_id=[2, 3])).eval()


MODELS = {
    "llama": llama,
    "yoco": yoco,
    "hf_llama": lambda: hf_tiny("llama"),
    "hf_mistral_window": lambda: hf_tiny("mistral", sliding_window=6),
    "declared": lambda: RecomputeModel(llama()),
}


@pytest.fixture(params=list(MODELS), scope="module")
def pair(request):
    raw = MODELS[request.param]()
    return request.param, raw, as_decoder(raw)


def test_every_model_declares_every_capability(pair):
    name, raw, m = pair
    assert isinstance(m, DecoderModel) and all(hasattr(m, c) for c in CAPABILITIES)
    assert isinstance(m, Declared) == (name == "declared")
    assert as_decoder(raw) is m or name == "declared"  # natives as is, one adapter per HF model
    assert m.device == next(raw.parameters() if name != "declared" else raw.model.parameters()).device
    assert m.embed_size >= m.vocab_size


def test_max_positions_is_the_cache_limit(pair):
    name, _, m = pair
    if name == "declared":  # a declared limit of a model whose cache does not enforce it
        assert m.max_positions == 48
        return
    m.new_cache(1, m.max_positions)
    if m.runs_past_max_positions:  # HF models run past it (HF's generate warns): their cache takes more
        m.new_cache(1, m.max_positions + 1)
        return
    with pytest.raises(ValueError, match="max_len"):
        m.new_cache(1, m.max_positions + 1)


def test_embed_size_bounds_the_ids(pair):
    name, _, m = pair
    if name == "declared":
        return
    ok, bad = torch.tensor([[m.embed_size - 1]]), torch.tensor([[m.embed_size]])
    with torch.no_grad():
        m(ok, m.new_cache(1, 4))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            m(bad, m.new_cache(1, 4))


def test_returns_hidden_is_what_forward_gives(pair):
    name, raw, m = pair
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        if m.returns_hidden:
            logits, hidden = m(ids, m.new_cache(1, 8), return_hidden=True)
            assert torch.allclose(raw.lm_head(hidden), logits)
        else:
            with pytest.raises(TypeError):
                m(ids, m.new_cache(1, 8), return_hidden=True)


def test_max_rollback_is_what_the_cache_allows(pair):
    name, _, m = pair
    cache = m.new_cache(1, 40)
    assert isinstance(cache, Cache) and cache.max_rollback == m.max_rollback
    n = 10 if m.rollback_window is None else m.rollback_window - 1  # inside the window
    with torch.no_grad():
        m(torch.arange(4, 4 + n)[None], cache)
    if m.max_rollback is None:
        cache.truncate(torch.tensor([n - 1], dtype=torch.int32))
        assert int(cache.lengths[0]) == 1
    else:
        with pytest.raises(ValueError, match="max_rollback"):
            cache.truncate(m.max_rollback + 1)
        cache.truncate(m.max_rollback)


def test_rollback_window_is_where_rollback_stops(pair):
    name, _, m = pair
    if m.rollback_window is None:
        assert name != "hf_mistral_window"
        return
    W = m.rollback_window
    assert W == 6
    cache = m.new_cache(1, 40)
    with torch.no_grad():
        m(torch.arange(4, 4 + W - 2)[None], cache)
        cache.truncate(1)  # inside the window: fine
        m(torch.arange(4, 4 + 3)[None], cache)  # now the window is full
    with pytest.raises(RuntimeError, match="sliding-window"):
        cache.truncate(1)


def test_generation_defaults_name_the_special_tokens(pair):
    name, raw, m = pair
    eos = {"llama": 2, "yoco": [2, 3], "hf_llama": 2, "hf_mistral_window": 2, "declared": 2}[name]
    assert m.generation_defaults["eos_token_id"] == eos


def test_hf_passthrough_is_whether_hf_inputs_reach_the_forward(pair):
    """token_type_ids reach the HF model's own forward where hf_passthrough says so; elsewhere the
    engine refuses them, naming the argument."""
    name, raw, m = pair
    ids, types = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 1, 0, 1]])
    if not m.hf_passthrough:
        with pytest.raises(NotImplementedError, match="`token_type_ids`"):
            decoding.generate(raw, ids, token_type_ids=types, max_new_tokens=2)
        return
    seen = []
    hook = raw.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw.get("token_type_ids")), with_kwargs=True)
    try:
        decoding.generate(raw, ids, token_type_ids=types, max_new_tokens=2)
    finally:
        hook.remove()
    assert torch.equal(seen[0], types)


@pytest.mark.parametrize("name", ["llama", "yoco", "hf_llama"])
def test_one_overflow_error_for_every_cache(name):
    m = as_decoder(MODELS[name]())
    cache = m.new_cache(1, 6)
    with torch.no_grad():
        m(torch.tensor([[5, 6, 7, 8]]), cache)
        with pytest.raises(ValueError, match=r"cache overflow: 4 cached \+ 3 new tokens > capacity 6; create the cache"):
            m(torch.tensor([[5, 6, 7]]), cache)


def test_a_model_with_only_the_operations_gets_conservative_defaults():
    class Bare:
        vocab_size = 64

        def __init__(self):
            self.inner = llama()

        def new_cache(self, batch_size, max_len, **kw):
            return self.inner.new_cache(batch_size, max_len, **kw)

        def forward(self, input_ids, cache, **kw):
            return self.inner(input_ids, cache, **kw)

        __call__ = forward

    m = as_decoder(Bare())
    assert (m.embed_size, m.device, m.max_positions, m.max_rollback, m.rollback_window, m.returns_hidden,
            m.generation_defaults) == (64, torch.device("cpu"), None, None, None, False, {})
    ref = llama()
    out = decoding.generate(Bare(), [[5, 6, 7]], max_new_tokens=5, eos_token_id=None)
    assert torch.equal(out.sequences, decoding.generate(ref, [[5, 6, 7]], max_new_tokens=5, eos_token_id=None).sequences)
    with pytest.raises(NotImplementedError, match="return_hidden"):
        decoding.generate(Bare(), [[5, 6, 7]], strategy="blockwise", heads="x", max_new_tokens=5)
    with pytest.raises(TypeError, match="model protocol"):
        as_decoder(object())
