"""Greedy decoding token-identical to HF `generate(do_sample=False)` (the oracle) on tiny models of
seven families, through the adapter and through the native model, with HF's argument resolution."""
import string

import pytest
import torch
import transformers

import decoding
from hf_tiny import left_pad, tiny
from models.hf_weights import from_hf

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "gemma", "phi3"]
ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70]]
N = 10


def hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, do_sample=False, **kw)


def mid_eos(hf, ids, mask):
    """A token the model emits mid-sequence in one row but not at its first step in any row."""
    free = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=None)[:, ids.shape[1]:]
    first = set(free[:, 0].tolist())
    for step in range(2, N - 2):
        for row in range(free.shape[0]):
            t = int(free[row, step])
            if t not in first and t not in free[row, :step].tolist():
                return t
    pytest.skip("no token suitable as a mid-sequence eos")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, tiny(request.param)


def test_batch_left_padded_eos_mid_sequence(family):
    name, hf = family
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf, ids, mask)
    ref = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=eos)
    out = decoding.generate(hf, ids, attention_mask=mask, do_sample=False, max_new_tokens=N, eos_token_id=eos)
    assert torch.equal(out.sequences, ref), name
    assert (ref[:, ids.shape[1]:] == eos).any(), "eos should end some row early"
    new = ref[:, ids.shape[1]:]
    per_row = [row.index(eos) + 1 if eos in row else N for row in new.tolist()]
    s = out.stats
    assert s.new_tokens == sum(per_row) and s.prefill_tokens == sum(map(len, ROWS))
    assert s.target_forwards == max(per_row) and s.tau == 1.0 and s.kv_cache_bytes > 0


def test_eos_none_and_generation_config_defaults(family):
    name, hf = family
    ids, mask = left_pad(ROWS)
    ref = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=None)
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=N, eos_token_id=None)
    assert torch.equal(out.sequences, ref) and out.sequences.shape[1] == ids.shape[1] + N
    # nothing passed: the model's generation_config (eos 2, pad 0) and HF's 20 new tokens
    ref = hf_generate(hf, ids, mask)
    assert torch.equal(decoding.generate(hf, ids, attention_mask=mask).sequences, ref), name


def test_ragged_lists_equal_left_padded_tensor(family):
    _, hf = family
    ids, mask = left_pad(ROWS)
    ref = hf_generate(hf, ids, mask, max_new_tokens=6)
    assert torch.equal(decoding.generate(hf, ROWS, max_new_tokens=6).sequences, ref)


def test_scores_equal_hf_output_scores(family):
    name, hf = family
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf, ids, mask)
    ref = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=eos, output_scores=True,
                      return_dict_in_generate=True, repetition_penalty=1.3)
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=N, eos_token_id=eos, output_scores=True,
                            return_dict_in_generate=True, repetition_penalty=1.3)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_native_model_equals_hf(name):
    hf = tiny(name)
    native = from_hf(hf).eval()
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf, ids, mask)
    for kw in (dict(eos_token_id=eos), dict(eos_token_id=None, repetition_penalty=1.5)):
        ref = hf_generate(hf, ids, mask, max_new_tokens=N, **kw)
        out = decoding.generate(native, ids, attention_mask=mask, max_new_tokens=N, **kw)
        assert torch.equal(out.sequences, ref), (name, kw)
    # the native config's special tokens play the role of generation_config (eos 2, pad 0)
    assert torch.equal(decoding.generate(native, ids, attention_mask=mask, max_new_tokens=N).sequences,
                       hf_generate(hf, ids, mask, max_new_tokens=N))


@pytest.mark.parametrize("kw", [
    dict(repetition_penalty=1.8), dict(repetition_penalty=0.7), dict(min_new_tokens=6), dict(max_length=17),
    dict(min_length=16), dict(max_new_tokens=1),
])
def test_length_and_penalty_arguments(kw):
    hf = tiny("llama")
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf, ids, mask)
    kw = {"max_new_tokens": N, **kw} if "max_length" not in kw else kw
    ref = hf_generate(hf, ids, mask, eos_token_id=eos, **kw)
    out = decoding.generate(hf, ids, attention_mask=mask, eos_token_id=eos, **kw)
    assert torch.equal(out.sequences, ref), kw


def test_eos_list_and_generation_config_object():
    hf = tiny("qwen2")
    ids, mask = left_pad(ROWS)
    free = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=None)[:, ids.shape[1]:]
    eos = [int(free[0, 3]), int(free[2, 5])]
    gc = transformers.GenerationConfig(max_new_tokens=N, eos_token_id=eos, pad_token_id=1)
    ref = hf_generate(hf, ids, mask, generation_config=gc)
    out = decoding.generate(hf, ids, attention_mask=mask, generation_config=gc)
    assert torch.equal(out.sequences, ref)
    # a keyword beats the config object, which beats the model's generation_config
    ref = hf_generate(hf, ids, mask, generation_config=gc, max_new_tokens=4)
    assert torch.equal(decoding.generate(hf, ids, attention_mask=mask, generation_config=gc,
                                         max_new_tokens=4).sequences, ref)


def test_user_logits_processor_runs_like_hf():
    hf = tiny("gpt2")
    ids, mask = left_pad(ROWS)
    banned = hf_generate(hf, ids, mask, max_new_tokens=3, eos_token_id=None)[:, -1].tolist()

    def ban(input_ids, scores):  # HF-style callable; also checks the ids it is shown
        assert input_ids.shape[0] == scores.shape[0]
        scores = scores.clone()
        scores[:, banned] = -float("inf")
        return scores

    ref = hf_generate(hf, ids, mask, max_new_tokens=N, logits_processor=transformers.LogitsProcessorList([ban]))
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=N, logits_processor=[ban])
    assert torch.equal(out.sequences, ref)
    assert not any(t in banned for t in out.sequences[:, ids.shape[1]:].flatten().tolist() if t != 0)


def test_streamer_gets_prompt_then_tokens():
    hf = tiny("llama")
    ids, mask = left_pad(ROWS)

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=5, streamer=rec)
    assert rec.ended and torch.equal(rec.puts[0], ids)
    assert torch.equal(torch.stack(rec.puts[1:], 1), out.sequences[:, ids.shape[1]:])


# -- stop strings, on a character-level tokenizer built here ------------------------------------
def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    chars = ["<pad>", "<s>", "</s>", "\n", " "] + list(string.ascii_lowercase + string.ascii_uppercase
                                                    + string.digits + string.punctuation[:29])
    assert len(chars) == 96  # the tiny models' vocabulary
    tk = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


def forcing(tok, texts_by_step: dict):
    """An HF-style processor that forces the given text (a char per step) at fixed steps."""
    def force(input_ids, scores):
        step = input_ids.shape[1] - force.prompt_len
        if step in texts_by_step:
            scores = torch.full_like(scores, -1e9)
            scores[:, tok.convert_tokens_to_ids(texts_by_step[step])] = 0
        return scores
    return force


@pytest.mark.parametrize("prompt,start,forced,stops", [
    ("def f(x):\n  return x", 2, "\ndef g", ["\ndef"]),  # code completion stops at "\ndef"
    ("x = 1\nd", 0, "ef y", ["\ndef"]),  # the stop string starts in the prompt
    ("abc", 1, "hello world", ["lo w", "zz"]),
    ("abc", 1, "hello", ["nope"]),  # never stops early
])
def test_stop_strings_stop_where_hf_does(prompt, start, forced, stops):
    tok = char_tokenizer()
    hf = tiny("llama")
    rows = [tok.encode(prompt, add_special_tokens=False), tok.encode("q = 2", add_special_tokens=False)]
    ids, mask = left_pad(rows)
    force = forcing(tok, {start + i: c for i, c in enumerate(forced)})
    kw = dict(max_new_tokens=12, eos_token_id=None, stop_strings=stops, tokenizer=tok)
    for n in (2, 1):  # batch 2 (row 1 has other text), then row 0 alone
        force.prompt_len = ids.shape[1]
        ref = hf_generate(hf, ids[:n], mask[:n], logits_processor=transformers.LogitsProcessorList([force]), **kw)
        out = decoding.generate(hf, ids[:n], attention_mask=mask[:n], logits_processor=[force], **kw)
        assert torch.equal(out.sequences, ref), (tok.decode(out.sequences[0]), tok.decode(ref[0]))
    text = prompt + tok.decode(out.sequences[0, ids.shape[1]:])
    assert any(text.endswith(s) for s in stops) == (stops[0] != "nope"), text
