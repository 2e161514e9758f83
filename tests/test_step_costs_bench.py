"""bench/step_costs.py --smoke runs end to end: the forwards its wrappers timed are all the target
forwards the engine counted, the speculative and blockwise calls it decomposes reproduce greedy, and
its arithmetic is the formula it states."""
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
        if "sampling" not in mode:
            assert row["sequences"] == greedy, mode  # exact modes: token-identical to greedy
        assert row["rounds"] > 0 and row["bookkeeping_ms_per_round"] >= 0, mode
    goals = {r["quantity"]: r["value"] for r in res["arithmetic"]}
    spec = calls["speculative k=4"]
    x = goals["speculative k=4: x greedy = tau * g / round (goal 1.5x)"]
    round_ms = spec["target_ms"] + spec["draft_steps_per_round"] * spec["draft_ms"] + spec["bookkeeping_ms_per_round"]
    assert abs(x - spec["tokens_per_round"] * calls["greedy"]["ms_per_token"] / round_ms) < 1e-9
    assert "speculative sampling k=4: x sampling = tau * g / round (goal 1.1x)" in goals
    assert calls["speculative k=4"]["draft_steps_per_round"] > 0 and calls["blockwise exact k=1"]["heads_ms"] > 0
    assert {r["item"] for r in res["forwards_alone"]} >= {"target step (T = 1)", "target verify (T = 5)",
                                                         "draft step (T = 1)", "heads: 1 guess(es)"}
