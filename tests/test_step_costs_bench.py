"""bench/step_costs.py --smoke runs end to end: the forwards its wrappers timed are all the target
forwards the engine counted, and the speculative and blockwise calls it decomposes reproduce greedy."""
import json

from bench.step_costs import main


def test_step_costs_smoke(tmp_path):
    main(["--smoke", "--no-compile", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "step_costs.json").read_text())
    assert "Arithmetic" in (tmp_path / "step_costs.md").read_text()
    calls = res["calls"]
    greedy = calls["greedy"]["sequences"]
    for mode, row in calls.items():
        assert row["target_forwards"] == row["stats_target_forwards"], mode  # no forward escaped the timers
        assert row["sequences"] == greedy, mode  # exact modes: token-identical to greedy
        assert row["rounds"] > 0 and row["bookkeeping_ms_per_round"] >= 0, mode
    assert calls["speculative k=4"]["draft_steps_per_round"] > 0 and calls["blockwise exact k=4"]["heads_ms"] > 0
    assert {r["item"] for r in res["forwards_alone"]} >= {"target step (T = 1)", "target verify (T = 5)",
                                                         "draft step (T = 1)", "heads: 4 guesses"}
