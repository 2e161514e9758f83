"""decoding.hf.install / uninstall: the model's own generate() on the engine, checked against HF's
own generate() on the same model (the oracle), and HF's fallback for what the engine lacks."""
import warnings

import pytest
import torch
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

import decoding
from hf_tiny import left_pad, tiny

KW = dict(max_new_tokens=8, do_sample=False)


@pytest.fixture
def model():
    m = tiny("llama")
    yield m
    decoding.hf.uninstall(m)


def test_greedy_equals_engine_and_hf(model):
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])
    hf = model.generate(ids, attention_mask=mask, **KW)
    engine = decoding.generate(model, ids, attention_mask=mask, **KW).sequences
    decoding.hf.install(model)
    for out in (model.generate(ids, attention_mask=mask, **KW),  # positional, as HF
                model.generate(inputs=ids, attention_mask=mask, **KW),
                model.generate(input_ids=ids, attention_mask=mask, **KW)):
        assert isinstance(out, torch.Tensor) and out.dtype == torch.long
        assert torch.equal(out, hf) and torch.equal(out, engine)
    out[0, 0] = 1  # an ordinary tensor, as HF's: editable in place outside inference mode


def test_return_dict_is_hfs_output_object(model):
    ids = torch.tensor([[5, 6, 7]])
    ref = model.generate(ids, return_dict_in_generate=True, output_scores=True, **KW)
    decoding.hf.install(model)
    out = model.generate(ids, return_dict_in_generate=True, output_scores=True, **KW)
    assert type(out) is GenerateDecoderOnlyOutput is type(ref)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    model.generation_config.return_dict_in_generate = True  # the model's own config counts, as in HF
    assert type(model.generate(ids, **KW)) is GenerateDecoderOnlyOutput


def test_beam_output_object(model):
    ids = torch.tensor([[5, 6, 7]])
    kw = dict(num_beams=2, max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    ref = model.generate(ids, **kw)
    decoding.hf.install(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback warning while beam search is not in the engine
        out = model.generate(ids, **kw)
    assert type(out) is GenerateBeamDecoderOnlyOutput
    assert torch.equal(out.sequences, ref.sequences) and out.sequences_scores is not None


def test_uninstall_restores_hfs_method(model):
    cls_method = type(model).generate
    decoding.hf.install(model)
    decoding.hf.install(model)  # twice: still one layer
    assert "generate" in vars(model) and decoding.hf.is_installed(model)
    decoding.hf.uninstall(model)
    assert "generate" not in vars(model) and model.generate.__func__ is cls_method
    assert not decoding.hf.is_installed(model)


def test_deepcopy_of_an_installed_model_runs_on_the_copy(model):
    import copy
    decoding.hf.install(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.05)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(twin.generate(ids, **KW), decoding.generate(twin, ids, **KW).sequences)
    assert not torch.equal(twin.generate(ids, **KW), model.generate(ids, **KW))
    decoding.hf.uninstall(twin)
    assert decoding.hf.is_installed(model) and "generate" not in vars(twin)


def test_fallback_warns_once_and_returns_hfs_result(model):
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    kw = dict(KW, forced_eos_token_id=4)  # an HF processor outside the engine's scope
    ref = model.generate(ids, **kw)
    decoding.hf.install(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = model.generate(ids, **kw), model.generate(ids, **kw)
    messages = [str(w.message) for w in caught if "decoding.hf" in str(w.message)]
    assert len(messages) == 1 and "forced_eos_token_id" in messages[0]
    assert torch.equal(first, ref) and torch.equal(second, ref)


def test_install_refuses_native_models():
    from models import DecoderConfig, LlamaDecoder
    with pytest.raises(TypeError, match="decoding.generate"):
        decoding.hf.install(LlamaDecoder(DecoderConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2)))
