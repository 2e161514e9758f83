"""Checks and constants the drop-in's native-route tests share (tests/test_dropin_native*.py): each compares an
installed model's generate with HF's on an untouched copy (`oracle`) of the same weights."""
import torch

import decoding
import decoding.hf
from hf_tiny import left_pad
from models import hf_native
from models.native import NativeDecoder

ROWS = [[5, 17, 23, 8, 41, 9, 77, 3], [11, 4, 90], [6, 55, 21, 19, 30]]
KW = dict(max_new_tokens=12, do_sample=False)


def beam_equals_hf_with_scores(model, oracle, rows) -> None:
    """Beam search: HF's sequences through the drop-in; HF's sequences_scores and per-step scores from
    the engine on the same native decoder (the drop-in sends return_dict_in_generate calls to the
    adapter: HF's output object carries HF's cache)."""
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, length_penalty=0.7, do_sample=False)
    ref = oracle.generate(ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True, **kw)
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), ref.sequences)
    out = decoding.generate(hf_native.native_for(model), ids, attention_mask=mask, output_scores=True, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, rtol=1e-5, atol=1e-5)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def same_seed_same_samples(model, oracle, rows) -> None:
    """Sampling under the same seed returns HF's very samples."""
    ids, mask = left_pad(rows)
    kw = dict(do_sample=True, top_k=10, top_p=0.9, temperature=0.7, num_return_sequences=2, max_new_tokens=10)
    torch.manual_seed(7)
    out = model.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(7)
    assert torch.equal(out, oracle.generate(ids, attention_mask=mask, **kw))


def weight_changes_are_seen(model, oracle, rows, kw: dict, linear) -> None:
    """After the native decoder is built: an SGD step in place, a weight re-pointed at new storage
    (`linear(m)`: the module whose weight is re-pointed) and a dtype change each give HF's output."""
    ids, mask = left_pad(rows)
    model.generate(ids, attention_mask=mask, **kw)  # builds the native decoder
    for m in (model, oracle):  # fine-tuning: one SGD step, in place
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        m(ids, attention_mask=mask, labels=ids).loss.backward()
        opt.step()
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), oracle.generate(ids, attention_mask=mask, **kw))
    with torch.no_grad():  # a weight re-pointed at new storage, and a dtype change: rebuilt
        for m in (model, oracle):
            linear(m).weight.data = linear(m).weight.data * 3.0
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), oracle.generate(ids, attention_mask=mask, **kw))
    model.to(torch.float64)
    oracle.to(torch.float64)
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), oracle.generate(ids, attention_mask=mask, **kw))
    assert hf_native.native_for(model).dtype == torch.float64


def record_targets(monkeypatch) -> list:
    """The model each engine call of the drop-in runs on, in order: 'native' or 'adapter'."""
    seen, engine = [], decoding.hf.engine_generate

    def spy(model, *args, **kwargs):
        seen.append("native" if isinstance(model, NativeDecoder) else "adapter")
        return engine(model, *args, **kwargs)
    monkeypatch.setattr(decoding.hf, "engine_generate", spy)
    return seen
