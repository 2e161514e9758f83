"""Speculative decoding's arguments and draft models are checked before any forward, with errors
that name the argument: vocabulary and eos mismatches, k < 1, beam search, sliding-window caches."""
import pytest
import torch

import decoding
from hf_tiny import tiny

IDS = torch.tensor([[5, 17, 23, 8]])


@pytest.fixture(scope="module")
def target():
    return tiny("llama")


def no_forward(model):
    """Fail the test if `model` runs a forward."""
    def hook(*_):
        raise AssertionError("a forward ran before the error")
    return model.register_forward_pre_hook(hook)


@pytest.mark.parametrize("overrides,match", [
    (dict(vocab_size=50), "assistant_model has a vocabulary of 50 tokens, the model 96"),
    (dict(vocab_size=128), "assistant_model has a vocabulary of 128 tokens"),
    (dict(eos_token_id=3), r"assistant_model ends text with eos \[3\], the model with \[2\]"),
])
def test_draft_that_does_not_share_the_tokenizer(target, overrides, match):
    draft = tiny("llama", seed=1, **overrides)
    handles = [no_forward(target), no_forward(draft)]
    try:
        with pytest.raises(ValueError, match=match):
            decoding.generate(target, IDS, assistant_model=draft, max_new_tokens=4)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kw,error,match", [
    (dict(num_assistant_tokens=0), ValueError, "`num_assistant_tokens` must be an integer >= 1, got 0"),
    (dict(num_assistant_tokens=2.5), ValueError, "`num_assistant_tokens` must be an integer >= 1"),
    (dict(num_assistant_tokens_schedule="fast"), ValueError, "`num_assistant_tokens_schedule` must be one of"),
    (dict(assistant_confidence_threshold=1.5), ValueError, "`assistant_confidence_threshold` must lie in"),
    (dict(num_beams=2), ValueError, r"`assistant_model` \(speculative decoding\) does not combine with beam search"),
    (dict(prompt_lookup_num_tokens=3), ValueError, "not both"),
    (dict(strategy="jacobi"), ValueError, "does not combine with strategy"),
])
def test_bad_assisted_arguments(target, kw, error, match):
    with pytest.raises(error, match=match):
        decoding.generate(target, IDS, assistant_model=target, max_new_tokens=4, **kw)


def test_bad_prompt_lookup_arguments(target):
    with pytest.raises(ValueError, match="`prompt_lookup_num_tokens` must be an integer >= 1, got 0"):
        decoding.generate(target, IDS, prompt_lookup_num_tokens=0)
    with pytest.raises(ValueError, match="`max_matching_ngram_size` must be an integer >= 1"):
        decoding.generate(target, IDS, prompt_lookup_num_tokens=2, max_matching_ngram_size=0)
    with pytest.raises(ValueError, match="beam search"):
        decoding.generate(target, IDS, prompt_lookup_num_tokens=2, num_beams=3)


def test_assistant_that_is_no_model(target):
    with pytest.raises(TypeError, match="assistant_model: model must be"):
        decoding.generate(target, IDS, assistant_model="tiny-draft", max_new_tokens=4)


def test_sliding_window_cache_refused_before_work():
    model = tiny("mistral", sliding_window=12)
    draft = tiny("mistral", seed=1, sliding_window=12)
    h = no_forward(model)
    try:
        with pytest.raises(ValueError, match=r"model has a sliding-window attention cache \(window 12\).*batch size 2"):
            decoding.generate(model, torch.cat([IDS, IDS]), assistant_model=draft, max_new_tokens=3)
        with pytest.raises(ValueError, match="sliding-window attention cache .* would fill"):
            decoding.generate(model, IDS, assistant_model=draft, max_new_tokens=8, num_assistant_tokens=3)
    finally:
        h.remove()
    # inside the window, batch 1: runs, and equals HF greedy
    out = decoding.generate(model, IDS, assistant_model=draft, max_new_tokens=4, num_assistant_tokens=2,
                            eos_token_id=None)
    with torch.no_grad():
        ref = model.generate(IDS, do_sample=False, max_new_tokens=4, eos_token_id=None)
    assert torch.equal(out.sequences, ref)


def test_k_is_read_from_the_assistants_generation_config(target):
    """HF reads k from the assistant's generation_config; a value passed to generate() still wins."""
    draft = tiny("llama", seed=1)
    draft.generation_config.num_assistant_tokens = 2
    draft.generation_config.assistant_confidence_threshold = 0.0
    out = decoding.generate(target, IDS, assistant_model=draft, max_new_tokens=8, eos_token_id=None)
    assert len(out.stats.accept_rate_by_position) == 2
    out = decoding.generate(target, IDS, assistant_model=draft, num_assistant_tokens=3, max_new_tokens=8,
                            eos_token_id=None)
    assert len(out.stats.accept_rate_by_position) == 3
