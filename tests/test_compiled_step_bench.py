"""bench/compiled_step.py --smoke runs end to end on a tiny model: both compiled kinds built and ran
(a second process loaded the frozen library instead of building it), the wide library built where
the CPU has one, every row timed every mode, and each compiled kind kept the eager step's argmax."""
import json

import pytest
import torch

import models.compiled_cpu as cc
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
        assert all(r[f"{m}_ms"] > 0 for m in ("eager", "inputs", "frozen", "frozen_default"))
        assert r["inputs_same_argmax"] and r["frozen_same_argmax"] and r["frozen_default_same_argmax"]
        assert max(r[f"{m}_max_abs_diff"] for m in ("inputs", "frozen", "frozen_default")) < 1e-4
        # the wide library built where this CPU has a blocking for it (models/compiled_cpu.py)
        assert (r["frozen_wide_build_s"] is not None) == (torch.backends.cpu.get_cpu_capability() in cc.WIDE_BLOCKING)
