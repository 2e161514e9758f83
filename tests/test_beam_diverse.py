"""Diverse beam search equals transformers 4.55's group beam search, recorded in
tests/golden/diverse_beam.json by tests/golden/make_diverse_beam_golden.py (the tests never run
4.55), on the recorded HF models and the native model built from the same llama weights."""
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import decoding
from hf_tiny import left_pad, tiny
from models.hf_weights import from_hf

GOLDEN = Path(__file__).parent / "golden"
FAMILIES = {"llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
            "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(name: str):
    spec = json.loads((GOLDEN / name / "config.json").read_text())
    cls, config = FAMILIES[spec["family"]]
    model = cls(config(**spec["config"])).eval()
    missing, unexpected = model.load_state_dict(load_file(str(GOLDEN / name / "model.safetensors")), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    return model


@pytest.fixture(scope="module")
def golden():
    data = json.loads((GOLDEN / "diverse_beam.json").read_text())
    models = {name: load(name) for name in data["models"]}
    models["native"] = from_hf(models["llama"]).eval()
    return data, models


@pytest.mark.parametrize("name", ["llama", "gpt2", "native"])
def test_diverse_beam_equals_transformers_455(golden, name):
    data, models = golden
    ids, mask = torch.tensor(data["input_ids"]), torch.tensor(data["attention_mask"])
    cases = [c for c in data["cases"] if c["model"] == ("llama" if name == "native" else name)]
    assert len(cases) >= 10
    for case in cases:
        kw = {k: v for k, v in case["kwargs"].items() if k != "do_sample"}
        out = decoding.generate(models[name], ids, attention_mask=mask, output_scores=True, **kw)
        assert out.sequences.tolist() == case["sequences"], kw
        # another transformers version (and, for native, another implementation): logits agree to ~1e-6
        expected = torch.tensor(case["sequences_scores"])
        assert torch.allclose(out.sequences_scores, expected, atol=1e-5, rtol=1e-5), kw
        assert len(out.scores) == out.stats.target_forwards and out.scores[0].shape == (3 * kw["num_beams"], 64)


def test_golden_cases_cover_the_grid(golden):
    data, _ = golden
    kws = [c["kwargs"] for c in data["cases"]]
    assert {k["num_beam_groups"] for k in kws} >= {2, 3, 4}
    assert {k["num_beams"] // k["num_beam_groups"] for k in kws} >= {1, 2, 3, 4}
    assert {k["early_stopping"] for k in kws} == {True, False, "never"}
    assert {k["length_penalty"] for k in kws} >= {0.0, -1.0, 1.0, 2.0}
    assert any(isinstance(k["eos_token_id"], list) for k in kws)
    T = len(data["input_ids"][0])
    ended = [any(t == k["eos_token_id"] for t in seq[T:-1]) for c, k in zip(data["cases"], kws)
             if isinstance(k["eos_token_id"], int) for seq in c["sequences"]]
    assert sum(ended) > 10, "eos should end hypotheses early"


def shared_tokens(sequences: torch.Tensor) -> float:
    """Mean fraction of positions at which two returned hypotheses of a row hold the same token."""
    same = (sequences[:, None] == sequences[None, :]).float().mean(-1)  # (n, n)
    n = sequences.shape[0]
    return float((same.sum() - n) / (n * (n - 1)))


def test_groups_really_differ():
    hf = tiny("llama")
    ids, mask = left_pad([[5, 17, 23, 8, 41], [6, 55, 21]])
    kw = dict(max_new_tokens=8, num_beams=6, num_beam_groups=3, num_return_sequences=6, eos_token_id=None)
    with pytest.warns(UserWarning, match="same beams"):
        same = decoding.generate(hf, ids, attention_mask=mask, diversity_penalty=0.0, **kw).sequences
    diverse = decoding.generate(hf, ids, attention_mask=mask, diversity_penalty=2.0, **kw).sequences
    T = ids.shape[1]
    for row in range(2):
        plain, spread = same[row * 6:(row + 1) * 6, T:], diverse[row * 6:(row + 1) * 6, T:]
        # without the penalty the three groups search alike: each hypothesis comes three times
        _, counts = plain.unique(dim=0, return_counts=True)
        assert (counts % 3 == 0).all()
        assert shared_tokens(spread) < shared_tokens(plain)
        assert len(spread.unique(dim=0)) > len(plain.unique(dim=0))


def test_diverse_beam_streams_hypotheses():
    hf = tiny("gpt2")
    calls = []

    class Recorder:
        def put(self, value):
            calls.append(("put", value.clone()))

        def put_hypotheses(self, row, token_ids, first_changed):
            calls.append(("hyp", row, list(token_ids), first_changed))

        def end(self):
            calls.append(("end",))

    ids, mask = left_pad([[5, 17, 23], [6, 55]])
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=6, num_beams=4, num_beam_groups=2,
                            diversity_penalty=1.0, streamer=Recorder())
    assert calls[0][0] == "put" and torch.equal(calls[0][1], ids) and calls[-1] == ("end",)
    last = {c[1]: c[2] for c in calls if c[0] == "hyp"}
    for row in range(2):
        best = out.sequences[row, ids.shape[1]:].tolist()
        assert best[:len(last[row])] == last[row]
