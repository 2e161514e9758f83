"""bench/jacobi.py --smoke runs end to end: JSON + markdown + PNG, every method, and Jacobi and
GS-Jacobi reproduce greedy's output token for token."""
import json

import torch

from bench.jacobi import main


def test_jacobi_bench_smoke(tmp_path):
    n = torch.get_num_threads()
    try:
        main(["--smoke", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    for name in ("jacobi.json", "jacobi.md", "jacobi.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "jacobi.json").read_text())
    assert res["machine"]["device"]
    rows = {r["method"]: r for r in res["rows"]}
    for name in ("jacobi n=3 ngram", "gs_jacobi n=3 pad", "sjd n=3 ngram T=1.0"):
        assert rows[name]["tokens_per_s"] > 0 and 0 < rows[name]["forwards_per_token"] <= 1, name
    for r in res["rows"]:
        if "match_vs_greedy" in r:
            assert r["match_vs_greedy"] == 1.0, r["method"]
