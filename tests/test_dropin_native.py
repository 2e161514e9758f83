"""The drop-in on the native decoder (issue 19 item 4): an installed Llama / Qwen2 / Mistral model
runs on a LlamaDecoder built on its own weights (GPT-2: tests/test_dropin_native_gpt2.py). Oracle:
HF's own generate on a copy of the model taken before install (and given the same weight updates)."""
import copy

import pytest
import torch
import transformers

import decoding
import decoding.hf
from exact_dist import chi2_pvalue
from dropin_checks import (KW, ROWS, beam_equals_hf_with_scores, record_targets, same_seed_same_samples,
                          weight_changes_are_seen)
from hf_tiny import left_pad, tiny
from models import hf_native
from models.llama import LlamaDecoder

@pytest.fixture
def targets(monkeypatch):
    return record_targets(monkeypatch)


def installed(family, native=True, **overrides):
    """(installed model, HF oracle: a deep copy taken before install)."""
    model = tiny(family, **overrides)
    if family == "qwen2":  # q/k/v biases that matter
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.bias.normal_(0, 0.5)
    oracle = copy.deepcopy(model)
    return decoding.hf.install(model, native=native), oracle


@pytest.mark.parametrize("family,overrides", [
    ("llama", {}), ("llama", {"tie_word_embeddings": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5}),
    ("qwen2", {}), ("mistral", {"sliding_window": 4}),
    ("llama", {"hidden_act": "gelu"}), ("qwen2", {"hidden_act": "gelu_pytorch_tanh"}),  # transformers' test configs
])
def test_greedy_runs_native_and_equals_hf(targets, family, overrides):
    model, oracle = installed(family, **overrides)
    ids, mask = left_pad(ROWS)
    out = model.generate(ids, attention_mask=mask, **KW)
    assert targets == ["native"]
    assert torch.equal(out, oracle.generate(ids, attention_mask=mask, **KW))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_beam_equals_hf_with_scores(targets, family):
    model, oracle = installed(family)
    beam_equals_hf_with_scores(model, oracle, ROWS)
    assert targets == ["native"]


def test_sampling_same_seed_same_draws_as_hf(targets):
    """The engine's exponential race consumes the global generator as HF's torch.multinomial does
    for one sample: under the same seed the native path returns HF's very samples."""
    model, oracle = installed("qwen2")
    same_seed_same_samples(model, oracle, ROWS)
    assert targets == ["native"]


def test_sampling_draws_from_hfs_two_token_distribution(targets):
    """Joint law of the first two sampled tokens (vocab 16: 256 cells) against the exact law from the
    oracle's forward and HF's own processors."""
    model, oracle = installed("llama", vocab_size=16)
    prompt = torch.tensor([[3, 7, 5, 9]])
    kw = dict(do_sample=True, temperature=0.8, top_k=10)
    n = 6000
    torch.manual_seed(0)
    out = model.generate(prompt.repeat(n, 1), max_new_tokens=2, eos_token_id=None, **kw)  # no eos: 2 tokens
    assert targets == ["native"]
    warp = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.8),
                                             transformers.TopKLogitsWarper(10)])
    with torch.no_grad():
        first = warp(prompt, oracle(prompt).logits[:, -1]).softmax(-1)[0]  # (16,)
        seconds = torch.cat([prompt.repeat(16, 1), torch.arange(16)[:, None]], 1)
        second = warp(seconds, oracle(seconds).logits[:, -1]).softmax(-1)  # (16, 16)
    joint = (first[:, None] * second).reshape(-1)
    cells = out[:, 4] * 16 + out[:, 5]
    assert chi2_pvalue(cells, joint) > 1e-3


@pytest.mark.parametrize("family,overrides,runs_on", [
    ("llama", {}, "native"), ("mistral", {"sliding_window": 3}, "adapter")])
def test_masks_with_holes(targets, family, overrides, runs_on):
    """Holes inside rows (transformers' random_attention_mask): the native decoder skips them as HF
    does, except under a sliding window, which HF counts in slots (holes included)."""
    model, oracle = installed(family, **overrides)
    g = torch.Generator().manual_seed(3)
    ids, mask = torch.randint(3, 96, (3, 9), generator=g), torch.randint(0, 2, (3, 9), generator=g)
    mask[:, -1] = 1
    out = model.generate(ids, attention_mask=mask, **KW)
    assert targets == [runs_on]
    assert torch.equal(out, oracle.generate(ids, attention_mask=mask, **KW))
    right_padded = torch.ones_like(mask)
    right_padded[0, -2:] = 0  # HF reads the next token off a pad's forward: only the adapter does that
    assert hf_native.route(model, {}, right_padded) is model


def test_opt_out_keeps_the_adapter(targets):
    model, oracle = installed("llama", native=False)
    ids, mask = left_pad(ROWS)
    ref = oracle.generate(ids, attention_mask=mask, **KW)
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), ref)
    decoding.hf.install(model, native=True)  # installing again switches
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), ref)
    assert targets == ["adapter", "native"]


class SubclassedLlama(transformers.LlamaForCausalLM):
    pass


@pytest.mark.parametrize("family,overrides,reason", [
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope scaling"),
    ("llama", {"attention_bias": True}, "o_proj"),
    ("llama", {"hidden_act": "gelu_new"}, "hidden_act"),
    ("gpt2", {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),  # GPT-2's own: test_dropin_native_gpt2.py
    ("gpt_neox", {}, "GPTNeoXForCausalLM"),
    ("subclass", {}, "SubclassedLlama"),
])
def test_what_native_does_not_express_runs_on_the_adapter(targets, family, overrides, reason):
    if family == "subclass":
        model = tiny("llama")
        model.__class__ = SubclassedLlama
    else:
        model = tiny(family, **overrides)
    oracle = copy.deepcopy(model)
    decoding.hf.install(model)
    ids, mask = left_pad(ROWS)
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), oracle.generate(ids, attention_mask=mask, **KW))
    assert targets == ["adapter"]
    assert reason in (hf_native.unsupported_reason(model) or "")


def test_calls_that_need_the_hf_model_route_to_it():
    model = tiny("llama")
    native = hf_native.route(model, {"max_new_tokens": 4, "num_beams": 2, "repetition_penalty": 1.3})
    assert isinstance(native, LlamaDecoder)
    for call in ({"output_hidden_states": True}, {"output_attentions": True},
                 {"position_ids": torch.zeros(1, 3, dtype=torch.long)}, {"logits_to_keep": 1},
                 {"generation_config": transformers.GenerationConfig(output_hidden_states=True)},
                 {"return_dict_in_generate": True, "output_scores": True}, {"use_cache": False}):
        assert hf_native.route(model, call) is model, call
    model.generation_config.output_attentions = True  # the model's default counts too ...
    assert hf_native.route(model, {}) is model
    assert hf_native.route(model, {"output_attentions": False}) is native  # ... unless the call says otherwise


def test_one_copy_of_the_weights_and_hf_keeps_working(tmp_path):
    model, oracle = installed("qwen2", tie_word_embeddings=True)
    native = hf_native.native_for(model)
    attn = model.model.layers[0].self_attn
    fused = native.layers[0].attn.wqkv.weight
    assert attn.q_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert hf_native.extra_bytes(model) <= 1024  # only the rope frequencies
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, oracle(ids, attention_mask=mask).logits,
                                   rtol=1e-6, atol=1e-6)
    model.save_pretrained(tmp_path)  # HF's own save (safetensors) of the strided views
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ref = oracle.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())


def test_weight_changes_after_install_are_seen(targets):
    model, oracle = installed("llama")
    weight_changes_are_seen(model, oracle, ROWS, KW, lambda m: m.model.layers[1].mlp.up_proj)
    assert targets == ["native"] * 4


def test_an_error_after_work_began_is_raised_not_rerun_on_hf(monkeypatch):
    """A refusal before the first forward goes to HF (it judges the value); an error once the native
    decoder has run a forward is the engine's own, and is raised, not hidden by an HF rerun."""
    model, _ = installed("llama")
    ids, mask = left_pad(ROWS)
    native = hf_native.native_for(model)
    native.compile_step = False  # the failure is injected into the eager forward, which a compiled step skips
    forward = type(native).forward

    def failing(self, *args, **kwargs):
        if self.forwards >= 2:
            raise ValueError("injected failure on the third forward")
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(type(native), "forward", failing)
    decoding.hf.reset_counts()
    with pytest.raises(ValueError, match="injected failure"):
        model.generate(ids, attention_mask=mask, **KW)
    assert decoding.hf.counts()["fallback"] == 0
