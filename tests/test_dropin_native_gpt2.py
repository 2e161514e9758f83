"""The drop-in on the native GPT-2 decoder: an installed GPT2LMHeadModel runs on a GPT2Decoder built
on its own weights (models/hf_native_gpt2.py). Oracle: HF's own generate / forward on a deep copy of
the model taken before install (and given the same weight updates)."""
import copy

import pytest
import torch
import transformers

import decoding
import decoding.hf
from dropin_checks import (KW, ROWS, beam_equals_hf_with_scores, record_targets, same_seed_same_samples,
                          weight_changes_are_seen)
from hf_tiny import left_pad, tiny
from models import hf_native
from models.compiled import static_forward
from models.gpt2 import GPT2Decoder

@pytest.fixture
def targets(monkeypatch):
    return record_targets(monkeypatch)


def gpt2(**overrides):
    """A tiny GPT-2 whose biases and LayerNorm gains matter too (hf_tiny sets only the matrices)."""
    model = tiny("gpt2", **overrides)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2) if ".ln_" in name and name.endswith("weight") else p.normal_(0, 0.1)
    return model


def installed(native=True, **overrides):
    """(installed model, HF oracle: a deep copy taken before install)."""
    model = gpt2(**overrides)
    oracle = copy.deepcopy(model)
    return decoding.hf.install(model, native=native), oracle


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": False}, {"n_inner": 80, "layer_norm_epsilon": 1e-3},
    {"activation_function": "relu"}, {"activation_function": "gelu"}, {"activation_function": "gelu_fast"},
    {"activation_function": "quick_gelu"}, {"activation_function": "gelu_pytorch_tanh"},
    {"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False},
])
def test_greedy_runs_native_and_equals_hf(targets, overrides):
    model, oracle = installed(**overrides)
    ids, mask = left_pad(ROWS)
    decoding.hf.reset_counts()
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), oracle.generate(ids, attention_mask=mask, **KW))
    one = torch.tensor([ROWS[0]])
    assert torch.equal(model.generate(one, **KW), oracle.generate(one, **KW))  # batch 1, no mask
    assert targets == ["native", "native"]
    assert decoding.hf.counts()["engine"] == 2


def test_logits_and_the_fixed_shape_step_equal_hfs():
    """HF's logits for a left-padded prefill and a decode step, against the native forward (the
    eager path) and its fixed-shape step (what the compiled CPU step compiles), on the same weights."""
    model, oracle = installed()
    native = hf_native.native_for(model)
    assert isinstance(native, GPT2Decoder)
    ids, mask = left_pad(ROWS)
    nxt = torch.tensor([[7, 8], [9, 10], [11, 12]])
    with torch.no_grad():
        ref = oracle(torch.cat([ids, nxt], 1), attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                     position_ids=torch.cat([mask.cumsum(-1) - 1, mask.sum(1, keepdim=True) + torch.arange(2)], 1)
                     .clamp(min=0)).logits
        for step in ("eager", "static"):
            cache = native.new_cache(3, 32)
            prefill = native(ids, cache, attention_mask=mask)
            torch.testing.assert_close(prefill[mask.bool()], ref[:, :8][mask.bool()], rtol=1e-5, atol=1e-5)
            out = native(nxt, cache) if step == "eager" else static_forward(native, nxt, cache)
            torch.testing.assert_close(out, ref[:, 8:], rtol=1e-5, atol=1e-5, msg=step)
            assert cache.lengths.tolist() == [10, 5, 7]


def test_masks_with_holes(targets):
    """Holes inside rows (transformers' random_attention_mask): positions count real tokens, as HF's."""
    model, oracle = installed()
    g = torch.Generator().manual_seed(3)
    ids, mask = torch.randint(3, 96, (3, 9), generator=g), torch.randint(0, 2, (3, 9), generator=g)
    mask[:, -1] = 1
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), oracle.generate(ids, attention_mask=mask, **KW))
    assert targets == ["native"]


def test_beam_equals_hf_with_scores(targets):
    model, oracle = installed()
    beam_equals_hf_with_scores(model, oracle, ROWS)
    assert targets == ["native"]


def test_sampling_same_seed_same_draws_as_hf(targets):
    model, oracle = installed()
    same_seed_same_samples(model, oracle, ROWS)
    assert targets == ["native"]


def test_position_limit_is_hfs():
    """The table ends at n_positions: within it the call runs native; a call that would feed a
    position past it is refused before any work and runs on HF's own generate (HF's own result)."""
    model, oracle = installed(n_positions=16)
    one = torch.tensor([ROWS[0]])  # 8 tokens
    decoding.hf.reset_counts()
    assert torch.equal(model.generate(one, max_new_tokens=8, do_sample=False),
                       oracle.generate(one, max_new_tokens=8, do_sample=False))
    assert decoding.hf.counts()["engine"] == 1
    with pytest.warns(UserWarning, match="Hugging Face's own generate"):
        out = model.generate(one, max_new_tokens=9, do_sample=False)  # the 9th token is never fed back
    assert torch.equal(out, oracle.generate(one, max_new_tokens=9, do_sample=False))
    assert decoding.hf.counts()["fallback"] == 1


def test_one_copy_of_the_weights_and_hf_keeps_working(tmp_path):
    model, oracle = installed()
    native = hf_native.native_for(model)
    block = model.transformer.h[0]
    assert native.layers[0].attn.c_attn.weight.data_ptr() == block.attn.c_attn.weight.data_ptr()
    assert native.embed.weight.data_ptr() == model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert hf_native.extra_bytes(model) == 0
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, oracle(ids, attention_mask=mask).logits,
                                   rtol=1e-6, atol=1e-6)
    model.save_pretrained(tmp_path)  # HF's own save (safetensors) of the re-laid wte
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ref = oracle.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())


def test_weight_changes_after_install_are_seen(targets):
    model, oracle = installed()
    weight_changes_are_seen(model, oracle, ROWS, KW, lambda m: m.transformer.h[1].mlp.c_fc)
    assert targets == ["native"] * 4


class SubclassedGPT2(transformers.GPT2LMHeadModel):
    pass


def _hooked(model):
    model.transformer.h[0].mlp.register_forward_hook(lambda mod, args, out: out * 2)


def _swapped_act(model):
    for block in model.transformer.h:
        block.mlp.act = torch.nn.Tanh()


def _trained(model):
    model.train()


@pytest.mark.parametrize("overrides,change,reason", [
    ({"reorder_and_upcast_attn": True}, None, "reorder_and_upcast_attn"),
    ({"add_cross_attention": True}, None, "add_cross_attention"),
    ({"activation_function": "tanh"}, None, "activation_function"),
    ({}, _hooked, "forward hooks"),
    ({}, _swapped_act, "activation is Tanh"),
    ({}, _trained, "dropout in training mode"),
    ({}, "subclass", "SubclassedGPT2"),
])
def test_what_native_does_not_express_runs_on_the_adapter(targets, overrides, change, reason):
    model = gpt2(**overrides)
    if change == "subclass":
        model.__class__ = SubclassedGPT2
    elif change is not None:
        change(model)
    oracle = copy.deepcopy(model)
    decoding.hf.install(model)
    ids, mask = left_pad(ROWS)
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, **KW)
    torch.manual_seed(0)
    ref = oracle.generate(ids, attention_mask=mask, **KW)
    if change is not _trained:  # in training mode dropout draws differ between the two: the route is the point
        assert torch.equal(out, ref)
    assert targets == ["adapter"]
    assert reason in (hf_native.unsupported_reason(model) or "")


def test_a_hook_added_after_the_build_sends_the_next_call_to_the_adapter(targets):
    model, oracle = installed()
    ids, mask = left_pad(ROWS)
    model.generate(ids, attention_mask=mask, **KW)
    for m in (model, oracle):
        _hooked(m)
    assert torch.equal(model.generate(ids, attention_mask=mask, **KW), oracle.generate(ids, attention_mask=mask, **KW))
    assert targets == ["native", "adapter"]
