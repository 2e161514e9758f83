"""The non-finite logits guard names the first bad step and row: checked against logits built to go
bad at known steps, and against a step-by-step eager loop of the model itself."""
import re

import pytest
import torch

import decoding
from decoding.finite import CHECK_EVERY, Guard, NonFiniteLogitsError
from hf_tiny import tiny

INF, NAN = float("inf"), float("nan")


def steps_of(bad: dict, rows: int, steps: int, V: int = 7) -> list[torch.Tensor]:
    """Per-step logits (rows, V): finite, with -inf entries, except bad[(step, row)] put in."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        x = torch.randn(rows, V, generator=g)
        x[:, 0] = -INF  # a removed token: never a reason to stop
        for (bs, br), v in bad.items():
            if bs == s:
                x[br, 3] = v
        out.append(x)
    return out


@pytest.mark.parametrize("bad,per,where", [
    ({(4, 1): NAN}, 1, "step 4 (prompt 1)"),
    ({(2, 3): INF, (5, 0): NAN}, 1, "step 5 (prompt 0)"),  # the lowest row that went bad, at its first step
    ({(1, 3): INF, (6, 3): NAN}, 2, "step 1 (prompt 1, sequence 1)"),
    ({(CHECK_EVERY + 1, 2): NAN}, 1, f"step {CHECK_EVERY + 1} (prompt 2)"),  # seen at the second look
])
def test_guard_names_the_first_bad_step_of_the_first_bad_row(bad, per, where):
    steps = 2 * CHECK_EVERY
    g = Guard(rows=4, steps=steps, device="cpu", per=per)
    logits = steps_of(bad, 4, steps)
    flags = [g.check(x, s) for s, x in enumerate(logits)]
    # a flag at the end of every CHECK_EVERY steps, raised where a step of that stretch went bad
    assert [f is not None for f in flags] == [(s + 1) % CHECK_EVERY == 0 for s in range(steps)]
    assert [bool(f) for f in flags if f is not None] == \
        [any(s - CHECK_EVERY < bs <= s for bs, _ in bad) for s in range(CHECK_EVERY - 1, steps, CHECK_EVERY)]
    with pytest.raises(NonFiniteLogitsError, match=re.escape(where)):
        g.raise_if_bad()
    g.check(logits[-1], steps - 1)  # the reduction's argmax is torch.argmax (first maximum)
    assert torch.equal(g.argmax, logits[-1].argmax(-1))


def test_guard_passes_finite_and_minus_inf_logits():
    g = Guard(rows=2, steps=CHECK_EVERY, device="cpu")
    for s, x in enumerate(steps_of({}, 2, CHECK_EVERY)):
        x[1] = -INF  # a row with every token removed is not the model's NaN
        assert not bool(g.check(x, s))
    g.raise_if_bad()


def test_generate_stops_at_the_step_the_eager_loop_first_sees_nan():
    """NaN enters through a token generated mid-run: the error names the step where a plain eager
    loop over the same model first sees non-finite logits."""
    model = tiny("llama")
    ids = torch.tensor([[5, 6, 7], [8, 10, 11]])
    with torch.no_grad():
        clean = decoding.generate(model, ids, max_new_tokens=6, do_sample=False).sequences[:, 3:]
    # poison a token row 1 generates at step 2 that neither prompt holds and row 0 never feeds
    fed0 = set(ids[0].tolist()) | set(clean[0, :5].tolist())
    step, tok = next((j, int(clean[1, j])) for j in range(1, 5)
                     if int(clean[1, j]) not in fed0 | set(ids[1].tolist()) | set(clean[1, :j].tolist()))
    with torch.no_grad():
        model.get_input_embeddings().weight[tok] = NAN
        x, first = ids, None
        for s in range(6):  # the oracle: HF's own forward, no cache, one step at a time
            logits = model(x).logits[:, -1]
            bad = ~(logits < INF).all(-1)
            if bool(bad.any()):
                first = (s, int(bad.int().argmax()))
                break
            x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
    assert first == (step + 1, 1)
    with pytest.raises(NonFiniteLogitsError, match=rf"step {first[0]} \(prompt 1\)"):
        decoding.generate(model, ids, max_new_tokens=6, do_sample=False)
