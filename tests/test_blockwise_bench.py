"""bench/blockwise.py --smoke runs end to end: JSON + markdown + PNG; exact acceptance reproduces the
engine's greedy output token for token, top-k rows report their match rate vs greedy."""
import json

from bench.blockwise import main


def test_blockwise_bench_smoke(tmp_path):
    main(["--smoke", "--out", str(tmp_path)])
    for name in ("blockwise.json", "blockwise.md", "blockwise.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "blockwise.json").read_text())
    assert res["machine"]["device"] and res["machine"]["torch"]
    rows = {(r["batch"], r["method"]): r for r in res["rows"]}
    for key in [(1, "blockwise exact k=2"), (4, "blockwise exact k=4"), (1, "blockwise top-2 k=4")]:
        r = rows[key]
        assert r["tokens_per_s"] > 0 and r["tau"] >= 1 and r["target_forwards_per_token"] <= 1, key
    for r in res["rows"]:
        if r["acceptance"] in ("greedy", "exact"):
            assert r["match_vs_greedy"] == 1.0, r["method"]
        else:
            assert 0 <= r["match_vs_greedy"] <= 1 and "prefix_match_vs_greedy" in r
    assert "Goals" in (tmp_path / "blockwise.md").read_text()
