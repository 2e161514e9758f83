"""decoding.hf.install against HF's own generate (the oracle) on calls that used to fall back:
an inputs_embeds prompt without input_ids, and HF's cache_implementation values. Every comparison
asserts that the call ran on the engine (run_both), so none can pass by falling back to HF."""
import inspect

import pytest
import torch

import decoding
from hf_tiny import tiny
from test_dropin_conformance import continue_both, run_both, same_output

OUTPUTS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True, output_hidden_states=True)


def left_padded(model, batch=2, length=7, seed=5):
    """ids, embeddings (not the ids' own, so that the engine must read them) and a left-padded mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids) + 0.05
    return ids, embeds, mask


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inputs_embeds_without_input_ids(family):
    model = tiny(family, attn_implementation="eager")
    _, embeds, mask = left_padded(model)
    modes = (dict(do_sample=False), dict(do_sample=True, num_return_sequences=2, top_k=10),
             dict(num_beams=2), dict(num_beams=2, do_sample=True, num_return_sequences=2))
    for mode in modes:
        for m in (mask, None):
            ref, out = run_both(model, inputs_embeds=embeds, attention_mask=m, max_new_tokens=4, **mode, **OUTPUTS)
            assert ref.sequences.shape[1] == 4  # HF's sequences hold the new tokens only
            same_output(ref, out)


def test_inputs_embeds_without_input_ids_lengths():
    # HF's lengths for an embeds prompt: the default is 20 new tokens (the prompt is not counted),
    # max_length / min_length count the embeddings
    model = tiny("llama")
    _, embeds, mask = left_padded(model)
    for kw in (dict(), dict(max_length=12, min_length=10, no_repeat_ngram_size=2)):
        ref, out = run_both(model, inputs_embeds=embeds, attention_mask=mask, **kw)
        same_output(ref, out)


def test_inputs_embeds_repetition_penalty_falls_back():
    # HF applies the penalty to new tokens only and skips as many of them as the mask has left pads:
    # the engine leaves that to HF
    model = tiny("llama")
    _, embeds, mask = left_padded(model)
    decoding.hf.uninstall(model)
    with torch.no_grad():
        ref = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, repetition_penalty=1.3)
    decoding.hf.install(model)
    decoding.hf.reset_counts()
    try:
        with pytest.warns(UserWarning, match="repetition_penalty"):
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, repetition_penalty=1.3)
    finally:
        decoding.hf.uninstall(model)
    assert decoding.hf.counts()["fallbacks"] == {"repetition_penalty": 1}
    assert torch.equal(ref, out)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inputs_embeds_continue_from_callers_cache(family):
    model = tiny(family)
    _, embeds, mask = left_padded(model, length=9)
    same_output(*continue_both(model, dict(inputs_embeds=embeds, attention_mask=mask)))


def _cache_of(out):
    return out.cache if "cache" in out.__dataclass_fields__ else out.past_key_values


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_static_cache(family):
    from transformers import StaticCache
    model = tiny(family)
    ids, embeds, mask = left_padded(model)
    mask[1, 2] = 0  # a hole too
    for kw in (dict(input_ids=ids, do_sample=False), dict(input_ids=ids, do_sample=True, top_k=10),
               dict(inputs_embeds=embeds, do_sample=False)):
        ref, out = run_both(model, attention_mask=mask, max_new_tokens=5, cache_implementation="static",
                            return_dict_in_generate=True, output_scores=True, output_logits=True, **kw)
        assert isinstance(_cache_of(out), StaticCache)
        assert _cache_of(out).layers[0].keys.shape[2] == ids.shape[1] + 5 - 1  # HF's size: max_length - 1
        same_output(ref, out)  # the cache's keys and values included
    ref, out = run_both(model, input_ids=ids, attention_mask=mask, max_new_tokens=5, cache_implementation="static")
    assert torch.equal(ref, out)


def test_static_cache_is_continued_by_hf():
    # the returned StaticCache is an ordinary one: HF's generate continues from it (in place). HF sizes
    # a static cache by the longest earlier static call on the model: room to continue
    model = tiny("llama")
    ids, _, mask = left_padded(model)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kw = dict(attention_mask=mask, cache_implementation="static", return_dict_in_generate=True)
    run_both(model, input_ids=ids, max_new_tokens=8, **kw)
    ref, out = run_both(model, input_ids=ids, max_new_tokens=3, **kw)
    assert _cache_of(out).layers[0].keys.shape[2] == ids.shape[1] + 8 - 1
    longer = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
    seqs = []
    for first in (ref, out):
        with torch.no_grad():
            seqs.append(model.generate(first.sequences, attention_mask=longer, max_new_tokens=2,
                                       **{key: _cache_of(first)}))
    assert torch.equal(seqs[0], seqs[1])


def test_static_cache_with_beams_falls_back():
    model = tiny("llama")
    ids, _, mask = left_padded(model)
    decoding.hf.install(model)
    decoding.hf.reset_counts()
    try:
        with pytest.warns(UserWarning, match="cache_implementation"):
            model.generate(ids, attention_mask=mask, max_new_tokens=2, num_beams=2, cache_implementation="static")
    finally:
        decoding.hf.uninstall(model)
    assert decoding.hf.counts()["fallbacks"] == {"cache_implementation": 1}
