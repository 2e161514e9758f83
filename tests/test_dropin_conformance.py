"""decoding.hf.install against HF's own generate on the same call (the oracle), on tiny random models
of several families. Every comparison asserts that the call ran on the engine (decoding.hf.counts), so
none can pass by falling back to HF."""
import warnings

import pytest
import torch

import decoding
from decoding.finite import NonFiniteLogitsError
from hf_tiny import tiny

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "gemma", "phi3"]
# what transformers' own generation tests pass to every call
MIXIN = dict(bad_words_ids=[[1, 0]], repetition_penalty=1.2, remove_invalid_values=True)
OUTPUTS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True, output_hidden_states=True,
               output_attentions=True)


def holed_inputs(batch=2, length=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (batch, length), generator=g)
    mask = torch.randint(0, 2, (batch, length), generator=g)
    mask[:, -1] = 1  # transformers' random_attention_mask: holes anywhere, last column real
    return ids, mask


def run_both(model, seed=0, **kw):
    """(HF's result, the drop-in's result) of one call; asserts the drop-in ran it on the engine."""
    decoding.hf.uninstall(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        ref = model.generate(**kw)
    decoding.hf.install(model)
    decoding.hf.reset_counts()
    torch.manual_seed(seed)
    try:
        out = model.generate(**kw)
    finally:
        decoding.hf.uninstall(model)
    assert decoding.hf.counts()["engine"] == 1, decoding.hf.counts()
    return ref, out


def close(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{what}: {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{what}[{i}]")
        return
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.dtype in (torch.long, torch.int32, torch.bool):
        assert torch.equal(a, b), what
    else:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=what)


def same_output(ref, out):
    assert type(out) is type(ref)
    if isinstance(ref, torch.Tensor):
        assert torch.equal(out, ref)
        return
    for name in ("sequences", "scores", "logits", "hidden_states", "attentions", "beam_indices", "sequences_scores"):
        if name in ref.__dataclass_fields__:
            close(getattr(ref, name), getattr(out, name), name)
    cache_field = "cache" if "cache" in ref.__dataclass_fields__ else "past_key_values"
    rc, oc = getattr(ref, cache_field), getattr(out, cache_field)
    assert type(rc) is type(oc)
    if rc is not None:
        for layer in range(len(rc.layers)):
            close(rc.layers[layer].keys, oc.layers[layer].keys, f"cache keys {layer}")
            close(rc.layers[layer].values, oc.layers[layer].values, f"cache values {layer}")


@pytest.mark.parametrize("family", FAMILIES)
def test_mixin_greedy_with_every_output(family):
    model = tiny(family, attn_implementation="eager")
    ids, mask = holed_inputs()
    for use_cache in (True, False):
        ref, out = run_both(model, input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                            use_cache=use_cache, **MIXIN, **OUTPUTS)
        same_output(ref, out)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mixin_sampling_two_sequences_same_draw(family):
    model = tiny(family, attn_implementation="eager")
    ids, mask = holed_inputs()
    ref, out = run_both(model, input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True,
                        num_return_sequences=2, top_k=10, top_p=0.7, temperature=0.7, **MIXIN, **OUTPUTS)
    same_output(ref, out)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_mixin_beam_search_and_beam_sampling(family, do_sample):
    model = tiny(family, attn_implementation="eager")
    ids, mask = holed_inputs()
    kw = dict(num_beams=2, length_penalty=2.0, early_stopping=False, num_return_sequences=1)
    if do_sample:
        kw.update(top_k=10, top_p=0.7, temperature=0.7)
    for use_cache in (True, False):
        ref, out = run_both(model, input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=do_sample,
                            use_cache=use_cache, **kw, **MIXIN, **OUTPUTS)
        same_output(ref, out)


def test_beam_sampling_with_eos_returns_what_hf_returns():
    model = tiny("llama")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    for seed in range(3):
        ref, out = run_both(model, seed=seed, input_ids=ids, max_new_tokens=8, do_sample=True, num_beams=3,
                            num_return_sequences=2, eos_token_id=[2, 17], return_dict_in_generate=True,
                            output_scores=True)
        same_output(ref, out)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_word_rules(family):
    model = tiny(family)
    ids = torch.tensor([[5, 6, 7, 5, 6, 9, 7], [8, 9, 8, 9, 8, 4, 3]])
    first = model.generate(ids, max_new_tokens=6, do_sample=False)[:, 7:]
    # multi-token rules on what the model would say; biases on single and multi-token sequences
    bad = [first[0, :2].tolist(), [int(first[1, 0])], [3, 4]]
    bias = [[[int(first[0, 0])], -5.0], [first[1, :2].tolist(), 4.0], [[7, 8], 2.5]]
    for kw in (dict(bad_words_ids=bad), dict(sequence_bias=bias), dict(no_repeat_ngram_size=2),
               dict(no_repeat_ngram_size=3, bad_words_ids=bad, sequence_bias=bias, repetition_penalty=1.3)):
        for mode in (dict(do_sample=False), dict(num_beams=3)):
            ref, out = run_both(model, input_ids=ids, max_new_tokens=6, return_dict_in_generate=True,
                                output_scores=True, **mode, **kw)
            same_output(ref, out)


def test_right_padding_warns_and_equals_hf():
    model = tiny("llama")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    ref, out = run_both(model, input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    same_output(ref, out)


def test_negative_eos_is_ignored_as_hf():
    model = tiny("qwen2")
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = -1
    ids = torch.tensor([[5, 6, 7]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, out = run_both(model, input_ids=ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    same_output(ref, out)


def test_token_type_ids_pass_through():
    model = tiny("gpt2")
    ids, mask = holed_inputs()
    types = torch.randint(0, 96, ids.shape, generator=torch.Generator().manual_seed(1))
    for mode in (dict(do_sample=False), dict(num_beams=2)):
        ref, out = run_both(model, input_ids=ids, attention_mask=mask, token_type_ids=types, max_new_tokens=4,
                            **mode)
        same_output(ref, out)


def test_no_prompt_starts_from_bos_and_logits_to_keep_is_accepted():
    model = tiny("llama")
    ref, out = run_both(model, max_new_tokens=3, do_sample=False)
    same_output(ref, out)
    ids = torch.tensor([[5, 6, 7]])
    ref, out = run_both(model, input_ids=ids, max_new_tokens=3, do_sample=False, logits_to_keep=0)
    same_output(ref, out)


def test_runs_past_max_positions_as_hf():
    model = tiny("llama", max_position_embeddings=8)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, out = run_both(model, input_ids=ids, max_new_tokens=5, do_sample=False)
    same_output(ref, out)


def test_returned_cache_continues_in_hf():
    model = tiny("llama")
    ids = torch.tensor([[5, 6, 7, 8]])
    ref, out = run_both(model, input_ids=ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    same_output(ref, out)
    cache = out.cache if "cache" in out.__dataclass_fields__ else out.past_key_values
    key = "cache" if "cache" in out.__dataclass_fields__ else "past_key_values"
    with torch.no_grad():
        more = model.generate(out.sequences, max_new_tokens=2, do_sample=False, **{key: cache})
        whole = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(more, whole)


def test_nan_logits_raise_unless_removed():
    model = tiny("llama")
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")  # one broken weight row
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    decoding.hf.install(model)
    try:
        for kw, where in ((dict(do_sample=False), "prompt 0"), (dict(do_sample=True), "prompt 0"),
                          (dict(num_beams=2), "prompt 0, beam 0")):
            with pytest.raises(NonFiniteLogitsError, match=rf"step 0 \({where}\)"):
                model.generate(ids, max_new_tokens=3, **kw)
    finally:
        decoding.hf.uninstall(model)
    ref, out = run_both(model, input_ids=ids, max_new_tokens=3, do_sample=True, remove_invalid_values=True)
    same_output(ref, out)


def test_nan_logits_name_the_prompt_and_its_sequence_or_beam():
    model = tiny("llama")
    with torch.no_grad():
        model.get_input_embeddings().weight[9] = float("nan")  # only the second prompt holds token 9
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    for kw, where in ((dict(do_sample=True, num_return_sequences=2), "prompt 1, sequence 0"),
                      (dict(num_beams=3), "prompt 1, beam 0")):
        with pytest.raises(NonFiniteLogitsError, match=rf"step 0 \({where}\)"):
            decoding.generate(model, ids, max_new_tokens=3, **kw)


def test_inputs_keyword_in_engine_generate():
    model = tiny("llama")
    ids = torch.tensor([[5, 6, 7]])
    a = decoding.generate(model, inputs=ids, max_new_tokens=3).sequences
    b = decoding.generate(model, ids, max_new_tokens=3).sequences
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`inputs`"):
        decoding.generate(model, ids, inputs=ids, max_new_tokens=3)


def test_engine_refusal_goes_to_hf_which_raises_its_own_error():
    model = tiny("llama")
    decoding.hf.install(model)
    try:
        with pytest.raises(ValueError):  # HF's own check of max_length (the engine's refusal defers to it)
            model.generate(torch.tensor([[5, 6, 7, 8]]), max_length=3)
    finally:
        decoding.hf.uninstall(model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inputs_embeds_prompt(family):
    model = tiny(family)
    ids, mask = holed_inputs()
    embeds = model.get_input_embeddings()(ids).detach() + 0.05  # not the ids' own: the embeds must be read
    for mode in (dict(do_sample=False), dict(num_beams=2)):
        ref, out = run_both(model, input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4,
                            return_dict_in_generate=True, output_scores=True, **mode)
        same_output(ref, out)


def continue_both(model, prompt: dict, prefix: int = 6):
    """HF's generate and the drop-in's, each continuing a DynamicCache that a forward over the first
    `prefix` positions of `prompt` (input_ids or inputs_embeds, with attention_mask) filled; asserts
    the drop-in's call ran on the engine and returns (HF's output, the drop-in's)."""
    import inspect

    from transformers import DynamicCache
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    results = []
    for install in (False, True):
        past = DynamicCache(config=model.config)
        with torch.no_grad():
            model(**{k: v[:, :prefix] for k, v in prompt.items()}, use_cache=True, **{key: past})
        if install:
            decoding.hf.install(model)
            decoding.hf.reset_counts()
        try:
            args = {k: v for k, v in prompt.items() if k != "input_ids"}  # input_ids positionally, as users pass it
            results.append(model.generate(*[prompt[k] for k in ("input_ids",) if k in prompt], **args, max_new_tokens=4,
                                          do_sample=False, return_dict_in_generate=True, output_scores=True,
                                          **{key: past}))
        finally:
            decoding.hf.uninstall(model)
    assert decoding.hf.counts()["engine"] == 1, decoding.hf.counts()
    return results


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_continue_from_callers_dynamic_cache(family):
    model = tiny(family)
    ids, mask = holed_inputs(length=9)
    same_output(*continue_both(model, dict(input_ids=ids, attention_mask=mask)))


def test_compile_config_with_a_dynamic_cache_runs_uncompiled_as_hf():
    from transformers import CompileConfig
    model = tiny("llama")
    with pytest.warns(UserWarning, match="compile_config"):
        ref, out = run_both(model, input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False,
                            compile_config=CompileConfig())
    same_output(ref, out)
