"""bench/speculative.py --smoke runs end to end: JSON + markdown + PNG, every method at batch 1 and
4 (and, beside a float16 draft, the same in float32), and the deterministic methods
reproduce the engine's greedy output token for token."""
import json

from bench.speculative import main


def test_speculative_bench_smoke(tmp_path):
    main(["--smoke", "--out", str(tmp_path), "--draft-dtype", "float16"])
    for name in ("speculative.json", "speculative.md", "speculative.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "speculative.json").read_text())
    assert res["machine"]["device"] and res["machine"]["torch"]
    rows = {(r["batch"], r["method"]): r for r in res["rows"]}
    for key in [(1, "engine spec greedy k=2"), (4, "engine spec sample k=2"), (1, "HF assisted greedy k=2"),
                (4, "engine lookup greedy k=2"), (1, "engine spec greedy k=2, threshold 0.4"),
                (1, "engine spec sample k=2, threshold 0.4"), (1, "engine spec greedy k=2, draft fp32"),
                (1, "engine spec sample k=2, draft fp32")]:
        assert rows[key]["tokens_per_s"] > 0 and rows[key]["tau"] >= 1, key
    for r in res["rows"]:
        if "match_vs_greedy" in r:
            assert r["match_vs_greedy"] == 1.0, r["method"]
    assert "x_single_rows" in rows[(4, "engine spec greedy k=2")]
    assert res["draft_dtype"] == "torch.float16"
