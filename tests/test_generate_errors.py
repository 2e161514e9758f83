"""Every error path of generate(): the right exception, naming the argument, before any forward."""
import re

import pytest
import torch
import transformers

import decoding
from hf_tiny import left_pad, tiny
from models.hf_weights import from_hf

IDS = torch.tensor([[5, 17, 23, 8], [11, 4, 90, 2]])


@pytest.fixture(scope="module")
def hf():
    return tiny("llama")


@pytest.fixture
def forwards(hf):
    """Counts forwards of the HF model: errors must come before the first."""
    calls = []
    handle = hf.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def raises(exc, pattern, hf, forwards, input_ids=IDS, **kw):
    with pytest.raises(exc, match=pattern):
        decoding.generate(hf, input_ids, **kw)
    assert not forwards, "the error came after a forward"


@pytest.mark.parametrize("kw,name", [(dict(foo=1), "foo"), (dict(max_new_token=3), "max_new_token")])
def test_unknown_argument_is_a_type_error(hf, forwards, kw, name):
    raises(TypeError, f"`{name}`", hf, forwards, **kw)


@pytest.mark.parametrize("kw", [
    dict(suppress_tokens=[3]), dict(cache_implementation="offloaded_static"),
    dict(typical_p=0.5), dict(stopping_criteria=[lambda ids, s: False]),
    dict(past_key_values=object()), dict(forced_eos_token_id=2),
])
def test_hf_or_engine_argument_not_implemented_yet(hf, forwards, kw):
    raises(NotImplementedError, f"`{next(iter(kw))}", hf, forwards, **kw)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_callers_cache_longer_than_the_prompt_names_the_argument_passed(hf, forwards, name):
    past = transformers.DynamicCache(config=hf.config)
    key = "cache" if "cache" in hf.forward.__code__.co_varnames else "past_key_values"
    with torch.no_grad():
        hf(input_ids=torch.cat([IDS, IDS], 1), use_cache=True, **{key: past})  # 8 tokens > the prompt's 4
    forwards.clear()
    raises(NotImplementedError, f"`{name}` must hold fewer tokens", hf, forwards, **{name: past})


def test_unimplemented_setting_in_a_generation_config(hf, forwards):
    raises(NotImplementedError, "forced_bos_token_id", hf, forwards,
           generation_config=transformers.GenerationConfig(forced_bos_token_id=3))


def test_switched_off_settings_are_accepted(hf):
    out = decoding.generate(hf, IDS, max_new_tokens=2, num_beams=1, no_repeat_ngram_size=0, typical_p=1.0,
                            output_attentions=False, stopping_criteria=[], use_cache=False,
                            cache_implementation="dynamic", return_dict_in_generate=True)
    assert out.sequences.shape == (2, 6)


@pytest.mark.parametrize("kw,name", [
    (dict(do_sample=True, temperature=0.0), "temperature"), (dict(do_sample=True, temperature=-1), "temperature"),
    (dict(do_sample=True, top_p=0.0), "top_p"), (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=-1), "top_k"), (dict(do_sample=True, min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(do_sample=True, num_return_sequences=0), "num_return_sequences"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=1.5), "max_new_tokens"), (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(max_length=0), "max_length"),
    (dict(eos_token_id="eos"), "eos_token_id"), (dict(pad_token_id="pad"), "pad_token_id"),
    (dict(do_sample="yes"), "do_sample"), (dict(stop_strings=["\n"]), "tokenizer"),
    (dict(stop_strings="", tokenizer=object()), "stop_strings"), (dict(strategy="fast"), "strategy"),
    (dict(block_size=0), "block_size"), (dict(jacobi_init="zeros"), "jacobi_init"),
    (dict(acceptance="maybe"), "acceptance"), (dict(acceptance_top_k=0), "acceptance_top_k"),
    (dict(seed=1, generator=torch.Generator()), "seed"), (dict(seed=-3), "seed"),
    (dict(max_length=4), "max_length"),  # the prompt already has 4 tokens
])
def test_bad_values_are_value_errors(hf, forwards, kw, name):
    raises(ValueError, name, hf, forwards, **kw)


@pytest.mark.parametrize("kw,name", [
    (dict(generator="g"), "generator"), (dict(logits_processor=[3]), "logits_processor"),
    (dict(streamer=object()), "streamer"), (dict(stop_strings=["x"], tokenizer=object()), "tokenizer"),
    (dict(generation_config={"max_new_tokens": 3}), "generation_config"),
])
def test_wrong_kinds_of_objects_are_type_errors(hf, forwards, kw, name):
    raises(TypeError, name, hf, forwards, **kw)


@pytest.mark.parametrize("input_ids,mask,exc,pattern", [
    (torch.tensor([[5, 96]]), None, ValueError, r"token id 96.*vocabulary"),
    (torch.tensor([[5, -1]]), None, ValueError, "negative token id"),
    (torch.tensor([[5.0, 6.0]]), None, TypeError, "integer token ids"),
    (torch.tensor([5, 6]), None, ValueError, r"input_ids\[None\]"),
    (torch.zeros(1, 2, 3, dtype=torch.long), None, ValueError, "shape"),
    (torch.zeros(1, 0, dtype=torch.long), None, ValueError, "empty"),
    ([[5, 6], []], None, ValueError, "row 1 is empty"),
    ([5, 6], None, TypeError, "list"),
    ([[5, 6.5]], None, TypeError, "ints"),
    ([[5, 200]], None, ValueError, "token id 200"),
    ("hello", None, TypeError, "input_ids"),
    (IDS, torch.ones(2, 3), ValueError, "attention_mask.*shape"),
    (IDS, torch.full((2, 4), 2), ValueError, "attention_mask.*0"),
    (IDS, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), ValueError, "row 1 is empty"),
    ([[5, 6]], torch.ones(1, 2), ValueError, "attention_mask"),
])
def test_bad_inputs(hf, forwards, input_ids, mask, exc, pattern):
    raises(exc, pattern, hf, forwards, input_ids=input_ids, attention_mask=mask, max_new_tokens=2)


def test_pad_ids_under_the_mask_are_not_checked(hf):
    ids, mask = left_pad([[5, 6, 7], [8]], pad=-100)
    ref = decoding.generate(hf, [[5, 6, 7], [8]], max_new_tokens=3).sequences
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=3).sequences
    assert torch.equal(out[:, 3:], ref[:, 3:]) and torch.equal(out[:, :3], ids)


def test_eos_and_pad_ids_beyond_the_vocabulary_are_tolerated(hf):
    out = decoding.generate(hf, IDS, max_new_tokens=3, eos_token_id=[1000, 2], pad_token_id=999)
    assert out.sequences.shape[0] == 2


def test_encoder_decoder_model_is_refused(forwards):
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, decoder_start_token_id=0))
    with pytest.raises(NotImplementedError, match="encoder-decoder"):
        decoding.generate(t5, IDS, max_new_tokens=2)


def test_model_without_lm_head_or_not_a_model(hf):
    base = transformers.LlamaModel(hf.config)
    with pytest.raises(TypeError, match="language-modeling head"):
        decoding.generate(base, IDS, max_new_tokens=2)
    with pytest.raises(TypeError, match="model protocol"):
        decoding.generate(object(), IDS, max_new_tokens=2)


def test_native_model_errors():
    native = from_hf(tiny("llama"))
    with pytest.raises(ValueError, match="vocabulary"):
        decoding.generate(native, torch.tensor([[5, 96]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens.*position limit of 256 .*max_seq_len"):
        decoding.generate(native, IDS, max_new_tokens=253)


def test_idle_settings_warn(hf):
    with pytest.warns(UserWarning, match="temperature"):
        decoding.generate(hf, IDS, max_new_tokens=2, temperature=0.5)
    with pytest.warns(UserWarning, match=re.escape("top_p")):
        decoding.generate(hf, IDS, max_new_tokens=2, do_sample=False, top_p=0.9)
    with pytest.warns(UserWarning, match="num_assistant_tokens"):
        decoding.generate(hf, IDS, max_new_tokens=2, num_assistant_tokens=5)
