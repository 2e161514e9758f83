"""bench/compiled_step.py --smoke runs end to end on a tiny model: both compiled kinds built and ran
(a second process loaded the frozen library instead of building it), every row timed all three
modes, and each compiled kind kept the eager step's argmax."""
import json

import pytest

from bench.compiled_step import main


def test_compiled_step_smoke(tmp_path, monkeypatch):
    monkeypatch.delenv("DECODING_COMPILE", raising=False)  # the bench sets each mode itself
    try:
        main(["--smoke", "--out", str(tmp_path)])
    except SystemExit as e:  # the bench's own message: no library built on this machine
        pytest.fail(str(e))
    rows = json.loads((tmp_path / "compiled_step.json").read_text())["rows"]
    assert {(r["batch"], r["T"]) for r in rows} == {(b, t) for b in (1, 4, 8) for t in (1, 5)}
    for r in rows:
        assert r["loaded_not_built"]
        assert all(r[f"{m}_ms"] > 0 for m in ("eager", "inputs", "frozen"))
        assert r["inputs_same_argmax"] and r["frozen_same_argmax"]
        assert r["inputs_max_abs_diff"] < 1e-4 and r["frozen_max_abs_diff"] < 1e-4
